//! End to end over real gRPC and mTLS: an event reaches the agency an
//! agreement covers, is acknowledged, and never reaches an agency without
//! one; the publish response lists both decisions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use caseshare_proto::v1 as pb;
use caseshare_testkit::*;

#[tokio::test]
async fn covered_agency_receives_and_acks_uncovered_agency_receives_nothing() {
    let b = Broker::start();
    b.register_sample_agencies().await;
    // school-b → social care for education events; school-b → health only for
    // health events (so the attendance concern is not covered for health).
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
        agreement("isa-edu-health", "school-b", "nhs-trust-a", &["health.*"]),
    )
    .await;
    create_subscription(&b, "la-social-care-c", "main").await;
    create_subscription(&b, "nhs-trust-a", "main").await;
    let mut social = Subscription::open(&b, "la-social-care-c", "main", 10).await;
    let mut health = Subscription::open(&b, "nhs-trust-a", "main", 10).await;

    let mut school = b.client("school-b");
    let resp = school
        .publisher
        .publish(publish_request(attendance_event("evt-1", CHILD_1)))
        .await
        .unwrap()
        .into_inner();
    assert!(!resp.duplicate);
    assert_eq!(resp.event_type, "education.attendance_concern");
    let mut decisions: Vec<_> = resp
        .decisions
        .iter()
        .map(|d| {
            (
                d.agency_id.as_str(),
                d.decision,
                d.reason.as_str(),
                d.agreement_id.as_str(),
            )
        })
        .collect();
    decisions.sort();
    assert_eq!(
        decisions,
        vec![
            (
                "la-social-care-c",
                pb::Decision::Shared as i32,
                "agreement",
                "isa-edu-sc"
            ),
            (
                "nhs-trust-a",
                pb::Decision::Withheld as i32,
                "no_agreement",
                ""
            ),
        ]
    );

    let d = social.next().await;
    assert_eq!(d.sequence, resp.sequence);
    assert_eq!(d.source_agency, "school-b");
    assert_eq!(d.attempt, 1);
    let event = d.event.clone().unwrap();
    assert_eq!(event.event_id, "evt-1");
    assert_eq!(event.child.unwrap().nhs_number, CHILD_1);
    assert_eq!(d.decision.as_ref().unwrap().agreement_id, "isa-edu-sc");
    social.ack(vec![d.delivery_id.clone()]).await;

    // The health trust has a subscription but no agreement: the next thing it
    // receives is the second event (which it is covered for), never evt-1.
    let second = school
        .publisher
        .publish(publish_request(was_not_brought_event("evt-2", CHILD_1)))
        .await
        .unwrap()
        .into_inner();
    let h = health.next().await;
    assert_eq!(h.sequence, second.sequence);
    assert_eq!(h.event.unwrap().event_id, "evt-2");

    // The audit log holds the decisions, the delivery and the ack, without
    // the raw NHS number.
    let entries = b.audit_entries().await;
    let kinds: Vec<i32> = entries.iter().map(|e| e.kind).collect();
    for kind in [
        pb::EntryKind::AgencyRegistered,
        pb::EntryKind::AgreementChanged,
        pb::EntryKind::SubscriptionChanged,
        pb::EntryKind::EventPublished,
        pb::EntryKind::ShareDecided,
        pb::EntryKind::EventDelivered,
        pb::EntryKind::EventAcked,
    ] {
        assert!(kinds.contains(&(kind as i32)), "missing {kind:?}");
    }
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.index, i as u64, "gap-free indexes");
        let bytes = caseshare_audit::entry::encode(e);
        assert!(
            !bytes.windows(10).any(|w| w == CHILD_1.as_bytes()),
            "raw NHS number in entry {i}"
        );
    }
    let withheld = entries
        .iter()
        .find(|e| {
            e.kind == pb::EntryKind::ShareDecided as i32
                && e.recipient_agency == "nhs-trust-a"
                && e.event_id == "evt-1"
        })
        .expect("the refusal is audited");
    assert_eq!(withheld.reason, "no_agreement");
    assert_eq!(withheld.child_pseudonym.len(), 32);
}

#[tokio::test]
async fn publish_stream_answers_in_order_and_duplicates_are_not_redelivered() {
    let b = Broker::start();
    b.school_shares_with_social_care().await;
    let mut school = b.client("school-b");
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let mut responses = school
        .publisher
        .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for i in 0..200 {
        tx.send(publish_request(attendance_event(
            &format!("s-{i}"),
            CHILD_2,
        )))
        .await
        .unwrap();
    }
    drop(tx);
    let mut last = 0;
    for i in 0..200 {
        let r = responses
            .message()
            .await
            .unwrap()
            .expect("a response per request");
        assert_eq!(r.event_id, format!("s-{i}"), "responses in request order");
        assert!(r.sequence > last);
        last = r.sequence;
    }
    assert!(responses.message().await.unwrap().is_none());

    let again = school
        .publisher
        .publish(publish_request(attendance_event("s-7", CHILD_2)))
        .await
        .unwrap()
        .into_inner();
    assert!(again.duplicate);
    assert_eq!(again.sequence, 8);

    let mut social = Subscription::open(&b, "la-social-care-c", "main", 50).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let d = social.next().await;
        assert!(
            seen.insert(d.event.unwrap().event_id),
            "no event delivered twice"
        );
        social.ack(vec![d.delivery_id]).await;
    }
    // A marker event after the duplicate: the next delivery is the marker,
    // so the duplicate publish produced no delivery.
    let marker = school
        .publisher
        .publish(publish_request(attendance_event("marker", CHILD_2)))
        .await
        .unwrap()
        .into_inner();
    let d = social.next().await;
    assert_eq!(d.sequence, marker.sequence);
}
