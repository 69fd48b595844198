//! Opening sled under the recovery rules ([`crate::recovery`]): sled's
//! open itself (its errors and panics on a damaged file are damage), its
//! counters, and the check of its audit log against the persisted
//! checkpoint — all read-only, shared by the store's open and `caseshare
//! check`.

use std::path::Path;

use caseshare_audit::tiles::{FULL_TILE_BYTES, TILE_WIDTH, TileStore, TiledTree};

use crate::StoreError;
use crate::audit_log::{AuditLog, Pointer, Verified};
use crate::recovery::{ADVICE_RESTORE, ADVICE_SLED_BEHIND, damaged};
use crate::sled_backend::{be, key, read_be, split_chunk};

/// Said of every refusal about sled: it reports damage for its database as
/// a whole, so the operator is told which files that covers.
pub const SLED_FILES: &str = "sled keeps its database in db, conf, snap.* and blobs/ of this directory and does not say which of them is damaged";

/// The stored Merkle tiles: full ones (which never change) in the audit
/// log, sled pointing at them; partial ones above the leaves in sled; and
/// the partial tile of leaf hashes, which would change at every commit,
/// nowhere: it is derived from the audit entries it covers
/// ([`partial_leaf_tile`]).
pub(crate) struct Tiles<'a>(pub(crate) &'a sled::Tree, pub(crate) &'a AuditLog);

/// The tiles stored in `tree` and `log`.
pub(crate) fn tiles<'a>(tree: &'a sled::Tree, log: &'a AuditLog) -> Tiles<'a> {
    Tiles(tree, log)
}

/// Every audit entry in `tree`, in order.
pub(crate) fn all_audit_entries(
    tree: &sled::Tree,
    log: &AuditLog,
) -> Result<Vec<Vec<u8>>, StoreError> {
    let mut out = Vec::new();
    for item in tree.scan_prefix([b'A']) {
        let (k, v) = item?;
        let first = read_be(&k[1..], "audit chunk key")?;
        if first != out.len() as u64 {
            return Err(StoreError::Corrupt {
                key: format!("audit chunk {first}"),
                detail: format!("expected a chunk starting at {}", out.len()),
            });
        }
        out.extend(split_chunk(&log.resolve(v)?)?);
    }
    Ok(out)
}

/// The audit entries in `tree` with index in `[start, end)`.
pub(crate) fn audit_entries(
    tree: &sled::Tree,
    log: &AuditLog,
    start: u64,
    end: u64,
) -> Result<Vec<Vec<u8>>, StoreError> {
    let mut out = Vec::new();
    if start >= end {
        return Ok(out);
    }
    // The chunk holding `start` is the last one whose first index <= start.
    let first_key = match tree
        .range(key(b'A', &[&be(0)])..=key(b'A', &[&be(start)]))
        .next_back()
    {
        Some(item) => item?.0,
        None => return Ok(out),
    };
    for item in tree.range(first_key.to_vec()..key(b'A', &[&be(end)])) {
        let (k, v) = item?;
        let first = read_be(&k[1..], "audit chunk key")?;
        let chunk = log.resolve(v)?;
        // Only the entries asked for are copied out of the chunk.
        for (idx, span) in (first..).zip(crate::audit_log::chunk_entries(&chunk)) {
            let (at, len) = span?;
            if idx >= end {
                break;
            }
            if idx >= start {
                out.push(chunk[at..at + len].to_vec());
            }
        }
    }
    Ok(out)
}

/// Sled's counters: next event sequence, first retained sequence, audit
/// size, and the first event still kept in sled by an older version.
pub(crate) fn counters(tree: &sled::Tree) -> Result<(u64, u64, u64, Option<u64>), StoreError> {
    let counter = |name: &[u8], default: u64| -> Result<u64, StoreError> {
        match tree.get(key(b'M', &[name]))? {
            Some(v) => read_be(&v, "counter"),
            None => Ok(default),
        }
    };
    let legacy_first = match tree.scan_prefix([b'E']).next().transpose()? {
        Some((k, _)) => Some(read_be(&k[1..], "event key")?),
        None => None,
    };
    Ok((
        counter(b"seq", 1)?,
        counter(b"first", 0)?,
        audit_size(tree)?,
        legacy_first,
    ))
}

impl TileStore for Tiles<'_> {
    type Error = StoreError;
    fn get_tile(&self, level: u8, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let stored = match self.0.get(key(b'T', &[&[level], &be(index)]))? {
            Some(v) => Some(self.1.resolve_one(v)?.to_vec()),
            None => None,
        };
        if level != 0 {
            return Ok(stored);
        }
        // A whole tile of leaf hashes is stored; a shorter one (written by
        // versions before the partial tile was derived, and replaced once
        // that tile is whole) is not read.
        match stored {
            Some(bytes) if bytes.len() == FULL_TILE_BYTES => Ok(Some(bytes)),
            _ => partial_leaf_tile(self.0, self.1, index),
        }
    }
}

/// The partial tile of leaf hashes of a log of `size` entries, with its
/// index (`None` when the last tile is whole): what the store serves
/// proofs from until the next commit.
pub(crate) fn edge_leaf_tile(
    tree: &sled::Tree,
    log: &AuditLog,
    size: u64,
) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
    if size.is_multiple_of(TILE_WIDTH) {
        return Ok(None);
    }
    let index = size / TILE_WIDTH;
    Ok(partial_leaf_tile(tree, log, index)?.map(|bytes| (index, bytes)))
}

/// The leaf hashes of tile `index` at tile level 0, computed from the
/// audit entries it covers (fewer than 256 at the tree's right edge);
/// `None` if the log holds none of them.
pub(crate) fn partial_leaf_tile(
    tree: &sled::Tree,
    log: &AuditLog,
    index: u64,
) -> Result<Option<Vec<u8>>, StoreError> {
    let size = audit_size(tree)?;
    let start = index.saturating_mul(TILE_WIDTH);
    if start >= size {
        return Ok(None);
    }
    let end = size.min(start.saturating_add(TILE_WIDTH));
    let entries = audit_entries(tree, log, start, end)?;
    if entries.len() as u64 != end - start {
        return Err(StoreError::Corrupt {
            key: format!("audit entries {start}..{end}"),
            detail: format!(
                "{} of {} entries could be read to hash the tree's leaves",
                entries.len(),
                end - start
            ),
        });
    }
    let mut out = Vec::with_capacity(entries.len() * caseshare_audit::merkle::HASH_LEN);
    for entry in &entries {
        out.extend_from_slice(&caseshare_audit::merkle::leaf_hash(entry));
    }
    Ok(Some(out))
}

/// The number of audit entries in sled (from its last chunk).
pub(crate) fn audit_size(tree: &sled::Tree) -> Result<u64, StoreError> {
    match tree.scan_prefix([b'A']).next_back().transpose()? {
        Some((k, v)) => Ok(read_be(&k[1..], "audit chunk key")? + AuditLog::count(&v)?),
        None => Ok(0),
    }
}

/// Checks that sled's audit chunks are contiguous from index 0 (read-only,
/// one pass): a node of the tree that sled lost (a blob file gone) removes
/// a run of chunks while the last one, and so the size, stays. Then every
/// chunk sled points at in the audit log is read and checked
/// ([`AuditLog::verify`]; 28 bytes per chunk in memory meanwhile).
pub(crate) fn verify_audit_chunks(
    dir: &Path,
    tree: &sled::Tree,
    log: &AuditLog,
) -> Result<Verified, StoreError> {
    let mut expected = 0u64;
    let mut pointers = Vec::new();
    for item in tree.scan_prefix([b'A']) {
        let (k, v) = item?;
        let first = read_be(&k[1..], "audit chunk key")?;
        if first != expected {
            return Err(damaged(
                &dir.join("db"),
                None,
                format!(
                    "sled's audit log has no entries {expected} to {} (the chunk after them \
                     starts at {first}): sled lost committed writes",
                    first.saturating_sub(1)
                ),
                ADVICE_SLED_BEHIND,
            ));
        }
        match Pointer::decode(&v)? {
            Some(p) => {
                expected += u64::from(p.count);
                pointers.push(p);
            }
            None => expected += split_chunk(&v)?.len() as u64,
        }
    }
    // Full tiles and complete epochs of the audit index live there too.
    for prefix in [b'T', crate::audit_index::BUCKETED] {
        for item in tree.scan_prefix([prefix]) {
            let (_, v) = item?;
            if let Some(p) = Pointer::decode(&v)? {
                pointers.push(p);
            }
        }
    }
    log.verify(&mut pointers)
}

/// Checks sled's audit log against the persisted checkpoint (read-only):
/// it must hold at least as many entries, with the same root at that size.
pub(crate) fn verify_audit_checkpoint(
    dir: &Path,
    tree: &sled::Tree,
    log: &AuditLog,
) -> Result<(), StoreError> {
    let Some(cp) = crate::checkpoint::read(dir)? else {
        return Ok(());
    };
    let db = dir.join("db");
    let size = audit_size(tree)?;
    if size < cp.size {
        return Err(damaged(
            &db,
            None,
            format!(
                "sled holds {size} audit entries, but a checkpoint of {} entries was already \
                 signed and handed out ({}): sled lost committed writes",
                cp.size,
                crate::checkpoint::path(dir).display()
            ),
            ADVICE_SLED_BEHIND,
        ));
    }
    if cp.size == 0 {
        return Ok(());
    }
    let tiles = Tiles(tree, log);
    let root = TiledTree::open(size, &tiles)
        .map_err(|e| e.to_string())
        .and_then(|t| t.root(cp.size, &tiles).map_err(|e| e.to_string()));
    match root {
        Ok(r) if r == cp.root => Ok(()),
        Ok(_) => Err(match edge_entries(dir, tree, cp.size, size)? {
            // The leaves at the right edge are hashed from the entries as
            // they are now: an entry altered there (its frame's checksum
            // made good again) gives another root. Sled's tiles are checked
            // by the write-ahead log's digest before this.
            Some((path, offset, start)) => damaged(
                &path,
                Some(offset),
                format!(
                    "the audit entries from index {start} do not hash to the root of the \
                     checkpoint signed at size {} ({}): an entry was altered after it was \
                     written",
                    cp.size,
                    crate::checkpoint::path(dir).display()
                ),
                ADVICE_RESTORE,
            ),
            None => damaged(
                &db,
                None,
                format!(
                    "sled's audit log has another root at size {} than the checkpoint signed \
                     at that size ({}; {SLED_FILES})",
                    cp.size,
                    crate::checkpoint::path(dir).display()
                ),
                ADVICE_RESTORE,
            ),
        }),
        Err(e) => Err(damaged(
            &db,
            None,
            format!("sled's audit tree cannot be read: {e} ({SLED_FILES})"),
            ADVICE_RESTORE,
        )),
    }
}

/// Where the entries of the partial tile of leaf hashes of a tree of
/// `size` begin, when they are hashed from the entries (the log of `held`
/// entries has not filled that tile since) and the audit log file holds
/// them: its path, the offset of their chunk, and the first entry's index.
fn edge_entries(
    dir: &Path,
    tree: &sled::Tree,
    size: u64,
    held: u64,
) -> Result<Option<(std::path::PathBuf, u64, u64)>, StoreError> {
    if size.is_multiple_of(TILE_WIDTH) || size / TILE_WIDTH != held / TILE_WIDTH {
        return Ok(None);
    }
    let start = size / TILE_WIDTH * TILE_WIDTH;
    let Some(item) = tree
        .range(key(b'A', &[&be(0)])..=key(b'A', &[&be(start)]))
        .next_back()
    else {
        return Ok(None);
    };
    let (_, v) = item?;
    Ok(Pointer::decode(&v)?.map(|p| {
        (
            dir.join(crate::audit_log::DIR)
                .join(crate::audit_log::file_name(p.serial)),
            p.offset,
            start,
        )
    }))
}

/// Opens sled on `dir` (after [`crate::recovery::prepare_sled_dir`]).
pub fn open_sled(dir: &Path, cache_bytes: u64) -> Result<sled::Db, StoreError> {
    let config = sled::Config::new()
        .path(dir)
        .cache_capacity(cache_bytes)
        .flush_every_ms(None);
    // Sled 0.34 can panic on some damaged files ("tried to serialize
    // Uninitialized"): that is a damaged database, not a crash.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()))
        .unwrap_or_else(|_| Err(sled::Error::Corruption { at: None, bt: () }))
        .map_err(|e| match e {
            sled::Error::Corruption { .. }
            | sled::Error::Unsupported(_)
            | sled::Error::ReportableBug(_) => damaged(
                &dir.join("db"),
                None,
                format!("sled cannot read its database: {e} ({SLED_FILES})"),
                ADVICE_RESTORE,
            ),
            other => StoreError::Engine(format!(
                "could not open the sled database in {}: {other}",
                dir.display()
            )),
        })
}

/// The refusal when sled panics reading its own files.
pub(crate) fn sled_panicked(dir: &Path, when: &str) -> StoreError {
    damaged(
        &dir.join("db"),
        None,
        format!("sled panicked reading its database {when} ({})", SLED_FILES),
        ADVICE_RESTORE,
    )
}
