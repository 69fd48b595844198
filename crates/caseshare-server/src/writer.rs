//! The single writer and its group commit.
//!
//! Every change to durable state goes through one thread: requests send an
//! [`Op`] and wait for its reply. The thread takes the first waiting op and
//! then every op already queued (up to `max_batch`), applies them in order to
//! the in-memory state and to one [`Batch`] (events, audit entries, delivery
//! records), and hands the batch to the commit thread, which commits it once
//! — one event-log append and `fdatasync`, one sled `apply_batch`, flush and
//! `fdatasync` — and only then replies to all of them. Concurrent publishers
//! therefore share a flush instead of paying one each, and the next batch is
//! applied while the previous one is being committed (at most one batch is
//! in commit; lookups during apply see it, see [`InCommit`]).
//!
//! Architecture Invariant: no reply that reports success is sent before the
//! batch holding its writes is durable. If a commit fails the broker cannot
//! keep that promise, so it answers every op in the batch with an error and
//! exits (crash-only: a restart reloads the last durable state).
//!
//! Architecture Invariant: audit indexes are assigned here, in commit order,
//! from the store's size at start, so the log has no gaps.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use caseshare_audit::entry;
use caseshare_core::decision::Outcome;
use caseshare_core::pb;
use caseshare_core::principal::Principal;
use caseshare_core::pseudonym::{child_pseudonym, payload_commitment};
use caseshare_core::time::Micros;
use caseshare_store::{
    Batch, DeliveryRecord, DeliveryState, Storage, StoredEvent, SubscriptionRecord,
};
use prost::Message;
use tokio::sync::{mpsc, oneshot, watch};

use crate::errors::BrokerError;
use caseshare_state::{BrokerState, EventContext};

/// The current time.
pub fn now() -> Micros {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Micros(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

type Reply<T> = oneshot::Sender<Result<T, BrokerError>>;

/// How long a batch holding only ops nobody waits for (inline acks) may
/// wait for other ops to share its commit. At a few thousand events per
/// second this halves the commits (acks ride with the next publish or
/// delivery); an unacknowledged ack lost in a crash only means a redelivery.
pub const LAZY_COMMIT_DELAY: std::time::Duration = std::time::Duration::from_millis(5);

/// One delivery about to be sent, for the writer to re-decide and record.
#[derive(Debug, Clone)]
pub struct DeliveryIntent {
    /// The subscription's internal id.
    pub subscription_id: u64,
    /// The subscription's name.
    pub subscription: String,
    /// The recipient agency.
    pub recipient: String,
    /// The event's sequence.
    pub sequence: u64,
    /// The event id.
    pub event_id: String,
    /// This attempt's number (1 = first send).
    pub attempt: u32,
    /// The delivery id sent to the subscriber.
    pub delivery_id: String,
    /// What the decision needs.
    pub context: EventContext,
    /// A notice (retraction or correction): sent without a new decision.
    pub notice: bool,
    /// The event's expiry, if any.
    pub expires_at: Option<Micros>,
}

/// The writer's verdict on one delivery about to be sent.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Send it, minimised to the outcome's fields.
    Shared(Outcome),
    /// Send the notice.
    Notice,
    /// Do not send it: withheld now (reason), or the event was retracted.
    Stopped(String),
    /// Do not send it: the event expired first.
    Expired,
}

/// One acknowledged delivery.
#[derive(Debug, Clone)]
pub struct AckIntent {
    /// The event's sequence.
    pub sequence: u64,
    /// The event id.
    pub event_id: String,
    /// The delivery id acknowledged.
    pub delivery_id: String,
    /// Attempts made.
    pub attempts: u32,
    /// When it was last sent.
    pub delivered_at: Micros,
    /// The child's NHS number (pseudonymised in the log).
    pub nhs_number: String,
}

/// A request to the writer.
pub enum Op {
    /// Publish an event (already validated).
    Publish {
        /// The caller.
        actor: Arc<Principal>,
        /// The request.
        request: pb::PublishRequest,
        /// The computed event type.
        event_type: &'static str,
        /// Reply.
        reply: Reply<pb::PublishResponse>,
    },
    /// Register an agency.
    RegisterAgency {
        /// The caller.
        actor: Arc<Principal>,
        /// The request.
        request: pb::RegisterAgencyRequest,
        /// Reply.
        reply: Reply<pb::Agency>,
    },
    /// Create or replace an agreement.
    PutAgreement {
        /// The caller.
        actor: Arc<Principal>,
        /// The agreement.
        agreement: pb::Agreement,
        /// Reply.
        reply: Reply<pb::Agreement>,
    },
    /// End an agreement.
    EndAgreement {
        /// The caller.
        actor: Arc<Principal>,
        /// The request.
        request: pb::EndAgreementRequest,
        /// Reply.
        reply: Reply<pb::Agreement>,
    },
    /// Record a consent.
    RecordConsent {
        /// The caller.
        actor: Arc<Principal>,
        /// The consent.
        consent: pb::ConsentRecord,
        /// Reply.
        reply: Reply<pb::ConsentRecord>,
    },
    /// Withdraw a consent.
    WithdrawConsent {
        /// The caller.
        actor: Arc<Principal>,
        /// The request.
        request: pb::WithdrawConsentRequest,
        /// Reply.
        reply: Reply<pb::ConsentRecord>,
    },
    /// Create a subscription.
    CreateSubscription {
        /// The caller.
        actor: Arc<Principal>,
        /// The validated subscription.
        subscription: pb::Subscription,
        /// Most subscriptions the agency may hold (`limits.max_subscriptions_per_agency`).
        quota: usize,
        /// Reply.
        reply: Reply<SubscriptionRecord>,
    },
    /// Delete a subscription.
    DeleteSubscription {
        /// The caller.
        actor: Arc<Principal>,
        /// Its name.
        name: String,
        /// Reply: the deleted record.
        reply: Reply<SubscriptionRecord>,
    },
    /// Re-decide and record deliveries about to be sent.
    Deliver {
        /// The deliveries.
        intents: Vec<DeliveryIntent>,
        /// Reply: per intent, the verdict.
        reply: Reply<Vec<Verdict>>,
    },
    /// Record deliveries that used up their attempts.
    DeadLetter {
        /// The subscription's internal id.
        subscription_id: u64,
        /// Its name.
        subscription: String,
        /// Its agency.
        recipient: String,
        /// What was dead-lettered.
        items: Vec<AckIntent>,
        /// The new floor, if it moved.
        floor: Option<u64>,
        /// Reply.
        reply: Reply<()>,
    },
    /// Put dead letters back for delivery.
    Replay {
        /// The caller.
        actor: Arc<Principal>,
        /// The subscription's internal id.
        subscription_id: u64,
        /// Its name.
        subscription: String,
        /// The sequences.
        sequences: Vec<u64>,
        /// The new floor.
        floor: Option<u64>,
        /// Reply.
        reply: Reply<()>,
    },
    /// Move a subscription's cursor.
    Seek {
        /// The caller.
        actor: Arc<Principal>,
        /// The subscription's internal id.
        subscription_id: u64,
        /// Its name.
        subscription: String,
        /// The sequence to resume from.
        target: u64,
        /// Reply.
        reply: Reply<()>,
    },
    /// Retract one of the caller's events.
    Retract {
        /// The caller.
        actor: Arc<Principal>,
        /// The request.
        request: pb::RetractEventRequest,
        /// Reply.
        reply: Reply<pb::RetractEventResponse>,
    },
    /// Delete events at the end of their retention.
    Expunge {
        /// (sequence, agency, event id).
        events: Vec<(u64, String, String)>,
        /// Reply.
        reply: Reply<()>,
    },
    /// Record acknowledgements.
    Ack {
        /// The caller.
        actor: Arc<Principal>,
        /// The subscription's internal id.
        subscription_id: u64,
        /// Its name.
        subscription: String,
        /// What was acknowledged.
        acks: Vec<AckIntent>,
        /// The subscription's new floor, if it moved.
        floor: Option<u64>,
        /// Nobody waits for this commit (acks inline on a stream): a batch
        /// of only such ops may wait up to [`LAZY_COMMIT_DELAY`] for other
        /// ops to share its commit.
        lazy: bool,
        /// Reply.
        reply: Reply<()>,
    },
    /// Append one entry (e.g. AUDIT_ACCESSED); index and time are assigned.
    Record {
        /// The entry.
        entry: pb::AuditEntry,
        /// Reply: the index assigned.
        reply: Reply<u64>,
    },
    /// Remove the next delivery records of deleted subscriptions.
    PurgeDeliveries {
        /// The deleted subscriptions' ids.
        subscription_ids: Vec<u64>,
        /// Reply.
        reply: Reply<()>,
    },
    /// Record aggregated refusals (see `refusals`): `AUTH_DENIED` entries.
    AuthDenied {
        /// The entries, each with its count.
        entries: Vec<pb::AuditEntry>,
        /// Reply.
        reply: Reply<()>,
    },
}

impl Op {
    /// Whether nobody waits for this op's commit.
    fn is_lazy(&self) -> bool {
        matches!(self, Op::Ack { lazy: true, .. })
    }
}

/// A handle for sending ops to the writer.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Op>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

impl Writer {
    /// Sends an op and waits for its durable reply.
    pub async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Op) -> Result<T, BrokerError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| BrokerError::Unavailable("the broker is shutting down".into()))?;
        rx.await
            .map_err(|_| BrokerError::Unavailable("the broker's writer stopped".into()))?
    }
}

impl Writer {
    /// Sends an op without waiting for its reply (for pipelining); the
    /// returned receiver yields the durable reply.
    pub async fn submit<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Op,
    ) -> Result<oneshot::Receiver<Result<T, BrokerError>>, BrokerError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| BrokerError::Unavailable("the broker is shutting down".into()))?;
        Ok(rx)
    }
}

/// Figures the writer publishes for metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct CommitFigures {
    /// Commits so far.
    pub commits: u64,
    /// Ops committed so far.
    pub ops: u64,
}

/// The writer's state.
pub struct WriterTask {
    store: Arc<dyn Storage>,
    state: Arc<RwLock<BrokerState>>,
    pseudonym_key: Vec<u8>,
    next_sequence: u64,
    next_subscription_id: u64,
    audit_size: u64,
    max_batch: usize,
    head: watch::Sender<u64>,
    log: Arc<crate::auditlog::AuditLog>,
    /// (agency, event id) → position in the batch being built, so that an
    /// idempotency check against the batch is one lookup.
    batch_event_ids: HashMap<(String, String), usize>,
    /// The batch the commit thread is committing, if any.
    in_commit: Option<Arc<InCommit>>,
    /// The runtime, for waiting on the queue with a timeout.
    runtime: Option<tokio::runtime::Handle>,
}

/// A batch handed to the commit thread: what lookups made while the next
/// batch is applied must see, since the store does not have it yet.
pub struct InCommit {
    batch: Batch,
    event_ids: HashMap<(String, String), usize>,
}

/// What the commit thread needs besides the batch.
struct ToCommit {
    batch: Arc<InCommit>,
    finishers: Vec<Finisher>,
    new_head: Option<(u64, caseshare_audit::merkle::Hash)>,
    audit_size: u64,
    last_sequence: Option<u64>,
}

/// Pending replies, sent after the commit.
type Finisher = Box<dyn FnOnce(bool) + Send>;

fn finish<T: Send + 'static>(reply: Reply<T>, result: Result<T, BrokerError>) -> Finisher {
    Box::new(move |committed| {
        let result = if committed {
            result
        } else {
            Err(BrokerError::Unavailable(
                "the write could not be made durable".into(),
            ))
        };
        let _ = reply.send(result);
    })
}

struct Ctx<'a> {
    batch: &'a mut Batch,
    now: Micros,
}

impl Ctx<'_> {
    fn audit(&mut self, mut e: pb::AuditEntry) -> u64 {
        let index = self.batch.audit_first_index + self.batch.audit.len() as u64;
        e.index = index;
        e.recorded_at = Some(self.now.to_timestamp());
        self.batch.audit.push(entry::encode(&e));
        index
    }
}

impl WriterTask {
    /// Prepares the writer from a loaded store.
    pub fn new(
        store: Arc<dyn Storage>,
        state: Arc<RwLock<BrokerState>>,
        snapshot: &caseshare_store::Snapshot,
        pseudonym_key: Vec<u8>,
        max_batch: usize,
        log: Arc<crate::auditlog::AuditLog>,
    ) -> (Self, watch::Receiver<u64>) {
        let (head, head_rx) = watch::channel(snapshot.next_sequence.saturating_sub(1));
        metrics::gauge!("caseshare_audit_size").set(snapshot.audit_size as f64);
        (
            WriterTask {
                store,
                state,
                pseudonym_key,
                next_sequence: snapshot.next_sequence,
                next_subscription_id: snapshot.next_subscription_id,
                audit_size: snapshot.audit_size,
                max_batch,
                head,
                log,
                batch_event_ids: HashMap::new(),
                in_commit: None,
                runtime: tokio::runtime::Handle::try_current().ok(),
            },
            head_rx,
        )
    }

    /// Starts the writer thread; returns the handle and a join handle that
    /// finishes once every handle is dropped and the queue is drained.
    pub fn spawn(self) -> std::io::Result<(Writer, std::thread::JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel(16_384);
        let join = std::thread::Builder::new()
            .name("caseshare-writer".into())
            .spawn(move || self.run(rx))?;
        Ok((Writer { tx }, join))
    }

    fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        // Rendezvous: a batch is handed over only once the commit thread has
        // finished the previous one, so at most one batch is in commit.
        let (to_commit, commits) = std::sync::mpsc::sync_channel::<ToCommit>(0);
        let committer = {
            let store = Arc::clone(&self.store);
            let log = Arc::clone(&self.log);
            let head = self.head.clone();
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
        while let Some(first) = rx.blocking_recv() {
            let mut batch = Batch {
                audit_first_index: self.audit_size,
                ..Batch::default()
            };
            let mut finishers: Vec<Finisher> = Vec::new();
            self.batch_event_ids.clear();
            let seq_before = self.next_sequence;
            let sub_before = self.next_subscription_id;
            let mut all_lazy = first.is_lazy();
            let opened = Instant::now();
            self.apply(first, &mut batch, &mut finishers);
            let mut open = true;
            while finishers.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(op) => {
                        all_lazy &= op.is_lazy();
                        self.apply(op, &mut batch, &mut finishers);
                    }
                    Err(mpsc::error::TryRecvError::Empty) if all_lazy => {
                        // Only inline acks so far: wait a little for an op
                        // whose caller is waiting, and share its commit.
                        let left = LAZY_COMMIT_DELAY.saturating_sub(opened.elapsed());
                        let Some(handle) = &self.runtime else { break };
                        if left.is_zero() {
                            break;
                        }
                        // The timer is made inside `block_on`, in the runtime's
                        // context.
                        let waited =
                            handle.block_on(async { tokio::time::timeout(left, rx.recv()).await });
                        match waited {
                            Ok(Some(op)) => {
                                all_lazy &= op.is_lazy();
                                self.apply(op, &mut batch, &mut finishers);
                            }
                            Ok(None) => {
                                open = false;
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    Err(_) => break,
                }
            }
            if self.next_sequence != seq_before {
                batch.next_sequence = Some(self.next_sequence);
            }
            if self.next_subscription_id != sub_before {
                batch.next_subscription_id = Some(self.next_subscription_id);
            }
            // The batch's leaves join the Merkle tree; the changed tiles are
            // written in the same atomic batch.
            let mut new_head = None;
            if !batch.audit.is_empty() {
                let (tiles, size, root) = self.log.append(&batch.audit);
                batch.tiles = tiles
                    .into_iter()
                    .map(|t| (t.level, t.index, t.data))
                    .collect();
                new_head = Some((size, root));
            }
            self.audit_size += batch.audit.len() as u64;
            let in_commit = Arc::new(InCommit {
                batch,
                event_ids: std::mem::take(&mut self.batch_event_ids),
            });
            let job = ToCommit {
                batch: Arc::clone(&in_commit),
                finishers,
                new_head,
                audit_size: self.audit_size,
                last_sequence: (self.next_sequence != seq_before).then(|| self.next_sequence - 1),
            };
            if to_commit.send(job).is_err() {
                // The commit thread stopped: it has already exited the
                // process after a failed commit.
                break;
            }
            // The previous batch is committed (the commit thread took this
            // one only after finishing it); lookups now see this one.
            self.in_commit = Some(in_commit);
            if !open {
                break;
            }
        }
        drop(to_commit);
        let _ = committer.join();
    }

    fn apply(&mut self, op: Op, batch: &mut Batch, finishers: &mut Vec<Finisher>) {
        let mut ctx = Ctx { batch, now: now() };
        let f = match op {
            Op::Publish {
                actor,
                request,
                event_type,
                reply,
            } => finish(reply, self.publish(&mut ctx, &actor, request, event_type)),
            Op::RegisterAgency {
                actor,
                request,
                reply,
            } => finish(reply, self.register_agency(&mut ctx, &actor, request)),
            Op::PutAgreement {
                actor,
                agreement,
                reply,
            } => finish(reply, self.put_agreement(&mut ctx, &actor, agreement)),
            Op::EndAgreement {
                actor,
                request,
                reply,
            } => finish(reply, self.end_agreement(&mut ctx, &actor, request)),
            Op::RecordConsent {
                actor,
                consent,
                reply,
            } => finish(reply, self.record_consent(&mut ctx, &actor, consent)),
            Op::WithdrawConsent {
                actor,
                request,
                reply,
            } => finish(reply, self.withdraw_consent(&mut ctx, &actor, request)),
            Op::CreateSubscription {
                actor,
                subscription,
                quota,
                reply,
            } => finish(
                reply,
                self.create_subscription(&mut ctx, &actor, subscription, quota),
            ),
            Op::DeleteSubscription { actor, name, reply } => {
                finish(reply, self.delete_subscription(&mut ctx, &actor, &name))
            }
            Op::Deliver { intents, reply } => finish(reply, Ok(self.deliver(&mut ctx, intents))),
            Op::DeadLetter {
                subscription_id,
                subscription,
                recipient,
                items,
                floor,
                reply,
            } => {
                self.dead_letter(
                    &mut ctx,
                    subscription_id,
                    &subscription,
                    &recipient,
                    items,
                    floor,
                );
                finish(reply, Ok(()))
            }
            Op::Replay {
                actor,
                subscription_id,
                subscription,
                sequences,
                floor,
                reply,
            } => {
                for seq in &sequences {
                    ctx.batch.deliveries.push(DeliveryRecord {
                        subscription_id,
                        sequence: *seq,
                        state: DeliveryState::Delivered as i32,
                        attempts: 0,
                        ..Default::default()
                    });
                }
                if let Some(f) = floor {
                    ctx.batch.floors.push((subscription_id, f));
                }
                ctx.audit(pb::AuditEntry {
                    kind: pb::EntryKind::SubscriptionChanged as i32,
                    actor: actor.spiffe_id(),
                    recipient_agency: actor.name.clone(),
                    subscription,
                    reason: format!("replayed {} dead letters", sequences.len()),
                    ..Default::default()
                });
                finish(reply, Ok(()))
            }
            Op::Seek {
                actor,
                subscription_id,
                subscription,
                target,
                reply,
            } => {
                ctx.batch
                    .deleted_deliveries_from
                    .push((subscription_id, target));
                ctx.batch.floors.push((subscription_id, target));
                ctx.audit(pb::AuditEntry {
                    kind: pb::EntryKind::SubscriptionChanged as i32,
                    actor: actor.spiffe_id(),
                    recipient_agency: actor.name.clone(),
                    subscription,
                    sequence: target,
                    reason: format!("seek to sequence {target}"),
                    ..Default::default()
                });
                finish(reply, Ok(()))
            }
            Op::Retract {
                actor,
                request,
                reply,
            } => finish(reply, self.retract(&mut ctx, &actor, request)),
            Op::Expunge { events, reply } => {
                {
                    let mut state = self.write();
                    for (seq, _, _) in &events {
                        state.retracted.remove(seq);
                    }
                }
                metrics::counter!("caseshare_events_expunged_total").increment(events.len() as u64);
                ctx.batch.deleted_events.extend(events);
                finish(reply, Ok(()))
            }
            Op::Ack {
                actor,
                subscription_id,
                subscription,
                acks,
                floor,
                lazy: _,
                reply,
            } => {
                self.ack(
                    &mut ctx,
                    &actor,
                    subscription_id,
                    &subscription,
                    acks,
                    floor,
                );
                finish(reply, Ok(()))
            }
            Op::PurgeDeliveries {
                subscription_ids,
                reply,
            } => {
                ctx.batch.purge_deliveries.extend(subscription_ids);
                finish(reply, Ok(()))
            }
            Op::Record { entry, reply } => {
                let index = ctx.audit(entry);
                finish(reply, Ok(index))
            }
            Op::AuthDenied { entries, reply } => {
                for entry in entries {
                    ctx.audit(pb::AuditEntry {
                        kind: pb::EntryKind::AuthDenied as i32,
                        ..entry
                    });
                }
                finish(reply, Ok(()))
            }
        };
        finishers.push(f);
    }

    fn pseudonym(&self, nhs_number: &str) -> Vec<u8> {
        child_pseudonym(&self.pseudonym_key, nhs_number).to_vec()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BrokerState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BrokerState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(
        &mut self,
        ctx: &mut Ctx<'_>,
        actor: &Principal,
        request: pb::PublishRequest,
        event_type: &'static str,
    ) -> Result<pb::PublishResponse, BrokerError> {
        let provider = actor.name.as_str();
        let event = request.event.unwrap_or_default();
        if !self.read().agencies.contains_key(provider) {
            return Err(BrokerError::FailedPrecondition(format!(
                "agency {provider:?} is not registered; an administrator must register it before it can publish"
            )));
        }
        // Idempotent publish: an earlier event with this id, in this batch or
        // in the store, answers for this one.
        let earlier = self.own_event(ctx.batch, provider, &event.event_id)?;
        if let Some(first) = earlier {
            metrics::counter!("caseshare_publish_duplicates_total").increment(1);
            return Ok(pb::PublishResponse {
                sequence: first.sequence,
                duplicate: true,
                decisions: first.decisions,
                audit_index: first.audit_index,
                event_type: first.event_type,
                event_id: first.event_id,
            });
        }

        let sequence = self.next_sequence;
        let context = EventContext::new(provider, event_type, &event, request.basis.as_ref());
        let event_bytes = event.encode_to_vec();
        let salt: [u8; 16] = rand::random();
        let pseudonym = self.pseudonym(&context.nhs_number);
        let actor_id = actor.spiffe_id();
        let published = pb::AuditEntry {
            kind: pb::EntryKind::EventPublished as i32,
            actor: actor_id.clone(),
            child_pseudonym: pseudonym.clone(),
            event_id: event.event_id.clone(),
            event_type: event_type.to_string(),
            sequence,
            source_agency: provider.to_string(),
            payload_commitment: payload_commitment(&salt, &event_bytes).to_vec(),
            purpose: event.purpose,
            override_used: context.safeguarding_override.is_some(),
            safeguarding_override: context.safeguarding_override.clone(),
            ..Default::default()
        };
        let audit_index = ctx.audit(published);
        let mut decisions = Vec::new();
        {
            let state = self.read();
            for recipient in state.candidates(&context, &request.to_agencies) {
                let outcome = state.decide(&context, &recipient, ctx.now);
                let decision = outcome.to_proto(&recipient);
                ctx.audit(decision_entry(
                    &actor_id,
                    &pseudonym,
                    &context,
                    &event.event_id,
                    sequence,
                    &decision,
                ));
                decisions.push(decision);
            }
        }
        self.next_sequence += 1;
        let corrects = event.corrects_event_id.clone();
        self.push_event(
            ctx.batch,
            StoredEvent {
                sequence,
                source_agency: provider.to_string(),
                event_type: event_type.to_string(),
                published_at_micros: ctx.now.0,
                event: event_bytes,
                salt: salt.to_vec(),
                decisions: decisions.clone(),
                basis: request.basis,
                audit_index,
                event_id: event.event_id.clone(),
                to_agencies: request.to_agencies,
                notice: None,
            },
        );
        if !corrects.is_empty() {
            // A correction: recipients of the original are told, and those
            // that have not received it yet never will.
            if let Some(original) = self.own_event(ctx.batch, provider, &corrects)?
                && original.notice.is_none()
                && !self.read().retracted.contains_key(&original.sequence)
            {
                let notice = pb::EventNotice {
                    kind: pb::NoticeKind::Corrected as i32,
                    original_event_id: original.event_id.clone(),
                    original_sequence: original.sequence,
                    reason: String::new(),
                    correcting_event_id: event.event_id.clone(),
                };
                self.supersede(
                    ctx,
                    &original,
                    notice,
                    format!("corrected by {}", event.event_id),
                    audit_index,
                )?;
            }
        }
        metrics::counter!("caseshare_events_published_total").increment(1);
        for d in &decisions {
            let label = if d.decision == pb::Decision::Shared as i32 {
                "shared"
            } else {
                "withheld"
            };
            metrics::counter!("caseshare_share_decisions_total", "decision" => label).increment(1);
        }
        Ok(pb::PublishResponse {
            sequence,
            duplicate: false,
            decisions,
            audit_index,
            event_type: event_type.to_string(),
            event_id: event.event_id,
        })
    }

    fn register_agency(
        &mut self,
        ctx: &mut Ctx<'_>,
        actor: &Principal,
        request: pb::RegisterAgencyRequest,
    ) -> Result<pb::Agency, BrokerError> {
        if self.read().agencies.contains_key(&request.agency_id) {
            return Err(BrokerError::AlreadyExists(format!(
                "agency {:?} is already registered",
                request.agency_id
            )));
        }
        let agency = pb::Agency {
            agency_id: request.agency_id,
            kind: request.kind,
            display_name: request.display_name,
            registered_at: Some(ctx.now.to_timestamp()),
        };
        ctx.audit(pb::AuditEntry {
            kind: pb::EntryKind::AgencyRegistered as i32,
            actor: actor.spiffe_id(),
            subject: agency.agency_id.clone(),
            ..Default::default()
        });
        ctx.batch.agencies.push(agency.clone());
        self.write()
            .agencies
            .insert(agency.agency_id.clone(), agency.clone());
        Ok(agency)
    }

    fn check_party(&self, field: &str, party: &str) -> Result<(), BrokerError> {
        if !party.starts_with("kind:") && !self.read().agencies.contains_key(party) {
            return Err(BrokerError::FailedPrecondition(format!(
                "{field}: agency {party:?} is not registered"
            )));
        }
        Ok(())
    }

    fn put_agreement(
        &mut self,
        ctx: &mut Ctx<'_>,
        actor: &Principal,
        mut agreement: pb::Agreement,
    ) -> Result<pb::Agreement, BrokerError> {
        self.check_party("provider", &agreement.provider)?;
        self.check_party("recipient", &agreement.recipient)?;
        if agreement.valid_from.is_none() {
            agreement.valid_from = Some(ctx.now.to_timestamp());
        }
        agreement.ended_at = None;
        agreement.end_reason.clear();
        let replaced = self
            .read()
            .agreements
            .get(&agreement.agreement_id)
            .is_some();
        ctx.audit(pb::AuditEntry {
            kind: pb::EntryKind::AgreementChanged as i32,
            actor: actor.spiffe_id(),
            agreement_id: agreement.agreement_id.clone(),
            lawful_basis: agreement.lawful_basis,
            source_agency: agreement.provider.clone(),
            recipient_agency: agreement.recipient.clone(),
            reason: if replaced {
                "replaced".into()
            } else {
                "created".into()
            },
            ..Default::default()
        });
        ctx.batch.agreements.push(agreement.clone());
        self.write().agreements.put(agreement.clone());
        Ok(agreement)
    }

    fn end_agreement(
        &mut self,
        ctx: &mut Ctx<'_>,
        actor: &Principal,
        request: pb::EndAgreementRequest,
    ) -> Result<pb::Agreement, BrokerError> {
        let Some(mut agreement) = self.read().agreements.get(&request.agreement_id).cloned() else {
            return Err(BrokerError::NotFound(format!(
                "no agreement {:?}",
                request.agreement_id
            )));
        };
        if agreement.ended_at.is_some() {
            return Err(BrokerError::FailedPrecondition(format!(
                "agreement {:?} has already ended",
                request.agreement_id
            )));
        }
        agreement.ended_at = Some(ctx.now.to_timestamp());
        agreement.end_reason = request.reason.clone();
        ctx.audit(pb::AuditEntry {
            kind: pb::EntryKind::AgreementChanged as i32,
            actor: actor.spiffe_id(),
            agreement_id: agreement.agreement_id.clone(),
            source_agency: agreement.provider.clone(),
            recipient_agency: agreement.recipient.clone(),
            reason: format!("ended: {}", request.reason),
            ..Default::default()
        });
        ctx.batch.agreements.push(agreement.clone());
        self.write().agreements.put(agreement.clone());
        Ok(agreement)
    }

    fn record_consent(
        &mut self,
        ctx: &mut Ctx<'_>,
        actor: &Principal,
        mut consent: pb::ConsentRecord,
    ) -> Result<pb::ConsentRecord, BrokerError> {
        if consent.consent_id.is_empty() {
            consent.consent_id = format!("consent-{}", hex::encode(rand::random::<[u8; 8]>()));
        } else if self.read().consent(&consent.consent_id).is_some() {
            return Err(BrokerError::AlreadyExists(format!(
                "consent {:?} already exists",
                consent.consent_id
            )));
        }
        consent.recorded_by = actor.name.clone();
        consent.recorded_at = Some(ctx.now.to_timestamp());
        consent.withdrawn_at = None;
        consent.withdrawal_reason.clear();
        if consent.valid_from.is_none() {
            consent.valid_from = consent.recorded_at;
        }
        ctx.audit(pb::AuditEntry {
            kind: pb::EntryKind::ConsentRecorded as i32,
            actor: actor.spiffe_id(),
            child_pseudonym: self.pseudonym(&consent.nhs_number),
            consent_id: consent.consent_id.clone(),
            purpose: consent.purposes.first().copied().unwrap_or_default(),
            subject: consent.recipients.join(","),
            ..Default::default()
        });
        ctx.batch.consents.push(consent.clone());
        self.write().put_consent(consent.clone());
        Ok(consent)
    }

    fn withdraw_consent(
        &mut self,
        ctx: &mut Ctx<'_>,
        actor: &Principal,
        request: pb::WithdrawConsentRequest,
    ) -> Result<pb::ConsentRecord, BrokerError> {
        let Some(mut consent) = self.read().consent(&request.consent_id).cloned() else {
            return Err(BrokerError::NotFound(format!(
                "no consent {:?}",
                request.consent_id
            )));
        };
        let may = consent.recorded_by == actor.name
            || consent.recipients.iter().any(|r| r == &actor.name);
        if !may {
            // A refusal on standing, like one by role, is on the record:
            // the service counts it in `refusals` (aggregated).
            return Err(BrokerError::PermissionDenied(
                "a consent may be withdrawn by the agency that recorded it or an agency it names"
                    .into(),
            ));
        }
        if consent.withdrawn_at.is_some() {
            return Ok(consent);
        }
        consent.withdrawn_at = Some(ctx.now.to_timestamp());
        consent.withdrawal_reason = request.reason;
        ctx.audit(pb::AuditEntry {
            kind: pb::EntryKind::ConsentWithdrawn as i32,
            actor: actor.spiffe_id(),
            child_pseudonym: self.pseudonym(&consent.nhs_number),
            consent_id: consent.consent_id.clone(),
            reason: consent.withdrawal_reason.clone(),
            ..Default::default()
        });
        ctx.batch.consents.push(consent.clone());
        self.write().put_consent(consent.clone());
        Ok(consent)
    }

    fn create_subscription(
        &mut self,
        ctx: &mut Ctx<'_>,
        actor: &Principal,
        mut subscription: pb::Subscription,
        quota: usize,
    ) -> Result<SubscriptionRecord, BrokerError> {
        let agency = actor.name.clone();
        {
            let state = self.read();
            if !state.agencies.contains_key(&agency) {
                return Err(BrokerError::FailedPrecondition(format!(
                    "agency {agency:?} is not registered"
                )));
            }
            if state.subscription(&agency, &subscription.name).is_some() {
                return Err(BrokerError::AlreadyExists(format!(
                    "subscription {:?} already exists",
                    subscription.name
                )));
            }
            let held = state
                .subscription_ids
                .keys()
                .filter(|(a, _)| *a == agency)
                .count();
            if held >= quota {
                return Err(BrokerError::ResourceExhausted(format!(
                    "agency {agency:?} holds {held} subscriptions, the most allowed \
                     (limits.max_subscriptions_per_agency); delete one first"
                )));
            }
        }
        subscription.agency_id = agency;
        subscription.created_at = Some(ctx.now.to_timestamp());
        subscription.start_sequence = self.next_sequence;
        let record = SubscriptionRecord {
            id: self.next_subscription_id,
            subscription: Some(subscription.clone()),
        };
        self.next_subscription_id += 1;
        ctx.audit(pb::AuditEntry {
            kind: pb::EntryKind::SubscriptionChanged as i32,
            actor: actor.spiffe_id(),
            recipient_agency: subscription.agency_id.clone(),
            subscription: subscription.name.clone(),
            reason: "created".into(),
            ..Default::default()
        });
        ctx.batch.subscriptions.push(record.clone());
        ctx.batch
            .floors
            .push((record.id, subscription.start_sequence));
        self.write().put_subscription(record.clone());
        Ok(record)
    }

    fn delete_subscription(
        &mut self,
        ctx: &mut Ctx<'_>,
        actor: &Principal,
        name: &str,
    ) -> Result<SubscriptionRecord, BrokerError> {
        let id = self
            .read()
            .subscription(&actor.name, name)
            .map(|r| r.id)
            .ok_or_else(|| BrokerError::NotFound(format!("no subscription {name:?}")))?;
        ctx.audit(pb::AuditEntry {
            kind: pb::EntryKind::SubscriptionChanged as i32,
            actor: actor.spiffe_id(),
            recipient_agency: actor.name.clone(),
            subscription: name.to_string(),
            reason: "deleted".into(),
            ..Default::default()
        });
        ctx.batch.deleted_subscriptions.push(id);
        self.write()
            .remove_subscription(id)
            .ok_or_else(|| BrokerError::NotFound(format!("no subscription {name:?}")))
    }

    fn deliver(&mut self, ctx: &mut Ctx<'_>, intents: Vec<DeliveryIntent>) -> Vec<Verdict> {
        let state = self.read();
        let mut verdicts = Vec::with_capacity(intents.len());
        for intent in intents {
            // A window picked just before its subscription was deleted:
            // nothing is sent and nothing recorded for a subscription that
            // no longer exists.
            if !state.subscriptions.contains_key(&intent.subscription_id) {
                verdicts.push(Verdict::Stopped("the subscription was deleted".into()));
                continue;
            }
            let pseudonym =
                child_pseudonym(&self.pseudonym_key, &intent.context.nhs_number).to_vec();
            let now_us = ctx.now.0;
            let record = |state: DeliveryState, attempts: u32, reason: &str| DeliveryRecord {
                subscription_id: intent.subscription_id,
                sequence: intent.sequence,
                state: state as i32,
                attempts,
                delivered_at_micros: if state == DeliveryState::Delivered {
                    now_us
                } else {
                    0
                },
                reason: reason.to_string(),
                settled_at_micros: if state == DeliveryState::Delivered {
                    0
                } else {
                    now_us
                },
                ..Default::default()
            };
            let base = pb::AuditEntry {
                actor: "system".into(),
                child_pseudonym: pseudonym,
                event_id: intent.event_id.clone(),
                event_type: intent.context.event_type.clone(),
                sequence: intent.sequence,
                source_agency: intent.context.provider.clone(),
                recipient_agency: intent.recipient.clone(),
                subscription: intent.subscription.clone(),
                delivery_id: intent.delivery_id.clone(),
                attempt: intent.attempt,
                purpose: intent.context.purpose as i32,
                ..Default::default()
            };
            let verdict = if intent.notice {
                Verdict::Notice
            } else if let Some(reason) = state.retracted.get(&intent.sequence) {
                Verdict::Stopped(reason.clone())
            } else if intent.expires_at.is_some_and(|t| t <= ctx.now) {
                Verdict::Expired
            } else {
                let outcome = state.decide(&intent.context, &intent.recipient, ctx.now);
                if outcome.is_shared() {
                    Verdict::Shared(outcome)
                } else {
                    let decision = outcome.to_proto(&intent.recipient);
                    let mut e = decision_entry(
                        "system",
                        &base.child_pseudonym,
                        &intent.context,
                        &intent.event_id,
                        intent.sequence,
                        &decision,
                    );
                    e.subscription = intent.subscription.clone();
                    e.delivery_id = intent.delivery_id.clone();
                    ctx.audit(e);
                    Verdict::Stopped(outcome.reason.as_str().to_string())
                }
            };
            match &verdict {
                Verdict::Shared(outcome) => {
                    ctx.audit(pb::AuditEntry {
                        kind: pb::EntryKind::EventDelivered as i32,
                        agreement_id: outcome.agreement_id.clone(),
                        consent_id: outcome.consent_id.clone(),
                        lawful_basis: outcome.lawful_basis as i32,
                        override_used: outcome.reason == caseshare_core::decision::Reason::Override,
                        ..base
                    });
                    ctx.batch
                        .deliveries
                        .push(record(DeliveryState::Delivered, intent.attempt, ""));
                    metrics::counter!("caseshare_deliveries_total").increment(1);
                }
                Verdict::Notice => {
                    ctx.audit(pb::AuditEntry {
                        kind: pb::EntryKind::EventDelivered as i32,
                        reason: "notice".into(),
                        ..base
                    });
                    ctx.batch.deliveries.push(record(
                        DeliveryState::Delivered,
                        intent.attempt,
                        "notice",
                    ));
                    metrics::counter!("caseshare_deliveries_total").increment(1);
                }
                Verdict::Stopped(reason) => {
                    if state.retracted.contains_key(&intent.sequence) {
                        ctx.audit(pb::AuditEntry {
                            kind: pb::EntryKind::ShareDecided as i32,
                            decision: pb::Decision::Withheld as i32,
                            reason: "event_retracted".into(),
                            ..base
                        });
                    }
                    ctx.batch.deliveries.push(record(
                        DeliveryState::Stopped,
                        intent.attempt.saturating_sub(1),
                        reason,
                    ));
                    metrics::counter!("caseshare_deliveries_stopped_total").increment(1);
                }
                Verdict::Expired => {
                    ctx.audit(pb::AuditEntry {
                        kind: pb::EntryKind::EventExpired as i32,
                        ..base
                    });
                    ctx.batch.deliveries.push(record(
                        DeliveryState::Expired,
                        intent.attempt.saturating_sub(1),
                        "expired",
                    ));
                    metrics::counter!("caseshare_deliveries_expired_total").increment(1);
                }
            }
            verdicts.push(verdict);
        }
        verdicts
    }

    fn dead_letter(
        &mut self,
        ctx: &mut Ctx<'_>,
        subscription_id: u64,
        subscription: &str,
        recipient: &str,
        items: Vec<AckIntent>,
        floor: Option<u64>,
    ) {
        let how = Settled {
            kind: pb::EntryKind::DeadLettered,
            state: DeliveryState::DeadLettered,
            actor: "system".into(),
            recipient: recipient.to_string(),
        };
        self.settle(ctx, &how, subscription_id, subscription, items, floor);
    }

    /// Records settled deliveries (acknowledged or dead-lettered): one
    /// audit entry and one delivery record each, and the new floor.
    fn settle(
        &self,
        ctx: &mut Ctx<'_>,
        how: &Settled,
        subscription_id: u64,
        subscription: &str,
        items: Vec<AckIntent>,
        floor: Option<u64>,
    ) {
        let acked = how.state == DeliveryState::Acked;
        // Acks that reach the writer after their subscription was deleted
        // would leave delivery records nobody removes.
        if !self.read().subscriptions.contains_key(&subscription_id) {
            return;
        }
        for a in items {
            ctx.audit(pb::AuditEntry {
                kind: how.kind as i32,
                actor: how.actor.clone(),
                child_pseudonym: self.pseudonym(&a.nhs_number),
                event_id: a.event_id,
                sequence: a.sequence,
                recipient_agency: how.recipient.clone(),
                subscription: subscription.to_string(),
                delivery_id: a.delivery_id,
                attempt: a.attempts,
                ..Default::default()
            });
            ctx.batch.deliveries.push(DeliveryRecord {
                subscription_id,
                sequence: a.sequence,
                state: how.state as i32,
                attempts: a.attempts,
                delivered_at_micros: a.delivered_at.0,
                acked_at_micros: if acked { ctx.now.0 } else { 0 },
                settled_at_micros: if acked { 0 } else { ctx.now.0 },
                ..Default::default()
            });
        }
        if let Some(f) = floor {
            ctx.batch.floors.push((subscription_id, f));
        }
    }

    /// Adds an event to the batch and to the batch's idempotency index.
    fn push_event(&mut self, batch: &mut Batch, event: StoredEvent) {
        self.batch_event_ids.insert(
            (event.source_agency.clone(), event.event_id.clone()),
            batch.events.len(),
        );
        batch.events.push(event);
    }

    /// The stored event an agency published under `event_id`, looking in
    /// the batch being built first.
    fn own_event(
        &self,
        batch: &Batch,
        agency: &str,
        event_id: &str,
    ) -> Result<Option<StoredEvent>, BrokerError> {
        let id = (agency.to_string(), event_id.to_string());
        if let Some(e) = self
            .batch_event_ids
            .get(&id)
            .and_then(|i| batch.events.get(*i))
        {
            return Ok(Some(e.clone()));
        }
        if let Some(c) = &self.in_commit
            && let Some(e) = c.event_ids.get(&id).and_then(|i| c.batch.events.get(*i))
        {
            return Ok(Some(e.clone()));
        }
        Ok(self.store.event_by_id(agency, event_id)?)
    }

    /// Agencies that have been sent `original` (in the store or this batch).
    fn received(&self, batch: &Batch, original: &StoredEvent) -> Result<Vec<String>, BrokerError> {
        let state = self.read();
        let mut out = Vec::new();
        for d in original
            .decisions
            .iter()
            .filter(|d| d.decision == pb::Decision::Shared as i32)
        {
            let subs: Vec<u64> = state
                .subscriptions
                .values()
                .filter(|r| {
                    r.subscription
                        .as_ref()
                        .is_some_and(|s| s.agency_id == d.agency_id)
                })
                .map(|r| r.id)
                .collect();
            let sent = |r: &DeliveryRecord| {
                matches!(
                    r.state(),
                    DeliveryState::Delivered | DeliveryState::Acked | DeliveryState::DeadLettered
                ) && r.reason != "notice"
            };
            let in_store = self
                .store
                .deliveries_of(&subs, original.sequence)?
                .iter()
                .any(sent);
            let in_commit = self.in_commit.as_ref().map(|c| &c.batch.deliveries);
            let in_batch = batch
                .deliveries
                .iter()
                .chain(in_commit.into_iter().flatten())
                .any(|r| {
                    r.sequence == original.sequence && subs.contains(&r.subscription_id) && sent(r)
                });
            if in_store || in_batch {
                out.push(d.agency_id.clone());
            }
        }
        Ok(out)
    }

    /// Marks `original` as not to be delivered any more and queues a notice
    /// event to every agency that received it. Returns (notices, stopped).
    fn supersede(
        &mut self,
        ctx: &mut Ctx<'_>,
        original: &StoredEvent,
        notice: pb::EventNotice,
        reason: String,
        audit_index: u64,
    ) -> Result<(u32, u32), BrokerError> {
        // Decoded before anything changes: a damaged event changes nothing.
        let decoded = crate::errors::stored_case_event(original)?;
        let received = self.received(ctx.batch, original)?;
        let shared = original
            .decisions
            .iter()
            .filter(|d| d.decision == pb::Decision::Shared as i32)
            .count();
        ctx.batch
            .retracted
            .push((original.sequence, reason.clone()));
        self.write().retracted.insert(original.sequence, reason);
        if !received.is_empty() {
            let minimal = pb::CaseEvent {
                event_id: decoded.event_id.clone(),
                child: decoded.child.clone(),
                purpose: decoded.purpose,
                occurred_at: decoded.occurred_at,
                ..Default::default()
            };
            let sequence = self.next_sequence;
            self.next_sequence += 1;
            self.push_event(
                ctx.batch,
                StoredEvent {
                    sequence,
                    source_agency: original.source_agency.clone(),
                    event_type: original.event_type.clone(),
                    published_at_micros: ctx.now.0,
                    event: minimal.encode_to_vec(),
                    salt: Vec::new(),
                    decisions: received
                        .iter()
                        .map(|a| pb::SharingDecision {
                            agency_id: a.clone(),
                            decision: pb::Decision::Shared as i32,
                            reason: "notice".into(),
                            ..Default::default()
                        })
                        .collect(),
                    basis: None,
                    audit_index,
                    event_id: format!("notice#{sequence}"),
                    to_agencies: Vec::new(),
                    notice: Some(notice),
                },
            );
        }
        let notices = u32::try_from(received.len()).unwrap_or(u32::MAX);
        Ok((
            notices,
            u32::try_from(shared)
                .unwrap_or(u32::MAX)
                .saturating_sub(notices),
        ))
    }

    fn retract(
        &mut self,
        ctx: &mut Ctx<'_>,
        actor: &Principal,
        request: pb::RetractEventRequest,
    ) -> Result<pb::RetractEventResponse, BrokerError> {
        let Some(original) = self.own_event(ctx.batch, &actor.name, &request.event_id)? else {
            return Err(BrokerError::NotFound(format!(
                "no event {:?} published by this agency",
                request.event_id
            )));
        };
        if original.notice.is_some() {
            return Err(BrokerError::invalid(
                "event_id",
                "a notice cannot be retracted",
            ));
        }
        if self.read().retracted.contains_key(&original.sequence) {
            return Err(BrokerError::FailedPrecondition(format!(
                "event {:?} is already retracted",
                request.event_id
            )));
        }
        let nhs = crate::errors::stored_case_event(&original)?
            .child
            .map(|c| c.nhs_number)
            .unwrap_or_default();
        let index = ctx.audit(pb::AuditEntry {
            kind: pb::EntryKind::EventRetracted as i32,
            actor: actor.spiffe_id(),
            child_pseudonym: self.pseudonym(&nhs),
            event_id: original.event_id.clone(),
            event_type: original.event_type.clone(),
            sequence: original.sequence,
            source_agency: original.source_agency.clone(),
            reason: request.reason.clone(),
            ..Default::default()
        });
        let notice = pb::EventNotice {
            kind: pb::NoticeKind::Retracted as i32,
            original_event_id: original.event_id.clone(),
            original_sequence: original.sequence,
            reason: request.reason.clone(),
            correcting_event_id: String::new(),
        };
        let (notices_sent, deliveries_stopped) = self.supersede(
            ctx,
            &original,
            notice,
            format!("retracted: {}", request.reason),
            index,
        )?;
        Ok(pb::RetractEventResponse {
            notices_sent,
            deliveries_stopped,
        })
    }

    fn ack(
        &mut self,
        ctx: &mut Ctx<'_>,
        actor: &Principal,
        subscription_id: u64,
        subscription: &str,
        acks: Vec<AckIntent>,
        floor: Option<u64>,
    ) {
        metrics::counter!("caseshare_acks_total").increment(acks.len() as u64);
        let how = Settled {
            kind: pb::EntryKind::EventAcked,
            state: DeliveryState::Acked,
            actor: actor.spiffe_id(),
            recipient: actor.name.clone(),
        };
        self.settle(ctx, &how, subscription_id, subscription, acks, floor);
    }
}

/// How a delivery was settled, for [`WriterTask::settle`].
struct Settled {
    kind: pb::EntryKind,
    state: DeliveryState,
    actor: String,
    recipient: String,
}

/// The commit thread: commits each batch, publishes the new audit head and
/// event head, then replies to the batch's ops. A failed commit answers
/// every op with an error and exits the process (crash-only: a restart
/// reloads the last durable state).
fn commit_loop(
    store: &dyn Storage,
    log: &crate::auditlog::AuditLog,
    head: &watch::Sender<u64>,
    commits: &std::sync::mpsc::Receiver<ToCommit>,
) {
    while let Ok(job) = commits.recv() {
        let batch = &job.batch.batch;
        let started = Instant::now();
        let committed = if batch.is_empty() {
            true
        } else {
            match store.commit(batch) {
                Ok(stats) => {
                    metrics::counter!("caseshare_store_commits_total").increment(1);
                    metrics::counter!("caseshare_store_records_total")
                        .increment(stats.records as u64);
                    metrics::histogram!("caseshare_store_ops_per_commit")
                        .record(job.finishers.len() as f64);
                    metrics::histogram!("caseshare_store_commit_seconds")
                        .record(started.elapsed().as_secs_f64());
                    true
                }
                Err(e) => {
                    tracing::error!(error = %e, "commit failed; the broker stops rather than acknowledge what is not durable");
                    false
                }
            }
        };
        if committed {
            if let Some((size, root)) = job.new_head {
                log.committed(size, root);
            }
            metrics::counter!("caseshare_audit_entries_total").increment(batch.audit.len() as u64);
            metrics::gauge!("caseshare_audit_size").set(job.audit_size as f64);
            if let Some(last) = job.last_sequence {
                metrics::histogram!("caseshare_store_events_per_commit")
                    .record(batch.events.len() as f64);
                let _ = head.send(last);
            }
        }
        for f in job.finishers {
            f(committed);
        }
        if !committed {
            std::process::exit(75);
        }
    }
}

fn decision_entry(
    actor: &str,
    pseudonym: &[u8],
    context: &EventContext,
    event_id: &str,
    sequence: u64,
    decision: &pb::SharingDecision,
) -> pb::AuditEntry {
    pb::AuditEntry {
        kind: pb::EntryKind::ShareDecided as i32,
        actor: actor.to_string(),
        child_pseudonym: pseudonym.to_vec(),
        event_id: event_id.to_string(),
        event_type: context.event_type.clone(),
        sequence,
        source_agency: context.provider.clone(),
        recipient_agency: decision.agency_id.clone(),
        decision: decision.decision,
        reason: decision.reason.clone(),
        agreement_id: decision.agreement_id.clone(),
        consent_id: decision.consent_id.clone(),
        lawful_basis: decision.lawful_basis,
        override_used: decision.override_used,
        safeguarding_override: if decision.override_used {
            context.safeguarding_override.clone()
        } else {
            None
        },
        purpose: context.purpose as i32,
        subject: String::new(),
        ..Default::default()
    }
}
