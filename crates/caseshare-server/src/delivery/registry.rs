//! The registry of subscriptions at runtime: per subscription its cursor
//! over the event log, its unsettled deliveries, the sequences already
//! settled ahead of the cursor, and its floor (the lowest sequence it still
//! owes). Each unsettled delivery is a [`Delivery`] of the pure state
//! machine in `caseshare_state::delivery`, and [`SubInner::apply`] is the
//! one place it changes: it calls [`step`] and files the result (owed,
//! picked and sent ones in `pending`, deferred ones in `deferred`, settled
//! ones forgotten).
//!
//! Architecture Invariant: the persisted floor of a subscription is never
//! above a sequence it still owes: everything below it is settled.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use caseshare_core::pb;
use caseshare_core::time::Micros;
use caseshare_state::delivery::{
    Backoff, Delivery, Effect, Ignored, Input, Outcome, Phase, Policy, step,
};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The monotonic clock the delivery state machine runs on: µs since the
/// registry was built, and back to a tokio `Instant` for timers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    epoch: Instant,
}

impl Clock {
    /// A clock starting now.
    pub(crate) fn start() -> Self {
        Clock {
            epoch: Instant::now(),
        }
    }

    /// Now, on this clock.
    pub(crate) fn now(&self) -> Micros {
        Micros(i64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(i64::MAX))
    }

    /// The instant of `t` (far in the future when out of range).
    pub(crate) fn instant(&self, t: Micros) -> Instant {
        let d = Duration::from_micros(u64::try_from(t.0).unwrap_or(0));
        self.epoch
            .checked_add(d)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365))
    }
}

/// An unsettled delivery: its state, and what the writer's records need
/// (filled when the event is read; empty for one loaded at start).
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    state: Delivery,
    /// The event id.
    pub(crate) event_id: String,
    /// The child's NHS number.
    pub(crate) nhs_number: String,
}

impl Pending {
    /// Its state (changed only by [`SubInner::apply`]).
    pub(crate) fn state(&self) -> &Delivery {
        &self.state
    }
}

/// What [`SubInner::apply`] did.
#[derive(Debug)]
pub(crate) struct Applied {
    /// What to do next.
    pub(crate) effect: Effect,
    /// The delivery, when the step settled it (it is no longer held).
    pub(crate) settled: Option<Pending>,
}

/// One subscription's delivery state, behind its mutex.
#[derive(Debug)]
pub(crate) struct SubInner {
    /// The next sequence to read from the log.
    pub(crate) cursor: u64,
    /// Owed, picked and sent deliveries by sequence.
    pending: BTreeMap<u64, Pending>,
    /// Ordered subscriptions: deliveries waiting behind an earlier one for
    /// the same child.
    deferred: BTreeMap<u64, Pending>,
    /// Sequences at or after the cursor already settled (known at start).
    pub(crate) settled_ahead: BTreeSet<u64>,
    /// Below this sequence (after a seek) every event this agency was a
    /// candidate for is re-decided, not only those shared at publish.
    pub(crate) replay_until: u64,
    /// The floor last sent to the store.
    pub(crate) persisted_floor: u64,
    /// The subscription was deleted.
    pub(crate) deleted: bool,
    /// Bumped by a seek or a delete: a log read begun before is stale.
    pub(crate) epoch: u64,
    /// The stream reading the log from the cursor without the lock, if
    /// any (one at a time; see `pick`).
    pub(crate) scan_lease: Option<u64>,
    /// A stream found the lease taken and waits to be woken when it ends.
    pub(crate) scan_wanted: bool,
    /// The stream waiting at the head with room in its window, if any: the
    /// writer may pick new events for it in the commit that stores them
    /// (`tail`).
    pub(crate) parked: Option<super::tail::Parked>,
    policy: Policy,
}

impl SubInner {
    /// The state of a subscription whose floor is `floor`, holding
    /// `pending` (loaded at start) and `settled_ahead`.
    pub(crate) fn new(
        floor: u64,
        pending: BTreeMap<u64, Pending>,
        settled_ahead: BTreeSet<u64>,
        policy: Policy,
    ) -> Self {
        SubInner {
            cursor: floor,
            pending,
            deferred: BTreeMap::new(),
            settled_ahead,
            replay_until: 0,
            persisted_floor: floor,
            deleted: false,
            epoch: 0,
            scan_lease: None,
            scan_wanted: false,
            parked: None,
            policy,
        }
    }

    /// The one place a delivery changes state: `input` through [`step`];
    /// a settled delivery is forgotten (and, at or after the cursor,
    /// remembered as settled so the scan does not take it for new).
    pub(crate) fn apply(
        &mut self,
        seq: u64,
        input: Input,
        now: Micros,
    ) -> Result<Applied, Ignored> {
        let current = self
            .pending
            .get(&seq)
            .or_else(|| self.deferred.get(&seq))
            .ok_or(Ignored::Unknown)?;
        let (next, effect) = step(&current.state, input, now, &self.policy)?;
        let Some(mut p) = self
            .pending
            .remove(&seq)
            .or_else(|| self.deferred.remove(&seq))
        else {
            return Err(Ignored::Unknown);
        };
        p.state = next;
        let settled = match next.phase {
            Phase::Settled(outcome) => {
                let recorded = matches!(
                    outcome,
                    Outcome::Acked | Outcome::DeadLettered | Outcome::Withheld
                );
                if recorded && seq >= self.cursor {
                    self.settled_ahead.insert(seq);
                }
                Some(p)
            }
            Phase::Deferred => {
                self.deferred.insert(seq, p);
                None
            }
            Phase::Owed { .. } | Phase::Picked { .. } | Phase::Out { .. } => {
                self.pending.insert(seq, p);
                None
            }
        };
        Ok(Applied { effect, settled })
    }

    /// Files a delivery just read from the log ([`Delivery::fresh`]).
    pub(crate) fn insert_fresh(&mut self, seq: u64, event_id: String, nhs_number: String) {
        self.deferred.insert(
            seq,
            Pending {
                state: Delivery::fresh(),
                event_id,
                nhs_number,
            },
        );
    }

    /// Puts a dead letter back: [`Input::Replay`] on it as the store holds
    /// it. One the registry holds unsettled (read again after a seek) is
    /// left as it is.
    pub(crate) fn replay(&mut self, seq: u64, now: Micros) -> Result<(), Ignored> {
        if self.pending.contains_key(&seq) || self.deferred.contains_key(&seq) {
            return Err(Ignored::NotDeadLetter);
        }
        let (state, _) = step(
            &Delivery::dead_letter(0, Micros(0)),
            Input::Replay,
            now,
            &self.policy,
        )?;
        self.settled_ahead.remove(&seq);
        self.pending.insert(
            seq,
            Pending {
                state,
                event_id: String::new(),
                nhs_number: String::new(),
            },
        );
        Ok(())
    }

    /// Fills in what a delivery loaded at start did not know.
    pub(crate) fn fill(&mut self, seq: u64, event_id: &str, nhs_number: &str) {
        if let Some(p) = self.pending.get_mut(&seq) {
            if p.event_id.is_empty() {
                p.event_id = event_id.to_string();
            }
            if p.nhs_number.is_empty() {
                p.nhs_number = nhs_number.to_string();
            }
        }
    }

    /// [`Input::Drop`] on every delivery at or after `from`.
    pub(crate) fn drop_from(&mut self, from: u64, now: Micros) {
        let seqs: Vec<u64> = self
            .pending
            .range(from..)
            .chain(self.deferred.range(from..))
            .map(|(s, _)| *s)
            .collect();
        for seq in seqs {
            let _ = self.apply(seq, Input::Drop, now);
        }
    }

    /// Moves the cursor to `target`: deliveries from there are dropped
    /// (read again, and re-decided, when the scan reaches them), and a scan
    /// begun before is stale.
    pub(crate) fn seek(&mut self, target: u64, now: Micros) {
        self.replay_until = self.replay_until.max(self.cursor);
        self.cursor = target;
        self.epoch += 1;
        self.drop_from(target, now);
        self.settled_ahead.clear();
        self.persisted_floor = self.floor();
    }

    /// Owed, picked and sent deliveries.
    pub(crate) fn pending(&self) -> impl Iterator<Item = (u64, &Pending)> {
        self.pending.iter().map(|(s, p)| (*s, p))
    }

    /// Deferred deliveries.
    pub(crate) fn deferred(&self) -> impl Iterator<Item = (u64, &Pending)> {
        self.deferred.iter().map(|(s, p)| (*s, p))
    }

    /// The unsettled delivery at `seq`, if any.
    pub(crate) fn get(&self, seq: u64) -> Option<&Pending> {
        self.pending.get(&seq).or_else(|| self.deferred.get(&seq))
    }

    /// The lowest sequence still owed.
    pub(crate) fn floor(&self) -> u64 {
        let p = self.pending.keys().next().copied().unwrap_or(u64::MAX);
        let d = self.deferred.keys().next().copied().unwrap_or(u64::MAX);
        self.cursor.min(p).min(d)
    }

    /// Whether a delivery for this child is owed, picked or out.
    pub(crate) fn child_busy(&self, nhs: &str) -> bool {
        self.pending.values().any(|p| p.nhs_number == nhs)
    }

    /// Whether a delivery for this child is deferred.
    pub(crate) fn child_deferred(&self, nhs: &str) -> bool {
        self.deferred.values().any(|p| p.nhs_number == nhs)
    }

    /// Unsettled deliveries plus the log events after the cursor (up to
    /// `head`) not yet read and not known settled.
    pub(crate) fn backlog(&self, head: u64) -> u64 {
        let unread = (head + 1).saturating_sub(self.cursor);
        let held = (self.pending.len() + self.deferred.len()) as u64;
        (held + unread).saturating_sub(self.settled_ahead.len() as u64)
    }

    /// The floor to persist, if it moved.
    pub(crate) fn take_floor(&mut self) -> Option<u64> {
        let f = self.floor();
        (f != self.persisted_floor).then(|| {
            self.persisted_floor = f;
            f
        })
    }
}

/// One subscription at runtime.
#[derive(Debug)]
pub struct SubRuntime {
    /// Internal id.
    pub id: u64,
    /// The subscription.
    pub subscription: pb::Subscription,
    inner: Mutex<SubInner>,
    /// Woken when deliveries were freed, owed again or dropped.
    pub(crate) notify: Notify,
    /// Deliveries dead-lettered since start (a metric).
    pub(crate) dead_letters: AtomicU64,
    /// Deliveries sent again since start (a metric).
    pub(crate) redeliveries: AtomicU64,
}

impl SubRuntime {
    /// A runtime over `inner`.
    pub(crate) fn new(id: u64, subscription: pb::Subscription, inner: SubInner) -> Self {
        SubRuntime {
            id,
            subscription,
            inner: Mutex::new(inner),
            notify: Notify::new(),
            dead_letters: AtomicU64::new(0),
            redeliveries: AtomicU64::new(0),
        }
    }

    /// Its state. Held for bookkeeping only: never across a disk read or
    /// an await.
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, SubInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lowest sequence this subscription still owes.
    pub fn floor(&self) -> u64 {
        self.lock().floor()
    }

    /// Whether its lock is held now.
    #[cfg(test)]
    pub(crate) fn is_locked(&self) -> bool {
        self.inner.try_lock().is_err()
    }
}

/// The state machine's policy for a subscription.
pub(crate) fn policy(sub: &pb::Subscription, backoff: Backoff) -> Policy {
    let d = sub.ack_deadline.unwrap_or_default();
    let ack_deadline = Duration::from_secs(u64::try_from(d.seconds).unwrap_or(30).max(1))
        .saturating_add(Duration::from_nanos(u64::try_from(d.nanos).unwrap_or(0)));
    Policy {
        ack_deadline,
        max_attempts: sub.max_attempts.max(1),
        backoff,
    }
}

/// A delivery recorded as sent and unsettled, loaded at start.
pub(crate) fn loaded(attempts: u32, delivered_at: Micros, now: Micros) -> Pending {
    Pending {
        state: Delivery::loaded(attempts, delivered_at, now),
        event_id: String::new(),
        nhs_number: String::new(),
    }
}
