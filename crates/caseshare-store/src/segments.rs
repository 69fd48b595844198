//! The event log: published events, appended in sequence order to segment
//! files and `fdatasync`ed once per batch, beside (not inside) sled.
//!
//! Events are the bulk of what the broker writes (~600 bytes each) and are
//! never changed after publishing, so they do not belong in a B-tree: sled
//! copies and re-serialises leaf nodes on every insert, which cost ~12 µs of
//! the writer's time per event. Here an event costs one `memcpy` into the
//! batch's buffer; the batch is one `write` and one `fdatasync`.
//!
//! Layout: `<dir>/<first sequence, 20 digits>.seg`, each a run of records
//! `len: u32 LE ‖ crc32(payload): u32 LE ‖ payload` where the payload is the
//! [`StoredEvent`] encoding. Sequences inside a segment are consecutive; a
//! new segment starts once the active one passes `segment_bytes`. Which
//! record is where is kept in memory (8 bytes per event), rebuilt by reading
//! the segments at open.
//!
//! The log also answers idempotent publish: an in-memory map from a keyed
//! 64-bit hash of (agency, event id) to the sequence, rebuilt at open
//! (16 bytes a bucket: ~18–36 bytes per retained event with the table's
//! spare capacity); a hit is confirmed against the event
//! itself, so a hash collision can never make a new event a duplicate.
//!
//! Retention deletes a prefix of the log: [`EventLog::set_first`] moves the
//! first retained sequence and removes segments wholly below it.
//!
//! Architecture Invariant: the store appends and syncs a batch's events
//! before it commits the batch's sled records, and sled's next-sequence
//! counter is the authority: at open, records at or after it (written, but
//! their batch never committed) and a torn tail are cut off. So every event
//! sled knows of is in the log, and nothing in the log was never committed.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, Hash, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use prost::Message;

use crate::{StoreError, StoredEvent};

/// Default size at which a new segment starts.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

const HEADER: usize = 8;

/// One segment: its read handle and where each record starts.
#[derive(Debug)]
struct Segment {
    first: u64,
    path: PathBuf,
    file: Arc<File>,
    /// `offsets[i]` is where sequence `first + i` starts; `end` is where the
    /// last record ends.
    offsets: Vec<u64>,
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
    /// Keyed hash of (agency, event id) → sequence (16 bytes a bucket).
    ids: HashMap<u64, u64>,
    /// Further sequences whose ids share a hash with the one in `ids`
    /// (a 64-bit collision: practically never).
    collided: HashMap<u64, Vec<u64>>,
}

impl Index {
    fn add_id(&mut self, hash: u64, sequence: u64) {
        if let Some(first) = self.ids.get(&hash) {
            if *first != sequence {
                self.collided.entry(hash).or_default().push(sequence);
            }
        } else {
            self.ids.insert(hash, sequence);
        }
    }

    fn sequences_for(&self, hash: u64) -> Vec<u64> {
        let mut out: Vec<u64> = self.ids.get(&hash).copied().into_iter().collect();
        if let Some(more) = self.collided.get(&hash) {
            out.extend(more);
        }
        out
    }
}

/// The append handle of the active segment (the writer's).
#[derive(Debug)]
struct Active {
    first: u64,
    file: File,
    len: u64,
}

/// The event log.
#[derive(Debug)]
pub struct EventLog {
    dir: PathBuf,
    segment_bytes: u64,
    /// Per-process key of the id hash.
    hasher: std::collections::hash_map::RandomState,
    index: RwLock<Index>,
    active: Mutex<Option<Active>>,
}

fn corrupt(path: &Path, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: path.display().to_string(),
        detail: detail.into(),
    }
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// What reading a segment found.
struct Scanned {
    /// Where each whole record starts.
    offsets: Vec<u64>,
    /// The end of the last whole record.
    end: u64,
    /// Each record's (agency, event id).
    ids: Vec<(String, String)>,
}

/// Reads a segment's records, up to a torn tail.
fn scan(path: &Path, first: u64) -> Result<Scanned, StoreError> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let mut offsets = Vec::new();
    let mut ids = Vec::new();
    let mut at = 0usize;
    while bytes.len() - at >= HEADER {
        let len = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let crc = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        let start = at + HEADER;
        let Some(payload) = bytes.get(start..start + len as usize) else {
            break; // torn tail
        };
        if crc32fast::hash(payload) != crc {
            break; // torn or never-synced tail
        }
        let expected = first + offsets.len() as u64;
        let event = StoredEvent::decode(payload)
            .map_err(|e| corrupt(path, format!("record at {at}: {e}")))?;
        if event.sequence != expected {
            return Err(corrupt(
                path,
                format!(
                    "record at {at} has sequence {}, expected {expected}",
                    event.sequence
                ),
            ));
        }
        offsets.push(at as u64);
        ids.push((event.source_agency, event.event_id));
        at = start + len as usize;
    }
    Ok(Scanned {
        offsets,
        end: at as u64,
        ids,
    })
}

fn id_hash(hasher: &impl BuildHasher, agency: &str, event_id: &str) -> u64 {
    let mut h = hasher.build_hasher();
    agency.hash(&mut h);
    event_id.hash(&mut h);
    h.finish()
}

impl EventLog {
    /// Opens the log in `dir`, keeping only sequences below
    /// `next_sequence` (the committed ones) and from `first_retained`.
    pub fn open(
        dir: &Path,
        next_sequence: u64,
        first_retained: u64,
        segment_bytes: u64,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)?;
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(first) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            names.push((first, path));
        }
        names.sort();
        let mut segments = BTreeMap::new();
        let hasher = std::collections::hash_map::RandomState::new();
        let mut id_list: Vec<(u64, u64)> = Vec::new();
        let mut expected_first: Option<u64> = None;
        let mut changed_dir = false;
        for (first, path) in names {
            if first >= next_sequence {
                // Started by a batch that never committed.
                std::fs::remove_file(&path)?;
                changed_dir = true;
                continue;
            }
            if let Some(e) = expected_first
                && e != first
            {
                return Err(corrupt(
                    &path,
                    format!("segment starts at {first}, expected {e}"),
                ));
            }
            let Scanned {
                mut offsets,
                mut end,
                ids: segment_ids,
            } = scan(&path, first)?;
            // Records of a batch that never committed.
            let keep = usize::try_from(next_sequence - first).unwrap_or(usize::MAX);
            if offsets.len() > keep {
                end = offsets[keep];
                offsets.truncate(keep);
            }
            for ((agency, event_id), seq) in segment_ids.iter().take(keep).zip(first..) {
                if seq >= first_retained {
                    id_list.push((id_hash(&hasher, agency, event_id), seq));
                }
            }
            let file_len = std::fs::metadata(&path)?.len();
            if file_len != end {
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(end)?;
                f.sync_all()?;
            }
            let seg = Segment {
                first,
                path: path.clone(),
                file: Arc::new(File::open(&path)?),
                offsets,
                end,
            };
            expected_first = Some(seg.next());
            segments.insert(first, seg);
        }
        if changed_dir {
            sync_dir(dir)?;
        }
        let mut log = EventLog {
            dir: dir.to_path_buf(),
            segment_bytes: segment_bytes.max(1),
            hasher,
            index: RwLock::new(Index {
                segments,
                first_retained,
                ids: HashMap::with_capacity(id_list.len()),
                collided: HashMap::new(),
            }),
            active: Mutex::new(None),
        };
        {
            let index = log.index.get_mut().unwrap_or_else(|p| p.into_inner());
            for (h, seq) in id_list {
                index.add_id(h, seq);
            }
        }
        if let Some(last) = log.read_index().segments.values().next_back()
            && last.next() != next_sequence
            && next_sequence > first_retained
        {
            return Err(corrupt(
                &last.path,
                format!(
                    "the log ends before sequence {}, but the store has committed up to {}",
                    last.next(),
                    next_sequence - 1
                ),
            ));
        }
        log.remove_below(first_retained)?;
        Ok(log)
    }

    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_index(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
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
        let Some(first_new) = events.first().map(|e| e.sequence) else {
            return Ok(0);
        };
        let mut active = self
            .active
            .lock()
            .map_err(|_| StoreError::Engine("event log writer poisoned".into()))?;
        if let Some(next) = self.next_sequence()
            && next != first_new
        {
            return Err(StoreError::Engine(format!(
                "event log append at {first_new}, expected {next}"
            )));
        }
        let mut buf: Vec<u8> = Vec::with_capacity(events.len() * 700);
        let mut starts: Vec<u64> = Vec::with_capacity(events.len());
        let hashes: Vec<(u64, u64)> = events
            .iter()
            .map(|e| {
                (
                    id_hash(&self.hasher, &e.source_agency, &e.event_id),
                    e.sequence,
                )
            })
            .collect();
        for (expected, e) in (first_new..).zip(events) {
            if e.sequence != expected {
                return Err(StoreError::Engine(format!(
                    "event log batch not consecutive at {}",
                    e.sequence
                )));
            }
            let payload = e.encode_to_vec();
            let len = u32::try_from(payload.len())
                .map_err(|_| StoreError::TooLarge(format!("event {}", e.sequence)))?;
            starts.push(buf.len() as u64);
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            buf.extend_from_slice(&payload);
        }
        // Roll over to a new segment when the active one is full (or none
        // is open yet); the new file's name is made durable with the data.
        let mut new_segment = None;
        let need_new = match active.as_ref() {
            Some(a) => a.len >= self.segment_bytes,
            None => true,
        };
        if need_new {
            let existing = self
                .read_index()
                .segments
                .values()
                .next_back()
                .map(|s| (s.first, s.path.clone(), s.end));
            match existing {
                Some((first, path, end)) if active.is_none() && end < self.segment_bytes => {
                    // Reopened after a restart: continue the last segment.
                    let file = OpenOptions::new().append(true).open(&path)?;
                    *active = Some(Active {
                        first,
                        file,
                        len: end,
                    });
                }
                _ => {
                    let path = self.dir.join(segment_name(first_new));
                    let file = OpenOptions::new()
                        .create_new(true)
                        .append(true)
                        .read(true)
                        .open(&path)?;
                    new_segment = Some((path.clone(), Arc::new(File::open(&path)?)));
                    *active = Some(Active {
                        first: first_new,
                        file,
                        len: 0,
                    });
                }
            }
        }
        let a = active
            .as_mut()
            .ok_or_else(|| StoreError::Engine("no active segment".into()))?;
        a.file.write_all(&buf)?;
        a.file.sync_data()?;
        if new_segment.is_some() {
            sync_dir(&self.dir)?;
        }
        let base = a.len;
        a.len += buf.len() as u64;
        let active_first = a.first;
        let end = a.len;
        drop(active);
        let mut index = self.write_index();
        if let Some((path, file)) = new_segment {
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
        seg.offsets.extend(starts.iter().map(|s| base + s));
        seg.end = end;
        for (h, seq) in hashes {
            index.add_id(h, seq);
        }
        Ok(buf.len())
    }

    /// Where a sequence's record is: (file, offset, length).
    fn locate(&self, sequence: u64) -> Option<(Arc<File>, u64, u64)> {
        let index = self.read_index();
        if sequence < index.first_retained {
            return None;
        }
        let (_, seg) = index.segments.range(..=sequence).next_back()?;
        let i = usize::try_from(sequence - seg.first).ok()?;
        let start = *seg.offsets.get(i)?;
        let end = seg.offsets.get(i + 1).copied().unwrap_or(seg.end);
        Some((Arc::clone(&seg.file), start, end - start))
    }

    /// One event.
    pub fn get(&self, sequence: u64) -> Result<Option<StoredEvent>, StoreError> {
        let Some((file, offset, len)) = self.locate(sequence) else {
            return Ok(None);
        };
        let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
        file.read_exact_at(&mut buf, offset)?;
        let payload = buf.get(HEADER..).unwrap_or_default();
        StoredEvent::decode(payload)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                key: format!("event {sequence}"),
                detail: e.to_string(),
            })
    }

    /// The sequence of the retained event `agency` published as `event_id`.
    pub fn sequence_of(&self, agency: &str, event_id: &str) -> Result<Option<u64>, StoreError> {
        let h = id_hash(&self.hasher, agency, event_id);
        let candidates = self.read_index().sequences_for(h);
        for seq in candidates {
            if let Some(e) = self.get(seq)?
                && e.source_agency == agency
                && e.event_id == event_id
            {
                return Ok(Some(seq));
            }
        }
        Ok(None)
    }

    /// Up to `max` events from `from` on, in sequence order.
    pub fn range(&self, from: u64, max: usize) -> Result<Vec<StoredEvent>, StoreError> {
        let (start, next) = {
            let index = self.read_index();
            let first = index
                .segments
                .values()
                .next()
                .map_or(u64::MAX, |s| s.first)
                .max(index.first_retained);
            let next = index.segments.values().next_back().map_or(0, Segment::next);
            (from.max(first), next)
        };
        let mut out = Vec::with_capacity(max.min(1024));
        let mut seq = start;
        while out.len() < max && seq < next {
            match self.get(seq)? {
                Some(e) => out.push(e),
                None => break,
            }
            seq += 1;
        }
        Ok(out)
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
            index.ids.retain(|_, s| *s >= keep_from);
            index.collided.retain(|_, v| {
                v.retain(|s| *s >= keep_from);
                !v.is_empty()
            });
        }
        self.remove_below(first)
    }

    fn remove_below(&self, first: u64) -> Result<(), StoreError> {
        let active_first = self
            .active
            .lock()
            .map_err(|_| StoreError::Engine("event log writer poisoned".into()))?
            .as_ref()
            .map(|a| a.first);
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
            gone.into_iter()
                .filter(|f| Some(*f) != last)
                .filter_map(|f| index.segments.remove(&f).map(|s| s.path))
                .collect()
        };
        for path in &doomed {
            std::fs::remove_file(path)?;
        }
        if !doomed.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Segment files on disk (for tests and diagnostics).
    pub fn segment_count(&self) -> usize {
        self.read_index().segments.len()
    }
}

#[cfg(test)]
mod tests;
