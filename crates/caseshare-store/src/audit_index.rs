//! The audit index in sled: which entries are about a child, which concern
//! an agency, and when each run of entries was recorded, so that audit
//! queries and subject access reports read only the entries they return.
//!
//! It is derived data, written in the same atomic `apply_batch` as the
//! entries it covers ([`index_entries`]), and rebuilt from the entries at
//! open when it is missing or behind (a store written before it), or cut
//! back when it covers entries sled no longer holds ([`plan`], [`apply`]).
//!
//! Key layout (numbers big-endian):
//! - `N` ‖ u16 length ‖ child pseudonym ‖ first index → postings
//! - `Y` ‖ u16 length ‖ agency id ‖ first index → postings
//!
//!   One record per term per commit: the indexes of that commit's entries
//!   carrying the term (see [`AuditTerm::of`]), the first in the key and the
//!   rest as LEB128 deltas in the value (empty for one entry), at most
//!   [`MAX_POSTINGS`] per record. A term's records sort by index and never
//!   overlap, so its entries from index `i` on start at the last record
//!   whose key is at or before `i`.
//! - `W` ‖ block → the least and greatest `recorded_at` (µs, i64) of the
//!   entries `block * TIME_BLOCK ..` (exact whether or not time only goes
//!   forward: a time window reads only the blocks it can touch).
//! - `M` ‖ `aidx` → how many entries (from index 0) the index covers.

use std::collections::BTreeMap;
use std::path::Path;

use caseshare_core::time::Micros;
use caseshare_proto::v1 as pb;

use crate::StoreError;
use crate::audit_query::{AuditTerm, decode_leaf, recorded_at};
use crate::recovery::{ADVICE_RESTORE, damaged};
use crate::sled_backend::{be, key, read_be};
use crate::sled_open::SLED_FILES;

/// Prefix of the child postings.
pub(crate) const CHILD: u8 = b'N';
/// Prefix of the agency postings.
pub(crate) const AGENCY: u8 = b'Y';
/// Prefix of the time blocks.
pub(crate) const TIME: u8 = b'W';
/// Name of the counter under `M`.
pub(crate) const COUNTER: &[u8] = b"aidx";
/// Entries per time block.
pub const TIME_BLOCK: u64 = 1_024;
/// Most indexes in one postings record.
pub const MAX_POSTINGS: usize = 4_096;
/// Entries read and indexed per sled batch when the index is built at open.
const BUILD_WINDOW: u64 = 8_192;

/// `prefix ‖ u16 length ‖ value`: the start of every key of a term.
pub(crate) fn term_prefix(term: &AuditTerm) -> Result<Vec<u8>, StoreError> {
    let (prefix, value) = match term {
        AuditTerm::Child(p) => (CHILD, p.as_slice()),
        AuditTerm::Agency(a) => (AGENCY, a.as_bytes()),
    };
    let len = u16::try_from(value.len())
        .map_err(|_| StoreError::TooLarge(format!("audit index term of {} bytes", value.len())))?;
    let mut k = Vec::with_capacity(3 + value.len() + 8);
    k.push(prefix);
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(value);
    Ok(k)
}

fn posting_key(prefix: &[u8], index: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 8);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&be(index));
    k
}

/// The deltas after the first index, LEB128.
fn encode_postings(indexes: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(indexes.len() * 2);
    for pair in indexes.windows(2) {
        let mut d = pair[1] - pair[0];
        loop {
            let byte = (d & 0x7f) as u8;
            d >>= 7;
            if d == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
    }
    out
}

/// The indexes of one postings record.
pub(crate) fn decode_postings(first: u64, value: &[u8]) -> Result<Vec<u64>, StoreError> {
    let corrupt = |detail: &str| StoreError::Corrupt {
        key: format!("audit index record at {first}"),
        detail: detail.to_string(),
    };
    let mut out = vec![first];
    let mut last = first;
    let mut d = 0u64;
    let mut shift = 0u32;
    for &byte in value {
        if shift > 63 {
            return Err(corrupt("a delta longer than 64 bits"));
        }
        d |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            if d == 0 {
                return Err(corrupt("indexes not ascending"));
            }
            last = last
                .checked_add(d)
                .ok_or_else(|| corrupt("an index beyond 2^64"))?;
            out.push(last);
            d = 0;
            shift = 0;
        } else {
            shift += 7;
        }
    }
    if shift != 0 {
        return Err(corrupt("truncated"));
    }
    Ok(out)
}

/// Splits a postings key into its term prefix and first index.
pub(crate) fn split_posting_key(k: &[u8]) -> Result<(&[u8], u64), StoreError> {
    let corrupt = || StoreError::Corrupt {
        key: String::from_utf8_lossy(&k[..k.len().min(24)]).into_owned(),
        detail: "not an audit index key".into(),
    };
    let len = k.get(1..3).ok_or_else(corrupt)?;
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    if k.len() != 3 + len + 8 {
        return Err(corrupt());
    }
    let (prefix, index) = k.split_at(3 + len);
    Ok((prefix, read_be(index, "audit index key")?))
}

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

/// Adds to `b` the index records of `entries` (decoded, with consecutive
/// indexes from `first`, continuing the covered log) and the new counter;
/// returns how many records and bytes it wrote.
pub(crate) fn index_entries(
    tree: &sled::Tree,
    first: u64,
    entries: &[pb::AuditEntry],
    b: &mut sled::Batch,
) -> Result<(usize, usize), StoreError> {
    if entries.is_empty() {
        return Ok((0, 0));
    }
    let mut postings: BTreeMap<Vec<u8>, Vec<u64>> = BTreeMap::new();
    let mut blocks: BTreeMap<u64, (Micros, Micros)> = BTreeMap::new();
    for (index, e) in (first..).zip(entries) {
        for term in AuditTerm::of(e) {
            postings.entry(term_prefix(&term)?).or_default().push(index);
        }
        let t = recorded_at(e);
        let block = blocks.entry(index / TIME_BLOCK).or_insert((t, t));
        block.0 = block.0.min(t);
        block.1 = block.1.max(t);
    }
    // The first block may already hold earlier entries.
    if let Some((&block, span)) = blocks.iter_mut().next()
        && block * TIME_BLOCK < first
        && let Some(v) = tree.get(key(TIME, &[&be(block)]))?
    {
        let (min, max) = read_time_value(&v)?;
        span.0 = span.0.min(min);
        span.1 = span.1.max(max);
    }
    let (mut records, mut bytes) = (0, 0);
    let mut put = |k: Vec<u8>, v: Vec<u8>| {
        records += 1;
        bytes += k.len() + v.len();
        b.insert(k, v);
    };
    for (prefix, indexes) in postings {
        for run in indexes.chunks(MAX_POSTINGS) {
            put(posting_key(&prefix, run[0]), encode_postings(run));
        }
    }
    for (block, (min, max)) in blocks {
        put(key(TIME, &[&be(block)]), time_value(min, max));
    }
    let covered = first + entries.len() as u64;
    put(key(b'M', &[COUNTER]), be(covered).to_vec());
    Ok((records, bytes))
}

/// Indexes carrying `term` in `[start, end)`, ascending, at most `max`.
pub(crate) fn postings(
    tree: &sled::Tree,
    term: &AuditTerm,
    start: u64,
    end: u64,
    max: usize,
) -> Result<Vec<u64>, StoreError> {
    let mut out = Vec::new();
    if start >= end || max == 0 {
        return Ok(out);
    }
    let prefix = term_prefix(term)?;
    let from = match tree
        .range(posting_key(&prefix, 0)..=posting_key(&prefix, start))
        .next_back()
    {
        Some(item) => item?.0.to_vec(),
        None => posting_key(&prefix, start),
    };
    for item in tree.range(from..posting_key(&prefix, end)) {
        let (k, v) = item?;
        let (_, first) = split_posting_key(&k)?;
        for index in decode_postings(first, &v)? {
            if index >= end {
                return Ok(out);
            }
            if index >= start {
                out.push(index);
                if out.len() >= max {
                    return Ok(out);
                }
            }
        }
    }
    Ok(out)
}

/// The stored audit entries at `indexes` (ascending), reading each chunk
/// once however many of them it holds.
pub(crate) fn entries_at(tree: &sled::Tree, indexes: &[u64]) -> Result<Vec<Vec<u8>>, StoreError> {
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
    let mut spans = Vec::new();
    let mut at = 0usize;
    while at < v.len() {
        let corrupt = || StoreError::Corrupt {
            key: "audit chunk".into(),
            detail: "truncated entry".into(),
        };
        let len = v.get(at..at + 4).ok_or_else(corrupt)?;
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let start = at + 4;
        if v.len() - start < len {
            return Err(corrupt());
        }
        spans.push((start, len));
        at = start + len;
    }
    Ok(spans)
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

/// What the open does to the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// It covers every entry.
    UpToDate,
    /// Index the entries from `from` on, first removing every index record
    /// when `clear` (the counter is missing).
    Build {
        /// The first entry to index.
        from: u64,
        /// Remove what is there first.
        clear: bool,
    },
    /// It covers entries sled no longer holds: cut it back to `size`.
    Trim {
        /// The audit size.
        size: u64,
    },
}

/// Decides, read-only, what the open must do to the index of a log of
/// `size` entries; every entry it would index must decode, or the store is
/// refused naming it.
pub(crate) fn plan(dir: &Path, tree: &sled::Tree, size: u64) -> Result<Plan, StoreError> {
    let (from, clear) = match covered(tree)? {
        Some(n) if n == size => return Ok(Plan::UpToDate),
        Some(n) if n > size => return Ok(Plan::Trim { size }),
        Some(n) => (n, false),
        None => (0, true),
    };
    let mut at = from;
    while at < size {
        let to = size.min(at + BUILD_WINDOW);
        let leaves = crate::sled_open::audit_entries(tree, at, to)?;
        if leaves.len() as u64 != to - at {
            return Err(damaged(
                &dir.join("db"),
                None,
                format!(
                    "sled's audit log has {} entries from index {at} where {} were expected \
                     ({SLED_FILES})",
                    leaves.len(),
                    to - at
                ),
                ADVICE_RESTORE,
            ));
        }
        for (index, leaf) in (at..).zip(&leaves) {
            decode_leaf(index, leaf).map_err(|e| {
                damaged(
                    &dir.join("db"),
                    None,
                    format!(
                        "audit entry {index} cannot be indexed: {e} (an entry of the log is \
                         evidence and is never skipped; {SLED_FILES})"
                    ),
                    ADVICE_RESTORE,
                )
            })?;
        }
        at = to;
    }
    Ok(Plan::Build { from, clear })
}

/// Carries out a [`Plan`] for a log of `size` entries (the caller syncs).
pub(crate) fn apply(tree: &sled::Tree, plan: Plan, size: u64) -> Result<(), StoreError> {
    match plan {
        Plan::UpToDate => Ok(()),
        Plan::Build { from, clear } => {
            if clear {
                remove_all(tree)?;
            }
            let mut at = from;
            while at < size {
                let to = size.min(at + BUILD_WINDOW);
                let entries = crate::sled_open::audit_entries(tree, at, to)?
                    .iter()
                    .zip(at..)
                    .map(|(leaf, index)| decode_leaf(index, leaf))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut b = sled::Batch::default();
                index_entries(tree, at, &entries, &mut b)?;
                tree.apply_batch(b)?;
                at = to;
            }
            if clear && size == 0 {
                tree.insert(key(b'M', &[COUNTER]), be(0).to_vec())?;
            }
            Ok(())
        }
        Plan::Trim { size } => trim(tree, size),
    }
}

fn remove_all(tree: &sled::Tree) -> Result<(), StoreError> {
    for prefix in [CHILD, AGENCY, TIME] {
        let mut b = sled::Batch::default();
        for k in tree.scan_prefix([prefix]).keys() {
            b.remove(k?);
        }
        tree.apply_batch(b)?;
    }
    Ok(())
}

/// Cuts the index back to the first `size` entries.
fn trim(tree: &sled::Tree, size: u64) -> Result<(), StoreError> {
    let mut b = sled::Batch::default();
    for prefix in [CHILD, AGENCY] {
        for item in tree.scan_prefix([prefix]) {
            let (k, v) = item?;
            let (term, first) = split_posting_key(&k)?;
            if first >= size {
                b.remove(k);
                continue;
            }
            let indexes = decode_postings(first, &v)?;
            if indexes.last().is_some_and(|&last| last >= size) {
                let kept: Vec<u64> = indexes.into_iter().filter(|&i| i < size).collect();
                b.insert(posting_key(term, first), encode_postings(&kept));
            }
        }
    }
    for k in tree.scan_prefix([TIME]).keys() {
        let k = k?;
        if read_be(&k[1..], "audit time block key")? * TIME_BLOCK >= size {
            b.remove(k);
        }
    }
    // The last block keeps only the times of the entries still held.
    let block = size / TIME_BLOCK;
    if !size.is_multiple_of(TIME_BLOCK) {
        let mut span: Option<(Micros, Micros)> = None;
        for (index, leaf) in (block * TIME_BLOCK..).zip(crate::sled_open::audit_entries(
            tree,
            block * TIME_BLOCK,
            size,
        )?) {
            let t = recorded_at(&decode_leaf(index, &leaf)?);
            span = Some(span.map_or((t, t), |(lo, hi)| (lo.min(t), hi.max(t))));
        }
        if let Some((min, max)) = span {
            b.insert(key(TIME, &[&be(block)]), time_value(min, max));
        }
    }
    b.insert(key(b'M', &[COUNTER]), be(size).to_vec());
    tree.apply_batch(b)?;
    Ok(())
}

/// Decodes a batch's entries (indexes from `first`), for the commit.
pub(crate) fn decode_all(
    first: u64,
    leaves: &[Vec<u8>],
) -> Result<Vec<pb::AuditEntry>, StoreError> {
    (first..)
        .zip(leaves)
        .map(|(index, leaf)| decode_leaf(index, leaf))
        .collect()
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Entries the index says it covers (`None`: no index yet).
    pub covered: Option<u64>,
    /// Postings stored for the covered entries.
    pub postings: u64,
    /// How the stored index differs from the covered entries, if it does.
    pub mismatch: Option<String>,
}

/// A set digest of postings: count, and the sum of their hashes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Digest {
    count: u64,
    sum: [u64; 4],
}

impl Digest {
    fn add(&mut self, term_prefix: &[u8], index: u64) {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(term_prefix);
        h.update(be(index));
        let h = h.finalize();
        for (lane, part) in self.sum.iter_mut().zip(h.chunks_exact(8)) {
            let mut word = [0u8; 8];
            word.copy_from_slice(part);
            *lane = lane.wrapping_add(u64::from_le_bytes(word));
        }
        self.count += 1;
    }
}

/// Checks, read-only, that the stored index is exactly the index of the
/// entries it claims to cover (every posting and time block, nothing
/// else), in constant memory but for one record per time block.
pub(crate) fn verify(tree: &sled::Tree, size: u64) -> Result<Verdict, StoreError> {
    let Some(covered) = covered(tree)? else {
        return Ok(Verdict {
            covered: None,
            postings: 0,
            mismatch: None,
        });
    };
    let n = covered.min(size);
    let mut expected = Digest::default();
    let mut blocks: BTreeMap<u64, (Micros, Micros)> = BTreeMap::new();
    let mut at = 0;
    while at < n {
        let to = n.min(at + BUILD_WINDOW);
        for (index, leaf) in (at..).zip(crate::sled_open::audit_entries(tree, at, to)?) {
            let e = decode_leaf(index, &leaf)?;
            for term in AuditTerm::of(&e) {
                expected.add(&term_prefix(&term)?, index);
            }
            let t = recorded_at(&e);
            let span = blocks.entry(index / TIME_BLOCK).or_insert((t, t));
            *span = (span.0.min(t), span.1.max(t));
        }
        at = to;
    }
    let mut stored = Digest::default();
    let mut beyond = 0u64;
    for prefix in [CHILD, AGENCY] {
        for item in tree.scan_prefix([prefix]) {
            let (k, v) = item?;
            let (term, first) = split_posting_key(&k)?;
            for index in decode_postings(first, &v)? {
                if index >= n {
                    beyond += 1;
                } else {
                    stored.add(term, index);
                }
            }
        }
    }
    let mut stored_blocks = BTreeMap::new();
    for item in tree.scan_prefix([TIME]) {
        let (k, v) = item?;
        stored_blocks.insert(
            read_be(&k[1..], "audit time block key")?,
            read_time_value(&v)?,
        );
    }
    let mismatch = if beyond > 0 {
        Some(format!(
            "{beyond} postings name entries at or beyond index {n}, which the index does not cover"
        ))
    } else if stored != expected {
        Some(format!(
            "{} postings stored, {} expected from the entries{}",
            stored.count,
            expected.count,
            if stored.count == expected.count {
                " (the same number, but not the same postings)"
            } else {
                ""
            }
        ))
    } else if stored_blocks != blocks {
        let differs = blocks
            .iter()
            .find(|(b, span)| stored_blocks.get(b) != Some(span))
            .map(|(b, _)| *b)
            .or_else(|| {
                stored_blocks
                    .keys()
                    .find(|b| !blocks.contains_key(b))
                    .copied()
            });
        Some(format!(
            "the time of entries {}.. does not match the time index",
            differs.unwrap_or(0) * TIME_BLOCK
        ))
    } else {
        None
    };
    Ok(Verdict {
        covered: Some(covered),
        postings: stored.count,
        mismatch,
    })
}

#[cfg(test)]
mod tests;
