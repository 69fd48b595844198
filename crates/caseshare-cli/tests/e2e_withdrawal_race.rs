//! Withdrawal race, end to end over real gRPC: many deliveries covered by
//! one consent are pending for a subscriber when the consent is withdrawn.
//! After `WithdrawConsent` returns, nothing it covers may leave the broker,
//! and every delivery stopped by it must be audited.
//!
//! "In flight" is judged by the audit log, whose order is the writer's
//! order: a delivery of the withdrawn child that the subscriber reads after
//! the withdrawal returned is allowed only if its `EVENT_DELIVERED` entry
//! precedes the `CONSENT_WITHDRAWN` entry (it was decided and sent under the
//! consent, and was still on the wire). Every other delivery of that child
//! must have been stopped, with a `SHARE_DECIDED` / `WITHHELD` /
//! `consent_withdrawn` entry after the withdrawal.
//!
//! The end of the stream is found with a marker, never by waiting: an event
//! for another child under its own consent, published after the withdrawal.
//! The subscription delivers in publish order, so once the marker arrives
//! every earlier event of the withdrawn child has been either delivered or
//! stopped, and its audit entries are durable.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use caseshare_proto::v1 as pb;
use caseshare_testkit::*;

const EVENTS: usize = 200;
const SUBSCRIPTION: &str = "casework";
const AGREEMENT: &str = "isa-school-sc-consent";
const CONSENT_1: &str = "consent-child-1";
const CONSENT_2: &str = "consent-child-2";
const SOCIAL: &str = "la-social-care-c";

/// An agreement that requires consent, two children each with their own
/// consent, and a subscription with a long ack deadline (so nothing is
/// redelivered by timeout while the test runs).
async fn setup(b: &Broker) {
    b.register_sample_agencies().await;
    let mut a = agreement(AGREEMENT, "school-b", "kind:social_care", &["education.*"]);
    a.requires_consent = true;
    put_agreement(b, a).await;
    let mut school = b.client("school-b");
    for (id, child) in [(CONSENT_1, CHILD_1), (CONSENT_2, CHILD_2)] {
        school
            .consent
            .record_consent(pb::ConsentRecord {
                consent_id: id.into(),
                nhs_number: child.into(),
                given_by: pb::GivenBy::Parent as i32,
                purposes: vec![pb::Purpose::EarlyHelp as i32],
                recipients: vec![SOCIAL.into()],
                event_types: vec!["education.*".into()],
                ..Default::default()
            })
            .await
            .unwrap();
    }
    b.client(SOCIAL)
        .subscriber
        .create_subscription(pb::Subscription {
            name: SUBSCRIPTION.into(),
            ack_deadline: Some(prost_types::Duration {
                seconds: 600,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Publishes `EVENTS` events for CHILD_1 on one pipelined stream; checks
/// every decision relied on CONSENT_1; returns sequence → event id.
async fn publish_many(b: &Broker) -> BTreeMap<u64, String> {
    let mut school = b.client("school-b");
    let (tx, rx) = tokio::sync::mpsc::channel(EVENTS);
    let mut responses = school
        .publisher
        .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for i in 0..EVENTS {
        tx.send(publish_request(attendance_event(
            &format!("child1-{i:03}"),
            CHILD_1,
        )))
        .await
        .unwrap();
    }
    drop(tx);
    let mut out = BTreeMap::new();
    while let Some(r) = responses.message().await.unwrap() {
        assert_eq!(r.decisions.len(), 1, "{r:?}");
        let d = &r.decisions[0];
        assert_eq!(
            (
                d.agency_id.as_str(),
                d.decision,
                d.reason.as_str(),
                d.agreement_id.as_str(),
                d.consent_id.as_str()
            ),
            (
                SOCIAL,
                pb::Decision::Shared as i32,
                "consent",
                AGREEMENT,
                CONSENT_1
            ),
            "{}",
            r.event_id
        );
        out.insert(r.sequence, r.event_id);
    }
    assert_eq!(out.len(), EVENTS);
    out
}

async fn withdraw(b: &Broker) -> pb::ConsentRecord {
    b.client("school-b")
        .consent
        .withdraw_consent(pb::WithdrawConsentRequest {
            consent_id: CONSENT_1.into(),
            reason: "parent withdrew consent".into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Publishes the marker (CHILD_2, shared under CONSENT_2).
async fn publish_marker(b: &Broker) -> pb::PublishResponse {
    let r = b
        .client("school-b")
        .publisher
        .publish(publish_request(attendance_event("marker", CHILD_2)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.decisions.len(), 1);
    assert_eq!(r.decisions[0].decision, pb::Decision::Shared as i32);
    assert_eq!(r.decisions[0].consent_id, CONSENT_2);
    r
}

/// What the audit log says about the withdrawn child's deliveries.
struct Audit {
    withdrawn_at: u64,
    /// delivery id → index of its EVENT_DELIVERED entry (CHILD_1's events).
    delivered: BTreeMap<String, u64>,
    /// sequence → indexes of SHARE_DECIDED WITHHELD consent_withdrawn
    /// entries written when a delivery was stopped.
    stopped: BTreeMap<u64, Vec<u64>>,
}

fn audit(entries: &[pb::AuditEntry], child1: &BTreeMap<u64, String>) -> Audit {
    let withdrawals: Vec<&pb::AuditEntry> = entries
        .iter()
        .filter(|e| e.kind == pb::EntryKind::ConsentWithdrawn as i32)
        .collect();
    assert_eq!(withdrawals.len(), 1);
    assert_eq!(withdrawals[0].consent_id, CONSENT_1);
    let withdrawn_at = withdrawals[0].index;
    let mut delivered = BTreeMap::new();
    let mut stopped: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for e in entries {
        if !child1.contains_key(&e.sequence) {
            continue;
        }
        assert_eq!(e.event_id, child1[&e.sequence], "entry {}", e.index);
        if e.kind == pb::EntryKind::EventDelivered as i32 {
            assert_eq!(e.consent_id, CONSENT_1, "entry {}", e.index);
            assert_eq!(e.recipient_agency, SOCIAL);
            assert!(
                delivered.insert(e.delivery_id.clone(), e.index).is_none(),
                "one EVENT_DELIVERED per delivery id"
            );
        }
        // Stop decisions are the broker's (actor `system`), carry the
        // subscription and delivery id; publish-time decisions carry neither.
        if e.kind == pb::EntryKind::ShareDecided as i32 && !e.delivery_id.is_empty() {
            assert_eq!(e.actor, "system", "entry {}", e.index);
            assert_eq!(e.recipient_agency, SOCIAL);
            assert_eq!(e.subscription, SUBSCRIPTION);
            assert_eq!(
                e.decision,
                pb::Decision::Withheld as i32,
                "entry {}",
                e.index
            );
            assert_eq!(e.reason, "consent_withdrawn", "entry {}", e.index);
            assert_eq!(e.agreement_id, AGREEMENT);
            assert!(e.consent_id.is_empty());
            assert_eq!(
                e.delivery_id.split('-').nth(1),
                Some(e.sequence.to_string().as_str()),
                "{}",
                e.delivery_id
            );
            stopped.entry(e.sequence).or_default().push(e.index);
        }
    }
    Audit {
        withdrawn_at,
        delivered,
        stopped,
    }
}

/// How long the subscriber waits for its next delivery before concluding
/// that the stream has stalled.
const STALL: Duration = Duration::from_secs(20);

/// Reads (acking each) until the marker. `Err` if no delivery came for
/// `STALL`; `received` then holds what was read.
async fn read_until_marker(
    sub: &mut Subscription,
    received: &mut Vec<(pb::Delivery, bool)>,
    after: impl Fn() -> bool,
) -> Result<(), ()> {
    loop {
        let next = tokio::time::timeout(STALL, tokio_stream::StreamExt::next(&mut sub.rx)).await;
        let Ok(next) = next else {
            return Err(());
        };
        let d = next
            .expect("stream open")
            .expect("a delivery, not an error");
        let is_marker = d.event.as_ref().unwrap().event_id == "marker";
        sub.ack(vec![d.delivery_id.clone()]).await;
        received.push((d, after()));
        if is_marker {
            return Ok(());
        }
    }
}

/// What the broker had done when the stream stalled, as a failure message.
async fn stalled(
    b: &Broker,
    child1: &BTreeMap<u64, String>,
    received: &[(pb::Delivery, bool)],
    marker: &pb::PublishResponse,
) -> String {
    let entries = b.audit_entries().await;
    let a = audit(&entries, child1);
    let got: BTreeSet<u64> = received.iter().map(|(d, _)| d.sequence).collect();
    let open: Vec<u64> = child1
        .keys()
        .filter(|s| !got.contains(s) && !a.stopped.contains_key(s))
        .copied()
        .collect();
    format!(
        "the marker (sequence {}) never arrived: no delivery for {} s after WithdrawConsent \
         returned (CONSENT_WITHDRAWN at audit index {}). The subscriber had read {} deliveries \
         ({} after the withdrawal); the broker had stopped {} deliveries of the withdrawn child \
         (stop entries up to index {:?}) and had neither delivered nor stopped {} of its events \
         (sequences {:?} to {:?}); the audit log has {} entries.",
        marker.sequence,
        STALL.as_secs(),
        a.withdrawn_at,
        received.len(),
        received.iter().filter(|(_, after)| *after).count(),
        a.stopped.len(),
        a.stopped.values().flatten().max(),
        open.len(),
        open.first(),
        open.last(),
        entries.len()
    )
}

/// The invariants both tests check once the marker has arrived.
///
/// `received`: every delivery the subscriber read, with whether it was read
/// after WithdrawConsent returned. `acked`: the CHILD_1 sequences acked.
fn check(
    entries: &[pb::AuditEntry],
    child1: &BTreeMap<u64, String>,
    received: &[(pb::Delivery, bool)],
    acked: &BTreeSet<u64>,
    marker: &pb::PublishResponse,
) -> (usize, usize) {
    let a = audit(entries, child1);
    let w = a.withdrawn_at;

    // Nothing of the withdrawn child was recorded as delivered after the
    // withdrawal.
    for (id, index) in &a.delivered {
        assert!(
            *index < w,
            "delivery {id} of the withdrawn child recorded at audit index {index}, \
             after CONSENT_WITHDRAWN at {w}"
        );
    }

    // Everything read after WithdrawConsent returned is the marker or a
    // delivery of the withdrawn child that was already on its way.
    let last = &received.last().unwrap().0;
    assert_eq!(
        last.sequence, marker.sequence,
        "the stream ends at the marker"
    );
    let mut late = 0;
    for (d, after) in received {
        if d.sequence == marker.sequence {
            assert!(*after);
            continue;
        }
        let event = d.event.as_ref().unwrap();
        assert_eq!(event.child.as_ref().unwrap().nhs_number, CHILD_1);
        assert_eq!(child1.get(&d.sequence), Some(&event.event_id));
        assert_eq!(d.decision.as_ref().unwrap().consent_id, CONSENT_1);
        let index = a.delivered.get(&d.delivery_id).unwrap_or_else(|| {
            panic!(
                "received delivery {} (sequence {}, read {} the withdrawal) has no EVENT_DELIVERED entry",
                d.delivery_id,
                d.sequence,
                if *after { "after" } else { "before" }
            )
        });
        assert!(
            *index < w,
            "delivery {} read {} WithdrawConsent returned was recorded at {index}, \
             not before CONSENT_WITHDRAWN at {w}",
            d.delivery_id,
            if *after { "after" } else { "before" }
        );
        if *after {
            late += 1;
        }
    }
    // Every delivery the broker recorded was received (none lost on the way).
    let received_ids: BTreeSet<&str> = received
        .iter()
        .map(|(d, _)| d.delivery_id.as_str())
        .collect();
    for id in a.delivered.keys() {
        assert!(
            received_ids.contains(id.as_str()),
            "{id} recorded as delivered, never received"
        );
    }

    // Every CHILD_1 event that was not acknowledged was stopped, once per
    // attempt, after the withdrawal, and none that was acknowledged was.
    for (seq, event_id) in child1 {
        match (acked.contains(seq), a.stopped.get(seq)) {
            (true, None) => {}
            (true, Some(ix)) => panic!("{event_id} was acked yet stopped at {ix:?}"),
            (false, None) => panic!(
                "{event_id} (sequence {seq}) was neither acknowledged nor stopped: \
                 no SHARE_DECIDED WITHHELD consent_withdrawn entry"
            ),
            (false, Some(ix)) => {
                assert_eq!(ix.len(), 1, "{event_id}: one stop entry, got {ix:?}");
                assert!(
                    ix[0] > w,
                    "{event_id} stopped at {} before the withdrawal",
                    ix[0]
                );
            }
        }
    }
    let stopped = a.stopped.len();
    assert_eq!(stopped + acked.len(), EVENTS);
    (late, stopped)
}

/// The subscriber is slow: it reads a few deliveries of a small window and
/// stops acking. The consent is withdrawn; then the subscriber acks what it
/// has, nacks one (so its redelivery must be stopped too) and reads on until
/// the marker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_gets_nothing_covered_by_a_withdrawn_consent() {
    const WINDOW: u32 = 5;
    const READ_BEFORE: usize = 3;
    let b = Broker::start();
    setup(&b).await;
    let mut sub = Subscription::open(&b, SOCIAL, SUBSCRIPTION, WINDOW).await;
    let child1 = publish_many(&b).await;

    let mut received = Vec::new();
    for _ in 0..READ_BEFORE {
        let d = sub.next().await;
        assert_eq!(
            d.event.as_ref().unwrap().child.as_ref().unwrap().nhs_number,
            CHILD_1
        );
        received.push((d, false));
    }

    let withdrawn = withdraw(&b).await;
    assert!(withdrawn.withdrawn_at.is_some());
    let marker = publish_marker(&b).await;

    // Ack all but the first of those read before; nack the first.
    let mut acked = BTreeSet::new();
    let ids: Vec<String> = received[1..]
        .iter()
        .map(|(d, _)| {
            acked.insert(d.sequence);
            d.delivery_id.clone()
        })
        .collect();
    sub.ack(ids).await;
    sub.tx
        .send(pb::SubscribeRequest {
            nack: Some(pb::AckIds {
                delivery_ids: vec![received[0].0.delivery_id.clone()],
            }),
            ..Default::default()
        })
        .await
        .unwrap();

    let before = received.len();
    if read_until_marker(&mut sub, &mut received, || true)
        .await
        .is_err()
    {
        panic!("{}", stalled(&b, &child1, &received, &marker).await);
    }
    for (d, _) in &received[before..] {
        if d.sequence != marker.sequence {
            acked.insert(d.sequence);
        }
    }
    // The nacked delivery is retried after its backoff, which may come after
    // the marker (retries do not hold back newer events): wait, bounded,
    // until the broker reports it stopped.
    let nacked_id = received[0].0.event.as_ref().unwrap().event_id.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let st = b
            .client("school-b")
            .publisher
            .get_event_status(pb::GetEventStatusRequest {
                event_id: nacked_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if st
            .recipients
            .iter()
            .any(|r| r.state == pb::recipient_status::State::Stopped as i32)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the nacked delivery was never stopped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let entries = b.audit_entries().await;
    let (late, stopped) = check(&entries, &child1, &received, &acked, &marker);
    // The window was full when the consent was withdrawn: what was still on
    // the wire arrives; nothing more does.
    assert!(
        late <= WINDOW as usize - READ_BEFORE,
        "{late} deliveries of the withdrawn child read after the withdrawal"
    );
    assert!(stopped >= EVENTS - WINDOW as usize);
    // The nacked delivery was stopped on its second attempt.
    let nacked = received[0].0.sequence;
    assert!(!acked.contains(&nacked));
    let stop = entries
        .iter()
        .find(|e| {
            e.kind == pb::EntryKind::ShareDecided as i32
                && e.sequence == nacked
                && !e.delivery_id.is_empty()
        })
        .unwrap();
    assert!(
        stop.delivery_id.ends_with(&format!("-{nacked}-2")),
        "{}",
        stop.delivery_id
    );
}

/// A subscriber consuming as fast as it can, with deliveries being decided
/// while the consent is withdrawn: whatever interleaving the broker chose,
/// nothing of the withdrawn child is recorded as delivered after the
/// withdrawal, everything read after it returned was already on its way,
/// and every event not delivered has its stop entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_subscriber_gets_nothing_covered_by_a_withdrawn_consent() {
    const WINDOW: u32 = 2;
    const WITHDRAW_AFTER: usize = 20;
    let b = Broker::start();
    setup(&b).await;
    let child1 = publish_many(&b).await;

    let mut sub = Subscription::open(&b, SOCIAL, SUBSCRIPTION, WINDOW).await;
    let withdrawn_flag = Arc::new(AtomicBool::new(false));
    let (reached_tx, reached_rx) = tokio::sync::oneshot::channel();
    let flag = withdrawn_flag.clone();
    let consumer = tokio::spawn(async move {
        let mut received = Vec::new();
        // The first deliveries; then the test withdraws the consent while
        // the subscriber keeps consuming.
        for _ in 0..WITHDRAW_AFTER {
            let d = sub.next().await;
            sub.ack(vec![d.delivery_id.clone()]).await;
            received.push((d, flag.load(Ordering::SeqCst)));
        }
        let _ = reached_tx.send(());
        let done = read_until_marker(&mut sub, &mut received, || flag.load(Ordering::SeqCst)).await;
        (received, done)
    });

    tokio::time::timeout(Duration::from_secs(60), reached_rx)
        .await
        .expect("the subscriber reads its first deliveries")
        .unwrap();
    let withdrawn = withdraw(&b).await;
    withdrawn_flag.store(true, Ordering::SeqCst);
    assert!(withdrawn.withdrawn_at.is_some());
    let marker = publish_marker(&b).await;
    let (received, done) = consumer.await.unwrap();
    if done.is_err() {
        panic!("{}", stalled(&b, &child1, &received, &marker).await);
    }

    let acked: BTreeSet<u64> = received
        .iter()
        .map(|(d, _)| d.sequence)
        .filter(|s| *s != marker.sequence)
        .collect();
    let entries = b.audit_entries().await;
    let (late, stopped) = check(&entries, &child1, &received, &acked, &marker);
    println!(
        "racing subscriber: {} delivered before the withdrawal ({} of them read after it returned), {} stopped",
        acked.len(),
        late,
        stopped
    );
    assert!(
        stopped > 0,
        "the withdrawal came after every delivery: the race was not exercised"
    );
}
