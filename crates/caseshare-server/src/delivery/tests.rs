//! Tests of `pick` against a real store whose reads can be held at a
//! barrier: while the read is held the subscription's lock is free, and
//! what changed meanwhile (an ack, a seek, a delete) is respected when the
//! pick is recorded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use caseshare_core::pb;
use caseshare_core::time::Micros;
use caseshare_state::delivery::{Backoff, Input, Phase};
use caseshare_state::{Batch, BrokerState, StoredEvent};
use caseshare_store::Storage;
use prost::Message;
use tokio::sync::watch;

use super::pick::{LogReader, Pick};
use super::registry::{Clock, SubInner, SubRuntime, loaded, policy};
use crate::gated_store::{At, Gated, Held};

const HEAD: u64 = 6;

/// Events 1..=HEAD from agency `a`, shared with `b`; odd ones about one
/// child, even ones about another.
fn event(seq: u64) -> StoredEvent {
    let nhs = if seq % 2 == 1 {
        "9434765919"
    } else {
        "9434765870"
    };
    let case = pb::CaseEvent {
        event_id: format!("e{seq}"),
        child: Some(pb::ChildRef {
            nhs_number: nhs.into(),
            ..Default::default()
        }),
        purpose: pb::Purpose::Safeguarding as i32,
        ..Default::default()
    };
    StoredEvent {
        sequence: seq,
        source_agency: "a".into(),
        event_type: "case.note".into(),
        event: case.encode_to_vec(),
        event_id: format!("e{seq}"),
        decisions: vec![pb::SharingDecision {
            agency_id: "b".into(),
            decision: pb::Decision::Shared as i32,
            ..Default::default()
        }],
        ..Default::default()
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<Gated>,
    reader: LogReader,
    clock: Clock,
    _head: watch::Sender<u64>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Gated::open(dir.path()));
    store
        .commit(&Batch {
            events: (1..=HEAD).map(event).collect(),
            ..Batch::default()
        })
        .unwrap();
    let (head_tx, head) = watch::channel(HEAD);
    let state = Arc::new(RwLock::new(BrokerState::default()));
    let as_storage: Arc<dyn Storage> = store.clone();
    Fixture {
        _dir: dir,
        reader: LogReader::new(as_storage, state, head),
        store,
        clock: Clock::start(),
        _head: head_tx,
    }
}

fn runtime(
    ordered: bool,
    cursor: u64,
    pending: BTreeMap<u64, super::registry::Pending>,
) -> Arc<SubRuntime> {
    let sub = pb::Subscription {
        name: "s".into(),
        agency_id: "b".into(),
        event_types: vec!["case.note".into()],
        ordered,
        max_attempts: 3,
        ..Default::default()
    };
    let backoff = Backoff {
        base: Duration::from_millis(100),
        cap: Duration::from_secs(1),
    };
    let inner = SubInner::new(cursor, pending, BTreeSet::new(), policy(&sub, backoff));
    Arc::new(SubRuntime::new(1, sub, inner))
}

/// Arms the gate, starts a pick of `want` for stream 7 and returns once
/// its read is held at the gate.
async fn pick_held(
    f: &Fixture,
    rt: &Arc<SubRuntime>,
    want: usize,
) -> (Held, tokio::task::JoinHandle<Vec<Pick>>) {
    let held = f.store.arm(At::EventRead);
    let (reader, rt2, clock) = (f.reader.clone(), rt.clone(), f.clock);
    let task = tokio::spawn(async move { reader.pick(&rt2, 7, want, &clock).await.unwrap() });
    let held = held.entered_async("the pick reached the store").await;
    (held, task)
}

async fn release(held: Held, task: tokio::task::JoinHandle<Vec<Pick>>) -> Vec<Pick> {
    held.release();
    task.await.unwrap()
}

fn sequences(picks: &[Pick]) -> Vec<u64> {
    picks.iter().map(|p| p.sequence).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_is_free_while_the_log_is_read() {
    let f = fixture();
    let rt = runtime(false, 1, BTreeMap::new());
    let (gate, task) = pick_held(&f, &rt, 3).await;
    // The read is held inside the store: the lock must be free, and
    // another stream's bookkeeping goes on meanwhile.
    assert!(
        !rt.is_locked(),
        "pick held the subscription's lock across a disk read"
    );
    {
        let inner = rt.lock();
        assert_eq!(
            inner.cursor, 1,
            "the cursor moves only when the read is recorded"
        );
        assert_eq!(
            inner.scan_lease,
            Some(7),
            "the reading stream holds the scan lease"
        );
    }
    let picks = release(gate, task).await;
    assert_eq!(sequences(&picks), [1, 2, 3]);
    assert!(picks.iter().all(|p| p.attempt == 1));
    let inner = rt.lock();
    assert_eq!(inner.cursor, 4);
    assert_eq!(inner.scan_lease, None, "the lease is given back");
    for s in 1..=3 {
        assert_eq!(
            inner.get(s).unwrap().state().phase,
            Phase::Picked { stream: 7 }
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stream_does_not_scan_while_the_first_reads() {
    let f = fixture();
    let rt = runtime(false, 1, BTreeMap::new());
    let (gate, task) = pick_held(&f, &rt, 2).await;
    // Stream 8 finds the lease taken: it takes nothing (and reads nothing),
    // and asks to be woken.
    let other = f.reader.pick(&rt, 8, 5, &f.clock).await.unwrap();
    assert!(other.is_empty());
    assert!(rt.lock().scan_wanted);
    let notified = rt.notify.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    assert_eq!(sequences(&release(gate, task).await), [1, 2]);
    tokio::time::timeout(Duration::from_secs(20), notified)
        .await
        .expect("the waiting stream is woken when the lease is given back");
    // Now stream 8 reads on from where stream 7 stopped.
    assert_eq!(
        sequences(&f.reader.pick(&rt, 8, 5, &f.clock).await.unwrap()),
        [3, 4, 5, 6]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seek_during_the_read_throws_the_scan_away() {
    let f = fixture();
    let rt = runtime(false, 3, BTreeMap::new());
    let (gate, task) = pick_held(&f, &rt, 4).await;
    rt.lock().seek(1, f.clock.now());
    let picks = release(gate, task).await;
    assert!(
        picks.is_empty(),
        "events read before the seek: {:?}",
        sequences(&picks)
    );
    {
        let inner = rt.lock();
        assert_eq!(inner.cursor, 1, "the seek's cursor stands");
        assert!(inner.get(3).is_none());
    }
    // The next pick reads from the seek's target.
    assert_eq!(
        sequences(&f.reader.pick(&rt, 7, 2, &f.clock).await.unwrap()),
        [1, 2]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owed_delivery_acked_during_its_read_is_not_sent() {
    let f = fixture();
    let now = f.clock.now();
    let pending = BTreeMap::from([
        (2, loaded(1, Micros(5), now)),
        (4, loaded(2, Micros(5), now)),
    ]);
    // The cursor is past the head: only the owed ones are read.
    let rt = runtime(false, HEAD + 1, pending);
    let (gate, task) = pick_held(&f, &rt, 5).await;
    {
        let mut inner = rt.lock();
        assert_eq!(
            inner.get(2).unwrap().state().phase,
            Phase::Picked { stream: 7 }
        );
        // A late ack (attempt 1's id) arrives while the event is read.
        let applied = inner
            .apply(2, Input::Ack { attempt: 1 }, f.clock.now())
            .unwrap();
        assert!(applied.settled.is_some());
    }
    let picks = release(gate, task).await;
    assert_eq!(sequences(&picks), [4], "the acked delivery is not sent");
    assert_eq!(picks[0].attempt, 3);
    let inner = rt.lock();
    assert!(inner.get(2).is_none());
    let four = inner.get(4).unwrap();
    assert_eq!(
        four.event_id, "e4",
        "what a loaded delivery lacked is filled in"
    );
    assert_eq!(four.nhs_number, "9434765870");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_during_the_read_takes_nothing() {
    let f = fixture();
    let rt = runtime(true, 1, BTreeMap::new());
    let (gate, task) = pick_held(&f, &rt, 4).await;
    {
        let mut inner = rt.lock();
        inner.deleted = true;
        inner.epoch += 1;
        inner.drop_from(0, f.clock.now());
    }
    assert!(release(gate, task).await.is_empty());
    assert_eq!(rt.lock().floor(), 1, "nothing was filed or moved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_subscription_defers_a_busy_childs_later_events() {
    let f = fixture();
    let rt = runtime(true, 1, BTreeMap::new());
    // One per child at a time: 1 (child A) and 2 (child B) go; 3..6 wait.
    assert_eq!(
        sequences(&f.reader.pick(&rt, 7, 6, &f.clock).await.unwrap()),
        [1, 2]
    );
    assert_eq!(rt.lock().cursor, HEAD + 1);
    assert!(f.reader.pick(&rt, 7, 6, &f.clock).await.unwrap().is_empty());
    // Child A's delivery is acked: its next deferred event (3) is free.
    let now = f.clock.now();
    rt.lock().apply(1, Input::Ack { attempt: 1 }, now).unwrap();
    let picks = f.reader.pick(&rt, 7, 6, &f.clock).await.unwrap();
    assert_eq!(sequences(&picks), [3]);
    assert_eq!(rt.lock().floor(), 2);
}

/// The backlog metric counts held deliveries and unread events after the
/// cursor, minus those known settled ahead of it.
#[test]
fn backlog_counts_held_and_unread_events() {
    let now = Micros(0);
    let mut pending = BTreeMap::new();
    pending.insert(3, loaded(1, Micros(0), now));
    let rt = runtime(false, 5, pending);
    let mut inner = rt.lock();
    // Held: 3; unread: 5..=9.
    assert_eq!(inner.backlog(9), 6);
    // Nothing after the cursor yet.
    assert_eq!(inner.backlog(4), 1);
    inner.settled_ahead.insert(6);
    assert_eq!(inner.backlog(9), 5);
    inner.insert_fresh(5, "e".into(), "n".into());
    inner.cursor = 6;
    assert_eq!(inner.backlog(9), 5);
}

type Queue = (
    tokio::sync::mpsc::UnboundedSender<super::sender::InFlight>,
    tokio::sync::mpsc::UnboundedReceiver<super::sender::InFlight>,
);

/// A tailing registry, a runtime with its cursor at `cursor`, and a
/// stream queue.
fn tailing(ordered: bool, cursor: u64) -> (Arc<super::Tailing>, Arc<SubRuntime>, Queue) {
    let tail = super::Tailing::new(Arc::new(RwLock::new(BrokerState::default())));
    let rt = runtime(ordered, cursor, BTreeMap::new());
    (tail, rt, tokio::sync::mpsc::unbounded_channel())
}

/// The sequences of each `Op::Deliver` the tail answered with.
fn offered(tail: &super::Tailing, events: &[StoredEvent]) -> Vec<Vec<u64>> {
    use crate::writer::{Op, Tail};
    tail.offer(events)
        .into_iter()
        .map(|op| match op {
            Op::Deliver { intents, .. } => intents.iter().map(|i| i.sequence).collect(),
            _ => panic!("the tail answers only with deliveries"),
        })
        .collect()
}

#[tokio::test]
async fn a_parked_stream_is_fed_the_new_events_its_window_has_room_for() {
    let (tail, rt, (tx, mut rx)) = tailing(false, 1);
    tail.park(&rt, 7, 3, &tx);
    let events: Vec<StoredEvent> = (1..=HEAD).map(event).collect();
    assert_eq!(offered(&tail, &events), [vec![1, 2, 3]]);
    let window = rx
        .try_recv()
        .expect("the window went to the stream's sender");
    assert_eq!(sequences(&window.picks), [1, 2, 3]);
    assert_eq!(window.picks[0].decoded.event_id, "e1");
    let inner = rt.lock();
    assert_eq!(inner.cursor, 4, "the cursor stops where the room ran out");
    for s in 1..=3 {
        assert_eq!(
            inner.get(s).unwrap().state().phase,
            Phase::Picked { stream: 7 }
        );
    }
    assert!(inner.get(4).is_none());
    drop(inner);
    // The room is used up: the next batch is left to the stream's scan.
    assert!(offered(&tail, &events[3..]).is_empty());
    assert_eq!(rt.lock().cursor, 4);
    // Waking, the stream learns how many went out for it (activity).
    assert_eq!(tail.unpark(&rt, 7), 3);
    assert_eq!(tail.unpark(&rt, 7), 0, "unparked once");
}

#[tokio::test]
async fn nothing_is_fed_where_the_stream_or_the_subscription_is_not_at_the_head() {
    // (case, cursor, first event offered)
    let cases: [(&str, u64, u64); 7] = [
        ("not parked", 1, 1),
        ("cursor behind the batch (a backlog to scan first)", 1, 3),
        ("another stream holds the scan lease", 1, 1),
        ("subscription deleted", 1, 1),
        ("a withdrawal waits for the send gate", 1, 1),
        ("the stream's sender has ended", 1, 1),
        ("unparked by its own stream", 1, 1),
    ];
    for (case, cursor, first) in cases {
        let (tail, rt, (tx, rx)) = tailing(false, cursor);
        if case != "not parked" {
            tail.park(&rt, 7, 5, &tx);
        }
        // Another stream's unpark leaves stream 7 parked.
        tail.unpark(&rt, 8);
        let _held = match case {
            "another stream holds the scan lease" => {
                rt.lock().scan_lease = Some(8);
                None
            }
            "subscription deleted" => {
                rt.lock().deleted = true;
                None
            }
            "a withdrawal waits for the send gate" => {
                Some(tail.send_gate.clone().try_write_owned().unwrap())
            }
            "the stream's sender has ended" => {
                drop(rx);
                None
            }
            "unparked by its own stream" => {
                tail.unpark(&rt, 7);
                None
            }
            _ => None,
        };
        let events: Vec<StoredEvent> = (first..=HEAD).map(event).collect();
        assert!(offered(&tail, &events).is_empty(), "{case}: fed");
        let inner = rt.lock();
        assert_eq!(inner.cursor, cursor, "{case}: the cursor moved");
        assert!(
            (1..=HEAD).all(|s| inner.get(s).is_none()),
            "{case}: a delivery was filed"
        );
    }
}

#[tokio::test]
async fn an_ordered_subscription_is_fed_one_event_per_child() {
    let (tail, rt, (tx, mut rx)) = tailing(true, 1);
    tail.park(&rt, 7, 6, &tx);
    let events: Vec<StoredEvent> = (1..=HEAD).map(event).collect();
    assert_eq!(offered(&tail, &events), [vec![1, 2]]);
    assert_eq!(sequences(&rx.try_recv().unwrap().picks), [1, 2]);
    let inner = rt.lock();
    assert_eq!(
        inner.cursor,
        HEAD + 1,
        "the later ones are examined, deferred"
    );
    assert_eq!(inner.deferred().count(), 4);
}

#[tokio::test]
async fn events_not_for_the_subscription_move_its_cursor_and_are_not_fed() {
    let (tail, rt, (tx, mut rx)) = tailing(false, 1);
    tail.park(&rt, 7, 5, &tx);
    let mut events: Vec<StoredEvent> = (1..=4).map(event).collect();
    // 1: published by the subscriber's own agency; 2: another event type;
    // 3: withheld from it at publish.
    events[0].source_agency = "b".into();
    events[1].event_type = "other.type".into();
    events[2].decisions[0].decision = pb::Decision::Withheld as i32;
    assert_eq!(offered(&tail, &events), [vec![4]]);
    assert_eq!(sequences(&rx.try_recv().unwrap().picks), [4]);
    assert_eq!(rt.lock().cursor, 5);
}
