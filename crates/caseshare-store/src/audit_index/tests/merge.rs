//! Tests of small commits sharing the current epoch's `L` records
//! (`MERGE_BELOW`): few records, each but the last at the size, and the
//! answers those of a scan.

use super::*;

#[test]
fn small_commits_share_the_epochs_records_and_answer_as_a_scan_does() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).unwrap();
    // Commits of one or two entries, as a broker at a modest rate makes,
    // about many children: two complete epochs, then most of a third.
    let n = 2 * (1 << EPOCH_BITS) + 400;
    let entries = fill_with(&store, 21, n, 2, 1_000_000);
    let tree = store.raw_tree();
    let records: Vec<(Vec<u8>, usize)> = tree
        .scan_prefix([RECENT])
        .map(|item| {
            let (k, v) = item.unwrap();
            (k.to_vec(), v.len())
        })
        .collect();
    // About 270 commits wrote the current epoch's 400 entries; merged,
    // its records are each at least MERGE_BELOW but the last, and
    // only the current epoch has any.
    assert!(records.len() > 1, "the entries pass MERGE_BELOW");
    assert!(records.len() < 20, "{} records", records.len());
    let prefix = key(RECENT, &[&be(epoch(n - 1))]);
    assert!(records.iter().all(|(k, _)| k.starts_with(&prefix)));
    assert!(
        records[..records.len() - 1]
            .iter()
            .all(|(_, len)| *len >= MERGE_BELOW)
    );
    assert_answers_like_a_scan(&store, n);
    let v = verify(tree, store.audit_log(), n).unwrap();
    assert_eq!(v.mismatch, None);
    let expected: usize = entries.iter().map(|e| AuditTerm::of(e).len()).sum();
    assert_eq!(v.postings, expected as u64);
    drop(store);
    let store = open_store(dir.path()).unwrap();
    assert_answers_like_a_scan(&store, n);
}

#[test]
fn a_commit_joins_the_last_record_only_while_it_is_small() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).unwrap();
    let mut rng = StdRng::seed_from_u64(22);
    let mut first = 0;
    let mut commit = |n: u64| {
        let entries: Vec<Vec<u8>> = (first..first + n)
            .map(|i| {
                // A decision; every other one about a child of its own
                // (the others about the children the queries name).
                let mut e = entry(&mut rng, i, 40, 12);
                e.kind = pb::EntryKind::ShareDecided as i32;
                e.child_pseudonym = if i % 2 == 1 {
                    pseudonym(1_000 + i)
                } else {
                    pseudonym([0, 5, 39][(i / 2 % 3) as usize])
                };
                caseshare_audit::entry::encode(&e)
            })
            .collect();
        store
            .commit(&Batch {
                audit: entries,
                audit_first_index: first,
                ..Batch::default()
            })
            .unwrap();
        first += n;
    };
    let recent = |store: &SledStore| -> Vec<usize> {
        store
            .raw_tree()
            .scan_prefix([RECENT])
            .values()
            .map(|v| v.unwrap().len())
            .collect()
    };
    // A small commit, then one that takes its record past MERGE_BELOW:
    // still one record; the next commit starts another.
    commit(1);
    commit(200);
    let one = recent(&store);
    assert_eq!(one.len(), 1, "the small record took the large commit's");
    assert!(one[0] >= MERGE_BELOW, "{one:?}");
    commit(1);
    assert_eq!(
        recent(&store).len(),
        2,
        "a record past MERGE_BELOW takes no more"
    );
    assert_answers_like_a_scan(&store, 202);
    let v = verify(store.raw_tree(), store.audit_log(), 202).unwrap();
    assert_eq!(v.mismatch, None);
}
