//! The chaos run (issue 15), a command:
//! `CASESHARE_CHAOS_FAULTS=25 cargo run -p caseshare-cli --example cluster_chaos`
//! (build the `caseshare` binary first: `cargo build -p caseshare-cli --bin
//! caseshare`). It runs random faults — SIGKILL and restart, or SIGSTOP and
//! SIGCONT, of broker replicas and NATS nodes, kills of the journal's
//! stream leader and, when iptables is usable (root), network partitions
//! of a NATS node (cut off, healed, current again) — one at a time, under
//! a steady idempotent publisher and two acknowledging subscribers (one
//! ordered), on 3 real `nats-server` nodes and 2 broker replicas, then
//! checks the invariants: no event id got two sequences; every
//! acknowledged event was delivered on both subscriptions; on the ordered one each child's events were first
//! delivered in publish order; no replica exited on its own; the replicas
//! applied the same journal, hold the same state and sign one audit log.
//! The driver is the test kit's [`Chaos`], shared with the bounded run in
//! the suite (`tests/e2e_cluster_chaos.rs`).
//!
//! `CASESHARE_CHAOS_FAULTS` (default 20), `CASESHARE_CHAOS_SEED` (printed
//! at the start: replays the same choices) and `CASESHARE_CHAOS_PARTITIONS`
//! (`1` requires partitions, `0` leaves them out; printed too) steer it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use caseshare_testkit::Chaos;

/// Exits non-zero (a panic) when an invariant does not hold.
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let report = Chaos::from_env(20).run().await;
    println!(
        "chaos run passed ({}): {} faults in {:.1} s ({:.1} s in all), {} events acknowledged, \
         longest time without an acknowledged write {:.1} s, journal readers re-read lost \
         messages {} times, told a journal end below their position {} times, journal message \
         {}, tree size {}",
        if report.partitions {
            "with partitions"
        } else {
            "process faults only"
        },
        report.faults.len(),
        report.faults_took.as_secs_f64(),
        report.took.as_secs_f64(),
        report.acked,
        report.longest_gap.as_secs_f64(),
        report.reader_rereads,
        report.guard_suspicions,
        report.applied,
        report.tree_size
    );
}
