//! The delivery engine: per subscription, a cursor over the event log and
//! the set of deliveries sent but not yet settled; per `Subscribe` stream, a
//! loop that fills the flow-control window from that state, has the writer
//! re-decide and record each delivery, and sends it.
//!
//! - **At least once.** A delivery not acknowledged by its ack deadline, or
//!   nacked, or out on a stream that closed, is owed again after an
//!   exponential backoff (`base · 2^(attempts-1)`, capped); after the
//!   subscription's `max_attempts` it becomes a dead letter.
//! - **Ordered subscriptions** have at most one delivery per child in
//!   flight; a child's later events wait (in `deferred`) while other
//!   children's events flow on.
//! - **Backlog stays on disk.** A subscription holds in memory only its
//!   cursor, its unsettled deliveries (at most `max_outstanding` per stream
//!   in flight) and, for ordered subscriptions, the sequences deferred
//!   behind a busy child.
//! - **Seek** moves the cursor back (or forward); events from there are
//!   re-decided under today's rules.
//!
//! Architecture Invariant: an event leaves the broker only after the writer
//! has re-decided it under the current agreements and consents and made its
//! EVENT_DELIVERED entry durable.
//!
//! Architecture Invariant: the persisted floor of a subscription is never
//! above a sequence it still owes: everything below it is settled.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use caseshare_core::minimise::minimise;
use caseshare_core::pb;
use caseshare_core::principal::Principal;
use caseshare_core::time::Micros;
use caseshare_store::{DeliveryState, Storage, StoredEvent, SubscriptionRecord};
use futures::FutureExt;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::errors::BrokerError;
use crate::writer::{AckIntent, DeliveryIntent, Op, Verdict, Writer, now};
use caseshare_state::{BrokerState, EventContext, subscription_matches};

/// The most events one read of the log takes.
const SCAN_CHUNK: usize = 256;

/// Redelivery backoff.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Delay before the first redelivery.
    pub base: Duration,
    /// Longest delay.
    pub cap: Duration,
}

impl Backoff {
    /// The delay before redelivering a delivery already sent `attempts` times.
    pub fn delay(&self, attempts: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempts.saturating_sub(1).min(20))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }
}

/// A delivery sent (or owed again) and not yet settled.
#[derive(Debug, Clone)]
struct Pending {
    attempts: u32,
    event_id: String,
    nhs_number: String,
    delivered_at: Micros,
    /// The stream it is out on; `None` = owed, to be sent at `not_before`.
    stream: Option<u64>,
    deadline: Option<Instant>,
    not_before: Instant,
}

#[derive(Debug)]
struct SubInner {
    /// The next sequence to read from the log.
    cursor: u64,
    /// Unsettled deliveries by sequence.
    pending: BTreeMap<u64, Pending>,
    /// Ordered subscriptions: sequences waiting behind an earlier delivery
    /// for the same child, with the child's NHS number.
    deferred: BTreeMap<u64, String>,
    /// Sequences at or after the cursor already settled (known at start).
    settled_ahead: BTreeSet<u64>,
    /// Below this sequence (after a seek) every event this agency was a
    /// candidate for is re-decided, not only those shared at publish.
    replay_until: u64,
    /// The floor last sent to the store.
    persisted_floor: u64,
    deleted: bool,
}

impl SubInner {
    fn floor(&self) -> u64 {
        let p = self.pending.keys().next().copied().unwrap_or(u64::MAX);
        let d = self.deferred.keys().next().copied().unwrap_or(u64::MAX);
        self.cursor.min(p).min(d)
    }

    /// Removes a settled delivery from `pending`. One at or after the
    /// cursor (owed again after a restart, before the scan reached it) is
    /// remembered so the scan does not take it for a new event.
    fn settle(&mut self, seq: u64) -> Option<Pending> {
        let p = self.pending.remove(&seq)?;
        if seq >= self.cursor {
            self.settled_ahead.insert(seq);
        }
        Some(p)
    }

    fn child_busy(&self, nhs: &str) -> bool {
        self.pending.values().any(|p| p.nhs_number == nhs)
    }

    /// The floor to persist, if it moved.
    fn take_floor(&mut self) -> Option<u64> {
        let f = self.floor();
        (f != self.persisted_floor).then(|| {
            self.persisted_floor = f;
            f
        })
    }
}

/// One subscription's delivery state.
#[derive(Debug)]
pub struct SubRuntime {
    /// Internal id.
    pub id: u64,
    /// The subscription.
    pub subscription: pb::Subscription,
    inner: Mutex<SubInner>,
    notify: Notify,
}

impl SubRuntime {
    fn lock(&self) -> std::sync::MutexGuard<'_, SubInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ack_deadline(&self) -> Duration {
        let d = self.subscription.ack_deadline.unwrap_or_default();
        Duration::from_secs(u64::try_from(d.seconds).unwrap_or(30).max(1))
            + Duration::from_nanos(u64::try_from(d.nanos).unwrap_or(0))
    }

    fn max_attempts(&self) -> u32 {
        self.subscription.max_attempts.max(1)
    }

    /// The lowest sequence this subscription still owes.
    pub fn floor(&self) -> u64 {
        self.lock().floor()
    }
}

/// The delivery id of one attempt.
pub fn delivery_id(subscription_id: u64, sequence: u64, attempt: u32) -> String {
    format!("{subscription_id}-{sequence}-{attempt}")
}

fn parse_delivery_id(id: &str) -> Option<(u64, u64)> {
    let mut parts = id.split('-');
    let sub = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    let _attempt: u32 = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((sub, seq))
}

/// Every subscription's runtime, and what streams need to serve them.
pub struct Deliveries {
    store: Arc<dyn Storage>,
    writer: Writer,
    state: Arc<RwLock<BrokerState>>,
    head: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
    runtimes: RwLock<HashMap<u64, Arc<SubRuntime>>>,
    next_stream: std::sync::atomic::AtomicU64,
    max_outstanding: u32,
    backoff: Backoff,
    send_gate: Arc<tokio::sync::RwLock<()>>,
}

impl std::fmt::Debug for Deliveries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliveries").finish_non_exhaustive()
    }
}

struct Pick {
    sequence: u64,
    attempt: u32,
    event: StoredEvent,
    decoded: pb::CaseEvent,
}

/// One window submitted to the writer and not yet sent.
struct InFlight {
    /// The send gate, held until this window is handed to the stream.
    _gate: tokio::sync::OwnedRwLockReadGuard<()>,
    picks: Vec<Pick>,
    verdicts: oneshot::Receiver<Result<Vec<Verdict>, BrokerError>>,
}

/// What the stream loop must do after a timer or a nack.
struct Expired {
    dead: Vec<AckIntent>,
    floor: Option<u64>,
}

impl Deliveries {
    /// Builds runtimes for every stored subscription.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn Storage>,
        writer: Writer,
        state: Arc<RwLock<BrokerState>>,
        head: watch::Receiver<u64>,
        shutdown: watch::Receiver<bool>,
        floors: &[(u64, u64)],
        max_outstanding: u32,
        backoff: Backoff,
        send_gate: Arc<tokio::sync::RwLock<()>>,
    ) -> Result<Arc<Self>, BrokerError> {
        let d = Arc::new(Deliveries {
            store,
            writer,
            state,
            head,
            shutdown,
            runtimes: RwLock::new(HashMap::new()),
            next_stream: std::sync::atomic::AtomicU64::new(1),
            max_outstanding,
            backoff,
            send_gate,
        });
        let floors: HashMap<u64, u64> = floors.iter().copied().collect();
        let records: Vec<SubscriptionRecord> =
            d.read_state().subscriptions.values().cloned().collect();
        for rec in records {
            let floor = floors.get(&rec.id).copied();
            d.add(rec, floor)?;
        }
        Ok(d)
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, BrokerState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a runtime for a (new or loaded) subscription.
    pub fn add(&self, rec: SubscriptionRecord, floor: Option<u64>) -> Result<(), BrokerError> {
        let Some(sub) = rec.subscription else {
            return Ok(());
        };
        let floor = floor.unwrap_or(sub.start_sequence).max(sub.start_sequence);
        let mut pending = BTreeMap::new();
        let mut settled_ahead = BTreeSet::new();
        let start = Instant::now();
        for d in self.store.deliveries_from(rec.id, floor)? {
            if d.is_settled() {
                settled_ahead.insert(d.sequence);
            } else if d.state() == DeliveryState::Delivered {
                pending.insert(
                    d.sequence,
                    Pending {
                        attempts: d.attempts,
                        event_id: String::new(),
                        nhs_number: String::new(),
                        delivered_at: Micros(d.delivered_at_micros),
                        stream: None,
                        deadline: None,
                        not_before: start,
                    },
                );
            }
        }
        let rt = Arc::new(SubRuntime {
            id: rec.id,
            subscription: sub,
            inner: Mutex::new(SubInner {
                cursor: floor,
                pending,
                deferred: BTreeMap::new(),
                settled_ahead,
                replay_until: 0,
                persisted_floor: floor,
                deleted: false,
            }),
            notify: Notify::new(),
        });
        self.runtimes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(rec.id, rt);
        Ok(())
    }

    /// Removes a deleted subscription's runtime; its streams end.
    pub fn remove(&self, id: u64) {
        if let Some(rt) = self
            .runtimes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
        {
            rt.lock().deleted = true;
            rt.notify.notify_waiters();
        }
    }

    /// Waits until every delivery decided before now has been handed to its
    /// stream (see `fill`).
    pub async fn drain_in_flight_sends(&self) {
        drop(self.send_gate.write().await);
    }

    /// The last committed event sequence.
    pub fn head(&self) -> u64 {
        *self.head.borrow()
    }

    /// The lowest sequence any subscription still owes (the head + 1 when
    /// none owes anything): events below it are settled everywhere.
    pub fn min_floor(&self) -> u64 {
        let head = *self.head.borrow();
        self.runtimes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|rt| rt.floor())
            .min()
            .unwrap_or(head + 1)
            .min(head + 1)
    }

    /// The runtime of one of `agency`'s subscriptions.
    pub fn runtime(&self, agency: &str, name: &str) -> Result<Arc<SubRuntime>, BrokerError> {
        let id = self
            .read_state()
            .subscription(agency, name)
            .map(|r| r.id)
            .ok_or_else(|| BrokerError::NotFound(format!("no subscription {name:?}")))?;
        self.runtimes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
            .ok_or_else(|| BrokerError::NotFound(format!("no subscription {name:?}")))
    }

    /// Whether the scan should consider an event for this subscription.
    fn eligible(
        &self,
        rt: &SubRuntime,
        inner: &SubInner,
        event: &StoredEvent,
        decoded: &pb::CaseEvent,
    ) -> bool {
        let agency = rt.subscription.agency_id.as_str();
        if event.source_agency == agency || event.sequence < rt.subscription.start_sequence {
            return false;
        }
        let purpose = pb::Purpose::try_from(decoded.purpose).unwrap_or(pb::Purpose::Unspecified);
        if !subscription_matches(&rt.subscription, &event.event_type, purpose) {
            return false;
        }
        let decision = event.decisions.iter().find(|d| d.agency_id == agency);
        match decision {
            Some(d) if d.decision == pb::Decision::Shared as i32 => true,
            // Replaying after a seek: an event withheld at publish is
            // re-decided under today's rules (the writer decides again).
            Some(_) if event.sequence < inner.replay_until && event.notice.is_none() => {
                let ctx = EventContext::new(
                    &event.source_agency,
                    &event.event_type,
                    decoded,
                    event.basis.as_ref(),
                );
                self.read_state().decide(&ctx, agency, now()).is_shared()
            }
            _ => false,
        }
    }

    /// Takes up to `want` deliveries for a stream: owed ones that are due
    /// first, then (ordered subscriptions) deferred ones whose child is
    /// free, then new ones from the log. Each is marked as out on the stream
    /// before the lock is released.
    fn pick(&self, rt: &SubRuntime, stream: u64, want: usize) -> Result<Vec<Pick>, BrokerError> {
        let mut picks = Vec::new();
        let mut inner = rt.lock();
        if inner.deleted {
            return Ok(picks);
        }
        let now_i = Instant::now();
        let owed: Vec<u64> = inner
            .pending
            .iter()
            .filter(|(_, p)| p.stream.is_none() && p.not_before <= now_i)
            .map(|(s, _)| *s)
            .take(want)
            .collect();
        for seq in owed {
            match self.store.event(seq)? {
                Some(event) => {
                    let decoded = crate::errors::stored_case_event(&event)?;
                    if let Some(p) = inner.pending.get_mut(&seq) {
                        p.stream = Some(stream);
                        p.deadline = None;
                        p.nhs_number = decoded
                            .child
                            .as_ref()
                            .map(|c| c.nhs_number.clone())
                            .unwrap_or_default();
                        picks.push(Pick {
                            sequence: seq,
                            attempt: p.attempts + 1,
                            event,
                            decoded,
                        });
                    }
                }
                // The event is gone (retention): nothing left to deliver.
                None => {
                    inner.pending.remove(&seq);
                }
            }
        }
        let ordered = rt.subscription.ordered;
        if ordered && picks.len() < want {
            let ready: Vec<(u64, String)> = inner
                .deferred
                .iter()
                .filter(|(_, nhs)| !inner.child_busy(nhs))
                .map(|(s, n)| (*s, n.clone()))
                .collect();
            let mut taken: BTreeSet<String> = BTreeSet::new();
            for (seq, nhs) in ready {
                if picks.len() >= want {
                    break;
                }
                // Only the earliest deferred event of each child.
                if !taken.insert(nhs.clone()) {
                    continue;
                }
                inner.deferred.remove(&seq);
                if let Some(event) = self.store.event(seq)? {
                    let decoded = crate::errors::stored_case_event(&event)?;
                    inner
                        .pending
                        .insert(seq, self.fresh_pending(&event, nhs, stream));
                    picks.push(Pick {
                        sequence: seq,
                        attempt: 1,
                        event,
                        decoded,
                    });
                }
            }
        }
        let head = *self.head.borrow();
        // Read only what the window needs, growing the read while events
        // turn out not to be for this subscription.
        let mut chunk = 0;
        while picks.len() < want && inner.cursor <= head {
            chunk = (want - picks.len()).max(chunk * 2).min(SCAN_CHUNK);
            let events = self.store.events_from(inner.cursor, chunk)?;
            if events.is_empty() {
                inner.cursor = head + 1;
                break;
            }
            for event in events {
                if event.sequence > head || picks.len() >= want {
                    break;
                }
                inner.cursor = event.sequence + 1;
                if inner.settled_ahead.remove(&event.sequence)
                    || inner.pending.contains_key(&event.sequence)
                {
                    continue;
                }
                let decoded = crate::errors::stored_case_event(&event)?;
                if !self.eligible(rt, &inner, &event, &decoded) {
                    continue;
                }
                let nhs = decoded
                    .child
                    .as_ref()
                    .map(|c| c.nhs_number.clone())
                    .unwrap_or_default();
                if ordered && (inner.child_busy(&nhs) || inner.deferred.values().any(|n| *n == nhs))
                {
                    inner.deferred.insert(event.sequence, nhs);
                    continue;
                }
                inner
                    .pending
                    .insert(event.sequence, self.fresh_pending(&event, nhs, stream));
                picks.push(Pick {
                    sequence: event.sequence,
                    attempt: 1,
                    event,
                    decoded,
                });
            }
        }
        Ok(picks)
    }

    fn fresh_pending(&self, event: &StoredEvent, nhs_number: String, stream: u64) -> Pending {
        Pending {
            attempts: 0,
            event_id: event.event_id.clone(),
            nhs_number,
            delivered_at: Micros(0),
            stream: Some(stream),
            deadline: None,
            not_before: Instant::now(),
        }
    }

    /// Picks what the window allows and hands it to the writer to re-decide
    /// and record, without waiting for the commit: the stream's sender task
    /// (`send_in_flight`) waits for the verdicts and sends, in order, while
    /// this stream goes on reading acks and submitting the next window.
    /// Returns how many deliveries were taken from the subscription's state.
    async fn submit_fill(
        &self,
        rt: &SubRuntime,
        stream: u64,
        want: usize,
        queue: &mpsc::UnboundedSender<InFlight>,
    ) -> Result<usize, BrokerError> {
        // Held until every delivery decided here is handed to the stream
        // (the sender task drops it), so that a withdrawal or an ended
        // agreement that waits for the write side knows nothing it covers is
        // still on its way out.
        let gate = Arc::clone(&self.send_gate).read_owned().await;
        let picks = self.pick(rt, stream, want)?;
        if picks.is_empty() {
            return Ok(0);
        }
        let picked = picks.len();
        let agency = rt.subscription.agency_id.clone();
        let mut intents = Vec::with_capacity(picks.len());
        for pick in &picks {
            let context = EventContext::new(
                &pick.event.source_agency,
                &pick.event.event_type,
                &pick.decoded,
                pick.event.basis.as_ref(),
            );
            intents.push(DeliveryIntent {
                subscription_id: rt.id,
                subscription: rt.subscription.name.clone(),
                recipient: agency.clone(),
                sequence: pick.sequence,
                event_id: pick.event.event_id.clone(),
                attempt: pick.attempt,
                delivery_id: delivery_id(rt.id, pick.sequence, pick.attempt),
                context,
                notice: pick.event.notice.is_some(),
                expires_at: pick.decoded.expires_at.as_ref().map(Micros::from_timestamp),
            });
        }
        let verdicts = match self
            .writer
            .submit(|reply| Op::Deliver { intents, reply })
            .await
        {
            Ok(rx) => rx,
            Err(e) => {
                // Nothing was recorded: put the picks back as owed.
                Self::put_back(rt, &picks);
                return Err(e);
            }
        };
        // If the sender task has ended the stream is ending too; what was
        // picked is owed again when the stream's deliveries are released.
        let _ = queue.send(InFlight {
            _gate: gate,
            picks,
            verdicts,
        });
        Ok(picked)
    }

    /// Marks picked deliveries as owed again, at once.
    fn put_back(rt: &SubRuntime, picks: &[Pick]) {
        let mut inner = rt.lock();
        for pick in picks {
            if let Some(p) = inner.pending.get_mut(&pick.sequence) {
                p.stream = None;
                p.deadline = None;
            }
        }
    }

    /// A stream's sender task: takes each submitted window in order, waits
    /// for the writer's verdicts (durable by then), minimises and sends what
    /// is shared, and settles what was stopped or expired.
    async fn send_in_flight(
        self: Arc<Self>,
        rt: Arc<SubRuntime>,
        mut queue: mpsc::UnboundedReceiver<InFlight>,
        tx: crate::sendq::StreamTx,
    ) -> Result<(), BrokerError> {
        while let Some(in_flight) = queue.recv().await {
            let verdicts = match in_flight.verdicts.await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    Self::put_back(&rt, &in_flight.picks);
                    return Err(e);
                }
                Err(_) => {
                    Self::put_back(&rt, &in_flight.picks);
                    return Err(BrokerError::Unavailable(
                        "the broker's writer stopped".into(),
                    ));
                }
            };
            let open = self
                .send_verdicts(&rt, in_flight.picks, verdicts, &tx)
                .await?;
            drop(in_flight._gate);
            // Stopped or expired deliveries freed part of the window.
            rt.notify.notify_waiters();
            if !open {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Sends one window's shared deliveries and notices; returns false once
    /// the subscriber has gone.
    async fn send_verdicts(
        &self,
        rt: &SubRuntime,
        picks: Vec<Pick>,
        verdicts: Vec<Verdict>,
        tx: &crate::sendq::StreamTx,
    ) -> Result<bool, BrokerError> {
        let agency = &rt.subscription.agency_id;
        let mut sent = 0;
        let deadline = Instant::now() + rt.ack_deadline();
        let delivered_at = now();
        let mut open = true;
        for (pick, verdict) in picks.into_iter().zip(verdicts) {
            let (event, redacted, decision) = match verdict {
                Verdict::Shared(outcome) => {
                    let m = minimise(&pick.decoded, &outcome.fields).map_err(|e| {
                        tracing::error!(error = %e, "minimisation failed");
                        BrokerError::Internal(format!("minimisation failed: {e}"))
                    })?;
                    (m.event, m.redacted_fields, outcome.to_proto(agency))
                }
                Verdict::Notice => {
                    let decision = pick
                        .event
                        .decisions
                        .iter()
                        .find(|d| &d.agency_id == agency)
                        .cloned()
                        .unwrap_or_default();
                    (pick.decoded.clone(), Vec::new(), decision)
                }
                Verdict::Stopped(_) | Verdict::Expired => {
                    let mut inner = rt.lock();
                    inner.settle(pick.sequence);
                    continue;
                }
            };
            if !open {
                continue;
            }
            {
                let mut inner = rt.lock();
                if let Some(p) = inner.pending.get_mut(&pick.sequence) {
                    p.attempts = pick.attempt;
                    p.delivered_at = delivered_at;
                    p.deadline = Some(deadline);
                }
            }
            let delivery = pb::Delivery {
                delivery_id: delivery_id(rt.id, pick.sequence, pick.attempt),
                sequence: pick.sequence,
                attempt: pick.attempt,
                event: Some(event),
                source_agency: pick.event.source_agency,
                redacted_fields: redacted,
                decision: Some(decision),
                event_type: pick.event.event_type,
                published_at: Some(Micros(pick.event.published_at_micros).to_timestamp()),
                notice: pick.event.notice,
            };
            if tx.send(Ok(delivery)).await.is_err() {
                open = false;
                continue;
            }
            sent += 1;
        }
        metrics::counter!("caseshare_deliveries_sent_total").increment(sent);
        Ok(open)
    }

    fn parse_ids(rt: &SubRuntime, ids: &[String]) -> Result<Vec<u64>, BrokerError> {
        ids.iter()
            .map(|id| match parse_delivery_id(id) {
                Some((sub, seq)) if sub == rt.id => Ok(seq),
                _ => Err(BrokerError::invalid(
                    "delivery_ids",
                    format!("{id:?} is not a delivery id of this subscription"),
                )),
            })
            .collect()
    }

    /// Fills in what a pending entry loaded at start does not know.
    fn complete(&self, intent: &mut AckIntent) -> Result<(), BrokerError> {
        if (intent.event_id.is_empty() || intent.nhs_number.is_empty())
            && let Some(ev) = self.store.event(intent.sequence)?
        {
            intent.event_id = ev.event_id.clone();
            let e = crate::errors::stored_case_event(&ev)?;
            intent.nhs_number = e.child.map(|c| c.nhs_number).unwrap_or_default();
        }
        Ok(())
    }

    /// Settles acknowledged deliveries and persists them with the new floor.
    /// With `durable`, answers once the acknowledgements are committed (unary
    /// Ack); without, queues them behind this stream's earlier writes and
    /// goes on (inline acks are never confirmed to the client, and the
    /// writer's queue keeps one stream's writes in order).
    async fn ack_ids(
        &self,
        actor: &Arc<Principal>,
        rt: &SubRuntime,
        ids: &[String],
        durable: bool,
    ) -> Result<u32, BrokerError> {
        let seqs = Self::parse_ids(rt, ids)?;
        let mut acks = Vec::new();
        let floor;
        {
            let mut inner = rt.lock();
            for (seq, id) in seqs.into_iter().zip(ids) {
                if let Some(p) = inner.settle(seq) {
                    acks.push(AckIntent {
                        sequence: seq,
                        event_id: p.event_id,
                        delivery_id: id.clone(),
                        attempts: p.attempts,
                        delivered_at: p.delivered_at,
                        nhs_number: p.nhs_number,
                    });
                }
            }
            floor = inner.take_floor();
        }
        for a in &mut acks {
            self.complete(a)?;
        }
        let n = u32::try_from(acks.len()).unwrap_or(u32::MAX);
        if acks.is_empty() && floor.is_none() {
            return Ok(0);
        }
        let pending = self
            .writer
            .submit(|reply| Op::Ack {
                actor: actor.clone(),
                subscription_id: rt.id,
                subscription: rt.subscription.name.clone(),
                acks,
                floor,
                lazy: !durable,
                reply,
            })
            .await?;
        if durable {
            pending
                .await
                .map_err(|_| BrokerError::Unavailable("the broker's writer stopped".into()))??;
        }
        rt.notify.notify_waiters();
        Ok(n)
    }

    /// Makes deliveries owed again after backoff, or dead letters once they
    /// have used their attempts. `which` selects the pending entries.
    fn expire(&self, rt: &SubRuntime, mut which: impl FnMut(u64, &Pending) -> bool) -> Expired {
        let max = rt.max_attempts();
        let now_i = Instant::now();
        let mut dead = Vec::new();
        let mut inner = rt.lock();
        let chosen: Vec<u64> = inner
            .pending
            .iter()
            .filter(|(s, p)| p.stream.is_some() && which(**s, p))
            .map(|(s, _)| *s)
            .collect();
        for seq in chosen {
            let attempts = inner.pending.get(&seq).map_or(0, |p| p.attempts);
            if attempts >= max {
                if let Some(p) = inner.settle(seq) {
                    dead.push(AckIntent {
                        sequence: seq,
                        event_id: p.event_id,
                        delivery_id: delivery_id(rt.id, seq, p.attempts),
                        attempts: p.attempts,
                        delivered_at: p.delivered_at,
                        nhs_number: p.nhs_number,
                    });
                }
            } else if let Some(p) = inner.pending.get_mut(&seq) {
                p.stream = None;
                p.deadline = None;
                p.not_before = now_i + self.backoff.delay(p.attempts);
            }
        }
        let floor = if dead.is_empty() {
            None
        } else {
            inner.take_floor()
        };
        drop(inner);
        rt.notify.notify_waiters();
        Expired { dead, floor }
    }

    async fn dead_letter(&self, rt: &SubRuntime, expired: Expired) -> Result<(), BrokerError> {
        if expired.dead.is_empty() {
            return Ok(());
        }
        let mut dead = expired.dead;
        for d in &mut dead {
            self.complete(d)?;
        }
        metrics::counter!("caseshare_dead_letters_total").increment(dead.len() as u64);
        self.writer
            .call(|reply| Op::DeadLetter {
                subscription_id: rt.id,
                subscription: rt.subscription.name.clone(),
                recipient: rt.subscription.agency_id.clone(),
                items: dead,
                floor: expired.floor,
                reply,
            })
            .await
    }

    async fn nack_ids(&self, rt: &SubRuntime, ids: &[String]) -> Result<u32, BrokerError> {
        let seqs: BTreeSet<u64> = Self::parse_ids(rt, ids)?.into_iter().collect();
        let mut n = 0;
        let expired = self.expire(rt, |s, _| {
            let hit = seqs.contains(&s);
            n += u32::from(hit);
            hit
        });
        self.dead_letter(rt, expired).await?;
        Ok(n)
    }

    /// Unary Ack.
    pub async fn ack(
        &self,
        actor: &Arc<Principal>,
        name: &str,
        ids: &[String],
    ) -> Result<u32, BrokerError> {
        let rt = self.runtime(&actor.name, name)?;
        self.ack_ids(actor, &rt, ids, true).await
    }

    /// Unary Nack.
    pub async fn nack(
        &self,
        actor: &Principal,
        name: &str,
        ids: &[String],
    ) -> Result<u32, BrokerError> {
        let rt = self.runtime(&actor.name, name)?;
        self.nack_ids(&rt, ids).await
    }

    /// Moves a subscription's cursor to `target` (a sequence); everything
    /// from there is considered again, re-decided under today's rules.
    pub async fn seek(
        &self,
        actor: &Arc<Principal>,
        name: &str,
        target: u64,
    ) -> Result<u64, BrokerError> {
        let rt = self.runtime(&actor.name, name)?;
        let target = target.max(rt.subscription.start_sequence);
        self.writer
            .call(|reply| Op::Seek {
                actor: actor.clone(),
                subscription_id: rt.id,
                subscription: rt.subscription.name.clone(),
                target,
                reply,
            })
            .await?;
        {
            let mut inner = rt.lock();
            inner.replay_until = inner.replay_until.max(inner.cursor);
            inner.cursor = target;
            inner.pending.retain(|s, _| *s < target);
            inner.deferred.retain(|s, _| *s < target);
            inner.settled_ahead.clear();
            inner.persisted_floor = inner.floor();
        }
        rt.notify.notify_waiters();
        Ok(target)
    }

    /// Dead letters of one of `agency`'s subscriptions.
    pub fn dead_letters(
        &self,
        agency: &str,
        name: &str,
        from: u64,
        max: usize,
    ) -> Result<Vec<pb::DeadLetter>, BrokerError> {
        let rt = self.runtime(agency, name)?;
        let records =
            self.store
                .deliveries_in_state(rt.id, DeliveryState::DeadLettered, from, max)?;
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let event = self.store.event(r.sequence)?;
            out.push(pb::DeadLetter {
                delivery_id: delivery_id(rt.id, r.sequence, r.attempts),
                sequence: r.sequence,
                event_id: event
                    .as_ref()
                    .map(|e| e.event_id.clone())
                    .unwrap_or_default(),
                event_type: event
                    .as_ref()
                    .map(|e| e.event_type.clone())
                    .unwrap_or_default(),
                attempts: r.attempts,
                dead_lettered_at: Some(Micros(r.settled_at_micros).to_timestamp()),
            });
        }
        Ok(out)
    }

    /// Puts dead letters back for delivery (all of them when `ids` is empty).
    pub async fn replay_dead_letters(
        &self,
        actor: &Arc<Principal>,
        name: &str,
        ids: &[String],
    ) -> Result<u32, BrokerError> {
        let rt = self.runtime(&actor.name, name)?;
        let wanted: Option<BTreeSet<u64>> = if ids.is_empty() {
            None
        } else {
            Some(Self::parse_ids(&rt, ids)?.into_iter().collect())
        };
        let seqs: Vec<u64> = self
            .store
            .deliveries_in_state(rt.id, DeliveryState::DeadLettered, 0, usize::MAX)?
            .into_iter()
            .map(|r| r.sequence)
            .filter(|s| wanted.as_ref().is_none_or(|w| w.contains(s)))
            .collect();
        if seqs.is_empty() {
            return Ok(0);
        }
        let floor = {
            let inner = rt.lock();
            seqs.iter().copied().min().map(|m| m.min(inner.floor()))
        };
        self.writer
            .call(|reply| Op::Replay {
                actor: actor.clone(),
                subscription_id: rt.id,
                subscription: rt.subscription.name.clone(),
                sequences: seqs.clone(),
                floor,
                reply,
            })
            .await?;
        {
            let mut inner = rt.lock();
            let now_i = Instant::now();
            for s in &seqs {
                inner.pending.insert(
                    *s,
                    Pending {
                        attempts: 0,
                        event_id: String::new(),
                        nhs_number: String::new(),
                        delivered_at: Micros(0),
                        stream: None,
                        deadline: None,
                        not_before: now_i,
                    },
                );
            }
            if let Some(f) = floor {
                inner.persisted_floor = f;
            }
        }
        rt.notify.notify_waiters();
        Ok(u32::try_from(seqs.len()).unwrap_or(u32::MAX))
    }

    /// Starts a stream for `name`; the returned receiver yields deliveries.
    #[allow(clippy::too_many_arguments)]
    pub fn open_stream(
        self: &Arc<Self>,
        actor: Arc<Principal>,
        name: &str,
        max_outstanding: u32,
        inbound: tonic::Streaming<pb::SubscribeRequest>,
        slot: crate::limits::StreamSlot,
        idle: Duration,
        budget: &Arc<crate::sendq::QueueBudget>,
    ) -> Result<crate::sendq::StreamRx, BrokerError> {
        let rt = self.runtime(&actor.name, name)?;
        let window = if max_outstanding == 0 {
            100
        } else {
            max_outstanding
        };
        if window > self.max_outstanding {
            return Err(BrokerError::ResourceExhausted(format!(
                "max_outstanding {window} exceeds the broker's limit of {} (limits.max_outstanding)",
                self.max_outstanding
            )));
        }
        let (tx, rx) = budget.channel(&actor.name, window as usize + 1);
        let this = Arc::clone(self);
        tokio::spawn(async move {
            // Held for the stream's life: counts against the per-principal cap.
            let _slot = slot;
            let stream = this
                .next_stream
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            metrics::gauge!("caseshare_subscribe_streams").increment(1.0);
            let result = this
                .run_stream(&actor, &rt, stream, window as usize, inbound, &tx, idle)
                .await;
            // Whatever was out on this stream is owed again, at once.
            {
                let mut inner = rt.lock();
                let now_i = Instant::now();
                for p in inner
                    .pending
                    .values_mut()
                    .filter(|p| p.stream == Some(stream))
                {
                    p.stream = None;
                    p.deadline = None;
                    p.not_before = now_i;
                }
            }
            rt.notify.notify_waiters();
            metrics::gauge!("caseshare_subscribe_streams").decrement(1.0);
            if let Err(e) = result {
                let _ = tx.send(Err(e.into())).await;
            }
        });
        Ok(rx)
    }

    /// Runs one stream: the loop that reads acks and submits windows, and
    /// the sender task that sends them once durable. Returns when the
    /// subscriber goes, the subscription is deleted, the stream idles out,
    /// or the broker shuts down; by then every submitted window has been
    /// sent or put back.
    #[allow(clippy::too_many_arguments)]
    async fn run_stream(
        self: &Arc<Self>,
        actor: &Arc<Principal>,
        rt: &Arc<SubRuntime>,
        stream: u64,
        window: usize,
        inbound: tonic::Streaming<pb::SubscribeRequest>,
        tx: &crate::sendq::StreamTx,
        idle: Duration,
    ) -> Result<(), BrokerError> {
        let (queue, queue_rx) = mpsc::unbounded_channel();
        let mut sender =
            tokio::spawn(Arc::clone(self).send_in_flight(Arc::clone(rt), queue_rx, tx.clone()));
        let result = self
            .stream_loop(
                actor,
                rt,
                stream,
                window,
                inbound,
                tx,
                idle,
                &queue,
                &mut sender,
            )
            .await;
        drop(queue);
        match result {
            StreamEnd::Sender(r) => r,
            StreamEnd::Loop(r) => {
                let sent = (&mut sender).await.unwrap_or_else(|e| {
                    Err(BrokerError::Unavailable(format!(
                        "a delivery stream's sender failed: {e}"
                    )))
                });
                r.and(sent)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn stream_loop(
        &self,
        actor: &Arc<Principal>,
        rt: &Arc<SubRuntime>,
        stream: u64,
        window: usize,
        mut inbound: tonic::Streaming<pb::SubscribeRequest>,
        tx: &crate::sendq::StreamTx,
        idle: Duration,
        queue: &mpsc::UnboundedSender<InFlight>,
        sender: &mut tokio::task::JoinHandle<Result<(), BrokerError>>,
    ) -> StreamEnd {
        let mut last_activity = Instant::now();
        let mut head = self.head.clone();
        let mut shutdown = self.shutdown.clone();
        loop {
            let notified = rt.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            head.borrow_and_update();
            let (out, unsent, wake) = {
                let inner = rt.lock();
                if inner.deleted {
                    return StreamEnd::Loop(Err(BrokerError::NotFound(
                        "the subscription was deleted".into(),
                    )));
                }
                let (mut count, mut unsent) = (0, 0);
                let mut wake: Option<Instant> = None;
                let mut earliest = |t: Instant| wake = Some(wake.map_or(t, |w: Instant| w.min(t)));
                for p in inner.pending.values() {
                    if p.stream == Some(stream) {
                        count += 1;
                        match p.deadline {
                            Some(d) => earliest(d),
                            None => unsent += 1,
                        }
                    } else if p.stream.is_none() {
                        earliest(p.not_before);
                    }
                }
                (count, unsent, wake)
            };
            // The send queue's byte bound limits what is picked (`sendq`).
            let want = window.saturating_sub(out).min(tx.room(unsent));
            let queue_full = want < window.saturating_sub(out) && tx.above_half();
            if want > 0 {
                let taken = match self.submit_fill(rt, stream, want, queue).await {
                    Ok(n) => n,
                    Err(e) => return StreamEnd::Loop(Err(e)),
                };
                if tx.is_closed() {
                    return StreamEnd::Loop(Ok(()));
                }
                if taken > 0 {
                    last_activity = Instant::now();
                    continue;
                }
            }
            let sleep = tokio::time::sleep_until(
                wake.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)),
            );
            let idle_at = tokio::time::sleep_until(last_activity + idle);
            let step: Result<bool, BrokerError> = tokio::select! {
                _ = idle_at => Err(BrokerError::ResourceExhausted(format!(
                    "the stream was idle for {} s (limits.idle_stream_timeout_secs)",
                    idle.as_secs()
                ))),
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => {
                        last_activity = Instant::now();
                        self.settle_inbound(actor, rt, req, &mut inbound).await
                    }
                    Err(status) => BrokerError::from_decode_status(&status).map_or(Ok(false), Err),
                    Ok(None) => Ok(false),
                },
                _ = &mut notified => Ok(true),
                _ = head.changed() => Ok(true),
                _ = sleep => {
                    // Deliveries past their ack deadline are owed again
                    // after backoff, or dead-lettered.
                    let now_i = Instant::now();
                    let expired = self.expire(rt, |_, p| p.stream == Some(stream) && p.deadline.is_some_and(|d| d <= now_i));
                    self.dead_letter(rt, expired).await.map(|()| true)
                },
                _ = shutdown.changed() => Err(BrokerError::Unavailable("the broker is shutting down".into())),
                _ = tx.closed() => Ok(false),
                _ = tx.wait_for_room(), if queue_full => Ok(true),
                done = &mut *sender => {
                    return StreamEnd::Sender(done.unwrap_or_else(|e| {
                        Err(BrokerError::Unavailable(format!("a delivery stream's sender failed: {e}")))
                    }));
                }
            };
            match step {
                Ok(true) => {}
                Ok(false) => return StreamEnd::Loop(Ok(())),
                Err(e) => return StreamEnd::Loop(Err(e)),
            }
        }
    }

    /// Settles one inbound message and every further one already queued
    /// (their acks go to the writer as one op). Returns false once the
    /// subscriber has closed its side.
    async fn settle_inbound(
        &self,
        actor: &Arc<Principal>,
        rt: &SubRuntime,
        first: pb::SubscribeRequest,
        inbound: &mut tonic::Streaming<pb::SubscribeRequest>,
    ) -> Result<bool, BrokerError> {
        /// Acks gathered into one writer op at most.
        const MAX_GATHERED_ACKS: usize = 8_192;
        let mut acks: Vec<String> = Vec::new();
        let mut next = Some(first);
        let mut open = true;
        while let Some(req) = next.take() {
            crate::services::bounded(&req)?;
            if let Some(ack) = req.ack {
                acks.extend(ack.delivery_ids);
            }
            if let Some(nack) = req.nack {
                self.nack_ids(rt, &nack.delivery_ids).await?;
            }
            if acks.len() >= MAX_GATHERED_ACKS {
                break;
            }
            // `message()` is cancel-safe: an unfinished message stays
            // buffered in the stream.
            match inbound.message().now_or_never() {
                Some(Ok(Some(req))) => next = Some(req),
                Some(Err(status)) => {
                    if let Some(invalid) = BrokerError::from_decode_status(&status) {
                        return Err(invalid);
                    }
                    open = false;
                }
                Some(Ok(None)) => open = false,
                None => {}
            }
        }
        if !acks.is_empty() {
            self.ack_ids(actor, rt, &acks, false).await?;
        }
        Ok(open)
    }
}

/// Why a stream's loop ended.
enum StreamEnd {
    /// The loop ended (the sender task is still to be waited for).
    Loop(Result<(), BrokerError>),
    /// The sender task ended first, with this result.
    Sender(Result<(), BrokerError>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_ids_round_trip() {
        assert_eq!(parse_delivery_id(&delivery_id(3, 99, 2)), Some((3, 99)));
        for bad in ["", "1-2", "a-2-3", "1-2-3-4", "1--3"] {
            assert_eq!(parse_delivery_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        let got: Vec<u128> = (1..=6).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1));
    }
}
