//! The readable summary `caseshare-bench` prints: one block per run and
//! the caseshare ÷ NATS ratios.

use anyhow::Result;

use crate::PublishMode;
use crate::summary::{Comparison, FailoverRun, Latency, RunSummary};

/// The percentiles of one latency, on one line.
fn fmt_latency(l: &Latency) -> String {
    format!(
        "p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms",
        l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms
    )
}

/// Prints one run's figures.
pub(crate) fn print_run(out: &mut impl std::io::Write, r: &RunSummary) -> Result<()> {
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
            "  server    {:.0} flushes/s, {:.1} events/commit, {:.1} records/commit ({:.1} per event), {:.1} ops/commit, mean commit {:.3} ms, commit thread busy {:.0}%{}; {} commits over 10 ms, the slowest {}",
            s.flushes_per_sec,
            s.events_per_commit,
            s.records_per_commit,
            s.records_per_event,
            s.ops_per_commit,
            s.mean_commit_ms,
            s.writer_busy_fraction * 100.0,
            s.writer_idle_fraction.map_or_else(String::new, |f| format!(
                ", writer without an op {:.0}%",
                f * 100.0
            )),
            s.commits_over_10ms
                .map_or_else(|| "?".into(), |n| format!("{n:.0}")),
            match (s.commits_over_10ms, s.slowest_commit_within_ms) {
                (_, Some(ms)) => format!("within {ms} ms"),
                (Some(_), None) if s.commits > 0.0 => "past the largest bucket".to_string(),
                _ => "?".to_string(),
            }
        )?;
        if s.deliveries > 0.0 && s.journal_applied == 0.0 {
            writeln!(
                out,
                "  tail      {:.0} of {:.0} deliveries picked in the commit that stored their events ({:.0}%)",
                s.deliveries_tailed,
                s.deliveries,
                (s.deliveries_tailed / s.deliveries * 100.0).min(100.0)
            )?;
        }
        if s.journal_applied > 0.0 {
            writeln!(
                out,
                "  journal   {:.0} messages applied ({:.0}/s), {:.0} proposed by this replica; {:.1} events per applied message",
                s.journal_applied,
                s.journal_applied / r.elapsed_secs.max(1e-9),
                s.journal_proposals,
                r.publish.events as f64 / s.journal_applied
            )?;
        }
    }
    if let Some(t) = &r.traces {
        let context = t.publisher_sampled_ratio.map_or_else(
            || "publishes carry no trace context".to_string(),
            |p| format!("publishes carry their own trace context, {p} of them sampled"),
        );
        if t.exporting {
            let arg = t.sampler_arg.map(|a| format!(" {a}")).unwrap_or_default();
            writeln!(
                out,
                "  traces    export on to {}, sampler {}{arg}; {context}",
                t.endpoint, t.sampler
            )?;
        } else {
            writeln!(out, "  traces    export off; {context}")?;
        }
        if let (Some(spans), Some(requests)) = (t.spans_received, t.export_requests) {
            let names: Vec<String> = t
                .spans_by_name
                .iter()
                .map(|(n, c)| format!("{n} {c}"))
                .collect();
            writeln!(
                out,
                "  otlp sink {spans} spans in {requests} export requests ({:.2} per event): {}",
                t.spans_per_event.unwrap_or_default(),
                names.join(", ")
            )?;
        }
    }
    let counted = match r.server_cpu_secs {
        Some(s) => format!("bench {:.2} s + server processes {s:.2} s", r.cpu_secs - s),
        None if r.target == "caseshare" && r.endpoint == "embedded" => {
            "bench with the broker in-process".into()
        }
        None => "bench only: the server's own is not counted".into(),
    };
    writeln!(
        out,
        "  cpu       {:.2} s ({:.1} µs per event; {counted}), elapsed {:.2} s",
        r.cpu_secs, r.cpu_us_per_event, r.elapsed_secs
    )?;
    Ok(())
}

/// Prints the caseshare ÷ NATS ratios of one workload and JetStream setting.
pub(crate) fn print_ratios(out: &mut impl std::io::Write, c: &Comparison) -> Result<()> {
    let r = &c.ratios;
    let sync = c
        .nats_sync
        .map(|s| format!(" (sync_interval {})", s.name()))
        .unwrap_or_default();
    let workload = c
        .workload
        .as_deref()
        .map(|w| format!(", {w}"))
        .unwrap_or_default();
    writeln!(out, "caseshare ÷ nats{sync}{workload}:")?;
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
    Ok(())
}

/// Prints one `--failover` run.
pub(crate) fn print_failover(out: &mut impl std::io::Write, r: &FailoverRun) -> Result<()> {
    writeln!(
        out,
        "== failover {} ({}): {} events at {}/s one at a time, {} attempts, {} answered as duplicates",
        r.target, r.endpoint, r.events, r.rate, r.attempts, r.duplicates
    )?;
    let election = r
        .election_secs
        .map_or_else(|| "none agreed within 60 s".into(), |s| format!("{s:.2} s"));
    writeln!(
        out,
        "  killed {} (stream leader) at {:.2} s; new stream leader agreed after {election}",
        r.killed_node, r.kill_at_secs
    )?;
    let next = r
        .kill_to_next_ack_ms
        .map_or_else(|| "none".into(), |ms| format!("{ms:.0} ms"));
    writeln!(
        out,
        "  time without writes (longest gap between acks) {:.0} ms, starting {:.0} ms after the kill; kill → next ack {next}; longest gap before the kill {:.1} ms",
        r.longest_gap_ms, r.longest_gap_starts_after_kill_ms, r.longest_gap_before_kill_ms
    )?;
    writeln!(
        out,
        "  send→ack (retries included) {}",
        fmt_latency(&r.latency)
    )?;
    if let Some(stored) = r.stored {
        writeln!(
            out,
            "  messages in the stream afterwards: {stored} (acknowledged: {})",
            r.events
        )?;
    }
    for e in &r.first_errors {
        writeln!(out, "  retried after: {e}")?;
    }
    Ok(())
}
