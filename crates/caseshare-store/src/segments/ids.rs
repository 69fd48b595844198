//! The event log's idempotency index: which sequence an agency's
//! `event_id` was published as, for every retained event.
//!
//! - Ids of the last (active) segment are in a hash map in memory.
//! - When a segment is sealed its ids are written, sorted, to
//!   `<first sequence>.ids` beside it (16 bytes an event: keyed hash, then
//!   sequence, little-endian), made durable, and dropped from the map; in
//!   memory stays only a Bloom filter per sealed segment (16 bits an event).
//!   A lookup asks each sealed segment's filter and binary-searches the file
//!   of the few that say "maybe".
//!
//! An `.ids` file starts with a 32-byte header: `CSIDS\0\0\x02`, the
//! entry count (u64 LE), a fingerprint of the key it was hashed with (u64
//! LE), the CRC-32 of the header's first 24 bytes and of every entry (u32
//! LE), 4 zero bytes. A file that is missing, of the older headerless
//! format, hashed with another key, or damaged is derived data: it is
//! rebuilt from its segment at open (a damaged one set aside first), so a
//! miss is never wrong.
//!
//! So memory grows by ~1.25 bytes per retained event, not ~30. The hash is
//! keyed (SHA-256 of a per-store secret in `ids.key`, the agency and the id,
//! truncated to 64 bits) so an agency cannot choose ids that collide; a hit
//! is always confirmed against the stored event by the caller.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::StoreError;

const ENTRY: usize = 16;
/// The header of an `.ids` file.
const IDS_HEADER: usize = 32;
const IDS_MAGIC: &[u8; 8] = b"CSIDS\0\0\x02";
pub(super) const KEY_FILE: &str = "ids.key";

/// The keyed hash of an (agency, event id).
#[derive(Debug, Clone)]
pub(super) struct IdHasher {
    key: [u8; 32],
}

impl IdHasher {
    /// Reads the store's key from `dir`: `Ok(None)` if there is none,
    /// `Err(why)` if the file is not a key.
    pub(super) fn read(dir: &Path) -> Result<Result<Option<Self>, String>, StoreError> {
        let path = dir.join(KEY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(match <[u8; 32]>::try_from(bytes.as_slice()) {
                Ok(key) => Ok(Some(IdHasher { key })),
                Err(_) => Err(format!("expected 32 bytes, found {}", bytes.len())),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ok(None)),
            Err(e) => Err(e.into()),
        }
    }

    /// A new random key (not yet written).
    pub(super) fn generate() -> Self {
        IdHasher {
            key: rand::random(),
        }
    }

    /// Writes the key to `dir` (mode 0600, by rename).
    pub(super) fn write(&self, dir: &Path) -> Result<(), StoreError> {
        crate::recovery::write_atomic(&dir.join(KEY_FILE), &self.key, 0o600)
    }

    /// Which key an `.ids` file was hashed with.
    pub(super) fn fingerprint(&self) -> u64 {
        let d = Sha256::digest([b"caseshare ids key fingerprint".as_slice(), &self.key].concat());
        u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
    }

    pub(super) fn hash(&self, agency: &str, event_id: &str) -> u64 {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update((agency.len() as u64).to_le_bytes());
        h.update(agency.as_bytes());
        h.update(event_id.as_bytes());
        let d = h.finalize();
        u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
    }
}

/// A Bloom filter over 64-bit hashes: 16 bits and 7 probes an entry,
/// ~0.15 % false positives. Every publish asks every sealed segment's
/// filter, and each false positive costs a binary search of that
/// segment's file; at 10 bits an entry (~1 %) a log of a hundred
/// segments searched a file on most publishes.
///
/// *Blocked*: an entry's 7 bits all lie in one 64-byte block (one cache
/// line), chosen by the hash's high bits, so a lookup costs one memory
/// access per segment rather than one per probe (the filters of a long
/// log do not fit in a core's cache). The filter is built in memory from
/// the `.ids` file, never stored, so its layout is free to change.
#[derive(Debug, Clone)]
pub(super) struct Bloom {
    blocks: Vec<Block>,
}

/// One cache line of a [`Bloom`] filter.
#[derive(Debug, Clone, Copy, Default)]
#[repr(align(64))]
struct Block([u64; 8]);

impl Bloom {
    const PROBES: u32 = 7;
    const BITS_PER_ENTRY: usize = 16;

    fn new(entries: usize) -> Self {
        let blocks = (entries * Self::BITS_PER_ENTRY).div_ceil(512).max(1);
        Bloom {
            blocks: vec![Block::default(); blocks],
        }
    }

    /// The block of `h` (its high bits, by multiply-shift) and its 7 bit
    /// positions in the block (9 bits each of `h` remixed, so that they do
    /// not follow the block's choice).
    fn locate(&self, h: u64) -> (usize, impl Iterator<Item = usize> + use<>) {
        let block = ((u128::from(h) * self.blocks.len() as u128) >> 64) as usize;
        let mixed = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let bits = (0..Self::PROBES).map(move |i| ((mixed >> (9 * i)) & 511) as usize);
        (block, bits)
    }

    fn insert(&mut self, h: u64) {
        let (block, bits) = self.locate(h);
        if let Some(Block(words)) = self.blocks.get_mut(block) {
            for bit in bits {
                words[bit / 64] |= 1 << (bit % 64);
            }
        }
    }

    fn may_contain(&self, h: u64) -> bool {
        let (block, mut bits) = self.locate(h);
        self.blocks
            .get(block)
            .is_some_and(|Block(words)| bits.all(|bit| words[bit / 64] & (1 << (bit % 64)) != 0))
    }
}

/// A sealed segment's ids: the filter in memory, the sorted file on disk.
#[derive(Debug)]
pub(super) struct Sealed {
    path: PathBuf,
    file: Arc<File>,
    entries: u64,
    bloom: Bloom,
}

impl Sealed {
    fn entry(&self, i: u64) -> Result<(u64, u64), StoreError> {
        let mut buf = [0u8; ENTRY];
        self.file
            .read_exact_at(&mut buf, (IDS_HEADER + i as usize * ENTRY) as u64)?;
        let (h, s) = buf.split_at(8);
        let word = |b: &[u8]| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        };
        Ok((word(h), word(s)))
    }

    /// Every sequence stored under `h` (binary search, then the run).
    fn lookup(&self, h: u64) -> Result<Vec<u64>, StoreError> {
        let (mut lo, mut hi) = (0u64, self.entries);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.entry(mid)?.0 < h {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let mut out = Vec::new();
        let mut i = lo;
        while i < self.entries {
            let (eh, seq) = self.entry(i)?;
            if eh != h {
                break;
            }
            out.push(seq);
            i += 1;
        }
        Ok(out)
    }
}

/// Hashes a map key that is already a keyed hash ([`IdHasher::hash`]):
/// its bits are uniform and no agency can choose them without the store's
/// key, so hashing them again (SipHash, per insert on the commit path)
/// would only cost time.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct KeyedHash(u64);

impl std::hash::Hasher for KeyedHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed here; anything else is folded in.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// A map keyed by [`IdHasher::hash`] values.
type ByHash<V> = HashMap<u64, V, std::hash::BuildHasherDefault<KeyedHash>>;

/// The index.
#[derive(Debug)]
pub(super) struct IdIndex {
    dir: PathBuf,
    /// Ids not yet in a sealed file: hash → sequence.
    open: ByHash<u64>,
    /// Further sequences sharing a hash with one in `open`.
    collided: ByHash<Vec<u64>>,
    /// Sealed segments by first sequence.
    sealed: BTreeMap<u64, Sealed>,
}

pub(super) fn ids_name(first: u64) -> String {
    format!("{first:020}.ids")
}

/// The bytes of an `.ids` file holding `entries` (sorted).
fn ids_file_bytes(entries: &[(u64, u64)], key_fingerprint: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(IDS_HEADER + entries.len() * ENTRY);
    bytes.extend_from_slice(IDS_MAGIC);
    bytes.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&key_fingerprint.to_le_bytes());
    bytes.extend_from_slice(&[0; 8]);
    for (h, s) in entries {
        bytes.extend_from_slice(&h.to_le_bytes());
        bytes.extend_from_slice(&s.to_le_bytes());
    }
    let crc = ids_crc(&bytes);
    bytes[24..28].copy_from_slice(&crc.to_le_bytes());
    bytes
}

fn ids_crc(bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&bytes[..24]);
    h.update(&bytes[IDS_HEADER..]);
    h.finalize()
}

/// Writes a sealed segment's ids, sorted, to `<first>.ids` (durably, by
/// rename) and builds its filter.
pub(super) fn write_sealed(
    dir: &Path,
    first: u64,
    mut entries: Vec<(u64, u64)>,
    key_fingerprint: u64,
) -> Result<Sealed, StoreError> {
    entries.sort_unstable();
    let mut bloom = Bloom::new(entries.len());
    for (h, _) in &entries {
        bloom.insert(*h);
    }
    let path = dir.join(ids_name(first));
    crate::recovery::write_atomic(&path, &ids_file_bytes(&entries, key_fingerprint), 0o644)?;
    Ok(Sealed {
        file: Arc::new(File::open(&path)?),
        path,
        entries: entries.len() as u64,
        bloom,
    })
}

/// What an `.ids` file on disk holds.
#[derive(Debug)]
pub(super) enum IdsFile {
    /// Whole, for the expected count and key: loaded.
    Good(Sealed),
    /// Absent (a crash between sealing and writing it).
    Missing,
    /// Whole but not usable as is: the older headerless format, or hashed
    /// with another key. Rebuilt in place.
    Stale(String),
    /// Damaged: set aside and rebuilt.
    Damaged {
        /// Where the first problem is.
        offset: u64,
        /// What it is.
        why: String,
    },
}

/// Checks (read-only) the `.ids` file of the sealed segment `first` that
/// holds `count` events, and loads it if it is whole.
pub(super) fn check_sealed(
    dir: &Path,
    first: u64,
    count: u64,
    key_fingerprint: u64,
) -> Result<IdsFile, StoreError> {
    let path = dir.join(ids_name(first));
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(IdsFile::Missing),
        Err(e) => return Err(e.into()),
    };
    let damaged = |offset: u64, why: String| Ok(IdsFile::Damaged { offset, why });
    if bytes.len() < IDS_HEADER || &bytes[..8] != IDS_MAGIC {
        if bytes.len() as u64 == count * ENTRY as u64 && bytes.len() >= ENTRY {
            return Ok(IdsFile::Stale("the older format without a checksum".into()));
        }
        return damaged(0, "no valid header".into());
    }
    let word = |at: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(a)
    };
    let stored_crc = u32::from_le_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]);
    if ids_crc(&bytes) != stored_crc {
        return damaged(24, "its checksum does not match its contents".into());
    }
    let entries = word(8);
    if (bytes.len() - IDS_HEADER) as u64 != entries * ENTRY as u64 {
        return damaged(
            8,
            format!("it says {entries} entries but holds {} bytes", bytes.len()),
        );
    }
    if entries != count {
        return damaged(
            8,
            format!("{entries} entries for a segment of {count} events"),
        );
    }
    if word(16) != key_fingerprint {
        return Ok(IdsFile::Stale("hashed with another ids.key".into()));
    }
    let mut bloom = Bloom::new(usize::try_from(count).unwrap_or(0));
    let mut last = 0u64;
    for (i, chunk) in bytes[IDS_HEADER..].chunks_exact(ENTRY).enumerate() {
        let mut h = [0u8; 8];
        h.copy_from_slice(&chunk[..8]);
        let h = u64::from_le_bytes(h);
        if h < last {
            return damaged(
                (IDS_HEADER + i * ENTRY) as u64,
                "entries out of order".into(),
            );
        }
        last = h;
        bloom.insert(h);
    }
    Ok(IdsFile::Good(Sealed {
        file: Arc::new(File::open(&path)?),
        path,
        entries: count,
        bloom,
    }))
}

impl IdIndex {
    pub(super) fn new(dir: &Path) -> Self {
        IdIndex {
            dir: dir.to_path_buf(),
            open: ByHash::default(),
            collided: ByHash::default(),
            sealed: BTreeMap::new(),
        }
    }

    /// Adds an id of the open (last) segment.
    pub(super) fn add(&mut self, h: u64, sequence: u64) {
        match self.open.entry(h) {
            std::collections::hash_map::Entry::Occupied(first) if *first.get() != sequence => {
                self.collided.entry(h).or_default().push(sequence);
            }
            std::collections::hash_map::Entry::Occupied(_) => {}
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(sequence);
            }
        }
    }

    /// Every sequence stored under `h`; the caller confirms each.
    pub(super) fn sequences_for(&self, h: u64) -> Result<Vec<u64>, StoreError> {
        let mut out: Vec<u64> = self.open.get(&h).copied().into_iter().collect();
        if let Some(more) = self.collided.get(&h) {
            out.extend(more);
        }
        for s in self.sealed.values().rev() {
            if s.bloom.may_contain(h) {
                out.extend(s.lookup(h)?);
            }
        }
        Ok(out)
    }

    /// The ids of `[first, next)` held in memory (to seal that segment).
    pub(super) fn entries_in(&self, first: u64, next: u64) -> Vec<(u64, u64)> {
        let inside = |s: &u64| (first..next).contains(s);
        let mut out: Vec<(u64, u64)> = self
            .open
            .iter()
            .filter(|(_, s)| inside(s))
            .map(|(h, s)| (*h, *s))
            .collect();
        for (h, v) in &self.collided {
            out.extend(v.iter().filter(|s| inside(s)).map(|s| (*h, *s)));
        }
        out
    }

    /// Installs a sealed segment's ids and drops them from memory.
    pub(super) fn install(&mut self, first: u64, next: u64, sealed: Sealed) {
        let inside = |s: &u64| (first..next).contains(s);
        self.open.retain(|_, s| !inside(s));
        self.collided.retain(|_, v| {
            v.retain(|s| !inside(s));
            !v.is_empty()
        });
        self.sealed.insert(first, sealed);
    }

    /// Seals `[first, next)` with the ids held in memory (for tests; the
    /// log writes the file outside its lock with [`write_sealed`]).
    #[cfg(test)]
    fn seal(&mut self, first: u64, next: u64) -> Result<(), StoreError> {
        let sealed = write_sealed(&self.dir, first, self.entries_in(first, next), 7)?;
        self.install(first, next, sealed);
        Ok(())
    }

    /// Retention: forgets ids below `first` held in memory, and deletes
    /// the ids files of the segments `removed` (by first sequence).
    pub(super) fn forget_below(&mut self, first: u64, removed: &[u64]) -> Result<(), StoreError> {
        self.open.retain(|_, s| *s >= first);
        self.collided.retain(|_, v| {
            v.retain(|s| *s >= first);
            !v.is_empty()
        });
        for f in removed {
            if let Some(s) = self.sealed.remove(f) {
                std::fs::remove_file(&s.path)?;
            }
        }
        Ok(())
    }

    /// Deletes ids files whose segment is gone (e.g. cut at open).
    pub(super) fn remove_orphans(&self, segments: &[u64]) -> Result<(), StoreError> {
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let first = name
                .strip_suffix(".ids")
                .or_else(|| name.strip_suffix(".ids.tmp"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(f) = first
                && (name.ends_with(".tmp") || !segments.contains(&f))
            {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// Sealed segments (for tests).
    pub(super) fn sealed_count(&self) -> usize {
        self.sealed.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bloom_has_no_false_negatives_and_few_false_positives() {
        let mut b = Bloom::new(10_000);
        let hasher = IdHasher { key: [7; 32] };
        for i in 0..10_000 {
            b.insert(hasher.hash("a", &i.to_string()));
        }
        for i in 0..10_000 {
            assert!(b.may_contain(hasher.hash("a", &i.to_string())));
        }
        let false_positives = (10_000..30_000)
            .filter(|i| b.may_contain(hasher.hash("a", &i.to_string())))
            .count();
        // ~0.15 % expected (31 of 20,000 with this key).
        eprintln!("false positives: {false_positives} of 20,000");
        assert!(false_positives < 60, "{false_positives} of 20,000");
    }

    #[test]
    fn the_hash_is_keyed_and_separates_agency_from_id() {
        let a = IdHasher { key: [1; 32] };
        let b = IdHasher { key: [2; 32] };
        assert_ne!(a.hash("x", "1"), b.hash("x", "1"));
        assert_eq!(a.hash("x", "1"), a.hash("x", "1"));
        assert_ne!(a.hash("ab", "c"), a.hash("a", "bc"));
    }

    #[test]
    fn sealed_ids_are_found_through_the_file_and_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let mut ix = IdIndex::new(dir.path());
        for s in 1..=100u64 {
            ix.add(s * 7919 % 1000, s);
        }
        // Two ids sharing a hash.
        ix.add(7919 % 1000, 101);
        ix.seal(1, 102).unwrap();
        assert!(ix.open.is_empty() && ix.collided.is_empty());
        assert_eq!(ix.sequences_for(7919 % 1000).unwrap(), [1, 101]);
        assert_eq!(ix.sequences_for(2 * 7919 % 1000).unwrap(), [2]);
        let mut again = IdIndex::new(dir.path());
        let IdsFile::Good(sealed) = check_sealed(dir.path(), 1, 101, 7).unwrap() else {
            panic!("not loaded")
        };
        again.install(1, 102, sealed);
        assert!(matches!(
            check_sealed(dir.path(), 1, 100, 7).unwrap(),
            IdsFile::Damaged { .. }
        ));
        assert!(matches!(
            check_sealed(dir.path(), 1, 101, 8).unwrap(),
            IdsFile::Stale(_)
        ));
        assert_eq!(again.sequences_for(50 * 7919 % 1000).unwrap(), [50]);
        again.forget_below(200, &[1]).unwrap();
        assert_eq!(again.sealed_count(), 0);
        assert!(!dir.path().join(ids_name(1)).exists());
    }
}
