//! Tables for the configuration, consent, event and subscription families.

use caseshare_core::pb;

use super::given::*;
use super::{Case, Expect, run};
use crate::{Command, Refusal, Reply, SubscriptionRef};

use pb::EntryKind as K;

#[test]
fn configuration() {
    run(vec![
        Case {
            name: "register an agency",
            given: vec![],
            when: register("school-b", pb::AgencyKind::Education),
            expect: Expect::Applied(vec![K::AgencyRegistered], |r, b, m| {
                matches!(r, Reply::Agency(a) if a.agency_id == "school-b" && a.registered_at.is_some())
                    && b.agencies.len() == 1
                    && m.read().agencies.contains_key("school-b")
            }),
        },
        Case {
            name: "register twice",
            given: vec![register("school-b", pb::AgencyKind::Education)],
            when: register("school-b", pb::AgencyKind::Health),
            expect: Expect::Refused(|e| matches!(e, Refusal::AlreadyExists(_))),
        },
        Case {
            name: "put an agreement between registered agencies",
            given: vec![
                register("school-b", pb::AgencyKind::Education),
                register("la-social-care-c", pb::AgencyKind::SocialCare),
            ],
            when: put("isa-1", "school-b", "la-social-care-c"),
            expect: Expect::Applied(vec![K::AgreementChanged], |r, b, _| {
                matches!(r, Reply::Agreement(a) if a.valid_from.is_some() && a.ended_at.is_none())
                    && b.agreements.len() == 1
            }),
        },
        Case {
            name: "an agreement naming a kind needs no registration",
            given: vec![register("school-b", pb::AgencyKind::Education)],
            when: put("isa-k", "school-b", "kind:social_care"),
            expect: Expect::Applied(vec![K::AgreementChanged], |_, b, _| b.agreements.len() == 1),
        },
        Case {
            name: "an agreement with an unregistered recipient",
            given: vec![register("school-b", pb::AgencyKind::Education)],
            when: put("isa-1", "school-b", "nobody"),
            expect: Expect::Refused(
                |e| matches!(e, Refusal::FailedPrecondition(m) if m.starts_with("recipient")),
            ),
        },
        Case {
            name: "end an agreement",
            given: sharing(),
            when: Command::EndAgreement {
                actor: admin(),
                request: pb::EndAgreementRequest {
                    agreement_id: "isa-1".into(),
                    reason: "review".into(),
                },
            },
            expect: Expect::Applied(vec![K::AgreementChanged], |r, _, m| {
                matches!(r, Reply::Agreement(a) if a.ended_at.is_some() && a.end_reason == "review")
                    && m.read()
                        .agreements
                        .get("isa-1")
                        .is_some_and(|a| a.ended_at.is_some())
            }),
        },
        Case {
            name: "end an unknown agreement",
            given: vec![],
            when: Command::EndAgreement {
                actor: admin(),
                request: pb::EndAgreementRequest {
                    agreement_id: "isa-9".into(),
                    reason: String::new(),
                },
            },
            expect: Expect::Refused(|e| matches!(e, Refusal::NotFound(_))),
        },
    ]);
}

#[test]
fn consents() {
    let withdraw = |by: &str| Command::WithdrawConsent {
        actor: agency(by),
        request: pb::WithdrawConsentRequest {
            consent_id: "consent-1".into(),
            reason: "family asked".into(),
        },
    };
    run(vec![
        Case {
            name: "record a consent",
            given: sharing(),
            when: consent("consent-1"),
            expect: Expect::Applied(vec![K::ConsentRecorded], |r, b, _| {
                let Reply::Consent(c) = r else { return false };
                let entry =
                    <pb::AuditEntry as prost::Message>::decode(b.audit[0].as_slice()).unwrap();
                c.recorded_by == "school-b"
                    && c.valid_from == c.recorded_at
                    // The log names the child by pseudonym only.
                    && entry.child_pseudonym.len() == 32
                    && !format!("{entry:?}").contains(crate::testing::CHILD)
            }),
        },
        Case {
            name: "record a consent id twice",
            given: vec![consent("consent-1")],
            when: consent("consent-1"),
            expect: Expect::Refused(|e| matches!(e, Refusal::AlreadyExists(_))),
        },
        Case {
            name: "record a consent without an id",
            given: vec![],
            when: consent(""),
            expect: Expect::Refused(
                |e| matches!(e, Refusal::Invalid(v) if v.has("consent.consent_id")),
            ),
        },
        Case {
            name: "withdraw by a named recipient",
            given: vec![consent("consent-1")],
            when: withdraw("la-social-care-c"),
            expect: Expect::Applied(
                vec![K::ConsentWithdrawn],
                |r, _, _| matches!(r, Reply::Consent(c) if c.withdrawn_at.is_some()),
            ),
        },
        Case {
            name: "withdraw twice answers the first withdrawal, writes nothing",
            given: vec![consent("consent-1"), withdraw("school-b")],
            when: withdraw("school-b"),
            expect: Expect::Applied(vec![], |r, b, _| {
                matches!(r, Reply::Consent(c) if c.withdrawn_at.is_some()) && b.is_empty()
            }),
        },
        Case {
            name: "withdraw by a stranger",
            given: vec![consent("consent-1")],
            when: withdraw("gp-a"),
            expect: Expect::Refused(|e| matches!(e, Refusal::PermissionDenied(_))),
        },
        Case {
            name: "withdraw an unknown consent",
            given: vec![],
            when: withdraw("school-b"),
            expect: Expect::Refused(|e| matches!(e, Refusal::NotFound(_))),
        },
    ]);
}

#[test]
fn events() {
    let retract = |id: &str| Command::Retract {
        actor: agency("school-b"),
        request: pb::RetractEventRequest {
            event_id: id.into(),
            reason: "sent in error".into(),
        },
    };
    let mut correction = crate::testing::attendance("att-2");
    correction.corrects_event_id = "att-1".into();
    let with = |mut g: Vec<Command>, more: Vec<Command>| {
        g.extend(more);
        g
    };
    run(vec![
        Case {
            name: "publish: one decision per candidate",
            given: sharing(),
            when: publish("att-1"),
            expect: Expect::Applied(vec![K::EventPublished, K::ShareDecided], |r, b, _| {
                matches!(r, Reply::Published(p) if p.sequence == 1 && !p.duplicate
                    && p.decisions.len() == 1 && p.decisions[0].decision == pb::Decision::Shared as i32)
                    && b.events.len() == 1
                    && b.next_sequence == Some(2)
            }),
        },
        Case {
            name: "publish without subscribers decides nothing",
            given: vec![register("school-b", pb::AgencyKind::Education)],
            when: publish("att-1"),
            expect: Expect::Applied(
                vec![K::EventPublished],
                |r, _, _| matches!(r, Reply::Published(p) if p.decisions.is_empty()),
            ),
        },
        Case {
            name: "publish again with the same id answers the first",
            given: with(sharing(), vec![publish("att-1")]),
            when: publish("att-1"),
            expect: Expect::Applied(vec![], |r, b, _| {
                matches!(r, Reply::Published(p) if p.duplicate && p.sequence == 1) && b.is_empty()
            }),
        },
        Case {
            name: "publish by an unregistered agency",
            given: vec![],
            when: publish("att-1"),
            expect: Expect::Refused(|e| matches!(e, Refusal::FailedPrecondition(_))),
        },
        Case {
            name: "a correction of an undelivered event stops the original, no notice",
            given: with(sharing(), vec![publish("att-1")]),
            when: Command::Publish {
                actor: agency("school-b"),
                request: pb::PublishRequest {
                    event: Some(correction),
                    ..Default::default()
                },
                event_type: "education.attendance_concern".into(),
                salt: [8; 16],
            },
            expect: Expect::Applied(vec![K::EventPublished, K::ShareDecided], |_, b, m| {
                b.retracted.len() == 1 && b.events.len() == 1 && m.read().retracted.contains_key(&1)
            }),
        },
        Case {
            name: "retract",
            given: with(sharing(), vec![publish("att-1")]),
            when: retract("att-1"),
            expect: Expect::Applied(vec![K::EventRetracted], |r, b, _| {
                matches!(r, Reply::Retracted(x) if x.notices_sent == 0 && x.deliveries_stopped == 1)
                    && b.retracted == vec![(1, "retracted: sent in error".to_string())]
            }),
        },
        Case {
            name: "retract twice",
            given: with(sharing(), vec![publish("att-1"), retract("att-1")]),
            when: retract("att-1"),
            expect: Expect::Refused(|e| matches!(e, Refusal::FailedPrecondition(_))),
        },
        Case {
            name: "retract an unknown event",
            given: sharing(),
            when: retract("att-9"),
            expect: Expect::Refused(|e| matches!(e, Refusal::NotFound(_))),
        },
        Case {
            name: "expunge forgets the retraction",
            given: with(sharing(), vec![publish("att-1"), retract("att-1")]),
            when: Command::Expunge {
                events: vec![(1, "school-b".into(), "att-1".into())],
            },
            expect: Expect::Applied(vec![], |_, b, m| {
                b.deleted_events.len() == 1 && m.read().retracted.is_empty()
            }),
        },
    ]);
}

#[test]
fn subscriptions() {
    let main = SubscriptionRef {
        id: 1,
        name: "main".into(),
    };
    run(vec![
        Case {
            name: "create starts at the next sequence",
            given: vec![
                register("la-social-care-c", pb::AgencyKind::SocialCare),
                register("school-b", pb::AgencyKind::Education),
                publish("att-1"),
            ],
            when: subscribe("la-social-care-c", "main"),
            expect: Expect::Applied(vec![K::SubscriptionChanged], |r, b, _| {
                matches!(r, Reply::Subscription(s) if s.id == 1
                    && s.subscription.as_ref().is_some_and(|x| x.start_sequence == 2))
                    && b.floors == vec![(1, 2)]
                    && b.next_subscription_id == Some(2)
            }),
        },
        Case {
            name: "create a name twice",
            given: sharing(),
            when: subscribe("la-social-care-c", "main"),
            expect: Expect::Refused(|e| matches!(e, Refusal::AlreadyExists(_))),
        },
        Case {
            name: "create past the quota (2)",
            given: {
                let mut g = sharing();
                g.push(subscribe("la-social-care-c", "second"));
                g
            },
            when: subscribe("la-social-care-c", "third"),
            expect: Expect::Refused(|e| matches!(e, Refusal::ResourceExhausted(_))),
        },
        Case {
            name: "create at the quota (2)",
            given: sharing(),
            when: subscribe("la-social-care-c", "second"),
            expect: Expect::Applied(vec![K::SubscriptionChanged], |_, _, m| {
                m.read().subscriptions.len() == 2
            }),
        },
        Case {
            name: "create for an unregistered agency",
            given: vec![],
            when: subscribe("la-social-care-c", "main"),
            expect: Expect::Refused(|e| matches!(e, Refusal::FailedPrecondition(_))),
        },
        Case {
            name: "delete",
            given: sharing(),
            when: Command::DeleteSubscription {
                actor: agency("la-social-care-c"),
                name: "main".into(),
            },
            expect: Expect::Applied(vec![K::SubscriptionChanged], |_, b, m| {
                b.deleted_subscriptions == vec![1] && m.read().subscriptions.is_empty()
            }),
        },
        Case {
            name: "delete another agency's subscription",
            given: sharing(),
            when: Command::DeleteSubscription {
                actor: agency("school-b"),
                name: "main".into(),
            },
            expect: Expect::Refused(|e| matches!(e, Refusal::NotFound(_))),
        },
        Case {
            name: "seek drops later records and moves the floor",
            given: sharing(),
            when: Command::Seek {
                actor: agency("la-social-care-c"),
                subscription: main.clone(),
                target: 5,
            },
            expect: Expect::Applied(vec![K::SubscriptionChanged], |_, b, _| {
                b.deleted_deliveries_from == vec![(1, 5)] && b.floors == vec![(1, 5)]
            }),
        },
        Case {
            name: "replay puts dead letters back",
            given: sharing(),
            when: Command::Replay {
                actor: agency("la-social-care-c"),
                subscription: main,
                sequences: vec![1, 2],
                floor: Some(1),
            },
            expect: Expect::Applied(vec![K::SubscriptionChanged], |_, b, _| {
                b.deliveries.len() == 2 && b.floors == vec![(1, 1)]
            }),
        },
        Case {
            name: "record an audit entry",
            given: vec![],
            when: Command::Record {
                entry: pb::AuditEntry {
                    kind: pb::EntryKind::AuditAccessed as i32,
                    ..Default::default()
                },
            },
            expect: Expect::Applied(vec![K::AuditAccessed], |r, _, _| {
                matches!(r, Reply::Recorded(0))
            }),
        },
    ]);
}
