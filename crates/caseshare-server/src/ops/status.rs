//! `Admin.GetStatus`, the broker at a glance behind `caseshare status`:
//! version, uptime, role and backend, the store's size on disk, the audit
//! log's size and last checkpoint, and per subscription the figures its
//! metrics carry (read through [`super::gauges`], not computed again).
//! Everything is read from memory except the store's size, which walks
//! the store directory on the blocking pool (`crate::off_runtime`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use caseshare_core::pb;

use super::gauges::{self, Subscriptions};
use crate::auditlog::AuditLog;
use crate::config::Config;
use crate::errors::BrokerError;

/// The broker's version as `caseshare --version` prints it (clap prints
/// the binary's name and its package version; the workspace gives every
/// crate the same version, and `e2e_status` checks the two agree).
pub const VERSION: &str = concat!("caseshare ", env!("CARGO_PKG_VERSION"));

/// What `GetStatus` reads.
#[derive(Debug)]
pub struct StatusSource {
    started: Instant,
    started_at: SystemTime,
    backend: String,
    store_dir: PathBuf,
    subs: Arc<Subscriptions>,
    log: Arc<AuditLog>,
    roster: Option<crate::cluster::RosterView>,
}

impl StatusSource {
    /// A source for a broker serving from now with `config`.
    pub(crate) fn new(
        config: &Config,
        subs: Arc<Subscriptions>,
        log: Arc<AuditLog>,
        roster: Option<crate::cluster::RosterView>,
    ) -> Arc<Self> {
        Arc::new(StatusSource {
            started: Instant::now(),
            started_at: SystemTime::now(),
            backend: config.store.backend.clone(),
            store_dir: config.data_dir.join("store"),
            subs,
            log,
            roster,
        })
    }

    /// The status now.
    pub async fn read(&self) -> Result<pb::BrokerStatus, BrokerError> {
        let dir = self.store_dir.clone();
        let store_bytes = crate::off_runtime(move || {
            dir_bytes(&dir).map_err(|e| {
                BrokerError::Internal(format!("reading the size of {}: {e}", dir.display()))
            })
        })
        .await?;
        let mut subscriptions: Vec<pb::SubscriptionStatus> = self
            .subs
            .rows()
            .into_iter()
            .map(|(f, oldest, in_flight)| pb::SubscriptionStatus {
                agency_id: f.agency,
                name: f.name,
                backlog: f.backlog,
                oldest_unacked_age_seconds: oldest,
                in_flight,
                dead_letters: f.dead_letters,
            })
            .collect();
        subscriptions.sort_by(|a, b| (&a.agency_id, &a.name).cmp(&(&b.agency_id, &b.name)));
        Ok(pb::BrokerStatus {
            version: VERSION.to_string(),
            started_at: Some(prost_types::Timestamp::from(self.started_at)),
            uptime_seconds: self.started.elapsed().as_secs(),
            // Cluster mode (docs/CLUSTER.md): every replica is a peer that
            // proposes to and applies the journal; there is no leader.
            role: if self.backend == "nats" {
                "replica".into()
            } else {
                "single".into()
            },
            backend: self.backend.clone(),
            replicas: self.replicas(),
            store_bytes,
            audit_tree_size: self.log.head().0,
            last_checkpoint: gauges::last_checkpoint().map(|(tree_size, age)| {
                pb::CheckpointSummary {
                    tree_size,
                    age_seconds: age.as_secs(),
                }
            }),
            subscriptions,
        })
    }
}

impl StatusSource {
    /// The roster as last read (cluster mode), this replica marked.
    fn replicas(&self) -> Vec<pb::BrokerReplica> {
        let Some(view) = &self.roster else {
            return Vec::new();
        };
        let now = crate::cluster::now_unix_ms();
        let members = view.members.lock().map(|m| m.clone()).unwrap_or_default();
        members
            .into_iter()
            .map(|m| pb::BrokerReplica {
                this_replica: m.replica_id == view.me,
                replica_id: m.replica_id,
                address: m.address,
                leader: false,
                applied_sequence: m.applied_sequence,
                seen_seconds_ago: u64::try_from(now.saturating_sub(m.put_at_unix_ms) / 1000)
                    .unwrap_or(0),
                version: m.version,
            })
            .collect()
    }
}

/// The bytes of every file under `dir` (symbolic links not followed). A
/// file or directory that goes while it is walked (sled's snapshots and
/// temporaries come and go) is skipped.
fn dir_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0u64;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let meta = match std::fs::symlink_metadata(entry.path()) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if meta.is_dir() {
                todo.push(entry.path());
            } else if meta.is_file() {
                total = total.saturating_add(meta.len());
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn store_size_counts_files_at_any_depth_and_not_links() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), [0u8; 10]).unwrap();
        std::fs::create_dir_all(dir.path().join("events/deep")).unwrap();
        std::fs::write(dir.path().join("events/b.seg"), [0u8; 100]).unwrap();
        std::fs::write(dir.path().join("events/deep/c"), [0u8; 1000]).unwrap();
        std::os::unix::fs::symlink(dir.path().join("events"), dir.path().join("link")).unwrap();
        assert_eq!(dir_bytes(dir.path()).unwrap(), 1110);
        assert_eq!(dir_bytes(&dir.path().join("missing")).unwrap(), 0);
    }

    #[test]
    fn the_version_is_the_binary_name_and_the_package_version() {
        assert_eq!(VERSION, format!("caseshare {}", env!("CARGO_PKG_VERSION")));
    }
}
