//! Tests of the journal encoding: every command variant round-trips with
//! every field set, the recorded scenario round-trips and a replica that
//! replays it from the decoded bytes reaches the leader's state, audit
//! leaves and replies, and a batch applies only where it starts. Damaged
//! messages and the bounds are in `tests/corrupt.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod corrupt;

use std::collections::BTreeSet;
use std::sync::Arc;

use caseshare_core::pb;
use caseshare_core::principal::Role;
use prost_types::{Duration, Timestamp};

use super::*;
use crate::command::{AckIntent, DeliveryIntent, SubscriptionRef};
use crate::state::EventContext;
use crate::testing::{CHILD, MemLookup, agreement, attendance, fresh_machine, principal, scenario};
use crate::{DeliveryRecord, LookupError, StoredEvent};

const T0: i64 = 1_800_000_000_000_000;

/// The variant's name; exhaustive, so a new variant does not compile until
/// it is named here (and then the table below misses it).
fn variant(c: &Command) -> &'static str {
    match c {
        Command::RegisterAgency { .. } => "RegisterAgency",
        Command::PutAgreement { .. } => "PutAgreement",
        Command::EndAgreement { .. } => "EndAgreement",
        Command::RecordConsent { .. } => "RecordConsent",
        Command::WithdrawConsent { .. } => "WithdrawConsent",
        Command::Publish { .. } => "Publish",
        Command::Retract { .. } => "Retract",
        Command::Expunge { .. } => "Expunge",
        Command::CreateSubscription { .. } => "CreateSubscription",
        Command::DeleteSubscription { .. } => "DeleteSubscription",
        Command::Seek { .. } => "Seek",
        Command::Replay { .. } => "Replay",
        Command::PurgeDeliveries { .. } => "PurgeDeliveries",
        Command::Deliver { .. } => "Deliver",
        Command::Ack { .. } => "Ack",
        Command::DeadLetter { .. } => "DeadLetter",
        Command::Record { .. } => "Record",
        Command::AuthDenied { .. } => "AuthDenied",
    }
}

const VARIANTS: usize = 18;

fn ts(seconds: i64) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos: 7 })
}

fn safeguarding() -> pb::SafeguardingOverride {
    pb::SafeguardingOverride {
        legal_basis: 2,
        justification: "risk of significant harm".into(),
        authorised_by: "dsl@school-b".into(),
    }
}

fn sub_ref() -> SubscriptionRef {
    SubscriptionRef {
        id: 42,
        name: "urgent".into(),
    }
}

fn ack_intent(sequence: u64) -> AckIntent {
    AckIntent {
        sequence,
        event_id: format!("ev-{sequence}"),
        delivery_id: format!("42.{sequence}.3"),
        attempts: 3,
        delivered_at: Micros(T0 - 5),
        nhs_number: CHILD.into(),
    }
}

fn intent(sequence: u64, notice: bool) -> DeliveryIntent {
    DeliveryIntent {
        subscription_id: 42,
        subscription: "urgent".into(),
        recipient: "la-social-care-c".into(),
        sequence,
        event_id: format!("ev-{sequence}"),
        attempt: 2,
        delivery_id: format!("42.{sequence}.2"),
        context: EventContext {
            provider: "school-b".into(),
            event_type: "education.attendance_concern".into(),
            purpose: pb::Purpose::EarlyHelp,
            sensitivity: pb::Sensitivity::Sensitive,
            nhs_number: CHILD.into(),
            safeguarding_override: (!notice).then(safeguarding),
        },
        notice,
        expires_at: notice.then_some(Micros(T0 + 86_400_000_000)),
    }
}

fn audit_entry(count: u64) -> pb::AuditEntry {
    pb::AuditEntry {
        index: 0,
        kind: pb::EntryKind::AuditAccessed as i32,
        actor: "spiffe://caseshare.local/auditor/ico".into(),
        child_pseudonym: vec![1, 2, 3],
        event_id: "ev-1".into(),
        sequence: 9,
        reason: "subject access request".into(),
        safeguarding_override: Some(safeguarding()),
        rpc: "/caseshare.v1.Audit/Query".into(),
        purpose: pb::Purpose::EarlyHelp as i32,
        subject: CHILD.into(),
        override_used: true,
        count,
        ..Default::default()
    }
}

/// One command of every variant, every field away from its default.
pub(super) fn one_of_each() -> Vec<Command> {
    let admin = principal(Role::Admin, "admin");
    let school = principal(Role::Agency, "school-b");
    let auditor = principal(Role::Auditor, "ico");
    let mut event = attendance("att-9");
    event.corrects_event_id = "att-1".into();
    let mut ended = agreement("isa-2", "school-b", "la-social-care-c", &["education.*"]);
    ended.valid_from = ts(1_700_000_000);
    ended.end_reason = "superseded".into();
    vec![
        Command::RegisterAgency {
            actor: Arc::clone(&admin),
            request: pb::RegisterAgencyRequest {
                agency_id: "school-b".into(),
                kind: pb::AgencyKind::Education as i32,
                display_name: "School B".into(),
            },
        },
        Command::PutAgreement {
            actor: Arc::clone(&admin),
            agreement: ended,
        },
        Command::EndAgreement {
            actor: Arc::clone(&admin),
            request: pb::EndAgreementRequest {
                agreement_id: "isa-2".into(),
                reason: "review".into(),
            },
        },
        Command::RecordConsent {
            actor: Arc::clone(&school),
            consent: pb::ConsentRecord {
                consent_id: "generated-7".into(),
                nhs_number: CHILD.into(),
                given_by: 1,
                purposes: vec![pb::Purpose::EarlyHelp as i32],
                recipients: vec!["la-social-care-c".into()],
                event_types: vec!["education.*".into()],
                valid_from: ts(1_700_000_000),
                valid_until: ts(1_900_000_000),
                evidence_ref: "form-12".into(),
                ..Default::default()
            },
            generated_id: true,
        },
        Command::WithdrawConsent {
            actor: Arc::clone(&school),
            request: pb::WithdrawConsentRequest {
                consent_id: "generated-7".into(),
                reason: "family asked".into(),
            },
        },
        Command::Publish {
            actor: Arc::clone(&school),
            request: pb::PublishRequest {
                event: Some(event),
                basis: Some(pb::SharingBasis {
                    safeguarding_override: Some(safeguarding()),
                }),
                to_agencies: vec!["la-social-care-c".into(), "nhs-trust-a".into()],
                trace_context: None,
            },
            event_type: "education.attendance_concern".into(),
            salt: *b"0123456789abcdef",
        },
        Command::Retract {
            actor: Arc::clone(&school),
            request: pb::RetractEventRequest {
                event_id: "att-9".into(),
                reason: "sent in error".into(),
            },
        },
        Command::Expunge {
            events: vec![
                (3, "school-b".into(), "att-3".into()),
                (u64::MAX, "nhs-trust-a".into(), "x".into()),
            ],
        },
        Command::CreateSubscription {
            actor: Arc::clone(&school),
            subscription: pb::Subscription {
                name: "urgent".into(),
                event_types: vec!["health.*".into()],
                purposes: vec![pb::Purpose::EarlyHelp as i32],
                ack_deadline: Some(Duration {
                    seconds: 30,
                    nanos: 5,
                }),
                max_attempts: 9,
                ordered: true,
                agency_id: "school-b".into(),
                created_at: ts(1_800_000_000),
                start_sequence: 17,
            },
            quota: 250,
        },
        Command::DeleteSubscription {
            actor: Arc::clone(&school),
            name: "urgent".into(),
        },
        Command::Seek {
            actor: Arc::clone(&school),
            subscription: sub_ref(),
            target: 12,
        },
        Command::Replay {
            actor: Arc::clone(&school),
            subscription: sub_ref(),
            sequences: vec![3, 300, 30_000_000_000],
            floor: Some(3),
        },
        Command::PurgeDeliveries {
            subscription_ids: vec![1, 42, u64::MAX],
        },
        Command::Deliver {
            intents: vec![intent(5, false), intent(6, true)],
        },
        Command::Ack {
            actor: Arc::clone(&school),
            subscription: sub_ref(),
            acks: vec![ack_intent(5), ack_intent(6)],
            floor: Some(7),
        },
        Command::DeadLetter {
            subscription: sub_ref(),
            recipient: "school-b".into(),
            items: vec![ack_intent(8)],
            floor: Some(0),
        },
        Command::Record {
            entry: audit_entry(0),
        },
        Command::AuthDenied {
            entries: vec![audit_entry(3), {
                let mut e = audit_entry(1);
                e.actor = format!("spiffe://other.domain/{}/x", auditor.role.as_str());
                e
            }],
        },
    ]
}

fn header_at(before: Counters, after: Option<BatchEnd>) -> JournalHeader {
    JournalHeader {
        leader_term: 11,
        before: Some(before),
        origin: None,
        after,
    }
}

#[test]
fn every_command_variant_round_trips_with_every_field() {
    let commands = one_of_each();
    let names: BTreeSet<&str> = commands.iter().map(variant).collect();
    assert_eq!(
        names.len(),
        VARIANTS,
        "the table misses a variant: {names:?}"
    );
    let h = header_at(
        Counters {
            next_sequence: 5,
            next_subscription_id: 2,
            audit_size: 40,
        },
        Some(BatchEnd {
            counters: Counters {
                next_sequence: 6,
                next_subscription_id: 3,
                audit_size: 44,
            },
            leaves: [9; 32],
        }),
    );
    for (i, c) in commands.iter().enumerate() {
        let ops = vec![(Micros(T0 + i as i64), c.clone())];
        let bytes = encode_batch(&ops, &h).unwrap();
        let (got_header, got) = decode_batch(&bytes).unwrap();
        assert_eq!(got_header, h, "{}", variant(c));
        assert_eq!(got, ops, "{} does not round-trip", variant(c));
    }
    // All in one batch, with negative and extreme times, and no `after`.
    let h = header_at(Counters::default(), None);
    let ops: Vec<(Micros, Command)> = commands
        .into_iter()
        .zip([i64::MIN, -1, 0, i64::MAX].into_iter().cycle())
        .map(|(c, t)| (Micros(t), c))
        .collect();
    let (got_header, got) = decode_batch(&encode_batch(&ops, &h).unwrap()).unwrap();
    assert_eq!(got_header, h);
    assert_eq!(got, ops);
    // An empty batch is a batch.
    let (_, got) = decode_batch(&encode_batch(&[], &h).unwrap()).unwrap();
    assert!(got.is_empty());
}

#[test]
fn the_caller_keeps_its_role_name_and_trust_domain() {
    for role in Role::ALL {
        let mut actor = (*principal(role, "someone")).clone();
        actor.trust_domain = "elsewhere.example".into();
        let ops = vec![(
            Micros(T0),
            Command::DeleteSubscription {
                actor: Arc::new(actor.clone()),
                name: "n".into(),
            },
        )];
        let bytes = encode_batch(&ops, &header_at(Counters::default(), None)).unwrap();
        let (_, got) = decode_batch(&bytes).unwrap();
        let Some((_, Command::DeleteSubscription { actor: got, .. })) = got.first() else {
            panic!("not the command encoded: {got:?}");
        };
        assert_eq!(**got, actor);
    }
}

/// What a replica run gives: digest, audit leaves, sealed batches and
/// replies (as text: `Refusal` has no equality).
#[derive(Debug, PartialEq)]
struct Run {
    digest: [u8; 32],
    leaves: Vec<Vec<u8>>,
    batches: Vec<String>,
    replies: Vec<String>,
}

/// The leader applies the scenario `chunk` commands per commit and encodes
/// each commit; returns its run and the journal messages.
fn lead(chunk: usize) -> (Run, Vec<Vec<u8>>) {
    let mut m = fresh_machine();
    let mut store = MemLookup::default();
    let mut run = Run {
        digest: [0; 32],
        leaves: vec![],
        batches: vec![],
        replies: vec![],
    };
    let mut journal = Vec::new();
    for ops in scenario().chunks(chunk) {
        let before = m.counters();
        // As the broker's writer would: each command pushed, then applied.
        let mut encoder = JournalEncoder::new(3, Some(before));
        let mut draft = m.begin();
        for (now, c) in ops.iter().cloned() {
            encoder.push(now, &c).unwrap();
            run.replies
                .push(format!("{:?}", m.apply(&mut draft, now, c, &store)));
        }
        let sealed = m.seal(draft);
        store.commit(&sealed.batch);
        run.leaves.extend(sealed.batch.audit.clone());
        run.batches.push(format!("{:?}", sealed.batch));
        assert_eq!(encoder.len(), ops.len());
        let end = BatchEnd::of(&m, &sealed);
        let bytes = encoder.finish(Some(end)).unwrap();
        let h = JournalHeader {
            leader_term: 3,
            before: Some(before),
            origin: None,
            after: Some(end),
        };
        assert_eq!(
            bytes,
            encode_batch(ops, &h).unwrap(),
            "two encodings differ"
        );
        let (got_header, got) = decode_batch(&bytes).unwrap();
        assert_eq!(got_header, h);
        assert_eq!(got, ops, "the batch does not round-trip");
        journal.push(bytes);
    }
    run.digest = m.digest();
    (run, journal)
}

/// A replica applies the journal's messages, decoded, to a fresh machine.
fn follow(journal: &[Vec<u8>]) -> Run {
    let mut m = fresh_machine();
    let mut store = MemLookup::default();
    let mut run = Run {
        digest: [0; 32],
        leaves: vec![],
        batches: vec![],
        replies: vec![],
    };
    for bytes in journal {
        let (h, ops) = decode_batch(bytes).unwrap();
        let (sealed, replies) = replay(&mut m, &h, ops, &store).unwrap();
        store.commit(&sealed.batch);
        run.leaves.extend(sealed.batch.audit.clone());
        run.batches.push(format!("{:?}", sealed.batch));
        run.replies.extend(replies.iter().map(|r| format!("{r:?}")));
    }
    run.digest = m.digest();
    run
}

#[test]
fn a_replica_replaying_the_scenario_from_the_journal_reaches_the_leaders_state() {
    let fresh = fresh_machine().digest();
    for chunk in [1, 4, 7, 1_000] {
        let (leader, journal) = lead(chunk);
        assert_eq!(journal.len(), scenario().len().div_ceil(chunk));
        assert_ne!(leader.digest, fresh, "the scenario changed nothing");
        assert!(leader.leaves.len() > 20, "too few audit leaves to compare");
        assert!(
            leader.replies.iter().any(|r| r.starts_with("Err")),
            "the scenario has refusals, replayed too"
        );
        let replica = follow(&journal);
        assert_eq!(
            replica.digest, leader.digest,
            "chunk {chunk}: digests differ"
        );
        assert_eq!(
            replica.leaves, leader.leaves,
            "chunk {chunk}: audit leaves differ"
        );
        assert_eq!(
            replica.batches, leader.batches,
            "chunk {chunk}: batches differ"
        );
        assert_eq!(
            replica.replies, leader.replies,
            "chunk {chunk}: replies differ"
        );
    }
}

#[test]
fn a_batch_applies_only_where_it_starts() {
    let (_, journal) = lead(10);
    assert!(journal.len() >= 3);
    let decoded: Vec<_> = journal.iter().map(|b| decode_batch(b).unwrap()).collect();
    let mut m = fresh_machine();
    let store = MemLookup::default();
    let fresh = m.digest();

    // The second batch first: a gap.
    let (h, ops) = decoded[1].clone();
    let err = replay(&mut m, &h, ops, &store).unwrap_err();
    assert!(
        matches!(err, JournalError::WrongPosition { batch, machine }
            if Some(batch) == h.before && machine == Counters::default()),
        "{err}"
    );
    assert_eq!(m.digest(), fresh, "a refused batch changed the machine");

    // The first, then the first again: a repeat.
    let mut store = store;
    let (h, ops) = decoded[0].clone();
    let (sealed, _) = replay(&mut m, &h, ops.clone(), &store).unwrap();
    store.commit(&sealed.batch);
    let after_first = m.digest();
    let err = replay(&mut m, &h, ops, &store).unwrap_err();
    assert!(matches!(err, JournalError::WrongPosition { .. }), "{err}");
    assert_eq!(m.digest(), after_first);

    // The second, where the leader claims to have ended elsewhere: other
    // counters, or other audit leaves.
    let (h, ops) = decoded[1].clone();
    let leader = h.after.unwrap();
    let other_counters = BatchEnd {
        counters: Counters {
            audit_size: leader.counters.audit_size + 1,
            ..leader.counters
        },
        ..leader
    };
    let other_leaves = BatchEnd {
        leaves: [0; 32],
        ..leader
    };
    for (claimed, same) in [(other_counters, true), (other_leaves, false)] {
        let mut m = fresh_machine();
        let mut store = MemLookup::default();
        let (h0, ops0) = decoded[0].clone();
        store.commit(&replay(&mut m, &h0, ops0, &store).unwrap().0.batch);
        let h = JournalHeader {
            after: Some(claimed),
            ..h.clone()
        };
        let bytes = encode_batch(&ops, &h).unwrap();
        let (h, ops) = decode_batch(&bytes).unwrap();
        let err = replay(&mut m, &h, ops, &store).unwrap_err();
        assert!(
            matches!(err, JournalError::Diverged { leader: l, machine, same_leaves }
                if l == claimed.counters && machine == leader.counters && same_leaves == same),
            "{err}"
        );
    }
}

#[test]
fn a_replica_with_another_pseudonym_key_is_told_it_diverged() {
    let (_, journal) = lead(5);
    let mut m = Machine::new(
        crate::BrokerState::default(),
        Counters::default(),
        b"not the cluster's key".to_vec(),
    );
    let mut store = MemLookup::default();
    let mut refused = None;
    for (i, bytes) in journal.iter().enumerate() {
        let (h, ops) = decode_batch(bytes).unwrap();
        match replay(&mut m, &h, ops, &store) {
            Ok((sealed, _)) => store.commit(&sealed.batch),
            Err(e) => {
                refused = Some((i, e));
                break;
            }
        }
    }
    // The first batch that pseudonymises a child (the first publish).
    let (i, err) = refused.expect("the replica with the wrong key went on");
    assert_eq!(i, 1, "{err}");
    assert!(
        matches!(err, JournalError::Diverged { leader, machine, same_leaves: false }
            if leader == machine),
        "{err}"
    );
}

#[test]
fn a_failed_lookup_on_the_replica_is_an_error_not_a_reply() {
    struct Broken;
    impl Lookup for Broken {
        fn event_by_id(&self, _: &str, _: &str) -> Result<Option<StoredEvent>, LookupError> {
            Err(LookupError("disk gone".into()))
        }
        fn deliveries_of(&self, _: &[u64], _: u64) -> Result<Vec<DeliveryRecord>, LookupError> {
            Err(LookupError("disk gone".into()))
        }
    }
    // The whole scenario in one batch: its publishes look events up.
    let (_, journal) = lead(1_000);
    let (h, ops) = decode_batch(&journal[0]).unwrap();
    let err = replay(&mut fresh_machine(), &h, ops, &Broken).unwrap_err();
    assert!(
        matches!(
            err,
            JournalError::Local {
                refusal: Refusal::Lookup(_),
                ..
            }
        ),
        "{err}"
    );
}

/// Cluster mode's batches carry no counters, only their origin: they round
/// trip, apply wherever the machine is, and an origin the decoder would
/// refuse (an empty or overlong replica id) is refused by the encoder too.
#[test]
fn an_unplaced_batch_names_its_origin_and_applies_wherever_the_machine_is() {
    let origin = Origin {
        replica: "0123456789abcdef".into(),
        batch: 7,
        seen: 41,
    };
    let h = JournalHeader {
        leader_term: 0,
        before: None,
        origin: Some(origin.clone()),
        after: None,
    };
    let ops = scenario();
    let bytes = encode_batch(&ops, &h).unwrap();
    let (got, decoded) = decode_batch(&bytes).unwrap();
    assert_eq!(got, h);
    assert_eq!(decoded, ops);
    // Applied on two machines at different places: no position refusal.
    let (mut m, store) = (fresh_machine(), MemLookup::default());
    replay(&mut m, &got, decoded.clone(), &store).unwrap();
    let mut m2 = fresh_machine();
    let mut store2 = MemLookup::default();
    let (sealed, _) = replay(&mut m2, &got, decoded.clone(), &store2).unwrap();
    store2.commit(&sealed.batch);
    replay(&mut m2, &got, decoded, &store2).unwrap();
    for replica in [String::new(), "x".repeat(MAX_REPLICA_ID + 1)] {
        let bad = JournalHeader {
            origin: Some(Origin {
                replica,
                ..origin.clone()
            }),
            ..h.clone()
        };
        assert!(matches!(
            encode_batch(&ops, &bad),
            Err(JournalError::BadHeader(_))
        ));
    }
    let longest = JournalHeader {
        origin: Some(Origin {
            replica: "x".repeat(MAX_REPLICA_ID),
            ..origin
        }),
        ..h
    };
    assert!(decode_batch(&encode_batch(&ops, &longest).unwrap()).is_ok());
}

/// `pop` takes back the last command pushed: the size and the count go
/// back to what they were, and the message decodes without it.
#[test]
fn pop_takes_back_the_last_command() {
    let record = |n: usize| Command::Record {
        entry: pb::AuditEntry {
            reason: "x".repeat(n),
            ..Default::default()
        },
    };
    let mut encoder = JournalEncoder::new(0, None);
    encoder.push(Micros(1), &record(10)).unwrap();
    let (len, size) = (encoder.len(), encoder.approximate_len());
    encoder.push(Micros(2), &record(5_000)).unwrap();
    assert!(encoder.approximate_len() > size + 5_000);
    encoder.pop();
    assert_eq!((encoder.len(), encoder.approximate_len()), (len, size));
    let (_, ops) = decode_batch(&encoder.finish(None).unwrap()).unwrap();
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].0, Micros(1));
    // Popping an empty encoder changes nothing.
    let mut empty = JournalEncoder::new(0, None);
    empty.pop();
    assert!(empty.is_empty());
}
