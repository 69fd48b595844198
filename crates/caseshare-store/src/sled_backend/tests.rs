//! Tests of the sled backend: commits, reopening, the event log beside it.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;
use crate::DeliveryState;

/// Makes everything committed so far stable and trims the WAL of it, as
/// the stabiliser and the next commits do within about a second: the
/// frames' copies of the logs' bytes are gone, so damage to those bytes
/// is the logs' own checks' to find.
pub(crate) fn settle(store: &SledStore) {
    store.wal.roll();
    let (n, _) = store
        .wal
        .commit(&store.tree, crate::wal::Writes::default())
        .unwrap();
    store.stabiliser.applied(n);
    store.stabilise_now().unwrap();
    store.wal.trim(store.stabiliser.stable()).unwrap();
}

/// Opens the store in `dir`. Reopening in the same process right after
/// dropping a store can find sled's file lock still held by its
/// background I/O threads, which let go of it shortly after; a new
/// process (a restart) never sees this. So: retry while the lock is
/// busy, for up to 10 s.
fn open_store(dir: &Path) -> SledStore {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match SledStore::open(dir, 8 << 20) {
            Ok(s) => return s,
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => panic!("open: {e}"),
        }
    }
}

#[test]
fn audit_chunks_round_trip_across_batches_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    // Entries of varied sizes (the store indexes them, so they are entries).
    let entries: Vec<Vec<u8>> = (0..500u32)
        .map(|i| {
            caseshare_audit::entry::encode(&pb::AuditEntry {
                index: u64::from(i),
                subject: "x".repeat(100 + (i as usize % 300)),
                ..Default::default()
            })
        })
        .collect();
    {
        let store = open_store(dir.path());
        let mut next = 0u64;
        for chunk in entries.chunks(170) {
            let batch = Batch {
                audit: chunk.to_vec(),
                audit_first_index: next,
                ..Batch::default()
            };
            store.commit(&batch).unwrap();
            next += chunk.len() as u64;
        }
    }
    let store = open_store(dir.path());
    assert_eq!(store.load().unwrap().audit_size, 500);
    assert_eq!(store.audit_entries(0, 500).unwrap(), entries);
    assert_eq!(
        store.audit_entries(123, 377).unwrap(),
        entries[123..377].to_vec()
    );
    assert_eq!(
        store.audit_entries(499, 600).unwrap(),
        entries[499..].to_vec()
    );
    assert!(store.audit_entries(10, 10).unwrap().is_empty());
}

#[test]
fn events_deliveries_and_counters_persist() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open_store(dir.path());
        let batch = Batch {
            events: (1..=3)
                .map(|s| StoredEvent {
                    sequence: s,
                    source_agency: "a".into(),
                    event_id: format!("e{s}"),
                    ..Default::default()
                })
                .collect(),
            deliveries: vec![DeliveryRecord {
                subscription_id: 7,
                sequence: 2,
                state: 2,
                attempts: 1,
                ..Default::default()
            }],
            floors: vec![(7, 3)],
            next_sequence: Some(4),
            ..Batch::default()
        };
        store.commit(&batch).unwrap();
    }
    let store = open_store(dir.path());
    let snap = store.load().unwrap();
    assert_eq!(snap.next_sequence, 4);
    assert_eq!(snap.floors, vec![(7, 3)]);
    assert_eq!(store.events_from(2, 10).unwrap().len(), 2);
    assert_eq!(store.sequence_of("a", "e3").unwrap(), Some(3));
    assert_eq!(store.sequence_of("b", "e3").unwrap(), None);
    assert_eq!(store.deliveries_from(7, 0).unwrap().len(), 1);
    assert!(store.deliveries_from(8, 0).unwrap().is_empty());
}

#[test]
fn events_kept_in_sled_by_an_older_version_move_into_the_event_log() {
    let dir = tempfile::tempdir().unwrap();
    let event = |sequence: u64| StoredEvent {
        sequence,
        source_agency: "a".into(),
        event_id: format!("e{sequence}"),
        event: vec![7; 50],
        ..StoredEvent::default()
    };
    {
        let store = open_store(dir.path());
        // As the previous layout wrote them: `E` records, counter at 6.
        let tree = store.raw_tree();
        for seq in 3..6 {
            tree.insert(key(b'E', &[&be(seq)]), event(seq).encode_to_vec())
                .unwrap();
        }
        tree.insert(key(b'M', &[b"seq"]), be(6).to_vec()).unwrap();
        store.accept_sled_as_it_is().unwrap();
    }
    for _ in 0..2 {
        let store = open_store(dir.path());
        assert_eq!(store.tree.scan_prefix([b'E']).count(), 0);
        assert_eq!(store.event(4).unwrap(), Some(event(4)));
        let got: Vec<u64> = store
            .events_from(0, 10)
            .unwrap()
            .iter()
            .map(|e| e.sequence)
            .collect();
        assert_eq!(got, [3, 4, 5]);
        assert_eq!(store.load().unwrap().first_sequence, 3);
    }
    let store = open_store(dir.path());
    store
        .commit(&Batch {
            events: vec![event(6)],
            next_sequence: Some(7),
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(store.event(6).unwrap(), Some(event(6)));
}

#[test]
fn delivery_records_of_the_old_layout_are_found_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let record = |sequence: u64, state: DeliveryState| DeliveryRecord {
        subscription_id: 7,
        sequence,
        state: state as i32,
        attempts: 1,
        ..Default::default()
    };
    {
        let store = open_store(dir.path());
        assert!(!store.legacy_deliveries, "a new store has none");
        store
            .commit(&Batch {
                deliveries: vec![record(2, DeliveryState::Delivered)],
                ..Batch::default()
            })
            .unwrap();
        // As the one-record-per-delivery layout wrote them: `D` records.
        store
            .raw_tree()
            .insert(
                key(b'D', &[&be(7), &be(3)]),
                record(3, DeliveryState::Acked).encode_to_vec(),
            )
            .unwrap();
        store.accept_sled_as_it_is().unwrap();
    }
    let store = open_store(dir.path());
    assert!(store.legacy_deliveries);
    let of = |seq| store.deliveries_of(&[7], seq).unwrap();
    assert_eq!(of(3), vec![record(3, DeliveryState::Acked)]);
    assert_eq!(of(2), vec![record(2, DeliveryState::Delivered)]);
    assert!(of(4).is_empty());
}

#[test]
fn a_deleted_subscriptions_deliveries_go_a_bounded_number_per_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let records = |sub: u64, n: u64| -> Vec<DeliveryRecord> {
        (1..=n)
            .map(|sequence| DeliveryRecord {
                subscription_id: sub,
                sequence,
                ..DeliveryRecord::default()
            })
            .collect()
    };
    let mut deliveries = records(7, 2_500);
    deliveries.extend(records(8, 3));
    store
        .commit(&Batch {
            deliveries,
            ..Batch::default()
        })
        .unwrap();
    store
        .commit(&Batch {
            deleted_subscriptions: vec![7],
            ..Batch::default()
        })
        .unwrap();
    // 1,000 records' worth per commit: 15 chunks of 64 sequences (the
    // first holds 1..=63), so 959, then 960, then the last 581.
    assert_eq!(store.deliveries_from(7, 0).unwrap().len(), 2_500 - 959);
    assert_eq!(store.subscriptions_being_purged().unwrap(), [7]);
    for left in [581, 0] {
        store
            .commit(&Batch {
                purge_deliveries: store.subscriptions_being_purged().unwrap(),
                ..Batch::default()
            })
            .unwrap();
        assert_eq!(store.deliveries_from(7, 0).unwrap().len(), left);
    }
    assert!(store.subscriptions_being_purged().unwrap().is_empty());
    assert_eq!(
        store.deliveries_from(8, 0).unwrap().len(),
        3,
        "others untouched"
    );
}

#[test]
fn the_journal_position_is_committed_with_its_batch_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open_store(dir.path());
        assert_eq!(
            store.load().unwrap().journal_position,
            0,
            "an embedded store has none"
        );
        for position in [1u64, 2, 7] {
            store
                .commit(&Batch {
                    journal_position: Some(position),
                    ..Batch::default()
                })
                .unwrap();
        }
        // A batch that does not name a position leaves the last one.
        store
            .commit(&Batch {
                floors: vec![(1, 1)],
                ..Batch::default()
            })
            .unwrap();
    }
    let store = open_store(dir.path());
    assert_eq!(store.load().unwrap().journal_position, 7);
}

/// Cluster mode's kept journal times: written with their batch, dropped
/// through a sequence (the drop and the batch's own times in one commit),
/// and loaded back after a reopen, so a restarted replica applies the
/// stale-proposal rule with the times the others had.
#[test]
fn journal_times_are_kept_dropped_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open_store(dir.path());
        let empty = store.load().unwrap();
        assert!(empty.journal_times.is_empty());
        assert_eq!(empty.journal_times_dropped_through, 0);
        store
            .commit(&Batch {
                journal_position: Some(3),
                journal_times: vec![(1, 100), (2, 250), (3, -5)],
                ..Batch::default()
            })
            .unwrap();
        store
            .commit(&Batch {
                journal_position: Some(5),
                journal_times: vec![(4, 900), (5, 1_000)],
                journal_times_dropped_through: Some(2),
                ..Batch::default()
            })
            .unwrap();
    }
    let store = open_store(dir.path());
    let snap = store.load().unwrap();
    assert_eq!(snap.journal_times, vec![(3, -5), (4, 900), (5, 1_000)]);
    assert_eq!(snap.journal_times_dropped_through, 2);
    assert_eq!(snap.journal_position, 5);
}

#[test]
fn buffers_released_when_idle_grow_again_for_the_next_commit() {
    let dir = tempfile::tempdir().unwrap();
    let batch = |first: u64| Batch {
        events: (first..first + 50)
            .map(|s| StoredEvent {
                sequence: s,
                source_agency: "a".into(),
                event_id: format!("e{s}"),
                event: vec![7; 500],
                ..Default::default()
            })
            .collect(),
        next_sequence: Some(first + 50),
        ..Batch::default()
    };
    {
        let store = open_store(dir.path());
        // The batch's bytes: encoded into the event log's buffer, handed
        // to the commit frame (the two swap buffers), written from there.
        let kept = |store: &SledStore| {
            let appended = store.appended.lock().unwrap();
            store.events.kept_buffer_bytes()
                + appended.events.bytes.capacity()
                + appended.audit.len()
        };
        store.commit(&batch(1)).unwrap();
        assert!(kept(&store) > 50 * 500);
        assert!(store.wal.kept_buffer_bytes() > 0);
        store.release_idle_memory();
        assert_eq!(kept(&store), 0);
        assert_eq!(store.wal.kept_buffer_bytes(), 0);
        store.commit(&batch(51)).unwrap();
        assert!(kept(&store) > 50 * 500);
        assert_eq!(store.events_from(1, 200).unwrap().len(), 100);
    }
    let store = open_store(dir.path());
    assert_eq!(store.load().unwrap().next_sequence, 101);
    let events = store.events_from(1, 200).unwrap();
    assert_eq!(events.len(), 100);
    assert!(
        events
            .iter()
            .enumerate()
            .all(|(i, e)| e.sequence == i as u64 + 1)
    );
    assert_eq!(store.sequence_of("a", "e77").unwrap(), Some(77));
}
