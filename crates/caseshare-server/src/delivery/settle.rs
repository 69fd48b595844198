//! Settling deliveries: acks and nacks (inline on a stream or unary), ack
//! deadlines that passed, and dead letters. Each goes through the state
//! machine (`Input::Ack`, `Input::Nack`, `Input::Deadline`) under the
//! subscription's lock; what it settles goes to the writer with the new
//! floor. Event reads that complete a record run on the blocking pool.

use std::collections::BTreeSet;
use std::sync::Arc;

use caseshare_core::principal::Principal;
use caseshare_state::delivery::{Effect, Input, Phase, delivery_id, parse_delivery_id};
use caseshare_store::Storage;

use super::Deliveries;
use super::registry::{Pending, SubRuntime};
use crate::errors::BrokerError;
use crate::writer::{AckIntent, Op};

/// Dead letters to record, and the floor that moved with them.
pub(crate) struct Expired {
    dead: Vec<AckIntent>,
    floor: Option<u64>,
}

fn intent(sequence: u64, delivery_id: String, p: Pending) -> AckIntent {
    AckIntent {
        sequence,
        delivery_id,
        attempts: p.state().attempts,
        delivered_at: p.state().delivered_at,
        event_id: p.event_id,
        nhs_number: p.nhs_number,
    }
}

/// (sequence, attempt) of each id, all of which must be this
/// subscription's.
fn parse_ids(rt: &SubRuntime, ids: &[String]) -> Result<Vec<(u64, u32)>, BrokerError> {
    ids.iter()
        .map(|id| match parse_delivery_id(id) {
            Some((sub, seq, attempt)) if sub == rt.id => Ok((seq, attempt)),
            _ => Err(BrokerError::invalid(
                "delivery_ids",
                format!("{id:?} is not a delivery id of this subscription"),
            )),
        })
        .collect()
}

/// Fills in what a delivery loaded at start did not know, reading the
/// events on the blocking pool.
async fn complete(store: &Arc<dyn Storage>, items: &mut Vec<AckIntent>) -> Result<(), BrokerError> {
    if items
        .iter()
        .all(|a| !a.event_id.is_empty() && !a.nhs_number.is_empty())
    {
        return Ok(());
    }
    let store = Arc::clone(store);
    let mut owned = std::mem::take(items);
    *items = crate::off_runtime(move || -> Result<Vec<AckIntent>, BrokerError> {
        for a in &mut owned {
            if (a.event_id.is_empty() || a.nhs_number.is_empty())
                && let Some(ev) = store.event(a.sequence)?
            {
                a.event_id = ev.event_id.clone();
                let e = ev.case_event()?;
                a.nhs_number = e.child.map(|c| c.nhs_number).unwrap_or_default();
            }
        }
        Ok(owned)
    })
    .await?;
    Ok(())
}

/// With trace export on, the stored trace context and event type of each
/// dead letter's event (read on the blocking pool); empty otherwise, or if
/// the read fails (a trace is never worth failing a dead letter for).
async fn traces_of(
    store: &Arc<dyn Storage>,
    dead: &[AckIntent],
) -> Vec<(u64, u32, String, caseshare_core::pb::TraceContext)> {
    if !crate::telemetry::exporting() {
        return Vec::new();
    }
    let store = Arc::clone(store);
    let wanted: Vec<(u64, u32)> = dead.iter().map(|d| (d.sequence, d.attempts)).collect();
    crate::off_runtime(move || {
        let mut out = Vec::new();
        for (sequence, attempts) in wanted {
            if let Some(ev) = store.event(sequence)?
                && let Some(trace) = ev.trace_context
            {
                out.push((sequence, attempts, ev.event_type, trace));
            }
        }
        Ok(out)
    })
    .await
    .unwrap_or_default()
}

impl Deliveries {
    /// Settles acknowledged deliveries and persists them with the new floor.
    /// With `durable`, answers once the acknowledgements are committed (unary
    /// Ack); without, queues them behind this stream's earlier writes and
    /// goes on (inline acks are never confirmed to the client, and the
    /// writer's queue keeps one stream's writes in order).
    pub(super) async fn ack_ids(
        &self,
        actor: &Arc<Principal>,
        rt: &SubRuntime,
        ids: &[String],
        durable: bool,
    ) -> Result<u32, BrokerError> {
        let parsed = parse_ids(rt, ids)?;
        let mut acks = Vec::new();
        let floor;
        {
            let now = self.clock.now();
            let mut inner = rt.lock();
            if inner.deleted {
                return Ok(0);
            }
            for ((seq, attempt), id) in parsed.into_iter().zip(ids) {
                if let Ok(applied) = inner.apply(seq, Input::Ack { attempt }, now)
                    && applied.effect == Effect::RecordAck
                    && let Some(p) = applied.settled
                {
                    acks.push(intent(seq, id.clone(), p));
                }
            }
            floor = inner.take_floor();
        }
        complete(&self.store, &mut acks).await?;
        let n = u32::try_from(acks.len()).unwrap_or(u32::MAX);
        if acks.is_empty() && floor.is_none() {
            return Ok(0);
        }
        let pending = self
            .writer
            .submit(|reply| Op::Ack {
                actor: actor.clone(),
                subscription_id: rt.id,
                subscription: rt.subscription.name.clone(),
                acks,
                floor,
                lazy: !durable,
                reply,
            })
            .await?;
        if durable {
            pending
                .await
                .map_err(|_| BrokerError::Unavailable("the broker's writer stopped".into()))??;
        }
        rt.notify.notify_waiters();
        Ok(n)
    }

    /// Applies `input` (a nack, or the deadline timer) to the deliveries
    /// `seqs`: each is owed again after backoff, or a dead letter once it
    /// has used its attempts. Returns how many it moved, and the dead
    /// letters to record.
    fn expire(&self, rt: &SubRuntime, seqs: &BTreeSet<u64>, input: Input) -> (u32, Expired) {
        let now = self.clock.now();
        let mut moved = 0;
        let mut dead = Vec::new();
        let mut inner = rt.lock();
        for &seq in seqs {
            let Ok(applied) = inner.apply(seq, input, now) else {
                continue;
            };
            moved += 1;
            if applied.effect == Effect::RecordDeadLetter
                && let Some(p) = applied.settled
            {
                let id = delivery_id(rt.id, seq, p.state().attempts);
                dead.push(intent(seq, id, p));
            }
        }
        let floor = if dead.is_empty() {
            None
        } else {
            inner.take_floor()
        };
        drop(inner);
        rt.notify.notify_waiters();
        (moved, Expired { dead, floor })
    }

    /// The stream's timer: its deliveries past their ack deadline are owed
    /// again after backoff, or dead-lettered.
    pub(super) async fn expire_deadlines(
        &self,
        rt: &SubRuntime,
        stream: u64,
    ) -> Result<(), BrokerError> {
        let out: BTreeSet<u64> = rt
            .lock()
            .pending()
            .filter(|(_, p)| matches!(p.state().phase, Phase::Out { stream: s, .. } if s == stream))
            .map(|(s, _)| s)
            .collect();
        let (_, expired) = self.expire(rt, &out, Input::Deadline);
        self.dead_letter(rt, expired).await
    }

    async fn dead_letter(&self, rt: &SubRuntime, expired: Expired) -> Result<(), BrokerError> {
        if expired.dead.is_empty() {
            return Ok(());
        }
        let mut dead = expired.dead;
        complete(&self.store, &mut dead).await?;
        rt.dead_letters
            .fetch_add(dead.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let traced = traces_of(&self.store, &dead).await;
        self.writer
            .call(|reply| Op::DeadLetter {
                subscription_id: rt.id,
                subscription: rt.subscription.name.clone(),
                recipient: rt.subscription.agency_id.clone(),
                items: dead,
                floor: expired.floor,
                reply,
            })
            .await?;
        // Each dead letter joins its event's trace (export on only).
        for (sequence, attempts, event_type, trace) in traced {
            crate::telemetry::spans::dead_letter(
                Some(&trace),
                &rt.subscription.agency_id,
                &rt.subscription.name,
                &event_type,
                sequence,
                attempts,
            );
        }
        Ok(())
    }

    pub(super) async fn nack_ids(
        &self,
        rt: &SubRuntime,
        ids: &[String],
    ) -> Result<u32, BrokerError> {
        let seqs: BTreeSet<u64> = parse_ids(rt, ids)?.into_iter().map(|(s, _)| s).collect();
        let (n, expired) = self.expire(rt, &seqs, Input::Nack);
        self.dead_letter(rt, expired).await?;
        Ok(n)
    }

    /// Unary Ack.
    pub async fn ack(
        &self,
        actor: &Arc<Principal>,
        name: &str,
        ids: &[String],
    ) -> Result<u32, BrokerError> {
        let rt = self.runtime(&actor.name, name)?;
        self.ack_ids(actor, &rt, ids, true).await
    }

    /// Unary Nack.
    pub async fn nack(
        &self,
        actor: &Principal,
        name: &str,
        ids: &[String],
    ) -> Result<u32, BrokerError> {
        let rt = self.runtime(&actor.name, name)?;
        self.nack_ids(&rt, ids).await
    }
}
