//! The event log: published events, appended in sequence order to segment
//! files and `fdatasync`ed once per batch, beside (not inside) sled.
//!
//! Events are the bulk of what the broker writes (~600 bytes each) and are
//! never changed after publishing, so they do not belong in a B-tree: sled
//! copies and re-serialises leaf nodes on every insert, which cost ~12 µs of
//! the writer's time per event. Here an event costs one `memcpy` into the
//! batch's buffer; the batch is one `write` and one `fdatasync`.
//!
//! Layout: `<dir>/<first sequence, 20 digits>.seg`, each a run of frames
//! `len: u32 LE ‖ crc: u32 LE ‖ payload` where the payload is the
//! [`StoredEvent`] encoding. The top bit of `len` ([`BATCH_END`]) marks the
//! last frame of a batch (one commit); `crc` is the CRC-32 of the payload,
//! XORed with [`BATCH_END_CRC`] on a batch's last frame so that a flipped
//! flag is caught (frames written before batches were marked have no flag
//! and a plain CRC). Sequences inside a segment are consecutive; a
//! new segment starts once the active one passes `segment_bytes`, or after a
//! restart that found bytes after the committed events, or when the next
//! batch would start a frame past 4 GiB. Which record is where is kept in
//! memory (4 bytes per event: a frame's offset in its segment), rebuilt by
//! reading the segments at open. A read of consecutive events
//! ([`EventLog::range`], a subscription's catch-up) reads each segment's
//! run of them with one `pread`.
//!
//! The log also answers idempotent publish ([`ids`]): a map in memory for
//! the last segment, a sorted `.ids` file and a Bloom filter for each sealed
//! one; a hit is confirmed against the event itself, so a hash collision can
//! never make a new event a duplicate.
//!
//! Retention deletes a prefix of the log: [`EventLog::set_first`] moves the
//! first retained sequence and removes segments wholly below it.
//!
//! Architecture Invariant: the store appends and syncs a batch's events
//! before it commits the batch's sled records, and appends batch N+1 only
//! after batch N's sled commit; sled's next-sequence counter is the
//! authority. At open ([`open`]) every frame is verified before anything
//! changes; frames at or after the counter (at most the one batch whose
//! commit never happened) and a torn tail are ignored, never cut, and any
//! other damage is a refusal ([`crate::recovery`] has the rules).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use prost::Message;

use crate::{StoreError, StoredEvent};

mod ids;
pub(crate) mod open;
use ids::{IdHasher, IdIndex};

/// Default size at which a new segment starts.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

/// The last offset a frame may start at: offsets are kept as `u32`.
#[cfg(not(test))]
const MAX_FRAME_OFFSET: u64 = u32::MAX as u64;
/// Small in unit tests, so that the limit can be reached.
#[cfg(test)]
const MAX_FRAME_OFFSET: u64 = 1 << 20;

/// The append buffer's capacity kept between batches (a larger one is
/// given back): reusing it spares the allocator a multi-megabyte
/// allocation and free per commit, which it would hold for a while before
/// returning the pages.
const KEEP_BUFFER_BYTES: usize = 8 << 20;

const HEADER: usize = 8;

/// The most bytes [`EventLog::range`] reads with one `pread` (a larger
/// event is read whole, alone).
#[cfg(not(test))]
const RANGE_READ_BYTES: u64 = 1 << 20;
/// Below a test segment's size, so that a run can reach it.
#[cfg(test)]
const RANGE_READ_BYTES: u64 = 256 << 10;

/// Consecutive events of one segment, read together by [`EventLog::range`].
struct Run {
    file: Arc<File>,
    /// The first event's sequence.
    first: u64,
    /// Where the first event's frame starts and the last one's ends.
    start: u64,
    end: u64,
    /// The frames' bounds: event `first + i` is `offsets[i]..offsets[i + 1]`.
    offsets: Vec<u64>,
}

/// The event in the frame read for `sequence` (`None`: the frame was not
/// where the index says).
fn decode_frame(sequence: u64, frame: Option<&[u8]>) -> Result<StoredEvent, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        key: format!("event {sequence}"),
        detail,
    };
    let payload = frame
        .and_then(|f| f.get(HEADER..))
        .ok_or_else(|| corrupt("the frame is shorter than its header".into()))?;
    StoredEvent::decode(payload).map_err(|e| corrupt(e.to_string()))
}

/// The flag in a frame's length word that marks the last frame of a batch.
pub const BATCH_END: u32 = 1 << 31;
/// The length bits of a frame's length word.
pub const LEN_MASK: u32 = BATCH_END - 1;
/// XORed into the CRC of a batch's last frame.
pub const BATCH_END_CRC: u32 = 0x5bd1_e995;

/// The CRC stored in a frame's header.
pub fn frame_crc(payload: &[u8], batch_end: bool) -> u32 {
    let crc = crc32fast::hash(payload);
    if batch_end { crc ^ BATCH_END_CRC } else { crc }
}

/// The header of a frame holding `payload` (the one writing of the frame
/// format, as [`frames`] is its one reading): `None` if the payload is too
/// long for a frame.
pub(crate) fn frame_header(payload: &[u8], batch_end: bool) -> Option<[u8; HEADER]> {
    frame_header_of(&[payload], batch_end)
}

/// The header of a frame whose payload is `pieces`, one after another
/// (written from where they are, with one `writev`).
pub(crate) fn frame_header_of(pieces: &[&[u8]], batch_end: bool) -> Option<[u8; HEADER]> {
    let len = pieces
        .iter()
        .try_fold(0usize, |n, p| n.checked_add(p.len()))?;
    let len = u32::try_from(len).ok().filter(|l| l & BATCH_END == 0)?;
    let word = if batch_end { len | BATCH_END } else { len };
    let mut crc = crc32fast::Hasher::new();
    pieces.iter().for_each(|p| crc.update(p));
    let crc = crc.finalize();
    let crc = if batch_end { crc ^ BATCH_END_CRC } else { crc };
    let mut header = [0; HEADER];
    header[..4].copy_from_slice(&word.to_le_bytes());
    header[4..].copy_from_slice(&crc.to_le_bytes());
    Some(header)
}

/// Appends `event`'s frame to `buf`, encoding it in place.
fn frame_into(buf: &mut Vec<u8>, event: &StoredEvent, batch_end: bool) -> Result<(), StoreError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER]);
    event
        .encode(buf)
        .map_err(|e| StoreError::Engine(format!("event {}: {e}", event.sequence)))?;
    let header = frame_header(&buf[start + HEADER..], batch_end)
        .ok_or_else(|| StoreError::TooLarge(format!("event {}", event.sequence)))?;
    buf[start..start + HEADER].copy_from_slice(&header);
    Ok(())
}

/// One whole, valid frame of a crc-framed file (the event log's segments,
/// the audit log's files).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Frame<'a> {
    /// Where the frame starts in the file.
    pub offset: u64,
    pub payload: &'a [u8],
    /// The last frame of a commit's batch.
    pub batch_end: bool,
}

impl Frame<'_> {
    /// Where the frame ends in the file.
    pub fn end(&self) -> u64 {
        self.offset + (HEADER + self.payload.len()) as u64
    }
}

/// The frames of `bytes`, read from the file at offset `base`, up to the
/// first that is not whole and valid, which ends the walk with one error:
/// (its offset, what is wrong). The one reading of the frame format.
pub(crate) fn frames(bytes: &[u8], base: u64) -> Frames<'_> {
    Frames { bytes, base, at: 0 }
}

/// See [`frames`].
pub(crate) struct Frames<'a> {
    bytes: &'a [u8],
    base: u64,
    at: usize,
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, (u64, String)>;

    fn next(&mut self) -> Option<Self::Item> {
        let at = self.at;
        if at >= self.bytes.len() {
            return None;
        }
        // A bad frame ends the walk.
        self.at = self.bytes.len();
        let offset = self.base + at as u64;
        let Some(header) = self.bytes.get(at..at + HEADER) else {
            return Some(Err((offset, "an incomplete frame header".into())));
        };
        let word = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let batch_end = word & BATCH_END != 0;
        let len = (word & LEN_MASK) as usize;
        if len == 0 {
            return Some(Err((offset, "a zero-length frame".into())));
        }
        let start = at + HEADER;
        let Some(payload) = self.bytes.get(start..start + len) else {
            return Some(Err((
                offset,
                format!("a frame of {len} bytes runs past the end"),
            )));
        };
        if frame_crc(payload, batch_end) != crc {
            return Some(Err((
                offset,
                "a frame whose checksum does not match".into(),
            )));
        }
        self.at = start + len;
        Some(Ok(Frame {
            offset,
            payload,
            batch_end,
        }))
    }
}

/// One segment: its read handle and where each record starts.
#[derive(Debug)]
struct Segment {
    first: u64,
    path: PathBuf,
    file: Arc<File>,
    /// `offsets[i]` is where sequence `first + i` starts; `end` is where the
    /// last record ends.
    offsets: Vec<u32>,
    end: u64,
}

impl Segment {
    fn next(&self) -> u64 {
        self.first + self.offsets.len() as u64
    }
}

#[derive(Debug)]
struct Index {
    segments: BTreeMap<u64, Segment>,
    /// Sequences below this were deleted by retention.
    first_retained: u64,
    /// Which sequence each retained (agency, event id) was published as.
    ids: IdIndex,
}

/// The append handle of the active segment (the writer's).
#[derive(Debug)]
struct Active {
    first: u64,
    file: Arc<File>,
    len: u64,
}

/// What only `append` uses, under one lock.
#[derive(Debug, Default)]
struct Writer {
    /// The append handle of the active segment.
    active: Option<Active>,
    /// The batch being framed (kept for the next batch).
    buf: Vec<u8>,
    /// The last segment has bytes after its committed events (a torn or
    /// uncommitted tail, left on disk): the next append starts a new one.
    fresh: bool,
}

/// The event log.
#[derive(Debug)]
pub struct EventLog {
    dir: PathBuf,
    segment_bytes: u64,
    /// The store's key of the id hash.
    hasher: IdHasher,
    index: RwLock<Index>,
    writer: Mutex<Writer>,
}

/// The fingerprint of the ids key in `dir`: `Ok(None)` if there is none,
/// `Err(why)` if it is not a key (for `caseshare check`).
pub(crate) fn key_fingerprint(dir: &Path) -> Result<Option<u64>, String> {
    match IdHasher::read(dir) {
        Ok(Ok(h)) => Ok(h.map(|h| h.fingerprint())),
        Ok(Err(why)) => Err(why),
        Err(e) => Err(e.to_string()),
    }
}

/// The `.ids` file name of segment `first`.
pub(crate) fn ids_file_name(first: u64) -> String {
    ids::ids_name(first)
}

/// Checks an `.ids` file read-only: `None` if whole, else (damaged?,
/// offset, why) — not damaged meaning missing or stale (for `caseshare
/// check`).
pub(crate) fn check_ids_file(
    dir: &Path,
    first: u64,
    count: u64,
    fingerprint: u64,
) -> Result<Option<(bool, Option<u64>, String)>, StoreError> {
    Ok(match ids::check_sealed(dir, first, count, fingerprint)? {
        ids::IdsFile::Good(_) => None,
        ids::IdsFile::Missing => Some((false, None, "missing".into())),
        ids::IdsFile::Stale(why) => Some((false, None, why)),
        ids::IdsFile::Damaged { offset, why } => Some((true, Some(offset), why)),
    })
}

pub(crate) fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

impl EventLog {
    /// Opens the log in `dir` for a store whose next sequence is
    /// `next_sequence` and whose first retained one is `first_retained`:
    /// verifies every segment and id file, then (only if all is well) makes
    /// the changes allowed ([`open::verify`], [`open::Plan::apply`]).
    pub fn open(
        dir: &Path,
        next_sequence: u64,
        first_retained: u64,
        segment_bytes: u64,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)?;
        open::verify(dir, next_sequence, first_retained)?.apply(segment_bytes)
    }

    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_index(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The appending side (an error if a writer panicked holding it).
    fn writer(&self) -> Result<std::sync::MutexGuard<'_, Writer>, StoreError> {
        self.writer
            .lock()
            .map_err(|_| StoreError::Engine("event log writer poisoned".into()))
    }

    /// Drops the batch buffer kept between appends (up to
    /// `KEEP_BUFFER_BYTES`); the next append grows a new one.
    pub(crate) fn release_buffer(&self) {
        if let Ok(mut w) = self.writer() {
            w.buf = Vec::new();
        }
    }

    /// The capacity of the batch buffer kept between appends.
    #[cfg(test)]
    pub(crate) fn kept_buffer_bytes(&self) -> usize {
        self.writer().map_or(0, |w| w.buf.capacity())
    }

    /// The sequence the next append must start with (0 when empty).
    pub fn next_sequence(&self) -> Option<u64> {
        self.read_index()
            .segments
            .values()
            .next_back()
            .map(Segment::next)
    }

    /// Appends events (consecutive sequences, continuing the log) and
    /// `fdatasync`s them. Returns the bytes written.
    pub fn append(&self, events: &[StoredEvent]) -> Result<usize, StoreError> {
        self.append_batch(events, None)
    }

    /// Appends events as [`EventLog::append`] does, without the
    /// `fdatasync`, and hands the bytes written (the batch buffer itself,
    /// swapped for `copy`'s old one), and where they went, to `copy`
    /// (which the commit frame carries; the stabiliser
    /// syncs the segment later, [`EventLog::sync`]). Returns the bytes
    /// written.
    pub(crate) fn append_unsynced(
        &self,
        events: &[StoredEvent],
        copy: &mut crate::wal::LogBytes,
    ) -> Result<usize, StoreError> {
        self.append_batch(events, Some(copy))
    }

    /// Makes what was appended to the active segment durable (a sealed
    /// segment was synced as it was sealed).
    pub(crate) fn sync(&self) -> Result<(), StoreError> {
        let file = self.writer()?.active.as_ref().map(|a| a.file.clone());
        if let Some(file) = file {
            file.sync_data()?;
        }
        Ok(())
    }

    /// Appends `events`: synced here without `copy`, else handed to it.
    fn append_batch(
        &self,
        events: &[StoredEvent],
        copy: Option<&mut crate::wal::LogBytes>,
    ) -> Result<usize, StoreError> {
        let Some(first_new) = events.first().map(|e| e.sequence) else {
            return Ok(0);
        };
        let mut writer = self.writer()?;
        let Writer { active, buf, fresh } = &mut *writer;
        if let Some(next) = self.next_sequence()
            && next != first_new
        {
            return Err(StoreError::Engine(format!(
                "event log append at {first_new}, expected {next}"
            )));
        }
        buf.clear();
        let mut starts: Vec<u64> = Vec::with_capacity(events.len());
        let hashes: Vec<(u64, u64)> = events
            .iter()
            .map(|e| (self.hasher.hash(&e.source_agency, &e.event_id), e.sequence))
            .collect();
        let last = events.len() - 1;
        for (i, (expected, e)) in (first_new..).zip(events).enumerate() {
            if e.sequence != expected {
                return Err(StoreError::Engine(format!(
                    "event log batch not consecutive at {}",
                    e.sequence
                )));
            }
            let start = buf.len();
            starts.push(start as u64);
            frame_into(buf, e, i == last)?;
        }
        // Roll over to a new segment when the active one is full (or none
        // is open yet); the new file's name is made durable with the data.
        let mut new_segment = None;
        let batch_len = buf.len() as u64;
        let fits = |len: u64| len + batch_len <= MAX_FRAME_OFFSET;
        if !fits(0) {
            return Err(StoreError::TooLarge(format!(
                "event log batch of {batch_len} bytes at {first_new}"
            )));
        }
        let need_new = match active.as_ref() {
            Some(a) => a.len >= self.segment_bytes || !fits(a.len),
            None => true,
        };
        if need_new {
            let existing = self
                .read_index()
                .segments
                .values()
                .next_back()
                .map(|s| (s.first, s.path.clone(), s.end, s.next()));
            match existing {
                Some((first, path, end, _))
                    if active.is_none() && end < self.segment_bytes && fits(end) && !*fresh =>
                {
                    // Reopened after a restart: continue the last segment.
                    let file = OpenOptions::new().append(true).open(&path)?;
                    *active = Some(Active {
                        first,
                        file: Arc::new(file),
                        len: end,
                    });
                }
                _ => {
                    // The segment being sealed is made durable: the
                    // stabiliser syncs only the active one.
                    if let Some(old) = active.as_ref() {
                        old.file.sync_data()?;
                    }
                    if let Some((first, _, _, next)) = existing {
                        // The last segment is full: seal its ids (written
                        // outside the lock; until installed they stay in the
                        // map, so no lookup misses them).
                        let entries = self.read_index().ids.entries_in(first, next);
                        let sealed = ids::write_sealed(
                            &self.dir,
                            first,
                            entries,
                            self.hasher.fingerprint(),
                        )?;
                        self.write_index().ids.install(first, next, sealed);
                    }
                    let path = self.dir.join(segment_name(first_new));
                    let file = OpenOptions::new()
                        .create_new(true)
                        .append(true)
                        .read(true)
                        .open(&path)?;
                    new_segment = Some((path.clone(), Arc::new(File::open(&path)?)));
                    *fresh = false;
                    *active = Some(Active {
                        first: first_new,
                        file: Arc::new(file),
                        len: 0,
                    });
                }
            }
        }
        let a = active
            .as_mut()
            .ok_or_else(|| StoreError::Engine("no active segment".into()))?;
        let base = a.len;
        let offsets = starts
            .iter()
            .map(|s| u32::try_from(base + s))
            .collect::<Result<Vec<u32>, _>>()
            .map_err(|_| StoreError::Engine(format!("event log frame past 4 GiB at {base}")))?;
        (&*a.file).write_all(buf)?;
        let written = buf.len();
        match copy {
            None => a.file.sync_data()?,
            Some(copy) => {
                copy.file = a.first;
                copy.offset = a.len;
                // The commit frame carries these bytes: they are handed
                // over, not copied, and the frame's old buffer is this
                // log's next.
                std::mem::swap(buf, &mut copy.bytes);
                buf.clear();
            }
        }
        if buf.capacity() > KEEP_BUFFER_BYTES {
            buf.clear();
            buf.shrink_to(KEEP_BUFFER_BYTES);
        }
        if new_segment.is_some() {
            crate::recovery::sync_dir(&self.dir)?;
        }
        a.len += written as u64;
        let active_first = a.first;
        let end = a.len;
        drop(writer);
        let mut index = self.write_index();
        if let Some((path, file)) = new_segment {
            // The last segment is sealed: give back its spare capacity.
            if let Some(sealed) = index.segments.values_mut().next_back() {
                sealed.offsets.shrink_to_fit();
            }
            index.segments.insert(
                active_first,
                Segment {
                    first: active_first,
                    path,
                    file,
                    offsets: Vec::new(),
                    end: 0,
                },
            );
        }
        let seg = index
            .segments
            .get_mut(&active_first)
            .ok_or_else(|| StoreError::Engine("active segment not indexed".into()))?;
        seg.offsets.extend_from_slice(&offsets);
        seg.end = end;
        for (h, seq) in hashes {
            index.ids.add(h, seq);
        }
        Ok(written)
    }

    /// One event.
    pub fn get(&self, sequence: u64) -> Result<Option<StoredEvent>, StoreError> {
        // The run from `sequence` starts later if it is not held (retained).
        let Some(run) = self
            .locate_run(sequence, 1)
            .filter(|run| run.first == sequence)
        else {
            return Ok(None);
        };
        let mut buf = vec![0u8; usize::try_from(run.end - run.start).unwrap_or(0)];
        run.file.read_exact_at(&mut buf, run.start)?;
        decode_frame(sequence, Some(&buf)).map(Some)
    }

    /// The retained event `agency` published as `event_id`.
    pub fn by_id(&self, agency: &str, event_id: &str) -> Result<Option<StoredEvent>, StoreError> {
        let h = self.hasher.hash(agency, event_id);
        let candidates = self.read_index().ids.sequences_for(h)?;
        for seq in candidates {
            if let Some(e) = self.get(seq)?
                && e.source_agency == agency
                && e.event_id == event_id
            {
                return Ok(Some(e));
            }
        }
        Ok(None)
    }

    /// The sequence of the retained event `agency` published as `event_id`.
    pub fn sequence_of(&self, agency: &str, event_id: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.by_id(agency, event_id)?.map(|e| e.sequence))
    }

    /// Up to `max` events from `from` on, in sequence order. Consecutive
    /// events of one segment are read with one `pread` (at most
    /// [`RANGE_READ_BYTES`] at a time), not one each.
    pub fn range(&self, from: u64, max: usize) -> Result<Vec<StoredEvent>, StoreError> {
        let mut out = Vec::with_capacity(max.min(1024));
        let mut seq = from;
        let mut buf = Vec::new();
        while out.len() < max {
            let Some(run) = self.locate_run(seq, max - out.len()) else {
                break;
            };
            let bytes = usize::try_from(run.end - run.start).unwrap_or(usize::MAX);
            buf.clear();
            buf.resize(bytes, 0);
            run.file.read_exact_at(&mut buf, run.start)?;
            for (i, bounds) in run.offsets.windows(2).enumerate() {
                let at = |o: u64| usize::try_from(o - run.start).ok();
                let frame = at(bounds[0])
                    .zip(at(bounds[1]))
                    .and_then(|(a, b)| buf.get(a..b));
                out.push(decode_frame(run.first + i as u64, frame)?);
            }
            seq = run.first + (run.offsets.len() as u64 - 1);
        }
        Ok(out)
    }

    /// Where the events from `sequence` on (from the first retained one,
    /// if `sequence` is before it) lie in one segment: up to `max` of them
    /// within [`RANGE_READ_BYTES`] (at least one event), with their
    /// frames' bounds. `None` when the log holds no event there.
    fn locate_run(&self, sequence: u64, max: usize) -> Option<Run> {
        let index = self.read_index();
        let sequence = sequence.max(index.first_retained);
        let seg = match index.segments.range(..=sequence).next_back() {
            Some((_, seg)) => seg,
            // Before the first segment: from its first event.
            None => index.segments.values().next()?,
        };
        let sequence = sequence.max(seg.first);
        let i = usize::try_from(sequence - seg.first).ok()?;
        let bound = |j: usize| seg.offsets.get(j).map_or(seg.end, |o| u64::from(*o));
        if i >= seg.offsets.len() {
            return None;
        }
        let start = bound(i);
        let mut offsets = vec![start];
        let mut j = i;
        while j < seg.offsets.len() && offsets.len() <= max {
            let end = bound(j + 1);
            if end - start > RANGE_READ_BYTES && offsets.len() > 1 {
                break;
            }
            offsets.push(end);
            j += 1;
        }
        Some(Run {
            file: Arc::clone(&seg.file),
            first: sequence,
            start,
            end: *offsets.last()?,
            offsets,
        })
    }

    /// The first retained sequence, if the log holds any event.
    pub fn first(&self) -> Option<u64> {
        let index = self.read_index();
        let first = index
            .segments
            .values()
            .next()?
            .first
            .max(index.first_retained);
        let next = index.segments.values().next_back()?.next();
        (first < next).then_some(first)
    }

    /// Retention: sequences below `first` are gone; whole segments below it
    /// are deleted.
    pub fn set_first(&self, first: u64) -> Result<(), StoreError> {
        {
            let mut index = self.write_index();
            index.first_retained = index.first_retained.max(first);
            let keep_from = index.first_retained;
            index.ids.forget_below(keep_from, &[])?;
        }
        self.remove_below(first)
    }

    fn remove_below(&self, first: u64) -> Result<(), StoreError> {
        let active_first = self.writer()?.active.as_ref().map(|a| a.first);
        let doomed: Vec<PathBuf> = {
            let mut index = self.write_index();
            let gone: Vec<u64> = index
                .segments
                .values()
                .filter(|s| s.next() <= first && Some(s.first) != active_first)
                .map(|s| s.first)
                .collect();
            // Keep the last segment: appends continue it.
            let last = index.segments.keys().next_back().copied();
            let gone: Vec<u64> = gone.into_iter().filter(|f| Some(*f) != last).collect();
            let keep_from = index.first_retained;
            index.ids.forget_below(keep_from, &gone)?;
            gone.iter()
                .filter_map(|f| index.segments.remove(f).map(|s| s.path))
                .collect()
        };
        for path in &doomed {
            std::fs::remove_file(path)?;
        }
        if !doomed.is_empty() {
            crate::recovery::sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Segment files on disk (for tests and diagnostics).
    pub fn segment_count(&self) -> usize {
        self.read_index().segments.len()
    }

    /// Segments whose ids are in a sealed file (for tests and diagnostics).
    pub fn sealed_id_files(&self) -> usize {
        self.read_index().ids.sealed_count()
    }
}

#[cfg(test)]
pub(crate) mod tests;
