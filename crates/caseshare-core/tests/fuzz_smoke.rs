//! Bounded smoke runs of the `validate_publish` and `identifiers` fuzz
//! targets (issue 7, item 5), inside `cargo test`: the very property code
//! of `fuzz/src/{validate,identifiers}.rs`, compiled in here through
//! `#[path]`, driven by proptest with arbitrary bytes and strings, with
//! structured generators of requests that are mostly valid (so the checks
//! on what validates are exercised), and with byte-level mutations of
//! encoded valid requests and of valid identifiers. Then every saved
//! crashing input under `fuzz/regressions/{validate_publish,identifiers}/`
//! is replayed.
//!
//! `PROPTEST_CASES=<n>` runs every property `n` times instead of the
//! bounded default; the unbounded run is `cargo fuzz` (see `fuzz/`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../fuzz/src/common.rs"]
mod common;
#[path = "../../../fuzz/src/identifiers.rs"]
mod identifiers;
#[path = "../../../fuzz/src/validate.rs"]
mod validate;

use std::path::Path;

use caseshare_core::nhs::with_check_digit;
use caseshare_core::pb;
use caseshare_core::pb::case_event::Payload;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use prost::Message;
use prost_types::{Duration, Timestamp};

/// `cases` runs, unless `PROPTEST_CASES` says otherwise. Failing cases are
/// not persisted beside this file: crashing inputs are kept, as bytes the
/// fuzz targets read too, under `fuzz/regressions/<target>/`.
fn config(cases: u32) -> ProptestConfig {
    let mut c = ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = cases;
    }
    c
}

fn regressions() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions")
}

fn timestamp() -> impl Strategy<Value = Timestamp> {
    let seconds = prop_oneof![
        12 => 1_600_000_000i64..1_790_000_000,
        1 => -62_135_596_800i64..=253_402_300_799,
        1 => any::<i64>(),
        1 => select(vec![i64::MIN, i64::MAX, -62_135_596_801, 253_402_300_800, 0]),
    ];
    let nanos = prop_oneof![12 => 0..1_000_000_000i32, 1 => any::<i32>(), 1 => Just(1_000_000_000)];
    (seconds, nanos).prop_map(|(seconds, nanos)| Timestamp { seconds, nanos })
}

fn nhs_number() -> impl Strategy<Value = String> {
    prop_oneof![
        10 => "[0-9]{9}".prop_filter_map("no check digit fits", |n| with_check_digit(&n)),
        1 => Just("9434765918".to_string()),
        1 => "[0-9]{10}",
        1 => ".{0,12}",
    ]
}

fn event_id() -> impl Strategy<Value = String> {
    prop_oneof![
        10 => "[A-Za-z0-9._:-]{1,24}",
        1 => ".{0,8}",
        1 => Just("e".repeat(129)),
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        10 => "[a-z][a-z0-9-]{0,12}",
        1 => ".{0,6}",
        1 => Just("a".repeat(65)),
    ]
}

fn party() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => name(),
        2 => select(vec!["kind:health", "kind:education", "kind:social_care", "kind:other"])
            .prop_map(String::from),
        1 => select(vec!["kind:police", "kind:", "kind:Health"]).prop_map(String::from),
    ]
}

fn pattern() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => select(vec![
            "*",
            "health.*",
            "education.*",
            "early_help.*",
            "education.attendance_concern",
            "health.was_not_brought",
        ])
        .prop_map(String::from),
        1 => "[a-z_.*]{0,12}",
        1 => ".{0,6}",
    ]
}

fn field_path() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => select(vec![
            "summary",
            "child",
            "child.nhs_number",
            "education_attendance_concern",
            "education_attendance_concern.attendance_percent",
            "health_was_not_brought.appointment_at.seconds",
        ])
        .prop_map(String::from),
        1 => "[a-z_.]{0,24}",
        1 => ".{0,6}",
    ]
}

fn purpose() -> impl Strategy<Value = i32> {
    prop_oneof![10 => 1..=4i32, 1 => -2..8i32, 1 => any::<i32>()]
}

fn enum_value(max: i32) -> impl Strategy<Value = i32> {
    prop_oneof![10 => 1..=max, 1 => -2..max + 3]
}

fn window() -> impl Strategy<Value = (Option<Timestamp>, Option<Timestamp>)> {
    (
        option::weighted(0.4, timestamp()),
        option::weighted(0.4, timestamp()),
    )
}

fn local_id() -> impl Strategy<Value = pb::LocalId> {
    let scheme = prop_oneof![
        4 => select(vec!["upn", "local"]).prop_map(String::from),
        1 => "[a-z_]{0,5}",
        1 => ".{0,4}",
    ];
    let value = prop_oneof![
        4 => Just("B801200005001".to_string()),
        2 => "[A-Z][0-9]{11}[0-9A-Z]",
        2 => "[a-z0-9-]{1,20}",
        1 => ".{0,70}",
    ];
    (scheme, value).prop_map(|(scheme, value)| pb::LocalId { scheme, value })
}

/// One of every payload kind, with its timestamp (if it has one) set.
fn payload() -> impl Strategy<Value = Payload> {
    (
        0..15u8,
        option::weighted(0.6, timestamp()),
        // Mostly finite (NaN and infinities are refused), some of any.
        prop_oneof![9 => -1e9..1e9f64, 1 => any::<f64>()],
        any::<u32>(),
    )
        .prop_map(|(kind, ts, percent, n)| match kind {
            0 => Payload::SocialCareReferralAccepted(pb::ReferralAccepted {
                accepted_at: ts,
                reason_code: "r".into(),
                ..Default::default()
            }),
            1 => Payload::SocialCareChildProtectionPlanStarted(pb::ChildProtectionPlanStarted {
                category: (n % 7) as i32,
                start_date: ts,
                ..Default::default()
            }),
            2 => Payload::SocialCareChildProtectionPlanEnded(pb::ChildProtectionPlanEnded {
                end_date: ts,
                ..Default::default()
            }),
            3 => Payload::SocialCareLookedAfterStarted(pb::LookedAfterStarted {
                start_date: ts,
                ..Default::default()
            }),
            4 => Payload::SocialCareLookedAfterEnded(pb::LookedAfterEnded {
                end_date: ts,
                ..Default::default()
            }),
            5 => Payload::EarlyHelpAssessmentStarted(pb::EarlyHelpAssessmentStarted {
                started_at: ts,
                ..Default::default()
            }),
            6 => Payload::EarlyHelpAssessmentCompleted(pb::EarlyHelpAssessmentCompleted {
                completed_at: ts,
                child_development_needs: vec!["speech".into()],
                ..Default::default()
            }),
            7 => Payload::EarlyHelpTacMeetingScheduled(pb::TacMeetingScheduled {
                meeting_at: ts,
                member_agencies: vec!["school-b".into()],
                ..Default::default()
            }),
            8 => Payload::EarlyHelpLeadProfessionalAssigned(pb::LeadProfessionalAssigned {
                agency_id: "school-b".into(),
                ..Default::default()
            }),
            9 => Payload::EducationAttendanceConcern(pb::AttendanceConcern {
                period: "p".into(),
                attendance_percent: percent,
                unauthorised_sessions: n,
            }),
            10 => Payload::EducationExclusionRecorded(pb::ExclusionRecorded {
                sessions: n,
                start_date: ts,
                ..Default::default()
            }),
            11 => Payload::EducationSenSupportChanged(pb::SenSupportChanged {
                effective_from: ts,
                ..Default::default()
            }),
            12 => Payload::HealthEmergencyAttendance(pb::EmergencyAttendance {
                arrived_at: ts,
                ..Default::default()
            }),
            13 => Payload::HealthWasNotBrought(pb::WasNotBrought {
                appointment_at: ts,
                consecutive_missed: n,
                ..Default::default()
            }),
            _ => Payload::HealthMentalHealthReferral(pb::MentalHealthReferral {
                referred_at: ts,
                ..Default::default()
            }),
        })
}

fn safeguarding_override() -> impl Strategy<Value = pb::SafeguardingOverride> {
    let justification = prop_oneof![
        4 => "[a-z ]{20,60}",
        1 => " {25}",
        1 => ".{0,30}",
    ];
    let authorised_by = prop_oneof![4 => "[A-Za-z ]{1,20}", 1 => ".{0,4}"];
    (enum_value(3), justification, authorised_by).prop_map(
        |(legal_basis, justification, authorised_by)| pb::SafeguardingOverride {
            legal_basis,
            justification,
            authorised_by,
        },
    )
}

fn case_event() -> impl Strategy<Value = pb::CaseEvent> {
    let child =
        (nhs_number(), vec(local_id(), 0..3)).prop_map(|(nhs_number, local_ids)| pb::ChildRef {
            nhs_number,
            local_ids,
        });
    // Mostly printable text (control characters are refused), some of any.
    let summary = prop_oneof![
        8 => "\\PC{0,40}",
        2 => ".{0,40}",
        1 => Just("é".repeat(4_001))
    ];
    let corrects = prop_oneof![8 => Just(String::new()), 1 => event_id()];
    (
        event_id(),
        option::weighted(0.97, child),
        purpose(),
        option::weighted(0.95, timestamp()),
        summary,
        prop_oneof![10 => 0..=2i32, 1 => any::<i32>()],
        corrects,
        option::weighted(0.1, timestamp()),
        option::weighted(0.97, payload()),
    )
        .prop_map(
            |(
                event_id,
                child,
                purpose,
                occurred_at,
                summary,
                sensitivity,
                corrects,
                expires,
                payload,
            )| {
                pb::CaseEvent {
                    event_id,
                    child,
                    purpose,
                    occurred_at,
                    summary,
                    sensitivity,
                    corrects_event_id: corrects,
                    expires_at: expires,
                    payload,
                }
            },
        )
}

fn publish_request() -> impl Strategy<Value = pb::PublishRequest> {
    (
        option::weighted(0.98, case_event()),
        option::weighted(0.15, safeguarding_override()),
        vec(name(), 0..3),
    )
        .prop_map(|(event, o, to_agencies)| {
            let mut event = event;
            // An override comes with purpose SAFEGUARDING most of the time.
            if let (Some(e), Some(_)) = (event.as_mut(), o.as_ref())
                && e.purpose % 4 != 0
            {
                e.purpose = pb::Purpose::Safeguarding as i32;
            }
            pb::PublishRequest {
                event,
                basis: o.map(|o| pb::SharingBasis {
                    safeguarding_override: Some(o),
                }),
                to_agencies,
                trace_context: None,
            }
        })
}

fn agreement() -> impl Strategy<Value = pb::Agreement> {
    (
        prop_oneof![8 => "[A-Za-z0-9._-]{1,20}", 1 => ".{0,8}"],
        party(),
        party(),
        vec(purpose(), 0..3),
        vec(pattern(), 0..3),
        vec(field_path(), 0..3),
        enum_value(4),
        any::<bool>(),
        window(),
    )
        .prop_map(
            |(
                agreement_id,
                provider,
                recipient,
                purposes,
                event_types,
                fields,
                lawful_basis,
                requires_consent,
                (valid_from, valid_until),
            )| {
                pb::Agreement {
                    agreement_id,
                    provider,
                    recipient,
                    purposes,
                    event_types,
                    fields,
                    lawful_basis,
                    requires_consent,
                    valid_from,
                    valid_until,
                    ..Default::default()
                }
            },
        )
}

fn consent() -> impl Strategy<Value = pb::ConsentRecord> {
    (
        prop_oneof![4 => Just(String::new()), 4 => "[A-Za-z0-9._-]{1,20}", 1 => ".{0,8}"],
        nhs_number(),
        enum_value(4),
        vec(purpose(), 0..3),
        vec(party(), 0..3),
        vec(pattern(), 0..2),
        window(),
        prop_oneof![8 => "\\PC{0,20}", 2 => ".{0,20}", 1 => Just("x".repeat(257))],
    )
        .prop_map(
            |(
                consent_id,
                nhs_number,
                given_by,
                purposes,
                recipients,
                event_types,
                (valid_from, valid_until),
                evidence_ref,
            )| {
                pb::ConsentRecord {
                    consent_id,
                    nhs_number,
                    given_by,
                    purposes,
                    recipients,
                    event_types,
                    valid_from,
                    valid_until,
                    evidence_ref,
                    ..Default::default()
                }
            },
        )
}

fn subscription() -> impl Strategy<Value = pb::Subscription> {
    let deadline = (
        prop_oneof![8 => 1..=600i64, 1 => any::<i64>(), 1 => -2..3i64],
        prop_oneof![8 => 0..1_000_000_000i32, 1 => any::<i32>()],
    )
        .prop_map(|(seconds, nanos)| Duration { seconds, nanos });
    (
        prop_oneof![8 => "[a-z0-9._-]{1,20}", 1 => ".{0,8}"],
        vec(pattern(), 0..3),
        vec(purpose(), 0..3),
        option::weighted(0.5, deadline),
        prop_oneof![8 => 0..=1_000u32, 1 => any::<u32>()],
        any::<bool>(),
    )
        .prop_map(
            |(name, event_types, purposes, ack_deadline, max_attempts, ordered)| pb::Subscription {
                name,
                event_types,
                purposes,
                ack_deadline,
                max_attempts,
                ordered,
                ..Default::default()
            },
        )
}

fn register_agency() -> impl Strategy<Value = pb::RegisterAgencyRequest> {
    (
        name(),
        enum_value(4),
        prop_oneof![8 => ".{0,30}", 1 => Just("n".repeat(201))],
    )
        .prop_map(
            |(agency_id, kind, display_name)| pb::RegisterAgencyRequest {
                agency_id,
                kind,
                display_name,
            },
        )
}

proptest! {
    #![proptest_config(config(8_000))]

    #[test]
    fn validate_publish_never_panics_on_arbitrary_bytes(data in vec(any::<u8>(), 0..300)) {
        validate::check_bytes(&data);
    }
}

proptest! {
    #![proptest_config(config(6_000))]

    #[test]
    fn identifiers_never_panic_on_arbitrary_strings(s in any::<String>()) {
        identifiers::check_str(&s);
    }
}

proptest! {
    #![proptest_config(config(2_000))]

    #[test]
    fn validated_publish_requests_are_what_the_spec_says(req in publish_request()) {
        validate::check_publish(&req);
        validate::check_bytes(&req.encode_to_vec());
    }

    #[test]
    fn mutated_valid_requests_never_break_validation(
        req in publish_request(),
        ops in vec(any::<u8>(), 4..64),
    ) {
        validate::check_bytes(&common::mutate(&req.encode_to_vec(), &ops));
    }
}

proptest! {
    #![proptest_config(config(1_000))]

    #[test]
    fn validated_agreements_consents_subscriptions_and_agencies_hold_up(
        a in agreement(),
        c in consent(),
        s in subscription(),
        r in register_agency(),
        ops in vec(any::<u8>(), 0..24),
    ) {
        validate::check_agreement(&a);
        validate::check_consent(&c);
        validate::check_subscription(&s);
        validate::check_register_agency(&r);
        for bytes in [a.encode_to_vec(), c.encode_to_vec(), s.encode_to_vec(), r.encode_to_vec()] {
            validate::check_bytes(&common::mutate(&bytes, &ops));
        }
    }
}

proptest! {
    #![proptest_config(config(10_000))]

    #[test]
    fn mutated_valid_identifiers_hold_up(
        seed in select(identifiers::SEEDS),
        ops in vec(any::<u8>(), 0..16),
    ) {
        identifiers::check_bytes(&common::mutate(seed.as_bytes(), &ops));
    }

    #[test]
    fn identifier_shaped_strings_hold_up(
        s in prop_oneof![
            "spiffe://[a-z.]{0,16}/(agency|auditor|admin|root)/[a-z0-9-]{0,8}(/[a-z]{0,2})?",
            "[0-9]{9,11}",
            "[A-Z][0-9]{11}[0-9A-Z]",
            "[a-z_.*]{0,20}",
            "(kind:)?[a-z_]{0,12}",
        ],
    ) {
        identifiers::check_str(&s);
    }
}

/// The structured generators reach the branches that check what
/// validates; a generator that never produced a valid request would make
/// those checks vacuous.
#[test]
fn structured_generators_reach_the_valid_branch() {
    let mut runner = TestRunner::deterministic();
    let mut count =
        |check: &dyn Fn(&mut TestRunner) -> bool| (0..300).filter(|_| check(&mut runner)).count();
    let publish =
        count(&|r| validate::check_publish(&publish_request().new_tree(r).unwrap().current()));
    let agreements =
        count(&|r| validate::check_agreement(&agreement().new_tree(r).unwrap().current()));
    let consents = count(&|r| validate::check_consent(&consent().new_tree(r).unwrap().current()));
    let subscriptions =
        count(&|r| validate::check_subscription(&subscription().new_tree(r).unwrap().current()));
    let agencies = count(&|r| {
        validate::check_register_agency(&register_agency().new_tree(r).unwrap().current())
    });
    let identifiers = count(&|r| {
        let s = "(spiffe://caseshare.local/agency/[a-z]{1,5}|[0-9]{10}|health\\.\\*|summary)"
            .new_tree(r)
            .unwrap()
            .current();
        identifiers::check_str(&s) > 0
    });
    for (what, n) in [
        ("publish requests", publish),
        ("agreements", agreements),
        ("consents", consents),
        ("subscriptions", subscriptions),
        ("agency registrations", agencies),
        ("identifiers", identifiers),
    ] {
        assert!(n >= 15, "only {n} of 300 generated {what} were valid");
    }
}

/// Every saved crashing input still passes.
#[test]
fn fuzz_regressions_replay() {
    let dir = regressions();
    common::replay(&dir, "validate_publish", validate::check_bytes);
    common::replay(&dir, "identifiers", identifiers::check_bytes);
}
