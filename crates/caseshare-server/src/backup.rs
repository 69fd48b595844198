//! `Admin.Backup`: a consistent copy of this broker's store, streamed
//! sealed (`caseshare_store::backup` stages and seals; this module decides
//! when, and streams).
//!
//! - Each backup is first recorded in the audit log (`BACKUP_TAKEN`: who,
//!   and the backup's id), durably, so the copy holds its own record.
//! - One backup at a time; another call meanwhile is refused
//!   `RESOURCE_EXHAUSTED` at once.
//! - Cluster mode: the copy includes every journal message that existed
//!   when the call arrived (the journal's last sequence is read first, and
//!   a staged copy whose store position is short of it is taken again), so
//!   every write acknowledged anywhere before the call is in it.
//! - Staging runs on a blocking thread; the files are read and sealed on
//!   another, one chunk ahead of the network (a channel of 4 chunks: about
//!   1 MiB per backup in memory).
//! - A caller that stops reading for 60 s loses its backup.
//! - The staging folder (`<data>/.backup-stage-<id>`) is removed when the
//!   stream ends or the caller goes away, and at the next start if the
//!   broker died meanwhile.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use caseshare_core::pb;
use caseshare_store::Storage;
use caseshare_store::backup::{FORMAT, STAGE_PREFIX, Staged, chunk_count, seal::Sealer, seal_file};
use tokio::sync::mpsc;
use tonic::Status;

use crate::errors::BrokerError;

/// How long a replica may take to apply the journal as it stood when a
/// backup was asked for.
const CATCH_UP: Duration = Duration::from_secs(30);

/// How long a chunk may wait for the caller to read: a caller that stops
/// reading loses its backup, and frees the staging folder and the slot.
const STALL: Duration = Duration::from_secs(60);

/// What a backup needs of the broker.
pub(crate) struct BackupSource {
    pub(crate) store: Arc<dyn Storage>,
    pub(crate) data_dir: PathBuf,
    pub(crate) pseudonym_key: Arc<Vec<u8>>,
    pub(crate) cluster: Option<(Arc<caseshare_cluster::Journal>, crate::writer::Progress)>,
    pub(crate) busy: Arc<AtomicBool>,
    /// For the `BACKUP_TAKEN` audit entry.
    pub(crate) writer: crate::writer::Writer,
}

impl std::fmt::Debug for BackupSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupSource")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

/// Clears the busy flag when the backup ends, however it ends.
struct Busy(Arc<AtomicBool>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// The stream of a backup.
pub(crate) type BackupStream =
    tokio_stream::wrappers::ReceiverStream<Result<pb::BackupChunk, Status>>;

fn store_failed(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Internal(format!("the backup could not be staged: {e}"))
}

impl BackupSource {
    /// Records the backup in the audit log (`BACKUP_TAKEN`, durable before
    /// the copy is made, so the copy holds it), stages a copy and starts
    /// streaming it.
    pub(crate) async fn start(
        &self,
        actor: &caseshare_core::principal::Principal,
    ) -> Result<BackupStream, BrokerError> {
        if self.busy.swap(true, Ordering::SeqCst) {
            return Err(BrokerError::ResourceExhausted(
                "a backup is already being taken; one at a time".into(),
            ));
        }
        let busy = Busy(self.busy.clone());
        let backup_id: [u8; 16] = rand::random();
        let entry = pb::AuditEntry {
            kind: pb::EntryKind::BackupTaken as i32,
            actor: actor.spiffe_id(),
            rpc: "/caseshare.v1.Admin/Backup".into(),
            subject: format!("backup {}", hex::encode(backup_id)),
            ..Default::default()
        };
        self.writer
            .call(|reply| crate::writer::Op::Record { entry, reply })
            .await?;
        let started = Instant::now();
        let target = match &self.cluster {
            Some((journal, _)) => journal.last_sequence().await.map_err(|e| {
                BrokerError::Unavailable(format!("the journal cannot be read: {e}"))
            })?,
            None => 0,
        };
        let stage = self
            .data_dir
            .join(format!("{STAGE_PREFIX}{}", hex::encode(backup_id)));
        let staged = loop {
            if let Some((_, progress)) = &self.cluster {
                while progress.applied() < target {
                    if started.elapsed() > CATCH_UP {
                        return Err(BrokerError::Unavailable(format!(
                            "this replica has applied journal message {} of {target} after {}s; try another replica",
                            progress.applied(),
                            CATCH_UP.as_secs()
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            let store = self.store.clone();
            let at = stage.clone();
            let staged = tokio::task::spawn_blocking(move || store.stage_backup(&at))
                .await
                .map_err(store_failed)?
                .map_err(store_failed)?;
            // Applied is counted before the commit: a copy short of the
            // target is dropped (and its folder with it) and taken again.
            if staged.facts.journal_position >= target {
                break staged;
            }
            drop(staged);
            if started.elapsed() > CATCH_UP {
                return Err(BrokerError::Unavailable(
                    "this replica's store did not reach the journal's end in time; try another replica".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        metrics::histogram!("caseshare_backup_pause_seconds").record(staged.paused.as_secs_f64());
        tracing::info!(
            files = staged.files.len(),
            audit_size = staged.facts.audit_size,
            paused_ms = staged.paused.as_millis() as u64,
            "backup staged; streaming it"
        );
        let sealer = Sealer::new(&self.pseudonym_key, &backup_id);
        let manifest = manifest(&staged, &backup_id, &sealer);
        let (tx, rx) = mpsc::channel(4);
        let out = Out {
            tx,
            runtime: tokio::runtime::Handle::current(),
        };
        std::thread::Builder::new()
            .name("caseshare-backup".into())
            .spawn(move || stream_files(staged, sealer, manifest, out, busy))
            .map_err(|e| BrokerError::Internal(format!("starting the backup thread: {e}")))?;
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
    }
}

fn manifest(staged: &Staged, backup_id: &[u8], sealer: &Sealer) -> pb::BackupManifest {
    let facts = &staged.facts;
    pb::BackupManifest {
        format: FORMAT,
        backup_id: backup_id.to_vec(),
        broker_version: crate::ops::status::VERSION.to_string(),
        taken_at: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
        last_sequence: facts.last_sequence,
        first_sequence: facts.first_sequence,
        audit_size: facts.audit_size,
        audit_root: facts.audit_root.to_vec(),
        checkpoint_note: facts.checkpoint_note.clone().unwrap_or_default(),
        journal_position: facts.journal_position,
        paused_micros: staged.paused.as_micros() as u64,
        key_check: sealer.key_check().to_vec(),
        files: staged
            .files
            .iter()
            .map(|f| pb::BackupFile {
                path: f.path.clone(),
                size: f.size,
                chunks: chunk_count(f.size),
                sha256: Vec::new(),
            })
            .collect(),
    }
}

fn part(p: pb::backup_chunk::Part) -> Result<pb::BackupChunk, Status> {
    Ok(pb::BackupChunk { part: Some(p) })
}

/// The stream's sending end, from the backup thread.
struct Out {
    tx: mpsc::Sender<Result<pb::BackupChunk, Status>>,
    runtime: tokio::runtime::Handle,
}

impl Out {
    /// Sends one part; false if the caller went away or stalled past
    /// [`STALL`].
    fn send(&self, item: Result<pb::BackupChunk, Status>) -> bool {
        // The timer is made inside `block_on`, in the runtime's context.
        self.runtime
            .block_on(async { tokio::time::timeout(STALL, self.tx.send(item)).await })
            .is_ok_and(|sent| sent.is_ok())
    }
}

/// The backup thread: each file's header and sealed chunks, then the
/// manifest. Stops (and removes the staging folder) if the caller goes.
fn stream_files(
    staged: Staged,
    sealer: Sealer,
    manifest: pb::BackupManifest,
    out: Out,
    _busy: Busy,
) {
    use pb::backup_chunk::Part;
    let started = Instant::now();
    for (number, file) in manifest.files.iter().enumerate() {
        if !out.send(part(Part::File(file.clone()))) {
            tracing::warn!(
                "the backup's caller went away or stopped reading; the staged copy is removed"
            );
            return;
        }
        let mut gone = false;
        let number = u32::try_from(number).unwrap_or(u32::MAX);
        let sent = seal_file(&staged, number, &sealer, |chunk| {
            gone = !out.send(part(Part::Sealed(chunk)));
            !gone
        });
        if gone {
            tracing::warn!(
                "the backup's caller went away or stopped reading; the staged copy is removed"
            );
            return;
        }
        if let Err(e) = sent {
            tracing::error!(file = %file.path, error = %e, "a staged file could not be read; the backup is abandoned");
            let _ = out.send(Err(Status::internal(format!(
                "the staged copy of {} could not be read: {e}",
                file.path
            ))));
            return;
        }
    }
    if !out.send(part(Part::Manifest(manifest))) {
        return;
    }
    metrics::counter!("caseshare_backups_total").increment(1);
    tracing::info!(seconds = started.elapsed().as_secs_f64(), "backup streamed");
}
