//! The chaos run (issue 15), a command:
//! `CASESHARE_CHAOS_FAULTS=25 cargo run -p caseshare-cli --example cluster_chaos`.
//! It runs random faults — SIGKILL and restart, or
//! SIGSTOP and SIGCONT, of broker replicas and NATS nodes, and kills of the
//! journal's stream leader — one at a time, under a steady idempotent
//! publisher and two acknowledging subscribers (one ordered), on 3 real
//! `nats-server` nodes and 2 broker replicas. Then the invariants: no event
//! id got two sequences; every acknowledged event was delivered on both
//! subscriptions; on the ordered one each child's events were first
//! delivered in publish order; the replicas applied the same journal and
//! sign one audit log.
//!
//! `CASESHARE_CHAOS_FAULTS` (default 6; 20 or more for a real run) and
//! `CASESHARE_CHAOS_SEED` (printed at the start: replays the same choices)
//! steer it. It is not in the test suite yet: in one CI run (seed
//! 18187063846027219005) a replica had exited by the end, and the same
//! seed passes on replay; `BrokerCluster` prints the replicas' logs when
//! it fails, to find the cause.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use caseshare_proto::v1 as pb;
use caseshare_testkit::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn endpoints(c: &BrokerCluster) -> Vec<Endpoint> {
    vec![c.broker(0).endpoint(), c.broker(1).endpoint()]
}

/// Exits non-zero (a panic) when an invariant does not hold.
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let faults: usize = std::env::var("CASESHARE_CHAOS_FAULTS")
        .ok()
        .map(|s| s.parse().expect("CASESHARE_CHAOS_FAULTS is a number"))
        .unwrap_or(6);
    let seed: u64 = std::env::var("CASESHARE_CHAOS_SEED")
        .ok()
        .map(|s| s.parse().expect("CASESHARE_CHAOS_SEED is a u64"))
        .unwrap_or_else(rand::random);
    println!("chaos seed: {seed} (replay with CASESHARE_CHAOS_SEED={seed}), faults: {faults}");
    let mut rng = StdRng::seed_from_u64(seed);

    let mut c = BrokerCluster::start(2).await;
    c.broker(0).school_shares_with_social_care().await;
    c.broker(0)
        .client(SOCIAL_CARE)
        .subscriber
        .create_subscription(pb::Subscription {
            name: "ordered".into(),
            ordered: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let publisher = Publisher::start(endpoints(&c), "chaos", Duration::from_millis(20));
    let main = Consumer::start(endpoints(&c), SOCIAL_CARE, "main");
    let ordered = Consumer::start(
        vec![c.broker(1).endpoint(), c.broker(0).endpoint()],
        SOCIAL_CARE,
        "ordered",
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    let started = Instant::now();
    for k in 0..faults {
        let hold = Duration::from_millis(rng.gen_range(1_000..5_000));
        let what = match rng.gen_range(0..5) {
            0 => {
                let i = rng.gen_range(0..2);
                c.broker_mut(i).kill9();
                tokio::time::sleep(hold).await;
                c.broker_mut(i).restart();
                format!("SIGKILL broker {i}, restarted after")
            }
            1 => {
                let i = rng.gen_range(0..2);
                c.broker(i).pause();
                tokio::time::sleep(hold).await;
                c.broker(i).resume();
                format!("SIGSTOP broker {i}, SIGCONT after")
            }
            2 => {
                let j = rng.gen_range(0..3);
                c.nats.kill9(j);
                tokio::time::sleep(hold).await;
                c.nats.restart(j).await;
                format!("SIGKILL NATS node {j}, restarted after")
            }
            3 => {
                let j = rng.gen_range(0..3);
                c.nats.stop(j);
                tokio::time::sleep(hold).await;
                c.nats.cont(j);
                format!("SIGSTOP NATS node {j}, SIGCONT after")
            }
            _ => {
                let j = c.nats.stream_leader("CASESHARE_JOURNAL").await;
                let j = j.unwrap_or_else(|| rng.gen_range(0..3));
                c.nats.kill9(j);
                tokio::time::sleep(hold).await;
                c.nats.restart(j).await;
                format!("SIGKILL the stream leader (NATS node {j}), restarted after")
            }
        };
        println!(
            "fault {k} at {:.1} s: {what} {:.1} s",
            started.elapsed().as_secs_f64(),
            hold.as_secs_f64()
        );
        publisher.set_targets(endpoints(&c));
        main.set_targets(endpoints(&c));
        ordered.set_targets(vec![c.broker(1).endpoint(), c.broker(0).endpoint()]);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1_000..3_000))).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = publisher.finish().await;
    println!(
        "{} events acknowledged, {} retried calls, longest time without an acknowledged write {:.1} s",
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
    let within = Duration::from_secs(120);
    let m = main.until_all(acked.clone(), within).await;
    let o = ordered.until_all(acked.clone(), within).await;
    for (name, got) in [("main", &m), ("ordered", &o)] {
        println!(
            "{name}: {} delivered, {} more than once, stream reopened {} times",
            got.received.len(),
            got.received.values().filter(|n| **n > 1).count(),
            got.reopened
        );
        assert!(got.received.keys().all(|s| acked.contains(s)));
    }
    // Per child, the ordered subscription's first deliveries follow the
    // publish order (the publisher alternates children and waits for each
    // acknowledgement, so sequence order is publish order per child).
    let child_of: BTreeMap<u64, usize> = report
        .acked
        .iter()
        .map(|(id, seq)| {
            let n: u64 = id.rsplit('-').next().unwrap().parse().unwrap();
            (*seq, (n % 2) as usize)
        })
        .collect();
    for child in 0..2 {
        let firsts: Vec<u64> = o
            .first
            .iter()
            .copied()
            .filter(|s| child_of.get(s) == Some(&child))
            .collect();
        assert!(
            firsts.windows(2).all(|w| w[0] < w[1]),
            "child {child}: first deliveries out of order: {firsts:?}"
        );
    }
    // The replicas applied the same journal and sign one log.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = c.broker(0).metric("caseshare_journal_applied_sequence");
        let b = c.broker(1).metric("caseshare_journal_applied_sequence");
        if a == b && a > 0.0 {
            println!("both replicas applied the journal through message {a}");
            break;
        }
        assert!(Instant::now() < deadline, "replicas at {a} and {b}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.assert_one_log(0, 1).await;
}
