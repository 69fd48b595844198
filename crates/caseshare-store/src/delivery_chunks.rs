//! Delivery records in sled, packed [`CHUNK`] sequences to a record.
//!
//! One sled insert per delivery record was the costliest part of a commit:
//! every event delivered and acknowledged wrote two, and sled's per-insert
//! work (walk to the leaf, link a delta, split) took half of the commit
//! thread (`docs/BENCHMARKS.md`, issue #18). Records are therefore kept per
//! subscription in chunks of [`CHUNK`] consecutive sequences: `K` ‖
//! subscription id ‖ first sequence of the chunk → the chunk's records,
//! sorted by sequence, each sequence (`u64` LE) ‖ `u32` LE length ‖
//! [`DeliveryRecord`] encoding, after a format byte ([`FORMAT`]); a lookup
//! of one sequence decodes only its record. A commit reads each chunk it touches
//! (from sled's cache), merges the batch's records in and writes the chunk
//! back: a window of 256 deliveries is about 5 inserts instead of 256.
//!
//! Stores written before chunks hold one `D` ‖ subscription id ‖ sequence
//! record each. They are read as they are and never rewritten: a chunk's
//! record for a sequence wins over a `D` record for it (chunks are only
//! written later), and a seek or a purge removes both kinds.
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
/// The chunk value's first byte: the format version.
const FORMAT: u8 = 1;
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

/// The entries of one chunk value: (sequence, the record's encoding).
fn entries<'a>(k: &[u8], v: &'a [u8]) -> Result<Vec<(u64, &'a [u8])>, StoreError> {
    let Some((&format, mut rest)) = v.split_first() else {
        return Err(damaged(k, "empty value"));
    };
    if format != FORMAT {
        return Err(damaged(k, &format!("unknown format {format}")));
    }
    let mut out = Vec::new();
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

fn decode_one(k: &[u8], sequence: u64, bytes: &[u8]) -> Result<DeliveryRecord, StoreError> {
    let r = DeliveryRecord::decode(bytes).map_err(|e| damaged(k, &e.to_string()))?;
    if r.sequence != sequence {
        return Err(damaged(
            k,
            &format!("entry for sequence {sequence} holds {}", r.sequence),
        ));
    }
    Ok(r)
}

/// The records of one chunk value.
fn decode(k: &[u8], v: &[u8]) -> Result<Vec<DeliveryRecord>, StoreError> {
    entries(k, v)?
        .into_iter()
        .map(|(seq, bytes)| decode_one(k, seq, bytes))
        .collect()
}

/// The record of one sequence in a chunk value, decoding only that one.
fn find(k: &[u8], v: &[u8], sequence: u64) -> Result<Option<DeliveryRecord>, StoreError> {
    match entries(k, v)?.into_iter().find(|(seq, _)| *seq == sequence) {
        Some((seq, bytes)) => decode_one(k, seq, bytes).map(Some),
        None => Ok(None),
    }
}

fn encode(records: &BTreeMap<u64, DeliveryRecord>) -> Result<Vec<u8>, StoreError> {
    let mut v = Vec::with_capacity(1 + records.len() * 48);
    v.push(FORMAT);
    for (seq, r) in records {
        v.extend_from_slice(&seq.to_le_bytes());
        let len = u32::try_from(r.encoded_len())
            .map_err(|_| StoreError::TooLarge("delivery record".into()))?;
        v.extend_from_slice(&len.to_le_bytes());
        r.encode_raw(&mut v);
    }
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

/// The record of each subscription for one sequence, where there is one.
pub(crate) fn of(
    tree: &sled::Tree,
    subscription_ids: &[u64],
    sequence: u64,
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
        let k = key(LEGACY, &[&be(*id), &be(sequence)]);
        if let Some(v) = tree.get(&k)? {
            out.push(sled_backend::decode::<DeliveryRecord>(&k, &v)?);
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
    b: &mut sled::Batch,
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
    b: &mut sled::Batch,
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
        let mut b = sled::Batch::default();
        let mut stats = CommitStats::default();
        stage(t, deleted, records, &mut b, &mut stats).unwrap();
        t.apply_batch(b).unwrap();
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
        let got = of(&t, &[1, 2, 3], 63).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].state(), DeliveryState::Acked);
        assert_eq!(got[1].subscription_id, 2);
        assert!(of(&t, &[1], 70).unwrap().is_empty());
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
        assert_eq!(of(&t, &[1], 6).unwrap()[0].state(), DeliveryState::Acked);
        assert_eq!(
            of(&t, &[1], 7).unwrap()[0].state(),
            DeliveryState::Delivered
        );
        // A seek removes both kinds from its sequence.
        commit(&t, &[(1, 6)], &[]);
        assert_eq!(seqs(&t, 1, 0), vec![(5, 1)]);
        // A purge removes both kinds, at most `max` keys at a time.
        commit(&t, &[], &[rec(1, 300, DeliveryState::Delivered, 1)]);
        // Budget 64: the old record (1), then not the chunk (64 more).
        let mut b = sled::Batch::default();
        assert_eq!(purge(&t, 1, 64, &mut b).unwrap(), (1, true));
        t.apply_batch(b).unwrap();
        let mut b = sled::Batch::default();
        assert_eq!(purge(&t, 1, 64, &mut b).unwrap(), (1, false));
        t.apply_batch(b).unwrap();
        assert!(from(&t, 1, 0).unwrap().is_empty());
    }

    #[test]
    fn a_damaged_chunk_is_an_error_naming_it_not_a_panic() {
        let (_d, t) = tree();
        commit(&t, &[], &[rec(1, 1, DeliveryState::Delivered, 1)]);
        let k = chunk_key(1, 1);
        let v = t.get(&k).unwrap().unwrap().to_vec();
        let mut wrong_sequence = v.clone();
        wrong_sequence[1] ^= 2;
        for bad in [
            vec![],
            vec![9u8],
            v[..v.len() - 1].to_vec(),
            v[..5].to_vec(),
            wrong_sequence,
        ] {
            t.insert(&k, bad).unwrap();
            let e = from(&t, 1, 0).unwrap_err().to_string();
            assert!(e.contains("delivery chunk"), "{e}");
        }
    }
}
