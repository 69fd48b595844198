//! The clusters the bench starts for the cluster measurements (issue 15):
//! a JetStream cluster of real `nats-server` processes on loopback (the
//! test kit's [`NatsCluster`], `sync_interval` as `--nats-sync` says), and
//! Caseshare in cluster mode ([`CaseshareCluster`]): such a 3-node NATS
//! cluster and `--cluster` broker replicas, each a real `caseshare serve`
//! process (the kit's [`Broker`]) with `CASESHARE_STORE_BACKEND=nats`, the
//! first replica's `pki/` and `secrets/` copied into every other replica's
//! empty data directory before its first start (`docs/CLUSTER.md`). It also
//! finds and SIGKILLs a stream's JetStream leader (the failover
//! measurement) and lists every process whose CPU time a run counts.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use caseshare_testkit::{Broker, NatsCluster, copy_dir};

use crate::broker::Endpoints;
use crate::{BenchArgs, NatsSync, PUBLISHER_AGENCY, SUBSCRIBER_AGENCY};

/// The NATS nodes under a Caseshare cluster.
const CASESHARE_NATS_NODES: usize = 3;
/// How long every replica may take to become ready (`/readyz` 200).
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a new stream leader may take to be elected after a kill.
const ELECTION_LIMIT: Duration = Duration::from_secs(60);

/// Starts a JetStream cluster of `nodes` nodes with `--nats-sync` (`both`
/// counts as `always`), running `--nats-server-bin` if given.
pub(crate) async fn start_nats(
    nodes: usize,
    sync: NatsSync,
    bin: Option<&Path>,
) -> Result<NatsCluster> {
    let mut builder = NatsCluster::builder(nodes).sync_always(sync.syncs_always());
    if let Some(bin) = bin {
        builder = builder.binary(bin);
    }
    builder
        .try_start()
        .await
        .map_err(|e| anyhow!("the NATS cluster did not start: {e}"))
}

/// The process ids of every running node of `nats`.
pub(crate) fn nats_pids(nats: &NatsCluster) -> Vec<u32> {
    (0..nats.len()).filter_map(|i| nats.pid(i)).collect()
}

/// A one-line description of a NATS cluster the bench started.
pub(crate) fn nats_label(nats: &NatsCluster, sync: NatsSync) -> String {
    let sync = if sync.syncs_always() {
        "always"
    } else {
        "default"
    };
    format!(
        "{} nats-server nodes ({}), sync_interval {sync}",
        nats.len(),
        nats.version().trim_start_matches("nats-server: ")
    )
}

/// Caseshare in cluster mode: NATS nodes and broker replicas, all real
/// processes, killed when it is dropped.
pub(crate) struct CaseshareCluster {
    /// The broker replicas (dropped first: they are killed before NATS).
    pub(crate) brokers: Vec<Broker>,
    /// The JetStream cluster holding the journal.
    pub(crate) nats: NatsCluster,
    sync: NatsSync,
    _dir: tempfile::TempDir,
}

impl CaseshareCluster {
    /// Starts the NATS cluster and `--cluster` replicas (in the temporary
    /// directory under `--data-dir`), and waits until every replica is ready.
    pub(crate) async fn start(args: &BenchArgs, out: &mut impl std::io::Write) -> Result<Self> {
        let nats = start_nats(
            CASESHARE_NATS_NODES,
            args.nats_sync,
            args.nats_server_bin.as_deref(),
        )
        .await?;
        writeln!(out, "cluster: {}", nats_label(&nats, args.nats_sync))?;
        let parent = args.data_dir.clone().unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        let dir = tempfile::Builder::new()
            .prefix("caseshare-bench-cluster-")
            .tempdir_in(&parent)
            .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;
        let env: Vec<(String, String)> = vec![
            ("CASESHARE_STORE_BACKEND".into(), "nats".into()),
            ("CASESHARE_NATS_SERVERS".into(), nats.urls().join(",")),
            (
                "CASESHARE_MAX_OUTSTANDING".into(),
                args.max_outstanding.max(1_000).to_string(),
            ),
        ];
        let mut brokers = Vec::new();
        for i in 0..args.cluster as usize {
            let replica = dir.path().join(format!("replica-{i}"));
            let data = replica.join("data");
            std::fs::create_dir_all(&data)
                .with_context(|| format!("creating {}", data.display()))?;
            if let Some(first) = brokers.first().map(Broker::data) {
                // The same TLS files and keys on every replica.
                for part in ["pki", "secrets"] {
                    copy_dir(&first.join(part), &data.join(part));
                }
            }
            let env = env.clone();
            let started = Instant::now();
            let b = tokio::task::spawn_blocking(move || start_replica(replica, &env))
                .await
                .map_err(|e| anyhow!("starting replica {i}: {e}"))?
                .with_context(|| format!("starting replica {i}"))?;
            wait_ready(&b, i).await?;
            writeln!(
                out,
                "cluster: replica {i} ready in {:.1} s (grpc {}, ops {}, pid {})",
                started.elapsed().as_secs_f64(),
                b.grpc,
                b.ops,
                b.pid()
            )?;
            brokers.push(b);
        }
        Ok(CaseshareCluster {
            brokers,
            nats,
            sync: args.nats_sync,
            _dir: dir,
        })
    }

    /// Admin and publishers on `--publish-replica`, subscribers on
    /// `--subscribe-replica`; `/metrics` of the publish replica.
    pub(crate) fn endpoints(&self, args: &BenchArgs) -> Result<Endpoints> {
        let replica = |i: u32| {
            self.brokers
                .get(i as usize)
                .with_context(|| format!("no replica {i}"))
        };
        let (p, s) = (args.publish_replica, args.subscribe_replica());
        let publish = replica(p)?;
        let subscribe = replica(s)?;
        Ok(Endpoints {
            admin: publish.client_config("admin"),
            publisher: publish.client_config(PUBLISHER_AGENCY),
            subscriber: subscribe.client_config(SUBSCRIBER_AGENCY),
            ops: Some(publish.ops.to_string()),
            label: format!(
                "cluster mode: {} replicas on {}; publish via replica {p}{}",
                self.brokers.len(),
                nats_label(&self.nats, self.sync),
                if args.subscribers > 0 {
                    format!(", subscribe via replica {s}")
                } else {
                    String::new()
                }
            ),
        })
    }

    /// Every process of the cluster: replicas, then NATS nodes.
    pub(crate) fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.brokers.iter().map(Broker::pid).collect();
        pids.extend(nats_pids(&self.nats));
        pids
    }
}

/// Starts one replica on `dir` (blocking: the kit waits for its listening
/// line).
fn start_replica(dir: PathBuf, env: &[(String, String)]) -> Result<Broker> {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Broker::builder()
        .dir(&dir)
        .envs(&env)
        .log("warn")
        .try_start()
        .map_err(|r| anyhow!("the broker exited ({}): {}", r.status, r.stderr))
}

/// Waits until replica `i` answers `/readyz` with 200 (it has applied the
/// journal as it stood at its start).
async fn wait_ready(b: &Broker, i: usize) -> Result<()> {
    let started = Instant::now();
    loop {
        let ops = b.ops;
        // The kit's GET (blocking; it panics on a refused connection,
        // which counts as not ready yet).
        let got = tokio::task::spawn_blocking(move || caseshare_testkit::http_get(ops, "/readyz"));
        if let Ok((200, _)) = got.await {
            return Ok(());
        }
        if started.elapsed() > READY_TIMEOUT {
            bail!(
                "replica {i} was not ready within {} s (its log: {})",
                READY_TIMEOUT.as_secs(),
                b.log_path().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What killing a stream leader did.
#[derive(Debug, Clone)]
pub(crate) struct Kill {
    /// The node killed (`n{i}`).
    pub(crate) node: usize,
    /// When, in the run's clock (ns).
    pub(crate) at_ns: u64,
    /// How long until the survivors agreed on a new leader of the stream
    /// (from the monitoring endpoints, polled every 50 ms).
    pub(crate) elected_after: Option<Duration>,
}

/// SIGKILLs the JetStream leader of `stream` and waits for a new one.
pub(crate) async fn kill_stream_leader(
    nats: &mut NatsCluster,
    stream: &str,
    clock: crate::measure::Clock,
) -> Result<Kill> {
    let node = nats
        .stream_leader(stream)
        .await
        .with_context(|| format!("the nodes do not agree on a leader of stream {stream}"))?;
    let at_ns = clock.now_ns();
    // SIGKILL and reap: immediate, but a blocking wait.
    tokio::task::block_in_place(|| nats.kill9(node));
    let elected_after = nats
        .wait_stream_leader(stream, Some(node), ELECTION_LIMIT)
        .await
        .map(|(_, d)| d);
    Ok(Kill {
        node,
        at_ns,
        elected_after,
    })
}
