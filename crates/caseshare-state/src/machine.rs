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
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::refusal::LookupError;

    #[test]
    fn the_delivery_index_finds_what_a_backward_search_finds() {
        let record = |sub: u64, seq: u64, attempts: u32| DeliveryRecord {
            subscription_id: sub,
            sequence: seq,
            attempts,
            ..Default::default()
        };
        let search = |batch: &Batch, sub: u64, seq: u64| {
            batch
                .deliveries
                .iter()
                .rev()
                .find(|r| r.subscription_id == sub && r.sequence == seq)
                .cloned()
        };
        let machine = Machine::new(BrokerState::default(), Counters::default(), vec![7; 32]);
        let mut draft = machine.begin();
        // Keys repeat: the newest record of each is the one found.
        for (i, (sub, seq)) in [(1, 1), (1, 2), (2, 1), (1, 1), (1, 2), (1, 1)]
            .into_iter()
            .enumerate()
        {
            draft.push_delivery(record(sub, seq, i as u32));
        }
        let keys = [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1)];
        let agrees = |draft: &Draft, when: &str| {
            for (sub, seq) in keys {
                assert_eq!(
                    draft.newest_delivery(sub, seq).cloned(),
                    search(&draft.batch, sub, seq),
                    "{sub}/{seq} {when}"
                );
            }
        };
        agrees(&draft, "indexed");
        assert_eq!(draft.newest_delivery(1, 1).map(|r| r.attempts), Some(5));
        // A record added past the index is still found (by searching).
        draft.batch.deliveries.push(record(1, 2, 99));
        draft.push_delivery(record(2, 2, 100));
        agrees(&draft, "after a direct push");
        assert_eq!(draft.newest_delivery(1, 2).map(|r| r.attempts), Some(99));
        // A seek removes records; pushes after it bring the count back to
        // what was indexed before: positions must not be stale.
        let before = draft.batch.deliveries.len();
        draft.delete_deliveries_from(1, 2);
        while draft.batch.deliveries.len() < before {
            let n = draft.batch.deliveries.len() as u32;
            draft.push_delivery(record(3, 1, 200 + n));
        }
        agrees(&draft, "after a seek");
        assert_eq!(draft.newest_delivery(1, 2), None);
        // The sealed batch answers alike.
        let mut machine = machine;
        let sealed = machine.seal(draft);
        for (sub, seq) in keys {
            assert_eq!(
                sealed.newest_delivery(sub, seq).cloned(),
                search(&sealed.batch, sub, seq)
            );
        }
    }

    /// A committed batch reused for the next draft: the draft is empty and
    /// finds nothing of the old batch, as a fresh one, but keeps the
    /// vectors' allocations.
    #[test]
    fn a_reused_batch_starts_empty_and_keeps_its_allocations() {
        let mut machine = Machine::new(BrokerState::default(), Counters::default(), vec![7; 32]);
        let mut draft = machine.begin();
        for i in 0..100u64 {
            draft.push_event(StoredEvent {
                sequence: i + 1,
                source_agency: "school-b".into(),
                event_id: format!("e-{i}"),
                ..Default::default()
            });
            draft.push_delivery(DeliveryRecord {
                subscription_id: 1,
                sequence: i + 1,
                ..Default::default()
            });
            draft.audit(Micros(5), pb::AuditEntry::default());
        }
        draft.delete_deliveries_from(2, 1);
        draft.batch.next_sequence = Some(101);
        draft.batch.journal_position = Some(9);
        draft.batch.journal_times.push((9, 1));
        let sealed = machine.seal(draft);
        let (events, audit) = (
            sealed.batch.events.capacity(),
            sealed.batch.audit.capacity(),
        );
        let reused = machine.begin_reusing(sealed);
        assert!(reused.batch.is_empty(), "{:?}", reused.batch);
        assert_eq!(reused.batch.audit_first_index, 100);
        assert_eq!(
            format!("{:?}", reused.batch),
            format!("{:?}", machine.begin().batch)
        );
        assert_eq!(reused.event("school-b", "e-5"), None);
        assert_eq!(reused.newest_delivery(1, 5), None);
        assert!(!reused.batch.seek_deletes(2, 1));
        assert_eq!(reused.batch.events.capacity(), events);
        assert_eq!(reused.batch.audit.capacity(), audit);
        assert!(events >= 100 && audit >= 100);
    }

    struct Nothing;

    impl Lookup for Nothing {
        fn event_by_id(&self, _: &str, _: &str) -> Result<Option<StoredEvent>, LookupError> {
            Ok(None)
        }
        fn deliveries_of(&self, _: &[u64], _: u64) -> Result<Vec<DeliveryRecord>, LookupError> {
            Ok(Vec::new())
        }
    }

    fn recorded(sealed: &Sealed) -> Vec<i64> {
        sealed
            .batch
            .audit
            .iter()
            .map(|leaf| {
                let e = pb::AuditEntry::decode(leaf.as_slice()).unwrap();
                Micros::from_timestamp(&e.recorded_at.unwrap()).0
            })
            .collect()
    }

    /// Commands stamped by clocks that disagree (a change of proposer in
    /// cluster mode): the audit log's times never go back, in a draft,
    /// across drafts, and after a restart that read the last entry's time.
    #[test]
    fn time_never_goes_back_by_table() {
        const S: i64 = 1_000_000;
        // (the drafts, each the times its commands carry; the times the
        // audit entries get)
        let cases: [(&[&[i64]], &[i64]); 5] = [
            (&[&[10 * S, 11 * S, 12 * S]], &[10 * S, 11 * S, 12 * S]),
            (&[&[30 * S, 10 * S, 31 * S]], &[30 * S, 30 * S, 31 * S]),
            (
                &[&[30 * S], &[10 * S], &[29 * S, 32 * S]],
                &[30 * S, 30 * S, 30 * S, 32 * S],
            ),
            (&[&[5 * S], &[4 * S, 6 * S]], &[5 * S, 5 * S, 6 * S]),
            (&[&[-S], &[-2 * S]], &[-S, -S]),
        ];
        for (drafts, want) in cases {
            let mut m = Machine::new(BrokerState::default(), Counters::default(), vec![]);
            let mut m_floor = Micros(i64::MIN);
            m.set_time_floor(m_floor);
            let mut got = Vec::new();
            for times in drafts {
                let mut d = m.begin();
                for &t in *times {
                    let entry = pb::AuditEntry {
                        kind: pb::EntryKind::AuditAccessed as i32,
                        ..Default::default()
                    };
                    m.apply(&mut d, Micros(t), Command::Record { entry }, &Nothing)
                        .unwrap();
                }
                let sealed = m.seal(d);
                got.extend(recorded(&sealed));
                // A restart: a new machine told the last entry's time.
                m_floor = m.time_floor();
                let counters = m.counters();
                m = Machine::new(BrokerState::default(), counters, vec![]);
                m.set_time_floor(m_floor);
            }
            assert_eq!(got, want, "drafts {drafts:?}");
            assert_eq!(m_floor.0, *want.last().unwrap());
        }
    }

    /// A draft dropped unsealed (a failed commit) leaves the floor where
    /// the last commit put it.
    #[test]
    fn an_unsealed_draft_does_not_move_the_floor() {
        let mut m = Machine::new(BrokerState::default(), Counters::default(), vec![]);
        m.set_time_floor(Micros(5));
        let mut d = m.begin();
        let entry = pb::AuditEntry::default();
        m.apply(&mut d, Micros(9), Command::Record { entry }, &Nothing)
            .unwrap();
        drop(d);
        assert_eq!(m.time_floor(), Micros(5));
    }
}
