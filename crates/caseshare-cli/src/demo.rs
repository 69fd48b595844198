//! `caseshare demo`: a three-agency scenario played end to end against a
//! real broker, printed as tables a Caldicott guardian can read.
//!
//! [`run`] starts a broker in a temporary directory (in this process, on
//! free loopback ports, with a development PKI), connects over mutual TLS as
//! the administrator, the auditor and the three sample agencies
//! (`nhs-trust-a`, `school-b`, `la-social-care-c`), registers the agencies,
//! loads three information sharing agreements, records the parent's consent,
//! creates subscriptions, and plays six steps:
//!
//! - (a) the school's attendance concern is shared with social care under
//!   consent, minimised to the agreement's fields;
//! - (b) a hospital `was_not_brought` is shared with social care and
//!   withheld from the school, which has no agreement for it;
//! - (c) the parent withdraws consent, so the next attendance concern is
//!   withheld (`consent_withdrawn`);
//! - (d) the school shares under a safeguarding override (Children Act 1989
//!   s47), flagged `override_used`;
//! - (e) a sensitive mental-health referral is withheld without explicit
//!   consent (`sensitive_needs_explicit_consent`);
//! - (f) an emergency attendance is shared for safeguarding with social care
//!   and the school. It is the first event the school may receive and the
//!   last one social care receives, so reading each feed up to it shows that
//!   nothing withheld earlier was delivered.
//!
//! Deliveries are read from `Subscribe` streams and acknowledged on them;
//! every wait has a timeout. At the end the audit log is read back as the
//! auditor and summarised, and the broker is shut down.
//!
//! All names, numbers and case details are invented.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use caseshare_core::minimise::case_event_descriptor;
use caseshare_proto::v1 as pb;
use caseshare_server::config::Config;
use prost::Message;
use prost_reflect::{DynamicMessage, Kind, ReflectMessage, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use crate::client::{ClientConfig, Clients};

/// The hospital trust (HEALTH).
pub const HEALTH: &str = "nhs-trust-a";
/// The school (EDUCATION).
pub const SCHOOL: &str = "school-b";
/// The local authority's children's social care (SOCIAL_CARE).
pub const SOCIAL_CARE: &str = "la-social-care-c";
/// The child every event is about (an invented, modulus-11 valid number).
pub const CHILD_NHS_NUMBER: &str = "9434765919";
/// The child's Unique Pupil Number, carried on the school's events.
pub const CHILD_UPN: &str = "B801200005001";
/// The parent's consent the school records.
pub const CONSENT_ID: &str = "consent-0001";
/// School → social care, education events, needs consent, limited fields.
pub const ISA_SCHOOL_SOCIAL_CARE: &str = "isa-school-sc";
/// Hospital → social care, health events, no consent needed.
pub const ISA_HEALTH_SOCIAL_CARE: &str = "isa-health-sc";
/// Hospital → school, emergency attendances for safeguarding only.
pub const ISA_HEALTH_SCHOOL: &str = "isa-health-school";
/// Social care's subscription (every event type).
pub const SOCIAL_CARE_SUBSCRIPTION: &str = "all-events";
/// The school's subscription (`health.*`).
pub const SCHOOL_SUBSCRIPTION: &str = "health-alerts";

/// How long any one wait (a delivery, the broker starting) may take.
const TIMEOUT: Duration = Duration::from_secs(20);
/// The flow-control window of each demo subscriber.
const WINDOW: u32 = 16;

/// One step of the scenario: what was published, what the broker answered
/// and what the recipients received because of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// `a` … `f`.
    pub label: &'static str,
    /// A one-line description.
    pub title: String,
    /// The publishing agency.
    pub publisher: String,
    /// The request as published.
    pub request: pb::PublishRequest,
    /// The broker's answer.
    pub response: pb::PublishResponse,
    /// Deliveries read from the feeds while waiting for this step's shared
    /// decisions, as (recipient agency, delivery), in arrival order.
    pub deliveries: Vec<(String, pb::Delivery)>,
}

impl Step {
    /// The decision for one recipient, if it was a candidate.
    pub fn decision(&self, agency: &str) -> Option<&pb::SharingDecision> {
        self.response
            .decisions
            .iter()
            .find(|d| d.agency_id == agency)
    }
}

/// What the audit log held at the end, read back as the auditor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditSummary {
    /// Entries in the log.
    pub entries: u64,
    /// True if the entries' indexes run 0, 1, 2, … without gaps.
    pub gap_free: bool,
    /// SHARE_DECIDED entries with decision SHARED.
    pub decisions_shared: usize,
    /// SHARE_DECIDED entries with decision WITHHELD.
    pub decisions_withheld: usize,
    /// EVENT_DELIVERED entries.
    pub delivered: usize,
    /// CONSENT_RECORDED entries.
    pub consents_recorded: usize,
    /// CONSENT_WITHDRAWN entries.
    pub consents_withdrawn: usize,
    /// SHARE_DECIDED entries that used a safeguarding override and carry
    /// its legal basis, justification and authoriser.
    pub overrides_with_justification: usize,
    /// Entries whose bytes contain the child's raw NHS number (must be 0).
    pub entries_with_nhs_number: usize,
    /// The child's pseudonym as the log records it (hex), if seen.
    pub child_pseudonym: String,
}

/// Everything the demo did, for tests and for callers that want more than
/// the printed tables.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DemoReport {
    /// The gRPC address the broker listened on.
    pub grpc: Option<SocketAddr>,
    /// The agreements as the broker stored them.
    pub agreements: Vec<pb::Agreement>,
    /// The consent as recorded.
    pub consent: pb::ConsentRecord,
    /// The consent as returned by WithdrawConsent.
    pub withdrawn: pb::ConsentRecord,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// Every delivery each agency received, in arrival order (an empty list
    /// for an agency that received nothing).
    pub received: BTreeMap<String, Vec<pb::Delivery>>,
    /// The audit log at the end.
    pub audit: AuditSummary,
    /// True if every agency received exactly the events shared with it, in
    /// publish order, and nothing withheld.
    pub deliveries_match_decisions: bool,
}

impl DemoReport {
    /// A step by label.
    pub fn step(&self, label: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.label == label)
    }

    /// What one agency received.
    pub fn received_by(&self, agency: &str) -> &[pb::Delivery] {
        self.received.get(agency).map_or(&[], Vec::as_slice)
    }
}

/// Plays the demo scenario against a broker started for the purpose, writing
/// the tables to `out`. Fails if the broker cannot start, a call fails, an
/// expected delivery does not arrive in time, or an agency receives
/// something other than what was shared with it.
pub async fn run(out: &mut impl Write) -> Result<DemoReport> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::Builder::new()
        .prefix("caseshare-demo-")
        .tempdir()
        .context("creating a temporary directory for the demo broker")?;
    let data_dir = tmp.path().join("data");
    let pki_dir = data_dir.join("pki");
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let config = Config {
        data_dir: data_dir.clone(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ops_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..Config::default()
    };
    // Created here rather than by the broker so that its notice about the
    // new PKI does not interleave with the demo's output.
    caseshare_server::pki::write_dev_pki(&pki_dir, &config.trust_domain)
        .context("creating the development PKI")?;

    writeln!(out, "Caseshare demo: sharing information about one child")?;
    writeln!(out, "====================================================")?;
    writeln!(
        out,
        "A broker runs in a temporary directory ({}) with a development PKI;\n\
         every call below is real gRPC over mutual TLS. All names and case details are invented.",
        tmp.path().display()
    )?;

    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (bound_tx, bound_rx) = oneshot::channel();
    let server = caseshare_server::serve(
        config,
        async move {
            let _ = stop_rx.await;
        },
        move |bound| {
            let _ = bound_tx.send(bound);
        },
    );
    let scenario = async {
        let played = match tokio::time::timeout(TIMEOUT, bound_rx).await {
            Ok(Ok(bound)) => play(&mut *out, bound.grpc, &pki_dir).await,
            Ok(Err(_)) => Err(anyhow!("the broker stopped before it was listening")),
            Err(_) => Err(anyhow!(
                "the broker did not start listening within {} s",
                TIMEOUT.as_secs()
            )),
        };
        // Every client is dropped by now; stop the broker whatever happened.
        let _ = stop_tx.send(());
        played
    };
    let (served, played) = tokio::join!(server, scenario);
    let _ = tmp.close();
    let report = match (played, served) {
        (Ok(report), Ok(())) => report,
        (Err(e), Ok(())) => return Err(e),
        (Err(e), Err(s)) => return Err(e.context(format!("the broker failed: {s}"))),
        (Ok(_), Err(s)) => return Err(anyhow!("the broker failed: {s}")),
    };
    writeln!(
        out,
        "\nThe broker has shut down and its temporary directory is deleted."
    )?;
    if !report.deliveries_match_decisions {
        bail!("an agency received something other than what was shared with it (see above)");
    }
    Ok(report)
}

/// An open `Subscribe` stream for one agency.
struct Feed {
    agency: &'static str,
    tx: mpsc::Sender<pb::SubscribeRequest>,
    rx: tonic::Streaming<pb::Delivery>,
}

impl Feed {
    async fn open(clients: &Clients, agency: &'static str, subscription: &str) -> Result<Feed> {
        let (tx, rx) = mpsc::channel(64);
        tx.send(pb::SubscribeRequest {
            subscription: subscription.into(),
            max_outstanding: WINDOW,
            ..Default::default()
        })
        .await
        .map_err(|_| anyhow!("{agency}: could not open the delivery stream"))?;
        let rx = clients
            .subscriber
            .clone()
            .subscribe(ReceiverStream::new(rx))
            .await
            .with_context(|| format!("{agency}: Subscribe {subscription}"))?
            .into_inner();
        Ok(Feed { agency, tx, rx })
    }

    /// Reads (and acknowledges) deliveries until the one for `sequence`, or a
    /// later one, arrives; returns everything read.
    async fn until(&mut self, sequence: u64) -> Result<Vec<pb::Delivery>> {
        let mut got = Vec::new();
        loop {
            let delivery = tokio::time::timeout(TIMEOUT, self.rx.message())
                .await
                .map_err(|_| {
                    anyhow!(
                        "{}: the delivery of event {sequence} did not arrive within {} s",
                        self.agency,
                        TIMEOUT.as_secs()
                    )
                })?
                .with_context(|| format!("{}: the delivery stream failed", self.agency))?
                .ok_or_else(|| anyhow!("{}: the delivery stream ended", self.agency))?;
            self.tx
                .send(pb::SubscribeRequest {
                    ack: Some(pb::AckIds {
                        delivery_ids: vec![delivery.delivery_id.clone()],
                    }),
                    ..Default::default()
                })
                .await
                .map_err(|_| anyhow!("{}: the delivery stream closed", self.agency))?;
            let done = delivery.sequence >= sequence;
            got.push(delivery);
            if done {
                return Ok(got);
            }
        }
    }
}

/// The connections and state of one demo run.
struct Demo<'o, W: Write> {
    out: &'o mut W,
    admin: Clients,
    auditor: Clients,
    agencies: BTreeMap<&'static str, Clients>,
    feeds: Vec<Feed>,
    report: DemoReport,
    base: i64,
}

async fn play(out: &mut impl Write, grpc: SocketAddr, pki: &Path) -> Result<DemoReport> {
    let server = format!("https://localhost:{}", grpc.port());
    let connect = |name: &str| -> Result<Clients> {
        Clients::connect(&ClientConfig::dev(server.clone(), pki, name))
            .with_context(|| format!("connecting as {name}"))
    };
    let mut agencies = BTreeMap::new();
    for agency in [HEALTH, SCHOOL, SOCIAL_CARE] {
        agencies.insert(agency, connect(agency)?);
    }
    let mut demo = Demo {
        out,
        admin: connect("admin")?,
        auditor: connect("auditor")?,
        agencies,
        feeds: Vec::new(),
        report: DemoReport {
            grpc: Some(grpc),
            ..DemoReport::default()
        },
        // Midnight UTC 30 days ago: event dates are relative to it.
        base: unix_now() / 86_400 * 86_400 - 30 * 86_400,
    };
    writeln!(demo.out, "Broker listening on {server}")?;
    writeln!(
        demo.out,
        "The child: NHS number {}, Unique Pupil Number {CHILD_UPN}",
        nhs_display(CHILD_NHS_NUMBER)
    )?;
    demo.setup().await?;
    demo.scenario().await?;
    demo.check_deliveries()?;
    demo.audit().await?;
    Ok(demo.report)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

impl<W: Write> Demo<'_, W> {
    fn ts(&self, day: i64, hour: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp {
            seconds: self.base + day * 86_400 + hour * 3_600,
            nanos: 0,
        })
    }

    fn agency(&self, agency: &str) -> Result<Clients> {
        self.agencies
            .get(agency)
            .cloned()
            .ok_or_else(|| anyhow!("no connection for {agency}"))
    }

    async fn setup(&mut self) -> Result<()> {
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

    async fn scenario(&mut self) -> Result<()> {
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

    fn print_step(&mut self, step: &Step, notes: &[String]) -> Result<()> {
        let r = &step.response;
        let event = step.request.event.clone().unwrap_or_default();
        heading(self.out, &format!("({}) {}", step.label, step.title))?;
        for note in notes {
            writeln!(self.out, "  {note}")?;
        }
        writeln!(
            self.out,
            "  {} publishes {} (purpose {}{}): event sequence {}, audit entry {}",
            step.publisher,
            r.event_type,
            purpose_name(event.purpose),
            if event.sensitivity == pb::Sensitivity::Sensitive as i32 {
                ", SENSITIVE"
            } else {
                ""
            },
            r.sequence,
            r.audit_index
        )?;
        writeln!(self.out)?;
        let override_basis = step
            .request
            .basis
            .as_ref()
            .and_then(|b| b.safeguarding_override.as_ref())
            .map(|o| legal_basis(o.legal_basis));
        let mut rows = Vec::new();
        for (i, d) in r.decisions.iter().enumerate() {
            let first = i == 0;
            rows.push(vec![
                if first { step.label } else { "" }.to_string(),
                if first { r.event_type.as_str() } else { "" }.to_string(),
                if first { step.publisher.as_str() } else { "" }.to_string(),
                d.agency_id.clone(),
                decision_name(d.decision).to_string(),
                d.reason.clone(),
                basis(d, override_basis),
            ]);
        }
        if rows.is_empty() {
            writeln!(
                self.out,
                "  No agency subscribes to this event: nobody was a candidate."
            )?;
        } else {
            table(
                self.out,
                &[
                    "Step",
                    "Event type",
                    "From",
                    "To",
                    "Decision",
                    "Reason",
                    "Basis (agreement / consent / override)",
                ],
                &rows,
            )?;
        }
        writeln!(self.out, "\n  What each candidate received")?;
        for d in &r.decisions {
            let got: Vec<&pb::Delivery> = step
                .deliveries
                .iter()
                .filter(|(agency, _)| *agency == d.agency_id)
                .map(|(_, delivery)| delivery)
                .collect();
            if got.is_empty() {
                writeln!(
                    self.out,
                    "    {:<18}nothing: {} ({})",
                    d.agency_id,
                    decision_name(d.decision).to_lowercase(),
                    d.reason
                )?;
            }
            for delivery in got {
                let unexpected = if delivery.sequence == r.sequence {
                    ""
                } else {
                    "  << NOT THIS STEP'S EVENT"
                };
                writeln!(
                    self.out,
                    "    {:<18}{} (sequence {}, delivery {}){unexpected}",
                    d.agency_id, delivery.event_type, delivery.sequence, delivery.delivery_id
                )?;
                let event = delivery.event.clone().unwrap_or_default();
                writeln!(self.out, "    {:<18}  content:  {}", "", content(&event))?;
                writeln!(
                    self.out,
                    "    {:<18}  redacted: {}",
                    "",
                    if delivery.redacted_fields.is_empty() {
                        "nothing".to_string()
                    } else {
                        delivery.redacted_fields.join(", ")
                    }
                )?;
            }
        }
        Ok(())
    }

    /// Compares what each agency received with what was shared with it.
    fn check_deliveries(&mut self) -> Result<()> {
        heading(
            self.out,
            "Delivery check: each feed read in order up to its last shared event",
        )?;
        let label_of = |seq: u64, steps: &[Step]| {
            steps
                .iter()
                .find(|s| s.response.sequence == seq)
                .map_or(format!("#{seq}?"), |s| s.label.to_string())
        };
        let mut rows = Vec::new();
        let mut all_ok = true;
        for (agency, received) in &self.report.received {
            let shared: Vec<u64> = self
                .report
                .steps
                .iter()
                .filter(|s| {
                    s.decision(agency)
                        .is_some_and(|d| d.decision == pb::Decision::Shared as i32)
                })
                .map(|s| s.response.sequence)
                .collect();
            let withheld: Vec<&str> = self
                .report
                .steps
                .iter()
                .filter(|s| {
                    s.decision(agency)
                        .is_some_and(|d| d.decision == pb::Decision::Withheld as i32)
                })
                .map(|s| s.label)
                .collect();
            let got: Vec<u64> = received.iter().map(|d| d.sequence).collect();
            let ok = got == shared;
            all_ok &= ok;
            let labels = |seqs: &[u64]| {
                if seqs.is_empty() {
                    "-".to_string()
                } else {
                    seqs.iter()
                        .map(|s| label_of(*s, &self.report.steps))
                        .collect::<Vec<_>>()
                        .join(" ")
                }
            };
            rows.push(vec![
                agency.clone(),
                labels(&shared),
                labels(&got),
                if withheld.is_empty() {
                    "-".to_string()
                } else {
                    withheld.join(" ")
                },
                if ok { "ok" } else { "MISMATCH" }.to_string(),
            ]);
        }
        table(
            self.out,
            &[
                "Agency",
                "Shared with it",
                "Received",
                "Withheld from it",
                "Check",
            ],
            &rows,
        )?;
        writeln!(
            self.out,
            "  Feeds deliver in publish order, so a withheld event that had been sent would\n  \
             have arrived before the later events each agency did receive."
        )?;
        self.report.deliveries_match_decisions = all_ok;
        Ok(())
    }

    /// Reads the whole audit log as the auditor and summarises it.
    async fn audit(&mut self) -> Result<()> {
        let lower = self.report.steps.last().map_or(0, |s| {
            s.response.audit_index + 1 + s.response.decisions.len() as u64
        });
        let size = audit_size(&mut self.auditor, lower).await?;
        let mut entries = Vec::new();
        let mut start = 0;
        while start < size {
            let end = size.min(start + 10_000);
            let mut stream = self
                .auditor
                .audit
                .get_entries(pb::GetEntriesRequest { start, end })
                .await
                .context("GetEntries")?
                .into_inner();
            while let Some(leaf) = stream.message().await.context("GetEntries")? {
                let entry = caseshare_audit::entry::decode(&leaf.leaf)
                    .map_err(|e| anyhow!("audit entry {}: {e}", leaf.index))?;
                entries.push((leaf.index, leaf.leaf, entry));
            }
            start = end;
        }
        let decided = |d: pb::Decision| {
            entries
                .iter()
                .filter(|(_, _, e)| {
                    e.kind == pb::EntryKind::ShareDecided as i32 && e.decision == d as i32
                })
                .count()
        };
        let kind = |k: pb::EntryKind| {
            entries
                .iter()
                .filter(|(_, _, e)| e.kind == k as i32)
                .count()
        };
        let child_pseudonym = entries
            .iter()
            .find(|(_, _, e)| e.kind == pb::EntryKind::EventPublished as i32)
            .map(|(_, _, e)| hex_prefix(&e.child_pseudonym))
            .unwrap_or_default();
        let summary = AuditSummary {
            entries: size,
            gap_free: entries
                .iter()
                .enumerate()
                .all(|(i, (index, _, e))| *index == i as u64 && e.index == i as u64),
            decisions_shared: decided(pb::Decision::Shared),
            decisions_withheld: decided(pb::Decision::Withheld),
            delivered: kind(pb::EntryKind::EventDelivered),
            consents_recorded: kind(pb::EntryKind::ConsentRecorded),
            consents_withdrawn: kind(pb::EntryKind::ConsentWithdrawn),
            overrides_with_justification: entries
                .iter()
                .filter(|(_, _, e)| {
                    e.kind == pb::EntryKind::ShareDecided as i32
                        && e.override_used
                        && e.safeguarding_override.as_ref().is_some_and(|o| {
                            !o.justification.is_empty() && !o.authorised_by.is_empty()
                        })
                })
                .count(),
            entries_with_nhs_number: entries
                .iter()
                .filter(|(_, leaf, _)| {
                    leaf.windows(CHILD_NHS_NUMBER.len())
                        .any(|w| w == CHILD_NHS_NUMBER.as_bytes())
                })
                .count(),
            child_pseudonym,
        };

        heading(self.out, "Audit log, read back as the auditor")?;
        let s = &summary;
        let rows = vec![
            vec![
                "Entries".to_string(),
                format!(
                    "{} (indexes 0 to {}{})",
                    s.entries,
                    s.entries.saturating_sub(1),
                    if s.gap_free {
                        ", no gaps"
                    } else {
                        ", WITH GAPS"
                    }
                ),
            ],
            vec![
                "Sharing decisions".to_string(),
                format!(
                    "{} shared, {} withheld, each with its reason and basis",
                    s.decisions_shared, s.decisions_withheld
                ),
            ],
            vec![
                "Deliveries".to_string(),
                format!(
                    "{} recorded, each re-decided just before it was sent",
                    s.delivered
                ),
            ],
            vec![
                "Consent".to_string(),
                format!(
                    "{} recorded, {} withdrawn",
                    s.consents_recorded, s.consents_withdrawn
                ),
            ],
            vec![
                "Overrides".to_string(),
                format!(
                    "{} decision(s), each with legal basis, justification and authoriser",
                    s.overrides_with_justification
                ),
            ],
            vec![
                "The child".to_string(),
                format!(
                    "appears only as pseudonym {}…; entries containing the NHS number: {}",
                    s.child_pseudonym, s.entries_with_nhs_number
                ),
            ],
        ];
        table(self.out, &["What", "Recorded"], &rows)?;
        self.report.audit = summary;
        Ok(())
    }
}

/// The log's size: the largest `n` for which entry `n - 1` exists, searched
/// from `lower` (known to exist) with GetEntries probes.
async fn audit_size(auditor: &mut Clients, lower: u64) -> Result<u64> {
    async fn exists(auditor: &mut Clients, n: u64) -> bool {
        n == 0
            || auditor
                .audit
                .get_entries(pb::GetEntriesRequest {
                    start: n - 1,
                    end: n,
                })
                .await
                .is_ok()
    }
    if !exists(auditor, lower).await {
        bail!("the audit log is shorter than the {lower} entries the publishes reported");
    }
    let (mut lo, mut step) = (lower, 16);
    while exists(auditor, lo + step).await {
        lo += step;
        step *= 2;
    }
    let mut hi = lo + step; // does not exist
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if exists(auditor, mid).await {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

fn publish(event: pb::CaseEvent, o: Option<pb::SafeguardingOverride>) -> pb::PublishRequest {
    pb::PublishRequest {
        event: Some(event),
        basis: o.map(|o| pb::SharingBasis {
            safeguarding_override: Some(o),
        }),
        to_agencies: vec![],
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

fn heading(out: &mut impl Write, title: &str) -> std::io::Result<()> {
    writeln!(out, "\n{title}")?;
    writeln!(out, "{}", "-".repeat(title.chars().count()))
}

/// Prints an aligned table, indented by two spaces.
fn table(out: &mut impl Write, header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| -> String {
        let mut s = String::from(" ");
        for (cell, width) in cells.zip(&widths) {
            s.push(' ');
            s.push_str(cell);
            for _ in cell.chars().count()..*width {
                s.push(' ');
            }
            s.push(' ');
        }
        s.trim_end().to_string()
    };
    writeln!(out, "{}", line(&mut header.iter().copied()))?;
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    writeln!(out, "{}", line(&mut rule.iter().map(String::as_str)))?;
    for row in rows {
        writeln!(out, "{}", line(&mut row.iter().map(String::as_str)))?;
    }
    Ok(())
}

fn purposes(ps: &[i32]) -> String {
    ps.iter()
        .map(|p| purpose_name(*p))
        .collect::<Vec<_>>()
        .join(", ")
}

fn purpose_name(p: i32) -> &'static str {
    pb::Purpose::try_from(p).map_or("?", |p| p.as_str_name())
}

fn lawful_basis(b: i32) -> &'static str {
    pb::LawfulBasis::try_from(b).map_or("?", |b| b.as_str_name())
}

fn legal_basis(b: i32) -> &'static str {
    pb::LegalBasis::try_from(b).map_or("?", |b| b.as_str_name())
}

fn decision_name(d: i32) -> &'static str {
    pb::Decision::try_from(d).map_or("?", |d| d.as_str_name())
}

/// The basis column: agreement and lawful basis, plus the consent or the
/// override relied on.
fn basis(d: &pb::SharingDecision, override_basis: Option<&str>) -> String {
    if d.decision != pb::Decision::Shared as i32 {
        return if d.agreement_id.is_empty() {
            "-".to_string()
        } else {
            format!("agreement {} (not met)", d.agreement_id)
        };
    }
    let agreement = format!(
        "agreement {} ({})",
        d.agreement_id,
        lawful_basis(d.lawful_basis)
    );
    if d.override_used {
        format!(
            "OVERRIDE {} + {agreement}",
            override_basis.unwrap_or("(legal basis not shown)")
        )
    } else if !d.consent_id.is_empty() {
        format!("{agreement} + consent {}", d.consent_id)
    } else {
        agreement
    }
}

/// An NHS number as people write it: 3-3-4 digits.
fn nhs_display(n: &str) -> String {
    if n.len() == 10 && n.bytes().all(|b| b.is_ascii_digit()) {
        format!("{} {} {}", &n[..3], &n[3..6], &n[6..])
    } else {
        n.to_string()
    }
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// The payload fields (and the summary) a recipient actually has, as
/// `name value` pairs.
fn content(event: &pb::CaseEvent) -> String {
    let Some(desc) = case_event_descriptor() else {
        return "(schema unavailable)".into();
    };
    let Ok(msg) = DynamicMessage::decode(desc, event.encode_to_vec().as_slice()) else {
        return "(undecodable)".into();
    };
    let mut parts = Vec::new();
    for (field, value) in msg.fields() {
        if field.name() == "summary" {
            parts.push(format!("summary {value}"));
        }
        if field
            .containing_oneof()
            .is_some_and(|o| o.name() == "payload")
            && let Value::Message(payload) = value
        {
            for (f, v) in payload.fields() {
                parts.push(format!("{} {}", f.name(), show(v, &f.kind())));
            }
        }
    }
    if parts.is_empty() {
        "no payload fields".into()
    } else {
        parts.join(", ")
    }
}

fn show(v: &Value, kind: &Kind) -> String {
    match (v, kind) {
        (Value::String(s), _) => s.clone(),
        (Value::EnumNumber(n), Kind::Enum(e)) => e
            .get_value(*n)
            .map_or(n.to_string(), |v| v.name().to_string()),
        (Value::Message(m), _) if m.descriptor().full_name() == "google.protobuf.Timestamp" => {
            let seconds = m
                .get_field_by_name("seconds")
                .and_then(|s| s.as_i64())
                .unwrap_or(0);
            utc(seconds)
        }
        (Value::List(items), _) => format!(
            "[{}]",
            items
                .iter()
                .map(|i| show(i, kind))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        (other, _) => other.to_string(),
    }
}

/// `YYYY-MM-DD HH:MM` (UTC) for Unix seconds.
fn utc(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let secs = seconds.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        secs / 3_600,
        secs % 3_600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00");
        assert_eq!(utc(1_793_000_000 - 1_793_000_000 % 60), "2026-10-26 07:33");
    }

    #[test]
    fn tables_align() {
        let mut out = Vec::new();
        table(
            &mut out,
            &["A", "Bee"],
            &[vec!["long cell".into(), "x".into()]],
        )
        .ok();
        let text = String::from_utf8_lossy(&out).to_string();
        assert_eq!(text, "  A          Bee\n  ---------  ---\n  long cell  x\n");
    }
}
