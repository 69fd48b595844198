//! The embedded backend: events in the append-only [`EventLog`] beside the
//! store, everything else in one sled tree with one key prefix per record
//! kind, the rest of a [`Batch`] being one commit frame of the
//! [`crate::wal`].
//!
//! Durability, per batch: the batch's events and audit entries are
//! appended (not synced), and its sled writes recorded with a copy of
//! those bytes as one commit frame in the write-ahead log, whose
//! `fdatasync` is the commit's only one; only then are the writes applied
//! to sled, without sled's flush (a thread of its own makes the logs and
//! sled stable every 500 ms; at open the frames sled lacks are
//! replayed, sled is checked whole against the last frame's digest, and
//! log bytes a crash kept from the disk are written back from the
//! frames). So an acknowledged commit survives a killed process and a
//! power loss. Sled's next-sequence counter (as the frames leave it)
//! decides, at open, which logged events were committed.
//!
//! Audit entries go to the [`AuditLog`] beside sled, written with the
//! events, before sled's batch: sled holds a pointer per chunk.
//!
//! Key layout (big-endian numbers, so keys sort numerically):
//! - `A` ‖ first index → a [`crate::audit_log::Pointer`] to a chunk of
//!   audit entries in the audit log; in stores written before it, the chunk
//!   itself (`u32` LE length ‖ bytes)*, read, never written
//! - `T` ‖ level ‖ index → a Merkle tile (concatenated 32-byte hashes) if
//!   partial; a [`crate::audit_log::Pointer`] to it in the audit log if full.
//!   The partial tile of leaf hashes (level 0) is not written: it is hashed
//!   from the entries when read (stores written before hold a shorter copy,
//!   not read, replaced by the pointer once that tile is full)
//! - `E` ‖ sequence → [`StoredEvent`]: only in stores written before the
//!   event log; moved into it at open
//! - `I` ‖ agency ‖ 0 ‖ event id → sequence: only in stores written before
//!   the event log, which now answers idempotent publish; removed at open
//! - `G` ‖ agency id → `Agency`;  `R` ‖ agreement id → `Agreement`
//! - `C` ‖ consent id → `ConsentRecord`
//! - `S` ‖ subscription id → [`SubscriptionRecord`]
//! - `F` ‖ subscription id → floor sequence
//! - `K` ‖ subscription id ‖ first sequence → the delivery records of
//!   [`delivery_chunks::CHUNK`] consecutive sequences (see
//!   [`crate::delivery_chunks`]); `D` ‖ subscription id ‖ sequence → one
//!   [`DeliveryRecord`]: only in stores written before chunks, read, never
//!   written
//! - `X` ‖ sequence → reason (retracted or superseded events)
//! - `P` ‖ subscription id → (empty): a deleted subscription whose
//!   delivery records are still being removed, [`PURGE_CHUNK`] per commit
//! - `M` ‖ name → counters (`seq`, `sub`), `journal` (cluster mode: the
//!   last journal message applied) and `first`, the first sequence
//!   retention kept; `aidx`, the audit entries the audit index covers;
//!   `jtdrop`, the journal sequence through which kept times were dropped
//! - `J` ‖ journal sequence → its stored time (µs, `i64`): cluster mode's
//!   recent journal times, for the stale-proposal rule
//! - `L`, `Q` ‖ epoch ‖ … → which audit entries name a child or an
//!   agency, and `W` ‖ block → the time span of a block of audit entries:
//!   the audit index, written with the entries (see
//!   [`crate::audit_index`])

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use caseshare_proto::v1 as pb;
use prost::Message;

use caseshare_audit::tiles::TileStore;
use caseshare_core::time::Micros;

use crate::audit_index;
use crate::audit_log::AuditLog;
use crate::audit_query::AuditTerm;
use crate::delivery_chunks;
use audit_writes::AuditWrites;
pub(crate) use keys::{be, decode, key, read_be, split_chunk};

use crate::segments::{DEFAULT_SEGMENT_BYTES, EventLog};
pub use crate::sled_open::open_sled;
use crate::sled_open::verify_audit_checkpoint;
use crate::sled_open::{Tiles, audit_size, counters};
use crate::wal::{Appended, SledFiles, Stabiliser, Wal, Writes};
use crate::{
    Batch, CommitStats, DeliveryRecord, Snapshot, Storage, StoreError, StoredEvent,
    SubscriptionRecord,
};

/// Most delivery records of a deleted subscription removed in one commit
/// (a chunk counts as the 64 it may hold),
/// so that deleting a long-lived subscription never stalls the writer.
pub const PURGE_CHUNK: usize = 1_000;

/// Largest audit chunk; a batch with more is split into several, sled
/// holding a pointer to each. 32 KiB rather than the 6 KiB chosen when the
/// chunks lived in sled: a fifth of the pointers (sled's records and the
/// commit's inserts), at the price of reading up to 32 KiB to serve one
/// entry (a query by child +0.3–0.5 ms at 1M entries; docs/BENCHMARKS.md).
const MAX_AUDIT_CHUNK_BYTES: usize = 32 * 1024;

/// The event log's batch bytes, handed to the commit frame, keep their
/// allocation for the next commit up to this size (the two buffers swap;
/// the audit log's frames are freed once the frame is written).
const KEEP_APPENDED: usize = 16 << 20;

/// The sled store.
pub struct SledStore {
    tree: sled::Tree,
    path: PathBuf,
    /// Sled's files, made stable off the commit's path.
    files: Arc<SledFiles>,
    /// The write-ahead log of sled's writes ([`crate::wal`]).
    wal: Wal,
    stabiliser: Stabiliser,
    events: Arc<EventLog>,
    audit_log: Arc<AuditLog>,
    /// The bytes a commit appended to the two logs, for its frame.
    appended: Mutex<Appended>,
    /// The size of the last checkpoint persisted.
    persisted_checkpoint: Mutex<u64>,
    /// What the open read and checked, for the first `load`.
    loaded: Mutex<Option<Snapshot>>,
    /// Audit entries stored and indexed: where the next batch's must start.
    audit_indexed: Mutex<u64>,
    /// The partial tile of leaf hashes last committed (its index and
    /// bytes), which is not stored: served from here rather than hashed
    /// again from the entries for every proof.
    leaf_tile: RwLock<Option<(u64, Vec<u8>)>>,
    /// Held by each commit, and by a backup while it stages the files.
    commit_gate: Mutex<()>,
    /// Whether delivery records of the old layout exist (found at open).
    legacy_deliveries: bool,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.path)
            .finish()
    }
}

impl SledStore {
    /// Opens (or creates) the store in `dir`, with `cache_bytes` of page
    /// cache.
    ///
    /// Follows [`crate::recovery`]: sled's snapshot temporaries are removed
    /// and a damaged snapshot set aside before sled opens; then sled's audit
    /// log is checked against the persisted checkpoint and the event log
    /// against sled's counters, read-only; only then is anything changed.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        Self::open_with_segments(dir, cache_bytes, DEFAULT_SEGMENT_BYTES)
    }

    /// [`SledStore::open`], with event-log segments of `segment_bytes`.
    pub fn open_with_segments(
        dir: &Path,
        cache_bytes: u64,
        segment_bytes: u64,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)?;
        for done in crate::recovery::prepare_sled_dir(dir)? {
            tracing::warn!("{done}");
        }
        // Sled writes a new snapshot (and deletes older ones) as it opens;
        // if the store then refuses, they are put back as they were, so a
        // refusal leaves every byte of the directory as it found it.
        // The same for its `db` file, which sled's recovery writes into.
        let snapshots = crate::recovery::SnapshotGuard::capture(dir)?;
        let db_guard = crate::recovery::DbGuard::capture(dir)?;
        // Sled 0.34 panics on some damaged trees when they are read (a
        // node whose blob is gone): that is a damaged database, not a crash.
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            open_sled(dir, cache_bytes).and_then(|db| {
                let tree = db.open_tree("caseshare")?;
                Self::verify_and_open(dir, db, tree, segment_bytes)
            })
        }))
        .unwrap_or_else(|_| {
            Err(crate::sled_open::sled_panicked(
                dir,
                "while the store was being opened",
            ))
        });
        match opened {
            Ok(store) => {
                db_guard.discard();
                Ok(store)
            }
            Err(e) => {
                snapshots.restore();
                db_guard.restore();
                Err(e)
            }
        }
    }

    /// The rest of [`SledStore::open_with_segments`], once sled is open.
    fn verify_and_open(
        dir: &Path,
        db: sled::Db,
        tree: sled::Tree,
        segment_bytes: u64,
    ) -> Result<Self, StoreError> {
        // Sled is brought up to the WAL's last commit and checked whole
        // against its digest before anything is read from it; then the
        // logs get the bytes of the WAL's commits that a crash kept from
        // the disk (put back if the open refuses below).
        let recovered = crate::wal::recover(dir, &tree, crate::wal::Logs::Restore)?;
        if recovered.replayed > 0 {
            tracing::info!(
                frames = recovered.replayed,
                "replayed the write-ahead log's commits sled had not made stable"
            );
        }
        let restored = recovered.restored;
        let (next_sequence, first_retained, audit_size, legacy_first) = counters(&tree)?;
        // Decide first (read-only)...
        let audit_log = AuditLog::open(dir)?;
        let audit_found = crate::sled_open::verify_audit_chunks(dir, &tree, &audit_log)?;
        verify_audit_checkpoint(dir, &tree, &audit_log)?;
        let index_plan = audit_index::plan(dir, &tree, &audit_log, audit_size)?;
        let events_dir = dir.join("events");
        std::fs::create_dir_all(&events_dir)?;
        // A store written before the event log keeps events in sled (`E`
        // records), moved into the log below: the log holds none of them yet.
        let (log_next, log_first) = match legacy_first {
            Some(l) => (l, first_retained.max(l)),
            None => (next_sequence, first_retained),
        };
        let plan = crate::segments::open::verify(&events_dir, log_next, log_first)?;
        // ...change after.
        let tmp = dir.join(format!("{}.tmp", crate::checkpoint::FILE));
        if tmp.exists() {
            std::fs::remove_file(&tmp)?;
            tracing::info!(file = %tmp.display(), "removed a temporary left by an interrupted write");
        }
        let events = Arc::new(plan.apply(segment_bytes)?);
        let audit_log = Arc::new(audit_log);
        let files = Arc::new(SledFiles::new(
            db,
            dir.to_path_buf(),
            events.clone(),
            audit_log.clone(),
        )?);
        for (file, from) in &audit_found.ignored_tails {
            tracing::warn!(
                file = %file.display(),
                from,
                "audit log: bytes after the committed entries (a torn write or a batch that \
                 never committed) are left as they are; the next entries go to a new file"
            );
        }
        let leaf_tile = crate::sled_open::edge_leaf_tile(&tree, &audit_log, audit_size)?;
        let next_frame = recovered.next;
        let stabiliser = Stabiliser::start(files.clone(), next_frame.saturating_sub(1))?;
        let legacy_deliveries = delivery_chunks::has_legacy(&tree)?;
        let wal = Wal::start(dir, next_frame, recovered.digest, recovered.files);
        let mut store = SledStore {
            tree,
            path: dir.to_path_buf(),
            files,
            wal,
            stabiliser,
            events,
            audit_log,
            appended: Mutex::new(Appended::default()),
            persisted_checkpoint: Mutex::new(0),
            loaded: Mutex::new(None),
            audit_indexed: Mutex::new(audit_size),
            leaf_tile: RwLock::new(leaf_tile),
            commit_gate: Mutex::new(()),
            legacy_deliveries,
        };
        let moved = store.move_legacy_events()?;
        let indexed = store.update_audit_index(index_plan, audit_size)?;
        // Reading everything the broker loads is part of the check (a
        // damaged tree can fail or panic only when read); the first
        // `load` is answered from it.
        let snapshot = store.load_inner()?;
        *store
            .loaded
            .lock()
            .map_err(|_| StoreError::Engine("snapshot lock poisoned".into()))? = Some(snapshot);
        // Every open ends with a frame: sled's digest as the open leaves it
        // (read again if the open wrote to sled), for the next open to check.
        if moved || indexed {
            store.wal.rebase(&store.tree)?;
        } else {
            store.wal.commit(&store.tree, Writes::default())?;
        }
        store.files.sync()?;
        restored.keep();
        // Only once nothing can refuse: spares made ahead, the first of
        // which the first commit takes.
        store.wal.keep_spares();
        store.wal.roll();
        Ok(store)
    }

    /// Builds the audit index of a store written before it, or cuts back an
    /// index that covers entries sled no longer holds (derived data).
    fn update_audit_index(&self, plan: audit_index::Plan, size: u64) -> Result<bool, StoreError> {
        match plan {
            audit_index::Plan::UpToDate => return Ok(false),
            audit_index::Plan::Build { from, .. } if from < size => {
                tracing::info!(from, size, "building the audit index");
            }
            audit_index::Plan::Build { .. } => {}
            audit_index::Plan::Trim { size } => tracing::warn!(
                size,
                "the audit index covered entries sled no longer holds; cut back to the entries held"
            ),
        }
        audit_index::apply(&self.tree, &self.audit_log, plan, size)?;
        self.sync()?;
        Ok(true)
    }

    /// Makes everything sled holds stable (its flush and `fdatasync`s):
    /// after writes made outside commits, and before a backup.
    pub(crate) fn sync(&self) -> Result<(), StoreError> {
        self.files.sync()
    }

    /// What sled has applied and made stable of the WAL.
    #[cfg(test)]
    pub(crate) fn stabiliser(&self) -> &Stabiliser {
        &self.stabiliser
    }

    /// Makes sled stable now, and says so to the stabiliser (WAL files
    /// it covers go with the next commit).
    pub(crate) fn stabilise_now(&self) -> Result<(), StoreError> {
        let applied = self.stabiliser.last_applied();
        self.files.sync()?;
        self.stabiliser.made_stable(applied);
        Ok(())
    }

    /// Takes sled's present contents as they are, for the next open's
    /// check ([`crate::wal`]): for tests and tools that change sled's
    /// records directly ([`SledStore::raw_tree`]), as a restore of an
    /// older copy would leave them.
    pub fn accept_sled_as_it_is(&self) -> Result<(), StoreError> {
        let _gate = self.gate()?;
        self.wal.rebase(&self.tree)?;
        self.files.sync()
    }

    /// Holds commits off (see [`crate::backup`]).
    pub(crate) fn gate(&self) -> Result<std::sync::MutexGuard<'_, ()>, StoreError> {
        self.commit_gate
            .lock()
            .map_err(|_| StoreError::Engine("commit gate poisoned".into()))
    }

    /// The store directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.path
    }

    /// The audit log beside sled.
    pub(crate) fn audit_log(&self) -> &AuditLog {
        &self.audit_log
    }

    /// The tree.
    pub(crate) fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    fn put(b: &mut Writes, stats: &mut CommitStats, k: Vec<u8>, v: Vec<u8>) {
        stats.records += 1;
        stats.bytes += k.len() + v.len();
        b.insert(k, v);
    }

    /// [`Storage::load`], without the panic guard.
    fn load_inner(&self) -> Result<Snapshot, StoreError> {
        let mut snap = Snapshot {
            next_sequence: 1,
            next_subscription_id: 1,
            ..Snapshot::default()
        };
        for item in self.tree.scan_prefix([b'G']) {
            let (k, v) = item?;
            snap.agencies.push(decode::<pb::Agency>(&k, &v)?);
        }
        for item in self.tree.scan_prefix([b'R']) {
            let (k, v) = item?;
            snap.agreements.push(decode::<pb::Agreement>(&k, &v)?);
        }
        for item in self.tree.scan_prefix([b'C']) {
            let (k, v) = item?;
            snap.consents.push(decode::<pb::ConsentRecord>(&k, &v)?);
        }
        for item in self.tree.scan_prefix([b'S']) {
            let (k, v) = item?;
            snap.subscriptions
                .push(decode::<SubscriptionRecord>(&k, &v)?);
        }
        for item in self.tree.scan_prefix([b'F']) {
            let (k, v) = item?;
            snap.floors
                .push((read_be(&k[1..], "floor key")?, read_be(&v, "floor")?));
        }
        for item in self.tree.scan_prefix([b'X']) {
            let (k, v) = item?;
            snap.retracted.push((
                read_be(&k[1..], "retraction key")?,
                String::from_utf8_lossy(&v).into_owned(),
            ));
        }
        snap.first_sequence = self.events.first().unwrap_or(0);
        if let Some(v) = self.tree.get(key(b'M', &[b"seq"]))? {
            snap.next_sequence = read_be(&v, "next sequence")?;
        }
        if let Some(v) = self.tree.get(key(b'M', &[b"sub"]))? {
            snap.next_subscription_id = read_be(&v, "next subscription id")?;
        }
        if let Some(v) = self.tree.get(key(b'M', &[b"journal"]))? {
            snap.journal_position = read_be(&v, "journal position")?;
        }
        if let Some(v) = self.tree.get(key(b'M', &[b"jtdrop"]))? {
            snap.journal_times_dropped_through = read_be(&v, "journal times dropped")?;
        }
        for item in self.tree.scan_prefix([b'J']) {
            let (k, v) = item?;
            let seq = read_be(&k[1..], "journal time key")?;
            let time = read_be(&v, "journal time")?;
            snap.journal_times
                .push((seq, i64::from_be_bytes(time.to_be_bytes())));
        }
        snap.audit_size = audit_size(&self.tree)?;
        Ok(snap)
    }

    /// The raw value under a key, for tests that tamper with the store.
    pub fn raw_tree(&self) -> &sled::Tree {
        &self.tree
    }
}

impl Storage for SledStore {
    fn commit(&self, batch: &Batch) -> Result<CommitStats, StoreError> {
        self.commit_then(batch, &mut || {})
    }

    fn commit_then(
        &self,
        batch: &Batch,
        durable: &mut dyn FnMut(),
    ) -> Result<CommitStats, StoreError> {
        let _gate = self.gate()?;
        // What the open loaded is no longer current.
        if let Ok(mut loaded) = self.loaded.lock() {
            loaded.take();
        }
        let mut b = Writes::default();
        let mut stats = CommitStats::default();
        let audit_end = batch.audit_first_index + batch.audit.len() as u64;
        if !batch.audit.is_empty() {
            let covered = *self
                .audit_indexed
                .lock()
                .map_err(|_| StoreError::Engine("audit index lock poisoned".into()))?;
            if batch.audit_first_index != covered {
                return Err(StoreError::Engine(format!(
                    "audit entries must continue the log: the batch starts at index {}, the log \
                     holds {covered} entries",
                    batch.audit_first_index
                )));
            }
        }
        // Events and audit entries (with the records that never change
        // again) first, then the commit frame, which carries a copy of
        // them: the frame's sync makes the commit durable before sled
        // applies it, so sled never commits a sequence or points at audit
        // log frames that an open cannot restore; the audit index's
        // records come with them.
        let mut appended = self
            .appended
            .lock()
            .map_err(|_| StoreError::Engine("commit buffer lock poisoned".into()))?;
        let writes = AuditWrites::plan(self, batch, &mut b, &mut stats)?;
        stats.bytes += writes.write(self, batch, &mut b, &mut stats, &mut appended)?;
        for a in &batch.agencies {
            Self::put(
                &mut b,
                &mut stats,
                key(b'G', &[a.agency_id.as_bytes()]),
                a.encode_to_vec(),
            );
        }
        for a in &batch.agreements {
            Self::put(
                &mut b,
                &mut stats,
                key(b'R', &[a.agreement_id.as_bytes()]),
                a.encode_to_vec(),
            );
        }
        for c in &batch.consents {
            Self::put(
                &mut b,
                &mut stats,
                key(b'C', &[c.consent_id.as_bytes()]),
                c.encode_to_vec(),
            );
        }
        for s in &batch.subscriptions {
            Self::put(
                &mut b,
                &mut stats,
                key(b'S', &[&be(s.id)]),
                s.encode_to_vec(),
            );
        }
        for id in &batch.deleted_subscriptions {
            b.remove(key(b'S', &[&be(*id)]));
            b.remove(key(b'F', &[&be(*id)]));
            stats.records += 2;
        }
        // Delivery records of a deleted subscription go with it, a bounded
        // number per commit; a `P` marker says more remain.
        for id in batch
            .deleted_subscriptions
            .iter()
            .chain(&batch.purge_deliveries)
        {
            let (removed, more) = delivery_chunks::purge(&self.tree, *id, PURGE_CHUNK, &mut b)?;
            stats.records += removed;
            if more {
                Self::put(&mut b, &mut stats, key(b'P', &[&be(*id)]), Vec::new());
            } else {
                b.remove(key(b'P', &[&be(*id)]));
            }
        }
        // Seeks, then the new delivery records, chunked.
        delivery_chunks::stage(
            &self.tree,
            &batch.deleted_deliveries_from,
            &batch.deliveries,
            &mut b,
            &mut stats,
        )?;
        for (seq, reason) in &batch.retracted {
            Self::put(
                &mut b,
                &mut stats,
                key(b'X', &[&be(*seq)]),
                reason.as_bytes().to_vec(),
            );
        }
        // Retention deletes a prefix of the log.
        let new_first = batch.deleted_events.iter().map(|(seq, _, _)| seq + 1).max();
        for (seq, _, _) in &batch.deleted_events {
            b.remove(key(b'X', &[&be(*seq)]));
            stats.records += 1;
        }
        if let Some(first) = new_first {
            Self::put(
                &mut b,
                &mut stats,
                key(b'M', &[b"first"]),
                be(first).to_vec(),
            );
        }
        for (sub, floor) in &batch.floors {
            Self::put(
                &mut b,
                &mut stats,
                key(b'F', &[&be(*sub)]),
                be(*floor).to_vec(),
            );
        }
        if let Some(n) = batch.next_sequence {
            Self::put(&mut b, &mut stats, key(b'M', &[b"seq"]), be(n).to_vec());
        }
        if let Some(n) = batch.next_subscription_id {
            Self::put(&mut b, &mut stats, key(b'M', &[b"sub"]), be(n).to_vec());
        }
        if let Some(n) = batch.journal_position {
            Self::put(&mut b, &mut stats, key(b'M', &[b"journal"]), be(n).to_vec());
        }
        // Journal times: the dropped ones first (they are all older than
        // any written here), then this batch's.
        if let Some(through) = batch.journal_times_dropped_through {
            for item in self.tree.range(key(b'J', &[])..=key(b'J', &[&be(through)])) {
                let (k, _) = item?;
                b.remove(k);
                stats.records += 1;
            }
            Self::put(
                &mut b,
                &mut stats,
                key(b'M', &[b"jtdrop"]),
                be(through).to_vec(),
            );
        }
        for (seq, time) in &batch.journal_times {
            Self::put(
                &mut b,
                &mut stats,
                key(b'J', &[&be(*seq)]),
                time.to_be_bytes().to_vec(),
            );
        }
        // The commit frame, synced: the commit's one `fdatasync`. Only then
        // does sled apply it.
        let staged = self.wal.write(&self.tree, b, &appended)?;
        // Written: the audit chunks are freed now, the event log's buffer
        // is kept for the next commit unless it grew large.
        appended.audit.clear();
        if appended.events.bytes.capacity() > KEEP_APPENDED {
            *appended = Appended::default();
        }
        drop(appended);
        self.wal.sync()?;
        // Durable: a reopen replays the frame. Sled and what the store
        // keeps in memory follow.
        durable();
        let (number, frame_bytes) = self.wal.apply(&self.tree, staged)?;
        stats.bytes += frame_bytes;
        self.stabiliser.applied(number);
        let stable = self.stabiliser.stable();
        stats.wal_unstable_frames = number.saturating_sub(stable);
        self.wal.trim(stable)?;
        if let Some(first) = new_first {
            self.events.set_first(first)?;
        }
        if !batch.audit.is_empty()
            && let Ok(mut covered) = self.audit_indexed.lock()
        {
            *covered = audit_end;
        }
        self.remember_leaf_tile(&batch.tiles);
        Ok(stats)
    }

    fn release_idle_memory(&self) {
        self.events.release_buffer();
        self.wal.release_buffer();
        if let Ok(mut appended) = self.appended.lock() {
            *appended = Appended::default();
        }
        crate::wal::release_deferred();
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        if let Some(snapshot) = self.loaded.lock().ok().and_then(|mut l| l.take()) {
            return Ok(snapshot);
        }
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.load_inner())).unwrap_or_else(
            |_| {
                Err(crate::sled_open::sled_panicked(
                    &self.path,
                    "while the state was being loaded",
                ))
            },
        )
    }

    fn event(&self, sequence: u64) -> Result<Option<StoredEvent>, StoreError> {
        self.events.get(sequence)
    }

    fn events_from(&self, from: u64, max: usize) -> Result<Vec<StoredEvent>, StoreError> {
        self.events.range(from, max)
    }

    fn sequence_of(&self, agency_id: &str, event_id: &str) -> Result<Option<u64>, StoreError> {
        self.events.sequence_of(agency_id, event_id)
    }

    fn event_by_id(
        &self,
        agency_id: &str,
        event_id: &str,
    ) -> Result<Option<StoredEvent>, StoreError> {
        self.events.by_id(agency_id, event_id)
    }

    fn deliveries_from(
        &self,
        subscription_id: u64,
        from: u64,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        delivery_chunks::from(&self.tree, subscription_id, from)
    }

    fn deliveries_of(
        &self,
        subscription_ids: &[u64],
        sequence: u64,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        delivery_chunks::of(
            &self.tree,
            subscription_ids,
            sequence,
            self.legacy_deliveries,
        )
    }

    fn newest_deliveries(
        &self,
        id: u64,
        seqs: &[u64],
    ) -> Result<Vec<Option<DeliveryRecord>>, StoreError> {
        delivery_chunks::newest_of(&self.tree, id, seqs, self.legacy_deliveries)
    }

    fn audit_entries(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        crate::sled_open::audit_entries(&self.tree, &self.audit_log, start, end)
    }

    fn audit_entries_with(
        &self,
        term: &AuditTerm,
        start: u64,
        end: u64,
        max: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let indexes = audit_index::postings(&self.tree, &self.audit_log, term, start, end, max)?;
        let entries = audit_index::entries_at(&self.tree, &self.audit_log, &indexes)?;
        Ok(indexes.into_iter().zip(entries).collect())
    }

    fn audit_time_ranges(
        &self,
        from: Option<Micros>,
        to: Option<Micros>,
        start: u64,
        end: u64,
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        audit_index::time_ranges(&self.tree, from, to, start, end)
    }

    fn subscriptions_being_purged(&self) -> Result<Vec<u64>, StoreError> {
        let mut out = Vec::new();
        for k in self.tree.scan_prefix([b'P']).keys() {
            out.push(read_be(&k?[1..], "purge key")?);
        }
        Ok(out)
    }

    fn tile(&self, level: u8, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        if level == 0
            && let Ok(held) = self.leaf_tile.read()
            && let Some((i, bytes)) = held.as_ref()
            && *i == index
        {
            return Ok(Some(bytes.clone()));
        }
        Tiles(&self.tree, &self.audit_log).get_tile(level, index)
    }

    fn stage_backup(&self, stage: &Path) -> Result<crate::backup::Staged, StoreError> {
        self.stage(stage)
    }

    fn persist_checkpoint(&self, size: u64, root: [u8; 32], note: &str) -> Result<(), StoreError> {
        let mut last = self
            .persisted_checkpoint
            .lock()
            .map_err(|_| StoreError::Engine("checkpoint lock poisoned".into()))?;
        if size <= *last {
            return Ok(());
        }
        crate::checkpoint::write(
            &self.path,
            &crate::checkpoint::Persisted {
                size,
                root,
                note: note.to_string(),
            },
        )?;
        *last = size;
        Ok(())
    }
}

pub(crate) mod audit_writes;
mod keys;
mod legacy;
#[cfg(test)]
pub(crate) mod tests;

#[cfg(test)]
impl SledStore {
    /// The store's WAL, for the WAL's own tests.
    pub(crate) fn wal_for_tests(&self) -> &Wal {
        &self.wal
    }
}
