//! `caseshare check`'s comparison of the audit index with the entries.

use std::collections::BTreeMap;

use caseshare_core::time::Micros;

use super::{
    BUCKETED, RECENT, TIME, TIME_BLOCK, bucket, covered, decode_table, epoch, read_time_value,
    split_key, term_prefix,
};
use crate::StoreError;
use crate::audit_query::{AuditTerm, decode_leaf, recorded_at};
use crate::sled_backend::{be, read_be};

/// Entries read at a time.
const WINDOW: u64 = 8_192;

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
pub(crate) fn verify(
    tree: &sled::Tree,
    log: &crate::audit_log::AuditLog,
    size: u64,
) -> Result<Verdict, StoreError> {
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
        let to = n.min(at + WINDOW);
        for (index, leaf) in (at..).zip(crate::sled_open::audit_entries(tree, log, at, to)?) {
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
    let (mut beyond, mut misplaced) = (0u64, 0u64);
    // Complete epochs by bucket, then the records of single commits.
    for (prefix, bucketed) in [(BUCKETED, true), (RECENT, false)] {
        for item in tree.scan_prefix([prefix]) {
            let (k, v) = item?;
            let (ep, second) = split_key(&k)?;
            for (term, indexes) in decode_table(&log.resolve_one(v)?)? {
                if bucketed && bucket(&term) != second {
                    misplaced += indexes.len() as u64;
                }
                for index in indexes {
                    if index >= n {
                        beyond += 1;
                    } else {
                        stored.add(&term, index);
                    }
                    if epoch(index) != ep {
                        misplaced += 1;
                    }
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
    let mismatch = if misplaced > 0 {
        Some(format!(
            "{misplaced} postings are filed under another epoch or bucket than their own"
        ))
    } else if beyond > 0 {
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
