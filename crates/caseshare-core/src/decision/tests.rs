//! Table tests of the sharing decision: every rule, every reason, the
//! validity boundaries, `kind:` selectors, patterns, sensitivity and
//! overrides.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use prost_types::Timestamp;

const T0: i64 = 1_800_000_000; // seconds; "now" in most cases

fn ts(s: i64) -> Option<Timestamp> {
    Some(Timestamp {
        seconds: s,
        nanos: 0,
    })
}

fn now(s: i64) -> Micros {
    Micros(s * Micros::SECOND)
}

fn agreement(id: &str, provider: &str, recipient: &str) -> pb::Agreement {
    pb::Agreement {
        agreement_id: id.into(),
        provider: provider.into(),
        recipient: recipient.into(),
        purposes: vec![Purpose::EarlyHelp as i32, Purpose::Safeguarding as i32],
        event_types: vec!["education.*".into(), "health.*".into()],
        lawful_basis: LawfulBasis::PublicTask as i32,
        ..Default::default()
    }
}

fn consent(id: &str, recipients: &[&str]) -> pb::ConsentRecord {
    pb::ConsentRecord {
        consent_id: id.into(),
        nhs_number: "9434765919".into(),
        given_by: pb::GivenBy::Parent as i32,
        purposes: vec![Purpose::EarlyHelp as i32],
        recipients: recipients.iter().map(|s| s.to_string()).collect(),
        valid_from: ts(T0 - 1000),
        ..Default::default()
    }
}

fn event(event_type: &'static str) -> EventFacts<'static> {
    EventFacts {
        provider: "school-b",
        provider_kind: AgencyKind::Education,
        event_type,
        purpose: Purpose::EarlyHelp,
        sensitivity: Sensitivity::Standard,
    }
}

const SOCIAL: Recipient<'static> = Recipient {
    agency_id: "la-social-care-c",
    kind: AgencyKind::SocialCare,
};

struct Case {
    name: &'static str,
    event: EventFacts<'static>,
    recipient: Recipient<'static>,
    agreements: Vec<pb::Agreement>,
    consents: Vec<pb::ConsentRecord>,
    override_: bool,
    at: i64,
    want: Reason,
    want_agreement: &'static str,
    want_consent: &'static str,
}

fn base(name: &'static str, want: Reason) -> Case {
    Case {
        name,
        event: event("education.attendance_concern"),
        recipient: SOCIAL,
        agreements: vec![agreement("isa-1", "school-b", "la-social-care-c")],
        consents: vec![],
        override_: false,
        at: T0,
        want,
        want_agreement: "isa-1",
        want_consent: "",
    }
}

fn requiring_consent(mut a: pb::Agreement) -> pb::Agreement {
    a.requires_consent = true;
    a
}

fn cases() -> Vec<Case> {
    let ov = || pb::SafeguardingOverride {
        legal_basis: pb::LegalBasis::ChildrenAct1989S47 as i32,
        justification: "Bruising seen by two staff; child afraid to go home.".into(),
        authorised_by: "DSL J. Smith".into(),
    };
    let _ = ov;
    let mut v = vec![];
    v.push(base("agreement by id shares", Reason::Agreement));
    v.push(Case {
        agreements: vec![],
        want_agreement: "",
        ..base("no agreements at all", Reason::NoAgreement)
    });
    v.push(Case {
        agreements: vec![agreement("isa-1", "school-b", "kind:social_care")],
        ..base("recipient by kind", Reason::Agreement)
    });
    v.push(Case {
        agreements: vec![agreement("isa-1", "kind:education", "la-social-care-c")],
        ..base("provider by kind", Reason::Agreement)
    });
    v.push(Case {
        agreements: vec![agreement("isa-1", "kind:health", "la-social-care-c")],
        want_agreement: "",
        ..base("provider kind mismatch", Reason::NoAgreement)
    });
    v.push(Case {
        agreements: vec![agreement("isa-1", "school-b", "kind:health")],
        want_agreement: "",
        ..base("recipient kind mismatch", Reason::NoAgreement)
    });
    v.push(Case {
        agreements: vec![agreement("isa-1", "school-b", "nhs-trust-a")],
        want_agreement: "",
        ..base("agreement names another recipient", Reason::NoAgreement)
    });
    v.push(Case {
        agreements: vec![agreement("isa-1", "la-social-care-c", "school-b")],
        want_agreement: "",
        ..base("agreement in the other direction", Reason::NoAgreement)
    });
    v.push(Case {
        event: EventFacts {
            purpose: Purpose::HealthCare,
            ..event("education.attendance_concern")
        },
        want_agreement: "",
        ..base("purpose not covered", Reason::NoAgreement)
    });
    v.push(Case {
        event: event("social_care.referral_accepted"),
        want_agreement: "",
        ..base("event type outside the patterns", Reason::NoAgreement)
    });
    v.push(Case {
        agreements: vec![{
            let mut a = agreement("isa-1", "school-b", "la-social-care-c");
            a.event_types = vec!["education.attendance_concern".into()];
            a
        }],
        ..base("exact event type", Reason::Agreement)
    });
    v.push(Case {
        agreements: vec![{
            let mut a = agreement("isa-1", "school-b", "la-social-care-c");
            a.event_types = vec!["education.exclusion_recorded".into()];
            a
        }],
        want_agreement: "",
        ..base("different exact event type", Reason::NoAgreement)
    });
    v.push(Case {
        agreements: vec![{
            let mut a = agreement("isa-1", "school-b", "la-social-care-c");
            a.event_types = vec!["*".into()];
            a
        }],
        ..base("star pattern", Reason::Agreement)
    });
    v.push(Case {
        agreements: vec![{
            let mut a = agreement("isa-1", "school-b", "la-social-care-c");
            a.valid_from = ts(T0);
            a
        }],
        ..base("exactly at valid_from is active", Reason::Agreement)
    });
    v.push(Case {
        agreements: vec![{
            let mut a = agreement("isa-1", "school-b", "la-social-care-c");
            a.valid_from = ts(T0 + 1);
            a
        }],
        ..base("before valid_from", Reason::NoAgreement)
    });
    v.push(Case {
        agreements: vec![{
            let mut a = agreement("isa-1", "school-b", "la-social-care-c");
            a.valid_until = ts(T0);
            a
        }],
        ..base("exactly at valid_until has ended", Reason::AgreementEnded)
    });
    v.push(Case {
        agreements: vec![{
            let mut a = agreement("isa-1", "school-b", "la-social-care-c");
            a.valid_until = ts(T0 + 1);
            a
        }],
        ..base("just before valid_until", Reason::Agreement)
    });
    v.push(Case {
        agreements: vec![{
            let mut a = agreement("isa-1", "school-b", "la-social-care-c");
            a.ended_at = ts(T0 - 5);
            a
        }],
        ..base("ended with EndAgreement", Reason::AgreementEnded)
    });
    v.push(Case {
        agreements: vec![
            {
                let mut a = agreement("isa-1", "school-b", "la-social-care-c");
                a.ended_at = ts(T0 - 5);
                a
            },
            agreement("isa-2", "school-b", "kind:social_care"),
        ],
        want_agreement: "isa-2",
        ..base("an ended agreement and an active one", Reason::Agreement)
    });
    v.push(Case {
        agreements: vec![requiring_consent(agreement(
            "isa-1",
            "school-b",
            "la-social-care-c",
        ))],
        ..base("requires consent, none recorded", Reason::NoConsent)
    });
    v.push(Case {
        agreements: vec![requiring_consent(agreement(
            "isa-1",
            "school-b",
            "la-social-care-c",
        ))],
        consents: vec![consent("c-1", &["la-social-care-c"])],
        want_consent: "c-1",
        ..base("consent names the recipient", Reason::Consent)
    });
    v.push(Case {
        agreements: vec![requiring_consent(agreement(
            "isa-1",
            "school-b",
            "la-social-care-c",
        ))],
        consents: vec![consent("c-1", &["kind:social_care"])],
        want_consent: "c-1",
        ..base("consent names the recipient's kind", Reason::Consent)
    });
    v.push(Case {
        agreements: vec![requiring_consent(agreement(
            "isa-1",
            "school-b",
            "la-social-care-c",
        ))],
        consents: vec![consent("c-1", &["kind:health"])],
        ..base("consent for another kind", Reason::NoConsent)
    });
    v.push(Case {
        agreements: vec![requiring_consent(agreement(
            "isa-1",
            "school-b",
            "la-social-care-c",
        ))],
        consents: vec![{
            let mut c = consent("c-1", &["la-social-care-c"]);
            c.purposes = vec![Purpose::HealthCare as i32];
            c
        }],
        ..base("consent for another purpose", Reason::NoConsent)
    });
    v.push(Case {
        agreements: vec![requiring_consent(agreement(
            "isa-1",
            "school-b",
            "la-social-care-c",
        ))],
        consents: vec![{
            let mut c = consent("c-1", &["la-social-care-c"]);
            c.event_types = vec!["health.*".into()];
            c
        }],
        ..base("consent for other event types", Reason::NoConsent)
    });
    v.push(Case {
        agreements: vec![requiring_consent(agreement(
            "isa-1",
            "school-b",
            "la-social-care-c",
        ))],
        consents: vec![{
            let mut c = consent("c-1", &["la-social-care-c"]);
            c.event_types = vec!["education.*".into()];
            c
        }],
        want_consent: "c-1",
        ..base("consent by event-type prefix", Reason::Consent)
    });
    v.push(Case {
        agreements: vec![requiring_consent(agreement(
            "isa-1",
            "school-b",
            "la-social-care-c",
        ))],
        consents: vec![{
            let mut c = consent("c-1", &["la-social-care-c"]);
            c.withdrawn_at = ts(T0 - 1);
            c
        }],
        ..base("consent withdrawn", Reason::ConsentWithdrawn)
    });
    v.push(Case {
        agreements: vec![requiring_consent(agreement(
            "isa-1",
            "school-b",
            "la-social-care-c",
        ))],
        consents: vec![{
            let mut c = consent("c-1", &["la-social-care-c"]);
            c.withdrawn_at = ts(T0 + 10);
            c
        }],
        want_consent: "c-1",
        ..base(
            "withdrawal recorded for later has not happened yet",
            Reason::Consent,
        )
    });
    v.push(Case {
        agreements: vec![requiring_consent(agreement(
            "isa-1",
            "school-b",
            "la-social-care-c",
        ))],
        consents: vec![
            {
                let mut c = consent("c-1", &["la-social-care-c"]);
                c.withdrawn_at = ts(T0 - 1);
                c
            },
            consent("c-2", &["kind:social_care"]),
        ],
        want_consent: "c-2",
        ..base("overlapping consents, one withdrawn", Reason::Consent)
    });
    v.push(Case {
        agreements: vec![requiring_consent(agreement(
            "isa-1",
            "school-b",
            "la-social-care-c",
        ))],
        consents: vec![{
            let mut c = consent("c-1", &["la-social-care-c"]);
            c.valid_from = ts(T0);
            c
        }],
        want_consent: "c-1",
        ..base("consent exactly at valid_from", Reason::Consent)
    });
    v.push(Case {
        agreements: vec![requiring_consent(agreement(
            "isa-1",
            "school-b",
            "la-social-care-c",
        ))],
        consents: vec![{
            let mut c = consent("c-1", &["la-social-care-c"]);
            c.valid_until = ts(T0);
            c
        }],
        ..base("consent exactly at valid_until", Reason::NoConsent)
    });
    v.push(Case {
        agreements: vec![requiring_consent(agreement(
            "isa-1",
            "school-b",
            "la-social-care-c",
        ))],
        consents: vec![{
            let mut c = consent("c-1", &["la-social-care-c"]);
            c.valid_from = ts(T0 + 1);
            c
        }],
        ..base("consent not yet valid", Reason::NoConsent)
    });
    v.push(Case {
        event: EventFacts {
            purpose: Purpose::Safeguarding,
            ..event("education.attendance_concern")
        },
        agreements: vec![requiring_consent(agreement(
            "isa-1",
            "school-b",
            "la-social-care-c",
        ))],
        override_: true,
        ..base("override replaces missing consent", Reason::Override)
    });
    v.push(Case {
        agreements: vec![requiring_consent(agreement(
            "isa-1",
            "school-b",
            "la-social-care-c",
        ))],
        override_: true,
        ..base("override ignored outside SAFEGUARDING", Reason::NoConsent)
    });
    v.push(Case {
        event: EventFacts {
            purpose: Purpose::Safeguarding,
            ..event("education.attendance_concern")
        },
        agreements: vec![],
        override_: true,
        want_agreement: "",
        ..base(
            "override does not replace an agreement",
            Reason::NoAgreement,
        )
    });
    v.push(Case {
        event: EventFacts {
            sensitivity: Sensitivity::Sensitive,
            ..event("health.mental_health_referral")
        },
        ..base(
            "sensitive event without consent, agreement needs none",
            Reason::SensitiveNeedsExplicitConsent,
        )
    });
    v.push(Case {
        event: EventFacts {
            sensitivity: Sensitivity::Sensitive,
            ..event("health.mental_health_referral")
        },
        consents: vec![{
            let mut c = consent("c-1", &["la-social-care-c"]);
            c.event_types = vec!["health.*".into()];
            c
        }],
        ..base(
            "sensitive event, consent only by prefix",
            Reason::SensitiveNeedsExplicitConsent,
        )
    });
    v.push(Case {
        event: EventFacts {
            sensitivity: Sensitivity::Sensitive,
            ..event("health.mental_health_referral")
        },
        consents: vec![consent("c-1", &["la-social-care-c"])],
        ..base(
            "sensitive event, consent for all standard types",
            Reason::SensitiveNeedsExplicitConsent,
        )
    });
    v.push(Case {
        event: EventFacts {
            sensitivity: Sensitivity::Sensitive,
            ..event("health.mental_health_referral")
        },
        consents: vec![{
            let mut c = consent("c-1", &["la-social-care-c"]);
            c.event_types = vec!["health.mental_health_referral".into()];
            c
        }],
        want_consent: "c-1",
        ..base("sensitive event with explicit consent", Reason::Consent)
    });
    v.push(Case {
        event: EventFacts {
            sensitivity: Sensitivity::Sensitive,
            purpose: Purpose::Safeguarding,
            ..event("health.mental_health_referral")
        },
        override_: true,
        ..base("sensitive event under override", Reason::Override)
    });
    v
}

#[test]
fn decision_table() {
    let ov = pb::SafeguardingOverride {
        legal_basis: pb::LegalBasis::ChildrenAct1989S47 as i32,
        justification: "Bruising seen by two staff; child afraid to go home.".into(),
        authorised_by: "DSL J. Smith".into(),
    };
    let all = cases();
    assert!(all.len() >= 30, "{} cases", all.len());
    for c in &all {
        let o = decide(
            &c.event,
            &c.recipient,
            &c.agreements,
            &c.consents,
            c.override_.then_some(&ov),
            now(c.at),
        );
        assert_eq!(o.reason, c.want, "{}", c.name);
        assert_eq!(o.agreement_id, c.want_agreement, "{}: agreement", c.name);
        assert_eq!(o.consent_id, c.want_consent, "{}: consent", c.name);
        assert_eq!(
            o.to_proto("x").override_used,
            c.want == Reason::Override,
            "{}",
            c.name
        );
        assert_eq!(
            o.is_shared(),
            o.decision() == Decision::Shared,
            "{}",
            c.name
        );
        if o.is_shared() {
            assert_ne!(
                o.lawful_basis,
                LawfulBasis::Unspecified,
                "{}: a share records its basis",
                c.name
            );
        }
    }
}

#[test]
fn index_finds_only_applicable_pairs() {
    let idx = AgreementIndex::new([
        agreement("a", "school-b", "la-social-care-c"),
        agreement("b", "kind:education", "kind:social_care"),
        agreement("c", "school-b", "nhs-trust-a"),
        agreement("d", "nhs-trust-a", "la-social-care-c"),
    ]);
    let mut ids: Vec<_> = idx
        .between(
            ("school-b", AgencyKind::Education),
            ("la-social-care-c", AgencyKind::SocialCare),
        )
        .map(|a| a.agreement_id.as_str())
        .collect();
    ids.sort();
    assert_eq!(ids, ["a", "b"]);
    let mut idx = idx;
    idx.put(agreement("a", "school-b", "nhs-trust-a"));
    assert_eq!(idx.len(), 4);
    assert_eq!(
        idx.between(
            ("school-b", AgencyKind::Education),
            ("nhs-trust-a", AgencyKind::Health)
        )
        .count(),
        2
    );
}
