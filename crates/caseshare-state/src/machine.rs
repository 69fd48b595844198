//! The machine: the state, the counters that number what it creates, and
//! [`Machine::apply`], the one entry point that changes them.
//!
//! A group commit is a [`Draft`]: [`Machine::begin`] opens one, `apply`
//! adds each operation's writes to it, [`Machine::seal`] closes it into the
//! [`Batch`] the store commits. What an operation needs from durable state
//! (an earlier event, delivery records) it asks of the [`Lookup`] it is
//! given, after looking in the draft itself.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use caseshare_core::pb;
use caseshare_core::pseudonym::PseudonymKey;
use caseshare_core::time::Micros;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::batch::Batch;
use crate::command::{Command, Reply};
use crate::records::{DeliveryRecord, StoredEvent};
use crate::refusal::{LookupError, Refusal};
use crate::snapshot::Snapshot;
use crate::state::BrokerState;

/// Reads of durable state an operation may need: what earlier commits
/// wrote (the store, and a batch still being committed). Implemented by the
/// server over its store; the answers depend only on what was committed, so
/// a replay asks the same questions and gets the same answers.
pub trait Lookup {
    /// The retained event `agency` published as `event_id`.
    fn event_by_id(&self, agency: &str, event_id: &str)
    -> Result<Option<StoredEvent>, LookupError>;
    /// Delivery records of one event across the given subscriptions.
    fn deliveries_of(
        &self,
        subscription_ids: &[u64],
        sequence: u64,
    ) -> Result<Vec<DeliveryRecord>, LookupError>;
    /// The newest delivery record of one event for one subscription: the
    /// last of [`Lookup::deliveries_of`], which an implementation may find
    /// without reading them all.
    fn newest_delivery(
        &self,
        subscription_id: u64,
        sequence: u64,
    ) -> Result<Option<DeliveryRecord>, LookupError> {
        Ok(self
            .deliveries_of(&[subscription_id], sequence)?
            .into_iter()
            .last())
    }
    /// [`Lookup::newest_delivery`] of each of `sequences`, in order, in one
    /// call (an ack or a window names many): the default asks for each.
    fn newest_deliveries(
        &self,
        subscription_id: u64,
        sequences: &[u64],
    ) -> Result<Vec<Option<DeliveryRecord>>, LookupError> {
        sequences
            .iter()
            .map(|s| self.newest_delivery(subscription_id, *s))
            .collect()
    }
}

/// The newest delivery record for each of `sequences`, in order: what
/// `overlay` says first — a batch not in the store yet: `Some(Some(r))`
/// its record, `Some(None)` its seek deleted the store's — then the
/// store's, read by `durable` in one call for all the others.
pub fn newest_over(
    sequences: &[u64],
    overlay: impl Fn(u64) -> Option<Option<DeliveryRecord>>,
    durable: impl FnOnce(&[u64]) -> Result<Vec<Option<DeliveryRecord>>, LookupError>,
) -> Result<Vec<Option<DeliveryRecord>>, LookupError> {
    let mut out = Vec::with_capacity(sequences.len());
    let (mut at, mut asked) = (Vec::new(), Vec::new());
    for &sequence in sequences {
        match overlay(sequence) {
            Some(known) => out.push(known),
            None => {
                at.push(out.len());
                asked.push(sequence);
                out.push(None);
            }
        }
    }
    if asked.is_empty() {
        return Ok(out);
    }
    let found = durable(&asked)?;
    if found.len() != asked.len() {
        let why = format!("{} delivery records for {} asked", found.len(), asked.len());
        return Err(LookupError(why.into()));
    }
    for (i, r) in at.into_iter().zip(found) {
        out[i] = r;
    }
    Ok(out)
}

/// Where the newest delivery record of each (subscription, sequence) is in
/// a batch's `deliveries`, for the records added through
/// [`Draft::push_delivery`]; a batch changed otherwise is searched instead.
#[derive(Debug, Default)]
pub struct DeliveryIndex {
    newest: HashMap<(u64, u64), usize>,
    indexed: usize,
}

impl DeliveryIndex {
    /// Forgets every record, keeping the map's allocation.
    fn clear(&mut self) {
        self.newest.clear();
        self.indexed = 0;
    }

    /// Indexes `deliveries` afresh (after records were removed).
    fn rebuild(&mut self, deliveries: &[DeliveryRecord]) {
        self.newest.clear();
        for (i, r) in deliveries.iter().enumerate() {
            self.newest.insert((r.subscription_id, r.sequence), i);
        }
        self.indexed = deliveries.len();
    }

    fn push(&mut self, deliveries: &mut Vec<DeliveryRecord>, record: DeliveryRecord) {
        if self.indexed == deliveries.len() {
            self.newest
                .insert((record.subscription_id, record.sequence), deliveries.len());
            self.indexed += 1;
        }
        deliveries.push(record);
    }

    fn newest<'a>(
        &self,
        deliveries: &'a [DeliveryRecord],
        subscription_id: u64,
        sequence: u64,
    ) -> Option<&'a DeliveryRecord> {
        let is =
            |r: &&DeliveryRecord| r.subscription_id == subscription_id && r.sequence == sequence;
        if self.indexed == deliveries.len() {
            let found = self.newest.get(&(subscription_id, sequence));
            // A found position always holds the key; missing keys are absent.
            match found.and_then(|i| deliveries.get(*i)) {
                Some(r) if is(&r) => return Some(r),
                None if found.is_none() => return None,
                // Changed behind the index's back: search.
                _ => {}
            }
        }
        deliveries.iter().rev().find(is)
    }
}

/// The counters that number what the machine creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// The next event sequence (sequences start at 1).
    pub next_sequence: u64,
    /// The next subscription id.
    pub next_subscription_id: u64,
    /// The number of audit entries (the next index).
    pub audit_size: u64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            next_sequence: 1,
            next_subscription_id: 1,
            audit_size: 0,
        }
    }
}

/// One group commit being built.
#[derive(Debug, Default)]
pub struct Draft {
    /// The writes so far.
    pub batch: Batch,
    event_ids: EventIds,
    deliveries: DeliveryIndex,
    sequence_before: u64,
    subscription_before: u64,
    /// The time of the last audit entry, committed or in this draft.
    time_floor: Micros,
}

impl Draft {
    /// The event `agency` published as `event_id` in this draft.
    pub fn event(&self, agency: &str, event_id: &str) -> Option<&StoredEvent> {
        self.event_ids
            .get(agency, event_id)
            .and_then(|i| self.batch.events.get(i))
    }

    /// Adds a delivery record.
    pub(crate) fn push_delivery(&mut self, record: DeliveryRecord) {
        self.deliveries.push(&mut self.batch.deliveries, record);
    }

    /// A seek of subscription `subscription_id` to `target`: every record
    /// of it at or after `target` is deleted, this draft's own included.
    pub(crate) fn delete_deliveries_from(&mut self, subscription_id: u64, target: u64) {
        self.batch
            .deliveries
            .retain(|r| !(r.subscription_id == subscription_id && r.sequence >= target));
        self.batch
            .deleted_deliveries_from
            .push((subscription_id, target));
        self.deliveries.rebuild(&self.batch.deliveries);
    }

    /// The newest record of (`subscription_id`, `sequence`) in this draft.
    pub(crate) fn newest_delivery(
        &self,
        subscription_id: u64,
        sequence: u64,
    ) -> Option<&DeliveryRecord> {
        self.deliveries
            .newest(&self.batch.deliveries, subscription_id, sequence)
    }

    /// Adds an event.
    pub(crate) fn push_event(&mut self, event: StoredEvent) {
        self.event_ids.insert(
            &event.source_agency,
            &event.event_id,
            self.batch.events.len(),
        );
        self.batch.events.push(event);
    }

    /// Appends an audit entry with the next index and `now`; returns the index.
    pub(crate) fn audit(&mut self, now: Micros, mut e: pb::AuditEntry) -> u64 {
        let index = self.batch.audit_first_index + self.batch.audit.len() as u64;
        e.index = index;
        e.recorded_at = Some(now.to_timestamp());
        self.time_floor = self.time_floor.max(now);
        // The leaf bytes are prost's canonical encoding, as
        // `caseshare_audit::entry::encode` writes them.
        self.batch.audit.push(e.encode_to_vec());
        index
    }
}

/// A sealed draft: the batch to commit and its event index, which lookups
/// made while it is being committed still need.
#[derive(Debug, Default)]
pub struct Sealed {
    /// The writes.
    pub batch: Batch,
    event_ids: EventIds,
    /// Where the newest record of each delivery is in `batch.deliveries`.
    pub deliveries: DeliveryIndex,
}

impl Sealed {
    /// The newest record of (`subscription_id`, `sequence`) in this batch.
    pub fn newest_delivery(&self, subscription_id: u64, sequence: u64) -> Option<&DeliveryRecord> {
        self.deliveries
            .newest(&self.batch.deliveries, subscription_id, sequence)
    }

    /// The event `agency` published as `event_id` in this batch.
    pub fn event(&self, agency: &str, event_id: &str) -> Option<&StoredEvent> {
        self.event_ids
            .get(agency, event_id)
            .and_then(|i| self.batch.events.get(i))
    }
}

/// A batch's events by (agency, event id) → position in `batch.events`,
/// looked up with borrowed strings (no allocation per lookup).
#[derive(Debug, Default)]
struct EventIds(HashMap<String, HashMap<String, usize>>);

impl EventIds {
    fn insert(&mut self, agency: &str, event_id: &str, position: usize) {
        match self.0.get_mut(agency) {
            Some(ids) => {
                ids.insert(event_id.to_string(), position);
            }
            None => {
                self.0.insert(
                    agency.to_string(),
                    HashMap::from([(event_id.to_string(), position)]),
                );
            }
        }
    }

    fn get(&self, agency: &str, event_id: &str) -> Option<usize> {
        self.0.get(agency)?.get(event_id).copied()
    }

    /// Forgets every id; each agency's map keeps its allocation.
    fn clear(&mut self) {
        for ids in self.0.values_mut() {
            ids.clear();
        }
    }
}

/// The broker's core. Readers share the configuration state through
/// [`Machine::shared`]; only `apply` changes it.
#[derive(Debug)]
pub struct Machine {
    state: Arc<RwLock<BrokerState>>,
    counters: Counters,
    pseudonym_key: PseudonymKey,
    /// The time of the last committed audit entry: no command is applied
    /// at an earlier time (see [`Machine::apply`]).
    time_floor: Micros,
}

/// What one `apply` works with.
pub(crate) struct Step<'a> {
    pub(crate) draft: &'a mut Draft,
    pub(crate) now: Micros,
    pub(crate) lookup: &'a dyn Lookup,
}

impl Step<'_> {
    pub(crate) fn audit(&mut self, e: pb::AuditEntry) -> u64 {
        self.draft.audit(self.now, e)
    }
}

impl Machine {
    /// A machine over `state` with `counters`; `pseudonym_key` keys the
    /// child pseudonyms written to the audit log.
    pub fn new(state: BrokerState, counters: Counters, pseudonym_key: Vec<u8>) -> Self {
        Machine {
            state: Arc::new(RwLock::new(state)),
            counters,
            pseudonym_key: PseudonymKey::new(&pseudonym_key),
            time_floor: Micros::default(),
        }
    }

    /// Sets the time of the last committed audit entry (its `recorded_at`;
    /// the server reads it from the store at start). Commands are applied
    /// at this time or later.
    pub fn set_time_floor(&mut self, last_audit_time: Micros) {
        self.time_floor = last_audit_time;
    }

    /// The time of the last audit entry committed (or sealed).
    pub fn time_floor(&self) -> Micros {
        self.time_floor
    }

    /// The machine a store's snapshot describes.
    pub fn from_snapshot(snap: &Snapshot, pseudonym_key: Vec<u8>) -> Self {
        Machine::new(
            BrokerState::from_snapshot(snap),
            Counters {
                next_sequence: snap.next_sequence,
                next_subscription_id: snap.next_subscription_id,
                audit_size: snap.audit_size,
            },
            pseudonym_key,
        )
    }

    /// The configuration state, for readers.
    pub fn shared(&self) -> Arc<RwLock<BrokerState>> {
        Arc::clone(&self.state)
    }

    /// The counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Opens a group commit.
    pub fn begin(&self) -> Draft {
        self.begin_reusing(Sealed::default())
    }

    /// Opens a group commit in the memory of `spare`, a batch already
    /// committed: it is emptied and only its allocations are kept, so the
    /// draft is the same as [`Machine::begin`]'s.
    pub fn begin_reusing(&self, spare: Sealed) -> Draft {
        let Sealed {
            mut batch,
            mut event_ids,
            mut deliveries,
        } = spare;
        batch.clear();
        batch.audit_first_index = self.counters.audit_size;
        event_ids.clear();
        deliveries.clear();
        Draft {
            batch,
            event_ids,
            deliveries,
            sequence_before: self.counters.next_sequence,
            subscription_before: self.counters.next_subscription_id,
            time_floor: self.time_floor,
        }
    }

    /// Closes a group commit: the counters that moved are written with it.
    pub fn seal(&mut self, draft: Draft) -> Sealed {
        let Draft {
            mut batch,
            event_ids,
            deliveries,
            sequence_before,
            subscription_before,
            time_floor,
        } = draft;
        self.time_floor = time_floor;
        if self.counters.next_sequence != sequence_before {
            batch.next_sequence = Some(self.counters.next_sequence);
        }
        if self.counters.next_subscription_id != subscription_before {
            batch.next_subscription_id = Some(self.counters.next_subscription_id);
        }
        self.counters.audit_size += batch.audit.len() as u64;
        Sealed {
            batch,
            event_ids,
            deliveries,
        }
    }

    /// Applies one command at time `now`, adding its writes to `draft`.
    /// Deterministic: the same state, command, time and lookups give the
    /// same state, writes and reply. A refusal changes nothing.
    ///
    /// Time never goes back: a `now` earlier than the last audit entry's
    /// time (committed, or in `draft`) is raised to it, so the audit log's
    /// `recorded_at` times never decrease — also when commands stamped by
    /// replicas with different clocks (cluster mode) follow each other.
    /// Every replica applies the same commands on the same audit log, so
    /// every replica raises the same times.
    pub fn apply(
        &mut self,
        draft: &mut Draft,
        now: Micros,
        command: Command,
        lookup: &dyn Lookup,
    ) -> Result<Reply, Refusal> {
        let now = now.max(draft.time_floor);
        let mut step = Step { draft, now, lookup };
        match command {
            Command::RegisterAgency { actor, request } => self
                .register_agency(&mut step, &actor, request)
                .map(Reply::Agency),
            Command::PutAgreement { actor, agreement } => self
                .put_agreement(&mut step, &actor, agreement)
                .map(Reply::Agreement),
            Command::EndAgreement { actor, request } => self
                .end_agreement(&mut step, &actor, request)
                .map(Reply::Agreement),
            Command::RecordConsent {
                actor,
                consent,
                generated_id,
            } => self
                .record_consent(&mut step, &actor, consent, generated_id)
                .map(Reply::Consent),
            Command::WithdrawConsent { actor, request } => self
                .withdraw_consent(&mut step, &actor, request)
                .map(Reply::Consent),
            Command::Publish {
                actor,
                request,
                event_type,
                salt,
            } => self
                .publish(&mut step, &actor, request, &event_type, salt)
                .map(Reply::Published),
            Command::Retract { actor, request } => self
                .retract(&mut step, &actor, request)
                .map(Reply::Retracted),
            Command::Expunge { events } => {
                self.expunge(&mut step, events);
                Ok(Reply::Done)
            }
            Command::CreateSubscription {
                actor,
                subscription,
                quota,
            } => self
                .create_subscription(&mut step, &actor, subscription, quota)
                .map(Reply::Subscription),
            Command::DeleteSubscription { actor, name } => self
                .delete_subscription(&mut step, &actor, &name)
                .map(Reply::Subscription),
            Command::Seek {
                actor,
                subscription,
                target,
            } => {
                self.seek(&mut step, &actor, &subscription, target);
                Ok(Reply::Done)
            }
            Command::Replay {
                actor,
                subscription,
                sequences,
                floor,
            } => {
                self.replay(&mut step, &actor, &subscription, &sequences, floor);
                Ok(Reply::Done)
            }
            Command::PurgeDeliveries { subscription_ids } => {
                step.draft.batch.purge_deliveries.extend(subscription_ids);
                Ok(Reply::Done)
            }
            Command::Deliver { intents } => Ok(Reply::Verdicts(self.deliver(&mut step, intents)?)),
            Command::Ack {
                actor,
                subscription,
                acks,
                floor,
            } => {
                self.ack(&mut step, &actor, &subscription, acks, floor)?;
                Ok(Reply::Done)
            }
            Command::DeadLetter {
                subscription,
                recipient,
                items,
                floor,
            } => {
                self.dead_letter(&mut step, &subscription, &recipient, items, floor)?;
                Ok(Reply::Done)
            }
            Command::Record { entry } => Ok(Reply::Recorded(step.audit(entry))),
            Command::AuthDenied { entries } => {
                for entry in entries {
                    step.audit(pb::AuditEntry {
                        kind: pb::EntryKind::AuthDenied as i32,
                        ..entry
                    });
                }
                Ok(Reply::Done)
            }
        }
    }

    /// A digest of everything the machine holds: the configuration state
    /// and the counters. Two machines that applied the same commands, or
    /// one rebuilt from the store they committed to, have the same digest.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.read().digest());
        h.update(self.counters.next_sequence.to_be_bytes());
        h.update(self.counters.next_subscription_id.to_be_bytes());
        h.update(self.counters.audit_size.to_be_bytes());
        h.finalize().into()
    }

    pub(crate) fn pseudonym(&self, nhs_number: &str) -> Vec<u8> {
        self.pseudonym_key.child(nhs_number).to_vec()
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, BrokerState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, BrokerState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the next event sequence.
    pub(crate) fn take_sequence(&mut self) -> u64 {
        let s = self.counters.next_sequence;
        self.counters.next_sequence += 1;
        s
    }

    /// Takes the next subscription id.
    pub(crate) fn take_subscription_id(&mut self) -> u64 {
        let s = self.counters.next_subscription_id;
        self.counters.next_subscription_id += 1;
        s
    }

    /// The next event sequence, not taken.
    pub(crate) fn peek_sequence(&self) -> u64 {
        self.counters.next_sequence
    }
}

#[cfg(test)]
mod tests;
