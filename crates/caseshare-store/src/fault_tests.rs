//! Seeded fault injection on a whole store (sled, its snapshots, the event
//! log's segments and `.ids` files, the ids key, the persisted checkpoint):
//! one file is damaged — bytes flipped at several offsets, truncated, or
//! deleted — and the store opened again. Either it opens with every
//! committed event (readable, and found by id) and its audit log, or it
//! refuses with [`StoreError::Damaged`] and every file is byte-for-byte as
//! before. The seed is printed; `CASESHARE_FAULT_SEED=<n>` replays one run
//! and `CASESHARE_FAULT_CASES=<n>` runs more cases.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use caseshare_audit::tiles::TiledTree;
use rand::{Rng, SeedableRng};

use crate::{Batch, SledStore, Storage, StoreError, StoredEvent};

const BATCHES: u64 = 30;
const PER_BATCH: u64 = 7;

fn event(sequence: u64) -> StoredEvent {
    StoredEvent {
        sequence,
        source_agency: "school-b".into(),
        event_id: format!("ev-{sequence}"),
        event: vec![u8::try_from(sequence % 251).unwrap(); 80 + (sequence as usize % 40)],
        ..StoredEvent::default()
    }
}

/// Opens `dir`, waiting while sled's background threads of an earlier
/// open in this process still hold its lock.
fn open(dir: &Path) -> Result<SledStore, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match SledStore::open_with_segments(dir, 4 << 20, 4096) {
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

/// A store with `BATCHES` committed batches of events and audit entries,
/// its Merkle tiles and a persisted checkpoint.
fn build(dir: &Path) -> Vec<Vec<u8>> {
    let store = open(dir).unwrap();
    let mut tree = TiledTree::new();
    let mut audit = Vec::new();
    for b in 0..BATCHES {
        let first = 1 + b * PER_BATCH;
        let events: Vec<StoredEvent> = (first..first + PER_BATCH).map(event).collect();
        let entries: Vec<Vec<u8>> = (0..2)
            .map(|i| {
                caseshare_audit::entry::encode(&caseshare_proto::v1::AuditEntry {
                    index: audit.len() as u64 + i,
                    subject: format!("audit {b} {i}"),
                    source_agency: "school-b".into(),
                    ..Default::default()
                })
            })
            .collect();
        let tiles = crate::audit_log::tests::tree_tiles(&mut tree, &entries);
        store
            .commit(&Batch {
                events,
                audit: entries.clone(),
                audit_first_index: audit.len() as u64,
                tiles,
                next_sequence: Some(first + PER_BATCH),
                ..Batch::default()
            })
            .unwrap();
        audit.extend(entries);
        if b == BATCHES - 3 {
            store
                .persist_checkpoint(tree.size(), tree.current_root(), "note")
                .unwrap();
        }
    }
    audit
}

fn contents(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    crate::segments::tests::files(dir)
}

fn copy(from: &Path, to: &Path) {
    for (path, bytes) in contents(from) {
        let target = to.join(path.strip_prefix(from).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(target, bytes).unwrap();
    }
}

#[derive(Debug)]
enum Fault {
    Flip(Vec<usize>),
    Truncate(usize),
    Delete,
}

#[test]
fn any_single_damaged_file_is_recovered_intact_or_refused_unchanged() {
    let seed: u64 = std::env::var("CASESHARE_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let cases: usize = std::env::var("CASESHARE_FAULT_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(48);
    println!("fault seed {seed} (CASESHARE_FAULT_SEED={seed} to replay), {cases} cases");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let pristine = tempfile::tempdir().unwrap();
    let audit = build(pristine.path());
    // Sled writes a snapshot when it opens a store it did not create.
    drop(open(pristine.path()).unwrap());
    let committed = BATCHES * PER_BATCH;
    let files: Vec<PathBuf> = contents(pristine.path())
        .keys()
        .map(|p| p.strip_prefix(pristine.path()).unwrap().to_path_buf())
        .collect();
    assert!(files.iter().any(|f| f.to_string_lossy().ends_with(".ids")));
    assert!(files.iter().any(|f| f.to_string_lossy().contains("snap.")));
    let (mut opened, mut refused) = (0, 0);
    for case in 0..cases {
        // Every file gets its turn; the fault and offsets are random.
        let file = &files[case % files.len()];
        let dir = tempfile::tempdir().unwrap();
        copy(pristine.path(), dir.path());
        let path = dir.path().join(file);
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        let fault = match rng.gen_range(0..4) {
            0 | 1 if len > 0 => Fault::Flip(
                (0..rng.gen_range(1..4))
                    .map(|_| rng.gen_range(0..len))
                    .collect(),
            ),
            2 if len > 0 => Fault::Truncate(rng.gen_range(0..len)),
            _ => Fault::Delete,
        };
        match &fault {
            Fault::Flip(at) => {
                let mut bytes = std::fs::read(&path).unwrap();
                for a in at {
                    bytes[*a] ^= rng.gen_range(1..=255u8);
                }
                std::fs::write(&path, bytes).unwrap();
            }
            Fault::Truncate(to) => {
                let bytes = std::fs::read(&path).unwrap();
                std::fs::write(&path, &bytes[..*to]).unwrap();
            }
            Fault::Delete => std::fs::remove_file(&path).unwrap(),
        }
        let what = format!("case {case}: {} {fault:?} (seed {seed})", file.display());
        let before = contents(dir.path());
        match open(dir.path()) {
            Ok(store) => {
                opened += 1;
                for seq in 1..=committed {
                    assert_eq!(store.event(seq).unwrap(), Some(event(seq)), "{what}");
                    let e = event(seq);
                    assert_eq!(
                        store.sequence_of(&e.source_agency, &e.event_id).unwrap(),
                        Some(seq),
                        "{what}"
                    );
                }
                let snap = store.load().unwrap();
                assert_eq!(snap.next_sequence, committed + 1, "{what}");
                assert_eq!(snap.audit_size, audit.len() as u64, "{what}");
                assert_eq!(
                    store.audit_entries(0, audit.len() as u64).unwrap(),
                    audit,
                    "{what}"
                );
            }
            Err(e) => {
                refused += 1;
                assert!(matches!(e, StoreError::Damaged { .. }), "{what}: {e}");
                let after = contents(dir.path());
                assert_eq!(
                    after.keys().collect::<Vec<_>>(),
                    before.keys().collect::<Vec<_>>(),
                    "{what}: {e}"
                );
                for (p, bytes) in &before {
                    assert!(after[p] == *bytes, "{what}: {} changed", p.display());
                }
            }
        }
    }
    println!("{opened} opened intact, {refused} refused unchanged");
}
