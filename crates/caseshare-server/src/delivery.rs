//! The delivery engine: per subscription, a cursor over the event log and
//! the set of deliveries sent but not yet acknowledged; per `Subscribe`
//! stream, a loop that fills the flow-control window from that state, has
//! the writer re-decide and record each delivery, and sends it.
//!
//! Backlog stays on disk: a subscription holds in memory only its cursor
//! and its unacknowledged deliveries (at most `max_outstanding` per
//! stream), however far behind it is.
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
use prost::Message;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tonic::Status;

use crate::errors::BrokerError;
use crate::state::{BrokerState, EventContext, subscription_matches};
use crate::writer::{AckIntent, DeliveryIntent, Op, Writer, now};

/// How many events one scan of the log reads.
const SCAN_CHUNK: usize = 256;

/// A delivery sent (or owed again) and not yet settled.
#[derive(Debug, Clone)]
struct Pending {
    attempts: u32,
    event_id: String,
    nhs_number: String,
    delivered_at: Micros,
    delivery_id: String,
    /// The stream it is out on; `None` = waiting to be sent again.
    stream: Option<u64>,
    deadline: Option<Instant>,
}

#[derive(Debug)]
struct SubInner {
    /// The next sequence to read from the log.
    cursor: u64,
    /// Unsettled deliveries by sequence.
    pending: BTreeMap<u64, Pending>,
    /// Sequences at or after the cursor already settled (known at start).
    settled_ahead: BTreeSet<u64>,
    /// The floor last sent to the store.
    persisted_floor: u64,
    deleted: bool,
}

impl SubInner {
    fn floor(&self) -> u64 {
        self.pending
            .keys()
            .next()
            .copied()
            .unwrap_or(self.cursor)
            .min(self.cursor)
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
}

fn delivery_id(subscription_id: u64, sequence: u64, attempt: u32) -> String {
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
}

impl Deliveries {
    /// Builds runtimes for every stored subscription.
    pub fn new(
        store: Arc<dyn Storage>,
        writer: Writer,
        state: Arc<RwLock<BrokerState>>,
        head: watch::Receiver<u64>,
        shutdown: watch::Receiver<bool>,
        floors: &[(u64, u64)],
        max_outstanding: u32,
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
                        delivery_id: String::new(),
                        stream: None,
                        deadline: None,
                    },
                );
            }
        }
        // Everything owed is at or after the floor; resume reading there,
        // skipping what is already pending or settled.
        let rt = Arc::new(SubRuntime {
            id: rec.id,
            subscription: sub,
            inner: Mutex::new(SubInner {
                cursor: floor,
                pending,
                settled_ahead,
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

    fn runtime(&self, agency: &str, name: &str) -> Result<Arc<SubRuntime>, BrokerError> {
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

    /// Takes up to `want` deliveries for a stream: owed ones first (lowest
    /// sequence), then new ones from the log. Each is marked as out on the
    /// stream before the lock is released.
    fn pick(&self, rt: &SubRuntime, stream: u64, want: usize) -> Result<Vec<Pick>, BrokerError> {
        let mut picks = Vec::new();
        let mut inner = rt.lock();
        if inner.deleted {
            return Ok(picks);
        }
        let owed: Vec<u64> = inner
            .pending
            .iter()
            .filter(|(_, p)| p.stream.is_none())
            .map(|(s, _)| *s)
            .take(want)
            .collect();
        for seq in owed {
            match self.store.event(seq)? {
                Some(event) => {
                    if let Some(p) = inner.pending.get_mut(&seq) {
                        p.stream = Some(stream);
                        p.deadline = None;
                        picks.push(Pick {
                            sequence: seq,
                            attempt: p.attempts + 1,
                            event,
                        });
                    }
                }
                // The event is gone (retention): nothing left to deliver.
                None => {
                    inner.pending.remove(&seq);
                }
            }
        }
        let head = *self.head.borrow();
        let agency = rt.subscription.agency_id.as_str();
        while picks.len() < want && inner.cursor <= head {
            let events = self.store.events_from(inner.cursor, SCAN_CHUNK)?;
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
                let shared = event.source_agency != agency
                    && event.sequence >= rt.subscription.start_sequence
                    && event.decisions.iter().any(|d| {
                        d.agency_id == agency && d.decision == pb::Decision::Shared as i32
                    });
                if !shared {
                    continue;
                }
                let purpose = pb::CaseEvent::decode(event.event.as_slice())
                    .ok()
                    .and_then(|e| pb::Purpose::try_from(e.purpose).ok())
                    .unwrap_or(pb::Purpose::Unspecified);
                if !subscription_matches(&rt.subscription, &event.event_type, purpose) {
                    continue;
                }
                inner.pending.insert(
                    event.sequence,
                    Pending {
                        attempts: 0,
                        event_id: event.event_id.clone(),
                        nhs_number: String::new(),
                        delivered_at: Micros(0),
                        delivery_id: String::new(),
                        stream: Some(stream),
                        deadline: None,
                    },
                );
                picks.push(Pick {
                    sequence: event.sequence,
                    attempt: 1,
                    event,
                });
            }
        }
        Ok(picks)
    }

    /// Sends what the window allows; returns how many were sent.
    async fn fill(
        &self,
        rt: &SubRuntime,
        stream: u64,
        want: usize,
        tx: &mpsc::Sender<Result<pb::Delivery, Status>>,
    ) -> Result<usize, BrokerError> {
        let picks = self.pick(rt, stream, want)?;
        if picks.is_empty() {
            return Ok(0);
        }
        let agency = rt.subscription.agency_id.clone();
        let mut decoded = Vec::with_capacity(picks.len());
        let mut intents = Vec::with_capacity(picks.len());
        for pick in picks {
            let event = pb::CaseEvent::decode(pick.event.event.as_slice()).unwrap_or_default();
            let context = EventContext::new(
                &pick.event.source_agency,
                &pick.event.event_type,
                &event,
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
            });
            decoded.push((pick, event));
        }
        let outcomes = match self
            .writer
            .call(|reply| Op::Deliver {
                intents: intents.clone(),
                reply,
            })
            .await
        {
            Ok(o) => o,
            Err(e) => {
                // Nothing was recorded: put the picks back as owed.
                let mut inner = rt.lock();
                for intent in &intents {
                    if let Some(p) = inner.pending.get_mut(&intent.sequence) {
                        p.stream = None;
                    }
                }
                return Err(e);
            }
        };
        let mut sent = 0;
        let deadline = Instant::now() + rt.ack_deadline();
        let delivered_at = now();
        for (((pick, event), intent), outcome) in decoded.into_iter().zip(intents).zip(outcomes) {
            if !outcome.is_shared() {
                rt.lock().pending.remove(&pick.sequence);
                continue;
            }
            let minimised = minimise(&event, &outcome.fields).map_err(|e| {
                tracing::error!(error = %e, "minimisation failed");
                BrokerError::Unavailable("minimisation failed".into())
            })?;
            {
                let mut inner = rt.lock();
                if let Some(p) = inner.pending.get_mut(&pick.sequence) {
                    p.attempts = pick.attempt;
                    p.event_id = pick.event.event_id.clone();
                    p.nhs_number = intent.context.nhs_number.clone();
                    p.delivered_at = delivered_at;
                    p.delivery_id = intent.delivery_id.clone();
                    p.deadline = Some(deadline);
                }
            }
            let delivery = pb::Delivery {
                delivery_id: intent.delivery_id,
                sequence: pick.sequence,
                attempt: pick.attempt,
                event: Some(minimised.event),
                source_agency: pick.event.source_agency.clone(),
                redacted_fields: minimised.redacted_fields,
                decision: Some(outcome.to_proto(&agency)),
                event_type: pick.event.event_type.clone(),
                published_at: Some(Micros(pick.event.published_at_micros).to_timestamp()),
                notice: None,
            };
            if tx.send(Ok(delivery)).await.is_err() {
                break;
            }
            sent += 1;
        }
        Ok(sent)
    }

    /// Settles acknowledged deliveries and persists them with the new floor.
    async fn ack_ids(
        &self,
        actor: &Arc<Principal>,
        rt: &SubRuntime,
        ids: &[String],
    ) -> Result<u32, BrokerError> {
        let mut acks = Vec::new();
        let mut missing_info = Vec::new();
        let floor;
        {
            let mut inner = rt.lock();
            for id in ids {
                let Some((sub, seq)) = parse_delivery_id(id) else {
                    return Err(BrokerError::invalid(
                        "delivery_ids",
                        format!("{id:?} is not a delivery id"),
                    ));
                };
                if sub != rt.id {
                    return Err(BrokerError::invalid(
                        "delivery_ids",
                        format!("{id:?} does not belong to this subscription"),
                    ));
                }
                if let Some(p) = inner.pending.remove(&seq) {
                    if p.event_id.is_empty() {
                        missing_info.push(acks.len());
                    }
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
            let f = inner.floor();
            floor = (f != inner.persisted_floor).then_some(f);
            if let Some(f) = floor {
                inner.persisted_floor = f;
            }
        }
        for i in missing_info {
            if let Some(ev) = self.store.event(acks[i].sequence)? {
                acks[i].event_id = ev.event_id.clone();
                if let Ok(e) = pb::CaseEvent::decode(ev.event.as_slice()) {
                    acks[i].nhs_number = e.child.map(|c| c.nhs_number).unwrap_or_default();
                }
            }
        }
        let n = u32::try_from(acks.len()).unwrap_or(u32::MAX);
        if acks.is_empty() && floor.is_none() {
            return Ok(0);
        }
        self.writer
            .call(|reply| Op::Ack {
                actor: actor.clone(),
                subscription_id: rt.id,
                subscription: rt.subscription.name.clone(),
                acks,
                floor,
                reply,
            })
            .await?;
        rt.notify.notify_waiters();
        Ok(n)
    }

    fn nack_ids(&self, rt: &SubRuntime, ids: &[String]) -> Result<u32, BrokerError> {
        let mut n = 0;
        let mut inner = rt.lock();
        for id in ids {
            let Some((_, seq)) = parse_delivery_id(id).filter(|(sub, _)| *sub == rt.id) else {
                return Err(BrokerError::invalid(
                    "delivery_ids",
                    format!("{id:?} is not a delivery id of this subscription"),
                ));
            };
            if let Some(p) = inner.pending.get_mut(&seq) {
                p.stream = None;
                p.deadline = None;
                n += 1;
            }
        }
        drop(inner);
        rt.notify.notify_waiters();
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
        self.ack_ids(actor, &rt, ids).await
    }

    /// Unary Nack.
    pub fn nack(&self, actor: &Principal, name: &str, ids: &[String]) -> Result<u32, BrokerError> {
        let rt = self.runtime(&actor.name, name)?;
        self.nack_ids(&rt, ids)
    }

    /// Starts a stream for `name`; the returned receiver yields deliveries.
    pub fn open_stream(
        self: &Arc<Self>,
        actor: Arc<Principal>,
        name: &str,
        max_outstanding: u32,
        inbound: tonic::Streaming<pb::SubscribeRequest>,
    ) -> Result<mpsc::Receiver<Result<pb::Delivery, Status>>, BrokerError> {
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
        let (tx, rx) = mpsc::channel(window as usize + 1);
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let stream = this
                .next_stream
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            metrics::gauge!("caseshare_subscribe_streams").increment(1.0);
            let result = this
                .run_stream(&actor, &rt, stream, window as usize, inbound, &tx)
                .await;
            // Whatever was out on this stream is owed again.
            {
                let mut inner = rt.lock();
                for p in inner
                    .pending
                    .values_mut()
                    .filter(|p| p.stream == Some(stream))
                {
                    p.stream = None;
                    p.deadline = None;
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

    async fn run_stream(
        &self,
        actor: &Arc<Principal>,
        rt: &Arc<SubRuntime>,
        stream: u64,
        window: usize,
        mut inbound: tonic::Streaming<pb::SubscribeRequest>,
        tx: &mpsc::Sender<Result<pb::Delivery, Status>>,
    ) -> Result<(), BrokerError> {
        let mut head = self.head.clone();
        let mut shutdown = self.shutdown.clone();
        loop {
            let notified = rt.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            head.borrow_and_update();
            if rt.lock().deleted {
                return Err(BrokerError::NotFound("the subscription was deleted".into()));
            }
            let (out, next_deadline) = {
                let inner = rt.lock();
                let mine = inner.pending.values().filter(|p| p.stream == Some(stream));
                let mut count = 0;
                let mut next: Option<Instant> = None;
                for p in mine {
                    count += 1;
                    if let Some(d) = p.deadline {
                        next = Some(next.map_or(d, |n: Instant| n.min(d)));
                    }
                }
                (count, next)
            };
            if out < window {
                let sent = self.fill(rt, stream, window - out, tx).await?;
                if tx.is_closed() {
                    return Ok(());
                }
                if sent > 0 {
                    continue;
                }
            }
            let sleep = tokio::time::sleep_until(
                next_deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)),
            );
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => {
                        if let Some(ack) = req.ack {
                            self.ack_ids(actor, rt, &ack.delivery_ids).await?;
                        }
                        if let Some(nack) = req.nack {
                            self.nack_ids(rt, &nack.delivery_ids)?;
                        }
                    }
                    Ok(None) | Err(_) => return Ok(()),
                },
                _ = &mut notified => {},
                _ = head.changed() => {},
                _ = sleep => {
                    // Deliveries past their ack deadline are owed again.
                    let now = Instant::now();
                    let mut inner = rt.lock();
                    for p in inner.pending.values_mut() {
                        if p.stream == Some(stream) && p.deadline.is_some_and(|d| d <= now) {
                            p.stream = None;
                            p.deadline = None;
                        }
                    }
                },
                _ = shutdown.changed() => return Err(BrokerError::Unavailable("the broker is shutting down".into())),
                _ = tx.closed() => return Ok(()),
            }
        }
    }
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
}
