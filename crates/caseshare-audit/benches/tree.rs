//! Benchmarks of the tiled Merkle tree: appending 1,000,000 leaves in batches
//! of 1,000 (throughput in entries/s), and inclusion and consistency proof
//! generation on a 1,000,000-leaf tree over `MemTileStore` (per proof).
//! Targets: >= 100,000 appends/s; proofs < 1 ms median.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use caseshare_audit::merkle::{Hash, leaf_hash};
use caseshare_audit::tiles::{MemTileStore, TiledTree};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::hint::black_box;

const LEAVES: u64 = 1_000_000;
const BATCH: usize = 1_000;

fn leaf_hashes() -> Vec<Hash> {
    (0..LEAVES).map(|i| leaf_hash(&i.to_be_bytes())).collect()
}

fn build(leaves: &[Hash]) -> (TiledTree, MemTileStore) {
    let mut tree = TiledTree::new();
    let mut store = MemTileStore::new();
    for batch in leaves.chunks(BATCH) {
        store.apply(tree.append(batch));
    }
    (tree, store)
}

fn append(c: &mut Criterion) {
    let leaves = leaf_hashes();
    let mut group = c.benchmark_group("append");
    group.sample_size(10);
    group.throughput(Throughput::Elements(LEAVES));
    group.bench_function("1M leaves in batches of 1000", |b| {
        b.iter_batched(
            || (),
            |()| black_box(build(&leaves)),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn proofs(c: &mut Criterion) {
    let leaves = leaf_hashes();
    let (tree, store) = build(&leaves);
    let mut rng = StdRng::seed_from_u64(42);
    let mut group = c.benchmark_group("proof on 1M-leaf tree");
    group.bench_function("inclusion", |b| {
        b.iter_batched(
            || rng.gen_range(0..LEAVES),
            |index| black_box(tree.inclusion_proof(index, LEAVES, &store).unwrap()),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("consistency", |b| {
        b.iter_batched(
            || rng.gen_range(1..LEAVES),
            |size1| black_box(tree.consistency_proof(size1, LEAVES, &store).unwrap()),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("inclusion in an older tree", |b| {
        b.iter_batched(
            || {
                let size = rng.gen_range(1..=LEAVES);
                (rng.gen_range(0..size), size)
            },
            |(index, size)| black_box(tree.inclusion_proof(index, size, &store).unwrap()),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("reopen from the store", |b| {
        b.iter(|| black_box(TiledTree::open(LEAVES, &store).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, append, proofs);
criterion_main!(benches);
