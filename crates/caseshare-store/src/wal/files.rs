//! The WAL's files: appending commit frames ([`Wal`]) and reading them
//! back at open ([`recover`]).
//!
//! Files are named `<number of their first frame, 20 digits>[.<k>].wal`,
//! zero-filled ahead when they can be ([`super::spare`]: the zeros after
//! the last frame are the file's end); every open starts a new one (`.<k>` if a file of a commit that never
//! completed already has the name), so a torn frame left by a crash is
//! never written after: it stays at the end of its file, and the next
//! file starts with its number.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::redo::{self, FrameRegions, Restored};
use super::set_aside::set_aside_cut_short;
use super::spare::{self, Spares};
use super::{Appended, DIR, Digest, Writes, applied_key, decode, encode, number_of, regions_of};
use crate::StoreError;
use crate::recovery::{ADVICE_RESTORE, ADVICE_SLED_BEHIND, damaged};
use crate::segments::{frame_header, frames};
use crate::sled_backend::{be, read_be};
use crate::sled_open::SLED_FILES;

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

/// How far past a bad frame's number a whole frame found after it still
/// counts as a later commit (damage, not a torn tail).
const RESYNC_WINDOW: u64 = 1 << 20;

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
fn parse_name(name: &str) -> Option<(u64, u32)> {
    let stem = name.strip_suffix(".wal")?;
    let (first, k) = match stem.split_once('.') {
        Some((f, k)) => (f, k.parse().ok()?),
        None => (stem, 0),
    };
    (first.len() == 20).then_some(())?;
    Some((first.parse().ok()?, k))
}

/// The WAL files of `dir`, in order.
fn list(dir: &Path) -> Result<Vec<WalFile>, StoreError> {
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
        if inner.active.is_none() || inner.len >= FILE_BYTES || inner.roll {
            std::fs::create_dir_all(&self.dir)?;
            let spare = match &self.spares {
                Some(spares) => {
                    spares.take((0..1000).map(|k| self.dir.join(file_name(number, k))))?
                }
                None => None,
            };
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
            if let Some((_, closed)) = inner.active.replace(new) {
                inner.older.push(closed);
            }
            inner.len = 0;
            inner.frames = 0;
            inner.roll = false;
            inner.asked = false;
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
        buf.clear();
        buf.extend_from_slice(&[0; 8]);
        encode(number, digest, appended, &writes, &mut buf);
        let header = frame_header(&buf[8..], true)
            .ok_or_else(|| StoreError::TooLarge(format!("commit frame {number}")))?;
        buf[..8].copy_from_slice(&header);
        // From the first byte written until the frame is applied, a failure
        // leaves the file or sled in a state only a reopen sorts out.
        inner.broken = true;
        let at = inner.len;
        let Some((file, _)) = inner.active.as_mut() else {
            return Err(StoreError::Engine("no WAL file".into()));
        };
        file.write_all_at(&buf, at)?;
        inner.len += buf.len() as u64;
        inner.frames += 1;
        // Half full, of small frames: the next file is made ahead.
        if !inner.asked
            && inner.len >= FILE_BYTES / 2
            && inner.len / inner.frames < SMALL_FRAME_BYTES
            && let Some(spares) = &self.spares
        {
            spares.want();
            inner.asked = true;
        }
        let size = buf.len();
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

/// What [`recover`] found and did.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// The next frame's number.
    pub(crate) next: u64,
    /// Sled's digest, now.
    pub(crate) digest: Digest,
    /// Frames replayed into sled.
    pub(crate) replayed: u64,
    /// The WAL files found, oldest first.
    pub(crate) files: Vec<WalFile>,
    /// The logs' bytes written from the frames' copies (put back if the
    /// open refuses later).
    pub(crate) restored: Restored,
    /// Bytes the logs lacked, found by a check that writes nothing.
    pub(crate) missing: u64,
    /// What a check that writes nothing found wrong in the logs against
    /// the frames (the open refuses with it).
    pub(crate) log_damage: Option<StoreError>,
}

/// Whether [`recover`] writes to the logs the bytes they lack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Logs {
    /// Write them (the store's open).
    Restore,
    /// Only count them (`caseshare check`).
    Count,
}

/// A whole frame of a file: its number and where it is.
pub(super) struct Found<'a> {
    pub(super) number: u64,
    pub(super) offset: u64,
    pub(super) payload: &'a [u8],
    pub(super) file: usize,
}

impl Found<'_> {
    /// A refusal naming this frame's file and offset.
    pub(super) fn damaged(&self, files: &[WalFile], why: String) -> StoreError {
        damaged(
            &files[self.file].path,
            Some(self.offset),
            why,
            ADVICE_RESTORE,
        )
    }
}

/// Brings sled up to the last commit frame of the WAL in `store_dir` and
/// checks it whole against that frame's digest, then the two logs against
/// the bytes the frames carry ([`redo`]). Writes to sled (the caller's
/// guards put its files back on a refusal) and, with [`Logs::Restore`],
/// the bytes the logs lack ([`Recovered::restored`] puts them back).
pub(crate) fn recover(
    store_dir: &Path,
    tree: &sled::Tree,
    logs: Logs,
) -> Result<Recovered, StoreError> {
    let dir = store_dir.join(DIR);
    let (applied, applied_file) = match tree.get(applied_key())? {
        Some(v) => {
            let (n, file) = parse_applied(&v)?;
            (Some(n), file.map(|f| dir.join(f)))
        }
        None => (None, None),
    };
    if !dir.exists() {
        if let Some(m) = applied {
            return Err(damaged(
                &dir,
                None,
                format!(
                    "sled has applied commit frame {m} of the write-ahead log, which is missing"
                ),
                ADVICE_RESTORE,
            ));
        }
        // A store written before the WAL: sled was synced at every commit.
        return Ok(Recovered {
            next: 1,
            digest: Digest::of_tree(tree)?,
            replayed: 0,
            files: Vec::new(),
            restored: Restored::default(),
            missing: 0,
            log_damage: None,
        });
    }
    let files = list(&dir)?;
    let contents = files
        .iter()
        .map(|f| std::fs::read(&f.path))
        .collect::<Result<Vec<_>, _>>()?;
    // Sled applied frames the log does not hold: named by the file that
    // held sled's last one, if that file is gone.
    let missing = |fallback: &Path, detail: String| match &applied_file {
        Some(f) if !f.exists() => damaged(
            f,
            None,
            format!("the file is missing: {detail}"),
            ADVICE_RESTORE,
        ),
        _ => damaged(fallback, None, detail, ADVICE_RESTORE),
    };
    let m = applied.unwrap_or(0);
    let mut found: Vec<Found<'_>> = Vec::new();
    for (i, (file, bytes)) in files.iter().zip(&contents).enumerate() {
        // A file starting at or before frames already found was started
        // by an open that set those frames aside (a commit cut short):
        // they are superseded.
        let kept = found.partition_point(|f| f.number < file.first);
        if kept < found.len() {
            tracing::info!(
                file = %file.path.display(),
                from = file.first,
                "WAL: frames of a commit cut short by a crash are superseded by a later file"
            );
            found.truncate(kept);
        }
        walk_file(i, file, bytes, m, &mut found)?;
    }
    let cut_short = set_aside_cut_short(store_dir, &files, &mut found, m)?;
    let Some(last) = found.last() else {
        if let Some(m) = applied {
            return Err(missing(
                &dir,
                format!("sled has applied commit frame {m}, and the write-ahead log holds none"),
            ));
        }
        let next = cut_short.unwrap_or_else(|| files.last().map_or(1, |f| f.first.max(1)));
        return Ok(Recovered {
            next,
            digest: Digest::of_tree(tree)?,
            replayed: 0,
            files,
            restored: Restored::default(),
            missing: 0,
            log_damage: None,
        });
    };
    let last_number = last.number;
    if m > last_number {
        return Err(missing(
            &files[last.file].path,
            format!(
                "the write-ahead log ends at commit frame {last_number}, and sled has applied \
                 frame {m}: frames are missing"
            ),
        ));
    }
    // Frames m+1 ..= last must all be there, one after the other.
    let start = found.partition_point(|f| f.number <= m);
    for (expected, f) in (m + 1..).zip(&found[start..]) {
        if f.number != expected {
            let path = &files[f.file].path;
            return Err(damaged(
                path,
                Some(f.offset),
                format!(
                    "commit frame {} follows frame {}: frames sled lacks are missing",
                    f.number,
                    expected.saturating_sub(1)
                ),
                ADVICE_RESTORE,
            ));
        }
    }
    let mut replayed = 0;
    for f in &found[start..] {
        let frame = decode(f.payload).map_err(|why| f.damaged(&files, why))?;
        apply(tree, &frame.writes, frame.number)?;
        replayed += 1;
    }
    let expected_digest = decode_digest(last.payload).map_err(|why| last.damaged(&files, why))?;
    let digest = Digest::of_tree(tree)?;
    if digest != expected_digest {
        return Err(damaged(
            &store_dir.join("db"),
            None,
            format!(
                "sled's records do not match the write-ahead log: their digest is {}, and \
                 commit frame {last_number} says {} ({SLED_FILES})",
                digest.short(),
                expected_digest.short()
            ),
            ADVICE_SLED_BEHIND,
        ));
    }
    // The logs' bytes of every frame the WAL holds: sled's files are
    // whole, so a refusal here names a log's file.
    let mut with_bytes = Vec::new();
    for f in &found {
        let (regions, _) = regions_of(f.payload).map_err(|why| f.damaged(&files, why))?;
        if !regions.is_empty() {
            with_bytes.push(FrameRegions {
                number: f.number,
                wal: &files[f.file].path,
                regions,
            });
        }
    }
    let (restored, missing, log_damage) = match (logs, redo::plan(store_dir, &with_bytes)) {
        (Logs::Restore, plan) => {
            let plan = plan?;
            let missing = plan.missing();
            (plan.write()?, missing, None)
        }
        (Logs::Count, Ok(plan)) => (Restored::default(), plan.missing(), None),
        (Logs::Count, Err(e)) => (Restored::default(), 0, Some(e)),
    };
    Ok(Recovered {
        next: last_number + 1,
        digest,
        replayed,
        files,
        restored,
        missing,
        log_damage,
    })
}

/// Adds the whole frames of WAL file `i` to `found`. A bad frame is a
/// torn tail if no whole frame follows it; if one does, the frames lost
/// are damage, refused unless sled holds them all stably (`m` is the last
/// frame sled applied): then the walk goes on from the frame found.
fn walk_file<'a>(
    i: usize,
    file: &WalFile,
    bytes: &'a [u8],
    m: u64,
    found: &mut Vec<Found<'a>>,
) -> Result<(), StoreError> {
    let mut expected = file.first;
    let mut at = 0usize;
    'walk: while at < bytes.len() {
        for item in frames(&bytes[at..], at as u64) {
            match item {
                Ok(frame) => {
                    let number = number_of(frame.payload).ok_or_else(|| {
                        damaged(
                            &file.path,
                            Some(frame.offset),
                            "a frame that is not a commit frame",
                            ADVICE_RESTORE,
                        )
                    })?;
                    if number != expected {
                        return Err(damaged(
                            &file.path,
                            Some(frame.offset),
                            format!("commit frame {number} where frame {expected} was expected"),
                            ADVICE_RESTORE,
                        ));
                    }
                    found.push(Found {
                        number,
                        offset: frame.offset,
                        payload: frame.payload,
                        file: i,
                    });
                    expected += 1;
                }
                Err((offset, _))
                    if bytes
                        .get(usize::try_from(offset).unwrap_or(usize::MAX)..)
                        .is_some_and(|rest| rest.iter().all(|b| *b == 0)) =>
                {
                    // The zeros of a file made ahead: its end.
                }
                Err((offset, why)) => match whole_frame_after(bytes, offset, expected) {
                    Some((later, n)) if n <= m.saturating_add(1) => {
                        tracing::warn!(
                            file = %file.path.display(),
                            offset,
                            through = n.saturating_sub(1),
                            "WAL: {why}; the frames there are ones sled holds stably, so they \
                             are not needed and are left as they are"
                        );
                        at = usize::try_from(later).unwrap_or(bytes.len());
                        expected = n;
                        continue 'walk;
                    }
                    Some((later, _)) => {
                        return Err(damaged(
                            &file.path,
                            Some(offset),
                            format!("{why}, followed by whole commit frames (at byte {later})"),
                            ADVICE_RESTORE,
                        ));
                    }
                    None => tracing::warn!(
                        file = %file.path.display(),
                        offset,
                        "WAL: a torn frame at the end of the file (a commit that never \
                         completed) is left as it is"
                    ),
                },
            }
        }
        break;
    }
    Ok(())
}

/// The digest of a frame's payload.
fn decode_digest(payload: &[u8]) -> Result<Digest, String> {
    payload
        .get(9..super::PAYLOAD_HEADER_1)
        .and_then(Digest::from_bytes)
        .ok_or_else(|| "a frame cut short".to_string())
}

/// Applies a frame's writes to `tree`, its number (the record of the
/// last frame applied) last.
fn apply(tree: &sled::Tree, writes: &Writes, number: u64) -> Result<(), StoreError> {
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
    Ok(())
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

/// The number and file name of [`applied_value`].
fn parse_applied(v: &[u8]) -> Result<(u64, Option<String>), StoreError> {
    let number = read_be(v.get(..8).unwrap_or(v), "WAL frame applied")?;
    let name = String::from_utf8_lossy(v.get(8..).unwrap_or_default()).into_owned();
    Ok((number, parse_name(&name).map(|_| name)))
}

/// Where a whole commit frame numbered from `expected` on starts after a
/// bad frame at `bad`, and its number, if one does: damage, not a torn
/// tail.
fn whole_frame_after(bytes: &[u8], bad: u64, expected: u64) -> Option<(u64, u64)> {
    let bad = usize::try_from(bad).ok()?;
    let header = 8;
    for at in bad + 1..bytes.len().saturating_sub(header + super::PAYLOAD_HEADER_1) {
        let payload = &bytes[at + header..];
        let Some(n) = number_of(payload) else {
            continue;
        };
        if n < expected || n - expected > RESYNC_WINDOW {
            continue;
        }
        if let Some(Ok(_)) = frames(&bytes[at..], at as u64).next() {
            return Some((at as u64, n));
        }
    }
    None
}
