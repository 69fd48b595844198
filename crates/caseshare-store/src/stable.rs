//! Making sled stable: its flush, then `fdatasync` of its data file and of
//! blob files not synced yet. Commits do not wait for it (the event log's
//! commit frames make them durable, [`crate::wal`]); a thread of its own
//! does it about once a second while commits arrive, so that a restart —
//! after a power loss too — replays only the last moments' commits. It is
//! also done before the log's segments are deleted, before a backup and at
//! close.

use std::collections::HashSet;
use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::StoreError;

/// How often, at most, commits ask the thread to make sled stable.
const EVERY: Duration = Duration::from_secs(1);

/// Sled's files, and what has been made stable.
#[derive(Debug)]
pub(crate) struct Stable {
    db: sled::Db,
    dir: PathBuf,
    data_file: File,
    synced_blobs: Mutex<HashSet<std::ffi::OsString>>,
    /// One stabilisation at a time.
    running: Mutex<()>,
}

impl Stable {
    pub(crate) fn new(db: sled::Db, dir: PathBuf) -> Result<Self, StoreError> {
        let data_file = File::open(dir.join("db"))?;
        Ok(Stable {
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

/// The background thread's handle: commits [`Background::nudge`] it.
#[derive(Debug)]
pub(crate) struct Background {
    tx: Option<SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    last: Mutex<Instant>,
}

impl Drop for Background {
    /// Ends the thread and waits for it, so that sled's files are no longer
    /// held once the store is gone.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Background {
    /// Starts the thread; it ends when the handle is dropped.
    pub(crate) fn start(stable: Arc<Stable>) -> Result<Self, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("sled-stable".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    if let Err(e) = stable.sync() {
                        // Not fatal: commits are durable in the event log;
                        // the next start replays more.
                        tracing::warn!(error = %e, "could not make sled stable in the background");
                    }
                }
            })?;
        Ok(Background {
            tx: Some(tx),
            thread: Some(thread),
            last: Mutex::new(Instant::now()),
        })
    }

    /// Asks for a stabilisation if the last was asked for over a second
    /// ago (never blocks).
    pub(crate) fn nudge(&self) {
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        if last.elapsed() < EVERY {
            return;
        }
        *last = Instant::now();
        if let Some(tx) = &self.tx {
            match tx.try_send(()) {
                Ok(()) | Err(TrySendError::Full(())) | Err(TrySendError::Disconnected(())) => {}
            }
        }
    }
}
