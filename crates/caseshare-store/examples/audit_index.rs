//! Audit queries and subject access reports on a large log, through the
//! audit index and, for contrast, by the linear scan they used before.
//!
//! `cargo run --release -p caseshare-store --example audit_index -- DIR [N]`
//! builds a store of N audit entries (default 1,000,000) in DIR on first
//! use, committed in batches of 1,000 as the writer does (the index is
//! written in each commit): events about ~5,000 children between 50
//! agencies, each an `EVENT_PUBLISHED`, a `SHARE_DECIDED`, an
//! `EVENT_DELIVERED` and an `EVENT_ACKED`, with a consent or an auditor's
//! call now and then. Then it reopens the store and measures, through the
//! same `caseshare_store::audit_query` functions the server calls, p50 and
//! p99 of: a query by child, by agency (first page, and a page from a
//! random point), by agency in a one-hour window, and a subject access
//! report; and the same by scanning (fewer runs: each reads every entry).
//! `--build-only` stops after building; `--rebuild` also times building the index at open for a store written
//! before it (the index removed first).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use caseshare_core::time::Micros;
use caseshare_proto::v1 as pb;
use caseshare_store::audit_query::{self, AuditFilter};
use caseshare_store::{Batch, SledStore, Storage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CHILDREN: u64 = 5_000;
const AGENCIES: u64 = 50;
const BATCH: u64 = 1_000;
/// Recorded time of entry 0; entries are 20 ms apart (1M entries span
/// ~5.6 hours).
const T0: i64 = 1_750_000_000_000_000;
const STEP_US: i64 = 20_000;

fn pseudonym(child: u64) -> Vec<u8> {
    let mut p = [0u8; 32];
    for (i, chunk) in p.chunks_exact_mut(8).enumerate() {
        chunk
            .copy_from_slice(&(child.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i as u64).to_be_bytes());
    }
    p.to_vec()
}

fn agency(a: u64) -> String {
    format!("agency-{a:02}")
}

fn spiffe(a: u64) -> String {
    format!("spiffe://caseshare.local/agency/{}", agency(a))
}

/// Entry `index` of the synthetic log.
fn entry(rng: &mut StdRng, index: u64) -> pb::AuditEntry {
    let mut e = pb::AuditEntry {
        index,
        recorded_at: Some(Micros(T0 + index as i64 * STEP_US).to_timestamp()),
        ..pb::AuditEntry::default()
    };
    // Now and then something other than an event's four entries.
    if rng.gen_range(0..100) == 0 {
        if rng.gen_bool(0.5) {
            e.kind = pb::EntryKind::ConsentRecorded as i32;
            e.actor = spiffe(rng.gen_range(0..AGENCIES));
            e.child_pseudonym = pseudonym(rng.gen_range(0..CHILDREN));
            e.consent_id = format!("consent-{index}");
        } else {
            e.kind = pb::EntryKind::AuditAccessed as i32;
            e.actor = "spiffe://caseshare.local/auditor/dpo".into();
            e.rpc = "/caseshare.v1.Audit/Query".into();
            e.subject = format!(
                "query child=- agency={} kinds=[]",
                agency(rng.gen_range(0..AGENCIES))
            );
        }
        return e;
    }
    // The event is index / 4; its child and agencies follow from it.
    let event = index / 4;
    let mut ev = StdRng::seed_from_u64(event);
    let child = ev.gen_range(0..CHILDREN);
    let from = ev.gen_range(0..AGENCIES);
    let to = (from + ev.gen_range(1..AGENCIES)) % AGENCIES;
    e.child_pseudonym = pseudonym(child);
    e.source_agency = agency(from);
    e.event_id = format!("ev-{event}");
    e.event_type = "school.attendance.concern".into();
    e.sequence = event + 1;
    match index % 4 {
        0 => {
            e.kind = pb::EntryKind::EventPublished as i32;
            e.actor = spiffe(from);
            e.payload_commitment = pseudonym(event);
        }
        1 => {
            e.kind = pb::EntryKind::ShareDecided as i32;
            e.actor = spiffe(from);
            e.recipient_agency = agency(to);
            e.decision = 1;
            e.reason = "agreement".into();
            e.agreement_id = format!("agr-{from}-{to}");
            e.lawful_basis = 1;
            e.purpose = 1;
        }
        2 => {
            e.kind = pb::EntryKind::EventDelivered as i32;
            e.actor = "system".into();
            e.recipient_agency = agency(to);
            e.subscription = format!("sub-{to}");
            e.delivery_id = format!("d-{event}");
            e.attempt = 1;
        }
        _ => {
            e.kind = pb::EntryKind::EventAcked as i32;
            e.actor = spiffe(to);
            e.recipient_agency = agency(to);
            e.delivery_id = format!("d-{event}");
        }
    }
    e
}

fn open(dir: &Path) -> SledStore {
    loop {
        match SledStore::open(dir, 256 << 20) {
            Ok(s) => return s,
            Err(e) if e.to_string().contains("lock") => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

fn build(dir: &Path, n: u64) {
    let store = open(dir);
    let mut rng = StdRng::seed_from_u64(14);
    let started = Instant::now();
    let mut in_commit = Duration::ZERO;
    let mut first = 0;
    while first < n {
        let end = (first + BATCH).min(n);
        let audit = (first..end)
            .map(|i| caseshare_audit::entry::encode(&entry(&mut rng, i)))
            .collect();
        let t = Instant::now();
        store
            .commit(&Batch {
                audit,
                audit_first_index: first,
                ..Batch::default()
            })
            .unwrap();
        in_commit += t.elapsed();
        first = end;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "built {n} entries in batches of {BATCH} (fdatasync per commit): {secs:.1} s; in \
         `commit`: {:.2} s, {:.0} entries/s, {:.2} µs per entry",
        in_commit.as_secs_f64(),
        n as f64 / in_commit.as_secs_f64(),
        in_commit.as_secs_f64() * 1e6 / n as f64
    );
}

fn percentiles(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    let at = |q: usize| v[(v.len() * q / 100).min(v.len() - 1)];
    (at(50), at(99))
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// Runs `f` `runs` times with fresh random inputs; prints p50/p99 and the
/// mean number of entries returned.
fn measure(
    name: &str,
    runs: usize,
    rng: &mut StdRng,
    mut f: impl FnMut(&mut StdRng) -> usize,
) -> (Duration, Duration) {
    let mut times = Vec::with_capacity(runs);
    let mut returned = 0;
    for _ in 0..runs {
        let t = Instant::now();
        returned += f(rng);
        times.push(t.elapsed());
    }
    let (p50, p99) = percentiles(times);
    println!(
        "| {name} | {runs} | {} | {} | {:.0} |",
        ms(p50),
        ms(p99),
        returned as f64 / runs as f64
    );
    (p50, p99)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().expect("DIR"));
    let rest: Vec<String> = args.collect();
    let n: u64 = rest
        .iter()
        .find(|a| !a.starts_with("--"))
        .map_or(1_000_000, |s| s.parse().expect("N"));
    if !dir.join("db").exists() {
        build(&dir, n);
        if rest.iter().any(|a| a == "--build-only") {
            return;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    if rest.iter().any(|a| a == "--rebuild") {
        {
            let store = open(&dir);
            let tree = store.raw_tree();
            let mut removed = 0;
            for prefix in [b'Q', b'L', b'W'] {
                for k in tree.scan_prefix([prefix]).keys() {
                    tree.remove(k.unwrap()).unwrap();
                    removed += 1;
                }
            }
            tree.remove(b"Maidx").unwrap();
            store.commit(&Batch::default()).unwrap();
            println!("removed the index ({removed} records)");
        }
        std::thread::sleep(Duration::from_secs(1));
        let t = Instant::now();
        drop(open(&dir));
        println!(
            "open, building the index of {n} entries: {:.1} s",
            t.elapsed().as_secs_f64()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let t = Instant::now();
    let store = open(&dir);
    let size = store.load().unwrap().audit_size;
    println!("open + load with the index in place: {:?}", t.elapsed());
    assert_eq!(size, n);
    let mut rng = StdRng::seed_from_u64(7);
    let page = 1_000;
    let by_child = |rng: &mut StdRng| AuditFilter {
        child_pseudonym: pseudonym(rng.gen_range(0..CHILDREN)),
        ..AuditFilter::default()
    };
    let by_agency = |rng: &mut StdRng| AuditFilter {
        agency_id: agency(rng.gen_range(0..AGENCIES)),
        ..AuditFilter::default()
    };
    println!("| {size} entries | runs | p50 | p99 | entries returned (mean) |");
    println!("|---|---|---|---|---|");
    for (label, scan, runs) in [("index", false, 500), ("scan", true, 5)] {
        let q = |f: &AuditFilter, start: u64| {
            if scan {
                audit_query::query_by_scan(&store, f, start, size, page).unwrap()
            } else {
                audit_query::query(&store, f, start, size, page).unwrap()
            }
        };
        measure(
            &format!("query by child ({label})"),
            runs,
            &mut rng,
            |rng| q(&by_child(rng), 0).len(),
        );
        measure(
            &format!("query by agency, first page ({label})"),
            runs,
            &mut rng,
            |rng| q(&by_agency(rng), 0).len(),
        );
        measure(
            &format!("query by agency, page from a random index ({label})"),
            runs,
            &mut rng,
            |rng| {
                let start = rng.gen_range(0..size);
                q(&by_agency(rng), start).len()
            },
        );
        measure(
            &format!("query by agency in a one-hour window ({label})"),
            runs,
            &mut rng,
            |rng| {
                let mut f = by_agency(rng);
                let from = T0 + rng.gen_range(0..size as i64) * STEP_US;
                f.from = Some(Micros(from));
                f.to = Some(Micros(from + 3_600_000_000));
                q(&f, 0).len()
            },
        );
        measure(
            &format!("subject access report ({label})"),
            runs,
            &mut rng,
            |rng| {
                let p = pseudonym(rng.gen_range(0..CHILDREN));
                if scan {
                    audit_query::shares_of_by_scan(&store, &p, size)
                        .unwrap()
                        .len()
                } else {
                    audit_query::shares_of(&store, &p, size).unwrap().len()
                }
            },
        );
    }
}
