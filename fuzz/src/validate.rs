//! Fuzz properties of request validation (`caseshare_core::validate`):
//! whatever bytes arrive, decoding them as a `PublishRequest`, `Agreement`,
//! `ConsentRecord`, `Subscription` or `RegisterAgencyRequest` and validating
//! never panics, and whatever validates really has the properties the
//! broker relies on afterwards: a child with a modulus-11-valid NHS number,
//! a payload whose event type is a known one, a known purpose, timestamps
//! protobuf can represent (so every proto3-JSON client can render the event
//! a recipient receives), a well-formed safeguarding override, and so on.
//! Each check restates a rule from the spec rather than calling the
//! validator's own helpers, so a validator that forgets a rule fails here.
//!
//! Shared by the `validate_publish` cargo-fuzz target and the proptest
//! smoke run in `crates/caseshare-core/tests/fuzz_smoke.rs`.

use caseshare_core::event_type::{EVENT_TYPES, event_type, payload_field, validate_pattern};
use caseshare_core::minimise::{self, ALWAYS_SHARED, validate_field_path};
use caseshare_core::nhs::validate_nhs_number;
use caseshare_core::pb;
use caseshare_core::principal::is_valid_name;
use caseshare_core::time::{Micros, timestamp_is_valid};
use caseshare_core::upn::validate_upn;
use caseshare_core::validate::{
    self, Limits, MIN_JUSTIFICATION_CHARS, parse_kind_selector, subscription_defaults,
};
use prost::Message;
use prost_reflect::{DynamicMessage, Kind, Value};

/// The clocks validation runs under: a realistic "now" (2027-01-15, after
/// every example event) and the extremes of the representable range.
pub const NOWS: [Micros; 3] = [
    Micros(1_800_000_000 * Micros::SECOND),
    Micros(i64::MIN),
    Micros(i64::MAX),
];

/// The limits validation runs under: the defaults and very tight ones.
pub fn limits() -> [Limits; 2] {
    [
        Limits::default(),
        Limits {
            max_event_bytes: 40,
            max_summary_chars: 3,
            max_future_skew_secs: 0,
            max_event_types_per_subscription: 1,
            max_subscriptions_per_agency: 1,
        },
    ]
}

/// The fuzz target's body: the bytes decoded as every validated request.
pub fn check_bytes(data: &[u8]) {
    if let Ok(req) = pb::PublishRequest::decode(data) {
        check_publish(&req);
    }
    if let Ok(a) = pb::Agreement::decode(data) {
        check_agreement(&a);
    }
    if let Ok(c) = pb::ConsentRecord::decode(data) {
        check_consent(&c);
    }
    if let Ok(s) = pb::Subscription::decode(data) {
        check_subscription(&s);
    }
    if let Ok(r) = pb::RegisterAgencyRequest::decode(data) {
        check_register_agency(&r);
    }
}

/// Validates `req` under every clock and limit; checks what passes.
/// Returns whether it validated under the realistic clock and default
/// limits (generators use this to show they reach the valid branch).
pub fn check_publish(req: &pb::PublishRequest) -> bool {
    let len = req.event.as_ref().map_or(0, Message::encoded_len);
    let mut valid_by_default = false;
    for (i, limits) in limits().iter().enumerate() {
        for (j, now) in NOWS.iter().enumerate() {
            if let Ok(valid) = validate::validate_publish(req, len, *now, limits) {
                assert_valid_publish(req, len, *now, limits, &valid);
                valid_by_default |= i == 0 && j == 0;
            }
        }
    }
    valid_by_default
}

fn is_event_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

fn is_identifier(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// A known, specified enum value (`*_UNSPECIFIED` is 0 in every enum).
fn known<E: TryFrom<i32>>(v: i32) -> bool {
    v != 0 && E::try_from(v).is_ok()
}

fn known_purpose(p: i32) -> bool {
    known::<pb::Purpose>(p)
}

fn is_party(s: &str) -> bool {
    if s.starts_with("kind:") {
        parse_kind_selector(s).is_some()
    } else {
        is_valid_name(s)
    }
}

fn assert_window(
    what: &str,
    from: Option<&prost_types::Timestamp>,
    until: Option<&prost_types::Timestamp>,
) {
    for t in [from, until].into_iter().flatten() {
        assert!(
            timestamp_is_valid(t),
            "{what}: validated with an invalid window timestamp {t:?}"
        );
    }
    if let (Some(f), Some(u)) = (from, until) {
        assert!(
            Micros::from_timestamp(u) > Micros::from_timestamp(f),
            "{what}: validated with valid_until {u:?} not after valid_from {f:?}"
        );
    }
}

/// Every `google.protobuf.Timestamp` anywhere in `event` (payload
/// included), as (field path, value).
pub fn all_timestamps(event: &pb::CaseEvent) -> Vec<(String, prost_types::Timestamp)> {
    fn walk(msg: &DynamicMessage, prefix: &str, out: &mut Vec<(String, prost_types::Timestamp)>) {
        for (field, value) in msg.fields() {
            let path = if prefix.is_empty() {
                field.name().to_string()
            } else {
                format!("{prefix}.{}", field.name())
            };
            let Kind::Message(kind) = field.kind() else {
                continue;
            };
            let messages: Vec<&DynamicMessage> = match value {
                Value::Message(m) => vec![m],
                Value::List(items) => items.iter().filter_map(Value::as_message).collect(),
                _ => Vec::new(),
            };
            for m in messages {
                if kind.full_name() == "google.protobuf.Timestamp" {
                    let ts = m.transcode_to::<prost_types::Timestamp>();
                    let ts = ts.unwrap_or_else(|e| panic!("{path}: not a Timestamp: {e}"));
                    out.push((path.clone(), ts));
                } else {
                    walk(m, &path, out);
                }
            }
        }
    }
    let Some(desc) = minimise::case_event_descriptor() else {
        panic!("the compiled schema has no caseshare.v1.CaseEvent");
    };
    let dynamic = DynamicMessage::decode(desc, event.encode_to_vec().as_slice())
        .unwrap_or_else(|e| panic!("a CaseEvent does not transcode: {e}"));
    let mut out = Vec::new();
    walk(&dynamic, "", &mut out);
    out
}

fn assert_valid_publish(
    req: &pb::PublishRequest,
    len: usize,
    now: Micros,
    limits: &Limits,
    valid: &validate::ValidPublish,
) {
    let ctx = format!("validated at {now:?} under {limits:?}: {req:?}");
    let Some(event) = req.event.as_ref() else {
        panic!("a request without an event validated ({ctx})");
    };
    assert!(
        len <= limits.max_event_bytes,
        "oversize event validated ({ctx})"
    );
    assert!(
        is_event_id(&event.event_id),
        "bad event_id validated ({ctx})"
    );
    let Some(child) = event.child.as_ref() else {
        panic!("an event without a child validated ({ctx})");
    };
    assert!(
        validate_nhs_number(&child.nhs_number).is_ok(),
        "an invalid NHS number validated ({ctx})"
    );
    for id in &child.local_ids {
        assert!(
            !id.scheme.is_empty()
                && id
                    .scheme
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_'),
            "bad local id scheme validated ({ctx})"
        );
        assert!(
            (1..=64).contains(&id.value.len()),
            "bad local id value validated ({ctx})"
        );
        if id.scheme == "upn" {
            assert!(
                validate_upn(&id.value).is_ok(),
                "an invalid UPN validated ({ctx})"
            );
        }
    }
    assert!(
        known_purpose(event.purpose),
        "unknown purpose validated ({ctx})"
    );
    let Some(occurred) = event.occurred_at.as_ref() else {
        panic!("an event without occurred_at validated ({ctx})");
    };
    assert!(
        timestamp_is_valid(occurred),
        "invalid occurred_at validated ({ctx})"
    );
    assert!(
        Micros::from_timestamp(occurred) <= now.plus_seconds(limits.max_future_skew_secs),
        "occurred_at too far in the future validated ({ctx})"
    );
    if let Some(expires) = event.expires_at.as_ref() {
        assert!(
            timestamp_is_valid(expires),
            "invalid expires_at validated ({ctx})"
        );
        assert!(
            Micros::from_timestamp(expires) > now,
            "expired event validated ({ctx})"
        );
    }
    assert!(
        event.summary.chars().count() <= limits.max_summary_chars,
        "overlong summary validated ({ctx})"
    );
    if !event.corrects_event_id.is_empty() {
        assert!(
            is_event_id(&event.corrects_event_id),
            "bad corrects_event_id validated ({ctx})"
        );
        assert_ne!(
            event.corrects_event_id, event.event_id,
            "self-correction validated ({ctx})"
        );
    }
    let sensitive = event.sensitivity == pb::Sensitivity::Sensitive as i32;
    assert!(
        (0..=2).contains(&event.sensitivity),
        "unknown sensitivity validated ({ctx})"
    );
    assert_eq!(
        valid.sensitivity == pb::Sensitivity::Sensitive,
        sensitive,
        "sensitivity misread ({ctx})"
    );
    let Some(payload) = event.payload.as_ref() else {
        panic!("an event without a payload validated ({ctx})");
    };
    assert_eq!(
        valid.event_type,
        event_type(payload),
        "event type misread ({ctx})"
    );
    assert!(
        EVENT_TYPES.iter().any(|(t, _)| *t == valid.event_type),
        "unknown event type validated ({ctx})"
    );
    let field = payload_field(valid.event_type);
    assert!(
        field.is_some_and(|f| validate_field_path(f).is_ok()),
        "the payload field of {} is not a CaseEvent field ({ctx})",
        valid.event_type
    );
    // Every timestamp in the event can be represented (and so rendered as
    // proto3 JSON by a recipient); payload timestamps included.
    for (path, ts) in all_timestamps(event) {
        assert!(
            timestamp_is_valid(&ts),
            "validated an event whose {path} is outside protobuf's Timestamp range \
             (seconds {}, nanos {}): recipients cannot render it as proto3 JSON ({ctx})",
            ts.seconds,
            ts.nanos
        );
    }
    if let Some(o) = req
        .basis
        .as_ref()
        .and_then(|b| b.safeguarding_override.as_ref())
    {
        assert_eq!(
            event.purpose,
            pb::Purpose::Safeguarding as i32,
            "override without SAFEGUARDING validated ({ctx})"
        );
        assert!(
            known::<pb::LegalBasis>(o.legal_basis),
            "override without a legal basis validated ({ctx})"
        );
        let chars = o.justification.trim().chars().count();
        assert!(
            chars >= MIN_JUSTIFICATION_CHARS,
            "short justification validated ({ctx})"
        );
        assert!(
            o.justification.chars().count() <= 2_000,
            "long justification validated ({ctx})"
        );
        assert!(
            !o.authorised_by.trim().is_empty() && o.authorised_by.len() <= 128,
            "override without an authoriser validated ({ctx})"
        );
    }
    for a in &req.to_agencies {
        assert!(
            is_valid_name(a),
            "bad to_agencies entry {a:?} validated ({ctx})"
        );
    }
    // What delivery does next with a valid event must work: minimisation
    // keeps the always-shared fields and drops what is not allowed.
    let kept = minimise::minimise(event, &["summary".to_string()])
        .unwrap_or_else(|e| panic!("a validated event does not minimise: {e} ({ctx})"));
    assert_eq!(kept.event.event_id, event.event_id);
    assert_eq!(kept.event.child, event.child);
    assert!(
        kept.event.payload.is_none(),
        "payload survived minimisation ({ctx})"
    );
    for path in minimise::set_field_paths(&kept.event) {
        let top = path.split('.').next().unwrap_or_default();
        assert!(
            top == "summary" || ALWAYS_SHARED.contains(&top),
            "{path} survived minimisation to [summary] ({ctx})"
        );
    }
}

/// Validates an agreement; checks what passes.
pub fn check_agreement(a: &pb::Agreement) -> bool {
    let Ok(()) = validate::validate_agreement(a) else {
        return false;
    };
    let ctx = format!("{a:?}");
    assert!(
        is_identifier(&a.agreement_id),
        "bad agreement_id validated: {ctx}"
    );
    assert!(is_party(&a.provider), "bad provider validated: {ctx}");
    assert!(is_party(&a.recipient), "bad recipient validated: {ctx}");
    assert!(
        !a.purposes.is_empty() && a.purposes.iter().all(|p| known_purpose(*p)),
        "bad purposes validated: {ctx}"
    );
    assert!(
        !a.event_types.is_empty() && a.event_types.iter().all(|p| validate_pattern(p).is_ok()),
        "bad event types validated: {ctx}"
    );
    for f in &a.fields {
        assert!(
            validate_field_path(f).is_ok(),
            "bad field path {f:?} validated: {ctx}"
        );
    }
    assert!(
        known::<pb::LawfulBasis>(a.lawful_basis),
        "bad lawful basis validated: {ctx}"
    );
    if a.lawful_basis == pb::LawfulBasis::Consent as i32 {
        assert!(
            a.requires_consent,
            "CONSENT basis without requires_consent validated: {ctx}"
        );
    }
    assert_window(&ctx, a.valid_from.as_ref(), a.valid_until.as_ref());
    // The field paths minimise any event without failing.
    let event = pb::CaseEvent {
        event_id: "e".into(),
        summary: "s".into(),
        ..Default::default()
    };
    assert!(minimise::minimise(&event, &a.fields).is_ok(), "{ctx}");
    true
}

/// Validates a consent; checks what passes.
pub fn check_consent(c: &pb::ConsentRecord) -> bool {
    let Ok(()) = validate::validate_consent(c) else {
        return false;
    };
    let ctx = format!("{c:?}");
    assert!(
        c.consent_id.is_empty() || is_identifier(&c.consent_id),
        "bad consent_id validated: {ctx}"
    );
    assert!(
        validate_nhs_number(&c.nhs_number).is_ok(),
        "invalid NHS number validated: {ctx}"
    );
    assert!(
        known::<pb::GivenBy>(c.given_by),
        "bad given_by validated: {ctx}"
    );
    assert!(
        !c.purposes.is_empty() && c.purposes.iter().all(|p| known_purpose(*p)),
        "bad purposes validated: {ctx}"
    );
    assert!(
        !c.recipients.is_empty() && c.recipients.iter().all(|r| is_party(r)),
        "bad recipients validated: {ctx}"
    );
    assert!(
        c.event_types.iter().all(|p| validate_pattern(p).is_ok()),
        "bad event types validated: {ctx}"
    );
    assert!(
        c.evidence_ref.chars().count() <= 256,
        "long evidence_ref validated: {ctx}"
    );
    assert_window(&ctx, c.valid_from.as_ref(), c.valid_until.as_ref());
    true
}

/// Validates a subscription; checks what passes and that the defaults it
/// fills in validate again unchanged.
pub fn check_subscription(s: &pb::Subscription) -> bool {
    let Ok(out) = validate::validate_subscription(s, &Limits::default()) else {
        return false;
    };
    let ctx = format!("{s:?}");
    assert!(
        (1..=64).contains(&s.name.len())
            && s.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)),
        "bad name validated: {ctx}"
    );
    assert!(
        s.event_types.iter().all(|p| validate_pattern(p).is_ok()),
        "bad event types validated: {ctx}"
    );
    assert!(
        s.purposes.iter().all(|p| known_purpose(*p)),
        "bad purposes validated: {ctx}"
    );
    let Some(d) = out.ack_deadline else {
        panic!("no ack deadline after defaults: {ctx}");
    };
    assert!(
        (subscription_defaults::MIN_ACK_DEADLINE_SECS
            ..=subscription_defaults::MAX_ACK_DEADLINE_SECS)
            .contains(&d.seconds)
            && (0..1_000_000_000).contains(&d.nanos),
        "bad ack deadline validated: {ctx}"
    );
    assert!(
        (1..=1_000).contains(&out.max_attempts),
        "bad max_attempts validated: {ctx}"
    );
    assert_eq!(
        validate::validate_subscription(&out, &Limits::default()),
        Ok(out.clone()),
        "defaults are not a fixed point: {ctx}"
    );
    true
}

/// Validates an agency registration; checks what passes.
pub fn check_register_agency(r: &pb::RegisterAgencyRequest) -> bool {
    let Ok(()) = validate::validate_register_agency(r) else {
        return false;
    };
    assert!(
        is_valid_name(&r.agency_id),
        "bad agency id validated: {r:?}"
    );
    assert!(known::<pb::AgencyKind>(r.kind), "bad kind validated: {r:?}");
    assert!(
        r.display_name.chars().count() <= 200,
        "long display name validated: {r:?}"
    );
    true
}
