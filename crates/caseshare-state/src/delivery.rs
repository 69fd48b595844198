//! One delivery's life as an explicit state machine: the [`Phase`] a
//! delivery (one event, one subscription) is in while it is unsettled, the
//! [`Input`]s that move it, and [`step`], the one function that holds every
//! allowed transition. The server's delivery registry keeps a [`Delivery`]
//! per unsettled sequence and changes it only through [`step`]; which
//! deliveries exist, the cursor and the floor are the registry's, and
//! talking to the client is the stream driver's.
//!
//! ```text
//!            Pick                 Sent                 Ack
//! Deferred ───────► Picked{s} ───────────► Out{s,deadline} ───► Settled(Acked)
//!                     │  ▲  │ Withheld          │ Nack / Deadline (passed)
//!                     │  │  └────► Settled(Withheld)   ├─ attempts < max ─► Owed{now+backoff}
//!          Release{s} │  │ Pick (due)                   └─ attempts ≥ max ─► Settled(DeadLettered)
//!                     ▼  │
//!                   Owed{not_before} ◄── Release{s} (from Out{s}) ; Replay (from DeadLettered)
//! any unsettled ── Gone ──► Settled(Gone) ; ── Drop ──► Settled(Dropped)
//! ```
//!
//! Decisions recorded here (today's observable behaviour, kept):
//! - **An ack settles the delivery, whichever attempt its id names.** A
//!   late ack of attempt 1 that arrives after attempt 2 was picked or sent
//!   settles it: the subscriber has the event, which is what at-least-once
//!   needs, and the audit entry keeps the delivery id that was acked. The
//!   redelivered copy's own ack then finds nothing ([`Ignored::Unknown`]).
//!   An ack of a delivery that was never sent (still [`Phase::Deferred`])
//!   is ignored.
//! - **A nack, or an expired deadline, applies only to a delivery on a
//!   stream** (picked or sent). A nack after the deadline passed and the
//!   timer made it owed again is ignored ([`Ignored::NotOut`]); one that
//!   arrives after the deadline but before the timer fired counts as a nack
//!   (owed after backoff, or dead-lettered, exactly as the timer would).
//! - **A settled delivery stays settled.** Every input on a settled
//!   delivery is ignored (double ack, ack after dead letter, ack after the
//!   subscription was deleted), except [`Input::Replay`] of a dead letter.
//!
//! No clock is read here: `now` is an input, a monotonic time in µs that the
//! caller keeps on one scale; `Sent::at` is the wall-clock time recorded.

use std::time::Duration;

use caseshare_core::time::Micros;

/// Redelivery backoff: `base · 2^(attempts-1)`, capped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first redelivery.
    pub base: Duration,
    /// Longest delay.
    pub cap: Duration,
}

impl Backoff {
    /// The delay before redelivering a delivery already sent `attempts` times.
    pub fn delay(&self, attempts: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempts.saturating_sub(1).min(20))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }
}

/// What a subscription's settings make of timing and attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// How long a sent delivery waits for its ack.
    pub ack_deadline: Duration,
    /// Sends before a delivery becomes a dead letter (at least 1).
    pub max_attempts: u32,
    /// Redelivery backoff.
    pub backoff: Backoff,
}

/// `t` plus `d`, saturating.
pub fn after(t: Micros, d: Duration) -> Micros {
    Micros(t.0.saturating_add(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)))
}

/// Why a delivery is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The subscriber acknowledged it.
    Acked,
    /// It used up its attempts.
    DeadLettered,
    /// The writer's re-check withheld it (stopped, retracted or expired).
    Withheld,
    /// Its event left the log (retention) before it was sent again.
    Gone,
    /// The subscription was deleted, or a seek moved the cursor back over it.
    Dropped,
}

/// Where an unsettled delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Read from the log, never sent; an ordered subscription's delivery
    /// waits here behind an earlier one for the same child.
    Deferred,
    /// Owed (again): to be sent at or after `not_before`.
    Owed {
        /// When it may be sent.
        not_before: Micros,
    },
    /// Taken by a stream; the writer is re-deciding and recording it.
    Picked {
        /// The stream.
        stream: u64,
    },
    /// Sent on a stream; owed again if not acknowledged by `deadline`.
    Out {
        /// The stream.
        stream: u64,
        /// The ack deadline.
        deadline: Micros,
    },
    /// Settled: nothing more happens to it (the registry forgets it).
    Settled(Outcome),
}

/// One delivery's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Where it stands.
    pub phase: Phase,
    /// Sends the writer has recorded.
    pub attempts: u32,
    /// Wall-clock time of the last send (0 before any).
    pub delivered_at: Micros,
}

impl Delivery {
    /// A delivery just read from the log.
    pub fn fresh() -> Self {
        Delivery {
            phase: Phase::Deferred,
            attempts: 0,
            delivered_at: Micros(0),
        }
    }

    /// A delivery recorded as sent and not settled, loaded at start: owed
    /// at once.
    pub fn loaded(attempts: u32, delivered_at: Micros, now: Micros) -> Self {
        Delivery {
            phase: Phase::Owed { not_before: now },
            attempts,
            delivered_at,
        }
    }

    /// A dead letter as the store holds it (for [`Input::Replay`]).
    pub fn dead_letter(attempts: u32, delivered_at: Micros) -> Self {
        Delivery {
            phase: Phase::Settled(Outcome::DeadLettered),
            attempts,
            delivered_at,
        }
    }

    /// The stream it is out on (picked or sent), if any.
    pub fn stream(&self) -> Option<u64> {
        match self.phase {
            Phase::Picked { stream } | Phase::Out { stream, .. } => Some(stream),
            _ => None,
        }
    }

    /// Whether it is settled.
    pub fn is_settled(&self) -> bool {
        matches!(self.phase, Phase::Settled(_))
    }

    fn to(self, phase: Phase) -> Self {
        Delivery { phase, ..self }
    }
}

/// What moves a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// A stream takes it to send (the next attempt).
    Pick {
        /// The stream.
        stream: u64,
    },
    /// The writer recorded attempt `attempt` as delivered at `at` (wall
    /// clock), and it is going out.
    Sent {
        /// The attempt recorded.
        attempt: u32,
        /// When.
        at: Micros,
    },
    /// The writer's re-check withheld it (stopped or expired).
    Withheld,
    /// The stream ended, or the writer refused its window: owed again now.
    Release {
        /// The stream.
        stream: u64,
    },
    /// The subscriber acknowledged it (`attempt` from the delivery id).
    Ack {
        /// The attempt its delivery id names.
        attempt: u32,
    },
    /// The subscriber nacked it.
    Nack,
    /// Its stream's timer fired: the ack deadline may have passed.
    Deadline,
    /// Its event is no longer in the log.
    Gone,
    /// The subscription was deleted, or a seek moved back over it.
    Drop,
    /// An operator put a dead letter back for delivery.
    Replay,
}

/// What the registry must do after a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Nothing more.
    None,
    /// Have the writer re-decide and record this attempt, then send it.
    Submit {
        /// The attempt number (1 = first send).
        attempt: u32,
    },
    /// Owed again after backoff (wake the streams at `not_before`).
    Redeliver {
        /// When.
        not_before: Micros,
    },
    /// Have the writer record the acknowledgement.
    RecordAck,
    /// Have the writer record the dead letter.
    RecordDeadLetter,
    /// Settled with nothing more to record (the writer already recorded
    /// it, or there is nothing to record); the floor may move.
    Forget,
}

/// Why an input was ignored (the delivery is unchanged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// The delivery is settled.
    Settled(Outcome),
    /// The registry holds no such delivery (settled and forgotten, seeked
    /// past, or never read): treated exactly as a settled one.
    Unknown,
    /// It was never sent, so there is nothing to acknowledge.
    NeverSent,
    /// It is not on a stream (owed, or not yet sent).
    NotOut,
    /// It is on a stream already.
    OnStream,
    /// It is on another stream.
    OtherStream,
    /// It is owed, but not yet due.
    NotDue,
    /// Its ack deadline has not passed.
    NotExpired,
    /// It was not picked, so no writer verdict applies to it.
    NotPicked,
    /// Only a dead letter can be replayed.
    NotDeadLetter,
}

/// The one transition function: `input` applied to `d` at monotonic time
/// `now`, under `policy`. Every allowed transition is a line of this match;
/// everything else is [`Ignored`] and leaves the delivery as it was.
pub fn step(
    d: &Delivery,
    input: Input,
    now: Micros,
    policy: &Policy,
) -> Result<(Delivery, Effect), Ignored> {
    use Input as I;
    use Phase as P;
    let d = *d;
    let settled = |o| Ok((d.to(P::Settled(o)), Effect::Forget));
    match (d.phase, input) {
        (P::Settled(Outcome::DeadLettered), I::Replay) => Ok((
            Delivery {
                phase: P::Owed { not_before: now },
                attempts: 0,
                delivered_at: Micros(0),
            },
            Effect::None,
        )),
        (P::Settled(o), _) => Err(Ignored::Settled(o)),
        (_, I::Replay) => Err(Ignored::NotDeadLetter),
        (_, I::Gone) => settled(Outcome::Gone),
        (_, I::Drop) => settled(Outcome::Dropped),

        (P::Deferred, I::Pick { stream }) => pick(d, stream),
        (P::Owed { not_before }, I::Pick { stream }) if not_before <= now => pick(d, stream),
        (P::Owed { .. }, I::Pick { .. }) => Err(Ignored::NotDue),
        (P::Picked { .. } | P::Out { .. }, I::Pick { .. }) => Err(Ignored::OnStream),

        (P::Picked { stream }, I::Sent { attempt, at }) => Ok((
            Delivery {
                phase: P::Out {
                    stream,
                    deadline: after(now, policy.ack_deadline),
                },
                attempts: attempt,
                delivered_at: at,
            },
            Effect::None,
        )),
        // Nacked (or released) while the writer decided: it goes out all
        // the same, so the send counts, and it stays owed.
        (P::Owed { .. }, I::Sent { attempt, at }) => Ok((
            Delivery {
                attempts: d.attempts.max(attempt),
                delivered_at: at,
                ..d
            },
            Effect::None,
        )),
        (P::Deferred | P::Out { .. }, I::Sent { .. }) => Err(Ignored::NotPicked),

        (P::Picked { .. } | P::Owed { .. }, I::Withheld) => settled(Outcome::Withheld),
        (P::Deferred | P::Out { .. }, I::Withheld) => Err(Ignored::NotPicked),

        (P::Picked { stream: s } | P::Out { stream: s, .. }, I::Release { stream })
            if s == stream =>
        {
            Ok((d.to(P::Owed { not_before: now }), Effect::None))
        }
        (P::Picked { .. } | P::Out { .. }, I::Release { .. }) => Err(Ignored::OtherStream),
        (P::Deferred | P::Owed { .. }, I::Release { .. }) => Err(Ignored::NotOut),

        // Whichever attempt the id names (see the module doc).
        (P::Owed { .. } | P::Picked { .. } | P::Out { .. }, I::Ack { attempt: _ }) => {
            Ok((d.to(P::Settled(Outcome::Acked)), Effect::RecordAck))
        }
        (P::Deferred, I::Ack { .. }) => Err(Ignored::NeverSent),

        (P::Picked { .. } | P::Out { .. }, I::Nack) => Ok(expire(d, now, policy)),
        (P::Deferred | P::Owed { .. }, I::Nack) => Err(Ignored::NotOut),

        (P::Out { deadline, .. }, I::Deadline) if deadline <= now => Ok(expire(d, now, policy)),
        (P::Out { .. }, I::Deadline) => Err(Ignored::NotExpired),
        (P::Deferred | P::Owed { .. } | P::Picked { .. }, I::Deadline) => Err(Ignored::NotOut),
    }
}

fn pick(d: Delivery, stream: u64) -> Result<(Delivery, Effect), Ignored> {
    Ok((
        d.to(Phase::Picked { stream }),
        Effect::Submit {
            attempt: d.attempts.saturating_add(1),
        },
    ))
}

/// Owed again after backoff, or a dead letter once its attempts are used.
fn expire(d: Delivery, now: Micros, policy: &Policy) -> (Delivery, Effect) {
    if d.attempts >= policy.max_attempts.max(1) {
        (
            d.to(Phase::Settled(Outcome::DeadLettered)),
            Effect::RecordDeadLetter,
        )
    } else {
        let not_before = after(now, policy.backoff.delay(d.attempts));
        (
            d.to(Phase::Owed { not_before }),
            Effect::Redeliver { not_before },
        )
    }
}

/// The delivery id of one attempt: `<subscription>-<sequence>-<attempt>`.
pub fn delivery_id(subscription_id: u64, sequence: u64, attempt: u32) -> String {
    use std::fmt::Write as _;
    // Sized for the longest id at once: `format!` would start small and
    // grow the string two or three times, for every delivery and ack.
    let mut id = String::with_capacity(20 + 1 + 20 + 1 + 10);
    let _ = write!(id, "{subscription_id}-{sequence}-{attempt}");
    id
}

/// (subscription, sequence, attempt) of a delivery id, if well formed.
pub fn parse_delivery_id(id: &str) -> Option<(u64, u64, u32)> {
    let mut parts = id.split('-');
    let sub = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    let attempt = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((sub, seq, attempt))
}

#[cfg(test)]
#[path = "delivery_table.rs"]
mod table;
