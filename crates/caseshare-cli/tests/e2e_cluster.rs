//! Cluster mode end to end: real `nats-server` processes (3 nodes,
//! `sync_interval: always`) and real `caseshare serve` replicas in cluster
//! mode, spoken to over gRPC and mTLS through the test kit. Any replica
//! answers any RPC with the same results; a write that returned through one
//! replica is respected by the next decision on every replica; a killed
//! replica catches up from the journal; the audit log is one log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use caseshare_proto::v1 as pb;
use caseshare_testkit::*;

/// Opens a subscription on a replica, retrying while the replica has not
/// yet applied the subscription's creation (made through another one).
async fn open_on(b: &Broker, agency: &str, name: &str) -> Subscription {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Subscription::try_open(b, agency, name, 100).await {
            Ok(s) => return s,
            Err(s) if s.code() == tonic::Code::NotFound && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => panic!("subscribe: {s:?}"),
        }
    }
}

async fn publish(b: &Broker, id: &str, nhs: &str) -> pb::PublishResponse {
    b.client(SCHOOL)
        .publisher
        .publish(publish_request(attendance_event(id, nhs)))
        .await
        .unwrap()
        .into_inner()
}

fn decision_of(resp: &pb::PublishResponse, agency: &str) -> (i32, String) {
    let d = resp
        .decisions
        .iter()
        .find(|d| d.agency_id == agency)
        .unwrap_or_else(|| panic!("no decision for {agency}: {resp:?}"));
    (d.decision, d.reason.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_replica_answers_and_every_replica_decides_the_same() {
    let c = BrokerCluster::start(2).await;
    let (r0, r1) = (c.broker(0), c.broker(1));
    // Configured through replica 0 ...
    r0.school_shares_with_social_care().await;
    // ... and respected by the very next decision on replica 1.
    let first = publish(r1, "evt-1", CHILD_1).await;
    assert_eq!(
        decision_of(&first, SOCIAL_CARE),
        (pb::Decision::Shared as i32, "agreement".into())
    );
    // The subscription created through replica 0 is served by replica 1.
    let mut sub = open_on(r1, SOCIAL_CARE, "main").await;
    let d = sub.next().await;
    assert_eq!(d.sequence, first.sequence);
    assert_eq!(d.event.as_ref().unwrap().event_id, "evt-1");
    sub.ack(vec![d.delivery_id.clone()]).await;

    // A retried publish through the other replica gets the original event.
    let again = publish(r0, "evt-1", CHILD_1).await;
    assert!(again.duplicate, "{again:?}");
    assert_eq!(again.sequence, first.sequence);

    // An agreement ended through replica 1 is respected by the next
    // decision on replica 0.
    r1.client(ADMIN)
        .admin
        .end_agreement(pb::EndAgreementRequest {
            agreement_id: "isa-edu-sc".into(),
            reason: "the agreement was withdrawn".into(),
        })
        .await
        .unwrap();
    let second = publish(r0, "evt-2", CHILD_2).await;
    assert_eq!(second.sequence, first.sequence + 1);
    assert_eq!(
        decision_of(&second, SOCIAL_CARE).0,
        pb::Decision::Withheld as i32
    );

    // One audit log: both replicas sign checkpoints of the same tree.
    c.assert_one_log(0, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_catches_up_from_the_journal_and_loses_nothing() {
    let mut c = BrokerCluster::start(2).await;
    c.broker(0).school_shares_with_social_care().await;
    let mut acked = BTreeSet::new();
    for i in 0..20 {
        acked.insert(
            publish(c.broker(0), &format!("a-{i}"), CHILD_1)
                .await
                .sequence,
        );
    }
    c.broker_mut(1).kill9();
    for i in 0..20 {
        acked.insert(
            publish(c.broker(0), &format!("b-{i}"), CHILD_2)
                .await
                .sequence,
        );
    }
    c.broker_mut(1).restart();
    // Everything acknowledged through replica 0 reaches a subscriber of the
    // restarted replica 1.
    let mut sub = open_on(c.broker(1), SOCIAL_CARE, "main").await;
    let mut got = BTreeSet::new();
    while got.len() < acked.len() {
        let d = sub.next().await;
        got.insert(d.sequence);
        sub.ack(vec![d.delivery_id]).await;
    }
    assert_eq!(got, acked);
    c.assert_one_log(0, 1).await;
}
