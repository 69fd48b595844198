//! Cluster mode's applier: every journal message, in journal order, is
//! applied by this replica's state machine and committed to its own store
//! with the journal sequence in the same atomic batch — on every replica,
//! the one that proposed the message included. This is the only place a
//! replica's state changes in cluster mode, so all replicas reach the same
//! state and the same audit log (`docs/CLUSTER.md`).
//!
//! Per message: decode (bounded, checksummed); the **stale-proposal
//! rule**; [`caseshare_state::journal::replay`]; seal; extend the Merkle
//! tree; hand over to the commit thread ([`super::commit`], as the
//! embedded writer does), which answers this replica's callers and tells
//! the delivery engine about subscription changes proposed elsewhere
//! ([`Notice`]).
//!
//! The stale-proposal rule: a message whose proposer had applied only up
//! to `seen` is refused as a whole (every op answered `UNAVAILABLE`,
//! nothing changed) when message `seen + 1` had been stored more than
//! `stale_after` before it — its proposer was paused or cut off while
//! others wrote, and its writes were decided on a view the cluster had
//! long left. Both times are the stream's own, stored with the messages,
//! so every replica decides the same; a replica that does not remember
//! the time of `seen + 1` reads it from the stream.
//!
//! Architecture Invariant: a message that cannot be decoded or applied
//! here (a damaged message, a failed local read, a replica that ends a
//! batch elsewhere than the batch says) stops the applier: the replica
//! goes not-ready and exits; it never skips a message.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use caseshare_cluster::{Entry, Journal};
use caseshare_state::journal::{JournalHeader, decode_batch, replay};
use caseshare_state::{Command, Refusal, Reply, SubscriptionRecord};
use tokio::sync::mpsc;

use super::commit::{Durable, ToCommit, commit_loop};
use super::ops::Finisher;
use super::propose::Pending;
use super::{Settled, WriterTask, count, settled_count};
use crate::errors::BrokerError;

/// Journal times remembered for the stale-proposal rule.
const TIMES_KEPT: usize = 65_536;

/// A change made through another replica that this replica's delivery
/// engine must follow (its own requests update it themselves).
#[derive(Debug)]
pub enum Notice {
    /// A subscription was created.
    Created(SubscriptionRecord),
    /// A subscription was deleted.
    Deleted(u64),
    /// A subscription's cursor was moved.
    Seek {
        /// The subscription.
        id: u64,
        /// Where it resumes.
        target: u64,
    },
    /// Dead letters were put back.
    Replayed {
        /// The subscription.
        id: u64,
        /// The sequences.
        sequences: Vec<u64>,
        /// The new floor.
        floor: Option<u64>,
    },
}

/// What an op was, for the notice its reply may give.
enum Kind {
    Created,
    Deleted,
    Seek {
        id: u64,
        target: u64,
    },
    Replayed {
        id: u64,
        sequences: Vec<u64>,
        floor: Option<u64>,
    },
    Other,
}

fn kind(command: &Command) -> Kind {
    match command {
        Command::CreateSubscription { .. } => Kind::Created,
        Command::DeleteSubscription { .. } => Kind::Deleted,
        Command::Seek {
            subscription,
            target,
            ..
        } => Kind::Seek {
            id: subscription.id,
            target: *target,
        },
        Command::Replay {
            subscription,
            sequences,
            floor,
            ..
        } => Kind::Replayed {
            id: subscription.id,
            sequences: sequences.clone(),
            floor: *floor,
        },
        _ => Kind::Other,
    }
}

/// The applier's parts beyond the writer's.
pub(super) struct Applier {
    pub(super) task: WriterTask,
    pub(super) journal: Arc<Journal>,
    pub(super) pending: Arc<Pending>,
    pub(super) replica: String,
    pub(super) stale_after: Duration,
    pub(super) notices: mpsc::Sender<Notice>,
    /// Journal sequence → stored time (µs), for the stale-proposal rule.
    times: BTreeMap<u64, i64>,
}

/// Why the applier stopped.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A message could not be decoded or applied here.
    #[error("journal message {sequence}: {reason}")]
    Message {
        /// Its sequence.
        sequence: u64,
        /// What went wrong.
        reason: String,
    },
}

impl Applier {
    pub(super) fn new(
        task: WriterTask,
        journal: Arc<Journal>,
        pending: Arc<Pending>,
        replica: String,
        stale_after: Duration,
        notices: mpsc::Sender<Notice>,
    ) -> Self {
        Applier {
            task,
            journal,
            pending,
            replica,
            stale_after,
            notices,
            times: BTreeMap::new(),
        }
    }

    /// Applies entries until the channel closes or the proposer has
    /// stopped with nothing of its own left to apply.
    pub(super) fn run(mut self, mut entries: mpsc::Receiver<Entry>) -> Result<(), ApplyError> {
        let Some(runtime) = self.task.runtime.clone() else {
            return Err(ApplyError::Message {
                sequence: 0,
                reason: "the applier needs a runtime to read the journal".into(),
            });
        };
        let (to_commit, commits) = std::sync::mpsc::sync_channel::<ToCommit>(0);
        let committer = {
            let store = Arc::clone(&self.task.store);
            let log = Arc::clone(&self.task.log);
            let head = self.task.head.clone();
            std::thread::Builder::new()
                .name("caseshare-commit".into())
                .spawn(move || commit_loop(&*store, &log, &head, &commits))
        };
        let committer = match committer {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "could not start the commit thread");
                std::process::exit(75);
            }
        };
        let result = loop {
            let next = runtime.block_on(async {
                tokio::time::timeout(Duration::from_millis(100), entries.recv()).await
            });
            let entry = match next {
                Ok(Some(e)) => e,
                Err(_) => {
                    if self.pending.closed.load(Ordering::SeqCst) && self.pending.is_empty() {
                        break Ok(());
                    }
                    continue;
                }
                Ok(None) => break Ok(()),
            };
            let sequence = entry.sequence;
            let job = match self.apply(entry) {
                Ok(job) => job,
                Err(reason) => break Err(ApplyError::Message { sequence, reason }),
            };
            if to_commit.send(job).is_err() {
                break Ok(());
            }
        };
        drop(to_commit);
        let _ = committer.join();
        result
    }

    /// Applies one message; gives the commit job.
    fn apply(&mut self, entry: Entry) -> Result<ToCommit, String> {
        let (header, ops) = decode_batch(&entry.payload).map_err(|e| e.to_string())?;
        self.remember(entry.sequence, entry.time_micros);
        let mine = header
            .origin
            .as_ref()
            .filter(|o| o.replica == self.replica)
            .map(|o| o.batch);
        // This replica's callers wait for their answers; a batch nobody
        // waits for here (another replica's, an earlier start's, or one
        // whose append was reported failed) tells the delivery engine.
        let finishers: Vec<Option<Finisher>> = match mine.and_then(|b| self.pending.take(b)) {
            Some(f) => f.into_iter().map(Some).collect(),
            None => Vec::new(),
        };
        let waited_for = !finishers.is_empty();
        let n = ops.len();
        let seq_before = self.task.machine.counters().next_sequence;
        let stale = self.stale(&header, &entry)?;
        let (mut sealed, replies, kinds, settled) = if stale {
            metrics::counter!("caseshare_journal_stale_refused_total").increment(1);
            tracing::warn!(
                sequence = entry.sequence,
                origin = ?header.origin,
                "refused a stale proposal: its replica had not seen writes stored more than \
                 stale_after before it"
            );
            let draft = self.task.machine.begin();
            let replies: Vec<Result<Reply, BrokerError>> = (0..n)
                .map(|_| {
                    Err(BrokerError::Unavailable(
                        "the broker that took this write was paused while others wrote; \
                         nothing was applied; retry"
                            .into(),
                    ))
                })
                .collect();
            (
                self.task.machine.seal(draft),
                replies,
                Vec::new(),
                Vec::new(),
            )
        } else {
            let kinds: Vec<Kind> = ops.iter().map(|(_, c)| kind(c)).collect();
            let settled: Vec<Settled> = ops.iter().map(|(_, c)| settled_count(c)).collect();
            let lookup = Durable {
                store: &*self.task.store,
                in_commit: self.task.in_commit.as_deref(),
            };
            let (sealed, replies) =
                replay(&mut self.task.machine, &header, ops, &lookup).map_err(|e| e.to_string())?;
            let replies = replies
                .into_iter()
                .map(|r: Result<Reply, Refusal>| r.map_err(BrokerError::from))
                .collect();
            (sealed, replies, kinds, settled)
        };
        sealed.batch.journal_position = Some(entry.sequence);
        self.pending.applied.store(entry.sequence, Ordering::SeqCst);
        metrics::gauge!("caseshare_journal_applied_sequence").set(entry.sequence as f64);
        let mut new_head = None;
        if !sealed.batch.audit.is_empty() {
            let (tiles, size, root) = self.task.log.append(&sealed.batch.audit);
            sealed.batch.tiles = tiles
                .into_iter()
                .map(|t| (t.level, t.index, t.data))
                .collect();
            new_head = Some((size, root));
        }
        let mut jobs: Vec<(Finisher, Result<Reply, BrokerError>)> = Vec::with_capacity(n);
        let mut finishers = finishers.into_iter();
        let mut kinds = kinds.into_iter();
        let mut settled = settled.into_iter();
        for result in replies {
            if let Some(s) = settled.next() {
                count(s, &result);
            }
            let kind = kinds.next().unwrap_or(Kind::Other);
            match finishers.next().flatten() {
                Some(finish) => jobs.push((finish, result)),
                None if !waited_for => {
                    if let Some(notice) = self.notice(kind, &result) {
                        jobs.push((notice, result));
                    }
                }
                None => {}
            }
        }
        let counters = self.task.machine.counters();
        let in_commit = Arc::new(sealed);
        self.task.in_commit = Some(Arc::clone(&in_commit));
        Ok(ToCommit {
            batch: in_commit,
            finishers: jobs,
            new_head,
            audit_size: counters.audit_size,
            last_sequence: (counters.next_sequence != seq_before)
                .then(|| counters.next_sequence - 1),
        })
    }

    /// A finisher that tells the delivery engine, after the commit, of a
    /// subscription change proposed by another replica.
    fn notice(&self, kind: Kind, result: &Result<Reply, BrokerError>) -> Option<Finisher> {
        let notice = match (kind, result) {
            (Kind::Created, Ok(Reply::Subscription(rec))) => Notice::Created(rec.clone()),
            (Kind::Deleted, Ok(Reply::Subscription(rec))) => Notice::Deleted(rec.id),
            (Kind::Seek { id, target }, Ok(_)) => Notice::Seek { id, target },
            (
                Kind::Replayed {
                    id,
                    sequences,
                    floor,
                },
                Ok(_),
            ) => Notice::Replayed {
                id,
                sequences,
                floor,
            },
            _ => return None,
        };
        let tx = self.notices.clone();
        Some(Box::new(move |committed, _| {
            if committed {
                // The commit thread is not a runtime worker: blocking here
                // holds back the next commit until the engine catches up.
                let _ = tx.blocking_send(notice);
            }
        }))
    }

    fn remember(&mut self, sequence: u64, time: i64) {
        self.times.insert(sequence, time);
        while self.times.len() > TIMES_KEPT {
            self.times.pop_first();
        }
    }

    /// The stale-proposal rule (module documentation).
    fn stale(&mut self, header: &JournalHeader, entry: &Entry) -> Result<bool, String> {
        let Some(origin) = &header.origin else {
            return Ok(false);
        };
        let first_unseen = origin.seen.saturating_add(1);
        if first_unseen >= entry.sequence {
            return Ok(false);
        }
        let time = match self.times.get(&first_unseen) {
            Some(t) => *t,
            None => match self.read_time(first_unseen)? {
                Some(t) => t,
                // Not in the stream (cannot happen while the journal keeps
                // every message): nothing to compare with.
                None => return Ok(false),
            },
        };
        let waited = entry.time_micros.saturating_sub(time);
        Ok(waited > i64::try_from(self.stale_after.as_micros()).unwrap_or(i64::MAX))
    }

    /// Reads a message's stored time from the stream, retrying while the
    /// stream has no leader.
    fn read_time(&self, sequence: u64) -> Result<Option<i64>, String> {
        let Some(handle) = &self.task.runtime else {
            return Err("no runtime to read the journal with".into());
        };
        let journal = Arc::clone(&self.journal);
        handle.block_on(async move {
            let mut tries = 0;
            loop {
                match journal.time_of(sequence).await {
                    Ok(t) => return Ok(t),
                    Err(e) if tries < 60 => {
                        tries += 1;
                        tracing::debug!(error = %e, sequence, "reading a journal time; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => return Err(format!("reading the time of message {sequence}: {e}")),
                }
            }
        })
    }
}
