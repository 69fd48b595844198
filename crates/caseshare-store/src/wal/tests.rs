//! The WAL's frames, its replay at open, and the digest check.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use caseshare_proto::v1 as pb;

use super::*;
use crate::{Batch, SledStore, Storage};

use crate::audit_index::tests::open_store as open;

/// A commit that registers agency `a<i>` with a name `len` bytes long.
fn agency(store: &SledStore, i: usize, len: usize) {
    store
        .commit(&Batch {
            agencies: vec![pb::Agency {
                agency_id: format!("a{i}"),
                display_name: "x".repeat(len),
                ..Default::default()
            }],
            ..Batch::default()
        })
        .unwrap();
}

fn agencies(store: &SledStore) -> Vec<String> {
    let mut ids: Vec<String> = store
        .load()
        .unwrap()
        .agencies
        .into_iter()
        .map(|a| a.agency_id)
        .collect();
    ids.sort();
    ids
}

/// Sled's own files (not the logs beside it).
fn sled_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            p.is_file() && (name == "db" || name == "conf" || name.starts_with("snap."))
        })
        .collect()
}

/// Copies sled's files of `dir` aside (sled synced first).
fn copy_sled(store: &SledStore, dir: &Path, to: &Path) {
    store.sync().unwrap();
    std::fs::create_dir_all(to).unwrap();
    for f in sled_files(dir) {
        std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
    }
}

/// Puts sled's files copied aside back, as a crash before sled wrote
/// anything after the copy would leave them.
fn put_back_sled(dir: &Path, from: &Path) {
    for f in sled_files(dir) {
        std::fs::remove_file(f).unwrap();
    }
    for f in std::fs::read_dir(from).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
}

/// A store whose sled was copied aside after `before` commits and put
/// back after `after` more (agency records of `len` bytes): sled lacks
/// the later commits, which the WAL holds.
fn sled_left_behind(dir: &Path, before: usize, after: usize, len: usize) {
    let aside = tempfile::tempdir().unwrap();
    {
        let store = open(dir).unwrap();
        for i in 0..before {
            agency(&store, i, 10);
        }
        copy_sled(&store, dir, aside.path());
        for i in before..before + after {
            agency(&store, i, len);
        }
    }
    put_back_sled(dir, aside.path());
}

fn wal_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join(DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    v.sort();
    v
}

#[test]
fn frames_round_trip_and_the_digest_does_not_depend_on_order() {
    let mut w = Writes::default();
    w.insert(b"k1", b"v1".to_vec());
    w.remove(b"k2");
    w.insert(b"k3", Vec::new());
    w.insert(b"k1", b"v1 again".to_vec());
    let mut d = Digest::default();
    d.add(b"k1", b"v1 again");
    let mut buf = Vec::new();
    let appended = Appended {
        events: LogBytes {
            file: 5,
            offset: 1200,
            bytes: vec![9; 34],
        },
        ..Appended::default()
    };
    encode(7, d, &appended, &w, &mut buf);
    let f = decode(&buf).unwrap();
    assert_eq!(f.number, 7);
    let extents = Extents {
        events: Some((5, 1234)),
        audit: None,
    };
    assert_eq!(extents_of(&buf).unwrap(), extents);
    let (regions, _) = regions_of(&buf).unwrap();
    assert_eq!(
        regions,
        [Region {
            log: Log::Events,
            file: 5,
            offset: 1200,
            bytes: &[9; 34],
        }]
    );
    let got: Vec<(Vec<u8>, Option<Vec<u8>>)> = f
        .writes
        .iter()
        .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
        .collect();
    assert_eq!(
        got,
        vec![
            (b"k1".to_vec(), Some(b"v1 again".to_vec())),
            (b"k2".to_vec(), None),
            (b"k3".to_vec(), Some(Vec::new())),
        ]
    );
    // Every cut of a frame is refused, never a panic.
    for cut in 0..buf.len() {
        let _ = decode(&buf[..cut]);
    }
    assert!(decode(&buf[..buf.len() - 1]).is_err());

    let (mut a, mut b) = (Digest::default(), Digest::default());
    a.add(b"x", b"1");
    a.add(b"y", b"2");
    a.add(b"z", b"3");
    a.sub(b"y", b"2");
    b.add(b"z", b"3");
    b.add(b"x", b"1");
    assert_eq!(a, b);
    b.sub(b"x", b"1");
    b.add(b"x", b"2");
    assert_ne!(a, b, "another value is another digest");
}

#[test]
fn commits_sled_had_not_made_stable_are_replayed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    sled_left_behind(dir.path(), 1, 20, 300);
    let store = open(dir.path()).unwrap();
    assert_eq!(agencies(&store).len(), 21, "every commit is back");
    agency(&store, 21, 10);
    drop(store);
    let store = open(dir.path()).unwrap();
    assert_eq!(agencies(&store).len(), 22);
}

#[test]
fn sled_changed_behind_the_log_is_refused_naming_it_and_nothing_is_changed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path()).unwrap();
        for i in 0..5 {
            agency(&store, i, 10);
        }
        // An older value of one record, as sled's recovery from a damaged
        // byte can leave it, with its frame number current.
        store
            .raw_tree()
            .insert(crate::sled_backend::key(b'G', &[b"a3"]), b"old".to_vec())
            .unwrap();
        store.sync().unwrap();
    }
    drop(open(dir.path()).err());
    let before = crate::segments::tests::files(dir.path());
    let err = open(dir.path()).expect_err("refused");
    let StoreError::Damaged { path, detail, .. } = &err else {
        panic!("not a refusal: {err}");
    };
    assert_eq!(path, &dir.path().join("db"), "{err}");
    assert!(
        detail.contains("do not match the write-ahead log"),
        "{detail}"
    );
    assert_eq!(crate::segments::tests::files(dir.path()), before);
    // `check` says the same, about the store, not its copy.
    let scratch = tempfile::tempdir().unwrap();
    let finding = crate::check::check_store(dir.path(), scratch.path())
        .into_iter()
        .find(|f| f.check == "write-ahead log")
        .expect("a finding about the log");
    assert!(!finding.ok);
    assert_eq!(finding.file, dir.path().join("db"));
}

#[test]
fn frames_sled_needs_that_are_gone_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    sled_left_behind(dir.path(), 1, 30, 400);
    // The files holding the frames after sled's copy: the first after it
    // goes.
    let files = wal_files(dir.path());
    assert!(files.len() > 2, "{files:?}");
    std::fs::remove_file(&files[files.len() - 2]).unwrap();
    let err = open(dir.path()).expect_err("refused");
    assert!(matches!(err, StoreError::Damaged { .. }), "{err}");

    // And the whole log gone, with sled having applied some of it.
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path()).unwrap();
        agency(&store, 0, 10);
    }
    std::fs::remove_dir_all(dir.path().join(DIR)).unwrap();
    let err = open(dir.path()).expect_err("refused");
    let StoreError::Damaged { path, .. } = &err else {
        panic!("{err}");
    };
    assert_eq!(path, &dir.path().join(DIR));
}

#[test]
fn a_torn_last_frame_is_left_and_the_log_goes_on_in_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path()).unwrap();
        agency(&store, 0, 10);
    }
    let last = wal_files(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    // Half of a copy of the last frame: a write cut short.
    let torn = bytes[bytes.len() / 2..].to_vec();
    bytes.extend_from_slice(&torn[..torn.len() / 2]);
    std::fs::write(&last, &bytes).unwrap();
    let files_before = wal_files(dir.path()).len();
    let store = open(dir.path()).unwrap();
    assert_eq!(agencies(&store), vec!["a0"]);
    // The open's own frame went to a new file; the torn one is as it was
    // (it goes once sled holds its frames stably, with the next commit).
    assert_eq!(std::fs::read(&last).unwrap(), bytes, "left as it is");
    assert_eq!(wal_files(dir.path()).len(), files_before + 1);
    agency(&store, 1, 10);
    drop(store);
    let store = open(dir.path()).unwrap();
    assert_eq!(agencies(&store), vec!["a0", "a1"]);
}

#[test]
fn damage_followed_by_whole_frames_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    sled_left_behind(dir.path(), 0, 4, 10);
    let file = wal_files(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    // A byte of the second frame's payload.
    let first_len = u32::from_le_bytes(bytes[..4].try_into().unwrap()) & crate::segments::LEN_MASK;
    let at = 8 + first_len as usize + 8 + 20;
    bytes[at] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();
    let err = open(dir.path()).expect_err("refused");
    let StoreError::Damaged { path, detail, .. } = &err else {
        panic!("{err}");
    };
    assert_eq!(path, &file);
    assert!(
        detail.contains("followed by whole commit frames"),
        "{detail}"
    );
}

/// 41 commits in a store closed after its log was trimmed to the last
/// two files (the first frame left is past 1).
fn trimmed(dir: &Path) {
    let store = open(dir).unwrap();
    for i in 0..40 {
        agency(&store, i, 400);
    }
    let before = wal_files(dir).len();
    assert!(before > 3, "{before} files");
    // Everything is stable now: the next commit trims every file but the
    // active one (and the one it may start); the spare thread deletes
    // them.
    store.stabilise_now().unwrap();
    agency(&store, 40, 10);
    deleted_down_to(dir, 2, before);
}

#[test]
fn files_sled_holds_stably_are_trimmed_and_the_store_reopens() {
    let dir = tempfile::tempdir().unwrap();
    trimmed(dir.path());
    let store = open(dir.path()).unwrap();
    assert_eq!(agencies(&store).len(), 41);
}

#[test]
fn sled_emptied_after_the_log_was_trimmed_is_refused_naming_it_and_nothing_is_changed() {
    let dir = tempfile::tempdir().unwrap();
    trimmed(dir.path());
    // Sled's files deleted: it opens empty, with no record of any frame,
    // and the log's first frame is past 1.
    for f in sled_files(dir.path()) {
        std::fs::remove_file(f).unwrap();
    }
    let before = crate::segments::tests::files(dir.path());
    let err = open(dir.path()).expect_err("refused");
    let StoreError::Damaged { path, detail, .. } = &err else {
        panic!("not a refusal: {err}");
    };
    assert_eq!(path, &dir.path().join("db"), "{err}");
    assert!(detail.contains("sled holds no record"), "{detail}");
    assert_eq!(crate::segments::tests::files(dir.path()), before);
}

#[test]
fn damage_in_frames_sled_holds_stably_does_not_stop_the_store() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path()).unwrap();
        for i in 0..4 {
            agency(&store, i, 10);
        }
        // Sled holds every frame stably (a clean stop does the same).
        store.sync().unwrap();
    }
    let file = wal_files(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[8 + 20] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();
    let store = open(dir.path()).unwrap();
    assert_eq!(agencies(&store).len(), 4);
}

/// A commit of events `from..to` (sequences).
fn events(store: &SledStore, from: u64, to: u64) {
    let evs: Vec<crate::StoredEvent> = (from..to)
        .map(|s| crate::StoredEvent {
            sequence: s,
            source_agency: "a".into(),
            event_id: format!("e{s}"),
            ..Default::default()
        })
        .collect();
    store
        .commit(&Batch {
            events: evs,
            next_sequence: Some(to),
            ..Batch::default()
        })
        .unwrap();
}

/// The last (active) segment of the event log in `dir`.
fn segment(dir: &Path) -> PathBuf {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("events"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v.pop().unwrap()
}

/// A store of events 1..=20 in two commits, sled copied aside after the
/// first and put back (a crash before sled applied the second); returns
/// the segment's length after the first commit and its whole bytes.
fn second_commit_in_the_wal_only(dir: &Path) -> (u64, Vec<u8>) {
    let aside = tempfile::tempdir().unwrap();
    let kept_len;
    {
        let store = open(dir).unwrap();
        events(&store, 1, 11);
        copy_sled(&store, dir, aside.path());
        kept_len = std::fs::metadata(segment(dir)).unwrap().len();
        events(&store, 11, 21);
    }
    put_back_sled(dir, aside.path());
    (kept_len, std::fs::read(segment(dir)).unwrap())
}

#[test]
fn a_commits_log_bytes_a_crash_kept_from_the_disk_are_restored_from_its_frame() {
    // A power loss after the frame's sync: the segment lost the commit's
    // events (cut 10 bytes in), or the file grew and holds zeros.
    for zeros in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (kept_len, whole) = second_commit_in_the_wal_only(dir.path());
        let seg = segment(dir.path());
        let mut damaged = whole[..kept_len as usize + 10].to_vec();
        if zeros {
            damaged.resize(whole.len() - 7, 0);
        }
        std::fs::write(&seg, &damaged).unwrap();
        let store = open(dir.path()).unwrap();
        assert_eq!(store.load().unwrap().next_sequence, 21, "zeros {zeros}");
        assert_eq!(store.events_from(1, 100).unwrap().len(), 20);
        assert_eq!(std::fs::read(&seg).unwrap(), whole, "zeros {zeros}");
        // The log goes on in the same segment, and reopens.
        events(&store, 21, 26);
        drop(store);
        let store = open(dir.path()).unwrap();
        assert_eq!(store.load().unwrap().next_sequence, 26);
        assert_eq!(store.events_from(1, 100).unwrap().len(), 25);
    }
}

#[test]
fn log_bytes_unlike_the_frames_copy_are_refused_naming_the_file_and_nothing_is_changed() {
    let dir = tempfile::tempdir().unwrap();
    let (kept_len, mut whole) = second_commit_in_the_wal_only(dir.path());
    let seg = segment(dir.path());
    let at = kept_len as usize + 30;
    whole[at] ^= 0x10;
    std::fs::write(&seg, &whole).unwrap();
    let (path, offset, detail, _) = crate::audit_log::tests::refusal(dir.path());
    assert_eq!(path, seg);
    assert_eq!(offset, Some(at as u64));
    assert!(
        detail.contains("differ from the copy in commit frame"),
        "{detail}"
    );
}

#[test]
fn a_log_cut_before_bytes_the_wal_holds_is_refused_naming_it_and_nothing_is_changed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path()).unwrap();
        events(&store, 1, 11);
        crate::sled_backend::tests::settle(&store);
        events(&store, 11, 21);
    }
    // The first commit's frame is trimmed: bytes of it that are lost
    // cannot come back, and the second's have nowhere to go.
    let seg = segment(dir.path());
    let whole = std::fs::read(&seg).unwrap();
    std::fs::write(&seg, &whole[..40]).unwrap();
    let (path, _, detail, _) = crate::audit_log::tests::refusal(dir.path());
    assert_eq!(path, seg);
    assert!(
        detail.contains("bytes of earlier commits are missing"),
        "{detail}"
    );
}

#[test]
fn restored_log_bytes_are_put_back_when_the_open_refuses_later() {
    let dir = tempfile::tempdir().unwrap();
    let audit_file;
    let whole;
    {
        let store = open(dir.path()).unwrap();
        crate::audit_log::tests::commit(&store, 50);
        crate::sled_backend::tests::settle(&store);
        events(&store, 1, 11);
        audit_file = std::fs::read_dir(dir.path().join(crate::audit_log::DIR))
            .unwrap()
            .map(|e| e.unwrap().path())
            .next()
            .unwrap();
        whole = std::fs::read(segment(dir.path())).unwrap();
    }
    // The events' commit lost its bytes (restorable); the audit log's
    // settled bytes are damaged (refused after the restore).
    let seg = segment(dir.path());
    std::fs::write(&seg, &whole[..25]).unwrap();
    let mut audit = std::fs::read(&audit_file).unwrap();
    audit[40] ^= 0x01;
    std::fs::write(&audit_file, &audit).unwrap();
    let before = crate::segments::tests::files(dir.path());
    let err = open(dir.path()).expect_err("refused");
    let StoreError::Damaged { path, .. } = err else {
        panic!("not a refusal: {err}");
    };
    assert_eq!(path, audit_file);
    assert_eq!(
        crate::segments::tests::files(dir.path()),
        before,
        "the segment is cut back to where the open found it"
    );
    // Mended, the store opens with the events restored.
    audit[40] ^= 0x01;
    std::fs::write(&audit_file, &audit).unwrap();
    let store = open(dir.path()).unwrap();
    assert_eq!(store.events_from(1, 100).unwrap().len(), 10);
    assert_eq!(std::fs::read(&seg).unwrap(), whole);
}

#[test]
fn a_frame_whose_files_all_reached_the_disk_is_replayed() {
    let dir = tempfile::tempdir().unwrap();
    second_commit_in_the_wal_only(dir.path());
    let store = open(dir.path()).unwrap();
    assert_eq!(store.load().unwrap().next_sequence, 21);
    assert_eq!(store.events_from(1, 100).unwrap().len(), 20);
}

#[test]
fn the_stabiliser_thread_makes_sled_stable_and_the_log_is_trimmed_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    for i in 0..40 {
        agency(&store, i, 400);
    }
    let files = wal_files(dir.path()).len();
    assert!(files > 3, "{files} files");
    let applied = store.stabiliser().last_applied();
    // The thread makes sled stable every 500 ms on its own.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while store.stabiliser().stable() < applied {
        assert!(
            std::time::Instant::now() < deadline,
            "sled was not made stable within 20 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    agency(&store, 40, 10);
    deleted_down_to(dir.path(), 2, files);
}

/// Waits (a condition, with a deadline) until at most `n` WAL files are
/// left of `before`: trimmed files are deleted by the spare thread, off
/// the commit's path.
fn deleted_down_to(dir: &std::path::Path, n: usize, before: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let after = wal_files(dir).len();
        if after <= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{before} files, then {after} after 20 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn a_commit_after_the_open_takes_a_zero_filled_file_whose_zeros_are_its_end() {
    let (dir, _, made_ahead, store) = opened_with_a_spare();
    agency(&store, 0, 10);
    let last = wal_files(dir.path()).pop().unwrap();
    assert_eq!(std::fs::metadata(&last).unwrap().len(), made_ahead);
    let bytes = std::fs::read(&last).unwrap();
    let end = crate::segments::frames(&bytes, 0)
        .map_while(Result::ok)
        .last()
        .unwrap()
        .end();
    assert!(end < made_ahead, "one small frame");
    assert!(bytes[end as usize..].iter().all(|b| *b == 0));
    agency(&store, 1, 10);
    drop(store);
    // Reopened (a spare may be lying there too, not a WAL file), the
    // zeros end the file and both commits are there.
    let store = open(dir.path()).unwrap();
    assert_eq!(agencies(&store), vec!["a0", "a1"]);
    agency(&store, 2, 10);
    drop(store);
    let store = open(dir.path()).unwrap();
    assert_eq!(agencies(&store), vec!["a0", "a1", "a2"]);
}

/// Where the whole frames of WAL file `path` end.
fn frames_end(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    crate::segments::frames(&bytes, 0)
        .map_while(Result::ok)
        .last()
        .map_or(0, |f| f.end())
}

/// A store opened in a new folder, once the spare the open makes is ready
/// (a condition, with a deadline) so that the first commit takes it; the
/// spare's path and the size of a file made ahead.
fn opened_with_a_spare() -> (tempfile::TempDir, PathBuf, u64, SledStore) {
    let dir = tempfile::tempdir().unwrap();
    let spare = dir.path().join(DIR).join(".spare");
    let made_ahead = super::files::FILE_BYTES + super::files::FILE_BYTES / 4;
    let store = open(dir.path()).unwrap();
    wait_for(&spare);
    (dir, spare, made_ahead, store)
}

/// Waits (a condition, with a deadline) for `path` to exist.
fn wait_for(path: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !path.exists() {
        assert!(std::time::Instant::now() < deadline, "{path:?} never came");
        std::thread::yield_now();
    }
}

#[test]
fn files_are_made_ahead_while_frames_are_small_and_not_for_large_ones() {
    let (dir, spare, made_ahead, store) = opened_with_a_spare();
    let mut i = 0;
    agency(&store, i, 10);
    let first = wal_files(dir.path()).len();
    // Small frames: once the file is half full, the next is made ahead,
    // and the roll takes it.
    while wal_files(dir.path()).len() == first {
        i += 1;
        agency(&store, i, 10);
        let last = wal_files(dir.path()).pop().unwrap();
        if frames_end(&last) >= super::files::FILE_BYTES / 2 {
            // Asked for by now: made before the roll below takes it.
            wait_for(&spare);
        }
    }
    let second = wal_files(dir.path()).pop().unwrap();
    assert_eq!(std::fs::metadata(&second).unwrap().len(), made_ahead);
    // Large frames (over 64 KiB on average): nothing is asked for, and the
    // file after this one starts empty.
    for j in 0..3 {
        agency(&store, 1000 + j, 200_000);
    }
    let files = wal_files(dir.path());
    let last = files.last().unwrap();
    assert_ne!(last, &second);
    assert!(!spare.exists(), "no spare asked for by large frames");
    assert_eq!(
        std::fs::metadata(last).unwrap().len(),
        frames_end(last),
        "started empty: nothing after its frames"
    );
    drop(store);
    let store = open(dir.path()).unwrap();
    assert_eq!(agencies(&store).len(), i + 1 + 3);
}

#[test]
fn a_growing_file_of_small_frames_gives_way_to_a_spare_as_soon_as_one_is_ready() {
    let (dir, spare, made_ahead, store) = opened_with_a_spare();
    // The first commit takes the open's spare, a large frame fills it and
    // asks for none, so the file after it starts empty and grows.
    agency(&store, 0, 10);
    agency(&store, 1, 200_000);
    agency(&store, 2, 10);
    let growing = wal_files(dir.path()).pop().unwrap();
    let end = frames_end(&growing);
    assert_eq!(std::fs::metadata(&growing).unwrap().len(), end, "grows");
    assert!(!spare.exists(), "none asked for yet");
    // A few small frames in it ask for a spare; the frame after the spare
    // is ready starts in it, long before the growing file is full.
    let early = super::files::EARLY_FRAMES as usize;
    for i in 3..2 + early {
        assert!(!spare.exists(), "asked for after {early} frames");
        agency(&store, i, 10);
    }
    wait_for(&spare);
    // The file is renamed a moment before the spare thread lets go of
    // its mark; until then the commit path does not see it ready (and
    // rightly writes on in the growing file).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !store.wal_for_tests().spare_ready() {
        assert!(
            std::time::Instant::now() < deadline,
            "the spare never became ready"
        );
        std::thread::yield_now();
    }
    assert_eq!(wal_files(dir.path()).pop().unwrap(), growing);
    let end = frames_end(&growing);
    assert!(end < super::files::FILE_BYTES / 2, "{end} bytes");
    agency(&store, 2 + early, 10);
    let last = wal_files(dir.path()).pop().unwrap();
    assert_ne!(last, growing);
    assert_eq!(std::fs::metadata(&last).unwrap().len(), made_ahead);
    drop(store);
    let store = open(dir.path()).unwrap();
    assert_eq!(agencies(&store).len(), 3 + early);
}

#[test]
fn a_frame_written_from_pieces_has_the_header_of_its_bytes_joined() {
    let mut w = Writes::default();
    w.insert(b"k", b"v".to_vec());
    let appended = Appended {
        events: LogBytes {
            file: 1,
            offset: 0,
            bytes: vec![3; 100],
        },
        audit: AuditBytes {
            file: 2,
            offset: 50,
            frames: vec![([5; 8], vec![4; 70]), ([6; 8], vec![7; 3])],
        },
    };
    let mut scratch = Vec::new();
    let pieces = encode_pieces(9, Digest::default(), &appended, &w, &mut scratch);
    let parts: Vec<&[u8]> = pieces.slices().collect();
    let joined = parts.concat();
    for end in [true, false] {
        assert_eq!(
            crate::segments::frame_header_of(&parts, end),
            crate::segments::frame_header(&joined, end)
        );
    }
    let (regions, _) = regions_of(&joined).unwrap();
    assert_eq!(regions.len(), 2);
    let audit = [&[5; 8][..], &[4; 70], &[6; 8], &[7; 3]].concat();
    assert_eq!(regions[1].bytes, &audit[..]);
    assert_eq!(
        extents_of(&joined).unwrap(),
        Extents {
            events: Some((1, 100)),
            audit: Some((2, 50 + 89)),
        }
    );
    assert_eq!(decode(&joined).unwrap().number, 9);
}
