//! `caseshare backup` (a running broker's store, sealed, into a new
//! folder) and `caseshare restore` (a backup into an empty data directory
//! of a stopped broker). The formats and checks are
//! `caseshare_store::backup`'s.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use caseshare_proto::v1 as pb;
use caseshare_server::config::Config;
use caseshare_store::backup::Folder;
use tokio_stream::StreamExt;

use caseshare_cli::client::Clients;
use caseshare_cli::json::to_json;

fn hex_root(m: &pb::BackupManifest) -> String {
    hex::encode(&m.audit_root)
}

/// Takes a backup through `clients` into `out`; returns the summary to print.
pub async fn backup(clients: &mut Clients, out: &Path) -> Result<String> {
    let mut folder = Folder::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut stream = clients
        .admin
        .backup(pb::BackupRequest {})
        .await
        .map_err(crate::status_error)?
        .into_inner();
    let mut bytes = 0u64;
    let mut manifest = None;
    while let Some(part) = stream.next().await {
        let part = part.map_err(crate::status_error)?;
        match part.part {
            Some(pb::backup_chunk::Part::File(f)) => folder.file(f)?,
            Some(pb::backup_chunk::Part::Sealed(c)) => {
                bytes += c.len() as u64;
                folder.sealed(&c)?;
            }
            Some(pb::backup_chunk::Part::Manifest(m)) => {
                manifest = Some(m);
                break;
            }
            None => bail!("the broker sent an empty backup part"),
        }
    }
    let Some(manifest) = manifest else {
        bail!("the backup stream ended before its manifest: nothing was kept");
    };
    let manifest = folder.finish(manifest, |m| {
        to_json("caseshare.v1.BackupManifest", m)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or_default()
    })?;
    Ok(format!(
        "Backed up to {}: {} files, {bytes} bytes sealed; events up to sequence {}, audit log of {} entries (root {}); writes paused {:.1} ms{}\n",
        out.display(),
        manifest.files.len(),
        manifest.last_sequence,
        manifest.audit_size,
        hex_root(&manifest),
        manifest.paused_micros as f64 / 1000.0,
        if manifest.journal_position > 0 {
            format!("; journal position {}", manifest.journal_position)
        } else {
            String::new()
        }
    ))
}

/// What `restore` needs.
#[derive(Debug)]
pub struct RestoreArgs {
    /// The backup folder.
    pub from: PathBuf,
    /// The data directory to restore into.
    pub data_dir: PathBuf,
    /// The pseudonym key file, if given.
    pub pseudonym_key: Option<PathBuf>,
    /// A configuration file naming it, if given.
    pub config: Option<PathBuf>,
    /// Forget the journal a cluster replica's store followed.
    pub detach: bool,
}

/// Restores a backup; returns the summary to print.
pub fn restore(args: RestoreArgs) -> Result<String> {
    let mut cfg = Config::load(args.config.as_deref(), |k| std::env::var(k).ok())?;
    cfg.data_dir = args.data_dir.clone();
    if let Some(k) = args.pseudonym_key {
        cfg.audit.pseudonym_key = Some(k);
    }
    let key = caseshare_server::read_pseudonym_key(&cfg)?;
    let restored = caseshare_store::backup::restore(&args.from, &args.data_dir, &key, args.detach)?;
    let m = &restored.manifest;
    Ok(format!(
        "Restored {} into {}: {} bytes; events up to sequence {}, audit log of {} entries (root {}){}.\n\
         Start the broker on {} with the same keys and TLS files as the one backed up.\n",
        args.from.display(),
        restored.store_dir.display(),
        restored.bytes,
        m.last_sequence,
        m.audit_size,
        hex_root(m),
        if m.journal_position > 0 && args.detach {
            format!(
                "; taken from a cluster replica at journal position {}, now detached: \
                 `caseshare migrate --from {}` starts a new cluster's journal from it",
                m.journal_position,
                args.data_dir.display()
            )
        } else if m.journal_position > 0 {
            format!(
                "; a cluster replica's store at journal position {}: it follows the same \
                 journal from there (give --detach if that journal is lost)",
                m.journal_position
            )
        } else {
            String::new()
        },
        args.data_dir.display()
    ))
}
