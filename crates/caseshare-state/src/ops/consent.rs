//! Consent operations: recording and withdrawing a child's consent.

use caseshare_core::pb;
use caseshare_core::principal::Principal;

use crate::machine::{Machine, Step};
use crate::refusal::Refusal;

impl Machine {
    pub(crate) fn record_consent(
        &mut self,
        step: &mut Step<'_>,
        actor: &Principal,
        mut consent: pb::ConsentRecord,
        generated_id: bool,
    ) -> Result<pb::ConsentRecord, Refusal> {
        if consent.consent_id.is_empty() {
            return Err(Refusal::invalid(
                "consent.consent_id",
                "the broker draws an id when none is given; an empty id reached the state machine",
            ));
        }
        if self.read().consent(&consent.consent_id).is_some() {
            // A drawn id that collides is the server's fault, not the
            // caller's; it is refused all the same and nothing changes.
            let who = if generated_id { "drawn " } else { "" };
            return Err(Refusal::AlreadyExists(format!(
                "consent {who}{:?} already exists",
                consent.consent_id
            )));
        }
        consent.recorded_by = actor.name.clone();
        consent.recorded_at = Some(step.now.to_timestamp());
        consent.withdrawn_at = None;
        consent.withdrawal_reason.clear();
        if consent.valid_from.is_none() {
            consent.valid_from = consent.recorded_at;
        }
        step.audit(pb::AuditEntry {
            kind: pb::EntryKind::ConsentRecorded as i32,
            actor: actor.spiffe_id(),
            child_pseudonym: self.pseudonym(&consent.nhs_number),
            consent_id: consent.consent_id.clone(),
            purpose: consent.purposes.first().copied().unwrap_or_default(),
            subject: consent.recipients.join(","),
            ..Default::default()
        });
        step.draft.batch.consents.push(consent.clone());
        self.write().put_consent(consent.clone());
        Ok(consent)
    }

    pub(crate) fn withdraw_consent(
        &mut self,
        step: &mut Step<'_>,
        actor: &Principal,
        request: pb::WithdrawConsentRequest,
    ) -> Result<pb::ConsentRecord, Refusal> {
        let Some(mut consent) = self.read().consent(&request.consent_id).cloned() else {
            return Err(Refusal::NotFound(format!(
                "no consent {:?}",
                request.consent_id
            )));
        };
        let may = consent.recorded_by == actor.name
            || consent.recipients.iter().any(|r| r == &actor.name);
        if !may {
            // A refusal on standing, like one by role, is on the record:
            // the server counts it with the other refusals (aggregated).
            return Err(Refusal::PermissionDenied(
                "a consent may be withdrawn by the agency that recorded it or an agency it names"
                    .into(),
            ));
        }
        if consent.withdrawn_at.is_some() {
            return Ok(consent);
        }
        consent.withdrawn_at = Some(step.now.to_timestamp());
        consent.withdrawal_reason = request.reason;
        step.audit(pb::AuditEntry {
            kind: pb::EntryKind::ConsentWithdrawn as i32,
            actor: actor.spiffe_id(),
            child_pseudonym: self.pseudonym(&consent.nhs_number),
            consent_id: consent.consent_id.clone(),
            reason: consent.withdrawal_reason.clone(),
            ..Default::default()
        });
        step.draft.batch.consents.push(consent.clone());
        self.write().put_consent(consent.clone());
        Ok(consent)
    }
}
