//! `caseshare migrate`: a stopped embedded broker's data directory becomes
//! the first replica of a cluster whose journal is empty (`docs/CLUSTER.md`,
//! runbook). Nothing is copied out of the store: the journal starts with a
//! **base message** — no operations, only the store's counters (next event
//! sequence, next subscription id, audit log size) — appended with
//! `Nats-Expected-Last-Sequence: 0`, so that a second migration, or a
//! migration into a journal in use, is refused. The data directory then
//! records journal position 1: started in cluster mode it applies the
//! journal from message 2, and so does every replica seeded with a copy of
//! it. A replica started on an empty data directory meets the base message,
//! is not at its counters and stops, saying to seed it with a copy. The
//! audit log is the same tree continued, so a consistency proof from the
//! old log's last checkpoint to any checkpoint the cluster signs verifies.
//!
//! Order of changes: everything is checked first (the store opens and
//! loads — it refuses if a broker holds it or it is damaged —, it has not
//! joined a journal, the journal is empty), then the base message is
//! appended, then the position is committed to the store. If the last step
//! fails, the journal holds a base message that this directory can still be
//! given: run the command again within JetStream's duplicate window (two
//! minutes), which takes the stored base message as this store's own.

use std::sync::Arc;

use caseshare_cluster::AppendError;
use caseshare_state::journal::{BatchEnd, JournalEncoder, Origin, leaves_digest};
use caseshare_state::{Batch, Counters};
use caseshare_store::{SledStore, Storage};

use crate::ServeError;
use crate::config::Config;

/// What a migration did.
#[derive(Debug, Clone)]
pub struct Migrated {
    /// The events the store holds (the next sequence − 1).
    pub last_sequence: u64,
    /// The audit log's size.
    pub audit_size: u64,
    /// Subscriptions carried over.
    pub subscriptions: usize,
    /// The journal sequence of the base message.
    pub base: u64,
}

fn backend(message: String) -> ServeError {
    ServeError::Backend(message)
}

/// Migrates `config.data_dir` (a stopped embedded broker's) into the empty
/// journal `config.store.nats` names.
pub async fn migrate(config: &Config) -> Result<Migrated, ServeError> {
    let dir = config.data_dir.join("store");
    if !dir.exists() {
        return Err(backend(format!(
            "{} holds no store: --from must be an embedded broker's data directory",
            config.data_dir.display()
        )));
    }
    let cache = config.store.cache_mib.saturating_mul(1024 * 1024);
    let segments = config.store.segment_kib.saturating_mul(1024);
    let store: Arc<dyn Storage> = {
        let dir = dir.clone();
        Arc::new(
            tokio::task::spawn_blocking(move || {
                SledStore::open_with_segments(&dir, cache, segments)
            })
            .await
            .map_err(|e| backend(format!("opening the store: {e}")))??,
        )
    };
    let snapshot = {
        let store = Arc::clone(&store);
        tokio::task::spawn_blocking(move || store.load())
            .await
            .map_err(|e| backend(format!("loading the store: {e}")))??
    };
    let counters = Counters {
        next_sequence: snapshot.next_sequence,
        next_subscription_id: snapshot.next_subscription_id,
        audit_size: snapshot.audit_size,
    };
    if snapshot.journal_position != 0 {
        return Err(backend(format!(
            "{} has already joined a journal (position {}): it is a cluster replica's \
             directory, not an embedded broker's",
            config.data_dir.display(),
            snapshot.journal_position
        )));
    }
    let base = base_message(counters)?;
    let journal = crate::cluster::open(config).await?;
    // Retried under the same message id while the journal is unavailable:
    // a retry of an append that did land answers `Duplicate`.
    let base: bytes::Bytes = base.into();
    let id = base_id(counters);
    let appended = caseshare_cluster::retry_unavailable(APPEND_PATIENCE, || {
        journal.append(0, &id, base.clone())
    })
    .await;
    let position = match appended {
        Ok(seq) => seq,
        // This store's own base message, appended by an earlier run that
        // stopped before it recorded the position.
        Err(AppendError::Duplicate { sequence }) => sequence,
        Err(AppendError::Fenced { actual, .. }) => {
            return Err(backend(format!(
                "the journal {:?} is not empty (it ends at message {}): migrate only into a new \
                 cluster's journal, before any replica has started on it",
                config.store.nats.stream,
                actual.map_or_else(|| "?".into(), |n| n.to_string())
            )));
        }
        Err(e) => return Err(backend(format!("appending the base message: {e}"))),
    };
    let batch = Batch {
        journal_position: Some(position),
        ..Batch::default()
    };
    {
        let store = Arc::clone(&store);
        tokio::task::spawn_blocking(move || store.commit(&batch))
            .await
            .map_err(|e| backend(format!("recording the journal position: {e}")))??;
    }
    Ok(Migrated {
        last_sequence: snapshot.next_sequence.saturating_sub(1),
        audit_size: snapshot.audit_size,
        subscriptions: snapshot.subscriptions.len(),
        base: position,
    })
}

/// The base message: no operations, the store's counters before and after.
fn base_message(counters: Counters) -> Result<Vec<u8>, ServeError> {
    let mut encoder = JournalEncoder::new(0, Some(counters));
    encoder.set_origin(Origin {
        replica: "migrate".into(),
        batch: 1,
        seen: 0,
    });
    encoder
        .finish(Some(BatchEnd {
            counters,
            leaves: leaves_digest(&[]),
        }))
        .map_err(|e| backend(format!("encoding the base message: {e}")))
}

/// The base message's id: the same for the same store, so that a repeated
/// migration of it is a duplicate, not a second base.
fn base_id(c: Counters) -> String {
    format!(
        "migrate-{}-{}-{}",
        c.next_sequence, c.next_subscription_id, c.audit_size
    )
}

/// How long `migrate` retries an append whose outcome is unknown (a new
/// R3 stream answers "no stream found" until its leader is elected).
const APPEND_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);
