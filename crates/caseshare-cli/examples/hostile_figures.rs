//! The figures of issue 13's "connections" work, for any `caseshare`
//! binary (run it on the release binary before and after the change):
//!
//! 1. audit-log bytes written per refused call under a flood of forbidden
//!    calls and calls to unknown methods with 4 KiB paths (four clients,
//!    five seconds);
//! 2. the broker's resident memory (VmRSS) with one Subscribe stream that
//!    opened a window of 1,000 and reads nothing while 6,000 of the largest
//!    events the schema allows (~13.5 KiB: a 3,990-character summary of
//!    three-byte characters and 16 local ids; ~80 MiB in all, as the
//!    1,500 events of ~55 KiB before the bounds of issue 13) are published;
//! 3. connect latency (mTLS handshake + first publish, fresh connection)
//!    for a well-behaved agency, calm and then during a flood of 6,000 TCP
//!    connections that never start a handshake, with the broker's
//!    RLIMIT_NOFILE at 4,096.
//!
//! `cargo run --release -p caseshare-cli --example hostile_figures -- target/release/caseshare`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use caseshare_proto::v1 as pb;
use caseshare_testkit::{Broker, BrokerBuilder, call_path, rss_mib};

fn event(id: String, summary_chars: usize) -> pb::CaseEvent {
    pb::CaseEvent {
        event_id: id,
        child: Some(pb::ChildRef {
            nhs_number: "9434765919".into(),
            local_ids: vec![],
        }),
        purpose: pb::Purpose::EarlyHelp as i32,
        occurred_at: Some(prost_types::Timestamp {
            seconds: 1_793_000_000,
            nanos: 0,
        }),
        summary: "x".repeat(summary_chars),
        payload: Some(pb::case_event::Payload::EducationAttendanceConcern(
            pb::AttendanceConcern {
                period: "2026-autumn-1".into(),
                attendance_percent: 80.0,
                unauthorised_sessions: 4,
            },
        )),
        ..Default::default()
    }
}

/// How many of [`big_event`] the slow-reader figure publishes.
const BIG_EVENTS: usize = 6_000;

/// One of the largest events the schema allows (~13.5 KiB): a summary at
/// its character limit in three-byte characters, and the most local ids.
fn big_event(id: String) -> pb::CaseEvent {
    let mut e = event(id, 0);
    e.summary = "語".repeat(3_990);
    if let Some(child) = e.child.as_mut() {
        child.local_ids = (0..16)
            .map(|i| pb::LocalId {
                scheme: format!("scheme-{i:02}-{}", "s".repeat(22)),
                value: format!("{i:06}-{}", "7".repeat(57)),
            })
            .collect();
    }
    e
}

/// (entries, bytes) of the audit log so far.
async fn audit_size(s: &Broker) -> (u64, u64) {
    let mut auditor = s.client("auditor");
    let size = auditor
        .audit
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await
        .unwrap()
        .into_inner()
        .tree_size;
    let mut bytes = 0;
    let mut start = 0;
    while start < size {
        let end = size.min(start + 10_000);
        let mut stream = auditor
            .audit
            .get_entries(pb::GetEntriesRequest { start, end })
            .await
            .unwrap()
            .into_inner();
        while let Some(leaf) = stream.message().await.unwrap() {
            bytes += leaf.leaf.len() as u64;
        }
        start = end;
    }
    (size, bytes)
}

async fn refusal_flood() {
    let s = broker()
        .env("CASESHARE_AUDIT_REFUSAL_INTERVAL_MS", "1000")
        .start();
    s.register_sample_agencies().await;
    let (n0, b0) = audit_size(&s).await;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..4 {
        let config = s.client_config("school-b");
        tasks.push(tokio::spawn(async move {
            let channel = config.connect_lazy().unwrap();
            let long = format!(
                "/caseshare.v1.Admin/RegisterAgency{}",
                "4010232137".repeat(400)
            );
            let mut calls = 0u64;
            while start.elapsed() < Duration::from_secs(5) {
                let path = if (calls + i).is_multiple_of(2) {
                    long.clone()
                } else {
                    "/caseshare.v1.Admin/RegisterAgency".to_string()
                };
                let _ = call_path(channel.clone(), &path).await;
                calls += 1;
            }
            calls
        }));
    }
    let mut calls = 0;
    for t in tasks {
        calls += t.await.unwrap();
    }
    // Let an aggregating broker write its interval.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (n1, b1) = audit_size(&s).await;
    println!(
        "refusal flood: {calls} refused calls (half unknown 4 KiB paths) in 5 s -> {} audit entries, {} bytes: {:.2} bytes per refused call",
        n1 - n0,
        b1 - b0,
        (b1 - b0) as f64 / calls as f64
    );
    drop(s);
}

/// Publishes [`BIG_EVENTS`] ~13.5 KiB events and returns the broker's VmRSS growth;
/// with `stall`, one Subscribe stream (window 1,000) reads nothing.
async fn slow_reader(stall: bool) -> f64 {
    let s = broker().start();
    s.register_sample_agencies().await;
    s.client("admin")
        .admin
        .put_agreement(pb::Agreement {
            agreement_id: "isa".into(),
            provider: "school-b".into(),
            recipient: "la-social-care-c".into(),
            purposes: vec![pb::Purpose::EarlyHelp as i32],
            event_types: vec!["education.*".into()],
            lawful_basis: pb::LawfulBasis::PublicTask as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut sub = s.client("la-social-care-c");
    sub.subscriber
        .create_subscription(pb::Subscription {
            name: "main".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let pid = s.pid();
    let rss0 = rss_mib(pid);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::SubscribeRequest {
        subscription: "main".into(),
        max_outstanding: 1_000,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut stalled = if stall {
        Some(
            sub.subscriber
                .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner(),
        )
    } else {
        None
    };
    let mut publisher = s.client("school-b");
    for i in 0..BIG_EVENTS {
        publisher
            .publisher
            .publish(pb::PublishRequest {
                event: Some(big_event(format!("slow-{i}"))),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(15)).await;
    let rss1 = rss_mib(pid);
    let Some(stalled) = stalled.as_mut() else {
        println!(
            "no subscriber stream: VmRSS {rss0:.1} MiB before, {rss1:.1} MiB after publishing the same events: +{:.1} MiB",
            rss1 - rss0
        );
        drop(s);
        return rss1 - rss0;
    };
    // What the stalled stream now says, if it was ended.
    let mut read = 0;
    let ending = loop {
        match tokio::time::timeout(Duration::from_secs(5), stalled.message()).await {
            Ok(Ok(Some(_))) => read += 1,
            Ok(Ok(None)) => break "ended without a status".to_string(),
            Ok(Err(st)) => break format!("{:?}: {}", st.code(), st.message()),
            Err(_) => break "still open".to_string(),
        }
    };
    println!(
        "slow reader: VmRSS {rss0:.1} MiB before, {rss1:.1} MiB with one stalled stream (window 1,000, {BIG_EVENTS} events of ~13.5 KiB published): +{:.1} MiB; the stream then gave {read} deliveries and {ending}",
        rss1 - rss0
    );
    drop(tx);
    drop(s);
    rss1 - rss0
}

async fn publish_fresh(s: &Broker, id: String) -> Option<Duration> {
    let t = Instant::now();
    let mut c = s.client("school-b");
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        c.publisher.publish(pb::PublishRequest {
            event: Some(event(id, 100)),
            ..Default::default()
        }),
    )
    .await;
    matches!(r, Ok(Ok(_))).then(|| t.elapsed())
}

async fn connection_flood() {
    // The broker's RLIMIT_NOFILE at 4,096 (soft and hard).
    let s = broker()
        .wrap(&[
            "sh".into(),
            "-c".into(),
            "ulimit -n 4096 && exec \"$0\" \"$@\"".into(),
        ])
        .start();
    s.register_sample_agencies().await;
    let mut calm = Vec::new();
    for i in 0..10 {
        calm.push(publish_fresh(&s, format!("calm-{i}")).await);
    }
    let addr = s.grpc;
    let mut flood = Vec::new();
    let flood_start = Instant::now();
    for _ in 0..6_000 {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(c) => flood.push(c),
            Err(_) => break,
        }
    }
    let flood_took = flood_start.elapsed();
    let fds = std::fs::read_dir(format!("/proc/{}/fd", s.pid()))
        .map(|d| d.count())
        .unwrap_or(0);
    let mut during = Vec::new();
    for i in 0..10 {
        during.push(publish_fresh(&s, format!("flood-{i}")).await);
    }
    let show = |v: &[Option<Duration>]| {
        let ok: Vec<_> = v.iter().flatten().collect();
        let max = ok
            .iter()
            .max()
            .map(|d| format!("{d:.1?}"))
            .unwrap_or("-".into());
        let mut sorted = ok.clone();
        sorted.sort();
        let median = sorted
            .get(sorted.len() / 2)
            .map(|d| format!("{d:.1?}"))
            .unwrap_or("-".into());
        format!(
            "{}/{} connected, median {median}, max {max}",
            ok.len(),
            v.len()
        )
    };
    println!(
        "connect latency (TLS + first publish): calm {}; during a flood of {} silent TCP sockets (opened in {flood_took:.1?}; broker then had {fds} descriptors open) {}",
        show(&calm),
        flood.len(),
        show(&during)
    );
    drop(flood);
    drop(s);
}

/// The broker to measure: the binary named on the command line, else the
/// test kit's (`CASESHARE_BIN`, or `caseshare` beside this example).
fn broker() -> BrokerBuilder {
    Broker::builder().binary_arg(1).log("warn")
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    refusal_flood().await;
    let base = slow_reader(false).await;
    let stalled = slow_reader(true).await;
    println!(
        "slow reader: the stalled stream itself holds about {:.1} MiB",
        stalled - base
    );
    connection_flood().await;
}
