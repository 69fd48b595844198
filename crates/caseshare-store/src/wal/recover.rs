//! Reading the WAL back at open ([`recover()`]): sled brought up to the last
//! commit frame and checked against its digest, then the two logs against
//! the bytes the frames carry ([`super::redo`]).

use std::path::Path;

use super::files::{WalFile, apply, list, parse_name};
use super::redo::{self, FrameRegions, Restored};
use super::set_aside::set_aside_cut_short;
use super::{DIR, Digest, applied_key, decode, number_of, regions_of};
use crate::StoreError;
use crate::recovery::{ADVICE_RESTORE, ADVICE_SLED_BEHIND, damaged};
use crate::segments::frames;
use crate::sled_backend::read_be;
use crate::sled_open::SLED_FILES;

/// How far past a bad frame's number a whole frame found after it still
/// counts as a later commit (damage, not a torn tail).
const RESYNC_WINDOW: u64 = 1 << 20;

/// What [`recover()`] found and did.
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

/// Whether [`recover()`] writes to the logs the bytes they lack.
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
        if f.number == expected {
            continue;
        }
        if applied.is_none() && expected == 1 {
            // Sled holds no record of the log at all, yet its first frame
            // is past 1: frames are dropped only once sled has applied
            // them, so sled's records are what is missing.
            return Err(damaged(
                &store_dir.join("db"),
                None,
                format!(
                    "sled holds no record of the write-ahead log, whose first commit frame is \
                     {} (earlier ones were dropped once sled had applied them): sled's records \
                     are missing ({SLED_FILES})",
                    f.number
                ),
                ADVICE_SLED_BEHIND,
            ));
        }
        return Err(damaged(
            &files[f.file].path,
            Some(f.offset),
            format!(
                "commit frame {} follows frame {}: frames sled lacks are missing",
                f.number,
                expected.saturating_sub(1)
            ),
            ADVICE_RESTORE,
        ));
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
