//! The metrics that are sampled rather than counted where things happen:
//! per subscription (backlog, oldest unsettled age, dead letters,
//! redeliveries — rendered at scrape time from the delivery registry, so a
//! deleted subscription's series go with it), seconds since the last
//! checkpoint and certificate seconds-to-expiry. A 1 s sampler keeps the
//! ages current; nothing here reads the disk. `caseshare status`
//! (`ops::status`) reads the same figures through [`Subscriptions::rows`]
//! and [`last_checkpoint`].

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use super::catalogue::{CATALOGUE, Metric};
use crate::delivery::Deliveries;

/// (server certificate, earliest CA) expiry, Unix seconds.
static CERTS: Mutex<Option<(i64, i64)>> = Mutex::new(None);
/// When the latest checkpoint was signed, and its tree size.
static CHECKPOINT: Mutex<Option<(Instant, u64)>> = Mutex::new(None);

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Records the expiry (Unix seconds) of the server certificate and of the
/// CA bundle's earliest certificate (at start and at each TLS reload).
pub fn certificates_loaded(server_not_after: i64, ca_not_after: i64) {
    *CERTS.lock().unwrap_or_else(|p| p.into_inner()) = Some((server_not_after, ca_not_after));
    update_certificates();
}

/// Records a checkpoint of `size` entries just signed.
pub fn checkpoint_signed(size: u64) {
    *CHECKPOINT.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), size));
    metrics::gauge!("caseshare_audit_checkpoint_size").set(size as f64);
    metrics::gauge!("caseshare_audit_checkpoint_age_seconds").set(0.0);
}

fn update_certificates() {
    if let Some((server, ca)) = *CERTS.lock().unwrap_or_else(|p| p.into_inner()) {
        let now = unix_now();
        metrics::gauge!("caseshare_certificate_expiry_seconds", "which" => "server")
            .set(server.saturating_sub(now) as f64);
        metrics::gauge!("caseshare_certificate_expiry_seconds", "which" => "ca")
            .set(ca.saturating_sub(now) as f64);
    }
}

/// The latest signed checkpoint: its tree size and how long ago it was
/// signed (None before the first).
pub fn last_checkpoint() -> Option<(u64, std::time::Duration)> {
    CHECKPOINT
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .map(|(at, size)| (size, at.elapsed()))
}

fn update_checkpoint_age() {
    if let Some((_, age)) = last_checkpoint() {
        metrics::gauge!("caseshare_audit_checkpoint_age_seconds").set(age.as_secs_f64().floor());
    }
}

/// One subscription's figures, read from the delivery registry.
#[derive(Debug, Clone)]
pub struct SubFigures {
    /// Internal id.
    pub id: u64,
    /// The subscribing agency.
    pub agency: String,
    /// The subscription's name.
    pub name: String,
    /// The lowest sequence it still owes.
    pub floor: u64,
    /// Whether it owes anything (its floor is at or below the head).
    pub owes: bool,
    /// Unsettled deliveries plus unread log events after its cursor.
    pub backlog: u64,
    /// Dead letters since start.
    pub dead_letters: u64,
    /// Redeliveries since start.
    pub redeliveries: u64,
}

/// The per-subscription series, from the delivery registry.
#[derive(Debug)]
pub struct Subscriptions {
    deliveries: Arc<Deliveries>,
    /// Per subscription id: its floor when last seen and since when it
    /// has stood there while owing something.
    since: Mutex<HashMap<u64, (u64, Instant)>>,
}

impl Subscriptions {
    /// Over `deliveries`.
    pub fn new(deliveries: Arc<Deliveries>) -> Arc<Self> {
        Arc::new(Subscriptions {
            deliveries,
            since: Mutex::new(HashMap::new()),
        })
    }

    /// Reads every subscription's figures and notes when its floor moved;
    /// returns the figures with the oldest unsettled age of each.
    fn observe(&self) -> Vec<(SubFigures, f64)> {
        let figures = self.deliveries.figures();
        let now = Instant::now();
        let mut since = self.since.lock().unwrap_or_else(|p| p.into_inner());
        since.retain(|id, _| figures.iter().any(|f| f.id == *id));
        figures
            .into_iter()
            .map(|f| {
                let entry = since.entry(f.id).or_insert((f.floor, now));
                if entry.0 != f.floor || !f.owes {
                    *entry = (f.floor, now);
                }
                let age = if f.owes {
                    now.duration_since(entry.1).as_secs_f64().floor()
                } else {
                    0.0
                };
                (f, age)
            })
            .collect()
    }

    /// Every subscription's figures with its oldest unsettled age in whole
    /// seconds, as the metrics give them, and the deliveries it has out on
    /// a stream (picked or sent, not settled).
    pub fn rows(&self) -> Vec<(SubFigures, u64, u64)> {
        self.observe()
            .into_iter()
            .map(|(f, age)| {
                let in_flight = self.in_flight(&f);
                (f, age as u64, in_flight)
            })
            .collect()
    }

    /// Deliveries of `f`'s subscription on a stream (0 if it is gone).
    fn in_flight(&self, f: &SubFigures) -> u64 {
        match self.deliveries.runtime(&f.agency, &f.name) {
            Ok(rt) if rt.id == f.id => rt
                .lock()
                .pending()
                .filter(|(_, p)| p.state().stream().is_some())
                .count() as u64,
            _ => 0,
        }
    }

    /// The per-subscription families in Prometheus text (each family's
    /// HELP and TYPE even when there is no subscription).
    pub fn render(&self) -> String {
        let rows = self.observe();
        let mut out = String::new();
        for metric in CATALOGUE.iter().filter(|m| m.per_subscription) {
            header(&mut out, metric);
            for (f, age) in &rows {
                let value = match metric.name {
                    "caseshare_dead_letters_total" => f.dead_letters as f64,
                    "caseshare_redeliveries_total" => f.redeliveries as f64,
                    "caseshare_subscription_backlog" => f.backlog as f64,
                    _ => *age,
                };
                let _ = writeln!(
                    out,
                    "{}{{agency=\"{}\",subscription=\"{}\"}} {}",
                    metric.name,
                    escape(&f.agency),
                    escape(&f.name),
                    value
                );
            }
        }
        out
    }
}

fn header(out: &mut String, metric: &Metric) {
    let _ = writeln!(out, "# HELP {} {}", metric.name, metric.help);
    let _ = writeln!(out, "# TYPE {} {}", metric.name, metric.kind.as_str());
}

/// A label value in the text format.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Every second until shutdown: the ages (checkpoint, certificates) and
/// the subscriptions' floors (so an age counts from when the floor stopped,
/// not from the next scrape).
pub async fn sample(subs: Arc<Subscriptions>, mut shutdown: watch::Receiver<bool>) {
    loop {
        update_certificates();
        update_checkpoint_age();
        drop(subs.observe());
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {},
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
    }
}
