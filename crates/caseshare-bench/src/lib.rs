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
//!
//! Cluster measurements (issue 15) start real processes through the test
//! kit: `--nats-cluster N` measures JetStream on an N-node cluster with an
//! R`N` stream, `--cluster N` measures Caseshare in cluster mode (a 3-node
//! JetStream cluster and N `caseshare serve` replicas; publishers on
//! `--publish-replica`, subscribers on `--subscribe-replica`), both with
//! `--nats-sync always|default`; `--failover` measures instead the time
//! without writes when the stream's JetStream leader is SIGKILLed.
//!
//! Tracing (issue 16): the embedded broker exports spans as `caseshare
//! serve` would, from the `OTEL_*` variables; `--otlp-sink` points that
//! export at an OTLP/gRPC receiver in the bench process that counts and
//! drops spans (the summary reports what it received once the broker has
//! stopped and flushed), and `--trace-context RATIO` has every publish
//! carry its own W3C trace context, flagged sampled on RATIO of them, as
//! an instrumented publisher would. Together with
//! `OTEL_TRACES_SAMPLER`/`_ARG` these measure the cost of tracing.
//!
//! Modules, by what each owns: `args` (the flags), `summary` (the figures
//! and the `--json-out` keys), `print` (the readable summary), `workload`
//! (the events), `measure` (clock, histograms, schedule, publisher and
//! subscriber specs, collecting results), `machine` (CPU and memory
//! figures), `broker` (an embedded broker, endpoints, setup and `/metrics`),
//! `caseshare` (publishers and subscribers against the broker), `otlp`
//! (the counting trace receiver), `nats` (the same against JetStream),
//! `cluster` (the NATS clusters and broker replicas the bench starts,
//! killing a stream leader) and `failover` (the time without writes after
//! that kill).

use anyhow::{Context, Result, bail};

mod args;
mod broker;
mod caseshare;
mod cluster;
mod failover;
mod machine;
mod measure;
mod nats;
mod otlp;
mod print;
mod summary;
mod workload;

pub use args::{BenchArgs, NatsSync, PublishMode, Target};
pub use summary::{
    DeliveryFigures, FailoverRun, Latency, Machine, PublishFigures, Ratios, RunSummary,
    ServerFigures, Summary, TraceFigures,
};

use print::{print_failover, print_ratios, print_run};
use summary::ratios;

/// The agency that publishes.
pub const PUBLISHER_AGENCY: &str = "school-b";
/// The agency that subscribes.
pub const SUBSCRIBER_AGENCY: &str = "la-social-care-c";
/// The agreement the bench puts (provider → recipient, whole payload).
pub const AGREEMENT_ID: &str = "bench-school-b-la-social-care-c";
/// The event type the bench publishes (and its agreement and subscriptions select).
const EVENT_TYPE: &str = "education.attendance_concern";

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
    if let Err(e) = args.check() {
        bail!("{e}");
    }
    let machine = machine::machine();
    writeln!(
        out,
        "machine: {} CPUs ({}), {:.1} GiB RAM, load {}",
        machine.nproc, machine.cpu_model, machine.mem_gib, machine.loadavg_at_start
    )?;
    let mut runs = Vec::new();
    let mut failovers = Vec::new();
    if args.failover {
        failovers = failover::run(&args, out).await?;
        for r in &failovers {
            print_failover(out, r)?;
        }
    } else if matches!(args.target, Target::Caseshare | Target::Both) {
        let r = caseshare::run(&args, out).await?;
        print_run(out, &r)?;
        runs.push(r);
    }
    if !args.failover && matches!(args.target, Target::Nats | Target::Both) {
        let r = nats::run(&args, out).await?;
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
        print_ratios(out, r)?;
    }
    let summary = Summary {
        machine,
        runs,
        ratios,
        failover: failovers,
    };
    if let Some(path) = &args.json_out {
        let text = serde_json::to_string_pretty(&summary)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        writeln!(out, "wrote {}", path.display())?;
    }
    Ok(summary)
}
