//! The write-ahead log: one file a commit syncs, holding sled's writes
//! and a copy of the bytes the commit appended to the event log and the
//! audit log; and the digest that proves sled whole at open.
//!
//! A commit's sled writes (every insert and remove, with the values as
//! they were computed) are recorded as one numbered *commit frame* in
//! `<store>/wal/<first number>.wal` (crc-framed as the event log), with
//! the bytes the commit appended to the two logs ([`Appended`]). The
//! frame's `fdatasync` is the commit's only one: once it returns the
//! commit is durable and is acknowledged, and only then are the writes
//! applied to sled, without sled's flush. A thread of its own
//! ([`Stabiliser`]) makes the two logs' active files and sled stable
//! every 500 ms while commits arrive (a log file is synced, too,
//! as the next one starts); a WAL file whose frames are all stable is then
//! deleted (it is a redo log, never evidence; the active file and the last
//! frame are always kept).
//!
//! Sled records the number of the last frame it applied (`M` ‖ `commit`,
//! written after the frame's other writes). At open, [`recover()`] replays
//! the frames after that number into sled, in order: each holds the final
//! value of every key its commit wrote, so replaying it over sled's state
//! before the commit (or over that state with part of the commit already
//! applied) gives sled's state after it. Then every frame's copy of the
//! logs' bytes is compared with the logs (`redo`): bytes a crash kept
//! from the disk (a log cut short, or zeros where it grew) are written
//! back from the copy; bytes that differ are a refusal naming the log's
//! file.
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
//! **Frames of earlier formats.** Before format 3 a commit synced three
//! files at once (the frame, the segment, the audit log), and a frame
//! records only where the commit's bytes end in each ([`Extents`]); at
//! open, a last frame of that kind which sled has not applied and whose
//! files are shorter than that is a commit that was never acknowledged:
//! it is set aside (left as it is, superseded by the next file, which
//! starts at its number).
//!
//! Frame payload: format byte [`FORMAT`], number (`u64` LE), digest
//! (32 bytes), the extents (segment's first sequence, end; audit file's
//! serial, end; `u64` LE each, all ones for none; not in format 1), then
//! (format 3) for each log with an extent, `len u32 LE ‖ the bytes` (they
//! start at end − len), then per write `1 ‖ key len u32 LE ‖ key ‖ value
//! len u32 LE ‖ value` or `2 ‖ key len u32 LE ‖ key`, in key order, one
//! per key.
//!
//! Architecture Invariant: a commit's frame, with its copy of the logs'
//! bytes, is durable before sled holds any of its writes and before the
//! commit is acknowledged; a WAL file is deleted only once the logs'
//! bytes and sled's writes of all its frames are durable in their own
//! files.

mod files;
mod recover;
mod redo;
mod set_aside;
mod spare;
mod stabiliser;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};

use crate::StoreError;
use crate::sled_backend::key;

pub(crate) use files::{Wal, release_deferred};
pub(crate) use recover::{Logs, recover};
pub(crate) use stabiliser::{SledFiles, Stabiliser};

/// The directory of the WAL files, in the store directory.
pub const DIR: &str = "wal";

/// The format byte of a commit frame's payload: with the bytes the commit
/// appended to the two logs.
const FORMAT: u8 = 3;
/// The second format, with [`Extents`] and without the logs' bytes (still
/// read).
const FORMAT_2: u8 = 2;
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

/// Where a commit's bytes end in the event log and in the audit log. In
/// the first two formats, it told at open a frame whose commit was cut
/// short by a crash (its frame durable, the other files not yet) from a
/// whole one by the files' lengths; since [`FORMAT`] 3 the frame holds
/// the bytes themselves ([`Appended`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Extents {
    /// The segment (its first sequence) and the end of the commit's
    /// events in it.
    pub(crate) events: Option<(u64, u64)>,
    /// The audit log file (its serial) and the end of the commit's frames
    /// in it.
    pub(crate) audit: Option<(u64, u64)>,
}

/// The bytes a commit appended to one of the two logs: the file (the
/// segment's first sequence, or the audit file's serial), where they
/// start, and the bytes (the event log hands over its batch buffer),
/// which the commit frame carries.
#[derive(Debug, Default)]
pub(crate) struct LogBytes {
    pub(crate) file: u64,
    pub(crate) offset: u64,
    pub(crate) bytes: Vec<u8>,
}

impl LogBytes {
    /// Empties it, keeping its allocation.
    pub(crate) fn clear(&mut self) {
        self.file = 0;
        self.offset = 0;
        self.bytes.clear();
    }

    fn extent(&self) -> Option<(u64, u64)> {
        (!self.bytes.is_empty()).then(|| (self.file, self.offset + self.bytes.len() as u64))
    }
}

/// The frames a commit appended to the audit log: the file (its serial),
/// where they start, and each frame's header and chunk, handed over by
/// the audit log rather than copied, which the commit frame carries.
#[derive(Debug, Default)]
pub(crate) struct AuditBytes {
    pub(crate) file: u64,
    pub(crate) offset: u64,
    pub(crate) frames: Vec<([u8; 8], Vec<u8>)>,
}

impl AuditBytes {
    /// Empties it (the chunks are freed).
    pub(crate) fn clear(&mut self) {
        self.file = 0;
        self.offset = 0;
        self.frames.clear();
    }

    /// The frames' bytes in all.
    pub(crate) fn len(&self) -> usize {
        self.frames.iter().map(|(h, c)| h.len() + c.len()).sum()
    }

    fn extent(&self) -> Option<(u64, u64)> {
        (!self.frames.is_empty()).then(|| (self.file, self.offset + self.len() as u64))
    }
}

/// What a commit appended to the event log and to the audit log (either
/// may be empty): its frame carries both, so that the frame's one
/// `fdatasync` makes the whole commit durable.
#[derive(Debug, Default)]
pub(crate) struct Appended {
    pub(crate) events: LogBytes,
    pub(crate) audit: AuditBytes,
}

impl Appended {
    /// Empties both, keeping their allocations.
    pub(crate) fn clear(&mut self) {
        self.events.clear();
        self.audit.clear();
    }

    /// Where the commit's bytes end in each log.
    pub(crate) fn extents(&self) -> Extents {
        Extents {
            events: self.events.extent(),
            audit: self.audit.extent(),
        }
    }
}

/// A region of a frame: bytes a commit appended to a log, as the frame
/// holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Region<'a> {
    /// The log: the event log or the audit log.
    pub(crate) log: Log,
    pub(crate) file: u64,
    pub(crate) offset: u64,
    pub(crate) bytes: &'a [u8],
}

/// One of the two logs a frame can carry bytes of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Log {
    Events,
    Audit,
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

/// A commit frame's payload in the pieces it is written from (one
/// `writev`): the logs' bytes are written from where the commit holds
/// them, not copied into a frame buffer.
#[derive(Debug)]
pub(crate) struct Pieces<'a> {
    /// Format, number, digest, extents, and the event bytes' length.
    head: &'a [u8],
    events: &'a [u8],
    /// The audit bytes' length (written only with audit bytes).
    audit_len: [u8; 4],
    /// The audit log's frames: header, chunk.
    audit: &'a [([u8; 8], Vec<u8>)],
    /// The sled writes.
    writes: &'a [u8],
}

impl Pieces<'_> {
    /// The payload's pieces, in order, empty ones left out.
    pub(crate) fn slices(&self) -> impl Iterator<Item = &[u8]> {
        let audit_len: &[u8] = if self.audit.is_empty() {
            &[]
        } else {
            &self.audit_len
        };
        [self.head, self.events, audit_len]
            .into_iter()
            .chain(
                self.audit
                    .iter()
                    .flat_map(|(h, c)| [h.as_slice(), c.as_slice()]),
            )
            .chain(std::iter::once(self.writes))
            .filter(|s| !s.is_empty())
    }
}

/// Encodes frame `number` with `digest`, the logs' bytes `appended` and
/// `writes` as [`Pieces`], the encoded parts in `scratch`.
pub(crate) fn encode_pieces<'a>(
    number: u64,
    digest: Digest,
    appended: &'a Appended,
    writes: &Writes,
    scratch: &'a mut Vec<u8>,
) -> Pieces<'a> {
    scratch.clear();
    scratch.push(FORMAT);
    scratch.extend_from_slice(&number.to_le_bytes());
    scratch.extend_from_slice(&digest.to_bytes());
    let extents = appended.extents();
    for extent in [extents.events, extents.audit] {
        let (a, b) = extent.unwrap_or((NONE, NONE));
        scratch.extend_from_slice(&a.to_le_bytes());
        scratch.extend_from_slice(&b.to_le_bytes());
    }
    let events = appended.events.bytes.as_slice();
    if !events.is_empty() {
        scratch.extend_from_slice(&(events.len() as u32).to_le_bytes());
    }
    let head = scratch.len();
    for (k, v) in writes.iter() {
        scratch.push(if v.is_some() { INSERT } else { REMOVE });
        push_bytes(scratch, k);
        if let Some(v) = v {
            push_bytes(scratch, v);
        }
    }
    let (head, writes) = scratch.split_at(head);
    Pieces {
        head,
        events,
        // Sled's records and a commit's log bytes are far below 4 GiB (a
        // frame is refused by the framing before then).
        audit_len: (appended.audit.len() as u32).to_le_bytes(),
        audit: &appended.audit.frames,
        writes,
    }
}

/// Encodes frame `number` with `digest`, the logs' bytes `appended` and
/// `writes` into `out`, as one buffer: the bytes [`encode_pieces`]' pieces
/// write.
#[cfg(test)]
pub(crate) fn encode(
    number: u64,
    digest: Digest,
    appended: &Appended,
    writes: &Writes,
    out: &mut Vec<u8>,
) {
    let mut scratch = Vec::new();
    for piece in encode_pieces(number, digest, appended, writes, &mut scratch).slices() {
        out.extend_from_slice(piece);
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
        [FORMAT | FORMAT_2 | FORMAT_1, rest @ ..] => {
            Some(u64::from_le_bytes(rest.get(..8)?.try_into().ok()?))
        }
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

/// The logs' bytes a frame carries (none before [`FORMAT`] 3), and the
/// rest of the payload after them: `Err(what is wrong)`.
pub(crate) fn regions_of(payload: &[u8]) -> Result<(Vec<Region<'_>>, &[u8]), String> {
    if payload.first() == Some(&FORMAT_1) {
        return Ok((
            Vec::new(),
            payload.get(PAYLOAD_HEADER_1..).ok_or("a frame cut short")?,
        ));
    }
    let extents = extents_of(payload)?;
    let mut rest = payload.get(PAYLOAD_HEADER..).ok_or("a frame cut short")?;
    let mut regions = Vec::new();
    if payload.first() != Some(&FORMAT) {
        return Ok((regions, rest));
    }
    for (log, extent) in [(Log::Events, extents.events), (Log::Audit, extents.audit)] {
        let Some((file, end)) = extent else {
            continue;
        };
        let (bytes, tail) = take_bytes(rest).ok_or("a log's bytes cut short")?;
        let offset = end
            .checked_sub(bytes.len() as u64)
            .ok_or("a log's bytes longer than where they end")?;
        regions.push(Region {
            log,
            file,
            offset,
            bytes,
        });
        rest = tail;
    }
    Ok((regions, rest))
}

/// Decodes a frame's payload: `Err(what is wrong)`.
pub(crate) fn decode(payload: &[u8]) -> Result<Frame, String> {
    let number = number_of(payload).ok_or("not a commit frame of a known format")?;
    let (_, mut rest) = regions_of(payload)?;
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

/// Whether a frame carries its commit's log bytes (format 3 on): if not,
/// a crash could leave it durable and them not.
pub(crate) fn carries_log_bytes(payload: &[u8]) -> bool {
    payload.first() == Some(&FORMAT)
}

fn take_bytes(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let body = bytes.get(4..4usize.checked_add(len)?)?;
    Some((body, &bytes[4 + len..]))
}
