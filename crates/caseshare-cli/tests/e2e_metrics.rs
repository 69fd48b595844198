//! The metrics catalogue end to end: a real broker runs a small scenario
//! (publish, deliver, ack, a refused call), its `/metrics` scrape passes
//! `promtool check metrics`, every metric catalogued in docs/OPERATIONS.md
//! appears in the scrape with its type and labels and every scraped
//! `caseshare_` metric is catalogued, no label carries the child's NHS
//! number, and a deleted subscription's series go with it.
//!
//! `promtool` (Debian's `prometheus` package) is required when
//! `CASESHARE_REQUIRE_PROMTOOL` is set (tests/run-all.sh sets it);
//! otherwise its check is skipped with a loud message if it is absent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use caseshare_proto::v1 as pb;
use caseshare_testkit::*;

/// (type, labels) of each metric in the docs/OPERATIONS.md catalogue.
fn catalogue() -> BTreeMap<String, (String, Vec<String>)> {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/OPERATIONS.md"),
    )
    .unwrap();
    let start = doc
        .find("| Metric | Type | Unit | Labels | Meaning |")
        .expect("the metrics catalogue table in docs/OPERATIONS.md");
    let rows: BTreeMap<_, _> = doc[start..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let labels = cells[4]
                .split(',')
                .map(|s| s.trim().trim_matches('`').to_string())
                .filter(|s| !s.is_empty())
                .collect();
            (
                cells[1].trim_matches('`').to_string(),
                (cells[2].to_string(), labels),
            )
        })
        .collect();
    assert!(rows.len() > 30, "the catalogue table parsed: {rows:?}");
    rows
}

/// One sample line: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// The scrape's `# TYPE` lines (family -> type) and samples.
fn parse(body: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "{name} typed twice"
            );
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut map = BTreeMap::new();
        // Label values here never contain `",` (they are names and fixed words).
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once("=\"").unwrap();
            map.insert(k.to_string(), v.trim_end_matches('"').to_string());
        }
        samples.push((name.to_string(), map, value.parse().unwrap()));
    }
    (types, samples)
}

/// The family a sample belongs to (a histogram's `_bucket`, `_sum`,
/// `_count` lines belong to it).
fn family<'a>(name: &'a str, types: &BTreeMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && types.get(base).is_some_and(|t| t == "histogram")
        {
            return base;
        }
    }
    name
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.2)
}

/// `promtool check metrics` over `body`: Some(true/false), or None when
/// promtool is absent and not required.
fn promtool_check(body: &str) -> Option<(bool, String)> {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var_os("CASESHARE_REQUIRE_PROMTOOL").is_none(),
                "promtool is required (CASESHARE_REQUIRE_PROMTOOL is set) but could not run: {e}"
            );
            eprintln!(
                "\n!!!!!!!! SKIPPED: `promtool check metrics` — promtool is not installed \
                 (apt-get install prometheus); set CASESHARE_REQUIRE_PROMTOOL=1 to make this \
                 a failure !!!!!!!!\n"
            );
            return None;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success() && text.trim().is_empty(), text))
}

/// Scrapes until `ready` holds for the parsed samples (bounded).
fn scrape_until(b: &Broker, what: &str, ready: impl Fn(&[Sample]) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = http_get(b.ops, "/metrics");
        assert_eq!(code, 200);
        if ready(&parse(&body).1) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what} within 30 s:\n{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every catalogued metric in `body` with its type and labels, and every
/// `caseshare_` metric of `body` catalogued.
fn check_against_catalogue(body: &str, cat: &BTreeMap<String, (String, Vec<String>)>) {
    let (types, samples) = parse(body);
    for (name, (kind, labels)) in cat {
        assert_eq!(
            types.get(name),
            Some(kind),
            "{name}: catalogued as a {kind}, scraped types: {types:?}"
        );
        let mine: Vec<&Sample> = samples
            .iter()
            .filter(|s| family(&s.0, &types) == name)
            .collect();
        assert!(!mine.is_empty(), "{name} has no sample in the scrape");
        for (_, l, _) in mine {
            let got: BTreeSet<&str> = l
                .keys()
                .map(String::as_str)
                .filter(|k| *k != "le")
                .collect();
            let want: BTreeSet<&str> = labels.iter().map(String::as_str).collect();
            assert_eq!(got, want, "{name}: labels");
        }
    }
    for name in types.keys().filter(|n| n.starts_with("caseshare_")) {
        assert!(
            cat.contains_key(name),
            "{name} is scraped but not catalogued in docs/OPERATIONS.md"
        );
    }
    for (name, _, _) in samples.iter().filter(|s| s.0.starts_with("caseshare_")) {
        assert!(
            cat.contains_key(family(name, &types)),
            "{name} is scraped but not catalogued"
        );
    }
}

#[tokio::test]
async fn scrape_after_a_scenario_matches_the_catalogue_and_passes_promtool() {
    let cat = catalogue();
    let b = Broker::start();

    // From start, before anything happened: the whole catalogue but the
    // per-subscription series (there is no subscription yet).
    let (_, fresh) = http_get(b.ops, "/metrics");
    let (types, samples) = parse(&fresh);
    for name in cat.keys() {
        assert!(types.contains_key(name), "{name} not exported at start");
    }
    assert_eq!(
        value(&samples, "caseshare_events_published_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        value(&samples, "caseshare_delivery_latency_seconds_count", &[]),
        Some(0.0)
    );
    assert_eq!(
        value(
            &samples,
            "caseshare_rate_limited_total",
            &[("family", "admin"), ("reason", "rate")]
        ),
        Some(0.0)
    );
    if let Some((ok, text)) = promtool_check(&fresh) {
        assert!(ok, "promtool check metrics at start:\n{text}");
    }

    // The scenario: a publish shared with social care, delivered, acked;
    // a refused call (the school is not an admin).
    b.school_shares_with_social_care().await;
    let mut stream = Subscription::open(&b, SOCIAL_CARE, "main", 10).await;
    b.client(SCHOOL)
        .publisher
        .publish(publish_request(attendance_event("evt-metrics-1", CHILD_1)))
        .await
        .unwrap();
    let d = stream.next().await;
    assert_eq!(d.sequence, 1);
    stream.ack(vec![d.delivery_id]).await;
    let refused = b
        .client(SCHOOL)
        .admin
        .list_agencies(pb::ListAgenciesRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    let sub = [("agency", SOCIAL_CARE), ("subscription", "main")];
    let body = scrape_until(&b, "the ack, the refusal and a settled subscription", |s| {
        value(s, "caseshare_acks_total", &[]) >= Some(1.0)
            && value(s, "caseshare_auth_denied_total", &[]) >= Some(1.0)
            && value(s, "caseshare_subscription_backlog", &sub) == Some(0.0)
            && value(s, "caseshare_audit_checkpoint_size", &[])
                == value(s, "caseshare_audit_size", &[])
    });
    let (_, samples) = parse(&body);
    check_against_catalogue(&body, &cat);
    if let Some((ok, text)) = promtool_check(&body) {
        assert!(ok, "promtool check metrics after the scenario:\n{text}");
    }

    // What the scenario did, as the metrics tell it.
    let v = |name: &str, labels: &[(&str, &str)]| value(&samples, name, labels).unwrap();
    assert_eq!(v("caseshare_events_published_total", &[]), 1.0);
    assert_eq!(v("caseshare_publish_duration_seconds_count", &[]), 1.0);
    assert_eq!(v("caseshare_delivery_latency_seconds_count", &[]), 1.0);
    assert_eq!(
        v("caseshare_share_decisions_total", &[("decision", "shared")]),
        1.0
    );
    assert_eq!(v("caseshare_deliveries_sent_total", &[]), 1.0);
    assert_eq!(v("caseshare_redeliveries_total", &sub), 0.0);
    assert_eq!(v("caseshare_dead_letters_total", &sub), 0.0);
    assert_eq!(
        v("caseshare_subscription_oldest_unacked_age_seconds", &sub),
        0.0
    );
    assert_eq!(v("caseshare_subscribe_streams", &[]), 1.0);
    assert!(v("caseshare_audit_size", &[]) > 0.0);
    assert!(v("caseshare_connections", &[]) >= 1.0);
    assert!(v("caseshare_store_commits_total", &[]) >= 1.0);
    assert_eq!(
        v(
            "caseshare_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    // The dev PKI's certificates are valid for a good while.
    for which in ["server", "ca"] {
        let left = v("caseshare_certificate_expiry_seconds", &[("which", which)]);
        assert!(
            left > 86_400.0 * 30.0,
            "{which} certificate expires in {left} s"
        );
    }

    // No label value (nor anything else) carries the child's NHS number,
    // or any ten-digit number; no event id either.
    assert!(!body.contains(CHILD_1));
    assert!(!body.contains("evt-metrics-1"));
    for (name, labels, _) in &samples {
        for (k, val) in labels {
            let digits = val.chars().filter(char::is_ascii_digit).count();
            assert!(
                digits < 10,
                "{name}{{{k}={val:?}}} looks like an NHS number"
            );
        }
    }

    // A deleted subscription's series go with it.
    drop(stream);
    b.client(SOCIAL_CARE)
        .subscriber
        .delete_subscription(pb::DeleteSubscriptionRequest {
            name: "main".into(),
        })
        .await
        .unwrap();
    let (_, after) = http_get(b.ops, "/metrics");
    let (types, samples) = parse(&after);
    assert!(types.contains_key("caseshare_subscription_backlog"));
    assert_eq!(
        value(&samples, "caseshare_subscription_backlog", &sub),
        None
    );
    assert_eq!(value(&samples, "caseshare_dead_letters_total", &sub), None);
    if let Some((ok, text)) = promtool_check(&after) {
        assert!(ok, "promtool check metrics after the delete:\n{text}");
    }
}

/// A subscription whose consumer never connects: its backlog counts the
/// event and its oldest unacknowledged age grows.
#[tokio::test]
async fn backlog_and_oldest_unacked_age_grow_while_nobody_consumes() {
    let b = Broker::start();
    b.school_shares_with_social_care().await;
    b.client(SCHOOL)
        .publisher
        .publish(publish_request(attendance_event("evt-metrics-2", CHILD_2)))
        .await
        .unwrap();
    let sub = [("agency", SOCIAL_CARE), ("subscription", "main")];
    let body = scrape_until(&b, "an oldest unacked age of 2 s", |s| {
        value(s, "caseshare_subscription_oldest_unacked_age_seconds", &sub) >= Some(2.0)
    });
    let (_, samples) = parse(&body);
    assert_eq!(
        value(&samples, "caseshare_subscription_backlog", &sub),
        Some(1.0)
    );
}
