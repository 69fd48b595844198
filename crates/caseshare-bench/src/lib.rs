//! `caseshare-bench`: a load generator that measures the broker, or NATS
//! JetStream with the same workload, on one machine.
//!
//! The workload: `--publishers` tasks publish `--events` attendance-concern
//! events in total (agency `school-b`, about `--children` different
//! children), each event padded through its `summary` so that the encoded
//! `CaseEvent` is `--payload-bytes` long; `--subscribers` consumers
//! (agency `la-social-care-c`, one subscription each) each consume every
//! event and acknowledge it on the stream. The agreement the bench puts
//! shares the whole payload (`fields` empty), so nothing is minimised away
//! and every delivery carries the full padded event, as NATS does.
//!
//! Every event carries its send time (nanoseconds since the bench started)
//! as the last part of its `event_id`; the time is read back from publish
//! responses and deliveries, so latencies need no bookkeeping. Latencies go
//! into HDR histograms (microseconds, 3 significant figures).
//!
//! Against the broker it also scrapes `/metrics` before and after the load
//! to report flushes (group commits) per second, events and records per
//! commit and how busy the commit thread was.
//!
//! `--target nats` runs the same workload against a JetStream stream (file
//! storage, one replica) with one durable pull consumer per subscriber
//! (explicit acks); `--target both` runs the broker first, then NATS, and
//! reports the ratios. With `--embedded` the bench starts what it measures
//! itself: the broker in-process on a temporary data directory, and
//! `nats-server -js` on loopback on another.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use caseshare_proto::v1 as pb;
use clap::{Args, ValueEnum};
use futures::FutureExt;
use hdrhistogram::Histogram;
use prost::Message;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use caseshare_cli::client::{ClientConfig, Clients};

/// The agency that publishes.
pub const PUBLISHER_AGENCY: &str = "school-b";
/// The agency that subscribes.
pub const SUBSCRIBER_AGENCY: &str = "la-social-care-c";
/// The agreement the bench puts (provider → recipient, whole payload).
pub const AGREEMENT_ID: &str = "bench-school-b-la-social-care-c";
const EVENT_TYPE: &str = "education.attendance_concern";
/// Highest latency the histograms hold: 10 minutes, in microseconds.
const MAX_LATENCY_US: u64 = 600_000_000;

/// Which system the bench measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// The Caseshare broker.
    Caseshare,
    /// NATS JetStream.
    Nats,
    /// The broker, then NATS JetStream, with ratios.
    Both,
}

/// How publishers send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// Pipelined: `PublishStream`, or JetStream publishes whose acks are
    /// awaited in order while later ones are sent (at most `--window` in
    /// flight per publisher).
    Stream,
    /// One at a time: unary `Publish`, or a JetStream publish whose ack is
    /// awaited before the next.
    Unary,
}

/// `caseshare-bench` options.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Start what is measured on this machine: the broker in-process on a
    /// temporary data directory (its dev PKI under `<data_dir>/pki`) and, for
    /// `--target nats|both`, `nats-server -js` on loopback.
    #[arg(long, conflicts_with = "server")]
    pub embedded: bool,
    /// A running broker's gRPC address, e.g. `https://localhost:7443`.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// The running broker's ops address, for `/metrics` (flush figures),
    /// e.g. `http://127.0.0.1:7444`.
    #[arg(long, value_name = "URL", requires = "server")]
    pub ops: Option<String>,
    /// A dev PKI directory (`caseshare dev-pki --out DIR`, or a broker's
    /// `<data_dir>/pki`): `ca.pem`, `admin.pem`/`admin.key` and
    /// `<agency>.pem`/`<agency>.key`. `--ca`, `--cert`, `--key` and
    /// `--agency-certs` override its parts.
    #[arg(long, value_name = "DIR")]
    pub pki: Option<PathBuf>,
    /// CA bundle the server certificate chains to.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// An admin client certificate (registers the agencies, puts the
    /// agreement).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// The admin client key.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Directory with `school-b.pem`/`.key` and `la-social-care-c.pem`/`.key`.
    #[arg(long, value_name = "DIR")]
    pub agency_certs: Option<PathBuf>,
    /// Name to verify in the server certificate (default: the URL's host).
    #[arg(long)]
    pub domain: Option<String>,
    /// Publisher tasks (each with its own connection).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub publishers: u32,
    /// Subscribers (each its own subscription or consumer, and connection);
    /// each receives every event. 0 measures publishing alone.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=256))]
    pub subscribers: u32,
    /// Events to publish, across all publishers.
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Size of each encoded event, bytes (the `summary` is padded to reach
    /// it).
    #[arg(long, default_value_t = 512)]
    pub payload_bytes: usize,
    /// Events per second across all publishers; 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Pipelined publishing (`PublishStream`) [default].
    #[arg(long, conflicts_with = "unary")]
    pub stream: bool,
    /// One-at-a-time publishing (unary `Publish`).
    #[arg(long)]
    pub unary: bool,
    /// With `--stream`: most publishes in flight per publisher.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub window: u32,
    /// Most unacknowledged deliveries per subscriber (`max_outstanding`;
    /// JetStream `max_ack_pending`).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_outstanding: u32,
    /// Most delivery ids per ack message on the Subscribe stream (acks are
    /// sent as soon as no further delivery is waiting, or at this many).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub ack_batch: u32,
    /// Hold acks up to this long (ms) for more deliveries before sending
    /// them, unless `--ack-batch` ids are waiting; 0 = send as soon as no
    /// further delivery is waiting.
    #[arg(long, default_value_t = 0.0)]
    pub ack_linger_ms: f64,
    /// Distinct children the events are about.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub children: u32,
    /// Write the JSON summary here.
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<PathBuf>,
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Target::Caseshare)]
    pub target: Target,
    /// A running NATS server with JetStream (used without `--embedded`).
    #[arg(long, value_name = "URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// With `--embedded`: the `nats-server` binary.
    #[arg(long, default_value = "nats-server")]
    pub nats_server_bin: PathBuf,
    /// With `--embedded`: where the temporary data directories go (default:
    /// the system temp dir). Put it on the disk you want to measure.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Give up when a subscriber or publisher waits this long for anything.
    #[arg(long, default_value_t = 60)]
    pub idle_timeout_secs: u64,
}

impl BenchArgs {
    fn mode(&self) -> PublishMode {
        if self.unary {
            PublishMode::Unary
        } else {
            PublishMode::Stream
        }
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// Publishing figures.
#[derive(Debug, Clone, Serialize)]
pub struct PublishFigures {
    /// Events acknowledged by the server.
    pub events: u64,
    /// Events per second, from the first send to the last response.
    pub events_per_sec: f64,
    /// Publish → response (for the broker: durable).
    pub latency: Latency,
    /// With `--rate`: how late sends were against their schedule (the
    /// generator falling behind shows here, not in the latencies).
    pub schedule_lag: Option<Latency>,
}

/// Delivery figures, over all subscribers.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryFigures {
    /// First deliveries received (events × subscribers).
    pub deliveries: u64,
    /// Deliveries with attempt > 1.
    pub redeliveries: u64,
    /// Deliveries of events this run did not publish (ignored).
    pub foreign: u64,
    /// Ack messages the subscribers sent (for the broker: `SubscribeRequest`s
    /// carrying acks; for NATS: one per message).
    pub ack_messages: u64,
    /// Delivery ids per ack message.
    pub ids_per_ack_message: f64,
    /// Events per second each subscriber received, from the first send to
    /// the last delivery (the slowest subscriber).
    pub events_per_sec: f64,
    /// Publish (send) → delivery received.
    pub latency: Latency,
}

/// The broker's own figures, from `/metrics` deltas over the run.
#[derive(Debug, Clone, Serialize)]
pub struct ServerFigures {
    /// Group commits (each one `apply_batch` + flush + `fdatasync`).
    pub commits: f64,
    /// Commits per second of the run.
    pub flushes_per_sec: f64,
    /// Events published per commit (commits of any kind).
    pub events_per_commit: f64,
    /// sled records written per commit.
    pub records_per_commit: f64,
    /// Writer operations (publishes, delivery batches, ack batches, …) per
    /// commit.
    pub ops_per_commit: f64,
    /// Mean time from a batch's first op to its commit being durable.
    pub mean_commit_ms: f64,
    /// Fraction of the run the writer thread spent in batches.
    pub writer_busy_fraction: f64,
    /// sled records written per published event.
    pub records_per_event: f64,
    /// Deliveries recorded.
    pub deliveries: f64,
    /// Acks recorded.
    pub acks: f64,
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// `caseshare` or `nats`.
    pub target: String,
    /// How the broker was reached (`embedded`, a URL).
    pub endpoint: String,
    /// Publishing mode.
    pub mode: PublishMode,
    /// Publisher tasks.
    pub publishers: u32,
    /// Subscribers.
    pub subscribers: u32,
    /// Events published.
    pub events: u64,
    /// Encoded size of each event (and, for NATS, of each message), bytes.
    pub event_bytes: usize,
    /// Target rate, events/s (0 = as fast as possible).
    pub rate: f64,
    /// Pipelining window per publisher (`--stream`).
    pub window: u32,
    /// Unacknowledged deliveries allowed per subscriber.
    pub max_outstanding: u32,
    /// Most ids per ack message (broker only).
    pub ack_batch: u32,
    /// How long acks were held for more (broker only), ms.
    pub ack_linger_ms: f64,
    /// Wall time from the first send to the last delivery, seconds.
    pub elapsed_secs: f64,
    /// Publishing.
    pub publish: PublishFigures,
    /// Delivery.
    pub delivery: DeliveryFigures,
    /// The broker's flush figures (`None` for NATS, or without `--ops`).
    pub server: Option<ServerFigures>,
    /// CPU seconds used during the run by this process (which includes an
    /// embedded broker) and by an embedded `nats-server`.
    pub cpu_secs: f64,
    /// `cpu_secs` per published event, microseconds.
    pub cpu_us_per_event: f64,
}

/// Where it ran.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs.
    pub nproc: usize,
    /// CPU model.
    pub cpu_model: String,
    /// Memory, GiB.
    pub mem_gib: f64,
    /// `/proc/loadavg` when the bench started (other load skews figures).
    pub loadavg_at_start: String,
}

/// Caseshare ÷ NATS for the same workload (`None` where NATS measured 0).
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    /// Publish events/s.
    pub publish_events_per_sec: Option<f64>,
    /// Delivered events/s per subscriber.
    pub delivery_events_per_sec: Option<f64>,
    /// Publish → response p50.
    pub publish_p50: Option<f64>,
    /// Publish → response p99.
    pub publish_p99: Option<f64>,
    /// Publish → delivery p50.
    pub delivery_p50: Option<f64>,
    /// Publish → delivery p99.
    pub delivery_p99: Option<f64>,
    /// CPU per event.
    pub cpu_per_event: Option<f64>,
}

/// What `run` measured.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The machine.
    pub machine: Machine,
    /// One run per target.
    pub runs: Vec<RunSummary>,
    /// Caseshare ÷ NATS, with `--target both`.
    pub ratios: Option<Ratios>,
}

/// Runs the bench, printing progress and a readable summary to `out`, and
/// writes the JSON summary to `--json-out`.
pub async fn run(args: BenchArgs, out: &mut impl std::io::Write) -> Result<Summary> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if args.events == 0 {
        bail!("--events must be at least 1");
    }
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        bail!("--rate must be 0 (as fast as possible) or a positive number of events/s");
    }
    let machine = machine();
    writeln!(
        out,
        "machine: {} CPUs ({}), {:.1} GiB RAM, load {}",
        machine.nproc, machine.cpu_model, machine.mem_gib, machine.loadavg_at_start
    )?;
    let mut runs = Vec::new();
    if matches!(args.target, Target::Caseshare | Target::Both) {
        let r = run_caseshare(&args, out).await?;
        print_run(out, &r)?;
        runs.push(r);
    }
    if matches!(args.target, Target::Nats | Target::Both) {
        let r = run_nats(&args, out).await?;
        print_run(out, &r)?;
        runs.push(r);
    }
    let ratios = match (
        runs.iter().find(|r| r.target == "caseshare"),
        runs.iter().find(|r| r.target == "nats"),
    ) {
        (Some(c), Some(n)) => Some(ratios(c, n)),
        _ => None,
    };
    if let Some(r) = &ratios {
        writeln!(out, "caseshare ÷ nats:")?;
        let x = |v: Option<f64>| v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.2}×"));
        writeln!(
            out,
            "  publish events/s {}, delivered events/s {}, CPU per event {}",
            x(r.publish_events_per_sec),
            x(r.delivery_events_per_sec),
            x(r.cpu_per_event)
        )?;
        writeln!(
            out,
            "  publish→response p50 {} p99 {}; publish→delivery p50 {} p99 {}",
            x(r.publish_p50),
            x(r.publish_p99),
            x(r.delivery_p50),
            x(r.delivery_p99)
        )?;
    }
    let summary = Summary {
        machine,
        runs,
        ratios,
    };
    if let Some(path) = &args.json_out {
        let text = serde_json::to_string_pretty(&summary)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        writeln!(out, "wrote {}", path.display())?;
    }
    Ok(summary)
}

fn ratios(c: &RunSummary, n: &RunSummary) -> Ratios {
    let div = |a: f64, b: f64| (b > 0.0).then(|| a / b);
    Ratios {
        publish_events_per_sec: div(c.publish.events_per_sec, n.publish.events_per_sec),
        delivery_events_per_sec: div(c.delivery.events_per_sec, n.delivery.events_per_sec),
        publish_p50: div(c.publish.latency.p50_ms, n.publish.latency.p50_ms),
        publish_p99: div(c.publish.latency.p99_ms, n.publish.latency.p99_ms),
        delivery_p50: div(c.delivery.latency.p50_ms, n.delivery.latency.p50_ms),
        delivery_p99: div(c.delivery.latency.p99_ms, n.delivery.latency.p99_ms),
        cpu_per_event: div(c.cpu_us_per_event, n.cpu_us_per_event),
    }
}

fn fmt_latency(l: &Latency) -> String {
    format!(
        "p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms",
        l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms
    )
}

fn print_run(out: &mut impl std::io::Write, r: &RunSummary) -> Result<()> {
    let rate = if r.rate > 0.0 {
        format!("{} events/s", r.rate)
    } else {
        "as fast as possible".into()
    };
    let mode = match r.mode {
        PublishMode::Stream => format!("pipelined (window {})", r.window),
        PublishMode::Unary => "one at a time".into(),
    };
    let acks = if r.target == "caseshare" {
        format!("acks ≤{} ids, linger {} ms, ", r.ack_batch, r.ack_linger_ms)
    } else {
        String::new()
    };
    writeln!(
        out,
        "== {} ({}): {} events of {} bytes, {} publisher(s) {}, {} subscriber(s) ({}max_outstanding {}), {}",
        r.target,
        r.endpoint,
        r.events,
        r.event_bytes,
        r.publishers,
        mode,
        r.subscribers,
        acks,
        r.max_outstanding,
        rate
    )?;
    writeln!(
        out,
        "  publish   {:>10.0} events/s   publish→response  {}",
        r.publish.events_per_sec,
        fmt_latency(&r.publish.latency)
    )?;
    writeln!(
        out,
        "  delivery  {:>10.0} events/s   publish→delivery  {}   ({} deliveries, {} redeliveries, {:.1} ids per ack message)",
        r.delivery.events_per_sec,
        fmt_latency(&r.delivery.latency),
        r.delivery.deliveries,
        r.delivery.redeliveries,
        r.delivery.ids_per_ack_message
    )?;
    if let Some(lag) = &r.publish.schedule_lag {
        writeln!(
            out,
            "  schedule lag (sends behind the --rate schedule): {}",
            fmt_latency(lag)
        )?;
    }
    if let Some(s) = &r.server {
        writeln!(
            out,
            "  server    {:.0} flushes/s, {:.1} events/commit, {:.1} records/commit ({:.1} per event), {:.1} ops/commit, mean commit {:.3} ms, commit thread busy {:.0}%",
            s.flushes_per_sec,
            s.events_per_commit,
            s.records_per_commit,
            s.records_per_event,
            s.ops_per_commit,
            s.mean_commit_ms,
            s.writer_busy_fraction * 100.0
        )?;
    }
    writeln!(
        out,
        "  cpu       {:.2} s ({:.1} µs per event), elapsed {:.2} s",
        r.cpu_secs, r.cpu_us_per_event, r.elapsed_secs
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Shared pieces: clock, histograms, workload, schedule.

/// Nanoseconds since the bench started, shared by every task.
#[derive(Debug, Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).map_err(|e| anyhow!("histogram: {e}"))
}

fn record_ns(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record((ns / 1000).max(1));
}

fn merge(into: &mut Histogram<u64>, from: &Histogram<u64>) -> Result<()> {
    into.add(from).map_err(|e| anyhow!("histogram: {e}"))
}

/// The events the bench publishes.
#[derive(Debug)]
struct Workload {
    /// Unique per run, so that ids never collide with an earlier run's
    /// (the broker would answer them as duplicates).
    prefix: String,
    template: pb::CaseEvent,
    children: Vec<String>,
    event_bytes: usize,
    publishers: u64,
}

fn nhs_numbers(count: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(count);
    let mut n: u64 = 400_000_000;
    while out.len() < count && n < 1_000_000_000 {
        if let Some(nhs) = caseshare_core::nhs::with_check_digit(&format!("{n:09}")) {
            out.push(nhs);
        }
        n += 7;
    }
    out
}

const PAD: &str = "Attendance has fallen sharply this half term; the school has written to \
                   the family twice and offered an early help assessment. ";

impl Workload {
    fn new(args: &BenchArgs) -> Result<Self> {
        let run = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let prefix = format!("bench{run:x}{:x}", std::process::id());
        let children = nhs_numbers(args.children as usize);
        let first = children
            .first()
            .cloned()
            .context("could not make NHS numbers")?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let mut template = pb::CaseEvent {
            event_id: String::new(),
            child: Some(pb::ChildRef {
                nhs_number: first,
                local_ids: vec![],
            }),
            purpose: pb::Purpose::EarlyHelp as i32,
            occurred_at: Some(prost_types::Timestamp {
                seconds: i64::try_from(now).unwrap_or(1_793_000_000) - 3600,
                nanos: 0,
            }),
            summary: String::new(),
            payload: Some(pb::case_event::Payload::EducationAttendanceConcern(
                pb::AttendanceConcern {
                    period: "2026-autumn-1".into(),
                    attendance_percent: 78.5,
                    unauthorised_sessions: 11,
                },
            )),
            ..Default::default()
        };
        let mut w = Workload {
            prefix,
            template: template.clone(),
            children,
            event_bytes: 0,
            publishers: u64::from(args.publishers),
        };
        // Ids are fixed-width, so every event encodes to the same size.
        template.event_id = w.event_id(0, 0, 0);
        let base = template.encoded_len();
        let max_summary = 4_000;
        if args.payload_bytes > base {
            // Tag + length prefix of the summary take 2-3 bytes.
            let mut n = (args.payload_bytes - base)
                .saturating_sub(2)
                .min(max_summary);
            loop {
                template.summary = PAD.chars().cycle().take(n).collect();
                if template.encoded_len() <= args.payload_bytes || n == 0 {
                    break;
                }
                n -= 1;
            }
            if template.encoded_len() < args.payload_bytes && n == max_summary {
                bail!(
                    "--payload-bytes {} is more than an event can carry ({} bytes with a {max_summary}-character summary)",
                    args.payload_bytes,
                    template.encoded_len()
                );
            }
        }
        w.event_bytes = template.encoded_len();
        template.event_id.clear();
        w.template = template;
        Ok(w)
    }

    fn event_id(&self, publisher: u64, index: u64, sent_ns: u64) -> String {
        format!("{}-{publisher:04}-{index:010}-{sent_ns:016}", self.prefix)
    }

    fn event(&self, publisher: u64, index: u64, sent_ns: u64) -> pb::CaseEvent {
        let mut e = self.template.clone();
        e.event_id = self.event_id(publisher, index, sent_ns);
        let child = usize::try_from(index * self.publishers + publisher).unwrap_or(0);
        if let Some(nhs) = self.children.get(child % self.children.len().max(1)) {
            e.child = Some(pb::ChildRef {
                nhs_number: nhs.clone(),
                local_ids: vec![],
            });
        }
        e
    }

    /// The send time carried in one of this run's event ids.
    fn sent_ns(&self, event_id: &str) -> Option<u64> {
        let rest = event_id.strip_prefix(self.prefix.as_str())?;
        rest.rsplit_once('-')?.1.parse().ok()
    }
}

/// When each of one publisher's events is due, with `--rate`.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    start: tokio::time::Instant,
    /// Seconds between this publisher's events; `None` = no pacing.
    interval: Option<f64>,
    offset: f64,
}

impl Schedule {
    fn new(args: &BenchArgs, start: tokio::time::Instant, publisher: u32) -> Self {
        if args.rate > 0.0 {
            let per = args.rate / f64::from(args.publishers);
            let interval = 1.0 / per;
            Schedule {
                start,
                interval: Some(interval),
                offset: interval * f64::from(publisher) / f64::from(args.publishers),
            }
        } else {
            Schedule {
                start,
                interval: None,
                offset: 0.0,
            }
        }
    }

    /// Sleeps until event `i` is due; returns how late the send is, ns.
    async fn wait(&self, i: u64) -> Option<u64> {
        let interval = self.interval?;
        let due = self.start + Duration::from_secs_f64(self.offset + interval * i as f64);
        tokio::time::sleep_until(due).await;
        Some(
            u64::try_from(
                tokio::time::Instant::now()
                    .saturating_duration_since(due)
                    .as_nanos(),
            )
            .unwrap_or(u64::MAX),
        )
    }
}

/// How many events publisher `p` sends.
fn share(total: u64, publishers: u32, p: u32) -> u64 {
    let n = u64::from(publishers);
    total / n + u64::from(u64::from(p) < total % n)
}

/// What one publisher measured.
#[derive(Debug)]
struct PubResult {
    latency: Histogram<u64>,
    lag: Histogram<u64>,
    published: u64,
    last_ns: u64,
}

/// When a subscriber sends its acks.
#[derive(Debug, Clone, Copy)]
struct AckPolicy {
    /// Most ids per ack message.
    batch: usize,
    /// How long the first held id may wait for more.
    linger: Duration,
}

/// What one subscriber measured.
#[derive(Debug)]
struct SubResult {
    latency: Histogram<u64>,
    delivered: u64,
    redeliveries: u64,
    foreign: u64,
    ack_messages: u64,
    last_ns: u64,
}

struct Collected {
    publish: PublishFigures,
    delivery: DeliveryFigures,
    elapsed_secs: f64,
}

async fn collect(
    args: &BenchArgs,
    publishers: Vec<JoinHandle<Result<PubResult>>>,
    subscribers: Vec<JoinHandle<Result<SubResult>>>,
    start_ns: u64,
) -> Result<Collected> {
    let mut pub_latency = histogram()?;
    let mut lag = histogram()?;
    let mut published = 0;
    let mut pub_last = start_ns;
    for (i, h) in publishers.into_iter().enumerate() {
        let r = h
            .await
            .map_err(|e| anyhow!("publisher {i} panicked: {e}"))?
            .with_context(|| format!("publisher {i}"))?;
        merge(&mut pub_latency, &r.latency)?;
        merge(&mut lag, &r.lag)?;
        published += r.published;
        pub_last = pub_last.max(r.last_ns);
    }
    let mut del_latency = histogram()?;
    let (mut delivered, mut redeliveries, mut foreign, mut ack_messages) = (0, 0, 0, 0);
    let mut del_last = start_ns;
    for (i, h) in subscribers.into_iter().enumerate() {
        let r = h
            .await
            .map_err(|e| anyhow!("subscriber {i} panicked: {e}"))?
            .with_context(|| format!("subscriber {i}"))?;
        merge(&mut del_latency, &r.latency)?;
        delivered += r.delivered;
        redeliveries += r.redeliveries;
        foreign += r.foreign;
        ack_messages += r.ack_messages;
        del_last = del_last.max(r.last_ns);
    }
    let secs = |end: u64| (end.saturating_sub(start_ns)) as f64 / 1e9;
    let per_sec = |n: u64, end: u64| {
        let s = secs(end);
        if s > 0.0 { n as f64 / s } else { 0.0 }
    };
    Ok(Collected {
        publish: PublishFigures {
            events: published,
            events_per_sec: per_sec(published, pub_last),
            latency: Latency::of(&pub_latency),
            schedule_lag: (args.rate > 0.0).then(|| Latency::of(&lag)),
        },
        delivery: DeliveryFigures {
            deliveries: delivered,
            redeliveries,
            foreign,
            ack_messages,
            ids_per_ack_message: if ack_messages > 0 {
                (delivered + redeliveries + foreign) as f64 / ack_messages as f64
            } else {
                0.0
            },
            events_per_sec: if args.subscribers == 0 {
                0.0
            } else {
                per_sec(delivered / u64::from(args.subscribers), del_last)
            },
            latency: Latency::of(&del_latency),
        },
        elapsed_secs: secs(pub_last.max(del_last)),
    })
}

// ---------------------------------------------------------------------------
// Machine and process figures.

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Machine {
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model,
        mem_gib: mem_kib / (1024.0 * 1024.0),
        loadavg_at_start: std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
    }
}

/// User + system CPU seconds of a process (`self` or a pid), from
/// `/proc/<pid>/stat` (clock ticks of 1/100 s, as on every Linux build the
/// bench targets).
fn cpu_secs(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the line.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

// ---------------------------------------------------------------------------
// The broker.

/// A broker started in-process.
struct EmbeddedBroker {
    _dir: tempfile::TempDir,
    grpc: std::net::SocketAddr,
    ops: std::net::SocketAddr,
    pki: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), caseshare_server::ServeError>>>,
}

impl EmbeddedBroker {
    async fn start(args: &BenchArgs) -> Result<Self> {
        let parent = args.data_dir.clone().unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        let dir = tempfile::Builder::new()
            .prefix("caseshare-bench-")
            .tempdir_in(&parent)
            .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;
        let mut config = caseshare_server::config::Config {
            data_dir: dir.path().join("data"),
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            ops_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Default::default()
        };
        config.limits.max_outstanding = config.limits.max_outstanding.max(args.max_outstanding);
        config.validate()?;
        let pki = config.data_dir.join("pki");
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (bound_tx, bound_rx) = oneshot::channel();
        let mut task = tokio::spawn(caseshare_server::serve(
            config,
            async move {
                let _ = stop_rx.await;
            },
            move |b| {
                let _ = bound_tx.send(b);
            },
        ));
        let bound = tokio::select! {
            b = bound_rx => b.map_err(|_| anyhow!("the embedded broker stopped before listening"))?,
            r = &mut task => {
                return match r {
                    Ok(Ok(())) => Err(anyhow!("the embedded broker stopped before listening")),
                    Ok(Err(e)) => Err(anyhow!("the embedded broker did not start: {e}")),
                    Err(e) => Err(anyhow!("the embedded broker panicked: {e}")),
                };
            }
            _ = tokio::time::sleep(Duration::from_secs(60)) => bail!("the embedded broker did not start within 60 s"),
        };
        Ok(EmbeddedBroker {
            _dir: dir,
            grpc: bound.grpc,
            ops: bound.ops,
            pki,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }

    async fn stop(mut self) -> Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            match tokio::time::timeout(Duration::from_secs(30), t).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => bail!("the embedded broker failed: {e}"),
                Ok(Err(e)) => bail!("the embedded broker panicked: {e}"),
                Err(_) => bail!("the embedded broker did not stop within 30 s"),
            }
        }
        Ok(())
    }
}

/// How to reach the broker as each identity.
#[derive(Debug, Clone)]
struct Endpoints {
    admin: ClientConfig,
    publisher: ClientConfig,
    subscriber: ClientConfig,
    ops: Option<String>,
    label: String,
}

fn endpoints_remote(args: &BenchArgs, server: &str) -> Result<Endpoints> {
    let pki = args.pki.as_deref();
    let pick = |explicit: &Option<PathBuf>, file: &str, flag: &str| -> Result<PathBuf> {
        explicit
            .clone()
            .or_else(|| pki.map(|d| d.join(file)))
            .with_context(|| format!("--server needs {flag} (or --pki DIR)"))
    };
    let ca = pick(&args.ca, "ca.pem", "--ca")?;
    let admin_cert = pick(&args.cert, "admin.pem", "--cert")?;
    let admin_key = pick(&args.key, "admin.key", "--key")?;
    let agencies = args
        .agency_certs
        .clone()
        .or_else(|| args.pki.clone())
        .context("--server needs --agency-certs DIR (or --pki DIR)")?;
    let conf = |cert: PathBuf, key: PathBuf| ClientConfig {
        server: server.to_string(),
        ca: ca.clone(),
        cert,
        key,
        domain: args.domain.clone(),
    };
    let agency = |name: &str| {
        conf(
            agencies.join(format!("{name}.pem")),
            agencies.join(format!("{name}.key")),
        )
    };
    let ops = args.ops.as_ref().map(|u| {
        u.trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string()
    });
    Ok(Endpoints {
        admin: conf(admin_cert, admin_key),
        publisher: agency(PUBLISHER_AGENCY),
        subscriber: agency(SUBSCRIBER_AGENCY),
        ops,
        label: server.to_string(),
    })
}

fn endpoints_embedded(b: &EmbeddedBroker) -> Endpoints {
    let server = format!("https://127.0.0.1:{}", b.grpc.port());
    let conf = |name: &str| ClientConfig {
        domain: Some("localhost".into()),
        ..ClientConfig::dev(server.clone(), &b.pki, name)
    };
    Endpoints {
        admin: conf("admin"),
        publisher: conf(PUBLISHER_AGENCY),
        subscriber: conf(SUBSCRIBER_AGENCY),
        ops: Some(b.ops.to_string()),
        label: "embedded".into(),
    }
}

fn status(s: tonic::Status) -> anyhow::Error {
    anyhow!("{:?}: {}", s.code(), s.message())
}

async fn setup_broker(e: &Endpoints, args: &BenchArgs, w: &Workload) -> Result<Vec<String>> {
    let mut admin = Clients::connect(&e.admin)?;
    for (id, kind) in [
        (PUBLISHER_AGENCY, pb::AgencyKind::Education),
        (SUBSCRIBER_AGENCY, pb::AgencyKind::SocialCare),
    ] {
        match admin
            .admin
            .register_agency(pb::RegisterAgencyRequest {
                agency_id: id.into(),
                kind: kind as i32,
                display_name: id.into(),
            })
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::AlreadyExists => {}
            Err(s) => return Err(status(s)).context(format!("registering agency {id}")),
        }
    }
    admin
        .admin
        .put_agreement(pb::Agreement {
            agreement_id: AGREEMENT_ID.into(),
            provider: PUBLISHER_AGENCY.into(),
            recipient: SUBSCRIBER_AGENCY.into(),
            purposes: vec![pb::Purpose::EarlyHelp as i32],
            event_types: vec![EVENT_TYPE.into()],
            // Empty = the whole payload: nothing is minimised away.
            fields: vec![],
            lawful_basis: pb::LawfulBasis::PublicTask as i32,
            requires_consent: false,
            ..Default::default()
        })
        .await
        .map_err(status)
        .context("putting the bench agreement")?;
    let mut sub = Clients::connect(&e.subscriber)?;
    let mut names = Vec::new();
    for i in 0..args.subscribers {
        let name = format!("{}-{i}", w.prefix);
        sub.subscriber
            .create_subscription(pb::Subscription {
                name: name.clone(),
                event_types: vec![EVENT_TYPE.into()],
                ..Default::default()
            })
            .await
            .map_err(status)
            .with_context(|| format!("creating subscription {name}"))?;
        names.push(name);
    }
    Ok(names)
}

async fn teardown_broker(e: &Endpoints, names: &[String]) -> Result<()> {
    let mut sub = Clients::connect(&e.subscriber)?;
    for name in names {
        sub.subscriber
            .delete_subscription(pb::DeleteSubscriptionRequest { name: name.clone() })
            .await
            .map_err(status)
            .with_context(|| format!("deleting subscription {name}"))?;
    }
    Ok(())
}

/// Prometheus text from the ops port, as name (with labels) → value.
async fn scrape(addr: &str) -> Result<HashMap<String, f64>> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the ops port {addr}"))?;
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await?;
    let body = buf.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.trim().to_string(), v.trim().parse().ok()?))
        })
        .collect())
}

fn server_figures(
    before: &HashMap<String, f64>,
    after: &HashMap<String, f64>,
    elapsed_secs: f64,
) -> ServerFigures {
    let d = |k: &str| after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
    let per = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let commits = d("caseshare_store_commits_total");
    let records = d("caseshare_store_records_total");
    let published = d("caseshare_events_published_total");
    let commit_secs = d("caseshare_store_commit_seconds_sum");
    ServerFigures {
        commits,
        flushes_per_sec: per(commits, elapsed_secs),
        events_per_commit: per(published, commits),
        records_per_commit: per(records, commits),
        ops_per_commit: per(
            d("caseshare_store_ops_per_commit_sum"),
            d("caseshare_store_ops_per_commit_count"),
        ),
        mean_commit_ms: per(
            commit_secs * 1000.0,
            d("caseshare_store_commit_seconds_count"),
        ),
        writer_busy_fraction: per(commit_secs, elapsed_secs),
        records_per_event: per(records, published),
        deliveries: d("caseshare_deliveries_total"),
        acks: d("caseshare_acks_total"),
    }
}

async fn run_caseshare(args: &BenchArgs, out: &mut impl std::io::Write) -> Result<RunSummary> {
    let embedded = if args.embedded {
        writeln!(out, "caseshare: starting an embedded broker")?;
        Some(EmbeddedBroker::start(args).await?)
    } else {
        None
    };
    let endpoints = match (&embedded, &args.server) {
        (Some(b), _) => endpoints_embedded(b),
        (None, Some(server)) => endpoints_remote(args, server)?,
        (None, None) => bail!("--target caseshare needs --embedded or --server URL"),
    };
    let result = measure_caseshare(args, &endpoints, out).await;
    if let Some(b) = embedded {
        let stopped = b.stop().await;
        if result.is_ok() {
            stopped?;
        }
    }
    result
}

async fn measure_caseshare(
    args: &BenchArgs,
    e: &Endpoints,
    out: &mut impl std::io::Write,
) -> Result<RunSummary> {
    let w = Arc::new(Workload::new(args)?);
    writeln!(
        out,
        "caseshare: registering agencies, putting agreement {AGREEMENT_ID}, creating {} subscription(s)",
        args.subscribers
    )?;
    let names = setup_broker(e, args, &w).await?;
    let clock = Clock(Instant::now());
    let idle = Duration::from_secs(args.idle_timeout_secs);
    let mut subscribers = Vec::new();
    for name in &names {
        subscribers.push(tokio::spawn(cs_subscribe(
            e.subscriber.clone(),
            w.clone(),
            clock,
            name.clone(),
            args.max_outstanding,
            args.events,
            AckPolicy {
                batch: args.ack_batch as usize,
                linger: Duration::from_secs_f64(args.ack_linger_ms.max(0.0) / 1000.0),
            },
            idle,
        )));
    }
    let before = match &e.ops {
        Some(ops) => Some(scrape(ops).await?),
        None => None,
    };
    let cpu_before = cpu_secs("self");
    writeln!(
        out,
        "caseshare: publishing {} events with {} publisher(s)",
        args.events, args.publishers
    )?;
    let start_ns = clock.now_ns();
    let start = tokio::time::Instant::now();
    let mut publishers = Vec::new();
    for p in 0..args.publishers {
        let spec = PubSpec::new(args, &w, clock, start, p);
        let conf = e.publisher.clone();
        publishers.push(match args.mode() {
            PublishMode::Stream => tokio::spawn(cs_publish_stream(conf, spec)),
            PublishMode::Unary => tokio::spawn(cs_publish_unary(conf, spec)),
        });
    }
    let collected = collect(args, publishers, subscribers, start_ns).await?;
    let cpu = cpu_secs("self") - cpu_before;
    let server = match (&e.ops, before) {
        (Some(ops), Some(before)) => {
            let after = scrape(ops).await?;
            Some(server_figures(&before, &after, collected.elapsed_secs))
        }
        _ => None,
    };
    teardown_broker(e, &names).await?;
    Ok(RunSummary {
        target: "caseshare".into(),
        endpoint: e.label.clone(),
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
        server,
        cpu_secs: cpu,
        cpu_us_per_event: cpu * 1e6 / args.events as f64,
    })
}

fn check_shared(r: &pb::PublishResponse) -> Result<()> {
    let shared = r
        .decisions
        .iter()
        .any(|d| d.agency_id == SUBSCRIBER_AGENCY && d.decision == pb::Decision::Shared as i32);
    if shared {
        Ok(())
    } else {
        bail!(
            "event {} was not shared with {SUBSCRIBER_AGENCY} (decisions: {:?}); the bench agreement does not cover it",
            r.event_id,
            r.decisions
        )
    }
}

/// One publisher's part of the workload.
#[derive(Debug, Clone)]
struct PubSpec {
    w: Arc<Workload>,
    clock: Clock,
    /// Its index.
    p: u64,
    /// Events it publishes.
    count: u64,
    sched: Schedule,
    mode: PublishMode,
    /// Most publishes in flight (`--stream`).
    window: usize,
    idle: Duration,
    /// Check the first response shares the event with the subscriber agency.
    check: bool,
}

impl PubSpec {
    fn new(
        args: &BenchArgs,
        w: &Arc<Workload>,
        clock: Clock,
        start: tokio::time::Instant,
        p: u32,
    ) -> Self {
        PubSpec {
            w: w.clone(),
            clock,
            p: u64::from(p),
            count: share(args.events, args.publishers, p),
            sched: Schedule::new(args, start, p),
            mode: args.mode(),
            window: args.window as usize,
            idle: Duration::from_secs(args.idle_timeout_secs),
            check: args.subscribers > 0,
        }
    }
}

async fn cs_publish_stream(conf: ClientConfig, spec: PubSpec) -> Result<PubResult> {
    let PubSpec {
        w,
        clock,
        p,
        count,
        sched,
        window,
        idle,
        check,
        ..
    } = spec;
    let mut client = Clients::connect(&conf)?.publisher;
    let (tx, rx) = mpsc::channel::<pb::PublishRequest>(window.clamp(1, 4096));
    let permits = Arc::new(Semaphore::new(window));
    let sender = {
        let (w, permits) = (w.clone(), permits.clone());
        tokio::spawn(async move {
            let mut lag = histogram()?;
            for i in 0..count {
                permits.acquire().await?.forget();
                if let Some(late) = sched.wait(i).await {
                    record_ns(&mut lag, late);
                }
                let event = w.event(p, i, clock.now_ns());
                let request = pb::PublishRequest {
                    event: Some(event),
                    ..Default::default()
                };
                if tx.send(request).await.is_err() {
                    break;
                }
            }
            Ok::<_, anyhow::Error>(lag)
        })
    };
    let mut latency = histogram()?;
    let mut got = 0;
    let mut last_ns = 0;
    let received = async {
        let mut responses = client
            .publish_stream(ReceiverStream::new(rx))
            .await
            .map_err(status)?
            .into_inner();
        while got < count {
            let r = tokio::time::timeout(idle, responses.message())
                .await
                .map_err(|_| anyhow!("no publish response for {idle:?} after {got} of {count}"))?
                .map_err(status)?
                .with_context(|| {
                    format!("the broker ended the publish stream after {got} of {count}")
                })?;
            let now = clock.now_ns();
            if got == 0 && check {
                check_shared(&r)?;
            }
            let sent = w
                .sent_ns(&r.event_id)
                .with_context(|| format!("unexpected event id {:?} in a response", r.event_id))?;
            record_ns(&mut latency, now.saturating_sub(sent));
            permits.add_permits(1);
            got += 1;
            last_ns = now;
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    // Unblocks the sender if the stream failed.
    permits.close();
    received?;
    let lag = sender
        .await
        .map_err(|e| anyhow!("publish sender panicked: {e}"))??;
    Ok(PubResult {
        latency,
        lag,
        published: got,
        last_ns,
    })
}

async fn cs_publish_unary(conf: ClientConfig, spec: PubSpec) -> Result<PubResult> {
    let PubSpec {
        w,
        clock,
        p,
        count,
        sched,
        check,
        ..
    } = spec;
    let mut client = Clients::connect(&conf)?.publisher;
    let mut latency = histogram()?;
    let mut lag = histogram()?;
    let mut last_ns = 0;
    for i in 0..count {
        if let Some(late) = sched.wait(i).await {
            record_ns(&mut lag, late);
        }
        let sent = clock.now_ns();
        let r = client
            .publish(pb::PublishRequest {
                event: Some(w.event(p, i, sent)),
                ..Default::default()
            })
            .await
            .map_err(status)?
            .into_inner();
        let now = clock.now_ns();
        if i == 0 && check {
            check_shared(&r)?;
        }
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

#[allow(clippy::too_many_arguments)]
async fn cs_subscribe(
    conf: ClientConfig,
    w: Arc<Workload>,
    clock: Clock,
    name: String,
    max_outstanding: u32,
    total: u64,
    ack: AckPolicy,
    idle: Duration,
) -> Result<SubResult> {
    let ack_batch = ack.batch;
    let mut client = Clients::connect(&conf)?.subscriber;
    let (tx, rx) = mpsc::channel(1024);
    tx.send(pb::SubscribeRequest {
        subscription: name.clone(),
        max_outstanding,
        ..Default::default()
    })
    .await?;
    let mut stream = client
        .subscribe(ReceiverStream::new(rx))
        .await
        .map_err(status)?
        .into_inner();
    let mut latency = histogram()?;
    let (mut delivered, mut redeliveries, mut foreign, mut last_ns) = (0, 0, 0, 0);
    let mut acks: Vec<String> = Vec::with_capacity(ack_batch);
    let mut ack_messages = 0;
    let mut ack_due = tokio::time::Instant::now();
    while delivered < total {
        // Ack what has arrived as soon as nothing more is waiting.
        let next = if acks.is_empty() {
            tokio::time::timeout(idle, stream.message())
                .await
                .map_err(|_| {
                    anyhow!("no delivery on {name} for {idle:?} after {delivered} of {total}")
                })?
        } else if ack.linger.is_zero() {
            match stream.message().now_or_never() {
                Some(n) => n,
                None => {
                    send_acks(&tx, &mut acks, &mut ack_messages).await?;
                    continue;
                }
            }
        } else {
            match tokio::time::timeout_at(ack_due, stream.message()).await {
                Ok(n) => n,
                Err(_) => {
                    send_acks(&tx, &mut acks, &mut ack_messages).await?;
                    continue;
                }
            }
        };
        let d = next.map_err(status)?.with_context(|| {
            format!("the broker ended the stream on {name} after {delivered} of {total}")
        })?;
        let now = clock.now_ns();
        let sent = d.event.as_ref().and_then(|e| w.sent_ns(&e.event_id));
        match sent {
            _ if d.attempt > 1 => redeliveries += 1,
            Some(sent) => {
                record_ns(&mut latency, now.saturating_sub(sent));
                delivered += 1;
                last_ns = now;
            }
            None => foreign += 1,
        }
        if acks.is_empty() {
            ack_due = tokio::time::Instant::now() + ack.linger;
        }
        acks.push(d.delivery_id);
        if acks.len() >= ack_batch {
            send_acks(&tx, &mut acks, &mut ack_messages).await?;
        }
    }
    if !acks.is_empty() {
        send_acks(&tx, &mut acks, &mut ack_messages).await?;
    }
    // End the request stream; the broker handles the acks before its end.
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = stream.message().await {}
    })
    .await;
    Ok(SubResult {
        latency,
        delivered,
        redeliveries,
        foreign,
        ack_messages,
        last_ns,
    })
}

async fn send_acks(
    tx: &mpsc::Sender<pb::SubscribeRequest>,
    acks: &mut Vec<String>,
    count: &mut u64,
) -> Result<()> {
    *count += 1;
    tx.send(pb::SubscribeRequest {
        ack: Some(pb::AckIds {
            delivery_ids: std::mem::take(acks),
        }),
        ..Default::default()
    })
    .await
    .map_err(|_| anyhow!("the subscribe stream closed"))
}

// ---------------------------------------------------------------------------
// NATS JetStream.

/// A `nats-server -js` started for the bench.
struct EmbeddedNats {
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
    url: String,
}

impl EmbeddedNats {
    async fn start(args: &BenchArgs) -> Result<Self> {
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
        let log = std::fs::File::create(dir.path().join("nats-server.log"))?;
        let child = tokio::process::Command::new(&args.nats_server_bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.path().join("jetstream"))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (install it with `apt-get install nats-server`)",
                    args.nats_server_bin.display()
                )
            })?;
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
        })
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

async fn nats_connect(url: &str) -> Result<async_nats::Client> {
    async_nats::connect(url)
        .await
        .with_context(|| format!("connecting to NATS at {url}"))
}

async fn run_nats(args: &BenchArgs, out: &mut impl std::io::Write) -> Result<RunSummary> {
    let embedded = if args.embedded {
        writeln!(out, "nats: starting {} -js", args.nats_server_bin.display())?;
        Some(EmbeddedNats::start(args).await?)
    } else {
        None
    };
    let (url, label) = match &embedded {
        Some(n) => (n.url.clone(), format!("embedded nats-server {}", n.url)),
        None => (args.nats_url.clone(), args.nats_url.clone()),
    };
    let server_pid = embedded.as_ref().and_then(EmbeddedNats::pid);
    let result = measure_nats(args, &url, label, server_pid, out).await;
    if let Some(n) = embedded {
        n.stop().await;
    }
    result
}

async fn measure_nats(
    args: &BenchArgs,
    url: &str,
    label: String,
    server_pid: Option<u32>,
    out: &mut impl std::io::Write,
) -> Result<RunSummary> {
    use async_nats::jetstream::{self, consumer, stream};
    let w = Arc::new(Workload::new(args)?);
    let stream_name = format!("CSBENCH_{}", w.prefix);
    let subject_root = format!("csbench.{}", w.prefix);
    let js = jetstream::new(nats_connect(url).await?);
    writeln!(
        out,
        "nats: creating stream {stream_name} (file storage, R1) and {} durable pull consumer(s) (explicit ack)",
        args.subscribers
    )?;
    let stream = js
        .create_stream(stream::Config {
            name: stream_name.clone(),
            subjects: vec![format!("{subject_root}.>")],
            storage: stream::StorageType::File,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow!("creating stream {stream_name}: {e}"))?;
    let mut consumers = Vec::new();
    for i in 0..args.subscribers {
        let name = format!("sub-{i}");
        let _: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(name.clone()),
                ack_policy: consumer::AckPolicy::Explicit,
                deliver_policy: consumer::DeliverPolicy::All,
                max_ack_pending: i64::from(args.max_outstanding),
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow!("creating consumer {name}: {e}"))?;
        consumers.push(name);
    }
    let clock = Clock(Instant::now());
    let idle = Duration::from_secs(args.idle_timeout_secs);
    let pid_cpu = |pid: Option<u32>| pid.map_or(0.0, |p| cpu_secs(&p.to_string()));
    let cpu_before = cpu_secs("self") + pid_cpu(server_pid);
    let mut subscribers = Vec::new();
    for c in consumers {
        let client = nats_connect(url).await?;
        subscribers.push(tokio::spawn(nats_subscribe(
            client,
            stream_name.clone(),
            c,
            w.clone(),
            clock,
            args.events,
            idle,
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
    for p in 0..args.publishers {
        let client = nats_connect(url).await?;
        let js = jetstream::ContextBuilder::new()
            .max_ack_inflight(args.window as usize)
            .build(client);
        let subject = format!("{subject_root}.{p}");
        let spec = PubSpec::new(args, &w, clock, start, p);
        publishers.push(tokio::spawn(nats_publish(js, subject, spec)));
    }
    let collected = collect(args, publishers, subscribers, start_ns).await;
    let cpu = cpu_secs("self") + pid_cpu(server_pid) - cpu_before;
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
    })
}

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

async fn nats_subscribe(
    client: async_nats::Client,
    stream: String,
    consumer: String,
    w: Arc<Workload>,
    clock: Clock,
    total: u64,
    idle: Duration,
) -> Result<SubResult> {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn parse(extra: &[&str]) -> BenchArgs {
        let mut argv = vec!["bench"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn events_are_padded_to_the_payload_size_and_carry_their_send_time() {
        let args = parse(&["--embedded", "--payload-bytes", "512", "--publishers", "3"]);
        let w = Workload::new(&args).unwrap();
        assert_eq!(w.event_bytes, 512);
        let e = w.event(2, 12_345, 987_654_321);
        assert_eq!(e.encoded_len(), 512);
        assert_eq!(w.sent_ns(&e.event_id), Some(987_654_321));
        assert_eq!(w.sent_ns("someone-else-1"), None);
        caseshare_core::nhs::validate_nhs_number(&e.child.unwrap().nhs_number).unwrap();
    }

    #[test]
    fn small_payloads_leave_the_summary_empty() {
        let args = parse(&["--embedded", "--payload-bytes", "10"]);
        let w = Workload::new(&args).unwrap();
        assert!(w.template.summary.is_empty());
        assert!(w.event_bytes > 10);
    }

    #[test]
    fn flags() {
        let a = parse(&[
            "--embedded",
            "--unary",
            "--target",
            "both",
            "--rate",
            "2000",
        ]);
        assert_eq!(a.mode(), PublishMode::Unary);
        assert_eq!(a.target, Target::Both);
        assert_eq!(parse(&["--embedded"]).mode(), PublishMode::Stream);
        assert!(Cli::try_parse_from(["bench", "--stream", "--unary"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--embedded", "--server", "https://x"]).is_err());
    }

    #[test]
    fn shares_add_up() {
        let total: u64 = (0..7).map(|p| share(100, 7, p)).sum();
        assert_eq!(total, 100);
    }

    #[test]
    fn children_are_valid_and_distinct() {
        let kids = nhs_numbers(500);
        assert_eq!(kids.len(), 500);
        let set: std::collections::HashSet<_> = kids.iter().collect();
        assert_eq!(set.len(), 500);
        for k in &kids {
            caseshare_core::nhs::validate_nhs_number(k).unwrap();
        }
    }

    #[test]
    fn metrics_deltas() {
        let before: HashMap<String, f64> = [
            ("caseshare_store_commits_total".to_string(), 10.0),
            ("caseshare_events_published_total".to_string(), 100.0),
        ]
        .into();
        let after: HashMap<String, f64> = [
            ("caseshare_store_commits_total".to_string(), 110.0),
            ("caseshare_events_published_total".to_string(), 2100.0),
            ("caseshare_store_records_total".to_string(), 8000.0),
            ("caseshare_store_commit_seconds_sum".to_string(), 0.5),
            ("caseshare_store_commit_seconds_count".to_string(), 100.0),
        ]
        .into();
        let s = server_figures(&before, &after, 2.0);
        assert_eq!(s.commits, 100.0);
        assert_eq!(s.flushes_per_sec, 50.0);
        assert_eq!(s.events_per_commit, 20.0);
        assert_eq!(s.records_per_event, 4.0);
        assert!((s.mean_commit_ms - 5.0).abs() < 1e-9);
        assert!((s.writer_busy_fraction - 0.25).abs() < 1e-9);
    }
}
