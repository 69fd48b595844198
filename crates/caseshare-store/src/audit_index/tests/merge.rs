//! Tests of small commits' `L` records merging by block (`MERGE_SPAN`):
//! one record per complete block of the current epoch, one per commit in
//! the block not yet complete, and the answers those of a scan.

use super::*;

#[test]
fn small_commits_leave_a_record_per_block_and_answer_as_a_scan_does() {
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
    // About 270 commits wrote the current epoch's 400 entries: one
    // record per complete block, one per commit in the last block, and
    // only the current epoch has any.
    let prefix = key(RECENT, &[&be(epoch(n - 1))]);
    assert!(records.iter().all(|(k, _)| k.starts_with(&prefix)));
    let last_block = (n - 1) - (n - 1) % MERGE_SPAN;
    let block_of = |k: &[u8]| read_be(&k[prefix.len()..], "key").unwrap() / MERGE_SPAN;
    let (done, open): (Vec<_>, Vec<_>) = records
        .iter()
        .partition(|(k, _)| block_of(k) * MERGE_SPAN < last_block);
    let complete = (last_block - (epoch(n - 1) << EPOCH_BITS)) / MERGE_SPAN;
    assert_eq!(done.len() as u64, complete, "one record per complete block");
    let mut blocks: Vec<u64> = done.iter().map(|(k, _)| block_of(k)).collect();
    blocks.dedup();
    assert_eq!(blocks.len(), done.len(), "each in a block of its own");
    assert!(
        (1..MERGE_SPAN as usize).contains(&open.len()),
        "{} records in the last block",
        open.len()
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
fn a_commit_reaching_the_end_of_its_block_merges_the_blocks_records() {
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
    // Small commits inside a block: a record each (a new key, nothing
    // rewritten).
    commit(1);
    commit(1);
    commit(1);
    assert_eq!(recent(&store).len(), 3, "a record per commit in the block");
    let first_three: usize = recent(&store).iter().sum();
    // The commit that reaches the block's end (and goes past it) merges
    // the block's records and its own into one, under the first key.
    commit(MERGE_SPAN);
    let one = recent(&store);
    assert_eq!(one.len(), 1, "the block's records merged: {one:?}");
    assert!(one[0] > first_three, "{one:?}");
    let keys: Vec<Vec<u8>> = store
        .raw_tree()
        .scan_prefix([RECENT])
        .keys()
        .map(|k| k.unwrap().to_vec())
        .collect();
    assert_eq!(keys, vec![key(RECENT, &[&be(0), &be(0)])]);
    // The next commit starts in the next block: a record of its own,
    // although the merged one holds some of that block's entries.
    commit(1);
    assert_eq!(recent(&store).len(), 2, "a new block starts a record");
    let n = MERGE_SPAN + 4;
    assert_answers_like_a_scan(&store, n);
    let v = verify(store.raw_tree(), store.audit_log(), n).unwrap();
    assert_eq!(v.mismatch, None);
}
