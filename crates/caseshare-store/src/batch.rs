//! One group commit's worth of writes. The server's writer fills a batch
//! from many concurrent requests and commits it once; the backend maps each
//! field to its own records.

use caseshare_proto::v1 as pb;

use crate::records::{DeliveryRecord, StoredEvent, SubscriptionRecord};

/// Writes to apply atomically.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    /// New events.
    pub events: Vec<StoredEvent>,
    /// Audit entries, encoded, with consecutive indexes from `audit_first_index`.
    pub audit: Vec<Vec<u8>>,
    /// The index of `audit[0]`.
    pub audit_first_index: u64,
    /// Merkle tiles that changed: (level, index, concatenated hashes).
    pub tiles: Vec<(u8, u64, Vec<u8>)>,
    /// Agencies registered.
    pub agencies: Vec<pb::Agency>,
    /// Agreements put or ended.
    pub agreements: Vec<pb::Agreement>,
    /// Consents recorded or withdrawn.
    pub consents: Vec<pb::ConsentRecord>,
    /// Subscriptions created.
    pub subscriptions: Vec<SubscriptionRecord>,
    /// Subscriptions deleted, by id.
    pub deleted_subscriptions: Vec<u64>,
    /// Deleted subscriptions whose delivery records are still being removed
    /// (a bounded number per commit, see the backend).
    pub purge_deliveries: Vec<u64>,
    /// Delivery records written.
    pub deliveries: Vec<DeliveryRecord>,
    /// Delivery records to delete: (subscription id, from sequence) — every
    /// record of that subscription at or after the sequence (a seek).
    pub deleted_deliveries_from: Vec<(u64, u64)>,
    /// Events retracted or superseded by a correction: (sequence, reason).
    pub retracted: Vec<(u64, String)>,
    /// Events deleted at the end of their retention: (sequence, agency, event id).
    pub deleted_events: Vec<(u64, String, String)>,
    /// New floors: (subscription id, lowest unsettled sequence).
    pub floors: Vec<(u64, u64)>,
    /// The next event sequence, when it changed.
    pub next_sequence: Option<u64>,
    /// The next subscription id, when it changed.
    pub next_subscription_id: Option<u64>,
}

impl Batch {
    /// True if there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.audit.is_empty()
            && self.tiles.is_empty()
            && self.agencies.is_empty()
            && self.agreements.is_empty()
            && self.consents.is_empty()
            && self.subscriptions.is_empty()
            && self.deleted_subscriptions.is_empty()
            && self.purge_deliveries.is_empty()
            && self.deliveries.is_empty()
            && self.deleted_deliveries_from.is_empty()
            && self.retracted.is_empty()
            && self.deleted_events.is_empty()
            && self.floors.is_empty()
            && self.next_sequence.is_none()
            && self.next_subscription_id.is_none()
    }
}
