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
    // limits.max_event_bytes at its cluster-mode top (192 KiB; one byte
    // more is refused at start: e2e_config).
    let c = BrokerCluster::start_with(2, &[("CASESHARE_MAX_EVENT_BYTES", "196608")]).await;
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

    // `caseshare status` through either replica lists both, with where
    // they listen and how far they have applied the journal.
    for (i, b) in [r0, r1].into_iter().enumerate() {
        let status = roster_of_two(b).await;
        assert_eq!(status.role, "replica");
        let mut addresses: Vec<String> =
            status.replicas.iter().map(|r| r.address.clone()).collect();
        addresses.sort();
        let mut expected = vec![r0.grpc.to_string(), r1.grpc.to_string()];
        expected.sort();
        assert_eq!(addresses, expected, "replica {i}: {status:?}");
        let this: Vec<_> = status.replicas.iter().filter(|r| r.this_replica).collect();
        assert_eq!(this.len(), 1, "replica {i}: {status:?}");
        assert_eq!(this[0].address, b.grpc.to_string());
        for r in &status.replicas {
            assert!(!r.leader, "cluster mode has no leader: {r:?}");
            assert!(r.applied_sequence > 0, "{r:?}");
            assert!(r.seen_seconds_ago <= 15, "{r:?}");
            assert_eq!(r.version, status.version);
        }
    }
}

/// The broker's status once its roster lists two replicas that have
/// applied something (each puts itself in every 5 s, with how far it has
/// applied, and reads the roster back).
async fn roster_of_two(b: &Broker) -> pb::BrokerStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = b
            .client(ADMIN)
            .admin
            .get_status(pb::GetStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        let settled =
            status.replicas.len() >= 2 && status.replicas.iter().all(|r| r.applied_sequence > 0);
        if settled || Instant::now() > deadline {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
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

/// `caseshare migrate`: a stopped embedded broker's data directory becomes
/// the first replica of a new cluster, keeping sequences, subscriptions and
/// the audit log: the cluster's checkpoints extend the old log (an RFC 6962
/// consistency proof from the old last checkpoint verifies), the old
/// subscription still delivers, and a second migration is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_broker_migrates_into_an_empty_cluster_and_its_log_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let old_dir = tmp.path().join("old");
    std::fs::create_dir_all(&old_dir).unwrap();
    let mut old = Broker::builder()
        .topology(Topology::Single)
        .dir(&old_dir)
        .start();
    old.school_shares_with_social_care().await;
    let mut before = Vec::new();
    for i in 0..5 {
        before.push(publish(&old, &format!("old-{i}"), CHILD_1).await.sequence);
    }
    let old_cp = old
        .client(AUDITOR)
        .audit
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(old.stop().await.success());

    let nats = NatsCluster::start(3).await;
    let servers = nats.urls().join(",");
    let migrate = |dir: &std::path::Path| {
        caseshare_command()
            .args(["migrate", "--from"])
            .arg(dir.join("data"))
            .args(["--nats-servers", &servers])
            .output()
            .unwrap()
    };
    let out = migrate(&old_dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A second replica is seeded with a copy of the stopped directory.
    let copy_dir_ = tmp.path().join("copy");
    copy_dir(&old_dir.join("data"), &copy_dir_.join("data"));
    // The journal is no longer empty: another migration is refused.
    let again = migrate(&copy_dir_);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("already joined") || err.contains("not empty"),
        "{err}"
    );

    let env = [
        ("CASESHARE_STORE_BACKEND", "nats"),
        ("CASESHARE_NATS_SERVERS", servers.as_str()),
    ];
    let r0 = Broker::builder()
        .topology(Topology::Single)
        .dir(&old_dir)
        .envs(&env)
        .start();
    let r1 = Broker::builder()
        .topology(Topology::Single)
        .dir(&copy_dir_)
        .envs(&env)
        .start();
    // Sequences continue; the old subscription delivers old and new events.
    let next = publish(&r1, "new-0", CHILD_2).await;
    assert_eq!(next.sequence, before[4] + 1);
    let mut sub = Subscription::open(&r0, SOCIAL_CARE, "main", 100).await;
    let mut got = BTreeSet::new();
    while got.len() < 6 {
        got.insert(sub.next().await.sequence);
    }
    assert_eq!(got.iter().copied().collect::<Vec<_>>(), {
        let mut v = before.clone();
        v.push(next.sequence);
        v
    });
    // The cluster's log continues the old one.
    assert_extends(&r1.endpoint(), &old_cp).await;
    // A replica on an empty data directory cannot join a migrated journal:
    // it stops, saying how to seed it.
    let fresh_dir = tmp.path().join("fresh");
    std::fs::create_dir_all(&fresh_dir).unwrap();
    let fresh = Broker::builder()
        .topology(Topology::Single)
        .dir(&fresh_dir)
        .envs(&env)
        .try_start();
    const HINT: &str = "copy of a stopped replica";
    match fresh {
        // It stopped before it listened.
        Err(r) => assert!(r.stderr.contains(HINT), "{}", r.stderr),
        // It listened before it met the base message: it stops by itself.
        Ok(_b) => {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let log = std::fs::read_to_string(fresh_dir.join("broker.log")).unwrap();
                if log.contains(HINT) {
                    break;
                }
                assert!(Instant::now() < deadline, "{log}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    drop(nats);
}

/// A subscriber with a wide window on a long backlog: the deliveries one
/// pick records (thousands of intents, megabytes) must not be one journal
/// message (at most 1 MiB), or the append is refused on every try and the
/// subscription never moves. Every event arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wide_window_on_a_long_backlog_is_delivered_through_the_journal() {
    const N: usize = 12_000;
    let c = BrokerCluster::start_with(2, &[("CASESHARE_MAX_OUTSTANDING", "20000")]).await;
    c.broker(0).school_shares_with_social_care().await;
    let ep = c.broker(0).endpoint();
    let mut tasks = Vec::new();
    for k in 0..50 {
        let ep = ep.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = ep.client(SCHOOL).publisher;
            let mut seqs = Vec::new();
            for n in 0..N / 50 {
                let id = format!("wide-{k}-{n}");
                let r = client
                    .publish(publish_request(attendance_event(&id, CHILD_1)))
                    .await
                    .unwrap();
                seqs.push(r.into_inner().sequence);
            }
            seqs
        }));
    }
    let mut acked = BTreeSet::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert_eq!(acked.len(), N);
    let mut sub = loop {
        match Subscription::try_open(c.broker(1), SOCIAL_CARE, "main", 20_000).await {
            Ok(s) => break s,
            Err(s) if s.code() == tonic::Code::NotFound => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => panic!("subscribe: {s:?}"),
        }
    };
    let mut got = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while got.len() < N {
        assert!(
            Instant::now() < deadline,
            "{} of {N} delivered in 120 s",
            got.len()
        );
        let d = sub.next().await;
        got.insert(d.sequence);
        sub.ack(vec![d.delivery_id]).await;
    }
    assert_eq!(got, acked);
}
