//! Crash soak (issue 4): the real `caseshare` binary, SIGKILLed at random
//! points while a publisher streams thousands of events and two
//! subscribers consume, restarted each time on the same data directory.
//!
//! Setup: the three sample agencies; an agreement that shares school-b's
//! education events with la-social-care-c; none from school-b to
//! nhs-trust-a, so its decisions there are WITHHELD (`no_agreement`). Both
//! recipients have a subscription (ack deadline 10 min, so nothing is
//! redelivered by timeout while the test runs).
//!
//! Tasks, each reconnecting after every restart:
//! - the **publisher** pipelines events with distinct ids for several
//!   children on a `PublishStream` (a random window per stream), records
//!   every response, re-sends what was sent but not answered when a stream
//!   breaks (same event id), and now and then re-sends an already answered
//!   event on purpose (it must come back `duplicate = true`);
//! - the **la-social-care-c subscriber** acks everything: mostly inline on
//!   the stream, and a random subset with the unary `Ack` (which answers
//!   only once the acknowledgement is durable);
//! - the **nhs-trust-a subscriber** records whatever arrives.
//!
//! The test body is the crash controller: it SIGKILLs the broker after a
//! random number of acknowledged publishes (counted, not timed), five to
//! seven times. Connection details sit behind an async `RwLock` whose write
//! side is held from the kill until the restarted broker listens, and the
//! subscribers hold its read side while opening a stream or sending a
//! unary ack. So every delivery is tagged with the broker lifetime that
//! sent it, and a unary ack is only sent to the lifetime that made the
//! delivery.
//!
//! At the end, with the broker running, a marker shared with nhs-trust-a
//! (from la-social-care-c, under its own agreement) proves its stream has
//! scanned past every school-b event; la-social-care-c is drained until it
//! has every acknowledged publish. Then, from the client records and the
//! audit log (read in chunks as the auditor):
//! 1. every acknowledged publish, duplicates included, reached
//!    la-social-care-c, with the event id, source and decision it was
//!    published with; nothing else reached it;
//! 2. nhs-trust-a received only the marker, and the log has no
//!    EVENT_DELIVERED to it for a school-b event;
//! 3. redelivery only where an ack was not durable at a crash: no event
//!    twice on one stream; attempts strictly increase; in the log no
//!    EVENT_DELIVERED of an event follows its EVENT_ACKED, and each event's
//!    attempts run 1, 2, 3, …; no event acknowledged by a successful unary
//!    `Ack` is ever received again; every received delivery has its durable
//!    EVENT_DELIVERED entry (nothing leaves before it is recorded), and
//!    every EVENT_ACKED names a delivery id the subscriber acked;
//! 4. audit indexes are 0..n without gaps, and there is exactly one
//!    EVENT_PUBLISHED (and one SHARED / one WITHHELD decision) per distinct
//!    event id, at the sequence and audit index the publisher was given;
//! 5. every response for an event id carries the same sequence and audit
//!    index; `duplicate = true` only for event ids sent more than once; at
//!    most one `duplicate = false` per event id.
//!
//! The seed is printed; `CASESHARE_SOAK_SEED=<seed>` replays the same kill
//! points and choices (the interleaving of the tasks still varies);
//! `CASESHARE_SOAK_EVENTS` changes the event count; with
//! `CASESHARE_SOAK_KEEP=1` a failed run keeps its data directory.
//!
//! The last test is a fixed-script reproduction of the soak's first
//! finding (an acknowledged redelivery after a restart delivered again).
//!
//! Here: the crash controller and the tests; the tasks are in `publisher`
//! and `subscriber`, the checks in `checks`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod checks;
mod publisher;
mod subscriber;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use caseshare_cli::client::Clients;
use caseshare_proto::v1 as pb;
use caseshare_testkit::*;
use tokio::sync::{RwLock, watch};
use tokio::time::timeout;

use checks::{Run, Tally, Violations, check_all, read_audit};
use publisher::{Progress, PubResponse, publisher};
use subscriber::{AckKind, subscriber};

const SCHOOL: &str = "school-b";
const SOCIAL: &str = "la-social-care-c";
const NHS: &str = "nhs-trust-a";
const SUBSCRIPTION: &str = "soak";
const AGREEMENT: &str = "isa-soak-school-sc";
const MARKER_AGREEMENT: &str = "isa-soak-sc-nhs";
const MARKER_ID: &str = "soak-marker-for-nhs";

/// Default number of distinct events.
const EVENTS: usize = 4_000;
/// Bound of the whole test.
const WHOLE_TEST: Duration = Duration::from_secs(170);
/// Bound of one call to the broker (open a stream, one response, one ack).
const CALL: Duration = Duration::from_secs(30);
/// Bound of the final drain after the last restart.
const DRAIN: Duration = Duration::from_secs(60);

/// splitmix64: a small seeded generator (the tests have no `rand`).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

/// Where the current broker lifetime listens. Written (under the lock) by
/// the crash controller from the kill until the restarted broker listens.
#[derive(Debug, Clone)]
struct Lifetime {
    generation: u32,
    at: Endpoint,
}

type Conn = Arc<RwLock<Lifetime>>;

fn clients(ep: &Lifetime, who: &str) -> Clients {
    ep.at.client(who)
}

/// A valid NHS number for soak child `i`.
fn child(i: usize) -> String {
    (0..)
        .map(|k| format!("{:09}", 943_476_000 + i * 37 + k))
        .find_map(|nine| caseshare_core::nhs::with_check_digit(&nine))
        .unwrap()
}

#[derive(Debug)]
struct Kill {
    at_acked: usize,
    at_received: usize,
    restart: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_soak_kill_9_at_random_points() {
    let seed = std::env::var("CASESHARE_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            t.as_secs() ^ (u64::from(t.subsec_nanos()) << 20)
        });
    let events: usize = std::env::var("CASESHARE_SOAK_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(EVENTS);
    println!("crash soak: seed {seed} (CASESHARE_SOAK_SEED={seed}), {events} events");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let outcome = timeout(WHOLE_TEST, soak(seed, events, path.clone())).await;
    let failure = match outcome {
        Ok(Ok(summary)) => {
            println!("{summary}");
            return;
        }
        Ok(Err(report)) => report,
        Err(_) => format!("the soak did not finish within {WHOLE_TEST:?}"),
    };
    let log = std::fs::read_to_string(path.join("broker.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    let kept = if std::env::var_os("CASESHARE_SOAK_KEEP").is_some() {
        format!("data dir kept at {}", dir.keep().display())
    } else {
        "set CASESHARE_SOAK_KEEP=1 to keep the data dir".to_string()
    };
    panic!(
        "crash soak failed (seed {seed}; rerun with CASESHARE_SOAK_SEED={seed}; {kept}):\n\
         {failure}\n--- broker.log (last 40 lines) ---\n{}",
        tail.join("\n")
    );
}

/// Runs the soak in `dir`; `Ok(summary)` or `Err(report of every violation)`.
async fn soak(seed: u64, n: usize, dir: PathBuf) -> Result<String, String> {
    let started = Instant::now();
    let mut rng = Rng(seed);
    let mut b = Broker::start_in(&dir, &[]);
    b.register_sample_agencies().await;
    put_agreement(&b, agreement(AGREEMENT, SCHOOL, SOCIAL, &["education.*"])).await;
    put_agreement(
        &b,
        agreement(MARKER_AGREEMENT, SOCIAL, NHS, &["education.*"]),
    )
    .await;
    for agency in [SOCIAL, NHS] {
        b.client(agency)
            .subscriber
            .create_subscription(pb::Subscription {
                name: SUBSCRIPTION.into(),
                ack_deadline: Some(prost_types::Duration {
                    seconds: 600,
                    nanos: 0,
                }),
                // Crashes add attempts; keep dead-lettering out of the way.
                max_attempts: 1_000,
                ..Default::default()
            })
            .await
            .unwrap();
    }

    let children: Vec<String> = (0..5).map(child).collect();
    let events: Arc<Vec<pb::CaseEvent>> = Arc::new(
        (0..n)
            .map(|i| {
                let c = &children[usize::try_from(rng.below(children.len() as u64)).unwrap()];
                attendance_event(&format!("soak-{i:05}"), c)
            })
            .collect(),
    );
    let kills = usize::try_from(rng.between(5, 7)).unwrap();
    let segment = n / (kills + 1);
    let thresholds: Vec<usize> = (1..=kills)
        .map(|k| {
            let jitter = segment / 3;
            let j = usize::try_from(rng.below(2 * jitter as u64 + 1)).unwrap();
            (k * segment + j).saturating_sub(jitter).max(1)
        })
        .collect();
    println!("crash soak: kills after {thresholds:?} acknowledged publishes");

    let conn: Conn = Arc::new(RwLock::new(Lifetime {
        generation: 0,
        at: b.endpoint(),
    }));
    let (progress_tx, mut progress) = watch::channel(Progress::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (social_seen_tx, mut social_seen) = watch::channel(BTreeSet::new());
    let (nhs_seen_tx, mut nhs_seen) = watch::channel(BTreeSet::new());
    let publisher_task = tokio::spawn(publisher(
        conn.clone(),
        events.clone(),
        Rng(rng.next()),
        progress_tx,
    ));
    let social_task = tokio::spawn(subscriber(
        conn.clone(),
        SOCIAL,
        8,
        Rng(rng.next()),
        social_seen_tx,
        stop_rx.clone(),
    ));
    let nhs_task = tokio::spawn(subscriber(
        conn.clone(),
        NHS,
        0,
        Rng(rng.next()),
        nhs_seen_tx,
        stop_rx,
    ));

    let mut violations = Violations::default();
    let mut kill_log: Vec<Kill> = Vec::new();
    // The crash controller.
    for &threshold in &thresholds {
        let reached = timeout(
            Duration::from_secs(90),
            progress.wait_for(|p| p.acked >= threshold || p.done),
        )
        .await
        // Copy out of the watch at once: holding its guard would block the
        // publisher's updates.
        .map(|r| r.map(|p| *p));
        match reached {
            Ok(Ok(p)) if p.acked >= threshold => {}
            other => {
                violations.add(
                    "kill schedule",
                    format!(
                        "the publisher did not reach {threshold} acknowledged publishes: {other:?}"
                    ),
                );
                break;
            }
        }
        let mut ep = timeout(CALL, conn.write())
            .await
            .expect("the connection lock within 30 s");
        let at_acked = progress.borrow().acked;
        let at_received = social_seen.borrow().len();
        let t = Instant::now();
        tokio::task::block_in_place(|| {
            b.kill9();
            b.restart();
        });
        ep.generation += 1;
        ep.at = b.endpoint();
        drop(ep);
        kill_log.push(Kill {
            at_acked,
            at_received,
            restart: t.elapsed(),
        });
    }

    let publog = match timeout(Duration::from_secs(120), publisher_task).await {
        Ok(Ok(log)) => log,
        other => return Err(format!("the publisher task did not finish: {other:?}")),
    };
    violations.add_all("publisher", &publog.violations);

    // The marker: shared with nhs-trust-a, published after every school-b
    // event, so once it arrives that stream has scanned past all of them.
    let marker = timeout(
        CALL,
        b.client(SOCIAL)
            .publisher
            .publish(publish_request(attendance_event(MARKER_ID, CHILD_1))),
    )
    .await
    .expect("marker publish answers")
    .expect("marker publish succeeds")
    .into_inner();
    let marker_shared = marker
        .decisions
        .iter()
        .any(|d| d.agency_id == NHS && d.decision == pb::Decision::Shared as i32);
    if !marker_shared {
        violations.add(
            "marker",
            format!(
                "the marker was not shared with {NHS}: {:?}",
                marker.decisions
            ),
        );
    }

    // First answer per event: sequence and audit index.
    let mut first: BTreeMap<usize, &PubResponse> = BTreeMap::new();
    for r in &publog.responses {
        first.entry(r.event).or_insert(r);
    }
    let acked_seqs: BTreeSet<u64> = first.values().map(|r| r.sequence).collect();

    // Drain.
    let drained = timeout(
        DRAIN,
        social_seen
            .wait_for(|s| s.len() >= acked_seqs.len() && acked_seqs.iter().all(|q| s.contains(q))),
    )
    .await
    .map(|r| r.map(|_| ()));
    if !matches!(drained, Ok(Ok(_))) {
        let s = social_seen.borrow();
        let missing: Vec<u64> = acked_seqs.difference(&s).copied().take(50).collect();
        violations.add(
            "(1) drain",
            format!(
                "{SOCIAL} did not receive every acknowledged publish within {DRAIN:?} of the last \
             restart: {} of {} missing, e.g. sequences {missing:?}",
                acked_seqs.difference(&s).count(),
                acked_seqs.len()
            ),
        );
    }
    let nhs_marker = timeout(DRAIN, nhs_seen.wait_for(|s| s.contains(&marker.sequence)))
        .await
        .map(|r| r.map(|_| ()));
    if !matches!(nhs_marker, Ok(Ok(_))) {
        violations.add(
            "(2) nhs marker",
            format!(
                "{NHS} did not receive the marker (sequence {}) within {DRAIN:?}",
                marker.sequence
            ),
        );
    }
    stop_tx.send(true).unwrap();
    let social = match timeout(CALL, social_task).await {
        Ok(Ok(log)) => log,
        other => return Err(format!("the {SOCIAL} subscriber did not stop: {other:?}")),
    };
    let nhs = match timeout(CALL, nhs_task).await {
        Ok(Ok(log)) => log,
        other => return Err(format!("the {NHS} subscriber did not stop: {other:?}")),
    };
    violations.add_all("subscriber", &social.violations);
    violations.add_all("subscriber", &nhs.violations);

    let audit = read_audit(&b).await;
    let by_seq: HashMap<u64, usize> = first.iter().map(|(i, r)| (r.sequence, *i)).collect();
    let run = Run {
        n,
        events: &events,
        publog: &publog,
        first,
        by_seq,
        social: &social,
        nhs: &nhs,
        marker: &marker,
        audit: &audit,
    };
    let Tally {
        duplicates,
        repeats,
        redeliveries,
        redelivered_after_inline_ack,
        social_sequences,
    } = check_all(&run, &mut violations);

    let kills_text = kill_log
        .iter()
        .map(|k| {
            format!(
                "{}/{} (restart {} ms)",
                k.at_acked,
                k.at_received,
                k.restart.as_millis()
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let unary = social
        .received
        .iter()
        .filter(|d| d.ack == AckKind::Unary)
        .count();
    let mut summary = String::new();
    writeln!(
        summary,
        "crash soak (seed {seed}): {} kills at acked/received {kills_text}; {} events, {} publish \
         responses ({duplicates} duplicate = true, {repeats} deliberate re-sends, {} re-sent \
         after a break); {SOCIAL}: {} deliveries of {} sequences, {redeliveries} redeliveries \
         ({redelivered_after_inline_ack} after an inline ack lost at a crash), {unary} unary \
         acks, {} streams ({} ended without a kill); {NHS}: {} deliveries (the marker); audit \
         {} entries; {:.1} s",
        kill_log.len(),
        n,
        publog.responses.len(),
        publog.resent_after_break,
        social.received.len(),
        social_sequences,
        social.streams,
        social.ends_without_kill,
        nhs.received.len(),
        audit.len(),
        started.elapsed().as_secs_f64()
    )
    .unwrap();
    if kill_log.len() < 5 {
        violations.add("kill count", format!("only {} kills", kill_log.len()));
    }
    if violations.messages.is_empty() {
        Ok(summary)
    } else {
        Err(format!(
            "{} violations, by check: {:#?}\nfirst of each check:\n  {}\n{summary}\n\
             publisher stream ends: {:?}\n{SOCIAL} stream ends: {:?}",
            violations.messages.len(),
            violations.counts,
            violations
                .first
                .values()
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  "),
            publog.stream_ends,
            social.stream_ends
        ))
    }
}

/// The soak's most frequent finding, reduced to a fixed script: deliveries
/// owed after a restart that are redelivered and acknowledged before the
/// subscription's cursor has scanned past them are delivered again, as new
/// first attempts, and the durable ack is overwritten.
#[tokio::test]
async fn an_acked_redelivery_after_a_restart_is_not_delivered_again() {
    let mut b = Broker::start();
    b.register_sample_agencies().await;
    put_agreement(&b, agreement(AGREEMENT, SCHOOL, SOCIAL, &["education.*"])).await;
    create_subscription(&b, SOCIAL, "main").await;
    let mut school = b.client(SCHOOL);
    let mut seqs = Vec::new();
    for i in 0..3 {
        let r = school
            .publisher
            .publish(publish_request(attendance_event(
                &format!("r-{i}"),
                CHILD_1,
            )))
            .await
            .unwrap()
            .into_inner();
        seqs.push(r.sequence);
    }
    // Receive all three and acknowledge none, then crash.
    {
        let mut s = Subscription::open(&b, SOCIAL, "main", 10).await;
        for seq in &seqs {
            assert_eq!(s.next().await.sequence, *seq);
        }
    }
    b.kill9();
    b.restart();

    // One at a time (window 1): each owed delivery comes back as attempt 2
    // and is acknowledged with the unary Ack, which answers once durable.
    let mut s = Subscription::open(&b, SOCIAL, "main", 1).await;
    let mut social = b.client(SOCIAL);
    for seq in &seqs {
        let d = s.next().await;
        assert_eq!((d.sequence, d.attempt), (*seq, 2), "the owed redelivery");
        let acked = social
            .subscriber
            .ack(pb::AckRequest {
                subscription: "main".into(),
                delivery_ids: vec![d.delivery_id],
            })
            .await
            .unwrap()
            .into_inner()
            .acked;
        assert_eq!(acked, 1);
    }
    // Nothing is owed any more: the next delivery must be a new event.
    let marker = b
        .client(SCHOOL)
        .publisher
        .publish(publish_request(attendance_event("r-marker", CHILD_1)))
        .await
        .unwrap()
        .into_inner()
        .sequence;
    let d = s.next().await;
    assert_eq!(
        d.sequence, marker,
        "sequence {} was delivered again ({}, attempt {}) after its redelivery was durably \
         acknowledged",
        d.sequence, d.delivery_id, d.attempt
    );
}
