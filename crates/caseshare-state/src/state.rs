//! The broker's in-memory view of its configuration state: agencies,
//! agreements (indexed for decisions), consents (indexed by child) and
//! subscriptions. The writer is the only mutator; readers share it behind a
//! lock. Rebuilt from the store at start.

use std::collections::{BTreeMap, HashMap};

use prost::Message;
use sha2::{Digest, Sha256};

use crate::{Snapshot, SubscriptionRecord};
use caseshare_core::decision::{AgreementIndex, EventFacts, Outcome, Recipient, decide};
use caseshare_core::event_type::any_matches;
use caseshare_core::pb;
use caseshare_core::time::Micros;

/// Configuration state.
#[derive(Debug, Default)]
pub struct BrokerState {
    /// Agencies by id.
    pub agencies: BTreeMap<String, pb::Agency>,
    /// Agreements, indexed by provider and recipient.
    pub agreements: AgreementIndex,
    /// Consents by child NHS number.
    pub consents_by_child: HashMap<String, Vec<pb::ConsentRecord>>,
    /// Consent id → child NHS number.
    pub consent_child: HashMap<String, String>,
    /// Subscriptions by internal id.
    pub subscriptions: BTreeMap<u64, SubscriptionRecord>,
    /// (agency, name) → internal id.
    pub subscription_ids: HashMap<(String, String), u64>,
    /// Retracted or superseded events: sequence → reason.
    pub retracted: HashMap<u64, String>,
}

/// The owned facts a (re-)decision needs about an event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventContext {
    /// The publishing agency.
    pub provider: String,
    /// The event type.
    pub event_type: String,
    /// The purpose.
    pub purpose: pb::Purpose,
    /// The sensitivity.
    pub sensitivity: pb::Sensitivity,
    /// The child's NHS number.
    pub nhs_number: String,
    /// The publisher's override, if any.
    pub safeguarding_override: Option<pb::SafeguardingOverride>,
}

impl EventContext {
    /// From a decoded event and its publisher.
    pub fn new(
        provider: &str,
        event_type: &str,
        event: &pb::CaseEvent,
        basis: Option<&pb::SharingBasis>,
    ) -> Self {
        EventContext {
            provider: provider.to_string(),
            event_type: event_type.to_string(),
            purpose: pb::Purpose::try_from(event.purpose).unwrap_or(pb::Purpose::Unspecified),
            sensitivity: match pb::Sensitivity::try_from(event.sensitivity) {
                Ok(pb::Sensitivity::Sensitive) => pb::Sensitivity::Sensitive,
                _ => pb::Sensitivity::Standard,
            },
            nhs_number: event
                .child
                .as_ref()
                .map(|c| c.nhs_number.clone())
                .unwrap_or_default(),
            safeguarding_override: basis.and_then(|b| b.safeguarding_override.clone()),
        }
    }
}

impl BrokerState {
    /// Builds the state from a store snapshot.
    pub fn from_snapshot(snap: &Snapshot) -> Self {
        let mut s = BrokerState::default();
        for a in &snap.agencies {
            s.agencies.insert(a.agency_id.clone(), a.clone());
        }
        s.agreements = AgreementIndex::new(snap.agreements.iter().cloned());
        for c in &snap.consents {
            s.put_consent(c.clone());
        }
        for sub in &snap.subscriptions {
            s.put_subscription(sub.clone());
        }
        s.retracted = snap.retracted.iter().cloned().collect();
        s
    }

    /// A digest of the whole state in a canonical order (maps sorted by
    /// key, lists by id), so that the same state has the same digest however
    /// it was built: by applying operations or by loading a snapshot.
    pub fn digest(&self) -> [u8; 32] {
        fn field(h: &mut Sha256, tag: &[u8], bytes: &[u8]) {
            h.update(tag);
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        }
        let mut h = Sha256::new();
        for a in self.agencies.values() {
            field(&mut h, b"agency", &a.encode_to_vec());
        }
        let mut agreements: Vec<&pb::Agreement> = self.agreements.all().collect();
        agreements.sort_by(|a, b| a.agreement_id.cmp(&b.agreement_id));
        for a in agreements {
            field(&mut h, b"agreement", &a.encode_to_vec());
        }
        let mut consents: Vec<&pb::ConsentRecord> =
            self.consents_by_child.values().flatten().collect();
        consents.sort_by(|a, b| a.consent_id.cmp(&b.consent_id));
        for c in consents {
            field(&mut h, b"consent", &c.encode_to_vec());
        }
        for s in self.subscriptions.values() {
            field(&mut h, b"subscription", &s.encode_to_vec());
        }
        let mut retracted: Vec<(&u64, &String)> = self.retracted.iter().collect();
        retracted.sort();
        for (seq, reason) in retracted {
            field(&mut h, b"retracted", &seq.to_be_bytes());
            field(&mut h, b"reason", reason.as_bytes());
        }
        h.finalize().into()
    }

    /// Adds or replaces a consent.
    pub fn put_consent(&mut self, c: pb::ConsentRecord) {
        let list = self
            .consents_by_child
            .entry(c.nhs_number.clone())
            .or_default();
        list.retain(|x| x.consent_id != c.consent_id);
        self.consent_child
            .insert(c.consent_id.clone(), c.nhs_number.clone());
        list.push(c);
    }

    /// A consent by id.
    pub fn consent(&self, id: &str) -> Option<&pb::ConsentRecord> {
        let child = self.consent_child.get(id)?;
        self.consents_by_child
            .get(child)?
            .iter()
            .find(|c| c.consent_id == id)
    }

    /// Adds a subscription.
    pub fn put_subscription(&mut self, rec: SubscriptionRecord) {
        if let Some(sub) = rec.subscription.as_ref() {
            self.subscription_ids
                .insert((sub.agency_id.clone(), sub.name.clone()), rec.id);
        }
        self.subscriptions.insert(rec.id, rec);
    }

    /// Removes a subscription.
    pub fn remove_subscription(&mut self, id: u64) -> Option<SubscriptionRecord> {
        let rec = self.subscriptions.remove(&id)?;
        if let Some(sub) = rec.subscription.as_ref() {
            self.subscription_ids
                .remove(&(sub.agency_id.clone(), sub.name.clone()));
        }
        Some(rec)
    }

    /// A subscription by owner and name.
    pub fn subscription(&self, agency: &str, name: &str) -> Option<&SubscriptionRecord> {
        let id = self
            .subscription_ids
            .get(&(agency.to_string(), name.to_string()))?;
        self.subscriptions.get(id)
    }

    fn kind(&self, agency: &str) -> pb::AgencyKind {
        self.agencies
            .get(agency)
            .and_then(|a| pb::AgencyKind::try_from(a.kind).ok())
            .unwrap_or(pb::AgencyKind::Unspecified)
    }

    /// Candidate recipients of an event: agencies other than the publisher
    /// with a subscription matching its type and purpose, restricted to
    /// `to_agencies` when given; sorted, each once.
    pub fn candidates(&self, ctx: &EventContext, to_agencies: &[String]) -> Vec<String> {
        let mut out: Vec<String> = self
            .subscriptions
            .values()
            .filter_map(|r| r.subscription.as_ref())
            .filter(|s| s.agency_id != ctx.provider)
            .filter(|s| to_agencies.is_empty() || to_agencies.contains(&s.agency_id))
            .filter(|s| subscription_matches(s, &ctx.event_type, ctx.purpose))
            .map(|s| s.agency_id.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Decides one recipient under the current state.
    pub fn decide(&self, ctx: &EventContext, recipient: &str, now: Micros) -> Outcome {
        let provider_kind = self.kind(&ctx.provider);
        let recipient_kind = self.kind(recipient);
        let facts = EventFacts {
            provider: &ctx.provider,
            provider_kind,
            event_type: &ctx.event_type,
            purpose: ctx.purpose,
            sensitivity: ctx.sensitivity,
        };
        let agreements = self
            .agreements
            .between((&ctx.provider, provider_kind), (recipient, recipient_kind));
        let consents = self
            .consents_by_child
            .get(&ctx.nhs_number)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        decide(
            &facts,
            &Recipient {
                agency_id: recipient,
                kind: recipient_kind,
            },
            agreements,
            consents,
            ctx.safeguarding_override.as_ref(),
            now,
        )
    }
}

/// True if a subscription's filters select an event type and purpose.
pub fn subscription_matches(s: &pb::Subscription, event_type: &str, purpose: pb::Purpose) -> bool {
    any_matches(&s.event_types, event_type)
        && (s.purposes.is_empty() || s.purposes.contains(&(purpose as i32)))
}
