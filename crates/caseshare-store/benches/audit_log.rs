//! The audit log with persistence: appending entries in batches through the
//! sled store exactly as the writer does (leaf chunks and Merkle tiles in one
//! atomic, fdatasync'ed commit), then inclusion and consistency proofs read
//! from the stored tiles of a 1,000,000-entry log.
//!
//! `cargo bench -p caseshare-store --bench audit_log`

use std::sync::Arc;
use std::time::Instant;

use caseshare_audit::merkle::leaf_hash;
use caseshare_audit::tiles::{TileStore, TiledTree};
use caseshare_store::{Batch, SledStore, Storage, StoreError};
use criterion::{Criterion, criterion_group, criterion_main};

/// Reads tiles from the store, as the server's audit log does.
struct StoreTiles<'a>(&'a dyn Storage);

impl TileStore for StoreTiles<'_> {
    type Error = StoreError;
    fn get_tile(&self, level: u8, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.tile(level, index)
    }
}

const ENTRIES: u64 = 1_000_000;
const BATCH: u64 = 1_000;

fn entry(i: u64) -> Vec<u8> {
    // About the size of a SHARE_DECIDED entry (the store indexes it).
    caseshare_audit::entry::encode(&caseshare_core::pb::AuditEntry {
        index: i,
        kind: caseshare_core::pb::EntryKind::ShareDecided as i32,
        actor: format!("spiffe://caseshare.local/agency/agency-{}", i % 50),
        child_pseudonym: i
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .to_be_bytes()
            .repeat(4),
        source_agency: format!("agency-{}", i % 50),
        recipient_agency: format!("agency-{}", (i + 7) % 50),
        event_id: format!("ev-{i}"),
        ..Default::default()
    })
}

fn build(dir: &std::path::Path) -> (Arc<SledStore>, TiledTree) {
    let store = Arc::new(SledStore::open(dir, 256 << 20).unwrap_or_else(|e| panic!("open: {e}")));
    let mut tree = TiledTree::new();
    let started = Instant::now();
    let mut i = 0;
    while i < ENTRIES {
        let leaves: Vec<Vec<u8>> = (i..i + BATCH).map(entry).collect();
        let hashes: Vec<_> = leaves.iter().map(|l| leaf_hash(l)).collect();
        let tiles = tree.append(&hashes);
        let batch = Batch {
            audit: leaves,
            audit_first_index: i,
            tiles: tiles
                .into_iter()
                .map(|t| (t.level, t.index, t.data))
                .collect(),
            ..Batch::default()
        };
        store
            .commit(&batch)
            .unwrap_or_else(|e| panic!("commit: {e}"));
        i += BATCH;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "appended {ENTRIES} entries in batches of {BATCH} with persistence (fdatasync per batch): {:.0} entries/s ({secs:.1} s)",
        ENTRIES as f64 / secs
    );
    (store, tree)
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let (store, tree) = build(dir.path());
    let tiles = StoreTiles(store.as_ref());
    let mut k: u64 = 1;
    c.bench_function("inclusion proof, 1M-entry log, sled tiles", |b| {
        b.iter(|| {
            k = (k * 6_364_136_223_846_793_005 + 1) % ENTRIES;
            tree.inclusion_proof(k, ENTRIES, &tiles)
                .unwrap_or_else(|e| panic!("{e}"))
        })
    });
    c.bench_function("consistency proof, 1M-entry log, sled tiles", |b| {
        b.iter(|| {
            k = (k * 6_364_136_223_846_793_005 + 1) % ENTRIES;
            tree.consistency_proof(k.max(1), ENTRIES, &tiles)
                .unwrap_or_else(|e| panic!("{e}"))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50);
    targets = bench
}
criterion_main!(benches);
