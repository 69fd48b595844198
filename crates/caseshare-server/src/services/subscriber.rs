//! `caseshare.v1.Subscriber`: subscriptions and their deliveries, each
//! agency seeing only its own.

use std::pin::Pin;

use caseshare_core::pb::{self, subscriber_server::Subscriber};
use caseshare_core::validate::validate_subscription;
use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::Shared;
use crate::auth::caller;
use crate::delivery::OpenStream;
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
        let subscription =
            validate_subscription(&req.into_inner(), &self.0.limits).map_err(BrokerError::from)?;
        let quota = self.0.limits.max_subscriptions_per_agency;
        let record = self
            .0
            .writer
            .call(|reply| Op::CreateSubscription {
                actor,
                subscription,
                quota,
                reply,
            })
            .await?;
        let sub = record.subscription.clone().unwrap_or_default();
        self.0.deliveries.add_created(record).await?;
        Ok(Response::new(sub))
    }

    async fn get_subscription(
        &self,
        req: Request<pb::GetSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let actor = caller(&req)?;
        super::bounded(req.get_ref())?;
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
        super::bounded(req.get_ref())?;
        let name = req.into_inner().name;
        let record = self
            .0
            .writer
            .call(|reply| Op::DeleteSubscription { actor, name, reply })
            .await?;
        self.0.deliveries.remove(record.id);
        // What the delete left of its delivery records goes in the
        // background, a thousand per commit.
        let (store, writer) = (self.0.store.clone(), self.0.writer.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::purge_deleted_subscriptions(&store, &writer).await {
                tracing::warn!(error = %e, "purging a deleted subscription failed");
            }
        });
        Ok(Response::new(pb::DeleteSubscriptionResponse {}))
    }

    type SubscribeStream = Pin<Box<dyn Stream<Item = Result<pb::Delivery, Status>> + Send>>;

    async fn subscribe(
        &self,
        req: Request<Streaming<pb::SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let actor = caller(&req)?;
        let slot = self.0.streams.acquire(&actor.name)?;
        let mut inbound = req.into_inner();
        let first = inbound.message().await?.ok_or_else(|| {
            BrokerError::invalid(
                "subscription",
                "the first request must name the subscription",
            )
        })?;
        super::bounded(&first)?;
        if first.subscription.is_empty() {
            return Err(BrokerError::invalid(
                "subscription",
                "the first request must name the subscription",
            )
            .into());
        }
        let rx = self.0.deliveries.open_stream(OpenStream {
            actor,
            subscription: first.subscription,
            max_outstanding: first.max_outstanding,
            inbound,
            slot,
            idle: self.0.idle_timeout,
            budget: self.0.send_budget.clone(),
        })?;
        Ok(Response::new(Box::pin(rx)))
    }

    async fn ack(&self, req: Request<pb::AckRequest>) -> Result<Response<pb::AckResponse>, Status> {
        let actor = caller(&req)?;
        super::bounded(req.get_ref())?;
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
        super::bounded(req.get_ref())?;
        let r = req.into_inner();
        let nacked = self
            .0
            .deliveries
            .nack(&actor, &r.subscription, &r.delivery_ids)
            .await?;
        Ok(Response::new(pb::NackResponse { nacked }))
    }

    async fn seek(
        &self,
        req: Request<pb::SeekRequest>,
    ) -> Result<Response<pb::SeekResponse>, Status> {
        let actor = caller(&req)?;
        super::bounded(req.get_ref())?;
        let r = req.into_inner();
        let target = match r.target {
            Some(pb::seek_request::Target::ToSequence(s)) => s,
            Some(pb::seek_request::Target::ToTime(t)) => {
                if !caseshare_core::time::timestamp_is_valid(&t) {
                    return Err(BrokerError::invalid("to_time", "not a valid timestamp").into());
                }
                self.0
                    .deliveries
                    .first_sequence_at(caseshare_core::time::Micros::from_timestamp(&t))
                    .await?
            }
            None => {
                return Err(BrokerError::invalid("target", "give to_sequence or to_time").into());
            }
        };
        let next_sequence = self
            .0
            .deliveries
            .seek(&actor, &r.subscription, target)
            .await?;
        Ok(Response::new(pb::SeekResponse { next_sequence }))
    }

    async fn list_dead_letters(
        &self,
        req: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let actor = caller(&req)?;
        super::bounded(req.get_ref())?;
        let r = req.into_inner();
        let from: u64 = if r.page_token.is_empty() {
            0
        } else {
            r.page_token.parse().map_err(|_| {
                BrokerError::invalid("page_token", "pass next_page_token from the previous page")
            })?
        };
        let size = match r.page_size {
            0 => 100,
            n => n.min(1_000),
        } as usize;
        let dead_letters = self
            .0
            .deliveries
            .dead_letters(&actor.name, &r.subscription, from, size)
            .await?;
        let next_page_token = if dead_letters.len() == size {
            dead_letters
                .last()
                .map(|d| (d.sequence + 1).to_string())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListDeadLettersResponse {
            dead_letters,
            next_page_token,
        }))
    }

    async fn replay_dead_letters(
        &self,
        req: Request<pb::ReplayDeadLettersRequest>,
    ) -> Result<Response<pb::ReplayDeadLettersResponse>, Status> {
        let actor = caller(&req)?;
        super::bounded(req.get_ref())?;
        let r = req.into_inner();
        let replayed = self
            .0
            .deliveries
            .replay_dead_letters(&actor, &r.subscription, &r.delivery_ids)
            .await?;
        Ok(Response::new(pb::ReplayDeadLettersResponse { replayed }))
    }
}
