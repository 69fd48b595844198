//! Delivery in the publish's own commit, for streams waiting at the head.
//!
//! A stream that has taken everything it can and still has room in its
//! window *parks* ([`Tailing::park`]) before it waits. When the writer has
//! applied a batch that stores new events, it offers them here
//! ([`Tail::offer`]) before sealing the batch: for each parked stream whose
//! subscription's cursor is at the first of them, the events are examined
//! as a scan of the log would (`pick::eligible`, the ordered subscriptions'
//! deferral), picked under the subscription's lock and returned as one
//! `Op::Deliver`, which the writer applies in the same batch. The window
//! (picks and the op's verdicts) goes to the stream's sender task as if the
//! stream had submitted it, and is sent once the commit that holds both the
//! events and their `EVENT_DELIVERED` entries is durable.
//!
//! Without it, a waiting subscriber's event took two commits: the one that
//! stored it, then (woken by the new head, read back from the log) the one
//! that recorded its delivery. With it, a subscriber keeping up receives an
//! event one commit after it was published, which lets the commit delay
//! batch more at a steady load for the same publish→delivery latency
//! (`docs/BENCHMARKS.md`).
//!
//! Embedded mode only: in cluster mode every replica applies the journal,
//! and a replica's streams pick from what it has applied.
//!
//! Architecture Invariant: nothing here waits or reads the disk; the
//! writer's thread calls [`Tail::offer`] with the batch in hand. Each pick
//! takes the send gate without waiting (`try_read_owned`): while a
//! withdrawal or an ended agreement waits for the gate's write side, no
//! stream is fed from here, and its streams pick as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use caseshare_core::pb;
use caseshare_state::{BrokerState, StoredEvent};
use tokio::sync::{mpsc, oneshot};

use super::pick::{Pick, eligible, file_new};
use super::registry::{Clock, SubRuntime};
use super::sender::{InFlight, MAX_INTENTS_PER_OP, intents, put_back};
use crate::writer::{Op, Tail};

/// A stream waiting at the head: how many more deliveries its window takes
/// and its sender task's queue.
#[derive(Debug)]
pub(crate) struct Parked {
    stream: u64,
    room: usize,
    /// Deliveries picked for it since it parked.
    fed: usize,
    queue: mpsc::UnboundedSender<InFlight>,
}

/// What [`Tailing::pick`] took for one parked stream.
struct Picked {
    stream: u64,
    picks: Vec<Pick>,
    queue: mpsc::UnboundedSender<InFlight>,
}

/// The parked streams, and what picking for them needs.
pub struct Tailing {
    state: Arc<RwLock<BrokerState>>,
    /// The delivery engine's send gate: held for reading by every window
    /// between its decision and its send.
    pub(super) send_gate: Arc<tokio::sync::RwLock<()>>,
    pub(super) clock: Clock,
    /// Subscriptions that had a stream parked (checked again under each
    /// one's lock).
    parked: Mutex<HashMap<u64, Arc<SubRuntime>>>,
}

impl std::fmt::Debug for Tailing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tailing").finish_non_exhaustive()
    }
}

impl Tailing {
    /// The parked streams of the broker whose configuration is `state`,
    /// with a new send gate.
    pub fn new(state: Arc<RwLock<BrokerState>>) -> Arc<Self> {
        Arc::new(Tailing {
            state,
            send_gate: Arc::new(tokio::sync::RwLock::new(())),
            clock: Clock::start(),
            parked: Mutex::new(HashMap::new()),
        })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<SubRuntime>>> {
        self.parked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Parks `stream` of `rt` with `room` left in its window, unless
    /// another stream of the subscription is parked already.
    pub(super) fn park(
        &self,
        rt: &Arc<SubRuntime>,
        stream: u64,
        room: usize,
        queue: &mpsc::UnboundedSender<InFlight>,
    ) {
        let mut inner = rt.lock();
        if inner.parked.is_none() && room > 0 {
            inner.parked = Some(Parked {
                stream,
                room,
                fed: 0,
                queue: queue.clone(),
            });
            self.map().insert(rt.id, Arc::clone(rt));
        }
    }

    /// Unparks `stream` of `rt`, if it is the one parked; how many
    /// deliveries were picked for it while it was.
    pub(super) fn unpark(&self, rt: &SubRuntime, stream: u64) -> usize {
        let mut inner = rt.lock();
        match inner.parked.take() {
            Some(p) if p.stream == stream => {
                self.map().remove(&rt.id);
                p.fed
            }
            other => {
                inner.parked = other;
                0
            }
        }
    }

    /// Picks for `rt`'s parked stream among `events` (in sequence order,
    /// just applied), if its cursor is at the first of them; the picks and
    /// the stream and its queue.
    fn pick(
        &self,
        rt: &SubRuntime,
        events: &[StoredEvent],
        decoded: &mut [Option<pb::CaseEvent>],
    ) -> Option<Picked> {
        let first = events.first()?.sequence;
        let now = self.clock.now();
        let mut inner = rt.lock();
        let parked = inner.parked.as_ref()?;
        if inner.deleted
            || inner.scan_lease.is_some()
            || inner.cursor != first
            || parked.queue.is_closed()
        {
            return None;
        }
        let (stream, queue) = (parked.stream, parked.queue.clone());
        let mut room = parked.room.min(MAX_INTENTS_PER_OP);
        let ordered = rt.subscription.ordered;
        let mut picks = Vec::new();
        for (event, slot) in events.iter().zip(decoded.iter_mut()) {
            if room == 0 {
                break;
            }
            let seq = event.sequence;
            if slot.is_none() {
                *slot = event.case_event().ok();
            }
            // A stored event that does not decode is left to the scan,
            // which reports it.
            let Some(case) = slot.as_ref() else {
                break;
            };
            inner.cursor = seq + 1;
            if !eligible(
                &self.state,
                &rt.subscription,
                inner.replay_until,
                event,
                case,
            ) || inner.settled_ahead.contains(&seq)
                || inner.get(seq).is_some()
            {
                continue;
            }
            if let Some(attempt) = file_new(&mut inner, ordered, stream, now, event, case) {
                picks.push(Pick {
                    sequence: seq,
                    attempt,
                    event: event.clone(),
                    decoded: case.clone(),
                });
                room -= 1;
            }
        }
        let cursor = inner.cursor;
        inner.settled_ahead = inner.settled_ahead.split_off(&cursor);
        if let Some(p) = inner.parked.as_mut() {
            p.room = p.room.saturating_sub(picks.len());
            p.fed += picks.len();
        }
        Some(Picked {
            stream,
            picks,
            queue,
        })
    }
}

impl Tail for Tailing {
    fn offer(&self, events: &[StoredEvent]) -> Vec<Op> {
        let subscriptions: Vec<Arc<SubRuntime>> = {
            let map = self.map();
            if map.is_empty() || events.is_empty() {
                return Vec::new();
            }
            map.values().cloned().collect()
        };
        let mut decoded = vec![None; events.len()];
        let mut ops = Vec::new();
        for rt in subscriptions {
            // Taken before picking: a withdrawal waiting for the write side
            // stops this stream's feed here, and nothing is picked.
            let Ok(gate) = Arc::clone(&self.send_gate).try_read_owned() else {
                return ops;
            };
            let Some(Picked {
                stream,
                picks,
                queue,
            }) = self.pick(&rt, events, &mut decoded)
            else {
                continue;
            };
            if picks.is_empty() {
                continue;
            }
            let intents = intents(&rt, &picks);
            let (reply, verdicts) = oneshot::channel();
            let count = picks.len() as u64;
            if let Err(mpsc::error::SendError(window)) = queue.send(InFlight {
                gate,
                picks,
                verdicts,
            }) {
                // The stream's sender has ended: nothing is recorded.
                put_back(&rt, stream, &window.picks, self.clock.now());
                continue;
            }
            metrics::counter!("caseshare_deliveries_tailed_total").increment(count);
            ops.push(Op::Deliver { intents, reply });
        }
        ops
    }
}
