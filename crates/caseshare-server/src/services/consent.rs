//! `caseshare.v1.Consent`: recording, withdrawing and listing consents.

use caseshare_core::nhs::validate_nhs_number;
use caseshare_core::pb::{self, consent_server::Consent};
use caseshare_core::validate::validate_consent;
use tonic::{Request, Response, Status};

use super::Shared;
use crate::auth::caller;
use crate::errors::BrokerError;
use crate::writer::Op;

/// The Consent service.
#[derive(Debug, Clone)]
pub struct ConsentService(pub Shared);

#[tonic::async_trait]
impl Consent for ConsentService {
    async fn record_consent(
        &self,
        req: Request<pb::ConsentRecord>,
    ) -> Result<Response<pb::ConsentRecord>, Status> {
        let actor = caller(&req)?;
        let consent = req.into_inner();
        validate_consent(&consent).map_err(BrokerError::from)?;
        let consent = self
            .0
            .writer
            .call(|reply| Op::RecordConsent {
                actor,
                consent,
                reply,
            })
            .await?;
        Ok(Response::new(consent))
    }

    async fn withdraw_consent(
        &self,
        req: Request<pb::WithdrawConsentRequest>,
    ) -> Result<Response<pb::ConsentRecord>, Status> {
        let actor = caller(&req)?;
        super::bounded(req.get_ref())?;
        let request = req.into_inner();
        if request.consent_id.is_empty() {
            return Err(BrokerError::invalid("consent_id", "required").into());
        }
        if request.reason.trim().is_empty() {
            return Err(BrokerError::invalid("reason", "say why consent is withdrawn").into());
        }
        let consent = self
            .0
            .writer
            .call(|reply| Op::WithdrawConsent {
                actor: actor.clone(),
                request,
                reply,
            })
            .await
            .inspect_err(|e| {
                if matches!(e, BrokerError::PermissionDenied(_)) {
                    self.0.refusals.note(
                        &actor,
                        "/caseshare.v1.Consent/WithdrawConsent",
                        crate::refusals::reason::CONSENT_STANDING,
                    );
                }
            })?;
        // Deliveries decided before this change may still be on their way
        // to a stream; answer only once they have left.
        self.0.deliveries.drain_in_flight_sends().await;
        Ok(Response::new(consent))
    }

    async fn list_consents(
        &self,
        req: Request<pb::ListConsentsRequest>,
    ) -> Result<Response<pb::ListConsentsResponse>, Status> {
        super::bounded(req.get_ref())?;
        let request = req.into_inner();
        if let Err(e) = validate_nhs_number(&request.nhs_number) {
            return Err(BrokerError::invalid("nhs_number", e.to_string()).into());
        }
        let mut consents = self
            .0
            .read()
            .consents_by_child
            .get(&request.nhs_number)
            .cloned()
            .unwrap_or_default();
        consents.sort_by(|a, b| {
            let key = |c: &pb::ConsentRecord| c.recorded_at.map(|t| (t.seconds, t.nanos));
            key(a)
                .cmp(&key(b))
                .then_with(|| a.consent_id.cmp(&b.consent_id))
        });
        Ok(Response::new(pb::ListConsentsResponse { consents }))
    }
}
