//! The sharing decision: for one event and one candidate recipient, under
//! the agreements, the child's consents, the publisher's declared basis and
//! the current time, either `SHARED` (with the agreement, the consent or the
//! override relied on, and the lawful basis) or `WITHHELD` with a reason.
//!
//! The rules (spec §3, "The sharing decision"):
//! 1. an active agreement must cover provider → recipient (by agency id or
//!    `kind:`), purpose and event type, else `no_agreement` (or
//!    `agreement_ended` when only ended or expired ones cover it);
//! 2. if the agreement requires consent, or the event is SENSITIVE, an
//!    active, unwithdrawn consent must cover the child, purpose, recipient
//!    and event type (for a SENSITIVE event: naming its type exactly), else a
//!    safeguarding override, else `no_consent` / `consent_withdrawn` /
//!    `sensitive_needs_explicit_consent`;
//! 3. otherwise `SHARED`, limited to the agreement's fields.
//!
//! Architecture Invariant: [`decide`] is total and pure. It is called at
//! publish and again just before every delivery; both calls must agree
//! given the same inputs.

use std::collections::HashMap;

use crate::event_type::{any_matches, pattern_matches};
use crate::pb::{self, AgencyKind, Decision, LawfulBasis, Purpose, Sensitivity};
use crate::time::Micros;

/// Why a decision came out as it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Shared under an agreement that needs no consent.
    Agreement,
    /// Shared under an agreement, with the child's consent.
    Consent,
    /// Shared under a safeguarding override.
    Override,
    /// No agreement covers provider, recipient, purpose and event type.
    NoAgreement,
    /// The only covering agreements have ended or expired.
    AgreementEnded,
    /// Consent is needed and none covers the event.
    NoConsent,
    /// A consent that would have covered the event was withdrawn.
    ConsentWithdrawn,
    /// The event is SENSITIVE and no consent names its type explicitly.
    SensitiveNeedsExplicitConsent,
}

impl Reason {
    /// The machine-readable reason string used in responses and the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Agreement => "agreement",
            Reason::Consent => "consent",
            Reason::Override => "override",
            Reason::NoAgreement => "no_agreement",
            Reason::AgreementEnded => "agreement_ended",
            Reason::NoConsent => "no_consent",
            Reason::ConsentWithdrawn => "consent_withdrawn",
            Reason::SensitiveNeedsExplicitConsent => "sensitive_needs_explicit_consent",
        }
    }

    /// True for reasons that allow sharing.
    pub fn is_shared(self) -> bool {
        matches!(self, Reason::Agreement | Reason::Consent | Reason::Override)
    }
}

/// The facts about an event that a decision depends on.
#[derive(Debug, Clone, Copy)]
pub struct EventFacts<'a> {
    /// The publishing agency.
    pub provider: &'a str,
    /// Its kind.
    pub provider_kind: AgencyKind,
    /// The event type.
    pub event_type: &'a str,
    /// The purpose.
    pub purpose: Purpose,
    /// STANDARD or SENSITIVE.
    pub sensitivity: Sensitivity,
}

/// A candidate recipient.
#[derive(Debug, Clone, Copy)]
pub struct Recipient<'a> {
    /// The agency id.
    pub agency_id: &'a str,
    /// Its kind.
    pub kind: AgencyKind,
}

/// The result of a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Why.
    pub reason: Reason,
    /// The agreement relied on (or the one that governed a refusal).
    pub agreement_id: String,
    /// The consent relied on.
    pub consent_id: String,
    /// The lawful basis used.
    pub lawful_basis: LawfulBasis,
    /// The field paths the recipient may see (empty = whole event).
    pub fields: Vec<String>,
}

impl Outcome {
    fn withheld(reason: Reason) -> Self {
        Outcome {
            reason,
            agreement_id: String::new(),
            consent_id: String::new(),
            lawful_basis: LawfulBasis::Unspecified,
            fields: Vec::new(),
        }
    }

    /// SHARED or WITHHELD.
    pub fn decision(&self) -> Decision {
        if self.reason.is_shared() {
            Decision::Shared
        } else {
            Decision::Withheld
        }
    }

    /// True if shared.
    pub fn is_shared(&self) -> bool {
        self.reason.is_shared()
    }

    /// As the protobuf decision for `agency_id`.
    pub fn to_proto(&self, agency_id: &str) -> pb::SharingDecision {
        pb::SharingDecision {
            agency_id: agency_id.to_string(),
            decision: self.decision() as i32,
            reason: self.reason.as_str().to_string(),
            agreement_id: self.agreement_id.clone(),
            consent_id: self.consent_id.clone(),
            override_used: self.reason == Reason::Override,
            lawful_basis: self.lawful_basis as i32,
        }
    }
}

/// `kind:<kind>` for an agency kind.
pub fn kind_selector(kind: AgencyKind) -> &'static str {
    match kind {
        AgencyKind::Health => "kind:health",
        AgencyKind::Education => "kind:education",
        AgencyKind::SocialCare => "kind:social_care",
        AgencyKind::Other => "kind:other",
        AgencyKind::Unspecified => "kind:unspecified",
    }
}

fn selects(selector: &str, agency_id: &str, kind: AgencyKind) -> bool {
    selector == agency_id || selector == kind_selector(kind)
}

fn in_window(
    now: Micros,
    from: Option<&prost_types::Timestamp>,
    until: Option<&prost_types::Timestamp>,
) -> bool {
    from.is_none_or(|f| Micros::from_timestamp(f) <= now)
        && until.is_none_or(|u| now < Micros::from_timestamp(u))
}

fn agreement_covers(a: &pb::Agreement, e: &EventFacts<'_>, r: &Recipient<'_>) -> bool {
    selects(&a.provider, e.provider, e.provider_kind)
        && selects(&a.recipient, r.agency_id, r.kind)
        && a.purposes.contains(&(e.purpose as i32))
        && a.event_types
            .iter()
            .any(|p| pattern_matches(p, e.event_type))
}

fn agreement_active(a: &pb::Agreement, now: Micros) -> bool {
    in_window(now, a.valid_from.as_ref(), a.valid_until.as_ref())
        && a.ended_at
            .as_ref()
            .is_none_or(|t| now < Micros::from_timestamp(t))
}

fn agreement_over(a: &pb::Agreement, now: Micros) -> bool {
    a.ended_at
        .as_ref()
        .is_some_and(|t| Micros::from_timestamp(t) <= now)
        || a.valid_until
            .as_ref()
            .is_some_and(|t| Micros::from_timestamp(t) <= now)
}

/// How well a consent covers an event, ignoring time and withdrawal.
fn consent_scope(c: &pb::ConsentRecord, e: &EventFacts<'_>, r: &Recipient<'_>) -> Scope {
    if !c.purposes.contains(&(e.purpose as i32))
        || !c.recipients.iter().any(|s| selects(s, r.agency_id, r.kind))
    {
        return Scope::None;
    }
    if e.sensitivity == Sensitivity::Sensitive {
        if c.event_types.iter().any(|t| t == e.event_type) {
            Scope::Covers
        } else if any_matches(&c.event_types, e.event_type) {
            Scope::NotExplicit
        } else {
            Scope::None
        }
    } else if any_matches(&c.event_types, e.event_type) {
        Scope::Covers
    } else {
        Scope::None
    }
}

#[derive(PartialEq)]
enum Scope {
    None,
    NotExplicit,
    Covers,
}

/// Decides one recipient. `agreements` may include agreements that do not
/// apply (they are filtered here); `consents` are the child's consents.
pub fn decide<'a>(
    event: &EventFacts<'_>,
    recipient: &Recipient<'_>,
    agreements: impl IntoIterator<Item = &'a pb::Agreement>,
    consents: &[pb::ConsentRecord],
    safeguarding_override: Option<&pb::SafeguardingOverride>,
    now: Micros,
) -> Outcome {
    let mut covering: Vec<&pb::Agreement> = agreements
        .into_iter()
        .filter(|a| agreement_covers(a, event, recipient))
        .collect();
    if covering.is_empty() {
        return Outcome::withheld(Reason::NoAgreement);
    }
    covering.sort_by(|a, b| a.agreement_id.cmp(&b.agreement_id));
    let active: Vec<&pb::Agreement> = covering
        .iter()
        .copied()
        .filter(|a| agreement_active(a, now))
        .collect();
    if active.is_empty() {
        let reason = if covering.iter().any(|a| agreement_over(a, now)) {
            Reason::AgreementEnded
        } else {
            Reason::NoAgreement
        };
        let mut o = Outcome::withheld(reason);
        o.agreement_id = covering[0].agreement_id.clone();
        return o;
    }

    let sensitive = event.sensitivity == Sensitivity::Sensitive;
    let override_ok = safeguarding_override.is_some() && event.purpose == Purpose::Safeguarding;
    let mut first_refusal: Option<Outcome> = None;
    for a in active {
        let basis = LawfulBasis::try_from(a.lawful_basis).unwrap_or(LawfulBasis::Unspecified);
        let shared = |reason, consent_id: &str, lawful_basis| Outcome {
            reason,
            agreement_id: a.agreement_id.clone(),
            consent_id: consent_id.to_string(),
            lawful_basis,
            fields: a.fields.clone(),
        };
        if !a.requires_consent && !sensitive {
            return shared(Reason::Agreement, "", basis);
        }
        let mut withdrawn = false;
        let mut not_explicit = false;
        let mut best: Option<&pb::ConsentRecord> = None;
        for c in consents {
            match consent_scope(c, event, recipient) {
                Scope::None => {}
                Scope::NotExplicit => {
                    not_explicit |= in_window(now, c.valid_from.as_ref(), c.valid_until.as_ref())
                }
                Scope::Covers => {
                    if !in_window(now, c.valid_from.as_ref(), c.valid_until.as_ref()) {
                        continue;
                    }
                    let is_withdrawn = c
                        .withdrawn_at
                        .as_ref()
                        .is_some_and(|t| Micros::from_timestamp(t) <= now);
                    if is_withdrawn {
                        withdrawn = true;
                    } else if best.is_none_or(|b| c.consent_id < b.consent_id) {
                        best = Some(c);
                    }
                }
            }
        }
        if let Some(c) = best {
            return shared(Reason::Consent, &c.consent_id, basis);
        }
        if override_ok {
            // A statutory safeguarding duty, not the family's consent, is
            // the lawful basis when an override is used.
            let basis = if basis == LawfulBasis::Consent {
                LawfulBasis::PublicTask
            } else {
                basis
            };
            return shared(Reason::Override, "", basis);
        }
        if first_refusal.is_none() {
            let reason = if withdrawn {
                Reason::ConsentWithdrawn
            } else if sensitive && (not_explicit || !a.requires_consent) {
                Reason::SensitiveNeedsExplicitConsent
            } else {
                Reason::NoConsent
            };
            let mut o = Outcome::withheld(reason);
            o.agreement_id = a.agreement_id.clone();
            o.lawful_basis = basis;
            first_refusal = Some(o);
        }
    }
    first_refusal.unwrap_or_else(|| Outcome::withheld(Reason::NoAgreement))
}

/// Agreements indexed by provider and then recipient (each an agency id or
/// `kind:`), so a decision reads only the agreements that can apply to one
/// provider → recipient pair: at most four short lists.
#[derive(Debug, Default, Clone)]
pub struct AgreementIndex {
    by_pair: HashMap<String, HashMap<String, Vec<pb::Agreement>>>,
}

impl AgreementIndex {
    /// Builds the index.
    pub fn new(agreements: impl IntoIterator<Item = pb::Agreement>) -> Self {
        let mut idx = AgreementIndex::default();
        for a in agreements {
            idx.put(a);
        }
        idx
    }

    /// Adds or replaces (by id) an agreement.
    pub fn put(&mut self, a: pb::Agreement) {
        self.remove(&a.agreement_id);
        self.by_pair
            .entry(a.provider.clone())
            .or_default()
            .entry(a.recipient.clone())
            .or_default()
            .push(a);
    }

    /// Removes an agreement by id.
    pub fn remove(&mut self, agreement_id: &str) -> Option<pb::Agreement> {
        for by_recipient in self.by_pair.values_mut() {
            for list in by_recipient.values_mut() {
                if let Some(pos) = list.iter().position(|a| a.agreement_id == agreement_id) {
                    return Some(list.swap_remove(pos));
                }
            }
        }
        None
    }

    /// An agreement by id.
    pub fn get(&self, agreement_id: &str) -> Option<&pb::Agreement> {
        self.all().find(|a| a.agreement_id == agreement_id)
    }

    /// Every agreement, unordered.
    pub fn all(&self) -> impl Iterator<Item = &pb::Agreement> {
        self.by_pair.values().flat_map(|m| m.values()).flatten()
    }

    /// The number of agreements.
    pub fn len(&self) -> usize {
        self.all().count()
    }

    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.all().next().is_none()
    }

    /// The agreements whose provider is this agency (or its kind) and whose
    /// recipient is that agency (or its kind).
    pub fn between<'s>(
        &'s self,
        provider: (&str, AgencyKind),
        recipient: (&str, AgencyKind),
    ) -> impl Iterator<Item = &'s pb::Agreement> {
        let providers = [provider.0, kind_selector(provider.1)];
        let recipients = [recipient.0, kind_selector(recipient.1)];
        providers
            .into_iter()
            .filter_map(|p| self.by_pair.get(p))
            .flat_map(move |m| recipients.into_iter().filter_map(|r| m.get(r)))
            .flatten()
    }
}

#[cfg(test)]
mod tests;
