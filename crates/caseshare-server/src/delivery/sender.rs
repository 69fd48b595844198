//! The sender: a stream's picked window goes to the writer to be re-decided
//! and recorded (`Op::Deliver`) without waiting for its commit; the
//! stream's sender task waits for each window's verdicts, in order, and
//! sends what is shared (minimised) or a notice, while the withheld ones
//! are settled. Each verdict reaches the delivery's state as
//! `Input::Sent` or `Input::Withheld`.
//!
//! Architecture Invariant: an event leaves the broker only after the writer
//! has re-decided it under the current agreements and consents and made its
//! EVENT_DELIVERED entry durable.

use std::sync::Arc;

use caseshare_core::minimise::minimise;
use caseshare_core::pb;
use caseshare_core::time::Micros;
use caseshare_state::EventContext;
use caseshare_state::delivery::{Input, delivery_id};
use tokio::sync::{mpsc, oneshot};

use super::Deliveries;
use super::pick::Pick;
use super::registry::SubRuntime;
use crate::errors::BrokerError;
use crate::writer::{DeliveryIntent, Op, Verdict, now};

/// The most deliveries one `Op::Deliver` records: the stream takes a wider
/// window in several. In cluster mode an op travels in one journal message
/// (at most 1 MiB); thousands of intents would not fit, and the append
/// would be refused on every try.
pub(super) const MAX_INTENTS_PER_OP: usize = 1_024;

/// One window submitted to the writer and not yet sent.
#[derive(Debug)]
pub(crate) struct InFlight {
    /// The send gate, held until this window is handed to the stream.
    pub(super) gate: tokio::sync::OwnedRwLockReadGuard<()>,
    pub(super) picks: Vec<Pick>,
    pub(super) verdicts: oneshot::Receiver<Result<Vec<Verdict>, BrokerError>>,
}

/// Marks `picks` of `stream` as owed again, at once (`now` on the
/// engine's clock).
pub(super) fn put_back(rt: &SubRuntime, stream: u64, picks: &[Pick], now: Micros) {
    let mut inner = rt.lock();
    for pick in picks {
        let _ = inner.apply(pick.sequence, Input::Release { stream }, now);
    }
}

/// What the writer needs to re-decide and record each pick of `rt`'s.
pub(super) fn intents(rt: &SubRuntime, picks: &[Pick]) -> Vec<DeliveryIntent> {
    let agency = &rt.subscription.agency_id;
    let mut intents = Vec::with_capacity(picks.len());
    for pick in picks {
        let context = EventContext::new(
            &pick.event.source_agency,
            &pick.event.event_type,
            &pick.decoded,
            pick.event.basis.as_ref(),
        );
        intents.push(DeliveryIntent {
            subscription_id: rt.id,
            subscription: rt.subscription.name.clone(),
            recipient: agency.clone(),
            sequence: pick.sequence,
            event_id: pick.event.event_id.clone(),
            attempt: pick.attempt,
            delivery_id: delivery_id(rt.id, pick.sequence, pick.attempt),
            context,
            notice: pick.event.notice.is_some(),
            expires_at: pick.decoded.expires_at.as_ref().map(Micros::from_timestamp),
        });
    }
    intents
}

impl Deliveries {
    /// Picks what the window allows and hands it to the writer to re-decide
    /// and record, without waiting for the commit: the stream's sender task
    /// (`send_in_flight`) waits for the verdicts and sends, in order, while
    /// this stream goes on reading acks and submitting the next window.
    /// Returns how many deliveries were taken from the subscription's state.
    pub(super) async fn submit_fill(
        &self,
        rt: &Arc<SubRuntime>,
        stream: u64,
        want: usize,
        queue: &mpsc::UnboundedSender<InFlight>,
    ) -> Result<usize, BrokerError> {
        // Held until every delivery decided here is handed to the stream
        // (the sender task drops it), so that a withdrawal or an ended
        // agreement that waits for the write side knows nothing it covers is
        // still on its way out.
        let gate = Arc::clone(&self.tail.send_gate).read_owned().await;
        let want = want.min(MAX_INTENTS_PER_OP);
        let picks = self.reader.pick(rt, stream, want, &self.clock).await?;
        if picks.is_empty() {
            return Ok(0);
        }
        let picked = picks.len();
        let intents = intents(rt, &picks);
        let verdicts = match self
            .writer
            .submit(|reply| Op::Deliver { intents, reply })
            .await
        {
            Ok(rx) => rx,
            Err(e) => {
                // Nothing was recorded: put the picks back as owed.
                self.put_back(rt, stream, &picks);
                return Err(e);
            }
        };
        // If the sender task has ended the stream is ending too; what was
        // picked is owed again when the stream's deliveries are released.
        let _ = queue.send(InFlight {
            gate,
            picks,
            verdicts,
        });
        Ok(picked)
    }

    /// Marks picked deliveries as owed again, at once.
    fn put_back(&self, rt: &SubRuntime, stream: u64, picks: &[Pick]) {
        put_back(rt, stream, picks, self.clock.now());
    }

    /// A stream's sender task: takes each submitted window in order, waits
    /// for the writer's verdicts (durable by then), minimises and sends what
    /// is shared, and settles what was stopped or expired.
    pub(super) async fn send_in_flight(
        self: Arc<Self>,
        rt: Arc<SubRuntime>,
        stream: u64,
        mut queue: mpsc::UnboundedReceiver<InFlight>,
        tx: crate::sendq::StreamTx,
    ) -> Result<(), BrokerError> {
        while let Some(in_flight) = queue.recv().await {
            let verdicts = match in_flight.verdicts.await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    self.put_back(&rt, stream, &in_flight.picks);
                    return Err(e);
                }
                Err(_) => {
                    self.put_back(&rt, stream, &in_flight.picks);
                    return Err(BrokerError::Unavailable(
                        "the broker's writer stopped".into(),
                    ));
                }
            };
            let open = self
                .send_verdicts(&rt, in_flight.picks, verdicts, &tx)
                .await?;
            drop(in_flight.gate);
            // Stopped or expired deliveries freed part of the window.
            rt.notify.notify_waiters();
            if !open {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Sends one window's shared deliveries and notices; returns false once
    /// the subscriber has gone.
    async fn send_verdicts(
        &self,
        rt: &SubRuntime,
        picks: Vec<Pick>,
        verdicts: Vec<Verdict>,
        tx: &crate::sendq::StreamTx,
    ) -> Result<bool, BrokerError> {
        let agency = &rt.subscription.agency_id;
        let mut sent = 0;
        let mut resent = 0;
        let clock_now = self.clock.now();
        let delivered_at = now();
        let mut open = true;
        for (pick, verdict) in picks.into_iter().zip(verdicts) {
            let traced = |decision, reason: &str| {
                crate::telemetry::spans::delivery(crate::telemetry::spans::DeliverySpan {
                    trace: pick.event.trace_context.as_ref(),
                    source_agency: &pick.event.source_agency,
                    recipient: agency,
                    subscription: &rt.subscription.name,
                    event_type: &pick.event.event_type,
                    sequence: pick.sequence,
                    attempt: pick.attempt,
                    decision,
                    reason,
                })
            };
            let (event, redacted, decision) = match verdict {
                Verdict::Shared(outcome) => {
                    let m = minimise(&pick.decoded, &outcome.fields).map_err(|e| {
                        tracing::error!(error = %e, "minimisation failed");
                        BrokerError::Internal(format!("minimisation failed: {e}"))
                    })?;
                    (m.event, m.redacted_fields, outcome.to_proto(agency))
                }
                Verdict::Notice => {
                    let decision = pick
                        .event
                        .decisions
                        .iter()
                        .find(|d| &d.agency_id == agency)
                        .cloned()
                        .unwrap_or_default();
                    (pick.decoded.clone(), Vec::new(), decision)
                }
                Verdict::Stopped(reason) => {
                    traced("stopped", &reason);
                    let _ = rt.lock().apply(pick.sequence, Input::Withheld, clock_now);
                    continue;
                }
                Verdict::Expired => {
                    traced("expired", "expired");
                    let _ = rt.lock().apply(pick.sequence, Input::Withheld, clock_now);
                    continue;
                }
            };
            if !open {
                // Not sent: it stays picked until the stream's deliveries
                // are released, and goes again with the same attempt.
                continue;
            }
            // A delivery the state no longer holds (acked late, or dropped
            // by a seek) goes out all the same: the writer recorded it.
            let _ = rt.lock().apply(
                pick.sequence,
                Input::Sent {
                    attempt: pick.attempt,
                    at: delivered_at,
                },
                clock_now,
            );
            traced(
                if pick.event.notice.is_some() {
                    "notice"
                } else {
                    "shared"
                },
                &decision.reason,
            );
            let delivery = pb::Delivery {
                delivery_id: delivery_id(rt.id, pick.sequence, pick.attempt),
                sequence: pick.sequence,
                attempt: pick.attempt,
                event: Some(event),
                source_agency: pick.event.source_agency,
                redacted_fields: redacted,
                decision: Some(decision),
                event_type: pick.event.event_type,
                published_at: Some(Micros(pick.event.published_at_micros).to_timestamp()),
                notice: pick.event.notice,
                trace_context: pick.event.trace_context,
            };
            if tx.send(Ok(delivery)).await.is_err() {
                open = false;
                continue;
            }
            sent += 1;
            if pick.attempt > 1 {
                resent += 1;
            } else {
                let waited = delivered_at
                    .0
                    .saturating_sub(pick.event.published_at_micros);
                self.latency.record(waited.max(0) as f64 / 1e6);
            }
        }
        metrics::counter!("caseshare_deliveries_sent_total").increment(sent);
        rt.redeliveries
            .fetch_add(resent, std::sync::atomic::Ordering::Relaxed);
        Ok(open)
    }
}
