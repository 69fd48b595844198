//! Reaching the broker: one started in-process ([`EmbeddedBroker`]) or a
//! running one, the client identities for each role ([`Endpoints`]),
//! registering the agencies, the agreement and the subscriptions, and the
//! broker's own figures from `/metrics`.
//!
//! An embedded broker is set up as `caseshare serve` sets one up: the log
//! subscriber (`CASESHARE_LOG`, default `info`, on stderr) and trace
//! export from the `OTEL_*` variables (`OTEL_EXPORTER_OTLP_ENDPOINT`,
//! `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`, …), with the endpoint
//! replaced by the in-process sink under `--otlp-sink`. Both are process
//! wide, so a bench process embeds one broker.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use caseshare_cli::client::{ClientConfig, Clients};
use caseshare_proto::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::otlp::OtlpSink;
use crate::summary::{ServerFigures, TraceFigures};
use crate::workload::Workload;
use crate::{AGREEMENT_ID, BenchArgs, EVENT_TYPE, PUBLISHER_AGENCY, SUBSCRIBER_AGENCY};

/// A broker started in-process.
pub(crate) struct EmbeddedBroker {
    _dir: tempfile::TempDir,
    grpc: std::net::SocketAddr,
    ops: std::net::SocketAddr,
    pki: PathBuf,
    running: Option<caseshare_server::Running>,
    telemetry: Option<caseshare_server::telemetry::Telemetry>,
    traces: TraceFigures,
    sink: Option<OtlpSink>,
}

impl EmbeddedBroker {
    /// Starts a broker on loopback in a temporary directory under
    /// `--data-dir`, and waits until it listens.
    pub(crate) async fn start(args: &BenchArgs) -> Result<Self> {
        let parent = args.data_dir.clone().unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        let dir = tempfile::Builder::new()
            .prefix("caseshare-bench-")
            .tempdir_in(&parent)
            .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;
        // Only the OTEL_* variables: the bench sets every other key itself.
        let otel = |k: &str| {
            k.starts_with("OTEL_")
                .then(|| std::env::var(k).ok())
                .flatten()
        };
        let mut config = caseshare_server::config::Config::load(None, otel)
            .context("the OTEL_* variables for the embedded broker")?;
        config.data_dir = dir.path().join("data");
        config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        config.ops_listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        config.limits.max_outstanding = config.limits.max_outstanding.max(args.max_outstanding);
        if let Some(us) = args.commit_delay_us {
            config.store.commit_delay_us = us;
        }
        let sink = if args.otlp_sink {
            let (sink, endpoint) = OtlpSink::start().await?;
            config.telemetry.otlp_endpoint = endpoint;
            Some(sink)
        } else {
            None
        };
        config.validate()?;
        let telemetry =
            caseshare_server::telemetry::init_with_traces(&config.log_format, &config.telemetry)?;
        if telemetry.exports() != config.telemetry.exports() {
            bail!(
                "trace export was set up already in this process (one embedded broker per process)"
            );
        }
        let t = &config.telemetry;
        let traces = TraceFigures {
            exporting: telemetry.exports(),
            endpoint: t.otlp_endpoint.clone(),
            sampler: t.sampler.clone(),
            sampler_arg: t.sampler_arg,
            publisher_sampled_ratio: args.trace_context,
            spans_received: None,
            export_requests: None,
            spans_per_event: None,
            spans_by_name: Default::default(),
        };
        let pki = config.data_dir.join("pki");
        let running =
            tokio::time::timeout(Duration::from_secs(60), caseshare_server::start(config))
                .await
                .map_err(|_| anyhow!("the embedded broker did not start within 60 s"))?
                .map_err(|e| anyhow!("the embedded broker did not start: {e}"))?;
        Ok(EmbeddedBroker {
            _dir: dir,
            grpc: running.bound.grpc,
            ops: running.bound.ops,
            pki,
            running: Some(running),
            telemetry: Some(telemetry),
            traces,
            sink,
        })
    }

    /// Stops the broker and waits (up to 30 s) for it to finish, then
    /// flushes its trace export; returns the trace figures with what the
    /// sink received, per one of `events` published.
    pub(crate) async fn stop(mut self, events: u64) -> Result<TraceFigures> {
        if let Some(r) = self.running.take() {
            match tokio::time::timeout(Duration::from_secs(30), r.stop()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => bail!("the embedded broker failed: {e}"),
                Err(_) => bail!("the embedded broker did not stop within 30 s"),
            }
        }
        if let Some(t) = self.telemetry.take() {
            tokio::time::timeout(Duration::from_secs(60), t.shutdown())
                .await
                .map_err(|_| anyhow!("flushing the trace export took over 60 s"))?;
        }
        let mut traces = self.traces.clone();
        if let Some(sink) = &self.sink {
            let r = sink.received();
            traces.spans_received = Some(r.spans);
            traces.export_requests = Some(r.requests);
            traces.spans_per_event = Some(r.spans as f64 / events.max(1) as f64);
            traces.spans_by_name = r.by_name;
        }
        Ok(traces)
    }
}

/// How to reach the broker as each identity.
#[derive(Debug, Clone)]
pub(crate) struct Endpoints {
    pub(crate) admin: ClientConfig,
    pub(crate) publisher: ClientConfig,
    pub(crate) subscriber: ClientConfig,
    pub(crate) ops: Option<String>,
    pub(crate) label: String,
}

/// The identities for a running broker, from `--pki` or the explicit
/// certificate flags.
pub(crate) fn endpoints_remote(args: &BenchArgs, server: &str) -> Result<Endpoints> {
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

/// The identities for an embedded broker (its dev PKI).
pub(crate) fn endpoints_embedded(b: &EmbeddedBroker) -> Endpoints {
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

/// A gRPC status as an error: its code and message.
pub(crate) fn status(s: tonic::Status) -> anyhow::Error {
    anyhow!("{:?}: {}", s.code(), s.message())
}

/// Registers the two agencies (if new), puts the bench agreement and
/// creates one subscription per subscriber; returns their names.
pub(crate) async fn setup_broker(
    e: &Endpoints,
    args: &BenchArgs,
    w: &Workload,
) -> Result<Vec<String>> {
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

/// Deletes the subscriptions `setup_broker` created.
pub(crate) async fn teardown_broker(e: &Endpoints, names: &[String]) -> Result<()> {
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
pub(crate) async fn scrape(addr: &str) -> Result<HashMap<String, f64>> {
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

/// The commit histogram's buckets, up to the bound and its closing `"}`.
const COMMIT_BUCKET: &str = "caseshare_store_commit_seconds_bucket{le=";

/// The least finite bucket bound (ms) holding every commit of the run:
/// `after` names the buckets, `d` gives a metric's delta.
fn slowest_within(after: &HashMap<String, f64>, d: &dyn Fn(&str) -> f64) -> Option<f64> {
    let total = d("caseshare_store_commit_seconds_count");
    let mut bounds: Vec<(f64, &str)> = after
        .keys()
        .filter_map(|k| {
            let le = k
                .strip_prefix(COMMIT_BUCKET)?
                .trim_matches(|c| c == '"' || c == '}');
            Some((
                le.parse::<f64>().ok().filter(|v| v.is_finite())?,
                k.as_str(),
            ))
        })
        .collect();
    bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
    (total > 0.0)
        .then(|| bounds.into_iter().find(|(_, k)| d(k) >= total))
        .flatten()
        .map(|(le, _)| le * 1000.0)
}

/// The broker's figures from two `/metrics` scrapes `elapsed_secs` apart.
pub(crate) fn server_figures(
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
        commits_over_10ms: {
            let within = format!("{COMMIT_BUCKET}\"0.01\"}}");
            after
                .contains_key(&within)
                .then(|| d("caseshare_store_commit_seconds_count") - d(&within))
        },
        slowest_commit_within_ms: slowest_within(after, &d),
        writer_busy_fraction: per(commit_secs, elapsed_secs),
        writer_idle_fraction: (d("caseshare_writer_batch_seconds_count") > 0.0).then(|| {
            (1.0 - per(d("caseshare_writer_batch_seconds_sum"), elapsed_secs)).clamp(0.0, 1.0)
        }),
        records_per_event: per(records, published),
        deliveries: d("caseshare_deliveries_total"),
        deliveries_tailed: d("caseshare_deliveries_tailed_total"),
        acks: d("caseshare_acks_total"),
        journal_proposals: d("caseshare_journal_proposals_total"),
        journal_applied: d("caseshare_journal_applied_sequence"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `/metrics` scrape holding `values`.
    fn scrape(values: &[(&str, f64)]) -> HashMap<String, f64> {
        values.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn metrics_deltas() {
        let before = scrape(&[
            ("caseshare_store_commits_total", 10.0),
            ("caseshare_events_published_total", 100.0),
        ]);
        let after = scrape(&[
            ("caseshare_store_commits_total", 110.0),
            ("caseshare_events_published_total", 2100.0),
            ("caseshare_store_records_total", 8000.0),
            ("caseshare_store_commit_seconds_sum", 0.5),
            ("caseshare_store_commit_seconds_count", 100.0),
            ("caseshare_deliveries_total", 2000.0),
            ("caseshare_deliveries_tailed_total", 1500.0),
        ]);
        let s = server_figures(&before, &after, 2.0);
        assert_eq!(s.deliveries, 2000.0);
        assert_eq!(s.deliveries_tailed, 1500.0);
        assert_eq!(s.commits_over_10ms, None, "no histogram: not known");
        assert_eq!(s.slowest_commit_within_ms, None);
        assert_eq!(s.commits, 100.0);
        assert_eq!(s.flushes_per_sec, 50.0);
        assert_eq!(s.events_per_commit, 20.0);
        assert_eq!(s.records_per_event, 4.0);
        assert!((s.mean_commit_ms - 5.0).abs() < 1e-9);
        assert!((s.writer_busy_fraction - 0.25).abs() < 1e-9);
        assert_eq!(
            s.writer_idle_fraction, None,
            "no writer histogram: not known"
        );
    }

    #[test]
    fn writer_idle_from_its_batch_histogram() {
        let before = scrape(&[
            ("caseshare_writer_batch_seconds_sum", 7.0),
            ("caseshare_writer_batch_seconds_count", 70.0),
        ]);
        let at = |sum: f64| {
            scrape(&[
                ("caseshare_writer_batch_seconds_sum", sum),
                ("caseshare_writer_batch_seconds_count", 170.0),
            ])
        };
        // Batches open 1.5 s of a 2 s run: idle a quarter of it.
        let s = server_figures(&before, &at(8.5), 2.0);
        assert!(
            s.writer_idle_fraction
                .is_some_and(|f| (f - 0.25).abs() < 1e-9),
            "{:?}",
            s.writer_idle_fraction
        );
        // A batch open since before the run counts whole: never below 0.
        assert_eq!(
            server_figures(&before, &at(10.0), 2.0).writer_idle_fraction,
            Some(0.0)
        );
        // No batch in the run: not known.
        assert_eq!(
            server_figures(&before, &before, 2.0).writer_idle_fraction,
            None
        );
    }

    #[test]
    fn slow_commits_from_the_histogram() {
        let bucket = |le: &str| format!("{COMMIT_BUCKET}\"{le}\"}}");
        let before: HashMap<String, f64> = [
            ("caseshare_store_commit_seconds_count".to_string(), 10.0),
            (bucket("0.005"), 10.0),
            (bucket("0.01"), 10.0),
            (bucket("0.025"), 10.0),
            (bucket("0.05"), 10.0),
            (bucket("+Inf"), 10.0),
        ]
        .into();
        let mut after = before.clone();
        // 100 commits more: 95 within 5 ms, 4 within 25 ms, 1 within 50.
        for (k, v) in [
            ("caseshare_store_commit_seconds_count".to_string(), 110.0),
            (bucket("0.005"), 105.0),
            (bucket("0.01"), 107.0),
            (bucket("0.025"), 109.0),
            (bucket("0.05"), 110.0),
            (bucket("+Inf"), 110.0),
        ] {
            after.insert(k, v);
        }
        let s = server_figures(&before, &after, 1.0);
        assert_eq!(s.commits_over_10ms, Some(3.0));
        assert_eq!(s.slowest_commit_within_ms, Some(50.0));
        // A commit past the largest finite bucket has no bound.
        after.insert(bucket("0.05"), 109.0);
        let s = server_figures(&before, &after, 1.0);
        assert_eq!(s.slowest_commit_within_ms, None);
    }
}
