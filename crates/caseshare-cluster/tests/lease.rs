//! The leader lease against a real 3-node JetStream cluster: exclusive
//! while renewed, taken over with a higher epoch after the TTL without
//! renewal, the old holder's renewal refused, release lets a contender in
//! at once, and a bucket of another shape is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use caseshare_cluster::{ClusterError, LeaderInfo, Lease, LeaseConfig, LeaseLost};

fn replica(id: &str) -> LeaderInfo {
    LeaderInfo {
        replica_id: id.into(),
        grpc_address: format!("127.0.0.1:7{}", id.len()),
    }
}

const TTL: Duration = Duration::from_secs(2);

async fn lease_via(c: &caseshare_testkit::NatsCluster, i: usize) -> Lease {
    let journal = common::open(&common::config_via(c, i)).await;
    let config = LeaseConfig {
        ttl: TTL,
        ..LeaseConfig::default()
    };
    Lease::open(&journal, &config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_is_exclusive_while_renewed_and_taken_over_after_its_ttl() {
    let c = common::cluster().await;
    let a = lease_via(&c, 0).await;
    let b = lease_via(&c, 1).await;
    assert_eq!(a.current().await.unwrap(), None);

    let mut held = a.acquire(&replica("a")).await.unwrap().expect("free lease");
    let first_epoch = held.epoch;
    assert!(held.valid_until() > tokio::time::Instant::now());
    assert_eq!(b.acquire(&replica("b")).await.unwrap(), None);
    let now = b.current().await.unwrap().unwrap();
    assert_eq!(
        (now.leader, now.epoch),
        (replica("a"), first_epoch),
        "followers see the holder"
    );

    // Renewed every ttl/3 for two TTLs: the contender never gets it.
    let until = Instant::now() + 2 * TTL;
    let mut renewed = Instant::now();
    while Instant::now() < until {
        tokio::time::sleep(TTL / 3).await;
        renewed = Instant::now();
        a.renew(&mut held).await.unwrap();
        assert_eq!(b.acquire(&replica("b")).await.unwrap(), None);
    }
    assert_eq!(held.epoch, first_epoch, "renewal keeps the epoch");
    assert!(held.revision > first_epoch, "renewal writes a new revision");
    let now = b.current().await.unwrap().unwrap();
    assert_eq!((now.epoch, now.revision), (first_epoch, held.revision));

    // No more renewal: the contender takes it after the TTL (counted from
    // the last renewal's sending, before which it cannot have been stored).
    let taken = loop {
        if let Some(h) = b.acquire(&replica("b")).await.unwrap() {
            break h;
        }
        assert!(renewed.elapsed() < 3 * TTL, "not taken over within 3 TTLs");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let waited = renewed.elapsed();
    eprintln!("lease taken over {waited:?} after the last renewal (ttl {TTL:?})");
    assert!(waited >= TTL, "taken over before the TTL: {waited:?}");
    assert!(taken.epoch > first_epoch);
    assert!(tokio::time::Instant::now() > held.valid_until());

    // The old holder's renewal is refused, and it does not come back.
    assert_eq!(
        a.renew(&mut held).await,
        Err(LeaseLost::Superseded {
            revision: held.revision
        })
    );
    let now = a.current().await.unwrap().unwrap();
    assert_eq!((now.leader, now.epoch), (replica("b"), taken.epoch));

    // Release lets the next one in at once, with a higher epoch again.
    let b_epoch = taken.epoch;
    b.release(taken).await.unwrap();
    assert_eq!(a.current().await.unwrap(), None);
    let again = a.acquire(&replica("a")).await.unwrap().expect("released");
    assert!(again.epoch > b_epoch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_bucket_of_another_shape_is_refused() {
    let c = common::cluster().await;
    let _first = lease_via(&c, 0).await;
    let journal = common::open(&common::config(&c)).await;
    let other = LeaseConfig {
        ttl: Duration::from_secs(9),
        ..LeaseConfig::default()
    };
    match Lease::open(&journal, &other).await {
        Err(ClusterError::Mismatch { what, differences }) => {
            assert_eq!(what, "KV bucket CASESHARE_LEASE");
            assert!(differences.contains("ttl"), "{differences}");
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
}
