//! [`Command`] to its wire message and back. Every field of every variant
//! is carried; on the way back a missing required message (a caller, a
//! request, a subscription, an intent's context), an unknown role or enum
//! value, a salt that is not 16 bytes or a quota that does not fit is an
//! error naming the operation and the field, never a default.

use std::sync::Arc;

use caseshare_core::pb;
use caseshare_core::principal::{Principal, Role};
use caseshare_core::time::Micros;

use super::JournalError;
use super::wire::journal_op::Command as W;
use super::wire::*;
use crate::command::{AckIntent, Command, DeliveryIntent, SubscriptionRef};
use crate::state::EventContext;

// ---- to the wire ----

fn actor(p: &Principal) -> Option<ActorRecord> {
    Some(ActorRecord {
        role: match p.role {
            Role::Agency => RoleRecord::Agency,
            Role::Auditor => RoleRecord::Auditor,
            Role::Admin => RoleRecord::Admin,
        } as i32,
        name: p.name.clone(),
        trust_domain: p.trust_domain.clone(),
    })
}

fn sub_ref(s: &SubscriptionRef) -> Option<SubscriptionRefRecord> {
    Some(SubscriptionRefRecord {
        id: s.id,
        name: s.name.clone(),
    })
}

fn ack_record(a: &AckIntent) -> AckRecord {
    AckRecord {
        sequence: a.sequence,
        event_id: a.event_id.clone(),
        delivery_id: a.delivery_id.clone(),
        attempts: a.attempts,
        delivered_at: a.delivered_at.0,
        nhs_number: a.nhs_number.clone(),
    }
}

fn intent_record(i: &DeliveryIntent) -> IntentRecord {
    let c = &i.context;
    IntentRecord {
        subscription_id: i.subscription_id,
        subscription: i.subscription.clone(),
        recipient: i.recipient.clone(),
        sequence: i.sequence,
        event_id: i.event_id.clone(),
        attempt: i.attempt,
        delivery_id: i.delivery_id.clone(),
        context: Some(ContextRecord {
            provider: c.provider.clone(),
            event_type: c.event_type.clone(),
            purpose: c.purpose as i32,
            sensitivity: c.sensitivity as i32,
            nhs_number: c.nhs_number.clone(),
            safeguarding_override: c.safeguarding_override.clone(),
        }),
        notice: i.notice,
        expires_at: i.expires_at.map(|m| m.0),
    }
}

/// The wire message of one command at `now`.
pub(super) fn to_wire(now: Micros, command: &Command) -> JournalOp {
    let command = match command {
        Command::RegisterAgency { actor: a, request } => W::RegisterAgency(RegisterAgencyOp {
            actor: actor(a),
            request: Some(request.clone()),
        }),
        Command::PutAgreement {
            actor: a,
            agreement,
        } => W::PutAgreement(PutAgreementOp {
            actor: actor(a),
            request: Some(agreement.clone()),
        }),
        Command::EndAgreement { actor: a, request } => W::EndAgreement(EndAgreementOp {
            actor: actor(a),
            request: Some(request.clone()),
        }),
        Command::RecordConsent {
            actor: a,
            consent,
            generated_id,
        } => W::RecordConsent(RecordConsentOp {
            actor: actor(a),
            consent: Some(consent.clone()),
            generated_id: *generated_id,
        }),
        Command::WithdrawConsent { actor: a, request } => W::WithdrawConsent(WithdrawConsentOp {
            actor: actor(a),
            request: Some(request.clone()),
        }),
        Command::Publish {
            actor: a,
            request,
            event_type,
            salt,
        } => W::Publish(PublishOp {
            actor: actor(a),
            request: Some(request.clone()),
            event_type: event_type.clone(),
            salt: salt.to_vec(),
        }),
        Command::Retract { actor: a, request } => W::Retract(RetractOp {
            actor: actor(a),
            request: Some(request.clone()),
        }),
        Command::Expunge { events } => W::Expunge(ExpungeOp {
            events: events
                .iter()
                .map(|(sequence, agency, event_id)| ExpungedRecord {
                    sequence: *sequence,
                    agency: agency.clone(),
                    event_id: event_id.clone(),
                })
                .collect(),
        }),
        Command::CreateSubscription {
            actor: a,
            subscription,
            quota,
        } => W::CreateSubscription(CreateSubscriptionOp {
            actor: actor(a),
            subscription: Some(subscription.clone()),
            // usize is at most 64 bits on every target Rust supports.
            quota: u64::try_from(*quota).unwrap_or(u64::MAX),
        }),
        Command::DeleteSubscription { actor: a, name } => {
            W::DeleteSubscription(DeleteSubscriptionOp {
                actor: actor(a),
                name: name.clone(),
            })
        }
        Command::Seek {
            actor: a,
            subscription,
            target,
        } => W::Seek(SeekOp {
            actor: actor(a),
            subscription: sub_ref(subscription),
            target: *target,
        }),
        Command::Replay {
            actor: a,
            subscription,
            sequences,
            floor,
        } => W::Replay(ReplayOp {
            actor: actor(a),
            subscription: sub_ref(subscription),
            sequences: sequences.clone(),
            floor: *floor,
        }),
        Command::PurgeDeliveries { subscription_ids } => W::PurgeDeliveries(PurgeDeliveriesOp {
            subscription_ids: subscription_ids.clone(),
        }),
        Command::Deliver { intents } => W::Deliver(DeliverOp {
            intents: intents.iter().map(intent_record).collect(),
        }),
        Command::Ack {
            actor: a,
            subscription,
            acks,
            floor,
        } => W::Ack(AckOp {
            actor: actor(a),
            subscription: sub_ref(subscription),
            acks: acks.iter().map(ack_record).collect(),
            floor: *floor,
        }),
        Command::DeadLetter {
            subscription,
            recipient,
            items,
            floor,
        } => W::DeadLetter(DeadLetterOp {
            subscription: sub_ref(subscription),
            recipient: recipient.clone(),
            items: items.iter().map(ack_record).collect(),
            floor: *floor,
        }),
        Command::Record { entry } => W::Record(RecordOp {
            entry: Some(entry.clone()),
        }),
        Command::AuthDenied { entries } => W::AuthDenied(AuditEntriesOp {
            entries: entries.clone(),
        }),
    };
    JournalOp {
        now_micros: now.0,
        command: Some(command),
    }
}

// ---- from the wire ----

/// Names what is being decoded, for errors.
#[derive(Clone, Copy)]
struct At {
    op: usize,
    command: &'static str,
}

impl At {
    fn need<T>(self, value: Option<T>, field: &'static str) -> Result<T, JournalError> {
        value.ok_or(JournalError::MissingField {
            op: self.op,
            command: self.command,
            field,
        })
    }

    fn invalid(self, field: &'static str, reason: String) -> JournalError {
        JournalError::InvalidField {
            op: self.op,
            command: self.command,
            field,
            reason,
        }
    }

    fn actor(self, a: Option<ActorRecord>) -> Result<Arc<Principal>, JournalError> {
        let a = self.need(a, "actor")?;
        let role = match RoleRecord::try_from(a.role) {
            Ok(RoleRecord::Agency) => Role::Agency,
            Ok(RoleRecord::Auditor) => Role::Auditor,
            Ok(RoleRecord::Admin) => Role::Admin,
            Ok(RoleRecord::Unspecified) | Err(_) => {
                return Err(self.invalid("actor.role", format!("unknown role {}", a.role)));
            }
        };
        Ok(Arc::new(Principal {
            role,
            name: a.name,
            trust_domain: a.trust_domain,
        }))
    }

    fn sub_ref(self, s: Option<SubscriptionRefRecord>) -> Result<SubscriptionRef, JournalError> {
        let s = self.need(s, "subscription")?;
        Ok(SubscriptionRef {
            id: s.id,
            name: s.name,
        })
    }

    fn intent(self, i: IntentRecord) -> Result<DeliveryIntent, JournalError> {
        let c = self.need(i.context, "intents.context")?;
        let purpose = pb::Purpose::try_from(c.purpose)
            .map_err(|_| self.invalid("intents.context.purpose", c.purpose.to_string()))?;
        let sensitivity = pb::Sensitivity::try_from(c.sensitivity)
            .map_err(|_| self.invalid("intents.context.sensitivity", c.sensitivity.to_string()))?;
        Ok(DeliveryIntent {
            subscription_id: i.subscription_id,
            subscription: i.subscription,
            recipient: i.recipient,
            sequence: i.sequence,
            event_id: i.event_id,
            attempt: i.attempt,
            delivery_id: i.delivery_id,
            context: EventContext {
                provider: c.provider,
                event_type: c.event_type,
                purpose,
                sensitivity,
                nhs_number: c.nhs_number,
                safeguarding_override: c.safeguarding_override,
            },
            notice: i.notice,
            expires_at: i.expires_at.map(Micros),
        })
    }
}

fn ack_intent(a: AckRecord) -> AckIntent {
    AckIntent {
        sequence: a.sequence,
        event_id: a.event_id,
        delivery_id: a.delivery_id,
        attempts: a.attempts,
        delivered_at: Micros(a.delivered_at),
        nhs_number: a.nhs_number,
    }
}

/// The command of wire op number `op`.
pub(super) fn from_wire(op: usize, w: JournalOp) -> Result<(Micros, Command), JournalError> {
    let now = Micros(w.now_micros);
    let command = w.command.ok_or(JournalError::MissingCommand { op })?;
    let at = |command| At { op, command };
    let command = match command {
        W::RegisterAgency(o) => {
            let at = at("RegisterAgency");
            Command::RegisterAgency {
                actor: at.actor(o.actor)?,
                request: at.need(o.request, "request")?,
            }
        }
        W::PutAgreement(o) => {
            let at = at("PutAgreement");
            Command::PutAgreement {
                actor: at.actor(o.actor)?,
                agreement: at.need(o.request, "agreement")?,
            }
        }
        W::EndAgreement(o) => {
            let at = at("EndAgreement");
            Command::EndAgreement {
                actor: at.actor(o.actor)?,
                request: at.need(o.request, "request")?,
            }
        }
        W::RecordConsent(o) => {
            let at = at("RecordConsent");
            Command::RecordConsent {
                actor: at.actor(o.actor)?,
                consent: at.need(o.consent, "consent")?,
                generated_id: o.generated_id,
            }
        }
        W::WithdrawConsent(o) => {
            let at = at("WithdrawConsent");
            Command::WithdrawConsent {
                actor: at.actor(o.actor)?,
                request: at.need(o.request, "request")?,
            }
        }
        W::Publish(o) => {
            let at = at("Publish");
            let salt = <[u8; 16]>::try_from(o.salt.as_slice())
                .map_err(|_| at.invalid("salt", format!("{} bytes, not 16", o.salt.len())))?;
            Command::Publish {
                actor: at.actor(o.actor)?,
                request: at.need(o.request, "request")?,
                event_type: o.event_type,
                salt,
            }
        }
        W::Retract(o) => {
            let at = at("Retract");
            Command::Retract {
                actor: at.actor(o.actor)?,
                request: at.need(o.request, "request")?,
            }
        }
        W::Expunge(o) => Command::Expunge {
            events: o
                .events
                .into_iter()
                .map(|e| (e.sequence, e.agency, e.event_id))
                .collect(),
        },
        W::CreateSubscription(o) => {
            let at = at("CreateSubscription");
            let quota = usize::try_from(o.quota)
                .map_err(|_| at.invalid("quota", format!("{} does not fit", o.quota)))?;
            Command::CreateSubscription {
                actor: at.actor(o.actor)?,
                subscription: at.need(o.subscription, "subscription")?,
                quota,
            }
        }
        W::DeleteSubscription(o) => Command::DeleteSubscription {
            actor: at("DeleteSubscription").actor(o.actor)?,
            name: o.name,
        },
        W::Seek(o) => {
            let at = at("Seek");
            Command::Seek {
                actor: at.actor(o.actor)?,
                subscription: at.sub_ref(o.subscription)?,
                target: o.target,
            }
        }
        W::Replay(o) => {
            let at = at("Replay");
            Command::Replay {
                actor: at.actor(o.actor)?,
                subscription: at.sub_ref(o.subscription)?,
                sequences: o.sequences,
                floor: o.floor,
            }
        }
        W::PurgeDeliveries(o) => Command::PurgeDeliveries {
            subscription_ids: o.subscription_ids,
        },
        W::Deliver(o) => {
            let at = at("Deliver");
            Command::Deliver {
                intents: o
                    .intents
                    .into_iter()
                    .map(|i| at.intent(i))
                    .collect::<Result<_, _>>()?,
            }
        }
        W::Ack(o) => {
            let at = at("Ack");
            Command::Ack {
                actor: at.actor(o.actor)?,
                subscription: at.sub_ref(o.subscription)?,
                acks: o.acks.into_iter().map(ack_intent).collect(),
                floor: o.floor,
            }
        }
        W::DeadLetter(o) => Command::DeadLetter {
            subscription: at("DeadLetter").sub_ref(o.subscription)?,
            recipient: o.recipient,
            items: o.items.into_iter().map(ack_intent).collect(),
            floor: o.floor,
        },
        W::Record(o) => Command::Record {
            entry: at("Record").need(o.entry, "entry")?,
        },
        W::AuthDenied(o) => Command::AuthDenied { entries: o.entries },
    };
    Ok((now, command))
}
