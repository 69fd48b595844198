//! The journal against a real 3-node JetStream cluster: order and
//! contiguity, following, fencing of a stale appender, deduplication of a
//! retried append, refusal of a stream with another shape, and a stream
//! with another retention (`max_age`, duplicate window) updated in place.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use caseshare_cluster::{AppendError, ClusterError, JournalConfig};
use futures::StreamExt;

fn payload(i: u64) -> Bytes {
    Bytes::from(format!("batch-{i}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_are_read_in_order_from_any_sequence_and_followed() {
    let c = common::cluster().await;
    let journal = common::open(&common::config(&c)).await;
    assert_eq!(journal.last_sequence().await.unwrap(), 0);
    for i in 1..=40u64 {
        let seq = common::append(&journal, i - 1, &format!("id-{i}"), payload(i))
            .await
            .unwrap();
        assert_eq!(seq, i);
    }
    assert_eq!(journal.last_sequence().await.unwrap(), 40);

    let all: Vec<(u64, Bytes)> = journal
        .read_from(1)
        .take(40)
        .map(Result::unwrap)
        .collect()
        .await;
    let expected: Vec<(u64, Bytes)> = (1..=40).map(|i| (i, payload(i))).collect();
    assert_eq!(all, expected);

    // From the middle, then following what is appended afterwards (by
    // another connection through another server).
    let mut follow = Box::pin(journal.read_from(31));
    for i in 31..=40 {
        let (seq, bytes) = follow.next().await.unwrap().unwrap();
        assert_eq!((seq, bytes), (i, payload(i)));
    }
    let other = common::open(&common::config_via(&c, 2)).await;
    for i in 41..=45u64 {
        assert_eq!(
            common::append(&other, i - 1, &format!("id-{i}"), payload(i)).await,
            Ok(i)
        );
    }
    for i in 41..=45 {
        let next = tokio::time::timeout(common::PATIENCE, follow.next()).await;
        let (seq, bytes) = next.expect("follows new appends").unwrap().unwrap();
        assert_eq!((seq, bytes), (i, payload(i)));
    }
    // read_from(0) means from the first.
    let first = journal.read_from(0).next().await.unwrap().unwrap();
    assert_eq!(first, (1, payload(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_appender_is_fenced_and_writes_nothing() {
    let c = common::cluster().await;
    let old = common::open(&common::config_via(&c, 0)).await;
    let new = common::open(&common::config_via(&c, 1)).await;
    for i in 1..=3u64 {
        common::append(&old, i - 1, &format!("old-{i}"), payload(i))
            .await
            .unwrap();
    }
    // Both believe the journal ends at 3; the new leader appends first.
    assert_eq!(
        common::append(&new, 3, "new-4", Bytes::from("new")).await,
        Ok(4)
    );
    let refused = common::append(&old, 3, "old-4", Bytes::from("stale")).await;
    assert_eq!(
        refused,
        Err(AppendError::Fenced {
            expected: 3,
            actual: Some(4)
        })
    );
    // A retry with the same id and expectation stays fenced.
    assert!(matches!(
        common::append(&old, 3, "old-4", Bytes::from("stale")).await,
        Err(AppendError::Fenced { .. })
    ));
    assert_eq!(old.last_sequence().await.unwrap(), 4);
    let all: Vec<Bytes> = old
        .read_from(1)
        .take(4)
        .map(|r| r.unwrap().1)
        .collect()
        .await;
    assert_eq!(all[3], Bytes::from("new"));
    assert!(!all.contains(&Bytes::from("stale")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_append_is_not_stored_twice() {
    let c = common::cluster().await;
    let journal = common::open(&common::config(&c)).await;
    assert_eq!(common::append(&journal, 0, "m-1", payload(1)).await, Ok(1));
    // The retry of an append whose acknowledgement was lost carries the
    // same id and expectation: it is answered with the first copy.
    assert_eq!(
        common::append(&journal, 0, "m-1", payload(1)).await,
        Err(AppendError::Duplicate { sequence: 1 })
    );
    assert_eq!(common::append(&journal, 1, "m-2", payload(2)).await, Ok(2));
    // An old id later on is still a duplicate (within the window).
    assert_eq!(
        common::append(&journal, 2, "m-1", payload(1)).await,
        Err(AppendError::Duplicate { sequence: 1 })
    );
    assert_eq!(journal.last_sequence().await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_stream_of_another_shape_is_refused() {
    let c = common::cluster().await;
    let config = common::config(&c);
    let journal = common::open(&config).await;
    common::append(&journal, 0, "a", payload(1)).await.unwrap();
    // Opening again with the same shape is fine and sees the message.
    let again = common::open(&config).await;
    assert_eq!(again.last_sequence().await.unwrap(), 1);

    let other = JournalConfig {
        replicas: 1,
        subject: "other.subject".into(),
        ..config.clone()
    };
    match common::open_result(&other).await {
        Err(ClusterError::Mismatch { what, differences }) => {
            assert_eq!(what, "stream CASESHARE_JOURNAL");
            assert!(
                differences.contains("replicas: found 3, configured 1"),
                "{differences}"
            );
            assert!(differences.contains("other.subject"), "{differences}");
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    // Nothing was changed by the refusal.
    assert_eq!(again.last_sequence().await.unwrap(), 1);
    common::open(&config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_retention_is_updated_in_place() {
    let c = common::cluster().await;
    let config = common::config(&c);
    let journal = common::open(&config).await;
    common::append(&journal, 0, "a", payload(1)).await.unwrap();
    assert_eq!(journal.bounds().await.unwrap(), (1, 1));
    let stream_config = |config: JournalConfig| async move {
        let client = caseshare_cluster::connect(&config).await.unwrap();
        let mut stream = async_nats::jetstream::new(client)
            .get_stream(&config.stream)
            .await
            .unwrap();
        stream.info().await.unwrap().config.clone()
    };
    assert_eq!(stream_config(config.clone()).await.max_age, Duration::ZERO);

    // Retention set: the stream is updated, its message kept.
    let aged = JournalConfig {
        max_age: Duration::from_secs(3600),
        duplicate_window: Duration::from_secs(60),
        ..config.clone()
    };
    let reopened = common::open(&aged).await;
    let found = stream_config(aged.clone()).await;
    assert_eq!(found.max_age, Duration::from_secs(3600));
    assert_eq!(found.duplicate_window, Duration::from_secs(60));
    assert!(found.deny_delete && found.deny_purge, "{found:?}");
    assert_eq!(reopened.bounds().await.unwrap(), (1, 1));

    // And back to keeping everything.
    common::open(&config).await;
    let found = stream_config(config.clone()).await;
    assert_eq!(found.max_age, Duration::ZERO);
    assert_eq!(found.duplicate_window, config.duplicate_window);

    // A retention shorter than the duplicate window is refused first.
    let short = JournalConfig {
        max_age: Duration::from_secs(30),
        ..config.clone()
    };
    match common::open_result(&short).await {
        Err(ClusterError::Config(m)) => assert!(m.contains("max_age"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_append_is_refused_not_retried() {
    let c = common::cluster().await;
    let config = JournalConfig {
        max_message_bytes: 1024,
        ..common::config(&c)
    };
    let journal = common::open(&config).await;
    let big = Bytes::from(vec![7u8; 4096]);
    // A brand-new R3 stream may answer "no stream found" for a moment
    // (retried by `common::append`); the size refusal must come once it
    // answers, and is not retried.
    match common::append(&journal, 0, "big", big).await {
        Err(AppendError::Refused(why)) => eprintln!("refused: {why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(journal.last_sequence().await.unwrap(), 0);
}
