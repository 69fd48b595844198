//! The leader lease: one key in a JetStream KV bucket (history 1,
//! `max_age` = the lease's time to live, replicated like the journal).
//! Taking it is create-if-absent; its epoch is the KV revision of that
//! create, so a later holder always has a higher epoch. Renewing is an
//! update conditional on the holder's last revision; an entry not renewed
//! for the TTL is removed by the server and the next contender's create
//! succeeds.
//!
//! Timing: renew every `ttl / 3`. A holder that has not renewed
//! successfully by [`Held::valid_until`] (the send time of its last
//! successful renewal plus the TTL, which is no later than the server's
//! expiry of that entry) must stop writing: another replica may hold the
//! lease from then on. Its appends would be fenced anyway (the new leader's
//! first append moves the journal's last sequence), so the lease bounds
//! how long a deposed leader keeps trying, and fencing keeps the journal
//! single-writer even if clocks or pauses break the lease.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::error::{ClusterError, LeaseLost};
use crate::journal::Journal;

/// The bucket's default name.
pub const DEFAULT_BUCKET: &str = "CASESHARE_LEASE";
/// The key holding the leader.
pub const LEADER_KEY: &str = "leader";

/// Who leads: what followers need to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    /// The replica's id (stable across its restarts).
    pub replica_id: String,
    /// Its gRPC address, where followers forward writes.
    pub grpc_address: String,
}

/// The value stored under the key: the leader and a token naming this one
/// acquisition (to recognise one's own create whose answer was lost).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LeaseValue {
    #[serde(flatten)]
    leader: LeaderInfo,
    /// The epoch (0 in the create, which fixes it as its own revision).
    epoch: u64,
    token: String,
}

/// The lease's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// The KV bucket's name.
    pub bucket: String,
    /// Replicas of the bucket (file storage).
    pub replicas: usize,
    /// How long an entry lives without renewal (the bucket's `max_age`).
    pub ttl: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            bucket: DEFAULT_BUCKET.into(),
            replicas: crate::config::DEFAULT_REPLICAS,
            ttl: Duration::from_secs(6),
        }
    }
}

/// A lease this replica holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Who holds it (this replica).
    pub leader: LeaderInfo,
    /// The epoch: the KV revision of the acquisition. Strictly greater than
    /// every earlier holder's.
    pub epoch: u64,
    /// The revision of the last write (acquisition or renewal).
    pub revision: u64,
    token: String,
    valid_until: Instant,
}

impl Held {
    /// Until when the holder may act as leader without another renewal.
    pub fn valid_until(&self) -> Instant {
        self.valid_until
    }
}

/// The lease as others see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    /// The holder.
    pub leader: LeaderInfo,
    /// Its epoch.
    pub epoch: u64,
    /// The revision of its last write.
    pub revision: u64,
}

/// The lease bucket.
#[derive(Clone)]
pub struct Lease {
    store: kv::Store,
    /// The bucket's stream, for reads its leader answers.
    stream: jetstream::stream::Stream,
    /// This handle's token, in every value it writes.
    token: String,
    subject: String,
    ttl: Duration,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// Opens the bucket on the journal's connection, creating it if absent;
    /// an existing bucket with another TTL, replica count or history gives
    /// [`ClusterError::Mismatch`].
    pub async fn open(journal: &Journal, config: &LeaseConfig) -> Result<Lease, ClusterError> {
        if config.ttl < Duration::from_millis(300) {
            return Err(ClusterError::Config(format!(
                "lease ttl {:?} is too short (at least 300 ms)",
                config.ttl
            )));
        }
        let what = format!("KV bucket {}", config.bucket);
        let (js, store) = crate::journal::open_bucket(
            journal,
            kv::Config {
                bucket: config.bucket.clone(),
                description: "Caseshare leader lease".into(),
                history: 1,
                max_age: config.ttl,
                storage: jetstream::stream::StorageType::File,
                num_replicas: config.replicas,
                ..Default::default()
            },
        )
        .await?;
        let mut stream = js
            .get_stream(format!("KV_{}", config.bucket))
            .await
            .map_err(|e| ClusterError::JetStream(format!("{what}: {e}")))?;
        let found = stream
            .info()
            .await
            .map_err(|e| ClusterError::JetStream(format!("{what}: {e}")))?
            .config
            .clone();
        let mut diffs = Vec::new();
        if found.max_age != config.ttl {
            diffs.push(format!(
                "ttl (max_age): found {:?}, configured {:?}",
                found.max_age, config.ttl
            ));
        }
        if found.num_replicas != config.replicas {
            diffs.push(format!(
                "replicas: found {}, configured {}",
                found.num_replicas, config.replicas
            ));
        }
        if found.max_messages_per_subject != 1 {
            diffs.push(format!(
                "history: found {}, configured 1",
                found.max_messages_per_subject
            ));
        }
        if !diffs.is_empty() {
            return Err(ClusterError::Mismatch {
                what,
                differences: diffs.join("; "),
            });
        }
        Ok(Lease {
            store,
            stream,
            token: journal.client().new_inbox(),
            subject: format!("$KV.{}.{LEADER_KEY}", config.bucket),
            ttl: config.ttl,
        })
    }

    /// The lease's time to live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Takes the lease if nobody holds it: `Some` with the new epoch, or
    /// `None` when another holder's entry is live (or another contender
    /// took it first). An entry this handle wrote whose answer was lost is
    /// recognised and renewed.
    pub async fn acquire(&self, me: &LeaderInfo) -> Result<Option<Held>, ClusterError> {
        let expected = match self.read().await? {
            None => 0,
            Some(Last::Gone { revision }) => revision,
            Some(Last::Held { value, revision })
                if value.token == self.token && value.leader == *me =>
            {
                let mut held = Held {
                    leader: me.clone(),
                    epoch: epoch_of(&value, revision),
                    revision,
                    token: self.token.clone(),
                    valid_until: Instant::now(),
                };
                return match self.renew(&mut held).await {
                    Ok(()) => Ok(Some(held)),
                    Err(LeaseLost::Superseded { .. }) => Ok(None),
                    Err(LeaseLost::Unavailable(e)) => Err(ClusterError::JetStream(e)),
                };
            }
            Some(Last::Held { .. }) => return Ok(None),
        };
        let value = encode(&LeaseValue {
            leader: me.clone(),
            epoch: 0,
            token: self.token.clone(),
        })?;
        let sent = Instant::now();
        match self.update(value, expected).await {
            Ok(revision) => Ok(Some(Held {
                leader: me.clone(),
                epoch: revision,
                revision,
                token: self.token.clone(),
                valid_until: sent + self.ttl,
            })),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(ClusterError::JetStream(format!("lease acquire: {e}"))),
        }
    }

    /// Renews `held` (an update conditional on its last revision). On
    /// success its revision and validity move on.
    pub async fn renew(&self, held: &mut Held) -> Result<(), LeaseLost> {
        let value = encode(&LeaseValue {
            leader: held.leader.clone(),
            epoch: held.epoch,
            token: held.token.clone(),
        })
        .map_err(|e| LeaseLost::Unavailable(e.to_string()))?;
        let sent = Instant::now();
        match self.update(value, held.revision).await {
            Ok(revision) => {
                held.revision = revision;
                held.valid_until = sent + self.ttl;
                Ok(())
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                Err(LeaseLost::Superseded {
                    revision: held.revision,
                })
            }
            Err(e) => Err(LeaseLost::Unavailable(e.to_string())),
        }
    }

    /// Who holds the lease now, if anyone, as the bucket's leader says.
    pub async fn current(&self) -> Result<Option<Current>, ClusterError> {
        Ok(match self.read().await? {
            Some(Last::Held { value, revision }) => Some(Current {
                epoch: epoch_of(&value, revision),
                leader: value.leader,
                revision,
            }),
            _ => None,
        })
    }

    /// Gives the lease up (writes a delete marker if the entry is still
    /// `held`'s), so a contender need not wait for the TTL.
    pub async fn release(&self, held: Held) -> Result<(), ClusterError> {
        self.store
            .delete_expect_revision(LEADER_KEY, Some(held.revision))
            .await
            .map_err(|e| ClusterError::JetStream(format!("lease release: {e}")))
    }

    /// Writes the key conditional on `expected` (its last revision, 0 for
    /// absent). A bucket created a moment ago may not yet be known to the
    /// node this client reaches (its publish has no responder: "no stream
    /// found"); nothing was stored, so the same update is sent again, with
    /// pauses doubling from 25 ms, until it answers otherwise or a third of
    /// the TTL (the renewal period) has passed.
    async fn update(&self, value: Bytes, expected: u64) -> Result<u64, kv::UpdateError> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(25);
        loop {
            match self.store.update(LEADER_KEY, value.clone(), expected).await {
                Err(e) if no_stream_yet(&e) && started.elapsed() < self.ttl / 3 => {
                    tracing::debug!(error = %e, "lease bucket not yet reachable; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                other => return other,
            }
        }
    }

    /// The key's last message, read through the stream's leader (the KV
    /// API's own reads are direct gets, which a lagging follower may
    /// answer with an entry already replaced or deleted).
    async fn read(&self) -> Result<Option<Last>, ClusterError> {
        let message = match self
            .stream
            .get_last_raw_message_by_subject(&self.subject)
            .await
        {
            Ok(m) => m,
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::stream::LastRawMessageErrorKind::NoMessageFound
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(ClusterError::JetStream(format!("lease read: {e}"))),
        };
        let revision = message.sequence;
        let operation = message.headers.get("KV-Operation").map(|v| v.as_str());
        if matches!(operation, Some("DEL" | "PURGE")) {
            return Ok(Some(Last::Gone { revision }));
        }
        let value: LeaseValue = serde_json::from_slice(&message.payload)
            .map_err(|err| ClusterError::LeaseValue(err.to_string()))?;
        Ok(Some(Last::Held { value, revision }))
    }
}

/// The key's last message.
enum Last {
    /// A holder's value.
    Held { value: LeaseValue, revision: u64 },
    /// A delete or purge marker.
    Gone { revision: u64 },
}

/// The epoch a value stands for: its own revision for the acquisition.
fn epoch_of(value: &LeaseValue, revision: u64) -> u64 {
    if value.epoch == 0 {
        revision
    } else {
        value.epoch
    }
}

fn encode(value: &LeaseValue) -> Result<Bytes, ClusterError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| ClusterError::LeaseValue(e.to_string()))
}

/// Whether an update found no stream for the key's subject (the publish
/// had no responder): nothing was stored.
fn no_stream_yet(e: &kv::UpdateError) -> bool {
    use std::error::Error as _;
    e.kind() == kv::UpdateErrorKind::Other
        && e.source()
            .and_then(|s| s.downcast_ref::<jetstream::context::PublishError>())
            .is_some_and(|p| p.kind() == jetstream::context::PublishErrorKind::StreamNotFound)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_value_reads_back() {
        let v = LeaseValue {
            leader: LeaderInfo {
                replica_id: "r1".into(),
                grpc_address: "10.0.0.1:7443".into(),
            },
            epoch: 9,
            token: "_INBOX.x".into(),
        };
        let bytes = encode(&v).unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(text.contains("\"replica_id\":\"r1\""), "{text}");
        assert_eq!(serde_json::from_slice::<LeaseValue>(&bytes).unwrap(), v);
    }

    #[test]
    fn only_a_publish_without_a_stream_is_sent_again() {
        use jetstream::context::{PublishError, PublishErrorKind};
        let update = |kind| kv::UpdateError::from(PublishError::new(kind));
        assert!(no_stream_yet(&update(PublishErrorKind::StreamNotFound)));
        for kind in [
            PublishErrorKind::WrongLastSequence,
            PublishErrorKind::TimedOut,
            PublishErrorKind::BrokenPipe,
            PublishErrorKind::Other,
        ] {
            assert!(!no_stream_yet(&update(kind)), "{kind:?}");
        }
        assert!(!no_stream_yet(&kv::UpdateError::new(
            kv::UpdateErrorKind::Other
        )));
    }
}
