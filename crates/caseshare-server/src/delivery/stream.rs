//! The stream driver: one `Subscribe` stream's life. Its loop fills the
//! flow-control window (`max_outstanding` minus what is out, within the
//! send queue's byte bound), reads the subscriber's acks and nacks (all
//! queued ones into one writer op), fires the ack-deadline timer and ends
//! on idleness, deletion, shutdown or the subscriber leaving; its sender
//! task (`sender`) sends each window once durable. When the stream ends,
//! whatever was out on it is released (`Input::Release`): owed again at
//! once.

use std::sync::Arc;
use std::time::Duration;

use caseshare_core::pb;
use caseshare_core::principal::Principal;
use caseshare_core::time::Micros;
use caseshare_state::delivery::{Input, Phase};
use futures::FutureExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Deliveries;
use super::registry::SubRuntime;
use super::sender::InFlight;
use crate::errors::BrokerError;
use crate::sendq::{QueueBudget, StreamRx, StreamTx};

/// What a `Subscribe` stream is opened with.
pub struct OpenStream {
    /// The subscriber.
    pub actor: Arc<Principal>,
    /// The subscription's name.
    pub subscription: String,
    /// The window asked for (0 = the default, 100).
    pub max_outstanding: u32,
    /// The subscriber's requests after the first.
    pub inbound: tonic::Streaming<pb::SubscribeRequest>,
    /// The stream's place under the per-principal cap, held for its life.
    pub slot: crate::limits::StreamSlot,
    /// How long the stream may idle.
    pub idle: Duration,
    /// The send queues' byte bounds.
    pub budget: Arc<QueueBudget>,
}

impl std::fmt::Debug for OpenStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenStream")
            .field("subscription", &self.subscription)
            .field("max_outstanding", &self.max_outstanding)
            .finish_non_exhaustive()
    }
}

/// One running stream.
struct Stream {
    actor: Arc<Principal>,
    rt: Arc<SubRuntime>,
    id: u64,
    window: usize,
    tx: StreamTx,
    idle: Duration,
}

/// What [`Deliveries::window_state`] found.
#[derive(Debug, Default)]
struct Window {
    /// Deliveries picked or sent on the stream.
    out: usize,
    /// Of those, picked and not yet sent.
    unsent: usize,
    /// The earliest ack deadline on the stream.
    deadline: Option<Micros>,
    /// The earliest time an owed delivery comes due.
    owed: Option<Micros>,
}

/// Why a stream's loop ended.
enum StreamEnd {
    /// The loop ended (the sender task is still to be waited for).
    Loop(Result<(), BrokerError>),
    /// The sender task ended first, with this result.
    Sender(Result<(), BrokerError>),
}

impl Deliveries {
    /// Starts a stream; the returned receiver yields deliveries.
    pub fn open_stream(self: &Arc<Self>, open: OpenStream) -> Result<StreamRx, BrokerError> {
        let rt = self.runtime(&open.actor.name, &open.subscription)?;
        let window = if open.max_outstanding == 0 {
            100
        } else {
            open.max_outstanding
        };
        if window > self.max_outstanding {
            return Err(BrokerError::ResourceExhausted(format!(
                "max_outstanding {window} exceeds the broker's limit of {} (limits.max_outstanding)",
                self.max_outstanding
            )));
        }
        let (tx, rx) = open.budget.channel(&open.actor.name, window as usize + 1);
        let this = Arc::clone(self);
        let OpenStream {
            actor,
            inbound,
            slot,
            idle,
            ..
        } = open;
        tokio::spawn(async move {
            // Held for the stream's life: counts against the per-principal cap.
            let _slot = slot;
            let id = this
                .next_stream
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            metrics::gauge!("caseshare_subscribe_streams").increment(1.0);
            let stream = Stream {
                actor,
                rt,
                id,
                window: window as usize,
                tx,
                idle,
            };
            let result = this.run_stream(&stream, inbound).await;
            this.release(&stream.rt, id);
            metrics::gauge!("caseshare_subscribe_streams").decrement(1.0);
            if let Err(e) = result {
                let _ = stream.tx.send(Err(e.into())).await;
            }
        });
        Ok(rx)
    }

    /// Whatever was out on `stream` is owed again, at once.
    fn release(&self, rt: &SubRuntime, stream: u64) {
        {
            let now = self.clock.now();
            let mut inner = rt.lock();
            let on_stream: Vec<u64> = inner
                .pending()
                .filter(|(_, p)| p.state().stream() == Some(stream))
                .map(|(s, _)| s)
                .collect();
            for seq in on_stream {
                let _ = inner.apply(seq, Input::Release { stream }, now);
            }
        }
        rt.notify.notify_waiters();
    }

    /// Runs one stream: the loop that reads acks and submits windows, and
    /// the sender task that sends them once durable. Returns when the
    /// subscriber goes, the subscription is deleted, the stream idles out,
    /// or the broker shuts down; by then every submitted window has been
    /// sent or put back.
    async fn run_stream(
        self: &Arc<Self>,
        stream: &Stream,
        inbound: tonic::Streaming<pb::SubscribeRequest>,
    ) -> Result<(), BrokerError> {
        let (queue, queue_rx) = mpsc::unbounded_channel();
        let mut sender = tokio::spawn(Arc::clone(self).send_in_flight(
            Arc::clone(&stream.rt),
            stream.id,
            queue_rx,
            stream.tx.clone(),
        ));
        let result = self.stream_loop(stream, inbound, &queue, &mut sender).await;
        drop(queue);
        match result {
            StreamEnd::Sender(r) => r,
            StreamEnd::Loop(r) => {
                let sent = (&mut sender).await.unwrap_or_else(|e| {
                    Err(BrokerError::Unavailable(format!(
                        "a delivery stream's sender failed: {e}"
                    )))
                });
                r.and(sent)
            }
        }
    }

    /// What is out on the stream, how much of it is not yet sent, when the
    /// next of its deadlines passes and when the next owed delivery comes
    /// due.
    fn window_state(&self, stream: &Stream) -> Result<Window, BrokerError> {
        let inner = stream.rt.lock();
        if inner.deleted {
            return Err(BrokerError::NotFound("the subscription was deleted".into()));
        }
        let mut w = Window::default();
        let earliest = |t: Option<Micros>, u: Micros| Some(t.map_or(u, |t| t.min(u)));
        for (_, p) in inner.pending() {
            match p.state().phase {
                Phase::Out {
                    stream: s,
                    deadline,
                } if s == stream.id => {
                    w.out += 1;
                    w.deadline = earliest(w.deadline, deadline);
                }
                Phase::Picked { stream: s } if s == stream.id => {
                    w.out += 1;
                    w.unsent += 1;
                }
                Phase::Owed { not_before } => w.owed = earliest(w.owed, not_before),
                _ => {}
            }
        }
        Ok(w)
    }

    async fn stream_loop(
        &self,
        stream: &Stream,
        mut inbound: tonic::Streaming<pb::SubscribeRequest>,
        queue: &mpsc::UnboundedSender<InFlight>,
        sender: &mut tokio::task::JoinHandle<Result<(), BrokerError>>,
    ) -> StreamEnd {
        let (rt, tx, window, idle) = (&stream.rt, &stream.tx, stream.window, stream.idle);
        let mut last_activity = Instant::now();
        let mut head = self.head.clone();
        let mut shutdown = self.shutdown.clone();
        loop {
            let notified = rt.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            head.borrow_and_update();
            let w = match self.window_state(stream) {
                Ok(w) => w,
                Err(e) => return StreamEnd::Loop(Err(e)),
            };
            // The send queue's byte bound limits what is picked (`sendq`).
            let want = window.saturating_sub(w.out).min(tx.room(w.unsent));
            let queue_full = want < window.saturating_sub(w.out) && tx.above_half();
            // An owed delivery coming due matters only with room to take it
            // (a full window would otherwise wake this loop again and again).
            let wake = match (w.deadline, w.owed) {
                (d, Some(o)) if want > 0 => Some(d.map_or(o, |d| d.min(o))),
                (d, _) => d,
            }
            .map(|t| self.clock.instant(t));
            if want > 0 {
                let taken = match self.submit_fill(rt, stream.id, want, queue).await {
                    Ok(n) => n,
                    Err(e) => return StreamEnd::Loop(Err(e)),
                };
                if tx.is_closed() {
                    return StreamEnd::Loop(Ok(()));
                }
                if taken > 0 {
                    last_activity = Instant::now();
                    continue;
                }
            }
            // Nothing more to take and room left: the writer may feed this
            // stream new events in the commit that stores them (`tail`)
            // until it wakes.
            if want > 0 {
                self.tail.park(rt, stream.id, want, queue);
            }
            let sleep = tokio::time::sleep_until(
                wake.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)),
            );
            let idle_at = tokio::time::sleep_until(last_activity + idle);
            let step: Result<bool, BrokerError> = tokio::select! {
                _ = idle_at => Err(BrokerError::ResourceExhausted(format!(
                    "the stream was idle for {} s (limits.idle_stream_timeout_secs)",
                    idle.as_secs()
                ))),
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => {
                        last_activity = Instant::now();
                        self.settle_inbound(stream, req, &mut inbound).await
                    }
                    Err(status) => BrokerError::from_decode_status(&status).map_or(Ok(false), Err),
                    Ok(None) => Ok(false),
                },
                _ = &mut notified => Ok(true),
                _ = head.changed() => Ok(true),
                _ = sleep => self.expire_deadlines(rt, stream.id).await.map(|()| true),
                _ = shutdown.changed() => Err(BrokerError::Unavailable("the broker is shutting down".into())),
                _ = tx.closed() => Ok(false),
                _ = tx.wait_for_room(), if queue_full => Ok(true),
                done = &mut *sender => {
                    self.tail.unpark(rt, stream.id);
                    return StreamEnd::Sender(done.unwrap_or_else(|e| {
                        Err(BrokerError::Unavailable(format!("a delivery stream's sender failed: {e}")))
                    }));
                }
            };
            if self.tail.unpark(rt, stream.id) > 0 {
                // The writer fed it meanwhile: deliveries went out.
                last_activity = Instant::now();
            }
            match step {
                Ok(true) => {}
                Ok(false) => return StreamEnd::Loop(Ok(())),
                Err(e) => return StreamEnd::Loop(Err(e)),
            }
        }
    }

    /// Settles one inbound message and every further one already queued
    /// (their acks go to the writer as one op). Returns false once the
    /// subscriber has closed its side.
    async fn settle_inbound(
        &self,
        stream: &Stream,
        first: pb::SubscribeRequest,
        inbound: &mut tonic::Streaming<pb::SubscribeRequest>,
    ) -> Result<bool, BrokerError> {
        /// Acks gathered into one writer op at most.
        const MAX_GATHERED_ACKS: usize = 8_192;
        let mut acks: Vec<String> = Vec::new();
        let mut next = Some(first);
        let mut open = true;
        while let Some(req) = next.take() {
            crate::services::bounded(&req)?;
            if let Some(ack) = req.ack {
                acks.extend(ack.delivery_ids);
            }
            if let Some(nack) = req.nack {
                self.nack_ids(&stream.rt, &nack.delivery_ids).await?;
            }
            if acks.len() >= MAX_GATHERED_ACKS {
                break;
            }
            // `message()` is cancel-safe: an unfinished message stays
            // buffered in the stream.
            match inbound.message().now_or_never() {
                Some(Ok(Some(req))) => next = Some(req),
                Some(Err(status)) => {
                    if let Some(invalid) = BrokerError::from_decode_status(&status) {
                        return Err(invalid);
                    }
                    open = false;
                }
                Some(Ok(None)) => open = false,
                None => {}
            }
        }
        if !acks.is_empty() {
            self.ack_ids(&stream.actor, &stream.rt, &acks, false)
                .await?;
        }
        Ok(open)
    }
}
