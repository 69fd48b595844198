//! `caseshare restore`: a backup folder becomes the store of an empty data
//! directory, checked whole before it is put where a broker looks.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use super::seal::{CHUNK_BYTES, Place, Sealer, TAG_BYTES};
use super::{FILES_DIR, RestoreError, Restored, chunk_count, file_digest, io_at, read_manifest};

/// Restores the backup in `backup` into `data_dir` (whose `store/` must be
/// missing or empty), opening it with the broker's `pseudonym_key`. See the
/// module docs of [`super`] for the order of checks and writes.
pub fn restore(
    backup: &Path,
    data_dir: &Path,
    pseudonym_key: &[u8],
    detach: bool,
) -> Result<Restored, RestoreError> {
    let manifest = read_manifest(backup)?;
    let sealer = Sealer::new(pseudonym_key, &manifest.backup_id);
    if sealer.key_check().as_slice() != manifest.key_check.as_slice() {
        return Err(RestoreError::WrongKey);
    }
    let store_dir = data_dir.join("store");
    match std::fs::read_dir(&store_dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(RestoreError::NotEmpty(store_dir));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_at(&store_dir)(e)),
    }
    // Every file's digest first: a damaged backup is refused before
    // anything is written.
    for file in &manifest.files {
        let path = sealed_path(backup, &file.path)?;
        let digest = file_digest(&path).map_err(|e| RestoreError::Damaged {
            path: path.clone(),
            detail: format!("cannot be read ({e})"),
        })?;
        if digest.as_slice() != file.sha256.as_slice() {
            return Err(RestoreError::Damaged {
                path,
                detail: "its SHA-256 differs from the manifest's".into(),
            });
        }
    }
    std::fs::create_dir_all(data_dir).map_err(io_at(data_dir))?;
    let tmp = data_dir.join(format!(".store.restore-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_at(&tmp))?;
    }
    let written = unseal_all(backup, &tmp, &manifest, &sealer).and_then(|b| {
        if detach {
            detach_journal(&tmp)?;
        }
        Ok(b)
    });
    let bytes = match written {
        Ok(b) => b,
        Err(e) => {
            // Only this restore's own partial output.
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if store_dir.exists() {
        // Empty (checked above): replaced by the rename.
        std::fs::remove_dir(&store_dir).map_err(io_at(&store_dir))?;
    }
    std::fs::rename(&tmp, &store_dir).map_err(io_at(&store_dir))?;
    File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at(data_dir))?;
    Ok(Restored {
        store_dir,
        manifest,
        bytes,
    })
}

/// Makes a cluster replica's restored store a standalone one: it forgets
/// the journal it followed (its position and the journal times it kept),
/// so that `caseshare migrate` can start a new journal from it, or an
/// embedded broker serve it. Only ever run on the restore's own temporary
/// copy.
fn detach_journal(store_dir: &Path) -> Result<(), RestoreError> {
    use crate::sled_backend::key;
    let detach = || -> Result<(), crate::StoreError> {
        let db = crate::sled_open::open_sled(store_dir, 16 << 20)?;
        let tree = db.open_tree("caseshare")?;
        // Sled as its write-ahead log says, checked whole, first; the
        // change is then recorded in a frame of its own.
        let recovered = crate::wal::recover(store_dir, &tree, crate::wal::Logs::Restore)?;
        recovered.restored.keep();
        let mut batch = sled::Batch::default();
        batch.remove(key(b'M', &[b"journal"]));
        batch.remove(key(b'M', &[b"jtdrop"]));
        for k in tree.scan_prefix([b'J']).keys() {
            batch.remove(k?);
        }
        tree.apply_batch(batch)?;
        db.flush()?;
        crate::wal::Wal::start(store_dir, recovered.next, recovered.digest, recovered.files)
            .rebase(&tree)?;
        db.flush()?;
        Ok(())
    };
    detach().map_err(|e| RestoreError::Damaged {
        path: store_dir.to_path_buf(),
        detail: format!("the restored store could not be detached from its journal: {e}"),
    })
}

/// The sealed file for `path`, which must stay inside the backup.
fn sealed_path(backup: &Path, path: &str) -> Result<std::path::PathBuf, RestoreError> {
    match super::inside_store(path) {
        Some(rel) => Ok(backup.join(FILES_DIR).join(rel)),
        None => Err(RestoreError::Manifest {
            path: backup.join(super::MANIFEST_PB),
            detail: format!("names a file outside the store: {path:?}"),
        }),
    }
}

fn unseal_all(
    backup: &Path,
    to: &Path,
    manifest: &caseshare_proto::v1::BackupManifest,
    sealer: &Sealer,
) -> Result<u64, RestoreError> {
    let mut total = 0;
    let mut dirs = vec![to.to_path_buf()];
    std::fs::create_dir_all(to).map_err(io_at(to))?;
    for (number, file) in manifest.files.iter().enumerate() {
        let from = sealed_path(backup, &file.path)?;
        let target = to.join(&file.path);
        if let Some(parent) = target.parent()
            && !dirs.iter().any(|d| d == parent)
        {
            std::fs::create_dir_all(parent).map_err(io_at(parent))?;
            dirs.push(parent.to_path_buf());
        }
        let number = u32::try_from(number).map_err(|_| RestoreError::Manifest {
            path: backup.join(super::MANIFEST_PB),
            detail: "too many files".into(),
        })?;
        total += unseal_file(&from, &target, number, file, sealer)?;
    }
    for d in dirs.iter().rev() {
        File::open(d).and_then(|f| f.sync_all()).map_err(io_at(d))?;
    }
    Ok(total)
}

fn unseal_file(
    from: &Path,
    to: &Path,
    number: u32,
    file: &caseshare_proto::v1::BackupFile,
    sealer: &Sealer,
) -> Result<u64, RestoreError> {
    let damaged = |detail: String| RestoreError::Damaged {
        path: from.to_path_buf(),
        detail,
    };
    let chunks = chunk_count(file.size);
    if chunks != file.chunks {
        return Err(damaged(format!(
            "the manifest gives {} chunks for {} bytes",
            file.chunks, file.size
        )));
    }
    let mut input = std::io::BufReader::new(File::open(from).map_err(io_at(from))?);
    let mut out = File::create(to).map_err(io_at(to))?;
    let mut written = 0u64;
    let mut buf = Vec::with_capacity(CHUNK_BYTES + TAG_BYTES);
    for chunk in 0..chunks {
        let mut len = [0u8; 4];
        input
            .read_exact(&mut len)
            .map_err(|_| damaged(format!("ends before chunk {chunk}")))?;
        let len = u32::from_le_bytes(len) as usize;
        if len > CHUNK_BYTES + TAG_BYTES {
            return Err(damaged(format!("chunk {chunk} claims {len} bytes")));
        }
        buf.resize(len, 0);
        input
            .read_exact(&mut buf)
            .map_err(|_| damaged(format!("ends inside chunk {chunk}")))?;
        let place = Place {
            file: number,
            path: &file.path,
            chunk,
            last: chunk + 1 == chunks,
        };
        let plain = sealer
            .open(&place, &mut buf)
            .map_err(|_| damaged(format!("chunk {chunk} does not open")))?;
        out.write_all(plain).map_err(io_at(to))?;
        written += plain.len() as u64;
    }
    if input.read(&mut [0u8; 1]).map_err(io_at(from))? != 0 {
        return Err(damaged("holds bytes after its last chunk".into()));
    }
    if written != file.size {
        return Err(damaged(format!(
            "opens to {written} bytes, the manifest says {}",
            file.size
        )));
    }
    out.sync_all().map_err(io_at(to))?;
    Ok(written)
}
