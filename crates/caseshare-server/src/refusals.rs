//! Refusal auditing, aggregated and bounded. A refused call is not written
//! to the audit log on its own: it is counted under (caller, method from
//! `caseshare_core::authz::TABLE`, reason) and every
//! `audit.refusal_interval_ms` one `AUTH_DENIED` entry per key is written,
//! carrying the count. Nothing the client typed reaches the log: the method
//! is the table's own `&'static str` and the reason a fixed phrase. The map
//! holds at most `audit.refusal_max_keys` keys per interval; refusals past
//! that are counted in one overflow entry (actor `system`). Pending counts
//! are flushed on shutdown.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use caseshare_core::pb;
use caseshare_core::principal::Principal;
use tokio::sync::watch;

use crate::writer::{Op, Writer};

/// The most encoded bytes of `AUTH_DENIED` entries written by one op (one
/// op must fit one journal message, 1 MiB, in cluster mode).
pub(crate) const BYTES_PER_OP: usize = 256 * 1024;

/// `entries` in order, cut into ops of at most [`BYTES_PER_OP`] encoded
/// bytes (one entry alone may pass it; entries are small and bounded).
fn chunks(entries: Vec<pb::AuditEntry>) -> Vec<Vec<pb::AuditEntry>> {
    let mut out = Vec::new();
    let mut chunk = Vec::new();
    let mut bytes = 0;
    for e in entries {
        let len = prost::Message::encoded_len(&e);
        if !chunk.is_empty() && bytes + len > BYTES_PER_OP {
            out.push(std::mem::take(&mut chunk));
            bytes = 0;
        }
        bytes += len;
        chunk.push(e);
    }
    if !chunk.is_empty() {
        out.push(chunk);
    }
    out
}
/// Why a known method was refused (fixed phrases, never client text).
pub mod reason {
    /// The caller's role may not call the method.
    pub const ROLE: &str = "the caller's role may not call this method";
    /// A consent withdrawal by an agency neither recording nor named.
    pub const CONSENT_STANDING: &str = "not the recording agency and not named by the consent";
    /// The caller's agency is not registered.
    pub const UNREGISTERED: &str = "the caller's agency is not registered";
}

/// The reason of the overflow entry.
pub const OVERFLOW_REASON: &str =
    "refusals by further callers this interval (audit.refusal_max_keys reached)";

type Key = (String, &'static str, &'static str);

#[derive(Debug, Default)]
struct Window {
    counts: HashMap<Key, u64>,
    overflow: u64,
}

/// The aggregator.
#[derive(Debug)]
pub struct Refusals {
    max_keys: usize,
    window: Mutex<Window>,
}

impl Refusals {
    /// At most `max_keys` distinct (caller, method, reason) per interval.
    pub fn new(max_keys: usize) -> Self {
        Refusals {
            max_keys: max_keys.max(1),
            window: Mutex::new(Window::default()),
        }
    }

    /// Counts one refusal of `method` (a `TABLE` path) for `actor`.
    pub fn note(&self, actor: &Principal, method: &'static str, reason: &'static str) {
        metrics::counter!("caseshare_auth_denied_total").increment(1);
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let key = (actor.spiffe_id(), method, reason);
        if let Some(n) = w.counts.get_mut(&key) {
            *n += 1;
        } else if w.counts.len() < self.max_keys {
            w.counts.insert(key, 1);
        } else {
            w.overflow += 1;
            metrics::counter!("caseshare_auth_denied_overflow_total").increment(1);
        }
    }

    /// Takes the window's counts as audit entries (and starts a new window).
    pub fn take(&self) -> Vec<pb::AuditEntry> {
        let w = std::mem::take(&mut *self.window.lock().unwrap_or_else(|p| p.into_inner()));
        let mut entries: Vec<pb::AuditEntry> = w
            .counts
            .into_iter()
            .map(|((actor, method, reason), count)| pb::AuditEntry {
                kind: pb::EntryKind::AuthDenied as i32,
                actor,
                rpc: method.to_string(),
                reason: reason.to_string(),
                count,
                ..Default::default()
            })
            .collect();
        entries.sort_by(|a, b| (&a.actor, &a.rpc, &a.reason).cmp(&(&b.actor, &b.rpc, &b.reason)));
        if w.overflow > 0 {
            entries.push(pb::AuditEntry {
                kind: pb::EntryKind::AuthDenied as i32,
                actor: "system".into(),
                reason: OVERFLOW_REASON.into(),
                count: w.overflow,
                ..Default::default()
            });
        }
        entries
    }

    /// Writes the window's entries, if any, at most [`BYTES_PER_OP`] per
    /// op: a window may hold `audit.refusal_max_keys` (up to 10 million)
    /// entries.
    pub async fn flush(&self, writer: &Writer) {
        for chunk in chunks(self.take()) {
            let n = chunk.len();
            if let Err(e) = writer
                .call(|reply| Op::AuthDenied {
                    entries: chunk,
                    reply,
                })
                .await
            {
                tracing::error!(error = %e, entries = n, "could not record AUTH_DENIED entries");
            }
        }
    }

    /// Flushes every `interval` until `stop` changes, then once more.
    pub async fn run(
        self: Arc<Self>,
        writer: Writer,
        interval: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => self.flush(&writer).await,
                _ = stop.changed() => break,
            }
        }
        self.flush(&writer).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use caseshare_core::principal::Role;

    fn p(name: &str) -> Principal {
        Principal {
            trust_domain: "caseshare.local".into(),
            role: Role::Agency,
            name: name.into(),
        }
    }

    #[test]
    fn refusals_are_counted_per_key_and_bounded() {
        let r = Refusals::new(2);
        for _ in 0..1000 {
            r.note(&p("a"), "/caseshare.v1.Admin/RegisterAgency", reason::ROLE);
        }
        r.note(&p("b"), "/caseshare.v1.Admin/RegisterAgency", reason::ROLE);
        // A third key is past the bound: counted in the overflow entry.
        r.note(&p("c"), "/caseshare.v1.Admin/RegisterAgency", reason::ROLE);
        r.note(&p("c"), "/caseshare.v1.Audit/Query", reason::ROLE);
        let e = r.take();
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].count, 1000);
        assert_eq!(e[0].actor, "spiffe://caseshare.local/agency/a");
        assert_eq!(e[1].count, 1);
        assert_eq!(e[2].actor, "system");
        assert_eq!(e[2].count, 2);
        assert!(r.take().is_empty(), "a new window starts empty");
    }

    /// A window of many refusals is written in ops of at most 256 KiB,
    /// every entry once and in order; a small one in one op; none in none.
    #[test]
    fn a_big_window_is_cut_into_bounded_ops() {
        let entry = |i: usize| pb::AuditEntry {
            kind: pb::EntryKind::AuthDenied as i32,
            actor: format!("spiffe://caseshare.local/agency/agency-{i:06}"),
            rpc: "/caseshare.v1.Publisher/Publish".into(),
            reason: "not_registered".into(),
            count: 1,
            ..Default::default()
        };
        let many: Vec<pb::AuditEntry> = (0..10_000).map(entry).collect();
        let total: usize = many.iter().map(prost::Message::encoded_len).sum();
        let ops = chunks(many.clone());
        assert!(
            ops.len() > 1 && ops.len() >= total / BYTES_PER_OP,
            "{}",
            ops.len()
        );
        for op in &ops {
            let bytes: usize = op.iter().map(prost::Message::encoded_len).sum();
            assert!(bytes <= BYTES_PER_OP, "{bytes}");
        }
        assert_eq!(ops.concat(), many);
        assert_eq!(chunks(vec![entry(1)]).len(), 1);
        assert!(chunks(Vec::new()).is_empty());
    }
}
