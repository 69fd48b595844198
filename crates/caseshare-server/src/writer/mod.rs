//! The single writer and its group commit.
//!
//! Every change to durable state goes through one thread: requests send an
//! [`Op`] and wait for its reply. The thread takes the first waiting op,
//! every op already queued and, while the commit thread is still busy with
//! the previous batch, every op that arrives meanwhile (up to `max_batch`),
//! and for each calls the state machine
//! ([`caseshare_state::Machine::apply`]), which changes the in-memory state
//! and adds the op's writes to one draft batch. The batch is sealed once the
//! commit thread is free, so it closes when the disk is, not when the queue
//! first runs dry: a lone op is committed at once, and ops that arrive
//! during a commit share the next one (with the commit delay, a batch
//! smaller than the last waits a little for more: [`trigger`]). The sealed
//! batch goes to the commit thread ([`commit`]), which commits it once —
//! one event-log append and `fdatasync`, one sled `apply_batch`, flush and
//! `fdatasync` — and only then replies to all of them. Concurrent
//! publishers therefore share a flush instead of paying one each, and the
//! next batch is applied while the previous one is being committed (at most
//! one batch is in commit; lookups during apply see it).
//!
//! The writer itself decides nothing: it batches, reads the clock, draws
//! salts and ids ([`ops`]), calls the machine, extends the Merkle tree,
//! hands the batch over, and counts metrics from the replies.
//!
//! Architecture Invariant: no reply that reports success is sent before the
//! batch holding its writes is durable. If a commit fails the broker cannot
//! keep that promise, so it answers every op in the batch with an error and
//! exits (crash-only: a restart reloads the last durable state).
//!
//! Architecture Invariant: audit indexes are assigned by the machine, in
//! commit order, from the store's size at start, so the log has no gaps.

mod commit;
mod counts;
mod ops;
mod propose;
mod replica;
#[cfg(test)]
mod tests;
mod times;
mod trigger;

use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use caseshare_core::time::Micros;
use caseshare_state::{BrokerState, Machine, Sealed};
use caseshare_store::Storage;
use tokio::sync::{mpsc, oneshot, watch};

pub use ops::{AckIntent, DeliveryIntent, Op, ReplyTx, Verdict};
pub use replica::Notice;

use crate::errors::BrokerError;
use commit::{Answers, Committer, Durable, Finished, ToCommit, commit_loop, commit_one};
use counts::{Counts, Settled, settled_count};
use ops::intake;
pub use trigger::MAX_COMMIT_DELAY_US;
use trigger::Trigger;

/// The current time.
pub fn now() -> Micros {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Micros(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// How long a batch holding only ops nobody waits for (inline acks) may
/// wait for other ops to share its commit. At a few thousand events per
/// second this halves the commits (acks ride with the next publish or
/// delivery); an unacknowledged ack lost in a crash only means a redelivery.
pub const LAZY_COMMIT_DELAY: std::time::Duration = std::time::Duration::from_millis(5);

/// After work, how long the writer or the commit thread waits without
/// any before it hands the memory it freed back to the system.
const IDLE_RELEASE: std::time::Duration = std::time::Duration::from_secs(1);

/// While the commit thread is busy, how often the writer takes the ops
/// that arrived into the open batch.
const BUSY_POLL: std::time::Duration = std::time::Duration::from_millis(1);

/// A batch of at most this many ops, after one as small, sealed while the
/// commit thread is free, is committed on the writer's thread: at low
/// load, handing it over would wake the commit thread for nothing to
/// overlap it with (one at a time: +13 % rate, −15 % CPU per event). A small
/// batch between large ones (a few acks or deliveries while publishes
/// stream in) still goes to the commit thread, so that the writer goes on
/// applying the next large batch meanwhile.
const INLINE_OPS: usize = 8;

/// What the writer offers the events of each batch to before sealing it:
/// the delivery engine's streams waiting at the head
/// (`delivery::Tailing`), which may answer with ops to apply in the same
/// batch. Called on the writer's thread: must not wait or read the disk.
pub trait Tail: Send + Sync {
    /// The ops to add to the batch that stores `events` (in sequence
    /// order, not yet durable).
    fn offer(&self, events: &[caseshare_state::StoredEvent]) -> Vec<Op>;
}

/// A handle for sending ops to the writer.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Queued>,
    /// Cluster mode: how far this replica has applied, read when an op is
    /// queued (the view the op arrived on).
    view: Option<Arc<propose::Pending>>,
}

/// An op in the writer's queue, with the journal sequence this replica had
/// applied when it was queued (0 in embedded mode).
pub(crate) struct Queued {
    op: Op,
    seen: u64,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

impl Writer {
    /// Sends an op and waits for its durable reply.
    pub async fn call<T>(&self, make: impl FnOnce(ReplyTx<T>) -> Op) -> Result<T, BrokerError> {
        self.submit(make)
            .await?
            .await
            .map_err(|_| BrokerError::Unavailable("the broker's writer stopped".into()))?
    }

    /// Sends an op without waiting for its reply (for pipelining); the
    /// returned receiver yields the durable reply.
    pub async fn submit<T>(
        &self,
        make: impl FnOnce(ReplyTx<T>) -> Op,
    ) -> Result<oneshot::Receiver<Result<T, BrokerError>>, BrokerError> {
        let (tx, rx) = oneshot::channel();
        let seen = self
            .view
            .as_ref()
            .map_or(0, |v| v.applied.load(std::sync::atomic::Ordering::SeqCst));
        self.tx
            .send(Queued { op: make(tx), seen })
            .await
            .map_err(|_| BrokerError::Unavailable("the broker is shutting down".into()))?;
        Ok(rx)
    }
}

/// What cluster mode's writer is started with.
pub struct ClusterLink {
    /// The journal.
    pub journal: Arc<caseshare_cluster::Journal>,
    /// This replica's instance id (new at every start).
    pub replica: String,
    /// The first journal sequence to apply (the store's position + 1).
    pub from: u64,
    /// The stale-proposal bound (`store.nats.lease_ttl_ms`).
    pub stale_after: std::time::Duration,
    /// The byte budget of one journal message.
    pub max_bytes: usize,
    /// The journal times the store kept (the stale-proposal rule).
    pub times: Vec<(u64, i64)>,
    /// Through which journal sequence the store dropped kept times.
    pub times_dropped_through: u64,
}

/// Cluster mode's writer, started.
pub struct ClusterWriter {
    /// The handle requests send ops to.
    pub writer: Writer,
    /// Finishes once the applier has stopped.
    pub join: std::thread::JoinHandle<()>,
    /// Subscription changes made through other replicas.
    pub notices: mpsc::Receiver<Notice>,
    /// How far this replica has applied.
    pub progress: Progress,
    /// The journal reader (aborted at shutdown).
    pub reader: tokio::task::JoinHandle<()>,
}

/// How far this replica has applied the journal, and its write switch.
#[derive(Clone)]
pub struct Progress(Arc<propose::Pending>);

impl Progress {
    /// The last journal sequence applied.
    pub fn applied(&self) -> u64 {
        self.0.applied.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Refuses every write from now on (the regression guard), until
    /// [`Progress::allow_writes`].
    pub fn refuse_writes(&self) {
        self.0
            .fenced
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Takes writes again: the journal's end the guard suspected was a
    /// stale answer.
    pub fn allow_writes(&self) {
        self.0
            .fenced
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The writer's state.
pub struct WriterTask {
    store: Arc<dyn Storage>,
    machine: Machine,
    max_batch: usize,
    head: watch::Sender<u64>,
    log: Arc<crate::auditlog::AuditLog>,
    /// The batch the commit thread is committing, if any.
    in_commit: Option<Arc<Sealed>>,
    /// The runtime, for waiting on the queue with a timeout.
    runtime: Option<tokio::runtime::Handle>,
    /// When a batch waits for more ops (`store.commit_delay_us`).
    trigger: Trigger,
    /// The per-op counters.
    counts: Counts,
    /// Closed by the commit thread while answers are out before a commit
    /// returns ([`crate::settle`]).
    gate: Arc<crate::settle::SettleGate>,
    /// Offered each batch's new events before it is sealed (embedded mode).
    tail: Option<Arc<dyn Tail>>,
}

impl WriterTask {
    /// Prepares the writer around the state machine loaded from the store.
    /// Returns the task and a receiver of the last committed event sequence.
    pub fn new(
        store: Arc<dyn Storage>,
        machine: Machine,
        max_batch: usize,
        log: Arc<crate::auditlog::AuditLog>,
    ) -> (Self, watch::Receiver<u64>) {
        let counters = machine.counters();
        let (head, head_rx) = watch::channel(counters.next_sequence.saturating_sub(1));
        metrics::gauge!("caseshare_audit_size").set(counters.audit_size as f64);
        (
            WriterTask {
                store,
                machine,
                max_batch,
                head,
                log,
                in_commit: None,
                runtime: tokio::runtime::Handle::try_current().ok(),
                trigger: Trigger::new(std::time::Duration::ZERO),
                counts: Counts::new(),
                gate: Arc::default(),
                tail: None,
            },
            head_rx,
        )
    }

    /// Lets a batch whose commit thread is free, smaller than the last
    /// batch, wait up to `delay` for more ops while they arrive faster than
    /// that (`store.commit_delay_us`; the rules are in `writer::trigger`).
    /// Zero, the default of `new`, never waits.
    pub fn with_commit_delay(mut self, delay: std::time::Duration) -> Self {
        self.trigger = Trigger::new(delay);
        self
    }

    /// Has the commit thread close `gate` while a batch's answers are out
    /// before its commit returns: the gate of the store readers hold
    /// ([`crate::settle::Settled`]). The default gate holds no reader back.
    pub fn with_settle_gate(mut self, gate: Arc<crate::settle::SettleGate>) -> Self {
        self.gate = gate;
        self
    }

    /// Offers each batch's new events to `tail` before sealing it, and
    /// applies the ops it answers with in the same batch (embedded mode:
    /// [`WriterTask::spawn`]; the cluster applier does not offer).
    pub fn with_tail(mut self, tail: Arc<dyn Tail>) -> Self {
        self.tail = Some(tail);
        self
    }

    /// The configuration state, for readers.
    pub fn shared_state(&self) -> Arc<RwLock<BrokerState>> {
        self.machine.shared()
    }

    /// Starts the writer thread; returns the handle and a join handle that
    /// finishes once every handle is dropped and the queue is drained.
    pub fn spawn(self) -> std::io::Result<(Writer, std::thread::JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel(16_384);
        let join = std::thread::Builder::new()
            .name("caseshare-writer".into())
            .spawn(move || self.run(rx))?;
        Ok((Writer { tx, view: None }, join))
    }

    /// Cluster mode: starts the proposer (this replica's requests become
    /// journal messages), the journal reader and the applier thread (every
    /// journal message from `link.from` is applied and committed here).
    /// Must be called inside the runtime. The join handle finishes once
    /// every writer handle is dropped and this replica's last proposals are
    /// applied; a message that cannot be applied exits the process.
    pub fn spawn_cluster(self, link: ClusterLink) -> std::io::Result<ClusterWriter> {
        let pending = Arc::new(propose::Pending::default());
        pending.applied.store(
            link.from.saturating_sub(1),
            std::sync::atomic::Ordering::SeqCst,
        );
        let (tx, rx) = mpsc::channel(16_384);
        let proposer = propose::Proposer {
            journal: Arc::clone(&link.journal),
            pending: Arc::clone(&pending),
            replica: link.replica.clone(),
            max_batch: self.max_batch,
            max_bytes: link.max_bytes,
        };
        tokio::spawn(proposer.run(rx));
        let (entries_tx, entries_rx) = mpsc::channel(1_024);
        let reader = {
            use futures::StreamExt;
            let mut entries = link.journal.entries_from(link.from);
            tokio::spawn(async move {
                while let Some(item) = entries.next().await {
                    match item {
                        Ok(entry) => {
                            if entries_tx.send(entry).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "the journal cannot be followed; the replica stops rather than skip a message (if store.nats.journal_max_age_s dropped them, seed this replica's data directory from a newer copy of a live replica: docs/CLUSTER.md)");
                            std::process::exit(70);
                        }
                    }
                }
            })
        };
        let (notices_tx, notices) = mpsc::channel(4_096);
        let applier = replica::Applier::new(
            self,
            replica::Parts {
                journal: link.journal,
                pending: Arc::clone(&pending),
                replica: link.replica,
                stale_after: link.stale_after,
                notices: notices_tx,
                times: link.times,
                times_dropped_through: link.times_dropped_through,
            },
        );
        let join = std::thread::Builder::new()
            .name("caseshare-applier".into())
            .spawn(move || {
                if let Err(e) = applier.run(entries_rx) {
                    tracing::error!(error = %e, "the replica cannot apply the journal and stops; it never skips a message");
                    std::process::exit(70);
                }
            })?;
        Ok(ClusterWriter {
            writer: Writer {
                tx,
                view: Some(Arc::clone(&pending)),
            },
            join,
            notices,
            progress: Progress(pending),
            reader,
        })
    }

    fn run(mut self, mut rx: mpsc::Receiver<Queued>) {
        let (to_commit, committer, finished) = self.start_committer();
        // Batches handed to the commit thread; it is free once it has
        // finished as many.
        let mut sent: u64 = 0;
        // The next draft, opened in the memory of the batch last committed:
        // the large vectors are allocated once, not freed and grown again
        // at every commit. (Nothing is applied between a seal and the next
        // draft, so opening it early opens the same draft.)
        let mut next = None;
        // Whether the batch before was small too (see `INLINE_OPS`).
        let mut small_before = false;
        // Whether batches were made since the writer last handed freed
        // memory back.
        let mut worked = false;
        while let Some(Queued { op: first, .. }) = self.next_op(&mut rx, &mut worked) {
            worked = true;
            let first_op = Instant::now();
            let mut draft = next.take().unwrap_or_else(|| self.machine.begin());
            let mut answers = finished.answers();
            let seq_before = self.machine.counters().next_sequence;
            let open = self.gather(&mut rx, first, &mut draft, &mut answers, &finished, sent);
            if let Some(tail) = self.tail.clone()
                && !draft.batch.events.is_empty()
            {
                for op in tail.offer(&draft.batch.events) {
                    self.apply_unqueued(op, &mut draft, &mut answers);
                }
            }
            let mut sealed = self.machine.seal(draft);
            // The batch's leaves join the Merkle tree; the changed tiles are
            // written in the same atomic batch.
            let mut new_head = None;
            if !sealed.batch.audit.is_empty() {
                let (tiles, size, root) = self.log.append(&sealed.batch.audit);
                sealed.batch.tiles = tiles
                    .into_iter()
                    .map(|t| (t.level, t.index, t.data))
                    .collect();
                new_head = Some((size, root));
            }
            let counters = self.machine.counters();
            let small = answers.len() <= INLINE_OPS;
            let in_commit = Arc::new(sealed);
            let job = ToCommit {
                batch: Arc::clone(&in_commit),
                finishers: answers,
                new_head,
                audit_size: counters.audit_size,
                last_sequence: (counters.next_sequence != seq_before)
                    .then(|| counters.next_sequence - 1),
            };
            let inline = small && small_before && finished.count() == sent;
            small_before = small;
            // Between batches the writer has no op (or commits a small
            // batch itself): how much of the time that is says whether the
            // clients or the broker set the pace.
            metrics::histogram!("caseshare_writer_batch_seconds")
                .record(first_op.elapsed().as_secs_f64());
            if inline {
                // The commit thread is free and the batch small: waking it
                // would cost more than the apply it lets overlap.
                let c = Committer {
                    store: &*self.store,
                    log: &self.log,
                    head: &self.head,
                    finished: &finished,
                    gate: &self.gate,
                };
                commit_one(&c, job);
                metrics::counter!("caseshare_writer_inline_commits_total").increment(1);
            } else if to_commit.send(job).is_err() {
                // The commit thread stopped: it has already exited the
                // process after a failed commit.
                break;
            }
            sent += 1;
            // The previous batch is committed (the commit thread took this
            // one only after finishing it, and dropped its handle before
            // taking it); lookups now see this one.
            next = self
                .in_commit
                .replace(in_commit)
                .and_then(|done| Arc::try_unwrap(done).ok())
                .map(|done| self.machine.begin_reusing(done));
            if !open {
                break;
            }
        }
        drop(to_commit);
        let _ = committer.join();
    }

    /// The next op, waiting as long as it takes. After work, the first
    /// [`IDLE_RELEASE`] without an op hands the memory the writer's
    /// batches freed back to the system (`caseshare_alloc`: an idle
    /// thread's freed pages are otherwise kept for as long as it stays
    /// idle); `worked` is cleared then.
    fn next_op(&self, rx: &mut mpsc::Receiver<Queued>, worked: &mut bool) -> Option<Queued> {
        if let (true, Some(handle)) = (*worked, &self.runtime) {
            match handle.block_on(async { tokio::time::timeout(IDLE_RELEASE, rx.recv()).await }) {
                Ok(next) => return next,
                Err(_) => {
                    self.store.release_idle_memory();
                    caseshare_alloc::release_free_memory();
                    *worked = false;
                }
            }
        }
        rx.blocking_recv()
    }

    /// Fills the open batch: its first op, then every op already queued (up
    /// to `max_batch`). While the commit thread is still busy with the
    /// previous batch (`finished` below `sent`), ops that arrive join this
    /// batch instead of the next, so the batch closes when the disk is free
    /// rather than when the queue first ran dry; a batch of inline acks
    /// only waits up to [`LAZY_COMMIT_DELAY`] for an op someone waits for;
    /// and a batch whose commit thread is free, smaller than the last batch,
    /// waits up to the commit delay for more while ops arrive faster than
    /// that ([`Trigger`]).
    /// Returns false once the queue is closed.
    fn gather(
        &mut self,
        rx: &mut mpsc::Receiver<Queued>,
        first: Op,
        draft: &mut caseshare_state::Draft,
        answers: &mut Answers,
        finished: &Finished,
        sent: u64,
    ) -> bool {
        let opened = Instant::now();
        let mut all_lazy = first.is_lazy();
        self.apply(first, draft, answers);
        let open = loop {
            if answers.len() >= self.max_batch {
                break true;
            }
            match rx.try_recv() {
                Ok(Queued { op, .. }) => {
                    all_lazy &= op.is_lazy();
                    self.apply(op, draft, answers);
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break false,
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            let Some(handle) = self.runtime.clone() else {
                break true;
            };
            let busy = finished.count() < sent;
            let now = Instant::now();
            let wait_left = if all_lazy {
                LAZY_COMMIT_DELAY.saturating_sub(now.saturating_duration_since(opened))
            } else {
                self.trigger.wait_left(opened, now, answers.len())
            };
            if !busy && wait_left.is_zero() {
                break true;
            }
            // Timers are made inside `block_on`, in the runtime's context.
            if busy {
                // Ops that arrive meanwhile are taken from the queue in
                // bulk at most every `BUSY_POLL` (a wake-up per op cost a
                // quarter more CPU per event when pipelined).
                handle.block_on(async {
                    tokio::select! {
                        () = finished.wait() => {}
                        () = tokio::time::sleep(BUSY_POLL) => {}
                    }
                });
                continue;
            }
            // Only inline acks so far, or ops arriving faster than the
            // commit delay: wait a little for another op to share the
            // commit.
            let next = handle.block_on(async { tokio::time::timeout(wait_left, rx.recv()).await });
            match next {
                Ok(Some(Queued { op, .. })) => {
                    all_lazy &= op.is_lazy();
                    self.apply(op, draft, answers);
                }
                Ok(None) => break false,
                Err(_) => break true,
            }
        };
        self.trigger.sealed(answers.len());
        open
    }

    /// Starts the commit thread. Rendezvous: a batch is handed over only
    /// once the commit thread has finished the previous one, so at most one
    /// batch is in commit.
    fn start_committer(
        &self,
    ) -> (
        std::sync::mpsc::SyncSender<ToCommit>,
        std::thread::JoinHandle<()>,
        Arc<Finished>,
    ) {
        let (to_commit, commits) = std::sync::mpsc::sync_channel::<ToCommit>(0);
        let finished = Arc::new(Finished::default());
        let done = Arc::clone(&finished);
        let store = Arc::clone(&self.store);
        let log = Arc::clone(&self.log);
        let head = self.head.clone();
        let gate = Arc::clone(&self.gate);
        let committer = std::thread::Builder::new()
            .name("caseshare-commit".into())
            .spawn(move || {
                let c = Committer {
                    store: &*store,
                    log: &log,
                    head: &head,
                    finished: &done,
                    gate: &gate,
                };
                commit_loop(&c, &commits);
            });
        match committer {
            Ok(c) => (to_commit, c, finished),
            Err(e) => {
                tracing::error!(error = %e, "could not start the commit thread");
                std::process::exit(75);
            }
        }
    }

    /// Applies one op to the machine (counting its arrival for the commit
    /// delay); its answer waits for the commit.
    fn apply(&mut self, op: Op, draft: &mut caseshare_state::Draft, answers: &mut Answers) {
        self.trigger.arrived(Instant::now());
        self.apply_unqueued(op, draft, answers);
    }

    /// Applies an op that did not come through the queue (the tail's):
    /// it does not count as an arrival for the commit delay.
    fn apply_unqueued(
        &mut self,
        mut op: Op,
        draft: &mut caseshare_state::Draft,
        answers: &mut Answers,
    ) {
        // A traced publish: its decision span starts here (telemetry::spans).
        let trace = op.take_trace().map(|t| (t, SystemTime::now()));
        let (command, finish) = intake(op);
        let settled = settled_count(&command);
        let lookup = Durable {
            store: &*self.store,
            in_commit: self.in_commit.as_deref(),
        };
        let result = self
            .machine
            .apply(draft, now(), command, &lookup)
            .map_err(BrokerError::from);
        self.counts.count(settled, &result);
        let finish = match trace {
            Some((trace, started)) => trace.decided(started, &result, finish),
            None => finish,
        };
        answers.push((finish, result));
    }
}
