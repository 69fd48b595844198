//! The delivery family's table: the re-decision before a send, acks and
//! dead letters, including the odd ones (a window picked just before its
//! subscription was deleted, an ack after the delete, a retraction or a
//! consent withdrawal between publish and send, an expiry).

use caseshare_core::pb;
use caseshare_core::time::Micros;

use super::given::*;
use super::{Case, Expect, T0, run};
use crate::testing::{CHILD, attendance};
use crate::{
    AckIntent, Command, DeliveryIntent, DeliveryState, EventContext, Reply, SubscriptionRef,
    Verdict,
};

use pb::EntryKind as K;

fn intent(sequence: u64, notice: bool, expires_at: Option<Micros>) -> DeliveryIntent {
    DeliveryIntent {
        subscription_id: 1,
        subscription: "main".into(),
        recipient: "la-social-care-c".into(),
        sequence,
        event_id: "att-1".into(),
        attempt: 2,
        delivery_id: format!("1.{sequence}.2"),
        context: EventContext::new(
            "school-b",
            "education.attendance_concern",
            &attendance("att-1"),
            None,
        ),
        notice,
        expires_at,
    }
}

fn deliver(i: DeliveryIntent) -> Command {
    Command::Deliver { intents: vec![i] }
}

fn settled(sequence: u64) -> AckIntent {
    AckIntent {
        sequence,
        event_id: "att-1".into(),
        delivery_id: format!("1.{sequence}.2"),
        attempts: 2,
        delivered_at: Micros(T0),
        nhs_number: CHILD.into(),
    }
}

fn main_ref() -> SubscriptionRef {
    SubscriptionRef {
        id: 1,
        name: "main".into(),
    }
}

fn one_record(b: &crate::Batch, state: DeliveryState, attempts: u32) -> bool {
    b.deliveries.len() == 1
        && b.deliveries[0].state() == state
        && b.deliveries[0].attempts == attempts
}

fn verdict(r: &Reply) -> Option<&Verdict> {
    match r {
        Reply::Verdicts(v) if v.len() == 1 => v.first(),
        _ => None,
    }
}

#[test]
fn delivery() {
    let published = || {
        let mut g = sharing();
        g.push(publish("att-1"));
        g
    };
    let and = |mut g: Vec<Command>, c: Command| {
        g.push(c);
        g
    };
    let delete = Command::DeleteSubscription {
        actor: agency("la-social-care-c"),
        name: "main".into(),
    };
    let end = Command::EndAgreement {
        actor: admin(),
        request: pb::EndAgreementRequest {
            agreement_id: "isa-1".into(),
            reason: "review".into(),
        },
    };
    let retract = Command::Retract {
        actor: agency("school-b"),
        request: pb::RetractEventRequest {
            event_id: "att-1".into(),
            reason: "error".into(),
        },
    };
    let ack = Command::Ack {
        actor: agency("la-social-care-c"),
        subscription: main_ref(),
        acks: vec![settled(1)],
        floor: Some(2),
    };
    run(vec![
        Case {
            name: "shared: delivered, attempt recorded",
            given: published(),
            when: deliver(intent(1, false, None)),
            expect: Expect::Applied(vec![K::EventDelivered], |r, b, _| {
                matches!(verdict(r), Some(Verdict::Shared(_)))
                    && one_record(b, DeliveryState::Delivered, 2)
            }),
        },
        Case {
            name: "agreement ended since publish: stopped, decision logged",
            given: and(published(), end),
            when: deliver(intent(1, false, None)),
            expect: Expect::Applied(vec![K::ShareDecided], |r, b, _| {
                matches!(verdict(r), Some(Verdict::Stopped(why)) if why == "agreement_ended")
                    && one_record(b, DeliveryState::Stopped, 1)
            }),
        },
        Case {
            name: "retracted since publish: stopped as event_retracted",
            given: and(published(), retract),
            when: deliver(intent(1, false, None)),
            expect: Expect::Applied(vec![K::ShareDecided], |r, b, _| {
                matches!(verdict(r), Some(Verdict::Stopped(why)) if why.starts_with("retracted"))
                    && one_record(b, DeliveryState::Stopped, 1)
            }),
        },
        Case {
            name: "expired before the send",
            given: published(),
            when: deliver(intent(1, false, Some(Micros(T0)))),
            expect: Expect::Applied(vec![K::EventExpired], |r, b, _| {
                matches!(verdict(r), Some(Verdict::Expired))
                    && one_record(b, DeliveryState::Expired, 1)
            }),
        },
        Case {
            name: "a notice is sent without a new decision",
            given: and(published(), end_agreement()),
            when: deliver(intent(2, true, None)),
            expect: Expect::Applied(vec![K::EventDelivered], |r, b, _| {
                matches!(verdict(r), Some(Verdict::Notice)) && b.deliveries[0].reason == "notice"
            }),
        },
        Case {
            name: "a window picked before its subscription was deleted records nothing",
            given: and(published(), delete.clone()),
            when: deliver(intent(1, false, None)),
            expect: Expect::Applied(vec![], |r, b, _| {
                matches!(verdict(r), Some(Verdict::Stopped(_))) && b.is_empty()
            }),
        },
        Case {
            name: "ack",
            given: and(published(), deliver(intent(1, false, None))),
            when: ack.clone(),
            expect: Expect::Applied(vec![K::EventAcked], |_, b, _| {
                one_record(b, DeliveryState::Acked, 2)
                    && b.deliveries[0].acked_at_micros > 0
                    && b.floors == vec![(1, 2)]
            }),
        },
        Case {
            name: "ack after the subscription was deleted records nothing",
            given: and(and(published(), deliver(intent(1, false, None))), delete),
            when: ack.clone(),
            expect: Expect::Applied(vec![], |_, b, _| b.is_empty()),
        },
        Case {
            name: "dead letter",
            given: and(published(), deliver(intent(1, false, None))),
            when: Command::DeadLetter {
                subscription: main_ref(),
                recipient: "la-social-care-c".into(),
                items: vec![settled(1)],
                floor: None,
            },
            expect: Expect::Applied(vec![K::DeadLettered], |_, b, _| {
                one_record(b, DeliveryState::DeadLettered, 2)
                    && b.deliveries[0].settled_at_micros > 0
                    && b.floors.is_empty()
            }),
        },
        Case {
            name: "a delivery already acknowledged (through another stream or replica) is not sent again",
            given: and(
                and(published(), deliver(intent(1, false, None))),
                ack.clone(),
            ),
            when: deliver(intent(1, false, None)),
            expect: Expect::Applied(vec![], |r, b, _| {
                matches!(verdict(r), Some(Verdict::Stopped(why)) if why == "already settled")
                    && b.is_empty()
            }),
        },
        Case {
            name: "after a seek, an acknowledged delivery is sent again",
            given: and(
                and(
                    and(published(), deliver(intent(1, false, None))),
                    ack.clone(),
                ),
                seek(1),
            ),
            when: deliver(intent(1, false, None)),
            expect: Expect::Applied(vec![K::EventDelivered], |r, b, _| {
                matches!(verdict(r), Some(Verdict::Shared(_)))
                    && one_record(b, DeliveryState::Delivered, 2)
            }),
        },
        Case {
            name: "an ack of a delivery that is not out (never sent) records nothing",
            given: published(),
            when: ack.clone(),
            expect: Expect::Applied(vec![], |_, b, _| b.is_empty()),
        },
        Case {
            name: "an ack decided before a seek, applied after it, records nothing and keeps the floor",
            given: and(and(published(), deliver(intent(1, false, None))), seek(1)),
            when: ack.clone(),
            expect: Expect::Applied(vec![], |_, b, _| b.is_empty()),
        },
        Case {
            name: "an ack of another attempt than the one out records nothing",
            given: and(published(), deliver(intent(1, false, None))),
            when: Command::Ack {
                actor: agency("la-social-care-c"),
                subscription: main_ref(),
                acks: vec![AckIntent {
                    attempts: 1,
                    ..settled(1)
                }],
                floor: Some(2),
            },
            expect: Expect::Applied(vec![], |_, b, _| b.is_empty()),
        },
        Case {
            name: "purge of a deleted subscription's records",
            given: published(),
            when: Command::PurgeDeliveries {
                subscription_ids: vec![1],
            },
            expect: Expect::Applied(vec![], |_, b, _| b.purge_deliveries == vec![1]),
        },
    ]);
}

fn seek(target: u64) -> Command {
    Command::Seek {
        actor: agency("la-social-care-c"),
        subscription: main_ref(),
        target,
    }
}

fn end_agreement() -> Command {
    Command::EndAgreement {
        actor: admin(),
        request: pb::EndAgreementRequest {
            agreement_id: "isa-1".into(),
            reason: "review".into(),
        },
    }
}
