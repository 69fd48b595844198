//! The operations, one module per family. Each is a method on
//! [`crate::Machine`] that checks everything first and changes the state
//! and the draft only once nothing can refuse any more.

mod config;
mod consent;
mod delivery;
mod events;
mod subscriptions;

#[cfg(test)]
mod tests;

use caseshare_core::pb;

use crate::state::EventContext;

/// The SHARE_DECIDED entry for one decision.
pub(crate) fn decision_entry(
    actor: &str,
    pseudonym: &[u8],
    context: &EventContext,
    event_id: &str,
    sequence: u64,
    decision: &pb::SharingDecision,
) -> pb::AuditEntry {
    pb::AuditEntry {
        kind: pb::EntryKind::ShareDecided as i32,
        actor: actor.to_string(),
        child_pseudonym: pseudonym.to_vec(),
        event_id: event_id.to_string(),
        event_type: context.event_type.clone(),
        sequence,
        source_agency: context.provider.clone(),
        recipient_agency: decision.agency_id.clone(),
        decision: decision.decision,
        reason: decision.reason.clone(),
        agreement_id: decision.agreement_id.clone(),
        consent_id: decision.consent_id.clone(),
        lawful_basis: decision.lawful_basis,
        override_used: decision.override_used,
        safeguarding_override: if decision.override_used {
            context.safeguarding_override.clone()
        } else {
            None
        },
        purpose: context.purpose as i32,
        subject: String::new(),
        ..Default::default()
    }
}
