//! Steady load for fault tests: a [`Publisher`] that publishes numbered
//! events at a fixed pace through a set of broker endpoints and retries
//! each one (same event id, so a retry is idempotent) on the next endpoint
//! until it is acknowledged, recording every acknowledged event's sequence
//! and the longest time without an acknowledgement; and a [`Consumer`] that
//! keeps a subscription's stream open on one of the endpoints (moving to
//! the next when its stream fails), acknowledges every delivery and counts
//! what it received.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use caseshare_proto::v1 as pb;
use futures::StreamExt;
use tokio::sync::watch;

use crate::{CHILD_1, CHILD_2, Endpoint, SCHOOL, attendance_event, publish_request};

/// How long one publish may take before it is retried elsewhere.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What a publisher saw.
#[derive(Debug, Default, Clone)]
pub struct PublishReport {
    /// Event id → the sequence its (first) acknowledgement gave.
    pub acked: BTreeMap<String, u64>,
    /// Event ids acknowledged more than once with different sequences
    /// (a second event for one id: must stay empty).
    pub forked: Vec<String>,
    /// The longest time between two acknowledgements.
    pub longest_gap: Duration,
    /// When that gap ended, from the start.
    pub gap_ended_at: Duration,
    /// Calls that failed and were retried.
    pub retries: usize,
}

/// Publishes `school-b` attendance events `<prefix>-<n>` for two children,
/// one every `pace`, until stopped.
pub struct Publisher {
    stop: watch::Sender<bool>,
    targets: Arc<Mutex<Vec<Endpoint>>>,
    task: tokio::task::JoinHandle<PublishReport>,
}

impl Publisher {
    /// Starts publishing through `targets` (round robin; a failed call moves
    /// to the next).
    pub fn start(targets: Vec<Endpoint>, prefix: &str, pace: Duration) -> Publisher {
        let (stop, stopped) = watch::channel(false);
        let targets = Arc::new(Mutex::new(targets));
        let task = tokio::spawn(publish_loop(
            Arc::clone(&targets),
            prefix.to_string(),
            pace,
            stopped,
        ));
        Publisher {
            stop,
            targets,
            task,
        }
    }

    /// Replaces the endpoints (after a restart moved a broker's port).
    pub fn set_targets(&self, targets: Vec<Endpoint>) {
        *self.targets.lock().unwrap() = targets;
    }

    /// Stops after the event in progress is acknowledged; gives the report.
    pub async fn finish(self) -> PublishReport {
        let _ = self.stop.send(true);
        self.task.await.unwrap()
    }
}

async fn publish_loop(
    targets: Arc<Mutex<Vec<Endpoint>>>,
    prefix: String,
    pace: Duration,
    stopped: watch::Receiver<bool>,
) -> PublishReport {
    let started = Instant::now();
    let mut report = PublishReport::default();
    let mut last_ack = Instant::now();
    let mut turn = 0usize;
    for n in 0u64.. {
        if *stopped.borrow() {
            break;
        }
        let id = format!("{prefix}-{n}");
        let child = if n % 2 == 0 { CHILD_1 } else { CHILD_2 };
        loop {
            let target = {
                let t = targets.lock().unwrap();
                t[turn % t.len()].clone()
            };
            let mut client = target.client(SCHOOL).publisher;
            let mut request = tonic::Request::new(publish_request(attendance_event(&id, child)));
            request.set_timeout(CALL_TIMEOUT);
            let call = tokio::time::timeout(CALL_TIMEOUT, client.publish(request)).await;
            match call {
                Ok(Ok(resp)) => {
                    let seq = resp.into_inner().sequence;
                    match report.acked.get(&id) {
                        Some(first) if *first != seq => report.forked.push(id.clone()),
                        Some(_) => {}
                        None => {
                            report.acked.insert(id.clone(), seq);
                        }
                    }
                    let gap = last_ack.elapsed();
                    if gap > report.longest_gap {
                        report.longest_gap = gap;
                        report.gap_ended_at = started.elapsed();
                    }
                    last_ack = Instant::now();
                    break;
                }
                _ => {
                    report.retries += 1;
                    turn += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        turn += 1;
        tokio::time::sleep(pace).await;
    }
    report
}

/// Keeps `agency`'s subscription `name` consumed and acknowledged.
pub struct Consumer {
    stop: watch::Sender<bool>,
    targets: Arc<Mutex<Vec<Endpoint>>>,
    received: Arc<Mutex<BTreeMap<u64, u32>>>,
    task: tokio::task::JoinHandle<usize>,
}

impl Consumer {
    /// Opens the stream on the first of `targets` (the next one whenever
    /// the stream fails).
    pub fn start(targets: Vec<Endpoint>, agency: &str, name: &str) -> Consumer {
        let (stop, stopped) = watch::channel(false);
        let targets = Arc::new(Mutex::new(targets));
        let received = Arc::new(Mutex::new(BTreeMap::new()));
        let task = tokio::spawn(consume_loop(
            Arc::clone(&targets),
            agency.to_string(),
            name.to_string(),
            Arc::clone(&received),
            stopped,
        ));
        Consumer {
            stop,
            targets,
            received,
            task,
        }
    }

    /// Replaces the endpoints (after a restart moved a broker's port).
    pub fn set_targets(&self, targets: Vec<Endpoint>) {
        *self.targets.lock().unwrap() = targets;
    }

    /// Sequence → how many times it was delivered, so far.
    pub fn received(&self) -> BTreeMap<u64, u32> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until every sequence of `expected` was delivered (fails the
    /// test after `within`); stops and gives the deliveries and how many
    /// times the stream was reopened.
    pub async fn until_all(
        self,
        expected: impl IntoIterator<Item = u64>,
        within: Duration,
    ) -> (BTreeMap<u64, u32>, usize) {
        let expected: Vec<u64> = expected.into_iter().collect();
        let deadline = Instant::now() + within;
        loop {
            let got = self.received();
            let missing: Vec<u64> = expected
                .iter()
                .copied()
                .filter(|s| !got.contains_key(s))
                .collect();
            if missing.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} acknowledged events never delivered, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(10)]
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.stop.send(true);
        let received = Arc::clone(&self.received);
        let reopened = self.task.await.unwrap();
        let got = received.lock().unwrap().clone();
        (got, reopened)
    }
}

async fn consume_loop(
    targets: Arc<Mutex<Vec<Endpoint>>>,
    agency: String,
    name: String,
    received: Arc<Mutex<BTreeMap<u64, u32>>>,
    mut stopped: watch::Receiver<bool>,
) -> usize {
    let mut turn = 0usize;
    let mut opened = 0usize;
    while !*stopped.borrow() {
        let target = {
            let t = targets.lock().unwrap();
            t[turn % t.len()].clone()
        };
        turn += 1;
        let mut client = target.client(&agency).subscriber;
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let _ = tx
            .send(pb::SubscribeRequest {
                subscription: name.clone(),
                max_outstanding: 100,
                ..Default::default()
            })
            .await;
        let stream = match client
            .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            Ok(s) => s.into_inner(),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        opened += 1;
        let mut stream = stream;
        loop {
            tokio::select! {
                _ = stopped.changed() => return opened.saturating_sub(1),
                item = stream.next() => match item {
                    Some(Ok(d)) => {
                        *received.lock().unwrap().entry(d.sequence).or_default() += 1;
                        let _ = tx
                            .send(pb::SubscribeRequest {
                                ack: Some(pb::AckIds { delivery_ids: vec![d.delivery_id] }),
                                ..Default::default()
                            })
                            .await;
                    }
                    // The stream failed (its broker died): the next one.
                    _ => break,
                }
            }
        }
    }
    opened.saturating_sub(1)
}
