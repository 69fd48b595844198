//! What the broker loads into memory at start: the durable state a store
//! hands back, from which [`crate::BrokerState`] is rebuilt.

use caseshare_proto::v1 as pb;

use crate::records::SubscriptionRecord;

/// What the broker loads into memory at start.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Registered agencies.
    pub agencies: Vec<pb::Agency>,
    /// All agreements, ended ones included.
    pub agreements: Vec<pb::Agreement>,
    /// All consents, withdrawn ones included.
    pub consents: Vec<pb::ConsentRecord>,
    /// Subscriptions.
    pub subscriptions: Vec<SubscriptionRecord>,
    /// Per subscription id, the lowest sequence not yet settled.
    pub floors: Vec<(u64, u64)>,
    /// The next event sequence to assign (sequences start at 1).
    pub next_sequence: u64,
    /// The next subscription id to assign.
    pub next_subscription_id: u64,
    /// The number of audit entries (the next index).
    pub audit_size: u64,
    /// Retracted or superseded events: (sequence, reason).
    pub retracted: Vec<(u64, String)>,
    /// The lowest event sequence still stored (after retention).
    pub first_sequence: u64,
    /// Cluster mode: the last journal message applied (0: none).
    pub journal_position: u64,
    /// Cluster mode: the journal times kept for the stale-proposal rule,
    /// (sequence, stored time in µs), by sequence.
    pub journal_times: Vec<(u64, i64)>,
    /// Cluster mode: journal times at or below this sequence were dropped.
    pub journal_times_dropped_through: u64,
}
