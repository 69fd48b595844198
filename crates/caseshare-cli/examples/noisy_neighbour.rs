//! One abusive client must not slow the others: measures a well-behaved
//! agency's publish latency at a steady 200 events/s, first alone, then
//! while a busy neighbour publishes at its limit (paced, nothing refused),
//! then while another agency floods the broker far beyond its publish rate
//! limit on four concurrent loops. The flood should cost the well-behaved
//! client no more than the busy neighbour does: what the flooder sends
//! beyond its limit is refused early and cheaply. Starts the real
//! `caseshare serve` binary with a per-principal limit of 1,000
//! publishes/s.
//!
//! `cargo run --release -p caseshare-cli --example noisy_neighbour -- target/release/caseshare`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use caseshare_cli::client::Clients;
use caseshare_proto::v1 as pb;
use caseshare_testkit::Broker;

fn event(id: String) -> pb::CaseEvent {
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
        summary: "x".repeat(512),
        payload: Some(pb::case_event::Payload::HealthWasNotBrought(
            pb::WasNotBrought {
                appointment_kind: "dental".into(),
                consecutive_missed: 1,
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

async fn steady(c: &mut Clients, tag: &str, n: u32) -> Vec<f64> {
    let mut lat = Vec::new();
    let mut next = Instant::now();
    for i in 0..n {
        next += Duration::from_millis(5);
        tokio::time::sleep_until(next.into()).await;
        let t = Instant::now();
        c.publisher
            .publish(pb::PublishRequest {
                event: Some(event(format!("{tag}-{i}"))),
                ..Default::default()
            })
            .await
            .unwrap();
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    lat
}

fn pct(v: &[f64], p: f64) -> f64 {
    v[((v.len() as f64 - 1.0) * p) as usize]
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let served = Broker::builder()
        .binary_arg(1)
        .log("warn")
        .envs(&[
            ("CASESHARE_PUBLISH_RATE_PER_SEC", "1000"),
            ("CASESHARE_PUBLISH_BURST", "1000"),
        ])
        .start();
    let connect = |name: &str| served.client(name);
    served.register_sample_agencies().await;
    let mut good = connect("nhs-trust-a");
    let alone = steady(&mut good, "alone", 1000).await;

    // A busy neighbour at its limit: 4 loops paced at 250/s each.
    let (busy, busy_ok, busy_refused, busy_secs) = {
        let loops = neighbour(&connect, "la-social-care-c", Some(Duration::from_millis(4)));
        let started = Instant::now();
        let lat = steady(&mut good, "busy", 1000).await;
        let secs = started.elapsed().as_secs_f64();
        let (ok, refused) = loops.finish().await;
        (lat, ok, refused, secs)
    };
    let loops = neighbour(&connect, "school-b", None);
    let started = Instant::now();
    let flooded = steady(&mut good, "flooded", 1000).await;
    let secs = started.elapsed().as_secs_f64();
    let (ok, refused) = loops.finish().await;
    println!(
        "steady client: 200 publishes/s, 1000 publishes; neighbours: 4 concurrent unary loops from another agency"
    );
    println!("condition,p50 ms,p99 ms,max ms");
    println!(
        "alone,{:.2},{:.2},{:.2}",
        pct(&alone, 0.5),
        pct(&alone, 0.99),
        pct(&alone, 1.0)
    );
    println!(
        "busy neighbour at its limit,{:.2},{:.2},{:.2}",
        pct(&busy, 0.5),
        pct(&busy, 0.99),
        pct(&busy, 1.0)
    );
    println!(
        "with flood,{:.2},{:.2},{:.2}",
        pct(&flooded, 0.5),
        pct(&flooded, 0.99),
        pct(&flooded, 1.0)
    );
    println!(
        "busy neighbour: {busy_ok} accepted ({:.0}/s), {busy_refused} refused ({:.0}/s)",
        busy_ok as f64 / busy_secs,
        busy_refused as f64 / busy_secs
    );
    println!(
        "flood: {ok} accepted ({:.0}/s), {refused} refused RESOURCE_EXHAUSTED ({:.0}/s)",
        ok as f64 / secs,
        refused as f64 / secs
    );
    drop(served);
}

/// Four publishing loops of one agency, each waiting `pace` between sends
/// (`None`: as fast as the broker answers).
struct Neighbour {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    loops: Vec<tokio::task::JoinHandle<(u64, u64)>>,
}

impl Neighbour {
    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut ok, mut refused) = (0, 0);
        for l in self.loops {
            let (o, r) = l.await.unwrap();
            ok += o;
            refused += r;
        }
        (ok, refused)
    }
}

fn neighbour(
    connect: &impl Fn(&str) -> Clients,
    agency: &str,
    pace: Option<Duration>,
) -> Neighbour {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut loops = Vec::new();
    for s in 0..4 {
        let mut c = connect(agency);
        let stop = stop.clone();
        let tag = format!("{agency}-{s}");
        loops.push(tokio::spawn(async move {
            let (mut ok, mut refused) = (0u64, 0u64);
            let mut i = 0u64;
            let mut next = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                if let Some(p) = pace {
                    next += p;
                    tokio::time::sleep_until(next.into()).await;
                }
                match c
                    .publisher
                    .publish(pb::PublishRequest {
                        event: Some(event(format!("{tag}-{i}"))),
                        ..Default::default()
                    })
                    .await
                {
                    Ok(_) => ok += 1,
                    Err(_) => refused += 1,
                }
            }
            (ok, refused)
        }));
    }
    Neighbour { stop, loops }
}
