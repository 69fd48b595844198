//! Opening the event log under the recovery rules of [`crate::recovery`]:
//! [`verify`] reads every segment and `.ids` file and decides, changing
//! nothing; [`Plan::apply`] then makes the few changes allowed (temporaries
//! removed, derived `.ids` files rebuilt, a segment holding only an
//! uncommitted batch renamed aside, retention's deletions finished).
//!
//! What `verify` refuses (each a [`StoreError::Damaged`] naming the file and
//! offset):
//! - a frame before sled's next sequence with a bad checksum, length,
//!   encoding or sequence (committed data is damaged);
//! - a segment that ends before the next one starts, or the log ending
//!   before sled's next sequence;
//! - more than one batch beyond sled's next sequence, a segment starting
//!   past it, or sled's counter not on a batch boundary (sled went back).
//!
//! A torn frame or undecodable bytes *after* the committed events in the
//! last segment, and the records of the one uncommitted batch, are ignored
//! and left on disk: the next append starts a new segment.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use prost::Message;

use super::ids::{self, IdHasher, IdIndex, IdsFile};
use super::{EventLog, Index, Segment};
use crate::StoreError;
use crate::StoredEvent;
use crate::recovery::{ADVICE_RESTORE, ADVICE_SLED_BEHIND, damaged};

/// Why a segment's frames stop where they do.
#[derive(Debug, Clone)]
pub(crate) enum Stop {
    /// The end of the file, on a frame boundary.
    Eof,
    /// A frame that is incomplete or fails its checksum: a torn write if it
    /// is past the committed events, damage otherwise.
    Torn(u64, String),
    /// A frame whose checksum holds but whose content is wrong: never a
    /// torn write.
    Invalid(u64, String),
}

/// One segment's frames, as read.
#[derive(Debug)]
pub(crate) struct Scanned {
    /// Where each whole frame starts.
    pub offsets: Vec<u64>,
    /// Whether each frame ends a batch.
    pub batch_end: Vec<bool>,
    /// Each frame's (agency, event id).
    pub ids: Vec<(String, String)>,
    /// The end of each whole frame.
    pub ends: Vec<u64>,
    /// Why the frames stop.
    pub stop: Stop,
    /// The file's length.
    pub file_len: u64,
}

/// Reads a segment's frames up to the first one that is not whole and
/// valid (read-only).
pub(crate) fn scan(path: &Path, first: u64) -> Result<Scanned, StoreError> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let mut s = Scanned {
        offsets: Vec::new(),
        batch_end: Vec::new(),
        ids: Vec::new(),
        ends: Vec::new(),
        stop: Stop::Eof,
        file_len: bytes.len() as u64,
    };
    for frame in super::frames(&bytes, 0) {
        let frame = match frame {
            Ok(f) => f,
            Err((off, why)) => {
                s.stop = Stop::Torn(off, why);
                break;
            }
        };
        let off = frame.offset;
        if off > super::MAX_FRAME_OFFSET {
            s.stop = Stop::Invalid(
                off,
                format!(
                    "a frame that starts past byte {}, which this broker never writes",
                    super::MAX_FRAME_OFFSET
                ),
            );
            break;
        }
        let expected = first + s.offsets.len() as u64;
        let event = match StoredEvent::decode(frame.payload) {
            Ok(e) => e,
            Err(e) => {
                s.stop = Stop::Invalid(off, format!("a frame that does not decode: {e}"));
                break;
            }
        };
        if event.sequence != expected {
            s.stop = Stop::Invalid(
                off,
                format!(
                    "a frame of sequence {}, expected {expected}",
                    event.sequence
                ),
            );
            break;
        }
        s.offsets.push(off);
        s.batch_end.push(frame.batch_end);
        s.ids.push((event.source_agency, event.event_id));
        s.ends.push(frame.end());
    }
    Ok(s)
}

/// The segment files in `dir` by first sequence.
pub(crate) fn segment_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut names = Vec::new();
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
    Ok(names)
}

/// A kept segment, as verified.
#[derive(Debug)]
struct Kept {
    first: u64,
    path: PathBuf,
    /// Committed frames only.
    offsets: Vec<u32>,
    end: u64,
    file_len: u64,
    ids: Vec<(String, String)>,
    /// For a sealed segment: its `.ids` file.
    ids_file: Option<IdsFile>,
}

/// What the ids key file holds.
#[derive(Debug)]
enum Key {
    Good,
    Missing,
    Damaged(String),
}

/// What opening will do, decided by [`verify`].
#[derive(Debug)]
pub(crate) struct Plan {
    dir: PathBuf,
    first_retained: u64,
    hasher: IdHasher,
    key: Key,
    kept: Vec<Kept>,
    /// Segments wholly below the first retained sequence (retention).
    doomed: Vec<PathBuf>,
    /// A last segment holding only the batch whose commit never happened.
    uncommitted_segment: Option<PathBuf>,
    /// Frames ignored after the committed ones: (segment, offset, why).
    ignored_tail: Option<(PathBuf, u64, String)>,
    temporaries: Vec<PathBuf>,
}

/// Verifies the log in `dir` against sled's `next_sequence` and
/// `first_retained`, read-only.
pub(crate) fn verify(
    dir: &Path,
    next_sequence: u64,
    first_retained: u64,
) -> Result<Plan, StoreError> {
    let sled_db = dir.parent().unwrap_or(dir).join("db");
    let names = segment_files(dir)?;
    let (hasher, key) = match IdHasher::read(dir)? {
        Ok(Some(h)) => (h, Key::Good),
        Ok(None) => (IdHasher::generate(), Key::Missing),
        Err(why) => (IdHasher::generate(), Key::Damaged(why)),
    };
    let fingerprint = hasher.fingerprint();
    let mut plan = Plan {
        dir: dir.to_path_buf(),
        first_retained,
        hasher,
        key,
        kept: Vec::new(),
        doomed: Vec::new(),
        uncommitted_segment: None,
        ignored_tail: None,
        temporaries: crate::recovery::temporaries(dir)?,
    };
    // A segment starting past sled's next sequence: batches after one sled
    // does not know of were appended, so sled committed them and lost them.
    if let Some((first, path)) = names.iter().find(|(f, _)| *f > next_sequence) {
        return Err(damaged(
            &sled_db,
            None,
            format!(
                "sled's next event sequence is {next_sequence}, but the event log has a segment \
                 starting at {first} ({}): sled lost committed events",
                path.display()
            ),
            ADVICE_SLED_BEHIND,
        ));
    }
    let mut names = names;
    if let Some((first, path)) = names.last().cloned()
        && first == next_sequence
    {
        // Started by the batch whose commit never happened (if it holds
        // more than one batch, sled went back).
        let s = scan(&path, first)?;
        if let Some(i) = s.batch_end.iter().position(|b| *b)
            && i + 1 < s.offsets.len()
        {
            return Err(sled_behind(
                &sled_db,
                next_sequence,
                &path,
                s.offsets[i + 1],
            ));
        }
        if let Stop::Invalid(off, why) = &s.stop {
            return Err(damaged(&path, Some(*off), why.clone(), ADVICE_RESTORE));
        }
        plan.uncommitted_segment = Some(path);
        names.pop();
    }
    let count = names.len();
    for (i, (first, path)) in names.iter().enumerate() {
        let first = *first;
        let limit = names.get(i + 1).map(|(f, _)| *f);
        if limit.is_some_and(|l| l <= first_retained) {
            plan.doomed.push(path.clone());
            continue;
        }
        let s = scan(path, first)?;
        let valid = s.offsets.len() as u64;
        // The frames this segment is the authority for.
        let needed = limit.unwrap_or(next_sequence).min(next_sequence);
        let have = first + valid;
        if have < needed {
            let (offset, why) = match &s.stop {
                Stop::Torn(o, w) | Stop::Invalid(o, w) => (*o, w.clone()),
                Stop::Eof => (s.file_len, "the end of the file".into()),
            };
            // A segment ending cleanly at a record boundary short of what
            // was committed: most likely the next segment, whose name is
            // known, is missing.
            if matches!(s.stop, Stop::Eof) {
                let missing = plan.dir.join(super::segment_name(have));
                let detail = format!(
                    "{} ends whole at sequence {}, but the store has committed sequences up to \
                     {}: the segment holding sequences from {have} is missing (or this one was \
                     cut at a record boundary)",
                    path.display(),
                    have.saturating_sub(1),
                    needed - 1
                );
                return Err(damaged(&missing, None, detail, ADVICE_RESTORE));
            }
            let detail = format!(
                "the events stop at sequence {have} ({why} there), but the store has committed \
                 sequences up to {}",
                needed - 1
            );
            return Err(damaged(path, Some(offset), detail, ADVICE_RESTORE));
        }
        let committed = usize::try_from(needed.saturating_sub(first)).unwrap_or(usize::MAX);
        let last = i + 1 == count;
        if last {
            // Beyond sled's counter: at most the one uncommitted batch.
            let beyond_end = s.batch_end.get(committed..).unwrap_or_default();
            if let Some(j) = beyond_end.iter().position(|b| *b)
                && committed + j + 1 < s.offsets.len()
            {
                return Err(sled_behind(
                    &sled_db,
                    next_sequence,
                    path,
                    s.offsets[committed + j + 1],
                ));
            }
            if let Stop::Invalid(off, why) = &s.stop {
                return Err(damaged(path, Some(*off), why.clone(), ADVICE_RESTORE));
            }
            // Sled's counter must be on a batch boundary (logs written
            // before batches were marked have no marks at all).
            if committed > 0
                && !s.batch_end[committed - 1]
                && s.batch_end[..committed].iter().any(|b| *b)
            {
                return Err(damaged(
                    &sled_db,
                    None,
                    format!(
                        "sled's next event sequence {next_sequence} is not at the end of a \
                         batch in the event log ({} at byte {}): sled lost committed events",
                        path.display(),
                        s.ends[committed - 1]
                    ),
                    ADVICE_SLED_BEHIND,
                ));
            }
            if s.offsets.len() > committed {
                plan.ignored_tail = Some((
                    path.clone(),
                    s.offsets[committed],
                    format!(
                        "{} event(s) of a batch whose commit never happened",
                        s.offsets.len() - committed
                    ),
                ));
            } else if let Stop::Torn(off, why) = &s.stop {
                plan.ignored_tail = Some((path.clone(), *off, format!("{why} (a torn write)")));
            }
        }
        let end = if committed == 0 {
            0
        } else {
            s.ends[committed - 1]
        };
        let ids_file = if last {
            None
        } else {
            Some(ids::check_sealed(
                dir,
                first,
                committed as u64,
                fingerprint,
            )?)
        };
        // Every offset fits: `scan` stops at a frame past 4 GiB.
        let offsets = s
            .offsets
            .iter()
            .take(committed)
            .map(|&o| u32::try_from(o))
            .collect::<Result<Vec<u32>, _>>()
            .map_err(|_| StoreError::Engine(format!("{}: a frame past 4 GiB", path.display())))?;
        let mut seg_ids = s.ids;
        seg_ids.truncate(committed);
        plan.kept.push(Kept {
            first,
            path: path.clone(),
            offsets,
            end,
            file_len: s.file_len,
            ids: seg_ids,
            ids_file,
        });
    }
    match plan.kept.last() {
        None if next_sequence > first_retained.max(1) => {
            // Nothing retained was deleted yet: the first segment's name is
            // known.
            let expected = if first_retained <= 1 {
                dir.join(super::segment_name(1))
            } else {
                dir.to_path_buf()
            };
            return Err(damaged(
                &expected,
                None,
                format!(
                    "the event log holds no segment, but the store has committed events from \
                     sequence {} up to {} (the segment is missing)",
                    first_retained.max(1),
                    next_sequence - 1
                ),
                ADVICE_RESTORE,
            ));
        }
        _ => {}
    }
    // Sequences start at 1; retention moves the first retained one (and
    // records it in sled), so the first segment may not start later.
    if let Some(k) = plan.kept.first()
        && k.first > first_retained.max(1)
        && next_sequence > first_retained.max(1)
    {
        // Nothing retained was deleted yet: the missing segment's name is
        // known; otherwise name the first one present.
        let (missing, offset) = if first_retained <= 1 {
            (plan.dir.join(super::segment_name(1)), None)
        } else {
            (k.path.clone(), Some(0))
        };
        return Err(damaged(
            &missing,
            offset,
            format!(
                "the first segment present ({}) starts at sequence {}, but events from {} are \
                 retained: a segment is missing",
                k.path.display(),
                k.first,
                first_retained.max(1)
            ),
            ADVICE_RESTORE,
        ));
    }
    Ok(plan)
}

fn sled_behind(sled_db: &Path, next: u64, segment: &Path, offset: u64) -> StoreError {
    damaged(
        sled_db,
        None,
        format!(
            "sled's next event sequence is {next}, but the event log holds more than one batch \
             after it ({} from byte {offset} was appended after a later commit): sled lost \
             committed events",
            segment.display()
        ),
        ADVICE_SLED_BEHIND,
    )
}

impl Plan {
    /// Makes the changes decided, and opens the log.
    pub(crate) fn apply(self, segment_bytes: u64) -> Result<EventLog, StoreError> {
        let dir = self.dir;
        for t in &self.temporaries {
            std::fs::remove_file(t)?;
            tracing::info!(file = %t.display(), "removed a temporary left by an interrupted write");
        }
        if !self.temporaries.is_empty() {
            crate::recovery::sync_dir(&dir)?;
        }
        match &self.key {
            Key::Good => {}
            Key::Missing => {
                self.hasher.write(&dir)?;
                if !self.kept.is_empty() {
                    tracing::warn!(
                        "the event log's ids.key was missing: made a new one; every .ids file is rebuilt"
                    );
                }
            }
            Key::Damaged(why) => {
                let moved = crate::recovery::set_aside(&dir.join(ids::KEY_FILE), None)?;
                self.hasher.write(&dir)?;
                tracing::warn!(%why, set_aside = %moved.display(), "the event log's ids.key was damaged: made a new one; every .ids file is rebuilt");
            }
        }
        if let Some(p) = &self.uncommitted_segment {
            let moved = crate::recovery::set_aside_as(p, None, "uncommitted")?;
            tracing::warn!(segment = %p.display(), set_aside = %moved.display(), "a segment holding only a batch whose commit never happened was set aside");
        }
        if let Some((p, offset, why)) = &self.ignored_tail {
            tracing::warn!(segment = %p.display(), offset, %why, "ignoring the end of the event log after the committed events (left on disk; appends continue in a new segment)");
        }
        let hasher = self.hasher;
        let fingerprint = hasher.fingerprint();
        let mut ids = IdIndex::new(&dir);
        let mut segments = BTreeMap::new();
        let mut fresh_segment = false;
        let kept_count = self.kept.len();
        for (i, k) in self.kept.into_iter().enumerate() {
            let count = k.offsets.len() as u64;
            let hashed = || -> Vec<(u64, u64)> {
                k.ids
                    .iter()
                    .zip(k.first..)
                    .map(|((agency, event_id), seq)| (hasher.hash(agency, event_id), seq))
                    .collect()
            };
            match k.ids_file {
                None => {
                    for (h, seq) in hashed() {
                        if seq >= self.first_retained {
                            ids.add(h, seq);
                        }
                    }
                }
                Some(IdsFile::Good(sealed)) => ids.install(k.first, k.first + count, sealed),
                Some(other) => {
                    let path = dir.join(ids::ids_name(k.first));
                    match &other {
                        IdsFile::Damaged { offset, why } => {
                            let moved = crate::recovery::set_aside(&path, None)?;
                            tracing::warn!(file = %path.display(), offset, %why, set_aside = %moved.display(), "a damaged id index file was set aside; rebuilding it from its segment");
                        }
                        IdsFile::Stale(why) => {
                            tracing::info!(file = %path.display(), %why, "rebuilding an id index file from its segment");
                        }
                        _ => {
                            tracing::info!(file = %path.display(), "an id index file was missing; rebuilding it from its segment");
                        }
                    }
                    let sealed = ids::write_sealed(&dir, k.first, hashed(), fingerprint)?;
                    ids.install(k.first, k.first + count, sealed);
                }
            }
            if i + 1 == kept_count && k.file_len != k.end {
                fresh_segment = true;
            }
            segments.insert(
                k.first,
                Segment {
                    first: k.first,
                    file: Arc::new(File::open(&k.path)?),
                    path: k.path,
                    offsets: k.offsets,
                    end: k.end,
                },
            );
        }
        let log = EventLog {
            dir: dir.clone(),
            segment_bytes: segment_bytes.max(1),
            hasher,
            index: RwLock::new(Index {
                segments,
                first_retained: self.first_retained,
                ids,
            }),
            writer: Mutex::new(super::Writer {
                fresh: fresh_segment,
                ..Default::default()
            }),
        };
        // Retention's deletions: segments wholly below the first retained
        // sequence (sled committed that), and their ids files.
        for p in &self.doomed {
            std::fs::remove_file(p)?;
        }
        if !self.doomed.is_empty() {
            crate::recovery::sync_dir(&dir)?;
        }
        {
            let index = log.read_index();
            let firsts: Vec<u64> = index.segments.keys().copied().collect();
            index.ids.remove_orphans(&firsts)?;
        }
        log.remove_below(self.first_retained)?;
        Ok(log)
    }
}
