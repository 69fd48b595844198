//! The journal across a SIGKILL of the stream's leader: one appender keeps
//! appending (retrying `Unavailable` with the same message id and
//! expectation), a reader follows from 1 throughout. Writes resume (the
//! time without writes is printed), every acknowledged append is in the
//! stream exactly once and in order, and the reader saw each once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use caseshare_cluster::DEFAULT_STREAM;
use futures::StreamExt;

/// Appends before the kill, and in all.
const BEFORE_KILL: u64 = 60;
const TOTAL: u64 = 180;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_and_reads_continue_across_a_stream_leader_kill() {
    let mut c = common::cluster().await;
    let journal = common::open(&common::config(&c)).await;
    let reader_journal = common::open(&common::config_via(&c, 1)).await;

    // The follower: everything from 1, as it comes.
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let follower = tokio::spawn(async move {
        let mut stream = Box::pin(reader_journal.read_from(1));
        while let Some(item) = stream.next().await {
            if seen_tx.send(item).is_err() {
                break;
            }
        }
    });

    let mut last = 0u64;
    let mut longest_gap = Duration::ZERO;
    let mut last_ack = Instant::now();
    let mut killed = None;
    let mut retried = 0;
    for i in 1..=TOTAL {
        if i == BEFORE_KILL + 1 {
            let leader = c
                .wait_stream_leader(DEFAULT_STREAM, None, common::PATIENCE)
                .await
                .expect("the journal has a leader")
                .0;
            eprintln!("killing the stream leader n{leader} after {last} appends");
            c.kill9(leader);
            killed = Some((leader, Instant::now()));
        }
        let (seq, tries) = common::append_retrying(
            &journal,
            last,
            &format!("m-{i}"),
            Bytes::from(format!("p-{i}")),
        )
        .await;
        assert_eq!(seq, last + 1, "append {i} landed at {seq} after {last}");
        retried += tries - 1;
        last = seq;
        let now = Instant::now();
        longest_gap = longest_gap.max(now - last_ack);
        last_ack = now;
    }
    let (dead, at) = killed.unwrap();
    let new_leader = c
        .wait_stream_leader(DEFAULT_STREAM, Some(dead), common::PATIENCE)
        .await
        .expect("a new leader")
        .0;
    eprintln!(
        "{TOTAL} appends acknowledged; the longest time without writes was {longest_gap:?} \
         (kill of n{dead} at +0, new leader n{new_leader}, {retried} retries, \
         {:?} since the kill)",
        at.elapsed()
    );
    assert!(longest_gap < Duration::from_secs(15), "{longest_gap:?}");
    assert_eq!(journal.last_sequence().await.unwrap(), TOTAL);

    // A fresh reader from 1: every acknowledged append once, in order.
    let all: Vec<(u64, Bytes)> = tokio::time::timeout(
        common::PATIENCE,
        journal
            .read_from(1)
            .take(TOTAL as usize)
            .collect::<Vec<_>>(),
    )
    .await
    .expect("the whole journal is readable")
    .into_iter()
    .map(Result::unwrap)
    .collect();
    let expected: Vec<(u64, Bytes)> = (1..=TOTAL)
        .map(|i| (i, Bytes::from(format!("p-{i}"))))
        .collect();
    assert_eq!(all, expected);

    // The follower kept following across the kill: the same, once each.
    let mut followed = Vec::new();
    while followed.len() < TOTAL as usize {
        let item = tokio::time::timeout(common::PATIENCE, seen_rx.recv())
            .await
            .unwrap_or_else(|_| panic!("the follower stopped after {}", followed.len()))
            .expect("the follower's stream ended");
        followed.push(item.unwrap());
    }
    assert_eq!(followed, expected);
    follower.abort();
}
