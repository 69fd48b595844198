//! The chaos run of cluster mode (issue 15), one implementation for the
//! on-demand command (`examples/cluster_chaos.rs`, 20 or more faults) and
//! the bounded test in the suite (`tests/e2e_cluster_chaos.rs`).
//!
//! On 3 real `nats-server` nodes (`sync_interval: always`) and 2 broker
//! replicas, under a steady idempotent publisher and two acknowledging
//! subscribers (one ordered), it runs random faults one at a time —
//! SIGKILL and restart, or SIGSTOP and SIGCONT, of a broker replica or a
//! NATS node, SIGKILL and restart of the journal's stream leader, and,
//! when iptables is usable (root), a network partition: one NATS node (at
//! random, or the journal's stream leader) cut off with iptables for a
//! while, then healed and waited for until it is current again — chosen
//! by a seeded generator (the seed and the fault set are printed; the same
//! seed with the same fault set makes the same choices). Faults never
//! overlap, and after each fault on a NATS node the run waits until that
//! node is current again, so at most one NATS node is ever down, cut off
//! or behind: the fault model is "any single failure". A node that does
//! not catch up even after a restart (nats-server's own catch-up stuck:
//! printed) is left as it is and the run goes on with broker faults only
//! until it is current. A run with partitions has at least one:
//! if none was drawn by the last fault, the last fault is one. After every
//! fault it checks that every replica is still running: a replica that
//! exited on its own fails the run at once
//! with its exit status and the end of its log (the kit restarts only what
//! it killed; nothing restarts a replica that died). Then the invariants:
//! no event id got two sequences; every acknowledged event was delivered on
//! both subscriptions; on the ordered one each child's events were first
//! delivered in publish order; the replicas applied the same journal,
//! hold the same state (the state machine's digest, read from each
//! replica's stopped store) and sign one audit log.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use caseshare_proto::v1 as pb;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{BrokerCluster, Consumer, Endpoint, NatsCluster, Publisher, SOCIAL_CARE};

/// How many faults a run has (`CASESHARE_CHAOS_FAULTS`).
pub const CHAOS_FAULTS_ENV: &str = "CASESHARE_CHAOS_FAULTS";
/// The seed to replay (`CASESHARE_CHAOS_SEED`, a u64).
pub const CHAOS_SEED_ENV: &str = "CASESHARE_CHAOS_SEED";
/// Whether partitions are among the faults (`CASESHARE_CHAOS_PARTITIONS`):
/// `1` requires them (the run fails if iptables is not usable), `0` leaves
/// them out (the fault set, and so the choices of a seed, of runs before
/// partitions were added), unset uses them when iptables is usable.
pub const CHAOS_PARTITIONS_ENV: &str = "CASESHARE_CHAOS_PARTITIONS";

/// How long a partition lasts beyond the drawn hold: long enough for the
/// majority to elect a new leader when the node cut off led the journal.
const PARTITION_EXTRA: Duration = Duration::from_secs(4);
/// The journal's stream.
const JOURNAL: &str = "CASESHARE_JOURNAL";
/// How long a node back after a fault has to be current again (JetStream
/// `/healthz`) before the run goes on without NATS faults.
const HEALED_WITHIN: Duration = Duration::from_secs(90);
/// When a node back after a fault and still behind has its connections
/// reset.
const RESET_AFTER: Duration = Duration::from_secs(20);
/// When a node back after a fault and still behind after the reset is
/// restarted, as an operator would (`docs/CLUSTER.md`, runbook).
const RESTART_AFTER: Duration = Duration::from_secs(40);

/// What a replica logs when its journal reader's consumer went past
/// messages lost in transit and it reads them again (`caseshare-cluster`'s
/// reader), counted for the report.
const REREAD: &str = "the consumer skipped messages lost in transit";
/// What a replica logs when the journal's end it was told is below its
/// position, which the regression guard holds against it until it passes
/// or lasts (`caseshare-server`'s `cluster::watch`).
const SUSPECT: &str = "the journal's end is below what this replica applied";

/// A chaos run's settings.
#[derive(Debug, Clone, Copy)]
pub struct Chaos {
    /// Faults, one at a time.
    pub faults: usize,
    /// The generator's seed.
    pub seed: u64,
    /// Whether network partitions are among the faults.
    pub partitions: Partitions,
}

/// Whether a run cuts NATS nodes off the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partitions {
    /// Never (process faults only).
    Off,
    /// When iptables is usable; otherwise the run says why and goes on
    /// without them.
    IfUsable,
    /// Always: the run fails if iptables is not usable.
    Required,
}

/// What a chaos run saw (every invariant held, or it panicked).
#[derive(Debug, Clone)]
pub struct ChaosReport {
    /// One line per fault, in order.
    pub faults: Vec<String>,
    /// Events acknowledged to the publisher.
    pub acked: usize,
    /// Publish calls that failed and were retried.
    pub retries: usize,
    /// The longest time without an acknowledged write.
    pub longest_gap: Duration,
    /// The journal message both replicas applied through at the end.
    pub applied: u64,
    /// The audit tree size of the larger of the two checkpoints compared.
    pub tree_size: u64,
    /// How many times a replica's journal reader found its consumer had
    /// gone past messages lost in transit and read them again (counted
    /// from the replicas' logs).
    pub reader_rereads: usize,
    /// How many times a replica was told a journal end below its position
    /// (a stale answer that passed: the run fails if the guard trips).
    pub guard_suspicions: usize,
    /// How long the faults took.
    pub faults_took: Duration,
    /// The whole run, start of the cluster to the last check.
    pub took: Duration,
    /// Whether partitions were among the faults.
    pub partitions: bool,
}

impl Chaos {
    /// `faults` faults unless `CASESHARE_CHAOS_FAULTS` says otherwise, and
    /// `CASESHARE_CHAOS_SEED` or a random seed; prints both (the line to
    /// replay the run).
    pub fn from_env(default_faults: usize) -> Chaos {
        let faults = std::env::var(CHAOS_FAULTS_ENV)
            .ok()
            .map(|s| s.parse().expect("CASESHARE_CHAOS_FAULTS is a number"))
            .unwrap_or(default_faults);
        Chaos::seeded_from_env(faults)
    }

    /// Exactly `faults` faults, with `CASESHARE_CHAOS_SEED` or a random
    /// seed; prints both.
    pub fn seeded_from_env(faults: usize) -> Chaos {
        let seed = std::env::var(CHAOS_SEED_ENV)
            .ok()
            .map(|s| s.parse().expect("CASESHARE_CHAOS_SEED is a u64"))
            .unwrap_or_else(rand::random);
        let partitions = match std::env::var(CHAOS_PARTITIONS_ENV).as_deref() {
            Ok("0") => Partitions::Off,
            Ok("1") => Partitions::Required,
            Ok(other) => panic!("{CHAOS_PARTITIONS_ENV} is 0 or 1, not {other:?}"),
            Err(_) => Partitions::IfUsable,
        };
        println!("chaos seed: {seed} (replay with {CHAOS_SEED_ENV}={seed}), faults: {faults}");
        Chaos {
            faults,
            seed,
            partitions,
        }
    }

    /// The NATS cluster: with its own addresses and iptables chains when
    /// partitions are wanted and usable. Prints the fault set (a seed
    /// replays its run with the same fault set).
    async fn start_cluster(&self) -> (BrokerCluster, bool) {
        let nats = match self.partitions {
            Partitions::Off => None,
            wanted => match NatsCluster::builder(3)
                .own_addresses(true)
                .try_start()
                .await
            {
                Ok(n) => Some(n),
                Err(e) if wanted == Partitions::Required => {
                    panic!("{CHAOS_PARTITIONS_ENV}=1 but partitions are not usable: {e}")
                }
                Err(e) => {
                    println!("no partitions in this run: {e}");
                    None
                }
            },
        };
        let with = nats.is_some();
        let nats = match nats {
            Some(n) => n,
            None => NatsCluster::start(3).await,
        };
        println!(
            "fault set: {} (replay with {CHAOS_PARTITIONS_ENV}={})",
            if with {
                "process faults and partitions"
            } else {
                "process faults only"
            },
            u8::from(with)
        );
        (BrokerCluster::start_on(nats, &[0, 1, 2], 2, &[]), with)
    }

    /// Runs the faults and checks the invariants; panics (with the seed)
    /// when one does not hold.
    pub async fn run(self) -> ChaosReport {
        let run_started = Instant::now();
        let seed = self.seed;
        let mut rng = StdRng::seed_from_u64(seed);
        let (mut c, partitions) = self.start_cluster().await;
        let mut partitioned = false;
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
        let ordered = Consumer::start(reversed(&c), SOCIAL_CARE, "ordered");
        tokio::time::sleep(Duration::from_secs(2)).await;

        let started = Instant::now();
        let mut done = Vec::new();
        // A NATS node that did not catch up (see `until_current`).
        let mut behind: Option<usize> = None;
        for k in 0..self.faults {
            if let Some(j) = behind
                && self.is_current(&c, j, self.majority(&c, j).await).await
            {
                println!("NATS node {j} is current again: NATS faults resume");
                behind = None;
            }
            // Without partitions, the same draws, in the same order, as
            // every run before them: a seed from an earlier run replays its
            // faults (with CASESHARE_CHAOS_PARTITIONS=0).
            let hold = Duration::from_millis(rng.gen_range(1_000..5_000));
            let at = started.elapsed();
            let mut kind = rng.gen_range(0..if partitions { 6 } else { 5 });
            if partitions && !partitioned && k + 1 == self.faults {
                kind = 5;
            }
            if behind.is_some() {
                // Another NATS fault would make two nodes short of the
                // journal: a broker fault instead.
                kind %= 2;
            }
            let what = match kind {
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
                    let current = self.until_current(&mut c, j, &done).await;
                    behind = behind.or(current.is_none().then_some(j));
                    format!(
                        "SIGKILL NATS node {j} ({} after its restart), restarted after",
                        caught_up(current)
                    )
                }
                3 => {
                    let j = rng.gen_range(0..3);
                    c.nats.stop(j);
                    tokio::time::sleep(hold).await;
                    c.nats.cont(j);
                    let current = self.until_current(&mut c, j, &done).await;
                    behind = behind.or(current.is_none().then_some(j));
                    format!(
                        "SIGSTOP NATS node {j} ({} after SIGCONT), SIGCONT after",
                        caught_up(current)
                    )
                }
                4 => {
                    let j = c.nats.stream_leader(JOURNAL).await;
                    let j = j.unwrap_or_else(|| rng.gen_range(0..3));
                    c.nats.kill9(j);
                    tokio::time::sleep(hold).await;
                    c.nats.restart(j).await;
                    let current = self.until_current(&mut c, j, &done).await;
                    behind = behind.or(current.is_none().then_some(j));
                    format!(
                        "SIGKILL the stream leader (NATS node {j}, {} after its restart), \
                         restarted after",
                        caught_up(current)
                    )
                }
                _ => {
                    partitioned = true;
                    let (j, which) = if rng.gen_bool(0.5) {
                        match c.nats.stream_leader(JOURNAL).await {
                            Some(j) => (j, "the stream leader, "),
                            None => (rng.gen_range(0..3), ""),
                        }
                    } else {
                        (rng.gen_range(0..3), "")
                    };
                    c.nats.partition(j);
                    tokio::time::sleep(hold + PARTITION_EXTRA).await;
                    c.nats.heal(j);
                    let current = self.until_current(&mut c, j, &done).await;
                    behind = behind.or(current.is_none().then_some(j));
                    format!(
                        "cut off {which}NATS node {j} ({} after the heal), healed after {} s + \
                         the hold",
                        caught_up(current),
                        PARTITION_EXTRA.as_secs()
                    )
                }
            };
            let line = format!(
                "fault {k} at {:.1} s: {what} {:.1} s",
                at.as_secs_f64(),
                hold.as_secs_f64()
            );
            println!("{line}");
            done.push(line);
            self.assert_running(&mut c, &done);
            publisher.set_targets(endpoints(&c));
            main.set_targets(endpoints(&c));
            ordered.set_targets(reversed(&c));
            tokio::time::sleep(Duration::from_millis(rng.gen_range(1_000..3_000))).await;
        }
        let faults_took = started.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        self.assert_running(&mut c, &done);
        let report = publisher.finish().await;
        println!(
            "{} events acknowledged, {} retried calls, longest time without an acknowledged \
             write {:.1} s",
            report.acked.len(),
            report.retries,
            report.longest_gap.as_secs_f64()
        );
        assert!(
            report.forked.is_empty(),
            "seed {seed}: two sequences for {:?}",
            report.forked
        );
        let acked: BTreeSet<u64> = report.acked.values().copied().collect();
        assert_eq!(
            acked.len(),
            report.acked.len(),
            "seed {seed}: two events share a sequence"
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
            assert!(
                got.received.keys().all(|s| acked.contains(s)),
                "seed {seed}: {name} was given an event never acknowledged"
            );
        }
        // Per child, the ordered subscription's first deliveries follow the
        // publish order (the publisher alternates children and waits for
        // each acknowledgement, so sequence order is publish order per
        // child).
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
                "seed {seed}: child {child}: first deliveries out of order: {firsts:?}"
            );
        }
        let applied = self.assert_same_position(&mut c, &done).await;
        let (ca, cb) = c.assert_one_log(0, 1).await;
        let tree_size = ca.tree_size.max(cb.tree_size);
        println!(
            "one audit log: checkpoints at tree sizes {} and {}",
            ca.tree_size, cb.tree_size
        );
        let digest = c.assert_same_state().await;
        println!("both replicas' stopped stores hold the same state: digest {digest}");
        let logged = |what: &str| -> usize {
            (0..c.len())
                .map(|i| {
                    std::fs::read_to_string(c.broker(i).log_path())
                        .unwrap_or_default()
                        .matches(what)
                        .count()
                })
                .sum()
        };
        let reader_rereads = logged(REREAD);
        let guard_suspicions = logged(SUSPECT);
        println!(
            "journal readers re-read messages lost in transit {reader_rereads} times; replicas \
             were told a journal end below their position {guard_suspicions} times"
        );
        ChaosReport {
            faults: done,
            acked: report.acked.len(),
            retries: report.retries,
            longest_gap: report.longest_gap,
            applied,
            tree_size,
            reader_rereads,
            guard_suspicions,
            faults_took,
            took: run_started.elapsed(),
            partitions,
        }
    }

    /// Waits until node `j`, back after a fault, is current again — its
    /// replica of the journal holds the last message the others held when
    /// it came back, and JetStream's `/healthz` answers 200 — so that the
    /// next fault never meets two nodes behind; gives how long that took.
    /// A node still behind [`RESET_AFTER`] has its connections reset once
    /// (printed): twice in CI a healed node stayed behind for over a
    /// minute on connections that lived through the cut. One still behind
    /// [`RESTART_AFTER`] is restarted on its own store (printed): once, on
    /// a loaded machine, a node stayed 178 messages behind for a minute
    /// after the reset. One still behind [`HEALED_WITHIN`] gives `None`
    /// (printed): once in CI a restarted node's stream group kept logging
    /// "Expected first catchup entry to be a snapshot and peerstate, will
    /// retry" for the 50 s left. The majority held every message
    /// throughout, so none of this changes what the run checks of the
    /// brokers.
    async fn until_current(
        &self,
        c: &mut BrokerCluster,
        j: usize,
        done: &[String],
    ) -> Option<Duration> {
        let healed = Instant::now();
        let mut reset = false;
        let mut restarted = false;
        let majority = self.majority(c, j).await;
        loop {
            if self.is_current(c, j, majority).await {
                return Some(healed.elapsed());
            }
            let held = c.nats.stream_state(j, JOURNAL).await.map(|s| s.last_seq);
            if !reset && healed.elapsed() > RESET_AFTER {
                reset = true;
                println!(
                    "NATS node {j} not current {RESET_AFTER:?} after it came back (it holds journal \
                     message {held:?}, the others {majority}): its connections are reset"
                );
                c.nats.reset_connections(j);
            }
            if !restarted && healed.elapsed() > RESTART_AFTER {
                restarted = true;
                println!(
                    "NATS node {j} not current {RESTART_AFTER:?} after it came back (it holds journal \
                     message {held:?}, the others {majority}): it is restarted"
                );
                c.nats.restart(j).await;
            }
            if healed.elapsed() > HEALED_WITHIN {
                println!(
                    "seed {}: NATS node {j} not current {HEALED_WITHIN:?} after it came back, even \
                     restarted (it holds journal message {held:?}, the others {majority}; its log \
                     says why): no more NATS faults until it is; faults so far:\n{}",
                    self.seed,
                    done.join("\n")
                );
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last journal message the nodes other than `j` hold.
    async fn majority(&self, c: &BrokerCluster, j: usize) -> u64 {
        let mut majority = 0;
        for i in (0..c.nats.len()).filter(|&i| i != j) {
            if let Some(s) = c.nats.stream_state(i, JOURNAL).await {
                majority = majority.max(s.last_seq);
            }
        }
        majority
    }

    /// Whether node `j` holds journal message `majority` and is healthy.
    async fn is_current(&self, c: &BrokerCluster, j: usize, majority: u64) -> bool {
        let held = c.nats.stream_state(j, JOURNAL).await.map(|s| s.last_seq);
        held.is_some_and(|l| l >= majority) && c.nats.healthy(j).await
    }

    /// Fails the run if a replica exited on its own, with its exit status
    /// and the end of its log.
    fn assert_running(&self, c: &mut BrokerCluster, done: &[String]) {
        for i in 0..c.len() {
            if let Some(status) = c.broker_mut(i).exited() {
                panic!(
                    "seed {}: broker replica {i} exited on its own ({status}) by the end of \
                     fault {}:\n{}\n--- its log (last lines):\n{}",
                    self.seed,
                    done.len().saturating_sub(1),
                    done.join("\n"),
                    c.broker(i).log_tail(40)
                );
            }
        }
    }

    /// Waits until both replicas applied the journal through the same
    /// message (still checking they run); gives it.
    async fn assert_same_position(&self, c: &mut BrokerCluster, done: &[String]) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.assert_running(c, done);
            let a = c.broker(0).metric("caseshare_journal_applied_sequence");
            let b = c.broker(1).metric("caseshare_journal_applied_sequence");
            if a == b && a > 0.0 {
                println!("both replicas applied the journal through message {a}");
                return a as u64;
            }
            assert!(
                Instant::now() < deadline,
                "seed {}: replicas at {a} and {b}",
                self.seed
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn endpoints(c: &BrokerCluster) -> Vec<Endpoint> {
    vec![c.broker(0).endpoint(), c.broker(1).endpoint()]
}

/// The ordered subscriber starts on the other replica.
fn reversed(c: &BrokerCluster) -> Vec<Endpoint> {
    vec![c.broker(1).endpoint(), c.broker(0).endpoint()]
}

/// How a fault line says when its node was current again.
fn caught_up(current: Option<Duration>) -> String {
    match current {
        Some(d) => format!("caught up {:.1} s", d.as_secs_f64()),
        None => format!("not caught up within {HEALED_WITHIN:?}"),
    }
}
