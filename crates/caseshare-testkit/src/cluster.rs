//! A Caseshare cluster for tests: a real 3-node NATS JetStream cluster
//! ([`NatsCluster`], `sync_interval: always`) and broker replicas, each a
//! real `caseshare serve` process ([`Broker`]) with its own data directory
//! and ports, in cluster mode (`CASESHARE_STORE_BACKEND=nats`). The first
//! replica makes the dev PKI and keys; the others get copies of its
//! `pki/` and `secrets/` folders in their empty data directories before
//! their first start, the supported way to give every replica the same TLS
//! files and keys (`docs/CLUSTER.md`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use caseshare_proto::v1 as pb;

use crate::{AUDITOR, Broker, Endpoint, NatsCluster, Refused, copy_dir};

/// Broker replicas on a NATS cluster.
pub struct BrokerCluster {
    brokers: Vec<Option<Broker>>,
    env: Vec<(String, String)>,
    /// The NATS cluster (kill, stop and restart its nodes through it).
    pub nats: NatsCluster,
    dir: tempfile::TempDir,
}

impl BrokerCluster {
    /// Three NATS nodes and `replicas` brokers.
    pub async fn start(replicas: usize) -> BrokerCluster {
        Self::start_with(replicas, &[]).await
    }

    /// As [`BrokerCluster::start`], with extra environment for every
    /// broker.
    pub async fn start_with(replicas: usize, env: &[(&str, &str)]) -> BrokerCluster {
        let nats = NatsCluster::start(3).await;
        let all: Vec<usize> = (0..nats.len()).collect();
        Self::start_on(nats, &all, replicas, env)
    }

    /// `replicas` brokers on a NATS cluster the caller started (with
    /// [`crate::NatsClusterBuilder`]), given the client URLs of nodes
    /// `nodes` only (`CASESHARE_NATS_SERVERS`), with extra environment.
    pub fn start_on(
        nats: NatsCluster,
        nodes: &[usize],
        replicas: usize,
        env: &[(&str, &str)],
    ) -> BrokerCluster {
        assert!(replicas >= 1 && !nodes.is_empty());
        let servers: Vec<String> = nodes.iter().map(|&i| nats.url(i)).collect();
        let dir = tempfile::Builder::new()
            .prefix("caseshare-cluster-")
            .tempdir()
            .unwrap();
        let mut all = vec![
            ("CASESHARE_STORE_BACKEND".to_string(), "nats".to_string()),
            ("CASESHARE_NATS_SERVERS".to_string(), servers.join(",")),
        ];
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut cluster = BrokerCluster {
            brokers: Vec::new(),
            env: all,
            nats,
            dir,
        };
        for _ in 0..replicas {
            cluster.add_replica();
        }
        cluster
    }

    /// Starts one more replica (its data directory seeded with the first
    /// replica's `pki/` and `secrets/`); gives its index.
    pub fn add_replica(&mut self) -> usize {
        self.add_replica_with(None)
    }

    /// Starts one more replica given the client URLs of NATS nodes `nodes`
    /// only (it may still learn the others from the servers' gossip).
    pub fn add_replica_on(&mut self, nodes: &[usize]) -> usize {
        let servers: Vec<String> = nodes.iter().map(|&i| self.nats.url(i)).collect();
        self.add_replica_with(Some(servers.join(",")))
    }

    /// Starts one more replica under the command line `wrap` (e.g. `env
    /// LD_PRELOAD=…/libfaketimeMT.so.1 FAKETIME=+20s`; see
    /// [`crate::BrokerBuilder::wrap`]: a restart runs it bare); gives its
    /// index. The wrapper must exec the broker, as `env` does: one that
    /// forks (the `faketime` command) gets the kit's signals in its place
    /// and leaves the broker running after the test.
    pub fn add_replica_wrapped(&mut self, wrap: &[String]) -> usize {
        let i = self.brokers.len();
        match self.launch_replica_wrapped(None, wrap) {
            Ok(b) => self.brokers.push(Some(b)),
            Err(r) => panic!(
                "replica {i} did not start under {wrap:?} ({}); stderr:\n{}",
                r.status, r.stderr
            ),
        }
        i
    }

    /// As [`BrokerCluster::add_replica`], but a replica that refuses to
    /// start is returned as [`Refused`] (its directory removed, no replica
    /// added).
    pub fn try_add_replica(&mut self) -> Result<usize, Refused> {
        let i = self.brokers.len();
        match self.launch_replica(None) {
            Ok(b) => {
                self.brokers.push(Some(b));
                Ok(i)
            }
            Err(r) => {
                let _ = std::fs::remove_dir_all(self.replica_dir(i));
                Err(r)
            }
        }
    }

    fn add_replica_with(&mut self, servers: Option<String>) -> usize {
        let i = self.brokers.len();
        match self.launch_replica(servers) {
            Ok(b) => self.brokers.push(Some(b)),
            Err(r) => panic!(
                "replica {i} did not start ({}); stderr:\n{}",
                r.status, r.stderr
            ),
        }
        i
    }

    fn launch_replica(&self, servers: Option<String>) -> Result<Broker, Refused> {
        self.launch_replica_wrapped(servers, &[])
    }

    fn launch_replica_wrapped(
        &self,
        servers: Option<String>,
        wrap: &[String],
    ) -> Result<Broker, Refused> {
        let i = self.brokers.len();
        let dir = self.replica_dir(i);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        if i > 0 {
            let first = self.replica_dir(0).join("data");
            for part in ["pki", "secrets"] {
                copy_dir(&first.join(part), &dir.join("data").join(part));
            }
        }
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| match (k.as_str(), &servers) {
                ("CASESHARE_NATS_SERVERS", Some(s)) => (k.as_str(), s.as_str()),
                _ => (k.as_str(), v.as_str()),
            })
            .collect();
        Broker::builder()
            .topology(crate::Topology::Single)
            .dir(&dir)
            .envs(&env)
            .wrap(wrap)
            .try_start()
    }

    /// The test directory of replica `i` (its data directory is `data/`).
    pub fn replica_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("replica-{i}"))
    }

    /// Replaces stopped replica `to`'s data directory with a copy of
    /// stopped replica `from`'s (the supported way to seed a replica,
    /// `docs/CLUSTER.md`). Both must be stopped.
    pub fn seed_from(&self, from: usize, to: usize) {
        for i in [from, to] {
            assert!(
                !self.brokers[i].as_ref().is_some_and(Broker::running),
                "replica {i} must be stopped to copy its data directory"
            );
        }
        let target = self.replica_dir(to).join("data");
        if target.exists() {
            std::fs::remove_dir_all(&target).unwrap();
        }
        copy_dir(&self.replica_dir(from).join("data"), &target);
    }

    /// The directory holding every replica's.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Replica `i`.
    pub fn broker(&self, i: usize) -> &Broker {
        self.brokers[i].as_ref().expect("replica is stopped")
    }

    /// Replica `i`, mutably (kill9, restart).
    pub fn broker_mut(&mut self, i: usize) -> &mut Broker {
        self.brokers[i].as_mut().expect("replica is stopped")
    }

    /// How many replicas were started.
    pub fn len(&self) -> usize {
        self.brokers.len()
    }

    /// True with no replica.
    pub fn is_empty(&self) -> bool {
        self.brokers.is_empty()
    }

    /// The environment every broker runs with (backend, servers, extras).
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// One audit log: the checkpoints replicas `a` and `b` sign are
    /// consistent — the larger one's replica proves (RFC 6962) that its
    /// tree extends the smaller's, checked here with the audit crate, and
    /// both carry the one log key. Reading a checkpoint is itself audited,
    /// so sizes never settle; consistency is what an auditor checks. Gives
    /// both checkpoints.
    pub async fn assert_one_log(&self, a: usize, b: usize) -> (pb::Checkpoint, pb::Checkpoint) {
        assert_one_log(&self.broker(a).endpoint(), &self.broker(b).endpoint()).await
    }

    /// One state: stops every replica (SIGTERM: each applies its own last
    /// proposals and stops) and reads each one's store as a restart would,
    /// comparing the state machine's digest (configuration, subscriptions
    /// and counters, `Machine::digest`) at the journal position each store
    /// records. A replica that stopped behind the others (a write arrived
    /// between the stops) is restarted alone, catches up and is stopped
    /// again. Gives the digest, hex. The replicas stay stopped.
    pub async fn assert_same_state(&mut self) -> String {
        for _ in 0..3 {
            for i in 0..self.len() {
                if self.brokers[i].as_ref().is_some_and(Broker::running) {
                    let status = self.broker_mut(i).stop().await;
                    assert!(status.success(), "replica {i} stopped with {status}");
                }
            }
            let states: Vec<(u64, [u8; 32])> =
                (0..self.len()).map(|i| self.stored_state(i)).collect();
            let end = states.iter().map(|s| s.0).max().unwrap_or(0);
            if states.iter().all(|s| s.0 == end) {
                for (i, s) in states.iter().enumerate() {
                    assert_eq!(
                        s.1, states[0].1,
                        "replicas 0 and {i} applied the journal through message {end} and \
                         hold different states"
                    );
                }
                return states[0].1.iter().map(|b| format!("{b:02x}")).collect();
            }
            for (i, s) in states.iter().enumerate() {
                if s.0 < end {
                    self.broker_mut(i).restart();
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while (self.broker(i).metric("caseshare_journal_applied_sequence") as u64) < end
                    {
                        assert!(Instant::now() < deadline, "replica {i} did not reach {end}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
        panic!("the replicas never stopped at one journal position");
    }

    /// The journal position and state digest of stopped replica `i`'s
    /// store.
    fn stored_state(&self, i: usize) -> (u64, [u8; 32]) {
        use caseshare_store::Storage;
        let store =
            caseshare_store::SledStore::open(&self.replica_dir(i).join("data/store"), 8 << 20)
                .unwrap();
        let snap = store.load().unwrap();
        let digest = caseshare_state::Machine::from_snapshot(&snap, Vec::new()).digest();
        (snap.journal_position, digest)
    }
}

/// One audit log behind two brokers (replicas, or containers of a compose
/// cluster): the checkpoints `a` and `b` sign are consistent — the larger
/// one's broker proves (RFC 6962) that its tree extends the smaller's,
/// checked here with the audit crate — and both carry the one log key.
/// Reading a checkpoint is itself audited, so sizes never settle;
/// consistency is what an auditor checks. Gives both checkpoints.
pub async fn assert_one_log(a: &Endpoint, b: &Endpoint) -> (pb::Checkpoint, pb::Checkpoint) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ca, cb) = (checkpoint(a).await, checkpoint(b).await);
        let (old, new, prover) = if ca.tree_size <= cb.tree_size {
            (&ca, &cb, b)
        } else {
            (&cb, &ca, a)
        };
        if old.tree_size > 0 {
            consistent(prover, old, new).await.unwrap_or_else(|e| {
                panic!(
                    "the brokers at {} and {} fork: {e}: {ca:?} {cb:?}",
                    a.grpc, b.grpc
                )
            });
            assert_eq!(ca.vkey, cb.vkey, "one log key on every replica");
            return (ca, cb);
        }
        assert!(Instant::now() < deadline, "no checkpoint: {ca:?} {cb:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn checkpoint(e: &Endpoint) -> pb::Checkpoint {
    e.client(AUDITOR)
        .audit
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await
        .unwrap()
        .into_inner()
}

impl Drop for BrokerCluster {
    /// A failing test shows the end of every replica's log and keeps the
    /// replicas' directories.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for i in 0..self.brokers.len() {
            let log =
                std::fs::read_to_string(self.replica_dir(i).join("broker.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("--- replica {i} log (last lines):");
            for l in &lines[lines.len().saturating_sub(25)..] {
                eprintln!("{l}");
            }
        }
        self.dir.disable_cleanup(true);
        eprintln!(
            "replicas' directories (whole logs, stores) kept in {}",
            self.dir.path().display()
        );
    }
}

/// Whether `prover`'s log proves (RFC 6962, checked with the audit crate)
/// that checkpoint `new` extends checkpoint `old`.
async fn consistent(
    prover: &Endpoint,
    old: &pb::Checkpoint,
    new: &pb::Checkpoint,
) -> Result<(), String> {
    let proof = prover
        .client(AUDITOR)
        .audit
        .get_consistency_proof(pb::GetConsistencyProofRequest {
            from_size: old.tree_size,
            to_size: new.tree_size,
        })
        .await
        .map_err(|s| s.to_string())?
        .into_inner();
    caseshare_audit::merkle::verify_consistency(
        old.tree_size,
        new.tree_size,
        &proof.hashes,
        &old.root_hash,
        &new.root_hash,
    )
    .map_err(|e| e.to_string())
}

/// The log behind `b` continues the one that signed `before` (a broker
/// restored from a backup, or migrated): `b`'s checkpoint now is no
/// smaller, carries the same log key and is proved consistent with
/// `before`. Gives `b`'s checkpoint.
pub async fn assert_extends(b: &Endpoint, before: &pb::Checkpoint) -> pb::Checkpoint {
    let after = checkpoint(b).await;
    assert!(after.tree_size >= before.tree_size, "{before:?} {after:?}");
    assert_eq!(after.vkey, before.vkey, "one log key");
    consistent(b, before, &after)
        .await
        .unwrap_or_else(|e| panic!("the log at {} does not extend {before:?}: {e}", b.grpc));
    after
}
