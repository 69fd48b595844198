//! WAL files made ahead of need, already zero-filled and synced, so that
//! a commit's `fdatasync` writes its frame's blocks and nothing else: on
//! a file that grows, the file system must also write the file's size
//! (its inode) with every sync, a second wait per commit (PostgreSQL's
//! `wal_init_zero` for the same reason).
//!
//! A thread of its own writes `wal/.spare.tmp` (zeros, synced) and renames
//! it `wal/.spare`; the WAL takes it as its next file by linking it to the
//! file's name (never over an existing one) and syncing the folder. The
//! thread syncs after every MiB of zeros ([`PIECE`]): the disk is never
//! asked to write more than that at once for it, so a commit's
//! `fdatasync` waits behind at most one piece (synced once at the end, the
//! 20 MiB held commits at 2,000 events/s for 7–12 ms each time a spare was
//! made).
//! One spare is made as the store opens (the first commit takes it if it
//! is ready); the WAL asks for the next when its active file is half full
//! of small frames (under `SMALL_FRAME_BYTES`, 64 KiB, on average), or,
//! if the active file had to start empty, once `EARLY_FRAMES` (64) small
//! frames in a row were written to it, and then gives way to the spare at
//! the first commit after it is ready (a fresh broker's first 16 MiB were otherwise
//! written to a growing file: three device requests per one-at-a-time
//! commit instead of two, measured 8 % fewer publishes a second): a large frame
//! pays for its file's new size once, and zero-filling ahead of a
//! pipelined load would double its writes for little gain (measured:
//! 5–13 % fewer events a second). If no spare is ready, the WAL makes a
//! new, empty file as before. Names starting with `.` are not WAL files
//! (the listing at open skips them, a backup leaves them out), and an
//! open removes them. The zeros after a file's last frame are its end,
//! not a torn frame ([`super::files`]).
//!
//! The same thread deletes the WAL files a commit has trimmed
//! ([`Spares::remove_later`]): on a file system mounted with `discard`,
//! deleting a 16 MiB file took 4–9 ms, and the commit that did it
//! answered its ops that much later. A file whose deletion a stop or a
//! crash cut short holds only frames sled holds stably; the next open
//! finds it and a later commit trims it again.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::StoreError;

/// The spare being written.
const TMP: &str = ".spare.tmp";
/// The spare ready to be taken.
const READY: &str = ".spare";
/// How many zeros are written between two syncs of the spare.
const PIECE: usize = 1 << 20;

/// The thread that keeps one spare WAL file ready.
#[derive(Debug)]
pub(super) struct Spares {
    dir: PathBuf,
    ready: Arc<Mutex<bool>>,
    /// A spare was asked for since the last one was made.
    wanted: Arc<AtomicBool>,
    /// Trimmed WAL files to delete.
    doomed: Arc<Mutex<Vec<PathBuf>>>,
    wake: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Removes spares left by an earlier run from `dir` (they may be half
/// written).
pub(super) fn remove_left_over(dir: &Path) -> Result<(), StoreError> {
    for name in [TMP, READY] {
        remove_if_present(&dir.join(name))?;
    }
    Ok(())
}

/// Deletes `path`; one already gone is fine.
pub(super) fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        done => done,
    }
}

impl Spares {
    /// Starts the thread, which makes a first spare of `bytes` zeros in
    /// `dir` at once.
    pub(super) fn start(dir: &Path, bytes: u64) -> Result<Spares, StoreError> {
        let ready = Arc::new(Mutex::new(false));
        // The first spare.
        let wanted = Arc::new(AtomicBool::new(true));
        let doomed = Arc::new(Mutex::new(Vec::new()));
        let (wake, woken) = std::sync::mpsc::sync_channel(1);
        let chores = Chores {
            dir: dir.to_path_buf(),
            bytes,
            ready: ready.clone(),
            wanted: wanted.clone(),
            doomed: doomed.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("wal-spare".into())
            .spawn(move || chores.run(&woken))
            .map_err(|e| {
                StoreError::Engine(format!("could not start the WAL's spare thread: {e}"))
            })?;
        let _ = wake.try_send(());
        Ok(Spares {
            dir: dir.to_path_buf(),
            ready,
            wanted,
            doomed,
            wake: Some(wake),
            thread: Some(thread),
        })
    }

    /// The spare, linked as the first of `names` that does not exist,
    /// with the folder synced, opened for writing; `Ok(None)` if none is
    /// ready.
    pub(super) fn take(
        &self,
        names: impl Iterator<Item = PathBuf>,
    ) -> Result<Option<(File, PathBuf)>, StoreError> {
        let mut ready = self
            .ready
            .lock()
            .map_err(|_| StoreError::Engine("WAL spare lock poisoned".into()))?;
        if !*ready {
            return Ok(None);
        }
        let spare = self.dir.join(READY);
        let mut linked = None;
        for path in names {
            match std::fs::hard_link(&spare, &path) {
                Ok(()) => {
                    linked = Some(path);
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let Some(path) = linked else {
            return Ok(None);
        };
        std::fs::remove_file(&spare)?;
        *ready = false;
        drop(ready);
        crate::recovery::sync_dir(&self.dir)?;
        let file = OpenOptions::new().write(true).open(&path)?;
        Ok(Some((file, path)))
    }
}

impl Spares {
    /// Whether a spare is ready to be taken (`false` while the thread
    /// marks one ready).
    pub(super) fn ready(&self) -> bool {
        self.ready.try_lock().is_ok_and(|r| *r)
    }

    /// Asks for the next spare (made unless one is ready).
    pub(super) fn want(&self) {
        self.wanted.store(true, Ordering::Release);
        self.wake();
    }

    /// Has the thread delete `paths` (trimmed WAL files).
    pub(super) fn remove_later(&self, paths: Vec<PathBuf>) {
        if paths.is_empty() {
            return;
        }
        match self.doomed.lock() {
            Ok(mut doomed) => doomed.extend(paths),
            Err(_) => remove(&paths),
        }
        self.wake();
    }

    fn wake(&self) {
        // A full channel holds a wake-up the thread has not taken yet.
        if let Some(wake) = &self.wake {
            let _ = wake.try_send(());
        }
    }
}

/// What the thread works with.
struct Chores {
    dir: PathBuf,
    bytes: u64,
    ready: Arc<Mutex<bool>>,
    wanted: Arc<AtomicBool>,
    doomed: Arc<Mutex<Vec<PathBuf>>>,
}

impl Chores {
    /// Until the WAL is dropped: deletes the files trimmed, then makes a
    /// spare if one was asked for and none is ready. Files trimmed before
    /// the drop are deleted before the thread ends.
    fn run(&self, woken: &Receiver<()>) {
        while woken.recv().is_ok() {
            self.remove_doomed();
            if self.wanted.swap(false, Ordering::AcqRel) {
                make_spare(&self.dir, self.bytes, &self.ready);
            }
        }
        self.remove_doomed();
    }

    fn remove_doomed(&self) {
        let paths = match self.doomed.lock() {
            Ok(mut doomed) => std::mem::take(&mut *doomed),
            Err(_) => return,
        };
        remove(&paths);
    }
}

/// Deletes `paths`; one already gone is fine, another failure is logged
/// (the file holds only stable frames: the next open finds it and a later
/// commit trims it again).
fn remove(paths: &[PathBuf]) {
    for path in paths {
        if let Err(e) = remove_if_present(path) {
            tracing::warn!(
                error = %e,
                file = %path.display(),
                "could not delete a trimmed WAL file; it is trimmed again after the next start"
            );
        }
    }
}

impl Drop for Spares {
    fn drop(&mut self) {
        drop(self.wake.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Makes a spare in `dir` unless one is ready.
fn make_spare(dir: &Path, bytes: u64, ready: &Mutex<bool>) {
    if ready.lock().map(|r| *r).unwrap_or(true) {
        return;
    }
    // Made under its name for being made, then renamed and marked ready
    // under the lock: a spare seen under its ready name is one `take`
    // finds.
    let made = make(dir, bytes).and_then(|()| match ready.lock() {
        Ok(mut r) => {
            std::fs::rename(dir.join(TMP), dir.join(READY))?;
            *r = true;
            Ok(())
        }
        Err(_) => Err(std::io::Error::other("WAL spare lock poisoned")),
    });
    if let Err(e) = made {
        tracing::warn!(
            error = %e,
            dir = %dir.display(),
            "could not make a spare WAL file; the next one starts empty"
        );
    }
}

/// Writes `bytes` zeros to the spare being made, a [`PIECE`] at a time,
/// each synced, then syncs its metadata.
fn make(dir: &Path, bytes: u64) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join(TMP))?;
    let zeros = vec![0u8; PIECE];
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left.min(zeros.len() as u64)).unwrap_or(zeros.len());
        file.write_all(&zeros[..n])?;
        file.sync_data()?;
        left -= n as u64;
    }
    file.sync_all()
}
