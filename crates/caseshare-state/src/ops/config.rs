//! Configuration operations: registering agencies and putting or ending
//! agreements.

use caseshare_core::pb;
use caseshare_core::principal::Principal;

use crate::machine::{Machine, Step};
use crate::refusal::Refusal;

impl Machine {
    pub(crate) fn register_agency(
        &mut self,
        step: &mut Step<'_>,
        actor: &Principal,
        request: pb::RegisterAgencyRequest,
    ) -> Result<pb::Agency, Refusal> {
        if self.read().agencies.contains_key(&request.agency_id) {
            return Err(Refusal::AlreadyExists(format!(
                "agency {:?} is already registered",
                request.agency_id
            )));
        }
        let agency = pb::Agency {
            agency_id: request.agency_id,
            kind: request.kind,
            display_name: request.display_name,
            registered_at: Some(step.now.to_timestamp()),
        };
        step.audit(pb::AuditEntry {
            kind: pb::EntryKind::AgencyRegistered as i32,
            actor: actor.spiffe_id(),
            subject: agency.agency_id.clone(),
            ..Default::default()
        });
        step.draft.batch.agencies.push(agency.clone());
        self.write()
            .agencies
            .insert(agency.agency_id.clone(), agency.clone());
        Ok(agency)
    }

    fn check_party(&self, field: &str, party: &str) -> Result<(), Refusal> {
        if !party.starts_with("kind:") && !self.read().agencies.contains_key(party) {
            return Err(Refusal::FailedPrecondition(format!(
                "{field}: agency {party:?} is not registered"
            )));
        }
        Ok(())
    }

    pub(crate) fn put_agreement(
        &mut self,
        step: &mut Step<'_>,
        actor: &Principal,
        mut agreement: pb::Agreement,
    ) -> Result<pb::Agreement, Refusal> {
        self.check_party("provider", &agreement.provider)?;
        self.check_party("recipient", &agreement.recipient)?;
        if agreement.valid_from.is_none() {
            agreement.valid_from = Some(step.now.to_timestamp());
        }
        agreement.ended_at = None;
        agreement.end_reason.clear();
        let replaced = self
            .read()
            .agreements
            .get(&agreement.agreement_id)
            .is_some();
        step.audit(pb::AuditEntry {
            kind: pb::EntryKind::AgreementChanged as i32,
            actor: actor.spiffe_id(),
            agreement_id: agreement.agreement_id.clone(),
            lawful_basis: agreement.lawful_basis,
            source_agency: agreement.provider.clone(),
            recipient_agency: agreement.recipient.clone(),
            reason: if replaced {
                "replaced".into()
            } else {
                "created".into()
            },
            ..Default::default()
        });
        step.draft.batch.agreements.push(agreement.clone());
        self.write().agreements.put(agreement.clone());
        Ok(agreement)
    }

    pub(crate) fn end_agreement(
        &mut self,
        step: &mut Step<'_>,
        actor: &Principal,
        request: pb::EndAgreementRequest,
    ) -> Result<pb::Agreement, Refusal> {
        let Some(mut agreement) = self.read().agreements.get(&request.agreement_id).cloned() else {
            return Err(Refusal::NotFound(format!(
                "no agreement {:?}",
                request.agreement_id
            )));
        };
        if agreement.ended_at.is_some() {
            return Err(Refusal::FailedPrecondition(format!(
                "agreement {:?} has already ended",
                request.agreement_id
            )));
        }
        agreement.ended_at = Some(step.now.to_timestamp());
        agreement.end_reason = request.reason.clone();
        step.audit(pb::AuditEntry {
            kind: pb::EntryKind::AgreementChanged as i32,
            actor: actor.spiffe_id(),
            agreement_id: agreement.agreement_id.clone(),
            source_agency: agreement.provider.clone(),
            recipient_agency: agreement.recipient.clone(),
            reason: format!("ended: {}", request.reason),
            ..Default::default()
        });
        step.draft.batch.agreements.push(agreement.clone());
        self.write().agreements.put(agreement.clone());
        Ok(agreement)
    }
}
