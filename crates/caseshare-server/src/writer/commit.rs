//! The commit thread and what lookups see meanwhile.
//!
//! The commit thread commits each sealed batch ([`commit_one`]; at low
//! load the writer makes a small batch's commit itself, the same step, see
//! `INLINE_OPS`); as soon as it is durable
//! (its WAL frame synced) it publishes the new audit head and event head
//! and answers the batch's ops, while the store applies it to sled behind
//! the readers' gate ([`crate::settle`]). A commit that fails before its
//! sync answers every op with an error and exits the process; one that
//! fails after exits too (crash-only: a restart reloads the last durable
//! state, the frame included). While a batch is in commit, the
//! next one is applied: [`Durable`] answers the state machine's lookups from
//! the batch in commit first, then from the store.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use caseshare_state::{
    DeliveryRecord, Lookup, LookupError, Reply, Sealed, StoredEvent, newest_over,
};
use caseshare_store::Storage;
use tokio::sync::watch;

use super::ops::Finisher;
use crate::errors::BrokerError;

/// A sealed batch handed to the commit thread, with its answers.
pub(super) struct ToCommit {
    pub(super) batch: Arc<Sealed>,
    pub(super) finishers: Answers,
    pub(super) new_head: Option<(u64, caseshare_audit::merkle::Hash)>,
    pub(super) audit_size: u64,
    pub(super) last_sequence: Option<u64>,
}

/// What earlier commits wrote: the batch in commit (if any), then the store.
pub(super) struct Durable<'a> {
    pub(super) store: &'a dyn Storage,
    pub(super) in_commit: Option<&'a Sealed>,
}

fn lookup_error(e: caseshare_store::StoreError) -> LookupError {
    LookupError(Box::new(e))
}

impl Lookup for Durable<'_> {
    fn event_by_id(
        &self,
        agency: &str,
        event_id: &str,
    ) -> Result<Option<StoredEvent>, LookupError> {
        if let Some(e) = self.in_commit.and_then(|c| c.event(agency, event_id)) {
            return Ok(Some(e.clone()));
        }
        self.store
            .event_by_id(agency, event_id)
            .map_err(lookup_error)
    }

    fn deliveries_of(
        &self,
        subscription_ids: &[u64],
        sequence: u64,
    ) -> Result<Vec<DeliveryRecord>, LookupError> {
        let mut out = self
            .store
            .deliveries_of(subscription_ids, sequence)
            .map_err(lookup_error)?;
        if let Some(c) = self.in_commit {
            // A seek in the batch in commit deletes the records from its
            // target: the store's copies are no longer there.
            out.retain(|r| !c.batch.seek_deletes(r.subscription_id, r.sequence));
            out.extend(
                c.batch
                    .deliveries
                    .iter()
                    .filter(|r| {
                        r.sequence == sequence && subscription_ids.contains(&r.subscription_id)
                    })
                    .cloned(),
            );
        }
        Ok(out)
    }

    fn newest_deliveries(
        &self,
        subscription_id: u64,
        sequences: &[u64],
    ) -> Result<Vec<Option<DeliveryRecord>>, LookupError> {
        // As `newest_delivery` for each, with the ones the batch in commit
        // does not answer read from the store in one call.
        newest_over(
            sequences,
            |sequence| {
                let c = self.in_commit?;
                match c.newest_delivery(subscription_id, sequence) {
                    Some(r) => Some(Some(r.clone())),
                    None => c
                        .batch
                        .seek_deletes(subscription_id, sequence)
                        .then_some(None),
                }
            },
            |asked| {
                self.store
                    .newest_deliveries(subscription_id, asked)
                    .map_err(lookup_error)
            },
        )
    }
}

/// How many batches have been committed (by the commit thread, or by the
/// writer itself), and a wake-up for a writer waiting for the commit
/// thread to be free: while it is busy the writer keeps applying ops into
/// the next batch instead of sealing it early.
#[derive(Default)]
pub(super) struct Finished {
    count: AtomicU64,
    notify: tokio::sync::Notify,
    /// The last batch's list of answers, emptied, for the writer's next
    /// batch (it grows to the batch's size: reused, it is not regrown).
    spare: std::sync::Mutex<Option<Answers>>,
}

/// A batch's ops with their answers, in order.
pub(super) type Answers = Vec<(Finisher, Result<Reply, BrokerError>)>;

impl Finished {
    /// Batches finished so far.
    pub(super) fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// Resolves after the next [`Finished::done`] (or at once if one
    /// happened since the last wait: the caller re-checks [`Finished::count`]).
    pub(super) async fn wait(&self) {
        self.notify.notified().await;
    }

    /// An empty list for the next batch's answers.
    pub(super) fn answers(&self) -> Answers {
        self.spare
            .lock()
            .ok()
            .and_then(|mut spare| spare.take())
            .unwrap_or_default()
    }

    fn keep(&self, answers: Answers) {
        if let Ok(mut spare) = self.spare.lock() {
            *spare = Some(answers);
        }
    }

    fn done(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_one();
    }
}

/// What the commit thread works with.
pub(super) struct Committer<'a> {
    pub(super) store: &'a dyn Storage,
    pub(super) log: &'a crate::auditlog::AuditLog,
    pub(super) head: &'a watch::Sender<u64>,
    pub(super) finished: &'a Finished,
    /// Closed while a batch's answers are out before its commit returns.
    pub(super) gate: &'a crate::settle::SettleGate,
}

/// The commit thread's loop. A batch's callers are answered as soon as it
/// is durable, before the store applies it to what reads see
/// ([`Storage::commit_then`]); the gate holds readers back meanwhile
/// ([`crate::settle`]).
pub(super) fn commit_loop(c: &Committer<'_>, commits: &std::sync::mpsc::Receiver<ToCommit>) {
    // After work, the first idle second hands what the commits freed back
    // to the system (as the writer does: `super::IDLE_RELEASE`).
    use std::sync::mpsc::RecvTimeoutError;
    let mut worked = false;
    loop {
        let next = if worked {
            commits.recv_timeout(super::IDLE_RELEASE)
        } else {
            commits.recv().map_err(|_| RecvTimeoutError::Disconnected)
        };
        match next {
            Ok(job) => {
                commit_one(c, job);
                worked = true;
            }
            Err(RecvTimeoutError::Timeout) => {
                c.store.release_idle_memory();
                caseshare_alloc::release_free_memory();
                worked = false;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Commits one batch and answers its callers (on the commit thread, or on
/// the writer's for a small batch while the commit thread is free); exits
/// the process with status 75 if the commit fails.
pub(super) fn commit_one(c: &Committer<'_>, job: ToCommit) {
    let ToCommit {
        batch: in_commit,
        mut finishers,
        new_head,
        audit_size,
        last_sequence,
    } = job;
    let batch = &in_commit.batch;
    let started = Instant::now();
    let ops = finishers.len();
    let mut answered = false;
    let mut answer = || {
        c.gate.close();
        if let Some((size, root)) = new_head {
            c.log.committed(size, root);
        }
        if let Some(last) = last_sequence {
            let _ = c.head.send(last);
        }
        // Traced publishes record their commit span as they are
        // answered.
        let _scope = crate::telemetry::CommitScope::enter(started, ops, batch.events.len());
        for (finish, result) in finishers.drain(..) {
            finish(true, result);
        }
        answered = true;
    };
    let committed = if batch.is_empty() {
        answer();
        Ok(None)
    } else {
        c.store.commit_then(batch, &mut answer).map(Some)
    };
    c.gate.open();
    match committed {
        Ok(stats) => {
            if let Some(stats) = stats {
                metrics::counter!("caseshare_store_commits_total").increment(1);
                metrics::counter!("caseshare_store_records_total").increment(stats.records as u64);
                metrics::histogram!("caseshare_store_ops_per_commit").record(ops as f64);
                metrics::histogram!("caseshare_store_commit_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::gauge!("caseshare_store_wal_unstable_frames")
                    .set(stats.wal_unstable_frames as f64);
            }
            metrics::counter!("caseshare_audit_entries_total").increment(batch.audit.len() as u64);
            metrics::gauge!("caseshare_audit_size").set(audit_size as f64);
            if last_sequence.is_some() {
                metrics::histogram!("caseshare_store_events_per_commit")
                    .record(batch.events.len() as f64);
            }
        }
        Err(e) => {
            if answered {
                tracing::error!(error = %e, "applying a durable commit failed; the broker stops and its restart replays it");
            } else {
                tracing::error!(error = %e, "commit failed; the broker stops rather than acknowledge what is not durable");
                for (finish, result) in finishers.drain(..) {
                    finish(false, result);
                }
            }
            std::process::exit(75);
        }
    }
    c.finished.keep(finishers);
    c.finished.done();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use caseshare_state::{Batch, DeliveryState};
    use caseshare_store::sled_backend::SledStore;

    use super::*;

    fn record(sequence: u64, state: DeliveryState, attempts: u32) -> DeliveryRecord {
        DeliveryRecord {
            subscription_id: 1,
            sequence,
            state: state as i32,
            attempts,
            ..Default::default()
        }
    }

    /// Many sequences in one lookup find what one lookup each finds (the
    /// last of `deliveries_of`, another path): the batch in commit's
    /// records first, its seek hiding the store's, then the store's, in
    /// the order asked.
    #[test]
    fn newest_deliveries_is_newest_delivery_of_each_by_table() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 8 << 20).unwrap();
        store
            .commit(&Batch {
                deliveries: (1..=100)
                    .map(|s| record(s, DeliveryState::Delivered, 1))
                    .collect(),
                ..Batch::default()
            })
            .unwrap();
        let mut in_commit = Sealed::default();
        in_commit.batch.deliveries = vec![
            record(5, DeliveryState::Acked, 1),
            record(95, DeliveryState::Delivered, 2),
            record(5, DeliveryState::DeadLettered, 1),
        ];
        in_commit.batch.deleted_deliveries_from = vec![(1, 90)];
        let cases: [&[u64]; 5] = [
            &[],
            &[1, 5, 6],
            &[89, 90, 91, 95, 100, 101],
            &[100, 5, 1, 5, 200],
            &[64, 63, 65, 128],
        ];
        for in_commit in [None, Some(&in_commit)] {
            let lookup = Durable {
                store: &store,
                in_commit,
            };
            for seqs in cases {
                let each: Vec<_> = seqs
                    .iter()
                    .map(|s| lookup.newest_delivery(1, *s).unwrap())
                    .collect();
                assert_eq!(
                    lookup.newest_deliveries(1, seqs).unwrap(),
                    each,
                    "{seqs:?}, in commit: {}",
                    in_commit.is_some()
                );
            }
        }
        let lookup = Durable {
            store: &store,
            in_commit: Some(&in_commit),
        };
        let states: Vec<_> = lookup
            .newest_deliveries(1, &[5, 6, 91, 95])
            .unwrap()
            .into_iter()
            .map(|r| r.map(|r| r.state()))
            .collect();
        assert_eq!(
            states,
            [
                Some(DeliveryState::DeadLettered),
                Some(DeliveryState::Delivered),
                None,
                Some(DeliveryState::Delivered)
            ]
        );
    }
}
