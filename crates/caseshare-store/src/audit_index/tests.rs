//! Tests of the audit index: written with the commit, answering exactly as
//! a scan does, built at open for an older store, completed when behind,
//! cut back when ahead, refusing a damaged entry, and checked by `check`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::audit_query::{
    AuditFilter, decode_leaf, entries_with_by_scan, query, query_by_scan, shares_of,
    shares_of_by_scan,
};
use crate::{Batch, DeliveryRecord, SledStore, Snapshot, Storage, StoredEvent};
use caseshare_proto::v1 as pb;

/// Opens the store in `dir`, retrying while sled's lock is still held by
/// the threads of a store just dropped in this process.
pub(crate) fn open_store(dir: &Path) -> Result<SledStore, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match SledStore::open(dir, 8 << 20) {
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

fn pseudonym(child: u64) -> Vec<u8> {
    let mut p = vec![0xc5; 32];
    p[..8].copy_from_slice(&child.to_be_bytes());
    p
}

fn agency(a: u64) -> String {
    format!("agency-{a}")
}

/// A mix like the broker's: decisions, deliveries and acks about children
/// between agencies, registrations naming an agency as subject, auditor
/// calls, refusals; times mostly forward, sometimes back, sometimes absent;
/// an actor in which "/agency/" occurs twice, overlapping.
/// A child of `0..children`; past 40 children, half of them among the
/// first 40 (which the queries of [`filters`] name).
fn child(rng: &mut StdRng, children: u64) -> u64 {
    if children > 40 && rng.gen_bool(0.5) {
        rng.gen_range(0..40)
    } else {
        rng.gen_range(0..children)
    }
}

fn entry(rng: &mut StdRng, index: u64, children: u64, agencies: u64) -> pb::AuditEntry {
    let (from, to) = (rng.gen_range(0..agencies), rng.gen_range(0..agencies));
    let micros = 1_700_000_000_000_000 + index as i64 * 1_000 - rng.gen_range(0..3) * 700_000;
    let mut e = pb::AuditEntry {
        index,
        recorded_at: Some(Micros(micros).to_timestamp()),
        ..pb::AuditEntry::default()
    };
    match rng.gen_range(0..10) {
        0..=5 => {
            e.kind = [2, 3, 4, 1][rng.gen_range(0..4)];
            e.child_pseudonym = pseudonym(child(rng, children));
            e.source_agency = agency(from);
            e.recipient_agency = agency(to);
            e.actor = format!("spiffe://caseshare.local/agency/{}", agency(from));
            e.event_id = format!("ev-{index}");
        }
        6 => {
            e.kind = pb::EntryKind::AgencyRegistered as i32;
            e.actor = "spiffe://caseshare.local/admin/root".into();
            e.subject = agency(to);
        }
        7 => {
            e.kind = pb::EntryKind::AuditAccessed as i32;
            e.actor = "spiffe://caseshare.local/auditor/dpo".into();
            e.subject = format!("query child=- agency={} kinds=[]", agency(to));
            e.child_pseudonym = pseudonym(child(rng, children));
        }
        8 => {
            e.kind = pb::EntryKind::AuthDenied as i32;
            e.actor = format!("spiffe://caseshare.local/agency/agency/{}", agency(from));
            e.recorded_at = None;
        }
        _ => {
            e.kind = pb::EntryKind::ConsentRecorded as i32;
            e.actor = "system".into();
            e.child_pseudonym = pseudonym(child(rng, children));
            e.source_agency = agency(from);
        }
    }
    e
}

/// Commits `n` entries in batches of 1..=`max_batch`; returns them.
fn fill(store: &SledStore, seed: u64, n: u64, max_batch: u64) -> Vec<pb::AuditEntry> {
    fill_with(store, seed, n, max_batch, 40)
}

/// As [`fill`], naming up to `children` children.
fn fill_with(
    store: &SledStore,
    seed: u64,
    n: u64,
    max_batch: u64,
    children: u64,
) -> Vec<pb::AuditEntry> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut all = Vec::new();
    let mut first = store.load().unwrap().audit_size;
    let end = first + n;
    while first < end {
        let len = rng.gen_range(1..=max_batch).min(end - first);
        let entries: Vec<pb::AuditEntry> = (first..first + len)
            .map(|i| entry(&mut rng, i, children, 12))
            .collect();
        store
            .commit(&Batch {
                audit: entries.iter().map(caseshare_audit::entry::encode).collect(),
                audit_first_index: first,
                ..Batch::default()
            })
            .unwrap();
        all.extend(entries);
        first += len;
    }
    all
}

/// Filters of every shape over the generated mix.
fn filters(size: u64) -> Vec<AuditFilter> {
    let base = Micros(1_700_000_000_000_000);
    let mut out = vec![AuditFilter::default()];
    for c in [0, 7, 39, 1_000] {
        out.push(AuditFilter {
            child_pseudonym: pseudonym(c),
            ..AuditFilter::default()
        });
    }
    for a in [
        "agency-0",
        "agency-11",
        "agency/agency-3",
        "agency",
        "nobody",
    ] {
        out.push(AuditFilter {
            agency_id: a.into(),
            ..AuditFilter::default()
        });
    }
    out.push(AuditFilter {
        agency_id: "query child=- agency=agency-2 kinds=[]".into(),
        ..AuditFilter::default()
    });
    out.push(AuditFilter {
        child_pseudonym: pseudonym(3),
        agency_id: agency(4),
        ..AuditFilter::default()
    });
    out.push(AuditFilter {
        kinds: vec![pb::EntryKind::ShareDecided as i32, 6],
        ..AuditFilter::default()
    });
    let mid = Micros(base.0 + size as i64 * 500);
    out.push(AuditFilter {
        from: Some(mid),
        to: Some(Micros(mid.0 + 300_000)),
        ..AuditFilter::default()
    });
    out.push(AuditFilter {
        agency_id: agency(5),
        from: Some(mid),
        ..AuditFilter::default()
    });
    out.push(AuditFilter {
        child_pseudonym: pseudonym(8),
        to: Some(mid),
        kinds: vec![2],
        ..AuditFilter::default()
    });
    // No recorded time counts as 0.
    out.push(AuditFilter {
        to: Some(Micros(1)),
        ..AuditFilter::default()
    });
    out
}

/// Every query shape answers as the scan does, at several pages and starts.
fn assert_answers_like_a_scan(store: &SledStore, size: u64) {
    for f in filters(size) {
        for (start, page) in [(0, 1_000_000), (0, 1), (0, 7), (size / 3, 50), (size, 10)] {
            let indexed = query(store, &f, start, size, page).unwrap();
            let scanned = query_by_scan(store, &f, start, size, page).unwrap();
            assert_eq!(indexed, scanned, "{f:?} from {start}, page {page}");
        }
    }
    for c in [0, 5, 39] {
        let p = pseudonym(c);
        let report = shares_of(store, &p, size).unwrap();
        assert!(!report.is_empty() || size < 100);
        assert_eq!(report, shares_of_by_scan(store, &p, size).unwrap());
    }
    for term in [AuditTerm::Child(pseudonym(2)), AuditTerm::Agency(agency(3))] {
        for (start, max) in [(0, usize::MAX), (size / 2, 5)] {
            assert_eq!(
                store.audit_entries_with(&term, start, size, max).unwrap(),
                entries_with_by_scan(store, &term, start, size, max).unwrap(),
                "{term:?}"
            );
        }
    }
}

#[test]
fn the_index_is_written_with_the_entries_and_answers_as_a_scan_does() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).unwrap();
    let entries = fill(&store, 1, 5_000, 300);
    assert_eq!(covered(store.raw_tree()).unwrap(), Some(5_000));
    // Complete epochs by bucket, the last one by commit.
    assert!(store.raw_tree().scan_prefix([BUCKETED]).next().is_some());
    assert!(store.raw_tree().scan_prefix([RECENT]).next().is_some());
    let last_epoch = key(RECENT, &[&be(epoch(4_999))]);
    assert!(
        store
            .raw_tree()
            .scan_prefix([RECENT])
            .keys()
            .all(|k| k.unwrap().starts_with(&last_epoch))
    );
    assert_eq!(store.raw_tree().scan_prefix([TIME]).count(), 5);
    assert_answers_like_a_scan(&store, 5_000);
    let v = verify(store.raw_tree(), store.audit_log(), 5_000).unwrap();
    assert_eq!(v.mismatch, None);
    assert_eq!(v.covered, Some(5_000));
    let expected: usize = entries.iter().map(|e| AuditTerm::of(e).len()).sum();
    assert_eq!(v.postings, expected as u64);
}

/// A store that counts the entries it hands out.
struct Counting(SledStore, AtomicU64);

impl Storage for Counting {
    fn commit(&self, batch: &Batch) -> Result<crate::CommitStats, StoreError> {
        self.0.commit(batch)
    }
    fn load(&self) -> Result<Snapshot, StoreError> {
        self.0.load()
    }
    fn event(&self, sequence: u64) -> Result<Option<StoredEvent>, StoreError> {
        self.0.event(sequence)
    }
    fn events_from(&self, from: u64, max: usize) -> Result<Vec<StoredEvent>, StoreError> {
        self.0.events_from(from, max)
    }
    fn sequence_of(&self, agency_id: &str, event_id: &str) -> Result<Option<u64>, StoreError> {
        self.0.sequence_of(agency_id, event_id)
    }
    fn deliveries_from(&self, sub: u64, from: u64) -> Result<Vec<DeliveryRecord>, StoreError> {
        self.0.deliveries_from(sub, from)
    }
    fn deliveries_of(&self, subs: &[u64], seq: u64) -> Result<Vec<DeliveryRecord>, StoreError> {
        self.0.deliveries_of(subs, seq)
    }
    fn audit_entries(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        let out = self.0.audit_entries(start, end)?;
        self.1.fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok(out)
    }
    fn audit_entries_with(
        &self,
        term: &AuditTerm,
        start: u64,
        end: u64,
        max: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let out = self.0.audit_entries_with(term, start, end, max)?;
        self.1.fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok(out)
    }
    fn audit_time_ranges(
        &self,
        from: Option<Micros>,
        to: Option<Micros>,
        start: u64,
        end: u64,
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        self.0.audit_time_ranges(from, to, start, end)
    }
    fn tile(&self, level: u8, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.tile(level, index)
    }
}

#[test]
fn queries_read_only_the_entries_the_index_names() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).unwrap();
    fill(&store, 2, 6_000, 500);
    let counting = Counting(store, AtomicU64::new(0));
    let store = &counting.0;
    let read = |f: &AuditFilter| {
        counting.1.store(0, Ordering::Relaxed);
        let got = query(&counting, f, 0, 6_000, 1_000_000).unwrap();
        (got.len() as u64, counting.1.load(Ordering::Relaxed))
    };
    // By child: exactly the child's entries are read.
    let (found, leaves) = read(&AuditFilter {
        child_pseudonym: pseudonym(9),
        ..AuditFilter::default()
    });
    assert!(found > 50, "{found}");
    assert_eq!(leaves, found);
    // By agency, from a time on: only the time blocks that reach it (every
    // block holds entries without a time, which count as 0, so `to` alone
    // would not narrow it; `from` does).
    let base = 1_700_000_000_000_000i64;
    let from = Some(Micros(base + 5_500 * 1_000));
    assert_eq!(
        store.audit_time_ranges(from, None, 0, 6_000).unwrap(),
        [(5_120, 6_000)]
    );
    let (found, leaves) = read(&AuditFilter {
        agency_id: agency(1),
        from,
        ..AuditFilter::default()
    });
    assert!(found > 0);
    assert!(leaves < 300, "{leaves} entries read");
    counting.1.store(0, Ordering::Relaxed);
    query_by_scan(&counting, &AuditFilter::default(), 0, 6_000, usize::MAX).unwrap();
    assert_eq!(
        counting.1.load(Ordering::Relaxed),
        6_000,
        "a scan reads them all"
    );
}

#[test]
fn an_older_store_gets_its_index_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open_store(dir.path()).unwrap();
        fill(&store, 3, 3_000, 400);
        // As a store written before the index: none of it.
        let tree = store.raw_tree();
        for prefix in [BUCKETED, RECENT, TIME] {
            for k in tree.scan_prefix([prefix]).keys() {
                tree.remove(k.unwrap()).unwrap();
            }
        }
        tree.remove(key(b'M', &[COUNTER])).unwrap();
        store.accept_sled_as_it_is().unwrap();
    }
    let store = open_store(dir.path()).unwrap();
    assert_eq!(covered(store.raw_tree()).unwrap(), Some(3_000));
    assert_eq!(
        verify(store.raw_tree(), store.audit_log(), 3_000)
            .unwrap()
            .mismatch,
        None
    );
    assert_answers_like_a_scan(&store, 3_000);
    // And it goes on from there.
    fill(&store, 4, 500, 100);
    assert_answers_like_a_scan(&store, 3_500);
}

#[test]
fn an_index_behind_the_entries_is_completed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open_store(dir.path()).unwrap();
        fill(&store, 5, 2_500, 300);
        apply(
            store.raw_tree(),
            store.audit_log(),
            Plan::Trim { size: 1_500 },
            2_500,
        )
        .unwrap();
        assert_eq!(covered(store.raw_tree()).unwrap(), Some(1_500));
        let v = verify(store.raw_tree(), store.audit_log(), 2_500).unwrap();
        assert_eq!(v.mismatch, None, "the part covered still matches");
        store.accept_sled_as_it_is().unwrap();
    }
    let store = open_store(dir.path()).unwrap();
    assert_eq!(covered(store.raw_tree()).unwrap(), Some(2_500));
    assert_eq!(
        verify(store.raw_tree(), store.audit_log(), 2_500)
            .unwrap()
            .mismatch,
        None
    );
    assert_answers_like_a_scan(&store, 2_500);
}

#[test]
fn an_index_ahead_of_the_entries_is_cut_back_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let kept;
    {
        let store = open_store(dir.path()).unwrap();
        fill(&store, 6, 2_000, 250);
        kept = store.load().unwrap().audit_size;
        // One more commit, of several chunks.
        let mut rng = StdRng::seed_from_u64(60);
        let last: Vec<pb::AuditEntry> = (kept..kept + 300)
            .map(|i| entry(&mut rng, i, 40, 12))
            .collect();
        store
            .commit(&Batch {
                audit: last.iter().map(caseshare_audit::entry::encode).collect(),
                audit_first_index: kept,
                ..Batch::default()
            })
            .unwrap();
        // Sled loses that commit's chunks (no checkpoint was signed to
        // notice); the audit log keeps them, as the one batch that never
        // committed.
        let tree = store.raw_tree();
        let chunks: Vec<sled::IVec> = tree
            .range(key(b'A', &[&be(kept)])..key(b'B', &[]))
            .keys()
            .map(Result::unwrap)
            .collect();
        assert!(chunks.len() > 1, "{} chunks", chunks.len());
        for k in &chunks {
            tree.remove(k).unwrap();
        }
        store.accept_sled_as_it_is().unwrap();
    }
    let store = open_store(dir.path()).unwrap();
    assert_eq!(store.load().unwrap().audit_size, kept);
    assert_eq!(covered(store.raw_tree()).unwrap(), Some(kept));
    assert_eq!(
        verify(store.raw_tree(), store.audit_log(), kept)
            .unwrap()
            .mismatch,
        None
    );
    assert_answers_like_a_scan(&store, kept);
    fill(&store, 7, 300, 100);
    assert_answers_like_a_scan(&store, kept + 300);
}

#[test]
fn a_damaged_entry_refuses_the_build_naming_it_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open_store(dir.path()).unwrap();
        fill(&store, 8, 600, 100);
        crate::sled_backend::tests::settle(&store);
        let tree = store.raw_tree();
        tree.remove(key(b'M', &[COUNTER])).unwrap();
        // Entry 5 becomes bytes that are no audit entry (in a frame whose
        // checksum holds).
        let (_, v) = tree.scan_prefix([b'A']).next().unwrap().unwrap();
        let pointer = crate::audit_log::Pointer::decode(&v).unwrap().unwrap();
        let log = crate::audit_log::AuditLog::open(dir.path()).unwrap();
        let mut leaves = crate::sled_backend::split_chunk(&log.resolve(v).unwrap()).unwrap();
        leaves[5] = vec![0xff; leaves[5].len()];
        let mut chunk = Vec::new();
        for l in &leaves {
            chunk.extend_from_slice(&(l.len() as u32).to_le_bytes());
            chunk.extend_from_slice(l);
        }
        crate::audit_log::tests::rewrite(dir.path(), &pointer, &chunk);
        store.accept_sled_as_it_is().unwrap();
    }
    // Let sled's threads let go before the files are read.
    drop(open_store(dir.path()).err());
    let before = crate::segments::tests::files(dir.path());
    let err = open_store(dir.path()).expect_err("a damaged entry is refused");
    let StoreError::Damaged { detail, .. } = &err else {
        panic!("not a refusal: {err}");
    };
    assert!(
        detail.contains("audit entry 5 cannot be indexed"),
        "{detail}"
    );
    assert_eq!(crate::segments::tests::files(dir.path()), before);
}

#[test]
fn a_commit_refuses_entries_it_cannot_index_or_that_leave_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).unwrap();
    fill(&store, 9, 10, 10);
    let junk = Batch {
        audit: vec![b"not an entry".to_vec()],
        audit_first_index: 10,
        ..Batch::default()
    };
    assert!(
        matches!(store.commit(&junk), Err(StoreError::Corrupt { key, .. }) if key == "audit entry 10")
    );
    let mut rng = StdRng::seed_from_u64(0);
    let gap = Batch {
        audit: vec![caseshare_audit::entry::encode(&entry(&mut rng, 12, 4, 4))],
        audit_first_index: 12,
        ..Batch::default()
    };
    assert!(
        store
            .commit(&gap)
            .unwrap_err()
            .to_string()
            .contains("continue the log")
    );
    assert_eq!(store.audit_entries(0, 100).unwrap().len(), 10);
    assert_eq!(covered(store.raw_tree()).unwrap(), Some(10));
    fill(&store, 10, 5, 5);
    assert_eq!(covered(store.raw_tree()).unwrap(), Some(15));
}

#[test]
fn check_finds_an_index_that_does_not_match_the_entries() {
    let dir = tempfile::tempdir().unwrap();
    let index_finding = |dir: &Path| {
        let scratch = tempfile::tempdir().unwrap();
        crate::check::check_store(dir, scratch.path())
            .into_iter()
            .find(|f| f.check == "audit index")
            .expect("an audit index finding")
    };
    {
        let store = open_store(dir.path()).unwrap();
        fill(&store, 11, 1_200, 200);
    }
    let f = index_finding(dir.path());
    assert!(f.ok, "{f:?}");
    assert!(f.detail.contains("match the 1200 entries"), "{f:?}");
    {
        // One posting moves to another child.
        let store = open_store(dir.path()).unwrap();
        let tree = store.raw_tree();
        let (k, mut table) = tree
            .scan_prefix([BUCKETED])
            .map(|item| {
                let (k, v) = item.unwrap();
                // A complete epoch's bucket is in the audit log; written
                // back below into sled itself, where it is read as well.
                (
                    k,
                    decode_table(&store.audit_log().resolve_one(v).unwrap()).unwrap(),
                )
            })
            .find(|(_, table)| table.iter().any(|(t, _)| t[0] == CHILD))
            .expect("a bucket holding a child");
        let (term, _) = table.iter_mut().find(|(t, _)| t[0] == CHILD).unwrap();
        // prefix, length (2): then the pseudonym.
        term[4] ^= 1;
        let table: Table<'_> = table
            .iter()
            .map(|(t, ix)| (t.as_slice(), ix.clone()))
            .collect();
        tree.insert(&k, encode_table(&table)).unwrap();
        store.accept_sled_as_it_is().unwrap();
    }
    let f = index_finding(dir.path());
    assert!(!f.ok, "{f:?}");
    assert!(
        f.detail.contains("not the same postings") || f.detail.contains("another epoch or bucket"),
        "{f:?}"
    );
    {
        // A bucket filed under another epoch.
        let store = open_store(dir.path()).unwrap();
        let tree = store.raw_tree();
        let (k, v) = tree.scan_prefix([BUCKETED]).next().unwrap().unwrap();
        tree.remove(&k).unwrap();
        let (ep, b) = split_key(&k).unwrap();
        tree.insert(bucket_key(ep + 1_000, b), v).unwrap();
        assert!(
            verify(tree, store.audit_log(), 1_200)
                .unwrap()
                .mismatch
                .is_some_and(|m| m.contains("another epoch or bucket"))
        );
        store.accept_sled_as_it_is().unwrap();
    }
    {
        // A time block that lies.
        let store = open_store(dir.path()).unwrap();
        let tree = store.raw_tree();
        tree.insert(key(TIME, &[&be(0)]), time_value(Micros(0), Micros(1)))
            .unwrap();
        store.accept_sled_as_it_is().unwrap();
        assert!(
            verify(tree, store.audit_log(), 1_200)
                .unwrap()
                .mismatch
                .is_some()
        );
    }
}

#[test]
fn the_fields_decoded_at_commit_are_those_of_an_entry() {
    let mut rng = StdRng::seed_from_u64(12);
    let leaves: Vec<Vec<u8>> = (0..500)
        .map(|i| caseshare_audit::entry::encode(&entry(&mut rng, i, 30, 9)))
        .collect();
    for (index, v) in (0..).zip(read_all(0, &leaves).unwrap()) {
        let full = decode_leaf(index, &leaves[index as usize]).unwrap();
        assert_eq!(v, EntryView::of(&full));
        let mut terms = Vec::new();
        v.terms(|p, t| terms.push((p, t.to_vec())));
        assert_eq!(terms, super::view::owned_terms(&full));
    }
}

#[test]
fn tables_round_trip_and_damage_is_named() {
    let table: Table<'_> = [
        (&b"Nxx"[..], vec![7u64]),
        (&b"Ny"[..], vec![0, 1, 2, 3]),
        (
            &b"Yagency"[..],
            vec![5, 200, 20_000, 3_000_000_000, u64::MAX],
        ),
    ]
    .into_iter()
    .collect();
    let bytes = encode_table(&table);
    let back = decode_table(&bytes).unwrap();
    let back: Table<'_> = back
        .iter()
        .map(|(t, ix)| (t.as_slice(), ix.clone()))
        .collect();
    assert_eq!(back, table);
    // Cut anywhere: an error, or (at a term's end) the terms before it.
    let whole = decode_table(&bytes).unwrap();
    let mut refused = 0;
    for cut in 1..bytes.len() {
        match decode_table(&bytes[..cut]) {
            Ok(prefix) => assert_eq!(prefix, whole[..prefix.len()], "cut at {cut}"),
            Err(_) => refused += 1,
        }
    }
    assert_eq!(refused, bytes.len() - 1 - 2, "all but the two term ends");
    // A zero delta (indexes not ascending).
    assert!(decode_table(&[0, 1, b'N', 0, 0, 0, 2, 5, 0]).is_err());
    // Buckets are a fixed function of the term.
    assert_eq!(bucket(b""), (0xcbf2_9ce4_8422_2325u64 >> 32) % BUCKETS);
    // Spread over every bucket, even for terms alike in their low bits.
    let used: std::collections::HashSet<u64> = (0..4_000u64)
        .map(|c| {
            let mut t = vec![CHILD, 0, 32];
            t.extend(std::iter::repeat_n(c.to_be_bytes(), 4).flatten());
            bucket(&t)
        })
        .collect();
    assert_eq!(used.len() as u64, BUCKETS);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any mix, any batching, any filter: the index answers as a scan does.
    #[test]
    fn indexed_queries_equal_the_scan(
        seed in any::<u64>(),
        n in 1u64..700,
        max_batch in 1u64..200,
        child in 0u64..6,
        agency_n in 0u64..5,
        use_child in any::<bool>(),
        use_agency in any::<bool>(),
        kinds in proptest::collection::vec(1i32..15, 0..3),
        window in proptest::option::of((0i64..800_000, 0i64..400_000)),
        start_frac in 0u64..4,
        page in 1usize..60,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path()).unwrap();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut first = 0;
        while first < n {
            let len = rng.gen_range(1..=max_batch).min(n - first);
            let entries: Vec<Vec<u8>> = (first..first + len)
                .map(|i| caseshare_audit::entry::encode(&entry(&mut rng, i, 6, 5)))
                .collect();
            store.commit(&Batch { audit: entries, audit_first_index: first, ..Batch::default() }).unwrap();
            first += len;
        }
        let base = 1_700_000_000_000_000i64;
        let f = AuditFilter {
            child_pseudonym: if use_child { pseudonym(child) } else { Vec::new() },
            agency_id: if use_agency { agency(agency_n) } else { String::new() },
            kinds,
            from: window.map(|(from, _)| Micros(base + from)),
            to: window.map(|(from, len)| Micros(base + from + len)),
        };
        let start = n * start_frac / 4;
        prop_assert_eq!(
            query(&store, &f, start, n, page).unwrap(),
            query_by_scan(&store, &f, start, n, page).unwrap()
        );
        prop_assert_eq!(
            shares_of(&store, &pseudonym(child), n).unwrap(),
            shares_of_by_scan(&store, &pseudonym(child), n).unwrap()
        );
    }
}

#[test]
fn complete_epochs_are_kept_in_the_audit_log_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open_store(dir.path()).unwrap();
        fill(&store, 12, 1_500, 300);
        let mut buckets = 0;
        for item in store.raw_tree().scan_prefix([BUCKETED]) {
            let (_, v) = item.unwrap();
            assert!(
                crate::audit_log::Pointer::decode(&v).unwrap().is_some(),
                "a complete epoch's bucket is a pointer into the audit log"
            );
            buckets += 1;
        }
        assert!(buckets > 0);
    }
    let store = open_store(dir.path()).unwrap();
    assert_eq!(
        verify(store.raw_tree(), store.audit_log(), 1_500)
            .unwrap()
            .mismatch,
        None
    );
    assert_answers_like_a_scan(&store, 1_500);
}

mod grouping;
mod merge;
