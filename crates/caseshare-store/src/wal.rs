//! The event log as the write-ahead log of the whole commit.
//!
//! A commit's sled writes (every insert and remove of its one sled batch,
//! with the values as they were computed) are recorded as one *commit
//! frame* after the batch's events in the event log, and the batch's bytes
//! (events and commit frame) are made durable by one `fdatasync`. Sled then
//! applies the batch without a flush of its own: sled writes it out in the
//! background and is made stable ([`crate::SledStore`]'s `sync`) before the
//! log's segments are deleted, at shutdown and before a backup.
//!
//! Commit frames are numbered; sled records the number of the last one it
//! applied (`M` ‖ `commit`) in the same atomic batch. At open, [`replay`]
//! finds the commit frames after that number and applies them, in order, to
//! sled (sled is crash-consistent to a prefix of its batches, so it is at
//! most behind, never torn), and the store then opens as if sled had been
//! synced at every commit.
//!
//! Frame payload: format byte [`FORMAT`], commit number (`u64` LE), then
//! the writes: `1 ‖ key len u32 LE ‖ key ‖ value len u32 LE ‖ value` for an
//! insert, `2 ‖ key len u32 LE ‖ key` for a remove. Sled applies a batch's
//! writes as a map (the last write of a key wins); replay applies them in
//! order into a batch, which gives the same result.
//!
//! Architecture Invariant: a commit is acknowledged only after its commit
//! frame is durable; the frame holds every sled write of the commit, so
//! replaying it over sled's state before the commit gives sled's state
//! after it, with no read of anything else.

use std::path::{Path, PathBuf};

use crate::StoreError;
use crate::recovery::{ADVICE_RESTORE, ADVICE_SLED_BEHIND, damaged};
use crate::sled_backend::{be, key, read_be};

/// The format byte of a commit frame's payload.
pub(crate) const FORMAT: u8 = 1;

const INSERT: u8 = 1;
const REMOVE: u8 = 2;

/// Sled's record of the last commit frame it applied.
pub(crate) fn applied_key() -> Vec<u8> {
    key(b'M', &[b"commit"])
}

/// Something a commit's writes can be staged in: sled's own batch (for
/// writes made at open, synced at once) or a [`WalBatch`].
pub(crate) trait Writes {
    /// Sets `k` to `v`.
    fn put(&mut self, k: &[u8], v: &[u8]);
    /// Removes `k`.
    fn delete(&mut self, k: &[u8]);
}

impl Writes for sled::Batch {
    fn put(&mut self, k: &[u8], v: &[u8]) {
        self.insert(k, v);
    }
    fn delete(&mut self, k: &[u8]) {
        self.remove(k);
    }
}

/// One commit's sled batch, recorded as it is built.
pub(crate) struct WalBatch {
    batch: sled::Batch,
    frame: Vec<u8>,
}

impl WalBatch {
    /// An empty batch for commit frame `number` (which it records in sled).
    pub(crate) fn new(number: u64) -> Self {
        let mut frame = Vec::with_capacity(4096);
        frame.push(FORMAT);
        frame.extend_from_slice(&number.to_le_bytes());
        let mut b = WalBatch {
            batch: sled::Batch::default(),
            frame,
        };
        b.put(&applied_key(), &be(number));
        b
    }

    /// The sled batch and the commit frame's payload.
    pub(crate) fn into_parts(self) -> (sled::Batch, Vec<u8>) {
        (self.batch, self.frame)
    }

    fn push_len(&mut self, n: usize) {
        // Keys and values are far below 4 GiB (the store refuses larger
        // records before they get here); saturate rather than wrap.
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        self.frame.extend_from_slice(&n.to_le_bytes());
    }
}

impl Writes for WalBatch {
    fn put(&mut self, k: &[u8], v: &[u8]) {
        self.frame.push(INSERT);
        self.push_len(k.len());
        self.frame.extend_from_slice(k);
        self.push_len(v.len());
        self.frame.extend_from_slice(v);
        self.batch.insert(k, v);
    }
    fn delete(&mut self, k: &[u8]) {
        self.frame.push(REMOVE);
        self.push_len(k.len());
        self.frame.extend_from_slice(k);
        self.batch.remove(k);
    }
}

/// The commit number of a commit frame's payload.
pub(crate) fn number(payload: &[u8]) -> Result<u64, String> {
    match payload {
        [FORMAT, rest @ ..] => rest
            .get(..8)
            .and_then(|n| n.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or_else(|| "a commit frame too short for its number".to_string()),
        [other, ..] => Err(format!("a commit frame of unknown format {other}")),
        [] => Err("an empty commit frame".into()),
    }
}

/// The sled batch a commit frame records.
pub(crate) fn decode(payload: &[u8]) -> Result<sled::Batch, String> {
    number(payload)?;
    let mut rest = &payload[9..];
    let mut batch = sled::Batch::default();
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        let (head, tail) = rest
            .split_at_checked(n)
            .ok_or_else(|| "a commit frame cut short inside a write".to_string())?;
        *rest = tail;
        Ok(head)
    }
    fn len(rest: &mut &[u8]) -> Result<usize, String> {
        let b = take(rest, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        let n = len(&mut rest)?;
        let k = take(&mut rest, n)?;
        match op {
            INSERT => {
                let n = len(&mut rest)?;
                batch.insert(k, take(&mut rest, n)?);
            }
            REMOVE => batch.remove(k),
            other => {
                return Err(format!(
                    "a commit frame with a write of unknown kind {other}"
                ));
            }
        }
    }
    Ok(batch)
}

/// A commit frame found in the log.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    /// Its number.
    pub number: u64,
    /// Where its frame starts.
    pub offset: u64,
    /// Its payload's bytes in the segment file.
    pub payload: std::ops::Range<usize>,
}

/// What [`replay`] did: the commit frames applied, first and last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    /// The first frame applied.
    pub from: u64,
    /// The last.
    pub to: u64,
}

/// The number of the last whole commit frame in the log at `events_dir`
/// (read-only; for `caseshare check`).
pub(crate) fn last_frame(events_dir: &Path) -> Result<Option<u64>, StoreError> {
    let names = crate::segments::open::segment_files(events_dir)?;
    for (first, path) in names.iter().rev() {
        let s = crate::segments::open::scan(path, *first)?;
        if let Some(c) = s.commits.last() {
            return Ok(Some(c.number));
        }
    }
    Ok(None)
}

/// Applies to `tree` the commit frames in the event log at `events_dir`
/// that sled has not applied yet, in order, and returns which. Reads the
/// segments from the last backwards, only as far as needed. Refuses
/// (changing nothing) when the frames sled needs are not all there, or when
/// a segment is damaged with whole commit frames after the damage (the
/// damage is in acknowledged commits, not a torn write). The caller makes
/// sled stable afterwards.
pub(crate) fn replay(events_dir: &Path, tree: &sled::Tree) -> Result<Option<Replayed>, StoreError> {
    let applied = match tree.get(applied_key())? {
        Some(v) => read_be(&v, "last commit applied")?,
        None => 0,
    };
    let names = crate::segments::open::segment_files(events_dir)?;
    // Newest first: (segment, its bytes, frames after `applied`).
    let mut pending: Vec<(PathBuf, Vec<u8>, Vec<Found>)> = Vec::new();
    for (first, path) in names.iter().rev() {
        let (bytes, s) = crate::segments::open::scan_bytes(path, *first)?;
        if let Some(at) = crate::segments::open::stop_offset(&s.stop)
            && let Some(later) = crate::segments::open::commit_frame_after(&bytes, at)
        {
            return Err(damaged(
                path,
                Some(at),
                format!(
                    "the frame here is damaged, but a whole commit frame follows at byte \
                     {later}: acknowledged commits are damaged, this is not a torn write"
                ),
                ADVICE_RESTORE,
            ));
        }
        let done = s.commits.first().is_none_or(|c| c.number <= applied + 1);
        let wanted: Vec<Found> = s
            .commits
            .into_iter()
            .filter(|c| c.number > applied)
            .collect();
        if !wanted.is_empty() {
            pending.push((path.clone(), bytes, wanted));
        }
        if done {
            break;
        }
    }
    let mut expected = applied + 1;
    let mut plan: Vec<(PathBuf, u64, sled::Batch)> = Vec::new();
    for (path, bytes, frames) in pending.iter().rev() {
        for f in frames {
            if f.number != expected {
                return Err(damaged(
                    &events_dir.parent().unwrap_or(events_dir).join("db"),
                    None,
                    format!(
                        "sled has applied commit {applied}, but the next commit frame in the \
                         event log is {} ({} at byte {}): commit frames from {expected} are \
                         missing",
                        f.number,
                        path.display(),
                        f.offset
                    ),
                    ADVICE_SLED_BEHIND,
                ));
            }
            let batch = decode(&bytes[f.payload.clone()])
                .map_err(|why| damaged(path, Some(f.offset), why, ADVICE_RESTORE))?;
            plan.push((path.clone(), f.offset, batch));
            expected += 1;
        }
    }
    if plan.is_empty() {
        return Ok(None);
    }
    for (_, _, batch) in plan {
        tree.apply_batch(batch)?;
    }
    Ok(Some(Replayed {
        from: applied + 1,
        to: expected - 1,
    }))
}

/// Applies the commit frames sled lacks ([`crate::wal::replay`]) and makes
/// sled stable; returns the number of the last commit sled has applied.
pub(crate) fn replay_commits(
    dir: &Path,
    db: &sled::Db,
    tree: &sled::Tree,
) -> Result<u64, StoreError> {
    let events = dir.join("events");
    if events.is_dir()
        && let Some(r) = replay(&events, tree)?
    {
        db.flush()?;
        sync_files(dir)?;
        tracing::info!(
            from = r.from,
            to = r.to,
            "sled caught up with commits it had not made stable (replayed from the event log)"
        );
    }
    match tree.get(applied_key())? {
        Some(v) => read_be(&v, "last commit applied"),
        None => Ok(0),
    }
}

/// `fdatasync` of sled's data file and of every blob file, after a flush.
fn sync_files(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir.join("db"))?.sync_data()?;
    let blobs = dir.join("blobs");
    if let Ok(entries) = std::fs::read_dir(&blobs) {
        for entry in entries.flatten() {
            std::fs::File::open(entry.path())?.sync_data()?;
        }
        std::fs::File::open(&blobs)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_frame_decodes_to_the_writes_it_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        tree.insert(b"gone", b"x").unwrap();
        let mut w = WalBatch::new(7);
        w.put(b"a", b"1");
        w.put(b"b", b"");
        w.delete(b"gone");
        w.put(b"a", b"2");
        let (_, frame) = w.into_parts();
        assert_eq!(number(&frame).unwrap(), 7);
        tree.apply_batch(decode(&frame).unwrap()).unwrap();
        assert_eq!(tree.get(b"a").unwrap().unwrap().as_ref(), b"2");
        assert_eq!(tree.get(b"b").unwrap().unwrap().as_ref(), b"");
        assert!(tree.get(b"gone").unwrap().is_none());
        assert_eq!(
            read_be(&tree.get(applied_key()).unwrap().unwrap(), "n").unwrap(),
            7
        );
    }

    #[test]
    fn damaged_frames_are_errors_not_panics() {
        let mut w = WalBatch::new(1);
        w.put(b"key", b"value");
        let (_, frame) = w.into_parts();
        for cut in 0..frame.len() {
            // Every prefix either decodes (a prefix ending between writes)
            // or is an error.
            let _ = decode(&frame[..cut]);
        }
        assert!(decode(&[]).is_err());
        assert!(decode(&[9, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        let mut bad = frame.clone();
        bad[9] = 7;
        assert!(decode(&bad).unwrap_err().contains("unknown kind 7"));
        let mut short = frame;
        short.truncate(frame_len_minus_one(&short));
        assert!(decode(&short).is_err());
    }

    fn frame_len_minus_one(f: &[u8]) -> usize {
        f.len() - 1
    }
}
