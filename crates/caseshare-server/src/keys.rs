//! The broker's keys — the pseudonym key (`secrets/pseudonym.key` or
//! `audit.pseudonym_key`) and the checkpoint signer
//! (`secrets/checkpoint.skey` or `audit.signing_key`) — and the checks of
//! an existing dev PKI: made only for a data directory with no data, whole
//! or not at all; next to data a missing or damaged one is a refusal naming
//! the file (rules in `crate::datadir` and `docs/OPERATIONS.md`). Also the
//! same checks read-only, for `caseshare check`.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::{ServeError, datadir, pki};

/// The broker's keys.
pub struct Keys {
    /// The pseudonym key (`secrets/pseudonym.key` or `audit.pseudonym_key`).
    pub pseudonym: Vec<u8>,
    /// The checkpoint signer (`secrets/checkpoint.skey` or
    /// `audit.signing_key`).
    pub signer: caseshare_audit::note::NoteSigner,
}

const PSEUDONYM_KEY: &str = "pseudonym.key";
const CHECKPOINT_KEY: &str = "checkpoint.skey";
const PSEUDONYM_WHAT: &str = "pseudonym key would make every stored pseudonym unmatchable \
     (a subject access request would find no records)";
const SIGNER_WHAT: &str = "signing key would change the audit log's identity (its \
     verifier key), so no earlier checkpoint would verify against it";

/// Loads the keys, creating them only when the data directory holds no data
/// yet (`datadir`): `secrets/` is made whole or not at all, and a configured
/// `audit.signing_key` is written atomically. Next to existing data, a
/// missing key is a refusal naming the file and what to do.
pub fn load_keys(config: &Config) -> Result<Keys, ServeError> {
    let secrets = config.data_dir.join("secrets");
    let (signer_path, pseudonym_path) = key_paths(config);
    let signer_in_secrets = config.audit.signing_key.is_none();
    let pseudonym_in_secrets = config.audit.pseudonym_key.is_none();
    datadir::remove_leftover_temporaries(&secrets)?;
    let data = datadir::existing_data(&config.data_dir)?;
    if !secrets.exists() && (pseudonym_in_secrets || signer_in_secrets) {
        if data.is_some() {
            let (path, what) = if pseudonym_in_secrets {
                (secrets.join(PSEUDONYM_KEY), PSEUDONYM_WHAT)
            } else {
                (secrets.join(CHECKPOINT_KEY), SIGNER_WHAT)
            };
            return Err(ServeError::Secret(datadir::missing_file(
                &path,
                what,
                data.as_deref(),
                &config.data_dir,
            )));
        }
        datadir::create_dir_atomically(&secrets, 0o700, |tmp| {
            if pseudonym_in_secrets {
                let key = datadir::new_pseudonym_key_file();
                pki::write_file(&tmp.join(PSEUDONYM_KEY), &key, 0o600)?;
            }
            if signer_in_secrets {
                let text =
                    new_signer_text(&config.audit.origin).map_err(|e| pki::PkiError::Io {
                        path: tmp.join(CHECKPOINT_KEY),
                        source: std::io::Error::other(e),
                    })?;
                pki::write_file(&tmp.join(CHECKPOINT_KEY), text.as_bytes(), 0o600)?;
            }
            Ok(())
        })?;
        tracing::info!(dir = %secrets.display(), "created the broker's keys");
    }
    if !pseudonym_in_secrets {
        datadir::remove_leftover_temporaries(&pseudonym_path)?;
        if !pseudonym_path.exists() && data.is_none() {
            let key = datadir::new_pseudonym_key_file();
            datadir::write_file_atomically(&pseudonym_path, &key, 0o600)?;
            tracing::info!(path = %pseudonym_path.display(), "created the pseudonym key");
        }
    }
    if !signer_in_secrets {
        datadir::remove_leftover_temporaries(&signer_path)?;
        if !signer_path.exists() && data.is_none() {
            let text = new_signer_text(&config.audit.origin).map_err(ServeError::Secret)?;
            datadir::write_file_atomically(&signer_path, text.as_bytes(), 0o600)?;
            tracing::info!(path = %signer_path.display(), "created the checkpoint signing key");
        }
    }
    read_keys(config, data.as_deref())
}

/// Where the signer and the pseudonym key are read: the configured files,
/// or `<data_dir>/secrets/`.
fn key_paths(config: &Config) -> (std::path::PathBuf, std::path::PathBuf) {
    let secrets = config.data_dir.join("secrets");
    let signer = match &config.audit.signing_key {
        Some(p) => p.clone(),
        None => secrets.join(CHECKPOINT_KEY),
    };
    let pseudonym = match &config.audit.pseudonym_key {
        Some(p) => p.clone(),
        None => secrets.join(PSEUDONYM_KEY),
    };
    (signer, pseudonym)
}

fn new_signer_text(origin: &str) -> Result<String, String> {
    let signer = caseshare_audit::note::NoteSigner::generate(origin, &mut rand::rngs::OsRng)
        .map_err(|e| e.to_string())?;
    Ok(format!("{}\n", signer.to_skey()))
}

/// The pseudonym key `config` names (or `<data_dir>/secrets/pseudonym.key`),
/// read under the same mode rule as at start; never made. For `caseshare
/// restore`, which opens a backup with it.
pub fn read_pseudonym_key(config: &Config) -> Result<Vec<u8>, ServeError> {
    let (_, path) = key_paths(config);
    if !path.exists() {
        return Err(ServeError::Secret(format!(
            "{} does not exist: give the pseudonym key of the broker that took the backup \
             (--pseudonym-key, CASESHARE_PSEUDONYM_KEY, or [audit] pseudonym_key in --config)",
            path.display()
        )));
    }
    load_pseudonym_key(&path)
}

/// What [`write_new_keys`] wrote.
#[derive(Debug)]
pub struct NewKeys {
    /// `checkpoint.skey`: the audit log's signing key (signed-note format).
    pub signing_key: PathBuf,
    /// `pseudonym.key`: the key and its check value.
    pub pseudonym_key: PathBuf,
    /// The signing key's verifier key (what auditors verify checkpoints with).
    pub vkey: String,
}

/// Writes a new broker's two keys into `dir` (made, mode 0700, if
/// missing) — `checkpoint.skey` for `origin` and `pseudonym.key`, mode 0600,
/// the contents the broker makes at a first start — for `caseshare keygen`.
/// Refuses, writing nothing, if either file exists: a key is never
/// overwritten (a new one breaks what the old one made).
pub fn write_new_keys(dir: &Path, origin: &str) -> Result<NewKeys, ServeError> {
    use std::os::unix::fs::DirBuilderExt;
    let signing_key = dir.join(CHECKPOINT_KEY);
    let pseudonym_key = dir.join(PSEUDONYM_KEY);
    for (path, what) in [
        (&signing_key, SIGNER_WHAT),
        (&pseudonym_key, PSEUDONYM_WHAT),
    ] {
        if std::fs::symlink_metadata(path).is_ok() {
            return Err(ServeError::Secret(format!(
                "{} exists; keygen never overwrites a key: a new {what}. Choose another \
                 directory",
                path.display()
            )));
        }
    }
    let signer = caseshare_audit::note::NoteSigner::generate(origin, &mut rand::rngs::OsRng)
        .map_err(|e| ServeError::Secret(format!("origin {origin:?}: {e}")))?;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| ServeError::Io {
                context: format!("creating {}", dir.display()),
                source,
            })?;
    }
    let skey = format!("{}\n", signer.to_skey());
    datadir::write_new_file_atomically(&signing_key, skey.as_bytes(), 0o600)?;
    let pseudonym = datadir::new_pseudonym_key_file();
    if let Err(e) = datadir::write_new_file_atomically(&pseudonym_key, &pseudonym, 0o600) {
        // Whole or not at all: the signing key just made was never used.
        let _ = std::fs::remove_file(&signing_key);
        return Err(e.into());
    }
    Ok(NewKeys {
        signing_key,
        pseudonym_key,
        vkey: signer.verifier().to_vkey(),
    })
}

/// Loads the keys that must exist: a missing one is a refusal naming it.
fn read_keys(config: &Config, data: Option<&Path>) -> Result<Keys, ServeError> {
    let (signer_path, pseudonym_path) = key_paths(config);
    let missing = |path: &Path, what: &str| {
        ServeError::Secret(datadir::missing_file(path, what, data, &config.data_dir))
    };
    if !pseudonym_path.exists() {
        return Err(missing(&pseudonym_path, PSEUDONYM_WHAT));
    }
    if !signer_path.exists() {
        return Err(missing(&signer_path, SIGNER_WHAT));
    }
    Ok(Keys {
        pseudonym: load_pseudonym_key(&pseudonym_path)?,
        signer: load_signer(&signer_path)?,
    })
}

/// Checks an existing dev PKI in `<data_dir>/pki/`: every file present,
/// the server certificate verifying against the CA, the key matching it.
pub fn check_dev_pki(config: &Config) -> Result<(), ServeError> {
    let dir = config.data_dir.join("pki");
    for (file, _) in pki::dev_pki_files() {
        let path = dir.join(&file);
        if !path.exists() {
            return Err(ServeError::Secret(datadir::missing_file(
                &path,
                "development CA would not be trusted by the clients holding the \
                 certificates it issued",
                datadir::existing_data(&config.data_dir)?.as_deref(),
                &config.data_dir,
            )));
        }
    }
    datadir::verify_dev_pki(&pki::DevPkiPaths::in_dir(&dir)).map_err(|e| {
        ServeError::Secret(format!(
            "{e}. Restore {} from a backup of this data directory",
            dir.display()
        ))
    })
}

/// The read-only check of the keys and the dev PKI (for `caseshare
/// check --data-dir`): each problem as the refusal the broker would give at
/// start. Nothing is created, removed or changed; a brand-new data
/// directory (no data, nothing made yet) has no problems.
pub fn check_keys_and_pki(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    let data = match datadir::existing_data(&config.data_dir) {
        Ok(d) => d,
        Err(e) => return vec![e.to_string()],
    };
    let pki = config.data_dir.join("pki");
    let dev_pki = config.tls.ca.is_none() || config.tls.cert.is_none() || config.tls.key.is_none();
    if dev_pki {
        if pki.exists() {
            if let Err(e) = check_dev_pki(config) {
                problems.push(e.to_string());
            }
        } else if let Some(d) = &data {
            problems.push(format!(
                "{} is missing, but the data directory already holds data ({} exists)",
                pki.display(),
                d.display()
            ));
        }
    }
    let secrets = config.data_dir.join("secrets");
    if (secrets.exists() || data.is_some())
        && let Err(e) = read_keys(config, data.as_deref())
    {
        problems.push(e.to_string());
    }
    problems
}

/// Reads a secret file: the one place that insists on a safe mode (see
/// [`crate::keymode`]: 0600, or 0640/0440 owned by root or us) and says
/// how to fix it.
fn read_secret(path: &Path) -> Result<Vec<u8>, ServeError> {
    let io = |e: std::io::Error| ServeError::Io {
        context: format!("reading {}", path.display()),
        source: e,
    };
    if let Some(why) = crate::keymode::check(path).map_err(io)? {
        return Err(ServeError::Secret(format!("{} is {why}", path.display())));
    }
    std::fs::read(path).map_err(io)
}

/// Loads the pseudonym key: 32 bytes then their check value
/// (`datadir::pseudonym_key_check`), or 32 bytes alone as written before
/// the check existed. A damaged key is refused, never used. It is never
/// created here: [`load_keys`] creates keys, and only for a new broker.
fn load_pseudonym_key(path: &Path) -> Result<Vec<u8>, ServeError> {
    let bytes = read_secret(path)?;
    let damaged = |why: String| {
        ServeError::Secret(format!(
            "{} is damaged: {why}; the broker will not use a changed key (stored \
             pseudonyms would stop matching). Restore it from a backup of this data directory",
            path.display()
        ))
    };
    match bytes.len() {
        32 => Ok(bytes),
        64 => {
            let (key, check) = bytes.split_at(32);
            if datadir::pseudonym_key_check(key).as_slice() != check {
                return Err(damaged("its check value does not match the key".into()));
            }
            Ok(key.to_vec())
        }
        n => Err(damaged(format!(
            "it must hold 64 bytes (a 32-byte key and its check value), but holds {n}"
        ))),
    }
}

/// Loads the checkpoint signing key (a signed-note `PRIVATE+KEY+...` line).
fn load_signer(path: &Path) -> Result<caseshare_audit::note::NoteSigner, ServeError> {
    let bytes = read_secret(path)?;
    let text = String::from_utf8(bytes).map_err(|_| {
        ServeError::Secret(format!(
            "{}: not UTF-8 text; restore it from a backup of this data directory",
            path.display()
        ))
    })?;
    caseshare_audit::note::NoteSigner::from_skey(text.trim()).map_err(|e| {
        ServeError::Secret(format!(
            "{}: {e}; restore it from a backup of this data directory",
            path.display()
        ))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> Config {
        Config {
            data_dir: dir.to_path_buf(),
            ..Config::default()
        }
    }

    #[test]
    fn the_check_is_read_only_and_names_what_the_start_would_refuse() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(tmp.path());
        // Brand new: nothing to complain about, nothing made.
        assert!(check_keys_and_pki(&cfg).is_empty());
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
        crate::resolve_tls(&cfg).unwrap();
        let made = load_keys(&cfg).unwrap();
        assert_eq!(made.pseudonym.len(), 32);
        std::fs::create_dir(tmp.path().join("store")).unwrap();
        std::fs::write(tmp.path().join("store/db"), b"data").unwrap();
        assert!(check_keys_and_pki(&cfg).is_empty());
        // Loading again gives the same keys.
        let again = load_keys(&cfg).unwrap();
        assert_eq!(again.pseudonym, made.pseudonym);
        assert_eq!(again.signer.to_skey(), made.signer.to_skey());

        let key = tmp.path().join("secrets/pseudonym.key");
        std::fs::remove_file(&key).unwrap();
        std::fs::remove_file(tmp.path().join("pki/ca.key")).unwrap();
        let problems = check_keys_and_pki(&cfg);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("pki/ca.key"), "{problems:?}");
        assert!(
            problems[1].contains("secrets/pseudonym.key"),
            "{problems:?}"
        );
        assert!(!key.exists());
        assert!(load_keys(&cfg).is_err());
        assert!(!key.exists(), "never a new key next to data");
    }
}
