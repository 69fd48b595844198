//! Frames of the formats before the logs' bytes were in them (1 and 2):
//! a commit then synced three files at once, so a crash could leave its
//! frame durable and its events or audit entries not. Such a last frame
//! is told by the files' lengths and set aside as never acknowledged.

use std::path::{Path, PathBuf};

use super::files::WalFile;
use super::recover::Found;
use super::{carries_log_bytes, extents_of};
use crate::StoreError;

/// Sets aside the last frame if it is of a format without its logs'
/// bytes, sled has not applied it, and the event log or the audit log
/// does not reach where it says its commit's bytes end: the frame was
/// synced, the other files not (a crash while that format's three syncs
/// ran), so the commit was never acknowledged. Returns its number.
pub(super) fn set_aside_cut_short(
    store_dir: &Path,
    files: &[WalFile],
    found: &mut Vec<Found<'_>>,
    m: u64,
) -> Result<Option<u64>, StoreError> {
    let Some(last) = found.last() else {
        return Ok(None);
    };
    if last.number <= m || carries_log_bytes(last.payload) {
        return Ok(None);
    }
    let extents = extents_of(last.payload).map_err(|why| last.damaged(files, why))?;
    let reaches = |path: PathBuf, end: u64| -> Result<Option<PathBuf>, StoreError> {
        match std::fs::metadata(&path) {
            Ok(meta) if meta.len() >= end => Ok(None),
            Ok(_) => Ok(Some(path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Some(path)),
            Err(e) => Err(e.into()),
        }
    };
    let mut short = None;
    if let Some((first, end)) = extents.events {
        let path = store_dir
            .join("events")
            .join(crate::segments::segment_name(first));
        short = reaches(path, end)?;
    }
    if short.is_none()
        && let Some((serial, end)) = extents.audit
    {
        let path = store_dir
            .join(crate::audit_log::DIR)
            .join(crate::audit_log::file_name(serial));
        short = reaches(path, end)?;
    }
    let Some(path) = short else {
        return Ok(None);
    };
    let number = last.number;
    tracing::warn!(
        frame = number,
        wal = %files[last.file].path.display(),
        file = %path.display(),
        "WAL: the last commit frame's bytes are not all in {}: a commit cut short by a crash \
         (never acknowledged); its frame is left as it is and superseded",
        path.display()
    );
    found.pop();
    Ok(Some(number))
}
