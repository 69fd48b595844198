//! Cluster mode with one replica's clock off (issue 15's clock-skew test):
//! 3 real `nats-server` nodes and 2 real broker replicas, replica 1 run
//! under libfaketime (`FAKETIME=+20s`, and in the other test `-20s`; its
//! monotonic clock left alone) so that the times it stamps on the
//! commands it proposes are 20 s off the other's. A publisher (idempotent
//! retries) goes round robin through both replicas and a subscriber
//! acknowledges every delivery; in the middle replica 0 is stopped and
//! restarted, so that for a while replica 1 proposes alone and then both
//! again — every change of proposer puts the two clocks next to each
//! other in the journal.
//!
//! Asserted: every acknowledged event delivered, no event id with two
//! sequences, one audit log, the same state on both replicas, and the
//! audit log's `recorded_at` times never go backwards (the state machine
//! clamps a command's time to the last audit entry's: `docs/CLUSTER.md`,
//! "Clocks"). Printed: how far the skewed replica's clock shows in the log
//! (how far ahead of the test's clock the audit times ran, or how long
//! they stood still).
//!
//! Needs `faketime` (Debian package `faketime`; tests/run-all.sh installs
//! it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use caseshare_testkit::*;

/// Steady load between the steps.
const STEADY: Duration = Duration::from_secs(3);
/// The skew, in seconds.
const SKEW: i64 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_20_s_ahead_keeps_the_invariants_and_audit_time_never_goes_back() {
    run(SKEW).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_20_s_behind_keeps_the_invariants_and_audit_time_never_goes_back() {
    run(-SKEW).await;
}

async fn run(skew: i64) {
    // libfaketime preloaded by `env`, which execs: the broker keeps its
    // process id (SIGTERM reaches it; the `faketime` command would fork).
    let lib = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/faketime/libfaketimeMT.so.1",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect(
        "the clock-skew test needs libfaketime (`apt-get install faketime`; tests/run-all.sh \
         does)",
    );
    let nats = NatsCluster::start(3).await;
    let mut c = BrokerCluster::start_on(nats, &[0, 1, 2], 1, &[]);
    let wrap: Vec<String> = vec![
        "env".into(),
        format!("LD_PRELOAD={lib}"),
        format!("FAKETIME={skew:+}s"),
        "FAKETIME_DONT_FAKE_MONOTONIC=1".into(),
    ];
    assert_eq!(c.add_replica_wrapped(&wrap), 1);
    println!("replica 1 runs under {}", wrap.join(" "));
    c.broker(0).school_shares_with_social_care().await;

    let publisher = Publisher::start(endpoints(&c), "skew", Duration::from_millis(50));
    let consumer = Consumer::start(endpoints(&c), SOCIAL_CARE, "main");
    tokio::time::sleep(STEADY).await;
    // Replica 1 proposes alone for a while, then both again.
    let status = c.broker_mut(0).stop().await;
    println!("replica 0 stopped ({status})");
    tokio::time::sleep(STEADY).await;
    c.broker_mut(0).restart();
    publisher.set_targets(endpoints(&c));
    consumer.set_targets(endpoints(&c));
    tokio::time::sleep(STEADY).await;
    let report = publisher.finish().await;
    let finished = wall_micros();
    println!(
        "skew {skew:+} s: {} events acknowledged, {} retried calls, longest time without an \
         acknowledged write {:.1} s",
        report.acked.len(),
        report.retries,
        report.longest_gap.as_secs_f64()
    );
    assert!(
        report.forked.is_empty(),
        "two sequences for {:?}",
        report.forked
    );
    let acked: BTreeSet<u64> = report.acked.values().copied().collect();
    assert_eq!(
        acked.len(),
        report.acked.len(),
        "two events share a sequence"
    );
    let got = consumer
        .until_all(acked.clone(), Duration::from_secs(60))
        .await;
    assert!(
        got.received.keys().all(|s| acked.contains(s)),
        "an event never acknowledged was delivered"
    );
    println!(
        "{} delivered, {} more than once",
        got.received.len(),
        got.received.values().filter(|n| **n > 1).count()
    );
    c.assert_one_log(0, 1).await;

    // The audit log's times, in log order.
    let times: Vec<i64> = c
        .broker(0)
        .audit_entries()
        .await
        .iter()
        .map(|e| {
            let t = e.recorded_at.as_ref().expect("an audit entry has a time");
            t.seconds * 1_000_000 + i64::from(t.nanos) / 1_000
        })
        .collect();
    let back: Vec<i64> = times
        .windows(2)
        .filter(|w| w[1] < w[0])
        .map(|w| w[0] - w[1])
        .collect();
    let still = times.windows(2).filter(|w| w[1] == w[0]).count();
    let ahead = times.iter().max().copied().unwrap_or(0) - finished;
    println!(
        "audit log: {} entries; {} steps back in time (largest {:.3} s); {still} entries at \
         the time of the one before; the newest time is {:.1} s past the test's clock at the \
         end",
        times.len(),
        back.len(),
        back.iter().max().copied().unwrap_or(0) as f64 / 1e6,
        ahead as f64 / 1e6
    );
    if skew > 0 {
        // The skewed clock is really in use (and its times are kept).
        assert!(
            ahead > (skew - 5) * 1_000_000,
            "the audit times are not ahead: is faketime in effect?"
        );
    }
    assert!(back.is_empty(), "audit times went back: {back:?} µs");
    let digest = c.assert_same_state().await;
    println!("both replicas hold the same state: digest {digest}");
}

fn wall_micros() -> i64 {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(d.as_micros()).unwrap()
}

fn endpoints(c: &BrokerCluster) -> Vec<Endpoint> {
    vec![c.broker(0).endpoint(), c.broker(1).endpoint()]
}
