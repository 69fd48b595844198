//! The failover measurement (`--failover`, issue 15): how long writes stop
//! when the JetStream leader of the stream that holds them is SIGKILLed.
//!
//! One publisher sends one event at a time at `--rate` (200/s unless
//! given), each attempt bounded by `--attempt-timeout-ms` and retried under
//! the same event id until acknowledged (Caseshare answers a retry of a
//! stored event as a duplicate; JetStream deduplicates on `Nats-Msg-Id`).
//! After `--kill-after-secs` the bench SIGKILLs the stream's leader node:
//! for raw JetStream the leader of the R3 bench stream, for Caseshare the
//! leader of its journal stream `CASESHARE_JOURNAL` (cluster mode has no
//! broker leader: every replica proposes to the journal). The figure is
//! the longest gap between two consecutive acknowledgements, next to the
//! longest gap before the kill (the noise floor) and the time the
//! survivors took to agree on a new stream leader. No subscriber runs.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use async_nats::jetstream;
use caseshare_cli::client::Clients;
use caseshare_proto::v1 as pb;
use caseshare_proto::v1::publisher_client::PublisherClient;
use prost::Message;
use tonic::transport::Channel;

use crate::broker::{setup_broker, status};
use crate::cluster::{CaseshareCluster, Kill, kill_stream_leader, nats_label, start_nats};
use crate::measure::{Clock, Schedule, histogram, record_ns};
use crate::nats::{create_stream, nats_connect};
use crate::summary::{FailoverRun, Latency};
use crate::workload::Workload;
use crate::{BenchArgs, Target};

/// The journal stream of Caseshare's cluster mode (its default name).
const JOURNAL_STREAM: &str = "CASESHARE_JOURNAL";
/// The rate when `--rate` is not given.
const DEFAULT_RATE: f64 = 200.0;
/// Pause after a refused attempt before the next.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Runs the failover measurement for `--target`.
pub(crate) async fn run(
    args: &BenchArgs,
    out: &mut impl std::io::Write,
) -> Result<Vec<FailoverRun>> {
    let mut args = args.clone();
    if args.rate == 0.0 {
        args.rate = DEFAULT_RATE;
    }
    args.publishers = 1;
    args.subscribers = 0;
    let mut runs = Vec::new();
    if matches!(args.target, Target::Caseshare | Target::Both) {
        runs.push(caseshare(&args, out).await?);
    }
    if matches!(args.target, Target::Nats | Target::Both) {
        runs.push(nats(&args, out).await?);
    }
    Ok(runs)
}

/// Where one publish attempt goes.
enum Sender {
    Caseshare(PublisherClient<Channel>),
    Nats {
        js: jetstream::Context,
        subject: String,
    },
}

impl Sender {
    /// One attempt; `Ok(true)` when answered as a duplicate of an earlier
    /// attempt.
    async fn send(&mut self, event: &pb::CaseEvent) -> Result<bool> {
        match self {
            Sender::Caseshare(client) => {
                let r = client
                    .publish(pb::PublishRequest {
                        event: Some(event.clone()),
                        ..Default::default()
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                Ok(r.duplicate)
            }
            Sender::Nats { js, subject } => {
                let publish = jetstream::message::PublishMessage::build()
                    .payload(event.encode_to_vec().into())
                    .message_id(&event.event_id);
                let ack = js
                    .send_publish(subject.clone(), publish)
                    .await
                    .map_err(|e| anyhow!("publish: {e}"))?
                    .await
                    .map_err(|e| anyhow!("publish ack: {e}"))?;
                Ok(ack.duplicate)
            }
        }
    }
}

/// What the steady publisher saw.
struct Steady {
    /// Acknowledgement times, ns on the run's clock, in order.
    acks: Vec<u64>,
    attempts: u64,
    duplicates: u64,
    latency: hdrhistogram::Histogram<u64>,
    errors: Vec<String>,
}

/// Publishes `--events` events one at a time at `--rate`, each retried
/// under its own id until acknowledged.
async fn steady(mut sender: Sender, args: BenchArgs, w: Workload, clock: Clock) -> Result<Steady> {
    let attempt_timeout = Duration::from_millis(args.attempt_timeout_ms.max(1));
    let give_up = Duration::from_secs(args.idle_timeout_secs);
    let sched = Schedule::new(&args, tokio::time::Instant::now(), 0);
    let mut s = Steady {
        acks: Vec::with_capacity(usize::try_from(args.events).unwrap_or(0)),
        attempts: 0,
        duplicates: 0,
        latency: histogram()?,
        errors: Vec::new(),
    };
    for i in 0..args.events {
        sched.wait(i).await;
        let sent = clock.now_ns();
        let event = w.event(0, i, sent);
        let first = tokio::time::Instant::now();
        loop {
            s.attempts += 1;
            match tokio::time::timeout(attempt_timeout, sender.send(&event)).await {
                Ok(Ok(duplicate)) => {
                    let now = clock.now_ns();
                    s.duplicates += u64::from(duplicate);
                    record_ns(&mut s.latency, now.saturating_sub(sent));
                    s.acks.push(now);
                    break;
                }
                Ok(Err(e)) => {
                    if s.errors.len() < 5 {
                        s.errors.push(format!("{e:#}"));
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(_) => {}
            }
            if first.elapsed() > give_up {
                bail!(
                    "event {i} was not acknowledged within {} s ({} attempts so far); first errors: {:?}",
                    give_up.as_secs(),
                    s.attempts,
                    s.errors
                );
            }
        }
    }
    Ok(s)
}

/// The figures of one failover run.
fn figures(
    target: &str,
    endpoint: String,
    args: &BenchArgs,
    s: &Steady,
    kill: &Kill,
) -> FailoverRun {
    let ms = |ns: u64| ns as f64 / 1e6;
    // (gap, ack before it)
    let mut longest = (0u64, 0u64);
    let mut before_kill = 0u64;
    for pair in s.acks.windows(2) {
        let gap = pair[1] - pair[0];
        if gap > longest.0 {
            longest = (gap, pair[0]);
        }
        if pair[1] < kill.at_ns {
            before_kill = before_kill.max(gap);
        }
    }
    let first_after = s.acks.iter().find(|&&t| t > kill.at_ns).copied();
    FailoverRun {
        target: target.into(),
        endpoint,
        rate: args.rate,
        events: s.acks.len() as u64,
        attempts: s.attempts,
        duplicates: s.duplicates,
        killed_node: format!("n{}", kill.node),
        kill_at_secs: kill.at_ns as f64 / 1e9,
        election_secs: kill.elected_after.map(|d| d.as_secs_f64()),
        longest_gap_ms: ms(longest.0),
        longest_gap_starts_after_kill_ms: (longest.1 as f64 - kill.at_ns as f64) / 1e6,
        longest_gap_before_kill_ms: ms(before_kill),
        kill_to_next_ack_ms: first_after.map(|t| ms(t - kill.at_ns)),
        latency: Latency::of(&s.latency),
        first_errors: s.errors.clone(),
        stored: None,
    }
}

/// Kills the stream leader after `--kill-after-secs`, while `publisher` runs.
async fn kill_during(
    nats: &mut caseshare_testkit::NatsCluster,
    stream: &str,
    args: &BenchArgs,
    clock: Clock,
    publisher: &tokio::task::JoinHandle<Result<Steady>>,
    out: &mut impl std::io::Write,
) -> Result<Kill> {
    tokio::time::sleep(Duration::from_secs_f64(args.kill_after_secs)).await;
    if publisher.is_finished() {
        bail!(
            "the publisher finished before the kill: give more --events or a shorter --kill-after-secs"
        );
    }
    let kill = kill_stream_leader(nats, stream, clock).await?;
    writeln!(
        out,
        "failover: SIGKILLed n{} (leader of {stream}) at {:.2} s; new leader agreed after {}",
        kill.node,
        kill.at_ns as f64 / 1e9,
        kill.elected_after.map_or_else(
            || "no agreement within 60 s".into(),
            |d| format!("{:.2} s", d.as_secs_f64())
        )
    )?;
    Ok(kill)
}

/// Caseshare in cluster mode: publish through `--publish-replica`, kill the
/// journal's leader.
async fn caseshare(args: &BenchArgs, out: &mut impl std::io::Write) -> Result<FailoverRun> {
    writeln!(
        out,
        "failover (caseshare): starting cluster mode ({} replicas)",
        args.cluster
    )?;
    let mut cluster = CaseshareCluster::start(args, out).await?;
    let e = cluster.endpoints(args)?;
    let w = Workload::new(args)?;
    setup_broker(&e, args, &w).await?;
    let client = Clients::connect(&e.publisher)?.publisher;
    let clock = Clock::start();
    writeln!(
        out,
        "failover (caseshare): {} events at {}/s through replica {}, one at a time",
        args.events, args.rate, args.publish_replica
    )?;
    let publisher = tokio::spawn(steady(Sender::Caseshare(client), args.clone(), w, clock));
    let kill = kill_during(
        &mut cluster.nats,
        JOURNAL_STREAM,
        args,
        clock,
        &publisher,
        out,
    )
    .await;
    let s = publisher
        .await
        .map_err(|e| anyhow!("the publisher panicked: {e}"))?
        .context("the steady publisher")?;
    let kill = kill?;
    let run = figures("caseshare", e.label.clone(), args, &s, &kill);
    tokio::task::block_in_place(|| drop(cluster));
    Ok(run)
}

/// Raw JetStream: an R`--nats-cluster` stream, kill its leader.
async fn nats(args: &BenchArgs, out: &mut impl std::io::Write) -> Result<FailoverRun> {
    let mut nats = start_nats(
        args.nats_cluster as usize,
        args.nats_sync,
        args.nats_server_bin.as_deref(),
    )
    .await?;
    let label = format!("R{}; {}", nats.len(), nats_label(&nats, args.nats_sync));
    writeln!(out, "failover (nats): started {label}")?;
    let w = Workload::new(args)?;
    let name = format!("CSBENCH_{}", w.prefix);
    let subject = format!("csbench.{}.0", w.prefix);
    let urls = nats.urls();
    let client = nats_connect(&urls).await?;
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_millis(args.attempt_timeout_ms.max(1)))
        .build(client);
    let mut stream = create_stream(&js, &name, vec![subject.clone()], nats.len()).await?;
    let clock = Clock::start();
    writeln!(
        out,
        "failover (nats): {} events at {}/s to {name}, one at a time, Nats-Msg-Id = event id",
        args.events, args.rate
    )?;
    let sender = Sender::Nats { js, subject };
    let publisher = tokio::spawn(steady(sender, args.clone(), w, clock));
    let kill = kill_during(&mut nats, &name, args, clock, &publisher, out).await;
    let s = publisher
        .await
        .map_err(|e| anyhow!("the publisher panicked: {e}"))?
        .context("the steady publisher")?;
    let kill = kill?;
    let mut run = figures("nats", label, args, &s, &kill);
    // Every event stored once: no acknowledged write lost, no retry doubled.
    run.stored = stream.info().await.ok().map(|i| i.state.messages);
    tokio::task::block_in_place(|| drop(nats));
    Ok(run)
}
