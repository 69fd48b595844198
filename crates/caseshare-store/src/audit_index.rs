//! The audit index in sled: which entries are about a child, which concern
//! an agency, and when each run of entries was recorded, so that audit
//! queries and subject access reports read only the entries they return.
//!
//! It is derived data, written in the same atomic `apply_batch` as the
//! entries it covers ([`index_entries`]), and rebuilt from the entries at
//! open when it is missing or behind (a store written before it), or cut
//! back when it covers entries sled no longer holds ([`open`]); `caseshare
//! check` compares it with the entries ([`verify()`]).
//!
//! Postings (which entry carries which term of [`AuditTerm::of`]) are
//! grouped by *epoch*, `index >> EPOCH_BITS` (16,384 entries). Key layout
//! (numbers big-endian):
//! - `L` ‖ epoch ‖ first index → the postings of consecutive commits in
//!   the epoch not yet complete, every term in one *table* (per term, in
//!   order: `u16` length ‖ term ‖ `u32` count ‖ LEB128 first index and
//!   deltas). A commit writes one record however many children it names;
//!   the commit that reaches the end of a block of [`MERGE_SPAN`] entries
//!   merges the block's records into one, so that small commits do not
//!   leave thousands of records for the commit completing the epoch to
//!   read and remove, and none rewrites a growing record.
//!   Records never overlap: each holds indexes below the next one's key.
//! - `Q` ‖ epoch ‖ `u16` bucket → the postings of a complete epoch, one
//!   table per bucket of terms ([`bucket`], [`BUCKETS`] buckets). They
//!   never change, so a commit that completes an epoch writes them to the
//!   audit log and `Q` holds a pointer ([`crate::audit_log`]); an index
//!   built at open keeps them in sled; both are read.
//!   The commit that completes an epoch turns its `L` records into these,
//!   in its own batch: [`BUCKETS`] records per 16,384 entries.
//! - `W` ‖ block → the least and greatest `recorded_at` (µs, i64) of the
//!   entries `block * TIME_BLOCK ..` (exact whether or not time only goes
//!   forward: a time window reads only the blocks it can touch).
//! - `M` ‖ `aidx` → how many entries (from index 0) the index covers.
//!
//! A term is `N` (child) or `Y` (agency) ‖ `u16` length ‖ the pseudonym or
//! the agency id. Reading a term costs, per epoch, a scan of its `L`
//! records (only the current epoch has any) and one bucket record.
//!
//! Why so few records: written as one record per term per commit, a
//! commit naming a few hundred children cost a few hundred sled inserts,
//! each copying a sled node, and the commit path was three to ten times
//! slower (see `docs/BENCHMARKS.md`).

use std::collections::BTreeMap;

use caseshare_core::time::Micros;

use crate::StoreError;
use crate::audit_query::AuditTerm;
use crate::sled_backend::{be, key, read_be};

pub(crate) mod open;
pub(crate) mod verify;
mod view;

pub(crate) use view::EntryView;

pub(crate) use open::{Plan, apply, plan};
pub(crate) use verify::verify;

/// The first byte of a child term.
pub(crate) const CHILD: u8 = b'N';
/// The first byte of an agency term.
pub(crate) const AGENCY: u8 = b'Y';
/// Prefix of the postings of complete epochs, by bucket.
pub(crate) const BUCKETED: u8 = b'Q';
/// Prefix of the postings of the current epoch, one record per commit.
pub(crate) const RECENT: u8 = b'L';
/// Prefix of the time blocks.
pub(crate) const TIME: u8 = b'W';
/// Name of the counter under `M`.
pub(crate) const COUNTER: &[u8] = b"aidx";
/// Entries per time block.
pub const TIME_BLOCK: u64 = 1_024;
/// Buckets of terms per complete epoch.
pub const BUCKETS: u64 = 256;
/// Postings are grouped by epochs of `2^EPOCH_BITS` entries.
#[cfg(not(test))]
pub const EPOCH_BITS: u32 = 14;
/// Small epochs in tests, so that a few thousand entries cross many.
#[cfg(test)]
pub const EPOCH_BITS: u32 = 9;

/// A term's bytes: `prefix ‖ u16 length ‖ value`.
pub(crate) fn term_prefix(term: &AuditTerm) -> Result<Vec<u8>, StoreError> {
    match term {
        AuditTerm::Child(p) => term_key(CHILD, p),
        AuditTerm::Agency(a) => term_key(AGENCY, a.as_bytes()),
    }
}

/// A term's key: its first byte ([`CHILD`] or [`AGENCY`]) ‖ `u16` length ‖
/// value.
pub(crate) fn term_key(prefix: u8, value: &[u8]) -> Result<Vec<u8>, StoreError> {
    let len = u16::try_from(value.len())
        .map_err(|_| StoreError::TooLarge(format!("audit index term of {} bytes", value.len())))?;
    let mut k = Vec::with_capacity(3 + value.len());
    k.push(prefix);
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(value);
    Ok(k)
}

/// Whether a commit of the entries `first..end` completes an epoch (its
/// buckets are then written: [`index_entries`]'s `buckets`).
pub(crate) fn completes_epoch(first: u64, end: u64) -> bool {
    end > first && epoch(end) > epoch(first)
}

/// The epoch of an index.
pub(crate) fn epoch(index: u64) -> u64 {
    index >> EPOCH_BITS
}

/// The bucket of a term: the high half of its 64-bit FNV-1a (a fixed
/// function: it is on disk; the low bits of FNV-1a depend only on the low
/// bits of the bytes).
pub(crate) fn bucket(term: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in term {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h >> 32) % BUCKETS
}

/// The key of a bucket record.
pub(crate) fn bucket_key(epoch: u64, bucket: u64) -> Vec<u8> {
    key(BUCKETED, &[&be(epoch), &be(bucket)])
}

/// The epoch and bucket (or first index) of a `Q` (or `L`) key.
pub(crate) fn split_key(k: &[u8]) -> Result<(u64, u64), StoreError> {
    match (k.get(1..9), k.get(9..)) {
        (Some(a), Some(b)) => Ok((
            read_be(a, "audit index key")?,
            read_be(b, "audit index key")?,
        )),
        _ => Err(StoreError::Corrupt {
            key: "audit index key".into(),
            detail: format!("{} bytes", k.len()),
        }),
    }
}

/// A term and its indexes, as read back.
pub(crate) type TermPostings = (Vec<u8>, Vec<u64>);

/// Postings per term, terms in order.
pub(crate) type Table<'a> = BTreeMap<&'a [u8], Vec<u64>>;

/// A table: per term, `u16` length ‖ term ‖ `u32` count ‖ LEB128 first
/// index and deltas.
pub(crate) fn encode_table(table: &Table<'_>) -> Vec<u8> {
    let runs: Vec<Run<'_>> = table.iter().map(|(t, ix)| (*t, ix.as_slice())).collect();
    encode_runs(&runs)
}

/// A term and a run of its indexes, ascending, borrowed.
pub(crate) type Run<'a> = (&'a [u8], &'a [u64]);

/// [`encode_table`] of runs sorted by term, where a term may have several
/// adjacent runs, in index order: they are joined into one posting list,
/// as a `BTreeMap` extended run by run would hold it, without building
/// one (the commit path's merges).
pub(crate) fn encode_runs(runs: &[Run<'_>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(runs.iter().map(|(t, ix)| t.len() + 2 * ix.len() + 6).sum());
    for group in runs.chunk_by(|a, b| a.0 == b.0) {
        let count: usize = group.iter().map(|(_, ix)| ix.len()).sum();
        let Some((term, _)) = group.first().filter(|_| count > 0) else {
            continue;
        };
        out.extend_from_slice(&(term.len() as u16).to_be_bytes());
        out.extend_from_slice(term);
        out.extend_from_slice(&(count as u32).to_be_bytes());
        let mut last: Option<u64> = None;
        for &i in group.iter().flat_map(|(_, ix)| ix.iter()) {
            leb128(&mut out, last.map_or(i, |l| i - l));
            last = Some(i);
        }
    }
    out
}

fn leb128(out: &mut Vec<u8>, mut d: u64) {
    loop {
        let byte = (d & 0x7f) as u8;
        d >>= 7;
        if d == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// The inverse of [`encode_table`].
pub(crate) fn decode_table(v: &[u8]) -> Result<Vec<TermPostings>, StoreError> {
    let corrupt = || StoreError::Corrupt {
        key: "audit index record of a commit".into(),
        detail: "truncated or malformed".into(),
    };
    let mut out = Vec::new();
    let mut rest = v;
    while !rest.is_empty() {
        let (len, tail) = rest.split_at_checked(2).ok_or_else(corrupt)?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        let (term, tail) = tail.split_at_checked(len).ok_or_else(corrupt)?;
        let (count, mut tail) = tail.split_at_checked(4).ok_or_else(corrupt)?;
        let count = u32::from_be_bytes([count[0], count[1], count[2], count[3]]) as usize;
        let mut indexes = Vec::with_capacity(count.min(MAX_TABLE_POSTINGS));
        let mut last = 0u64;
        for i in 0..count {
            let mut d = 0u64;
            let mut shift = 0u32;
            loop {
                let (&byte, t) = tail.split_first().ok_or_else(corrupt)?;
                tail = t;
                if shift > 63 {
                    return Err(corrupt());
                }
                d |= u64::from(byte & 0x7f) << shift;
                if byte & 0x80 == 0 {
                    break;
                }
                shift += 7;
            }
            last = if i == 0 {
                d
            } else if d == 0 {
                return Err(corrupt());
            } else {
                last.checked_add(d).ok_or_else(corrupt)?
            };
            indexes.push(last);
        }
        out.push((term.to_vec(), indexes));
        rest = tail;
    }
    Ok(out)
}

/// Entries per merge block of the current epoch's `L` records. A commit
/// inside a block writes a small record of its own (rewriting a growing
/// record at every commit cost a one-at-a-time publish about a tenth of
/// its CPU: reading, decoding, re-encoding, digesting, logging and
/// storing up to 4 KiB; see `docs/BENCHMARKS.md`); the commit that
/// reaches the block's end merges the block's records into one. An epoch
/// so has about one record per block (plus the current block's), not one
/// per commit: a broker at a few thousand events a second would otherwise
/// leave thousands, all read and removed by the one commit that completes
/// the epoch (20 ms of that commit, measured at 2,000 events a second). A
/// power of two, dividing an epoch.
pub const MERGE_SPAN: u64 = 64;
const _: () =
    assert!(MERGE_SPAN.is_power_of_two() && (1u64 << EPOCH_BITS).is_multiple_of(MERGE_SPAN));

/// A bound on the capacity reserved from a stored count.
const MAX_TABLE_POSTINGS: usize = 1 << 16;

fn time_value(min: Micros, max: Micros) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&min.0.to_be_bytes());
    v.extend_from_slice(&max.0.to_be_bytes());
    v
}

fn read_time_value(v: &[u8]) -> Result<(Micros, Micros), StoreError> {
    let (min, max) = v.split_at_checked(8).ok_or_else(|| StoreError::Corrupt {
        key: "audit time block".into(),
        detail: format!("expected 16 bytes, found {}", v.len()),
    })?;
    let min = read_be(min, "audit time block")?;
    let max = read_be(max, "audit time block")?;
    Ok((Micros(min as i64), Micros(max as i64)))
}

/// One posting of a commit: a term (prefix, value), the entry's index,
/// and a hash of the term, which groups equal terms with integer
/// comparisons.
#[derive(Clone, Copy)]
struct Pair<'a> {
    hash: u64,
    prefix: u8,
    value: &'a [u8],
    index: u64,
}

impl<'a> Pair<'a> {
    fn new(prefix: u8, value: &'a [u8], index: u64) -> Self {
        use std::hash::BuildHasher;
        // A fixed seed: the hash only groups, it never orders what is
        // written, and a collision costs a sort of the colliding pairs.
        let hash =
            foldhash::fast::FixedState::with_seed(0x6175_6469_7478).hash_one((prefix, value));
        Pair {
            hash,
            prefix,
            value,
            index,
        }
    }

    /// The order of terms' keys, then of indexes.
    fn key_order(&self, other: &Self) -> std::cmp::Ordering {
        key_order(self.prefix, self.value)
            .cmp(&key_order(other.prefix, other.value))
            .then(self.index.cmp(&other.index))
    }

    fn same_term(&self, other: &Self) -> bool {
        self.prefix == other.prefix && self.value == other.value
    }
}

/// How a term's key (`prefix ‖ u16 length ‖ value`) sorts: by prefix,
/// length, value.
fn key_order(prefix: u8, value: &[u8]) -> (u8, usize, &[u8]) {
    (prefix, value.len(), value)
}

/// A term (prefix, value) and the range of its indexes in the list
/// [`group_postings`] returns.
type TermRun<'a> = (u8, &'a [u8], std::ops::Range<usize>);

/// Groups `pairs` (pushed in ascending index order) by term: each term
/// once, in the order of its key, with the range of its indexes
/// (ascending, each once) in the returned list.
///
/// Sorting every pair by its term's bytes cost a `memcmp` per comparison
/// (most pairs of a commit share a handful of agency terms); here the pairs
/// are sorted by the term's hash, with integer comparisons and stably, so
/// each hash's indexes stay ascending; only the distinct terms are sorted
/// by their bytes, and only a run of pairs whose terms share a hash is
/// sorted in full.
fn group_postings<'a>(pairs: &mut [Pair<'a>]) -> (Vec<TermRun<'a>>, Vec<u64>) {
    pairs.sort_by_key(|p| p.hash);
    let mut terms: Vec<TermRun<'a>> = Vec::new();
    let mut all: Vec<u64> = Vec::with_capacity(pairs.len());
    for run in pairs.chunk_by_mut(|x, y| x.hash == y.hash) {
        if run.windows(2).any(|w| !w[0].same_term(&w[1])) {
            run.sort_unstable_by(Pair::key_order);
        }
        for group in run.chunk_by(Pair::same_term) {
            let Some(&Pair { prefix, value, .. }) = group.first() else {
                continue;
            };
            let start = all.len();
            for p in group {
                // `terms` names a term once per entry; were it to name one
                // twice, the entry is still posted once (a delta of 0 does
                // not decode).
                if all.len() == start || all.last() != Some(&p.index) {
                    all.push(p.index);
                }
            }
            terms.push((prefix, value, start..all.len()));
        }
    }
    terms.sort_unstable_by(|x, y| key_order(x.0, x.1).cmp(&key_order(y.0, y.1)));
    (terms, all)
}

/// What [`index_entries`] wrote: sled records and bytes, and the bucket
/// records of epochs it completed, which never change again, for the
/// caller to store (in the audit log, sled pointing at them; or in sled).
#[derive(Debug, Default)]
pub(crate) struct Indexed {
    pub records: usize,
    pub bytes: usize,
    pub buckets: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Adds to `b` the index records of `entries` (decoded, with consecutive
/// indexes from `first`, continuing the covered log) and the new counter,
/// except the buckets of completed epochs, returned.
pub(crate) fn index_entries(
    tree: &sled::Tree,
    first: u64,
    entries: &[EntryView<'_>],
    b: &mut crate::wal::Writes,
) -> Result<Indexed, StoreError> {
    let mut out = Indexed::default();
    if entries.is_empty() {
        return Ok(out);
    }
    // Every (term, index) pair of the commit, grouped by term with each
    // term's indexes ascending, then the terms sorted as their keys sort
    // (`prefix ‖ u16 length ‖ value`, so by prefix, length, value).
    let mut pairs: Vec<Pair<'_>> = Vec::with_capacity(entries.len() * 3);
    let mut blocks: BTreeMap<u64, (Micros, Micros)> = BTreeMap::new();
    for (index, e) in (first..).zip(entries) {
        e.terms(|prefix, value| pairs.push(Pair::new(prefix, value, index)));
        let t = e.recorded_at;
        let block = blocks.entry(index / TIME_BLOCK).or_insert((t, t));
        block.0 = block.0.min(t);
        block.1 = block.1.max(t);
    }
    let (terms, all) = group_postings(&mut pairs);
    // The terms' keys, one buffer; per term, its key's and its indexes'
    // ranges.
    let mut keys: Vec<u8> = Vec::new();
    let mut spans: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)> =
        Vec::with_capacity(terms.len());
    for (prefix, value, ix) in terms {
        let k = keys.len();
        keys.extend_from_slice(&term_key(prefix, value)?);
        spans.push((k..keys.len(), ix));
    }
    let postings: Vec<Run<'_>> = spans
        .into_iter()
        .map(|(k, ix)| (&keys[k], &all[ix]))
        .collect();
    // The first block may already hold earlier entries.
    if let Some((&block, span)) = blocks.iter_mut().next()
        && block * TIME_BLOCK < first
        && let Some(v) = tree.get(key(TIME, &[&be(block)]))?
    {
        let (min, max) = read_time_value(&v)?;
        span.0 = span.0.min(min);
        span.1 = span.1.max(max);
    }
    let mut removed = 0;
    let mut writes: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let end = first + entries.len() as u64;
    for ep in epoch(first)..=epoch(end - 1) {
        let (lo, hi) = (
            (ep << EPOCH_BITS).max(first),
            ((ep + 1) << EPOCH_BITS).min(end),
        );
        // Each term's indexes in [lo, hi): a slice of its ascending run.
        let part: Vec<Run<'_>> = postings
            .iter()
            .map(|&(term, ix)| {
                let from = ix.partition_point(|&i| i < lo);
                let to = ix.partition_point(|&i| i < hi);
                (term, &ix[from..to])
            })
            .filter(|(_, ix)| !ix.is_empty())
            .collect();
        if hi < (ep + 1) << EPOCH_BITS {
            // The epoch goes on: this commit's part of it gets a record
            // of its own, or merges its block's records into one.
            if !part.is_empty() {
                let recent = recent_record(tree, ep, lo, hi, &part)?;
                for k in recent.replaced {
                    b.remove(k);
                    removed += 1;
                }
                writes.push(recent.record);
            }
            continue;
        }
        // The epoch is complete: its records of earlier commits and this
        // commit's part become one table per bucket.
        let mut earlier = Vec::new();
        for item in tree.scan_prefix(key(RECENT, &[&be(ep)])) {
            let (k, v) = item?;
            earlier.extend(decode_table(&v)?);
            b.remove(k);
            removed += 1;
        }
        // Runs by bucket and term; the sort is stable, so a term's runs
        // stay in index order (earlier records, then this commit's part).
        let mut runs: Vec<(u64, Run<'_>)> = earlier
            .iter()
            .map(|(t, ix)| (t.as_slice(), ix.as_slice()))
            .chain(part.iter().copied())
            .map(|(t, ix)| (bucket(t), (t, ix)))
            .collect();
        runs.sort_by(|x, y| (x.0, x.1.0).cmp(&(y.0, y.1.0)));
        for group in runs.chunk_by(|x, y| x.0 == y.0) {
            let Some(&(bucket, _)) = group.first() else {
                continue;
            };
            let these: Vec<Run<'_>> = group.iter().map(|(_, r)| *r).collect();
            out.buckets
                .push((bucket_key(ep, bucket), encode_runs(&these)));
        }
    }
    for (block, (min, max)) in blocks {
        writes.push((key(TIME, &[&be(block)]), time_value(min, max)));
    }
    writes.push((key(b'M', &[COUNTER]), be(end).to_vec()));
    out.records = removed;
    for (k, v) in writes {
        out.records += 1;
        out.bytes += k.len() + v.len();
        b.insert(k, v);
    }
    Ok(out)
}

/// What [`recent_record`] writes: a record, and the keys of those it
/// replaces (removed).
struct Recent {
    record: (Vec<u8>, Vec<u8>),
    replaced: Vec<sled::IVec>,
}

/// The `L` record taking a commit's postings `part` (indexes `lo..hi`)
/// in epoch `ep`, and the keys of the records it replaces. A commit that
/// stays inside its merge block ([`MERGE_SPAN`]) writes a record of its
/// own, keyed by `lo`: a new key, a few bytes. The commit that reaches the
/// end of the block merges the block's earlier records (keyed from the
/// block's start, all below `lo`) and its own part into one record under
/// the first of their keys, and the others are removed.
fn recent_record(
    tree: &sled::Tree,
    ep: u64,
    lo: u64,
    hi: u64,
    part: &[Run<'_>],
) -> Result<Recent, StoreError> {
    let start = lo - lo % MERGE_SPAN;
    let own = key(RECENT, &[&be(ep), &be(lo)]);
    if hi < start + MERGE_SPAN {
        return Ok(Recent {
            record: (own, encode_runs(part)),
            replaced: Vec::new(),
        });
    }
    let mut first = None;
    let mut replaced = Vec::new();
    let mut earlier: Vec<TermPostings> = Vec::new();
    for item in tree.range(key(RECENT, &[&be(ep), &be(start)])..own.clone()) {
        let (k, v) = item?;
        earlier.extend(decode_table(&v)?);
        if first.is_none() {
            first = Some(k.to_vec());
        } else {
            replaced.push(k);
        }
    }
    let Some(first) = first else {
        return Ok(Recent {
            record: (own, encode_runs(part)),
            replaced: Vec::new(),
        });
    };
    // Earlier records' runs, then this commit's: a stable sort by term
    // keeps each term's runs in index order.
    let mut runs: Vec<Run<'_>> = earlier
        .iter()
        .map(|(t, ix)| (t.as_slice(), ix.as_slice()))
        .chain(part.iter().copied())
        .collect();
    runs.sort_by(|x, y| x.0.cmp(y.0));
    Ok(Recent {
        record: (first, encode_runs(&runs)),
        replaced,
    })
}

/// Indexes carrying `term` in `[start, end)`, ascending, at most `max`.
pub(crate) fn postings(
    tree: &sled::Tree,
    log: &crate::audit_log::AuditLog,
    term: &AuditTerm,
    start: u64,
    end: u64,
    max: usize,
) -> Result<Vec<u64>, StoreError> {
    let mut out = Vec::new();
    if start >= end || max == 0 {
        return Ok(out);
    }
    let term = term_prefix(term)?;
    let bucket = bucket(&term);
    for ep in epoch(start)..=epoch(end - 1) {
        // This epoch's part of [start, end).
        let lo = start.max(ep << EPOCH_BITS);
        let hi = end.min((ep + 1) << EPOCH_BITS);
        let mut found = Vec::new();
        let mut take = |table: Vec<TermPostings>| {
            for (t, indexes) in table {
                if t == term {
                    found.extend(indexes.into_iter().filter(|i| (lo..hi).contains(i)));
                }
            }
        };
        // The records of single commits first, then the bucket: the commit
        // that completes an epoch replaces the first by the second in one
        // batch, and reads in this order see every posting whenever that
        // batch lands between them.
        for item in tree.scan_prefix(key(RECENT, &[&be(ep)])) {
            take(decode_table(&item?.1)?);
        }
        if let Some(v) = tree.get(bucket_key(ep, bucket))? {
            take(decode_table(&log.resolve_one(v)?)?);
        }
        found.sort_unstable();
        found.dedup();
        for index in found {
            out.push(index);
            if out.len() >= max {
                return Ok(out);
            }
        }
    }
    Ok(out)
}

/// The stored audit entries at `indexes` (ascending), reading each chunk
/// once however many of them it holds.
pub(crate) fn entries_at(
    tree: &sled::Tree,
    log: &crate::audit_log::AuditLog,
    indexes: &[u64],
) -> Result<Vec<Vec<u8>>, StoreError> {
    let mut out = Vec::with_capacity(indexes.len());
    // The chunk in hand: its first index, its bytes, each entry's span.
    let mut chunk: Option<Chunk> = None;
    for &index in indexes {
        let held = chunk
            .as_ref()
            .is_some_and(|(first, _, spans)| index >= *first && index - first < spans.len() as u64);
        if !held {
            let found = tree
                .range(key(b'A', &[&be(0)])..=key(b'A', &[&be(index)]))
                .next_back()
                .transpose()?;
            let Some((k, v)) = found else {
                return Err(not_stored(index));
            };
            let first = read_be(&k[1..], "audit chunk key")?;
            let v = log.resolve(v)?;
            let spans = chunk_spans(&v)?;
            chunk = Some((first, v, spans));
        }
        let Some((first, bytes, spans)) = &chunk else {
            return Err(not_stored(index));
        };
        let Some(&(at, len)) = usize::try_from(index - first)
            .ok()
            .and_then(|i| spans.get(i))
        else {
            return Err(not_stored(index));
        };
        out.push(bytes[at..at + len].to_vec());
    }
    Ok(out)
}

/// A chunk record being read: its first index, its bytes, and where each
/// entry lies in them (offset, length).
type Chunk = (u64, sled::IVec, Vec<(usize, usize)>);

fn not_stored(index: u64) -> StoreError {
    StoreError::Corrupt {
        key: format!("audit entry {index}"),
        detail: "the audit index names it but it is not stored".into(),
    }
}

/// Where each entry of a chunk record lies (offset, length).
fn chunk_spans(v: &[u8]) -> Result<Vec<(usize, usize)>, StoreError> {
    crate::audit_log::chunk_entries(v).collect()
}

/// Ranges of `[start, end)` whose time blocks may hold entries recorded in
/// `[from, to)`.
pub(crate) fn time_ranges(
    tree: &sled::Tree,
    from: Option<Micros>,
    to: Option<Micros>,
    start: u64,
    end: u64,
) -> Result<Vec<(u64, u64)>, StoreError> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    if start >= end {
        return Ok(out);
    }
    let (first_block, last_block) = (start / TIME_BLOCK, (end - 1) / TIME_BLOCK);
    let mut add = |lo: u64, hi: u64| {
        let (lo, hi) = (lo.max(start), hi.min(end));
        match out.last_mut() {
            Some(last) if last.1 == lo => last.1 = hi,
            _ => out.push((lo, hi)),
        }
    };
    // A block without a record (never expected below the counter) may
    // hold anything.
    let mut next = first_block;
    for item in tree.range(key(TIME, &[&be(first_block)])..=key(TIME, &[&be(last_block)])) {
        let (k, v) = item?;
        let block = read_be(&k[1..], "audit time block key")?;
        if block > next {
            add(next * TIME_BLOCK, block * TIME_BLOCK);
        }
        let (min, max) = read_time_value(&v)?;
        if from.is_none_or(|f| max >= f) && to.is_none_or(|t| min < t) {
            add(block * TIME_BLOCK, (block + 1).saturating_mul(TIME_BLOCK));
        }
        next = block + 1;
    }
    if next <= last_block {
        add(next * TIME_BLOCK, end);
    }
    Ok(out)
}

/// How many entries the index covers (`None`: no index yet).
pub(crate) fn covered(tree: &sled::Tree) -> Result<Option<u64>, StoreError> {
    match tree.get(key(b'M', &[COUNTER]))? {
        Some(v) => Ok(Some(read_be(&v, "audit index counter")?)),
        None => Ok(None),
    }
}

/// Reads what the index needs of a batch's entries (indexes from
/// `first`), for the commit, borrowing the leaves: bytes that are no
/// protobuf message are refused. (The writer encodes entries from typed
/// values; every field and the canonical form are checked where entries
/// are read back, and checking them here would cost the writer's path a
/// full decode and a second encode of every entry.)
pub(crate) fn read_all(first: u64, leaves: &[Vec<u8>]) -> Result<Vec<EntryView<'_>>, StoreError> {
    (first..)
        .zip(leaves)
        .map(|(index, leaf)| {
            EntryView::read(leaf).map_err(|detail| StoreError::Corrupt {
                key: format!("audit entry {index}"),
                detail,
            })
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests;
