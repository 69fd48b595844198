//! The write-ahead log of sled's writes, and the digest that proves sled
//! whole at open.
//!
//! A commit's sled writes (every insert and remove, with the values as
//! they were computed) are recorded as one numbered *commit frame* in
//! `<store>/wal/<first number>.wal` (crc-framed as the event log), made
//! durable together with the commit's events and audit entries (the three
//! files' `fdatasync`s run at once, two on sync threads of their own), and
//! only then applied to sled,
//! without sled's flush. A thread of
//! its own ([`Stabiliser`]) makes sled stable (its flush, `fdatasync` of
//! its files) about once a second while commits arrive; a WAL file whose
//! frames sled holds stably is then deleted (it is a redo log, never
//! evidence; the active file and the last frame are always kept).
//!
//! Sled records the number of the last frame it applied (`M` ‖ `commit`,
//! written after the frame's other writes). At open, [`recover`] replays
//! the frames after that number into sled, in order: each holds the final
//! value of every key its commit wrote, so replaying it over sled's state
//! before the commit (or over that state with part of the commit already
//! applied) gives sled's state after it.
//!
//! **The digest.** Sled's recovery from a damaged byte is not a prefix of
//! its writes: it can keep a current `M commit` and an older version of
//! another record (the reason an earlier attempt at this log was reverted,
//! `docs/BENCHMARKS.md`). So each frame also carries [`Digest`], the sum
//! modulo 2^256 of SHA-256(key length ‖ key ‖ value) over every record of
//! sled's tree after the commit, kept up to date per write from the old
//! and new values. At open, after the replay, sled's tree is read whole
//! and its digest compared with the last frame's: any record missing,
//! extra or of another value is a refusal naming sled's files, and the
//! open's guards put back every byte sled's recovery and the replay wrote.
//! It is a check against damage, not against an adversary who can write
//! the store (who could write a matching digest).
//!
//! **A commit cut short.** The three syncs run at once, so a crash (a power
//! loss; a killed process loses nothing written) can leave the frame on
//! disk and the commit's events or audit entries not. The frame records
//! where the commit's bytes end in the event log's segment and in the audit
//! log's file ([`Extents`]); at open, a last frame sled has not applied
//! whose files are shorter than that is a commit that was never
//! acknowledged: it is set aside (left as it is, superseded by the next
//! file, which starts at its number). Files long enough but damaged are
//! the event log's and audit log's own checks' to refuse.
//!
//! Frame payload: format byte [`FORMAT`], number (`u64` LE), digest
//! (32 bytes), the extents (segment's first sequence, end; audit file's
//! serial, end; `u64` LE each, all ones for none; not in format 1), then
//! per write `1 ‖ key len u32 LE ‖ key ‖ value len u32 LE
//! ‖ value` or `2 ‖ key len u32 LE ‖ key`, in key order, one per key.
//!
//! Architecture Invariant: a commit's frame, events and audit entries are
//! durable before sled holds any of its writes and before the commit is
//! acknowledged; a frame on disk whose extents are on disk means its whole
//! commit is.

mod files;
mod stabiliser;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};

use crate::StoreError;
use crate::sled_backend::key;

pub(crate) use files::{Wal, recover};
pub(crate) use stabiliser::{SledFiles, Stabiliser};

/// The directory of the WAL files, in the store directory.
pub const DIR: &str = "wal";

/// The format byte of a commit frame's payload.
const FORMAT: u8 = 2;
/// The first format, without [`Extents`] (still read).
const FORMAT_1: u8 = 1;
const INSERT: u8 = 1;
const REMOVE: u8 = 2;
/// Format byte, number, digest.
const PAYLOAD_HEADER_1: usize = 1 + 8 + 32;
/// Format byte, number, digest, extents.
const PAYLOAD_HEADER: usize = PAYLOAD_HEADER_1 + 32;
/// An extent that is not there.
const NONE: u64 = u64::MAX;

/// Where a commit's bytes end in the event log and in the audit log, so
/// that at open a frame whose commit was cut short by a crash (its frame
/// durable, the other files not yet: the three are synced at once) is
/// told from a whole one by the files' lengths.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Extents {
    /// The segment (its first sequence) and the end of the commit's
    /// events in it.
    pub(crate) events: Option<(u64, u64)>,
    /// The audit log file (its serial) and the end of the commit's frames
    /// in it.
    pub(crate) audit: Option<(u64, u64)>,
}

/// Sled's record of the last commit frame it applied.
pub(crate) fn applied_key() -> Vec<u8> {
    key(b'M', &[b"commit"])
}

/// The sum modulo 2^256 of SHA-256(key length ‖ key ‖ value) over a set of
/// records: adding or removing one record costs one hash, and the order
/// in which records were written does not matter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Digest([u64; 4]);

impl Digest {
    fn record(k: &[u8], v: &[u8]) -> [u64; 4] {
        let mut h = Sha256::new();
        // Keys are short (sled's keys here are under 300 bytes).
        h.update((k.len() as u32).to_le_bytes());
        h.update(k);
        h.update(v);
        let out = h.finalize();
        let mut limbs = [0u64; 4];
        for (limb, bytes) in limbs.iter_mut().zip(out.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(bytes);
            *limb = u64::from_le_bytes(b);
        }
        limbs
    }

    /// Adds record `(k, v)`.
    pub(crate) fn add(&mut self, k: &[u8], v: &[u8]) {
        self.add_limbs(Self::record(k, v));
    }

    /// Removes record `(k, v)` (added earlier): adds its negation mod
    /// 2^256 (every bit flipped, plus one).
    pub(crate) fn sub(&mut self, k: &[u8], v: &[u8]) {
        self.add_limbs(Self::record(k, v).map(|l| !l));
        self.add_limbs([1, 0, 0, 0]);
    }

    /// Adds a 256-bit number (little-endian limbs), mod 2^256.
    fn add_limbs(&mut self, r: [u64; 4]) {
        let mut carry = false;
        for (a, b) in self.0.iter_mut().zip(r) {
            let (s, c1) = a.overflowing_add(b);
            let (s, c2) = s.overflowing_add(u64::from(carry));
            *a = s;
            carry = c1 || c2;
        }
    }

    /// The digest of every record in `tree`.
    pub(crate) fn of_tree(tree: &sled::Tree) -> Result<Digest, StoreError> {
        let mut d = Digest::default();
        for item in tree.iter() {
            let (k, v) = item?;
            d.add(&k, &v);
        }
        Ok(d)
    }

    fn to_bytes(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (chunk, limb) in out.chunks_exact_mut(8).zip(self.0) {
            chunk.copy_from_slice(&limb.to_le_bytes());
        }
        out
    }

    fn from_bytes(bytes: &[u8]) -> Option<Digest> {
        let mut limbs = [0u64; 4];
        for (limb, chunk) in limbs.iter_mut().zip(bytes.get(..32)?.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            *limb = u64::from_le_bytes(b);
        }
        Some(Digest(limbs))
    }

    /// A short hex form for messages.
    pub(crate) fn short(&self) -> String {
        self.to_bytes()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// One commit's sled writes, the last write of each key winning (as in
/// sled's own batch).
#[derive(Debug, Default)]
pub(crate) struct Writes {
    map: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Writes {
    /// Sets `k` to `v`.
    pub(crate) fn insert(&mut self, k: impl AsRef<[u8]>, v: impl Into<Vec<u8>>) {
        self.map.insert(k.as_ref().to_vec(), Some(v.into()));
    }

    /// Removes `k`.
    pub(crate) fn remove(&mut self, k: impl AsRef<[u8]>) {
        self.map.insert(k.as_ref().to_vec(), None);
    }

    /// A sled batch of the writes (for writes made at open, outside
    /// commits).
    pub(crate) fn into_sled_batch(self) -> sled::Batch {
        let mut b = sled::Batch::default();
        for (k, v) in self.map {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        b
    }

    /// The writes, in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        self.map.iter().map(|(k, v)| (k.as_slice(), v.as_deref()))
    }
}

/// A commit frame, decoded.
#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) number: u64,
    pub(crate) writes: Writes,
}

/// Encodes frame `number` with `digest`, `extents` and `writes` into
/// `out`.
pub(crate) fn encode(
    number: u64,
    digest: Digest,
    extents: Extents,
    writes: &Writes,
    out: &mut Vec<u8>,
) {
    out.push(FORMAT);
    out.extend_from_slice(&number.to_le_bytes());
    out.extend_from_slice(&digest.to_bytes());
    for extent in [extents.events, extents.audit] {
        let (a, b) = extent.unwrap_or((NONE, NONE));
        out.extend_from_slice(&a.to_le_bytes());
        out.extend_from_slice(&b.to_le_bytes());
    }
    for (k, v) in writes.iter() {
        out.push(if v.is_some() { INSERT } else { REMOVE });
        push_bytes(out, k);
        if let Some(v) = v {
            push_bytes(out, v);
        }
    }
}

fn push_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Sled's records here are far below 4 GiB (a frame is refused by the
    // framing before then).
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The number of a frame's payload, without decoding the rest.
pub(crate) fn number_of(payload: &[u8]) -> Option<u64> {
    match payload {
        [FORMAT | FORMAT_1, rest @ ..] => Some(u64::from_le_bytes(rest.get(..8)?.try_into().ok()?)),
        _ => None,
    }
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// A frame's extents (none in the first format).
pub(crate) fn extents_of(payload: &[u8]) -> Result<Extents, String> {
    if payload.first() == Some(&FORMAT_1) {
        return Ok(Extents::default());
    }
    let at = PAYLOAD_HEADER_1;
    let field = |i: usize| u64_at(payload, at + 8 * i).ok_or("a frame cut short");
    let extent = |a: u64, b: u64| (a != NONE).then_some((a, b));
    Ok(Extents {
        events: extent(field(0)?, field(1)?),
        audit: extent(field(2)?, field(3)?),
    })
}

/// Decodes a frame's payload: `Err(what is wrong)`.
pub(crate) fn decode(payload: &[u8]) -> Result<Frame, String> {
    let number = number_of(payload).ok_or("not a commit frame of a known format")?;
    let header = if payload.first() == Some(&FORMAT_1) {
        PAYLOAD_HEADER_1
    } else {
        PAYLOAD_HEADER
    };
    let mut rest = payload.get(header..).ok_or("a frame cut short")?;
    let mut writes = Writes::default();
    while let [op, tail @ ..] = rest {
        let (k, tail) = take_bytes(tail).ok_or("a write cut short")?;
        match *op {
            INSERT => {
                let (v, tail) = take_bytes(tail).ok_or("a write cut short")?;
                writes.insert(k, v.to_vec());
                rest = tail;
            }
            REMOVE => {
                writes.remove(k);
                rest = tail;
            }
            other => return Err(format!("a write of unknown kind {other}")),
        }
    }
    Ok(Frame { number, writes })
}

fn take_bytes(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let body = bytes.get(4..4usize.checked_add(len)?)?;
    Some((body, &bytes[4 + len..]))
}
