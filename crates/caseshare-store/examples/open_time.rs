//! Measures how long `SledStore::open` takes on a store of N events (the
//! open-time checks of the recovery rules are part of it).
//!
//! `cargo run --release -p caseshare-store --example open_time -- DIR [N]`
//! builds the store in DIR on first use (N events, default 100,000, in
//! batches of 200 with an audit entry and a delivery record per event),
//! then opens it 5 times and prints each time and the median.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Instant;

use caseshare_store::{Batch, DeliveryRecord, SledStore, Storage, StoredEvent};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().expect("DIR"));
    let n: u64 = args.next().map_or(100_000, |s| s.parse().expect("N"));
    if !dir.join("db").exists() {
        let t = Instant::now();
        let store = SledStore::open(&dir, 64 << 20).unwrap();
        let mut seq = 1u64;
        while seq <= n {
            let end = (seq + 200).min(n + 1);
            let batch = Batch {
                events: (seq..end)
                    .map(|s| StoredEvent {
                        sequence: s,
                        source_agency: "school-b".into(),
                        event_id: format!("bench-{s}"),
                        event: vec![(s % 251) as u8; 600],
                        ..StoredEvent::default()
                    })
                    .collect(),
                audit: (seq..end)
                    .map(|s| {
                        caseshare_audit::entry::encode(&caseshare_proto::v1::AuditEntry {
                            index: s - 1,
                            kind: 1,
                            source_agency: "school-b".into(),
                            event_id: format!("bench-{s}"),
                            payload_commitment: vec![(s % 7) as u8; 32],
                            reason: "x".repeat(200),
                            ..Default::default()
                        })
                    })
                    .collect(),
                audit_first_index: seq - 1,
                deliveries: (seq..end)
                    .map(|s| DeliveryRecord {
                        subscription_id: 1,
                        sequence: s,
                        state: 2,
                        ..DeliveryRecord::default()
                    })
                    .collect(),
                next_sequence: Some(end),
                ..Batch::default()
            };
            store.commit(&batch).unwrap();
            seq = end;
        }
        drop(store);
        println!("built {n} events in {:?}", t.elapsed());
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let store = loop {
            match SledStore::open(&dir, 64 << 20) {
                Ok(s) => break s,
                Err(e) if e.to_string().contains("lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => panic!("{e}"),
            }
        };
        let snap = store.load().unwrap();
        let took = t.elapsed();
        assert_eq!(snap.next_sequence, n + 1);
        println!("open + load: {took:?}");
        times.push(took);
        drop(store);
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    times.sort();
    println!("median open + load of {n} events: {:?}", times[2]);
}
