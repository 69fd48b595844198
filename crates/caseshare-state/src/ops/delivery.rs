//! Delivery operations: the re-decision just before a send (a delivery
//! is shared only if the state allows it at that moment), acknowledgements
//! and dead letters. Each records one delivery record and one audit entry
//! per delivery.

use caseshare_core::decision::Reason;
use caseshare_core::pb;
use caseshare_core::principal::Principal;
use caseshare_core::time::Micros;

use super::decision_entry;
use crate::command::{AckIntent, DeliveryIntent, SubscriptionRef, Verdict};
use crate::machine::{Machine, Step, newest_over};
use crate::records::{DeliveryRecord, DeliveryState};
use crate::refusal::LookupError;

/// The reason given for an intent whose delivery was already settled.
pub const ALREADY_SETTLED: &str = "already settled";

/// The newest record of (`subscription`, s) for each s of `sequences`, in
/// order: this draft first (its records, then its seeks, which delete
/// records from their target), then the durable records, asked for in one
/// lookup.
fn newest_records(
    step: &Step<'_>,
    subscription: u64,
    sequences: &[u64],
) -> Result<Vec<Option<DeliveryRecord>>, LookupError> {
    let draft = &*step.draft;
    newest_over(
        sequences,
        |sequence| match draft.newest_delivery(subscription, sequence) {
            Some(r) => Some(Some(r.clone())),
            None => draft
                .batch
                .seek_deletes(subscription, sequence)
                .then_some(None),
        },
        |asked| step.lookup.newest_deliveries(subscription, asked),
    )
}

/// How deliveries were settled, for [`Machine::settle`].
struct Settled {
    kind: pb::EntryKind,
    state: DeliveryState,
    actor: String,
    recipient: String,
}

/// The record of one delivery intent reaching `state` at `now`.
fn intent_record(
    intent: &DeliveryIntent,
    state: DeliveryState,
    now: Micros,
    reason: &str,
) -> DeliveryRecord {
    let sent = state == DeliveryState::Delivered;
    DeliveryRecord {
        subscription_id: intent.subscription_id,
        sequence: intent.sequence,
        state: state as i32,
        // A stopped or expired delivery was not sent this time.
        attempts: if sent {
            intent.attempt
        } else {
            intent.attempt.saturating_sub(1)
        },
        delivered_at_micros: if sent { now.0 } else { 0 },
        reason: reason.to_string(),
        settled_at_micros: if sent { 0 } else { now.0 },
        ..Default::default()
    }
}

impl Machine {
    /// Re-decides each intent. An intent whose delivery is already settled
    /// (acknowledged or dead-lettered through another stream, on this
    /// replica or another in cluster mode) is stopped without a record or
    /// an entry: the journal, not any one replica's memory, says what is
    /// settled. The checks read first, so a failed lookup refuses the whole
    /// op and changes nothing.
    pub(crate) fn deliver(
        &mut self,
        step: &mut Step<'_>,
        intents: Vec<DeliveryIntent>,
    ) -> Result<Vec<Verdict>, LookupError> {
        // One lookup per run of intents of one subscription (a window's
        // are all of one).
        let mut settled = Vec::with_capacity(intents.len());
        for run in intents.chunk_by(|a, b| a.subscription_id == b.subscription_id) {
            let sequences: Vec<u64> = run.iter().map(|i| i.sequence).collect();
            let records = newest_records(step, run[0].subscription_id, &sequences)?;
            settled.extend(
                records
                    .into_iter()
                    .map(|r| r.is_some_and(|r| r.is_settled())),
            );
        }
        let mut verdicts = Vec::with_capacity(intents.len());
        for (intent, settled) in intents.into_iter().zip(settled) {
            let verdict = if settled {
                Verdict::Stopped(ALREADY_SETTLED.into())
            } else {
                self.deliver_one(step, &intent)
            };
            verdicts.push(verdict);
        }
        Ok(verdicts)
    }

    fn deliver_one(&self, step: &mut Step<'_>, intent: &DeliveryIntent) -> Verdict {
        let state = self.read();
        // A window picked just before its subscription was deleted: nothing
        // is sent and nothing recorded for a subscription that no longer
        // exists.
        if !state.subscriptions.contains_key(&intent.subscription_id) {
            return Verdict::Stopped("the subscription was deleted".into());
        }
        let now = step.now;
        let base = pb::AuditEntry {
            actor: "system".into(),
            child_pseudonym: self.pseudonym(&intent.context.nhs_number),
            event_id: intent.event_id.clone(),
            event_type: intent.context.event_type.clone(),
            sequence: intent.sequence,
            source_agency: intent.context.provider.clone(),
            recipient_agency: intent.recipient.clone(),
            subscription: intent.subscription.clone(),
            delivery_id: intent.delivery_id.clone(),
            attempt: intent.attempt,
            purpose: intent.context.purpose as i32,
            ..Default::default()
        };
        let retracted = state.retracted.get(&intent.sequence);
        let verdict = if intent.notice {
            Verdict::Notice
        } else if let Some(reason) = retracted {
            Verdict::Stopped(reason.clone())
        } else if intent.expires_at.is_some_and(|t| t <= now) {
            Verdict::Expired
        } else {
            let outcome = state.decide(&intent.context, &intent.recipient, now);
            if outcome.is_shared() {
                Verdict::Shared(outcome)
            } else {
                let decision = outcome.to_proto(&intent.recipient);
                let mut e = decision_entry(
                    "system",
                    &base.child_pseudonym,
                    &intent.context,
                    &intent.event_id,
                    intent.sequence,
                    &decision,
                );
                e.subscription = intent.subscription.clone();
                e.delivery_id = intent.delivery_id.clone();
                step.audit(e);
                Verdict::Stopped(outcome.reason.as_str().to_string())
            }
        };
        let (entry, record) = match &verdict {
            Verdict::Shared(outcome) => (
                Some(pb::AuditEntry {
                    kind: pb::EntryKind::EventDelivered as i32,
                    agreement_id: outcome.agreement_id.clone(),
                    consent_id: outcome.consent_id.clone(),
                    lawful_basis: outcome.lawful_basis as i32,
                    override_used: outcome.reason == Reason::Override,
                    ..base
                }),
                intent_record(intent, DeliveryState::Delivered, now, ""),
            ),
            Verdict::Notice => (
                Some(pb::AuditEntry {
                    kind: pb::EntryKind::EventDelivered as i32,
                    reason: "notice".into(),
                    ..base
                }),
                intent_record(intent, DeliveryState::Delivered, now, "notice"),
            ),
            Verdict::Stopped(reason) => (
                retracted.map(|_| pb::AuditEntry {
                    kind: pb::EntryKind::ShareDecided as i32,
                    decision: pb::Decision::Withheld as i32,
                    reason: "event_retracted".into(),
                    ..base
                }),
                intent_record(intent, DeliveryState::Stopped, now, reason),
            ),
            Verdict::Expired => (
                Some(pb::AuditEntry {
                    kind: pb::EntryKind::EventExpired as i32,
                    ..base
                }),
                intent_record(intent, DeliveryState::Expired, now, "expired"),
            ),
        };
        drop(state);
        if let Some(e) = entry {
            step.audit(e);
        }
        step.draft.push_delivery(record);
        verdict
    }

    pub(crate) fn ack(
        &mut self,
        step: &mut Step<'_>,
        actor: &Principal,
        subscription: &SubscriptionRef,
        acks: Vec<AckIntent>,
        floor: Option<u64>,
    ) -> Result<(), LookupError> {
        let how = Settled {
            kind: pb::EntryKind::EventAcked,
            state: DeliveryState::Acked,
            actor: actor.spiffe_id(),
            recipient: actor.name.clone(),
        };
        self.settle(step, &how, subscription, acks, floor)
    }

    pub(crate) fn dead_letter(
        &mut self,
        step: &mut Step<'_>,
        subscription: &SubscriptionRef,
        recipient: &str,
        items: Vec<AckIntent>,
        floor: Option<u64>,
    ) -> Result<(), LookupError> {
        let how = Settled {
            kind: pb::EntryKind::DeadLettered,
            state: DeliveryState::DeadLettered,
            actor: "system".into(),
            recipient: recipient.to_string(),
        };
        self.settle(step, &how, subscription, items, floor)
    }

    /// Records settled deliveries (acknowledged or dead-lettered): one
    /// audit entry and one delivery record each, and the new floor.
    ///
    /// Only a delivery that is out settles: one whose newest record is
    /// `Delivered` with the same attempt. A settlement of anything else is
    /// stale — it was decided before a seek deleted the record, or a
    /// delivery settled through another stream (another replica) — and is
    /// ignored, with the floor it carried; the reads come first, so a
    /// failed lookup refuses the op and changes nothing.
    fn settle(
        &self,
        step: &mut Step<'_>,
        how: &Settled,
        subscription: &SubscriptionRef,
        items: Vec<AckIntent>,
        floor: Option<u64>,
    ) -> Result<(), LookupError> {
        let acked = how.state == DeliveryState::Acked;
        // Settlements that reach the machine after their subscription was
        // deleted would leave delivery records nobody removes.
        if !self.read().subscriptions.contains_key(&subscription.id) {
            return Ok(());
        }
        let sequences: Vec<u64> = items.iter().map(|a| a.sequence).collect();
        let current = newest_records(step, subscription.id, &sequences)?;
        let out: Vec<bool> = items
            .iter()
            .zip(current)
            .map(|(a, r)| {
                r.is_some_and(|r| r.state() == DeliveryState::Delivered && r.attempts == a.attempts)
            })
            .collect();
        let floor = if out.iter().all(|o| *o) { floor } else { None };
        for (a, _) in items.into_iter().zip(out).filter(|(_, o)| *o) {
            step.audit(pb::AuditEntry {
                kind: how.kind as i32,
                actor: how.actor.clone(),
                child_pseudonym: self.pseudonym(&a.nhs_number),
                event_id: a.event_id,
                sequence: a.sequence,
                recipient_agency: how.recipient.clone(),
                subscription: subscription.name.clone(),
                delivery_id: a.delivery_id,
                attempt: a.attempts,
                ..Default::default()
            });
            step.draft.push_delivery(DeliveryRecord {
                subscription_id: subscription.id,
                sequence: a.sequence,
                state: how.state as i32,
                attempts: a.attempts,
                delivered_at_micros: a.delivered_at.0,
                acked_at_micros: if acked { step.now.0 } else { 0 },
                settled_at_micros: if acked { 0 } else { step.now.0 },
                ..Default::default()
            });
        }
        if let Some(f) = floor {
            step.draft.batch.floors.push((subscription.id, f));
        }
        Ok(())
    }
}
