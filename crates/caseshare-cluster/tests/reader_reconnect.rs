//! A journal reader whose NATS server dies under it while the journal is
//! being appended: messages the stream leader had already sent towards
//! the reader's server are lost with it, and the reader's client
//! reconnects to another server where its consumer (which lives on the
//! stream leader, without acknowledgements) carries on after them. The
//! reader must notice the skipped sequences and read them again, not end
//! with a journal gap: the stream holds every message, and a replica ends
//! its process on a gap (this is what made a broker replica exit in the
//! chaos run). Every acknowledged append is followed once, in order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use caseshare_cluster::{DEFAULT_STREAM, Journal, JournalConfig};
use futures::StreamExt;

/// Appends before the reader's server is stopped, and at least in all.
const BEFORE: u64 = 100;
const TOTAL: u64 = 400;

/// Appends the next message (`p-<sequence>`); gives its sequence.
async fn append_next(journal: &Journal, last: &mut u64) -> u64 {
    let i = *last + 1;
    let (seq, _) = common::append_retrying(
        journal,
        *last,
        &format!("m-{i}"),
        Bytes::from(format!("p-{i}")),
    )
    .await;
    assert_eq!(seq, i);
    *last = seq;
    seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_whose_server_dies_skips_nothing_and_reports_no_gap() {
    let mut c = common::cluster().await;
    let journal = common::open(&common::config(&c)).await;
    let mut last = common::append_retrying(&journal, 0, "m-1", Bytes::from("p-1"))
        .await
        .0;
    let leader = c
        .wait_stream_leader(DEFAULT_STREAM, None, common::PATIENCE)
        .await
        .expect("the journal has a leader")
        .0;
    // The reader's server is not the stream leader: the consumer outlives
    // it. The client learns the other servers from the cluster.
    let node = (leader + 1) % 3;
    let reader_journal = common::open(&JournalConfig {
        client_name: Some("reader-under-test".into()),
        ..JournalConfig::new(vec![c.url(node)])
    })
    .await;
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let follower = tokio::spawn(async move {
        let mut stream = Box::pin(reader_journal.read_from(1));
        while let Some(item) = stream.next().await {
            if seen_tx.send(item).is_err() {
                break;
            }
        }
    });

    // The appender reaches the leader's node only, so that it keeps
    // appending while the reader's server is stopped.
    let appender = common::open(&JournalConfig {
        client_name: Some("appender".into()),
        ..JournalConfig::new(vec![c.url(leader)])
    })
    .await;
    for _ in 1..BEFORE {
        append_next(&appender, &mut last).await;
    }
    // Stopped, deliveries for the reader pile up towards its server; then
    // killed, they are lost with it. Shorter than two consumer heartbeats,
    // so the client reconnects before it notices a silence.
    c.stop(node);
    let stopped = std::time::Instant::now();
    while stopped.elapsed() < Duration::from_millis(700) {
        append_next(&appender, &mut last).await;
    }
    c.kill9(node);
    let killed_after = append_next(&appender, &mut last).await - 1;
    eprintln!("killed n{node} (the reader's server) after {killed_after} appends");
    while append_next(&appender, &mut last).await < TOTAL {}
    c.restart(node).await;
    let total = last;
    let expected: Vec<(u64, Bytes)> = (1..=total)
        .map(|i| (i, Bytes::from(format!("p-{i}"))))
        .collect();
    let mut followed = Vec::new();
    while followed.len() < total as usize {
        let item = tokio::time::timeout(common::PATIENCE, seen_rx.recv())
            .await
            .unwrap_or_else(|_| panic!("the follower stopped after {}", followed.len()))
            .expect("the follower's stream ended");
        followed.push(item.unwrap_or_else(|e| {
            panic!("the reader failed after {} messages: {e}", followed.len())
        }));
    }
    assert_eq!(followed, expected);
    follower.abort();
}
