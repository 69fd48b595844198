//! Durable state of the broker, behind one trait.
//!
//! - [`records`]: the internal record types persisted beside the public
//!   protobuf messages (events as stored, delivery state, subscriptions).
//! - [`batch`]: [`Batch`], one group commit's worth of writes, typed and
//!   backend-neutral.
//! - [`Storage`]: what the server needs from a backend: apply a batch
//!   atomically and durably, and read back what it wrote.
//! - [`sled_backend`]: the embedded default, one sled tree with key
//!   prefixes, beside the event log and the audit log.
//! - [`wal`]: the write-ahead log of sled's writes (one frame per commit,
//!   synced; sled applies without its flush) and the digest that checks
//!   sled whole at open.
//!
//! - [`recovery`]: the rules the store follows when it opens damaged or
//!   half-written files (verify everything first, change only afterwards,
//!   never destroy a damaged file), and the read-only `check`.
//! - [`checkpoint`]: the latest signed audit checkpoint, kept outside sled
//!   so that sled going back is caught at open.
//! - [`backup`]: consistent copies of the live store, sealed, and their
//!   restore into an empty data directory.
//! - [`audit_query`]: auditors' reads (filtered queries, subject access
//!   reports) through the audit index; [`audit_index`]: that index in sled
//!   (by child, by agency, by time), written with the entries.
//!
//! API Boundary: the server only sees [`Storage`]; a NATS JetStream backend
//! (spec §6) implements the same trait.
#![forbid(unsafe_code)]

pub mod audit_index;
pub mod audit_log;
pub mod audit_query;
pub mod backup;
pub mod check;
pub mod checkpoint;
mod delivery_chunks;
#[cfg(test)]
mod fault_tests;
pub mod recovery;
pub mod segments;
pub mod sled_backend;
pub mod sled_open;
pub mod wal;

/// The record types live with the state machine that produces them.
pub use caseshare_state::{
    Batch, DeliveryRecord, DeliveryState, Snapshot, StoredEvent, SubscriptionRecord, batch, records,
};
pub use sled_backend::SledStore;

/// A storage failure. Every variant means the operation did not happen
/// (a failed commit is not acknowledged to anyone).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The underlying engine failed.
    #[error("storage engine error: {0}")]
    Engine(String),
    /// The disk sync after a write failed.
    #[error("could not sync the store to disk: {0}")]
    Sync(#[from] std::io::Error),
    /// A stored record did not decode: the store is damaged.
    #[error("stored record {key} is corrupt: {detail}")]
    Corrupt {
        /// Which record.
        key: String,
        /// What was wrong.
        detail: String,
    },
    /// A write exceeded a record-size limit.
    #[error("record too large: {0}")]
    TooLarge(String),
    /// A file of the store is damaged or inconsistent with the rest, found
    /// at open: the store refuses to start and has changed nothing.
    #[error("{} is damaged{}: {detail}. {advice}", .path.display(), recovery::at_offset(*.offset))]
    Damaged {
        /// The damaged file.
        path: std::path::PathBuf,
        /// Where in it, when known (bytes from the start).
        offset: Option<u64>,
        /// What is wrong.
        detail: String,
        /// What the operator can do.
        advice: &'static str,
    },
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Engine(e.to_string())
    }
}

/// Figures about one commit, for metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct CommitStats {
    /// Records written or deleted.
    pub records: usize,
    /// Bytes written.
    pub bytes: usize,
    /// Commit frames sled has applied and not yet made stable, with the
    /// logs' bytes they carry (a start would replay them): about a
    /// second's commits; it grows while sled or the logs cannot be made
    /// stable. 0 for backends without a write-ahead log.
    pub wal_unstable_frames: u64,
}

/// A storage backend.
///
/// Architecture Invariant: `commit` is atomic (all of a batch or none of it
/// survives a crash) and durable when it returns Ok (the batch survives a
/// process kill and, for the sled backend, a power loss after
/// `fdatasync`). Batches are applied in call order.
/// The tree size of the audit checkpoint last saved in the store directory
/// `dir` (signed here or, in cluster mode, seen), if any.
pub fn saved_checkpoint_size(dir: &std::path::Path) -> Result<Option<u64>, StoreError> {
    Ok(checkpoint::read(dir)?.map(|c| c.size))
}

pub trait Storage: Send + Sync + 'static {
    /// Applies a batch atomically and durably.
    fn commit(&self, batch: &Batch) -> Result<CommitStats, StoreError>;
    /// Commits `batch` as [`Storage::commit`] does, calling `durable` as
    /// soon as the batch is durable: a crash from then on keeps it. Reads
    /// may not see it until this returns (the store still applies it to
    /// what they read), so a caller that answers in `durable` makes reads
    /// wait for the return. An error after `durable` means the batch is
    /// durable but this store must be reopened to read it.
    fn commit_then(
        &self,
        batch: &Batch,
        durable: &mut dyn FnMut(),
    ) -> Result<CommitStats, StoreError> {
        let stats = self.commit(batch)?;
        durable();
        Ok(stats)
    }
    /// Hands back the memory kept between commits for the next one (the
    /// batch buffers, frees deferred by sled); the commit thread and the
    /// writer call it after their first idle second, and the next commit
    /// grows them again. Safe to call at any time.
    fn release_idle_memory(&self) {}
    /// Loads the state the broker keeps in memory.
    fn load(&self) -> Result<Snapshot, StoreError>;
    /// One event by sequence.
    fn event(&self, sequence: u64) -> Result<Option<StoredEvent>, StoreError>;
    /// Up to `max` events with sequence >= `from`, in order.
    fn events_from(&self, from: u64, max: usize) -> Result<Vec<StoredEvent>, StoreError>;
    /// The sequence an agency's event id was stored under.
    fn sequence_of(&self, agency_id: &str, event_id: &str) -> Result<Option<u64>, StoreError>;
    /// The retained event `agency_id` published as `event_id` (one lookup).
    fn event_by_id(
        &self,
        agency_id: &str,
        event_id: &str,
    ) -> Result<Option<StoredEvent>, StoreError> {
        match self.sequence_of(agency_id, event_id)? {
            Some(seq) => self.event(seq),
            None => Ok(None),
        }
    }
    /// Delivery records of one subscription with sequence >= `from`.
    fn deliveries_from(
        &self,
        subscription_id: u64,
        from: u64,
    ) -> Result<Vec<DeliveryRecord>, StoreError>;
    /// Delivery records of one event, across subscriptions.
    fn deliveries_of(
        &self,
        subscription_ids: &[u64],
        sequence: u64,
    ) -> Result<Vec<DeliveryRecord>, StoreError>;
    /// The newest delivery record of (`subscription_id`, s) for each s of
    /// `sequences`, in order (`None` where there is none): the last of
    /// [`Storage::deliveries_of`] for each, which this default asks; a
    /// backend may read each stored group of records once.
    fn newest_deliveries(
        &self,
        subscription_id: u64,
        sequences: &[u64],
    ) -> Result<Vec<Option<DeliveryRecord>>, StoreError> {
        sequences
            .iter()
            .map(|s| Ok(self.deliveries_of(&[subscription_id], *s)?.pop()))
            .collect()
    }
    /// Raw audit entries with index in `[start, end)`.
    fn audit_entries(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, StoreError>;
    /// The raw audit entries with index in `[start, end)` that carry `term`
    /// (see [`audit_query::AuditTerm::matches`]), with their indexes, in
    /// index order, at most `max`; fewer than `max` only when no more are
    /// in the range. The default reads the whole range; an indexed backend
    /// reads only those entries.
    fn audit_entries_with(
        &self,
        term: &audit_query::AuditTerm,
        start: u64,
        end: u64,
        max: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        audit_query::entries_with_by_scan(self, term, start, end, max)
    }
    /// Disjoint ascending ranges of audit indexes within `[start, end)`
    /// holding every entry recorded in `[from, to)` (an open end is
    /// unbounded); they may hold other entries too. The default is the
    /// whole range.
    fn audit_time_ranges(
        &self,
        _from: Option<caseshare_core::time::Micros>,
        _to: Option<caseshare_core::time::Micros>,
        start: u64,
        end: u64,
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        Ok(if start < end {
            vec![(start, end)]
        } else {
            Vec::new()
        })
    }
    /// Delivery records of one subscription in a state, from `from`, at most `max`.
    fn deliveries_in_state(
        &self,
        subscription_id: u64,
        state: records::DeliveryState,
        from: u64,
        max: usize,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        let mut out = Vec::new();
        for d in self.deliveries_from(subscription_id, from)? {
            if d.state() == state {
                out.push(d);
                if out.len() >= max {
                    break;
                }
            }
        }
        Ok(out)
    }
    /// One tile of Merkle hashes, as of the last commit (the partial tile
    /// of leaf hashes is derived from the entries, not stored).
    fn tile(&self, level: u8, index: u64) -> Result<Option<Vec<u8>>, StoreError>;
    /// Persists the latest signed audit checkpoint outside the engine, so
    /// that an engine that went back is caught at open (see
    /// [`checkpoint`]). Blocking I/O: call it on a blocking thread.
    fn persist_checkpoint(
        &self,
        _size: u64,
        _root: [u8; 32],
        _note: &str,
    ) -> Result<(), StoreError> {
        Ok(())
    }
    /// Stages a consistent copy of the store in `stage` for a backup
    /// ([`backup`]). Blocking I/O, holding commits off while it links and
    /// copies: call it on a blocking thread.
    fn stage_backup(&self, _stage: &std::path::Path) -> Result<backup::Staged, StoreError> {
        Err(StoreError::Engine("this store cannot be backed up".into()))
    }
    /// Deleted subscriptions whose delivery records are not all removed yet.
    fn subscriptions_being_purged(&self) -> Result<Vec<u64>, StoreError> {
        Ok(Vec::new())
    }
}
