//! Bounded memory per Subscribe stream and per principal: the queue between
//! a stream's sender task and the gRPC response. It counts the encoded bytes
//! of the deliveries waiting to be taken by the transport, and
//! [`StreamTx::room`] tells the stream how many more deliveries it may pick
//! (the bytes free below `limits.max_stream_queued_bytes` over the average
//! delivery size), so a stream does not pick a whole window of large events
//! for a reader that is not reading. A sender that would put the stream over
//! its bound, or the principal over `limits.max_principal_queued_bytes`,
//! waits for the reader; a stream whose queue stays at its bound (over half
//! of it, with more owed) for `limits.slow_reader_grace_ms` is ended: the
//! queue is freed at once, the reader is answered `RESOURCE_EXHAUSTED`
//! "slow reader: …", and the sender sees the stream as closed, so its
//! deliveries are owed again (redelivered later).

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use caseshare_core::pb;
use futures::Stream;
use futures::task::AtomicWaker;
use prost::Message;
use tokio::sync::{Notify, watch};
use tonic::Status;

/// One item of a Subscribe response.
pub type Item = Result<pb::Delivery, Status>;

/// The bounds, shared by every stream.
#[derive(Debug)]
pub struct QueueBudget {
    per_stream: usize,
    per_principal: usize,
    grace: Duration,
    principals: Mutex<HashMap<String, usize>>,
}

impl QueueBudget {
    /// The bounds in bytes, and how long a stream may stay at one.
    pub fn new(per_stream: usize, per_principal: usize, grace: Duration) -> Self {
        QueueBudget {
            per_stream: per_stream.max(1),
            per_principal: per_principal.max(1),
            grace,
            principals: Mutex::new(HashMap::new()),
        }
    }

    #[cfg(test)]
    /// Bytes queued now for `principal`, all streams.
    pub fn queued(&self, principal: &str) -> usize {
        self.lock().get(principal).copied().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.principals.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `n` bytes for `principal` if that keeps it within its bound (or
    /// it had nothing queued).
    fn try_add(&self, principal: &str, n: usize) -> bool {
        let mut map = self.lock();
        let q = map.entry(principal.to_string()).or_insert(0);
        if *q > 0 && *q + n > self.per_principal {
            return false;
        }
        *q += n;
        true
    }

    fn sub(&self, principal: &str, n: usize) {
        if n == 0 {
            return;
        }
        let mut map = self.lock();
        if let Some(q) = map.get_mut(principal) {
            *q = q.saturating_sub(n);
            if *q == 0 {
                map.remove(principal);
            }
        }
    }

    /// A queue for one stream of `principal`, holding at most `capacity`
    /// deliveries (and the byte bounds).
    pub fn channel(self: &Arc<Self>, principal: &str, capacity: usize) -> (StreamTx, StreamRx) {
        let (closed_tx, closed_rx) = watch::channel(false);
        let q = Arc::new(Queue {
            budget: Arc::clone(self),
            principal: principal.to_string(),
            capacity: capacity.max(1),
            state: Mutex::new(State::default()),
            reader: AtomicWaker::new(),
            drained: Notify::new(),
            closed: closed_tx,
            senders: AtomicUsize::new(1),
            low_water: Notify::new(),
            sent_bytes: AtomicUsize::new(0),
            sent_items: AtomicUsize::new(0),
        });
        (
            StreamTx {
                q: Arc::clone(&q),
                closed: closed_rx,
            },
            StreamRx { q, done: false },
        )
    }
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<(Item, usize)>,
    bytes: usize,
    aborted: Option<Status>,
    reader_gone: bool,
}

#[derive(Debug)]
struct Queue {
    budget: Arc<QueueBudget>,
    principal: String,
    capacity: usize,
    state: Mutex<State>,
    reader: AtomicWaker,
    drained: Notify,
    closed: watch::Sender<bool>,
    senders: AtomicUsize,
    /// Woken when the queue falls below half its bound.
    low_water: Notify,
    sent_bytes: AtomicUsize,
    sent_items: AtomicUsize,
}

impl Queue {
    fn slow(&self, why: &str) {
        let (queued, items) = {
            let s = self.lock();
            (s.bytes, s.items.len())
        };
        metrics::counter!("caseshare_slow_readers_dropped_total").increment(1);
        tracing::info!(principal = %self.principal, queued, items, "ending a slow reader's stream");
        self.end(Some(Status::resource_exhausted(format!(
            "slow reader: {queued} bytes in {items} deliveries {why} for {} ms \
             (limits.max_stream_queued_bytes = {}, limits.max_principal_queued_bytes = {}, \
             limits.slow_reader_grace_ms); they will be redelivered",
            self.budget.grace.as_millis(),
            self.budget.per_stream,
            self.budget.per_principal,
        ))));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Frees everything queued; with `status`, the reader gets it next.
    fn end(&self, status: Option<Status>) {
        let freed = {
            let mut s = self.lock();
            if status.is_some() && s.aborted.is_none() {
                s.aborted = status;
            } else if status.is_none() {
                s.reader_gone = true;
            }
            s.items.clear();
            std::mem::take(&mut s.bytes)
        };
        self.budget.sub(&self.principal, freed);
        self.closed.send_replace(true);
        self.drained.notify_waiters();
        self.low_water.notify_waiters();
        self.reader.wake();
    }
}

/// The sender side (the stream's sender task).
#[derive(Debug)]
pub struct StreamTx {
    q: Arc<Queue>,
    closed: watch::Receiver<bool>,
}

/// The stream is closed (the reader went, or was ended as slow).
#[derive(Debug)]
pub struct Closed;

impl Clone for StreamTx {
    fn clone(&self) -> Self {
        self.q.senders.fetch_add(1, Ordering::AcqRel);
        StreamTx {
            q: Arc::clone(&self.q),
            closed: self.closed.clone(),
        }
    }
}

impl Drop for StreamTx {
    fn drop(&mut self) {
        if self.q.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.q.reader.wake();
        }
    }
}

impl StreamTx {
    /// Whether the stream is closed.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Resolves once the stream is closed.
    pub async fn closed(&self) {
        let mut rx = self.closed.clone();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// How many more deliveries the stream may pick, `unsent` being picked
    /// and not yet queued: the bytes free below the stream's bound over the
    /// average delivery size so far (a sixteenth of the bound before any).
    pub fn room(&self, unsent: usize) -> usize {
        let per_stream = self.q.budget.per_stream;
        let items = self.q.sent_items.load(Ordering::Relaxed);
        let avg = self
            .q
            .sent_bytes
            .load(Ordering::Relaxed)
            .checked_div(items)
            .unwrap_or(per_stream / 16)
            .max(1);
        let queued = self.q.lock().bytes;
        (per_stream.saturating_sub(queued) / avg).saturating_sub(unsent)
    }

    /// Whether the queue holds more than half its bound.
    pub fn above_half(&self) -> bool {
        self.q.lock().bytes > self.q.budget.per_stream / 2
    }

    /// Resolves when the queue falls to half its bound or the stream
    /// closes; if it stays above half for the grace period, the stream is
    /// ended as a slow reader.
    pub async fn wait_for_room(&self) {
        let deadline = tokio::time::Instant::now() + self.q.budget.grace;
        loop {
            let low = self.q.low_water.notified();
            if self.is_closed() || !self.above_half() {
                return;
            }
            if tokio::time::timeout_at(deadline, low).await.is_err() {
                if !self.is_closed() && self.above_half() {
                    self.q.slow("stayed unread above half the stream's bound");
                }
                return;
            }
        }
    }

    /// Queues one item, waiting while the stream or principal is at its
    /// bound; ends the stream as a slow reader if no room is made within
    /// the grace period. An error status is always queued at once.
    pub async fn send(&self, item: Item) -> Result<(), Closed> {
        let n = item.as_ref().map(|d| d.encoded_len()).unwrap_or(0);
        let deadline = tokio::time::Instant::now() + self.q.budget.grace;
        loop {
            let drained = self.q.drained.notified();
            {
                let mut s = self.q.lock();
                if s.aborted.is_some() || s.reader_gone {
                    return Err(Closed);
                }
                let is_err = item.is_err();
                let fits = is_err
                    || s.items.is_empty()
                    || (s.items.len() < self.q.capacity && s.bytes + n <= self.q.budget.per_stream);
                if fits && (is_err || self.q.budget.try_add(&self.q.principal, n)) {
                    s.bytes += if is_err { 0 } else { n };
                    s.items.push_back((item, if is_err { 0 } else { n }));
                    drop(s);
                    if !is_err {
                        self.q.sent_bytes.fetch_add(n, Ordering::Relaxed);
                        self.q.sent_items.fetch_add(1, Ordering::Relaxed);
                    }
                    self.q.reader.wake();
                    return Ok(());
                }
            }
            if tokio::time::timeout_at(deadline, drained).await.is_err() {
                self.q.slow("were not read");
                return Err(Closed);
            }
        }
    }
}

/// The reader side: the Subscribe response stream.
#[derive(Debug)]
pub struct StreamRx {
    q: Arc<Queue>,
    done: bool,
}

impl Stream for StreamRx {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        self.q.reader.register(cx.waker());
        let mut s = self.q.lock();
        if let Some(status) = s.aborted.take() {
            drop(s);
            self.done = true;
            return Poll::Ready(Some(Err(status)));
        }
        if let Some((item, n)) = s.items.pop_front() {
            let half = self.q.budget.per_stream / 2;
            let crossed = s.bytes > half && s.bytes - n <= half;
            s.bytes -= n;
            drop(s);
            self.q.budget.sub(&self.q.principal, n);
            self.q.drained.notify_waiters();
            if crossed {
                self.q.low_water.notify_waiters();
            }
            return Poll::Ready(Some(item));
        }
        if self.q.senders.load(Ordering::Acquire) == 0 {
            drop(s);
            self.done = true;
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

impl Drop for StreamRx {
    fn drop(&mut self) {
        self.q.end(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn delivery(bytes: usize) -> Item {
        Ok(pb::Delivery {
            delivery_id: "x".repeat(bytes),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn a_stream_at_its_bound_waits_then_a_slow_reader_is_ended() {
        let budget = Arc::new(QueueBudget::new(1_000, 10_000, Duration::from_millis(50)));
        let (tx, mut rx) = budget.channel("a", 100);
        // Up to the bound: queued at once.
        assert!(tx.send(delivery(490)).await.is_ok());
        assert!(tx.send(delivery(490)).await.is_ok());
        assert!(budget.queued("a") <= 1_000);
        // One past: waits, and nobody reads.
        assert!(tx.send(delivery(490)).await.is_err());
        assert!(tx.is_closed());
        assert_eq!(budget.queued("a"), 0, "the queue was freed");
        match rx.next().await {
            Some(Err(s)) => {
                assert_eq!(s.code(), tonic::Code::ResourceExhausted);
                assert!(s.message().starts_with("slow reader:"), "{}", s.message());
            }
            other => panic!("expected the slow-reader status, got {other:?}"),
        }
        assert!(rx.next().await.is_none());
    }

    #[tokio::test]
    async fn a_reader_that_keeps_up_is_never_ended() {
        let budget = Arc::new(QueueBudget::new(1_000, 10_000, Duration::from_millis(200)));
        let (tx, mut rx) = budget.channel("a", 100);
        let reader = tokio::spawn(async move {
            let mut n = 0;
            while let Some(Ok(_)) = rx.next().await {
                n += 1;
            }
            n
        });
        for _ in 0..50 {
            assert!(tx.send(delivery(490)).await.is_ok());
        }
        drop(tx);
        assert_eq!(reader.await.unwrap_or(0), 50);
        assert_eq!(budget.queued("a"), 0);
    }

    #[tokio::test]
    async fn room_follows_the_byte_bound_and_a_full_unread_queue_is_ended() {
        let budget = Arc::new(QueueBudget::new(16_000, 100_000, Duration::from_millis(50)));
        let (tx, mut rx) = budget.channel("a", 1_000);
        // Before any delivery: a sixteenth of the bound each.
        assert_eq!(tx.room(0), 16);
        assert_eq!(tx.room(10), 6);
        for _ in 0..4 {
            assert!(tx.send(delivery(1_995)).await.is_ok());
        }
        // ~2,000 bytes each now, ~8,000 queued: room for four more.
        assert_eq!(tx.room(0), 4);
        assert!(!tx.above_half());
        assert!(tx.send(delivery(1_995)).await.is_ok());
        assert!(tx.above_half());
        // The reader takes one: below half again, the wait ends at once.
        assert!(matches!(rx.next().await, Some(Ok(_))));
        assert!(!tx.above_half());
        tx.wait_for_room().await;
        assert!(!tx.is_closed());
        // Above half and unread for the grace period: ended as slow.
        assert!(tx.send(delivery(1_995)).await.is_ok());
        tx.wait_for_room().await;
        assert!(tx.is_closed());
        match rx.next().await {
            Some(Err(s)) => assert!(s.message().starts_with("slow reader:"), "{}", s.message()),
            other => panic!("expected the slow-reader status, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_principal_bound_spans_streams() {
        let budget = Arc::new(QueueBudget::new(1_000, 1_500, Duration::from_millis(50)));
        let (a, _ra) = budget.channel("p", 100);
        let (b, _rb) = budget.channel("p", 100);
        assert!(a.send(delivery(900)).await.is_ok());
        // Within its own stream's bound, but over the principal's.
        assert!(b.send(delivery(900)).await.is_err());
        let (c, _rc) = budget.channel("q", 100);
        assert!(
            c.send(delivery(900)).await.is_ok(),
            "other principals are unaffected"
        );
    }
}
