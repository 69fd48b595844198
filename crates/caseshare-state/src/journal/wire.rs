//! The journal's wire messages, hand-written prost structs (internal, not
//! part of `proto/`): one [`JournalBatch`] per journal message, one
//! [`JournalOp`] per command, one `*Op` message per [`Command`] variant.
//! Requests travel as the `caseshare.v1` messages the server validated;
//! the command's other fields as the records below.
//!
//! A journal message is the encoding of [`JournalBatch`] followed by one
//! more field, [`CHECKSUM_TAG`] (bytes): the SHA-256 of every byte before
//! it. A protobuf reader sees one message whose last field is the
//! checksum; the decoder requires it at the very end, so a truncated
//! message or a flipped bit anywhere is refused.
//!
//! Tags are frozen once a journal has been written with them: a change of
//! meaning needs a new `format_version`. The bounds scan (`scan.rs`) knows
//! [`OPS_TAG`] and the [`PACKED_LISTS`]; a test checks they agree.
//!
//! [`Command`]: crate::Command

use caseshare_proto::v1 as pb;

/// The tag of `JournalBatch.ops`.
pub(crate) const OPS_TAG: u32 = 7;
/// The tag of the trailing checksum field.
pub(crate) const CHECKSUM_TAG: u32 = 15;
/// The trailing checksum field's bytes: key, length, the SHA-256.
pub(crate) const TRAILER_LEN: usize = 2 + 32;
/// The tag of `JournalBatch.format_version`.
pub(crate) const VERSION_TAG: u32 = 1;
/// (oneof tag of the command, field tag) of the lists of integers, which
/// may arrive packed: the scan counts each integer in them as one item.
pub(crate) const PACKED_LISTS: [(u32, u32); 2] = [(REPLAY_TAG, 3), (PURGE_TAG, 1)];
/// The oneof tag of `Replay`.
pub(crate) const REPLAY_TAG: u32 = 13;
/// The oneof tag of `PurgeDeliveries`.
pub(crate) const PURGE_TAG: u32 = 14;
/// The oneof tags of the commands, lowest and highest.
pub(crate) const COMMAND_TAGS: std::ops::RangeInclusive<u32> = 2..=19;

/// One journal message: a group commit's operations and where they apply.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JournalBatch {
    /// The encoding's version; only [`super::FORMAT_VERSION`] is read.
    #[prost(uint32, tag = "1")]
    pub format_version: u32,
    /// The term of the leader that appended it.
    #[prost(uint64, tag = "2")]
    pub leader_term: u64,
    /// The audit log's size before the batch (the first index it writes).
    #[prost(uint64, tag = "3")]
    pub first_audit_index: u64,
    /// The next event sequence before the batch.
    #[prost(uint64, tag = "4")]
    pub first_sequence: u64,
    /// The next subscription id before the batch.
    #[prost(uint64, tag = "5")]
    pub first_subscription_id: u64,
    /// Where the leader ended the batch, when it applied it first.
    #[prost(message, optional, tag = "6")]
    pub after: Option<EndRecord>,
    /// The operations, in order.
    #[prost(message, repeated, tag = "7")]
    pub ops: Vec<JournalOp>,
    /// Which replica proposed the batch, and what it had applied.
    #[prost(message, optional, tag = "8")]
    pub origin: Option<OriginRecord>,
}

/// The replica that proposed a batch (cluster mode).
#[derive(Clone, PartialEq, prost::Message)]
pub struct OriginRecord {
    /// The proposing replica's instance id (per process start).
    #[prost(string, tag = "1")]
    pub replica: String,
    /// Its batch number, counted from 1 per instance.
    #[prost(uint64, tag = "2")]
    pub batch: u64,
    /// The last journal sequence it had applied when it proposed.
    #[prost(uint64, tag = "3")]
    pub seen: u64,
}

/// Where the leader ended a batch: its counters and the digest of the
/// audit leaves the batch wrote.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EndRecord {
    /// The next event sequence.
    #[prost(uint64, tag = "1")]
    pub next_sequence: u64,
    /// The next subscription id.
    #[prost(uint64, tag = "2")]
    pub next_subscription_id: u64,
    /// The audit log's size.
    #[prost(uint64, tag = "3")]
    pub audit_size: u64,
    /// `leaves_digest` of the batch's audit leaves: exactly 32 bytes.
    #[prost(bytes = "vec", tag = "4")]
    pub leaves_digest: Vec<u8>,
}

/// One command with the time it is applied at.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JournalOp {
    /// The time given to `Machine::apply`, µs since the epoch.
    #[prost(int64, tag = "1")]
    pub now_micros: i64,
    /// The command; absent is an error, never a default.
    #[prost(
        oneof = "journal_op::Command",
        tags = "2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19"
    )]
    pub command: Option<journal_op::Command>,
}

/// The oneof of [`JournalOp`].
pub mod journal_op {
    use super::*;

    /// One variant per `Command` variant.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Command {
        /// `Command::RegisterAgency`.
        #[prost(message, tag = "2")]
        RegisterAgency(RegisterAgencyOp),
        /// `Command::PutAgreement`.
        #[prost(message, tag = "3")]
        PutAgreement(PutAgreementOp),
        /// `Command::EndAgreement`.
        #[prost(message, tag = "4")]
        EndAgreement(EndAgreementOp),
        /// `Command::RecordConsent`.
        #[prost(message, tag = "5")]
        RecordConsent(RecordConsentOp),
        /// `Command::WithdrawConsent`.
        #[prost(message, tag = "6")]
        WithdrawConsent(WithdrawConsentOp),
        /// `Command::Publish`.
        #[prost(message, tag = "7")]
        Publish(PublishOp),
        /// `Command::Retract`.
        #[prost(message, tag = "8")]
        Retract(RetractOp),
        /// `Command::Expunge`.
        #[prost(message, tag = "9")]
        Expunge(ExpungeOp),
        /// `Command::CreateSubscription`.
        #[prost(message, tag = "10")]
        CreateSubscription(CreateSubscriptionOp),
        /// `Command::DeleteSubscription`.
        #[prost(message, tag = "11")]
        DeleteSubscription(DeleteSubscriptionOp),
        /// `Command::Seek`.
        #[prost(message, tag = "12")]
        Seek(SeekOp),
        /// `Command::Replay`.
        #[prost(message, tag = "13")]
        Replay(ReplayOp),
        /// `Command::PurgeDeliveries`.
        #[prost(message, tag = "14")]
        PurgeDeliveries(PurgeDeliveriesOp),
        /// `Command::Deliver`.
        #[prost(message, tag = "15")]
        Deliver(DeliverOp),
        /// `Command::Ack`.
        #[prost(message, tag = "16")]
        Ack(AckOp),
        /// `Command::DeadLetter`.
        #[prost(message, tag = "17")]
        DeadLetter(DeadLetterOp),
        /// `Command::Record`.
        #[prost(message, tag = "18")]
        Record(RecordOp),
        /// `Command::AuthDenied`.
        #[prost(message, tag = "19")]
        AuthDenied(AuditEntriesOp),
    }
}

/// The caller's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum RoleRecord {
    /// Not set: an error.
    Unspecified = 0,
    /// `Role::Agency`.
    Agency = 1,
    /// `Role::Auditor`.
    Auditor = 2,
    /// `Role::Admin`.
    Admin = 3,
}

/// The caller of a command (`Principal`), by its fields.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ActorRecord {
    /// The role.
    #[prost(enumeration = "RoleRecord", tag = "1")]
    pub role: i32,
    /// The agency id, auditor name or admin name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// The trust domain.
    #[prost(string, tag = "3")]
    pub trust_domain: String,
}

/// Declares the message of a command that is a caller and one
/// `caseshare.v1` message, both required.
macro_rules! request_op {
    ($(#[$doc:meta])* $name:ident, $request:ty) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, prost::Message)]
        pub struct $name {
            /// The caller.
            #[prost(message, optional, tag = "1")]
            pub actor: Option<ActorRecord>,
            /// The request (or the agreement).
            #[prost(message, optional, tag = "2")]
            pub request: Option<$request>,
        }
    };
}

request_op!(
    /// `Command::RegisterAgency`.
    RegisterAgencyOp,
    pb::RegisterAgencyRequest
);
request_op!(
    /// `Command::PutAgreement`.
    PutAgreementOp,
    pb::Agreement
);
request_op!(
    /// `Command::EndAgreement`.
    EndAgreementOp,
    pb::EndAgreementRequest
);
request_op!(
    /// `Command::WithdrawConsent`.
    WithdrawConsentOp,
    pb::WithdrawConsentRequest
);
request_op!(
    /// `Command::Retract`.
    RetractOp,
    pb::RetractEventRequest
);

/// `Command::RecordConsent`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RecordConsentOp {
    /// The caller.
    #[prost(message, optional, tag = "1")]
    pub actor: Option<ActorRecord>,
    /// The consent, its id set.
    #[prost(message, optional, tag = "2")]
    pub consent: Option<pb::ConsentRecord>,
    /// The id was drawn by the server.
    #[prost(bool, tag = "3")]
    pub generated_id: bool,
}

/// `Command::Publish`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PublishOp {
    /// The caller.
    #[prost(message, optional, tag = "1")]
    pub actor: Option<ActorRecord>,
    /// The validated request.
    #[prost(message, optional, tag = "2")]
    pub request: Option<pb::PublishRequest>,
    /// The computed event type.
    #[prost(string, tag = "3")]
    pub event_type: String,
    /// The payload commitment's salt: exactly 16 bytes.
    #[prost(bytes = "vec", tag = "4")]
    pub salt: Vec<u8>,
}

/// One event deleted at the end of its retention.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExpungedRecord {
    /// Its sequence.
    #[prost(uint64, tag = "1")]
    pub sequence: u64,
    /// The publishing agency.
    #[prost(string, tag = "2")]
    pub agency: String,
    /// The publisher's event id.
    #[prost(string, tag = "3")]
    pub event_id: String,
}

/// `Command::Expunge`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ExpungeOp {
    /// The events.
    #[prost(message, repeated, tag = "1")]
    pub events: Vec<ExpungedRecord>,
}

/// `Command::CreateSubscription`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateSubscriptionOp {
    /// The caller.
    #[prost(message, optional, tag = "1")]
    pub actor: Option<ActorRecord>,
    /// The validated subscription.
    #[prost(message, optional, tag = "2")]
    pub subscription: Option<pb::Subscription>,
    /// Most subscriptions the agency may hold.
    #[prost(uint64, tag = "3")]
    pub quota: u64,
}

/// `Command::DeleteSubscription`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeleteSubscriptionOp {
    /// The caller.
    #[prost(message, optional, tag = "1")]
    pub actor: Option<ActorRecord>,
    /// The subscription's name.
    #[prost(string, tag = "2")]
    pub name: String,
}

/// Which subscription (`SubscriptionRef`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SubscriptionRefRecord {
    /// Internal id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Name.
    #[prost(string, tag = "2")]
    pub name: String,
}

/// `Command::Seek`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SeekOp {
    /// The caller.
    #[prost(message, optional, tag = "1")]
    pub actor: Option<ActorRecord>,
    /// The subscription.
    #[prost(message, optional, tag = "2")]
    pub subscription: Option<SubscriptionRefRecord>,
    /// The sequence to resume from.
    #[prost(uint64, tag = "3")]
    pub target: u64,
}

/// `Command::Replay`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReplayOp {
    /// The caller.
    #[prost(message, optional, tag = "1")]
    pub actor: Option<ActorRecord>,
    /// The subscription.
    #[prost(message, optional, tag = "2")]
    pub subscription: Option<SubscriptionRefRecord>,
    /// The sequences (tag 3 is in [`PACKED_LISTS`]).
    #[prost(uint64, repeated, tag = "3")]
    pub sequences: Vec<u64>,
    /// The new floor.
    #[prost(uint64, optional, tag = "4")]
    pub floor: Option<u64>,
}

/// `Command::PurgeDeliveries`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PurgeDeliveriesOp {
    /// The deleted subscriptions' ids (tag 1 is in [`PACKED_LISTS`]).
    #[prost(uint64, repeated, tag = "1")]
    pub subscription_ids: Vec<u64>,
}

/// What a (re-)decision needs about an event (`EventContext`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContextRecord {
    /// The publishing agency.
    #[prost(string, tag = "1")]
    pub provider: String,
    /// The event type.
    #[prost(string, tag = "2")]
    pub event_type: String,
    /// The purpose (`caseshare.v1.Purpose`).
    #[prost(enumeration = "pb::Purpose", tag = "3")]
    pub purpose: i32,
    /// The sensitivity (`caseshare.v1.Sensitivity`).
    #[prost(enumeration = "pb::Sensitivity", tag = "4")]
    pub sensitivity: i32,
    /// The child's NHS number.
    #[prost(string, tag = "5")]
    pub nhs_number: String,
    /// The publisher's override, if any.
    #[prost(message, optional, tag = "6")]
    pub safeguarding_override: Option<pb::SafeguardingOverride>,
}

/// One delivery about to be sent (`DeliveryIntent`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct IntentRecord {
    /// The subscription's internal id.
    #[prost(uint64, tag = "1")]
    pub subscription_id: u64,
    /// The subscription's name.
    #[prost(string, tag = "2")]
    pub subscription: String,
    /// The recipient agency.
    #[prost(string, tag = "3")]
    pub recipient: String,
    /// The event's sequence.
    #[prost(uint64, tag = "4")]
    pub sequence: u64,
    /// The event id.
    #[prost(string, tag = "5")]
    pub event_id: String,
    /// This attempt's number.
    #[prost(uint32, tag = "6")]
    pub attempt: u32,
    /// The delivery id.
    #[prost(string, tag = "7")]
    pub delivery_id: String,
    /// What the decision needs; required.
    #[prost(message, optional, tag = "8")]
    pub context: Option<ContextRecord>,
    /// A notice, sent without a new decision.
    #[prost(bool, tag = "9")]
    pub notice: bool,
    /// The event's expiry, µs, if any.
    #[prost(int64, optional, tag = "10")]
    pub expires_at: Option<i64>,
}

/// `Command::Deliver`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeliverOp {
    /// The deliveries.
    #[prost(message, repeated, tag = "1")]
    pub intents: Vec<IntentRecord>,
}

/// One settled delivery (`AckIntent`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AckRecord {
    /// The event's sequence.
    #[prost(uint64, tag = "1")]
    pub sequence: u64,
    /// The event id.
    #[prost(string, tag = "2")]
    pub event_id: String,
    /// The delivery id.
    #[prost(string, tag = "3")]
    pub delivery_id: String,
    /// Attempts made.
    #[prost(uint32, tag = "4")]
    pub attempts: u32,
    /// When it was last sent, µs.
    #[prost(int64, tag = "5")]
    pub delivered_at: i64,
    /// The child's NHS number.
    #[prost(string, tag = "6")]
    pub nhs_number: String,
}

/// `Command::Ack`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AckOp {
    /// The caller.
    #[prost(message, optional, tag = "1")]
    pub actor: Option<ActorRecord>,
    /// The subscription.
    #[prost(message, optional, tag = "2")]
    pub subscription: Option<SubscriptionRefRecord>,
    /// What was acknowledged.
    #[prost(message, repeated, tag = "3")]
    pub acks: Vec<AckRecord>,
    /// The new floor, if it moved.
    #[prost(uint64, optional, tag = "4")]
    pub floor: Option<u64>,
}

/// `Command::DeadLetter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeadLetterOp {
    /// The subscription.
    #[prost(message, optional, tag = "1")]
    pub subscription: Option<SubscriptionRefRecord>,
    /// Its agency.
    #[prost(string, tag = "2")]
    pub recipient: String,
    /// What was dead-lettered.
    #[prost(message, repeated, tag = "3")]
    pub items: Vec<AckRecord>,
    /// The new floor, if it moved.
    #[prost(uint64, optional, tag = "4")]
    pub floor: Option<u64>,
}

/// `Command::Record`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RecordOp {
    /// The entry; required.
    #[prost(message, optional, tag = "1")]
    pub entry: Option<pb::AuditEntry>,
}

/// `Command::AuthDenied`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AuditEntriesOp {
    /// The entries, each with its count.
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<pb::AuditEntry>,
}
