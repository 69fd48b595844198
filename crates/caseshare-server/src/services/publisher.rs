//! `caseshare.v1.Publisher`: unary and pipelined publish.

use std::pin::Pin;
use std::sync::Arc;

use caseshare_core::pb::{self, publisher_server::Publisher};
use caseshare_core::principal::Principal;
use caseshare_core::validate::validate_publish;
use futures::Stream;
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::Shared;
use crate::auth::caller;
use crate::errors::BrokerError;
use crate::writer::{Op, now};

/// How many publishes one stream may have in flight.
const STREAM_PIPELINE: usize = 4_096;

/// The Publisher service.
#[derive(Debug, Clone)]
pub struct PublisherService(pub Shared);

type Pending = oneshot::Receiver<Result<pb::PublishResponse, BrokerError>>;

impl PublisherService {
    fn validate(&self, request: &pb::PublishRequest) -> Result<&'static str, BrokerError> {
        let len = request.event.as_ref().map_or(0, |e| e.encoded_len());
        let valid = validate_publish(request, len, now(), &self.0.limits)?;
        Ok(valid.event_type)
    }

    async fn submit(
        &self,
        actor: Arc<Principal>,
        request: pb::PublishRequest,
    ) -> Result<Pending, BrokerError> {
        let event_type = self.validate(&request)?;
        self.0
            .writer
            .submit(|reply| Op::Publish {
                actor,
                request,
                event_type,
                reply,
            })
            .await
    }
}

async fn resolve(p: Pending) -> Result<pb::PublishResponse, BrokerError> {
    p.await
        .map_err(|_| BrokerError::Unavailable("the broker's writer stopped".into()))?
}

#[tonic::async_trait]
impl Publisher for PublisherService {
    async fn publish(
        &self,
        req: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let actor = caller(&req)?;
        let pending = self.submit(actor, req.into_inner()).await?;
        Ok(Response::new(resolve(pending).await?))
    }

    type PublishStreamStream =
        Pin<Box<dyn Stream<Item = Result<pb::PublishResponse, Status>> + Send>>;

    async fn publish_stream(
        &self,
        req: Request<Streaming<pb::PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let actor = caller(&req)?;
        let mut inbound = req.into_inner();
        let (order_tx, mut order_rx) =
            mpsc::channel::<Result<Pending, BrokerError>>(STREAM_PIPELINE);
        let (out_tx, out_rx) = mpsc::channel(64);
        let this = self.clone();
        // Reader: validates and submits each request at once, without
        // waiting for earlier ones to commit (pipelining).
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(request)) => {
                        let submitted = this.submit(actor.clone(), request).await;
                        let failed = submitted.is_err();
                        if order_tx.send(submitted).await.is_err() || failed {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(status) => {
                        tracing::debug!(%status, "publish stream ended by the client");
                        return;
                    }
                }
            }
        });
        // Responder: answers in request order, each once durable.
        tokio::spawn(async move {
            while let Some(item) = order_rx.recv().await {
                let result = match item {
                    Ok(pending) => resolve(pending).await,
                    Err(e) => Err(e),
                };
                let stop = result.is_err();
                if out_tx.send(result.map_err(Status::from)).await.is_err() || stop {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }

    async fn get_event_status(
        &self,
        _req: Request<pb::GetEventStatusRequest>,
    ) -> Result<Response<pb::EventStatus>, Status> {
        Err(BrokerError::Unimplemented("sender-side tracking (GetEventStatus, issue #4)").into())
    }

    async fn retract_event(
        &self,
        _req: Request<pb::RetractEventRequest>,
    ) -> Result<Response<pb::RetractEventResponse>, Status> {
        Err(BrokerError::Unimplemented("retraction notices (RetractEvent, issue #4)").into())
    }
}
