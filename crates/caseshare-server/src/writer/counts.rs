//! The writer's per-op metrics, counted from each op's reply.
//!
//! The handles are looked up once, when the writer is made (after the
//! process's recorder is installed), rather than at every op: a
//! `metrics::counter!` call hashes its key into the recorder's registry
//! and allocates a handle each time, several times per published event.

use caseshare_core::pb;
use caseshare_state::{Command, Reply};
use metrics::Counter;

use super::Verdict;
use crate::errors::BrokerError;

/// What metrics need from a command before the machine consumes it.
pub(super) enum Settled {
    Acks(usize),
    Expunged(usize),
    Other,
}

/// What `command` settles, read before the machine consumes it.
pub(super) fn settled_count(command: &Command) -> Settled {
    match command {
        Command::Ack { acks, .. } => Settled::Acks(acks.len()),
        Command::Expunge { events } => Settled::Expunged(events.len()),
        _ => Settled::Other,
    }
}

/// The counters the writer adds to per op.
pub(super) struct Counts {
    acks: Counter,
    expunged: Counter,
    duplicates: Counter,
    published: Counter,
    shared: Counter,
    withheld: Counter,
    deliveries: Counter,
    stopped: Counter,
    expired: Counter,
}

impl Counts {
    /// The handles, from the recorder installed now.
    pub(super) fn new() -> Self {
        let decisions = |label: &'static str| metrics::counter!("caseshare_share_decisions_total", "decision" => label);
        Counts {
            acks: metrics::counter!("caseshare_acks_total"),
            expunged: metrics::counter!("caseshare_events_expunged_total"),
            duplicates: metrics::counter!("caseshare_publish_duplicates_total"),
            published: metrics::counter!("caseshare_events_published_total"),
            shared: decisions("shared"),
            withheld: decisions("withheld"),
            deliveries: metrics::counter!("caseshare_deliveries_total"),
            stopped: metrics::counter!("caseshare_deliveries_stopped_total"),
            expired: metrics::counter!("caseshare_deliveries_expired_total"),
        }
    }

    /// Counts what an applied op did, from its reply.
    pub(super) fn count(&self, settled: Settled, result: &Result<Reply, BrokerError>) {
        match settled {
            Settled::Acks(n) => self.acks.increment(n as u64),
            Settled::Expunged(n) => self.expunged.increment(n as u64),
            Settled::Other => {}
        }
        match result {
            Ok(Reply::Published(p)) if p.duplicate => self.duplicates.increment(1),
            Ok(Reply::Published(p)) => {
                self.published.increment(1);
                let shared = p
                    .decisions
                    .iter()
                    .filter(|d| d.decision == pb::Decision::Shared as i32)
                    .count();
                self.shared.increment(shared as u64);
                self.withheld.increment((p.decisions.len() - shared) as u64);
            }
            Ok(Reply::Verdicts(verdicts)) => {
                for v in verdicts {
                    match v {
                        Verdict::Shared(_) | Verdict::Notice => self.deliveries.increment(1),
                        Verdict::Stopped(_) => self.stopped.increment(1),
                        Verdict::Expired => self.expired.increment(1),
                    }
                }
            }
            _ => {}
        }
    }
}
