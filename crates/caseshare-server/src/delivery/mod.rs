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
//!   flight; a child's later events wait (deferred) while other children's
//!   events flow on.
//! - **Backlog stays on disk.** A subscription holds in memory only its
//!   cursor, its unsettled deliveries (at most `max_outstanding` per stream
//!   in flight) and, for ordered subscriptions, the deliveries deferred
//!   behind a busy child.
//! - **Seek** moves the cursor back (or forward); events from there are
//!   re-decided under today's rules.
//!
//! The parts:
//! - `caseshare_state::delivery`: one delivery's states and the one
//!   transition function, `step` (pure, tested as a table).
//! - `registry`: subscriptions at runtime, their unsettled deliveries
//!   (changed only through `SubInner::apply`, which calls `step`), cursors
//!   and floors.
//! - `pick`: what a stream takes next, read from the log off the lock and
//!   off the async workers.
//! - `sender`: the writer's re-decision of each window and the sender task.
//! - `settle`: acks, nacks, ack deadlines, dead letters.
//! - `stream`: the stream driver ([`Deliveries::open_stream`]).
//! - `tail`: streams waiting at the head, fed by the writer in the commit
//!   that stores the events ([`Tailing`]).
//! - this module: the engine's handle and its operator-facing operations
//!   (seek, dead letters).

mod pick;
mod registry;
mod sender;
mod settle;
mod stream;
mod tail;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use caseshare_core::pb;
use caseshare_core::principal::Principal;
use caseshare_core::time::Micros;
use caseshare_state::BrokerState;
use caseshare_state::delivery::{delivery_id, parse_delivery_id};
use caseshare_store::{DeliveryRecord, DeliveryState, Storage, SubscriptionRecord};
use tokio::sync::watch;

use crate::errors::BrokerError;
use crate::writer::{Op, Writer};
use pick::LogReader;
use registry::{Clock, SubInner, loaded, policy};

pub use caseshare_state::delivery::Backoff;
pub use registry::SubRuntime;
pub use stream::OpenStream;
pub use tail::Tailing;

/// What the delivery engine is built from.
pub struct Parts {
    /// The store (events, delivery records).
    pub store: Arc<dyn Storage>,
    /// The writer.
    pub writer: Writer,
    /// The configuration state.
    pub state: Arc<RwLock<BrokerState>>,
    /// The last committed event sequence.
    pub head: watch::Receiver<u64>,
    /// Set when the broker shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// The broker's limit on a stream's window (`limits.max_outstanding`).
    pub max_outstanding: u32,
    /// Redelivery backoff.
    pub backoff: Backoff,
    /// Where streams waiting at the head park (the embedded writer offers
    /// it each batch's new events); it holds the send gate, held for
    /// reading by every window between its decision and its send (see
    /// [`Deliveries::drain_in_flight_sends`]).
    pub tail: Arc<Tailing>,
}

/// Every subscription's runtime, and what streams need to serve them.
pub struct Deliveries {
    store: Arc<dyn Storage>,
    writer: Writer,
    state: Arc<RwLock<BrokerState>>,
    head: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
    reader: LogReader,
    clock: Clock,
    runtimes: RwLock<HashMap<u64, Arc<SubRuntime>>>,
    next_stream: AtomicU64,
    max_outstanding: u32,
    backoff: Backoff,
    /// The parked streams; it holds the send gate.
    tail: Arc<Tailing>,
    /// `caseshare_delivery_latency_seconds`, looked up once rather than
    /// per delivery (made after the process's recorder is installed).
    latency: metrics::Histogram,
}

impl std::fmt::Debug for Deliveries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliveries").finish_non_exhaustive()
    }
}

impl Deliveries {
    /// Builds runtimes for every stored subscription; `floors` are the
    /// persisted floors (subscription id, floor).
    pub fn new(parts: Parts, floors: &[(u64, u64)]) -> Result<Arc<Self>, BrokerError> {
        let d = Arc::new(Deliveries {
            reader: LogReader::new(parts.store.clone(), parts.state.clone(), parts.head.clone()),
            store: parts.store,
            writer: parts.writer,
            state: parts.state,
            head: parts.head,
            shutdown: parts.shutdown,
            clock: parts.tail.clock,
            runtimes: RwLock::new(HashMap::new()),
            next_stream: AtomicU64::new(1),
            max_outstanding: parts.max_outstanding,
            backoff: parts.backoff,
            tail: parts.tail,
            latency: metrics::histogram!("caseshare_delivery_latency_seconds"),
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

    /// Adds a runtime for a loaded subscription (at start): its unsettled
    /// deliveries from the floor up are owed at once.
    pub fn add(&self, rec: SubscriptionRecord, floor: Option<u64>) -> Result<(), BrokerError> {
        let Some(start) = rec.subscription.as_ref().map(|s| s.start_sequence) else {
            return Ok(());
        };
        let floor = floor.unwrap_or(start).max(start);
        let records = self.store.deliveries_from(rec.id, floor)?;
        self.insert(rec, floor, records);
        Ok(())
    }

    /// Adds the runtime of a subscription just created, reading its
    /// delivery records (none, unless its id was used before) on the
    /// blocking pool.
    pub async fn add_created(&self, rec: SubscriptionRecord) -> Result<(), BrokerError> {
        let Some(start) = rec.subscription.as_ref().map(|s| s.start_sequence) else {
            return Ok(());
        };
        let id = rec.id;
        let records = self
            .blocking(move |store| Ok(store.deliveries_from(id, start)?))
            .await?;
        self.insert(rec, start, records);
        Ok(())
    }

    fn insert(&self, rec: SubscriptionRecord, floor: u64, records: Vec<DeliveryRecord>) {
        let Some(sub) = rec.subscription else {
            return;
        };
        let mut pending = BTreeMap::new();
        let mut settled_ahead = BTreeSet::new();
        let now = self.clock.now();
        for d in records {
            if d.is_settled() {
                settled_ahead.insert(d.sequence);
            } else if d.state() == DeliveryState::Delivered {
                pending.insert(
                    d.sequence,
                    loaded(d.attempts, Micros(d.delivered_at_micros), now),
                );
            }
        }
        let inner = SubInner::new(floor, pending, settled_ahead, policy(&sub, self.backoff));
        let rt = Arc::new(SubRuntime::new(rec.id, sub, inner));
        self.runtimes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(rec.id, rt);
    }

    /// Removes a deleted subscription's runtime: its deliveries are dropped
    /// and its streams end.
    pub fn remove(&self, id: u64) {
        if let Some(rt) = self
            .runtimes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
        {
            {
                let now = self.clock.now();
                let mut inner = rt.lock();
                inner.deleted = true;
                inner.epoch += 1;
                inner.drop_from(0, now);
            }
            rt.notify.notify_waiters();
        }
    }

    /// Waits until every delivery decided before now has been handed to its
    /// stream (see `sender`).
    pub async fn drain_in_flight_sends(&self) {
        drop(self.tail.send_gate.write().await);
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

    /// Every subscription's figures for the metrics (see `ops::gauges`):
    /// each lock held only to count.
    pub fn figures(&self) -> Vec<crate::ops::gauges::SubFigures> {
        use std::sync::atomic::Ordering::Relaxed;
        let head = *self.head.borrow();
        let runtimes: Vec<Arc<SubRuntime>> = self
            .runtimes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        runtimes
            .into_iter()
            .map(|rt| {
                let (floor, backlog) = {
                    let inner = rt.lock();
                    (inner.floor(), inner.backlog(head))
                };
                crate::ops::gauges::SubFigures {
                    id: rt.id,
                    agency: rt.subscription.agency_id.clone(),
                    name: rt.subscription.name.clone(),
                    floor,
                    owes: floor <= head,
                    backlog,
                    dead_letters: rt.dead_letters.load(Relaxed),
                    redeliveries: rt.redeliveries.load(Relaxed),
                }
            })
            .collect()
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

    /// Runs a store read on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        read: impl FnOnce(&dyn Storage) -> Result<T, BrokerError> + Send + 'static,
    ) -> Result<T, BrokerError> {
        let store = Arc::clone(&self.store);
        crate::off_runtime(move || read(&*store)).await
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
        Self::seek_runtime(&rt, target, self.clock.now());
        Ok(target)
    }

    fn seek_runtime(rt: &SubRuntime, target: u64, now: Micros) {
        rt.lock().seek(target, now);
        rt.notify.notify_waiters();
    }

    fn replay_runtime(rt: &SubRuntime, seqs: &[u64], floor: Option<u64>, now: Micros) {
        {
            let mut inner = rt.lock();
            for s in seqs {
                let _ = inner.replay(*s, now);
            }
            if let Some(f) = floor {
                inner.persisted_floor = f;
            }
        }
        rt.notify.notify_waiters();
    }

    fn runtime_by_id(&self, id: u64) -> Option<Arc<SubRuntime>> {
        self.runtimes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Cluster mode: follows a seek made through another replica.
    pub fn follow_seek(&self, id: u64, target: u64) {
        if let Some(rt) = self.runtime_by_id(id) {
            Self::seek_runtime(&rt, target, self.clock.now());
        }
    }

    /// Cluster mode: follows dead letters put back through another replica.
    pub fn follow_replay(&self, id: u64, seqs: &[u64], floor: Option<u64>) {
        if let Some(rt) = self.runtime_by_id(id) {
            Self::replay_runtime(&rt, seqs, floor, self.clock.now());
        }
    }

    /// The first stored event published at or after `t` (binary search
    /// over sequences; publish times follow sequence order), read on the
    /// blocking pool.
    pub async fn first_sequence_at(&self, t: Micros) -> Result<u64, BrokerError> {
        let end = self.head() + 1;
        self.blocking(move |store| {
            let first = match store.events_from(0, 1)?.first() {
                Some(e) => e.sequence,
                None => return Ok(1),
            };
            let (mut lo, mut hi) = (first, end);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                match store.events_from(mid, 1)?.first() {
                    Some(e) if e.published_at_micros < t.0 => lo = e.sequence + 1,
                    _ => hi = mid,
                }
            }
            Ok(lo)
        })
        .await
    }

    /// Dead letters of one of `agency`'s subscriptions.
    pub async fn dead_letters(
        &self,
        agency: &str,
        name: &str,
        from: u64,
        max: usize,
    ) -> Result<Vec<pb::DeadLetter>, BrokerError> {
        let rt = self.runtime(agency, name)?;
        let id = rt.id;
        self.blocking(move |store| {
            let records = store.deliveries_in_state(id, DeliveryState::DeadLettered, from, max)?;
            let mut out = Vec::with_capacity(records.len());
            for r in records {
                let event = store.event(r.sequence)?;
                out.push(pb::DeadLetter {
                    delivery_id: delivery_id(id, r.sequence, r.attempts),
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
        })
        .await
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
            let mut w = BTreeSet::new();
            for id in ids {
                match parse_delivery_id(id) {
                    Some((sub, seq, _)) if sub == rt.id => w.insert(seq),
                    _ => {
                        return Err(BrokerError::invalid(
                            "delivery_ids",
                            format!("{id:?} is not a delivery id of this subscription"),
                        ));
                    }
                };
            }
            Some(w)
        };
        let id = rt.id;
        let seqs: Vec<u64> = self
            .blocking(move |store| {
                Ok(store.deliveries_in_state(id, DeliveryState::DeadLettered, 0, usize::MAX)?)
            })
            .await?
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
        Self::replay_runtime(&rt, &seqs, floor, self.clock.now());
        Ok(u32::try_from(seqs.len()).unwrap_or(u32::MAX))
    }
}
