//! The six published steps, (a) to (f): the events each agency publishes,
//! the consent withdrawal and the override between them, and reading each
//! step's shared deliveries from the feeds.

use std::io::Write;

use anyhow::{Context, Result, anyhow};
use caseshare_proto::v1 as pb;

use super::print::legal_basis;
use super::{CHILD_NHS_NUMBER, CHILD_UPN, CONSENT_ID, Demo, HEALTH, SCHOOL, Step};

impl<W: Write> Demo<'_, W> {
    /// Plays steps (a) to (f) in order.
    pub(super) async fn scenario(&mut self) -> Result<()> {
        // (a) consent-based sharing, minimised.
        let a = self.attendance("school-b-att-0001", pb::Purpose::EarlyHelp, 2, 78.5, 11);
        self.step(
            "a",
            "An attendance concern is shared with social care, with the parent's consent",
            SCHOOL,
            publish(a, None),
            &[],
        )
        .await?;

        // (b) shared with social care, withheld from the school.
        let mut b = self.event("nhs-trust-a-wnb-0001", pb::Purpose::EarlyHelp, 9);
        b.summary = "Second missed paediatric appointment; family not reachable by phone".into();
        b.payload = Some(pb::case_event::Payload::HealthWasNotBrought(
            pb::WasNotBrought {
                appointment_kind: "paediatric_outpatient".into(),
                appointment_at: self.ts(9, 10),
                consecutive_missed: 2,
            },
        ));
        self.step(
            "b",
            "A missed hospital appointment: shared with social care, withheld from the school",
            HEALTH,
            publish(b, None),
            &[],
        )
        .await?;

        // (c) consent withdrawn, so the next attendance concern is withheld.
        let reason = "Parent withdrew consent by telephone to the school office";
        let withdrawn = self
            .agency(SCHOOL)?
            .consent
            .withdraw_consent(pb::WithdrawConsentRequest {
                consent_id: CONSENT_ID.into(),
                reason: reason.into(),
            })
            .await
            .context("WithdrawConsent")?
            .into_inner();
        let note = format!(
            "{SCHOOL} withdraws consent {} (\"{}\"). Once WithdrawConsent returns, nothing it covered is delivered.",
            withdrawn.consent_id, withdrawn.withdrawal_reason
        );
        self.report.withdrawn = withdrawn;
        let c = self.attendance("school-b-att-0002", pb::Purpose::EarlyHelp, 16, 74.0, 14);
        self.step(
            "c",
            "The parent withdraws consent: the next attendance concern is withheld",
            SCHOOL,
            publish(c, None),
            &[note],
        )
        .await?;

        // (d) a safeguarding override.
        let override_ = pb::SafeguardingOverride {
            legal_basis: pb::LegalBasis::ChildrenAct1989S47 as i32,
            justification: "Unexplained bruising seen by staff and falling attendance; \
                            a section 47 enquiry is open and consent has been withdrawn"
                .into(),
            authorised_by: "J. Okafor, Designated Safeguarding Lead, Brookfield Primary".into(),
        };
        let notes = [
            format!(
                "Override: {}, authorised by {}",
                legal_basis(override_.legal_basis),
                override_.authorised_by
            ),
            format!("Justification: \"{}\"", override_.justification),
        ];
        let d = self.attendance("school-b-att-0003", pb::Purpose::Safeguarding, 20, 71.0, 16);
        self.step(
            "d",
            "Safeguarding override: the school shares without consent (Children Act 1989 s47)",
            SCHOOL,
            publish(d, Some(override_)),
            &notes,
        )
        .await?;

        // (e) sensitive: withheld without explicit consent.
        let mut e = self.event("nhs-trust-a-mhr-0001", pb::Purpose::EarlyHelp, 23);
        e.sensitivity = pb::Sensitivity::Sensitive as i32;
        e.summary = "Referred to CAMHS after the GP reported persistent low mood".into();
        e.payload = Some(pb::case_event::Payload::HealthMentalHealthReferral(
            pb::MentalHealthReferral {
                service: "CAMHS".into(),
                urgency: "urgent".into(),
                referred_at: self.ts(23, 11),
            },
        ));
        self.step(
            "e",
            "A mental-health referral is SENSITIVE: withheld without explicit consent",
            HEALTH,
            publish(e, None),
            &[],
        )
        .await?;

        // (f) shared for safeguarding with both; closes every feed.
        let mut f = self.event("nhs-trust-a-ed-0001", pb::Purpose::Safeguarding, 27);
        f.summary =
            "Forearm fracture; the explanation given is inconsistent with the injury".into();
        f.payload = Some(pb::case_event::Payload::HealthEmergencyAttendance(
            pb::EmergencyAttendance {
                site: "Northshire General Hospital emergency department".into(),
                arrived_at: self.ts(27, 19),
                presenting_category: "injury".into(),
            },
        ));
        self.step(
            "f",
            "An emergency attendance is shared for safeguarding with social care and the school",
            HEALTH,
            publish(f, None),
            &[],
        )
        .await?;
        Ok(())
    }

    /// An event about the child, without payload, on `day` at 09:00.
    fn event(&self, id: &str, purpose: pb::Purpose, day: i64) -> pb::CaseEvent {
        pb::CaseEvent {
            event_id: id.into(),
            child: Some(pb::ChildRef {
                nhs_number: CHILD_NHS_NUMBER.into(),
                local_ids: vec![],
            }),
            purpose: purpose as i32,
            occurred_at: self.ts(day, 9),
            ..Default::default()
        }
    }

    /// The school's attendance concern, with the child's UPN.
    fn attendance(
        &self,
        id: &str,
        purpose: pb::Purpose,
        day: i64,
        percent: f64,
        sessions: u32,
    ) -> pb::CaseEvent {
        let mut e = self.event(id, purpose, day);
        if let Some(child) = e.child.as_mut() {
            child.local_ids.push(pb::LocalId {
                scheme: "upn".into(),
                value: CHILD_UPN.into(),
            });
        }
        e.summary = format!(
            "Attendance down to {percent}% this half term with {sessions} unauthorised sessions; \
             the child seems withdrawn in class"
        );
        e.payload = Some(pb::case_event::Payload::EducationAttendanceConcern(
            pb::AttendanceConcern {
                period: "2026-autumn-2".into(),
                attendance_percent: percent,
                unauthorised_sessions: sessions,
            },
        ));
        e
    }

    /// Publishes one step's event, reads the deliveries of what was
    /// shared from the recipients' feeds, prints the step and records it.
    async fn step(
        &mut self,
        label: &'static str,
        title: &str,
        publisher: &str,
        request: pb::PublishRequest,
        notes: &[String],
    ) -> Result<()> {
        let response = self
            .agency(publisher)?
            .publisher
            .publish(request.clone())
            .await
            .with_context(|| format!("step ({label}): {publisher} Publish"))?
            .into_inner();
        let mut deliveries = Vec::new();
        for decision in &response.decisions {
            if decision.decision != pb::Decision::Shared as i32 {
                continue;
            }
            let feed = self
                .feeds
                .iter_mut()
                .find(|f| f.agency == decision.agency_id)
                .ok_or_else(|| {
                    anyhow!(
                        "step ({label}): shared with {}, which the demo does not read",
                        decision.agency_id
                    )
                })?;
            for delivery in feed.until(response.sequence).await? {
                self.report
                    .received
                    .entry(feed.agency.to_string())
                    .or_default()
                    .push(delivery.clone());
                deliveries.push((feed.agency.to_string(), delivery));
            }
        }
        let step = Step {
            label,
            title: title.to_string(),
            publisher: publisher.to_string(),
            request,
            response,
            deliveries,
        };
        self.print_step(&step, notes)?;
        self.report.steps.push(step);
        Ok(())
    }
}

/// A publish request for `event`, under a safeguarding override if given.
fn publish(event: pb::CaseEvent, o: Option<pb::SafeguardingOverride>) -> pb::PublishRequest {
    pb::PublishRequest {
        event: Some(event),
        basis: o.map(|o| pb::SharingBasis {
            safeguarding_override: Some(o),
        }),
        to_agencies: vec![],
        trace_context: None,
    }
}
