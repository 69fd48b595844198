//! Tests of the event log as the write-ahead log of whole commits: sled
//! behind the log catches up by replay; frames sled needs but the log no
//! longer has are a refusal that changes nothing; commits without events.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use caseshare_proto::v1 as pb;

use crate::{Batch, DeliveryRecord, SledStore, Storage, StoreError, StoredEvent};

fn open(dir: &Path, segment_bytes: u64) -> Result<SledStore, StoreError> {
    // An earlier open in this process may still hold sled's lock for a
    // moment (its background threads let go shortly after a drop).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match SledStore::open_with_segments(dir, 4 << 20, segment_bytes) {
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

fn event(sequence: u64) -> StoredEvent {
    StoredEvent {
        sequence,
        source_agency: "school-b".into(),
        event_id: format!("ev-{sequence}"),
        event: vec![7; 100],
        ..StoredEvent::default()
    }
}

fn events(from: u64, to: u64) -> Batch {
    Batch {
        events: (from..to).map(event).collect(),
        next_sequence: Some(to),
        ..Batch::default()
    }
}

fn agency(id: &str) -> pb::Agency {
    pb::Agency {
        agency_id: id.into(),
        ..Default::default()
    }
}

/// Sled's own files in `dir` (not the event log, not the checkpoint).
fn sled_files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    crate::segments::tests::files(dir)
        .into_iter()
        .filter(|(p, _)| {
            let rel = p.strip_prefix(dir).unwrap();
            let name = rel.to_string_lossy();
            name == "db" || name == "conf" || name.starts_with("snap.") || name.starts_with("blobs")
        })
        .collect()
}

/// Puts sled's files back as they were in `saved`: as if the process had
/// been killed while sled had made only that much stable.
fn rewind_sled(dir: &Path, saved: &BTreeMap<PathBuf, Vec<u8>>) {
    for p in sled_files(dir).keys() {
        std::fs::remove_file(p).unwrap();
    }
    for (p, bytes) in saved {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
}

/// Commits, in order: events 1..4 with an agency (then sled is saved),
/// then events 4..7 with deliveries, a commit without events (a floor and
/// an agency), and events 7..9.
fn later_commits() -> Vec<Batch> {
    vec![
        Batch {
            deliveries: (4..7)
                .map(|s| DeliveryRecord {
                    subscription_id: 3,
                    sequence: s,
                    state: 2,
                    attempts: 1,
                    ..Default::default()
                })
                .collect(),
            ..events(4, 7)
        },
        Batch {
            floors: vec![(3, 6)],
            agencies: vec![agency("council-c")],
            ..Batch::default()
        },
        events(7, 9),
    ]
}

fn state_of(store: &SledStore) -> String {
    let snap = store.load().unwrap();
    let evs = store.events_from(0, 100).unwrap();
    let dels = store.deliveries_from(3, 0).unwrap();
    format!("{snap:?}\n{evs:?}\n{dels:?}")
}

#[test]
fn sled_behind_the_log_catches_up_by_replaying_commit_frames() {
    let dir = tempfile::tempdir().unwrap();
    let reference = tempfile::tempdir().unwrap();
    // The same commits in a store that is never rewound.
    {
        let r = open(reference.path(), 4096).unwrap();
        r.commit(&Batch {
            agencies: vec![agency("school-b")],
            ..events(1, 4)
        })
        .unwrap();
        for b in later_commits() {
            r.commit(&b).unwrap();
        }
    }
    let saved = {
        let store = open(dir.path(), 4096).unwrap();
        store
            .commit(&Batch {
                agencies: vec![agency("school-b")],
                ..events(1, 4)
            })
            .unwrap();
        store.sync().unwrap();
        let saved = sled_files(dir.path());
        for b in later_commits() {
            store.commit(&b).unwrap();
        }
        saved
    };
    rewind_sled(dir.path(), &saved);
    let store = open(dir.path(), 4096).unwrap();
    let snap = store.load().unwrap();
    assert_eq!(snap.next_sequence, 9);
    assert_eq!(snap.floors, vec![(3, 6)]);
    assert_eq!(snap.agencies.len(), 2, "{:?}", snap.agencies);
    assert_eq!(store.deliveries_from(3, 0).unwrap().len(), 3);
    assert_eq!(store.sequence_of("school-b", "ev-8").unwrap(), Some(8));
    let reference = open(reference.path(), 4096).unwrap();
    assert_eq!(state_of(&store), state_of(&reference));
    // Commits continue from there, and a second open replays nothing.
    store.commit(&events(9, 10)).unwrap();
    drop(store);
    let again = open(dir.path(), 4096).unwrap();
    assert_eq!(again.events_from(0, 100).unwrap().len(), 9);
}

#[test]
fn commit_frames_sled_needs_but_the_log_lost_are_refused_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let saved = {
        // Small segments, so retention deletes whole ones.
        let store = open(dir.path(), 600).unwrap();
        store.commit(&events(1, 4)).unwrap();
        store.sync().unwrap();
        let saved = sled_files(dir.path());
        for from in (4..40).step_by(3) {
            store.commit(&events(from, from + 3)).unwrap();
        }
        // Retention deletes the segments holding the first commits.
        store
            .commit(&Batch {
                deleted_events: (1..30)
                    .map(|s| (s, "school-b".into(), format!("ev-{s}")))
                    .collect(),
                ..Batch::default()
            })
            .unwrap();
        saved
    };
    rewind_sled(dir.path(), &saved);
    let before = crate::segments::tests::files(dir.path());
    let err = open(dir.path(), 600).map(|_| ()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("commit frames from 2 are missing"), "{text}");
    assert!(text.contains("db is damaged"), "{text}");
    assert_eq!(
        crate::segments::tests::files(dir.path()),
        before,
        "nothing changed"
    );
}

#[test]
fn damage_followed_by_a_whole_commit_frame_is_not_a_torn_write() {
    let dir = tempfile::tempdir().unwrap();
    let saved = {
        let store = open(dir.path(), 1 << 20).unwrap();
        store.commit(&events(1, 4)).unwrap();
        store.sync().unwrap();
        let saved = sled_files(dir.path());
        store.commit(&events(4, 7)).unwrap();
        store.commit(&events(7, 9)).unwrap();
        saved
    };
    rewind_sled(dir.path(), &saved);
    // A byte of event 5 flipped: commits 2 and 3 were acknowledged.
    let seg = dir
        .path()
        .join("events")
        .join(crate::segments::segment_name(1));
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&seg, &bytes).unwrap();
    let before = crate::segments::tests::files(dir.path());
    let err = open(dir.path(), 1 << 20).map(|_| ()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&crate::segments::segment_name(1)), "{text}");
    assert!(text.contains("is damaged"), "{text}");
    assert_eq!(
        crate::segments::tests::files(dir.path()),
        before,
        "nothing changed"
    );
}

#[test]
fn commits_without_events_start_and_continue_a_segment() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path(), 1 << 20).unwrap();
        store
            .commit(&Batch {
                agencies: vec![agency("school-b")],
                ..Batch::default()
            })
            .unwrap();
    }
    let seg = dir
        .path()
        .join("events")
        .join(crate::segments::segment_name(1));
    assert!(seg.exists(), "the commit frame went into the first segment");
    {
        let store = open(dir.path(), 1 << 20).unwrap();
        assert_eq!(store.load().unwrap().agencies.len(), 1);
        store.commit(&events(1, 3)).unwrap();
    }
    // A torn write after the events: ignored, left on disk.
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes.extend_from_slice(&[9, 0, 0, 0, 1, 2]);
    std::fs::write(&seg, &bytes).unwrap();
    let store = open(dir.path(), 1 << 20).unwrap();
    assert_eq!(store.events_from(0, 10).unwrap().len(), 2);
    store.commit(&events(3, 4)).unwrap();
    assert_eq!(store.event(3).unwrap().unwrap().event_id, "ev-3");
}

#[test]
fn a_segment_of_only_applied_commit_frames_and_a_torn_tail_is_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path(), 1 << 20).unwrap();
        for id in ["a", "b"] {
            store
                .commit(&Batch {
                    agencies: vec![agency(id)],
                    ..Batch::default()
                })
                .unwrap();
        }
    }
    let seg = dir
        .path()
        .join("events")
        .join(crate::segments::segment_name(1));
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes.extend_from_slice(&[1, 2, 3]);
    std::fs::write(&seg, &bytes).unwrap();
    {
        let store = open(dir.path(), 1 << 20).unwrap();
        assert_eq!(store.load().unwrap().agencies.len(), 2);
        store.commit(&events(1, 3)).unwrap();
    }
    let aside = dir
        .path()
        .join("events")
        .join(format!("{}.applied-1", crate::segments::segment_name(1)));
    assert_eq!(std::fs::read(&aside).unwrap(), bytes, "kept, byte for byte");
    let store = open(dir.path(), 1 << 20).unwrap();
    assert_eq!(store.load().unwrap().agencies.len(), 2);
    assert_eq!(store.events_from(0, 10).unwrap().len(), 2);
}
