//! Choosing what a stream sends next, and reading it from the log without
//! holding the subscription's lock.
//!
//! A pick runs in rounds. Under the lock a round *claims* its work: owed
//! deliveries that are due and (ordered subscriptions) deferred ones whose
//! child is free are moved to `Picked` by the state machine, so no other
//! stream takes them; and the stream takes the subscription's *scan lease*
//! to read new events from the cursor (one reader at a time; a stream that
//! finds the lease taken is woken when it ends). The lock is then released
//! and the events are read, decoded and filtered (subscription filters,
//! the decision at publish, a re-decision when replaying after a seek) on
//! the blocking pool. The lock is taken again to *record* the round: a
//! claimed delivery whose state moved meanwhile (acked, released, dropped
//! by a seek or a delete) is not sent; a scan begun before a seek or a
//! delete (the `epoch` moved) is thrown away; otherwise new deliveries are
//! filed and picked and the cursor advances past what was examined.
//!
//! Architecture Invariant: no lock of the delivery registry is held across
//! a disk read, and no disk read runs on an async worker.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use caseshare_core::pb;
use caseshare_core::time::Micros;
use caseshare_state::delivery::{Effect, Input, Phase};
use caseshare_state::{BrokerState, EventContext, subscription_matches};
use caseshare_store::{Storage, StoredEvent};
use tokio::sync::watch;

use super::registry::{Clock, SubInner, SubRuntime};
use crate::errors::BrokerError;
use crate::writer::now;

/// The most events one read of the log takes.
const SCAN_CHUNK: usize = 256;
/// The most reads of the log in one round (then the round is recorded and
/// the next one claimed).
const READS_PER_ROUND: usize = 16;

/// One delivery picked for a stream, with its event.
#[derive(Debug)]
pub(crate) struct Pick {
    /// The event's sequence.
    pub(crate) sequence: u64,
    /// The attempt to make.
    pub(crate) attempt: u32,
    /// The event as stored.
    pub(crate) event: StoredEvent,
    /// Its `CaseEvent`.
    pub(crate) decoded: pb::CaseEvent,
}

/// Reads the log for picks: the store, the state a re-decision needs, the
/// committed head.
#[derive(Clone)]
pub(crate) struct LogReader {
    store: Arc<dyn Storage>,
    state: Arc<RwLock<BrokerState>>,
    head: watch::Receiver<u64>,
}

/// The sequences a round claimed, and its scan.
struct Claim {
    epoch: u64,
    /// Owed or deferred deliveries moved to `Picked`, with their attempt.
    taken: Vec<(u64, u32)>,
    scan: Option<Scan>,
}

/// A read of new events from the cursor, under the scan lease.
#[derive(Debug, Clone)]
struct Scan {
    from: u64,
    head: u64,
    replay_until: u64,
    want: usize,
}

/// An event as stored, and its `CaseEvent`.
type Decoded = (StoredEvent, pb::CaseEvent);

/// What a round read.
struct Read {
    /// Claimed deliveries' (sequence, attempt, event; `None`: gone from the
    /// log).
    taken: Vec<(u64, u32, Option<Decoded>)>,
    /// New events for this subscription, in order.
    eligible: Vec<Decoded>,
    /// The sequence after the last one examined.
    next: u64,
}

/// Gives the scan lease back when a pick ends, however it ends, and wakes
/// the streams that wanted it.
struct Lease<'a> {
    rt: &'a SubRuntime,
    stream: u64,
    held: bool,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        let wake = {
            let mut inner = self.rt.lock();
            if inner.scan_lease == Some(self.stream) {
                inner.scan_lease = None;
            }
            std::mem::take(&mut inner.scan_wanted)
        };
        if wake {
            self.rt.notify.notify_waiters();
        }
    }
}

impl LogReader {
    /// A reader over `store`.
    pub(crate) fn new(
        store: Arc<dyn Storage>,
        state: Arc<RwLock<BrokerState>>,
        head: watch::Receiver<u64>,
    ) -> Self {
        LogReader { store, state, head }
    }

    /// Takes up to `want` deliveries for `stream`: owed ones that are due
    /// first, then (ordered subscriptions) deferred ones whose child is
    /// free, then new ones from the log. Each is `Picked` for the stream
    /// when it is returned.
    pub(crate) async fn pick(
        &self,
        rt: &Arc<SubRuntime>,
        stream: u64,
        want: usize,
        clock: &Clock,
    ) -> Result<Vec<Pick>, BrokerError> {
        let mut picks = Vec::new();
        let mut lease = Lease {
            rt,
            stream,
            held: false,
        };
        let mut first = true;
        while picks.len() < want {
            let Some(claim) = self.claim(rt, &mut lease, want - picks.len(), first, clock) else {
                break;
            };
            first = false;
            let read = self.read(rt, &claim).await?;
            if !record(rt, stream, claim, read, &mut picks, want, clock) {
                break;
            }
        }
        Ok(picks)
    }

    /// Under the lock: what this round reads.
    fn claim(
        &self,
        rt: &SubRuntime,
        lease: &mut Lease<'_>,
        want: usize,
        first: bool,
        clock: &Clock,
    ) -> Option<Claim> {
        let head = *self.head.borrow();
        let stream = lease.stream;
        let mut inner = rt.lock();
        if inner.deleted {
            return None;
        }
        let now = clock.now();
        let mut taken = Vec::new();
        if first {
            let due: Vec<u64> = inner
                .pending()
                .filter(|(_, p)| {
                    matches!(p.state().phase, Phase::Owed { not_before } if not_before <= now)
                })
                .map(|(s, _)| s)
                .take(want)
                .collect();
            let mut ready = Vec::new();
            if rt.subscription.ordered && due.len() < want {
                // Only the earliest deferred event of each free child.
                let mut children = BTreeSet::new();
                for (seq, p) in inner.deferred() {
                    if due.len() + ready.len() >= want {
                        break;
                    }
                    if children.insert(p.nhs_number.as_str()) && !inner.child_busy(&p.nhs_number) {
                        ready.push(seq);
                    }
                }
            }
            for seq in due.into_iter().chain(ready) {
                if let Ok(applied) = inner.apply(seq, Input::Pick { stream }, now)
                    && let Effect::Submit { attempt } = applied.effect
                {
                    taken.push((seq, attempt));
                }
            }
        }
        let rest = want.saturating_sub(taken.len());
        let scan = if rest > 0 && inner.cursor <= head {
            match inner.scan_lease {
                Some(s) if s != stream => {
                    inner.scan_wanted = true;
                    None
                }
                _ => {
                    inner.scan_lease = Some(stream);
                    lease.held = true;
                    Some(Scan {
                        from: inner.cursor,
                        head,
                        replay_until: inner.replay_until,
                        want: rest,
                    })
                }
            }
        } else {
            None
        };
        (!taken.is_empty() || scan.is_some()).then_some(Claim {
            epoch: inner.epoch,
            taken,
            scan,
        })
    }

    /// Off the lock, on the blocking pool: reads what the round claimed.
    async fn read(&self, rt: &Arc<SubRuntime>, claim: &Claim) -> Result<Read, BrokerError> {
        let store = Arc::clone(&self.store);
        let state = Arc::clone(&self.state);
        let rt = Arc::clone(rt);
        let taken = claim.taken.clone();
        let scan = claim.scan.clone();
        crate::off_runtime(move || {
            let mut read = Read {
                taken: Vec::with_capacity(taken.len()),
                // Room for a chunk's worth at once, rather than growing
                // from one by doubling.
                eligible: Vec::with_capacity(scan.as_ref().map_or(0, |s| s.want.min(SCAN_CHUNK))),
                next: 0,
            };
            for (seq, attempt) in taken {
                let event = match store.event(seq)? {
                    Some(event) => {
                        let decoded = event.case_event()?;
                        Some((event, decoded))
                    }
                    None => None,
                };
                read.taken.push((seq, attempt, event));
            }
            if let Some(scan) = scan {
                scan_log(&*store, &state, &rt.subscription, &scan, &mut read)?;
            }
            Ok(read)
        })
        .await
    }
}

/// Reads events from `scan.from` (at most up to the head) until `want` of
/// them are for this subscription, or a round's reads are done.
fn scan_log(
    store: &dyn Storage,
    state: &RwLock<BrokerState>,
    sub: &pb::Subscription,
    scan: &Scan,
    read: &mut Read,
) -> Result<(), BrokerError> {
    let mut next = scan.from;
    let mut chunk = 0;
    'reads: for _ in 0..READS_PER_ROUND {
        if read.eligible.len() >= scan.want || next > scan.head {
            break;
        }
        // Read only what the window needs, growing the read while events
        // turn out not to be for this subscription.
        chunk = (scan.want - read.eligible.len())
            .max(chunk * 2)
            .min(SCAN_CHUNK);
        let events = store.events_from(next, chunk)?;
        if events.is_empty() {
            next = scan.head + 1;
            break;
        }
        for event in events {
            if event.sequence > scan.head {
                // Nothing is stored between here and the head.
                next = scan.head + 1;
                break 'reads;
            }
            if read.eligible.len() >= scan.want {
                break 'reads;
            }
            next = event.sequence + 1;
            let decoded = event.case_event()?;
            if eligible(state, sub, scan.replay_until, &event, &decoded) {
                read.eligible.push((event, decoded));
            }
        }
    }
    read.next = next;
    Ok(())
}

/// Under the lock again: keeps what is still this stream's, files and picks
/// new deliveries, advances the cursor. Returns whether to read on.
fn record(
    rt: &SubRuntime,
    stream: u64,
    claim: Claim,
    read: Read,
    picks: &mut Vec<Pick>,
    want: usize,
    clock: &Clock,
) -> bool {
    let mut inner = rt.lock();
    let now = clock.now();
    for (seq, attempt, event) in read.taken {
        let ours = inner.get(seq).is_some_and(|p| {
            p.state().phase == Phase::Picked { stream } && p.state().attempts + 1 == attempt
        });
        match event {
            // The event is gone (retention): nothing left to deliver.
            None => {
                let _ = inner.apply(seq, Input::Gone, now);
            }
            Some((event, decoded)) if ours => {
                let nhs = nhs_number(&decoded);
                inner.fill(seq, &event.event_id, &nhs);
                picks.push(Pick {
                    sequence: seq,
                    attempt,
                    event,
                    decoded,
                });
            }
            Some(_) => {}
        }
    }
    let Some(scan) = claim.scan else {
        return false;
    };
    if inner.deleted || inner.epoch != claim.epoch || inner.cursor != scan.from {
        return false;
    }
    let ordered = rt.subscription.ordered;
    let mut next = read.next;
    for (event, decoded) in read.eligible {
        let seq = event.sequence;
        if picks.len() >= want {
            next = seq;
            break;
        }
        if inner.settled_ahead.contains(&seq) || inner.get(seq).is_some() {
            continue;
        }
        if let Some(attempt) = file_new(&mut inner, ordered, stream, now, &event, &decoded) {
            picks.push(Pick {
                sequence: seq,
                attempt,
                event,
                decoded,
            });
        }
    }
    inner.cursor = next;
    inner.settled_ahead = inner.settled_ahead.split_off(&next);
    picks.len() < want && next <= scan.head
}

/// Files a delivery of a new event for the subscription and picks it for
/// `stream`, unless (ordered subscriptions) its child is busy: then it is
/// deferred. The attempt to make, if picked.
pub(super) fn file_new(
    inner: &mut SubInner,
    ordered: bool,
    stream: u64,
    now: Micros,
    event: &StoredEvent,
    decoded: &pb::CaseEvent,
) -> Option<u32> {
    let nhs = nhs_number(decoded);
    let busy = ordered && (inner.child_busy(&nhs) || inner.child_deferred(&nhs));
    inner.insert_fresh(event.sequence, event.event_id.clone(), nhs);
    if busy {
        return None;
    }
    match inner.apply(event.sequence, Input::Pick { stream }, now) {
        Ok(applied) => match applied.effect {
            Effect::Submit { attempt } => Some(attempt),
            _ => None,
        },
        Err(_) => None,
    }
}

fn nhs_number(decoded: &pb::CaseEvent) -> String {
    decoded
        .child
        .as_ref()
        .map(|c| c.nhs_number.clone())
        .unwrap_or_default()
}

/// Whether the scan should consider an event for this subscription.
pub(super) fn eligible(
    state: &RwLock<BrokerState>,
    sub: &pb::Subscription,
    replay_until: u64,
    event: &StoredEvent,
    decoded: &pb::CaseEvent,
) -> bool {
    let agency = sub.agency_id.as_str();
    if event.source_agency == agency || event.sequence < sub.start_sequence {
        return false;
    }
    let purpose = pb::Purpose::try_from(decoded.purpose).unwrap_or(pb::Purpose::Unspecified);
    if !subscription_matches(sub, &event.event_type, purpose) {
        return false;
    }
    let decision = event.decisions.iter().find(|d| d.agency_id == agency);
    match decision {
        Some(d) if d.decision == pb::Decision::Shared as i32 => true,
        // Replaying after a seek: an event withheld at publish is
        // re-decided under today's rules (the writer decides again).
        Some(_) if event.sequence < replay_until && event.notice.is_none() => {
            let ctx = EventContext::new(
                &event.source_agency,
                &event.event_type,
                decoded,
                event.basis.as_ref(),
            );
            state
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .decide(&ctx, agency, now())
                .is_shared()
        }
        _ => false,
    }
}
