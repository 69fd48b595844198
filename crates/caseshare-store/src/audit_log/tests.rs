//! Tests of the audit log beside sled: pointers, reads, and the recovery
//! rules at open (damage refused naming the file, a tail of one batch
//! ignored, sled behind by more refused, old inline chunks still read).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use caseshare_proto::v1 as pb;

use super::*;
use crate::audit_index::tests::open_store as open;
use crate::segments::{BATCH_END, frame_crc};
use crate::sled_backend::{be, key};
use crate::{Batch, SledStore, Storage};

fn entries(from: u64, n: u64) -> Vec<Vec<u8>> {
    (from..from + n)
        .map(|i| {
            caseshare_audit::entry::encode(&pb::AuditEntry {
                index: i,
                subject: "s".repeat(60 + (i as usize % 200)),
                ..Default::default()
            })
        })
        .collect()
}

/// Commits `n` entries in one batch; returns them.
pub(crate) fn commit(store: &SledStore, n: u64) -> Vec<Vec<u8>> {
    let from = store.load().unwrap().audit_size;
    let e = entries(from, n);
    store
        .commit(&Batch {
            audit: e.clone(),
            audit_first_index: from,
            ..Batch::default()
        })
        .unwrap();
    e
}

/// Writes `payload` over the frame at `p`, with a checksum that holds and
/// the frame's batch flag kept (so only what the payload says is wrong).
pub(crate) fn rewrite(store_dir: &Path, p: &Pointer, payload: &[u8]) {
    let path = store_dir.join(DIR).join(file_name(p.serial));
    let mut bytes = std::fs::read(&path).unwrap();
    let at = p.offset as usize;
    let word = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    assert_eq!(
        (word & LEN_MASK) as usize,
        payload.len(),
        "same length only"
    );
    let crc = frame_crc(payload, word & BATCH_END != 0);
    bytes[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
    bytes[at + 8..at + 8 + payload.len()].copy_from_slice(payload);
    std::fs::write(&path, bytes).unwrap();
}

fn pointers(store: &SledStore) -> Vec<(sled::IVec, Pointer)> {
    store
        .raw_tree()
        .scan_prefix([b'A'])
        .map(|item| {
            let (k, v) = item.unwrap();
            (k, Pointer::decode(&v).unwrap().expect("a pointer"))
        })
        .collect()
}

/// Opening `dir` is refused, changing nothing: the file named, the
/// offset, the detail and the advice.
pub(crate) fn refusal(dir: &Path) -> (PathBuf, Option<u64>, String, &'static str) {
    let before = crate::segments::tests::files(dir);
    let err = open(dir).expect_err("refused");
    assert_eq!(
        crate::segments::tests::files(dir),
        before,
        "a refusal changes nothing"
    );
    match err {
        StoreError::Damaged {
            path,
            offset,
            detail,
            advice,
        } => (path, offset, detail, advice),
        other => panic!("not a refusal: {other}"),
    }
}

#[test]
fn pointers_round_trip_and_are_told_from_inline_chunks() {
    let p = Pointer {
        serial: 7,
        offset: 1 << 40,
        len: 6_000,
        count: 31,
    };
    assert_eq!(Pointer::decode(&p.encode()).unwrap(), Some(p));
    let mut inline = Vec::new();
    inline.extend_from_slice(&3u32.to_le_bytes());
    inline.extend_from_slice(b"abc");
    assert_eq!(Pointer::decode(&inline).unwrap(), None);
    assert_eq!(AuditLog::count(&inline).unwrap(), 1);
    assert_eq!(AuditLog::count(&p.encode()).unwrap(), 31);
    let mut short = p.encode();
    short.pop();
    assert!(Pointer::decode(&short).is_err());
}

#[test]
fn entries_live_in_the_audit_log_and_sled_holds_pointers() {
    let dir = tempfile::tempdir().unwrap();
    let mut all = Vec::new();
    {
        let store = open(dir.path()).unwrap();
        for n in [1, 170, 3, 400] {
            all.extend(commit(&store, n));
        }
        let ps = pointers(&store);
        assert!(ps.len() >= 4, "{} chunks", ps.len());
        for (_, v) in store.raw_tree().scan_prefix([b'A']).map(Result::unwrap) {
            assert_eq!(v.len(), POINTER_LEN);
        }
        assert_eq!(store.audit_entries(0, 574).unwrap(), all);
    }
    let files: Vec<_> = std::fs::read_dir(dir.path().join(DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files, [file_name(1)]);
    let store = open(dir.path()).unwrap();
    assert_eq!(store.audit_entries(0, 574).unwrap(), all);
    assert_eq!(
        store.audit_entries(170, 175).unwrap(),
        all[170..175].to_vec()
    );
    // Reopened on a clean end, appends continue the same file.
    all.extend(commit(&store, 50));
    assert_eq!(pointers(&store).last().unwrap().1.serial, 1);
    assert_eq!(store.audit_entries(0, 624).unwrap(), all);
}

/// A new store in `dir` with two commits; the second one's pointer.
fn two_commits(dir: &Path) -> Pointer {
    let store = open(dir).unwrap();
    commit(&store, 100);
    commit(&store, 100);
    crate::sled_backend::tests::settle(&store);
    pointers(&store)[1].1
}

/// Opening the store in `dir` is refused naming the first file, the
/// offset of `target`'s frame and `expect` in the detail.
fn assert_refused_at(dir: &Path, target: &Pointer, expect: &str) {
    let (file, offset, detail, advice) = refusal(dir);
    assert_eq!(file, dir.join(DIR).join(file_name(1)));
    assert_eq!(offset, Some(target.offset));
    assert!(detail.contains(expect), "{detail}");
    assert_eq!(advice, ADVICE_RESTORE);
}

#[test]
fn a_flipped_byte_in_a_committed_frame_is_refused_naming_the_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let target = two_commits(dir.path());
    let path = dir.path().join(DIR).join(file_name(1));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[target.offset as usize + 20] ^= 0x04;
    std::fs::write(&path, bytes).unwrap();
    assert_refused_at(dir.path(), &target, "checksum");
}

#[test]
fn a_frame_whose_length_is_not_the_pointers_is_refused_naming_the_offset() {
    for (delta, expect) in [(-4i64, "where sled expects"), (4, "runs past the end")] {
        let dir = tempfile::tempdir().unwrap();
        let target = two_commits(dir.path());
        // A header that holds together (its checksum matches what it
        // claims) but claims another length than sled's pointer.
        let path = dir.path().join(DIR).join(file_name(1));
        let mut bytes = std::fs::read(&path).unwrap();
        let at = target.offset as usize;
        let word = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let len = (i64::from(word & LEN_MASK) + delta) as usize;
        let claimed = (word & !LEN_MASK) | len as u32;
        let payload = &bytes[at + 8..(at + 8 + len).min(bytes.len())];
        let crc = frame_crc(payload, word & BATCH_END != 0);
        bytes[at..at + 4].copy_from_slice(&claimed.to_le_bytes());
        bytes[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, bytes).unwrap();
        assert_refused_at(dir.path(), &target, expect);
    }
}

#[test]
fn a_truncated_or_missing_file_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path()).unwrap();
        commit(&store, 300);
        crate::sled_backend::tests::settle(&store);
    }
    let path = dir.path().join(DIR).join(file_name(1));
    let whole = std::fs::read(&path).unwrap();
    std::fs::write(&path, &whole[..whole.len() - 10]).unwrap();
    let (file, _, detail, _) = refusal(dir.path());
    assert_eq!(file, path);
    assert!(detail.contains("cannot be read whole"), "{detail}");
    std::fs::remove_file(&path).unwrap();
    let (file, _, detail, _) = refusal(dir.path());
    assert_eq!(file, path);
    assert!(detail.contains("missing"), "{detail}");
}

#[test]
fn one_uncommitted_batch_and_a_torn_tail_are_left_and_the_next_file_is_new() {
    let dir = tempfile::tempdir().unwrap();
    let kept;
    {
        let store = open(dir.path()).unwrap();
        kept = commit(&store, 120);
        // A batch written to the audit log whose sled commit never came,
        // then half a frame.
        let log = AuditLog::open(dir.path()).unwrap();
        let mut chunk = Vec::new();
        for e in entries(120, 10) {
            chunk.extend_from_slice(&(e.len() as u32).to_le_bytes());
            chunk.extend_from_slice(&e);
        }
        log.resume.lock().unwrap().replace((1, {
            let ps = pointers(&store);
            ps.last().unwrap().1.end()
        }));
        log.append(
            vec![chunk.clone(), chunk],
            &mut crate::wal::AuditBytes::default(),
        )
        .unwrap();
        log.sync().unwrap();
        let path = dir.path().join(DIR).join(file_name(1));
        let mut f = OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(&[1, 2, 3]).unwrap();
    }
    let before = std::fs::read(dir.path().join(DIR).join(file_name(1))).unwrap();
    let store = open(dir.path()).unwrap();
    assert_eq!(store.load().unwrap().audit_size, 120);
    assert_eq!(store.audit_entries(0, 200).unwrap(), kept);
    let more = commit(&store, 30);
    assert_eq!(pointers(&store).last().unwrap().1.serial, 2);
    drop(store);
    // The tail is never cut; a reopen reads both files.
    assert_eq!(
        std::fs::read(dir.path().join(DIR).join(file_name(1))).unwrap(),
        before
    );
    let store = open(dir.path()).unwrap();
    let mut all = kept;
    all.extend(more);
    assert_eq!(store.audit_entries(0, 200).unwrap(), all);
}

#[test]
fn sled_behind_the_audit_log_by_more_than_one_batch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path()).unwrap();
        commit(&store, 50);
        let size = store.load().unwrap().audit_size;
        commit(&store, 20);
        commit(&store, 20);
        // Sled loses the last two commits' pointers.
        let tree = store.raw_tree();
        for k in tree
            .range(key(b'A', &[&be(size)])..key(b'B', &[]))
            .keys()
            .map(Result::unwrap)
            .collect::<Vec<_>>()
        {
            tree.remove(k).unwrap();
        }
        store.accept_sled_as_it_is().unwrap();
    }
    let (file, _, detail, advice) = refusal(dir.path());
    assert_eq!(file, dir.path().join("db"));
    assert!(detail.contains("2 committed batches"), "{detail}");
    let audit_file = dir.path().join(DIR).join(file_name(1));
    assert!(
        detail.contains(&audit_file.display().to_string()),
        "{detail}"
    );
    assert_eq!(advice, ADVICE_SLED_BEHIND);
}

#[test]
fn a_store_with_inline_chunks_reads_them_and_appends_pointers_after() {
    let dir = tempfile::tempdir().unwrap();
    let old = entries(0, 40);
    {
        // What a store written before the audit log holds: chunks in sled.
        let store = open(dir.path()).unwrap();
        for (first, part) in [(0u64, &old[..25]), (25, &old[25..])] {
            let mut chunk = Vec::new();
            for e in part {
                chunk.extend_from_slice(&(e.len() as u32).to_le_bytes());
                chunk.extend_from_slice(e);
            }
            store
                .raw_tree()
                .insert(key(b'A', &[&be(first)]), chunk)
                .unwrap();
        }
        store.accept_sled_as_it_is().unwrap();
    }
    let store = open(dir.path()).unwrap();
    assert_eq!(store.load().unwrap().audit_size, 40);
    assert_eq!(store.audit_entries(0, 40).unwrap(), old);
    let new = commit(&store, 60);
    drop(store);
    let store = open(dir.path()).unwrap();
    let mut all = old;
    all.extend(new);
    assert_eq!(store.audit_entries(0, 100).unwrap(), all);
    assert_eq!(store.audit_entries(20, 60).unwrap(), all[20..60].to_vec());
}

/// Commits `n` entries with the tiles a tree of the store's size gives
/// for them, as the writer does; returns the entries.
fn commit_with_tiles(
    store: &SledStore,
    tree: &mut caseshare_audit::tiles::TiledTree,
    n: u64,
) -> Vec<Vec<u8>> {
    let from = store.load().unwrap().audit_size;
    let e = entries(from, n);
    let tiles = tree_tiles(tree, &e);
    store
        .commit(&Batch {
            audit: e.clone(),
            audit_first_index: from,
            tiles,
            ..Batch::default()
        })
        .unwrap();
    e
}

/// Appends `entries` to `tree` as the writer does: the tile writes a
/// commit of them carries.
pub(crate) fn tree_tiles(
    tree: &mut caseshare_audit::tiles::TiledTree,
    entries: &[Vec<u8>],
) -> Vec<(u8, u64, Vec<u8>)> {
    let hashes: Vec<_> = entries
        .iter()
        .map(|e| caseshare_audit::merkle::leaf_hash(e))
        .collect();
    tree.append(&hashes)
        .into_iter()
        .map(|t| (t.level, t.index, t.data))
        .collect()
}

/// The leaf hashes of `entries`, concatenated as a tile holds them.
fn leaf_tile(entries: &[Vec<u8>]) -> Vec<u8> {
    entries
        .iter()
        .flat_map(|e| caseshare_audit::merkle::leaf_hash(e))
        .collect()
}

#[test]
fn full_tiles_go_to_the_audit_log_once_and_the_partial_leaf_tile_is_derived() {
    use caseshare_audit::tiles::{FULL_TILE_BYTES, TiledTree};
    let dir = tempfile::tempdir().unwrap();
    let tile_value = |store: &SledStore, level: u8, index: u64| {
        store
            .raw_tree()
            .get(key(b'T', &[&[level], &be(index)]))
            .unwrap()
    };
    let file_len = |d: &Path| {
        std::fs::metadata(d.join(DIR).join(file_name(1)))
            .unwrap()
            .len()
    };
    let (full, partial, level1);
    {
        let store = open(dir.path()).unwrap();
        let mut tree = TiledTree::new();
        let e = commit_with_tiles(&store, &mut tree, 259);
        full = leaf_tile(&e[..256]);
        partial = leaf_tile(&e[256..]);
        assert_eq!(full.len(), FULL_TILE_BYTES);
        // The full tile is a pointer into the audit log; the partial tile
        // of leaf hashes is not stored; the one above it is, in sled.
        assert!(
            Pointer::decode(&tile_value(&store, 0, 0).unwrap())
                .unwrap()
                .is_some()
        );
        assert_eq!(tile_value(&store, 0, 1), None);
        level1 = tile_value(&store, 1, 0).unwrap().to_vec();
        assert_eq!(level1.len(), 32);
        assert_eq!(store.tile(0, 0).unwrap(), Some(full.clone()));
        assert_eq!(store.tile(0, 1).unwrap(), Some(partial.clone()));
        assert_eq!(store.tile(1, 0).unwrap(), Some(level1.clone()));
        assert_eq!(store.tile(0, 2).unwrap(), None);
        // The same full tile again is not written again.
        let before = file_len(dir.path());
        store
            .commit(&Batch {
                tiles: vec![(0, 0, full.clone())],
                ..Batch::default()
            })
            .unwrap();
        assert_eq!(file_len(dir.path()), before);
    }
    // Reopened, the partial tile is hashed from the entries.
    let store = open(dir.path()).unwrap();
    assert_eq!(store.tile(0, 0).unwrap(), Some(full.clone()));
    assert_eq!(store.tile(0, 1).unwrap(), Some(partial));
    assert_eq!(store.tile(1, 0).unwrap(), Some(level1));
    let p = Pointer::decode(&tile_value(&store, 0, 0).unwrap())
        .unwrap()
        .unwrap();
    crate::sled_backend::tests::settle(&store);
    drop(store);
    // A flipped byte in the full tile's frame is a refusal naming the file.
    let path = dir.path().join(DIR).join(file_name(p.serial));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[p.offset as usize + 100] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let (file, offset, detail, _) = refusal(dir.path());
    assert_eq!(file, path);
    assert_eq!(offset, Some(p.offset));
    assert!(detail.contains("checksum"), "{detail}");
}

/// The store's tiles, as the broker reads them.
struct StoreTiles<'a>(&'a SledStore);

impl caseshare_audit::tiles::TileStore for StoreTiles<'_> {
    type Error = crate::StoreError;
    fn get_tile(&self, level: u8, index: u64) -> Result<Option<Vec<u8>>, crate::StoreError> {
        self.0.tile(level, index)
    }
}

#[test]
fn a_partial_leaf_tile_stored_by_an_older_version_is_not_read() {
    use caseshare_audit::tiles::TiledTree;
    let dir = tempfile::tempdir().unwrap();
    let k = key(b'T', &[&[0], &be(0)]);
    let first = {
        let store = open(dir.path()).unwrap();
        let mut tree = TiledTree::new();
        let e = commit_with_tiles(&store, &mut tree, 10);
        // The open checks the tree against this checkpoint, through the
        // tiles as stored.
        store
            .persist_checkpoint(10, tree.current_root(), "note")
            .unwrap();
        // As versions before this one left it: the tile of the first five
        // leaves, inline in sled.
        store.raw_tree().insert(&k, leaf_tile(&e[..5])).unwrap();
        store.accept_sled_as_it_is().unwrap();
        e
    };
    let store = open(dir.path()).unwrap();
    assert_eq!(store.tile(0, 0).unwrap(), Some(leaf_tile(&first)));
    let mut tree = TiledTree::open(10, &StoreTiles(&store)).unwrap();
    let rest = commit_with_tiles(&store, &mut tree, 250);
    // Whole, the tile is written to the audit log in its place.
    let all: Vec<_> = first.into_iter().chain(rest).collect();
    assert!(
        Pointer::decode(&store.raw_tree().get(&k).unwrap().unwrap())
            .unwrap()
            .is_some()
    );
    assert_eq!(store.tile(0, 0).unwrap(), Some(leaf_tile(&all[..256])));
    assert_eq!(store.tile(0, 1).unwrap(), Some(leaf_tile(&all[256..])));
    assert_eq!(
        tree.current_root(),
        TiledTree::open(260, &StoreTiles(&store))
            .unwrap()
            .current_root()
    );
}

#[test]
fn entries_are_counted_as_split_and_a_short_chunk_is_refused() {
    let mut chunk = Vec::new();
    for e in entries(0, 7) {
        chunk.extend_from_slice(&(e.len() as u32).to_le_bytes());
        chunk.extend_from_slice(&e);
    }
    assert_eq!(count_entries(&chunk).unwrap(), 7);
    assert_eq!(
        crate::sled_backend::split_chunk(&chunk).unwrap(),
        entries(0, 7)
    );
    assert_eq!(count_entries(&[]).unwrap(), 0);
    for cut in [1, 3, 5, chunk.len() - 1] {
        assert!(count_entries(&chunk[..cut]).is_err(), "cut at {cut}");
        assert!(crate::sled_backend::split_chunk(&chunk[..cut]).is_err());
        // The walk stops at the damage: one error, then nothing.
        let spans: Vec<_> = chunk_entries(&chunk[..cut]).collect();
        assert!(spans.last().is_some_and(|s| s.is_err()), "cut at {cut}");
        assert_eq!(spans.iter().filter(|s| s.is_err()).count(), 1);
    }
}

#[test]
fn a_pointer_past_the_end_is_refused_without_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DIR).join(file_name(1));
    {
        let store = open(dir.path()).unwrap();
        commit(&store, 40);
        let (k, mut p) = pointers(&store).pop().unwrap();
        // A length of 2 GiB: reading it would allocate that much.
        p.len = LEN_MASK;
        store.raw_tree().insert(k, p.encode()).unwrap();
        store.accept_sled_as_it_is().unwrap();
    }
    let (file, _, detail, advice) = refusal(dir.path());
    assert_eq!(file, path);
    assert!(detail.contains("runs past the end"), "{detail}");
    assert_eq!(advice, ADVICE_RESTORE);
}

#[test]
fn commits_large_and_small_write_both_logs() {
    use crate::StoredEvent;
    let dir = tempfile::tempdir().unwrap();
    let mut all = Vec::new();
    let mut next_seq = 1u64;
    // (events, entries): small and large, without events, and one that
    // ends on an epoch boundary of the audit index (16,384 entries; 512 in
    // test builds, so the large commits complete epochs too).
    let plan = [(3, 5), (50, 400), (0, 100), (1, 16_384 - 505), (20, 2_000)];
    {
        let store = open(dir.path()).unwrap();
        for (events, n) in plan {
            let from = all.len() as u64;
            let e = entries(from, n);
            let evs: Vec<StoredEvent> = (next_seq..next_seq + events)
                .map(|s| StoredEvent {
                    sequence: s,
                    source_agency: "a".into(),
                    event_id: format!("e{s}"),
                    ..Default::default()
                })
                .collect();
            next_seq += events;
            store
                .commit(&Batch {
                    events: evs,
                    next_sequence: Some(next_seq),
                    audit: e.clone(),
                    audit_first_index: from,
                    ..Batch::default()
                })
                .unwrap();
            all.extend(e);
        }
        assert!(
            store.raw_tree().scan_prefix([b'Q']).next().is_some(),
            "an epoch completed"
        );
    }
    let store = open(dir.path()).unwrap();
    let size = all.len() as u64;
    assert_eq!(store.load().unwrap().audit_size, size);
    assert_eq!(store.audit_entries(0, size).unwrap(), all);
    assert_eq!(
        store.events_from(1, 10_000).unwrap().len() as u64,
        next_seq - 1
    );
    let verdict = crate::audit_index::verify(store.raw_tree(), store.audit_log(), size).unwrap();
    assert_eq!(verdict.mismatch, None);
}
