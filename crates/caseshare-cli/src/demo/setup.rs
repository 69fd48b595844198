//! The scenario's setup, done before the first step: the administrator
//! registers the agencies and loads the agreements, the school records the
//! parent's consent, and the recipients create subscriptions and open their
//! feeds.

use std::io::Write;

use anyhow::{Context, Result};
use caseshare_proto::v1 as pb;

use super::print::{heading, lawful_basis, nhs_display, purposes, table};
use super::{
    CHILD_NHS_NUMBER, CONSENT_ID, Demo, Feed, HEALTH, ISA_HEALTH_SCHOOL, ISA_HEALTH_SOCIAL_CARE,
    ISA_SCHOOL_SOCIAL_CARE, SCHOOL, SCHOOL_SUBSCRIPTION, SOCIAL_CARE, SOCIAL_CARE_SUBSCRIPTION,
};

impl<W: Write> Demo<'_, W> {
    /// Registers the agencies, loads the agreements, records the consent
    /// and opens the subscriptions and their feeds, printing each as a table.
    pub(super) async fn setup(&mut self) -> Result<()> {
        heading(self.out, "Agencies (registered by the administrator)")?;
        let registrations = [
            (
                HEALTH,
                pb::AgencyKind::Health,
                "Northshire Hospitals NHS Trust",
            ),
            (
                SCHOOL,
                pb::AgencyKind::Education,
                "Brookfield Primary School",
            ),
            (
                SOCIAL_CARE,
                pb::AgencyKind::SocialCare,
                "Northshire Children's Social Care",
            ),
        ];
        let mut rows = Vec::new();
        for (id, kind, name) in registrations {
            let agency = self
                .admin
                .admin
                .register_agency(pb::RegisterAgencyRequest {
                    agency_id: id.into(),
                    kind: kind as i32,
                    display_name: name.into(),
                })
                .await
                .with_context(|| format!("RegisterAgency {id}"))?
                .into_inner();
            rows.push(vec![
                agency.agency_id,
                kind.as_str_name().to_string(),
                agency.display_name,
            ]);
        }
        table(self.out, &["Agency", "Kind", "Name"], &rows)?;

        heading(self.out, "Information sharing agreements")?;
        let mut rows = Vec::new();
        let mut fields = Vec::new();
        for agreement in agreements() {
            let a = self
                .admin
                .admin
                .put_agreement(agreement)
                .await
                .context("PutAgreement")?
                .into_inner();
            rows.push(vec![
                a.agreement_id.clone(),
                a.provider.clone(),
                a.recipient.clone(),
                purposes(&a.purposes),
                a.event_types.join(", "),
                lawful_basis(a.lawful_basis).to_string(),
                if a.requires_consent { "yes" } else { "no" }.to_string(),
            ]);
            fields.push(vec![
                a.agreement_id.clone(),
                if a.fields.is_empty() {
                    "the whole event".to_string()
                } else {
                    a.fields.join(", ")
                },
            ]);
            self.report.agreements.push(a);
        }
        table(
            self.out,
            &[
                "Agreement",
                "Provider",
                "Recipient",
                "Purposes",
                "Event types",
                "Lawful basis",
                "Consent needed",
            ],
            &rows,
        )?;
        writeln!(
            self.out,
            "\n  Fields each recipient may see (event id, child, purpose and time always go):"
        )?;
        table(self.out, &["Agreement", "Fields"], &fields)?;

        heading(self.out, "Consent (recorded by the school)")?;
        let consent = self
            .agency(SCHOOL)?
            .consent
            .record_consent(pb::ConsentRecord {
                consent_id: CONSENT_ID.into(),
                nhs_number: CHILD_NHS_NUMBER.into(),
                given_by: pb::GivenBy::Parent as i32,
                purposes: vec![pb::Purpose::EarlyHelp as i32],
                recipients: vec!["kind:social_care".into()],
                event_types: vec!["education.*".into()],
                evidence_ref: "school-b/consent-forms/2026-014".into(),
                ..Default::default()
            })
            .await
            .context("RecordConsent")?
            .into_inner();
        table(
            self.out,
            &[
                "Consent",
                "Child",
                "Given by",
                "Purposes",
                "Recipients",
                "Event types",
                "Evidence",
            ],
            &[vec![
                consent.consent_id.clone(),
                nhs_display(&consent.nhs_number),
                pb::GivenBy::try_from(consent.given_by)
                    .map_or("?", |g| g.as_str_name())
                    .to_string(),
                purposes(&consent.purposes),
                consent.recipients.join(", "),
                consent.event_types.join(", "),
                consent.evidence_ref.clone(),
            ]],
        )?;
        self.report.consent = consent;

        heading(self.out, "Subscriptions")?;
        let subscriptions = [
            (SOCIAL_CARE, SOCIAL_CARE_SUBSCRIPTION, vec![]),
            (SCHOOL, SCHOOL_SUBSCRIPTION, vec!["health.*".to_string()]),
        ];
        let mut rows = Vec::new();
        for (agency, name, event_types) in subscriptions {
            let s = self
                .agency(agency)?
                .subscriber
                .create_subscription(pb::Subscription {
                    name: name.into(),
                    event_types,
                    ..Default::default()
                })
                .await
                .with_context(|| format!("{agency}: CreateSubscription {name}"))?
                .into_inner();
            rows.push(vec![
                s.agency_id.clone(),
                s.name.clone(),
                if s.event_types.is_empty() {
                    "every event type".to_string()
                } else {
                    s.event_types.join(", ")
                },
            ]);
            let feed = Feed::open(&self.agency(agency)?, agency, name).await?;
            self.feeds.push(feed);
            self.report.received.insert(agency.to_string(), Vec::new());
        }
        self.report.received.insert(HEALTH.to_string(), Vec::new());
        table(self.out, &["Agency", "Subscription", "Event types"], &rows)?;
        writeln!(
            self.out,
            "  {HEALTH} has no subscription: it publishes only, so it is never a candidate recipient."
        )?;
        Ok(())
    }
}

/// The demo's agreements.
fn agreements() -> Vec<pb::Agreement> {
    vec![
        pb::Agreement {
            agreement_id: ISA_SCHOOL_SOCIAL_CARE.into(),
            provider: SCHOOL.into(),
            recipient: "kind:social_care".into(),
            purposes: vec![
                pb::Purpose::EarlyHelp as i32,
                pb::Purpose::Safeguarding as i32,
            ],
            event_types: vec!["education.*".into()],
            fields: vec![
                "education_attendance_concern.period".into(),
                "education_attendance_concern.attendance_percent".into(),
            ],
            lawful_basis: pb::LawfulBasis::PublicTask as i32,
            requires_consent: true,
            ..Default::default()
        },
        pb::Agreement {
            agreement_id: ISA_HEALTH_SOCIAL_CARE.into(),
            provider: HEALTH.into(),
            recipient: SOCIAL_CARE.into(),
            purposes: vec![
                pb::Purpose::EarlyHelp as i32,
                pb::Purpose::Safeguarding as i32,
            ],
            event_types: vec!["health.*".into()],
            fields: vec![
                "health_was_not_brought".into(),
                "health_emergency_attendance".into(),
                "health_mental_health_referral".into(),
            ],
            lawful_basis: pb::LawfulBasis::PublicTask as i32,
            requires_consent: false,
            ..Default::default()
        },
        pb::Agreement {
            agreement_id: ISA_HEALTH_SCHOOL.into(),
            provider: HEALTH.into(),
            recipient: SCHOOL.into(),
            purposes: vec![pb::Purpose::Safeguarding as i32],
            event_types: vec!["health.emergency_attendance".into()],
            fields: vec![
                "health_emergency_attendance.arrived_at".into(),
                "health_emergency_attendance.presenting_category".into(),
            ],
            lawful_basis: pb::LawfulBasis::PublicTask as i32,
            requires_consent: false,
            ..Default::default()
        },
    ]
}
