//! The files the broker makes for itself in its data directory at first
//! start — the development PKI (`pki/`) and the keys (`secrets/`) — and the
//! rule that keeps them from ever being silently replaced.
//!
//! - **Existing data**: the data directory holds data when `store/` exists
//!   and has at least one entry in it. The keys are always made before the
//!   store is first opened, so a `store/` with anything in it (sled's `db`,
//!   `conf`, `snap.*`, `blobs/`, the event log in `events/`) means keys were
//!   made for it. Whether sled holds a committed record cannot be told
//!   without opening it (which writes), so any entry counts: the rule errs
//!   towards refusing, and a refused brand-new broker is fixed by deleting
//!   its data directory.
//! - A key or PKI file is created only when there is no existing data.
//!   Next to existing data, a missing one is a refusal naming the file and
//!   what to do.
//! - Directories of several files (`pki/`, `secrets/`) are built in a
//!   temporary sibling `.<name>.tmp-<pid>-<n>`, every file synced, then
//!   renamed into place and the parent synced: a start killed half-way
//!   leaves only the temporary, which the next start recognises (by its
//!   prefix) and removes. A directory that exists but lacks a file is a
//!   refusal naming the file, never a partial regeneration.
//! - A single key file outside those directories (`audit.signing_key`) is
//!   written to `.<name>.tmp-<pid>-<n>` beside it, synced, renamed, and the
//!   directory synced.

use std::path::{Path, PathBuf};

use crate::pki::PkiError;

/// The store's directory inside the data directory.
pub const STORE_DIR: &str = "store";

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The evidence that `data_dir` already holds data (see the module docs):
/// the first entry found in `store/`, or `None` for a brand-new broker.
pub fn existing_data(data_dir: &Path) -> Result<Option<PathBuf>, PkiError> {
    let store = data_dir.join(STORE_DIR);
    match std::fs::read_dir(&store) {
        Ok(mut entries) => match entries.next() {
            Some(entry) => Ok(Some(entry.map_err(io_err(&store))?.path())),
            None => Ok(None),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&store)(e)),
    }
}

fn temp_prefix(name: &str) -> String {
    format!(".{name}.tmp-")
}

fn temp_sibling(target: &Path) -> Result<PathBuf, PkiError> {
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| PkiError::Io {
            path: target.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
        })?;
    let n: u32 = rand::random();
    Ok(target.with_file_name(format!(
        "{}{}-{n:08x}",
        temp_prefix(name),
        std::process::id()
    )))
}

/// Syncs a directory (so a rename or removal in it is durable).
pub fn sync_dir(dir: &Path) -> Result<(), PkiError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err(dir))
}

/// Removes temporaries an interrupted start left when building `target`
/// (`.<name>.tmp-*` beside it); returns what was removed. They are never
/// authoritative: the rename into place is the commit.
pub fn remove_leftover_temporaries(target: &Path) -> Result<Vec<PathBuf>, PkiError> {
    let (Some(parent), Some(name)) = (target.parent(), target.file_name().and_then(|n| n.to_str()))
    else {
        return Ok(Vec::new());
    };
    let prefix = temp_prefix(name);
    let entries = match std::fs::read_dir(parent) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(parent)(e)),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(parent))?;
        if !entry.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        let path = entry.path();
        let is_dir = entry.file_type().map_err(io_err(&path))?.is_dir();
        if is_dir {
            std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
        } else {
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
        tracing::warn!(path = %path.display(), "removed a temporary left by an interrupted start");
        removed.push(path);
    }
    if !removed.is_empty() {
        sync_dir(parent)?;
        metrics::counter!("caseshare_start_temporaries_removed_total")
            .increment(removed.len() as u64);
    }
    Ok(removed)
}

/// Creates directory `dir` with everything `fill` writes into it, or
/// nothing: `fill` writes into a temporary sibling (mode `mode`), which is
/// synced and renamed into place (`dir` must not exist, or be empty), and
/// the parent is synced.
pub fn create_dir_atomically(
    dir: &Path,
    mode: u32,
    fill: impl FnOnce(&Path) -> Result<(), PkiError>,
) -> Result<(), PkiError> {
    use std::os::unix::fs::DirBuilderExt;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    let tmp = temp_sibling(dir)?;
    std::fs::DirBuilder::new()
        .mode(mode)
        .create(&tmp)
        .map_err(io_err(&tmp))?;
    let result = fill(&tmp)
        .and_then(|()| sync_dir(&tmp))
        .and_then(|()| std::fs::rename(&tmp, dir).map_err(io_err(dir)))
        .and_then(|()| sync_dir(&parent));
    if result.is_err() {
        // Best effort: a temporary that cannot be removed now is removed by
        // the next start.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Writes one file atomically: a temporary beside it, synced, renamed into
/// place, the directory synced.
pub fn write_file_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let tmp = temp_sibling(path)?;
    let result = crate::pki::write_file(&tmp, contents, mode)
        .and_then(|()| std::fs::rename(&tmp, path).map_err(io_err(path)))
        .and_then(|()| match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => sync_dir(p),
            _ => sync_dir(Path::new(".")),
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes a file that must not exist yet: a temporary beside it, synced,
/// hard-linked into place (which fails, `AlreadyExists`, if `path` exists
/// by then: never an overwrite), the temporary removed, the directory
/// synced. For `caseshare keygen`.
pub fn write_new_file_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let tmp = temp_sibling(path)?;
    let result = crate::pki::write_file(&tmp, contents, mode)
        .and_then(|()| std::fs::hard_link(&tmp, path).map_err(io_err(path)));
    let _ = std::fs::remove_file(&tmp);
    result?;
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => sync_dir(p),
        _ => sync_dir(Path::new(".")),
    }
}

/// The refusal for `missing`, a file the broker needs: what it is, what
/// replacing it would break, and what the operator can do.
pub fn missing_file(
    missing: &Path,
    what: &str,
    evidence: Option<&Path>,
    data_dir: &Path,
) -> String {
    match evidence {
        Some(data) => format!(
            "{} is missing, but the data directory already holds data ({} exists); \
             a new {what}, so the broker will not make one. Restore {} from a backup \
             of this data directory; or, only for a brand-new broker with nothing \
             worth keeping, delete the whole data directory {} and start again",
            missing.display(),
            data.display(),
            missing.display(),
            data_dir.display()
        ),
        None => format!(
            "{} is missing from a directory the broker created complete; \
             a new {what}, so the broker will not make one next to the other files. \
             Restore it from a backup; or, only for a brand-new broker with nothing \
             worth keeping, delete the whole data directory {} and start again",
            missing.display(),
            data_dir.display()
        ),
    }
}

/// What the pseudonym key file holds after the key: a check value, so that
/// a damaged key is refused rather than used (a changed key would make
/// every stored pseudonym unmatchable).
pub fn pseudonym_key_check(key: &[u8]) -> [u8; 32] {
    caseshare_core::pseudonym::child_pseudonym(key, "caseshare pseudonym key check v1")
}

/// The contents of a new pseudonym key file: 32 random bytes, then their
/// check value.
pub fn new_pseudonym_key_file() -> Vec<u8> {
    let key: [u8; 32] = rand::random();
    let mut out = key.to_vec();
    out.extend_from_slice(&pseudonym_key_check(&key));
    out
}

/// Checks a dev PKI the broker is about to use: the server certificate
/// chains to `ca.pem` for `localhost` and `server.key` is its key, so a
/// damaged file is a refusal naming it rather than a broker no client can
/// reach.
pub fn verify_dev_pki(paths: &crate::pki::DevPkiPaths) -> Result<(), String> {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{ServerName, UnixTime};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let ca = &paths.ca;
    let mut roots = rustls::RootCertStore::empty();
    for c in crate::tls::load_certs(ca).map_err(|e| e.to_string())? {
        roots
            .add(c)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", ca.display()))?;
    }
    let certs = crate::tls::load_certs(&paths.server_cert).map_err(|e| e.to_string())?;
    let key = crate::tls::load_key(&paths.server_key).map_err(|e| e.to_string())?;
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider.clone())
            .build()
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    let (end_entity, intermediates) = certs
        .split_first()
        .ok_or_else(|| format!("{}: holds no certificate", paths.server_cert.display()))?;
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    verifier
        .verify_server_cert(end_entity, intermediates, &name, &[], UnixTime::now())
        .map_err(|e| {
            format!(
                "{} does not verify against {} ({e}): one of them is damaged",
                paths.server_cert.display(),
                ca.display()
            )
        })?;
    rustls::sign::CertifiedKey::from_der(certs, key, &provider).map_err(|e| {
        format!(
            "{} is not the key of {} ({e}): one of them is damaged",
            paths.server_key.display(),
            paths.server_cert.display()
        )
    })?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_store_entry_is_existing_data_and_an_empty_or_absent_store_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(existing_data(tmp.path()).unwrap().is_none());
        std::fs::create_dir(tmp.path().join(STORE_DIR)).unwrap();
        assert!(existing_data(tmp.path()).unwrap().is_none());
        std::fs::write(tmp.path().join("store/db"), b"x").unwrap();
        assert_eq!(
            existing_data(tmp.path()).unwrap(),
            Some(tmp.path().join("store/db"))
        );
    }

    #[test]
    fn a_failed_fill_leaves_nothing_and_leftovers_are_recognised_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("secrets");
        let err = create_dir_atomically(&dir, 0o700, |d| {
            crate::pki::write_file(&d.join("a"), b"1", 0o600)?;
            Err(PkiError::Io {
                path: d.join("b"),
                source: std::io::Error::other("disk full"),
            })
        });
        assert!(err.is_err());
        assert!(!dir.exists());
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);

        // What a killed start leaves: a temporary with some files.
        let left = tmp.path().join(".secrets.tmp-123-0000abcd");
        std::fs::create_dir(&left).unwrap();
        std::fs::write(left.join("a"), b"1").unwrap();
        let unrelated = tmp.path().join("secrets-notes");
        std::fs::write(&unrelated, b"keep").unwrap();
        assert_eq!(
            remove_leftover_temporaries(&dir).unwrap(),
            vec![left.clone()]
        );
        assert!(!left.exists());
        assert!(unrelated.exists());

        create_dir_atomically(&dir, 0o700, |d| {
            crate::pki::write_file(&d.join("a"), b"1", 0o600)
        })
        .unwrap();
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"1");
        // Never over a directory that has files.
        assert!(create_dir_atomically(&dir, 0o700, |_| Ok(())).is_err());
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"1");
    }
}
