//! Measuring NATS JetStream with the same workload: a `nats-server`
//! started for the bench ([`EmbeddedNats`]), a cluster of them
//! (`--nats-cluster N`, the test kit's `NatsCluster`, with an R`N` stream)
//! or a running server; a file-backed stream with one durable pull
//! consumer per subscriber (explicit acks), and the run's summary.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use async_nats::jetstream::{self, consumer, stream};
use caseshare_proto::v1 as pb;
use caseshare_testkit::{NatsCluster, nats_server_bin, server_version};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use crate::cluster::{nats_label, nats_pids, start_nats};
use crate::machine::cpu_secs;
use crate::measure::{
    Clock, PubResult, PubSpec, SubResult, SubSpec, collect, histogram, record_ns,
};
use crate::summary::RunSummary;
use crate::workload::Workload;
use crate::{BenchArgs, NatsSync, PublishMode};

/// How long a new stream (or consumer) may take to get a leader.
const STREAM_READY: Duration = Duration::from_secs(30);

/// A `nats-server` with JetStream started for the bench: one server, a
/// file store, `sync_interval` as `--nats-sync` says.
pub(crate) struct EmbeddedNats {
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
    url: String,
    version: String,
    sync: NatsSync,
}

/// The `nats-server` binary the bench runs: `--nats-server-bin`, else the
/// test kit's choice (`$CASESHARE_NATS_SERVER`, the pinned copy in the
/// target directory, `PATH`).
pub(crate) fn nats_bin(args: &BenchArgs) -> Result<PathBuf> {
    match &args.nats_server_bin {
        Some(b) => Ok(b.clone()),
        None => nats_server_bin().map_err(|e| anyhow!("{e}")),
    }
}

/// One server's configuration: loopback only, JetStream on a file store
/// under `store`, `sync_interval: always` when `sync` says so.
pub(crate) fn single_config(port: u16, store: &Path, sync: NatsSync) -> String {
    let sync = if sync.syncs_always() {
        "\n  sync_interval: always"
    } else {
        ""
    };
    format!(
        "listen: 127.0.0.1:{port}\njetstream {{\n  store_dir: {store:?}{sync}\n}}\n",
        store = store.display().to_string()
    )
}

impl EmbeddedNats {
    async fn start(args: &BenchArgs) -> Result<Self> {
        let bin = nats_bin(args)?;
        // At least 2.10: older servers have no `sync_interval`.
        let version = server_version(&bin).await.map_err(|e| anyhow!("{e}"))?;
        let parent = args.data_dir.clone().unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        let dir = tempfile::Builder::new()
            .prefix("nats-bench-")
            .tempdir_in(&parent)
            .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.port()
        };
        let config = dir.path().join("nats-server.conf");
        std::fs::write(
            &config,
            single_config(port, &dir.path().join("jetstream"), args.nats_sync),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let log = std::fs::File::create(dir.path().join("nats-server.log"))?;
        let child = tokio::process::Command::new(&bin)
            .arg("-c")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let url = format!("nats://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("nats-server did not listen on {url} within 15 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(EmbeddedNats {
            child,
            _dir: dir,
            url,
            version,
            sync: args.nats_sync,
        })
    }

    /// The server, its version and `sync_interval`.
    fn label(&self) -> String {
        format!(
            "embedded nats-server {} ({}), R1 file store, sync_interval {}",
            self.url,
            self.version.trim_start_matches("nats-server: "),
            self.sync.name()
        )
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A NATS connection to any of `urls`.
pub(crate) async fn nats_connect(urls: &[String]) -> Result<async_nats::Client> {
    async_nats::connect(urls.to_vec())
        .await
        .with_context(|| format!("connecting to NATS at {}", urls.join(",")))
}

/// What the bench started to measure NATS.
pub(crate) enum NatsServers {
    /// One `nats-server` with JetStream.
    Single(EmbeddedNats),
    /// A JetStream cluster (`--nats-cluster`).
    Cluster(NatsCluster),
}

impl NatsServers {
    /// Starts one server or, with `--nats-cluster N`, a cluster of N.
    pub(crate) async fn start(args: &BenchArgs, out: &mut impl std::io::Write) -> Result<Self> {
        if args.nats_cluster > 0 {
            let c = start_nats(
                args.nats_cluster as usize,
                args.nats_sync,
                args.nats_server_bin.as_deref(),
            )
            .await?;
            writeln!(out, "nats: started {}", nats_label(&c, args.nats_sync))?;
            Ok(NatsServers::Cluster(c))
        } else {
            let n = EmbeddedNats::start(args).await?;
            writeln!(out, "nats: started {}", n.label())?;
            Ok(NatsServers::Single(n))
        }
    }

    /// Client URLs.
    pub(crate) fn urls(&self) -> Vec<String> {
        match self {
            NatsServers::Single(n) => vec![n.url.clone()],
            NatsServers::Cluster(c) => c.urls(),
        }
    }

    fn label(&self, args: &BenchArgs) -> String {
        match self {
            NatsServers::Single(n) => n.label(),
            NatsServers::Cluster(c) => format!("R{}; {}", c.len(), nats_label(c, args.nats_sync)),
        }
    }

    fn pids(&self) -> Vec<u32> {
        match self {
            NatsServers::Single(n) => n.pid().into_iter().collect(),
            NatsServers::Cluster(c) => nats_pids(c),
        }
    }

    /// Replicas the bench stream gets: one per node.
    fn replicas(&self) -> usize {
        match self {
            NatsServers::Single(_) => 1,
            NatsServers::Cluster(c) => c.len(),
        }
    }

    async fn stop(self) {
        match self {
            NatsServers::Single(n) => n.stop().await,
            // Kills every node (SIGKILL and reap) and deletes the stores.
            NatsServers::Cluster(c) => tokio::task::block_in_place(|| drop(c)),
        }
    }
}

/// Measures JetStream, embedded (one server or a cluster) or at `--nats-url`.
pub(crate) async fn run(args: &BenchArgs, out: &mut impl std::io::Write) -> Result<RunSummary> {
    let servers = if args.embedded {
        Some(NatsServers::start(args, out).await?)
    } else {
        None
    };
    let (urls, label, pids, replicas) = match &servers {
        Some(s) => (s.urls(), s.label(args), s.pids(), s.replicas()),
        None => (
            vec![args.nats_url.clone()],
            args.nats_url.clone(),
            args.nats_pid.into_iter().collect(),
            1,
        ),
    };
    let result = measure_nats(args, &urls, label, &pids, replicas, out).await;
    if let Some(s) = servers {
        s.stop().await;
    }
    result
}

/// Creates a file-storage stream on `subjects` with `replicas` replicas
/// and waits until it has a leader.
pub(crate) async fn create_stream(
    js: &jetstream::Context,
    name: &str,
    subjects: Vec<String>,
    replicas: usize,
) -> Result<stream::Stream> {
    let mut stream = js
        .create_stream(stream::Config {
            name: name.to_string(),
            subjects,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow!("creating stream {name}: {e}"))?;
    until_ready(
        &format!("stream {name} had no leader"),
        POLL,
        |_| Ok(()),
        async || {
            let info = stream.info().await.map_err(|e| e.to_string())?;
            if has_leader(replicas, info.cluster.as_ref()) {
                Ok(())
            } else {
                Err("no leader yet".to_string())
            }
        },
    )
    .await?;
    Ok(stream)
}

/// Creates the stream and consumers, runs the workload and deletes the stream.
async fn measure_nats(
    args: &BenchArgs,
    urls: &[String],
    label: String,
    server_pids: &[u32],
    replicas: usize,
    out: &mut impl std::io::Write,
) -> Result<RunSummary> {
    let w = Arc::new(Workload::new(args)?);
    let stream_name = format!("CSBENCH_{}", w.prefix);
    let subject_root = format!("csbench.{}", w.prefix);
    let js = jetstream::new(nats_connect(urls).await?);
    writeln!(
        out,
        "nats: creating stream {stream_name} (file storage, R{replicas}) and {} durable pull consumer(s) (explicit ack)",
        args.subscribers
    )?;
    let stream = create_stream(
        &js,
        &stream_name,
        vec![format!("{subject_root}.>")],
        replicas,
    )
    .await?;
    // Each publisher's connection is made ready before anything is
    // measured: a server that has not yet learnt a new replicated
    // stream's subjects answers "no stream found" although the stream
    // has its leader (seen with R3). The probes are purged before the
    // consumers exist.
    let mut contexts = Vec::new();
    for _ in 0..args.publishers {
        let client = nats_connect(urls).await?;
        let js = jetstream::ContextBuilder::new()
            .max_ack_inflight(args.window as usize)
            .build(client);
        probe(&js, format!("{subject_root}.ready"), out).await?;
        contexts.push(js);
    }
    stream
        .purge()
        .await
        .map_err(|e| anyhow!("purging the probes from {stream_name}: {e}"))?;
    let mut consumers = Vec::new();
    for i in 0..args.subscribers {
        let name = format!("sub-{i}");
        let config = consumer::pull::Config {
            durable_name: Some(name.clone()),
            ack_policy: consumer::AckPolicy::Explicit,
            deliver_policy: consumer::DeliverPolicy::All,
            max_ack_pending: i64::from(args.max_outstanding),
            ..Default::default()
        };
        // A new consumer of a replicated stream elects its own leader.
        let mut c = until_ready(
            &format!("consumer {name} was not created"),
            Duration::from_millis(200),
            |e| writeln!(out, "nats: consumer {name} not created yet ({e}); retrying"),
            async || {
                stream
                    .create_consumer(config.clone())
                    .await
                    .map_err(|e| e.to_string())
            },
        )
        .await?;
        // Pulls before the consumer's own leader is elected get "no
        // responders".
        wait_consumer_leader(&mut c, replicas, &name).await?;
        consumers.push(name);
    }
    let clock = Clock::start();
    let servers_cpu = || -> f64 { server_pids.iter().map(|p| cpu_secs(&p.to_string())).sum() };
    let (self_before, servers_before) = (cpu_secs("self"), servers_cpu());
    let mut subscribers = Vec::new();
    for c in consumers {
        let client = nats_connect(urls).await?;
        subscribers.push(tokio::spawn(nats_subscribe(
            client,
            stream_name.clone(),
            SubSpec::new(args, &w, clock, c),
        )));
    }
    writeln!(
        out,
        "nats: publishing {} events with {} publisher(s)",
        args.events, args.publishers
    )?;
    let start_ns = clock.now_ns();
    let start = tokio::time::Instant::now();
    let mut publishers = Vec::new();
    for (p, js) in (0..args.publishers).zip(contexts) {
        let subject = format!("{subject_root}.{p}");
        let spec = PubSpec::new(args, &w, clock, start, p);
        publishers.push(tokio::spawn(nats_publish(js, subject, spec)));
    }
    let collected = collect(args, publishers, subscribers, start_ns).await;
    let servers = servers_cpu() - servers_before;
    let cpu = cpu_secs("self") - self_before + servers;
    let deleted = js.delete_stream(&stream_name).await;
    let collected = collected?;
    deleted.map_err(|e| anyhow!("deleting stream {stream_name}: {e}"))?;
    Ok(RunSummary {
        target: "nats".into(),
        endpoint: label,
        mode: args.mode(),
        publishers: args.publishers,
        subscribers: args.subscribers,
        events: args.events,
        event_bytes: w.event_bytes,
        rate: args.rate,
        window: args.window,
        max_outstanding: args.max_outstanding,
        ack_batch: args.ack_batch,
        ack_linger_ms: args.ack_linger_ms,
        elapsed_secs: collected.elapsed_secs,
        publish: collected.publish,
        delivery: collected.delivery,
        server: None,
        cpu_secs: cpu,
        cpu_us_per_event: cpu * 1e6 / args.events as f64,
        server_cpu_secs: (!server_pids.is_empty()).then_some(servers),
        traces: None,
        nats_sync: args.embedded.then_some(args.nats_sync),
        workload: None,
    })
}

/// Publishes to `subject` until JetStream acknowledges (see
/// `measure_nats`), for at most [`STREAM_READY`].
async fn probe(
    js: &jetstream::Context,
    subject: String,
    out: &mut impl std::io::Write,
) -> Result<()> {
    until_ready(
        "the stream took no publish",
        Duration::from_millis(100),
        |e| writeln!(out, "nats: the stream takes no publish yet ({e}); retrying"),
        async || {
            let ack = js
                .publish(subject.clone(), "ready".into())
                .await
                .map_err(|e| e.to_string())?;
            ack.await.map(drop).map_err(|e| e.to_string())
        },
    )
    .await
}

/// How often a leader is asked for while waiting for one.
const POLL: Duration = Duration::from_millis(50);

/// Runs `attempt` every `pause` until it succeeds, for at most
/// [`STREAM_READY`] (what a new replicated stream or consumer may take to
/// be usable), telling `retrying` of each failure; past that, the error
/// says `what` and the last failure.
async fn until_ready<T>(
    what: &str,
    pause: Duration,
    mut retrying: impl FnMut(&str) -> std::io::Result<()>,
    mut attempt: impl AsyncFnMut() -> std::result::Result<T, String>,
) -> Result<T> {
    let started = Instant::now();
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if started.elapsed() < STREAM_READY => {
                retrying(&e)?;
                tokio::time::sleep(pause).await;
            }
            Err(e) => bail!("{what} within {} s: {e}", STREAM_READY.as_secs()),
        }
    }
}

/// Waits until a consumer of an R`replicas` stream has a leader.
async fn wait_consumer_leader(
    c: &mut consumer::PullConsumer,
    replicas: usize,
    name: &str,
) -> Result<()> {
    until_ready(
        &format!("consumer {name} had no leader"),
        POLL,
        |_| Ok(()),
        async || {
            let info = c.info().await.map_err(|e| e.to_string())?;
            if has_leader(replicas, info.cluster.as_ref()) {
                Ok(())
            } else {
                Err("no leader yet".to_string())
            }
        },
    )
    .await
}

/// One publisher: JetStream publishes, acks awaited one at a time or
/// pipelined (at most `window` in flight).
async fn nats_publish(
    js: async_nats::jetstream::Context,
    subject: String,
    spec: PubSpec,
) -> Result<PubResult> {
    let PubSpec {
        w,
        clock,
        p,
        count,
        sched,
        mode,
        window,
        ..
    } = spec;
    let mut lag = histogram()?;
    match mode {
        PublishMode::Unary => {
            let mut latency = histogram()?;
            let mut last_ns = 0;
            for i in 0..count {
                if let Some(late) = sched.wait(i).await {
                    record_ns(&mut lag, late);
                }
                let sent = clock.now_ns();
                let payload = w.event(p, i, sent).encode_to_vec();
                js.publish(subject.clone(), payload.into())
                    .await
                    .map_err(|e| anyhow!("publish: {e}"))?
                    .await
                    .map_err(|e| anyhow!("publish ack: {e}"))?;
                let now = clock.now_ns();
                record_ns(&mut latency, now.saturating_sub(sent));
                last_ns = now;
            }
            Ok(PubResult {
                latency,
                lag,
                published: count,
                last_ns,
            })
        }
        PublishMode::Stream => {
            let (tx, mut rx) =
                mpsc::channel::<(async_nats::jetstream::context::PublishAckFuture, u64)>(window);
            let acker = tokio::spawn(async move {
                let mut latency = histogram()?;
                let (mut got, mut last_ns) = (0, 0);
                while let Some((ack, sent)) = rx.recv().await {
                    ack.await.map_err(|e| anyhow!("publish ack: {e}"))?;
                    let now = clock.now_ns();
                    record_ns(&mut latency, now.saturating_sub(sent));
                    got += 1;
                    last_ns = now;
                }
                Ok::<_, anyhow::Error>((latency, got, last_ns))
            });
            for i in 0..count {
                if let Some(late) = sched.wait(i).await {
                    record_ns(&mut lag, late);
                }
                let sent = clock.now_ns();
                let payload = w.event(p, i, sent).encode_to_vec();
                let ack = js
                    .publish(subject.clone(), payload.into())
                    .await
                    .map_err(|e| anyhow!("publish: {e}"))?;
                if tx.send((ack, sent)).await.is_err() {
                    break;
                }
            }
            drop(tx);
            let (latency, published, last_ns) = acker
                .await
                .map_err(|e| anyhow!("publish acker panicked: {e}"))??;
            Ok(PubResult {
                latency,
                lag,
                published,
                last_ns,
            })
        }
    }
}

/// One subscriber: a durable pull consumer, each message acknowledged.
async fn nats_subscribe(
    client: async_nats::Client,
    stream: String,
    spec: SubSpec,
) -> Result<SubResult> {
    let SubSpec {
        w,
        clock,
        name: consumer,
        total,
        idle,
        ..
    } = spec;
    // Through this subscriber's own connection.
    let consumer: async_nats::jetstream::consumer::PullConsumer =
        async_nats::jetstream::new(client)
            .get_stream(&stream)
            .await
            .map_err(|e| anyhow!("stream {stream}: {e}"))?
            .get_consumer(&consumer)
            .await
            .map_err(|e| anyhow!("consumer {consumer}: {e}"))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| anyhow!("consumer messages: {e}"))?;
    let mut latency = histogram()?;
    let (mut delivered, mut redeliveries, mut foreign, mut last_ns) = (0, 0, 0, 0);
    while delivered < total {
        let m = tokio::time::timeout(idle, messages.next())
            .await
            .map_err(|_| anyhow!("no message for {idle:?} after {delivered} of {total}"))?
            .context("the consumer stream ended")?
            .map_err(|e| anyhow!("consumer: {e}"))?;
        let now = clock.now_ns();
        let event = pb::CaseEvent::decode(m.payload.as_ref()).context("decoding a message")?;
        let attempt = m.info().map(|i| i.delivered).unwrap_or(1);
        match w.sent_ns(&event.event_id) {
            _ if attempt > 1 => redeliveries += 1,
            Some(sent) => {
                record_ns(&mut latency, now.saturating_sub(sent));
                delivered += 1;
                last_ns = now;
            }
            None => foreign += 1,
        }
        m.ack().await.map_err(|e| anyhow!("ack: {e}"))?;
    }
    Ok(SubResult {
        latency,
        delivered,
        redeliveries,
        foreign,
        ack_messages: delivered + redeliveries + foreign,
        last_ns,
    })
}

/// Whether a stream or consumer of `replicas` replicas has a leader (a
/// single replica always has).
fn has_leader(
    replicas: usize,
    cluster: Option<&async_nats::jetstream::stream::ClusterInfo>,
) -> bool {
    replicas == 1 || cluster.and_then(|c| c.leader.as_ref()).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_server_syncs_as_told_on_loopback() {
        let store = Path::new("/d/jetstream");
        let always = single_config(4222, store, NatsSync::Always);
        assert_eq!(
            always,
            "listen: 127.0.0.1:4222\njetstream {\n  store_dir: \"/d/jetstream\"\n  sync_interval: always\n}\n"
        );
        let default = single_config(4222, store, NatsSync::Default);
        assert!(!default.contains("sync_interval"), "{default}");
        assert!(default.contains("store_dir: \"/d/jetstream\""), "{default}");
    }

    #[test]
    fn the_binary_given_is_the_one_run() {
        let a = crate::args::testing::parse(&["--nats-server-bin", "/x/nats-server"]);
        assert_eq!(nats_bin(&a).ok(), Some(PathBuf::from("/x/nats-server")));
    }
}
