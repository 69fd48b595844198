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
//! itself: the broker in-process on a temporary data directory, and a
//! `nats-server` (≥ 2.10, `--nats-server-bin`) on loopback on another, with
//! `sync_interval` as `--nats-sync` says; `--nats-sync both` measures
//! JetStream twice, `always` then `default`, each on a fresh server.
//!
//! Like with like in one run (issue 18): `--suite` runs four workloads
//! (pipelined with one subscriber, pipelined publishing alone, one
//! subscriber at a fixed rate, one at a time publishing alone) against
//! every system `--target` and `--nats-sync` name, and prints one table
//! (module `table`) of every figure with the ratios Caseshare ÷ each
//! JetStream setting; CPU per event counts the bench's process and the
//! server processes it started (from `/proc`), for both sides.
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
//! and the `--json-out` keys), `print` (the readable summary), `table` (the
//! comparison table), `workload`
//! (the events), `measure` (clock, histograms, schedule, publisher and
//! subscriber specs, collecting results), `machine` (CPU and memory
//! figures), `broker` (an embedded broker, endpoints, setup and `/metrics`),
//! `caseshare` (publishers and subscribers against the broker), `otlp`
//! (the counting trace receiver), `nats` (the same against JetStream),
//! `cluster` (the NATS clusters and broker replicas the bench starts,
//! killing a stream leader) and `failover` (the time without writes after
//! that kill).

use anyhow::{Context, Result, anyhow, bail};

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
mod table;
mod workload;

pub use args::{BenchArgs, NatsSync, PublishMode, Target};
pub use summary::{
    Comparison, DeliveryFigures, FailoverRun, Latency, Machine, PublishFigures, Ratios, RunSummary,
    ServerFigures, Summary, TraceFigures,
};
pub use table::{Table, TableRow};

use print::{print_failover, print_ratios, print_run};
use summary::comparisons;

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
    let starts_nats =
        args.embedded && (matches!(args.target, Target::Nats | Target::Both) || args.cluster > 0);
    if starts_nats {
        // Before anything is measured: a missing or too old server fails now.
        let bin = nats::nats_bin(&args)?;
        let version = caseshare_testkit::server_version(&bin)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        writeln!(out, "nats-server: {} ({version})", bin.display())?;
    }
    let mut runs = Vec::new();
    let mut failovers = Vec::new();
    if args.failover {
        failovers = failover::run(&args, out).await?;
        for r in &failovers {
            print_failover(out, r)?;
        }
    } else {
        for (workload, w) in workloads(&args) {
            if let Some(name) = workload {
                writeln!(out, "=== workload {name}")?;
            }
            if matches!(w.target, Target::Caseshare | Target::Both) {
                let mut r = caseshare::run(&w, out).await?;
                r.workload = workload.map(str::to_string);
                print_run(out, &r)?;
                runs.push(r);
            }
            if matches!(w.target, Target::Nats | Target::Both) {
                for sync in w.nats_sync.each() {
                    let w = BenchArgs {
                        nats_sync: sync,
                        ..w.clone()
                    };
                    let mut r = nats::run(&w, out).await?;
                    r.workload = workload.map(str::to_string);
                    print_run(out, &r)?;
                    runs.push(r);
                }
            }
        }
    }
    let comparisons = comparisons(&runs);
    for c in &comparisons {
        print_ratios(out, c)?;
    }
    let ratios = comparisons.first().map(|c| c.ratios.clone());
    let table = table::comparison(&runs);
    if let Some(t) = &table {
        writeln!(
            out,
            "\ncomparison ({} CPUs, load at start {}; ratios > 1 mean Caseshare higher: faster for rates, slower for latencies and CPU):\n{}",
            machine.nproc,
            machine.loadavg_at_start,
            t.markdown()
        )?;
    }
    let summary = Summary {
        machine,
        runs,
        ratios,
        comparisons,
        table,
        failover: failovers,
    };
    if let Some(path) = &args.json_out {
        let text = serde_json::to_string_pretty(&summary)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        writeln!(out, "wrote {}", path.display())?;
    }
    Ok(summary)
}

/// The workloads one invocation runs: with `--suite` the four of issue 18
/// (named), else the one the flags describe.
fn workloads(args: &BenchArgs) -> Vec<(Option<&'static str>, BenchArgs)> {
    if !args.suite {
        return vec![(None, args.clone())];
    }
    let base = BenchArgs {
        suite: false,
        unary: false,
        stream: false,
        ..args.clone()
    };
    let paced_rate = if args.rate > 0.0 { args.rate } else { 2000.0 };
    vec![
        (
            Some(table::PIPELINED_1_SUB),
            BenchArgs {
                subscribers: 1,
                rate: 0.0,
                ..base.clone()
            },
        ),
        (
            Some(table::PIPELINED_PUBLISH_ONLY),
            BenchArgs {
                subscribers: 0,
                rate: 0.0,
                ..base.clone()
            },
        ),
        (
            Some(table::PACED_1_SUB),
            BenchArgs {
                subscribers: 1,
                rate: paced_rate,
                events: args.paced_events,
                ..base.clone()
            },
        ),
        (
            Some(table::UNARY_PUBLISH_ONLY),
            BenchArgs {
                subscribers: 0,
                rate: 0.0,
                unary: true,
                events: args.paced_events,
                ..base
            },
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::args::testing::parse;
    use super::*;

    #[test]
    fn the_suite_runs_the_four_workloads_of_issue_18() {
        let a = parse(&[
            "--embedded",
            "--target",
            "both",
            "--nats-sync",
            "both",
            "--suite",
            "--events",
            "1000",
            "--paced-events",
            "300",
            "--subscribers",
            "3",
        ]);
        let w = workloads(&a);
        let named: Vec<_> = w
            .iter()
            .map(|(n, a)| (n.unwrap_or(""), a.subscribers, a.rate, a.unary, a.events))
            .collect();
        assert_eq!(
            named,
            [
                (table::PIPELINED_1_SUB, 1, 0.0, false, 1000),
                (table::PIPELINED_PUBLISH_ONLY, 0, 0.0, false, 1000),
                (table::PACED_1_SUB, 1, 2000.0, false, 300),
                (table::UNARY_PUBLISH_ONLY, 0, 0.0, true, 300),
            ]
        );
        assert!(w.iter().all(|(_, a)| !a.suite && a.target == Target::Both));
        let paced = workloads(&parse(&["--embedded", "--suite", "--rate", "500"]));
        assert_eq!(paced[2].1.rate, 500.0);
        assert_eq!(paced[2].1.events, 20_000);
        let one = workloads(&parse(&["--embedded", "--events", "7"]));
        assert_eq!(one.len(), 1);
        assert!(one[0].0.is_none());
        assert_eq!(one[0].1.events, 7);
    }
}
