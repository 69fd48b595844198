//! The WAL's files: appending commit frames ([`Wal`]); reading them back
//! at open is [`super::recover`].
//!
//! Files are named `<number of their first frame, 20 digits>[.<k>].wal`,
//! zero-filled ahead when they can be ([`super::spare`]: the zeros after
//! the last frame are the file's end); every open starts a new one (`.<k>` if a file of a commit that never
//! completed already has the name), so a torn frame left by a crash is
//! never written after: it stays at the end of its file, and the next
//! file starts with its number.

use std::fs::File;
use std::io::{IoSlice, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::spare::{self, Spares};
use super::{Appended, DIR, Digest, Writes, applied_key, encode_pieces};
use crate::StoreError;
use crate::audit_log::write_all_vectored;
use crate::segments::frame_header_of;
use crate::sled_backend::be;

/// A file is closed and the next one started once it holds this much.
#[cfg(not(test))]
pub(crate) const FILE_BYTES: u64 = 16 << 20;
/// Small in unit tests, so that files are closed and trimmed.
#[cfg(test)]
pub(crate) const FILE_BYTES: u64 = 4 << 10;

/// Frames smaller than this on average make the WAL ask, once the active
/// file is half full, for the next file to be made ahead, zero-filled
/// ([`super::spare`]).
const SMALL_FRAME_BYTES: u64 = 64 << 10;

/// A file that grows (no spare was ready when it started) asks for the
/// next file to be made ahead once this many small frames in a row were
/// written to it (however large the frames before them: a pipelined load
/// followed by one-at-a-time publishing), and gives way to it as soon as
/// it is ready ([`super::spare`]).
#[cfg(not(test))]
pub(crate) const EARLY_FRAMES: u64 = 64;
/// Fewer in unit tests, whose files are small ([`FILE_BYTES`]).
#[cfg(test)]
pub(crate) const EARLY_FRAMES: u64 = 8;

/// One WAL file: its path and the number of its first frame.
#[derive(Debug, Clone)]
pub(crate) struct WalFile {
    pub(crate) first: u64,
    pub(crate) path: PathBuf,
}

/// The append side, under one lock (commits hold the store's gate too).
#[derive(Debug)]
struct Inner {
    /// The file frames are appended to, created with the first frame
    /// after an open.
    active: Option<(File, WalFile)>,
    len: u64,
    /// Frames written to the active file.
    frames: u64,
    /// The next frame starts a new file.
    roll: bool,
    /// The next file was asked to be made ahead.
    asked: bool,
    /// Frames under [`SMALL_FRAME_BYTES`] written in a row to the active
    /// file.
    small_run: u64,
    /// The active file was made ahead (zero-filled): a sync writes no
    /// file size.
    zeroed: bool,
    /// Closed files, oldest first: each holds the frames from its `first`
    /// up to the next file's.
    older: Vec<WalFile>,
    next: u64,
    digest: Digest,
    buf: Vec<u8>,
    /// A write, sync or apply failed: the state of the file or of sled is
    /// unknown, so nothing more is committed until the store is reopened.
    broken: bool,
}

/// A frame written, not yet applied.
#[derive(Debug)]
pub(crate) struct Staged {
    number: u64,
    digest: Digest,
    writes: Writes,
    size: usize,
}

/// The write-ahead log of sled's writes.
#[derive(Debug)]
pub(crate) struct Wal {
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// Zero-filled files made ahead ([`Wal::keep_spares`]).
    spares: Option<Spares>,
}

fn file_name(first: u64, k: u32) -> String {
    if k == 0 {
        format!("{first:020}.wal")
    } else {
        format!("{first:020}.{k}.wal")
    }
}

/// `(first, k)` of a WAL file's name.
pub(super) fn parse_name(name: &str) -> Option<(u64, u32)> {
    let stem = name.strip_suffix(".wal")?;
    let (first, k) = match stem.split_once('.') {
        Some((f, k)) => (f, k.parse().ok()?),
        None => (stem, 0),
    };
    (first.len() == 20).then_some(())?;
    Some((first.parse().ok()?, k))
}

/// The WAL files of `dir`, in order.
pub(super) fn list(dir: &Path) -> Result<Vec<WalFile>, StoreError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            // A spare file ([`super::spare`]), not a WAL file.
            continue;
        }
        match parse_name(&name) {
            Some((first, k)) => found.push((first, k, entry.path())),
            None => tracing::warn!(file = %entry.path().display(), "not a WAL file; left as it is"),
        }
    }
    found.sort();
    Ok(found
        .into_iter()
        .map(|(first, _, path)| WalFile { first, path })
        .collect())
}

impl Wal {
    /// The capacity of the frame buffer kept between commits.
    #[cfg(test)]
    pub(crate) fn kept_buffer_bytes(&self) -> usize {
        self.inner.lock().map_or(0, |i| i.buf.capacity())
    }

    /// Drops the frame buffer kept between commits; the next frame grows
    /// a new one.
    pub(crate) fn release_buffer(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.buf = Vec::new();
        }
    }

    /// The log in `store_dir`, continuing with frame `next` in a new
    /// file (made by the first commit) after the files found at open;
    /// `digest` is sled's now.
    pub(crate) fn start(store_dir: &Path, next: u64, digest: Digest, older: Vec<WalFile>) -> Wal {
        Wal {
            dir: store_dir.join(DIR),
            inner: Mutex::new(Inner {
                active: None,
                len: 0,
                frames: 0,
                roll: false,
                asked: false,
                small_run: 0,
                zeroed: false,
                older,
                next,
                digest,
                buf: Vec::new(),
                broken: false,
            }),
            spares: None,
        }
    }

    /// Keeps a zero-filled file ready for the next file to start
    /// ([`super::spare`]); removes spares an earlier run left. For the
    /// store's open, once it cannot refuse: a commit's sync then writes
    /// no file size. If it cannot, files start empty (as before), with a
    /// warning.
    pub(crate) fn keep_spares(&mut self) {
        let started = std::fs::create_dir_all(&self.dir)
            .map_err(StoreError::from)
            .and_then(|()| spare::remove_left_over(&self.dir))
            .and_then(|()| Spares::start(&self.dir, FILE_BYTES + FILE_BYTES / 4));
        match started {
            Ok(spares) => self.spares = Some(spares),
            Err(e) => tracing::warn!(
                error = %e,
                dir = %self.dir.display(),
                "WAL files will not be made ahead; each starts empty"
            ),
        }
    }

    /// Makes the next frame start a new file: the open's frame stays
    /// alone in the file the open made, and the first commit takes a
    /// spare.
    pub(crate) fn roll(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.roll = true;
        }
    }

    /// Records `writes` as the next commit frame, durable, then applies
    /// them to `tree` (the frame's number last). Returns the frame's
    /// number and its size in bytes. For frames of no other file's bytes
    /// (at open); a commit uses [`Wal::write`], [`Wal::sync`] and
    /// [`Wal::apply`], its frame carrying the logs' bytes.
    pub(crate) fn commit(
        &self,
        tree: &sled::Tree,
        writes: Writes,
    ) -> Result<(u64, usize), StoreError> {
        let staged = self.write(tree, writes, &Appended::default())?;
        self.sync()?;
        self.apply(tree, staged)
    }

    /// Writes `writes` as the next commit frame (not yet synced), with
    /// sled's digest after them and a copy of the bytes the commit
    /// appended to the two logs. Nothing more is committed until
    /// [`Wal::apply`] has applied it.
    pub(crate) fn write(
        &self,
        tree: &sled::Tree,
        mut writes: Writes,
        appended: &Appended,
    ) -> Result<Staged, StoreError> {
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| StoreError::Engine("WAL lock poisoned".into()))?;
        if inner.broken {
            return Err(StoreError::Engine(
                "an earlier write to the WAL or to sled failed; reopen the store".into(),
            ));
        }
        let number = inner.next;
        if inner.active.is_none() || inner.len >= FILE_BYTES || inner.roll || self.gives_way(&inner)
        {
            std::fs::create_dir_all(&self.dir)?;
            let spare = match &self.spares {
                Some(spares) => {
                    spares.take((0..1000).map(|k| self.dir.join(file_name(number, k))))?
                }
                None => None,
            };
            let zeroed = spare.is_some();
            let new = match spare {
                Some((file, path)) => (
                    file,
                    WalFile {
                        first: number,
                        path,
                    },
                ),
                None => new_file(&self.dir, number)?,
            };
            inner.zeroed = zeroed;
            if let Some((_, closed)) = inner.active.replace(new) {
                inner.older.push(closed);
            }
            inner.len = 0;
            inner.frames = 0;
            inner.roll = false;
            inner.asked = false;
            inner.small_run = 0;
        }
        let Some((_, active)) = inner.active.as_ref() else {
            return Err(StoreError::Engine("no WAL file".into()));
        };
        writes.insert(applied_key(), applied_value(number, &active.path));
        let mut digest = inner.digest;
        for (k, v) in writes.iter() {
            if let Some(old) = tree.get(k)? {
                digest.sub(k, &old);
            }
            if let Some(v) = v {
                digest.add(k, v);
            }
        }
        let mut buf = std::mem::take(&mut inner.buf);
        let pieces = encode_pieces(number, digest, appended, &writes, &mut buf);
        let payload: Vec<&[u8]> = pieces.slices().collect();
        let header = frame_header_of(&payload, true)
            .ok_or_else(|| StoreError::TooLarge(format!("commit frame {number}")))?;
        let frame_len = header.len() + payload.iter().map(|p| p.len()).sum::<usize>();
        let mut slices: Vec<IoSlice<'_>> = std::iter::once(&header[..])
            .chain(payload.iter().copied())
            .map(IoSlice::new)
            .collect();
        // From the first byte written until the frame is applied, a failure
        // leaves the file or sled in a state only a reopen sorts out.
        inner.broken = true;
        let at = inner.len;
        let Some((file, _)) = inner.active.as_mut() else {
            return Err(StoreError::Engine("no WAL file".into()));
        };
        (&*file).seek(SeekFrom::Start(at))?;
        write_all_vectored(file, &mut slices)?;
        drop(slices);
        inner.len += frame_len as u64;
        inner.frames += 1;
        inner.small_run = if (frame_len as u64) < SMALL_FRAME_BYTES {
            inner.small_run + 1
        } else {
            0
        };
        // Small frames: the next file is made ahead, once a file made
        // ahead is half full of them (on average), or once a growing file
        // has had a run of them.
        let due = if inner.zeroed {
            inner.len >= FILE_BYTES / 2 && inner.len / inner.frames < SMALL_FRAME_BYTES
        } else {
            inner.small_run >= EARLY_FRAMES
        };
        if !inner.asked
            && due
            && let Some(spares) = &self.spares
        {
            spares.want();
            inner.asked = true;
        }
        let size = frame_len;
        if buf.capacity() <= 32 << 20 {
            inner.buf = buf;
        }
        Ok(Staged {
            number,
            digest,
            writes,
            size,
        })
    }

    /// Whether a spare is ready as the commit path sees it ([`Spares::ready`]:
    /// not while the spare thread is still marking it ready).
    #[cfg(test)]
    pub(crate) fn spare_ready(&self) -> bool {
        self.spares.as_ref().is_some_and(Spares::ready)
    }

    /// Whether the active file grows and the spare it asked for is ready:
    /// then the next frame starts in the spare, so that each sync after
    /// it writes the frame's blocks without the file's size.
    fn gives_way(&self, inner: &Inner) -> bool {
        inner.asked && !inner.zeroed && self.spares.as_ref().is_some_and(Spares::ready)
    }

    /// Makes the frames written durable.
    pub(crate) fn sync(&self) -> Result<(), StoreError> {
        let inner = self
            .inner
            .lock()
            .map_err(|_| StoreError::Engine("WAL lock poisoned".into()))?;
        if let Some((file, _)) = inner.active.as_ref() {
            file.sync_data()?;
        }
        Ok(())
    }

    /// Applies a frame [`Wal::write`] wrote (and the caller made durable)
    /// to `tree`. Returns its number and size.
    pub(crate) fn apply(
        &self,
        tree: &sled::Tree,
        staged: Staged,
    ) -> Result<(u64, usize), StoreError> {
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| StoreError::Engine("WAL lock poisoned".into()))?;
        if staged.number != inner.next {
            return Err(StoreError::Engine(format!(
                "WAL frame {} applied where {} is next",
                staged.number, inner.next
            )));
        }
        apply(tree, &staged.writes, staged.number)?;
        inner.broken = false;
        inner.next = staged.number + 1;
        inner.digest = staged.digest;
        Ok((staged.number, staged.size))
    }

    /// Deletes the closed files whose every frame is at most `stable`
    /// (sled holds them stably): on the spare thread once spares are kept
    /// (off the commit's path: [`super::spare`]), else here.
    pub(crate) fn trim(&self, stable: u64) -> Result<usize, StoreError> {
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| StoreError::Engine("WAL lock poisoned".into()))?;
        let mut trimmed = 0;
        while inner.older.len() > trimmed {
            let ends_before = match inner.older.get(trimmed + 1) {
                Some(f) => f.first,
                None => inner.active.as_ref().map_or(inner.next, |(_, f)| f.first),
            };
            if ends_before > stable.saturating_add(1) {
                break;
            }
            trimmed += 1;
        }
        let paths: Vec<PathBuf> = inner.older.drain(..trimmed).map(|f| f.path).collect();
        drop(inner);
        match &self.spares {
            Some(spares) => spares.remove_later(paths),
            None => {
                for path in &paths {
                    super::spare::remove_if_present(path)?;
                }
            }
        }
        Ok(trimmed)
    }

    /// Takes sled's present contents as they are: recomputes the digest
    /// from `tree` and records it in an empty frame. For writes made to
    /// sled outside commits (at open, and by tests that tamper with it).
    pub(crate) fn rebase(&self, tree: &sled::Tree) -> Result<(), StoreError> {
        let digest = Digest::of_tree(tree)?;
        {
            let mut inner = self
                .inner
                .lock()
                .map_err(|_| StoreError::Engine("WAL lock poisoned".into()))?;
            // The frame number record is part of the contents; the empty
            // frame below rewrites it.
            inner.digest = digest;
        }
        self.commit(tree, Writes::default()).map(|_| ())
    }
}

/// Creates the file for frame `first` (a new name if one is taken).
fn new_file(dir: &Path, first: u64) -> Result<(File, WalFile), StoreError> {
    for k in 0..1000 {
        let path = dir.join(file_name(first, k));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => {
                crate::recovery::sync_dir(dir)?;
                return Ok((file, WalFile { first, path }));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Engine(format!(
        "no free WAL file name for frame {first} in {}",
        dir.display()
    )))
}

/// Applies a frame's writes to `tree`, its number (the record of the
/// last frame applied) last.
pub(super) fn apply(tree: &sled::Tree, writes: &Writes, number: u64) -> Result<(), StoreError> {
    let applied = applied_key();
    let mut last: Option<&[u8]> = None;
    for (k, v) in writes.iter() {
        if k == applied.as_slice() {
            last = v;
            continue;
        }
        match v {
            Some(v) => tree.insert(k, v)?,
            None => tree.remove(k)?,
        };
    }
    match last {
        Some(v) => tree.insert(&applied, v)?,
        None => tree.insert(&applied, &be(number)[..])?,
    };
    release_deferred();
    Ok(())
}

/// Hands this thread's deferred frees to sled's epoch collector and lets
/// it run those whose epoch has passed.
///
/// Sled frees an IO buffer it has sealed (512 KiB each) and a replaced
/// page through `crossbeam-epoch`, which keeps up to 64 deferred frees in
/// a bag of the thread that made them and hands the bag on only once it
/// is full. Two threads seal sled's IO buffers and call this after each
/// time: the one that applies commits ([`apply`]; without it its bag
/// held 40 or so of them, ~21 MiB at rest after a 1M-event burst,
/// `heaptrack`) and the stabiliser after each `Db::flush`, which seals
/// the current buffer (without it, up to 64 buffers, never freed while
/// busy: `docs/BENCHMARKS.md`, "Memory with a 1M backlog: sled's IO
/// buffers").
pub(crate) fn release_deferred() {
    crossbeam_epoch::pin().flush();
}

/// Sled's record of the last frame applied: its number and the name of
/// the WAL file holding it (so that a refusal can name a file that is
/// gone).
fn applied_value(number: u64, file: &Path) -> Vec<u8> {
    let mut v = be(number).to_vec();
    if let Some(name) = file.file_name() {
        v.extend_from_slice(name.to_string_lossy().as_bytes());
    }
    v
}
