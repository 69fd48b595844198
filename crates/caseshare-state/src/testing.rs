//! Test support (feature `testing`): an in-memory [`Lookup`] that holds
//! what sealed batches wrote, and a recorded scenario of commands covering
//! every operation family, for replay tests here and in the store.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use caseshare_core::pb;
use caseshare_core::principal::{Principal, Role};
use caseshare_core::time::Micros;

use crate::batch::Batch;
use crate::command::{AckIntent, Command, DeliveryIntent, SubscriptionRef};
use crate::machine::{Counters, Lookup, Machine};
use crate::records::{DeliveryRecord, StoredEvent};
use crate::refusal::LookupError;
use crate::state::{BrokerState, EventContext};

/// What committed batches wrote, in memory: the events and delivery
/// records an operation may look up.
#[derive(Debug, Default)]
pub struct MemLookup {
    events: BTreeMap<u64, StoredEvent>,
    ids: HashMap<(String, String), u64>,
    deliveries: BTreeMap<(u64, u64), DeliveryRecord>,
}

impl MemLookup {
    /// Applies a committed batch.
    pub fn commit(&mut self, batch: &Batch) {
        for e in &batch.events {
            self.ids
                .insert((e.source_agency.clone(), e.event_id.clone()), e.sequence);
            self.events.insert(e.sequence, e.clone());
        }
        for (seq, agency, id) in &batch.deleted_events {
            self.events.remove(seq);
            self.ids.remove(&(agency.clone(), id.clone()));
        }
        for (sub, from) in &batch.deleted_deliveries_from {
            self.deliveries.retain(|(s, q), _| !(s == sub && q >= from));
        }
        for d in &batch.deliveries {
            self.deliveries
                .insert((d.subscription_id, d.sequence), d.clone());
        }
        for sub in batch
            .deleted_subscriptions
            .iter()
            .chain(&batch.purge_deliveries)
        {
            self.deliveries.retain(|(s, _), _| s != sub);
        }
    }
}

impl Lookup for MemLookup {
    fn event_by_id(
        &self,
        agency: &str,
        event_id: &str,
    ) -> Result<Option<StoredEvent>, LookupError> {
        Ok(self
            .ids
            .get(&(agency.to_string(), event_id.to_string()))
            .and_then(|s| self.events.get(s))
            .cloned())
    }

    fn deliveries_of(
        &self,
        subscription_ids: &[u64],
        sequence: u64,
    ) -> Result<Vec<DeliveryRecord>, LookupError> {
        Ok(subscription_ids
            .iter()
            .filter_map(|s| self.deliveries.get(&(*s, sequence)).cloned())
            .collect())
    }
}

/// The pseudonym key the scenario's machines use.
pub const KEY: &[u8] = b"caseshare-state-test-pseudonym-key";

/// A fresh machine with the scenario's key.
pub fn fresh_machine() -> Machine {
    Machine::new(BrokerState::default(), Counters::default(), KEY.to_vec())
}

/// A principal of `role` named `name`.
pub fn principal(role: Role, name: &str) -> Arc<Principal> {
    Arc::new(Principal {
        role,
        name: name.to_string(),
        trust_domain: "caseshare.local".into(),
    })
}

/// A valid NHS number.
pub const CHILD: &str = "9434765919";

/// A school's attendance concern about [`CHILD`].
pub fn attendance(id: &str) -> pb::CaseEvent {
    pb::CaseEvent {
        event_id: id.into(),
        child: Some(pb::ChildRef {
            nhs_number: CHILD.into(),
            local_ids: vec![],
        }),
        purpose: pb::Purpose::EarlyHelp as i32,
        payload: Some(pb::case_event::Payload::EducationAttendanceConcern(
            pb::AttendanceConcern {
                period: "2026-autumn-1".into(),
                attendance_percent: 78.5,
                unauthorised_sessions: 11,
            },
        )),
        ..Default::default()
    }
}

/// An agreement from `provider` to `recipient` for `event_types`.
pub fn agreement(id: &str, provider: &str, recipient: &str, event_types: &[&str]) -> pb::Agreement {
    pb::Agreement {
        agreement_id: id.into(),
        provider: provider.into(),
        recipient: recipient.into(),
        purposes: vec![pb::Purpose::EarlyHelp as i32],
        event_types: event_types.iter().map(|s| s.to_string()).collect(),
        lawful_basis: pb::LawfulBasis::PublicTask as i32,
        ..Default::default()
    }
}

fn publish(actor: &Arc<Principal>, event: pb::CaseEvent, salt: u8) -> Command {
    Command::Publish {
        actor: Arc::clone(actor),
        request: pb::PublishRequest {
            event: Some(event),
            ..Default::default()
        },
        event_type: "education.attendance_concern".into(),
        salt: [salt; 16],
    }
}

fn intent(sequence: u64, event_id: &str, attempt: u32) -> DeliveryIntent {
    let event = attendance(event_id);
    DeliveryIntent {
        subscription_id: 1,
        subscription: "main".into(),
        recipient: "la-social-care-c".into(),
        sequence,
        event_id: event_id.into(),
        attempt,
        delivery_id: format!("1.{sequence}.{attempt}"),
        context: EventContext::new("school-b", "education.attendance_concern", &event, None),
        notice: false,
        expires_at: None,
    }
}

fn ack(sequence: u64, event_id: &str) -> AckIntent {
    AckIntent {
        sequence,
        event_id: event_id.into(),
        delivery_id: format!("1.{sequence}.1"),
        attempts: 1,
        delivered_at: Micros(1_000),
        nhs_number: CHILD.into(),
    }
}

/// A recorded run of commands, each with its time: every family, the
/// refusals among them (a duplicate agency, a second retraction), a
/// correction, a retraction after delivery and an ack after the
/// subscription was deleted.
pub fn scenario() -> Vec<(Micros, Command)> {
    let admin = principal(Role::Admin, "admin");
    let school = principal(Role::Agency, "school-b");
    let council = principal(Role::Agency, "la-social-care-c");
    let main = SubscriptionRef {
        id: 1,
        name: "main".into(),
    };
    let register = |id: &str, kind: pb::AgencyKind| Command::RegisterAgency {
        actor: Arc::clone(&admin),
        request: pb::RegisterAgencyRequest {
            agency_id: id.into(),
            kind: kind as i32,
            display_name: id.into(),
        },
    };
    let mut corrected = attendance("att-3");
    corrected.corrects_event_id = "att-1".into();
    let commands = vec![
        register("school-b", pb::AgencyKind::Education),
        register("la-social-care-c", pb::AgencyKind::SocialCare),
        register("school-b", pb::AgencyKind::Education),
        Command::PutAgreement {
            actor: Arc::clone(&admin),
            agreement: agreement("isa-1", "school-b", "la-social-care-c", &["education.*"]),
        },
        Command::CreateSubscription {
            actor: Arc::clone(&council),
            subscription: pb::Subscription {
                name: "main".into(),
                ..Default::default()
            },
            quota: 4,
        },
        publish(&school, attendance("att-1"), 1),
        publish(&school, attendance("att-1"), 9),
        publish(&school, attendance("att-2"), 2),
        Command::Deliver {
            intents: vec![intent(1, "att-1", 1), intent(2, "att-2", 1)],
        },
        Command::Ack {
            actor: Arc::clone(&council),
            subscription: main.clone(),
            acks: vec![ack(1, "att-1")],
            floor: Some(2),
        },
        publish(&school, corrected, 3),
        Command::Retract {
            actor: Arc::clone(&school),
            request: pb::RetractEventRequest {
                event_id: "att-2".into(),
                reason: "sent in error".into(),
            },
        },
        Command::Retract {
            actor: Arc::clone(&school),
            request: pb::RetractEventRequest {
                event_id: "att-2".into(),
                reason: "again".into(),
            },
        },
        Command::RecordConsent {
            actor: Arc::clone(&school),
            consent: pb::ConsentRecord {
                consent_id: "consent-1".into(),
                nhs_number: CHILD.into(),
                recipients: vec!["la-social-care-c".into()],
                purposes: vec![pb::Purpose::EarlyHelp as i32],
                ..Default::default()
            },
            generated_id: false,
        },
        Command::WithdrawConsent {
            actor: Arc::clone(&council),
            request: pb::WithdrawConsentRequest {
                consent_id: "consent-1".into(),
                reason: "family asked".into(),
            },
        },
        Command::DeadLetter {
            subscription: main.clone(),
            recipient: "la-social-care-c".into(),
            items: vec![ack(3, "att-3")],
            floor: None,
        },
        Command::Replay {
            actor: Arc::clone(&council),
            subscription: main.clone(),
            sequences: vec![3],
            floor: Some(3),
        },
        Command::Seek {
            actor: Arc::clone(&council),
            subscription: main.clone(),
            target: 3,
        },
        Command::Record {
            entry: pb::AuditEntry {
                kind: pb::EntryKind::AuditAccessed as i32,
                actor: admin.spiffe_id(),
                rpc: "/caseshare.v1.Audit/Query".into(),
                ..Default::default()
            },
        },
        Command::AuthDenied {
            entries: vec![pb::AuditEntry {
                actor: "spiffe://caseshare.local/agency/intruder".into(),
                count: 3,
                ..Default::default()
            }],
        },
        Command::EndAgreement {
            actor: Arc::clone(&admin),
            request: pb::EndAgreementRequest {
                agreement_id: "isa-1".into(),
                reason: "review".into(),
            },
        },
        Command::DeleteSubscription {
            actor: Arc::clone(&council),
            name: "main".into(),
        },
        Command::Ack {
            actor: council,
            subscription: main,
            acks: vec![ack(2, "att-2")],
            floor: None,
        },
        Command::PurgeDeliveries {
            subscription_ids: vec![1],
        },
        Command::Expunge {
            events: vec![(2, "school-b".into(), "att-2".into())],
        },
    ];
    commands
        .into_iter()
        .enumerate()
        .map(|(i, c)| (Micros(1_800_000_000_000_000 + i as i64 * 1_000_000), c))
        .collect()
}
