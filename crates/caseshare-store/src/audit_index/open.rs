//! The audit index at open: decide (read-only) whether it must be built,
//! completed or cut back, then do it (see the recovery rules in
//! [`crate::recovery`]: decide first, change after).

use std::collections::BTreeMap;
use std::path::Path;

use caseshare_core::time::Micros;

use super::{
    BUCKETED, COUNTER, EPOCH_BITS, EntryView, RECENT, TIME, TIME_BLOCK, Table, covered,
    decode_table, encode_table, index_entries, split_key, time_value,
};
use crate::StoreError;
use crate::audit_log::AuditLog;
use crate::audit_query::{decode_leaf, recorded_at};
use crate::recovery::{ADVICE_RESTORE, damaged};
use crate::sled_backend::{be, key, read_be};
use crate::sled_open::SLED_FILES;

/// Entries read and indexed per sled batch when the index is built.
const BUILD_WINDOW: u64 = 8_192;

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
pub(crate) fn plan(
    dir: &Path,
    tree: &sled::Tree,
    log: &AuditLog,
    size: u64,
) -> Result<Plan, StoreError> {
    let (from, clear) = match covered(tree)? {
        Some(n) if n == size => return Ok(Plan::UpToDate),
        Some(n) if n > size => return Ok(Plan::Trim { size }),
        Some(n) => (n, false),
        None => (0, true),
    };
    let mut at = from;
    while at < size {
        let to = size.min(at + BUILD_WINDOW);
        let leaves = crate::sled_open::audit_entries(tree, log, at, to)?;
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
pub(crate) fn apply(
    tree: &sled::Tree,
    log: &AuditLog,
    plan: Plan,
    size: u64,
) -> Result<(), StoreError> {
    match plan {
        Plan::UpToDate => Ok(()),
        Plan::Build { from, clear } => {
            if clear {
                remove_all(tree)?;
            }
            let mut at = from;
            while at < size {
                let to = size.min(at + BUILD_WINDOW);
                let entries = crate::sled_open::audit_entries(tree, log, at, to)?
                    .iter()
                    .zip(at..)
                    .map(|(leaf, index)| decode_leaf(index, leaf))
                    .collect::<Result<Vec<_>, _>>()?;
                let views: Vec<EntryView<'_>> = entries.iter().map(EntryView::of).collect();
                let mut b = crate::wal::Writes::default();
                // Built at open: complete epochs' buckets stay in sled.
                for (k, v) in index_entries(tree, at, &views, &mut b)?.buckets {
                    b.insert(k, v);
                }
                tree.apply_batch(b.into_sled_batch())?;
                at = to;
            }
            if clear && size == 0 {
                tree.insert(key(b'M', &[COUNTER]), be(0).to_vec())?;
            }
            Ok(())
        }
        Plan::Trim { size } => trim(tree, log, size),
    }
}

fn remove_all(tree: &sled::Tree) -> Result<(), StoreError> {
    for prefix in [BUCKETED, TIME, RECENT] {
        let mut b = sled::Batch::default();
        for k in tree.scan_prefix([prefix]).keys() {
            b.remove(k?);
        }
        tree.apply_batch(b)?;
    }
    Ok(())
}

/// Cuts the index back to the first `size` entries. A complete epoch
/// that is no longer complete gets its postings back as one `L` record.
fn trim(tree: &sled::Tree, log: &AuditLog, size: u64) -> Result<(), StoreError> {
    let mut b = sled::Batch::default();
    let partial = size >> EPOCH_BITS;
    let mut reopened: Vec<super::TermPostings> = Vec::new();
    for item in tree.scan_prefix([BUCKETED]) {
        let (k, v) = item?;
        let (ep, _) = split_key(&k)?;
        if ep < partial {
            continue;
        }
        b.remove(k);
        if ep == partial {
            reopened.extend(decode_table(&log.resolve_one(v)?)?);
        }
    }
    for item in tree.scan_prefix([RECENT]) {
        let (k, v) = item?;
        let (ep, _) = split_key(&k)?;
        // Records of single commits exist only in the epoch not complete.
        if ep < partial {
            continue;
        }
        b.remove(k);
        if ep == partial {
            reopened.extend(decode_table(&log.resolve_one(v)?)?);
        }
    }
    let mut table: Table<'_> = BTreeMap::new();
    for (term, indexes) in &reopened {
        let kept = indexes.iter().copied().filter(|&i| i < size);
        table.entry(term.as_slice()).or_default().extend(kept);
    }
    table.retain(|_, ix| !ix.is_empty());
    for ix in table.values_mut() {
        ix.sort_unstable();
    }
    if !table.is_empty() {
        b.insert(
            key(RECENT, &[&be(partial), &be(partial << EPOCH_BITS)]),
            encode_table(&table),
        );
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
            log,
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
