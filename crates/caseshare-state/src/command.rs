//! The operations the state machine applies ([`Command`]) and what each
//! answers ([`Reply`]). A command carries everything from outside that its
//! effect depends on — the caller, the validated request, a salt or an id
//! drawn by the server — so that applying it again gives the same result.

use std::sync::Arc;

use caseshare_core::decision::Outcome;
use caseshare_core::pb;
use caseshare_core::principal::Principal;
use caseshare_core::time::Micros;

use crate::records::SubscriptionRecord;
use crate::state::EventContext;

/// One delivery about to be sent, for the machine to re-decide and record.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryIntent {
    /// The subscription's internal id.
    pub subscription_id: u64,
    /// The subscription's name.
    pub subscription: String,
    /// The recipient agency.
    pub recipient: String,
    /// The event's sequence.
    pub sequence: u64,
    /// The event id.
    pub event_id: String,
    /// This attempt's number (1 = first send).
    pub attempt: u32,
    /// The delivery id sent to the subscriber.
    pub delivery_id: String,
    /// What the decision needs.
    pub context: EventContext,
    /// A notice (retraction or correction): sent without a new decision.
    pub notice: bool,
    /// The event's expiry, if any.
    pub expires_at: Option<Micros>,
}

/// The verdict on one delivery about to be sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Send it, minimised to the outcome's fields.
    Shared(Outcome),
    /// Send the notice.
    Notice,
    /// Do not send it: withheld now (reason), or the event was retracted.
    Stopped(String),
    /// Do not send it: the event expired first.
    Expired,
}

/// One settled delivery (acknowledged or dead-lettered).
#[derive(Debug, Clone, PartialEq)]
pub struct AckIntent {
    /// The event's sequence.
    pub sequence: u64,
    /// The event id.
    pub event_id: String,
    /// The delivery id acknowledged.
    pub delivery_id: String,
    /// Attempts made.
    pub attempts: u32,
    /// When it was last sent.
    pub delivered_at: Micros,
    /// The child's NHS number (pseudonymised in the log).
    pub nhs_number: String,
}

/// Which subscription a delivery command is about.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionRef {
    /// Internal id.
    pub id: u64,
    /// Name.
    pub name: String,
}

/// One operation. Families: configuration (agencies, agreements), consent,
/// events (publish, retract, expunge), subscriptions (create, delete, seek,
/// replay, purge), delivery (deliver, ack, dead letter) and the audit log
/// (record, refusals). Equality compares every field (the caller by its
/// fields, not by pointer).
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Register an agency.
    RegisterAgency {
        /// The caller.
        actor: Arc<Principal>,
        /// The request.
        request: pb::RegisterAgencyRequest,
    },
    /// Create or replace an agreement.
    PutAgreement {
        /// The caller.
        actor: Arc<Principal>,
        /// The agreement.
        agreement: pb::Agreement,
    },
    /// End an agreement.
    EndAgreement {
        /// The caller.
        actor: Arc<Principal>,
        /// The request.
        request: pb::EndAgreementRequest,
    },
    /// Record a consent; its id is set (the server draws one if the caller
    /// gave none).
    RecordConsent {
        /// The caller.
        actor: Arc<Principal>,
        /// The consent.
        consent: pb::ConsentRecord,
        /// The id was drawn by the server, not given by the caller.
        generated_id: bool,
    },
    /// Withdraw a consent.
    WithdrawConsent {
        /// The caller.
        actor: Arc<Principal>,
        /// The request.
        request: pb::WithdrawConsentRequest,
    },
    /// Publish an event (already validated).
    Publish {
        /// The caller.
        actor: Arc<Principal>,
        /// The request.
        request: pb::PublishRequest,
        /// The computed event type.
        event_type: String,
        /// The payload commitment's salt, drawn by the server.
        salt: [u8; 16],
    },
    /// Retract one of the caller's events.
    Retract {
        /// The caller.
        actor: Arc<Principal>,
        /// The request.
        request: pb::RetractEventRequest,
    },
    /// Delete events at the end of their retention: (sequence, agency, event id).
    Expunge {
        /// The events.
        events: Vec<(u64, String, String)>,
    },
    /// Create a subscription.
    CreateSubscription {
        /// The caller.
        actor: Arc<Principal>,
        /// The validated subscription.
        subscription: pb::Subscription,
        /// Most subscriptions the agency may hold.
        quota: usize,
    },
    /// Delete a subscription.
    DeleteSubscription {
        /// The caller.
        actor: Arc<Principal>,
        /// Its name.
        name: String,
    },
    /// Move a subscription's cursor.
    Seek {
        /// The caller.
        actor: Arc<Principal>,
        /// The subscription.
        subscription: SubscriptionRef,
        /// The sequence to resume from.
        target: u64,
    },
    /// Put dead letters back for delivery.
    Replay {
        /// The caller.
        actor: Arc<Principal>,
        /// The subscription.
        subscription: SubscriptionRef,
        /// The sequences.
        sequences: Vec<u64>,
        /// The new floor.
        floor: Option<u64>,
    },
    /// Remove the next delivery records of deleted subscriptions.
    PurgeDeliveries {
        /// The deleted subscriptions' ids.
        subscription_ids: Vec<u64>,
    },
    /// Re-decide and record deliveries about to be sent.
    Deliver {
        /// The deliveries.
        intents: Vec<DeliveryIntent>,
    },
    /// Record acknowledgements.
    Ack {
        /// The caller.
        actor: Arc<Principal>,
        /// The subscription.
        subscription: SubscriptionRef,
        /// What was acknowledged.
        acks: Vec<AckIntent>,
        /// The subscription's new floor, if it moved.
        floor: Option<u64>,
    },
    /// Record deliveries that used up their attempts.
    DeadLetter {
        /// The subscription.
        subscription: SubscriptionRef,
        /// Its agency.
        recipient: String,
        /// What was dead-lettered.
        items: Vec<AckIntent>,
        /// The new floor, if it moved.
        floor: Option<u64>,
    },
    /// Append one entry (e.g. AUDIT_ACCESSED); index and time are assigned.
    Record {
        /// The entry.
        entry: pb::AuditEntry,
    },
    /// Record aggregated refusals as `AUTH_DENIED` entries.
    AuthDenied {
        /// The entries, each with its count.
        entries: Vec<pb::AuditEntry>,
    },
}

/// What an applied command answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Nothing beyond success.
    Done,
    /// A publish.
    Published(pb::PublishResponse),
    /// An agency registered.
    Agency(pb::Agency),
    /// An agreement as stored.
    Agreement(pb::Agreement),
    /// A consent as stored.
    Consent(pb::ConsentRecord),
    /// A subscription created or deleted.
    Subscription(SubscriptionRecord),
    /// Per delivery intent, its verdict.
    Verdicts(Vec<Verdict>),
    /// A retraction.
    Retracted(pb::RetractEventResponse),
    /// The index an audit entry was given.
    Recorded(u64),
}
