//! Backups of a live store and their restore (`caseshare backup`,
//! `caseshare restore`).
//!
//! **Staging** ([`crate::SledStore::stage`]): with commits held off (the
//! store's commit gate), every file of the store directory is put into a
//! staging folder beside it: the event log's segments, which are only
//! ever appended to, are hard-linked and their lengths noted; sled's files
//! (`db`, `conf`, `snap.*`, `blobs/`) and the saved checkpoint are copied.
//! Sled is made stable first (its flush and `fdatasync`), the write-ahead
//! log (`wal/`) is copied with it, and nothing else writes sled, so the
//! copy is what a `kill -9` between two commits would
//! leave — the state every store open already recovers — taken without
//! stopping the broker. Writes wait only for the links and copies
//! ([`Staged::paused`]); streaming the staged files happens afterwards.
//!
//! **The backup** is a folder: `MANIFEST.pb` (a `caseshare.v1.BackupManifest`,
//! what `restore` reads), `MANIFEST.json` (the same, for people) and
//! `store/<path>` per file, each a run of frames `len: u32 LE ‖ sealed
//! chunk` ([`seal`]). Its SHA-256 is in the manifest.
//!
//! **Restore** ([`restore`]) checks everything before it writes anything
//! where the broker will look: the key (against the manifest's key check),
//! each file's digest, every chunk's seal and each file's size. It writes
//! into a temporary `.store.restore-<pid>` in the data directory, syncs
//! every file, then renames it to `store/` and syncs the data directory. A
//! refused restore leaves the backup as it was and no `store/`.

mod folder;
pub mod seal;
pub use folder::Folder;

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use caseshare_proto::v1 as pb;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::StoreError;
use seal::{Place, Sealer, TAG_BYTES};

/// The manifest's format number.
pub const FORMAT: u32 = 1;
/// The manifest `restore` reads.
pub const MANIFEST_PB: &str = "MANIFEST.pb";
/// The manifest for people.
pub const MANIFEST_JSON: &str = "MANIFEST.json";
/// The folder of sealed files in a backup.
pub const FILES_DIR: &str = "store";

/// A store's counters when it was staged.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The highest event sequence assigned (0: none).
    pub last_sequence: u64,
    /// The lowest event sequence still stored.
    pub first_sequence: u64,
    /// The audit log's size.
    pub audit_size: u64,
    /// Its root at that size.
    pub audit_root: [u8; 32],
    /// Cluster mode: the journal message applied.
    pub journal_position: u64,
    /// The saved checkpoint's signed note, if any.
    pub checkpoint_note: Option<String>,
}

/// One staged file.
#[derive(Debug, Clone)]
pub struct StagedFile {
    /// Its path inside the store directory, `/`-separated.
    pub path: String,
    /// Its size when staged (later appends are not part of the backup).
    pub size: u64,
}

/// A staged copy of the store; removed when dropped.
#[derive(Debug)]
pub struct Staged {
    /// The staging folder.
    pub dir: PathBuf,
    /// Its files, in a fixed order.
    pub files: Vec<StagedFile>,
    /// The counters.
    pub facts: Facts,
    /// How long commits were held off.
    pub paused: Duration,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove a backup's staging folder");
        }
    }
}

/// Staging folders are named `<STAGE_PREFIX><id>` in the data directory;
/// one left by a stopped broker is removed at the next start.
pub const STAGE_PREFIX: &str = ".backup-stage-";

/// Removes staging folders a stopped broker left in `data_dir` (they are
/// copies made for a backup, never the only copy of anything).
pub fn remove_stale_stages(data_dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(data_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(STAGE_PREFIX)
        {
            std::fs::remove_dir_all(entry.path())?;
            tracing::info!(dir = %entry.path().display(), "removed a backup staging folder left by an earlier run");
        }
    }
    Ok(())
}

/// Whether a file of the store directory belongs in a backup: temporaries
/// (a dot prefix, a `.tmp` suffix, sled's `snap.<lsn>.generating`) do not.
fn wanted(name: &str) -> bool {
    !name.starts_with('.') && !name.ends_with(".tmp") && !name.ends_with(".generating")
}

/// Puts every file under `from` into `to` (segments linked, the rest
/// copied), depth first, in name order; returns them.
///
/// Sled writes its snapshots (`snap.<lsn>`) from a thread of its own, which
/// the commit gate does not hold: it writes a new one and removes the old.
/// A file listed that is gone by the time it is linked or copied is left
/// out — a snapshot is derived, and sled rebuilds it from its log at open
/// (the store's recovery rules) — and everything else is staged as listed.
pub(crate) fn stage_files(from: &Path, to: &Path) -> Result<Vec<StagedFile>, StoreError> {
    let mut out = Vec::new();
    stage_dir(from, to, "", &mut out)?;
    Ok(out)
}

/// `Ok(None)` for an I/O error that says the file is gone.
fn unless_gone<T>(r: std::io::Result<T>) -> std::io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn stage_dir(
    from: &Path,
    to: &Path,
    prefix: &str,
    out: &mut Vec<StagedFile>,
) -> Result<(), StoreError> {
    std::fs::create_dir_all(to)?;
    let mut entries = std::fs::read_dir(from)?.collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !wanted(&name) {
            continue;
        }
        let rel = format!("{prefix}{name}");
        let Some(kind) = unless_gone(entry.file_type())? else {
            continue;
        };
        if kind.is_dir() {
            stage_dir(&entry.path(), &to.join(&name), &format!("{rel}/"), out)?;
        } else if kind.is_file() {
            let target = to.join(&name);
            let staged = if prefix == "events/" || prefix == "audit/" {
                // Appended to, never rewritten: a link is the copy, and the
                // length noted now bounds what is read.
                unless_gone(std::fs::hard_link(entry.path(), &target))?
            } else {
                unless_gone(std::fs::copy(entry.path(), &target))?.map(|_| ())
            };
            if staged.is_none() {
                tracing::debug!(file = %rel, "left out of the backup: removed while it was staged");
                continue;
            }
            out.push(StagedFile {
                path: rel,
                size: std::fs::metadata(&target)?.len(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_inside_the_store_are_taken() {
        for (path, inside) in [
            ("db", true),
            ("events/00000000000000000001.seg", true),
            ("", false),
            ("/etc/passwd", false),
            ("../db", false),
            ("events/../../x", false),
            ("./db", false),
        ] {
            assert_eq!(inside_store(path).is_some(), inside, "{path:?}");
        }
    }

    #[test]
    fn temporaries_are_not_staged() {
        for (name, wanted_) in [
            ("db", true),
            ("conf", true),
            ("snap.00000000000ABCDE", true),
            ("snap.00000000000ABCDE.generating", false),
            ("checkpoint", true),
            ("checkpoint.tmp", false),
            (".backup-stage-1", false),
            ("00000000000000000001.seg", true),
        ] {
            assert_eq!(wanted(name), wanted_, "{name}");
        }
    }

    #[test]
    fn a_file_gone_while_staging_is_left_out() {
        assert!(
            unless_gone::<()>(Err(std::io::ErrorKind::NotFound.into()))
                .unwrap()
                .is_none()
        );
        assert!(unless_gone::<()>(Err(std::io::ErrorKind::PermissionDenied.into())).is_err());
        let from = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        std::fs::write(from.path().join("db"), b"x").unwrap();
        std::fs::create_dir(from.path().join("events")).unwrap();
        std::fs::write(from.path().join("events/1.seg"), b"abc").unwrap();
        std::fs::write(from.path().join("snap.1.generating"), b"").unwrap();
        let staged = stage_files(from.path(), &to.path().join("s")).unwrap();
        let names: Vec<(&str, u64)> = staged.iter().map(|f| (f.path.as_str(), f.size)).collect();
        assert_eq!(names, [("db", 1), ("events/1.seg", 3)]);
    }
}

impl crate::SledStore {
    /// Stages a consistent copy of the store in `stage` (which must not
    /// exist), holding commits off meanwhile (see the module docs).
    pub fn stage(&self, stage: &Path) -> Result<Staged, StoreError> {
        let gate = self.gate()?;
        let started = Instant::now();
        // Removes what was staged if anything below fails.
        let mut staged = Staged {
            dir: stage.to_path_buf(),
            files: Vec::new(),
            facts: Facts::default(),
            paused: Duration::ZERO,
        };
        // Sled is made stable first, so that its files are not written
        // while they are copied (the WAL, copied too, covers it anyway).
        self.stabilise_now()?;
        staged.files = stage_files(self.dir(), stage)?;
        let (next, first, audit_size, _) = crate::sled_open::counters(self.tree())?;
        let position_key = crate::sled_backend::key(b'M', &[b"journal"]);
        let journal_position = match self.tree().get(position_key)? {
            Some(v) => crate::sled_backend::read_be(&v, "journal position")?,
            None => 0,
        };
        let tiles = crate::sled_open::tiles(self.tree(), self.audit_log());
        let unreadable =
            |e: String| StoreError::Engine(format!("the audit tree cannot be read: {e}"));
        let audit_root = caseshare_audit::tiles::TiledTree::open(audit_size, &tiles)
            .map_err(|e| unreadable(e.to_string()))?
            .root(audit_size, &tiles)
            .map_err(|e| unreadable(e.to_string()))?;
        let checkpoint = crate::checkpoint::read(stage)?;
        drop(gate);
        staged.paused = started.elapsed();
        staged.facts = Facts {
            last_sequence: next.saturating_sub(1),
            first_sequence: first,
            audit_size,
            audit_root,
            journal_position,
            checkpoint_note: checkpoint.map(|c| c.note),
        };
        Ok(staged)
    }
}

/// Reads a staged file in chunks and seals each: calls `emit` with the
/// sealed chunk. Reads at most the staged size.
pub fn seal_file(
    staged: &Staged,
    number: u32,
    sealer: &Sealer,
    mut emit: impl FnMut(Vec<u8>) -> bool,
) -> Result<u64, StoreError> {
    let file = &staged.files[number as usize];
    let mut f = File::open(staged.dir.join(&file.path))?.take(file.size);
    let chunks = chunk_count(file.size);
    for chunk in 0..chunks {
        let mut buf = Vec::with_capacity(seal::CHUNK_BYTES + TAG_BYTES);
        (&mut f)
            .take(seal::CHUNK_BYTES as u64)
            .read_to_end(&mut buf)?;
        let place = Place {
            file: number,
            path: &file.path,
            chunk,
            last: chunk + 1 == chunks,
        };
        sealer.seal(&place, &mut buf);
        if !emit(buf) {
            break;
        }
    }
    Ok(chunks)
}

/// The chunks a file of `size` bytes is sealed in (an empty file is one
/// empty chunk, so that its seal still proves it whole).
pub fn chunk_count(size: u64) -> u64 {
    size.div_ceil(seal::CHUNK_BYTES as u64).max(1)
}

/// Why a restore was refused. Nothing was written where a broker looks.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The target already holds a store.
    #[error("{} already holds a store: restore only into an empty data directory (a new one, or move this one aside)", .0.display())]
    NotEmpty(PathBuf),
    /// The backup is not one this version reads.
    #[error("{}: {detail}", .path.display())]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The key given is not the one the backup was sealed with.
    #[error(
        "the pseudonym key given is not the key of the broker that took this backup (the manifest's key check differs); give that broker's pseudonym key"
    )]
    WrongKey,
    /// A file of the backup is damaged or missing.
    #[error("{} is damaged: {detail}; this backup cannot be restored, use another", .path.display())]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Reading or writing failed.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> RestoreError + '_ {
    move |source| RestoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a backup's manifest.
pub fn read_manifest(backup: &Path) -> Result<pb::BackupManifest, RestoreError> {
    let path = backup.join(MANIFEST_PB);
    let bytes = std::fs::read(&path).map_err(io_at(&path))?;
    let manifest =
        pb::BackupManifest::decode(bytes.as_slice()).map_err(|e| RestoreError::Manifest {
            path: path.clone(),
            detail: format!("does not decode: {e}"),
        })?;
    if manifest.format != FORMAT {
        return Err(RestoreError::Manifest {
            path,
            detail: format!("format {} (this version reads {FORMAT})", manifest.format),
        });
    }
    Ok(manifest)
}

/// What a restore wrote.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The restored store directory.
    pub store_dir: PathBuf,
    /// The manifest.
    pub manifest: pb::BackupManifest,
    /// Bytes written.
    pub bytes: u64,
}

mod restore;
pub use restore::restore;

/// A file's path in a backup as a relative path that stays inside the
/// store (only plain components), or `None`: the one check for what the
/// broker sends and what a manifest names.
pub(crate) fn inside_store(path: &str) -> Option<&Path> {
    let rel = Path::new(path);
    let plain = rel
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    (plain && !path.is_empty()).then_some(rel)
}

/// Writes `bytes` to `path` and syncs it.
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// SHA-256 of a file.
pub fn file_digest(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}
