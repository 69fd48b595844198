//! What the store does when it opens files that are damaged, half-written
//! or inconsistent with each other: the recovery rules, and the helpers
//! every part of the store uses to follow them.
//!
//! # The rules
//!
//! 1. **Decide first, change after.** At open everything is verified
//!    read-only: every event-log frame's checksum and sequence, every `.ids`
//!    file, sled's counters against the event log, sled's audit log against
//!    the persisted checkpoint ([`crate::checkpoint`]). Only when the whole
//!    store is consistent is anything changed. Sled cannot be opened without
//!    writing (its recovery extends `db`, writes from where it stopped
//!    reading, writes a new `snap.*` and deletes older ones), so before it
//!    opens, `db` is copied to `db.open-guard.tmp` and the snapshots are
//!    read ([`DbGuard`], [`SnapshotGuard`]); if the store then refuses, they
//!    are put back and a refusal leaves every byte as it was. The one change
//!    made before sled opens: its snapshot temporaries are removed and a
//!    damaged snapshot is set aside (rule 5), without which sled cannot open.
//! 2. **A damaged file is never truncated, rewritten or deleted.** Either
//!    the store recovers with every acknowledged event intact, rebuilding
//!    only *derived* data (the `.ids` id index, sled snapshots) from the
//!    authoritative data and logging that it did, or it refuses to start
//!    with [`StoreError::Damaged`]: the file, the offset, and what the
//!    operator can do. A damaged derived file that is rebuilt is first set
//!    aside as `<name>.damaged-<n>` ([`set_aside`]), never deleted.
//! 3. **The only bytes ignored at open are a tail that provably was never
//!    acknowledged**: a torn frame after the last committed event, or the
//!    records of the one batch that was appended but whose sled commit never
//!    happened (sled's next-sequence counter is the authority). They are not
//!    cut: the log continues in a new segment and the scan ignores a
//!    segment's records at or past the next segment's first sequence; a
//!    whole segment that holds only the uncommitted batch is renamed to
//!    `<name>.uncommitted-<n>`. Nothing in the event log is ever truncated.
//! 4. **Sled going back is detected.** The log is synced before sled, and
//!    batch N+1 is appended only after batch N's sled commit; the last frame
//!    of every batch carries a batch-end flag. The store refuses when the log
//!    holds more than one batch beyond sled's counter, or when the counter is
//!    not on a batch boundary. Ack-only batches never touch the log, so the
//!    latest signed checkpoint (size, root, note) is also persisted outside
//!    sled; the store refuses if sled's audit log is shorter than it or has
//!    another root at its size. Residual window: sled losing exactly its
//!    last event batch (one group commit) *and* every audit entry committed
//!    since the last persisted checkpoint (at most ~1 s of commits) is not
//!    detected — those writes are indistinguishable from a batch whose
//!    commit never happened.
//! 5. **New files are written to a temporary name, synced, renamed, and the
//!    directory synced** ([`write_atomic`]). Temporaries left by an
//!    interrupted start or a full disk are recognised and removed (they are
//!    not evidence): `*.tmp` in the event-log directory (`<first>.ids.tmp`,
//!    `ids.key.tmp`), `checkpoint.tmp` and `db.open-guard.tmp` in the store
//!    directory, and sled's own `snap.<lsn>.generating` (sled reads those as
//!    snapshots and then fails with "Read corrupted data" forever, see
//!    [`prepare_sled_dir`]). A damaged finished sled snapshot is moved to
//!    `<store>/damaged/snap.<lsn>.damaged-<n>` (not beside it: sled reads
//!    every `snap.*` in its directory).
//! 6. Every refusal is one typed [`StoreError::Damaged`]; `caseshare serve`
//!    prints it once and exits non-zero.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::StoreError;

/// Advice for damage to authoritative data.
pub const ADVICE_RESTORE: &str = "Nothing was changed. Keep the data directory as it is, run \
     `caseshare check --data-dir <data dir>` for a full report, and restore the data \
     directory from the last backup";

/// Advice when sled and the event log disagree.
pub const ADVICE_SLED_BEHIND: &str = "Nothing was changed. The sled database (db, conf, snap.* \
     and blobs/ in the store directory; sled does not say which of them is damaged) lost \
     committed writes (acknowledged events or audit entries would be lost); run `caseshare check \
     --data-dir <data dir>` and restore the data directory from the last backup";

/// Formats an optional offset for [`StoreError::Damaged`].
pub fn at_offset(offset: Option<u64>) -> String {
    match offset {
        Some(o) => format!(" at byte {o}"),
        None => String::new(),
    }
}

/// A damage refusal.
pub fn damaged(
    path: &Path,
    offset: Option<u64>,
    detail: impl Into<String>,
    advice: &'static str,
) -> StoreError {
    StoreError::Damaged {
        path: path.to_path_buf(),
        offset,
        detail: detail.into(),
        advice,
    }
}

/// Syncs a directory (after a rename or a new file in it).
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Writes `bytes` to `path` durably: `<path>.tmp`, sync, rename, sync the
/// directory. A crash leaves either the old file or the new one (and maybe a
/// `.tmp`, removed at the next open).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let result = (|| -> Result<(), StoreError> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        // A full disk: do not leave a half-written temporary behind.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Renames a damaged file to `<name>.damaged-<n>` (the first free `n`) in
/// `into` (its own directory when `None`), syncs, and returns the new path.
pub fn set_aside(path: &Path, into: Option<&Path>) -> Result<PathBuf, StoreError> {
    set_aside_as(path, into, "damaged")
}

/// Renames `path` to `<name>.<what>-<n>` (the first free `n`).
pub fn set_aside_as(path: &Path, into: Option<&Path>, what: &str) -> Result<PathBuf, StoreError> {
    let dir = into
        .map(Path::to_path_buf)
        .unwrap_or_else(|| path.parent().unwrap_or(Path::new(".")).to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let mut n = 1u32;
    let target = loop {
        let candidate = dir.join(format!("{name}.{what}-{n}"));
        if !candidate.exists() {
            break candidate;
        }
        n += 1;
    };
    std::fs::rename(path, &target)?;
    sync_dir(&dir)?;
    if let Some(parent) = path.parent()
        && parent != dir
    {
        sync_dir(parent)?;
    }
    Ok(target)
}

/// The subdirectory of the sled directory damaged sled snapshots are set
/// aside into (sled treats every `snap.*` file in its own directory as a
/// snapshot, so a `snap.<lsn>.damaged-1` there would be read again).
pub const SLED_SET_ASIDE_DIR: &str = "damaged";

/// What a sled snapshot file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotState {
    /// Its length and CRC check out.
    Whole,
    /// A temporary (`snap.<lsn>.generating`): an interrupted or failed write.
    Temporary,
    /// A finished name, but too short or a wrong CRC.
    Damaged(String),
}

/// Checks a sled 0.34 snapshot file the way sled reads it: the bytes, then
/// an 8-byte length and the CRC-32 of the bytes (the last 4 bytes).
pub fn sled_snapshot_state(path: &Path) -> Result<SnapshotState, StoreError> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    if name.ends_with(".generating") {
        return Ok(SnapshotState::Temporary);
    }
    let bytes = std::fs::read(path)?;
    let len = bytes.len();
    if len <= 12 {
        return Ok(SnapshotState::Damaged(format!("only {len} bytes")));
    }
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&bytes[len - 4..]);
    let expected = u32::from_le_bytes(crc);
    if crc32fast::hash(&bytes[..len - 12]) != expected {
        return Ok(SnapshotState::Damaged("its CRC does not match".into()));
    }
    Ok(SnapshotState::Whole)
}

/// The sled snapshot files (`snap.*`, as sled lists them) in `dir`.
pub fn sled_snapshots(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && !name.ends_with(".in___motion") && entry.path().is_file() {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Before sled opens `dir`: removes its snapshot temporaries and, if the
/// snapshot sled would read is damaged, sets every snapshot aside (they are
/// derived: sled rebuilds its page table from the `db` file). Returns what
/// it did, for the log.
///
/// Sled 0.34 writes `snap.<lsn>.generating`, syncs it, renames it to
/// `snap.<lsn>`, then deletes older snapshots; at open it reads the
/// highest-named `snap.*` (a `.generating` one sorts after its finished
/// twin) and fails with "Read corrupted data" if that one is 12 bytes or
/// shorter or its CRC is wrong. A full disk during the write leaves a
/// 0-byte `.generating` file, so every later open failed.
pub fn prepare_sled_dir(dir: &Path) -> Result<Vec<String>, StoreError> {
    let mut done = Vec::new();
    let mut snaps = Vec::new();
    for path in sled_snapshots(dir)? {
        if sled_snapshot_state(&path)? == SnapshotState::Temporary {
            std::fs::remove_file(&path)?;
            done.push(format!("removed the snapshot temporary {}", path.display()));
        } else {
            snaps.push(path);
        }
    }
    if !done.is_empty() {
        sync_dir(dir)?;
    }
    if let Some(newest) = snaps.last()
        && let SnapshotState::Damaged(why) = sled_snapshot_state(newest)?
    {
        let into = dir.join(SLED_SET_ASIDE_DIR);
        for path in &snaps {
            let moved = set_aside(path, Some(&into))?;
            done.push(format!(
                "set the sled snapshot {} aside as {} ({}); sled rebuilds it from its log",
                path.display(),
                moved.display(),
                if path == newest {
                    why.as_str()
                } else {
                    "older than a damaged one"
                }
            ));
        }
    }
    Ok(done)
}

/// Removes the temporaries named in rule 5 from `dir` (the event-log or the
/// store directory); returns their paths.
pub fn remove_temporaries(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut removed = Vec::new();
    for path in temporaries(dir)? {
        std::fs::remove_file(&path)?;
        removed.push(path);
    }
    if !removed.is_empty() {
        sync_dir(dir)?;
    }
    Ok(removed)
}

/// The temporaries of rule 5 in `dir` (files whose name ends in `.tmp`).
pub fn temporaries(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_name().to_string_lossy().ends_with(".tmp") && entry.path().is_file() {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Sled's snapshot files as they were before sled opened, to put back if
/// the store then refuses to start (sled writes a snapshot at open).
#[derive(Debug)]
pub struct SnapshotGuard {
    dir: PathBuf,
    files: Vec<(PathBuf, Vec<u8>)>,
}

impl SnapshotGuard {
    /// Reads every `snap.*` file in `dir`.
    pub fn capture(dir: &Path) -> Result<Self, StoreError> {
        let mut files = Vec::new();
        for p in sled_snapshots(dir)? {
            let bytes = std::fs::read(&p)?;
            files.push((p, bytes));
        }
        Ok(SnapshotGuard {
            dir: dir.to_path_buf(),
            files,
        })
    }

    /// Puts the snapshots back: removes ones sled wrote, restores ones it
    /// removed or changed. Best effort (the store is refusing anyway).
    pub fn restore(&self) {
        let Ok(now) = sled_snapshots(&self.dir) else {
            return;
        };
        for p in now {
            if !self.files.iter().any(|(q, _)| *q == p) {
                let _ = std::fs::remove_file(&p);
            }
        }
        for (p, bytes) in &self.files {
            if std::fs::read(p).ok().as_deref() != Some(bytes.as_slice()) {
                let _ = write_atomic(p, bytes, 0o644);
            }
        }
        let _ = sync_dir(&self.dir);
    }
}

/// The name of the copy of sled's `db` taken before sled opens it.
pub const DB_GUARD: &str = "db.open-guard.tmp";

/// The directory of copies of sled's blob files taken before sled opens
/// them (sled's recovery deletes blobs it no longer finds referenced, and
/// may write a new blob under an old one's name).
pub const BLOBS_GUARD: &str = "blobs.open-guard.tmp";

/// A copy of sled's `db` file taken before sled opens it: sled's recovery
/// writes into the file as it opens (it extends it, and after damage it
/// writes from where its recovery stopped, over what follows), so if the
/// store then refuses to start the copy is put back and the file is as it
/// was. Discarded once the store has opened.
#[derive(Debug)]
pub struct DbGuard {
    db: PathBuf,
    copy: Option<PathBuf>,
    /// Sled's files that did not exist before it opened (it creates `db`
    /// and `conf` when missing): removed again on a refusal.
    absent: Vec<PathBuf>,
    /// Copies of every blob file.
    blobs: Option<BlobsGuard>,
}

/// Sled's `blobs/` directory as it was before sled opened.
#[derive(Debug)]
struct BlobsGuard {
    blobs: PathBuf,
    links: PathBuf,
    names: Vec<std::ffi::OsString>,
}

impl BlobsGuard {
    fn capture(dir: &Path) -> Result<Option<Self>, StoreError> {
        let blobs = dir.join("blobs");
        let links = dir.join(BLOBS_GUARD);
        if links.exists() {
            std::fs::remove_dir_all(&links)?;
            tracing::info!(dir = %links.display(), "removed a temporary left by an interrupted start");
        }
        if !blobs.is_dir() {
            return Ok(None);
        }
        let copied = (|| -> std::io::Result<Vec<std::ffi::OsString>> {
            std::fs::create_dir(&links)?;
            let mut names = Vec::new();
            for entry in std::fs::read_dir(&blobs)? {
                let entry = entry?;
                std::fs::copy(entry.path(), links.join(entry.file_name()))?;
                names.push(entry.file_name());
            }
            Ok(names)
        })();
        match copied {
            Ok(names) => Ok(Some(BlobsGuard {
                blobs,
                links,
                names,
            })),
            Err(e) => {
                // A full disk: sled is not opened without the copy.
                let _ = std::fs::remove_dir_all(&links);
                Err(no_guard(&blobs, &links, &e))
            }
        }
    }

    /// Puts back every blob sled removed or rewrote, and removes every blob
    /// it added.
    fn restore(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.blobs) {
            for entry in entries.flatten() {
                if !self.names.contains(&entry.file_name()) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        for name in &self.names {
            let target = self.blobs.join(name);
            let copy = self.links.join(name);
            if std::fs::read(&target).ok() != std::fs::read(&copy).ok() {
                let _ = std::fs::rename(&copy, &target);
            }
        }
        let _ = sync_dir(&self.blobs);
        self.discard();
    }

    fn discard(&self) {
        let _ = std::fs::remove_dir_all(&self.links);
    }
}

/// The refusal when the copy sled is opened under cannot be made (a full
/// disk, a file-size limit): sled writes into its files as it opens, so
/// without the copy a later refusal could not leave them as they were.
fn no_guard(file: &Path, copy: &Path, e: &std::io::Error) -> StoreError {
    StoreError::Engine(format!(
        "could not copy {} to {} before opening sled ({e}); sled writes into its files as it \
         opens, and the broker opens them only with a copy to put back if it then refuses to \
         start. Nothing was changed. Make room on the data directory's disk (as much again as \
         {}) and start again",
        file.display(),
        copy.display(),
        file.display()
    ))
}

impl DbGuard {
    /// Copies `<dir>/db` to `<dir>/db.open-guard.tmp` (a leftover copy from
    /// an interrupted start is a temporary and is replaced). Without a `db`
    /// (a new store) there is nothing to guard. When the copy cannot be
    /// made (a full disk) the open is refused before sled touches a byte.
    pub fn capture(dir: &Path) -> Result<Self, StoreError> {
        let db = dir.join("db");
        let copy = dir.join(DB_GUARD);
        if copy.exists() {
            std::fs::remove_file(&copy)?;
            tracing::info!(file = %copy.display(), "removed a temporary left by an interrupted start");
        }
        let absent: Vec<PathBuf> = ["db", "conf", "blobs"]
            .iter()
            .map(|n| dir.join(n))
            .filter(|p| !p.exists())
            .collect();
        let blobs = BlobsGuard::capture(dir)?;
        if !db.exists() {
            return Ok(DbGuard {
                db,
                copy: None,
                absent,
                blobs,
            });
        }
        match std::fs::copy(&db, &copy) {
            Ok(_) => Ok(DbGuard {
                db,
                copy: Some(copy),
                absent,
                blobs,
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&copy);
                if let Some(b) = &blobs {
                    b.discard();
                }
                Err(no_guard(&db, &copy, &e))
            }
        }
    }

    /// The store opened: the copy is not needed.
    pub fn discard(self) {
        if let Some(c) = &self.copy {
            let _ = std::fs::remove_file(c);
        }
        if let Some(b) = &self.blobs {
            b.discard();
        }
    }

    /// The store refused: puts the copy back over `db` and sled's blobs
    /// back as they were.
    pub fn restore(self) {
        if let Some(b) = &self.blobs {
            b.restore();
        }
        for p in &self.absent {
            if p.is_dir() {
                let _ = std::fs::remove_dir(p);
            } else {
                let _ = std::fs::remove_file(p);
            }
        }
        if let Some(c) = &self.copy {
            // Unchanged: drop the copy; changed: the copy replaces it.
            let unchanged = std::fs::read(c).ok() == std::fs::read(&self.db).ok();
            if unchanged || std::fs::rename(c, &self.db).is_err() {
                let _ = std::fs::remove_file(c);
            }
            if let Some(dir) = self.db.parent() {
                let _ = sync_dir(dir);
            }
        }
    }
}
