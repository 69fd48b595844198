//! A commit's writes to the audit log: its entries packed into chunks,
//! the records that never change again (a complete epoch's index buckets,
//! full Merkle tiles) as chunks of one, and the sled pointers to them; and
//! the audit index's records, which can be worked out while the files are
//! written.
//!
//! Written beside the event log: with enough audit bytes to be worth a
//! thread ([`PARALLEL_BYTES`]), the audit log's `write` and `fdatasync` run
//! on a scoped thread while the commit thread appends and syncs the events
//! and builds the index records; otherwise the commit thread writes both
//! files and the audit log's sync overlaps the event log's. Either way both
//! are durable before sled's batch, which holds the pointers, is applied.

use caseshare_audit::tiles::FULL_TILE_BYTES;

use super::{MAX_AUDIT_CHUNK_BYTES, SledStore, be, key};
use crate::audit_index;
use crate::audit_log::{Pointer, one_record};
use crate::wal::Writes;
use crate::{Batch, CommitStats, StoreError};

/// Audit bytes from which a commit writes the audit log on a thread of its
/// own (about the cost of starting one, ~30 µs, in copying).
pub(crate) const PARALLEL_BYTES: usize = 32 << 10;

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
        let mut chunk: Vec<u8> = Vec::new();
        for (index, entry) in (batch.audit_first_index..).zip(&batch.audit) {
            if chunk.is_empty() {
                out.keys.push(key(b'A', &[&be(index)]));
            } else if chunk.len() + entry.len() + 4 > MAX_AUDIT_CHUNK_BYTES {
                out.chunks.push(std::mem::take(&mut chunk));
                out.keys.push(key(b'A', &[&be(index)]));
            }
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
        // A partial tile is rewritten as leaves arrive: sled. A full one
        // never changes: the audit log, once.
        for (level, idx, bytes) in &batch.tiles {
            let k = key(b'T', &[&[*level], &be(*idx)]);
            if bytes.len() != FULL_TILE_BYTES {
                SledStore::put(b, stats, k, bytes.clone());
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

    /// Appends the chunks and the batch's events, both made durable, and
    /// adds the index records (unless [`AuditWrites::plan`] did) and the
    /// pointers to the sled batch. Returns the bytes written to both files.
    pub(super) fn write(
        self,
        store: &SledStore,
        batch: &Batch,
        b: &mut Writes,
        stats: &mut CommitStats,
    ) -> Result<usize, StoreError> {
        let audit_bytes: usize = self.chunks.iter().map(Vec::len).sum();
        let parallel = if audit_bytes >= PARALLEL_BYTES && !batch.events.is_empty() {
            self.write_in_parallel(store, batch, b, stats)
        } else {
            None
        };
        let (pointers, event_bytes) = match parallel {
            Some(written) => written?,
            None => self.write_in_order(store, batch, b, stats)?,
        };
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

    /// Both files written here, the audit log's sync on its sync thread
    /// while the event log's runs here (two `fdatasync`s at once).
    fn write_in_order(
        &self,
        store: &SledStore,
        batch: &Batch,
        b: &mut Writes,
        stats: &mut CommitStats,
    ) -> Result<(Vec<Pointer>, usize), StoreError> {
        let pointers = store.audit_log.append(&self.chunks)?;
        let synced = if self.chunks.is_empty() {
            None
        } else {
            Some(store.audit_log.sync_in_background()?)
        };
        let event_bytes = store.events.append(&batch.events)?;
        if !self.indexed {
            index_into(store, batch, b, stats)?;
        }
        if let Some(pending) = synced {
            pending.wait()?;
        }
        Ok((pointers, event_bytes))
    }

    /// The audit log appended and synced on a scoped thread, the events
    /// and the index records on this one; `None` if no thread could be
    /// started (nothing was written: the caller writes in order).
    fn write_in_parallel(
        &self,
        store: &SledStore,
        batch: &Batch,
        b: &mut Writes,
        stats: &mut CommitStats,
    ) -> Option<Result<(Vec<Pointer>, usize), StoreError>> {
        std::thread::scope(|s| {
            let audit = std::thread::Builder::new()
                .name("audit-log-append".into())
                .spawn_scoped(s, || {
                    let pointers = store.audit_log.append(&self.chunks)?;
                    store.audit_log.sync()?;
                    Ok::<_, StoreError>(pointers)
                })
                .ok()?;
            let events = store.events.append(&batch.events);
            let indexed = if self.indexed {
                Ok(())
            } else {
                index_into(store, batch, b, stats)
            };
            let written = match audit.join() {
                Ok(pointers) => pointers.and_then(|pointers| {
                    let event_bytes = events?;
                    indexed?;
                    Ok((pointers, event_bytes))
                }),
                Err(_) => Err(StoreError::Engine("the audit log's writer panicked".into())),
            };
            Some(written)
        })
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
