//! `caseshare.v1.Audit`: raw leaves now; checkpoints, proofs, queries and
//! subject access reports arrive with the verifiable log (issue #5).

use std::pin::Pin;

use caseshare_core::pb::{self, audit_server::Audit};
use futures::Stream;
use tonic::{Request, Response, Status};

use super::Shared;
use crate::errors::BrokerError;

/// The Audit service.
#[derive(Debug, Clone)]
pub struct AuditService(pub Shared);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Most leaves one GetEntries call returns.
const MAX_ENTRIES_PER_CALL: u64 = 10_000;

#[tonic::async_trait]
impl Audit for AuditService {
    type QueryStream = BoxStream<pb::AuditEntry>;

    async fn query(
        &self,
        _req: Request<pb::QueryRequest>,
    ) -> Result<Response<Self::QueryStream>, Status> {
        Err(BrokerError::Unimplemented("audit queries (Query, issue #5)").into())
    }

    async fn get_checkpoint(
        &self,
        _req: Request<pb::GetCheckpointRequest>,
    ) -> Result<Response<pb::Checkpoint>, Status> {
        Err(BrokerError::Unimplemented("signed checkpoints (GetCheckpoint, issue #5)").into())
    }

    async fn get_inclusion_proof(
        &self,
        _req: Request<pb::GetInclusionProofRequest>,
    ) -> Result<Response<pb::InclusionProof>, Status> {
        Err(BrokerError::Unimplemented("inclusion proofs (GetInclusionProof, issue #5)").into())
    }

    async fn get_consistency_proof(
        &self,
        _req: Request<pb::GetConsistencyProofRequest>,
    ) -> Result<Response<pb::ConsistencyProof>, Status> {
        Err(BrokerError::Unimplemented("consistency proofs (GetConsistencyProof, issue #5)").into())
    }

    type GetEntriesStream = BoxStream<pb::LeafEntry>;

    async fn get_entries(
        &self,
        req: Request<pb::GetEntriesRequest>,
    ) -> Result<Response<Self::GetEntriesStream>, Status> {
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
        let leaves = self
            .0
            .store
            .audit_entries(r.start, r.end)
            .map_err(BrokerError::from)?;
        if (leaves.len() as u64) < r.end - r.start {
            return Err(BrokerError::invalid("end", "beyond the end of the log").into());
        }
        let items: Vec<Result<pb::LeafEntry, Status>> = leaves
            .into_iter()
            .zip(r.start..)
            .map(|(leaf, index)| Ok(pb::LeafEntry { index, leaf }))
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }

    async fn subject_access_report(
        &self,
        _req: Request<pb::SubjectAccessReportRequest>,
    ) -> Result<Response<pb::SubjectAccessReportResponse>, Status> {
        Err(
            BrokerError::Unimplemented("subject access reports (SubjectAccessReport, issue #5)")
                .into(),
        )
    }
}
