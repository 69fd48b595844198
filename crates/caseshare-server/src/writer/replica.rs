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
//! so every replica decides the same. Each replica keeps the times of the
//! messages it applied in its store, with the batches (dropping those too
//! old to matter, which decide "stale" by themselves), so a restarted or
//! copied replica decides without the stream — which may have compacted
//! them away; only a store written before times were kept reads them from
//! the stream.
//!
//! Architecture Invariant: a message that cannot be decoded or applied
//! here (a damaged message, a failed local read, a replica that ends a
//! batch elsewhere than the batch says) stops the applier: the replica
//! goes not-ready and exits; it never skips a message.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use caseshare_cluster::{Entry, Journal};
use caseshare_state::journal::{JournalError, JournalHeader, decode_batch, replay};
use caseshare_state::{Command, Draft, Refusal, Reply, Sealed, SubscriptionRecord};
use tokio::sync::mpsc;

use super::commit::{Durable, ToCommit};
use super::ops::Finisher;
use super::propose::{Pending, Waiting};
use super::times::{KeptTimes, Verdict};
use super::{Settled, WriterTask, settled_count};
use crate::errors::BrokerError;

/// Most journal messages applied together and committed once.
const GROUP: usize = 64;

/// Messages being applied into one draft.
struct Group {
    draft: Draft,
    jobs: Vec<(Finisher, Result<Reply, BrokerError>)>,
    seq_before: u64,
    last: u64,
    /// Journal messages applied into it.
    messages: usize,
}

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

/// What an op was, for the notice its reply may give: a creation or a
/// deletion names its subscription in the reply; a seek or a replay is
/// the notice itself, given if the op was applied.
enum Kind {
    Created,
    Deleted,
    Applied(Notice),
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
        } => Kind::Applied(Notice::Seek {
            id: subscription.id,
            target: *target,
        }),
        Command::Replay {
            subscription,
            sequences,
            floor,
            ..
        } => Kind::Applied(Notice::Replayed {
            id: subscription.id,
            sequences: sequences.clone(),
            floor: *floor,
        }),
        _ => Kind::Other,
    }
}

/// What the applier needs beyond the writer's task.
pub(super) struct Parts {
    pub(super) journal: Arc<Journal>,
    pub(super) pending: Arc<Pending>,
    pub(super) replica: String,
    pub(super) stale_after: Duration,
    pub(super) notices: mpsc::Sender<Notice>,
    /// The journal times the store kept, and through which sequence it
    /// dropped them.
    pub(super) times: Vec<(u64, i64)>,
    pub(super) times_dropped_through: u64,
}

/// The applier's parts beyond the writer's.
pub(super) struct Applier {
    task: WriterTask,
    journal: Arc<Journal>,
    pending: Arc<Pending>,
    replica: String,
    notices: mpsc::Sender<Notice>,
    /// The journal times kept for the stale-proposal rule.
    times: KeptTimes,
    /// The batch last committed, if the commit thread let go of it: the
    /// next group's draft reuses its allocations.
    spare: Option<Sealed>,
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
    pub(super) fn new(task: WriterTask, parts: Parts) -> Self {
        Applier {
            task,
            journal: parts.journal,
            pending: parts.pending,
            replica: parts.replica,
            notices: parts.notices,
            times: KeptTimes::new(parts.stale_after, parts.times, parts.times_dropped_through),
            spare: None,
        }
    }

    /// Applies entries until the channel closes or the proposer has
    /// stopped with nothing of its own left to apply. Entries are applied
    /// into one open group, which is sealed and committed once the commit
    /// thread is free (or the group holds [`GROUP`] messages): while the
    /// previous group is being committed, the messages that arrive join
    /// this one, so groups grow with the commit's time, as the embedded
    /// writer's batches do — one local commit (and fsync) for many journal
    /// messages.
    pub(super) fn run(mut self, mut entries: mpsc::Receiver<Entry>) -> Result<(), ApplyError> {
        let Some(runtime) = self.task.runtime.clone() else {
            return Err(ApplyError::Message {
                sequence: 0,
                reason: "the applier needs a runtime to read the journal".into(),
            });
        };
        let (to_commit, committer, finished) = self.task.start_committer();
        // Groups handed to the commit thread; it is free once it has
        // finished as many.
        let mut sent: u64 = 0;
        let mut open: Option<Group> = None;
        let mut queue: VecDeque<Entry> = VecDeque::new();
        let result = 'run: loop {
            if open.is_none() && queue.is_empty() {
                let next = runtime.block_on(async {
                    tokio::time::timeout(Duration::from_millis(100), entries.recv()).await
                });
                match next {
                    Ok(Some(e)) => queue.push_back(e),
                    Err(_) => {
                        if self.pending.closed.load(Ordering::SeqCst) && self.pending.is_empty() {
                            break Ok(());
                        }
                        continue;
                    }
                    Ok(None) => break Ok(()),
                }
            }
            let mut closed = false;
            let held = open.as_ref().map_or(0, |g| g.messages);
            while held + queue.len() < GROUP {
                match entries.try_recv() {
                    Ok(e) => queue.push_back(e),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            // One commit job at a time: lookups while applying see the
            // group in commit and the store, so a group is handed over only
            // once the one before it is committed (the rendezvous below).
            let job = match self.apply_some(&mut queue, &mut open) {
                Ok(job) => job,
                Err((sequence, reason)) => {
                    break 'run Err(ApplyError::Message { sequence, reason });
                }
            };
            let job = match job {
                Some(job) => Some(job),
                None => {
                    let full = open.as_ref().is_some_and(|g| g.messages >= GROUP);
                    if !full && !closed && finished.count() < sent {
                        // The commit thread is busy: take what arrives
                        // meanwhile into this group, in bulk at most every
                        // `BUSY_POLL`.
                        runtime.block_on(async {
                            tokio::select! {
                                () = finished.wait() => {}
                                () = tokio::time::sleep(super::BUSY_POLL) => {}
                            }
                        });
                        continue;
                    }
                    open.take().map(|g| self.seal_group(g))
                }
            };
            if let Some(job) = job {
                if to_commit.send(job).is_err() {
                    break 'run Ok(());
                }
                sent += 1;
            }
            if closed && open.is_none() && queue.is_empty() {
                break Ok(());
            }
        };
        drop(to_commit);
        let _ = committer.join();
        result
    }

    /// Applies the messages of `queue` into the open group (opening one),
    /// leaving it open: `None` once the queue is empty. A message that
    /// names where it applies (a migration's base message) is applied on
    /// its own: it seals the open group, whose job is given (the message
    /// left in the queue), or, with no group open, is a job by itself.
    fn apply_some(
        &mut self,
        queue: &mut VecDeque<Entry>,
        group: &mut Option<Group>,
    ) -> Result<Option<ToCommit>, (u64, String)> {
        while let Some(entry) = queue.pop_front() {
            let sequence = entry.sequence;
            let err = |e: String| (sequence, e);
            let (header, ops) = decode_batch(&entry.payload).map_err(|e| err(e.to_string()))?;
            let placed = header.before.is_some() || header.after.is_some();
            if placed && let Some(g) = group.take() {
                queue.push_front(entry);
                return Ok(Some(self.seal_group(g)));
            }
            self.remember(sequence, entry.time_micros);
            let (finishers, waited_for) = self.waiting(&header);
            let stale = self.stale(&header, &entry).map_err(err)?;
            let seq_before = self.task.machine.counters().next_sequence;
            let mut g = match group.take() {
                Some(g) => g,
                None => Group {
                    draft: match self.spare.take() {
                        Some(spare) => self.task.machine.begin_reusing(spare),
                        None => self.task.machine.begin(),
                    },
                    jobs: Vec::new(),
                    seq_before,
                    last: sequence,
                    messages: 0,
                },
            };
            g.last = sequence;
            g.messages += 1;
            let n = ops.len();
            if stale {
                metrics::counter!("caseshare_journal_stale_refused_total").increment(1);
                tracing::warn!(
                    sequence,
                    origin = ?header.origin,
                    "refused a stale proposal: its replica had not seen writes stored more \
                     than stale_after before it"
                );
                let replies = (0..n)
                    .map(|_| {
                        Err(BrokerError::Unavailable(
                            "the broker that took this write was paused while others wrote; \
                             nothing was applied; retry"
                                .into(),
                        ))
                    })
                    .collect();
                self.answer(
                    &mut g,
                    replies,
                    finishers,
                    Vec::new(),
                    Vec::new(),
                    waited_for,
                );
                *group = Some(g);
            } else {
                let kinds: Vec<Kind> = ops.iter().map(|(_, c)| kind(c)).collect();
                let settled: Vec<Settled> = ops.iter().map(|(_, c)| settled_count(c)).collect();
                let lookup = Durable {
                    store: &*self.task.store,
                    in_commit: self.task.in_commit.as_deref(),
                };
                if placed {
                    // Applied alone (the group was sealed above): `replay`
                    // checks where it applies and seals its own draft.
                    let (sealed, replies) = replay(&mut self.task.machine, &header, ops, &lookup)
                        .map_err(|e| {
                        err(match e {
                            JournalError::WrongPosition { .. } => format!(
                                "{e}: this journal continues a store this replica does \
                                     not hold (a store migrated from an embedded broker, or a \
                                     copied replica's): start this replica from a copy of a \
                                     stopped replica's data directory (docs/CLUSTER.md, runbook)"
                            ),
                            e => e.to_string(),
                        })
                    })?;
                    let replies = replies
                        .into_iter()
                        .map(|r: Result<Reply, Refusal>| r.map_err(BrokerError::from))
                        .collect();
                    self.answer(&mut g, replies, finishers, kinds, settled, waited_for);
                    self.pending.applied.store(sequence, Ordering::SeqCst);
                    metrics::gauge!("caseshare_journal_applied_sequence").set(sequence as f64);
                    return Ok(Some(
                        self.finish_sealed(sealed, g.jobs, sequence, seq_before),
                    ));
                } else {
                    let mut replies = Vec::with_capacity(n);
                    for (i, (now, command)) in ops.into_iter().enumerate() {
                        match self.task.machine.apply(&mut g.draft, now, command, &lookup) {
                            Err(refusal @ (Refusal::Lookup(_) | Refusal::Corrupt { .. })) => {
                                return Err(
                                    err(JournalError::Local { op: i, refusal }.to_string()),
                                );
                            }
                            reply => replies.push(reply.map_err(BrokerError::from)),
                        }
                    }
                    self.answer(&mut g, replies, finishers, kinds, settled, waited_for);
                    *group = Some(g);
                }
            }
            self.pending.applied.store(sequence, Ordering::SeqCst);
            metrics::gauge!("caseshare_journal_applied_sequence").set(sequence as f64);
        }
        Ok(None)
    }

    /// The finishers this replica's callers wait on for this message, and
    /// whether any do. A batch nobody waits for here (another replica's,
    /// an earlier start's, or one whose append was reported failed) tells
    /// the delivery engine instead.
    fn waiting(&self, header: &JournalHeader) -> (Vec<Option<Waiting>>, bool) {
        let mine = header
            .origin
            .as_ref()
            .filter(|o| o.replica == self.replica)
            .map(|o| o.batch);
        let finishers: Vec<Option<Waiting>> = match mine.and_then(|b| self.pending.take(b)) {
            Some(f) => f.into_iter().map(Some).collect(),
            None => Vec::new(),
        };
        let waited_for = !finishers.is_empty();
        (finishers, waited_for)
    }

    /// Pairs each reply with its caller's finisher, or with a notice.
    fn answer(
        &self,
        g: &mut Group,
        replies: Vec<Result<Reply, BrokerError>>,
        finishers: Vec<Option<Waiting>>,
        kinds: Vec<Kind>,
        settled: Vec<Settled>,
        waited_for: bool,
    ) {
        let mut finishers = finishers.into_iter();
        let mut kinds = kinds.into_iter();
        let mut settled = settled.into_iter();
        for result in replies {
            if let Some(s) = settled.next() {
                self.task.counts.count(s, &result);
            }
            let kind = kinds.next().unwrap_or(Kind::Other);
            match finishers.next().flatten() {
                Some(Waiting {
                    finish,
                    trace: Some((trace, started)),
                }) => g
                    .jobs
                    .push((trace.decided(started, &result, finish), result)),
                Some(Waiting { finish, .. }) => g.jobs.push((finish, result)),
                None if !waited_for => {
                    if let Some(notice) = self.notice(kind, &result) {
                        g.jobs.push((notice, result));
                    }
                }
                None => {}
            }
        }
    }

    /// Seals a group: its writes, the journal position of its last
    /// message, the Merkle tree extended; the commit job.
    fn seal_group(&mut self, g: Group) -> ToCommit {
        let sealed = self.task.machine.seal(g.draft);
        self.finish_sealed(sealed, g.jobs, g.last, g.seq_before)
    }

    /// The commit job of a sealed batch applied through journal message
    /// `last`.
    fn finish_sealed(
        &mut self,
        mut sealed: Sealed,
        jobs: Vec<(Finisher, Result<Reply, BrokerError>)>,
        last: u64,
        seq_before: u64,
    ) -> ToCommit {
        sealed.batch.journal_position = Some(last);
        let (times, dropped) = self.times.take_changes();
        sealed.batch.journal_times = times;
        sealed.batch.journal_times_dropped_through = dropped;
        let mut new_head = None;
        if !sealed.batch.audit.is_empty() {
            let (tiles, size, root) = self.task.log.append(&sealed.batch.audit);
            sealed.batch.tiles = tiles
                .into_iter()
                .map(|t| (t.level, t.index, t.data))
                .collect();
            new_head = Some((size, root));
        }
        let counters = self.task.machine.counters();
        let in_commit = Arc::new(sealed);
        self.spare = self
            .task
            .in_commit
            .replace(Arc::clone(&in_commit))
            .and_then(|done| Arc::try_unwrap(done).ok());
        ToCommit {
            batch: in_commit,
            finishers: jobs,
            new_head,
            audit_size: counters.audit_size,
            last_sequence: (counters.next_sequence != seq_before)
                .then(|| counters.next_sequence - 1),
        }
    }

    /// A finisher that tells the delivery engine, after the commit, of a
    /// subscription change proposed by another replica.
    fn notice(&self, kind: Kind, result: &Result<Reply, BrokerError>) -> Option<Finisher> {
        let notice = match (kind, result) {
            (Kind::Created, Ok(Reply::Subscription(rec))) => Notice::Created(rec.clone()),
            (Kind::Deleted, Ok(Reply::Subscription(rec))) => Notice::Deleted(rec.id),
            (Kind::Applied(notice), Ok(_)) => notice,
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
        self.times.remember(sequence, time);
    }

    /// The stale-proposal rule (module documentation).
    fn stale(&mut self, header: &JournalHeader, entry: &Entry) -> Result<bool, String> {
        let Some(origin) = &header.origin else {
            return Ok(false);
        };
        let verdict = match self
            .times
            .verdict(origin.seen, entry.sequence, entry.time_micros)
        {
            // Not kept: a store written before journal times were kept.
            Verdict::Unknown => match self.read_time(origin.seen.saturating_add(1))? {
                Some(t) => self.times.decide(t, entry.time_micros),
                // Not in the stream either: nothing to compare with.
                None => Verdict::Fresh,
            },
            v => v,
        };
        Ok(verdict == Verdict::Stale)
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
