//! Letting a stopped broker's write-ahead log drop the frames of its
//! earlier runs, for tests that damage stored bytes and want the store's
//! own checks of those bytes, not the frames' copies of them, to find it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::{Broker, CHILD_1, attendance_event, publish_request};

/// The WAL files in the broker's store.
pub fn wal_files(b: &Broker) -> Vec<PathBuf> {
    let dir = b.data().join("store").join("wal");
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    v.sort();
    v
}

/// Stops the broker (if running) and starts it again, then publishes as
/// `agency` (which must be able to publish an attendance event about
/// `CHILD_1`) until the WAL files of the runs before are deleted (the
/// stabiliser makes the logs and sled stable every 500 ms, and the next
/// commit trims what that covers), then stops it. The frames' copies of
/// the logs' bytes written before are then gone, as they are for any
/// commit older than a fraction of a second, and damage to those bytes is the
/// event log's and audit log's own checks' to find.
pub async fn settle_the_wal(b: &mut Broker, agency: &str) {
    if b.running() {
        assert!(b.stop().await.success());
    }
    let old = wal_files(b);
    assert!(!old.is_empty(), "a store with a write-ahead log");
    b.restart();
    let mut client = b.client(agency);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    while old.iter().any(|f| f.exists()) {
        assert!(
            Instant::now() < deadline,
            "the WAL files {old:?} were not trimmed"
        );
        client
            .publisher
            .publish(publish_request(attendance_event(
                &format!("settle-{i}"),
                CHILD_1,
            )))
            .await
            .unwrap();
        i += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(b.stop().await.success());
}
