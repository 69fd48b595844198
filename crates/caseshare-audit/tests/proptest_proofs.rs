//! Property tests of the tiled tree: for random sizes and random append
//! batchings, every inclusion and consistency proof generated from
//! `TiledTree` over `MemTileStore` (live, and reopened from the store)
//! verifies against roots from `merkle::root_from_leaf_hashes`, and flipping
//! any byte of a proof hash or a root makes verification fail. Plus a
//! deterministic run across the first full level-1 tile (65,536 leaves).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use caseshare_audit::merkle::{
    self, Hash, MemTree, leaf_hash, root_from_leaf_hashes, verify_consistency, verify_inclusion,
};
use caseshare_audit::tiles::{MemTileStore, TileKey, TileStore, TiledTree};
use proptest::prelude::*;

fn leaves(seed: u64, n: u64) -> Vec<Hash> {
    (0..n)
        .map(|i| {
            let mut data = seed.to_be_bytes().to_vec();
            data.extend_from_slice(&i.to_be_bytes());
            leaf_hash(&data)
        })
        .collect()
}

/// Appends `leaves` in the given batch sizes (cycled), applying every
/// returned tile write to `store`; returns the sizes after each batch.
fn grow(
    tree: &mut TiledTree,
    store: &mut MemTileStore,
    leaves: &[Hash],
    batches: &[usize],
) -> Vec<u64> {
    let mut sizes = Vec::new();
    let mut done = tree.size() as usize;
    let mut b = batches.iter().cycle();
    while done < leaves.len() {
        let n = (*b.next().unwrap()).min(leaves.len() - done);
        let writes = tree.append(&leaves[done..done + n]);
        // Every write is a whole number of hashes, and at most one per key.
        let mut keys: Vec<TileKey> = writes.iter().map(|w| w.key()).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), writes.len());
        assert!(
            writes
                .iter()
                .all(|w| !w.data.is_empty() && w.data.len() % 32 == 0)
        );
        store.apply(writes);
        done += n;
        sizes.push(done as u64);
    }
    sizes
}

fn flip(h: &Hash, byte: usize, mask: u8) -> Hash {
    let mut h = *h;
    h[byte] ^= mask;
    h
}

/// Flipping any byte of any proof hash, or of the root, breaks the proof.
fn assert_inclusion_tamper_evident(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
    mask: u8,
) {
    for i in 0..proof.len() {
        for byte in 0..32 {
            let mut bad = proof.to_vec();
            bad[i] = flip(&bad[i], byte, mask);
            assert!(verify_inclusion(leaf, index, size, &bad, root).is_err());
        }
    }
    for byte in 0..32 {
        assert!(verify_inclusion(leaf, index, size, proof, &flip(root, byte, mask)).is_err());
        assert!(verify_inclusion(&flip(leaf, byte, mask), index, size, proof, root).is_err());
    }
}

fn assert_consistency_tamper_evident(
    size1: u64,
    size2: u64,
    proof: &[Hash],
    root1: &Hash,
    root2: &Hash,
    mask: u8,
) {
    for i in 0..proof.len() {
        for byte in 0..32 {
            let mut bad = proof.to_vec();
            bad[i] = flip(&bad[i], byte, mask);
            assert!(verify_consistency(size1, size2, &bad, root1, root2).is_err());
        }
    }
    for byte in 0..32 {
        assert!(verify_consistency(size1, size2, proof, &flip(root1, byte, mask), root2).is_err());
        assert!(verify_consistency(size1, size2, proof, root1, &flip(root2, byte, mask)).is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    #[test]
    fn tiled_proofs_verify_and_are_tamper_evident(
        size in 1u64..=2100,
        batches in prop::collection::vec(1usize..=700, 1..8),
        seed in any::<u64>(),
        probe in any::<u64>(),
        mask in 1u8..=255,
    ) {
        let leaves = leaves(seed, size);
        let mut tree = TiledTree::new();
        let mut store = MemTileStore::new();
        let sizes = grow(&mut tree, &mut store, &leaves, &batches);
        let root = root_from_leaf_hashes(&leaves);
        prop_assert_eq!(tree.current_root(), root);

        // Prefix roots: MemTree gives all of them cheaply; check it against
        // the recursive definition at batch boundaries (at most 17, evenly
        // spread, to bound the O(n) recomputations) and a few other sizes.
        let mem = MemTree::from_leaf_hashes(&leaves);
        let roots: Vec<Hash> = (0..=size).map(|s| merkle::tree_root(s, &mem).unwrap()).collect();
        let step = sizes.len().div_ceil(16);
        let boundaries: Vec<u64> = sizes.iter().copied().step_by(step).chain([size]).collect();
        let mut checked = boundaries.clone();
        checked.extend([1, size / 2 + 1, probe % size + 1]);
        for &s in &checked {
            prop_assert_eq!(roots[s as usize], root_from_leaf_hashes(&leaves[..s as usize]));
            prop_assert_eq!(tree.root(s, &store).unwrap(), roots[s as usize]);
        }

        // Reopened from the store alone, the tree serves the same proofs.
        let reopened = TiledTree::open(size, &store).unwrap();
        prop_assert_eq!(reopened.current_root(), root);

        // One node source for all of them, so each tile is hashed once.
        let nodes = reopened.nodes(&store);
        for index in 0..size {
            let proof = merkle::inclusion_proof(index, size, &nodes).unwrap();
            verify_inclusion(&leaves[index as usize], index, size, &proof, &root).unwrap();
        }
        for size1 in 1..=size {
            let proof = merkle::consistency_proof(size1, size, &nodes).unwrap();
            verify_consistency(size1, size, &proof, &roots[size1 as usize], &root).unwrap();
        }

        // Older trees, from the live tree: proofs between batch boundaries.
        let index = probe % size;
        for (k, &s2) in boundaries.iter().enumerate() {
            let i = index % s2;
            let proof = tree.inclusion_proof(i, s2, &store).unwrap();
            prop_assert_eq!(&proof, &merkle::inclusion_proof(i, s2, &mem).unwrap());
            verify_inclusion(&leaves[i as usize], i, s2, &proof, &roots[s2 as usize]).unwrap();
            for &s1 in &boundaries[..=k] {
                let proof = tree.consistency_proof(s1, s2, &store).unwrap();
                prop_assert_eq!(&proof, &merkle::consistency_proof(s1, s2, &mem).unwrap());
                verify_consistency(s1, s2, &proof, &roots[s1 as usize], &roots[s2 as usize]).unwrap();
            }
        }

        // Tamper evidence on a probe inclusion and consistency proof.
        let proof = tree.inclusion_proof(index, size, &store).unwrap();
        assert_inclusion_tamper_evident(&leaves[index as usize], index, size, &proof, &root, mask);
        let size1 = (probe >> 32) % size + 1;
        let proof = tree.consistency_proof(size1, size, &store).unwrap();
        if size1 < size {
            assert_consistency_tamper_evident(size1, size, &proof, &roots[size1 as usize], &root, mask);
        }

        // Reopening at an earlier size (store ahead of it) and re-appending
        // the rest gives the same tree and the same tiles.
        let mid = sizes[sizes.len() / 2].min(size);
        let mut again = TiledTree::open(mid, &store).unwrap();
        prop_assert_eq!(again.current_root(), roots[mid as usize]);
        let mut store2 = store.clone();
        grow(&mut again, &mut store2, &leaves, &[257]);
        prop_assert_eq!(again.current_root(), root);
        for level in 0..3u8 {
            for idx in 0..=(size / 256) {
                prop_assert_eq!(store2.get_tile(level, idx).unwrap(), store.get_tile(level, idx).unwrap());
            }
        }
    }
}

#[test]
fn across_the_first_full_level_one_tile() {
    let n = 65_536 + 300;
    let leaves = leaves(7, n);
    let mut tree = TiledTree::new();
    let mut store = MemTileStore::new();
    grow(&mut tree, &mut store, &leaves, &[1000, 1, 255, 4096]);
    assert_eq!(tree.current_root(), root_from_leaf_hashes(&leaves));
    // A full level-1 tile exists and the level-2 row has its first hash.
    assert_eq!(store.get_tile(1, 0).unwrap().unwrap().len(), 256 * 32);
    assert_eq!(store.get_tile(2, 0).unwrap().unwrap().len(), 32);

    let mem = MemTree::from_leaf_hashes(&leaves);
    assert_eq!(mem.root(), tree.current_root());
    let sizes = [1u64, 255, 256, 257, 65_535, 65_536, 65_537, n];
    let roots: Vec<Hash> = sizes
        .iter()
        .map(|&s| merkle::tree_root(s, &mem).unwrap())
        .collect();
    assert_eq!(roots[3], root_from_leaf_hashes(&leaves[..257]));
    for (j, &size) in sizes.iter().enumerate() {
        let reopened = TiledTree::open(size, &store).unwrap();
        assert_eq!(reopened.current_root(), roots[j]);
        assert_eq!(tree.root(size, &store).unwrap(), roots[j]);
        for index in [0, 1, 254, 255, 256, 65_535, 65_536, size - 1] {
            if index >= size {
                continue;
            }
            for t in [&tree, &reopened] {
                let proof = t.inclusion_proof(index, size, &store).unwrap();
                verify_inclusion(&leaves[index as usize], index, size, &proof, &roots[j]).unwrap();
            }
        }
        for (i, &size1) in sizes[..=j].iter().enumerate() {
            let proof = tree.consistency_proof(size1, size, &store).unwrap();
            verify_consistency(size1, size, &proof, &roots[i], &roots[j]).unwrap();
        }
    }
}

#[test]
fn reopening_detects_missing_tiles() {
    let leaves = leaves(1, 600);
    let mut tree = TiledTree::new();
    let mut store = MemTileStore::new();
    grow(&mut tree, &mut store, &leaves, &[100]);
    let empty = MemTileStore::new();
    let err = TiledTree::open(600, &empty).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    // A store behind the requested size is reported, not silently used.
    let err = TiledTree::open(700, &store).unwrap_err();
    assert!(err.to_string().contains("needs"), "{err}");
    // Beyond the tree: a clear error, not a panic.
    assert!(tree.inclusion_proof(0, 601, &store).is_err());
    assert!(tree.leaf_hash(600, &store).is_err());
    assert_eq!(tree.leaf_hash(599, &store).unwrap(), leaves[599]);
}

#[test]
fn in_memory_right_edge_wins_over_the_store() {
    // Apply only the full tiles: the partial right-edge tiles then exist
    // only in the tree's memory, and proofs for the current size still work.
    let leaves = leaves(3, 1000);
    let mut tree = TiledTree::new();
    let mut store = MemTileStore::new();
    for batch in leaves.chunks(300) {
        store.apply(
            tree.append(batch)
                .into_iter()
                .filter(|w| w.data.len() == 256 * 32),
        );
    }
    let root = root_from_leaf_hashes(&leaves);
    assert_eq!(
        tree.root(999, &store).unwrap(),
        root_from_leaf_hashes(&leaves[..999])
    );
    for index in [0, 255, 767, 768, 999] {
        let proof = tree.inclusion_proof(index, 1000, &store).unwrap();
        verify_inclusion(&leaves[index as usize], index, 1000, &proof, &root).unwrap();
    }
    // The store alone lacks them.
    assert!(TiledTree::open(1000, &store).is_err());
}
