//! Unit tests of the event log: appends and reads, reopening, cutting off
//! uncommitted and torn tails, rollover and retention.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use std::collections::BTreeMap;

fn event(sequence: u64) -> StoredEvent {
    StoredEvent {
        sequence,
        source_agency: "nhs-trust-a".into(),
        event_id: format!("e{sequence}"),
        event: vec![u8::try_from(sequence % 251).unwrap_or(0); 100 + (sequence as usize % 50)],
        ..Default::default()
    }
}

fn events(range: std::ops::Range<u64>) -> Vec<StoredEvent> {
    range.map(event).collect()
}

fn seqs(v: &[StoredEvent]) -> Vec<u64> {
    v.iter().map(|e| e.sequence).collect()
}

#[test]
fn appends_read_back_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = EventLog::open(dir.path(), 1, 0, DEFAULT_SEGMENT_BYTES).unwrap();
        assert_eq!(log.first(), None);
        log.append(&events(1..4)).unwrap();
        log.append(&events(4..10)).unwrap();
        assert_eq!(log.get(5).unwrap(), Some(event(5)));
        assert_eq!(log.get(10).unwrap(), None);
        assert_eq!(seqs(&log.range(3, 4).unwrap()), [3, 4, 5, 6]);
        assert_eq!(seqs(&log.range(8, 100).unwrap()), [8, 9]);
    }
    let log = EventLog::open(dir.path(), 10, 0, DEFAULT_SEGMENT_BYTES).unwrap();
    assert_eq!(log.first(), Some(1));
    assert_eq!(log.get(9).unwrap(), Some(event(9)));
    // Appends continue the same segment after a reopen.
    log.append(&events(10..12)).unwrap();
    assert_eq!(log.segment_count(), 1);
    assert_eq!(
        seqs(&log.range(0, 100).unwrap()),
        (1..12).collect::<Vec<_>>()
    );
}

#[test]
fn refuses_an_append_that_does_not_continue_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path(), 1, 0, DEFAULT_SEGMENT_BYTES).unwrap();
    log.append(&events(1..3)).unwrap();
    assert!(log.append(&events(4..5)).is_err());
    assert!(log.append(&[event(3), event(5)]).is_err());
    assert_eq!(seqs(&log.range(0, 10).unwrap()), [1, 2]);
}

#[test]
fn reopening_cuts_records_whose_batch_never_committed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = EventLog::open(dir.path(), 1, 0, DEFAULT_SEGMENT_BYTES).unwrap();
        log.append(&events(1..8)).unwrap();
    }
    // The store committed only up to 4 (its counter says the next is 5).
    let log = EventLog::open(dir.path(), 5, 0, DEFAULT_SEGMENT_BYTES).unwrap();
    assert_eq!(seqs(&log.range(0, 100).unwrap()), [1, 2, 3, 4]);
    log.append(&events(5..7)).unwrap();
    assert_eq!(log.get(6).unwrap(), Some(event(6)));
}

/// Every file in `dir` (recursively) with its bytes.
pub(crate) fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

#[test]
fn reopening_ignores_a_torn_tail_without_cutting_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(segment_name(1));
    {
        let log = EventLog::open(dir.path(), 1, 0, DEFAULT_SEGMENT_BYTES).unwrap();
        log.append(&events(1..4)).unwrap();
    }
    let whole = std::fs::metadata(&path).unwrap().len();
    for cut in [1u64, 7, 9, 40] {
        {
            let log = EventLog::open(dir.path(), 4, 0, DEFAULT_SEGMENT_BYTES).unwrap();
            assert_eq!(log.first(), Some(1));
        }
        // Half a record after the committed ones: as if a crash tore the
        // write of a batch that was never acknowledged.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        let mut junk = event(4).encode_to_vec();
        let mut rec = (junk.len() as u32).to_le_bytes().to_vec();
        rec.extend_from_slice(&crc32fast::hash(&junk).to_le_bytes());
        rec.append(&mut junk);
        let cut = usize::try_from(cut).unwrap().min(rec.len() - 1);
        f.write_all(&rec[..cut]).unwrap();
        drop(f);
        let torn = std::fs::metadata(&path).unwrap().len();
        let log = EventLog::open(dir.path(), 4, 0, DEFAULT_SEGMENT_BYTES).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), torn, "cut {cut}");
        assert_eq!(torn, whole + cut as u64);
        assert_eq!(seqs(&log.range(0, 100).unwrap()), [1, 2, 3]);
        // The next batch goes into a new segment; the torn bytes stay.
        log.append(&events(4..6)).unwrap();
        assert_eq!(log.segment_count(), 2);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), torn);
        drop(log);
        let log = EventLog::open(dir.path(), 6, 0, DEFAULT_SEGMENT_BYTES).unwrap();
        assert_eq!(seqs(&log.range(0, 100).unwrap()), [1, 2, 3, 4, 5]);
        assert_eq!(log.sequence_of("nhs-trust-a", "e2").unwrap(), Some(2));
        assert_eq!(log.sequence_of("nhs-trust-a", "e5").unwrap(), Some(5));
        drop(log);
        // Start over for the next cut.
        std::fs::remove_file(dir.path().join(segment_name(4))).unwrap();
        let _ = std::fs::remove_file(dir.path().join(ids::ids_name(1)));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(usize::try_from(whole).unwrap());
        std::fs::write(&path, bytes).unwrap();
    }
}

#[test]
fn a_corrupt_committed_record_is_an_error_not_a_silent_cut() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(segment_name(1));
    {
        let log = EventLog::open(dir.path(), 1, 0, DEFAULT_SEGMENT_BYTES).unwrap();
        log.append(&events(1..4)).unwrap();
    }
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    // Sequences 1..=3 were committed: losing one is not a torn tail.
    let before = files(dir.path());
    let err = EventLog::open(dir.path(), 4, 0, DEFAULT_SEGMENT_BYTES).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("is damaged at byte"), "{text}");
    assert!(text.contains(&segment_name(1)), "{text}");
    assert_eq!(files(dir.path()), before, "nothing changed");
}

#[test]
fn a_batch_that_would_start_a_frame_past_the_offset_limit_starts_a_new_segment() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path(), 1, 0, DEFAULT_SEGMENT_BYTES).unwrap();
    // ~170 bytes a frame: batches of 500 reach the limit in a dozen.
    let mut next = 1;
    while log.read_index().segments.len() < 2 {
        log.append(&events(next..next + 500)).unwrap();
        next += 500;
    }
    let segments: Vec<(u64, u64)> = log
        .read_index()
        .segments
        .values()
        .map(|s| (s.first, s.end))
        .collect();
    assert!(segments[0].1 <= MAX_FRAME_OFFSET, "{segments:?}");
    assert_eq!(segments[1].0, next - 500, "the batch that did not fit");
    assert_eq!(
        seqs(&log.range(1, next as usize).unwrap()),
        (1..next).collect::<Vec<_>>()
    );
    drop(log);
    let log = EventLog::open(dir.path(), next, 0, DEFAULT_SEGMENT_BYTES).unwrap();
    assert_eq!(
        seqs(&log.range(1, next as usize).unwrap()),
        (1..next).collect::<Vec<_>>()
    );
}

#[test]
fn a_committed_frame_past_the_offset_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(segment_name(1));
    // Frames as the log writes them, but more than one segment may hold.
    let mut bytes = Vec::new();
    let mut n = 0;
    loop {
        let start = bytes.len() as u64;
        n += 1;
        frame_into(&mut bytes, &event(n), true).unwrap();
        if start > MAX_FRAME_OFFSET {
            break;
        }
    }
    std::fs::write(&path, &bytes).unwrap();
    let before = files(dir.path());
    let err = EventLog::open(dir.path(), n + 1, 0, DEFAULT_SEGMENT_BYTES).unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&segment_name(1)), "{text}");
    assert!(text.contains("which this broker never writes"), "{text}");
    assert_eq!(files(dir.path()), before, "nothing changed");
}

#[test]
fn more_than_one_batch_beyond_sleds_counter_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = EventLog::open(dir.path(), 1, 0, DEFAULT_SEGMENT_BYTES).unwrap();
        log.append(&events(1..4)).unwrap();
        log.append(&events(4..6)).unwrap();
        log.append(&events(6..9)).unwrap();
    }
    let before = files(dir.path());
    // Sled says 6 is next: 6..=8 is the one batch that may not have
    // committed.
    drop(EventLog::open(dir.path(), 6, 0, DEFAULT_SEGMENT_BYTES).unwrap());
    assert_eq!(files(dir.path()), before);
    // Sled says 4 is next: batch 4..=5 was followed by another, so it
    // committed and sled lost it.
    let err = EventLog::open(dir.path(), 4, 0, DEFAULT_SEGMENT_BYTES).unwrap_err();
    assert!(err.to_string().contains("more than one batch"), "{err}");
    // Sled says 5 is next: not a batch boundary.
    let err = EventLog::open(dir.path(), 5, 0, DEFAULT_SEGMENT_BYTES).unwrap_err();
    assert!(
        err.to_string().contains("sled lost committed events"),
        "{err}"
    );
    assert_eq!(files(dir.path()), before, "nothing changed");
    // And as sled knows it, all is well.
    let log = EventLog::open(dir.path(), 9, 0, DEFAULT_SEGMENT_BYTES).unwrap();
    assert_eq!(
        seqs(&log.range(0, 100).unwrap()),
        (1..9).collect::<Vec<_>>()
    );
}

#[test]
fn rolls_over_and_retention_deletes_whole_segments_below_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path(), 1, 0, 1_000).unwrap();
    for start in (1..60).step_by(3) {
        log.append(&events(start..start + 3)).unwrap();
    }
    let segments = log.segment_count();
    assert!(segments > 5, "{segments} segments");
    assert_eq!(
        seqs(&log.range(0, 1000).unwrap()),
        (1..61).collect::<Vec<_>>()
    );
    log.set_first(30).unwrap();
    assert!(log.segment_count() < segments);
    assert_eq!(log.get(29).unwrap(), None);
    assert_eq!(log.first(), Some(30));
    assert_eq!(seqs(&log.range(0, 3).unwrap()), [30, 31, 32]);
    drop(log);
    let files = std::fs::read_dir(dir.path()).unwrap().count();
    let log = EventLog::open(dir.path(), 61, 30, 1_000).unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), files);
    assert_eq!(log.first(), Some(30));
    assert_eq!(log.get(60).unwrap(), Some(event(60)));
    // Everything expunged: the last segment stays, for appends to continue.
    log.set_first(61).unwrap();
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.first(), None);
    log.append(&events(61..62)).unwrap();
    assert_eq!(log.first(), Some(61));
}

#[test]
fn a_segment_holding_only_a_batch_that_never_committed_is_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let next = {
        let log = EventLog::open(dir.path(), 1, 0, 500).unwrap();
        let mut start = 1;
        while log.segment_count() < 2 {
            log.append(&events(start..start + 3)).unwrap();
            start += 3;
        }
        start - 3
    };
    let uncommitted = dir.path().join(segment_name(next));
    let bytes = std::fs::read(&uncommitted).unwrap();
    // The batch that started segment `next` never committed.
    let log = EventLog::open(dir.path(), next, 0, 500).unwrap();
    assert!(!uncommitted.exists());
    let aside = dir
        .path()
        .join(format!("{}.uncommitted-1", segment_name(next)));
    assert_eq!(std::fs::read(&aside).unwrap(), bytes, "kept, not deleted");
    assert_eq!(
        seqs(&log.range(0, 100).unwrap()),
        (1..next).collect::<Vec<_>>()
    );
    log.append(&events(next..next + 1)).unwrap();
    assert_eq!(log.get(next).unwrap(), Some(event(next)));
}

#[test]
fn finds_an_agencys_event_by_id_across_reopen_until_retention_drops_it() {
    let dir = tempfile::tempdir().unwrap();
    let other = |sequence: u64| StoredEvent {
        source_agency: "school-b".into(),
        ..event(sequence)
    };
    {
        let log = EventLog::open(dir.path(), 1, 0, 600).unwrap();
        log.append(&events(1..5)).unwrap();
        log.append(&[other(5), event(6)]).unwrap();
        log.append(&events(7..9)).unwrap();
        assert_eq!(log.sequence_of("nhs-trust-a", "e3").unwrap(), Some(3));
        assert_eq!(log.sequence_of("school-b", "e5").unwrap(), Some(5));
        // The same id from another agency is another event.
        assert_eq!(log.sequence_of("nhs-trust-a", "e5").unwrap(), None);
        assert_eq!(log.sequence_of("school-b", "e3").unwrap(), None);
    }
    // Reopened with 8 never committed: its id is free again.
    let log = EventLog::open(dir.path(), 8, 0, 600).unwrap();
    assert_eq!(log.sequence_of("nhs-trust-a", "e7").unwrap(), Some(7));
    assert_eq!(log.sequence_of("nhs-trust-a", "e8").unwrap(), None);
    assert_eq!(log.sequence_of("school-b", "e5").unwrap(), Some(5));
    log.set_first(4).unwrap();
    assert_eq!(log.sequence_of("nhs-trust-a", "e3").unwrap(), None);
    assert_eq!(log.sequence_of("nhs-trust-a", "e4").unwrap(), Some(4));
    drop(log);
    let log = EventLog::open(dir.path(), 8, 4, 600).unwrap();
    assert_eq!(log.sequence_of("nhs-trust-a", "e2").unwrap(), None);
    assert_eq!(log.sequence_of("nhs-trust-a", "e6").unwrap(), Some(6));
}

#[test]
fn sealed_segments_answer_ids_from_their_files_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = EventLog::open(dir.path(), 1, 0, 1_000).unwrap();
        for start in (1..60).step_by(3) {
            log.append(&events(start..start + 3)).unwrap();
        }
        assert!(log.sealed_id_files() >= 4, "{}", log.sealed_id_files());
        assert_eq!(log.sealed_id_files(), log.segment_count() - 1);
        for seq in 1..61 {
            assert_eq!(
                log.sequence_of("nhs-trust-a", &format!("e{seq}")).unwrap(),
                Some(seq)
            );
        }
        assert_eq!(log.sequence_of("nhs-trust-a", "e61").unwrap(), None);
    }
    // A crash between sealing a segment and writing its ids file: the file
    // is written again at open.
    let first_ids = dir.path().join(ids::ids_name(1));
    std::fs::remove_file(&first_ids).unwrap();
    std::fs::write(dir.path().join(ids::ids_name(999)), b"orphan").unwrap();
    let log = EventLog::open(dir.path(), 61, 0, 1_000).unwrap();
    assert!(first_ids.exists());
    assert!(!dir.path().join(ids::ids_name(999)).exists());
    for seq in [1, 2, 30, 59, 60] {
        assert_eq!(
            log.sequence_of("nhs-trust-a", &format!("e{seq}")).unwrap(),
            Some(seq)
        );
    }
    // Retention drops sealed ids with their segments.
    let files_before = log.sealed_id_files();
    log.set_first(40).unwrap();
    assert!(log.sealed_id_files() < files_before);
    assert_eq!(log.sequence_of("nhs-trust-a", "e30").unwrap(), None);
    assert_eq!(log.sequence_of("nhs-trust-a", "e45").unwrap(), Some(45));
    let ids_files = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "ids")
        })
        .count();
    assert_eq!(ids_files, log.sealed_id_files());
}

mod damaged_files {
    //! Whatever bytes a segment holds, opening the log does not panic: it
    //! cuts a torn tail or refuses with an error, and what it keeps reads
    //! back as the events that were written.
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn any_damage_is_cut_or_refused(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
            cut in any::<usize>(),
            junk in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(segment_name(1));
            {
                let log = EventLog::open(dir.path(), 1, 0, DEFAULT_SEGMENT_BYTES).unwrap();
                log.append(&events(1..9)).unwrap();
            }
            let mut bytes = std::fs::read(&path).unwrap();
            for (at, x) in &flips {
                let i = at % bytes.len();
                bytes[i] ^= x | 1;
            }
            bytes.truncate(cut % (bytes.len() + 1));
            bytes.extend_from_slice(&junk);
            std::fs::write(&path, &bytes).unwrap();
            // The store believes 1..=8 were committed.
            match EventLog::open(dir.path(), 9, 0, DEFAULT_SEGMENT_BYTES) {
                Ok(log) => {
                    // Accepted only if every committed event is intact.
                    for seq in 1..9 {
                        prop_assert_eq!(log.get(seq).unwrap(), Some(event(seq)));
                    }
                }
                Err(e) => {
                    let text = e.to_string();
                    prop_assert!(text.contains("is damaged"), "{}", text);
                    prop_assert_eq!(std::fs::read(&path).unwrap(), bytes, "refused, and unchanged");
                }
            }
            // Opened as if nothing was committed, it never fails on a torn
            // tail and keeps nothing.
            if let Ok(log) = EventLog::open(dir.path(), 1, 0, DEFAULT_SEGMENT_BYTES) {
                prop_assert_eq!(log.first(), None);
            }
        }
    }
}

#[test]
fn a_range_equals_reading_each_event_across_segments_and_retention() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments, so ranges cross files; one event longer than many.
    let log = EventLog::open(dir.path(), 1, 0, 40_000).unwrap();
    let mut all = events(1..3_000);
    all[1_500].event = vec![7; 300_000];
    for part in all.chunks(97) {
        log.append(part).unwrap();
    }
    assert!(log.segment_count() > 2);
    log.set_first(11).unwrap();
    let cases = [
        (0, 5_000),
        (11, 1),
        (12, 300),
        (1_400, 200),
        (1_501, 2),
        (2_990, 50),
    ];
    assert_ranges_read_as_each_event(&log, 11..3_000, &cases);
    assert!(log.range(3_000, 10).unwrap().is_empty());
    assert!(log.range(0, 0).unwrap().is_empty());
}

#[test]
fn a_range_longer_than_one_read_is_read_in_parts() {
    let dir = tempfile::tempdir().unwrap();
    // Events of 100 kB among small ones, several to a segment and more
    // than `RANGE_READ_BYTES` in one; one event larger than it.
    let log = EventLog::open(dir.path(), 1, 0, 64 << 20).unwrap();
    let mut all = events(1..60);
    for i in (3..50).step_by(5) {
        all[i].event = vec![9; 100_000];
    }
    all[55].event = vec![5; usize::try_from(RANGE_READ_BYTES).unwrap() + 10];
    for part in all.chunks(2) {
        log.append(part).unwrap();
    }
    assert!(log.segment_count() < 5);
    let cases = [(0, 100), (1, 59), (4, 3), (30, 30), (54, 10)];
    assert_ranges_read_as_each_event(&log, 1..60, &cases);
}

/// Each `range(from, max)` of `cases` equals reading its events one by
/// one, the log holding `held`.
fn assert_ranges_read_as_each_event(
    log: &EventLog,
    held: std::ops::Range<u64>,
    cases: &[(u64, usize)],
) {
    for &(from, max) in cases {
        let got = log.range(from, max).unwrap();
        let want: Vec<StoredEvent> = (from.max(held.start)..held.end)
            .take(max)
            .map(|s| log.get(s).unwrap().unwrap())
            .collect();
        assert_eq!(got, want, "range({from}, {max})");
    }
}

#[test]
fn the_frame_walk_yields_whole_frames_then_one_error() {
    let mut bytes = Vec::new();
    for (i, payload) in [&b"abc"[..], b"defgh", b"ij"].iter().enumerate() {
        let end = i == 1;
        let len = payload.len() as u32 | if end { BATCH_END } else { 0 };
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&frame_crc(payload, end).to_le_bytes());
        bytes.extend_from_slice(payload);
    }
    let all: Vec<_> = frames(&bytes, 100).map(Result::unwrap).collect();
    assert_eq!(all.len(), 3);
    assert_eq!(
        (all[1].offset, all[1].payload, all[1].batch_end),
        (111, &b"defgh"[..], true)
    );
    assert_eq!(all[1].end(), 124);
    assert_eq!(all[2].end(), 100 + bytes.len() as u64);
    // A flipped byte in the second frame: the first, then one error there.
    let mut bad = bytes.clone();
    bad[20] ^= 1;
    let walked: Vec<_> = frames(&bad, 100).collect();
    assert_eq!(walked.len(), 2);
    assert!(walked[0].is_ok());
    assert_eq!(walked[1].as_ref().map_err(|e| e.0).unwrap_err(), 111);
    // Cut inside the last frame, and a zero-length frame.
    assert!(
        frames(&bytes[..bytes.len() - 1], 0)
            .last()
            .unwrap()
            .is_err()
    );
    assert!(frames(&[0u8; 8], 0).next().unwrap().is_err());
}
