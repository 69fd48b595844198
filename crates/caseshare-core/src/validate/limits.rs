//! The one table of input bounds: for every string and repeated field of
//! every request message (and every message nested in one), its longest
//! value in bytes, its most items, and what kind of text it holds. The
//! bounds walk ([`super::bounds`]) enforces it, `caseshare-schema docs`
//! prints it next to each field in `docs/SCHEMA.md`, and a test checks that
//! no string or repeated field reachable from a request is missing.

use std::collections::HashMap;
use std::sync::OnceLock;

/// What a string field may contain besides its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Text {
    /// An identifier or a code: no control characters at all.
    Id,
    /// One line of free text: no control characters at all.
    Line,
    /// Multi-line free text: no control characters except `\n` and `\t`.
    Lines,
    /// Not a string (a repeated enum or message): only the count applies.
    None,
}

/// The bound of one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldLimit {
    /// The message's name in package `caseshare.v1`, e.g. `PublishRequest`.
    pub message: &'static str,
    /// The field's name.
    pub field: &'static str,
    /// Longest string (each item of a repeated string), in UTF-8 bytes; 0
    /// when the field is not a string.
    pub max_bytes: usize,
    /// Most items of a repeated field; 0 when the field is not repeated.
    pub max_items: usize,
    /// What the text may contain.
    pub text: Text,
    /// More about the bound (e.g. the config key that tightens it).
    pub note: &'static str,
}

impl FieldLimit {
    /// The bound in words, for `docs/SCHEMA.md` and error messages.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.max_items > 0 {
            parts.push(format!("at most {} items", self.max_items));
        }
        if self.max_bytes > 0 {
            let each = if self.max_items > 0 { "each " } else { "" };
            let what = match self.text {
                Text::Id => "no control characters",
                Text::Line => "one line, no control characters",
                Text::Lines => "no control characters but newline and tab",
                Text::None => "",
            };
            parts.push(format!("{each}at most {} bytes, {what}", self.max_bytes));
        }
        if !self.note.is_empty() {
            parts.push(self.note.to_string());
        }
        parts.join("; ")
    }
}

/// Identifiers: agency, event, consent, agreement, subscription and
/// delivery ids, event-type patterns, field paths, codes.
pub const ID_BYTES: usize = 128;
/// Agency ids (`is_valid_name` allows 64 characters).
pub const AGENCY_ID_BYTES: usize = 64;
/// An NHS number, with the spaces people type.
pub const NHS_NUMBER_BYTES: usize = 16;
/// Short free text: names, roles, sites, places.
pub const SHORT_TEXT_BYTES: usize = 256;
/// Reasons and outcomes (withdrawal, retraction, ending, plan ending).
pub const REASON_BYTES: usize = 1024;
/// A safeguarding override's written justification.
pub const JUSTIFICATION_BYTES: usize = 8 * 1024;
/// An event's summary (its character limit is `Limits::max_summary_chars`).
pub const SUMMARY_BYTES: usize = 16 * 1024;
/// A page token.
pub const PAGE_TOKEN_BYTES: usize = 64;
/// Recipients named by `to_agencies`, consent `recipients`, TAC members.
pub const MAX_AGENCIES: usize = 64;
/// Event types or patterns in one agreement or consent.
pub const MAX_EVENT_TYPES: usize = 64;
/// The hard ceiling of `limits.max_event_types_per_subscription`.
pub const MAX_SUBSCRIPTION_EVENT_TYPES: usize = 1024;
/// Purposes in one list (there are four).
pub const MAX_PURPOSES: usize = 8;
/// Field paths in one agreement.
pub const MAX_FIELDS: usize = 64;
/// Local ids of one child.
pub const MAX_LOCAL_IDS: usize = 16;
/// Needs listed in one early-help assessment, per list.
pub const MAX_NEEDS: usize = 32;
/// Delivery ids in one ack, nack or replay.
pub const MAX_DELIVERY_IDS: usize = 10_000;
/// Entry kinds in one audit query (there are 14).
pub const MAX_ENTRY_KINDS: usize = 32;

const fn s(message: &'static str, field: &'static str, max_bytes: usize, text: Text) -> FieldLimit {
    FieldLimit {
        message,
        field,
        max_bytes,
        max_items: 0,
        text,
        note: "",
    }
}

const fn id(message: &'static str, field: &'static str) -> FieldLimit {
    s(message, field, ID_BYTES, Text::Id)
}

const fn agency(message: &'static str, field: &'static str) -> FieldLimit {
    s(message, field, AGENCY_ID_BYTES, Text::Id)
}

const fn line(message: &'static str, field: &'static str) -> FieldLimit {
    s(message, field, SHORT_TEXT_BYTES, Text::Line)
}

const fn reason(message: &'static str, field: &'static str) -> FieldLimit {
    s(message, field, REASON_BYTES, Text::Lines)
}

const fn list(
    message: &'static str,
    field: &'static str,
    max_items: usize,
    max_bytes: usize,
    text: Text,
) -> FieldLimit {
    FieldLimit {
        message,
        field,
        max_bytes,
        max_items,
        text,
        note: "",
    }
}

use Text::{Id, Line, None as NotText};

/// Every bounded field, by message.
pub const FIELD_LIMITS: &[FieldLimit] = &[
    // common.proto
    s("ChildRef", "nhs_number", NHS_NUMBER_BYTES, Id),
    list("ChildRef", "local_ids", MAX_LOCAL_IDS, 0, NotText),
    s("LocalId", "scheme", 32, Id),
    s("LocalId", "value", 64, Id),
    s(
        "SafeguardingOverride",
        "justification",
        JUSTIFICATION_BYTES,
        Text::Lines,
    ),
    line("SafeguardingOverride", "authorised_by"),
    // events.proto
    id("CaseEvent", "event_id"),
    s("CaseEvent", "summary", SUMMARY_BYTES, Text::Lines),
    id("CaseEvent", "corrects_event_id"),
    id("ReferralAccepted", "reason_code"),
    line("ReferralAccepted", "team"),
    line("ChildProtectionPlanStarted", "responsible_authority"),
    line("ChildProtectionPlanStarted", "contact"),
    reason("ChildProtectionPlanEnded", "end_reason"),
    line("LookedAfterStarted", "legal_status"),
    line("LookedAfterStarted", "placement_type"),
    line("LookedAfterStarted", "responsible_authority"),
    id("LookedAfterEnded", "reason_code"),
    agency("EarlyHelpAssessmentStarted", "lead_agency"),
    list(
        "EarlyHelpAssessmentCompleted",
        "child_development_needs",
        MAX_NEEDS,
        SHORT_TEXT_BYTES,
        Line,
    ),
    list(
        "EarlyHelpAssessmentCompleted",
        "parenting_capacity_needs",
        MAX_NEEDS,
        SHORT_TEXT_BYTES,
        Line,
    ),
    list(
        "EarlyHelpAssessmentCompleted",
        "family_environment_needs",
        MAX_NEEDS,
        SHORT_TEXT_BYTES,
        Line,
    ),
    reason("EarlyHelpAssessmentCompleted", "outcome"),
    list(
        "TacMeetingScheduled",
        "member_agencies",
        MAX_AGENCIES,
        AGENCY_ID_BYTES,
        Id,
    ),
    line("TacMeetingScheduled", "location"),
    agency("LeadProfessionalAssigned", "agency_id"),
    line("LeadProfessionalAssigned", "practitioner_role"),
    line("LeadProfessionalAssigned", "contact"),
    s("AttendanceConcern", "period", 64, Line),
    id("ExclusionRecorded", "reason_code"),
    line("SenSupportChanged", "primary_need"),
    line("EmergencyAttendance", "site"),
    line("EmergencyAttendance", "presenting_category"),
    line("WasNotBrought", "appointment_kind"),
    line("MentalHealthReferral", "service"),
    s("MentalHealthReferral", "urgency", 64, Line),
    // publisher.proto
    list(
        "PublishRequest",
        "to_agencies",
        MAX_AGENCIES,
        AGENCY_ID_BYTES,
        Id,
    ),
    // common.proto: W3C Trace Context (`traceparent` is 55 characters in
    // version 00; `tracestate` is at most 32 entries, and 512 characters
    // is what W3C asks every platform to propagate).
    s("TraceContext", "traceparent", 128, Id),
    s("TraceContext", "tracestate", 512, Id),
    id("GetEventStatusRequest", "event_id"),
    id("RetractEventRequest", "event_id"),
    reason("RetractEventRequest", "reason"),
    // subscriber.proto
    FieldLimit {
        note: "one agency holds at most `limits.max_subscriptions_per_agency` \
               subscriptions (default 100; RESOURCE_EXHAUSTED past it)",
        ..s("Subscription", "name", 64, Id)
    },
    FieldLimit {
        note: "the broker's `limits.max_event_types_per_subscription` (default 64) \
               is the working limit; this is its ceiling",
        ..list(
            "Subscription",
            "event_types",
            MAX_SUBSCRIPTION_EVENT_TYPES,
            ID_BYTES,
            Id,
        )
    },
    list("Subscription", "purposes", MAX_PURPOSES, 0, NotText),
    agency("Subscription", "agency_id"),
    s("GetSubscriptionRequest", "name", 64, Id),
    s("DeleteSubscriptionRequest", "name", 64, Id),
    list("AckIds", "delivery_ids", MAX_DELIVERY_IDS, ID_BYTES, Id),
    s("SubscribeRequest", "subscription", 64, Id),
    s("AckRequest", "subscription", 64, Id),
    list("AckRequest", "delivery_ids", MAX_DELIVERY_IDS, ID_BYTES, Id),
    s("NackRequest", "subscription", 64, Id),
    list(
        "NackRequest",
        "delivery_ids",
        MAX_DELIVERY_IDS,
        ID_BYTES,
        Id,
    ),
    s("SeekRequest", "subscription", 64, Id),
    s("ListDeadLettersRequest", "subscription", 64, Id),
    s("ListDeadLettersRequest", "page_token", PAGE_TOKEN_BYTES, Id),
    s("ReplayDeadLettersRequest", "subscription", 64, Id),
    list(
        "ReplayDeadLettersRequest",
        "delivery_ids",
        MAX_DELIVERY_IDS,
        ID_BYTES,
        Id,
    ),
    // consent.proto
    s("ConsentRecord", "consent_id", 64, Id),
    s("ConsentRecord", "nhs_number", NHS_NUMBER_BYTES, Id),
    list("ConsentRecord", "purposes", MAX_PURPOSES, 0, NotText),
    list(
        "ConsentRecord",
        "recipients",
        MAX_AGENCIES,
        AGENCY_ID_BYTES,
        Id,
    ),
    list(
        "ConsentRecord",
        "event_types",
        MAX_EVENT_TYPES,
        ID_BYTES,
        Id,
    ),
    line("ConsentRecord", "recorded_by"),
    s("ConsentRecord", "evidence_ref", REASON_BYTES, Line),
    reason("ConsentRecord", "withdrawal_reason"),
    s("WithdrawConsentRequest", "consent_id", 64, Id),
    reason("WithdrawConsentRequest", "reason"),
    s("ListConsentsRequest", "nhs_number", NHS_NUMBER_BYTES, Id),
    // admin.proto
    agency("RegisterAgencyRequest", "agency_id"),
    s("RegisterAgencyRequest", "display_name", 800, Line),
    s("Agreement", "agreement_id", 64, Id),
    agency("Agreement", "provider"),
    agency("Agreement", "recipient"),
    list("Agreement", "purposes", MAX_PURPOSES, 0, NotText),
    list("Agreement", "event_types", MAX_EVENT_TYPES, ID_BYTES, Id),
    list("Agreement", "fields", MAX_FIELDS, ID_BYTES, Id),
    reason("Agreement", "end_reason"),
    s("EndAgreementRequest", "agreement_id", 64, Id),
    reason("EndAgreementRequest", "reason"),
    agency("ListAgreementsRequest", "provider"),
    agency("ListAgreementsRequest", "recipient"),
    // audit.proto
    s("QueryRequest", "nhs_number", NHS_NUMBER_BYTES, Id),
    agency("QueryRequest", "agency_id"),
    list("QueryRequest", "kinds", MAX_ENTRY_KINDS, 0, NotText),
    s("QueryRequest", "page_token", PAGE_TOKEN_BYTES, Id),
    s(
        "SubjectAccessReportRequest",
        "nhs_number",
        NHS_NUMBER_BYTES,
        Id,
    ),
];

/// The bound of `message.field` (`message` without the package), if any.
pub fn field_limit(message: &str, field: &str) -> Option<&'static FieldLimit> {
    type ByName = HashMap<&'static str, HashMap<&'static str, &'static FieldLimit>>;
    static INDEX: OnceLock<ByName> = OnceLock::new();
    INDEX
        .get_or_init(|| {
            let mut index: ByName = HashMap::new();
            for l in FIELD_LIMITS {
                index.entry(l.message).or_default().insert(l.field, l);
            }
            index
        })
        .get(message)?
        .get(field)
        .copied()
}
