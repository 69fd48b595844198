//! The soak's publisher: pipelines events on `PublishStream`, reconnecting
//! after every kill, re-sending what was unanswered and now and then an
//! answered event on purpose; records every response.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use caseshare_proto::v1 as pb;
use caseshare_testkit::publish_request;
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;

use super::{CALL, Conn, Rng, SCHOOL, clients};

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Progress {
    /// Distinct events answered.
    pub acked: usize,
    /// The publisher has returned.
    pub done: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct PubResponse {
    pub event: usize,
    pub sequence: u64,
    pub duplicate: bool,
    pub audit_index: u64,
    pub decisions: Vec<pb::SharingDecision>,
    /// How many times the event had been sent when this answer came.
    pub sends: u32,
    /// A deliberate re-send of an event already answered.
    pub repeat: bool,
    pub generation: u32,
}

#[derive(Debug, Default)]
pub(crate) struct PubLog {
    pub responses: Vec<PubResponse>,
    pub sends: Vec<u32>,
    pub streams: u32,
    pub resent_after_break: usize,
    pub repeats_sent: usize,
    pub stream_ends: Vec<String>,
    pub violations: Vec<String>,
}

/// Streams `events`, reconnecting after every break, until each has an
/// answer; re-sends unanswered events on the next stream.
pub(crate) async fn publisher(
    conn: Conn,
    events: Arc<Vec<pb::CaseEvent>>,
    mut rng: Rng,
    progress: watch::Sender<Progress>,
) -> PubLog {
    let n = events.len();
    let mut log = PubLog {
        sends: vec![0; n],
        ..Default::default()
    };
    let mut next_new = 0usize;
    // (event index, deliberate repeat) sent and not yet answered, in order.
    let mut inflight: VecDeque<(usize, bool)> = VecDeque::new();
    let mut answered = vec![false; n];
    let mut answered_list: Vec<usize> = Vec::new();
    let mut acked = 0usize;
    let mut consecutive_open_failures = 0;
    'streams: while acked < n || !inflight.is_empty() {
        let window = usize::try_from(rng.between(16, 256)).unwrap();
        let (tx, rx) = mpsc::channel::<pb::PublishRequest>(window.max(inflight.len()) + 1);
        // Re-send what the last stream left unanswered, first and in order.
        for (i, _) in &inflight {
            log.sends[*i] += 1;
            log.resent_after_break += 1;
            tx.try_send(publish_request(events[*i].clone())).unwrap();
        }
        let (generation, opened) = {
            let ep = conn.read().await;
            let mut c = clients(&ep, SCHOOL);
            let opened = timeout(CALL, c.publisher.publish_stream(ReceiverStream::new(rx))).await;
            (ep.generation, opened)
        };
        let mut responses = match opened {
            Ok(Ok(r)) => r.into_inner(),
            other => {
                consecutive_open_failures += 1;
                log.stream_ends
                    .push(format!("gen {generation}: open failed: {other:?}"));
                if consecutive_open_failures > 20 {
                    log.violations
                        .push(format!("the publisher could not open a stream: {other:?}"));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        consecutive_open_failures = 0;
        log.streams += 1;
        loop {
            // Fill the window: mostly new events, now and then a deliberate
            // repeat of one already answered.
            while inflight.len() < window {
                let item = if !answered_list.is_empty() && rng.below(40) == 0 {
                    let i = answered_list
                        [usize::try_from(rng.below(answered_list.len() as u64)).unwrap()];
                    log.repeats_sent += 1;
                    (i, true)
                } else if next_new < n {
                    next_new += 1;
                    (next_new - 1, false)
                } else {
                    break;
                };
                log.sends[item.0] += 1;
                inflight.push_back(item);
                if tx
                    .try_send(publish_request(events[item.0].clone()))
                    .is_err()
                {
                    // The stream is gone; the item is re-sent on the next.
                    log.stream_ends
                        .push(format!("gen {generation}: request channel closed"));
                    continue 'streams;
                }
            }
            if inflight.is_empty() {
                break 'streams;
            }
            let answer = timeout(CALL, responses.message()).await;
            let r = match answer {
                Ok(Ok(Some(r))) => r,
                Ok(Ok(None)) => {
                    log.stream_ends
                        .push(format!("gen {generation}: response stream ended"));
                    continue 'streams;
                }
                Ok(Err(status)) => {
                    log.stream_ends.push(format!(
                        "gen {generation}: {:?} {}",
                        status.code(),
                        status.message()
                    ));
                    continue 'streams;
                }
                Err(_) => {
                    log.violations.push(format!(
                        "gen {generation}: no publish response within {CALL:?} \
                         ({} in flight, {acked} answered)",
                        inflight.len()
                    ));
                    break 'streams;
                }
            };
            let (i, repeat) = inflight.pop_front().unwrap();
            if r.event_id != events[i].event_id {
                log.violations.push(format!(
                    "gen {generation}: responses out of request order: expected {}, got {}",
                    events[i].event_id, r.event_id
                ));
                break 'streams;
            }
            log.responses.push(PubResponse {
                event: i,
                sequence: r.sequence,
                duplicate: r.duplicate,
                audit_index: r.audit_index,
                decisions: r.decisions,
                sends: log.sends[i],
                repeat,
                generation,
            });
            if !answered[i] {
                answered[i] = true;
                answered_list.push(i);
                acked += 1;
                progress.send_modify(|p| p.acked = acked);
            }
        }
    }
    progress.send_modify(|p| p.done = true);
    log
}
