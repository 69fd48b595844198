//! `caseshare.v1.Subscriber`: subscriptions and their deliveries, each
//! agency seeing only its own.

use std::pin::Pin;

use caseshare_core::pb::{self, subscriber_server::Subscriber};
use caseshare_core::validate::validate_subscription;
use futures::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::Shared;
use crate::auth::caller;
use crate::errors::BrokerError;
use crate::writer::Op;

/// The Subscriber service.
#[derive(Debug, Clone)]
pub struct SubscriberService(pub Shared);

#[tonic::async_trait]
impl Subscriber for SubscriberService {
    async fn create_subscription(
        &self,
        req: Request<pb::Subscription>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let actor = caller(&req)?;
        let subscription = validate_subscription(&req.into_inner()).map_err(BrokerError::from)?;
        let record = self
            .0
            .writer
            .call(|reply| Op::CreateSubscription {
                actor,
                subscription,
                reply,
            })
            .await?;
        let sub = record.subscription.clone().unwrap_or_default();
        self.0.deliveries.add(record, None)?;
        Ok(Response::new(sub))
    }

    async fn get_subscription(
        &self,
        req: Request<pb::GetSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let actor = caller(&req)?;
        let name = req.into_inner().name;
        self.0
            .read()
            .subscription(&actor.name, &name)
            .and_then(|r| r.subscription.clone())
            .map(Response::new)
            .ok_or_else(|| BrokerError::NotFound(format!("no subscription {name:?}")).into())
    }

    async fn list_subscriptions(
        &self,
        req: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        let actor = caller(&req)?;
        let mut subscriptions: Vec<pb::Subscription> = self
            .0
            .read()
            .subscriptions
            .values()
            .filter_map(|r| r.subscription.clone())
            .filter(|s| s.agency_id == actor.name)
            .collect();
        subscriptions.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(pb::ListSubscriptionsResponse {
            subscriptions,
        }))
    }

    async fn delete_subscription(
        &self,
        req: Request<pb::DeleteSubscriptionRequest>,
    ) -> Result<Response<pb::DeleteSubscriptionResponse>, Status> {
        let actor = caller(&req)?;
        let name = req.into_inner().name;
        let record = self
            .0
            .writer
            .call(|reply| Op::DeleteSubscription { actor, name, reply })
            .await?;
        self.0.deliveries.remove(record.id);
        Ok(Response::new(pb::DeleteSubscriptionResponse {}))
    }

    type SubscribeStream = Pin<Box<dyn Stream<Item = Result<pb::Delivery, Status>> + Send>>;

    async fn subscribe(
        &self,
        req: Request<Streaming<pb::SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let actor = caller(&req)?;
        let mut inbound = req.into_inner();
        let first = inbound.message().await?.ok_or_else(|| {
            BrokerError::invalid(
                "subscription",
                "the first request must name the subscription",
            )
        })?;
        if first.subscription.is_empty() {
            return Err(BrokerError::invalid(
                "subscription",
                "the first request must name the subscription",
            )
            .into());
        }
        let rx = self.0.deliveries.open_stream(
            actor,
            &first.subscription,
            first.max_outstanding,
            inbound,
        )?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn ack(&self, req: Request<pb::AckRequest>) -> Result<Response<pb::AckResponse>, Status> {
        let actor = caller(&req)?;
        let r = req.into_inner();
        let acked = self
            .0
            .deliveries
            .ack(&actor, &r.subscription, &r.delivery_ids)
            .await?;
        Ok(Response::new(pb::AckResponse { acked }))
    }

    async fn nack(
        &self,
        req: Request<pb::NackRequest>,
    ) -> Result<Response<pb::NackResponse>, Status> {
        let actor = caller(&req)?;
        let r = req.into_inner();
        let nacked = self
            .0
            .deliveries
            .nack(&actor, &r.subscription, &r.delivery_ids)?;
        Ok(Response::new(pb::NackResponse { nacked }))
    }

    async fn seek(
        &self,
        _req: Request<pb::SeekRequest>,
    ) -> Result<Response<pb::SeekResponse>, Status> {
        Err(BrokerError::Unimplemented("replay (Seek, issue #4)").into())
    }

    async fn list_dead_letters(
        &self,
        _req: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        Err(BrokerError::Unimplemented("dead letters (ListDeadLetters, issue #4)").into())
    }

    async fn replay_dead_letters(
        &self,
        _req: Request<pb::ReplayDeadLettersRequest>,
    ) -> Result<Response<pb::ReplayDeadLettersResponse>, Status> {
        Err(BrokerError::Unimplemented("dead letters (ReplayDeadLetters, issue #4)").into())
    }
}
