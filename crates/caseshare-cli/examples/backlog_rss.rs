//! Measures the broker's resident memory as a stalled subscriber's backlog
//! grows: starts the real `caseshare serve` binary, opens a subscription
//! that reads one window and never acknowledges, publishes events with
//! PublishStream, and reads VmRSS from /proc at checkpoints: the highest
//! reading while publishing (sampled every 20 ms), the reading just after
//! the last acknowledgement, and the reading after two seconds at rest (the
//! allocator returns freed pages to the system after a delay).
//!
//! `cargo run --release -p caseshare-cli --example backlog_rss -- target/release/caseshare 1000000`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use caseshare_proto::v1 as pb;

use caseshare_testkit::{Broker, rss_mib};

fn event(i: u64) -> pb::CaseEvent {
    let nhs = caseshare_core::nhs::with_check_digit(&format!("{:09}", 100_000_000 + i % 50_000))
        .unwrap_or_else(|| "9434765919".into());
    pb::CaseEvent {
        event_id: format!("rss-{i}"),
        child: Some(pb::ChildRef {
            nhs_number: nhs,
            local_ids: vec![],
        }),
        purpose: pb::Purpose::EarlyHelp as i32,
        occurred_at: Some(prost_types::Timestamp {
            seconds: 1_793_000_000,
            nanos: 0,
        }),
        summary: "x".repeat(512),
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

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().collect();
    let total: u64 = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let served = Broker::builder().binary_arg(1).log("warn").start();
    let pid = served.pid();
    let connect = |name: &str| served.client(name);
    served.register_sample_agencies().await;
    let mut admin = connect("admin");
    admin
        .admin
        .put_agreement(pb::Agreement {
            agreement_id: "isa".into(),
            provider: "school-b".into(),
            recipient: "la-social-care-c".into(),
            purposes: vec![pb::Purpose::EarlyHelp as i32],
            event_types: vec!["*".into()],
            lawful_basis: pb::LawfulBasis::PublicTask as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut social = connect("la-social-care-c");
    social
        .subscriber
        .create_subscription(pb::Subscription {
            name: "stalled".into(),
            ack_deadline: Some(prost_types::Duration {
                seconds: 600,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::SubscribeRequest {
        subscription: "stalled".into(),
        max_outstanding: 100,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut stream = social
        .subscriber
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let reader = tokio::spawn(async move {
        let mut n = 0u64;
        while let Ok(Some(_)) = stream.message().await {
            n += 1;
        }
        n
    });
    let empty = rss_mib(pid);
    println!("events in backlog,peak while publishing MiB,after the last ack MiB,at rest MiB");
    println!("0,,{empty:.1},");
    // The highest reading since the last checkpoint.
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                let kib = (rss_mib(pid) * 1024.0) as u64;
                peak.fetch_max(kib, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
    };
    let checkpoints = [total / 10, total / 4, total / 2, total];
    let mut published = 0u64;
    for &target in &checkpoints {
        let mut tasks = Vec::new();
        let per = (target - published) / 4;
        for p in 0..4u64 {
            let mut school = connect("school-b");
            let start = published + p * per;
            let end = if p == 3 { target } else { start + per };
            tasks.push(tokio::spawn(async move {
                let (tx, rx) = tokio::sync::mpsc::channel(1024);
                let sender = tokio::spawn(async move {
                    for i in start..end {
                        if tx
                            .send(pb::PublishRequest {
                                event: Some(event(i)),
                                ..Default::default()
                            })
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                });
                let mut resp = school
                    .publisher
                    .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                    .unwrap()
                    .into_inner();
                let mut n = 0;
                while let Some(r) = resp.message().await.unwrap() {
                    let _ = r;
                    n += 1;
                }
                sender.await.unwrap();
                n
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        published = target;
        let after = rss_mib(pid);
        let high = peak.swap(0, std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0;
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let rest = rss_mib(pid);
        println!("{published},{:.1},{after:.1},{rest:.1}", high.max(after));
    }
    sampler.abort();
    drop(served);
    reader.abort();
}
