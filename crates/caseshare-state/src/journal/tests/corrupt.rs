//! Damaged and hostile journal messages: every truncation and flipped bit,
//! an unknown or missing version, an op without a command, missing or
//! invalid fields, a bad header, and the bounds, each refused with the
//! error that names it (never a panic, never a default command); plus
//! proptests over random bytes, random damage and random list commands.

use proptest::prelude::*;

use super::super::scan::scan;
use super::super::wire::{self, journal_op::Command as W};
use super::*;

/// The whole scenario as one journal message.
fn scenario_message() -> Vec<u8> {
    let ops = scenario();
    encode_batch(&ops, &header_at(Counters::default(), None)).unwrap()
}

/// A wire batch of `ops` at the start, version 1.
fn wire_batch(ops: Vec<wire::JournalOp>) -> wire::JournalBatch {
    wire::JournalBatch {
        format_version: FORMAT_VERSION,
        leader_term: 1,
        first_audit_index: 0,
        first_sequence: 1,
        first_subscription_id: 1,
        after: None,
        ops,
        origin: None,
    }
}

/// The message of a wire batch, checksum included.
fn sealed(b: &wire::JournalBatch) -> Vec<u8> {
    seal(b.encode_to_vec())
}

/// The wire op of each of [`one_of_each`].
fn wire_ops() -> Vec<wire::JournalOp> {
    one_of_each()
        .iter()
        .map(|c| convert::to_wire(Micros(T0), c))
        .collect()
}

#[test]
fn every_truncation_is_refused() {
    let bytes = scenario_message();
    assert!(bytes.len() > 1_000, "{} bytes", bytes.len());
    for len in 0..bytes.len() {
        assert!(
            decode_batch(&bytes[..len]).is_err(),
            "the first {len} of {} bytes decode",
            bytes.len()
        );
    }
}

#[test]
fn every_flipped_bit_is_refused() {
    // Each byte of the whole scenario, one bit each (which bit cycles).
    let bytes = scenario_message();
    for i in 0..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[i] ^= 1 << (i % 8);
        assert!(decode_batch(&damaged).is_err(), "byte {i} flipped decodes");
    }
    // Every bit of a small batch.
    let small = encode_batch(
        &one_of_each()[..2]
            .iter()
            .map(|c| (Micros(T0), c.clone()))
            .collect::<Vec<_>>(),
        &header_at(Counters::default(), None),
    )
    .unwrap();
    for bit in 0..small.len() * 8 {
        let mut damaged = small.clone();
        damaged[bit / 8] ^= 1 << (bit % 8);
        assert!(decode_batch(&damaged).is_err(), "bit {bit} flipped decodes");
    }
    // A byte appended after the checksum.
    let mut longer = small.clone();
    longer.push(0);
    assert!(matches!(decode_batch(&longer), Err(JournalError::Checksum)));
}

#[test]
fn an_unknown_or_missing_version_is_refused_before_anything_else() {
    let mut b = wire_batch(wire_ops());
    b.format_version = 2;
    assert!(matches!(
        decode_batch(&sealed(&b)),
        Err(JournalError::UnknownVersion(2))
    ));
    // A future format whose body and checksum this reader cannot check.
    let mut future = b.encode_to_vec();
    future.extend_from_slice(b"a different trailer");
    assert!(matches!(
        decode_batch(&future),
        Err(JournalError::UnknownVersion(2))
    ));
    b.format_version = 0; // not encoded: the first field is another
    assert!(matches!(
        decode_batch(&sealed(&b)),
        Err(JournalError::MissingVersion)
    ));
    assert!(matches!(
        decode_batch(&[]),
        Err(JournalError::MissingVersion)
    ));
    // The version twice (a spliced message).
    let mut twice = wire_batch(vec![]).encode_to_vec();
    twice.extend_from_slice(&[(1 << 3), 1]);
    assert!(matches!(
        decode_batch(&seal(twice)),
        Err(JournalError::Framing(_))
    ));
}

#[test]
fn an_op_without_a_command_is_refused() {
    let mut ops = wire_ops();
    ops.insert(
        3,
        wire::JournalOp {
            now_micros: T0,
            command: None,
        },
    );
    assert!(matches!(
        decode_batch(&sealed(&wire_batch(ops))),
        Err(JournalError::MissingCommand { op: 3 })
    ));
    // A command of a tag this reader does not know is no command either:
    // now = 1, then field 30 (length-delimited, empty).
    let mut body = wire_batch(vec![]).encode_to_vec();
    let op = [0x08, 0x01, (30 << 3) | 2, 0x01, 0x00];
    body.extend_from_slice(&[(wire::OPS_TAG << 3 | 2) as u8, op.len() as u8]);
    body.extend_from_slice(&op);
    assert!(matches!(
        decode_batch(&seal(body)),
        Err(JournalError::MissingCommand { op: 0 })
    ));
}

/// Whether an error is the one a case expects.
type ErrCheck = Box<dyn Fn(&JournalError) -> bool>;

/// One op of the given variant from [`wire_ops`], changed by `f`.
fn damaged(name: &str, f: impl FnOnce(&mut W)) -> Vec<u8> {
    let i = one_of_each()
        .iter()
        .position(|c| variant(c) == name)
        .unwrap();
    let mut op = wire_ops().swap_remove(i);
    f(op.command.as_mut().unwrap());
    sealed(&wire_batch(vec![op]))
}

#[test]
fn missing_or_invalid_fields_are_refused_by_name() {
    let missing = |field: &'static str| -> ErrCheck {
        Box::new(move |e| matches!(e, JournalError::MissingField { field: f, .. } if *f == field))
    };
    let invalid = |field: &'static str| -> ErrCheck {
        Box::new(move |e| matches!(e, JournalError::InvalidField { field: f, .. } if *f == field))
    };
    let cases: Vec<(&str, Vec<u8>, ErrCheck)> = vec![
        (
            "no actor",
            damaged("RegisterAgency", |w| {
                if let W::RegisterAgency(o) = w {
                    o.actor = None;
                }
            }),
            missing("actor"),
        ),
        (
            "unspecified role",
            damaged("Retract", |w| {
                if let W::Retract(o) = w {
                    o.actor.as_mut().unwrap().role = 0;
                }
            }),
            invalid("actor.role"),
        ),
        (
            "unknown role",
            damaged("Seek", |w| {
                if let W::Seek(o) = w {
                    o.actor.as_mut().unwrap().role = 9;
                }
            }),
            invalid("actor.role"),
        ),
        (
            "no request",
            damaged("WithdrawConsent", |w| {
                if let W::WithdrawConsent(o) = w {
                    o.request = None;
                }
            }),
            missing("request"),
        ),
        (
            "no agreement",
            damaged("PutAgreement", |w| {
                if let W::PutAgreement(o) = w {
                    o.request = None;
                }
            }),
            missing("agreement"),
        ),
        (
            "no consent",
            damaged("RecordConsent", |w| {
                if let W::RecordConsent(o) = w {
                    o.consent = None;
                }
            }),
            missing("consent"),
        ),
        (
            "short salt",
            damaged("Publish", |w| {
                if let W::Publish(o) = w {
                    o.salt.pop();
                }
            }),
            invalid("salt"),
        ),
        (
            "no salt",
            damaged("Publish", |w| {
                if let W::Publish(o) = w {
                    o.salt.clear();
                }
            }),
            invalid("salt"),
        ),
        (
            "no subscription",
            damaged("CreateSubscription", |w| {
                if let W::CreateSubscription(o) = w {
                    o.subscription = None;
                }
            }),
            missing("subscription"),
        ),
        (
            "no subscription ref",
            damaged("DeadLetter", |w| {
                if let W::DeadLetter(o) = w {
                    o.subscription = None;
                }
            }),
            missing("subscription"),
        ),
        (
            "no context",
            damaged("Deliver", |w| {
                if let W::Deliver(o) = w {
                    o.intents[1].context = None;
                }
            }),
            missing("intents.context"),
        ),
        (
            "unknown purpose",
            damaged("Deliver", |w| {
                if let W::Deliver(o) = w {
                    o.intents[0].context.as_mut().unwrap().purpose = 999;
                }
            }),
            invalid("intents.context.purpose"),
        ),
        (
            "unknown sensitivity",
            damaged("Deliver", |w| {
                if let W::Deliver(o) = w {
                    o.intents[0].context.as_mut().unwrap().sensitivity = -4;
                }
            }),
            invalid("intents.context.sensitivity"),
        ),
        (
            "no entry",
            damaged("Record", |w| {
                if let W::Record(o) = w {
                    o.entry = None;
                }
            }),
            missing("entry"),
        ),
    ];
    for (name, bytes, check) in cases {
        match decode_batch(&bytes) {
            Err(e) => assert!(check(&e), "{name}: wrong error {e}"),
            Ok(got) => panic!("{name}: decoded {got:?}"),
        }
    }
}

#[test]
fn an_incomplete_or_inconsistent_header_is_refused() {
    let mut b = wire_batch(vec![]);
    b.first_sequence = 0;
    assert!(matches!(
        decode_batch(&sealed(&b)),
        Err(JournalError::BadHeader(_))
    ));
    let mut b = wire_batch(vec![]);
    b.first_subscription_id = 0;
    assert!(matches!(
        decode_batch(&sealed(&b)),
        Err(JournalError::BadHeader(_))
    ));
    let mut b = wire_batch(vec![]);
    b.first_audit_index = 10;
    b.after = Some(wire::EndRecord {
        next_sequence: 1,
        next_subscription_id: 1,
        audit_size: 9,
        leaves_digest: vec![0; 32],
    });
    assert!(matches!(
        decode_batch(&sealed(&b)),
        Err(JournalError::BadHeader(_))
    ));
    b.after = Some(wire::EndRecord {
        next_sequence: 1,
        next_subscription_id: 1,
        audit_size: 10,
        leaves_digest: vec![0; 31],
    });
    assert!(matches!(
        decode_batch(&sealed(&b)),
        Err(JournalError::BadHeader(_))
    ));
}

#[test]
fn decoding_is_bounded_by_size_ops_and_items() {
    let limits = |max_bytes, max_ops, max_items| JournalLimits {
        max_bytes,
        max_ops,
        max_items,
    };
    let purge = |n: usize| Command::PurgeDeliveries {
        subscription_ids: (0..n as u64).collect(),
    };
    let h = header_at(Counters::default(), None);
    let ops = |n: usize, c: Command| vec![(Micros(T0), c); n];

    let five = encode_batch(&ops(5, purge(0)), &h).unwrap();
    assert!(decode_batch_with(&five, &limits(1 << 20, 5, 100)).is_ok());
    assert!(matches!(
        decode_batch_with(&five, &limits(1 << 20, 4, 100)),
        Err(JournalError::TooManyOps { max: 4 })
    ));
    assert!(matches!(
        decode_batch_with(&five, &limits(five.len() - 1, 5, 100)),
        Err(JournalError::TooLarge { .. })
    ));

    // Packed integers count one each: 1,000 ids in one field.
    let packed = encode_batch(&ops(1, purge(1_000)), &h).unwrap();
    assert!(decode_batch_with(&packed, &limits(1 << 20, 1, 1_000)).is_ok());
    assert!(matches!(
        decode_batch_with(&packed, &limits(1 << 20, 1, 999)),
        Err(JournalError::TooManyItems { max: 999 })
    ));
    // The same for Replay's sequences, and for lists of messages.
    let replay_op = Command::Replay {
        actor: principal(Role::Agency, "a"),
        subscription: sub_ref(),
        sequences: (1..=500).collect(),
        floor: None,
    };
    let deliver = Command::Deliver {
        intents: (1..=500).map(|s| intent(s, false)).collect(),
    };
    for c in [replay_op, deliver] {
        let bytes = encode_batch(&ops(1, c.clone()), &h).unwrap();
        assert!(
            matches!(
                decode_batch_with(&bytes, &limits(1 << 20, 1, 499)),
                Err(JournalError::TooManyItems { max: 499 })
            ),
            "{} escapes the item count",
            variant(&c)
        );
    }

    // A hostile message: a million empty ops in 2 MB is refused before
    // prost builds one of them (and its checksum is even right).
    let mut body = wire_batch(vec![]).encode_to_vec();
    for _ in 0..1_000_000 {
        body.extend_from_slice(&[(wire::OPS_TAG << 3 | 2) as u8, 0]);
    }
    assert!(matches!(
        decode_batch(&seal(body)),
        Err(JournalError::TooManyOps { max: 65_536 })
    ));
}

#[test]
fn a_leader_cannot_encode_what_a_follower_would_refuse() {
    let h = header_at(Counters::default(), None);
    let max = JournalLimits::default();
    let too_many = vec![
        (
            Micros(T0),
            Command::PurgeDeliveries {
                subscription_ids: vec![]
            }
        );
        max.max_ops + 1
    ];
    assert!(matches!(
        encode_batch(&too_many, &h),
        Err(JournalError::TooManyOps { .. })
    ));
    let mut encoder = JournalEncoder::new(1, Some(Counters::default()));
    for (now, c) in &too_many[1..] {
        encoder.push(*now, c).unwrap();
    }
    assert!(matches!(
        encoder.push(Micros(T0), &too_many[0].1),
        Err(JournalError::TooManyOps { max: m }) if m == max.max_ops
    ));
    assert_eq!(encoder.len(), max.max_ops, "a refused push was kept");
    assert!(encoder.finish(None).is_ok());
    let too_many_items = vec![(
        Micros(T0),
        Command::PurgeDeliveries {
            subscription_ids: vec![7; max.max_items + 1],
        },
    )];
    assert!(matches!(
        encode_batch(&too_many_items, &h),
        Err(JournalError::TooManyItems { .. })
    ));
    let just_enough = vec![(
        Micros(T0),
        Command::PurgeDeliveries {
            subscription_ids: vec![7; max.max_items],
        },
    )];
    assert!(decode_batch(&encode_batch(&just_enough, &h).unwrap()).is_ok());
}

#[test]
fn the_scan_agrees_with_the_wire_tags() {
    // OPS_TAG: the scan counts the ops prost encodes.
    let ops = wire_ops();
    let body = wire_batch(ops.clone()).encode_to_vec();
    let found = scan(&body, &JournalLimits::default()).unwrap();
    assert_eq!(found.ops, ops.len());
    // PACKED_LISTS: an integer list counts its integers, in both variants.
    for (tag, n) in [(wire::REPLAY_TAG, 300usize), (wire::PURGE_TAG, 300)] {
        let op = wire::JournalOp {
            now_micros: 0,
            command: Some(if tag == wire::REPLAY_TAG {
                W::Replay(wire::ReplayOp {
                    sequences: (0..n as u64).collect(),
                    ..Default::default()
                })
            } else {
                W::PurgeDeliveries(wire::PurgeDeliveriesOp {
                    subscription_ids: (0..n as u64).collect(),
                })
            }),
        };
        let body = wire_batch(vec![op]).encode_to_vec();
        let found = scan(&body, &JournalLimits::default()).unwrap();
        assert!(found.items >= n, "tag {tag}: {} items", found.items);
    }
}

fn arb_ack() -> impl Strategy<Value = AckIntent> {
    (
        any::<u64>(),
        ".{0,12}",
        ".{0,12}",
        any::<u32>(),
        any::<i64>(),
        "[0-9]{10}",
    )
        .prop_map(
            |(sequence, event_id, delivery_id, attempts, at, nhs_number)| AckIntent {
                sequence,
                event_id,
                delivery_id,
                attempts,
                delivered_at: Micros(at),
                nhs_number,
            },
        )
}

fn arb_command() -> impl Strategy<Value = Command> {
    let actor = (0usize..3, "[a-z-]{0,12}").prop_map(|(r, n)| principal(Role::ALL[r], &n));
    let sub = (any::<u64>(), ".{0,10}").prop_map(|(id, name)| SubscriptionRef { id, name });
    prop_oneof![
        prop::collection::vec((any::<u64>(), ".{0,8}", ".{0,8}"), 0..8)
            .prop_map(|events| Command::Expunge { events }),
        prop::collection::vec(any::<u64>(), 0..40)
            .prop_map(|subscription_ids| Command::PurgeDeliveries { subscription_ids }),
        (
            actor.clone(),
            sub.clone(),
            prop::collection::vec(any::<u64>(), 0..40),
            any::<Option<u64>>()
        )
            .prop_map(|(actor, subscription, sequences, floor)| Command::Replay {
                actor,
                subscription,
                sequences,
                floor,
            }),
        (actor.clone(), sub.clone(), any::<u64>()).prop_map(|(actor, subscription, target)| {
            Command::Seek {
                actor,
                subscription,
                target,
            }
        }),
        (
            actor.clone(),
            sub.clone(),
            prop::collection::vec(arb_ack(), 0..5),
            any::<Option<u64>>()
        )
            .prop_map(|(actor, subscription, acks, floor)| Command::Ack {
                actor,
                subscription,
                acks,
                floor,
            }),
        (
            sub,
            ".{0,8}",
            prop::collection::vec(arb_ack(), 0..5),
            any::<Option<u64>>()
        )
            .prop_map(
                |(subscription, recipient, items, floor)| Command::DeadLetter {
                    subscription,
                    recipient,
                    items,
                    floor,
                }
            ),
        (actor.clone(), any::<[u8; 16]>(), ".{0,20}", ".{0,12}").prop_map(
            |(actor, salt, event_type, id)| Command::Publish {
                actor,
                request: pb::PublishRequest {
                    event: Some(attendance(&id)),
                    ..Default::default()
                },
                event_type,
                salt,
            }
        ),
        (actor, ".{0,12}", any::<u32>()).prop_map(|(actor, name, quota)| {
            Command::CreateSubscription {
                actor,
                subscription: pb::Subscription {
                    name,
                    ..Default::default()
                },
                quota: quota as usize,
            }
        }),
        (
            any::<u64>(),
            any::<u32>(),
            any::<bool>(),
            any::<Option<i64>>()
        )
            .prop_map(|(sequence, attempt, notice, expires)| {
                let mut i = intent(sequence, notice);
                i.attempt = attempt;
                i.expires_at = expires.map(Micros);
                Command::Deliver { intents: vec![i] }
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_batches_round_trip(
        ops in prop::collection::vec((any::<i64>(), arb_command()), 0..12),
        term in any::<u64>(),
        before in (1u64.., 1u64.., any::<u64>()),
    ) {
        let ops: Vec<(Micros, Command)> = ops.into_iter().map(|(t, c)| (Micros(t), c)).collect();
        let h = JournalHeader {
            leader_term: term,
            before: Some(Counters { next_sequence: before.0, next_subscription_id: before.1, audit_size: before.2 }),
            origin: None,
            after: None,
        };
        let (got_header, got) = decode_batch(&encode_batch(&ops, &h).unwrap()).unwrap();
        prop_assert_eq!(got_header, h);
        prop_assert_eq!(got, ops);
    }

    #[test]
    fn random_bytes_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..2_000)) {
        prop_assert!(decode_batch(&bytes).is_err());
    }

    #[test]
    fn random_damage_is_refused(
        edits in prop::collection::vec((any::<prop::sample::Index>(), 1u8..), 1..4),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let original = scenario_message();
        let mut bytes = original.clone();
        for (at, xor) in edits {
            let i = at.index(bytes.len());
            bytes[i] ^= xor;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        // Edits at one place may cancel out.
        prop_assume!(bytes != original);
        prop_assert!(decode_batch(&bytes).is_err());
    }
}
