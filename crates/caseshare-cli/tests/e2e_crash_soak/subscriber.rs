//! The soak's subscribers: consume a subscription across kills, acking
//! inline on the stream and (a random subset) with the unary `Ack`; every
//! delivery is recorded with the broker lifetime that sent it.

use std::collections::BTreeSet;
use std::time::Duration;

use caseshare_proto::v1 as pb;
use futures::FutureExt;
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;

use super::{CALL, Conn, Rng, SUBSCRIPTION, clients};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckKind {
    /// Not acknowledged (the ack could not be handed to the stream, or the
    /// lifetime that made the delivery was over before a unary ack).
    NotSent,
    /// Sent inline on the stream (durability unknown to the client).
    Inline,
    /// Confirmed by a successful unary `Ack`: durable.
    Unary,
    /// A unary `Ack` sent that did not succeed (it may still have acked).
    UnaryFailed,
}

#[derive(Debug, Clone)]
pub(crate) struct Received {
    /// Position in this subscriber's reception order.
    pub index: usize,
    pub sequence: u64,
    pub delivery_id: String,
    pub attempt: u32,
    pub event_id: String,
    pub source_agency: String,
    pub decision: Option<pb::SharingDecision>,
    pub generation: u32,
    pub stream: u32,
    pub ack: AckKind,
}

#[derive(Debug, Default)]
pub(crate) struct SubLog {
    pub received: Vec<Received>,
    pub streams: u32,
    pub stream_ends: Vec<String>,
    /// Streams that ended while the same broker lifetime was still running.
    pub ends_without_kill: usize,
    pub violations: Vec<String>,
}

/// Consumes `agency`'s subscription until `stop`, reopening the stream after
/// every break; acks every delivery, one in `unary_one_in` (0: none) with
/// the unary `Ack`.
pub(crate) async fn subscriber(
    conn: Conn,
    agency: &'static str,
    unary_one_in: u64,
    mut rng: Rng,
    seen: watch::Sender<BTreeSet<u64>>,
    mut stop: watch::Receiver<bool>,
) -> SubLog {
    let mut log = SubLog::default();
    let mut consecutive_open_failures = 0;
    loop {
        if *stop.borrow() {
            return log;
        }
        let window = u32::try_from(rng.between(20, 300)).unwrap();
        let (tx, rx) = mpsc::channel::<pb::SubscribeRequest>(1024);
        tx.try_send(pb::SubscribeRequest {
            subscription: SUBSCRIPTION.into(),
            max_outstanding: window,
            ..Default::default()
        })
        .unwrap();
        // Open under the read lock: the lifetime cannot change meanwhile, so
        // everything this stream yields was sent by `generation`.
        let (generation, c, opened) = {
            let ep = tokio::select! {
                ep = conn.read() => ep,
                _ = stop.changed() => return log,
            };
            let mut c = clients(&ep, agency);
            let opened = timeout(CALL, c.subscriber.subscribe(ReceiverStream::new(rx))).await;
            (ep.generation, c, opened)
        };
        let mut stream = match opened {
            Ok(Ok(r)) => r.into_inner(),
            other => {
                consecutive_open_failures += 1;
                log.stream_ends
                    .push(format!("gen {generation}: open failed: {other:?}"));
                if consecutive_open_failures > 20 {
                    log.violations.push(format!(
                        "{agency}: could not open a Subscribe stream: {other:?}"
                    ));
                    return log;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        consecutive_open_failures = 0;
        log.streams += 1;
        let stream_no = log.streams;
        let end = loop {
            let first = tokio::select! {
                biased;
                _ = stop.changed() => return log,
                m = stream.message() => m,
            };
            let mut batch = match first {
                Ok(Some(d)) => vec![d],
                other => break other.map(|_| ()),
            };
            // Take whatever else is already here, to ack it in one message.
            let mut end = None;
            while batch.len() < 64 {
                match stream.message().now_or_never() {
                    Some(Ok(Some(d))) => batch.push(d),
                    Some(other) => {
                        end = Some(other.map(|_| ()));
                        break;
                    }
                    None => break,
                }
            }
            let mut inline = Vec::new();
            let mut unary = Vec::new();
            for d in batch {
                let index = log.received.len();
                seen.send_modify(|s| {
                    s.insert(d.sequence);
                });
                let by_unary = unary_one_in > 0 && rng.below(unary_one_in) == 0;
                if by_unary {
                    unary.push(index);
                } else {
                    inline.push(index);
                }
                log.received.push(Received {
                    index,
                    sequence: d.sequence,
                    delivery_id: d.delivery_id,
                    attempt: d.attempt,
                    event_id: d.event.map(|e| e.event_id).unwrap_or_default(),
                    source_agency: d.source_agency,
                    decision: d.decision,
                    generation,
                    stream: stream_no,
                    ack: AckKind::NotSent,
                });
            }
            if !inline.is_empty() {
                let ids = inline
                    .iter()
                    .map(|i| log.received[*i].delivery_id.clone())
                    .collect();
                let sent = timeout(
                    CALL,
                    tx.send(pb::SubscribeRequest {
                        ack: Some(pb::AckIds { delivery_ids: ids }),
                        ..Default::default()
                    }),
                )
                .await;
                if matches!(sent, Ok(Ok(()))) {
                    for i in &inline {
                        log.received[*i].ack = AckKind::Inline;
                    }
                }
            }
            if !unary.is_empty() {
                let ids: Vec<String> = unary
                    .iter()
                    .map(|i| log.received[*i].delivery_id.clone())
                    .collect();
                // Only to the lifetime that made the deliveries; it cannot
                // be killed while the read lock is held.
                let outcome = {
                    let ep = conn.read().await;
                    if ep.generation == generation {
                        let r = timeout(
                            CALL,
                            c.subscriber.clone().ack(pb::AckRequest {
                                subscription: SUBSCRIPTION.into(),
                                delivery_ids: ids.clone(),
                            }),
                        )
                        .await;
                        Some(r)
                    } else {
                        None
                    }
                };
                let kind = match outcome {
                    // The stream's lifetime is over: not sent.
                    None => AckKind::NotSent,
                    Some(Ok(Ok(r))) if r.get_ref().acked as usize == ids.len() => AckKind::Unary,
                    Some(other) => {
                        log.violations.push(format!(
                            "{agency} gen {generation}: unary Ack of {ids:?} to the live \
                             broker that made the deliveries did not ack them all: {other:?}"
                        ));
                        AckKind::UnaryFailed
                    }
                };
                for i in &unary {
                    log.received[*i].ack = kind;
                }
            }
            if let Some(end) = end {
                break end;
            }
        };
        // Did the lifetime end (a kill), or did the stream end on its own?
        let now = conn.read().await.generation;
        if now == generation {
            log.ends_without_kill += 1;
        }
        log.stream_ends.push(format!(
            "gen {generation} stream {stream_no}: {end:?} (now gen {now})"
        ));
    }
}
