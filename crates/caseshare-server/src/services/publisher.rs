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
use crate::telemetry::{OpTrace, w3c};
use crate::writer::{Op, now};
use caseshare_state::subscription_matches;

/// How many publishes one stream may have in flight.
const STREAM_PIPELINE: usize = 4_096;

/// The Publisher service.
#[derive(Debug, Clone)]
pub struct PublisherService(pub Shared);

/// A publish handed to the writer, when it reached the broker, and the
/// span it is traced under (kept open until it is answered).
type Pending = (
    std::time::Instant,
    oneshot::Receiver<Result<pb::PublishResponse, BrokerError>>,
    tracing::Span,
);

impl PublisherService {
    fn validate(&self, request: &pb::PublishRequest) -> Result<&'static str, BrokerError> {
        let len = request.event.as_ref().map_or(0, |e| e.encoded_len());
        let valid = validate_publish(request, len, now(), &self.0.limits)?;
        Ok(valid.event_type)
    }

    /// Validates and hands a publish to the writer. The publish rate has
    /// been applied already (by the auth layer for unary `Publish`, by the
    /// stream reader for `PublishStream`). The trace context stored with
    /// the event is the request's own, else the call's metadata's
    /// (`call_trace`), else (with export on) that of `span`, the span the
    /// publish is traced under.
    async fn submit(
        &self,
        actor: Arc<Principal>,
        mut request: pb::PublishRequest,
        call_trace: Option<&pb::TraceContext>,
        span: tracing::Span,
    ) -> Result<Pending, BrokerError> {
        let started = std::time::Instant::now();
        let event_type = self.validate(&request)?;
        request.trace_context =
            w3c::resolve(request.trace_context.take(), call_trace).or_else(|| w3c::of_span(&span));
        let trace = OpTrace::of(&span);
        let rx = self
            .0
            .writer
            .submit(|reply| Op::Publish {
                actor,
                request,
                event_type,
                trace,
                reply,
            })
            .await?;
        Ok((started, rx, span))
    }
}

/// Waits for the writer's answer; the publish's duration is recorded in
/// `duration` (`Shared::publish_duration`).
async fn resolve(
    (started, rx, span): Pending,
    duration: &metrics::Histogram,
) -> Result<pb::PublishResponse, BrokerError> {
    let answer = rx
        .await
        .map_err(|_| BrokerError::Unavailable("the broker's writer stopped".into()))?;
    duration.record(started.elapsed().as_secs_f64());
    drop(span);
    answer
}

/// The span of one message of a PublishStream (with export on): a child of
/// the message's own trace context when it names one, else of the stream's
/// RPC span.
fn message_span(stream: &tracing::Span, request: &pb::PublishRequest) -> tracing::Span {
    if !crate::telemetry::exporting() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(parent: stream, "caseshare.publish");
    if let Some(own) = request
        .trace_context
        .as_ref()
        .and_then(|t| w3c::context(&t.traceparent, &t.tracestate))
    {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let _ = span.set_parent(w3c::parent(&own));
    }
    span
}

#[tonic::async_trait]
impl Publisher for PublisherService {
    async fn publish(
        &self,
        req: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let actor = caller(&req)?;
        let call_trace = w3c::from_metadata(req.metadata());
        let span = tracing::Span::current();
        let pending = self
            .submit(actor, req.into_inner(), call_trace.as_ref(), span)
            .await?;
        Ok(Response::new(
            resolve(pending, &self.0.publish_duration).await?,
        ))
    }

    type PublishStreamStream =
        Pin<Box<dyn Stream<Item = Result<pb::PublishResponse, Status>> + Send>>;

    async fn publish_stream(
        &self,
        req: Request<Streaming<pb::PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let actor = caller(&req)?;
        let slot = self.0.streams.acquire(&actor.name)?;
        let call_trace = w3c::from_metadata(req.metadata());
        let stream_span = tracing::Span::current();
        let idle = self.0.idle_timeout;
        let mut inbound = req.into_inner();
        let window = self.0.streams.publish_window();
        // Each publish in flight holds its room in the window until it is
        // answered.
        let (order_tx, mut order_rx) = mpsc::channel::<(
            Result<Pending, BrokerError>,
            Option<tokio::sync::OwnedSemaphorePermit>,
        )>(STREAM_PIPELINE);
        let (out_tx, out_rx) = mpsc::channel(64);
        let this = self.clone();
        let duration = self.0.publish_duration.clone();
        // Reader: validates and submits each request at once, without
        // waiting for earlier ones to commit (pipelining).
        tokio::spawn(async move {
            let _slot = slot;
            loop {
                let next = match tokio::time::timeout(idle, inbound.message()).await {
                    Ok(next) => next,
                    Err(_) => {
                        let idle = BrokerError::ResourceExhausted(format!(
                            "the stream was idle for {} s (limits.idle_stream_timeout_secs)",
                            idle.as_secs()
                        ));
                        let _ = order_tx.send((Err(idle), None)).await;
                        return;
                    }
                };
                match next {
                    Ok(Some(request)) => {
                        if let Err(refused) = this.0.publish_rate.acquire(&actor.name) {
                            // Held like a unary refusal, then the stream ends.
                            tokio::time::sleep(this.0.refusal_delay).await;
                            let _ = order_tx.send((Err(refused), None)).await;
                            return;
                        }
                        let room = match window.take(request.encoded_len()).await {
                            Ok(room) => room,
                            Err(e) => {
                                let _ = order_tx.send((Err(e), None)).await;
                                return;
                            }
                        };
                        let span = message_span(&stream_span, &request);
                        let submitted = this
                            .submit(actor.clone(), request, call_trace.as_ref(), span)
                            .await;
                        let failed = submitted.is_err();
                        if order_tx.send((submitted, Some(room))).await.is_err() || failed {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(status) => {
                        tracing::debug!(%status, "publish stream ended by the client");
                        if let Some(invalid) = BrokerError::from_decode_status(&status) {
                            let _ = order_tx.send((Err(invalid), None)).await;
                        }
                        return;
                    }
                }
            }
        });
        // Responder: answers in request order, each once durable.
        tokio::spawn(async move {
            while let Some((item, room)) = order_rx.recv().await {
                let result = match item {
                    Ok(pending) => resolve(pending, &duration).await,
                    Err(e) => Err(e),
                };
                drop(room);
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
        req: Request<pb::GetEventStatusRequest>,
    ) -> Result<Response<pb::EventStatus>, Status> {
        let actor = caller(&req)?;
        super::bounded(req.get_ref())?;
        let event_id = req.into_inner().event_id;
        // Reads the event and its delivery records from disk: off the
        // async workers.
        let shared = self.0.clone();
        let status =
            crate::off_runtime(move || event_status(&shared, &actor.name, event_id)).await?;
        Ok(Response::new(status))
    }

    async fn retract_event(
        &self,
        req: Request<pb::RetractEventRequest>,
    ) -> Result<Response<pb::RetractEventResponse>, Status> {
        let actor = caller(&req)?;
        super::bounded(req.get_ref())?;
        let request = req.into_inner();
        if request.event_id.is_empty() {
            return Err(BrokerError::invalid("event_id", "required").into());
        }
        if request.reason.trim().is_empty() {
            return Err(BrokerError::invalid("reason", "say why the event is retracted").into());
        }
        let r = self
            .0
            .writer
            .call(|reply| Op::Retract {
                actor,
                request,
                reply,
            })
            .await?;
        Ok(Response::new(r))
    }
}

/// Where an event stands with each recipient (`GetEventStatus`): reads the
/// event and its delivery records, so it runs on the blocking pool.
fn event_status(
    shared: &super::Shared,
    agency: &str,
    event_id: String,
) -> Result<pb::EventStatus, BrokerError> {
    let store = &shared.store;
    let not_found =
        || BrokerError::NotFound(format!("no event {event_id:?} published by this agency"));
    let event = store
        .event_by_id(agency, &event_id)
        .map_err(BrokerError::from)?
        .ok_or_else(not_found)?;
    let seq = event.sequence;
    let decoded = event.case_event()?;
    let purpose = pb::Purpose::try_from(decoded.purpose).unwrap_or(pb::Purpose::Unspecified);
    let (subs, retracted) = {
        let state = shared.read();
        let subs: Vec<(String, u64, String)> = state
            .subscriptions
            .values()
            .filter_map(|r| r.subscription.as_ref().map(|s| (r.id, s)))
            .filter(|(_, s)| {
                s.start_sequence <= seq && subscription_matches(s, &event.event_type, purpose)
            })
            .map(|(id, s)| (s.agency_id.clone(), id, s.name.clone()))
            .collect();
        (subs, state.retracted.contains_key(&seq))
    };
    use caseshare_store::DeliveryState as D;
    use pb::recipient_status::State;
    let mut recipients = Vec::new();
    for decision in &event.decisions {
        let shared = decision.decision == pb::Decision::Shared as i32;
        let mine: Vec<&(String, u64, String)> = subs
            .iter()
            .filter(|(a, _, _)| *a == decision.agency_id)
            .collect();
        if mine.is_empty() {
            recipients.push(pb::RecipientStatus {
                agency_id: decision.agency_id.clone(),
                decision: Some(decision.clone()),
                state: if shared && !retracted {
                    State::Pending
                } else {
                    State::Stopped
                } as i32,
                ..Default::default()
            });
        }
        for (agency, sub_id, name) in mine {
            let record = store
                .deliveries_of(&[*sub_id], seq)
                .map_err(BrokerError::from)?
                .into_iter()
                .next();
            let state = match record.as_ref().map(|r| r.state()) {
                Some(D::Delivered) if record.as_ref().is_some_and(|r| r.attempts == 0) => {
                    State::Pending
                }
                Some(D::Delivered) => State::Delivered,
                Some(D::Acked) => State::Acked,
                Some(D::DeadLettered) => State::DeadLettered,
                Some(D::Expired) => State::Expired,
                Some(D::Stopped) => State::Stopped,
                _ if !shared || retracted => State::Stopped,
                _ => State::Pending,
            };
            let time = |us: i64| (us > 0).then(|| caseshare_core::time::Micros(us).to_timestamp());
            recipients.push(pb::RecipientStatus {
                agency_id: agency.clone(),
                subscription: name.clone(),
                decision: Some(decision.clone()),
                state: state as i32,
                delivered_at: record.as_ref().and_then(|r| time(r.delivered_at_micros)),
                acked_at: record.as_ref().and_then(|r| time(r.acked_at_micros)),
                attempts: record.as_ref().map_or(0, |r| r.attempts),
            });
        }
    }
    Ok(pb::EventStatus {
        event_id,
        sequence: seq,
        event_type: event.event_type,
        published_at: Some(caseshare_core::time::Micros(event.published_at_micros).to_timestamp()),
        retracted,
        recipients,
    })
}
