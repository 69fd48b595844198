//! Making sled stable off the commit's path: [`SledFiles::sync`] (sled's
//! flush, then `fdatasync` of its data file and of blob files not synced
//! yet), run by a thread of its own about once a second while commits
//! arrive, and directly before a backup is staged.
//!
//! A flush makes stable everything sled had applied when it began, so the
//! number of the last frame applied, read before the flush, is stable
//! after it: WAL files up to there can go ([`super::Wal::trim`]).

use std::collections::HashSet;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::StoreError;

/// How often sled is made stable while commits arrive.
pub(crate) const EVERY: Duration = Duration::from_secs(1);

/// Sled's files.
#[derive(Debug)]
pub(crate) struct SledFiles {
    db: sled::Db,
    dir: PathBuf,
    data_file: File,
    synced_blobs: Mutex<HashSet<std::ffi::OsString>>,
    /// One sync at a time.
    running: Mutex<()>,
}

impl SledFiles {
    /// Sled's files in store directory `dir`.
    pub(crate) fn new(db: sled::Db, dir: PathBuf) -> Result<Self, StoreError> {
        let data_file = File::open(dir.join("db"))?;
        Ok(SledFiles {
            db,
            dir,
            data_file,
            synced_blobs: Mutex::new(HashSet::new()),
            running: Mutex::new(()),
        })
    }

    /// Makes everything sled has applied so far stable.
    pub(crate) fn sync(&self) -> Result<(), StoreError> {
        let _one = self
            .running
            .lock()
            .map_err(|_| StoreError::Engine("sled sync lock poisoned".into()))?;
        self.db.flush()?;
        self.data_file.sync_data()?;
        let blobs = self.dir.join("blobs");
        if let Ok(entries) = std::fs::read_dir(&blobs) {
            let mut synced = self
                .synced_blobs
                .lock()
                .map_err(|_| StoreError::Engine("blob set poisoned".into()))?;
            let mut new_files = false;
            for entry in entries.flatten() {
                let name = entry.file_name();
                if !synced.contains(&name) {
                    File::open(entry.path())?.sync_data()?;
                    synced.insert(name);
                    new_files = true;
                }
            }
            if new_files {
                File::open(&blobs)?.sync_all()?;
            }
        }
        Ok(())
    }
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
                "could not make sled stable; the write-ahead log keeps every commit since"
            ),
        }
    }
}
