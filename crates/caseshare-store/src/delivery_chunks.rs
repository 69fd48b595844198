//! Delivery records in sled, packed [`CHUNK`] sequences to a record.
//!
//! One sled insert per delivery record was the costliest part of a commit:
//! every event delivered and acknowledged wrote two, and sled's per-insert
//! work (walk to the leaf, link a delta, split) took half of the commit
//! thread (`docs/BENCHMARKS.md`, issue #18). Records are therefore kept per
//! subscription in chunks of [`CHUNK`] consecutive sequences: `K` ‖
//! subscription id ‖ first sequence of the chunk → the chunk's records,
//! sorted by sequence. Format [`FORMAT`] (2): the format byte, then per
//! record its sequence's offset in the chunk (`u8`) ‖ varint length ‖ the
//! [`DeliveryRecord`] encoding without its subscription id and sequence
//! (the key and the offset give them), then a CRC-32 of all before it
//! (`u32` LE): about 24 bytes a record instead of format 1's 40 (sequence
//! `u64` LE ‖ `u32` LE length ‖ the whole record, no checksum), which is
//! still read. A lookup of one sequence decodes only its record. A commit
//! reads each chunk it touches
//! (from sled's cache), merges the batch's records in and writes the chunk
//! back: a window of 256 deliveries is about 5 inserts instead of 256.
//!
//! Stores written before chunks hold one `D` ‖ subscription id ‖ sequence
//! record each. They are read as they are and never rewritten: a chunk's
//! record for a sequence wins over a `D` record for it (chunks are only
//! written later), and a seek or a purge removes both kinds. A lookup looks
//! for them only if the store held any when it was opened.
//!
//! Architecture Invariant: a chunk is rewritten whole inside the commit's
//! one sled batch, under the store's commit gate, so readers see either
//! the old or the new chunk and a crash leaves the one the last durable
//! commit wrote.

use std::collections::BTreeMap;

use prost::Message;

use crate::sled_backend::{self, be, key};
use crate::{CommitStats, DeliveryRecord, StoreError};

/// Sequences per chunk.
pub(crate) const CHUNK: u64 = 64;
/// The chunk value's first byte: the format version written.
const FORMAT: u8 = 2;
/// The format of chunks written before [`FORMAT`] (read, never written).
const FORMAT_1: u8 = 1;
/// The key prefix of chunks.
pub(crate) const PREFIX: u8 = b'K';
/// The key prefix of one-record-per-delivery stores (read, never written).
pub(crate) const LEGACY: u8 = b'D';

fn chunk_start(sequence: u64) -> u64 {
    sequence - sequence % CHUNK
}

fn chunk_key(subscription_id: u64, sequence: u64) -> Vec<u8> {
    key(PREFIX, &[&be(subscription_id), &be(chunk_start(sequence))])
}

fn damaged(k: &[u8], why: &str) -> StoreError {
    StoreError::Corrupt {
        key: format!("delivery chunk {k:02x?}"),
        detail: why.to_string(),
    }
}

/// The entries of one chunk value: its format, and per record (sequence,
/// the record's encoding).
type Entries<'a> = (u8, Vec<(u64, &'a [u8])>);

fn entries<'a>(k: &[u8], v: &'a [u8]) -> Result<Entries<'a>, StoreError> {
    let Some((&format, rest)) = v.split_first() else {
        return Err(damaged(k, "empty value"));
    };
    match format {
        FORMAT => Ok((FORMAT, entries_2(k, v)?)),
        FORMAT_1 => Ok((FORMAT_1, entries_1(k, rest)?)),
        other => Err(damaged(k, &format!("unknown format {other}"))),
    }
}

/// A big-endian number at `at` in a chunk key.
fn key_part(k: &[u8], at: usize) -> Result<u64, StoreError> {
    k.get(at..at + 8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| damaged(k, "not a chunk key"))
}

/// Format 2's entries, after its checksum is checked.
fn entries_2<'a>(k: &[u8], v: &'a [u8]) -> Result<Vec<(u64, &'a [u8])>, StoreError> {
    let Some((body, crc)) = v.split_last_chunk::<4>() else {
        return Err(damaged(k, "shorter than its checksum"));
    };
    if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
        return Err(damaged(k, "checksum mismatch"));
    }
    let start = key_part(k, 9)?;
    let mut rest = body.get(1..).unwrap_or_default();
    let mut out: Vec<(u64, &[u8])> = Vec::with_capacity(CHUNK as usize);
    while let Some((&offset, tail)) = rest.split_first() {
        let sequence = start + u64::from(offset);
        if u64::from(offset) >= CHUNK || out.last().is_some_and(|(s, _)| *s >= sequence) {
            return Err(damaged(k, &format!("offset {offset} out of order")));
        }
        let mut tail = tail;
        let len = prost::encoding::decode_varint(&mut tail)
            .ok()
            .and_then(|l| usize::try_from(l).ok())
            .filter(|l| *l <= tail.len())
            .ok_or_else(|| damaged(k, "truncated record"))?;
        let (bytes, tail) = tail.split_at(len);
        out.push((sequence, bytes));
        rest = tail;
    }
    Ok(out)
}

/// Format 1's entries.
fn entries_1<'a>(k: &[u8], mut rest: &'a [u8]) -> Result<Vec<(u64, &'a [u8])>, StoreError> {
    let mut out = Vec::with_capacity(CHUNK as usize);
    while !rest.is_empty() {
        let Some((seq, tail)) = rest.split_first_chunk::<8>() else {
            return Err(damaged(k, "truncated sequence"));
        };
        let Some((len, tail)) = tail.split_first_chunk::<4>() else {
            return Err(damaged(k, "truncated length"));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return Err(damaged(k, "truncated record"));
        }
        let (bytes, tail) = tail.split_at(len);
        out.push((u64::from_le_bytes(*seq), bytes));
        rest = tail;
    }
    Ok(out)
}

fn decode_one(
    k: &[u8],
    format: u8,
    sequence: u64,
    bytes: &[u8],
) -> Result<DeliveryRecord, StoreError> {
    let mut r = DeliveryRecord::decode(bytes).map_err(|e| damaged(k, &e.to_string()))?;
    if format == FORMAT {
        if r.sequence != 0 || r.subscription_id != 0 {
            return Err(damaged(k, "a record that names its own sequence"));
        }
        r.sequence = sequence;
        r.subscription_id = key_part(k, 1)?;
    } else if r.sequence != sequence {
        return Err(damaged(
            k,
            &format!("entry for sequence {sequence} holds {}", r.sequence),
        ));
    }
    Ok(r)
}

/// The records of one chunk value.
fn decode(k: &[u8], v: &[u8]) -> Result<Vec<DeliveryRecord>, StoreError> {
    let (format, entries) = entries(k, v)?;
    entries
        .into_iter()
        .map(|(seq, bytes)| decode_one(k, format, seq, bytes))
        .collect()
}

/// The record of one sequence in a chunk value, decoding only that one.
fn find(k: &[u8], v: &[u8], sequence: u64) -> Result<Option<DeliveryRecord>, StoreError> {
    let (format, entries) = entries(k, v)?;
    match entries.into_iter().find(|(seq, _)| *seq == sequence) {
        Some((seq, bytes)) => decode_one(k, format, seq, bytes).map(Some),
        None => Ok(None),
    }
}

/// A chunk's value in [`FORMAT`]; `records` are one chunk's, keyed by
/// sequence.
fn encode(records: &BTreeMap<u64, DeliveryRecord>) -> Result<Vec<u8>, StoreError> {
    let mut v = Vec::with_capacity(1 + records.len() * 28 + 4);
    v.push(FORMAT);
    for (seq, r) in records {
        let offset = u8::try_from(seq % CHUNK)
            .map_err(|_| StoreError::Engine("chunk offset out of range".into()))?;
        let bare = DeliveryRecord {
            subscription_id: 0,
            sequence: 0,
            ..r.clone()
        };
        v.push(offset);
        prost::encoding::encode_varint(bare.encoded_len() as u64, &mut v);
        bare.encode_raw(&mut v);
    }
    let crc = crc32fast::hash(&v);
    v.extend_from_slice(&crc.to_le_bytes());
    Ok(v)
}

/// Every record of a subscription from `from` up, in sequence order.
pub(crate) fn from(
    tree: &sled::Tree,
    subscription_id: u64,
    from: u64,
) -> Result<Vec<DeliveryRecord>, StoreError> {
    let mut merged: BTreeMap<u64, DeliveryRecord> = BTreeMap::new();
    let start = key(LEGACY, &[&be(subscription_id), &be(from)]);
    let end = key(LEGACY, &[&be(subscription_id), &be(u64::MAX)]);
    for item in tree.range(start..=end) {
        let (k, v) = item?;
        let r = sled_backend::decode::<DeliveryRecord>(&k, &v)?;
        merged.insert(r.sequence, r);
    }
    let start = chunk_key(subscription_id, from);
    let end = key(PREFIX, &[&be(subscription_id), &be(u64::MAX)]);
    for item in tree.range(start..=end) {
        let (k, v) = item?;
        for r in decode(&k, &v)? {
            if r.sequence >= from {
                merged.insert(r.sequence, r);
            }
        }
    }
    Ok(merged.into_values().collect())
}

/// Whether the tree holds any record of the old one-per-delivery layout.
/// None is ever written again, so a store found without one at open never
/// has one, and [`of`] need not look for them.
pub(crate) fn has_legacy(tree: &sled::Tree) -> Result<bool, StoreError> {
    Ok(tree.scan_prefix([LEGACY]).next().transpose()?.is_some())
}

/// The record of each subscription for one sequence, where there is one;
/// with `legacy` ([`has_legacy`]), also in the old layout.
pub(crate) fn of(
    tree: &sled::Tree,
    subscription_ids: &[u64],
    sequence: u64,
    legacy: bool,
) -> Result<Vec<DeliveryRecord>, StoreError> {
    let mut out = Vec::new();
    for id in subscription_ids {
        let k = chunk_key(*id, sequence);
        let chunked = match tree.get(&k)? {
            Some(v) => find(&k, &v, sequence)?,
            None => None,
        };
        if let Some(r) = chunked {
            out.push(r);
            continue;
        }
        if legacy && let Some(r) = legacy_record(tree, *id, sequence)? {
            out.push(r);
        }
    }
    Ok(out)
}

/// The old layout's record of (`subscription_id`, `sequence`), if any.
fn legacy_record(
    tree: &sled::Tree,
    subscription_id: u64,
    sequence: u64,
) -> Result<Option<DeliveryRecord>, StoreError> {
    let k = key(LEGACY, &[&be(subscription_id), &be(sequence)]);
    tree.get(&k)?
        .map(|v| sled_backend::decode::<DeliveryRecord>(&k, &v))
        .transpose()
}

/// The newest record of (`subscription_id`, s) for each s of `sequences`,
/// in order: what [`of`] finds for each, with each run of sequences in one
/// chunk read, checked and parsed once (an ack or a window names up to a
/// few hundred sequences, mostly consecutive).
pub(crate) fn newest_of(
    tree: &sled::Tree,
    subscription_id: u64,
    sequences: &[u64],
    legacy: bool,
) -> Result<Vec<Option<DeliveryRecord>>, StoreError> {
    let mut out = Vec::with_capacity(sequences.len());
    let mut rest = sequences;
    while let Some(&first) = rest.first() {
        let start = chunk_start(first);
        let run = rest
            .iter()
            .take_while(|s| chunk_start(**s) == start)
            .count();
        let (now, later) = rest.split_at(run);
        rest = later;
        let k = chunk_key(subscription_id, first);
        let value = tree.get(&k)?;
        let parsed = value.as_deref().map(|v| entries(&k, v)).transpose()?;
        for &sequence in now {
            let mut found = None;
            if let Some((format, list)) = &parsed
                && let Some((seq, bytes)) = list.iter().find(|(s, _)| *s == sequence)
            {
                found = Some(decode_one(&k, *format, *seq, bytes)?);
            }
            if found.is_none() && legacy {
                found = legacy_record(tree, subscription_id, sequence)?;
            }
            out.push(found);
        }
    }
    Ok(out)
}

/// Removes a deleted subscription's records (both kinds), at most
/// `budget` records' worth: an old-layout record counts one, a chunk
/// [`CHUNK`] (what it may hold). Returns the keys removed and whether
/// more remain.
pub(crate) fn purge(
    tree: &sled::Tree,
    subscription_id: u64,
    budget: usize,
    b: &mut crate::wal::Writes,
) -> Result<(usize, bool), StoreError> {
    let mut spent = 0;
    let mut removed = 0;
    for (prefix, cost) in [(LEGACY, 1), (PREFIX, CHUNK as usize)] {
        for k in tree
            .scan_prefix(key(prefix, &[&be(subscription_id)]))
            .keys()
        {
            let k = k?;
            if spent + cost > budget {
                return Ok((removed, true));
            }
            b.remove(k);
            spent += cost;
            removed += 1;
        }
    }
    Ok((removed, false))
}

/// The chunk at `k` as this commit leaves it so far: read from sled the
/// first time the commit touches it.
fn chunk_mut<'t>(
    tree: &sled::Tree,
    touched: &'t mut BTreeMap<Vec<u8>, BTreeMap<u64, DeliveryRecord>>,
    k: Vec<u8>,
) -> Result<&'t mut BTreeMap<u64, DeliveryRecord>, StoreError> {
    match touched.entry(k) {
        std::collections::btree_map::Entry::Occupied(o) => Ok(o.into_mut()),
        std::collections::btree_map::Entry::Vacant(v) => {
            let loaded = match tree.get(v.key())? {
                Some(bytes) => decode(v.key(), &bytes)?
                    .into_iter()
                    .map(|r| (r.sequence, r))
                    .collect(),
                None => BTreeMap::new(),
            };
            Ok(v.insert(loaded))
        }
    }
}

/// Adds a commit's delivery writes to its sled batch: first every seek's
/// deletion (`subscription`, records from `sequence` up), then the new
/// records, each replacing the one of its sequence. Reads the chunks it
/// touches; writes each once.
pub(crate) fn stage(
    tree: &sled::Tree,
    deleted_from: &[(u64, u64)],
    records: &[DeliveryRecord],
    b: &mut crate::wal::Writes,
    stats: &mut CommitStats,
) -> Result<(), StoreError> {
    // Chunk key → its records as this commit leaves them.
    let mut touched: BTreeMap<Vec<u8>, BTreeMap<u64, DeliveryRecord>> = BTreeMap::new();
    for (sub, from) in deleted_from {
        let start = key(LEGACY, &[&be(*sub), &be(*from)]);
        let end = key(LEGACY, &[&be(*sub), &be(u64::MAX)]);
        for k in tree.range(start..=end).keys() {
            b.remove(k?);
            stats.records += 1;
        }
        // Chunks are loaded before any record is merged in, so every chunk
        // this commit holds is in this range's scan.
        let start = chunk_key(*sub, *from);
        let end = key(PREFIX, &[&be(*sub), &be(u64::MAX)]);
        for k in tree.range(start..=end).keys() {
            chunk_mut(tree, &mut touched, k?.to_vec())?.retain(|seq, _| seq < from);
        }
    }
    for r in records {
        let k = chunk_key(r.subscription_id, r.sequence);
        chunk_mut(tree, &mut touched, k)?.insert(r.sequence, r.clone());
    }
    for (k, chunk) in touched {
        stats.records += 1;
        if chunk.is_empty() {
            b.remove(k);
        } else {
            let v = encode(&chunk)?;
            stats.bytes += k.len() + v.len();
            b.insert(k, v);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::records::DeliveryState;

    fn rec(sub: u64, seq: u64, state: DeliveryState, attempts: u32) -> DeliveryRecord {
        DeliveryRecord {
            subscription_id: sub,
            sequence: seq,
            state: state as i32,
            attempts,
            ..DeliveryRecord::default()
        }
    }

    fn tree() -> (tempfile::TempDir, sled::Tree) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let t = db.open_tree("t").unwrap();
        (dir, t)
    }

    fn commit(t: &sled::Tree, deleted: &[(u64, u64)], records: &[DeliveryRecord]) {
        let mut b = crate::wal::Writes::default();
        let mut stats = CommitStats::default();
        stage(t, deleted, records, &mut b, &mut stats).unwrap();
        t.apply_batch(b.into_sled_batch()).unwrap();
    }

    fn seqs(t: &sled::Tree, sub: u64, from_seq: u64) -> Vec<(u64, u32)> {
        from(t, sub, from_seq)
            .unwrap()
            .into_iter()
            .map(|r| (r.sequence, r.attempts))
            .collect()
    }

    #[test]
    fn records_round_trip_across_chunks_and_the_latest_wins() {
        let (_d, t) = tree();
        let first: Vec<_> = (60..70)
            .map(|s| rec(1, s, DeliveryState::Delivered, 1))
            .collect();
        commit(&t, &[], &first);
        // Acked later, in another commit; another subscription beside it.
        commit(
            &t,
            &[],
            &[
                rec(1, 63, DeliveryState::Acked, 1),
                rec(1, 64, DeliveryState::Acked, 2),
                rec(2, 63, DeliveryState::Delivered, 1),
            ],
        );
        assert_eq!(
            t.scan_prefix([PREFIX]).count(),
            3,
            "two chunks of 1, one of 2"
        );
        let all = from(&t, 1, 0).unwrap();
        assert_eq!(all.len(), 10);
        assert_eq!(all[3].state(), DeliveryState::Acked);
        assert_eq!(all[4].attempts, 2);
        assert_eq!(seqs(&t, 1, 64).first(), Some(&(64, 2)));
        assert_eq!(seqs(&t, 2, 0), vec![(63, 1)]);
        let got = of(&t, &[1, 2, 3], 63, false).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].state(), DeliveryState::Acked);
        assert_eq!(got[1].subscription_id, 2);
        assert!(of(&t, &[1], 70, false).unwrap().is_empty());
        assert!(!has_legacy(&t).unwrap());
    }

    #[test]
    fn a_seek_deletes_from_its_sequence_and_the_same_commit_can_write_again() {
        let (_d, t) = tree();
        let recs: Vec<_> = (0..200)
            .map(|s| rec(1, s, DeliveryState::Delivered, 1))
            .collect();
        commit(&t, &[], &recs);
        commit(&t, &[], &[rec(2, 150, DeliveryState::Delivered, 1)]);
        // Seek to 100, and a delivery of 130 in the same commit.
        commit(&t, &[(1, 100)], &[rec(1, 130, DeliveryState::Delivered, 3)]);
        let left = seqs(&t, 1, 0);
        assert_eq!(left.len(), 101);
        assert_eq!(left[99], (99, 1));
        assert_eq!(left[100], (130, 3));
        assert_eq!(
            seqs(&t, 2, 0),
            vec![(150, 1)],
            "other subscriptions untouched"
        );
        // A seek to the start of a chunk removes it whole.
        commit(&t, &[(1, 64)], &[]);
        assert_eq!(seqs(&t, 1, 0).len(), 64);
        assert_eq!(t.scan_prefix(key(PREFIX, &[&be(1)])).count(), 1);
    }

    #[test]
    fn records_of_the_old_layout_are_read_and_a_chunk_record_wins() {
        let (_d, t) = tree();
        for s in [5u64, 6, 7] {
            t.insert(
                key(LEGACY, &[&be(1), &be(s)]),
                rec(1, s, DeliveryState::Delivered, 1).encode_to_vec(),
            )
            .unwrap();
        }
        commit(&t, &[], &[rec(1, 6, DeliveryState::Acked, 1)]);
        let all = from(&t, 1, 0).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[1].state(), DeliveryState::Acked);
        assert!(has_legacy(&t).unwrap());
        assert_eq!(
            of(&t, &[1], 6, true).unwrap()[0].state(),
            DeliveryState::Acked
        );
        assert_eq!(
            of(&t, &[1], 7, true).unwrap()[0].state(),
            DeliveryState::Delivered
        );
        assert!(
            of(&t, &[1], 7, false).unwrap().is_empty(),
            "the flag is what finds the old record"
        );
        // A seek removes both kinds from its sequence.
        commit(&t, &[(1, 6)], &[]);
        assert_eq!(seqs(&t, 1, 0), vec![(5, 1)]);
        // A purge removes both kinds, at most `max` keys at a time.
        commit(&t, &[], &[rec(1, 300, DeliveryState::Delivered, 1)]);
        // Budget 64: the old record (1), then not the chunk (64 more).
        let mut b = crate::wal::Writes::default();
        assert_eq!(purge(&t, 1, 64, &mut b).unwrap(), (1, true));
        t.apply_batch(b.into_sled_batch()).unwrap();
        let mut b = crate::wal::Writes::default();
        assert_eq!(purge(&t, 1, 64, &mut b).unwrap(), (1, false));
        t.apply_batch(b.into_sled_batch()).unwrap();
        assert!(from(&t, 1, 0).unwrap().is_empty());
    }

    /// One lookup for many sequences finds what a lookup of each finds:
    /// across chunks, in any order, repeated, absent, in the old layout.
    #[test]
    fn newest_of_many_sequences_is_of_each_by_table() {
        let (_d, t) = tree();
        for s in [5u64, 6, 130] {
            t.insert(
                key(LEGACY, &[&be(1), &be(s)]),
                rec(1, s, DeliveryState::Delivered, 1).encode_to_vec(),
            )
            .unwrap();
        }
        let recs: Vec<_> = (0..150)
            .filter(|s| s % 3 != 0)
            .map(|s| rec(1, s, DeliveryState::Delivered, 1))
            .chain([rec(2, 6, DeliveryState::Acked, 2)])
            .collect();
        commit(&t, &[], &recs);
        commit(&t, &[], &[rec(1, 64, DeliveryState::Acked, 1)]);
        let cases: [&[u64]; 6] = [
            &[],
            &[1, 2, 3, 4, 5, 6],
            &[63, 64, 65, 127, 128, 129, 130],
            &[140, 2, 64, 2, 300, 5],
            &[6, 6, 6],
            &[1000, 1001],
        ];
        for legacy in [true, false] {
            for sub in [1u64, 2, 3] {
                for seqs in cases {
                    let want: Vec<_> = seqs
                        .iter()
                        .map(|s| of(&t, &[sub], *s, legacy).unwrap().into_iter().last())
                        .collect();
                    assert_eq!(
                        newest_of(&t, sub, seqs, legacy).unwrap(),
                        want,
                        "sub {sub} {seqs:?} legacy {legacy}"
                    );
                }
            }
        }
        assert_eq!(
            newest_of(&t, 1, &[64, 5], true).unwrap()[0]
                .as_ref()
                .map(|r| r.state()),
            Some(DeliveryState::Acked)
        );
    }

    #[test]
    fn a_damaged_chunk_is_an_error_naming_it_not_a_panic() {
        let (_d, t) = tree();
        commit(&t, &[], &[rec(1, 1, DeliveryState::Delivered, 1)]);
        let k = chunk_key(1, 1);
        let v = t.get(&k).unwrap().unwrap().to_vec();
        let mut wrong_sequence = v.clone();
        wrong_sequence[1] ^= 2;
        let mut flipped = v.clone();
        flipped[4] ^= 0x10;
        for bad in [
            vec![],
            vec![9u8],
            vec![FORMAT, 0, 0],
            v[..v.len() - 1].to_vec(),
            v[..5].to_vec(),
            wrong_sequence,
            flipped,
        ] {
            t.insert(&k, bad).unwrap();
            let e = from(&t, 1, 0).unwrap_err().to_string();
            assert!(e.contains("delivery chunk"), "{e}");
        }
    }

    /// A chunk of format 1 as stores written before format 2 hold it.
    fn format_1(records: &[DeliveryRecord]) -> Vec<u8> {
        let mut v = vec![FORMAT_1];
        for r in records {
            v.extend_from_slice(&r.sequence.to_le_bytes());
            v.extend_from_slice(&(r.encoded_len() as u32).to_le_bytes());
            r.encode_raw(&mut v);
        }
        v
    }

    #[test]
    fn every_field_round_trips_and_format_1_is_read_then_rewritten_as_format_2() {
        let (_d, t) = tree();
        let full = |sub: u64, seq: u64| DeliveryRecord {
            subscription_id: sub,
            sequence: seq,
            state: DeliveryState::DeadLettered as i32,
            attempts: 7,
            delivered_at_micros: 1_764_000_000_123_456,
            acked_at_micros: 1_764_000_000_223_456,
            reason: "max attempts".into(),
            settled_at_micros: 1_764_000_000_323_456,
        };
        // A format 1 chunk of subscription 9 from 128.
        let old: Vec<_> = [128u64, 130, 191].iter().map(|s| full(9, *s)).collect();
        t.insert(chunk_key(9, 128), format_1(&old)).unwrap();
        assert_eq!(from(&t, 9, 0).unwrap(), old);
        assert_eq!(of(&t, &[9], 130, false).unwrap(), vec![old[1].clone()]);
        // Touched by a commit: rewritten in format 2, shorter, and equal.
        let newer = full(9, 131);
        commit(&t, &[], std::slice::from_ref(&newer));
        let v = t.get(chunk_key(9, 128)).unwrap().unwrap();
        assert_eq!(v[0], FORMAT);
        let mut want = old.clone();
        want.insert(2, newer);
        assert!(v.len() < format_1(&want).len());
        assert_eq!(from(&t, 9, 0).unwrap(), want);
        assert_eq!(of(&t, &[9], 191, false).unwrap(), vec![want[3].clone()]);
        assert!(of(&t, &[9], 129, false).unwrap().is_empty());
        // A record whose own encoding names a sequence is refused in format 2.
        let mut bad = vec![FORMAT, 0];
        let named = full(0, 5).encode_to_vec();
        bad.push(named.len() as u8);
        bad.extend_from_slice(&named);
        let crc = crc32fast::hash(&bad);
        bad.extend_from_slice(&crc.to_le_bytes());
        t.insert(chunk_key(4, 0), bad).unwrap();
        assert!(
            from(&t, 4, 0)
                .unwrap_err()
                .to_string()
                .contains("names its own")
        );
    }
}
