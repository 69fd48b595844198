//! Cluster mode's proposer: the requests of this replica become journal
//! messages. Ops are taken as the embedded writer takes them (the first
//! waiting, then every op already queued, up to `store.max_batch` and a
//! byte budget below NATS's `max_payload`), drawn for ([`super::ops`]'s
//! intake: salts, consent ids), stamped with this replica's clock and
//! encoded as one unplaced batch ([`caseshare_state::journal`]) naming this
//! replica, its batch number and `seen`: the journal sequence this replica
//! had applied when the oldest of its ops was queued (the view the request
//! arrived on; see the stale-proposal rule in [`super::replica`]). The batch's finishers wait in [`Pending`] until the replica's
//! applier ([`super::replica`]) applies the message and commits it
//! locally; the answer is the applier's, so it is the same on every
//! replica.
//!
//! One append is in flight at a time (a replica's writes stay in the order
//! it took them), retried while JetStream has no answer (an election),
//! always under the same `Nats-Msg-Id`, so a retried append is stored once. An append that still fails answers its
//! callers `UNAVAILABLE`; if it had in fact been stored, it is applied
//! like any other message and its callers, who already have their answer,
//! retry idempotently.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use caseshare_cluster::{AppendError, Journal};
use caseshare_state::journal::{JournalEncoder, Origin};
use tokio::sync::{Semaphore, mpsc};

use super::ops::{Finisher, intake};
use super::{LAZY_COMMIT_DELAY, Queued, now};
use crate::errors::BrokerError;

/// Appends in flight at once from one replica: one, so that a replica's
/// writes reach the journal in the order it took them (an inline ack, then
/// a seek: reordered, the seek's redeliveries would find the deliveries
/// settled). Concurrent appends from one connection are ordered only until
/// one of them is retried. Throughput comes from the batch: the ops that
/// arrive during one append's round trip form the next batch.
const IN_FLIGHT: usize = 1;
/// How long an append is retried while JetStream gives no answer.
const APPEND_PATIENCE: Duration = Duration::from_secs(30);

/// One op of this replica waiting for its journal message to be applied.
pub(super) struct Waiting {
    /// Answers its caller.
    pub(super) finish: Finisher,
    /// A traced publish: its trace and when it was taken (its decision
    /// span ends when the applier decides it).
    pub(super) trace: Option<(crate::telemetry::OpTrace, std::time::SystemTime)>,
}

/// What the proposer and the applier share.
#[derive(Default)]
pub(super) struct Pending {
    /// Batch number → the finishers of its ops, in order.
    waiting: Mutex<HashMap<u64, Vec<Waiting>>>,
    /// The last journal sequence this replica applied.
    pub(super) applied: AtomicU64,
    /// The proposer has stopped (every handle dropped, appends finished).
    pub(super) closed: AtomicBool,
    /// Writes are refused: the journal went back (the regression guard).
    pub(super) fenced: AtomicBool,
}

impl Pending {
    /// Takes the finishers of this replica's batch `batch`, if still
    /// waiting.
    pub(super) fn take(&self, batch: u64) -> Option<Vec<Waiting>> {
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&batch)
    }

    fn put(&self, batch: u64, finishers: Vec<Waiting>) {
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(batch, finishers);
    }

    /// Whether no batch of this replica waits.
    pub(super) fn is_empty(&self) -> bool {
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }
}

/// An op taken from the queue and drawn for, not yet in a batch.
struct Taken {
    time: caseshare_core::time::Micros,
    command: caseshare_state::Command,
    finish: Finisher,
    trace: Option<(crate::telemetry::OpTrace, std::time::SystemTime)>,
    seen: u64,
    lazy: bool,
}

/// Room kept below the journal's largest message for the batch's header
/// and trailer beyond `JournalEncoder::approximate_len`.
const HEADER_ROOM: usize = 8 * 1024;

/// What the proposer needs.
pub(super) struct Proposer {
    pub(super) journal: Arc<Journal>,
    pub(super) pending: Arc<Pending>,
    /// This replica's instance id.
    pub(super) replica: String,
    pub(super) max_batch: usize,
    pub(super) max_bytes: usize,
}

fn answer_all(finishers: Vec<Waiting>, error: impl Fn() -> BrokerError) {
    for w in finishers {
        (w.finish)(true, Err(error()));
    }
}

impl Proposer {
    /// Runs until every writer handle is dropped and every append it
    /// started has finished.
    pub(super) async fn run(self, mut rx: mpsc::Receiver<Queued>) {
        let inflight = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut batch_no = 0u64;
        // An op that would have made the last batch too large: it starts
        // the next one.
        let mut carry: Option<Taken> = None;
        loop {
            let first = match carry.take() {
                Some(t) => t,
                None => match rx.recv().await {
                    Some(q) => self.take(q),
                    None => break,
                },
            };
            let Ok(permit) = inflight.clone().acquire_owned().await else {
                break;
            };
            let mut encoder = JournalEncoder::new(0, None);
            let mut finishers = Vec::new();
            let mut all_lazy = first.lazy;
            // The batch was decided on the oldest view among its ops.
            let mut seen = first.seen;
            let opened = Instant::now();
            self.add(first, &mut encoder, &mut finishers, &mut seen);
            while finishers.len() < self.max_batch && encoder.approximate_len() < self.max_bytes {
                let next = match rx.try_recv() {
                    Ok(op) => op,
                    Err(mpsc::error::TryRecvError::Empty) if all_lazy => {
                        // Only inline acks: wait a little for an op whose
                        // caller waits, as the embedded writer does.
                        let left = LAZY_COMMIT_DELAY.saturating_sub(opened.elapsed());
                        match tokio::time::timeout(left, rx.recv()).await {
                            Ok(Some(op)) => op,
                            _ => break,
                        }
                    }
                    Err(_) => break,
                };
                let t = self.take(next);
                all_lazy &= t.lazy;
                if let Some(back) = self.add(t, &mut encoder, &mut finishers, &mut seen) {
                    carry = Some(back);
                    break;
                }
            }
            if finishers.is_empty() {
                continue;
            }
            if self.pending.fenced.load(Ordering::SeqCst) {
                answer_all(finishers, || {
                    BrokerError::Unavailable(
                        "this replica refuses writes: the journal is behind what it has applied \
                         (see its log)"
                            .into(),
                    )
                });
                continue;
            }
            batch_no += 1;
            encoder.set_origin(Origin {
                replica: self.replica.clone(),
                batch: batch_no,
                seen,
            });
            let bytes = match encoder.finish(None) {
                Ok(b) => b,
                Err(e) => {
                    answer_all(finishers, || {
                        BrokerError::Internal(format!("the journal batch cannot be encoded: {e}"))
                    });
                    continue;
                }
            };
            let n = finishers.len();
            self.pending.put(batch_no, finishers);
            let journal = Arc::clone(&self.journal);
            let pending = Arc::clone(&self.pending);
            let msg_id = format!("{}-{batch_no}", self.replica);
            tokio::spawn(async move {
                let result = append(&journal, &msg_id, bytes.into()).await;
                drop(permit);
                match &result {
                    Ok(_) => metrics::counter!("caseshare_journal_proposals_total").increment(1),
                    Err(_) => {
                        metrics::counter!("caseshare_journal_append_failures_total").increment(1)
                    }
                }
                if let Err(e) = result {
                    tracing::warn!(error = %e, ops = n, "a journal append failed; its callers are told to retry");
                    if let Some(finishers) = pending.take(batch_no) {
                        answer_all(finishers, || {
                            BrokerError::Unavailable(format!(
                                "the cluster's journal did not take the write: {e}; retry"
                            ))
                        });
                    }
                }
            });
        }
        // Every append started has finished once every permit is back.
        let _ = inflight.acquire_many(IN_FLIGHT as u32).await;
        self.pending.closed.store(true, Ordering::SeqCst);
    }

    /// Takes an op from the queue: drawn for (salts, consent ids) and
    /// stamped with this replica's clock.
    fn take(&self, queued: Queued) -> Taken {
        let lazy = queued.op.is_lazy();
        let mut op = queued.op;
        // A traced publish: in cluster mode its decision is made when the
        // journal message is applied, so its span runs from here to then.
        let trace = op.take_trace().map(|t| (t, std::time::SystemTime::now()));
        let (command, finish) = intake(op);
        Taken {
            time: now(),
            command,
            finish,
            trace,
            seen: queued.seen,
            lazy,
        }
    }

    /// Adds an op to the batch, or gives it back when it would make the
    /// batch larger than the journal takes (it starts the next batch). An
    /// op too large for a message of its own is answered
    /// `RESOURCE_EXHAUSTED`, never appended (the append would be refused
    /// on every try).
    fn add(
        &self,
        t: Taken,
        encoder: &mut JournalEncoder,
        finishers: &mut Vec<Waiting>,
        seen: &mut u64,
    ) -> Option<Taken> {
        if let Err(e) = encoder.push(t.time, &t.command) {
            (t.finish)(
                true,
                Err(BrokerError::Internal(format!(
                    "the op cannot join a journal batch: {e}"
                ))),
            );
            return None;
        }
        let limit = self
            .journal
            .config()
            .max_message_bytes
            .saturating_sub(HEADER_ROOM);
        if encoder.approximate_len() > limit {
            encoder.pop();
            if !encoder.is_empty() {
                return Some(t);
            }
            (t.finish)(
                true,
                Err(BrokerError::ResourceExhausted(format!(
                    "this operation is larger than one journal message holds ({limit} bytes)"
                ))),
            );
            return None;
        }
        *seen = (*seen).min(t.seen);
        finishers.push(Waiting {
            finish: t.finish,
            trace: t.trace,
        });
        None
    }
}

/// Appends, retrying while the outcome is unknown, under one message id.
async fn append(journal: &Journal, msg_id: &str, bytes: bytes::Bytes) -> Result<u64, AppendError> {
    match caseshare_cluster::retry_unavailable(APPEND_PATIENCE, || {
        journal.propose(msg_id, bytes.clone())
    })
    .await
    {
        Ok(seq) | Err(AppendError::Duplicate { sequence: seq }) => Ok(seq),
        Err(e) => Err(e),
    }
}
