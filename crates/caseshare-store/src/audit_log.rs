//! The audit log's leaves, beside (not inside) sled: each commit's audit
//! entries are appended as frames to numbered append-only files and
//! `fdatasync`ed with the commit, and sled keeps only a small *pointer*
//! per chunk of entries where it used to keep the entries themselves.
//!
//! Why: audit entries are most of what sled held (four or so per event,
//! never changed), and sled copies and re-serialises the leaf nodes they
//! sit in on every insert and keeps them in its cache, so its memory grew
//! with the audit log (issue #18, items 2 and 5). Here a chunk costs one
//! `memcpy` into the commit's write.
//!
//! Layout: `<store>/audit/<serial, 20 digits>.log`, each a run of frames
//! `len: u32 LE ‖ crc: u32 LE ‖ payload`, framed as the event log's
//! ([`crate::segments::frame_crc`], [`crate::segments::BATCH_END`] on a
//! commit's last frame). A payload is an audit chunk exactly as sled held
//! one: `(len: u32 LE ‖ entry)*`. The sled record `A` ‖ first index holds
//! either such a chunk (stores written before this module, read, never
//! written) or a [`Pointer`]: [`POINTER_TAG`] ‖ serial ‖ offset ‖ payload
//! length ‖ entry count. A chunk is resolved by [`AuditLog::resolve`],
//! which checks the frame's length, checksum and count. Records that
//! never change once written are kept here too, each as a chunk of one
//! ([`one_record`], [`AuditLog::resolve_one`]): full Merkle tiles (sled's
//! `T` record points at them; partial tiles stay in sled) and the audit
//! index's buckets of a complete epoch (`Q`).
//!
//! Architecture Invariant: a commit's frames are written and synced
//! before the sled batch holding their pointers, so sled never points at
//! bytes that are not durable; sled is the authority. At open
//! ([`AuditLog::verify`], read-only) every pointed frame is read and
//! checked, pointed frames never overlap, and what follows the last one
//! in each file (a torn write, or the one batch whose commit never
//! happened) is ignored and left on disk: more than one whole batch there
//! means sled lost committed writes, a refusal. Frames between pointed
//! ones that nothing points at are allowed: derived records (the audit
//! index's) dropped when the index is rebuilt or cut back; a lost chunk of
//! entries is seen by the count of entries, a lost tile by the tree. The
//! next append starts a new file whenever the last one has a tail.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::StoreError;
use crate::recovery::{ADVICE_RESTORE, ADVICE_SLED_BEHIND, damaged};
use crate::segments::{LEN_MASK, frame_header};

/// The directory of the audit log in a store directory.
pub const DIR: &str = "audit";

/// The first four bytes of a pointer record: as the length of an inline
/// chunk's first entry it would be 4 GiB, which no entry can be.
pub const POINTER_TAG: [u8; 4] = [0xff; 4];

const POINTER_LEN: usize = 4 + 8 + 8 + 4 + 4;

/// Frames longer than this are checked against their file's length before
/// they are read (chunks are at most 32 KiB, tiles 8 KiB).
const LARGE_FRAME: u64 = 64 << 10;
const HEADER: u64 = 8;

/// Size at which a new file starts (checked before each commit's frames).
pub const DEFAULT_FILE_BYTES: u64 = 64 << 20;

/// Where a chunk of audit entries lies in the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pointer {
    /// The file's serial number.
    pub serial: u64,
    /// The frame's offset in it.
    pub offset: u64,
    /// The payload's length.
    pub len: u32,
    /// How many entries the chunk holds.
    pub count: u32,
}

impl Pointer {
    /// The sled value that holds this pointer.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(POINTER_LEN);
        v.extend_from_slice(&POINTER_TAG);
        v.extend_from_slice(&self.serial.to_le_bytes());
        v.extend_from_slice(&self.offset.to_le_bytes());
        v.extend_from_slice(&self.len.to_le_bytes());
        v.extend_from_slice(&self.count.to_le_bytes());
        v
    }

    /// The pointer in a sled value, or `None` for an inline chunk.
    pub fn decode(v: &[u8]) -> Result<Option<Pointer>, StoreError> {
        if !v.starts_with(&POINTER_TAG) {
            return Ok(None);
        }
        if v.len() != POINTER_LEN {
            return Err(StoreError::Corrupt {
                key: "audit chunk".into(),
                detail: format!("a pointer of {} bytes", v.len()),
            });
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&v[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let u32_at = |at: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&v[at..at + 4]);
            u32::from_le_bytes(b)
        };
        Ok(Some(Pointer {
            serial: u64_at(4),
            offset: u64_at(12),
            len: u32_at(20),
            count: u32_at(24),
        }))
    }

    fn end(&self) -> u64 {
        self.offset + HEADER + u64::from(self.len)
    }
}

/// A record as a chunk of one, for [`AuditLog::append`] (read back with
/// [`AuditLog::resolve_one`]).
pub fn one_record(bytes: &[u8]) -> Result<Vec<u8>, StoreError> {
    let len = u32::try_from(bytes.len()).map_err(|_| StoreError::TooLarge("record".into()))?;
    let mut payload = Vec::with_capacity(4 + bytes.len());
    payload.extend_from_slice(&len.to_le_bytes());
    payload.extend_from_slice(bytes);
    Ok(payload)
}

/// The entries of an audit chunk `(len: u32 LE ‖ entry)*`, each as its
/// span (start, length) in the chunk, checking that the lengths add up:
/// the one walk of the format ([`count_entries`],
/// [`crate::sled_backend::split_chunk`], the audit index's reads).
pub(crate) fn chunk_entries(chunk: &[u8]) -> ChunkEntries<'_> {
    ChunkEntries { chunk, at: 0 }
}

/// See [`chunk_entries`].
pub(crate) struct ChunkEntries<'a> {
    chunk: &'a [u8],
    at: usize,
}

impl Iterator for ChunkEntries<'_> {
    type Item = Result<(usize, usize), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.chunk.len() {
            return None;
        }
        let start = self.at + 4;
        let len = self
            .chunk
            .get(self.at..start)
            .map(|l| u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize)
            .filter(|len| self.chunk.len() - start >= *len);
        let Some(len) = len else {
            // Nothing after a bad length can be read.
            self.at = self.chunk.len();
            return Some(Err(StoreError::Corrupt {
                key: "audit chunk".into(),
                detail: "truncated entry".into(),
            }));
        };
        self.at = start + len;
        Some(Ok((start, len)))
    }
}

/// How many entries a chunk holds, checking that the lengths add up
/// (without copying them out).
fn count_entries(chunk: &[u8]) -> Result<usize, StoreError> {
    chunk_entries(chunk).try_fold(0, |n, span| span.map(|_| n + 1))
}

/// The name of file `serial`.
pub fn file_name(serial: u64) -> String {
    format!("{serial:020}.log")
}

/// The append handle of the last file (the commit's).
#[derive(Debug)]
struct Active {
    serial: u64,
    file: Arc<File>,
    len: u64,
}

/// The audit log's files: read handles for all, the append handle for the
/// last.
#[derive(Debug)]
pub struct AuditLog {
    dir: PathBuf,
    file_bytes: u64,
    files: RwLock<BTreeMap<u64, Arc<File>>>,
    /// The file appends go to; `None` until the first append (which then
    /// continues the last file if it ends where its pointed frames do).
    active: Mutex<Option<Active>>,
    /// Where the last file's pointed frames end (from [`AuditLog::verify`]);
    /// `None` makes the next append start a new file.
    resume: Mutex<Option<(u64, u64)>>,
}

/// What [`AuditLog::verify`] found.
#[derive(Debug, Default)]
pub struct Verified {
    /// Files whose tail (bytes after their pointed frames) is ignored.
    pub ignored_tails: Vec<(PathBuf, u64)>,
}

impl AuditLog {
    /// Opens the audit log of the store in `store_dir` for reading,
    /// changing nothing (the directory is made by the first append).
    pub fn open(store_dir: &Path) -> Result<AuditLog, StoreError> {
        let dir = store_dir.join(DIR);
        let mut files = BTreeMap::new();
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let Some(serial) = name.strip_suffix(".log").and_then(|s| s.parse().ok())
                    else {
                        continue;
                    };
                    files.insert(serial, Arc::new(File::open(entry.path())?));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        Ok(AuditLog {
            dir,
            file_bytes: DEFAULT_FILE_BYTES,
            files: RwLock::new(files),
            active: Mutex::new(None),
            resume: Mutex::new(None),
        })
    }

    /// The path of file `serial`.
    pub fn path(&self, serial: u64) -> PathBuf {
        self.dir.join(file_name(serial))
    }

    fn file(&self, serial: u64) -> Result<Option<Arc<File>>, StoreError> {
        Ok(self
            .files
            .read()
            .map_err(|_| StoreError::Engine("audit log lock poisoned".into()))?
            .get(&serial)
            .cloned())
    }

    /// The chunk a sled `A` value stands for: the value itself for an
    /// inline chunk, else the payload of the frame it points at, checked.
    pub fn resolve(&self, value: sled::IVec) -> Result<sled::IVec, StoreError> {
        match Pointer::decode(&value)? {
            None => Ok(value),
            Some(p) => Ok(self.read(&p)?.into()),
        }
    }

    /// A value stored either in sled itself or, once it could no longer
    /// change, in the audit log as a chunk of one (a full tile, a complete
    /// epoch's bucket of the audit index): the value.
    pub fn resolve_one(&self, value: sled::IVec) -> Result<sled::IVec, StoreError> {
        if Pointer::decode(&value)?.is_none() {
            return Ok(value);
        }
        let mut one = crate::sled_backend::split_chunk(&self.resolve(value)?)?;
        match (one.pop(), one.is_empty()) {
            (Some(v), true) => Ok(v.into()),
            _ => Err(StoreError::Corrupt {
                key: "audit log record".into(),
                detail: "a frame that should hold one record holds another number".into(),
            }),
        }
    }

    /// How many entries a sled `A` value holds (a pointer says; an inline
    /// chunk is counted).
    pub fn count(value: &[u8]) -> Result<u64, StoreError> {
        match Pointer::decode(value)? {
            Some(p) => Ok(u64::from(p.count)),
            None => Ok(count_entries(value)? as u64),
        }
    }

    /// The payload of the frame at `p`, checked against the pointer.
    fn read(&self, p: &Pointer) -> Result<Vec<u8>, StoreError> {
        let path = self.path(p.serial);
        let bad = |detail: String| damaged(&path, Some(p.offset), detail, ADVICE_RESTORE);
        let Some(file) = self.file(p.serial)? else {
            return Err(damaged(
                &path,
                None,
                format!(
                    "the file is missing, but sled points at a chunk of {} audit entries in it",
                    p.count
                ),
                ADVICE_RESTORE,
            ));
        };
        // A length no chunk reaches is checked against the file before
        // anything is allocated for it (a damaged pointer must be a
        // refusal, not an allocation of gigabytes).
        if u64::from(p.len) > LARGE_FRAME
            && p.offset + HEADER + u64::from(p.len) > file.metadata()?.len()
        {
            return Err(bad(format!(
                "sled expects a committed frame of {} bytes, which runs past the end of the file",
                p.len
            )));
        }
        let mut buf = vec![0u8; HEADER as usize + p.len as usize];
        if let Err(e) = file.read_exact_at(&mut buf, p.offset) {
            return Err(bad(format!(
                "the committed frame of {} bytes cannot be read whole ({e})",
                p.len
            )));
        }
        // The one reading of the frame format: whole, checksummed, and of
        // the length sled expects.
        let len = match crate::segments::frames(&buf, p.offset).next() {
            Some(Ok(frame)) => frame.payload.len(),
            Some(Err((_, e))) => {
                return Err(bad(format!(
                    "a committed frame that does not read back: {e}"
                )));
            }
            None => 0,
        };
        if len != p.len as usize {
            return Err(bad(format!(
                "a committed frame of {len} bytes where sled expects {}",
                p.len
            )));
        }
        buf.drain(..HEADER as usize);
        let payload = buf;
        let count = count_entries(&payload)
            .map_err(|_| bad("a committed frame whose entries do not parse".into()))?;
        if count != p.count as usize {
            return Err(bad(format!(
                "a committed frame of {count} entries where sled expects {}",
                p.count
            )));
        }
        Ok(payload)
    }

    /// Writes `chunks` (each a payload) as one commit's frames, the last
    /// marked as the batch's end, and returns where each went; hands the
    /// frames written (each header with its chunk), and where they went,
    /// to `copy`. Not synced: the commit frame carries them, and the
    /// stabiliser syncs the file later ([`AuditLog::sync`]); a file is
    /// synced as the next one starts.
    pub(crate) fn append(
        &self,
        chunks: Vec<Vec<u8>>,
        copy: &mut crate::wal::AuditBytes,
    ) -> Result<Vec<Pointer>, StoreError> {
        copy.clear();
        if chunks.is_empty() {
            return Ok(Vec::new());
        }
        let mut active = self
            .active
            .lock()
            .map_err(|_| StoreError::Engine("audit log writer poisoned".into()))?;
        if active.as_ref().is_none_or(|a| a.len >= self.file_bytes) {
            if let Some(full) = active.as_ref() {
                full.file.sync_data()?;
            }
            *active = Some(self.next_file(active.as_ref().map(|a| a.serial))?);
        }
        let a = active
            .as_mut()
            .ok_or_else(|| StoreError::Engine("no active audit file".into()))?;
        // Each frame's header, written with the chunks by one `writev`
        // (the chunks are not copied).
        let mut headers: Vec<[u8; 8]> = Vec::with_capacity(chunks.len());
        let mut pointers = Vec::with_capacity(chunks.len());
        let mut at = a.len;
        let last = chunks.len() - 1;
        for (i, payload) in chunks.iter().enumerate() {
            let batch_end = i == last;
            let header = frame_header(payload, batch_end)
                .ok_or_else(|| StoreError::TooLarge("audit chunk".into()))?;
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) & LEN_MASK;
            let count = u32::try_from(count_entries(payload)?)
                .map_err(|_| StoreError::TooLarge("audit chunk".into()))?;
            pointers.push(Pointer {
                serial: a.serial,
                offset: at,
                len,
                count,
            });
            at += 8 + u64::from(len);
            headers.push(header);
        }
        let mut slices: Vec<IoSlice<'_>> = headers
            .iter()
            .zip(&chunks)
            .flat_map(|(h, c)| [IoSlice::new(h), IoSlice::new(c)])
            .collect();
        if let Err(e) = write_all_vectored(&a.file, &mut slices) {
            // Bytes may be half written: later commits start a new file.
            let serial = a.serial;
            *active = Some(self.next_file(Some(serial))?);
            return Err(e.into());
        }
        copy.file = a.serial;
        copy.offset = a.len;
        copy.frames.extend(headers.into_iter().zip(chunks));
        a.len = at;
        Ok(pointers)
    }

    /// The file the next append goes to: the last one continued if it ends
    /// where its pointed frames do (after [`AuditLog::verify`]), else a new
    /// one, whose name is made durable here.
    fn next_file(&self, after: Option<u64>) -> Result<Active, StoreError> {
        let resume = self
            .resume
            .lock()
            .map_err(|_| StoreError::Engine("audit log writer poisoned".into()))?
            .take();
        if after.is_none()
            && let Some((serial, end)) = resume
            && end < self.file_bytes
        {
            let file = OpenOptions::new().append(true).open(self.path(serial))?;
            if file.metadata()?.len() == end {
                return Ok(Active {
                    serial,
                    file: Arc::new(file),
                    len: end,
                });
            }
        }
        let last = self
            .files
            .read()
            .map_err(|_| StoreError::Engine("audit log lock poisoned".into()))?
            .keys()
            .next_back()
            .copied();
        let serial = last.max(after).map_or(1, |s| s + 1);
        std::fs::create_dir_all(&self.dir)?;
        let path = self.path(serial);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        crate::recovery::sync_dir(&self.dir)?;
        if let Some(parent) = self.dir.parent() {
            crate::recovery::sync_dir(parent)?;
        }
        self.files
            .write()
            .map_err(|_| StoreError::Engine("audit log lock poisoned".into()))?
            .insert(serial, Arc::new(File::open(&path)?));
        Ok(Active {
            serial,
            file: Arc::new(file),
            len: 0,
        })
    }

    /// The file appends go to, if any has been opened.
    fn active_file(&self) -> Result<Option<Arc<File>>, StoreError> {
        Ok(self
            .active
            .lock()
            .map_err(|_| StoreError::Engine("audit log writer poisoned".into()))?
            .as_ref()
            .map(|a| a.file.clone()))
    }

    /// Makes the appended frames durable, on the calling thread.
    pub fn sync(&self) -> Result<(), StoreError> {
        match self.active_file()? {
            Some(file) => Ok(file.sync_data()?),
            None => Ok(()),
        }
    }

    /// Checks the audit log against sled's pointers (read-only), given
    /// every pointer (audit chunks, full tiles, complete epochs of the
    /// index): each frame is read and checked, none overlaps another, and
    /// the rest of each file after its last pointed frame holds at most
    /// one batch. Remembers where the last file's
    /// pointed frames end, for the first append.
    pub fn verify(&self, pointers: &mut [Pointer]) -> Result<Verified, StoreError> {
        pointers.sort_unstable_by_key(|p| (p.serial, p.offset));
        let mut out = Verified::default();
        // Pointed frames per file: their end, and that they follow on.
        let mut ends: BTreeMap<u64, u64> = BTreeMap::new();
        for p in pointers.iter() {
            let end = ends.entry(p.serial).or_insert(0);
            // Frames no longer pointed at may lie between (derived records
            // dropped when the audit index was rebuilt); overlaps never.
            if p.offset < *end {
                return Err(damaged(
                    &self.path(p.serial),
                    Some(p.offset),
                    format!(
                        "sled points at a frame at byte {} inside the one before, which ends \
                         at {end}",
                        p.offset
                    ),
                    ADVICE_RESTORE,
                ));
            }
            self.read(p)?;
            *end = p.end();
        }
        let files: Vec<(u64, Arc<File>)> = self
            .files
            .read()
            .map_err(|_| StoreError::Engine("audit log lock poisoned".into()))?
            .iter()
            .map(|(s, f)| (*s, f.clone()))
            .collect();
        let mut last_clean = None;
        for (serial, file) in files {
            let from = ends.get(&serial).copied().unwrap_or(0);
            let len = file.metadata()?.len();
            if len > from {
                let batches = whole_batches(&file, from, len)?;
                if batches > 1 {
                    // Sled is what went back: it is named, as the event
                    // log's check names it.
                    let db = self.dir.parent().unwrap_or(&self.dir).join("db");
                    return Err(damaged(
                        &db,
                        None,
                        format!(
                            "{batches} committed batches of audit entries in {} from byte \
                             {from} on follow the last chunk sled points at: sled lost \
                             committed writes ({})",
                            self.path(serial).display(),
                            crate::sled_open::SLED_FILES
                        ),
                        ADVICE_SLED_BEHIND,
                    ));
                }
                out.ignored_tails.push((self.path(serial), from));
                last_clean = None;
            } else {
                last_clean = Some((serial, len));
            }
        }
        *self
            .resume
            .lock()
            .map_err(|_| StoreError::Engine("audit log writer poisoned".into()))? = last_clean;
        Ok(out)
    }
}

/// How many whole batches the valid frames of `file` from `from` to `len`
/// hold, stopping at the first frame that is not whole and valid.
fn whole_batches(file: &File, from: u64, len: u64) -> Result<usize, StoreError> {
    let mut bytes = Vec::new();
    let mut f = file.try_clone()?;
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(from))?;
    f.take(len - from).read_to_end(&mut bytes)?;
    Ok(crate::segments::frames(&bytes, from)
        .map_while(Result::ok)
        .filter(|frame| frame.batch_end)
        .count())
}

/// Writes every byte of `bufs` to `file` (`Write::write_all_vectored`,
/// which is not yet stable), at the file's position.
pub(crate) fn write_all_vectored(
    mut file: &File,
    mut bufs: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    while !bufs.is_empty() {
        match file.write_vectored(bufs) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
