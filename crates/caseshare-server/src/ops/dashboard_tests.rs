//! The Grafana dashboard (`deploy/grafana/caseshare.json`) against the
//! metrics catalogue: every `caseshare_` metric it queries is catalogued
//! (a histogram through its `_bucket`, `_sum` and `_count` series), every
//! label it groups by is one of those metrics' labels, it covers what an
//! operator watches (publishing, delivery, backlog, dead letters,
//! refusals, checkpoints, certificates), and every query parses as
//! PromQL (`promtool check rules` over the queries as recording rules,
//! when promtool is installed; required when `CASESHARE_REQUIRE_PROMTOOL`
//! is set).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::Write as _;

use super::catalogue::{CATALOGUE, Kind, Metric};

const DASHBOARD: &str = include_str!("../../../../deploy/grafana/caseshare.json");

/// Every PromQL query in the dashboard: panel targets and the template
/// variables' queries.
fn queries(dash: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            out.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    for var in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["query"]["query"].as_str() {
            out.push(q.to_string());
        }
    }
    out
}

/// The catalogued metric a series name belongs to.
fn catalogued(series: &str) -> Option<&'static Metric> {
    CATALOGUE.iter().find(|m| {
        m.name == series
            || (m.kind == Kind::Histogram
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| series.strip_suffix(s) == Some(m.name)))
    })
}

/// The `caseshare_…` names in a query.
fn metric_names(expr: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("caseshare_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(&tail[..end]);
        rest = &tail[end..];
    }
    out
}

/// The labels of every `by (…)` clause in a query.
fn grouping_labels(expr: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("by (") {
        let tail = &rest[i + 4..];
        let end = tail.find(')').unwrap();
        out.extend(tail[..end].split(',').map(str::trim));
        rest = &tail[end..];
    }
    out
}

#[test]
fn every_metric_the_dashboard_queries_is_catalogued() {
    let dash: serde_json::Value = serde_json::from_str(DASHBOARD).unwrap();
    let queries = queries(&dash);
    assert!(queries.len() > 20, "{queries:?}");
    let mut queried = BTreeSet::new();
    for q in &queries {
        let names = metric_names(q);
        let metrics: Vec<&Metric> = names
            .iter()
            .map(|n| {
                catalogued(n).unwrap_or_else(|| {
                    panic!("{n} (in `{q}`) is not in the catalogue (ops::catalogue, docs/OPERATIONS.md)")
                })
            })
            .collect();
        for label in grouping_labels(q) {
            assert!(
                label == "le" || metrics.iter().any(|m| m.labels.contains(&label)),
                "`by ({label})` in `{q}`: no queried metric has that label"
            );
        }
        queried.extend(metrics.iter().map(|m| m.name));
    }
    for needed in [
        "caseshare_events_published_total",
        "caseshare_publish_duration_seconds",
        "caseshare_delivery_latency_seconds",
        "caseshare_deliveries_sent_total",
        "caseshare_acks_total",
        "caseshare_subscription_backlog",
        "caseshare_subscription_oldest_unacked_age_seconds",
        "caseshare_dead_letters_total",
        "caseshare_auth_denied_total",
        "caseshare_rate_limited_total",
        "caseshare_audit_checkpoint_age_seconds",
        "caseshare_certificate_expiry_seconds",
    ] {
        assert!(queried.contains(needed), "the dashboard shows no {needed}");
    }
}

#[test]
fn panels_are_well_formed() {
    let dash: serde_json::Value = serde_json::from_str(DASHBOARD).unwrap();
    assert_eq!(dash["uid"], "caseshare");
    let mut ids = BTreeSet::new();
    for panel in dash["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "{title}: id reused"
        );
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(x + w <= 24, "{title}: wider than the grid");
        if panel["type"] == "row" {
            continue;
        }
        assert!(
            panel["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{title}: say what it shows"
        );
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(
                refs.insert(t["refId"].as_str().unwrap()),
                "{title}: refId reused"
            );
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
        }
    }
}

#[test]
fn every_query_parses_as_promql() {
    let dash: serde_json::Value = serde_json::from_str(DASHBOARD).unwrap();
    // Grafana's variables replaced as Grafana would for job `caseshare`,
    // every instance, a 5 m rate window.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in queries(&dash).iter().enumerate() {
        let expr = q
            .replace("$__rate_interval", "5m")
            .replace("$job", "caseshare")
            .replace("$instance", ".*");
        let expr = match expr.strip_prefix("label_values(") {
            // A variable query, not PromQL: its selector is.
            Some(rest) => rest.rsplit_once(',').unwrap().0.to_string(),
            None => expr,
        };
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard_rules.yaml");
    std::fs::write(&file, &rules).unwrap();
    let out = match std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            assert!(
                std::env::var_os("CASESHARE_REQUIRE_PROMTOOL").is_none(),
                "promtool is required (CASESHARE_REQUIRE_PROMTOOL is set) but could not run: {e}"
            );
            // The server library never prints (the tidy test): write to
            // stderr directly.
            let _ = writeln!(
                std::io::stderr(),
                "\n!!!!!!!! SKIPPED: the dashboard's PromQL check — promtool is not installed \
                 (apt-get install prometheus) !!!!!!!!\n"
            );
            return;
        }
    };
    assert!(
        out.status.success(),
        "promtool check rules over the dashboard's queries:\n{}{}\n{rules}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
