//! Tests of field minimisation, including the property that a minimised
//! event never carries a set field outside the allowed paths and that
//! `redacted_fields` lists exactly the set fields removed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use proptest::prelude::*;

fn attendance() -> pb::CaseEvent {
    pb::CaseEvent {
        event_id: "e-1".into(),
        child: Some(pb::ChildRef {
            nhs_number: "9434765919".into(),
            local_ids: vec![],
        }),
        purpose: pb::Purpose::EarlyHelp as i32,
        occurred_at: Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        }),
        summary: "Mum says the car broke down".into(),
        payload: Some(pb::case_event::Payload::EducationAttendanceConcern(
            pb::AttendanceConcern {
                period: "2026-autumn-1".into(),
                attendance_percent: 81.5,
                unauthorised_sessions: 9,
            },
        )),
        ..Default::default()
    }
}

#[test]
fn empty_allow_list_is_the_whole_event() {
    let m = minimise(&attendance(), &[]).unwrap();
    assert_eq!(m.event, attendance());
    assert!(m.redacted_fields.is_empty());
}

#[test]
fn summary_is_withheld_unless_allowed() {
    let allowed = vec!["education_attendance_concern.attendance_percent".to_string()];
    let m = minimise(&attendance(), &allowed).unwrap();
    assert_eq!(m.event.summary, "");
    assert_eq!(
        m.redacted_fields,
        [
            "summary",
            "education_attendance_concern.period",
            "education_attendance_concern.unauthorised_sessions"
        ]
    );
    match m.event.payload {
        Some(pb::case_event::Payload::EducationAttendanceConcern(p)) => {
            assert_eq!(p.attendance_percent, 81.5);
            assert_eq!(p.period, "");
            assert_eq!(p.unauthorised_sessions, 0);
        }
        other => panic!("payload kind lost: {other:?}"),
    }
    assert_eq!(m.event.event_id, "e-1");
    assert!(m.event.child.is_some());
}

#[test]
fn whole_payload_by_its_field_name() {
    let allowed = vec![
        "education_attendance_concern".to_string(),
        "summary".to_string(),
    ];
    let m = minimise(&attendance(), &allowed).unwrap();
    assert_eq!(m.event, attendance());
    assert!(m.redacted_fields.is_empty());
}

#[test]
fn a_payload_not_named_is_removed_whole() {
    let allowed = vec!["health_was_not_brought".to_string()];
    let m = minimise(&attendance(), &allowed).unwrap();
    assert!(m.event.payload.is_none());
    assert_eq!(
        m.redacted_fields,
        ["summary", "education_attendance_concern"]
    );
}

#[test]
fn field_paths_are_checked_against_the_schema() {
    for ok in [
        "summary",
        "education_attendance_concern",
        "education_attendance_concern.period",
        "child.nhs_number",
    ] {
        assert_eq!(validate_field_path(ok), Ok(()), "{ok}");
    }
    for bad in [
        "",
        "nope",
        "summary.x",
        "education_attendance_concern.nope",
        "child.local_ids.value",
    ] {
        assert!(validate_field_path(bad).is_err(), "{bad}");
    }
}

#[test]
fn every_payload_field_has_an_event_type() {
    let desc = case_event_descriptor().unwrap();
    let oneof = desc.oneofs().find(|o| o.name() == "payload").unwrap();
    let fields: Vec<String> = oneof.fields().map(|f| f.name().to_string()).collect();
    assert_eq!(fields.len(), crate::event_type::EVENT_TYPES.len());
    for f in fields {
        assert!(
            crate::event_type::EVENT_TYPES
                .iter()
                .any(|(_, name)| *name == f),
            "{f}"
        );
    }
}

fn all_paths() -> Vec<String> {
    let mut v = vec![
        "summary".to_string(),
        "expires_at".to_string(),
        "education_attendance_concern".to_string(),
    ];
    for f in ["period", "attendance_percent", "unauthorised_sessions"] {
        v.push(format!("education_attendance_concern.{f}"));
    }
    v.push("health_was_not_brought".into());
    v.push("health_was_not_brought.appointment_kind".into());
    v
}

fn arb_event() -> impl Strategy<Value = pb::CaseEvent> {
    (
        proptest::option::of("[a-z ]{1,20}"),
        proptest::option::of("[a-z0-9-]{1,10}"),
        proptest::option::of(0.0f64..100.0),
        proptest::option::of(1u32..50),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(summary, period, pct, sessions, expires, wnb)| {
            let mut e = attendance();
            e.summary = summary.unwrap_or_default();
            e.expires_at = expires.then_some(prost_types::Timestamp {
                seconds: 1_900_000_000,
                nanos: 0,
            });
            e.payload = Some(if wnb {
                pb::case_event::Payload::HealthWasNotBrought(pb::WasNotBrought {
                    appointment_kind: period.unwrap_or_default(),
                    consecutive_missed: sessions.unwrap_or(0),
                    ..Default::default()
                })
            } else {
                pb::case_event::Payload::EducationAttendanceConcern(pb::AttendanceConcern {
                    period: period.unwrap_or_default(),
                    attendance_percent: pct.unwrap_or(0.0),
                    unauthorised_sessions: sessions.unwrap_or(0),
                })
            });
            e
        })
}

fn allowed_by(path: &str, allowed: &[String]) -> bool {
    ALWAYS_SHARED
        .iter()
        .any(|a| path == *a || path.starts_with(&format!("{a}.")))
        || allowed.iter().any(|a| {
            path == a || path.starts_with(&format!("{a}.")) || a.starts_with(&format!("{path}."))
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn minimised_events_carry_only_allowed_fields(
        event in arb_event(),
        picks in proptest::collection::vec(any::<bool>(), 8),
    ) {
        let allowed: Vec<String> = all_paths().into_iter().zip(picks).filter(|(_, p)| *p).map(|(s, _)| s).collect();
        let before = set_field_paths(&event);
        let m = minimise(&event, &allowed).unwrap();
        let after = set_field_paths(&m.event);
        if allowed.is_empty() {
            prop_assert_eq!(&after, &before);
            prop_assert!(m.redacted_fields.is_empty());
        } else {
            for p in &after {
                prop_assert!(allowed_by(p, &allowed), "{} survived with allowed {:?}", p, allowed);
            }
            // Every removed path was set before and is gone after; every set
            // path that disappeared (or whose parent did) is listed.
            for r in &m.redacted_fields {
                prop_assert!(before.contains(r), "{} was not set", r);
                prop_assert!(!after.contains(r), "{} still set", r);
            }
            for p in &before {
                if !after.contains(p) {
                    let listed = m.redacted_fields.iter().any(|r| r == p || p.starts_with(&format!("{r}.")));
                    prop_assert!(listed, "{} removed but not listed", p);
                }
            }
        }
    }
}
