//! The sample agencies of the development PKI and the sharing set-ups the
//! tests share: registering the agencies, agreements, subscriptions, sample
//! events and children, and reading back the audit log (every entry, or the
//! aggregated `AUTH_DENIED` refusals).

use std::time::{Duration, Instant};

use caseshare_proto::v1 as pb;
use tokio_stream::StreamExt;

use crate::broker::{Broker, Endpoint};

/// The sample health agency.
pub const HEALTH: &str = "nhs-trust-a";
/// The sample school.
pub const SCHOOL: &str = "school-b";
/// The sample local authority's children's social care.
pub const SOCIAL_CARE: &str = "la-social-care-c";
/// The administrator identity of the dev PKI.
pub const ADMIN: &str = "admin";
/// The auditor identity of the dev PKI.
pub const AUDITOR: &str = "auditor";

/// The agencies the dev PKI has certificates for, with their kinds, in the
/// order they are registered.
pub const SAMPLE_AGENCIES: [(&str, pb::AgencyKind); 3] = [
    (HEALTH, pb::AgencyKind::Health),
    (SCHOOL, pb::AgencyKind::Education),
    (SOCIAL_CARE, pb::AgencyKind::SocialCare),
];

/// A valid NHS number for a test child.
pub const CHILD_1: &str = "9434765919";
/// Another valid NHS number for a test child.
pub const CHILD_2: &str = "4010232137";

impl Endpoint {
    /// Registers the three sample agencies as admin.
    pub async fn register_sample_agencies(&self) {
        let mut admin = self.client(ADMIN);
        for (id, kind) in SAMPLE_AGENCIES {
            admin
                .admin
                .register_agency(pb::RegisterAgencyRequest {
                    agency_id: id.into(),
                    kind: kind as i32,
                    display_name: id.into(),
                })
                .await
                .unwrap();
        }
    }

    /// The common sharing set-up: the sample agencies registered, an
    /// agreement `isa-edu-sc` from `school-b` to `la-social-care-c` for
    /// `education.*`, and social care's subscription `main`.
    pub async fn school_shares_with_social_care(&self) {
        self.register_sample_agencies().await;
        self.client(ADMIN)
            .admin
            .put_agreement(agreement(
                "isa-edu-sc",
                SCHOOL,
                SOCIAL_CARE,
                &["education.*"],
            ))
            .await
            .unwrap();
        self.client(SOCIAL_CARE)
            .subscriber
            .create_subscription(pb::Subscription {
                name: "main".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

impl Broker {
    /// Registers the three sample agencies as admin.
    pub async fn register_sample_agencies(&self) {
        self.endpoint().register_sample_agencies().await;
    }

    /// The common sharing set-up ([`Endpoint::school_shares_with_social_care`]).
    pub async fn school_shares_with_social_care(&self) {
        self.endpoint().school_shares_with_social_care().await;
    }

    /// The signed checkpoint of the audit log as it is now, as the auditor
    /// gets it (answered only after every earlier commit).
    pub async fn checkpoint(&self) -> pb::Checkpoint {
        self.client(AUDITOR)
            .audit
            .get_checkpoint(pb::GetCheckpointRequest {})
            .await
            .unwrap()
            .into_inner()
    }

    /// Every audit entry, via the Audit service as the auditor. The size
    /// comes from a checkpoint, which is answered only after every earlier
    /// commit, so nothing already written is missed.
    pub async fn audit_entries(&self) -> Vec<pb::AuditEntry> {
        let size = self.checkpoint().await.tree_size;
        let mut auditor = self.client(AUDITOR);
        let mut out = Vec::new();
        let mut stream = auditor
            .audit
            .get_entries(pb::GetEntriesRequest {
                start: 0,
                end: size,
            })
            .await
            .unwrap()
            .into_inner();
        while let Some(leaf) = stream.next().await {
            let leaf = leaf.unwrap();
            let entry = caseshare_audit::entry::decode(&leaf.leaf).unwrap();
            assert_eq!(entry.index, leaf.index);
            out.push(entry);
        }
        out
    }

    /// The `AUTH_DENIED` entries once they account for at least `calls`
    /// refused calls (refusals are written in aggregate per interval), or
    /// after 10 s, whatever they then are.
    pub async fn auth_denied(&self, calls: u64) -> Vec<pb::AuditEntry> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let denied: Vec<_> = self
                .audit_entries()
                .await
                .into_iter()
                .filter(|e| e.kind == pb::EntryKind::AuthDenied as i32)
                .collect();
            let counted: u64 = denied.iter().map(|e| e.count).sum();
            if counted >= calls || Instant::now() > deadline {
                return denied;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// An agreement for early help and safeguarding, lawful basis public task.
pub fn agreement(id: &str, provider: &str, recipient: &str, event_types: &[&str]) -> pb::Agreement {
    pb::Agreement {
        agreement_id: id.into(),
        provider: provider.into(),
        recipient: recipient.into(),
        purposes: vec![
            pb::Purpose::EarlyHelp as i32,
            pb::Purpose::Safeguarding as i32,
        ],
        event_types: event_types.iter().map(|s| s.to_string()).collect(),
        lawful_basis: pb::LawfulBasis::PublicTask as i32,
        ..Default::default()
    }
}

/// Puts an agreement as admin.
pub async fn put_agreement(b: &Broker, a: pb::Agreement) {
    b.client(ADMIN).admin.put_agreement(a).await.unwrap();
}

/// Creates subscription `name` for `agency` with the default settings.
pub async fn create_subscription(b: &Broker, agency: &str, name: &str) {
    b.client(agency)
        .subscriber
        .create_subscription(pb::Subscription {
            name: name.into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// A publish request carrying `event`.
pub fn publish_request(event: pb::CaseEvent) -> pb::PublishRequest {
    pb::PublishRequest {
        event: Some(event),
        ..Default::default()
    }
}

/// An attendance-concern event from the school.
pub fn attendance_event(id: &str, nhs: &str) -> pb::CaseEvent {
    pb::CaseEvent {
        event_id: id.into(),
        child: Some(pb::ChildRef {
            nhs_number: nhs.into(),
            local_ids: vec![],
        }),
        purpose: pb::Purpose::EarlyHelp as i32,
        occurred_at: Some(prost_types::Timestamp {
            seconds: 1_793_000_000,
            nanos: 0,
        }),
        summary: "Attendance has fallen sharply this half term".into(),
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

/// A was-not-brought event from the health agency.
pub fn was_not_brought_event(id: &str, nhs: &str) -> pb::CaseEvent {
    pb::CaseEvent {
        event_id: id.into(),
        child: Some(pb::ChildRef {
            nhs_number: nhs.into(),
            local_ids: vec![],
        }),
        purpose: pb::Purpose::EarlyHelp as i32,
        occurred_at: Some(prost_types::Timestamp {
            seconds: 1_793_000_000,
            nanos: 0,
        }),
        payload: Some(pb::case_event::Payload::HealthWasNotBrought(
            pb::WasNotBrought {
                appointment_kind: "paediatric_outpatient".into(),
                appointment_at: Some(prost_types::Timestamp {
                    seconds: 1_793_000_000,
                    nanos: 0,
                }),
                consecutive_missed: 2,
            },
        )),
        ..Default::default()
    }
}
