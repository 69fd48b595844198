//! Durability with the real process: acknowledged publishes survive
//! `kill -9`; unacknowledged deliveries come back after a restart and
//! acknowledged ones do not; the audit index has no gaps after a crash; a
//! rejected publish stores nothing; SIGTERM finishes in-flight publishes
//! and exits 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use caseshare_proto::v1 as pb;
use caseshare_testkit::*;
use tonic_types::StatusExt;

async fn setup(b: &Broker) {
    b.register_sample_agencies().await;
    put_agreement(
        b,
        agreement(
            "isa-edu-sc",
            "school-b",
            "la-social-care-c",
            &["education.*"],
        ),
    )
    .await;
    create_subscription(b, "la-social-care-c", "main").await;
}

fn assert_gap_free(entries: &[pb::AuditEntry]) {
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.index, i as u64, "audit index gap at {i}");
    }
}

#[tokio::test]
async fn acknowledged_publishes_survive_kill_9() {
    let mut b = Broker::start();
    setup(&b).await;
    const N: usize = 300;
    let mut school = b.client("school-b");
    let (tx, rx) = tokio::sync::mpsc::channel(N);
    let mut responses = school
        .publisher
        .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for i in 0..N {
        tx.send(publish_request(attendance_event(
            &format!("k-{i}"),
            CHILD_1,
        )))
        .await
        .unwrap();
    }
    let mut acked = BTreeSet::new();
    for _ in 0..N {
        let r = responses.message().await.unwrap().unwrap();
        acked.insert(r.event_id);
    }
    // Kill right after the last response.
    b.kill9();
    b.restart();

    let entries = b.audit_entries().await;
    assert_gap_free(&entries);
    let mut social = Subscription::open(&b, "la-social-care-c", "main", 100).await;
    let mut got = BTreeSet::new();
    while got.len() < N {
        let d = social.next().await;
        got.insert(d.event.unwrap().event_id);
        social.ack(vec![d.delivery_id]).await;
    }
    assert_eq!(got, acked);
}

#[tokio::test]
async fn unacked_deliveries_return_after_restart_and_acked_ones_do_not() {
    let mut b = Broker::start();
    setup(&b).await;
    let mut school = b.client("school-b");
    for i in 0..10 {
        school
            .publisher
            .publish(publish_request(attendance_event(
                &format!("u-{i}"),
                CHILD_2,
            )))
            .await
            .unwrap();
    }
    let mut social = Subscription::open(&b, "la-social-care-c", "main", 10).await;
    let mut first = Vec::new();
    for _ in 0..10 {
        first.push(social.next().await);
    }
    // Acknowledge the even ones with the unary Ack, which answers once the
    // acknowledgements are durable.
    let acked: Vec<String> = first
        .iter()
        .filter(|d| d.sequence % 2 == 0)
        .map(|d| d.delivery_id.clone())
        .collect();
    let r = b
        .client("la-social-care-c")
        .subscriber
        .ack(pb::AckRequest {
            subscription: "main".into(),
            delivery_ids: acked.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.acked as usize, acked.len());
    drop(social);
    b.kill9();
    b.restart();

    let mut social = Subscription::open(&b, "la-social-care-c", "main", 10).await;
    let mut again = BTreeSet::new();
    for _ in 0..5 {
        let d = social.next().await;
        assert!(d.attempt >= 2, "a redelivery counts as a new attempt");
        again.insert(d.sequence);
        social.ack(vec![d.delivery_id]).await;
    }
    let odd: BTreeSet<u64> = first
        .iter()
        .map(|d| d.sequence)
        .filter(|s| s % 2 == 1)
        .collect();
    assert_eq!(
        again, odd,
        "exactly the unacknowledged deliveries come back"
    );
    // Nothing else is owed: the next delivery is a new event.
    let marker = school_client(&b).await;
    let d = social.next().await;
    assert_eq!(d.sequence, marker);
    assert_gap_free(&b.audit_entries().await);
}

async fn school_client(b: &Broker) -> u64 {
    b.client("school-b")
        .publisher
        .publish(publish_request(attendance_event("marker", CHILD_1)))
        .await
        .unwrap()
        .into_inner()
        .sequence
}

#[tokio::test]
async fn invalid_nhs_number_is_rejected_with_a_field_violation_and_nothing_is_stored() {
    let b = Broker::start();
    setup(&b).await;
    // Reading the log appends AUDIT_ACCESSED entries; count everything else.
    let not_reads = |entries: Vec<pb::AuditEntry>| {
        entries
            .into_iter()
            .filter(|e| e.kind != pb::EntryKind::AuditAccessed as i32)
            .count()
    };
    let before = not_reads(b.audit_entries().await);
    let mut social = Subscription::open(&b, "la-social-care-c", "main", 10).await;
    let mut school = b.client("school-b");
    let err = school
        .publisher
        .publish(publish_request(attendance_event("bad-1", "9434765918")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let bad_request = err
        .get_details_bad_request()
        .expect("google.rpc.BadRequest details");
    let fields: Vec<&str> = bad_request
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert_eq!(fields, ["event.child.nhs_number"]);
    assert!(
        !err.message().contains("9434765918"),
        "the error does not echo the number"
    );

    // Missing payload and a far-future time name their fields too.
    let mut e = attendance_event("bad-2", CHILD_1);
    e.payload = None;
    e.occurred_at = Some(prost_types::Timestamp {
        seconds: 4_000_000_000,
        nanos: 0,
    });
    let err = school
        .publisher
        .publish(publish_request(e))
        .await
        .unwrap_err();
    let fields: Vec<String> = err
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert!(
        fields.contains(&"event.payload".to_string())
            && fields.contains(&"event.occurred_at".to_string()),
        "{fields:?}"
    );

    assert_eq!(
        not_reads(b.audit_entries().await),
        before,
        "a rejected publish writes nothing"
    );
    let ok = school
        .publisher
        .publish(publish_request(attendance_event("good", CHILD_1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ok.sequence, 1,
        "no sequence was used by the rejected publishes"
    );
    let d = social.next().await;
    assert_eq!(d.event.unwrap().event_id, "good");
}

#[tokio::test]
async fn sigterm_finishes_in_flight_publishes_and_exits_zero() {
    let mut b = Broker::start();
    setup(&b).await;
    let mut school = b.client("school-b");
    let (tx, rx) = tokio::sync::mpsc::channel(2000);
    let mut responses = school
        .publisher
        .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for i in 0..500 {
        tx.send(publish_request(attendance_event(
            &format!("t-{i}"),
            CHILD_1,
        )))
        .await
        .unwrap();
    }
    // Wait for the first response so the stream is in flight, then stop.
    let first = responses.message().await.unwrap().unwrap();
    drop(tx);
    let exit = b.stop().await;
    assert!(exit.success(), "SIGTERM exits 0, got {exit:?}");
    let mut acked = vec![first.event_id];
    while let Ok(Some(r)) = responses.message().await {
        acked.push(r.event_id);
    }
    b.restart();
    let mut social = Subscription::open(&b, "la-social-care-c", "main", 100).await;
    let mut got = BTreeSet::new();
    for _ in 0..acked.len() {
        let d = social.next().await;
        got.insert(d.event.unwrap().event_id);
        social.ack(vec![d.delivery_id]).await;
    }
    for id in &acked {
        assert!(
            got.contains(id),
            "{id} was acknowledged before shutdown but is missing"
        );
    }
}
