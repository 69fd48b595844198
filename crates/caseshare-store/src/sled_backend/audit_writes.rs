//! A commit's writes to the audit log: its entries packed into chunks,
//! the records that never change again (a complete epoch's index buckets,
//! full Merkle tiles) as chunks of one, and the sled pointers to them; and
//! the audit index's records, which can be worked out while the files are
//! written. The partial tile of leaf hashes is not written: the store
//! keeps the last committed one in memory ([`SledStore::remember_leaf_tile`])
//! and derives it from the entries after a restart.
//!
//! Written beside the event log: the commit thread writes both files,
//! keeping a copy of the bytes, works out the index and stages the sled
//! writes; the commit then writes its frame, which carries the copy, to
//! the WAL and syncs it: one `fdatasync` makes the whole commit durable
//! before it is acknowledged and before sled, which holds the pointers,
//! applies it. The stabiliser syncs the two logs later
//! ([`crate::wal`]).

use caseshare_audit::tiles::FULL_TILE_BYTES;

use super::{MAX_AUDIT_CHUNK_BYTES, SledStore, be, key};
use crate::audit_index;
use crate::audit_log::{Pointer, one_record};
use crate::wal::{Appended, Writes};
use crate::{Batch, CommitStats, StoreError};

/// What a commit writes to the audit log, and the sled key of each chunk.
#[derive(Default)]
pub(super) struct AuditWrites {
    chunks: Vec<Vec<u8>>,
    keys: Vec<Vec<u8>>,
    /// The index records are in the sled batch already (the batch
    /// completes an epoch, whose buckets are chunks here).
    indexed: bool,
}

impl AuditWrites {
    /// The batch's entries, in chunks of at most [`MAX_AUDIT_CHUNK_BYTES`]
    /// (`A` ‖ first index of each); a batch that completes an epoch of the
    /// audit index gets its index records now, for the buckets to join the
    /// chunks; then the full tiles (partial ones go into the sled batch).
    pub(super) fn plan(
        store: &SledStore,
        batch: &Batch,
        b: &mut Writes,
        stats: &mut CommitStats,
    ) -> Result<AuditWrites, StoreError> {
        let mut out = AuditWrites::default();
        // Each chunk is made with room for what is left, up to a chunk's
        // bound, so that it is not regrown (copied) entry by entry.
        let mut left: usize = batch.audit.iter().map(|e| e.len() + 4).sum();
        let mut chunk: Vec<u8> = Vec::with_capacity(left.min(MAX_AUDIT_CHUNK_BYTES));
        for (index, entry) in (batch.audit_first_index..).zip(&batch.audit) {
            if chunk.is_empty() {
                out.keys.push(key(b'A', &[&be(index)]));
            } else if chunk.len() + entry.len() + 4 > MAX_AUDIT_CHUNK_BYTES {
                out.chunks.push(std::mem::replace(
                    &mut chunk,
                    Vec::with_capacity(left.min(MAX_AUDIT_CHUNK_BYTES)),
                ));
                out.keys.push(key(b'A', &[&be(index)]));
            }
            left -= entry.len() + 4;
            let len = u32::try_from(entry.len())
                .map_err(|_| StoreError::TooLarge("audit entry".into()))?;
            chunk.extend_from_slice(&len.to_le_bytes());
            chunk.extend_from_slice(entry);
        }
        if !chunk.is_empty() {
            out.chunks.push(chunk);
        }
        let end = batch.audit_first_index + batch.audit.len() as u64;
        if audit_index::completes_epoch(batch.audit_first_index, end) {
            for (k, v) in index(store, batch, b, stats)? {
                out.chunks.push(one_record(&v)?);
                out.keys.push(k);
            }
            out.indexed = true;
        }
        // A partial tile is rewritten as leaves arrive: sled, except the
        // tile of leaf hashes, rewritten at every commit, which is derived
        // from the entries when read (`sled_open::partial_leaf_tile`). A
        // full one never changes: the audit log, once.
        for (level, idx, bytes) in &batch.tiles {
            let k = key(b'T', &[&[*level], &be(*idx)]);
            if bytes.len() != FULL_TILE_BYTES {
                if *level != 0 {
                    SledStore::put(b, stats, k, bytes.clone());
                }
                continue;
            }
            if let Some(v) = store.tree.get(&k)?
                && Pointer::decode(&v)?.is_some()
            {
                continue;
            }
            out.chunks.push(one_record(bytes)?);
            out.keys.push(k);
        }
        Ok(out)
    }

    /// Appends the chunks and the batch's events (not synced), copying
    /// the bytes written into `appended` for the commit frame; adds the
    /// index records (unless [`AuditWrites::plan`] did) and the pointers
    /// to the sled batch. Returns the bytes written to both files.
    pub(super) fn write(
        self,
        store: &SledStore,
        batch: &Batch,
        b: &mut Writes,
        stats: &mut CommitStats,
        appended: &mut Appended,
    ) -> Result<usize, StoreError> {
        appended.clear();
        let audit_bytes: usize = self.chunks.iter().map(Vec::len).sum();
        let pointers = store.audit_log.append(self.chunks, &mut appended.audit)?;
        let event_bytes = store
            .events
            .append_unsynced(&batch.events, &mut appended.events)?;
        if !self.indexed {
            index_into(store, batch, b, stats)?;
        }
        if pointers.len() != self.keys.len() {
            return Err(StoreError::Engine(format!(
                "the audit log placed {} of {} chunks",
                pointers.len(),
                self.keys.len()
            )));
        }
        for (k, pointer) in self.keys.into_iter().zip(&pointers) {
            SledStore::put(b, stats, k, pointer.encode());
        }
        Ok(audit_bytes + event_bytes)
    }
}

/// Sled records: (key, value).
type Records = Vec<(Vec<u8>, Vec<u8>)>;

/// The audit index's records for the batch's entries into the sled batch;
/// returns a complete epoch's buckets (for the audit log).
fn index(
    store: &SledStore,
    batch: &Batch,
    b: &mut Writes,
    stats: &mut CommitStats,
) -> Result<Records, StoreError> {
    if batch.audit.is_empty() {
        return Ok(Vec::new());
    }
    let entries = audit_index::read_all(batch.audit_first_index, &batch.audit)?;
    let indexed = audit_index::index_entries(&store.tree, batch.audit_first_index, &entries, b)?;
    stats.records += indexed.records;
    stats.bytes += indexed.bytes;
    Ok(indexed.buckets)
}

/// As [`index`], for a batch that completes no epoch.
fn index_into(
    store: &SledStore,
    batch: &Batch,
    b: &mut Writes,
    stats: &mut CommitStats,
) -> Result<(), StoreError> {
    let buckets = index(store, batch, b, stats)?;
    if buckets.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Engine(
            "the audit index completed an epoch the commit did not expect".into(),
        ))
    }
}

impl SledStore {
    /// After a commit (sled holds its full tiles): the partial tile of leaf
    /// hashes it wrote becomes the one served; one that became whole is
    /// read from the store again.
    pub(super) fn remember_leaf_tile(&self, tiles: &[(u8, u64, Vec<u8>)]) {
        let Ok(mut held) = self.leaf_tile.write() else {
            return;
        };
        for (level, index, bytes) in tiles {
            if *level != 0 {
                continue;
            }
            if bytes.len() < caseshare_audit::tiles::FULL_TILE_BYTES {
                *held = Some((*index, bytes.clone()));
            } else if held.as_ref().is_some_and(|(i, _)| i == index) {
                *held = None;
            }
        }
    }
}
