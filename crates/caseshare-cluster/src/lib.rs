//! Cluster mode's two JetStream parts (docs/CLUSTER.md): the **journal**,
//! one replicated stream whose messages are the broker's committed
//! operation batches, appended by the leader with fencing and read in
//! order by every replica; and the **leader lease**, one key in a KV
//! bucket taken with create-if-absent and renewed with compare-and-set;
//! and the **roster**, a KV bucket where each replica says it is there,
//! for operators only.
//! The bytes appended are opaque here (the broker encodes them with
//! `caseshare_state::journal`); this crate knows NATS, not the broker.
//!
//! An append is acknowledged once JetStream has stored it on a quorum of
//! the stream's replicas (fsynced there when the servers run with
//! `sync_interval: always`). A leader appends with the last sequence it
//! applied as `Nats-Expected-Last-Sequence`: after another leader has
//! appended, the old one is refused ([`AppendError::Fenced`]) and writes
//! nothing. Each append carries a `Nats-Msg-Id`; a retry of an append whose
//! acknowledgement was lost is answered [`AppendError::Duplicate`] with the
//! first copy's sequence instead of being stored twice.

mod config;
mod error;
mod journal;
mod lease;
mod reader;
mod roster;

pub use config::{
    DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_REPLICAS, DEFAULT_STREAM, DEFAULT_SUBJECT, JournalConfig,
    PING_INTERVAL, connect,
};
pub use error::{AppendError, ClusterError, LeaseLost};
pub use journal::{Entry, Journal, retry_unavailable};
pub use lease::{Current, DEFAULT_BUCKET, Held, LEADER_KEY, LeaderInfo, Lease, LeaseConfig};
pub use roster::{MAX_MEMBERS, Member, ROSTER_TTL, Roster, bucket_name};
