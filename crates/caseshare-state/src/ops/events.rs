//! Event operations: publishing (idempotent by event id, with a decision
//! per candidate recipient), correcting, retracting and expunging at the
//! end of retention.

use caseshare_core::pb;
use caseshare_core::principal::Principal;
use caseshare_core::pseudonym::payload_commitment;
use prost::Message;

use super::decision_entry;
use crate::machine::{Machine, Step};
use crate::records::{DeliveryRecord, DeliveryState, StoredEvent};
use crate::refusal::Refusal;
use crate::state::EventContext;

/// What superseding an event needs, read before anything changes.
struct Superseding {
    original: StoredEvent,
    decoded: pb::CaseEvent,
    received: Vec<String>,
}

impl Machine {
    pub(crate) fn publish(
        &mut self,
        step: &mut Step<'_>,
        actor: &Principal,
        request: pb::PublishRequest,
        event_type: &str,
        salt: [u8; 16],
    ) -> Result<pb::PublishResponse, Refusal> {
        let provider = actor.name.as_str();
        let event = request.event.unwrap_or_default();
        if !self.read().agencies.contains_key(provider) {
            return Err(Refusal::FailedPrecondition(format!(
                "agency {provider:?} is not registered; an administrator must register it before it can publish"
            )));
        }
        // Idempotent publish: an earlier event with this id, in this batch or
        // in the store, answers for this one.
        if let Some(first) = self.own_event(step, provider, &event.event_id)? {
            return Ok(pb::PublishResponse {
                sequence: first.sequence,
                duplicate: true,
                decisions: first.decisions,
                audit_index: first.audit_index,
                event_type: first.event_type,
                event_id: first.event_id,
            });
        }
        // A correction names an original; it is read before anything changes.
        let corrects = event.corrects_event_id.clone();
        let original = if corrects.is_empty() {
            None
        } else {
            self.own_event(step, provider, &corrects)?
                .filter(|o| o.notice.is_none() && !self.read().retracted.contains_key(&o.sequence))
        };
        let prepared = match original {
            Some(o) => Some(self.prepare_supersede(step, o)?),
            None => None,
        };

        let sequence = self.take_sequence();
        let context = EventContext::new(provider, event_type, &event, request.basis.as_ref());
        let event_bytes = event.encode_to_vec();
        let pseudonym = self.pseudonym(&context.nhs_number);
        let actor_id = actor.spiffe_id();
        let audit_index = step.audit(pb::AuditEntry {
            kind: pb::EntryKind::EventPublished as i32,
            actor: actor_id.clone(),
            child_pseudonym: pseudonym.clone(),
            event_id: event.event_id.clone(),
            event_type: event_type.to_string(),
            sequence,
            source_agency: provider.to_string(),
            payload_commitment: payload_commitment(&salt, &event_bytes).to_vec(),
            purpose: event.purpose,
            override_used: context.safeguarding_override.is_some(),
            safeguarding_override: context.safeguarding_override.clone(),
            ..Default::default()
        });
        let mut decisions = Vec::new();
        {
            let state = self.read();
            for recipient in state.candidates(&context, &request.to_agencies) {
                let decision = state
                    .decide(&context, &recipient, step.now)
                    .to_proto(&recipient);
                step.audit(decision_entry(
                    &actor_id,
                    &pseudonym,
                    &context,
                    &event.event_id,
                    sequence,
                    &decision,
                ));
                decisions.push(decision);
            }
        }
        step.draft.push_event(StoredEvent {
            sequence,
            source_agency: provider.to_string(),
            event_type: event_type.to_string(),
            published_at_micros: step.now.0,
            event: event_bytes,
            salt: salt.to_vec(),
            decisions: decisions.clone(),
            basis: request.basis,
            audit_index,
            event_id: event.event_id.clone(),
            to_agencies: request.to_agencies,
            notice: None,
            trace_context: request.trace_context,
        });
        if let Some(prepared) = prepared {
            // A correction: recipients of the original are told, and those
            // that have not received it yet never will.
            let notice = pb::EventNotice {
                kind: pb::NoticeKind::Corrected as i32,
                original_event_id: prepared.original.event_id.clone(),
                original_sequence: prepared.original.sequence,
                reason: String::new(),
                correcting_event_id: event.event_id.clone(),
            };
            let reason = format!("corrected by {}", event.event_id);
            self.supersede(step, prepared, notice, reason, audit_index);
        }
        Ok(pb::PublishResponse {
            sequence,
            duplicate: false,
            decisions,
            audit_index,
            event_type: event_type.to_string(),
            event_id: event.event_id,
        })
    }

    /// The stored event an agency published under `event_id`, looking in
    /// the draft first.
    fn own_event(
        &self,
        step: &Step<'_>,
        agency: &str,
        event_id: &str,
    ) -> Result<Option<StoredEvent>, Refusal> {
        if let Some(e) = step.draft.event(agency, event_id) {
            return Ok(Some(e.clone()));
        }
        Ok(step.lookup.event_by_id(agency, event_id)?)
    }

    /// Agencies that have been sent `original` (durably or in this draft).
    fn received(&self, step: &Step<'_>, original: &StoredEvent) -> Result<Vec<String>, Refusal> {
        let sent = |r: &DeliveryRecord| {
            matches!(
                r.state(),
                DeliveryState::Delivered | DeliveryState::Acked | DeliveryState::DeadLettered
            ) && r.reason != "notice"
        };
        let mut out = Vec::new();
        for d in original
            .decisions
            .iter()
            .filter(|d| d.decision == pb::Decision::Shared as i32)
        {
            // Copied out: no lock is held while the lookup reads.
            let subs: Vec<u64> = self
                .read()
                .subscriptions
                .values()
                .filter(|r| {
                    r.subscription
                        .as_ref()
                        .is_some_and(|s| s.agency_id == d.agency_id)
                })
                .map(|r| r.id)
                .collect();
            let in_draft = step.draft.batch.deliveries.iter().any(|r| {
                r.sequence == original.sequence && subs.contains(&r.subscription_id) && sent(r)
            });
            if in_draft
                || step
                    .lookup
                    .deliveries_of(&subs, original.sequence)?
                    .iter()
                    .any(sent)
            {
                out.push(d.agency_id.clone());
            }
        }
        Ok(out)
    }

    /// Reads what superseding `original` needs, before anything changes: a
    /// damaged event or a failed read refuses with nothing changed.
    fn prepare_supersede(
        &self,
        step: &Step<'_>,
        original: StoredEvent,
    ) -> Result<Superseding, Refusal> {
        let decoded = original.case_event()?;
        let received = self.received(step, &original)?;
        Ok(Superseding {
            original,
            decoded,
            received,
        })
    }

    /// Marks the original as not to be delivered any more and queues a
    /// notice event to every agency that received it. Returns (notices,
    /// stopped).
    fn supersede(
        &mut self,
        step: &mut Step<'_>,
        prepared: Superseding,
        notice: pb::EventNotice,
        reason: String,
        audit_index: u64,
    ) -> (u32, u32) {
        let Superseding {
            original,
            decoded,
            received,
        } = prepared;
        let shared = original
            .decisions
            .iter()
            .filter(|d| d.decision == pb::Decision::Shared as i32)
            .count();
        step.draft
            .batch
            .retracted
            .push((original.sequence, reason.clone()));
        self.write().retracted.insert(original.sequence, reason);
        if !received.is_empty() {
            let minimal = pb::CaseEvent {
                event_id: decoded.event_id.clone(),
                child: decoded.child.clone(),
                purpose: decoded.purpose,
                occurred_at: decoded.occurred_at,
                ..Default::default()
            };
            let sequence = self.take_sequence();
            step.draft.push_event(StoredEvent {
                sequence,
                source_agency: original.source_agency.clone(),
                event_type: original.event_type.clone(),
                published_at_micros: step.now.0,
                event: minimal.encode_to_vec(),
                salt: Vec::new(),
                decisions: received
                    .iter()
                    .map(|a| pb::SharingDecision {
                        agency_id: a.clone(),
                        decision: pb::Decision::Shared as i32,
                        reason: "notice".into(),
                        ..Default::default()
                    })
                    .collect(),
                basis: None,
                audit_index,
                event_id: format!("notice#{sequence}"),
                to_agencies: Vec::new(),
                notice: Some(notice),
                trace_context: original.trace_context.clone(),
            });
        }
        let notices = u32::try_from(received.len()).unwrap_or(u32::MAX);
        let stopped = u32::try_from(shared)
            .unwrap_or(u32::MAX)
            .saturating_sub(notices);
        (notices, stopped)
    }

    pub(crate) fn retract(
        &mut self,
        step: &mut Step<'_>,
        actor: &Principal,
        request: pb::RetractEventRequest,
    ) -> Result<pb::RetractEventResponse, Refusal> {
        let Some(original) = self.own_event(step, &actor.name, &request.event_id)? else {
            return Err(Refusal::NotFound(format!(
                "no event {:?} published by this agency",
                request.event_id
            )));
        };
        if original.notice.is_some() {
            return Err(Refusal::invalid("event_id", "a notice cannot be retracted"));
        }
        if self.read().retracted.contains_key(&original.sequence) {
            return Err(Refusal::FailedPrecondition(format!(
                "event {:?} is already retracted",
                request.event_id
            )));
        }
        let prepared = self.prepare_supersede(step, original)?;
        let original = prepared.original.clone();
        let nhs = prepared
            .decoded
            .child
            .as_ref()
            .map(|c| c.nhs_number.clone())
            .unwrap_or_default();
        let index = step.audit(pb::AuditEntry {
            kind: pb::EntryKind::EventRetracted as i32,
            actor: actor.spiffe_id(),
            child_pseudonym: self.pseudonym(&nhs),
            event_id: original.event_id.clone(),
            event_type: original.event_type.clone(),
            sequence: original.sequence,
            source_agency: original.source_agency.clone(),
            reason: request.reason.clone(),
            ..Default::default()
        });
        let notice = pb::EventNotice {
            kind: pb::NoticeKind::Retracted as i32,
            original_event_id: original.event_id.clone(),
            original_sequence: original.sequence,
            reason: request.reason.clone(),
            correcting_event_id: String::new(),
        };
        let reason = format!("retracted: {}", request.reason);
        let (notices_sent, deliveries_stopped) =
            self.supersede(step, prepared, notice, reason, index);
        Ok(pb::RetractEventResponse {
            notices_sent,
            deliveries_stopped,
        })
    }

    pub(crate) fn expunge(&mut self, step: &mut Step<'_>, events: Vec<(u64, String, String)>) {
        {
            let mut state = self.write();
            for (seq, _, _) in &events {
                state.retracted.remove(seq);
            }
        }
        step.draft.batch.deleted_events.extend(events);
    }
}
