//! Table tests of request validation: each rule and each bound, at its
//! limit and one past it.
use super::*;

pub(super) fn event() -> pb::CaseEvent {
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
        payload: Some(pb::case_event::Payload::EducationAttendanceConcern(
            pb::AttendanceConcern {
                period: "p".into(),
                attendance_percent: 80.0,
                unauthorised_sessions: 3,
            },
        )),
        ..Default::default()
    }
}

fn check(req: pb::PublishRequest) -> Result<ValidPublish, Violations> {
    validate_publish(
        &req,
        100,
        Micros(1_700_000_000 * Micros::SECOND),
        &Limits::default(),
    )
}

fn with(f: impl FnOnce(&mut pb::PublishRequest)) -> Result<ValidPublish, Violations> {
    let mut r = pb::PublishRequest {
        event: Some(event()),
        ..Default::default()
    };
    f(&mut r);
    check(r)
}

fn ev(r: &mut pb::PublishRequest) -> &mut pb::CaseEvent {
    r.event.get_or_insert_with(Default::default)
}

#[test]
fn valid_event_has_its_type() {
    assert_eq!(
        with(|_| {}).map(|v| v.event_type),
        Ok("education.attendance_concern")
    );
}

#[test]
fn each_bad_field_is_named() {
    type Edit = Box<dyn Fn(&mut pb::PublishRequest)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("event", Box::new(|r| r.event = None)),
        (
            "event.child.nhs_number",
            Box::new(|r| {
                ev(r)
                    .child
                    .as_mut()
                    .map(|c| c.nhs_number = "9434765918".into())
                    .unwrap_or(())
            }),
        ),
        ("event.child", Box::new(|r| ev(r).child = None)),
        (
            "event.event_id",
            Box::new(|r| ev(r).event_id = String::new()),
        ),
        (
            "event.event_id",
            Box::new(|r| ev(r).event_id = "has space".into()),
        ),
        ("event.purpose", Box::new(|r| ev(r).purpose = 0)),
        ("event.purpose", Box::new(|r| ev(r).purpose = 99)),
        ("event.occurred_at", Box::new(|r| ev(r).occurred_at = None)),
        (
            "event.occurred_at",
            Box::new(|r| {
                ev(r).occurred_at = Some(prost_types::Timestamp {
                    seconds: 1_700_000_000 + 3 * 86_400,
                    nanos: 0,
                })
            }),
        ),
        ("event.payload", Box::new(|r| ev(r).payload = None)),
        (
            "event.summary",
            Box::new(|r| ev(r).summary = "x".repeat(4_001)),
        ),
        (
            "event.child.local_ids[0].value",
            Box::new(|r| {
                ev(r)
                    .child
                    .as_mut()
                    .map(|c| {
                        c.local_ids.push(pb::LocalId {
                            scheme: "upn".into(),
                            value: "A801200005001".into(),
                        })
                    })
                    .unwrap_or(())
            }),
        ),
        (
            "basis.safeguarding_override",
            Box::new(|r| {
                r.basis = Some(pb::SharingBasis {
                    safeguarding_override: Some(pb::SafeguardingOverride {
                        legal_basis: 1,
                        justification: "x".repeat(30),
                        authorised_by: "Team manager".into(),
                    }),
                })
            }),
        ),
        (
            "to_agencies[0]",
            Box::new(|r| r.to_agencies.push("Not Valid".into())),
        ),
    ];
    for (field, edit) in cases {
        let got = with(|r| edit(r));
        match got {
            Err(v) => assert!(v.has(field), "expected a violation on {field}, got {v}"),
            Ok(_) => panic!("expected a violation on {field}"),
        }
    }
}

#[test]
fn override_needs_justification_and_authoriser() {
    let got = with(|r| {
        ev(r).purpose = pb::Purpose::Safeguarding as i32;
        r.basis = Some(pb::SharingBasis {
            safeguarding_override: Some(pb::SafeguardingOverride {
                legal_basis: 0,
                justification: "too short".into(),
                authorised_by: String::new(),
            }),
        });
    });
    let v = got.err().unwrap_or(Violations(vec![]));
    for f in [
        "basis.safeguarding_override.legal_basis",
        "basis.safeguarding_override.justification",
        "basis.safeguarding_override.authorised_by",
    ] {
        assert!(v.has(f), "{f}: {v}");
    }
}

#[test]
fn payload_timestamps_are_checked_and_named() {
    let got = with(|r| {
        ev(r).payload = Some(pb::case_event::Payload::HealthWasNotBrought(
            pb::WasNotBrought {
                appointment_at: Some(prost_types::Timestamp {
                    seconds: 253_402_300_800,
                    nanos: 0,
                }),
                ..Default::default()
            },
        ))
    });
    assert!(
        got.err()
            .is_some_and(|v| v.has("event.health_was_not_brought.appointment_at"))
    );
    let got = with(|r| {
        ev(r).payload = Some(pb::case_event::Payload::HealthWasNotBrought(
            pb::WasNotBrought {
                appointment_at: Some(prost_types::Timestamp {
                    seconds: 1,
                    nanos: -1,
                }),
                ..Default::default()
            },
        ))
    });
    assert!(got.is_err());
}

#[test]
fn oversize_event_is_rejected() {
    let r = pb::PublishRequest {
        event: Some(event()),
        ..Default::default()
    };
    let got = validate_publish(
        &r,
        70_000,
        Micros(1_700_000_000 * Micros::SECOND),
        &Limits::default(),
    );
    assert!(got.err().is_some_and(|v| v.has("event")));
}

#[test]
fn agreement_rules() {
    let good = pb::Agreement {
        agreement_id: "isa-1".into(),
        provider: "school-b".into(),
        recipient: "kind:social_care".into(),
        purposes: vec![pb::Purpose::EarlyHelp as i32],
        event_types: vec!["education.*".into()],
        lawful_basis: pb::LawfulBasis::PublicTask as i32,
        ..Default::default()
    };
    assert_eq!(validate_agreement(&good), Ok(()));
    let mut bad = good.clone();
    bad.recipient = "kind:police".into();
    bad.purposes.clear();
    bad.valid_from = Some(prost_types::Timestamp {
        seconds: 10,
        nanos: 0,
    });
    bad.valid_until = Some(prost_types::Timestamp {
        seconds: 10,
        nanos: 0,
    });
    let v = validate_agreement(&bad).err().unwrap_or(Violations(vec![]));
    for f in ["recipient", "purposes", "valid_until"] {
        assert!(v.has(f), "{f}: {v}");
    }
}

#[test]
fn subscription_defaults_fill_in() {
    let s = validate_subscription(
        &pb::Subscription {
            name: "main".into(),
            ..Default::default()
        },
        &Limits::default(),
    );
    let s = s.unwrap_or_default();
    assert_eq!(s.max_attempts, subscription_defaults::MAX_ATTEMPTS);
    assert_eq!(s.ack_deadline.map(|d| d.seconds), Some(30));
    assert!(
        validate_subscription(
            &pb::Subscription {
                name: "Bad Name".into(),
                ..Default::default()
            },
            &Limits::default()
        )
        .is_err()
    );
}

// ---------------------------------------------------------------------------
// The bounds table

use super::limits::{FIELD_LIMITS, FieldLimit, Text, field_limit};
use prost_reflect::{DynamicMessage, Kind, MessageDescriptor, Value};

fn pool() -> &'static prost_reflect::DescriptorPool {
    crate::minimise::descriptor_pool().unwrap_or_else(|| panic!("schema"))
}

/// Every message of the package reachable from an RPC's request, with one
/// path (field names from the request) to it.
fn reachable() -> Vec<(String, Vec<String>, MessageDescriptor)> {
    let mut out: Vec<(String, Vec<String>, MessageDescriptor)> = Vec::new();
    let mut queue: Vec<(String, Vec<String>, MessageDescriptor)> = pool()
        .services()
        .filter(|s| s.package_name() == "caseshare.v1")
        .flat_map(|s| s.methods().map(|m| m.input()).collect::<Vec<_>>())
        .map(|m| (m.name().to_string(), Vec::new(), m))
        .collect();
    while let Some((root, path, m)) = queue.pop() {
        if m.package_name() != "caseshare.v1" || out.iter().any(|(_, _, o)| *o == m) {
            continue;
        }
        for f in m.fields() {
            if let Kind::Message(inner) = f.kind() {
                let mut p = path.clone();
                p.push(f.name().to_string());
                queue.push((root.clone(), p, inner));
            }
        }
        out.push((root, path, m));
    }
    out
}

#[test]
fn every_request_message_is_bounded() {
    for s in pool()
        .services()
        .filter(|s| s.package_name() == "caseshare.v1")
    {
        for m in s.methods() {
            assert!(
                REQUEST_MESSAGES.contains(&m.input().name()),
                "{}.{}: its request {} has no `Bounded` impl",
                s.name(),
                m.name(),
                m.input().name()
            );
        }
    }
}

#[test]
fn every_string_and_repeated_field_of_every_request_has_a_bound() {
    let reached = reachable();
    for (_, _, m) in &reached {
        for f in m.fields() {
            let is_string = matches!(f.kind(), Kind::String | Kind::Bytes);
            if !is_string && !f.is_list() {
                continue;
            }
            let limit = field_limit(m.name(), f.name());
            let Some(limit) = limit else {
                panic!("{}.{} has no bound in FIELD_LIMITS", m.name(), f.name());
            };
            assert_eq!(is_string, limit.max_bytes > 0, "{limit:?}");
            assert_eq!(f.is_list(), limit.max_items > 0, "{limit:?}");
            assert_eq!(is_string, limit.text != Text::None, "{limit:?}");
        }
    }
    // And no row is stale.
    for l in FIELD_LIMITS {
        let found = reached
            .iter()
            .any(|(_, _, m)| m.name() == l.message && m.get_field_by_name(l.field).is_some());
        assert!(found, "{l:?} names no field of a request");
    }
}

/// A request (by name) with the field of `limit` set to `n` items or
/// bytes, plus what its path is called.
pub(super) fn request_with(
    limit: &FieldLimit,
    n: usize,
    filler: &str,
) -> (String, String, Vec<u8>) {
    let reached = reachable();
    let (root, path, _) = reached
        .iter()
        .find(|(_, _, m)| m.name() == limit.message)
        .unwrap_or_else(|| panic!("{} is not reachable", limit.message));
    let root_desc = pool()
        .get_message_by_name(&format!("caseshare.v1.{root}"))
        .unwrap_or_else(|| panic!("{root}"));
    fn build(
        desc: &MessageDescriptor,
        path: &[String],
        limit: &FieldLimit,
        n: usize,
        filler: &str,
    ) -> DynamicMessage {
        let mut msg = DynamicMessage::new(desc.clone());
        if let Some((first, rest)) = path.split_first() {
            let f = desc
                .get_field_by_name(first)
                .unwrap_or_else(|| panic!("{first}"));
            let Kind::Message(inner) = f.kind() else {
                panic!("{first}")
            };
            let inner = Value::Message(build(&inner, rest, limit, n, filler));
            if f.is_list() {
                msg.set_field(&f, Value::List(vec![inner]));
            } else {
                msg.set_field(&f, inner);
            }
            return msg;
        }
        let f = desc
            .get_field_by_name(limit.field)
            .unwrap_or_else(|| panic!("{}", limit.field));
        let one = |len: usize| match f.kind() {
            Kind::String => Value::String(filler.repeat(len)),
            Kind::Enum(_) => Value::EnumNumber(1),
            Kind::Message(m) => Value::Message(DynamicMessage::new(m)),
            k => panic!("{k:?}"),
        };
        if f.is_list() {
            let item_len = limit.max_bytes.min(8);
            msg.set_field(&f, Value::List((0..n).map(|_| one(item_len)).collect()));
        } else {
            msg.set_field(&f, one(n));
        }
        msg
    }
    let msg = build(&root_desc, path, limit, n, filler);
    // Name the path as violations do: `[0]` after a repeated message.
    let mut field_path = Vec::new();
    let mut desc = root_desc.clone();
    for name in path {
        let f = desc
            .get_field_by_name(name)
            .unwrap_or_else(|| panic!("{name}"));
        field_path.push(if f.is_list() {
            format!("{name}[0]")
        } else {
            name.clone()
        });
        let Kind::Message(inner) = f.kind() else {
            panic!("{name}")
        };
        desc = inner;
    }
    field_path.push(limit.field.to_string());
    use prost::Message;
    (root.clone(), field_path.join("."), msg.encode_to_vec())
}

#[test]
fn each_bound_at_its_limit_and_one_past() {
    for limit in FIELD_LIMITS {
        let max = if limit.max_items > 0 {
            limit.max_items
        } else {
            limit.max_bytes
        };
        let (root, path, at) = request_with(limit, max, "a");
        assert_eq!(
            check_encoded(&root, &at),
            Ok(()),
            "{root} with {path} at its limit {max}"
        );
        let (_, _, past) = request_with(limit, max + 1, "a");
        match check_encoded(&root, &past) {
            Err(v) => assert!(
                v.has(&path) && v.0.len() == 1,
                "{root} with {path} one past its limit: {v}"
            ),
            Ok(()) => panic!("{root} with {path} one past its limit {max} was accepted"),
        }
    }
}

#[test]
fn multibyte_text_is_counted_in_bytes() {
    let limit = field_limit("RetractEventRequest", "reason").unwrap_or_else(|| panic!());
    // 'é' is two bytes: half the limit in characters is exactly the limit.
    let (root, _, at) = request_with(limit, limit.max_bytes / 2, "é");
    assert_eq!(check_encoded(&root, &at), Ok(()));
    let (_, path, past) = request_with(limit, limit.max_bytes / 2 + 1, "é");
    assert!(check_encoded(&root, &past).is_err_and(|v| v.has(&path)));
}

#[test]
fn control_characters_are_refused_in_every_string_field() {
    for limit in FIELD_LIMITS.iter().filter(|l| l.text != Text::None) {
        for (bad, multi_line_ok) in [
            ("\0", false),
            ("\u{1b}[2J", false),
            ("\n", true),
            ("\u{9b}", false),
        ] {
            let (root, path, req) = request_with(limit, 1, bad);
            let item_path = if limit.max_items > 0 {
                format!("{path}[0]")
            } else {
                path.clone()
            };
            let ok = multi_line_ok && limit.text == Text::Lines;
            let got = check_encoded(&root, &req);
            assert_eq!(
                got.as_ref().is_ok(),
                ok,
                "{root}.{item_path} = {bad:?}: {got:?}"
            );
            if let Err(v) = got {
                assert!(v.has(&item_path), "{item_path}: {v}");
            }
        }
    }
}

#[test]
fn non_finite_numbers_are_refused() {
    for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let got = with(|r| {
            ev(r).payload = Some(pb::case_event::Payload::EducationAttendanceConcern(
                pb::AttendanceConcern {
                    period: "p".into(),
                    attendance_percent: x,
                    unauthorised_sessions: 1,
                },
            ))
        });
        assert!(
            got.is_err_and(|v| v.has("event.education_attendance_concern.attendance_percent")),
            "{x}"
        );
    }
    assert!(with(|_| {}).is_ok());
}

#[test]
fn publish_bounds_name_the_field() {
    let agencies = |n: usize| (0..n).map(|i| format!("agency-{i}")).collect::<Vec<_>>();
    assert!(with(|r| r.to_agencies = agencies(limits::MAX_AGENCIES)).is_ok());
    let got = with(|r| r.to_agencies = agencies(limits::MAX_AGENCIES + 1));
    assert!(got.is_err_and(|v| v.has("to_agencies")));
    let got = with(|r| {
        r.to_agencies = vec!["a".repeat(limits::AGENCY_ID_BYTES + 1)];
    });
    assert!(got.is_err_and(|v| v.has("to_agencies[0]")));
    let got = with(|r| ev(r).summary = "line one\u{0}".into());
    assert!(got.is_err_and(|v| v.has("event.summary")));
    assert!(with(|r| ev(r).summary = "line one\nline two\ttabbed".into()).is_ok());
}

#[test]
fn a_huge_list_gets_one_violation_and_a_bounded_answer() {
    let got = with(|r| r.to_agencies = vec!["x".into(); 60_000]);
    assert!(got.is_err_and(|v| v.0.len() == 1 && v.has("to_agencies")));
    let ids = check_bounds(&pb::AckRequest {
        subscription: "s".into(),
        delivery_ids: vec!["\0".into(); 5_000],
    });
    assert!(ids.is_err_and(|v| v.0.len() == MAX_VIOLATIONS));
}

#[test]
fn subscription_event_types_cap_is_the_configured_one() {
    let limits = Limits {
        max_event_types_per_subscription: 3,
        ..Limits::default()
    };
    let sub = |n: usize| pb::Subscription {
        name: "main".into(),
        event_types: (0..n).map(|i| format!("education.t{i}")).collect(),
        ..Default::default()
    };
    assert!(validate_subscription(&sub(3), &limits).is_ok());
    assert!(validate_subscription(&sub(4), &limits).is_err_and(|v| v.has("event_types")));
}

#[test]
fn reasons_and_texts_of_other_validators_are_bounded() {
    let long = "x".repeat(limits::REASON_BYTES + 1);
    let consent = pb::ConsentRecord {
        withdrawal_reason: long.clone(),
        ..Default::default()
    };
    assert!(validate_consent(&consent).is_err_and(|v| v.has("withdrawal_reason")));
    let agreement = pb::Agreement {
        end_reason: long,
        ..Default::default()
    };
    assert!(validate_agreement(&agreement).is_err_and(|v| v.has("end_reason")));
    let agency = pb::RegisterAgencyRequest {
        agency_id: "school-a".into(),
        kind: pb::AgencyKind::Education as i32,
        display_name: "School\u{1b}[31m".into(),
    };
    assert!(validate_register_agency(&agency).is_err_and(|v| v.has("display_name")));
}
