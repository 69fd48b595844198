//! What the bench measured, as the readable summary and the `--json-out`
//! file report it: latency percentiles, publishing, delivery and broker
//! figures, one [`RunSummary`] per target, the machine, and the
//! caseshare ÷ NATS [`Ratios`]. The serialised field names are the JSON
//! keys scripts read; they must not change.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::table::Table;
use crate::{NatsSync, PublishMode};

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
    /// The percentiles of a histogram of microseconds.
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
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
    /// Commits that took over 10 ms (the broker's commit histogram): each
    /// holds back every op behind it, so they make the latency tail.
    /// (`None`: the broker gave no histogram.)
    pub commits_over_10ms: Option<f64>,
    /// The upper bound of the histogram bucket holding the slowest commit,
    /// ms (`None`: no commit, or one past the largest finite bucket).
    pub slowest_commit_within_ms: Option<f64>,
    /// Fraction of the run the commit thread spent committing (the key
    /// predates the commit thread, when the writer committed itself).
    pub writer_busy_fraction: f64,
    /// Fraction of the run the writer had no operation in hand (between
    /// batches): high while the broker is not the bottleneck, for example
    /// when a client's window, not the broker, sets the pace. `None`: the
    /// broker does not report it (cluster mode, older brokers).
    pub writer_idle_fraction: Option<f64>,
    /// sled records written per published event.
    pub records_per_event: f64,
    /// Deliveries recorded.
    pub deliveries: f64,
    /// Deliveries picked by the writer for a stream waiting at the head,
    /// recorded in the commit that stored their events (embedded mode).
    pub deliveries_tailed: f64,
    /// Acks recorded.
    pub acks: f64,
    /// Cluster mode: journal messages this replica appended.
    pub journal_proposals: f64,
    /// Cluster mode: journal messages this replica applied (every
    /// replica's; one local commit each).
    pub journal_applied: f64,
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
    /// The part of `cpu_secs` used by server processes of their own (an
    /// embedded `nats-server`, cluster nodes and replicas), read from
    /// `/proc/<pid>/stat`; `None` when the server runs inside the bench
    /// (the embedded broker: its CPU is the bench's) or elsewhere.
    pub server_cpu_secs: Option<f64>,
    /// The embedded broker's trace export (`None` for NATS and a remote
    /// broker).
    pub traces: Option<TraceFigures>,
    /// The `sync_interval` of the NATS servers the bench started for this
    /// run (JetStream, or a Caseshare cluster's journal); `None` otherwise.
    pub nats_sync: Option<NatsSync>,
    /// With `--suite`: which of its workloads this run is.
    pub workload: Option<String>,
}

/// The embedded broker's trace export, and what `--otlp-sink` received.
#[derive(Debug, Clone, Serialize)]
pub struct TraceFigures {
    /// Whether the broker exported spans.
    pub exporting: bool,
    /// The OTLP endpoint (empty when off).
    pub endpoint: String,
    /// The broker's sampler (`OTEL_TRACES_SAMPLER`).
    pub sampler: String,
    /// Its argument (`OTEL_TRACES_SAMPLER_ARG`).
    pub sampler_arg: Option<f64>,
    /// `--trace-context`: the fraction of publishes whose own trace
    /// context was flagged sampled (`None`: publishes carried none).
    pub publisher_sampled_ratio: Option<f64>,
    /// Spans `--otlp-sink` received, counted after the broker stopped and
    /// flushed (`None` without the sink).
    pub spans_received: Option<u64>,
    /// Export requests (batches) it received.
    pub export_requests: Option<u64>,
    /// Spans received per published event.
    pub spans_per_event: Option<f64>,
    /// Spans received, by span name.
    pub spans_by_name: std::collections::BTreeMap<String, u64>,
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

/// One `--failover` run: writes while a stream leader is SIGKILLed.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverRun {
    /// `caseshare` or `nats`.
    pub target: String,
    /// What was measured (replicas, nodes, sync setting).
    pub endpoint: String,
    /// Events per second the publisher was paced at (one at a time).
    pub rate: f64,
    /// Events acknowledged (every event sent, in the end).
    pub events: u64,
    /// Publish attempts, retries included.
    pub attempts: u64,
    /// Acknowledgements answered as a duplicate of an earlier attempt.
    pub duplicates: u64,
    /// The node SIGKILLed (`n0`, `n1`, …): the stream's leader.
    pub killed_node: String,
    /// When, seconds after the publisher started.
    pub kill_at_secs: f64,
    /// How long the surviving nodes took to agree on a new stream leader
    /// (from their monitoring endpoints), seconds.
    pub election_secs: Option<f64>,
    /// **Time without writes**: the longest gap between two consecutive
    /// acknowledgements, ms.
    pub longest_gap_ms: f64,
    /// Where that gap began, relative to the kill, ms (negative: before).
    pub longest_gap_starts_after_kill_ms: f64,
    /// The longest gap before the kill (the noise floor), ms.
    pub longest_gap_before_kill_ms: f64,
    /// From the kill to the next acknowledgement, ms.
    pub kill_to_next_ack_ms: Option<f64>,
    /// Send of an event → its acknowledgement (retries included).
    pub latency: Latency,
    /// The first few errors attempts got (retried).
    pub first_errors: Vec<String>,
    /// Messages in the stream afterwards (NATS only: equal to `events`
    /// means nothing acknowledged was lost and no retry was stored twice).
    pub stored: Option<u64>,
}

/// What `run` measured.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The machine.
    pub machine: Machine,
    /// One run per target.
    pub runs: Vec<RunSummary>,
    /// Caseshare ÷ NATS, with `--target both` (the first of `comparisons`:
    /// the first workload, the first `--nats-sync` setting).
    pub ratios: Option<Ratios>,
    /// Caseshare ÷ NATS for every workload and every JetStream setting
    /// measured.
    pub comparisons: Vec<Comparison>,
    /// The one table of every figure and the ratios (issue 18), when more
    /// than one system or workload was measured.
    pub table: Option<Table>,
    /// `--failover` runs (then `runs` is empty).
    pub failover: Vec<FailoverRun>,
}

/// Caseshare ÷ one JetStream setting, for one workload.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// The `--suite` workload (`None`: the one workload of the run).
    pub workload: Option<String>,
    /// JetStream's `sync_interval` (`None`: a server the bench did not
    /// start).
    pub nats_sync: Option<NatsSync>,
    /// Caseshare ÷ that JetStream.
    pub ratios: Ratios,
}

/// Caseshare ÷ every JetStream run of the same workload, in run order.
pub(crate) fn comparisons(runs: &[RunSummary]) -> Vec<Comparison> {
    let mut out = Vec::new();
    for c in runs.iter().filter(|r| r.target == "caseshare") {
        for n in runs
            .iter()
            .filter(|r| r.target == "nats" && r.workload == c.workload)
        {
            out.push(Comparison {
                workload: c.workload.clone(),
                nats_sync: n.nats_sync,
                ratios: ratios(c, n),
            });
        }
    }
    out
}

/// Caseshare ÷ NATS for the same workload.
pub(crate) fn ratios(c: &RunSummary, n: &RunSummary) -> Ratios {
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

#[cfg(test)]
pub(crate) mod testing {
    //! Made-up runs for the unit tests.
    use super::*;

    /// A run of `target` with round figures: 1,000 events/s published and
    /// delivered, every latency 1 ms, 10 µs of CPU per event.
    pub(crate) fn run(target: &str, sync: Option<NatsSync>, workload: Option<&str>) -> RunSummary {
        let latency = Latency {
            count: 1000,
            mean_ms: 1.0,
            p50_ms: 1.0,
            p90_ms: 1.0,
            p99_ms: 1.0,
            p999_ms: 1.0,
            max_ms: 1.0,
        };
        RunSummary {
            target: target.into(),
            endpoint: "embedded".into(),
            mode: PublishMode::Stream,
            publishers: 1,
            subscribers: 1,
            events: 1000,
            event_bytes: 512,
            rate: 0.0,
            window: 1024,
            max_outstanding: 1000,
            ack_batch: 256,
            ack_linger_ms: 0.0,
            elapsed_secs: 1.0,
            publish: PublishFigures {
                events: 1000,
                events_per_sec: 1000.0,
                latency: latency.clone(),
                schedule_lag: None,
            },
            delivery: DeliveryFigures {
                deliveries: 1000,
                redeliveries: 0,
                foreign: 0,
                ack_messages: 10,
                ids_per_ack_message: 100.0,
                events_per_sec: 1000.0,
                latency,
            },
            server: None,
            cpu_secs: 0.01,
            cpu_us_per_event: 10.0,
            server_cpu_secs: None,
            traces: None,
            nats_sync: sync,
            workload: workload.map(str::to_string),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::testing::run;
    use super::*;

    #[test]
    fn every_jetstream_setting_is_compared_within_its_workload() {
        let mut c = run("caseshare", None, Some("a"));
        c.publish.events_per_sec = 500.0;
        let runs = [
            c,
            run("nats", Some(NatsSync::Always), Some("a")),
            run("nats", Some(NatsSync::Default), Some("a")),
            run("caseshare", None, Some("b")),
            run("nats", Some(NatsSync::Always), Some("b")),
        ];
        let all = comparisons(&runs);
        let keys: Vec<_> = all
            .iter()
            .map(|c| (c.workload.as_deref(), c.nats_sync))
            .collect();
        assert_eq!(
            keys,
            [
                (Some("a"), Some(NatsSync::Always)),
                (Some("a"), Some(NatsSync::Default)),
                (Some("b"), Some(NatsSync::Always)),
            ]
        );
        assert_eq!(all[0].ratios.publish_events_per_sec, Some(0.5));
        // The JSON keys scripts read are still there.
        let v = serde_json::to_value(&runs[1]).unwrap();
        assert_eq!(v["publish"]["events_per_sec"], 1000.0);
        assert_eq!(v["delivery"]["latency"]["p99_ms"], 1.0);
        assert_eq!(v["cpu_secs"], 0.01);
        assert_eq!(v["nats_sync"], "always");
    }
}
