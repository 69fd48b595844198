//! The kit's NATS cluster against real `nats-server` processes: a 3-node
//! JetStream cluster on loopback, an R3 file-storage stream, and what the
//! cluster-mode tests will lean on — a SIGKILLed stream leader is replaced
//! while a client keeps publishing with `Nats-Msg-Id` retries, the node
//! restarts on its own store and catches up, and every acknowledged
//! message is in the stream exactly once; a SIGSTOPped follower does not
//! stop writes and catches up on SIGCONT; a killed meta leader is replaced.
//! Nothing here is random but the ports (printed) and the server the
//! client happens to connect to first.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage, stream};
use caseshare_testkit::{NatsCluster, NodeState, StreamState, install_crypto};

const STREAM: &str = "KIT";
/// How long one publish waits for its acknowledgement before it is sent
/// again (with the same `Nats-Msg-Id`, so the stream keeps one copy).
const ACK_TIMEOUT: Duration = Duration::from_millis(500);
/// The bound on writes resuming after any single kill.
const RESUME_BOUND: Duration = Duration::from_secs(15);

/// How long a JetStream API request (create the stream, read a message)
/// may take.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// Two clusters electing leaders at once on a 2-core machine stretch each
/// other's elections (seen: 14 s instead of 5): the tests here take turns.
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Two JetStream contexts on one client connected to every node's URL (it
/// picks one at random: printed) and reconnecting fast: one for publishing,
/// with a short acknowledgement timeout, and one for the API. The short
/// ping interval is what lets the client leave a SIGSTOPped server, which
/// keeps the socket open and answers nothing: three unanswered pings,
/// 750 ms.
async fn connect(cluster: &NatsCluster) -> (jetstream::Context, jetstream::Context) {
    install_crypto();
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(1))
        .ping_interval(Duration::from_millis(250))
        .reconnect_delay_callback(|_| Duration::from_millis(50))
        .connect(cluster.urls())
        .await
        .unwrap();
    let info = client.server_info();
    println!(
        "client connected to {} (port {})",
        info.server_name, info.port
    );
    let publish = jetstream::ContextBuilder::new()
        .timeout(ACK_TIMEOUT)
        .build(client.clone());
    let api = jetstream::ContextBuilder::new()
        .timeout(API_TIMEOUT)
        .build(client);
    (publish, api)
}

/// The replicated stream: R3, file storage, a two-minute dedupe window.
async fn create_stream(js: &jetstream::Context, cluster: &NatsCluster) -> usize {
    js.create_stream(stream::Config {
        name: STREAM.into(),
        subjects: vec!["kit.>".into()],
        storage: stream::StorageType::File,
        num_replicas: 3,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .unwrap();
    let (leader, _) = cluster
        .wait_stream_leader(STREAM, None, Duration::from_secs(10))
        .await
        .expect("the new stream has a leader");
    leader
}

/// What the client was told about each message it published.
#[derive(Default)]
struct Acked {
    /// Message id → the stream sequence its acknowledgement named.
    seq: BTreeMap<String, u64>,
    /// When each acknowledgement arrived, in order.
    at: Vec<Instant>,
    /// Publishes sent again after a timeout or an error.
    retries: u32,
    /// Acknowledgements that said "duplicate" (a retry of a stored one).
    duplicates: u32,
    /// The kinds of error seen before a resend, with their counts.
    errors: BTreeMap<String, u32>,
}

impl Acked {
    /// Publishes message `i` until it is acknowledged, resending it with the
    /// same `Nats-Msg-Id` after an error or a timeout; fails the test if
    /// that takes longer than the resume bound.
    async fn publish(&mut self, js: &jetstream::Context, i: u32) {
        let id = format!("m-{i:05}");
        let start = Instant::now();
        loop {
            let msg = PublishMessage::build()
                .payload(format!("payload {i}").into())
                .message_id(&id);
            let outcome = match js.send_publish(format!("kit.m.{}", i % 7), msg).await {
                Ok(ack) => ack.await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match outcome {
                Ok(ack) => {
                    assert_eq!(ack.stream, STREAM);
                    self.duplicates += u32::from(ack.duplicate);
                    let before = self.seq.insert(id.clone(), ack.sequence);
                    assert_eq!(before, None, "{id} acknowledged twice by the test");
                    self.at.push(Instant::now());
                    return;
                }
                Err(e) => {
                    assert!(
                        start.elapsed() < RESUME_BOUND,
                        "{id} not acknowledged within {RESUME_BOUND:?}: {e}"
                    );
                    self.retries += 1;
                    *self.errors.entry(e).or_default() += 1;
                    // Errors such as "no responders" come at once: pace the retries.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    async fn publish_range(&mut self, js: &jetstream::Context, range: std::ops::Range<u32>) {
        for i in range {
            self.publish(js, i).await;
        }
    }
}

/// Waits until every node holds `expected` of the stream.
async fn all_replicas_hold(cluster: &NatsCluster, expected: StreamState) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut states = Vec::new();
        for i in 0..cluster.len() {
            states.push(cluster.stream_state(i, STREAM).await);
        }
        if states.iter().all(|s| *s == Some(expected)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replicas never converged on {expected:?}: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads the whole stream back and checks it holds every acknowledged
/// message exactly once, at the sequence its acknowledgement named, and
/// nothing else.
async fn check_exactly_once(js: &jetstream::Context, acked: &Acked) {
    let stream = js.get_stream(STREAM).await.unwrap();
    let info = stream.get_info().await.unwrap();
    let total = u64::try_from(acked.seq.len()).unwrap();
    assert_eq!(
        (
            info.state.messages,
            info.state.first_sequence,
            info.state.last_sequence
        ),
        (total, 1, total),
        "the stream holds a message twice, or one no acknowledgement named"
    );
    let mut seen = BTreeMap::new();
    for seq in 1..=total {
        let m = stream.get_raw_message(seq).await.unwrap();
        let id = m
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_string())
            .unwrap_or_else(|| panic!("message {seq} has no Nats-Msg-Id"));
        let i: u32 = id.trim_start_matches("m-").parse().unwrap();
        assert_eq!(m.payload.as_ref(), format!("payload {i}").as_bytes());
        assert_eq!(seen.insert(id.clone(), seq), None, "{id} stored twice");
    }
    assert_eq!(
        seen, acked.seq,
        "stored messages differ from acknowledged ones"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_stream_leader_is_replaced_and_no_acknowledged_message_is_lost_or_doubled() {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let mut cluster = NatsCluster::start(3).await;
    println!(
        "{} ({}), nodes {:?}, files in {}",
        cluster.version(),
        cluster.binary().display(),
        cluster.urls(),
        cluster.dir().display()
    );
    let (js, api) = connect(&cluster).await;
    let leader = create_stream(&api, &cluster).await;
    let meta = cluster.meta_leader().await;
    println!("stream leader n{leader}, meta leader {meta:?}");

    let mut acked = Acked::default();
    acked.publish_range(&js, 0..100).await;
    let last_before = *acked.at.last().unwrap();

    cluster.kill9(leader);
    let killed = Instant::now();
    acked.publish(&js, 100).await;
    let without_writes = acked.at[100] - killed;
    let (new_leader, _) = cluster
        .wait_stream_leader(STREAM, Some(leader), RESUME_BOUND)
        .await
        .expect("a new stream leader after the kill");
    assert_ne!(new_leader, leader);
    println!(
        "SIGKILL of stream leader n{leader}: first write acknowledged {:.0} ms after the kill \
         ({:.0} ms after the last one before it); new leader n{new_leader}",
        without_writes.as_secs_f64() * 1e3,
        (acked.at[100] - last_before).as_secs_f64() * 1e3
    );
    assert!(without_writes < RESUME_BOUND, "{without_writes:?}");
    acked.publish_range(&js, 101..150).await;

    let back = cluster.restart(leader).await;
    assert_eq!(cluster.state(leader), NodeState::Running);
    println!(
        "n{leader} restarted on its store and healthy in {:.0} ms",
        back.as_secs_f64() * 1e3
    );
    acked.publish_range(&js, 150..170).await;

    let total = u64::try_from(acked.seq.len()).unwrap();
    all_replicas_hold(
        &cluster,
        StreamState {
            messages: total,
            first_seq: 1,
            last_seq: total,
        },
    )
    .await;
    check_exactly_once(&api, &acked).await;
    println!(
        "{total} messages acknowledged, each stored once on every replica ({} resends, {} \
         acknowledged as duplicates; errors before resends: {:?})",
        acked.retries, acked.duplicates, acked.errors
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_follower_does_not_stop_writes_and_a_killed_meta_leader_is_replaced() {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let mut cluster = NatsCluster::start(3).await;
    println!("{}, nodes {:?}", cluster.version(), cluster.urls());
    let (js, api) = connect(&cluster).await;
    let leader = create_stream(&api, &cluster).await;
    let follower = (leader + 1) % 3;

    cluster.stop(follower);
    assert_eq!(cluster.state(follower), NodeState::Stopped);
    assert!(!cluster.healthy(follower).await, "a stopped node answers");
    let mut acked = Acked::default();
    let start = Instant::now();
    acked.publish_range(&js, 0..50).await;
    println!(
        "50 writes with follower n{follower} stopped: {:.0} ms, {} resends",
        start.elapsed().as_secs_f64() * 1e3,
        acked.retries
    );
    assert_eq!(cluster.stream_leader(STREAM).await, Some(leader));

    cluster.cont(follower);
    let held = StreamState {
        messages: 50,
        first_seq: 1,
        last_seq: 50,
    };
    all_replicas_hold(&cluster, held).await;
    assert!(cluster.healthy(follower).await);

    let (meta, _) = cluster
        .wait_meta_leader(None, Duration::from_secs(5))
        .await
        .expect("a meta leader");
    cluster.kill9(meta);
    let (new_meta, took) = cluster
        .wait_meta_leader(Some(meta), RESUME_BOUND)
        .await
        .expect("a new meta leader after the kill");
    assert_ne!(new_meta, meta);
    println!(
        "SIGKILL of meta leader n{meta}: n{new_meta} leads after {:.0} ms",
        took.as_secs_f64() * 1e3
    );
    acked.publish_range(&js, 50..60).await;
    cluster.restart(meta).await;
    all_replicas_hold(
        &cluster,
        StreamState {
            messages: 60,
            first_seq: 1,
            last_seq: 60,
        },
    )
    .await;
    check_exactly_once(&api, &acked).await;
}
