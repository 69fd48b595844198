//! The bounded chaos run (issue 15) in the suite: the test kit's [`Chaos`]
//! driver — the one the on-demand command `examples/cluster_chaos.rs` runs
//! with 20 or more faults — with 7 random faults (SIGKILL and restart,
//! SIGSTOP and SIGCONT of broker replicas and NATS nodes, stream-leader
//! kills and, when iptables is usable (root), at least one network
//! partition of a NATS node, healed before the next fault) on 3 real
//! `nats-server` nodes and 2 broker replicas, under a steady idempotent
//! publisher and two subscribers. The seed and the fault set are printed
//! (`CASESHARE_CHAOS_SEED=<seed>` with the printed
//! `CASESHARE_CHAOS_PARTITIONS` replays it). It fails if a replica exits
//! on its own (with its exit status and log), an acknowledged event is not
//! delivered, an event id gets two sequences, a child's events are first
//! delivered out of order on the ordered subscription, or the replicas
//! end on different journal positions, states or audit logs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use caseshare_testkit::Chaos;

/// Faults in the bounded run: about 8 s each on a loaded 2-core machine
/// (a partition about 10 s more).
const FAULTS: usize = 7;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_faults_lose_nothing_acknowledged_and_the_replicas_agree() {
    let report = Chaos::seeded_from_env(FAULTS).run().await;
    println!(
        "chaos: {} faults in {:.1} s ({:.1} s in all), {} events acknowledged, {} retried \
         calls, longest time without an acknowledged write {:.1} s, journal readers re-read \
         lost messages {} times, replicas told a journal end below their position {} times",
        report.faults.len(),
        report.faults_took.as_secs_f64(),
        report.took.as_secs_f64(),
        report.acked,
        report.retries,
        report.longest_gap.as_secs_f64(),
        report.reader_rereads,
        report.guard_suspicions
    );
    assert_eq!(report.faults.len(), FAULTS);
    if report.partitions {
        assert!(
            report.faults.iter().any(|f| f.contains("cut off")),
            "a run with partitions had none"
        );
    }
    assert!(report.acked > 0);
}
