//! Request validation. Every check names the offending field with its full
//! path from the request (e.g. `event.child.nhs_number`) so that the server
//! can answer `INVALID_ARGUMENT` with a `google.rpc.BadRequest` a developer
//! can act on. Validation never changes anything; it runs before any write.

use crate::event_type::{event_type, validate_pattern};
use crate::nhs::validate_nhs_number;
use crate::pb;
use crate::principal::is_valid_name;
use crate::time::{Micros, timestamp_is_valid};
use crate::upn::validate_upn;

mod bounds;
pub mod limits;
pub mod text;
mod wire;

pub use bounds::{Bounded, REQUEST_MESSAGES, check_bounds, check_encoded};

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field path, e.g. `event.child.nhs_number`.
    pub field: String,
    /// What is wrong, in words that say how to fix it.
    pub description: String,
}

/// All problems found in one request (never empty when returned as an error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid request: {}", .0.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; "))]
pub struct Violations(pub Vec<FieldViolation>);

impl Violations {
    /// True if `field` has a violation.
    pub fn has(&self, field: &str) -> bool {
        self.0.iter().any(|v| v.field == field)
    }
}

/// The most violations one answer lists.
pub const MAX_VIOLATIONS: usize = 50;

#[derive(Default)]
struct Collector(Vec<FieldViolation>);

impl Collector {
    fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        // A request with thousands of bad items gets a bounded answer.
        if self.0.len() >= MAX_VIOLATIONS {
            return;
        }
        self.0.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }
    /// Runs the bounds walk; true if every bound held.
    fn bounded<M: Bounded>(&mut self, request: &M) -> bool {
        bounds::collect(self, request);
        self.0.is_empty()
    }
    fn finish<T>(self, value: T) -> Result<T, Violations> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(Violations(self.0))
        }
    }
}

/// Limits that validation enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest encoded event, in bytes.
    pub max_event_bytes: usize,
    /// Longest `summary`, in characters.
    pub max_summary_chars: usize,
    /// How far in the future `occurred_at` may be.
    pub max_future_skew_secs: i64,
    /// Most event types (or patterns) in one subscription.
    pub max_event_types_per_subscription: usize,
    /// Most subscriptions one agency may hold.
    pub max_subscriptions_per_agency: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_event_bytes: 64 * 1024,
            max_summary_chars: 4_000,
            max_future_skew_secs: 24 * 3600,
            max_event_types_per_subscription: 64,
            max_subscriptions_per_agency: 100,
        }
    }
}

/// Minimum length of a safeguarding override's justification.
pub const MIN_JUSTIFICATION_CHARS: usize = 20;

/// What validation learned about a valid publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidPublish {
    /// The event type computed from the payload.
    pub event_type: &'static str,
    /// The sensitivity, with unset read as STANDARD.
    pub sensitivity: pb::Sensitivity,
}

fn is_event_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

fn known_purpose(p: i32) -> bool {
    matches!(pb::Purpose::try_from(p), Ok(p) if p != pb::Purpose::Unspecified)
}

fn check_nhs(c: &mut Collector, field: &str, n: &str) {
    if let Err(e) = validate_nhs_number(n) {
        c.add(field, e.to_string());
    }
}

fn check_timestamp(c: &mut Collector, field: &str, ts: &prost_types::Timestamp) -> bool {
    if timestamp_is_valid(ts) {
        true
    } else {
        c.add(
            field,
            "not a valid timestamp (years 1-9999, nanos 0-999999999)",
        );
        false
    }
}

/// Validates a publish request against the schema rules and limits.
pub fn validate_publish(
    req: &pb::PublishRequest,
    encoded_event_len: usize,
    now: Micros,
    limits: &Limits,
) -> Result<ValidPublish, Violations> {
    let mut c = Collector::default();
    if !c.bounded(req) {
        return Err(Violations(c.0));
    }
    let Some(event) = req.event.as_ref() else {
        c.add("event", "an event is required");
        return c.finish(ValidPublish {
            event_type: "",
            sensitivity: pb::Sensitivity::Standard,
        });
    };
    if encoded_event_len > limits.max_event_bytes {
        c.add(
            "event",
            format!(
                "the event is {encoded_event_len} bytes; the limit is {} bytes",
                limits.max_event_bytes
            ),
        );
    }
    if !is_event_id(&event.event_id) {
        c.add(
            "event.event_id",
            "required: 1 to 128 characters of letters, digits, '.', '_', ':' or '-'",
        );
    }
    match event.child.as_ref() {
        None => c.add("event.child", "the child is required"),
        Some(child) => {
            check_nhs(&mut c, "event.child.nhs_number", &child.nhs_number);
            for (i, id) in child.local_ids.iter().enumerate() {
                let field = format!("event.child.local_ids[{i}]");
                if id.scheme.is_empty()
                    || !id
                        .scheme
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b == b'_')
                {
                    c.add(
                        format!("{field}.scheme"),
                        "a lower-case scheme such as `upn` or `local`",
                    );
                }
                if id.value.is_empty() || id.value.len() > 64 {
                    c.add(format!("{field}.value"), "1 to 64 characters");
                } else if id.scheme == "upn"
                    && let Err(e) = validate_upn(&id.value)
                {
                    c.add(format!("{field}.value"), e.to_string());
                }
            }
        }
    }
    if !known_purpose(event.purpose) {
        c.add(
            "event.purpose",
            "one of SAFEGUARDING, EARLY_HELP, HEALTH_CARE, EDUCATION_SUPPORT",
        );
    }
    match event.occurred_at.as_ref() {
        None => c.add("event.occurred_at", "when the fact happened is required"),
        Some(ts) => {
            if check_timestamp(&mut c, "event.occurred_at", ts)
                && Micros::from_timestamp(ts) > now.plus_seconds(limits.max_future_skew_secs)
            {
                c.add(
                    "event.occurred_at",
                    format!(
                        "more than {} hours in the future",
                        limits.max_future_skew_secs / 3600
                    ),
                );
            }
        }
    }
    if let Some(ts) = event.expires_at.as_ref()
        && check_timestamp(&mut c, "event.expires_at", ts)
        && Micros::from_timestamp(ts) <= now
    {
        c.add("event.expires_at", "already in the past");
    }
    if event.summary.chars().count() > limits.max_summary_chars {
        c.add(
            "event.summary",
            format!("longer than {} characters", limits.max_summary_chars),
        );
    }
    if !event.corrects_event_id.is_empty() && !is_event_id(&event.corrects_event_id) {
        c.add("event.corrects_event_id", "not a valid event id");
    }
    if event.corrects_event_id == event.event_id && !event.event_id.is_empty() {
        c.add("event.corrects_event_id", "an event cannot correct itself");
    }
    let sensitivity = match pb::Sensitivity::try_from(event.sensitivity) {
        Ok(pb::Sensitivity::Unspecified) | Ok(pb::Sensitivity::Standard) => {
            pb::Sensitivity::Standard
        }
        Ok(pb::Sensitivity::Sensitive) => pb::Sensitivity::Sensitive,
        Err(_) => {
            c.add("event.sensitivity", "STANDARD or SENSITIVE");
            pb::Sensitivity::Standard
        }
    };
    // Timestamps inside the payload were checked by the bounds walk.
    let event_type = match event.payload.as_ref() {
        Some(p) => event_type(p),
        None => {
            c.add(
                "event.payload",
                "exactly one payload (the event's content) is required",
            );
            ""
        }
    };
    if let Some(o) = req
        .basis
        .as_ref()
        .and_then(|b| b.safeguarding_override.as_ref())
    {
        let f = "basis.safeguarding_override";
        if event.purpose != pb::Purpose::Safeguarding as i32 {
            c.add(
                f.to_string(),
                "a safeguarding override is allowed only with purpose SAFEGUARDING",
            );
        }
        if !matches!(pb::LegalBasis::try_from(o.legal_basis), Ok(b) if b != pb::LegalBasis::Unspecified)
        {
            c.add(
                format!("{f}.legal_basis"),
                "the statute relied on is required",
            );
        }
        if o.justification.trim().chars().count() < MIN_JUSTIFICATION_CHARS {
            c.add(
                format!("{f}.justification"),
                format!("a written justification of at least {MIN_JUSTIFICATION_CHARS} characters is required"),
            );
        } else if o.justification.chars().count() > 2_000 {
            c.add(format!("{f}.justification"), "at most 2000 characters");
        }
        if o.authorised_by.trim().is_empty() || o.authorised_by.len() > 128 {
            c.add(
                format!("{f}.authorised_by"),
                "who authorised the override is required (1-128 characters)",
            );
        }
    }
    for (i, a) in req.to_agencies.iter().enumerate() {
        if !is_valid_name(a) {
            c.add(format!("to_agencies[{i}]"), "not a valid agency id");
        }
    }
    c.finish(ValidPublish {
        event_type,
        sensitivity,
    })
}

/// Validates an agency registration.
pub fn validate_register_agency(req: &pb::RegisterAgencyRequest) -> Result<(), Violations> {
    let mut c = Collector::default();
    if !c.bounded(req) {
        return c.finish(());
    }
    if !is_valid_name(&req.agency_id) {
        c.add(
            "agency_id",
            "1 to 64 characters of a-z, 0-9 and '-', starting with a letter",
        );
    }
    if !matches!(pb::AgencyKind::try_from(req.kind), Ok(k) if k != pb::AgencyKind::Unspecified) {
        c.add("kind", "one of HEALTH, EDUCATION, SOCIAL_CARE, OTHER");
    }
    if req.display_name.chars().count() > 200 {
        c.add("display_name", "at most 200 characters");
    }
    c.finish(())
}

fn is_identifier(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Parses `kind:health|education|social_care|other`.
pub fn parse_kind_selector(s: &str) -> Option<pb::AgencyKind> {
    match s.strip_prefix("kind:")? {
        "health" => Some(pb::AgencyKind::Health),
        "education" => Some(pb::AgencyKind::Education),
        "social_care" => Some(pb::AgencyKind::SocialCare),
        "other" => Some(pb::AgencyKind::Other),
        _ => None,
    }
}

fn check_party(c: &mut Collector, field: &str, s: &str) {
    if s.starts_with("kind:") {
        if parse_kind_selector(s).is_none() {
            c.add(
                field,
                "kind:health, kind:education, kind:social_care or kind:other",
            );
        }
    } else if !is_valid_name(s) {
        c.add(field, "an agency id or kind:<kind>");
    }
}

fn check_purposes(c: &mut Collector, field: &str, purposes: &[i32]) {
    if purposes.is_empty() {
        c.add(field, "at least one purpose is required");
    }
    for (i, p) in purposes.iter().enumerate() {
        if !known_purpose(*p) {
            c.add(format!("{field}[{i}]"), "unknown purpose");
        }
    }
}

fn check_patterns(c: &mut Collector, field: &str, patterns: &[String], required: bool) {
    if required && patterns.is_empty() {
        c.add(field, "at least one event type (or `*`) is required");
    }
    for (i, p) in patterns.iter().enumerate() {
        if let Err(e) = validate_pattern(p) {
            c.add(format!("{field}[{i}]"), e.to_string());
        }
    }
}

fn check_window(
    c: &mut Collector,
    from: Option<&prost_types::Timestamp>,
    until: Option<&prost_types::Timestamp>,
) {
    let from_ok = from.is_none_or(|t| check_timestamp(c, "valid_from", t));
    let until_ok = until.is_none_or(|t| check_timestamp(c, "valid_until", t));
    if let (Some(f), Some(u), true, true) = (from, until, from_ok, until_ok)
        && Micros::from_timestamp(u) <= Micros::from_timestamp(f)
    {
        c.add("valid_until", "must be after valid_from");
    }
}

/// Validates an agreement, field by field.
pub fn validate_agreement(a: &pb::Agreement) -> Result<(), Violations> {
    let mut c = Collector::default();
    if !c.bounded(a) {
        return c.finish(());
    }
    if !is_identifier(&a.agreement_id) {
        c.add(
            "agreement_id",
            "1 to 64 characters of letters, digits, '.', '_' or '-'",
        );
    }
    check_party(&mut c, "provider", &a.provider);
    check_party(&mut c, "recipient", &a.recipient);
    check_purposes(&mut c, "purposes", &a.purposes);
    check_patterns(&mut c, "event_types", &a.event_types, true);
    for (i, f) in a.fields.iter().enumerate() {
        if let Err(e) = crate::minimise::validate_field_path(f) {
            c.add(format!("fields[{i}]"), e.to_string());
        }
    }
    if !matches!(pb::LawfulBasis::try_from(a.lawful_basis), Ok(b) if b != pb::LawfulBasis::Unspecified)
    {
        c.add(
            "lawful_basis",
            "one of PUBLIC_TASK, LEGAL_OBLIGATION, CONSENT, VITAL_INTERESTS",
        );
    }
    if a.lawful_basis == pb::LawfulBasis::Consent as i32 && !a.requires_consent {
        c.add(
            "requires_consent",
            "an agreement whose lawful basis is CONSENT must require consent",
        );
    }
    check_window(&mut c, a.valid_from.as_ref(), a.valid_until.as_ref());
    c.finish(())
}

/// The defaults and bounds of a subscription's settings.
pub mod subscription_defaults {
    /// Default ack deadline, seconds.
    pub const ACK_DEADLINE_SECS: i64 = 30;
    /// Shortest ack deadline, seconds.
    pub const MIN_ACK_DEADLINE_SECS: i64 = 1;
    /// Longest ack deadline, seconds.
    pub const MAX_ACK_DEADLINE_SECS: i64 = 600;
    /// Default max attempts.
    pub const MAX_ATTEMPTS: u32 = 10;
}

/// Validates a subscription and fills in defaults.
pub fn validate_subscription(
    s: &pb::Subscription,
    limits: &Limits,
) -> Result<pb::Subscription, Violations> {
    use subscription_defaults as d;
    let mut c = Collector::default();
    if !c.bounded(s) {
        return Err(Violations(c.0));
    }
    if s.event_types.len() > limits.max_event_types_per_subscription {
        c.add(
            "event_types",
            format!(
                "at most {} event types (or patterns such as `education.*`) in one subscription; found {}",
                limits.max_event_types_per_subscription,
                s.event_types.len()
            ),
        );
        return Err(Violations(c.0));
    }
    let name_ok = (1..=64).contains(&s.name.len())
        && s.name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if !name_ok {
        c.add("name", "1 to 64 characters of a-z, 0-9, '.', '_' or '-'");
    }
    check_patterns(&mut c, "event_types", &s.event_types, false);
    for (i, p) in s.purposes.iter().enumerate() {
        if !known_purpose(*p) {
            c.add(format!("purposes[{i}]"), "unknown purpose");
        }
    }
    let mut out = s.clone();
    match s.ack_deadline.as_ref() {
        None => {
            out.ack_deadline = Some(prost_types::Duration {
                seconds: d::ACK_DEADLINE_SECS,
                nanos: 0,
            })
        }
        Some(dur) => {
            if dur.seconds < d::MIN_ACK_DEADLINE_SECS
                || dur.seconds > d::MAX_ACK_DEADLINE_SECS
                || dur.nanos < 0
                || dur.nanos >= 1_000_000_000
            {
                c.add("ack_deadline", "between 1 second and 10 minutes");
            }
        }
    }
    if out.max_attempts == 0 {
        out.max_attempts = d::MAX_ATTEMPTS;
    } else if out.max_attempts > 1_000 {
        c.add("max_attempts", "at most 1000");
    }
    c.finish(out)
}

/// Validates a consent to be recorded.
pub fn validate_consent(k: &pb::ConsentRecord) -> Result<(), Violations> {
    let mut c = Collector::default();
    if !c.bounded(k) {
        return c.finish(());
    }
    if !k.consent_id.is_empty() && !is_identifier(&k.consent_id) {
        c.add("consent_id", "1 to 64 characters of letters, digits, '.', '_' or '-' (or empty to have one assigned)");
    }
    check_nhs(&mut c, "nhs_number", &k.nhs_number);
    if !matches!(pb::GivenBy::try_from(k.given_by), Ok(g) if g != pb::GivenBy::Unspecified) {
        c.add(
            "given_by",
            "one of CHILD, PARENT, GUARDIAN, LOCAL_AUTHORITY",
        );
    }
    check_purposes(&mut c, "purposes", &k.purposes);
    if k.recipients.is_empty() {
        c.add(
            "recipients",
            "at least one recipient (agency id or kind:<kind>)",
        );
    }
    for (i, r) in k.recipients.iter().enumerate() {
        check_party(&mut c, &format!("recipients[{i}]"), r);
    }
    check_patterns(&mut c, "event_types", &k.event_types, false);
    check_window(&mut c, k.valid_from.as_ref(), k.valid_until.as_ref());
    if k.evidence_ref.chars().count() > 256 {
        c.add("evidence_ref", "at most 256 characters");
    }
    c.finish(())
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod wire_tests;
