//! The delivery transition table: every (phase, input) pair that matters,
//! with the state and effect it must give, or why it is ignored. Runs
//! without tokio, a store or a socket.

#![allow(clippy::unwrap_used)]

use super::*;

const NOW: Micros = Micros(100 * 1_000_000);
const SENT_AT: Micros = Micros(1_700_000_000_000_000);

fn policy() -> Policy {
    Policy {
        ack_deadline: Duration::from_secs(10),
        max_attempts: 3,
        backoff: Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(8),
        },
    }
}

fn secs(s: i64) -> Micros {
    Micros(NOW.0 + s * 1_000_000)
}

fn at(phase: Phase, attempts: u32) -> Delivery {
    Delivery {
        phase,
        attempts,
        delivered_at: if attempts == 0 { Micros(0) } else { SENT_AT },
    }
}

const DEFERRED: Phase = Phase::Deferred;
const OWED_DUE: Phase = Phase::Owed {
    not_before: Micros(NOW.0 - 1),
};
const OWED_LATER: Phase = Phase::Owed {
    not_before: Micros(NOW.0 + 1),
};
const PICKED: Phase = Phase::Picked { stream: 7 };
const OUT_LIVE: Phase = Phase::Out {
    stream: 7,
    deadline: Micros(NOW.0 + 1),
};
const OUT_EXPIRED: Phase = Phase::Out {
    stream: 7,
    deadline: NOW,
};

fn settled(o: Outcome) -> Phase {
    Phase::Settled(o)
}

type Want = Result<(Delivery, Effect), Ignored>;

fn moved(phase: Phase, attempts: u32, effect: Effect) -> Want {
    Ok((at(phase, attempts), effect))
}

#[test]
fn every_transition_as_a_table() {
    use Effect as E;
    use Ignored as X;
    use Input as I;
    use Outcome as O;
    let sent2 = Delivery {
        phase: Phase::Out {
            stream: 7,
            deadline: secs(10),
        },
        attempts: 2,
        delivered_at: Micros(42),
    };
    let rows: Vec<(&str, Delivery, Input, Want)> = vec![
        // Taking a delivery for a stream.
        (
            "fresh picked: attempt 1",
            at(DEFERRED, 0),
            I::Pick { stream: 7 },
            moved(PICKED, 0, E::Submit { attempt: 1 }),
        ),
        (
            "owed and due picked: next attempt",
            at(OWED_DUE, 2),
            I::Pick { stream: 7 },
            moved(PICKED, 2, E::Submit { attempt: 3 }),
        ),
        (
            "loaded at start is due at once",
            Delivery::loaded(1, SENT_AT, NOW),
            I::Pick { stream: 9 },
            moved(Phase::Picked { stream: 9 }, 1, E::Submit { attempt: 2 }),
        ),
        (
            "owed in backoff is not picked",
            at(OWED_LATER, 1),
            I::Pick { stream: 7 },
            Err(X::NotDue),
        ),
        (
            "picked is not picked twice",
            at(PICKED, 1),
            I::Pick { stream: 8 },
            Err(X::OnStream),
        ),
        (
            "out is not picked twice",
            at(OUT_LIVE, 1),
            I::Pick { stream: 8 },
            Err(X::OnStream),
        ),
        // The writer's verdict.
        (
            "recorded and sent: out until the deadline",
            at(PICKED, 1),
            I::Sent {
                attempt: 2,
                at: Micros(42),
            },
            Ok((
                Delivery {
                    attempts: 2,
                    ..sent2
                },
                E::None,
            )),
        ),
        (
            "nacked while the writer decided: the send counts, still owed",
            at(OWED_LATER, 1),
            I::Sent {
                attempt: 2,
                at: Micros(42),
            },
            Ok((
                Delivery {
                    phase: OWED_LATER,
                    attempts: 2,
                    delivered_at: Micros(42),
                },
                E::None,
            )),
        ),
        (
            "a verdict for what is already out is ignored",
            at(OUT_LIVE, 1),
            I::Sent {
                attempt: 2,
                at: Micros(42),
            },
            Err(X::NotPicked),
        ),
        (
            "a verdict for a never-picked delivery is ignored",
            at(DEFERRED, 0),
            I::Sent {
                attempt: 1,
                at: Micros(42),
            },
            Err(X::NotPicked),
        ),
        (
            "withheld at the re-check",
            at(PICKED, 0),
            I::Withheld,
            moved(settled(O::Withheld), 0, E::Forget),
        ),
        (
            "withheld after a nack while deciding",
            at(OWED_LATER, 1),
            I::Withheld,
            moved(settled(O::Withheld), 1, E::Forget),
        ),
        (
            "withheld for what is out is ignored",
            at(OUT_LIVE, 1),
            I::Withheld,
            Err(X::NotPicked),
        ),
        // The stream went, or the writer refused the window.
        (
            "stream closed: picked is owed now",
            at(PICKED, 1),
            I::Release { stream: 7 },
            moved(Phase::Owed { not_before: NOW }, 1, E::None),
        ),
        (
            "stream closed: out is owed now",
            at(OUT_LIVE, 1),
            I::Release { stream: 7 },
            moved(Phase::Owed { not_before: NOW }, 1, E::None),
        ),
        (
            "another stream closing leaves it",
            at(OUT_LIVE, 1),
            I::Release { stream: 8 },
            Err(X::OtherStream),
        ),
        (
            "release of what is owed is ignored",
            at(OWED_LATER, 1),
            I::Release { stream: 7 },
            Err(X::NotOut),
        ),
        // Acks.
        (
            "ack of what is out",
            at(OUT_LIVE, 1),
            I::Ack { attempt: 1 },
            moved(settled(O::Acked), 1, E::RecordAck),
        ),
        (
            "late ack after redelivery was picked: settles",
            at(PICKED, 1),
            I::Ack { attempt: 1 },
            moved(settled(O::Acked), 1, E::RecordAck),
        ),
        (
            "late ack after redelivery was sent: settles",
            sent2,
            I::Ack { attempt: 1 },
            Ok((
                Delivery {
                    phase: settled(O::Acked),
                    ..sent2
                },
                E::RecordAck,
            )),
        ),
        (
            "late ack while owed after the deadline: settles",
            at(OWED_LATER, 1),
            I::Ack { attempt: 1 },
            moved(settled(O::Acked), 1, E::RecordAck),
        ),
        (
            "ack of a never-sent delivery is ignored",
            at(DEFERRED, 0),
            I::Ack { attempt: 1 },
            Err(X::NeverSent),
        ),
        (
            "double ack is ignored",
            at(settled(O::Acked), 1),
            I::Ack { attempt: 1 },
            Err(X::Settled(O::Acked)),
        ),
        (
            "ack after dead letter is ignored",
            at(settled(O::DeadLettered), 3),
            I::Ack { attempt: 3 },
            Err(X::Settled(O::DeadLettered)),
        ),
        (
            "ack after the subscription was deleted is ignored",
            at(settled(O::Dropped), 1),
            I::Ack { attempt: 1 },
            Err(X::Settled(O::Dropped)),
        ),
        (
            "ack after withheld is ignored",
            at(settled(O::Withheld), 0),
            I::Ack { attempt: 1 },
            Err(X::Settled(O::Withheld)),
        ),
        // Nacks.
        (
            "nack: owed after backoff",
            at(OUT_LIVE, 1),
            I::Nack,
            moved(
                Phase::Owed {
                    not_before: secs(1),
                },
                1,
                E::Redeliver {
                    not_before: secs(1),
                },
            ),
        ),
        (
            "nack: the backoff doubles",
            at(OUT_LIVE, 2),
            I::Nack,
            moved(
                Phase::Owed {
                    not_before: secs(2),
                },
                2,
                E::Redeliver {
                    not_before: secs(2),
                },
            ),
        ),
        (
            "nack on the last attempt: dead letter",
            at(OUT_LIVE, 3),
            I::Nack,
            moved(settled(O::DeadLettered), 3, E::RecordDeadLetter),
        ),
        (
            "nack while the writer decides",
            at(PICKED, 1),
            I::Nack,
            moved(
                Phase::Owed {
                    not_before: secs(1),
                },
                1,
                E::Redeliver {
                    not_before: secs(1),
                },
            ),
        ),
        (
            "nack after the deadline, before the timer: a nack",
            at(OUT_EXPIRED, 1),
            I::Nack,
            moved(
                Phase::Owed {
                    not_before: secs(1),
                },
                1,
                E::Redeliver {
                    not_before: secs(1),
                },
            ),
        ),
        (
            "nack after the deadline made it owed: ignored",
            at(OWED_LATER, 1),
            I::Nack,
            Err(X::NotOut),
        ),
        (
            "nack of a never-sent delivery is ignored",
            at(DEFERRED, 0),
            I::Nack,
            Err(X::NotOut),
        ),
        (
            "nack after ack is ignored",
            at(settled(O::Acked), 1),
            I::Nack,
            Err(X::Settled(O::Acked)),
        ),
        (
            "nack after the subscription was deleted is ignored",
            at(settled(O::Dropped), 1),
            I::Nack,
            Err(X::Settled(O::Dropped)),
        ),
        // The ack deadline.
        (
            "deadline passed: owed after backoff",
            at(OUT_EXPIRED, 1),
            I::Deadline,
            moved(
                Phase::Owed {
                    not_before: secs(1),
                },
                1,
                E::Redeliver {
                    not_before: secs(1),
                },
            ),
        ),
        (
            "deadline passed on the last attempt: dead letter",
            at(OUT_EXPIRED, 3),
            I::Deadline,
            moved(settled(O::DeadLettered), 3, E::RecordDeadLetter),
        ),
        (
            "deadline not yet passed",
            at(OUT_LIVE, 1),
            I::Deadline,
            Err(X::NotExpired),
        ),
        (
            "no deadline while the writer decides",
            at(PICKED, 1),
            I::Deadline,
            Err(X::NotOut),
        ),
        (
            "no deadline while owed",
            at(OWED_DUE, 1),
            I::Deadline,
            Err(X::NotOut),
        ),
        // The event left the log; the subscription was deleted or seeked.
        (
            "expiry (retention) while in flight",
            at(OUT_LIVE, 1),
            I::Gone,
            moved(settled(O::Gone), 1, E::Forget),
        ),
        (
            "retention while owed",
            at(OWED_DUE, 1),
            I::Gone,
            moved(settled(O::Gone), 1, E::Forget),
        ),
        (
            "retention while deferred",
            at(DEFERRED, 0),
            I::Gone,
            moved(settled(O::Gone), 0, E::Forget),
        ),
        (
            "subscription deleted while in flight",
            at(OUT_LIVE, 1),
            I::Drop,
            moved(settled(O::Dropped), 1, E::Forget),
        ),
        (
            "seek back over a deferred one",
            at(DEFERRED, 0),
            I::Drop,
            moved(settled(O::Dropped), 0, E::Forget),
        ),
        (
            "drop after ack is ignored",
            at(settled(O::Acked), 1),
            I::Drop,
            Err(X::Settled(O::Acked)),
        ),
        // Dead letters put back.
        (
            "replay of a dead letter: owed now, attempts again from 0",
            Delivery::dead_letter(3, SENT_AT),
            I::Replay,
            moved(Phase::Owed { not_before: NOW }, 0, E::None),
        ),
        (
            "replay of what is out is ignored",
            at(OUT_LIVE, 1),
            I::Replay,
            Err(X::NotDeadLetter),
        ),
        (
            "replay of what was acked is ignored",
            at(settled(O::Acked), 1),
            I::Replay,
            Err(X::Settled(O::Acked)),
        ),
    ];
    let mut failures = Vec::new();
    for (name, from, input, want) in &rows {
        let got = step(from, *input, NOW, &policy());
        if got != *want {
            failures.push(format!(
                "{name}: {from:?} + {input:?}\n  want {want:?}\n  got  {got:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(rows.len() >= 45);
}

#[test]
fn an_ignored_input_changes_nothing_and_a_settled_one_stays_settled() {
    let inputs = [
        Input::Pick { stream: 1 },
        Input::Sent {
            attempt: 1,
            at: NOW,
        },
        Input::Withheld,
        Input::Release { stream: 1 },
        Input::Ack { attempt: 1 },
        Input::Nack,
        Input::Deadline,
        Input::Gone,
        Input::Drop,
    ];
    for o in [
        Outcome::Acked,
        Outcome::DeadLettered,
        Outcome::Withheld,
        Outcome::Gone,
        Outcome::Dropped,
    ] {
        for input in inputs {
            assert_eq!(
                step(&at(settled(o), 1), input, NOW, &policy()),
                Err(Ignored::Settled(o))
            );
        }
    }
}

#[test]
fn a_delivery_nacked_every_time_is_dead_lettered_after_max_attempts() {
    let p = policy();
    let mut d = Delivery::fresh();
    let mut now = NOW;
    let mut sends = Vec::new();
    loop {
        let (picked, effect) = step(&d, Input::Pick { stream: 1 }, now, &p).unwrap();
        let Effect::Submit { attempt } = effect else {
            panic!("{effect:?}")
        };
        sends.push(attempt);
        let (out, _) = step(&picked, Input::Sent { attempt, at: now }, now, &p).unwrap();
        match step(&out, Input::Nack, now, &p).unwrap() {
            (next, Effect::Redeliver { not_before }) => {
                assert_eq!(
                    step(&next, Input::Pick { stream: 1 }, now, &p),
                    Err(Ignored::NotDue)
                );
                now = not_before;
                d = next;
            }
            (dead, Effect::RecordDeadLetter) => {
                assert_eq!(dead.phase, Phase::Settled(Outcome::DeadLettered));
                assert_eq!(dead.attempts, 3);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(sends, [1, 2, 3]);
}

#[test]
fn backoff_doubles_up_to_the_cap() {
    let b = Backoff {
        base: Duration::from_millis(100),
        cap: Duration::from_secs(1),
    };
    let got: Vec<u128> = (1..=6).map(|n| b.delay(n).as_millis()).collect();
    assert_eq!(got, [100, 200, 400, 800, 1000, 1000]);
    assert_eq!(b.delay(u32::MAX), Duration::from_secs(1));
    assert_eq!(
        after(Micros(i64::MAX - 1), Duration::from_secs(1)),
        Micros(i64::MAX)
    );
}

#[test]
fn delivery_ids_round_trip() {
    assert_eq!(parse_delivery_id(&delivery_id(3, 99, 2)), Some((3, 99, 2)));
    assert_eq!(delivery_id(3, 99, 2), "3-99-2");
    let widest = delivery_id(u64::MAX, u64::MAX, u32::MAX);
    assert_eq!(widest, format!("{0}-{0}-{1}", u64::MAX, u32::MAX));
    assert_eq!(
        parse_delivery_id(&widest),
        Some((u64::MAX, u64::MAX, u32::MAX))
    );
    for bad in ["", "1-2", "a-2-3", "1-2-3-4", "1--3", "1-2-x"] {
        assert_eq!(parse_delivery_id(bad), None, "{bad}");
    }
}
