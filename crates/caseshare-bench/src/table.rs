//! The one comparison table (issue 18): a column per system measured
//! (Caseshare, then JetStream for each `sync_interval` it ran with), a row
//! per figure, and a column of ratios Caseshare ÷ each JetStream setting;
//! rendered as Markdown so that `docs/BENCHMARKS.md` can take it as it is.
//! With `--suite` the rows are the issue's (one or two per workload);
//! for a single workload, every publish, delivery and CPU figure.

use serde::Serialize;

use crate::NatsSync;
use crate::summary::RunSummary;

/// `--suite`, workload (1): pipelined, one subscriber.
pub(crate) const PIPELINED_1_SUB: &str = "pipelined-1-subscriber";
/// `--suite`, workload (2): pipelined, publishing alone.
pub(crate) const PIPELINED_PUBLISH_ONLY: &str = "pipelined-publish-only";
/// `--suite`, workload (3): one subscriber at a fixed rate.
pub(crate) const PACED_1_SUB: &str = "paced-1-subscriber";
/// `--suite`, workload (4): one at a time, publishing alone.
pub(crate) const UNARY_PUBLISH_ONLY: &str = "unary-publish-only";

/// The comparison: headers and rows of cells (Markdown-ready text).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Table {
    /// Column headers after the row label: the systems, then the ratios.
    pub columns: Vec<String>,
    /// One row per figure.
    pub rows: Vec<TableRow>,
}

/// One row of the comparison.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TableRow {
    /// What the row measures.
    pub label: String,
    /// One cell per column (`—` where a system was not measured).
    pub cells: Vec<String>,
}

/// A figure one run gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Figure {
    Published,
    Delivered,
    PublishP50,
    PublishP99,
    PublishP999,
    DeliveryP50,
    DeliveryP99,
    DeliveryP999,
    CpuPerEvent,
}

impl Figure {
    fn of(self, r: &RunSummary) -> f64 {
        match self {
            Figure::Published => r.publish.events_per_sec,
            Figure::Delivered => r.delivery.events_per_sec,
            Figure::PublishP50 => r.publish.latency.p50_ms,
            Figure::PublishP99 => r.publish.latency.p99_ms,
            Figure::PublishP999 => r.publish.latency.p999_ms,
            Figure::DeliveryP50 => r.delivery.latency.p50_ms,
            Figure::DeliveryP99 => r.delivery.latency.p99_ms,
            Figure::DeliveryP999 => r.delivery.latency.p999_ms,
            Figure::CpuPerEvent => r.cpu_us_per_event,
        }
    }

    fn format(self, v: f64) -> String {
        match self {
            Figure::Published | Figure::Delivered => thousands(v),
            Figure::CpuPerEvent => format!("{v:.1}"),
            _ => ms(v),
        }
    }
}

/// A rate with thousands separators (`28,547`).
fn thousands(v: f64) -> String {
    let n = v.round().max(0.0) as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Milliseconds to about three significant figures.
fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// A column: Caseshare, or JetStream with one `sync_interval` (`None`: a
/// server the bench did not start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Caseshare,
    JetStream(Option<NatsSync>),
}

impl System {
    fn of(r: &RunSummary) -> Self {
        if r.target == "caseshare" {
            System::Caseshare
        } else {
            System::JetStream(r.nats_sync)
        }
    }

    fn header(self, runs: &[RunSummary]) -> String {
        match self {
            System::Caseshare => match runs
                .iter()
                .find(|r| r.target == "caseshare")
                .and_then(|r| r.nats_sync)
            {
                Some(s) => format!("Caseshare cluster (journal on NATS, sync {})", s.name()),
                None => "Caseshare (ack after fdatasync)".into(),
            },
            System::JetStream(s) => jetstream_name(s),
        }
    }
}

/// `JetStream sync always`, `JetStream default` or `JetStream`.
fn jetstream_name(s: Option<NatsSync>) -> String {
    match s {
        Some(NatsSync::Default) => "JetStream default".into(),
        Some(s) => format!("JetStream sync {}", s.name()),
        None => "JetStream".into(),
    }
}

/// The rows of one workload: label and figures (one cell holds them all,
/// separated by ` / `).
fn rows_for(workload: Option<&str>, r: &RunSummary) -> Vec<(String, Vec<Figure>)> {
    use Figure::*;
    let rate = thousands(r.rate);
    match workload {
        Some(PIPELINED_1_SUB) => vec![(
            "pipelined, 1 subscriber: published / delivered per s".into(),
            vec![Published, Delivered],
        )],
        Some(PIPELINED_PUBLISH_ONLY) => {
            vec![(
                "pipelined, publish only: published per s".into(),
                vec![Published],
            )]
        }
        Some(PACED_1_SUB) => vec![
            (
                format!("{rate}/s, 1 subscriber: publish→delivery p50 / p99 / p99.9, ms"),
                vec![DeliveryP50, DeliveryP99, DeliveryP999],
            ),
            (
                format!("{rate}/s: CPU per event (bench + server processes), µs"),
                vec![CpuPerEvent],
            ),
        ],
        Some(UNARY_PUBLISH_ONLY) => vec![(
            "one at a time, publish only: published per s / p50 ms".into(),
            vec![Published, PublishP50],
        )],
        _ => {
            let mut rows = vec![("published per s".to_string(), vec![Published])];
            if r.subscribers > 0 {
                rows.push(("delivered per s (each subscriber)".into(), vec![Delivered]));
            }
            rows.push((
                "publish→response p50 / p99 / p99.9, ms".into(),
                vec![PublishP50, PublishP99, PublishP999],
            ));
            if r.subscribers > 0 {
                rows.push((
                    "publish→delivery p50 / p99 / p99.9, ms".into(),
                    vec![DeliveryP50, DeliveryP99, DeliveryP999],
                ));
            }
            rows.push((
                "CPU per event (bench + server processes), µs".into(),
                vec![CpuPerEvent],
            ));
            rows
        }
    }
}

/// The comparison of `runs` (in the order they ran), or `None` with fewer
/// than two systems or workloads to show.
pub(crate) fn comparison(runs: &[RunSummary]) -> Option<Table> {
    let mut systems: Vec<System> = Vec::new();
    let mut workloads: Vec<Option<&str>> = Vec::new();
    for r in runs {
        let s = System::of(r);
        if !systems.contains(&s) {
            systems.push(s);
        }
        let w = r.workload.as_deref();
        if !workloads.contains(&w) {
            workloads.push(w);
        }
    }
    if systems.len() < 2 && workloads.len() < 2 {
        return None;
    }
    // Caseshare first, then JetStream in the order measured.
    systems.sort_by_key(|s| *s != System::Caseshare);
    let ratios: Vec<System> = if systems.first() == Some(&System::Caseshare) {
        systems.iter().skip(1).copied().collect()
    } else {
        Vec::new()
    };
    let mut columns: Vec<String> = systems.iter().map(|s| s.header(runs)).collect();
    columns.extend(ratios.iter().map(|s| match s {
        System::JetStream(sync) => format!("Caseshare ÷ {}", jetstream_name(*sync)),
        System::Caseshare => String::new(),
    }));
    let find = |w: Option<&str>, s: System| {
        runs.iter()
            .find(|r| r.workload.as_deref() == w && System::of(r) == s)
    };
    let mut rows = Vec::new();
    for w in workloads {
        let Some(first) = runs.iter().find(|r| r.workload.as_deref() == w) else {
            continue;
        };
        for (label, figures) in rows_for(w, first) {
            let cell = |r: Option<&RunSummary>| match r {
                Some(r) => figures
                    .iter()
                    .map(|f| f.format(f.of(r)))
                    .collect::<Vec<_>>()
                    .join(" / "),
                None => "—".into(),
            };
            let mut cells: Vec<String> = systems.iter().map(|s| cell(find(w, *s))).collect();
            let c = find(w, System::Caseshare);
            for s in &ratios {
                cells.push(match (c, find(w, *s)) {
                    (Some(c), Some(n)) => figures
                        .iter()
                        .map(|f| ratio(f.of(c), f.of(n)))
                        .collect::<Vec<_>>()
                        .join(" / "),
                    _ => "—".into(),
                });
            }
            rows.push(TableRow { label, cells });
        }
    }
    Some(Table { columns, rows })
}

/// `a ÷ b` as `0.20×` (`n/a` where `b` is 0).
fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "n/a".into()
    }
}

impl Table {
    /// The table as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = format!("| | {} |\n", self.columns.join(" | "));
        out.push_str(&format!("|---|{}\n", "---|".repeat(self.columns.len())));
        for r in &self.rows {
            out.push_str(&format!("| {} | {} |\n", r.label, r.cells.join(" | ")));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::summary::testing::run;

    #[test]
    fn numbers_read_as_the_docs_write_them() {
        assert_eq!(thousands(28_546.6), "28,547");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1_000.0), "1,000");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(ms(0.2049), "0.20");
        assert_eq!(ms(68.66), "68.7");
        assert_eq!(ms(157.4), "157");
        assert_eq!(ratio(1.0, 4.0), "0.25×");
        assert_eq!(ratio(1.0, 0.0), "n/a");
    }

    #[test]
    fn one_workload_every_figure_both_ratios() {
        let mut c = run("caseshare", None, None);
        c.publish.events_per_sec = 30_000.0;
        c.delivery.events_per_sec = 29_000.0;
        c.cpu_us_per_event = 48.0;
        let mut a = run("nats", Some(NatsSync::Always), None);
        a.publish.events_per_sec = 60_000.0;
        a.delivery.events_per_sec = 58_000.0;
        a.cpu_us_per_event = 24.0;
        let mut d = run("nats", Some(NatsSync::Default), None);
        d.publish.events_per_sec = 150_000.0;
        d.delivery.events_per_sec = 0.0;
        d.cpu_us_per_event = 16.0;
        let t = comparison(&[c.clone(), a, d]).unwrap();
        assert_eq!(
            t.columns,
            [
                "Caseshare (ack after fdatasync)",
                "JetStream sync always",
                "JetStream default",
                "Caseshare ÷ JetStream sync always",
                "Caseshare ÷ JetStream default"
            ]
        );
        let labels: Vec<&str> = t.rows.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(labels.len(), 5, "{labels:?}");
        assert_eq!(
            t.rows[0].cells,
            ["30,000", "60,000", "150,000", "0.50×", "0.20×"]
        );
        assert_eq!(t.rows[1].cells[4], "n/a");
        let cpu = t.rows.last().unwrap();
        assert!(cpu.label.starts_with("CPU per event"), "{cpu:?}");
        assert_eq!(cpu.cells, ["48.0", "24.0", "16.0", "2.00×", "3.00×"]);
        let md = t.markdown();
        assert!(md.starts_with("| | Caseshare (ack after fdatasync) | JetStream sync always |"));
        assert!(md.contains("\n|---|---|---|---|---|---|\n"), "{md}");
        assert!(md.contains("| published per s | 30,000 | 60,000 | 150,000 | 0.50× | 0.20× |\n"));
        assert_eq!(md.lines().count(), 2 + 5);
        // A single run has nothing to compare.
        assert!(comparison(&[c]).is_none());
    }

    #[test]
    fn the_suite_gives_the_issue_rows() {
        let mut runs = Vec::new();
        for w in [
            PIPELINED_1_SUB,
            PIPELINED_PUBLISH_ONLY,
            PACED_1_SUB,
            UNARY_PUBLISH_ONLY,
        ] {
            for (target, sync) in [
                ("caseshare", None),
                ("nats", Some(NatsSync::Always)),
                ("nats", Some(NatsSync::Default)),
            ] {
                let mut r = run(target, sync, Some(w));
                if w == PACED_1_SUB {
                    r.rate = 2000.0;
                }
                r.delivery.latency.p50_ms = if target == "caseshare" { 2.4 } else { 0.2 };
                runs.push(r);
            }
        }
        // JetStream default missing for the last workload: a dash, no ratio.
        runs.pop();
        let t = comparison(&runs).unwrap();
        let labels: Vec<&str> = t.rows.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "pipelined, 1 subscriber: published / delivered per s",
                "pipelined, publish only: published per s",
                "2,000/s, 1 subscriber: publish→delivery p50 / p99 / p99.9, ms",
                "2,000/s: CPU per event (bench + server processes), µs",
                "one at a time, publish only: published per s / p50 ms",
            ]
        );
        assert_eq!(t.rows[0].cells[0], "1,000 / 1,000");
        assert_eq!(t.rows[0].cells[3], "1.00× / 1.00×");
        assert_eq!(t.rows[2].cells[0], "2.40 / 1.00 / 1.00");
        assert_eq!(t.rows[2].cells[3], "12.00× / 1.00× / 1.00×");
        assert_eq!(t.rows[4].cells[2], "—");
        assert_eq!(t.rows[4].cells[4], "—");
        assert_eq!(t.rows[4].cells[3], "1.00× / 1.00×");
    }

    #[test]
    fn a_caseshare_cluster_is_named_with_its_journal_setting() {
        let c = run("caseshare", Some(NatsSync::Always), None);
        let n = run("nats", None, None);
        let t = comparison(&[n, c]).unwrap();
        assert_eq!(
            t.columns,
            [
                "Caseshare cluster (journal on NATS, sync always)",
                "JetStream",
                "Caseshare ÷ JetStream"
            ]
        );
    }
}
