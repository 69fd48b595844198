//! Reads see every write that has been answered. The commit thread answers
//! a batch's callers as soon as the batch is durable
//! ([`Storage::commit_then`]), while the store still applies it to what
//! reads see (sled's records, the tiles it keeps in memory). [`Settled`] is
//! the store every reader holds (services, the delivery engine, the audit
//! log): a read begun while a batch is between its answers and the end of
//! its commit waits for that end ([`SettleGate`]), so that a caller who
//! got an answer reads its own write. The writer reads the store itself:
//! its lookups see the batch in commit first ([`crate::writer`]).
//!
//! Architecture Invariant: the gate closes before the first answer of a
//! batch and opens only once its commit has returned.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use caseshare_store::{
    Batch, CommitStats, DeliveryRecord, DeliveryState, Snapshot, Storage, StoreError, StoredEvent,
    audit_query::AuditTerm, backup,
};

/// Closed while a committed batch's answers are out and its commit has not
/// returned.
#[derive(Debug, Default)]
pub struct SettleGate {
    closed: AtomicBool,
    lock: Mutex<()>,
    opened: Condvar,
    /// Reads that found it closed (for tests).
    waited: std::sync::atomic::AtomicU64,
}

impl SettleGate {
    /// Closes the gate: reads begun from now wait for [`SettleGate::open`].
    pub fn close(&self) {
        let _held = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.closed.store(true, Ordering::Release);
    }

    /// Opens the gate and lets waiting reads go on.
    pub fn open(&self) {
        let _held = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.closed.store(false, Ordering::Release);
        self.opened.notify_all();
    }

    /// Returns once the gate is open (at once, nearly always). Readers call
    /// it on a blocking thread, as they read the store.
    pub fn wait(&self) {
        if !self.closed.load(Ordering::Acquire) {
            return;
        }
        self.waited.fetch_add(1, Ordering::Relaxed);
        let mut held = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        while self.closed.load(Ordering::Acquire) {
            held = self.opened.wait(held).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// How many reads found the gate closed.
    #[cfg(test)]
    pub fn waited(&self) -> u64 {
        self.waited.load(Ordering::Relaxed)
    }
}

/// The store the writer commits to, the same store as readers hold it,
/// and the gate between them.
pub(crate) fn open(store: impl Storage) -> (Arc<dyn Storage>, Arc<dyn Storage>, Arc<SettleGate>) {
    let raw: Arc<dyn Storage> = Arc::new(store);
    let gate = Arc::new(SettleGate::default());
    let readers = Arc::new(Settled::new(raw.clone(), gate.clone()));
    (raw, readers, gate)
}

/// The store as readers hold it: each read first waits at the gate.
pub struct Settled {
    inner: Arc<dyn Storage>,
    gate: Arc<SettleGate>,
}

impl Settled {
    /// Readers' view of `inner`, whose commit thread closes `gate`.
    pub fn new(inner: Arc<dyn Storage>, gate: Arc<SettleGate>) -> Self {
        Settled { inner, gate }
    }
}

impl Storage for Settled {
    fn commit(&self, batch: &Batch) -> Result<CommitStats, StoreError> {
        self.inner.commit(batch)
    }

    fn commit_then(
        &self,
        batch: &Batch,
        durable: &mut dyn FnMut(),
    ) -> Result<CommitStats, StoreError> {
        self.inner.commit_then(batch, durable)
    }

    fn release_idle_memory(&self) {
        self.inner.release_idle_memory();
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        self.gate.wait();
        self.inner.load()
    }

    fn event(&self, sequence: u64) -> Result<Option<StoredEvent>, StoreError> {
        self.gate.wait();
        self.inner.event(sequence)
    }

    fn events_from(&self, from: u64, max: usize) -> Result<Vec<StoredEvent>, StoreError> {
        self.gate.wait();
        self.inner.events_from(from, max)
    }

    fn sequence_of(&self, agency_id: &str, event_id: &str) -> Result<Option<u64>, StoreError> {
        self.gate.wait();
        self.inner.sequence_of(agency_id, event_id)
    }

    fn event_by_id(
        &self,
        agency_id: &str,
        event_id: &str,
    ) -> Result<Option<StoredEvent>, StoreError> {
        self.gate.wait();
        self.inner.event_by_id(agency_id, event_id)
    }

    fn deliveries_from(
        &self,
        subscription_id: u64,
        from: u64,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        self.gate.wait();
        self.inner.deliveries_from(subscription_id, from)
    }

    fn deliveries_of(
        &self,
        subscription_ids: &[u64],
        sequence: u64,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        self.gate.wait();
        self.inner.deliveries_of(subscription_ids, sequence)
    }

    fn newest_deliveries(
        &self,
        subscription_id: u64,
        sequences: &[u64],
    ) -> Result<Vec<Option<DeliveryRecord>>, StoreError> {
        self.gate.wait();
        self.inner.newest_deliveries(subscription_id, sequences)
    }

    fn audit_entries(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        self.gate.wait();
        self.inner.audit_entries(start, end)
    }

    fn audit_entries_with(
        &self,
        term: &AuditTerm,
        start: u64,
        end: u64,
        max: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.gate.wait();
        self.inner.audit_entries_with(term, start, end, max)
    }

    fn audit_time_ranges(
        &self,
        from: Option<caseshare_core::time::Micros>,
        to: Option<caseshare_core::time::Micros>,
        start: u64,
        end: u64,
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        self.gate.wait();
        self.inner.audit_time_ranges(from, to, start, end)
    }

    fn deliveries_in_state(
        &self,
        subscription_id: u64,
        state: DeliveryState,
        from: u64,
        max: usize,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        self.gate.wait();
        self.inner
            .deliveries_in_state(subscription_id, state, from, max)
    }

    fn tile(&self, level: u8, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.gate.wait();
        self.inner.tile(level, index)
    }

    fn persist_checkpoint(&self, size: u64, root: [u8; 32], note: &str) -> Result<(), StoreError> {
        self.inner.persist_checkpoint(size, root, note)
    }

    fn stage_backup(&self, stage: &std::path::Path) -> Result<backup::Staged, StoreError> {
        self.inner.stage_backup(stage)
    }

    fn subscriptions_being_purged(&self) -> Result<Vec<u64>, StoreError> {
        self.gate.wait();
        self.inner.subscriptions_being_purged()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use caseshare_store::sled_backend::SledStore;

    use super::*;

    fn record(sequence: u64) -> DeliveryRecord {
        DeliveryRecord {
            subscription_id: 7,
            sequence,
            state: DeliveryState::Delivered as i32,
            attempts: 1,
            ..Default::default()
        }
    }

    fn batch(sequence: u64) -> Batch {
        Batch {
            deliveries: vec![record(sequence)],
            ..Batch::default()
        }
    }

    #[test]
    fn a_read_begun_after_the_answers_waits_for_the_commit_and_sees_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let raw: Arc<dyn Storage> = Arc::new(SledStore::open(dir.path(), 8 << 20).unwrap());
        let gate = Arc::new(SettleGate::default());
        let settled = Arc::new(Settled::new(raw.clone(), gate.clone()));
        raw.commit(&batch(1)).unwrap();

        let mut reader = None;
        raw.commit_then(&batch(2), &mut || {
            // As the commit thread does: closed before answering.
            gate.close();
            // The batch is durable, not yet applied: the store itself does
            // not show it (what makes the gate needed).
            assert_eq!(raw.deliveries_from(7, 0).unwrap().len(), 1);
            // A caller answered now reads at once, through the gate; it
            // must wait until the commit has returned.
            let settled = settled.clone();
            reader = Some(std::thread::spawn(move || settled.deliveries_from(7, 0)));
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while gate.waited() == 0 {
                assert!(std::time::Instant::now() < deadline, "the read never came");
                std::thread::yield_now();
            }
        })
        .unwrap();
        gate.open();
        let read = reader.unwrap().join().unwrap().unwrap();
        assert_eq!(
            read.iter().map(|r| r.sequence).collect::<Vec<_>>(),
            vec![1, 2],
            "the read saw the answered batch"
        );
        // With the gate open, reads go straight through.
        assert_eq!(settled.deliveries_from(7, 0).unwrap().len(), 2);
        assert_eq!(gate.waited(), 1);
    }
}
