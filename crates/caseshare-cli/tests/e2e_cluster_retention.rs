//! Journal retention in cluster mode (issue 15): real `nats-server`
//! processes (3 nodes, `sync_interval: always`) and real `caseshare serve`
//! replicas whose journal drops messages older than
//! `store.nats.journal_max_age_s` (here the shortest accepted: 64 s, with a
//! 2 s lease and a 60 s duplicate window). A replica stopped while the
//! messages after its position age out refuses to start, naming both
//! numbers; so does a brand-new replica; the other replica keeps taking
//! writes throughout; the stopped one, seeded with a copy of the live
//! replica's data directory, catches up and holds the same state.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use caseshare_proto::v1 as pb;
use caseshare_store::Storage;
use caseshare_testkit::*;

const STREAM: &str = "CASESHARE_JOURNAL";
/// The shortest retention accepted with a 2 s lease: 2 × 2 s + 60 s.
const MAX_AGE: Duration = Duration::from_secs(64);
const ENV: &[(&str, &str)] = &[
    ("CASESHARE_NATS_LEASE_TTL_MS", "2000"),
    ("CASESHARE_NATS_DUPLICATE_WINDOW_S", "60"),
    ("CASESHARE_NATS_JOURNAL_MAX_AGE_S", "64"),
];

async fn publish(b: &Broker, id: &str) -> pb::PublishResponse {
    b.client(SCHOOL)
        .publisher
        .publish(publish_request(attendance_event(id, CHILD_1)))
        .await
        .unwrap_or_else(|s| panic!("publish {id}: {s:?}"))
        .into_inner()
}

/// Waits (deadline 60 s) until replica `b` is ready (`caseshare_ready`).
async fn wait_ready(b: &Broker, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while b.metric("caseshare_ready") < 1.0 {
        assert!(Instant::now() < deadline, "{what} never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The journal's first and last sequences as the stream's leader holds
/// them (`None` while no leader is agreed on).
async fn journal_bounds(c: &BrokerCluster) -> Option<(u64, u64)> {
    let leader = c.nats.stream_leader(STREAM).await?;
    let s = c.nats.stream_state(leader, STREAM).await?;
    Some((s.first_seq, s.last_seq))
}

/// The journal position stopped replica `i`'s store records.
fn stored_position(c: &BrokerCluster, i: usize) -> u64 {
    let store =
        caseshare_store::SledStore::open(&c.replica_dir(i).join("data/store"), 8 << 20).unwrap();
    store.load().unwrap().journal_position
}

/// The number after `before` in `text`.
fn number_after(text: &str, before: &str) -> Option<u64> {
    let rest = &text[text.find(before)? + before.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_behind_the_journals_retention_refuses_and_a_seeded_copy_catches_up() {
    let mut c = BrokerCluster::start_with(2, ENV).await;
    wait_ready(c.broker(0), "replica 0").await;
    wait_ready(c.broker(1), "replica 1").await;
    c.broker(0).school_shares_with_social_care().await;
    publish(c.broker(0), "before-stop").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let (_, end) = journal_bounds(&c).await.expect("a stream leader");
    while (c.broker(1).metric("caseshare_journal_applied_sequence") as u64) < end {
        assert!(Instant::now() < deadline, "replica 1 did not reach {end}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Replica 1 stops; replica 0 goes on taking writes while every message
    // after replica 1's position ages out of the journal.
    let status = c.broker_mut(1).stop().await;
    assert!(status.success(), "replica 1 stopped with {status}");
    let p1 = stored_position(&c, 1);
    let stopped = Instant::now();
    let deadline = stopped + MAX_AGE + Duration::from_secs(90);
    let mut writes = 0u64;
    let mut last_seq = 0;
    let first = loop {
        let r = publish(c.broker(0), &format!("while-aging-{writes}")).await;
        assert!(r.sequence > last_seq, "{r:?}");
        last_seq = r.sequence;
        writes += 1;
        assert_eq!(
            c.broker(0).metric("caseshare_ready"),
            1.0,
            "replica 0 stays ready while messages age out"
        );
        match journal_bounds(&c).await {
            Some((first, _)) if first > p1 + 1 => break first,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "the journal never dropped message {}",
            p1 + 1
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!(
        "replica 1 stopped at journal position {p1}; {:.1} s later the journal's first \
         message is {first}; replica 0 took {writes} writes meanwhile",
        stopped.elapsed().as_secs_f64()
    );

    // Replica 1 refuses to start, naming both numbers and the remedy.
    let refused = c
        .broker_mut(1)
        .try_restart()
        .expect_err("replica 1 started behind the journal's retention");
    let message = refusal_message(&refused);
    assert_eq!(
        number_after(&message, "has applied through message "),
        Some(p1),
        "{message}"
    );
    let named_first = number_after(&message, "first message is now ").expect("first named");
    assert!(named_first >= first, "{message}");
    for words in [
        "caseshare restore",
        "copy of a stopped replica's data directory",
    ] {
        assert!(message.contains(words), "{message}");
    }
    println!("replica 1 refused: {message}");

    // So does a brand-new replica (position 0) against this journal.
    let refused = c
        .try_add_replica()
        .expect_err("a new replica started on a journal missing message 1");
    let message = refusal_message(&refused);
    assert_eq!(
        number_after(&message, "has applied through message "),
        Some(0),
        "{message}"
    );

    // Seeded with a copy of replica 0's stopped data directory, replica 1
    // starts, catches up and takes writes; both hold one state.
    let status = c.broker_mut(0).stop().await;
    assert!(status.success(), "replica 0 stopped with {status}");
    c.seed_from(0, 1);
    c.broker_mut(0).restart();
    c.broker_mut(1).restart();
    let seeded = Instant::now();
    wait_ready(c.broker(1), "seeded replica 1").await;
    println!(
        "seeded replica 1 ready in {:.1} s",
        seeded.elapsed().as_secs_f64()
    );
    wait_ready(c.broker(0), "replica 0").await;
    let r = publish(c.broker(1), "after-seed").await;
    assert!(r.sequence > last_seq, "{r:?}");
    c.assert_one_log(0, 1).await;
    let digest = c.assert_same_state().await;
    println!("both replicas hold state {digest}");
}
