//! Table tests, one table per operation family. Each case applies its
//! `given` commands (each committed), then `when` on a fresh draft, and
//! checks the reply, the audit entries written and the batch; a refused
//! case must leave the machine's digest and the draft untouched.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod delivery;
mod families;

use std::sync::Arc;

use caseshare_core::pb;
use caseshare_core::principal::Role;
use caseshare_core::time::Micros;
use prost::Message;

use crate::testing::{MemLookup, fresh_machine, principal};
use crate::{Batch, Command, Lookup, LookupError, Machine, Refusal, Reply};

/// What a case expects.
pub(super) enum Expect {
    /// Applied: the audit entry kinds written, in order, and a check of the
    /// reply and the batch.
    Applied(Vec<pb::EntryKind>, fn(&Reply, &Batch, &Machine) -> bool),
    /// Refused with this kind of refusal.
    Refused(fn(&Refusal) -> bool),
}

pub(super) struct Case {
    pub name: &'static str,
    pub given: Vec<Command>,
    pub when: Command,
    pub expect: Expect,
}

pub(super) const T0: i64 = 1_800_000_000_000_000;

/// Applies `given` (one commit each) and returns the machine and lookup.
pub(super) fn prepared(given: Vec<Command>) -> (Machine, MemLookup) {
    let mut m = fresh_machine();
    let mut store = MemLookup::default();
    for (i, c) in given.into_iter().enumerate() {
        let mut draft = m.begin();
        let _ = m.apply(&mut draft, Micros(T0 + i as i64), c, &store);
        let sealed = m.seal(draft);
        store.commit(&sealed.batch);
    }
    (m, store)
}

pub(super) fn run(table: Vec<Case>) {
    for case in table {
        let (mut m, store) = prepared(case.given);
        let before = m.digest();
        let mut draft = m.begin();
        let got = m.apply(&mut draft, Micros(T0 + 1_000_000), case.when, &store);
        match (case.expect, got) {
            (Expect::Applied(kinds, check), Ok(reply)) => {
                let written: Vec<pb::EntryKind> = draft
                    .batch
                    .audit
                    .iter()
                    .map(|b| pb::AuditEntry::decode(b.as_slice()).unwrap().kind())
                    .collect();
                assert_eq!(written, kinds, "{}: audit entries", case.name);
                let sealed = m.seal(draft);
                assert!(
                    check(&reply, &sealed.batch, &m),
                    "{}: reply or batch not as expected: {reply:?} {:?}",
                    case.name,
                    sealed.batch
                );
            }
            (Expect::Refused(kind), Err(refusal)) => {
                assert!(kind(&refusal), "{}: wrong refusal {refusal:?}", case.name);
                assert!(
                    draft.batch.is_empty(),
                    "{}: a refusal wrote {:?}",
                    case.name,
                    draft.batch
                );
                assert_eq!(
                    m.digest(),
                    before,
                    "{}: a refusal changed the state",
                    case.name
                );
            }
            (Expect::Applied(..), Err(e)) => panic!("{}: refused: {e:?}", case.name),
            (Expect::Refused(_), Ok(r)) => panic!("{}: applied: {r:?}", case.name),
        }
    }
}

/// Commands shared by the tables.
pub(super) mod given {
    use super::*;
    use crate::testing::agreement;

    pub fn admin() -> Arc<caseshare_core::principal::Principal> {
        principal(Role::Admin, "admin")
    }
    pub fn agency(name: &str) -> Arc<caseshare_core::principal::Principal> {
        principal(Role::Agency, name)
    }
    pub fn register(id: &str, kind: pb::AgencyKind) -> Command {
        Command::RegisterAgency {
            actor: admin(),
            request: pb::RegisterAgencyRequest {
                agency_id: id.into(),
                kind: kind as i32,
                display_name: id.into(),
            },
        }
    }
    pub fn put(id: &str, provider: &str, recipient: &str) -> Command {
        Command::PutAgreement {
            actor: admin(),
            agreement: agreement(id, provider, recipient, &["education.*"]),
        }
    }
    pub fn subscribe(agency_name: &str, name: &str) -> Command {
        Command::CreateSubscription {
            actor: agency(agency_name),
            subscription: pb::Subscription {
                name: name.into(),
                ..Default::default()
            },
            quota: 2,
        }
    }
    pub fn publish(id: &str) -> Command {
        Command::Publish {
            actor: agency("school-b"),
            request: pb::PublishRequest {
                event: Some(crate::testing::attendance(id)),
                ..Default::default()
            },
            event_type: "education.attendance_concern".into(),
            salt: [7; 16],
        }
    }
    pub fn consent(id: &str) -> Command {
        Command::RecordConsent {
            actor: agency("school-b"),
            consent: pb::ConsentRecord {
                consent_id: id.into(),
                nhs_number: crate::testing::CHILD.into(),
                recipients: vec!["la-social-care-c".into()],
                purposes: vec![pb::Purpose::EarlyHelp as i32],
                ..Default::default()
            },
            generated_id: false,
        }
    }
    /// Two registered agencies, an agreement between them and the
    /// recipient's subscription `main` (id 1).
    pub fn sharing() -> Vec<Command> {
        vec![
            register("school-b", pb::AgencyKind::Education),
            register("la-social-care-c", pb::AgencyKind::SocialCare),
            put("isa-1", "school-b", "la-social-care-c"),
            subscribe("la-social-care-c", "main"),
        ]
    }
}

/// A lookup that always fails: an operation that must read durable state
/// is refused and changes nothing.
pub(super) struct Failing;

impl Lookup for Failing {
    fn event_by_id(&self, _: &str, _: &str) -> Result<Option<crate::StoredEvent>, LookupError> {
        Err(LookupError("disk gone".into()))
    }
    fn deliveries_of(&self, _: &[u64], _: u64) -> Result<Vec<crate::DeliveryRecord>, LookupError> {
        Err(LookupError("disk gone".into()))
    }
}

#[test]
fn a_failed_lookup_refuses_and_changes_nothing() {
    let (mut m, _) = prepared(given::sharing());
    let before = m.digest();
    let mut draft = m.begin();
    let got = m.apply(&mut draft, Micros(T0 + 9), given::publish("x"), &Failing);
    assert!(matches!(got, Err(Refusal::Lookup(_))), "{got:?}");
    assert!(draft.batch.is_empty());
    assert_eq!(m.digest(), before);
}

#[test]
fn the_same_commands_give_the_same_state_writes_and_replies() {
    let run = || {
        let mut m = fresh_machine();
        let mut store = MemLookup::default();
        let mut out = Vec::new();
        for (i, chunk) in crate::testing::scenario().chunks(3).enumerate() {
            let mut draft = m.begin();
            for (now, c) in chunk.iter().cloned() {
                out.push(format!("{:?}", m.apply(&mut draft, now, c, &store)));
            }
            let sealed = m.seal(draft);
            store.commit(&sealed.batch);
            out.push(format!("batch {i}: {:?}", sealed.batch));
        }
        (m.digest(), out)
    };
    let (a, out_a) = run();
    let (b, out_b) = run();
    assert_eq!(a, b);
    assert_eq!(out_a, out_b);
    // The scenario exercises refusals too, and they are part of the record.
    assert!(out_a.iter().any(|r| r.starts_with("Err(AlreadyExists")));
    assert!(
        out_a
            .iter()
            .any(|r| r.starts_with("Err(FailedPrecondition"))
    );
}

#[test]
fn batch_boundaries_do_not_change_the_outcome() {
    let run = |size: usize| {
        let mut m = fresh_machine();
        let mut store = MemLookup::default();
        let mut audit = Vec::new();
        for chunk in crate::testing::scenario().chunks(size) {
            let mut draft = m.begin();
            for (now, c) in chunk.iter().cloned() {
                let _ = m.apply(&mut draft, now, c, &store);
            }
            let sealed = m.seal(draft);
            audit.extend(sealed.batch.audit.clone());
            store.commit(&sealed.batch);
        }
        (m.digest(), audit)
    };
    let one = run(1);
    assert_eq!(one, run(4));
    assert_eq!(one, run(100));
}

#[test]
fn normal_dependencies_hold_no_runtime_storage_network_or_randomness() {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "caseshare-state",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(tree.contains("caseshare-core"), "{tree}");
    for line in tree.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        for banned in [
            "tokio",
            "sled",
            "tonic",
            "rand",
            "getrandom",
            "hyper",
            "mio",
        ] {
            assert!(
                name != banned && !name.starts_with(&format!("{banned}-")),
                "caseshare-state depends on {name}"
            );
        }
    }
}

/// One batch means what its ops did in order: an ack just ahead of a seek
/// in the same batch does not survive the seek (the store deletes a batch's
/// records before writing its own), so the delivery is sent again.
#[test]
fn an_ack_then_a_seek_in_one_batch_leaves_the_delivery_owed() {
    use crate::testing::{CHILD, attendance};
    use crate::{AckIntent, DeliveryIntent, DeliveryState, EventContext, SubscriptionRef, Verdict};
    let sub = SubscriptionRef {
        id: 1,
        name: "main".into(),
    };
    let intent = DeliveryIntent {
        subscription_id: 1,
        subscription: "main".into(),
        recipient: "la-social-care-c".into(),
        sequence: 1,
        event_id: "att-1".into(),
        attempt: 1,
        delivery_id: "1.1.1".into(),
        context: EventContext::new(
            "school-b",
            "education.attendance_concern",
            &attendance("att-1"),
            None,
        ),
        notice: false,
        expires_at: None,
    };
    let mut given = given::sharing();
    given.push(given::publish("att-1"));
    given.push(Command::Deliver {
        intents: vec![intent.clone()],
    });
    let (mut m, mut store) = prepared(given);
    let actor = principal(Role::Agency, "la-social-care-c");
    let mut draft = m.begin();
    let now = Micros(T0 + 5_000_000);
    let ack = Command::Ack {
        actor: actor.clone(),
        subscription: sub.clone(),
        acks: vec![AckIntent {
            sequence: 1,
            event_id: "att-1".into(),
            delivery_id: "1.1.1".into(),
            attempts: 1,
            delivered_at: Micros(T0),
            nhs_number: CHILD.into(),
        }],
        floor: Some(2),
    };
    m.apply(&mut draft, now, ack, &store).unwrap();
    let seek = Command::Seek {
        actor,
        subscription: sub,
        target: 1,
    };
    m.apply(&mut draft, now, seek, &store).unwrap();
    let sealed = m.seal(draft);
    assert!(sealed.batch.deliveries.is_empty(), "{:?}", sealed.batch);
    store.commit(&sealed.batch);
    let mut draft = m.begin();
    let reply = m
        .apply(
            &mut draft,
            now,
            Command::Deliver {
                intents: vec![DeliveryIntent {
                    attempt: 1,
                    ..intent
                }],
            },
            &store,
        )
        .unwrap();
    assert!(
        matches!(&reply, Reply::Verdicts(v) if matches!(v[0], Verdict::Shared(_))),
        "{reply:?}"
    );
    assert_eq!(draft.batch.deliveries[0].state(), DeliveryState::Delivered);
}

#[test]
fn a_publish_repeated_in_one_draft_answers_the_first_and_another_agencys_id_does_not() {
    let mut given = given::sharing();
    given.push(given::register("nhs-trust-a", pb::AgencyKind::Health));
    let (mut m, store) = prepared(given);
    let mut draft = m.begin();
    let now = Micros(T0 + 1_000_000);
    let sequence = |r: Reply| match r {
        Reply::Published(p) => (p.sequence, p.duplicate),
        other => panic!("not a publish reply: {other:?}"),
    };
    let first = m.apply(&mut draft, now, given::publish("att-1"), &store);
    let again = m.apply(&mut draft, now, given::publish("att-1"), &store);
    let other = m.apply(&mut draft, now, given::publish("att-2"), &store);
    assert_eq!(sequence(first.unwrap()), (1, false));
    assert_eq!(
        sequence(again.unwrap()),
        (1, true),
        "answered from the draft"
    );
    assert_eq!(sequence(other.unwrap()), (2, false));
    // The same event id from another agency is another event.
    let mut from_health = given::publish("att-1");
    if let Command::Publish { actor, .. } = &mut from_health {
        *actor = given::agency("nhs-trust-a");
    }
    let health = m.apply(&mut draft, now, from_health, &store);
    assert_eq!(sequence(health.unwrap()), (3, false));
    let sealed = m.seal(draft);
    assert_eq!(sealed.batch.events.len(), 3);
    assert!(sealed.event("nhs-trust-a", "att-1").is_some());
    assert!(sealed.event("school-b", "att-1").is_some());
    assert!(sealed.event("school-b", "att-2").is_some());
    assert!(sealed.event("school-b", "att-3").is_none());
}
