//! The roster: which broker replicas share a journal, for operators
//! (`caseshare status`). One key per replica start in a JetStream KV
//! bucket beside the journal (history 1, file storage, replicated like the
//! journal), each holding a [`Member`] that its replica puts again every
//! few seconds; the bucket's `max_age` drops the entry of a replica that
//! stopped putting (stopped, killed, cut off). Nothing in the roster
//! decides anything: cluster mode has no leader and no membership
//! protocol; the journal alone orders writes.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::error::ClusterError;
use crate::journal::Journal;

/// How long an entry lives without being put again.
pub const ROSTER_TTL: Duration = Duration::from_secs(15);
/// The most members read (a bound on a status read; a deployment runs a
/// handful of replicas).
pub const MAX_MEMBERS: usize = 64;

/// One replica as it describes itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The id of this start of the replica (the origin its journal
    /// messages carry).
    pub replica_id: String,
    /// The gRPC address it listens on (as bound).
    pub address: String,
    /// Its version (`caseshare x.y.z`).
    pub version: String,
    /// The journal sequence it had applied when it put this entry.
    pub applied_sequence: u64,
    /// When it put this entry, Unix milliseconds (its own clock).
    pub put_at_unix_ms: i64,
}

/// The roster bucket of one journal.
#[derive(Clone)]
pub struct Roster {
    store: kv::Store,
}

impl std::fmt::Debug for Roster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Roster").finish_non_exhaustive()
    }
}

/// The bucket's name for a journal stream: `<stream>_REPLICAS`.
pub fn bucket_name(stream: &str) -> String {
    format!("{stream}_REPLICAS")
}

impl Roster {
    /// Opens (creating if absent) the roster bucket of `journal`'s stream.
    pub async fn open(journal: &Journal) -> Result<Roster, ClusterError> {
        let config = journal.config();
        let (_, store) = crate::journal::open_bucket(
            journal,
            kv::Config {
                bucket: bucket_name(&config.stream),
                description: "Caseshare broker replicas (for status only)".into(),
                history: 1,
                max_age: ROSTER_TTL,
                storage: jetstream::stream::StorageType::File,
                num_replicas: config.replicas,
                ..Default::default()
            },
        )
        .await?;
        Ok(Roster { store })
    }

    /// Puts (or puts again) this replica's entry.
    pub async fn announce(&self, me: &Member) -> Result<(), ClusterError> {
        let value = serde_json::to_vec(me)
            .map_err(|e| ClusterError::JetStream(format!("roster entry: {e}")))?;
        self.store
            .put(&me.replica_id, Bytes::from(value))
            .await
            .map_err(|e| ClusterError::JetStream(format!("roster put: {e}")))?;
        Ok(())
    }

    /// The replicas whose entries have not expired, by replica id; at most
    /// [`MAX_MEMBERS`]. An entry that does not decode is skipped.
    pub async fn members(&self) -> Result<Vec<Member>, ClusterError> {
        let err = |e: String| ClusterError::JetStream(format!("roster read: {e}"));
        let mut keys = self.store.keys().await.map_err(|e| err(e.to_string()))?;
        let mut out = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| err(e.to_string()))?;
            if let Some(bytes) = self.store.get(&key).await.map_err(|e| err(e.to_string()))?
                && let Ok(m) = serde_json::from_slice::<Member>(&bytes)
            {
                out.push(m);
            }
            if out.len() >= MAX_MEMBERS {
                break;
            }
        }
        out.sort_by(|a, b| a.replica_id.cmp(&b.replica_id));
        Ok(out)
    }
}
