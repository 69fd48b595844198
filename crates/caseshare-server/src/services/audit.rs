//! `caseshare.v1.Audit`: checkpoints, proofs, raw leaves, filtered queries
//! and subject access reports. Every call is itself appended to the log as
//! AUDIT_ACCESSED, with an NHS number in its parameters replaced by the
//! child's pseudonym, before the answer is sent.
//!
//! Every read of the store (entries, the audit index, proof tiles) runs on
//! the blocking pool, never on an async worker: queries and subject access
//! reports go through `caseshare_store::audit_query`, which reads only the
//! entries the audit index names.

use std::pin::Pin;
use std::sync::Arc;

use caseshare_core::nhs::validate_nhs_number;
use caseshare_core::pb::{self, audit_server::Audit};
use caseshare_core::principal::Principal;
use caseshare_core::pseudonym::child_pseudonym;
use caseshare_core::time::Micros;
use caseshare_store::audit_query::{self, AuditFilter};
use futures::Stream;
use tonic::{Request, Response, Status};

use super::Shared;
use crate::auth::caller;
use crate::errors::BrokerError;
use crate::off_runtime;
use crate::writer::Op;

/// The Audit service.
#[derive(Debug, Clone)]
pub struct AuditService(pub Shared);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Most leaves one GetEntries call returns.
const MAX_ENTRIES_PER_CALL: u64 = 10_000;
/// Default and largest Query page.
const DEFAULT_PAGE: u32 = 1_000;
const MAX_PAGE: u32 = 10_000;

impl AuditService {
    fn pseudonym(&self, field: &str, nhs_number: &str) -> Result<Vec<u8>, BrokerError> {
        validate_nhs_number(nhs_number).map_err(|e| BrokerError::invalid(field, e.to_string()))?;
        Ok(child_pseudonym(&self.0.pseudonym_key, nhs_number).to_vec())
    }

    /// Appends AUDIT_ACCESSED and waits until it is durable.
    async fn record(
        &self,
        actor: &Principal,
        rpc: &str,
        subject: String,
        pseudonym: Vec<u8>,
    ) -> Result<(), BrokerError> {
        let entry = pb::AuditEntry {
            kind: pb::EntryKind::AuditAccessed as i32,
            actor: actor.spiffe_id(),
            rpc: format!("/caseshare.v1.Audit/{rpc}"),
            subject,
            child_pseudonym: pseudonym,
            ..Default::default()
        };
        self.0
            .writer
            .call(|reply| Op::Record { entry, reply })
            .await
            .map(|_| ())
    }
}

fn hex_short(p: &[u8]) -> String {
    hex::encode(&p[..p.len().min(8)])
}

#[tonic::async_trait]
impl Audit for AuditService {
    type QueryStream = BoxStream<pb::AuditEntry>;

    async fn query(
        &self,
        req: Request<pb::QueryRequest>,
    ) -> Result<Response<Self::QueryStream>, Status> {
        let actor = caller(&req)?;
        super::bounded(req.get_ref())?;
        let q = req.into_inner();
        let pseudonym = if q.nhs_number.is_empty() {
            Vec::new()
        } else {
            self.pseudonym("nhs_number", &q.nhs_number)?
        };
        let start: u64 = if q.page_token.is_empty() {
            0
        } else {
            q.page_token.parse().map_err(|_| {
                BrokerError::invalid("page_token", "pass the index after the last entry received")
            })?
        };
        let page = match q.page_size {
            0 => DEFAULT_PAGE,
            n if n > MAX_PAGE => {
                return Err(
                    BrokerError::invalid("page_size", format!("at most {MAX_PAGE}")).into(),
                );
            }
            n => n,
        } as usize;
        for (i, k) in q.kinds.iter().enumerate() {
            if !matches!(pb::EntryKind::try_from(*k), Ok(k) if k != pb::EntryKind::Unspecified) {
                return Err(
                    BrokerError::invalid(&format!("kinds[{i}]"), "unknown entry kind").into(),
                );
            }
        }
        let from = q.from.as_ref().map(Micros::from_timestamp);
        let to = q.to.as_ref().map(Micros::from_timestamp);
        let subject = format!(
            "query child={} agency={} kinds={:?} page_token={} page_size={}",
            if pseudonym.is_empty() {
                "-".to_string()
            } else {
                hex_short(&pseudonym)
            },
            if q.agency_id.is_empty() {
                "-"
            } else {
                &q.agency_id
            },
            q.kinds,
            start,
            page
        );
        self.record(&actor, "Query", subject, pseudonym.clone())
            .await?;
        let (size, _) = self.0.log.head();
        let filter = AuditFilter {
            child_pseudonym: pseudonym,
            agency_id: q.agency_id,
            kinds: q.kinds,
            from,
            to,
        };
        let store = self.0.store.clone();
        let found = off_runtime(move || {
            audit_query::query(store.as_ref(), &filter, start, size, page)
                .map_err(BrokerError::from)
        })
        .await?;
        let out: Vec<Result<pb::AuditEntry, Status>> = found.into_iter().map(Ok).collect();
        Ok(Response::new(Box::pin(futures::stream::iter(out))))
    }

    async fn get_checkpoint(
        &self,
        req: Request<pb::GetCheckpointRequest>,
    ) -> Result<Response<pb::Checkpoint>, Status> {
        let actor = caller(&req)?;
        self.record(&actor, "GetCheckpoint", String::new(), Vec::new())
            .await?;
        Ok(Response::new(self.0.log.checkpoint()?))
    }

    async fn get_inclusion_proof(
        &self,
        req: Request<pb::GetInclusionProofRequest>,
    ) -> Result<Response<pb::InclusionProof>, Status> {
        let actor = caller(&req)?;
        let r = req.into_inner();
        let log = self.0.log.clone();
        let (leaf_index, tree_size) = (r.leaf_index, r.tree_size);
        let hashes = off_runtime(move || log.inclusion_proof(leaf_index, tree_size)).await?;
        let subject = format!("leaf_index={} tree_size={}", r.leaf_index, r.tree_size);
        self.record(&actor, "GetInclusionProof", subject, Vec::new())
            .await?;
        Ok(Response::new(pb::InclusionProof {
            leaf_index: r.leaf_index,
            tree_size: r.tree_size,
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
        }))
    }

    async fn get_consistency_proof(
        &self,
        req: Request<pb::GetConsistencyProofRequest>,
    ) -> Result<Response<pb::ConsistencyProof>, Status> {
        let actor = caller(&req)?;
        let r = req.into_inner();
        let log = self.0.log.clone();
        let (from_size, to_size) = (r.from_size, r.to_size);
        let hashes = off_runtime(move || log.consistency_proof(from_size, to_size)).await?;
        let subject = format!("from_size={} to_size={}", r.from_size, r.to_size);
        self.record(&actor, "GetConsistencyProof", subject, Vec::new())
            .await?;
        Ok(Response::new(pb::ConsistencyProof {
            from_size: r.from_size,
            to_size: r.to_size,
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
        }))
    }

    type GetEntriesStream = BoxStream<pb::LeafEntry>;

    async fn get_entries(
        &self,
        req: Request<pb::GetEntriesRequest>,
    ) -> Result<Response<Self::GetEntriesStream>, Status> {
        let actor = caller(&req)?;
        let r = req.into_inner();
        if r.end < r.start {
            return Err(BrokerError::invalid("end", "must not be less than start").into());
        }
        if r.end - r.start > MAX_ENTRIES_PER_CALL {
            return Err(BrokerError::invalid(
                "end",
                format!("at most {MAX_ENTRIES_PER_CALL} entries per call"),
            )
            .into());
        }
        let (size, _) = self.0.log.head();
        if r.end > size {
            return Err(BrokerError::invalid("end", format!("the log has {size} entries")).into());
        }
        let store = self.0.store.clone();
        let (start, end) = (r.start, r.end);
        let leaves =
            off_runtime(move || store.audit_entries(start, end).map_err(BrokerError::from)).await?;
        self.record(
            &actor,
            "GetEntries",
            format!("start={} end={}", r.start, r.end),
            Vec::new(),
        )
        .await?;
        let items: Vec<Result<pb::LeafEntry, Status>> = leaves
            .into_iter()
            .zip(r.start..)
            .map(|(leaf, index)| Ok(pb::LeafEntry { index, leaf }))
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }

    async fn subject_access_report(
        &self,
        req: Request<pb::SubjectAccessReportRequest>,
    ) -> Result<Response<pb::SubjectAccessReportResponse>, Status> {
        let actor: Arc<Principal> = caller(&req)?;
        super::bounded(req.get_ref())?;
        let r = req.into_inner();
        let pseudonym = self.pseudonym("nhs_number", &r.nhs_number)?;
        self.record(
            &actor,
            "SubjectAccessReport",
            format!("child={}", hex_short(&pseudonym)),
            pseudonym.clone(),
        )
        .await?;
        let (size, _) = self.0.log.head();
        let store = self.0.store.clone();
        let found = off_runtime(move || {
            audit_query::shares_of(store.as_ref(), &pseudonym, size).map_err(BrokerError::from)
        })
        .await?;
        let shares = found
            .into_iter()
            .map(|e| pb::ShareRecord {
                decided_at: e.recorded_at,
                event_id: e.event_id,
                event_type: e.event_type,
                from_agency: e.source_agency,
                to_agency: e.recipient_agency,
                decision: e.decision,
                reason: e.reason,
                purpose: e.purpose,
                lawful_basis: e.lawful_basis,
                agreement_id: e.agreement_id,
                consent_id: e.consent_id,
                safeguarding_override: e.safeguarding_override,
                audit_index: e.index,
            })
            .collect();
        Ok(Response::new(pb::SubjectAccessReportResponse {
            shares,
            tree_size: size,
        }))
    }
}
