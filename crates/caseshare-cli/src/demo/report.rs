//! What a demo run returns: each published [`Step`], the [`AuditSummary`]
//! read back at the end, and the whole [`DemoReport`].

use std::collections::BTreeMap;
use std::net::SocketAddr;

use caseshare_proto::v1 as pb;

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
