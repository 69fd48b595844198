//! Cluster mode under faults (issue 15's kill tests): 3 real `nats-server`
//! nodes with `sync_interval: always` and 2 real broker replicas, a steady
//! publisher (idempotent retries through either replica) and a subscriber
//! acknowledging every delivery. One part is SIGKILLed mid-run — the
//! broker the publisher is using, the broker the subscriber is on, the
//! journal stream's leader, the JetStream meta leader — and later
//! restarted. Each test prints the longest time without an acknowledged
//! write and asserts that writes resumed within 15 s, that no event id was
//! given two sequences, that every acknowledged event reached the
//! subscriber, and that both replicas sign one audit log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use caseshare_testkit::*;

/// The pinned bound on the time without writes after a single kill.
const RESUME_WITHIN: Duration = Duration::from_secs(15);
/// Steady load before the fault and after it.
const STEADY: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// The broker replica both the publisher and the subscriber start on.
    Broker,
    /// The NATS node leading the journal stream.
    StreamLeader,
    /// The NATS node leading JetStream's meta group.
    MetaLeader,
}

async fn kill_under_load(fault: Fault) {
    let mut c = BrokerCluster::start(2).await;
    c.broker(0).school_shares_with_social_care().await;
    let endpoints = |c: &BrokerCluster| vec![c.broker(0).endpoint(), c.broker(1).endpoint()];
    let run_started = Instant::now();
    let publisher = Publisher::start(endpoints(&c), "load", Duration::from_millis(20));
    let consumer = Consumer::start(endpoints(&c), SOCIAL_CARE, "main");
    tokio::time::sleep(STEADY).await;

    let killed_at = Instant::now();
    let node = match fault {
        Fault::Broker => {
            c.broker_mut(0).kill9();
            None
        }
        Fault::StreamLeader => {
            let i = c.nats.stream_leader("CASESHARE_JOURNAL").await.unwrap();
            c.nats.kill9(i);
            Some(i)
        }
        Fault::MetaLeader => {
            let i = c.nats.meta_leader().await.unwrap();
            c.nats.kill9(i);
            Some(i)
        }
    };
    println!("{fault:?}: killed (NATS node {node:?})");
    // Load goes on through what survives, long enough for the election.
    tokio::time::sleep(RESUME_WITHIN + STEADY).await;
    match node {
        None => c.broker_mut(0).restart(),
        Some(i) => {
            c.nats.restart(i).await;
        }
    }
    publisher.set_targets(endpoints(&c));
    consumer.set_targets(endpoints(&c));
    tokio::time::sleep(STEADY).await;
    let report = publisher.finish().await;
    println!(
        "{fault:?}: {} events acknowledged, {} retried calls; longest time without an \
         acknowledged write: {:.2} s (ended {:.1} s into the run; the kill was at {:.1} s)",
        report.acked.len(),
        report.retries,
        report.longest_gap.as_secs_f64(),
        report.gap_ended_at.as_secs_f64(),
        (killed_at - run_started).as_secs_f64(),
    );
    assert!(
        report.forked.is_empty(),
        "an event id got two sequences: {:?}",
        report.forked
    );
    assert!(
        report.longest_gap <= RESUME_WITHIN,
        "{fault:?}: writes stopped for {:?}",
        report.longest_gap
    );
    // Every acknowledged event is delivered; sequences are distinct.
    let acked: std::collections::BTreeSet<u64> = report.acked.values().copied().collect();
    assert_eq!(
        acked.len(),
        report.acked.len(),
        "two events share a sequence"
    );
    let (delivered, reopened) = consumer
        .until_all(acked.clone(), Duration::from_secs(60))
        .await;
    let again = delivered.values().filter(|n| **n > 1).count();
    println!(
        "{fault:?}: {} delivered, {again} more than once (at least once: redelivered after the \
         stream moved), stream reopened {reopened} times",
        delivered.len()
    );
    assert!(
        delivered.keys().all(|s| acked.contains(s)),
        "a delivery of an event never acknowledged"
    );
    c.assert_one_log(0, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_broker_replica_loses_nothing_acknowledged() {
    kill_under_load(Fault::Broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_stream_leader_stops_writes_only_for_an_election() {
    kill_under_load(Fault::StreamLeader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_meta_leader_loses_nothing_acknowledged() {
    kill_under_load(Fault::MetaLeader).await;
}
