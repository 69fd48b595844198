//! Internal record types, encoded with prost. They are not part of the
//! public schema: only the broker reads them.

use caseshare_proto::v1 as pb;

/// An event as the broker stores it, with what it decided at publish.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredEvent {
    /// The event's sequence.
    #[prost(uint64, tag = "1")]
    pub sequence: u64,
    /// The publishing agency (from its certificate).
    #[prost(string, tag = "2")]
    pub source_agency: String,
    /// The computed event type.
    #[prost(string, tag = "3")]
    pub event_type: String,
    /// When the broker accepted it, µs since the epoch.
    #[prost(int64, tag = "4")]
    pub published_at_micros: i64,
    /// The encoded `CaseEvent`, exactly as published.
    #[prost(bytes = "vec", tag = "5")]
    pub event: Vec<u8>,
    /// The salt of the payload commitment in the audit log.
    #[prost(bytes = "vec", tag = "6")]
    pub salt: Vec<u8>,
    /// The decisions made at publish, one per candidate recipient.
    #[prost(message, repeated, tag = "7")]
    pub decisions: Vec<pb::SharingDecision>,
    /// The basis the publisher declared.
    #[prost(message, optional, tag = "8")]
    pub basis: Option<pb::SharingBasis>,
    /// The index of the EVENT_PUBLISHED audit entry.
    #[prost(uint64, tag = "9")]
    pub audit_index: u64,
    /// The publisher's event id.
    #[prost(string, tag = "10")]
    pub event_id: String,
    /// `to_agencies` of the request.
    #[prost(string, repeated, tag = "11")]
    pub to_agencies: Vec<String>,
    /// Set on a notice (retraction or correction) about an earlier event;
    /// `decisions` then name the agencies that had received the original.
    #[prost(message, optional, tag = "12")]
    pub notice: Option<pb::EventNotice>,
    /// The publisher's W3C trace context (from the request), carried on
    /// every delivery; a notice carries its original's. Trace and span ids
    /// only: no case data.
    #[prost(message, optional, tag = "13")]
    pub trace_context: Option<pb::TraceContext>,
}

impl StoredEvent {
    /// The published `CaseEvent`, decoded. The one decode of stored event
    /// bytes: a record that does not decode is `Refusal::Corrupt` naming
    /// the event (the server reports it as `DATA_LOSS`).
    pub fn case_event(&self) -> Result<pb::CaseEvent, crate::Refusal> {
        use prost::Message;
        pb::CaseEvent::decode(self.event.as_slice()).map_err(|e| crate::Refusal::Corrupt {
            key: format!("event {}", self.sequence),
            detail: format!("the stored CaseEvent does not decode: {e}"),
        })
    }
}

/// Where one delivery (one event, one subscription) stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum DeliveryState {
    /// Not set.
    Unspecified = 0,
    /// Sent, not yet acknowledged.
    Delivered = 1,
    /// Acknowledged.
    Acked = 2,
    /// Exhausted its attempts.
    DeadLettered = 3,
    /// Stopped at the re-check before delivery.
    Stopped = 4,
    /// Expired before delivery.
    Expired = 5,
}

/// The state of one delivery.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeliveryRecord {
    /// The subscription's internal id.
    #[prost(uint64, tag = "1")]
    pub subscription_id: u64,
    /// The event's sequence.
    #[prost(uint64, tag = "2")]
    pub sequence: u64,
    /// The state.
    #[prost(enumeration = "DeliveryState", tag = "3")]
    pub state: i32,
    /// Sends so far.
    #[prost(uint32, tag = "4")]
    pub attempts: u32,
    /// Last send, µs since the epoch.
    #[prost(int64, tag = "5")]
    pub delivered_at_micros: i64,
    /// Acknowledgement time, µs since the epoch.
    #[prost(int64, tag = "6")]
    pub acked_at_micros: i64,
    /// The reason for a stop.
    #[prost(string, tag = "7")]
    pub reason: String,
    /// When it was settled (dead-lettered, stopped or expired), µs.
    #[prost(int64, tag = "8")]
    pub settled_at_micros: i64,
}

impl DeliveryRecord {
    /// True once nothing more will be sent for this delivery.
    pub fn is_settled(&self) -> bool {
        matches!(
            self.state(),
            DeliveryState::Acked
                | DeliveryState::DeadLettered
                | DeliveryState::Stopped
                | DeliveryState::Expired
        )
    }
}

/// A subscription with its internal id.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SubscriptionRecord {
    /// Internal id, used in keys and delivery ids.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// The subscription as the owner sees it (agency_id set).
    #[prost(message, optional, tag = "2")]
    pub subscription: Option<pb::Subscription>,
}
