//! Making sled and the two logs stable off the commit's path:
//! [`SledFiles::sync`] (`fdatasync` of the event log's active segment and
//! the audit log's active file, then sled's flush and `fdatasync` of its
//! data file and of blob files not synced yet), run by a thread of its own
//! every 500 ms ([`EVERY`]) while commits arrive, and directly before a backup
//! is staged.
//!
//! The syncs make stable everything appended and applied when they began,
//! so the number of the last frame applied, read before them, is stable
//! after them: WAL files up to there can go ([`super::Wal::trim`]), their
//! copies of the logs' bytes no longer needed.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::StoreError;
use crate::audit_log::AuditLog;
use crate::segments::EventLog;

/// How often sled and the logs are made stable while commits arrive.
/// Often enough that each pass has little to write: a pass's writes share
/// the disk with the commits' `fdatasync`s, and once a second a pass at
/// 2,000 events/s wrote a few MB at once and held the commits behind it
/// for 5–6 ms. Not much more often: every 200 ms held the server ~20 MiB
/// more with a 1M-event backlog (sled's flushes), where 500 ms held
/// ~5–10 MiB more and kept the tail as short (`docs/BENCHMARKS.md`).
pub(crate) const EVERY: Duration = Duration::from_millis(500);

/// Sled's files, and the two logs'.
#[derive(Debug)]
pub(crate) struct SledFiles {
    db: sled::Db,
    dir: PathBuf,
    events: Arc<EventLog>,
    audit_log: Arc<AuditLog>,
    data_file: File,
    synced_blobs: Mutex<HashSet<OsString>>,
    /// One sync at a time.
    running: Mutex<()>,
}

impl SledFiles {
    /// Sled's files in store directory `dir`, and the two logs.
    pub(crate) fn new(
        db: sled::Db,
        dir: PathBuf,
        events: Arc<EventLog>,
        audit_log: Arc<AuditLog>,
    ) -> Result<Self, StoreError> {
        let data_file = File::open(dir.join("db"))?;
        Ok(SledFiles {
            db,
            dir,
            events,
            audit_log,
            data_file,
            synced_blobs: Mutex::new(HashSet::new()),
            running: Mutex::new(()),
        })
    }

    /// Makes everything appended to the logs and applied to sled so far
    /// stable.
    pub(crate) fn sync(&self) -> Result<(), StoreError> {
        let _one = self
            .running
            .lock()
            .map_err(|_| StoreError::Engine("sled sync lock poisoned".into()))?;
        self.events.sync()?;
        self.audit_log.sync()?;
        self.db.flush()?;
        // The flush sealed sled's IO buffer; its free waits in this
        // thread's epoch bag (see `release_deferred`).
        crate::wal::release_deferred();
        self.data_file.sync_data()?;
        let mut synced = self
            .synced_blobs
            .lock()
            .map_err(|_| StoreError::Engine("blob set poisoned".into()))?;
        sync_blobs(&self.dir.join("blobs"), &mut synced)?;
        Ok(())
    }
}

/// Syncs the blob files in `blobs` that are not in `synced` (then the
/// folder, if there were any), and leaves in `synced` exactly the files
/// found. Sled writes a new blob for each new version of a large value and
/// deletes the old one when it likes: a blob listed but gone by the time
/// it is opened needs no sync, and the set of names holds only files that
/// exist, however many blobs a long-running broker has written.
fn sync_blobs(blobs: &Path, synced: &mut HashSet<OsString>) -> Result<(), StoreError> {
    let entries = match std::fs::read_dir(blobs) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            synced.clear();
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let mut present = HashSet::with_capacity(synced.len());
    let mut new_files = false;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if !synced.contains(&name) {
            match File::open(entry.path()) {
                Ok(file) => file.sync_data()?,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            }
            new_files = true;
        }
        present.insert(name);
    }
    if new_files {
        File::open(blobs)?.sync_all()?;
    }
    *synced = present;
    Ok(())
}

/// The thread that makes sled stable, and what it has made stable.
#[derive(Debug)]
pub(crate) struct Stabiliser {
    applied: Arc<AtomicU64>,
    stable: Arc<AtomicU64>,
    stop: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Stabiliser {
    /// Starts the thread; frames up to `stable` are stable already.
    pub(crate) fn start(files: Arc<SledFiles>, stable: u64) -> Result<Self, StoreError> {
        let applied = Arc::new(AtomicU64::new(stable));
        let stable = Arc::new(AtomicU64::new(stable));
        let (stop, stopped) = std::sync::mpsc::sync_channel(1);
        let (a, s) = (applied.clone(), stable.clone());
        let thread = std::thread::Builder::new()
            .name("sled-stabiliser".into())
            .spawn(move || run(&files, &a, &s, &stopped))
            .map_err(|e| StoreError::Engine(format!("could not start sled's stabiliser: {e}")))?;
        Ok(Stabiliser {
            applied,
            stable,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Frame `n` is applied to sled.
    pub(crate) fn applied(&self, n: u64) {
        self.applied.store(n, Ordering::Release);
    }

    /// The last frame applied to sled.
    pub(crate) fn last_applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Frames up to `n` are stable (synced by the caller).
    pub(crate) fn made_stable(&self, n: u64) {
        self.stable.fetch_max(n, Ordering::AcqRel);
    }

    /// The last frame sled holds stably.
    pub(crate) fn stable(&self) -> u64 {
        self.stable.load(Ordering::Acquire)
    }
}

impl Drop for Stabiliser {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(files: &SledFiles, applied: &AtomicU64, stable: &AtomicU64, stopped: &Receiver<()>) {
    let mut last = Instant::now();
    loop {
        match stopped.recv_timeout(EVERY.saturating_sub(last.elapsed())) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        last = Instant::now();
        let a = applied.load(Ordering::Acquire);
        if a <= stable.load(Ordering::Acquire) {
            continue;
        }
        match files.sync() {
            Ok(()) => {
                stable.fetch_max(a, Ordering::AcqRel);
            }
            Err(e) => tracing::error!(
                error = %e,
                "could not make sled and the logs stable; the write-ahead log keeps every \
                 commit since"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn names(set: &HashSet<OsString>) -> Vec<String> {
        let mut v: Vec<String> = set
            .iter()
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Blobs come and go under sled: one listed but gone when opened (here
    /// a dangling link, which `read_dir` lists and `open` cannot follow)
    /// is no error, and the set of synced names holds only files present.
    #[test]
    fn blobs_that_sled_removed_are_skipped_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = dir.path().join("blobs");
        let mut synced = HashSet::new();
        // No folder yet: nothing to do.
        sync_blobs(&blobs, &mut synced).unwrap();
        assert!(synced.is_empty());
        std::fs::create_dir(&blobs).unwrap();
        std::fs::write(blobs.join("10"), b"a").unwrap();
        std::fs::write(blobs.join("11"), b"b").unwrap();
        std::os::unix::fs::symlink(blobs.join("gone"), blobs.join("12")).unwrap();
        sync_blobs(&blobs, &mut synced).unwrap();
        assert_eq!(names(&synced), ["10", "11"]);
        std::fs::remove_file(blobs.join("10")).unwrap();
        std::fs::remove_file(blobs.join("12")).unwrap();
        std::fs::write(blobs.join("13"), b"c").unwrap();
        sync_blobs(&blobs, &mut synced).unwrap();
        assert_eq!(names(&synced), ["11", "13"]);
    }
}
