//! The metrics catalogue: every metric the broker exports (name, type,
//! unit, labels, meaning), the histogram buckets, and the registration at
//! start that describes each one and sets it to zero for every label set
//! known then, so a scrape shows the whole catalogue before anything has
//! happened. `docs/OPERATIONS.md` carries the same table (a test checks
//! they agree).
//!
//! Naming rules (pinned): `caseshare_` prefix, base units in the name
//! (`_seconds`, `_bytes`), `_total` for counters, histograms for latencies.
//! Labels are bounded: agencies, subscription names and event types are
//! capped by configuration; NHS numbers, event ids and free text never
//! appear.

use caseshare_core::authz::Family;

/// A metric's Prometheus type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (resets at restart).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets.
    Histogram,
}

impl Kind {
    /// The name in the `# TYPE` line and the catalogue table.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One catalogued metric.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// Its name.
    pub name: &'static str,
    /// Its type.
    pub kind: Kind,
    /// Its unit (`seconds`, `bytes`, or a count of things).
    pub unit: &'static str,
    /// Its label names.
    pub labels: &'static [&'static str],
    /// What it means (the `# HELP` text).
    pub help: &'static str,
    /// Rendered per subscription at scrape time by `ops::gauges` (not
    /// through the `metrics` recorder), so a deleted subscription's series
    /// go with it.
    pub per_subscription: bool,
}

const fn m(
    name: &'static str,
    kind: Kind,
    unit: &'static str,
    labels: &'static [&'static str],
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind,
        unit,
        labels,
        help,
        per_subscription: false,
    }
}

const fn sub(name: &'static str, kind: Kind, unit: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        kind,
        unit,
        labels: &["agency", "subscription"],
        help,
        per_subscription: true,
    }
}

use Kind::{Counter, Gauge, Histogram};

/// Every metric the broker exports (one row each, as in the docs table).
#[rustfmt::skip]
pub const CATALOGUE: &[Metric] = &[
    m("caseshare_build_info", Gauge, "", &["version"], "Always 1; the label carries the broker's version"),
    m("caseshare_ready", Gauge, "", &[], "1 when /readyz answers 200 (serving, not stopping, no damaged record found), else 0"),
    m("caseshare_events_published_total", Counter, "events", &[], "Events accepted and committed"),
    m("caseshare_publish_duplicates_total", Counter, "publishes", &[], "Publishes answered as duplicates of a stored event"),
    m("caseshare_publish_duration_seconds", Histogram, "seconds", &[], "Time from a publish reaching the broker to its answer (durable or refused by the writer)"),
    m("caseshare_share_decisions_total", Counter, "decisions", &["decision"], "Sharing decisions at publish, by outcome (shared, withheld)"),
    m("caseshare_deliveries_total", Counter, "deliveries", &[], "Deliveries decided (re-decided shared, or a notice) before sending"),
    m("caseshare_deliveries_sent_total", Counter, "deliveries", &[], "Deliveries handed to a Subscribe stream"),
    m("caseshare_deliveries_tailed_total", Counter, "deliveries", &[], "Deliveries picked by the writer for a stream waiting at the head, recorded in the commit that stores their events"),
    m("caseshare_deliveries_stopped_total", Counter, "deliveries", &[], "Deliveries stopped at re-decision (consent or agreement changed)"),
    m("caseshare_deliveries_expired_total", Counter, "deliveries", &[], "Deliveries not sent because the event expired"),
    m("caseshare_delivery_latency_seconds", Histogram, "seconds", &[], "Time from an event's publish to its first delivery being handed to a stream"),
    m("caseshare_acks_total", Counter, "acknowledgements", &[], "Deliveries acknowledged"),
    sub("caseshare_dead_letters_total", Counter, "deliveries", "Deliveries dead-lettered after max_attempts, per subscription (since start)"),
    sub("caseshare_redeliveries_total", Counter, "deliveries", "Deliveries sent again (attempt 2 or later), per subscription (since start)"),
    sub("caseshare_subscription_backlog", Gauge, "events", "Events the subscription has not settled: unsettled deliveries plus log events after its cursor not yet read (an upper bound: some may not be for the agency)"),
    sub("caseshare_subscription_oldest_unacked_age_seconds", Gauge, "seconds", "How long the subscription's oldest unsettled event has been owed, as seen by this process (0 when nothing is owed; reset by a restart)"),
    m("caseshare_events_expunged_total", Counter, "events", &[], "Events removed by retention"),
    m("caseshare_store_commits_total", Counter, "commits", &[], "Group commits"),
    m("caseshare_store_records_total", Counter, "records", &[], "Records written"),
    m("caseshare_store_commit_seconds", Histogram, "seconds", &[], "Time to write and sync one group commit"),
    m("caseshare_store_ops_per_commit", Histogram, "operations", &[], "Operations in one group commit (batch size)"),
    m("caseshare_store_events_per_commit", Histogram, "events", &[], "Events in one group commit"),
    m("caseshare_writer_batch_seconds", Histogram, "seconds", &[], "Embedded mode: time a batch was open in the writer, from its first operation to its hand-over to the commit thread (or to the writer committing a small batch itself); between batches the writer waits for an operation or commits such a batch"),
    m("caseshare_writer_inline_commits_total", Counter, "commits", &[], "Embedded mode: commits of small batches (at low load) made by the writer itself instead of the commit thread; also counted in caseshare_store_commits_total"),
    m("caseshare_store_wal_unstable_frames", Gauge, "frames", &[], "Commit frames sled has applied but not yet made stable (a start replays them); about a second of commits, growing while sled cannot be made stable"),
    m("caseshare_audit_entries_total", Counter, "entries", &[], "Audit entries written"),
    m("caseshare_audit_size", Gauge, "entries", &[], "Audit log (Merkle tree) size"),
    m("caseshare_backups_total", Counter, "backups", &[], "Backups streamed whole (Admin.Backup, `caseshare backup`)"),
    m("caseshare_backup_pause_seconds", Histogram, "seconds", &[], "Time writes waited while a backup staged the store's files"),
    m("caseshare_journal_applied_sequence", Gauge, "messages", &[], "Cluster mode: the last journal message this replica applied (0 in embedded mode)"),
    m("caseshare_journal_proposals_total", Counter, "messages", &[], "Cluster mode: journal messages this replica appended"),
    m("caseshare_journal_append_failures_total", Counter, "messages", &[], "Cluster mode: appends that failed after retrying (their callers were told UNAVAILABLE)"),
    m("caseshare_journal_stale_refused_total", Counter, "messages", &[], "Cluster mode: journal messages refused by the stale-proposal rule (counted on every replica)"),
    m("caseshare_checkpoints_signed_total", Counter, "checkpoints", &[], "Checkpoints signed (and saved to store/checkpoint)"),
    m("caseshare_audit_checkpoint_size", Gauge, "entries", &[], "Tree size of the latest signed checkpoint"),
    m("caseshare_audit_checkpoint_age_seconds", Gauge, "seconds", &[], "Seconds since the latest checkpoint was signed (one is signed at start and at least every second while the log grows)"),
    m("caseshare_auth_denied_total", Counter, "calls", &[], "Calls refused by authorisation (audited in aggregate)"),
    m("caseshare_auth_denied_overflow_total", Counter, "calls", &[], "Refusals counted in the overflow audit entry (more distinct keys than audit.refusal_max_keys in an interval)"),
    m("caseshare_unknown_method_total", Counter, "calls", &[], "Calls to methods the broker does not have (UNIMPLEMENTED, not audited)"),
    m("caseshare_rate_limited_total", Counter, "calls", &["family", "reason"], "Calls refused by a rate limit, per RPC family (reason: rate, table_full)"),
    m("caseshare_connections", Gauge, "connections", &[], "Verified connections open"),
    m("caseshare_conn_refused_total", Counter, "connections", &["reason"], "Sockets refused (fd_reserve, handshakes, max_connections, max_per_principal)"),
    m("caseshare_conn_closed_total", Counter, "connections", &["reason"], "Connections closed by a timeout (handshake, preface, idle)"),
    m("caseshare_open_fds", Gauge, "descriptors", &[], "File descriptors open"),
    m("caseshare_fd_limit", Gauge, "descriptors", &[], "RLIMIT_NOFILE of the process"),
    m("caseshare_subscribe_streams", Gauge, "streams", &[], "Subscribe streams open"),
    m("caseshare_slow_readers_dropped_total", Counter, "streams", &[], "Subscribe streams ended for not reading"),
    m("caseshare_tls_reloads_total", Counter, "reloads", &[], "TLS configuration reloads"),
    m("caseshare_tls_handshake_failures_total", Counter, "handshakes", &[], "TLS handshakes that failed"),
    m("caseshare_certificate_expiry_seconds", Gauge, "seconds", &["which"], "Seconds until the certificate expires (which: server, ca; the CA bundle's earliest); negative once expired"),
    m("caseshare_start_temporaries_removed_total", Counter, "files", &[], "Temporaries of an interrupted start removed at this start"),
    m("caseshare_subscription_purges_finished_total", Counter, "subscriptions", &[], "Deleted subscriptions whose records are all removed"),
];

/// Buckets for latency histograms (seconds).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

/// Buckets for batch-size histograms.
pub const SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 16384.0, 65536.0,
];

/// The recorder, with every catalogued histogram rendered as a Prometheus
/// histogram (not a summary).
pub fn builder() -> metrics_exporter_prometheus::PrometheusBuilder {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    CATALOGUE
        .iter()
        .filter(|m| m.kind == Histogram)
        .try_fold(PrometheusBuilder::new(), |b, metric| {
            let buckets = if metric.unit == "seconds" {
                LATENCY_BUCKETS
            } else {
                SIZE_BUCKETS
            };
            b.set_buckets_for_metric(Matcher::Full(metric.name.to_string()), buckets)
        })
        // Only an empty bucket list is refused, and none is empty.
        .unwrap_or_else(|_| PrometheusBuilder::new())
}

/// Describes every metric and sets each to zero for the label sets known
/// at start (per-subscription ones are rendered by `ops::gauges`).
pub fn register_at_start() {
    for metric in CATALOGUE.iter().filter(|m| !m.per_subscription) {
        match metric.kind {
            Counter => metrics::describe_counter!(metric.name, metric.help),
            Gauge => metrics::describe_gauge!(metric.name, metric.help),
            Histogram => metrics::describe_histogram!(metric.name, metric.help),
        }
        match (metric.kind, metric.labels) {
            (Counter, []) => metrics::counter!(metric.name).increment(0),
            (Gauge, []) => metrics::gauge!(metric.name).increment(0.0),
            (Histogram, []) => drop(metrics::histogram!(metric.name)),
            _ => {}
        }
    }
    metrics::gauge!("caseshare_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    for decision in ["shared", "withheld"] {
        metrics::counter!("caseshare_share_decisions_total", "decision" => decision).increment(0);
    }
    for family in Family::ALL {
        for reason in ["rate", "table_full"] {
            metrics::counter!("caseshare_rate_limited_total", "family" => family.as_str(), "reason" => reason)
                .increment(0);
        }
    }
    for reason in crate::conns::Refusal::ALL {
        metrics::counter!("caseshare_conn_refused_total", "reason" => reason.as_str()).increment(0);
    }
    for reason in ["handshake", "preface", "idle"] {
        metrics::counter!("caseshare_conn_closed_total", "reason" => reason).increment(0);
    }
    for which in ["server", "ca"] {
        metrics::gauge!("caseshare_certificate_expiry_seconds", "which" => which).increment(0.0);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_pinned_rules() {
        for m in CATALOGUE {
            assert!(m.name.starts_with("caseshare_"), "{}", m.name);
            assert_eq!(
                m.kind == Counter,
                m.name.ends_with("_total"),
                "{}: counters and only counters end in _total",
                m.name
            );
            if m.unit == "seconds" || m.unit == "bytes" {
                assert!(m.name.contains(&format!("_{}", m.unit)), "{}", m.name);
            }
            for bad in ["_ms", "_millis", "_micros", "_kib", "_mib"] {
                assert!(!m.name.contains(bad), "{}: not a base unit", m.name);
            }
            for label in m.labels {
                assert!(
                    !["nhs_number", "event_id", "child", "reason_text"].contains(label),
                    "{}: unbounded label {label}",
                    m.name
                );
            }
        }
        let mut names: Vec<_> = CATALOGUE.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CATALOGUE.len(), "a name is catalogued twice");
    }

    #[test]
    fn latencies_are_histograms() {
        for m in CATALOGUE {
            if m.unit == "seconds" && (m.name.contains("duration") || m.name.contains("latency")) {
                assert_eq!(m.kind, Histogram, "{}", m.name);
            }
        }
    }

    /// The table in docs/OPERATIONS.md lists exactly the catalogue, with
    /// the same type, unit and labels.
    #[test]
    fn operations_doc_matches_the_catalogue() {
        let doc = include_str!("../../../../docs/OPERATIONS.md");
        let rows = doc_rows(doc);
        assert_eq!(rows.len(), CATALOGUE.len(), "rows: {rows:?}");
        for m in CATALOGUE {
            let row = rows
                .iter()
                .find(|r| r.0 == m.name)
                .unwrap_or_else(|| panic!("{} is not in docs/OPERATIONS.md", m.name));
            assert_eq!(row.1, m.kind.as_str(), "{}: type", m.name);
            assert_eq!(row.2, m.unit, "{}: unit", m.name);
            let labels: Vec<&str> = m.labels.to_vec();
            assert_eq!(row.3, labels, "{}: labels", m.name);
        }
    }

    /// (name, type, unit, labels) of each row of the metrics catalogue table.
    fn doc_rows(doc: &str) -> Vec<(String, String, String, Vec<&str>)> {
        let start = doc
            .find("| Metric | Type | Unit | Labels | Meaning |")
            .expect("the catalogue table");
        doc[start..]
            .lines()
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let labels = cells[4]
                    .split(',')
                    .map(|s| s.trim().trim_matches('`'))
                    .filter(|s| !s.is_empty())
                    .collect();
                (
                    cells[1].trim_matches('`').to_string(),
                    cells[2].to_string(),
                    cells[3].to_string(),
                    labels,
                )
            })
            .collect()
    }
}
