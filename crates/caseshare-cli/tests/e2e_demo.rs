//! End to end over real gRPC and mTLS: the `caseshare demo` scenario
//! (`caseshare_cli::demo::run`), asserting what every publish response said
//! and what every agency received, field by field, and that the printed
//! output holds each step's decision table.
//!
//! Absence is proved by ordering, never by waiting: a subscription delivers
//! in publish order, and the demo reads each feed up to the last event
//! shared with that agency (step f). An agency's deliveries are therefore
//! everything it was ever sent; a withheld event would appear in that list
//! before the later events it did receive.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use caseshare_cli::demo::{self, DemoReport, Step};
use caseshare_proto::v1 as pb;

const SHARED: i32 = pb::Decision::Shared as i32;
const WITHHELD: i32 = pb::Decision::Withheld as i32;

/// The decision fields the spec pins, for one recipient.
fn decision(
    agency: &str,
    decision: i32,
    reason: &str,
    agreement: &str,
    consent: &str,
    override_used: bool,
) -> (String, i32, String, String, String, bool) {
    (
        agency.into(),
        decision,
        reason.into(),
        agreement.into(),
        consent.into(),
        override_used,
    )
}

fn decisions(step: &Step) -> Vec<(String, i32, String, String, String, bool)> {
    step.response
        .decisions
        .iter()
        .map(|d| {
            (
                d.agency_id.clone(),
                d.decision,
                d.reason.clone(),
                d.agreement_id.clone(),
                d.consent_id.clone(),
                d.override_used,
            )
        })
        .collect()
}

fn published(step: &Step) -> pb::CaseEvent {
    step.request.event.clone().unwrap()
}

/// Checks one delivery against its step: the envelope, the decision it
/// carries, the redacted paths, and the event exactly as `expected`.
fn check_delivery(
    d: &pb::Delivery,
    step: &Step,
    recipient: &str,
    redacted: &[&str],
    expected: &pb::CaseEvent,
) {
    let ctx = format!("step ({}) → {recipient}", step.label);
    assert_eq!(d.sequence, step.response.sequence, "{ctx}: sequence");
    assert_eq!(d.attempt, 1, "{ctx}: first attempt");
    assert_eq!(d.source_agency, step.publisher, "{ctx}: source agency");
    assert_eq!(d.event_type, step.response.event_type, "{ctx}: event type");
    assert!(d.notice.is_none(), "{ctx}: not a notice");
    assert!(d.published_at.is_some(), "{ctx}: published_at");
    assert!(
        d.delivery_id
            .ends_with(&format!("-{}-1", step.response.sequence)),
        "{ctx}: delivery id {}",
        d.delivery_id
    );
    assert_eq!(
        d.decision.as_ref(),
        step.decision(recipient),
        "{ctx}: the delivery carries the publish-time decision"
    );
    assert_eq!(d.redacted_fields, redacted, "{ctx}: redacted fields");
    let event = d.event.as_ref().unwrap();
    // The identifying envelope always goes.
    assert_eq!(event.event_id, expected.event_id, "{ctx}: event_id");
    assert_eq!(event.child, expected.child, "{ctx}: child");
    assert_eq!(
        event.child.as_ref().unwrap().nhs_number,
        demo::CHILD_NHS_NUMBER,
        "{ctx}: NHS number"
    );
    assert_eq!(event.purpose, expected.purpose, "{ctx}: purpose");
    assert_eq!(
        event.occurred_at, expected.occurred_at,
        "{ctx}: occurred_at"
    );
    assert_eq!(
        event.sensitivity, expected.sensitivity,
        "{ctx}: sensitivity"
    );
    assert_eq!(event.summary, expected.summary, "{ctx}: summary");
    assert_eq!(event.payload, expected.payload, "{ctx}: payload");
    // And nothing else.
    assert_eq!(event, expected, "{ctx}: the whole event");
}

fn attendance(e: &pb::CaseEvent) -> &pb::AttendanceConcern {
    match e.payload.as_ref().unwrap() {
        pb::case_event::Payload::EducationAttendanceConcern(a) => a,
        other => panic!("not an attendance concern: {other:?}"),
    }
}

/// The attendance concern as social care may see it under `isa-school-sc`:
/// period and percentage only.
fn attendance_minimised(original: &pb::CaseEvent) -> pb::CaseEvent {
    let a = attendance(original);
    assert_ne!(
        a.unauthorised_sessions, 0,
        "the demo sets the redacted field"
    );
    assert!(!original.summary.is_empty(), "the demo sets a summary");
    pb::CaseEvent {
        summary: String::new(),
        payload: Some(pb::case_event::Payload::EducationAttendanceConcern(
            pb::AttendanceConcern {
                period: a.period.clone(),
                attendance_percent: a.attendance_percent,
                unauthorised_sessions: 0,
            },
        )),
        ..original.clone()
    }
}

fn without_summary(original: &pb::CaseEvent) -> pb::CaseEvent {
    assert!(!original.summary.is_empty(), "the demo sets a summary");
    pb::CaseEvent {
        summary: String::new(),
        ..original.clone()
    }
}

/// The section of the output under a step's heading.
fn section<'a>(output: &'a str, label: &str) -> &'a str {
    let start = output
        .find(&format!("\n({label}) "))
        .unwrap_or_else(|| panic!("no heading for step ({label}) in:\n{output}"));
    let rest = &output[start + 1..];
    let end = rest[1..]
        .find("\n(")
        .or_else(|| rest.find("\nDelivery check"))
        .map_or(rest.len(), |i| i + 1);
    &rest[..end]
}

/// Asserts that a step's printed table has its header and one row per
/// decision, with the recipient, decision, reason and basis.
fn check_table(output: &str, step: &Step) {
    let text = section(output, step.label);
    let header = text
        .lines()
        .find(|l| l.trim_start().starts_with("Step"))
        .unwrap_or_else(|| panic!("step ({}) has no table:\n{text}", step.label));
    for column in [
        "Event type",
        "From",
        "To",
        "Decision",
        "Reason",
        "Basis (agreement / consent / override)",
    ] {
        assert!(header.contains(column), "column {column:?} in {header:?}");
    }
    let rows: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("Step"))
        .skip(2)
        .take_while(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        rows.len(),
        step.response.decisions.len(),
        "one row per decision in step ({}):\n{text}",
        step.label
    );
    let first: Vec<&str> = rows[0].split_whitespace().collect();
    assert_eq!(
        &first[..3],
        &[
            step.label,
            step.response.event_type.as_str(),
            step.publisher.as_str()
        ],
        "step, event type, from: {:?}",
        rows[0]
    );
    for (row, d) in rows.iter().zip(&step.response.decisions) {
        let name = pb::Decision::try_from(d.decision).unwrap().as_str_name();
        for cell in [d.agency_id.as_str(), name, d.reason.as_str()] {
            assert!(row.contains(cell), "{cell:?} in row {row:?}");
        }
        if !d.agreement_id.is_empty() {
            assert!(row.contains(&d.agreement_id), "agreement in {row:?}");
        }
        if !d.consent_id.is_empty() {
            assert!(row.contains(&d.consent_id), "consent in {row:?}");
        }
        if d.override_used {
            assert!(row.contains("OVERRIDE CHILDREN_ACT_1989_S47"), "{row:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_scenario_end_to_end() {
    let mut buf = Vec::new();
    let report: DemoReport = match demo::run(&mut buf).await {
        Ok(r) => r,
        Err(e) => panic!(
            "demo failed: {e:#}\noutput so far:\n{}",
            String::from_utf8_lossy(&buf)
        ),
    };
    let output = String::from_utf8(buf).unwrap();
    println!("{output}");

    // Set-up as the broker stored it.
    let ids: Vec<&str> = report
        .agreements
        .iter()
        .map(|a| a.agreement_id.as_str())
        .collect();
    assert_eq!(
        ids,
        [
            demo::ISA_SCHOOL_SOCIAL_CARE,
            demo::ISA_HEALTH_SOCIAL_CARE,
            demo::ISA_HEALTH_SCHOOL
        ]
    );
    let school_sc = &report.agreements[0];
    assert_eq!(school_sc.provider, demo::SCHOOL);
    assert_eq!(school_sc.recipient, "kind:social_care");
    assert!(school_sc.requires_consent);
    assert_eq!(school_sc.lawful_basis, pb::LawfulBasis::PublicTask as i32);
    assert!(!school_sc.fields.is_empty());
    assert_eq!(report.consent.consent_id, demo::CONSENT_ID);
    assert_eq!(report.consent.nhs_number, demo::CHILD_NHS_NUMBER);
    assert_eq!(report.consent.recorded_by, demo::SCHOOL, "from the cert");
    assert!(report.consent.withdrawn_at.is_none());
    assert_eq!(report.withdrawn.consent_id, demo::CONSENT_ID);
    assert!(report.withdrawn.withdrawn_at.is_some());
    assert!(!report.withdrawn.withdrawal_reason.is_empty());

    let labels: Vec<&str> = report.steps.iter().map(|s| s.label).collect();
    assert_eq!(labels, ["a", "b", "c", "d", "e", "f"]);
    let step = |l: &str| report.step(l).unwrap();
    let (a, b, c, d, e, f) = (
        step("a"),
        step("b"),
        step("c"),
        step("d"),
        step("e"),
        step("f"),
    );
    let mut last = (0, 0);
    for s in &report.steps {
        let r = &s.response;
        assert!(!r.duplicate, "step ({})", s.label);
        assert_eq!(r.event_id, published(s).event_id);
        assert!(r.sequence > last.0, "sequences increase");
        assert!(r.audit_index > last.1 || last.1 == 0, "audit indexes grow");
        last = (r.sequence, r.audit_index);
    }

    // (a) consent-based sharing with social care.
    assert_eq!(a.publisher, demo::SCHOOL);
    assert_eq!(a.response.event_type, "education.attendance_concern");
    assert_eq!(
        decisions(a),
        [decision(
            demo::SOCIAL_CARE,
            SHARED,
            "consent",
            demo::ISA_SCHOOL_SOCIAL_CARE,
            demo::CONSENT_ID,
            false
        )]
    );
    assert_eq!(
        a.decision(demo::SOCIAL_CARE).unwrap().lawful_basis,
        pb::LawfulBasis::PublicTask as i32
    );

    // (b) shared with social care, withheld from the school (a candidate
    // through its health.* subscription) for lack of an agreement.
    assert_eq!(b.publisher, demo::HEALTH);
    assert_eq!(b.response.event_type, "health.was_not_brought");
    assert_eq!(
        decisions(b),
        [
            decision(
                demo::SOCIAL_CARE,
                SHARED,
                "agreement",
                demo::ISA_HEALTH_SOCIAL_CARE,
                "",
                false
            ),
            decision(demo::SCHOOL, WITHHELD, "no_agreement", "", "", false),
        ]
    );
    assert_eq!(
        b.decision(demo::SOCIAL_CARE).unwrap().lawful_basis,
        pb::LawfulBasis::PublicTask as i32
    );

    // (c) after the withdrawal.
    assert_eq!(c.publisher, demo::SCHOOL);
    assert_eq!(c.response.event_type, "education.attendance_concern");
    assert_eq!(
        decisions(c),
        [decision(
            demo::SOCIAL_CARE,
            WITHHELD,
            "consent_withdrawn",
            demo::ISA_SCHOOL_SOCIAL_CARE,
            "",
            false
        )]
    );

    // (d) the safeguarding override, flagged.
    assert_eq!(d.publisher, demo::SCHOOL);
    let o = d
        .request
        .basis
        .as_ref()
        .unwrap()
        .safeguarding_override
        .as_ref()
        .unwrap();
    assert_eq!(o.legal_basis, pb::LegalBasis::ChildrenAct1989S47 as i32);
    assert!(o.justification.chars().count() >= 20);
    assert!(!o.authorised_by.is_empty());
    assert_eq!(published(d).purpose, pb::Purpose::Safeguarding as i32);
    assert_eq!(
        decisions(d),
        [decision(
            demo::SOCIAL_CARE,
            SHARED,
            "override",
            demo::ISA_SCHOOL_SOCIAL_CARE,
            "",
            true
        )]
    );
    assert_eq!(
        d.decision(demo::SOCIAL_CARE).unwrap().lawful_basis,
        pb::LawfulBasis::PublicTask as i32
    );

    // (e) sensitive, no explicit consent.
    assert_eq!(e.publisher, demo::HEALTH);
    assert_eq!(e.response.event_type, "health.mental_health_referral");
    assert_eq!(published(e).sensitivity, pb::Sensitivity::Sensitive as i32);
    assert_eq!(
        decisions(e),
        [
            decision(
                demo::SOCIAL_CARE,
                WITHHELD,
                "sensitive_needs_explicit_consent",
                demo::ISA_HEALTH_SOCIAL_CARE,
                "",
                false
            ),
            decision(demo::SCHOOL, WITHHELD, "no_agreement", "", "", false),
        ]
    );

    // (f) shared with both.
    assert_eq!(f.publisher, demo::HEALTH);
    assert_eq!(f.response.event_type, "health.emergency_attendance");
    assert_eq!(
        decisions(f),
        [
            decision(
                demo::SOCIAL_CARE,
                SHARED,
                "agreement",
                demo::ISA_HEALTH_SOCIAL_CARE,
                "",
                false
            ),
            decision(
                demo::SCHOOL,
                SHARED,
                "agreement",
                demo::ISA_HEALTH_SCHOOL,
                "",
                false
            ),
        ]
    );

    // What social care received: a, b, d, f and nothing else, in that
    // order. Nothing between d and f proves c was not delivered; f being
    // the last delivery read, after e was published, proves e was not.
    let social = report.received_by(demo::SOCIAL_CARE);
    let seqs: Vec<u64> = social.iter().map(|d| d.sequence).collect();
    assert_eq!(
        seqs,
        [
            a.response.sequence,
            b.response.sequence,
            d.response.sequence,
            f.response.sequence
        ],
        "social care received exactly the shared events, in order"
    );
    let attendance_redacted = [
        "summary",
        "education_attendance_concern.unauthorised_sessions",
    ];
    check_delivery(
        &social[0],
        a,
        demo::SOCIAL_CARE,
        &attendance_redacted,
        &attendance_minimised(&published(a)),
    );
    let got = attendance(social[0].event.as_ref().unwrap());
    assert_eq!(got.period, "2026-autumn-2");
    assert_eq!(got.attendance_percent, 78.5);
    assert_eq!(got.unauthorised_sessions, 0, "redacted");
    assert_eq!(
        social[0]
            .event
            .as_ref()
            .unwrap()
            .child
            .as_ref()
            .unwrap()
            .local_ids[0]
            .value,
        demo::CHILD_UPN
    );
    check_delivery(
        &social[1],
        b,
        demo::SOCIAL_CARE,
        &["summary"],
        &without_summary(&published(b)),
    );
    check_delivery(
        &social[2],
        d,
        demo::SOCIAL_CARE,
        &attendance_redacted,
        &attendance_minimised(&published(d)),
    );
    assert!(social[2].decision.as_ref().unwrap().override_used);
    check_delivery(
        &social[3],
        f,
        demo::SOCIAL_CARE,
        &["summary"],
        &without_summary(&published(f)),
    );

    // What the school received: only f. It was a candidate for b and e, so
    // had either been sent it would have arrived before f.
    let school = report.received_by(demo::SCHOOL);
    assert_eq!(
        school.iter().map(|d| d.sequence).collect::<Vec<_>>(),
        [f.response.sequence],
        "the school's first and only delivery is step f"
    );
    let mut school_view = without_summary(&published(f));
    match school_view.payload.as_mut().unwrap() {
        pb::case_event::Payload::HealthEmergencyAttendance(ea) => {
            assert!(!ea.site.is_empty());
            assert!(ea.arrived_at.is_some());
            assert_eq!(ea.presenting_category, "injury");
            ea.site.clear();
        }
        other => panic!("not an emergency attendance: {other:?}"),
    }
    check_delivery(
        &school[0],
        f,
        demo::SCHOOL,
        &["summary", "health_emergency_attendance.site"],
        &school_view,
    );

    // The hospital only publishes: never a candidate, received nothing.
    assert!(report.received_by(demo::HEALTH).is_empty());
    assert!(
        report
            .steps
            .iter()
            .all(|s| s.decision(demo::HEALTH).is_none())
    );

    // Per step, the deliveries read are exactly the step's shared ones.
    for s in &report.steps {
        let mut got: Vec<(&str, u64)> = s
            .deliveries
            .iter()
            .map(|(agency, d)| (agency.as_str(), d.sequence))
            .collect();
        got.sort();
        let mut want: Vec<(&str, u64)> = s
            .response
            .decisions
            .iter()
            .filter(|d| d.decision == SHARED)
            .map(|d| (d.agency_id.as_str(), s.response.sequence))
            .collect();
        want.sort();
        assert_eq!(got, want, "deliveries read in step ({})", s.label);
    }
    assert!(report.deliveries_match_decisions);

    // The audit log read back as the auditor.
    let audit = &report.audit;
    assert!(audit.gap_free, "{audit:?}");
    assert_eq!(audit.decisions_shared, 5, "{audit:?}");
    assert_eq!(audit.decisions_withheld, 4, "{audit:?}");
    assert_eq!(audit.delivered, 5, "{audit:?}");
    assert_eq!(audit.consents_recorded, 1);
    assert_eq!(audit.consents_withdrawn, 1);
    assert_eq!(audit.overrides_with_justification, 1);
    assert_eq!(audit.entries_with_nhs_number, 0);
    assert_eq!(audit.child_pseudonym.len(), 12);
    assert!(audit.entries >= f.response.audit_index + 3);

    // The printed output: every step's table, the received lists, the
    // delivery check and the audit summary.
    for heading in [
        "Agencies",
        "Information sharing agreements",
        "Consent",
        "Subscriptions",
        "Delivery check",
        "Audit log",
    ] {
        assert!(output.contains(heading), "{heading:?} in the output");
    }
    for s in &report.steps {
        check_table(&output, s);
        let text = section(&output, s.label);
        assert!(text.contains(&s.title), "title of ({})", s.label);
        assert!(text.contains("What each candidate received"));
        for dec in &s.response.decisions {
            if dec.decision == WITHHELD {
                assert!(
                    text.contains(&format!("nothing: withheld ({})", dec.reason)),
                    "({}) {}: {text}",
                    s.label,
                    dec.agency_id
                );
            }
        }
        for (_, del) in &s.deliveries {
            assert!(
                text.contains(&del.delivery_id),
                "delivery id in ({})",
                s.label
            );
            let redacted = del.redacted_fields.join(", ");
            assert!(
                text.contains(&format!("redacted: {redacted}")),
                "({}) redacted list: {text}",
                s.label
            );
        }
    }
    assert!(section(&output, "c").contains("withdraws consent consent-0001"));
    assert!(section(&output, "d").contains("Justification: \""));
    assert!(!output.contains("MISMATCH"));
    assert!(!output.contains("NOT THIS STEP'S EVENT"));
    assert!(output.contains("The broker has shut down"));
}
