//! Delivery guarantees end to end: redelivery after the ack deadline with
//! backoff, dead letters and their replay, nacks, ordering per child on
//! ordered subscriptions, idempotent publish across a restart, Seek,
//! sender-side status, retraction and correction notices, expiry, the
//! background removal of a deleted subscription's delivery records, and a
//! stream kept open while it is sent deliveries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};

use caseshare_proto::v1 as pb;
use caseshare_testkit::*;

const FAST: &[(&str, &str)] = &[
    ("CASESHARE_BACKOFF_BASE_MS", "50"),
    ("CASESHARE_BACKOFF_CAP_MS", "200"),
];

async fn setup(b: &Broker, sub: pb::Subscription) {
    b.register_sample_agencies().await;
    put_agreement(
        b,
        agreement(
            "isa-edu-sc",
            "school-b",
            "kind:social_care",
            &["education.*"],
        ),
    )
    .await;
    b.client("la-social-care-c")
        .subscriber
        .create_subscription(sub)
        .await
        .unwrap();
}

fn sub(name: &str) -> pb::Subscription {
    pb::Subscription {
        name: name.into(),
        ack_deadline: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
        max_attempts: 3,
        ..Default::default()
    }
}

async fn publish(b: &Broker, id: &str, nhs: &str) -> pb::PublishResponse {
    b.client("school-b")
        .publisher
        .publish(publish_request(attendance_event(id, nhs)))
        .await
        .unwrap()
        .into_inner()
}

async fn status(b: &Broker, id: &str) -> pb::EventStatus {
    b.client("school-b")
        .publisher
        .get_event_status(pb::GetEventStatusRequest {
            event_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

fn state_of(s: &pb::EventStatus, agency: &str) -> i32 {
    s.recipients
        .iter()
        .find(|r| r.agency_id == agency)
        .map(|r| r.state)
        .unwrap()
}

#[tokio::test]
async fn unacked_deliveries_are_redelivered_then_dead_lettered_and_replayed() {
    let b = Broker::start_with(FAST);
    setup(&b, sub("main")).await;
    publish(&b, "dl-1", CHILD_1).await;
    // A window of one: the marker below can only arrive once dl-1 is settled.
    let mut s = Subscription::open(&b, "la-social-care-c", "main", 1).await;
    // Never acknowledged: attempts 1, 2, 3 each after the ack deadline.
    let mut attempts = Vec::new();
    let mut at = Vec::new();
    for _ in 0..3 {
        let d = s.next().await;
        assert_eq!(d.event.as_ref().unwrap().event_id, "dl-1");
        attempts.push(d.attempt);
        at.push(std::time::Instant::now());
    }
    assert_eq!(attempts, [1, 2, 3]);
    assert!(
        at[1] - at[0] >= std::time::Duration::from_secs(1),
        "redelivered only after the ack deadline"
    );
    // A later event arrives next: dl-1 was dead-lettered, not sent again.
    let marker = publish(&b, "after", CHILD_2).await;
    let d = s.next().await;
    assert_eq!(d.sequence, marker.sequence);
    s.ack(vec![d.delivery_id]).await;

    let mut c = b.client("la-social-care-c");
    let dead = c
        .subscriber
        .list_dead_letters(pb::ListDeadLettersRequest {
            subscription: "main".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dead.dead_letters.len(), 1);
    assert_eq!(dead.dead_letters[0].event_id, "dl-1");
    assert_eq!(dead.dead_letters[0].attempts, 3);
    assert_eq!(
        state_of(&status(&b, "dl-1").await, "la-social-care-c"),
        pb::recipient_status::State::DeadLettered as i32
    );
    let entries = b.audit_entries().await;
    assert!(
        entries
            .iter()
            .any(|e| e.kind == pb::EntryKind::DeadLettered as i32 && e.event_id == "dl-1")
    );

    let replayed = c
        .subscriber
        .replay_dead_letters(pb::ReplayDeadLettersRequest {
            subscription: "main".into(),
            delivery_ids: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replayed.replayed, 1);
    let d = s.next().await;
    assert_eq!(d.event.as_ref().unwrap().event_id, "dl-1");
    assert_eq!(
        d.attempt, 1,
        "a replayed dead letter starts its attempts again"
    );
    s.ack(vec![d.delivery_id.clone()]).await;
    // The ack is settled before the marker below is delivered (same stream).
    let marker = publish(&b, "after-2", CHILD_2).await;
    let m = s.next().await;
    assert_eq!(m.sequence, marker.sequence);
    assert_eq!(
        state_of(&status(&b, "dl-1").await, "la-social-care-c"),
        pb::recipient_status::State::Acked as i32
    );
    let dead = c
        .subscriber
        .list_dead_letters(pb::ListDeadLettersRequest {
            subscription: "main".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(dead.dead_letters.is_empty());
}

#[tokio::test]
async fn nack_redelivers_with_the_next_attempt() {
    let b = Broker::start_with(FAST);
    let mut long = sub("main");
    long.ack_deadline = Some(prost_types::Duration {
        seconds: 600,
        nanos: 0,
    });
    long.max_attempts = 10;
    setup(&b, long).await;
    publish(&b, "n-1", CHILD_1).await;
    let mut s = Subscription::open(&b, "la-social-care-c", "main", 10).await;
    let d = s.next().await;
    assert_eq!(d.attempt, 1);
    s.tx.send(pb::SubscribeRequest {
        nack: Some(pb::AckIds {
            delivery_ids: vec![d.delivery_id],
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let d = s.next().await;
    assert_eq!(
        (d.event.as_ref().unwrap().event_id.as_str(), d.attempt),
        ("n-1", 2)
    );
    let n = b
        .client("la-social-care-c")
        .subscriber
        .nack(pb::NackRequest {
            subscription: "main".into(),
            delivery_ids: vec![d.delivery_id],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(n.nacked, 1);
    let d = s.next().await;
    assert_eq!(d.attempt, 3);
}

#[tokio::test]
async fn ordered_subscription_keeps_each_childs_order_without_blocking_others() {
    let b = Broker::start();
    let mut ordered = sub("ordered");
    ordered.ordered = true;
    ordered.ack_deadline = Some(prost_types::Duration {
        seconds: 600,
        nanos: 0,
    });
    setup(&b, ordered).await;
    let children = [CHILD_1, CHILD_2, "9000000009"];
    // Three publishers at once, interleaving children.
    let mut tasks = Vec::new();
    for p in 0..3 {
        let mut school = b.client("school-b");
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..20 {
                let child = children[(p + i) % 3];
                let r = school
                    .publisher
                    .publish(publish_request(attendance_event(
                        &format!("o-{p}-{i}"),
                        child,
                    )))
                    .await
                    .unwrap()
                    .into_inner();
                out.push((child.to_string(), r.sequence));
            }
            out
        }));
    }
    let mut published: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for t in tasks {
        for (child, seq) in t.await.unwrap() {
            published.entry(child).or_default().push(seq);
        }
    }
    for v in published.values_mut() {
        v.sort();
    }
    let mut s = Subscription::open(&b, "la-social-care-c", "ordered", 20).await;
    let mut received: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut in_flight: HashSet<String> = HashSet::new();
    // Hold child 1's first delivery unacked while the others flow.
    let mut held = None;
    let mut held_once = false;
    let mut total = 0;
    while total < 60 {
        let d = s.next().await;
        let child = d
            .event
            .as_ref()
            .unwrap()
            .child
            .as_ref()
            .unwrap()
            .nhs_number
            .clone();
        assert!(
            in_flight.insert(child.clone()),
            "two deliveries in flight for one child"
        );
        received.entry(child.clone()).or_default().push(d.sequence);
        total += 1;
        if child == CHILD_1 && !held_once {
            held_once = true;
            held = Some((child, d.delivery_id));
            continue;
        }
        in_flight.remove(&child);
        s.ack(vec![d.delivery_id]).await;
        let others_done = received
            .iter()
            .filter(|(c, _)| c.as_str() != CHILD_1)
            .map(|(_, v)| v.len())
            .sum::<usize>()
            == 40;
        if let (true, Some((child, id))) = (others_done, held.take_if(|_| others_done)) {
            // Every other child's events arrived while child 1 was blocked.
            assert_eq!(received[&child].len(), 1);
            in_flight.remove(&child);
            s.ack(vec![id]).await;
        }
    }
    assert_eq!(
        received, published,
        "each child's events arrive in publish order"
    );
}

#[tokio::test]
async fn idempotent_publish_survives_a_restart() {
    let mut b = Broker::start();
    setup(&b, sub("main")).await;
    let first = publish(&b, "idem-1", CHILD_1).await;
    assert!(!first.duplicate);
    b.kill9();
    b.restart();
    let again = publish(&b, "idem-1", CHILD_1).await;
    assert!(again.duplicate);
    assert_eq!(
        (again.sequence, again.audit_index),
        (first.sequence, first.audit_index)
    );
    assert_eq!(again.decisions, first.decisions);
    let marker = publish(&b, "idem-marker", CHILD_1).await;
    let mut s = Subscription::open(&b, "la-social-care-c", "main", 10).await;
    let d1 = s.next().await;
    let d2 = s.next().await;
    assert_eq!(
        (d1.sequence, d2.sequence),
        (first.sequence, marker.sequence),
        "delivered once"
    );
}

#[tokio::test]
async fn seek_redelivers_from_a_sequence_and_from_a_time() {
    let b = Broker::start();
    setup(&b, sub("main")).await;
    let mut seqs = Vec::new();
    for i in 0..4 {
        seqs.push(publish(&b, &format!("sk-{i}"), CHILD_1).await.sequence);
    }
    let mut s = Subscription::open(&b, "la-social-care-c", "main", 10).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(s.next().await.delivery_id);
    }
    b.client("la-social-care-c")
        .subscriber
        .ack(pb::AckRequest {
            subscription: "main".into(),
            delivery_ids: ids,
        })
        .await
        .unwrap();
    let mut c = b.client("la-social-care-c");
    let r = c
        .subscriber
        .seek(pb::SeekRequest {
            subscription: "main".into(),
            target: Some(pb::seek_request::Target::ToSequence(seqs[2])),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.next_sequence, seqs[2]);
    let a = s.next().await;
    let bb = s.next().await;
    assert_eq!((a.sequence, bb.sequence), (seqs[2], seqs[3]));
    s.ack(vec![a.delivery_id, bb.delivery_id]).await;
    // To a time before everything: all four again.
    let r = c
        .subscriber
        .seek(pb::SeekRequest {
            subscription: "main".into(),
            target: Some(pb::seek_request::Target::ToTime(prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            })),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.next_sequence, seqs[0]);
    for want in &seqs {
        let d = s.next().await;
        assert_eq!(d.sequence, *want);
        s.ack(vec![d.delivery_id]).await;
    }
}

#[tokio::test]
async fn retraction_notifies_recipients_that_had_it_and_stops_the_rest() {
    let b = Broker::start();
    b.register_sample_agencies().await;
    put_agreement(
        &b,
        agreement(
            "isa-edu-sc",
            "school-b",
            "kind:social_care",
            &["education.*"],
        ),
    )
    .await;
    put_agreement(
        &b,
        agreement("isa-edu-h", "school-b", "kind:health", &["education.*"]),
    )
    .await;
    create_subscription(&b, "la-social-care-c", "main").await;
    create_subscription(&b, "nhs-trust-a", "main").await;
    let original = publish(&b, "wrong-child", CHILD_1).await;
    // Social care receives it; the trust has not consumed yet.
    let mut social = Subscription::open(&b, "la-social-care-c", "main", 10).await;
    let d = social.next().await;
    assert_eq!(d.sequence, original.sequence);
    social.ack(vec![d.delivery_id]).await;
    let acked = status(&b, "wrong-child").await;
    // The inline ack may still be in flight; the unary path below settles it.
    let _ = acked;

    let r = b
        .client("school-b")
        .publisher
        .retract_event(pb::RetractEventRequest {
            event_id: "wrong-child".into(),
            reason: "recorded against the wrong child".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.notices_sent, r.deliveries_stopped), (1, 1));
    let notice = social.next().await;
    let n = notice.notice.as_ref().expect("a notice delivery");
    assert_eq!(n.kind, pb::NoticeKind::Retracted as i32);
    assert_eq!(n.original_event_id, "wrong-child");
    assert_eq!(n.reason, "recorded against the wrong child");
    assert!(
        notice.event.as_ref().unwrap().payload.is_none(),
        "a notice carries no payload"
    );
    social.ack(vec![notice.delivery_id]).await;

    let marker = publish(&b, "marker", CHILD_2).await;
    let mut health = Subscription::open(&b, "nhs-trust-a", "main", 10).await;
    let first = health.next().await;
    assert_eq!(
        first.sequence, marker.sequence,
        "the trust never receives the retracted event or a notice"
    );
    let st = status(&b, "wrong-child").await;
    assert!(st.retracted);
    assert_eq!(
        state_of(&st, "nhs-trust-a"),
        pb::recipient_status::State::Stopped as i32
    );
    let err = b
        .client("la-social-care-c")
        .publisher
        .retract_event(pb::RetractEventRequest {
            event_id: "wrong-child".into(),
            reason: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::NotFound,
        "only the publisher can retract its events"
    );
}

#[tokio::test]
async fn a_correction_sends_a_notice_to_recipients_of_the_original() {
    let b = Broker::start();
    setup(&b, sub("main")).await;
    let original = publish(&b, "v1", CHILD_1).await;
    let mut s = Subscription::open(&b, "la-social-care-c", "main", 10).await;
    let d = s.next().await;
    assert_eq!(d.sequence, original.sequence);
    b.client("la-social-care-c")
        .subscriber
        .ack(pb::AckRequest {
            subscription: "main".into(),
            delivery_ids: vec![d.delivery_id],
        })
        .await
        .unwrap();
    let mut fixed = attendance_event("v2", CHILD_1);
    fixed.corrects_event_id = "v1".into();
    b.client("school-b")
        .publisher
        .publish(publish_request(fixed))
        .await
        .unwrap();
    let mut got = [s.next().await, s.next().await];
    got.sort_by_key(|d| d.sequence);
    assert_eq!(got[0].event.as_ref().unwrap().event_id, "v2");
    assert_eq!(got[0].event.as_ref().unwrap().corrects_event_id, "v1");
    let n = got[1].notice.as_ref().expect("a correction notice");
    assert_eq!(
        (
            n.kind,
            n.original_event_id.as_str(),
            n.correcting_event_id.as_str()
        ),
        (pb::NoticeKind::Corrected as i32, "v1", "v2")
    );
}

#[tokio::test]
async fn an_event_undelivered_by_its_expiry_expires() {
    let b = Broker::start();
    setup(&b, sub("main")).await;
    let mut e = attendance_event("exp-1", CHILD_1);
    let expires = std::time::SystemTime::now() + std::time::Duration::from_millis(800);
    e.expires_at = Some(expires.into());
    b.client("school-b")
        .publisher
        .publish(publish_request(e))
        .await
        .unwrap();
    assert_eq!(
        state_of(&status(&b, "exp-1").await, "la-social-care-c"),
        pb::recipient_status::State::Pending as i32
    );
    // Expiry is about time passing: wait until the instant is behind us.
    let wait = expires
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(wait + std::time::Duration::from_millis(50)).await;
    let marker = publish(&b, "exp-marker", CHILD_1).await;
    let mut s = Subscription::open(&b, "la-social-care-c", "main", 10).await;
    assert_eq!(s.next().await.sequence, marker.sequence);
    assert_eq!(
        state_of(&status(&b, "exp-1").await, "la-social-care-c"),
        pb::recipient_status::State::Expired as i32
    );
    assert!(
        b.audit_entries()
            .await
            .iter()
            .any(|e| e.kind == pb::EntryKind::EventExpired as i32 && e.event_id == "exp-1")
    );
}

#[tokio::test]
async fn retention_deletes_settled_events_and_keeps_owed_ones() {
    let b = Broker::start_with(&[
        ("CASESHARE_RETENTION_SECS", "0"),
        ("CASESHARE_RETENTION_SWEEP_SECS", "1"),
    ]);
    let mut long = sub("main");
    long.ack_deadline = Some(prost_types::Duration {
        seconds: 600,
        nanos: 0,
    });
    setup(&b, long).await;
    publish(&b, "ret-1", CHILD_1).await;
    publish(&b, "ret-2", CHILD_1).await;
    let mut s = Subscription::open(&b, "la-social-care-c", "main", 10).await;
    let d1 = s.next().await;
    let _d2 = s.next().await;
    b.client("la-social-care-c")
        .subscriber
        .ack(pb::AckRequest {
            subscription: "main".into(),
            delivery_ids: vec![d1.delivery_id],
        })
        .await
        .unwrap();
    // The sweep runs every second: wait (bounded) for it to remove ret-1.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = b
            .client("school-b")
            .publisher
            .get_event_status(pb::GetEventStatusRequest {
                event_id: "ret-1".into(),
            })
            .await;
        match r {
            Err(e) if e.code() == tonic::Code::NotFound => break,
            _ if std::time::Instant::now() > deadline => panic!("ret-1 was not expunged"),
            _ => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    // ret-2 is still owed to social care, so it stays.
    assert_eq!(
        state_of(&status(&b, "ret-2").await, "la-social-care-c"),
        pb::recipient_status::State::Delivered as i32
    );
    // The audit log keeps every entry about ret-1.
    let entries = b.audit_entries().await;
    assert!(
        entries
            .iter()
            .any(|e| e.kind == pb::EntryKind::EventPublished as i32 && e.event_id == "ret-1")
    );
    assert!(
        entries
            .iter()
            .any(|e| e.kind == pb::EntryKind::EventAcked as i32 && e.event_id == "ret-1")
    );
}

#[tokio::test]
async fn deleting_a_subscription_removes_its_delivery_records_in_the_background() {
    let mut b = Broker::start();
    setup(&b, sub("bulk")).await;
    // More delivery records than one commit removes (1,000).
    const N: usize = 1_200;
    let (tx, rx) = tokio::sync::mpsc::channel(N);
    for i in 0..N {
        tx.send(publish_request(attendance_event(
            &format!("bulk-{i}"),
            CHILD_1,
        )))
        .await
        .unwrap();
    }
    drop(tx);
    let mut answers = b
        .client("school-b")
        .publisher
        .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut answered = 0;
    while answers.message().await.unwrap().is_some() {
        answered += 1;
    }
    assert_eq!(answered, N);
    let mut s = Subscription::open(&b, "la-social-care-c", "bulk", 500).await;
    for _ in 0..N {
        let d = s.next().await;
        s.ack(vec![d.delivery_id]).await;
    }
    b.client("la-social-care-c")
        .subscriber
        .delete_subscription(pb::DeleteSubscriptionRequest {
            name: "bulk".into(),
        })
        .await
        .unwrap();
    drop(s);
    // The rest goes in the background; the broker says when it is done.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while b.metric("caseshare_subscription_purges_finished_total") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the purge finishes within 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(b.stop().await.success());
    let store = caseshare_store::SledStore::open(&b.data().join("store"), 8 << 20).unwrap();
    let tree = store.raw_tree();
    assert_eq!(
        tree.scan_prefix([b'D']).count() + tree.scan_prefix([b'K']).count(),
        0,
        "no delivery record of the deleted subscription is left"
    );
    assert_eq!(tree.scan_prefix([b'P']).count(), 0, "no purge is pending");
    // The events themselves are still there for other subscribers.
    assert_eq!(
        caseshare_store::Storage::events_from(&store, 0, N + 10)
            .unwrap()
            .len(),
        N
    );
}

/// A stream that is sent deliveries is not idle, even when the subscriber
/// never writes to it: with a 1 s idle timeout, events published 300 ms
/// apart for 3 s all arrive on the one stream. A subscriber waiting at the
/// head is fed by the writer in the publish's own commit rather than by
/// its stream's loop; those deliveries count as the stream's activity too
/// (embedded mode; in cluster mode every delivery is picked by the loop).
#[tokio::test]
async fn a_stream_that_is_sent_deliveries_is_not_idle() {
    let b = Broker::start_with(&[("CASESHARE_IDLE_STREAM_TIMEOUT_SECS", "1")]);
    let mut s = sub("main");
    s.ack_deadline = Some(prost_types::Duration {
        seconds: 60,
        nanos: 0,
    });
    setup(&b, s).await;
    let mut stream = Subscription::open(&b, "la-social-care-c", "main", 100).await;
    for i in 0..10 {
        let id = format!("paced-{i}");
        publish(&b, &id, CHILD_1).await;
        let d = stream.next().await;
        assert_eq!(d.event.unwrap().event_id, id, "in order, on the one stream");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let tailed = b.metric("caseshare_deliveries_tailed_total");
    if matches!(Topology::from_env(), Topology::Single) {
        assert!(
            tailed >= 1.0,
            "a stream waiting at the head was fed from the publish's commit"
        );
    } else {
        // Cluster mode: a replica's streams pick from what it applied.
        assert_eq!(tailed, 0.0, "the cluster applier feeds no stream");
    }
}
