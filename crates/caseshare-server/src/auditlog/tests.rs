//! The audit log's proofs hold no lock the writer needs: an append goes
//! through while a proof is stopped in the middle of reading a tile.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::mpsc;
use std::time::Duration;

use caseshare_audit::merkle::{verify_consistency, verify_inclusion};
use caseshare_store::{Batch, SledStore};

use super::*;
use crate::gated_store::{At, Gated};

fn leaves(from: u64, n: u64) -> Vec<Vec<u8>> {
    (from..from + n)
        .map(|index| {
            caseshare_audit::entry::encode(&pb::AuditEntry {
                index,
                subject: format!("entry {index}"),
                ..Default::default()
            })
        })
        .collect()
}

/// Appends and commits as the writer does; returns the new head.
fn append_and_commit(log: &AuditLog, store: &dyn Storage, from: u64, n: u64) -> (u64, Hash) {
    let audit = leaves(from, n);
    let (writes, size, root) = log.append(&audit);
    store
        .commit(&Batch {
            audit,
            audit_first_index: from,
            tiles: writes
                .into_iter()
                .map(|t| (t.level, t.index, t.data))
                .collect(),
            ..Batch::default()
        })
        .unwrap();
    log.committed(size, root);
    (size, root)
}

#[test]
fn an_append_goes_through_while_a_proof_reads_tiles() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Gated::open(dir.path()));
    let signer = NoteSigner::generate("test.example/log", &mut rand::rngs::OsRng).unwrap();
    let log = AuditLog::open(store.clone(), 0, signer, "test.example/log".into()).unwrap();
    let (size, root) = append_and_commit(&log, store.as_ref(), 0, 1_000);

    // Arm the gate: the proof's first tile read stops until let go.
    let held = store.arm(At::Tile);
    let proving = {
        let log = log.clone();
        std::thread::spawn(move || log.inclusion_proof(300, size))
    };
    assert!(held.entered(), "the proof reads a tile");

    // The proof is stopped inside a tile read. The writer's append must not
    // wait for it.
    let (appended_tx, appended) = mpsc::channel();
    let appending = {
        let log = log.clone();
        let store = store.clone();
        std::thread::spawn(move || {
            let head = append_and_commit(&log, store.as_ref(), 1_000, 500);
            appended_tx.send(head).unwrap();
        })
    };
    let got = appended.recv_timeout(Duration::from_secs(30));
    // Let the proof go whatever happened, so that a failure does not hang.
    held.release();
    let (new_size, new_root) = got.expect("the append finished while the proof was stopped");
    appending.join().unwrap();
    assert_eq!(new_size, 1_500);
    assert_eq!(log.head(), (1_500, new_root));

    // The stopped proof is still the proof of the size it was asked for.
    let proof = proving.join().unwrap().unwrap();
    let leaf = leaf_hash(&leaves(300, 1)[0]);
    verify_inclusion(&leaf, 300, size, &proof, &root).unwrap();
    // And proofs of the new size read the new tiles.
    let proof = log.inclusion_proof(1_234, new_size).unwrap();
    let leaf = leaf_hash(&leaves(1_234, 1)[0]);
    verify_inclusion(&leaf, 1_234, new_size, &proof, &new_root).unwrap();
    let consistency = log.consistency_proof(size, new_size).unwrap();
    verify_consistency(size, new_size, &consistency, &root, &new_root).unwrap();
}

#[test]
fn proofs_are_only_for_committed_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Storage> = Arc::new(SledStore::open(dir.path(), 8 << 20).unwrap());
    let signer = NoteSigner::generate("test.example/log", &mut rand::rngs::OsRng).unwrap();
    let log = AuditLog::open(store.clone(), 0, signer, "test.example/log".into()).unwrap();
    let (size, _) = append_and_commit(&log, store.as_ref(), 0, 300);
    // Appended but not committed: the tree is ahead of the head.
    let (_, ahead, _) = log.append(&leaves(300, 10));
    assert_eq!(ahead, 310);
    assert!(log.inclusion_proof(305, 310).is_err());
    assert!(log.consistency_proof(size, 310).is_err());
    assert!(log.inclusion_proof(299, size).is_ok());
}
