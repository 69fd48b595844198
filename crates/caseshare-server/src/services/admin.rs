//! `caseshare.v1.Admin`: agencies, agreements, the broker's status
//! (`GetStatus`, answered by `ops::status`) and backups (`Backup`,
//! answered by `backup`).

use caseshare_core::pb::{self, admin_server::Admin};
use caseshare_core::validate::{validate_agreement, validate_register_agency};
use tonic::{Request, Response, Status};

use std::sync::Arc;

use super::Shared;
use crate::auth::caller;
use crate::errors::BrokerError;
use crate::ops::status::StatusSource;
use crate::writer::Op;

/// The Admin service (with what `GetStatus` reads and what `Backup` copies).
#[derive(Debug, Clone)]
pub struct AdminService(
    pub Shared,
    pub Arc<StatusSource>,
    pub(crate) Arc<crate::backup::BackupSource>,
);

#[tonic::async_trait]
impl Admin for AdminService {
    async fn register_agency(
        &self,
        req: Request<pb::RegisterAgencyRequest>,
    ) -> Result<Response<pb::Agency>, Status> {
        let actor = caller(&req)?;
        let request = req.into_inner();
        validate_register_agency(&request).map_err(BrokerError::from)?;
        let agency = self
            .0
            .writer
            .call(|reply| Op::RegisterAgency {
                actor,
                request,
                reply,
            })
            .await?;
        Ok(Response::new(agency))
    }

    async fn list_agencies(
        &self,
        _req: Request<pb::ListAgenciesRequest>,
    ) -> Result<Response<pb::ListAgenciesResponse>, Status> {
        let agencies = self.0.read().agencies.values().cloned().collect();
        Ok(Response::new(pb::ListAgenciesResponse { agencies }))
    }

    async fn put_agreement(
        &self,
        req: Request<pb::Agreement>,
    ) -> Result<Response<pb::Agreement>, Status> {
        let actor = caller(&req)?;
        let agreement = req.into_inner();
        validate_agreement(&agreement).map_err(BrokerError::from)?;
        let agreement = self
            .0
            .writer
            .call(|reply| Op::PutAgreement {
                actor,
                agreement,
                reply,
            })
            .await?;
        Ok(Response::new(agreement))
    }

    async fn end_agreement(
        &self,
        req: Request<pb::EndAgreementRequest>,
    ) -> Result<Response<pb::Agreement>, Status> {
        let actor = caller(&req)?;
        super::bounded(req.get_ref())?;
        let request = req.into_inner();
        if request.agreement_id.is_empty() {
            return Err(BrokerError::invalid("agreement_id", "required").into());
        }
        if request.reason.trim().is_empty() {
            return Err(BrokerError::invalid("reason", "say why the agreement ends").into());
        }
        let agreement = self
            .0
            .writer
            .call(|reply| Op::EndAgreement {
                actor,
                request,
                reply,
            })
            .await?;
        // Deliveries decided before this change may still be on their way
        // to a stream; answer only once they have left.
        self.0.deliveries.drain_in_flight_sends().await;
        Ok(Response::new(agreement))
    }

    async fn list_agreements(
        &self,
        req: Request<pb::ListAgreementsRequest>,
    ) -> Result<Response<pb::ListAgreementsResponse>, Status> {
        super::bounded(req.get_ref())?;
        let filter = req.into_inner();
        let mut agreements: Vec<pb::Agreement> = self
            .0
            .read()
            .agreements
            .all()
            .filter(|a| filter.provider.is_empty() || a.provider == filter.provider)
            .filter(|a| filter.recipient.is_empty() || a.recipient == filter.recipient)
            .cloned()
            .collect();
        agreements.sort_by(|a, b| a.agreement_id.cmp(&b.agreement_id));
        Ok(Response::new(pb::ListAgreementsResponse { agreements }))
    }

    async fn get_status(
        &self,
        _req: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::BrokerStatus>, Status> {
        Ok(Response::new(self.1.read().await?))
    }

    type BackupStream = crate::backup::BackupStream;

    async fn backup(
        &self,
        req: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let actor = caller(&req)?;
        tracing::info!(actor = %actor.spiffe_id(), "backup asked for");
        Ok(Response::new(self.2.start(&actor).await?))
    }
}
