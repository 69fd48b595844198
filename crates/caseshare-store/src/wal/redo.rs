//! Putting back the logs' bytes that commit frames carry: at open, the
//! event log's and the audit log's bytes of every commit the WAL still
//! holds are compared with the frames' copies, and what a crash kept from
//! the disk is written from them.
//!
//! A commit's one `fdatasync` is its frame's ([`super`]); the two logs
//! are written before it and synced by the stabiliser before the frame's
//! file is trimmed. So after a power loss a log can end before a
//! commit's bytes, or hold zeros where the file grew and its data never
//! reached the disk. Each region of each frame, in order, is then:
//! - on disk and equal to the copy: nothing to do (a killed process, or
//!   no crash at all, leaves this);
//! - past the file's end, or on disk as zeros: written from the copy
//!   (the file created if it is missing);
//! - on disk and different (not zeros): damage, refused naming the file
//!   and the offset, before anything is written;
//! - starting past the end of the file and of every region before it:
//!   bytes of earlier commits (whose frames are trimmed) are missing:
//!   refused the same way.
//!
//! Everything is checked before anything is written. What is written is
//! synced before the open goes on, and [`Restored`] puts it back (files
//! cut back to their lengths, zeros rewritten, files made here removed)
//! if the open later refuses, so a refusal leaves every byte as found.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{Log, Region};
use crate::StoreError;
use crate::recovery::{ADVICE_RESTORE, damaged};

/// One frame's regions, with what names it in a refusal.
pub(super) struct FrameRegions<'a> {
    pub(super) number: u64,
    pub(super) wal: &'a Path,
    pub(super) regions: Vec<Region<'a>>,
}

/// Bytes to write to a log's file.
#[derive(Debug)]
struct Fill<'a> {
    path: PathBuf,
    offset: u64,
    bytes: &'a [u8],
    /// Zero bytes on disk this overwrites (from `offset`).
    over_zeros: u64,
}

/// What the logs need: the bytes to write, checked.
#[derive(Debug, Default)]
pub(super) struct Plan<'a> {
    fills: Vec<Fill<'a>>,
    /// Every existing file a frame names: synced by [`Plan::write`], as a
    /// process killed before the stabiliser's pass may have left their
    /// bytes only in the page cache, and the frames found may be trimmed
    /// as soon as the open is done.
    named: Vec<PathBuf>,
    /// Bytes compared with the disk and found equal.
    pub(super) matched: u64,
}

/// A file as found, before anything was written.
#[derive(Debug)]
struct Found {
    /// Its length, or `None` if it did not exist.
    len: Option<u64>,
    /// Ranges of zeros that fills overwrote.
    zeros: Vec<(u64, u64)>,
}

/// What [`Plan::write`] wrote, put back when dropped unless
/// [`Restored::keep`] is called.
#[derive(Debug, Default)]
#[must_use]
pub(crate) struct Restored {
    found: Vec<(PathBuf, Found)>,
    /// Bytes written.
    pub(crate) bytes: u64,
}

fn path_of(store_dir: &Path, region: &Region<'_>) -> PathBuf {
    match region.log {
        Log::Events => store_dir
            .join("events")
            .join(crate::segments::segment_name(region.file)),
        Log::Audit => store_dir
            .join(crate::audit_log::DIR)
            .join(crate::audit_log::file_name(region.file)),
    }
}

/// Checks every region of `frames` (in order) against the logs' files in
/// `store_dir`, read-only.
pub(super) fn plan<'a>(
    store_dir: &Path,
    frames: &[FrameRegions<'a>],
) -> Result<Plan<'a>, StoreError> {
    let mut plan = Plan::default();
    // Per file: an open handle (if it exists), its length on disk, and
    // where the regions checked so far end.
    let mut files: HashMap<PathBuf, (Option<File>, u64, u64)> = HashMap::new();
    for frame in frames {
        for region in &frame.regions {
            let path = path_of(store_dir, region);
            if !files.contains_key(&path) {
                let (file, len) = match File::open(&path) {
                    Ok(f) => {
                        let len = f.metadata()?.len();
                        plan.named.push(path.clone());
                        (Some(f), len)
                    }
                    Err(e) if e.kind() == ErrorKind::NotFound => (None, 0),
                    Err(e) => return Err(e.into()),
                };
                files.insert(path.clone(), (file, len, len));
            }
            let Some((file, disk_len, known_end)) = files.get_mut(&path) else {
                continue;
            };
            let end = region.offset + region.bytes.len() as u64;
            if region.offset > *known_end {
                return Err(damaged(
                    &path,
                    Some(*known_end),
                    format!(
                        "the file ends at byte {known_end}, and commit frame {} of {} holds \
                         its bytes from byte {}: bytes of earlier commits are missing",
                        frame.number,
                        frame.wal.display(),
                        region.offset
                    ),
                    ADVICE_RESTORE,
                ));
            }
            let on_disk_end = end.min(*disk_len);
            // Where the bytes to write start: the first byte on disk that
            // is not the copy's (every one after it must be a zero), or
            // the file's end.
            let mut from = region.offset.max(*disk_len);
            if let Some(file) = file.as_ref()
                && region.offset < on_disk_end
            {
                let len = usize::try_from(on_disk_end - region.offset)
                    .map_err(|_| StoreError::TooLarge("a commit frame's log bytes".into()))?;
                let mut disk = vec![0u8; len];
                file.read_exact_at(&mut disk, region.offset)?;
                let copy = &region.bytes[..len];
                let same = disk.iter().zip(copy).take_while(|(a, b)| a == b).count();
                plan.matched += same as u64;
                if same < len {
                    if disk[same..].iter().any(|b| *b != 0) {
                        return Err(damaged(
                            &path,
                            Some(region.offset + same as u64),
                            format!(
                                "the file's bytes differ from the copy in commit frame {} of {}",
                                frame.number,
                                frame.wal.display()
                            ),
                            ADVICE_RESTORE,
                        ));
                    }
                    from = region.offset + same as u64;
                }
            }
            if from < end {
                let skip = usize::try_from(from - region.offset)
                    .map_err(|_| StoreError::TooLarge("a commit frame's log bytes".into()))?;
                plan.fills.push(Fill {
                    path: path.clone(),
                    offset: from,
                    bytes: &region.bytes[skip..],
                    over_zeros: on_disk_end.saturating_sub(from),
                });
            }
            *known_end = (*known_end).max(end);
        }
    }
    Ok(plan)
}

impl Plan<'_> {
    /// Bytes the logs lack.
    pub(super) fn missing(&self) -> u64 {
        self.fills.iter().map(|f| f.bytes.len() as u64).sum()
    }

    /// Writes the fills and syncs every file the frames name (and the
    /// folders of files it made).
    pub(super) fn write(self) -> Result<Restored, StoreError> {
        let mut restored = Restored::default();
        let mut handles: Vec<File> = Vec::new();
        let mut dirs: Vec<PathBuf> = Vec::new();
        for fill in &self.fills {
            let i = match restored.found.iter().position(|(p, _)| *p == fill.path) {
                Some(i) => i,
                None => {
                    let len = match std::fs::metadata(&fill.path) {
                        Ok(m) => Some(m.len()),
                        Err(e) if e.kind() == ErrorKind::NotFound => None,
                        Err(e) => return Err(e.into()),
                    };
                    if len.is_none()
                        && let Some(parent) = fill.path.parent()
                    {
                        std::fs::create_dir_all(parent)?;
                        dirs.push(parent.to_path_buf());
                    }
                    let file = OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .open(&fill.path)?;
                    restored.found.push((
                        fill.path.clone(),
                        Found {
                            len,
                            zeros: Vec::new(),
                        },
                    ));
                    handles.push(file);
                    restored.found.len() - 1
                }
            };
            if fill.over_zeros > 0 {
                restored.found[i]
                    .1
                    .zeros
                    .push((fill.offset, fill.over_zeros));
            }
            handles[i].write_all_at(fill.bytes, fill.offset)?;
            restored.bytes += fill.bytes.len() as u64;
            tracing::warn!(
                file = %fill.path.display(),
                offset = fill.offset,
                bytes = fill.bytes.len(),
                "restored bytes of acknowledged commits that a crash kept from the disk, from \
                 the write-ahead log's copy"
            );
        }
        for file in &handles {
            file.sync_data()?;
        }
        for path in &self.named {
            if !restored.found.iter().any(|(p, _)| p == path) {
                File::open(path)?.sync_data()?;
            }
        }
        for dir in dirs {
            crate::recovery::sync_dir(&dir)?;
        }
        Ok(restored)
    }
}

impl Restored {
    /// The open succeeded: what was written stays.
    pub(crate) fn keep(mut self) {
        self.found.clear();
    }

    fn put_back(&mut self) -> std::io::Result<()> {
        for (path, found) in self.found.drain(..) {
            match found.len {
                None => std::fs::remove_file(&path)?,
                Some(len) => {
                    let file = OpenOptions::new().write(true).open(&path)?;
                    file.set_len(len)?;
                    for (offset, n) in found.zeros {
                        let n = usize::try_from(n).map_err(std::io::Error::other)?;
                        file.write_all_at(&vec![0u8; n], offset)?;
                    }
                    file.sync_all()?;
                }
            }
        }
        Ok(())
    }
}

impl Drop for Restored {
    fn drop(&mut self) {
        if self.found.is_empty() {
            return;
        }
        if let Err(e) = self.put_back() {
            tracing::error!(
                error = %e,
                "could not put back the logs' bytes restored from the write-ahead log while \
                 the open was refused"
            );
        }
    }
}
