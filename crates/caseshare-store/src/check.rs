//! `caseshare check`'s view of a stopped broker's store: every file
//! verified, nothing written. Sled cannot be opened without writing (its
//! recovery writes a snapshot and may rewrite its tail), so it is opened on
//! a copy of its directory in a scratch directory the caller provides.
//!
//! One [`Finding`] per check: sled snapshots and temporaries, sled itself,
//! the persisted checkpoint against sled's audit log, the audit leaves
//! against the stored Merkle tiles and against the audit index, every event-log segment (every frame's
//! checksum and sequence), every `.ids` file, and the event log against
//! sled's counters (the same decision the broker makes at start).

use std::path::{Path, PathBuf};

use caseshare_audit::merkle::{leaf_hash, root_from_leaf_hashes};
use caseshare_audit::tiles::TiledTree;

use crate::StoreError;
use crate::recovery::{SnapshotState, sled_snapshot_state, sled_snapshots};
use crate::segments::open::{Stop, scan, segment_files, verify};

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What was checked.
    pub check: String,
    /// The file.
    pub file: PathBuf,
    /// True when all is well.
    pub ok: bool,
    /// Where the problem is, when known.
    pub offset: Option<u64>,
    /// What was found.
    pub detail: String,
}

impl Finding {
    fn ok(check: &str, file: &Path, detail: impl Into<String>) -> Self {
        Finding {
            check: check.into(),
            file: file.to_path_buf(),
            ok: true,
            offset: None,
            detail: detail.into(),
        }
    }

    fn damaged(check: &str, file: &Path, offset: Option<u64>, detail: impl Into<String>) -> Self {
        Finding {
            check: check.into(),
            file: file.to_path_buf(),
            ok: false,
            offset,
            detail: detail.into(),
        }
    }

    fn from_error(check: &str, fallback: &Path, e: StoreError) -> Self {
        match e {
            StoreError::Damaged {
                path,
                offset,
                detail,
                ..
            } => Finding::damaged(check, &path, offset, detail),
            other => Finding::damaged(check, fallback, None, other.to_string()),
        }
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        let path = entry.path();
        // The event log, the audit log, the WAL and set-aside files are
        // not sled's.
        if name == "events"
            || name == crate::audit_log::DIR
            || name == crate::wal::DIR
            || name == crate::recovery::SLED_SET_ASIDE_DIR
        {
            continue;
        }
        if path.is_dir() {
            copy_dir(&path, &to.join(&name))?;
        } else {
            std::fs::copy(&path, to.join(&name))?;
        }
    }
    Ok(())
}

/// Checks the store in `store_dir` (`<data>/store`), using `scratch` (an
/// empty directory) for the copy of sled.
pub fn check_store(store_dir: &Path, scratch: &Path) -> Vec<Finding> {
    let mut out = Vec::new();
    let events_dir = store_dir.join("events");
    let db_path = store_dir.join("db");
    if !db_path.exists() {
        out.push(Finding::damaged("sled database", &db_path, None, "missing"));
        return out;
    }
    // Temporaries and sled snapshots.
    for dir in [store_dir, events_dir.as_path()] {
        if let Ok(ts) = crate::recovery::temporaries(dir) {
            for t in ts {
                out.push(Finding::damaged(
                    "temporary",
                    &t,
                    None,
                    "left by an interrupted write (removed at the next start)",
                ));
            }
        }
    }
    let snaps = sled_snapshots(store_dir).unwrap_or_default();
    let finished: Vec<&PathBuf> = snaps
        .iter()
        .filter(|p| !matches!(sled_snapshot_state(p), Ok(SnapshotState::Temporary)))
        .collect();
    for p in &snaps {
        match sled_snapshot_state(p) {
            Ok(SnapshotState::Whole) => out.push(Finding::ok("sled snapshot", p, "whole")),
            Ok(SnapshotState::Temporary) => out.push(Finding::damaged(
                "sled snapshot",
                p,
                None,
                "a snapshot temporary left by a failed write, e.g. a full disk (removed at the \
                 next start; sled would otherwise fail with \"Read corrupted data\")",
            )),
            Ok(SnapshotState::Damaged(why)) => out.push(Finding::damaged(
                "sled snapshot",
                p,
                None,
                format!(
                    "{why}{} (derived: set aside at the next start and rebuilt by sled)",
                    if Some(&p) == finished.last() {
                        ""
                    } else {
                        "; an older one"
                    }
                ),
            )),
            Err(e) => out.push(Finding::from_error("sled snapshot", p, e)),
        }
    }
    // Sled, on a copy without the snapshots the broker would set aside.
    let copy = scratch.join("store");
    if let Err(e) = copy_dir(store_dir, &copy) {
        out.push(Finding::damaged(
            "sled database",
            &db_path,
            None,
            format!("could not copy it to {}: {e}", copy.display()),
        ));
        return out;
    }
    if let Err(e) = crate::recovery::prepare_sled_dir(&copy) {
        out.push(Finding::from_error("sled database", &db_path, e));
        return out;
    }
    let db = match crate::sled_open::open_sled(&copy, 16 << 20) {
        Ok(db) => db,
        Err(e) => {
            let mut f = Finding::from_error("sled database", &db_path, e);
            f.file = db_path.clone();
            out.push(f);
            return out;
        }
    };
    let tree = match db.open_tree("caseshare") {
        Ok(t) => t,
        Err(e) => {
            out.push(Finding::damaged(
                "sled database",
                &db_path,
                None,
                e.to_string(),
            ));
            return out;
        }
    };
    // Sled brought up to the write-ahead log's last commit, and checked
    // whole against its digest, as the broker does at start: the log and
    // the files its last frame names are read where they are, and only
    // the copy of sled is written.
    let wal_dir = store_dir.join(crate::wal::DIR);
    match crate::wal::recover(store_dir, &tree, crate::wal::Logs::Count) {
        Ok(r) => {
            out.push(Finding::ok(
                "write-ahead log",
                &wal_dir,
                format!(
                    "{} commit frames replayed into sled (a copy); sled's records match the \
                     log's digest",
                    r.replayed
                ),
            ));
            if let Some(e) = r.log_damage {
                out.push(Finding::from_error("write-ahead log", &wal_dir, e));
            }
            if r.missing > 0 {
                out.push(Finding::ok(
                    "write-ahead log",
                    &wal_dir,
                    format!(
                        "the event log or the audit log lacks {} bytes of acknowledged commits \
                         (a crash kept them from the disk); the frames hold them, and the \
                         broker writes them back when it starts; until then the checks of \
                         those logs below may report them missing",
                        r.missing
                    ),
                ));
            }
        }
        Err(e) => {
            out.push(Finding::from_error("write-ahead log", &wal_dir, e));
            return out;
        }
    }
    let counters = crate::sled_open::counters(&tree);
    let (next_sequence, first_retained, audit_size, legacy_first) = match counters {
        Ok(c) => c,
        Err(e) => {
            out.push(Finding::from_error("sled database", &db_path, e));
            return out;
        }
    };
    out.push(Finding::ok(
        "sled database",
        &db_path,
        format!("opened (a copy); next event sequence {next_sequence}, {audit_size} audit entries"),
    ));
    // The audit log's files against sled's pointers.
    let audit_dir = store_dir.join(crate::audit_log::DIR);
    let log = match crate::audit_log::AuditLog::open(store_dir) {
        Ok(log) => log,
        Err(e) => {
            out.push(Finding::from_error("audit log files", &audit_dir, e));
            return out;
        }
    };
    match crate::sled_open::verify_audit_chunks(store_dir, &tree, &log) {
        Ok(found) => {
            out.push(Finding::ok(
                "audit log files",
                &audit_dir,
                "every chunk and full tile sled points at is whole and matches its checksum",
            ));
            for (file, from) in found.ignored_tails {
                out.push(Finding::ok(
                    "audit log files",
                    &file,
                    format!(
                        "bytes from {from} on follow the committed entries (a torn write or a \
                         batch that never committed): ignored, never cut"
                    ),
                ));
            }
        }
        Err(e) => {
            out.push(Finding::from_error("audit log files", &audit_dir, e));
            return out;
        }
    }
    // The persisted checkpoint.
    let cp_path = crate::checkpoint::path(store_dir);
    match crate::sled_open::verify_audit_checkpoint(store_dir, &tree, &log) {
        Ok(()) => match crate::checkpoint::read(store_dir) {
            Ok(Some(cp)) => out.push(Finding::ok(
                "audit checkpoint",
                &cp_path,
                format!("size {} matches sled's audit log", cp.size),
            )),
            _ => out.push(Finding::ok(
                "audit checkpoint",
                &cp_path,
                "none persisted yet (nothing to compare)",
            )),
        },
        Err(e) => out.push(Finding::from_error("audit checkpoint", &cp_path, e)),
    }
    // The leaves against the tiles and against their index.
    out.push(check_audit_tree(&db_path, &tree, &log, audit_size));
    out.push(check_audit_index(&db_path, &tree, &log, audit_size));
    // Segments, one by one.
    let segments = segment_files(&events_dir).unwrap_or_default();
    let key = crate::segments::key_fingerprint(&events_dir);
    let key_path = events_dir.join("ids.key");
    match &key {
        Ok(Some(_)) => out.push(Finding::ok("id index key", &key_path, "32 bytes")),
        Ok(None) if segments.is_empty() => {}
        Ok(None) => out.push(Finding::damaged(
            "id index key",
            &key_path,
            None,
            "missing (derived: a new key is made and every .ids file rebuilt at the next start)",
        )),
        Err(why) => out.push(Finding::damaged(
            "id index key",
            &key_path,
            None,
            why.clone(),
        )),
    }
    let log_next = legacy_first.unwrap_or(next_sequence);
    for (i, (first, path)) in segments.iter().enumerate() {
        let limit = segments.get(i + 1).map(|(f, _)| *f);
        let s = match scan(path, *first) {
            Ok(s) => s,
            Err(e) => {
                out.push(Finding::from_error("segment", path, e));
                continue;
            }
        };
        let valid = s.offsets.len() as u64;
        let needed = limit.unwrap_or(log_next).min(log_next).max(*first);
        let committed = needed - first;
        let f = match &s.stop {
            Stop::Eof => Finding::ok(
                "segment",
                path,
                format!("{valid} frames, every checksum and sequence right"),
            ),
            Stop::Torn(o, why) | Stop::Invalid(o, why) if valid < committed => Finding::damaged(
                "segment",
                path,
                Some(*o),
                format!("{why} in committed events"),
            ),
            Stop::Invalid(o, why) if limit.is_none() => Finding::damaged(
                "segment",
                path,
                Some(*o),
                format!("{why} (after the committed events, but not a torn write)"),
            ),
            Stop::Torn(o, why) | Stop::Invalid(o, why) => Finding::ok(
                "segment",
                path,
                format!(
                    "{valid} frames; at byte {o} {why}, after the committed events (a torn or \
                     uncommitted tail, ignored)"
                ),
            ),
        };
        out.push(f);
        // The ids file of a sealed segment.
        if let (Some(_), Ok(Some(fp))) = (limit, &key) {
            let count = committed.min(valid);
            let ids_path = events_dir.join(crate::segments::ids_file_name(*first));
            out.push(
                match crate::segments::check_ids_file(&events_dir, *first, count, *fp) {
                    Ok(None) => Finding::ok(
                        "id index",
                        &ids_path,
                        format!("{count} entries, checksum right"),
                    ),
                    Ok(Some((true, offset, why))) => Finding::damaged(
                        "id index",
                        &ids_path,
                        offset,
                        format!("{why} (derived: set aside and rebuilt at the next start)"),
                    ),
                    Ok(Some((false, _, why))) => Finding::ok(
                        "id index",
                        &ids_path,
                        format!("{why} (derived: rebuilt at the next start)"),
                    ),
                    Err(e) => Finding::from_error("id index", &ids_path, e),
                },
            );
        }
    }
    // The decision the broker makes at start.
    let log_first = legacy_first.map_or(first_retained, |l| first_retained.max(l));
    match verify(&events_dir, log_next, log_first) {
        Ok(_) => out.push(Finding::ok(
            "event log against sled",
            &events_dir,
            format!(
                "every committed event up to sequence {} is in the log",
                next_sequence.saturating_sub(1)
            ),
        )),
        Err(e) => out.push(Finding::from_error(
            "event log against sled",
            &events_dir,
            e,
        )),
    }
    out
}

fn check_audit_tree(
    db_path: &Path,
    tree: &sled::Tree,
    log: &crate::audit_log::AuditLog,
    size: u64,
) -> Finding {
    let tiles = crate::sled_open::tiles(tree, log);
    let mut hashes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    match crate::sled_open::all_audit_entries(tree, log) {
        Ok(entries) => hashes.extend(entries.iter().map(|e| leaf_hash(e))),
        Err(e) => return Finding::from_error("audit log", db_path, e),
    }
    if hashes.len() as u64 != size {
        return Finding::damaged(
            "audit log",
            db_path,
            None,
            format!("{} entries stored, {size} expected", hashes.len()),
        );
    }
    let stored = TiledTree::open(size, &tiles).map(|t| t.current_root());
    match stored {
        Ok(root) if root == root_from_leaf_hashes(&hashes) => Finding::ok(
            "audit log",
            db_path,
            format!("{size} leaves match the stored Merkle tiles"),
        ),
        Ok(_) => Finding::damaged(
            "audit log",
            db_path,
            None,
            "the audit leaves do not hash to the root of the stored Merkle tiles",
        ),
        Err(e) => Finding::damaged("audit log", db_path, None, format!("tiles: {e}")),
    }
}

fn check_audit_index(
    db_path: &Path,
    tree: &sled::Tree,
    log: &crate::audit_log::AuditLog,
    size: u64,
) -> Finding {
    const CHECK: &str = "audit index";
    let verdict = match crate::audit_index::verify(tree, log, size) {
        Ok(v) => v,
        Err(e) => return Finding::from_error(CHECK, db_path, e),
    };
    if let Some(why) = verdict.mismatch {
        return Finding::damaged(
            CHECK,
            db_path,
            None,
            format!(
                "{why}: audit queries and subject access reports read this index, so they \
                 would miss entries or name wrong ones (derived data, but the broker does not \
                 rebuild an index that claims to be complete; restore the data directory from \
                 the last backup)"
            ),
        );
    }
    match verdict.covered {
        None if size == 0 => Finding::ok(CHECK, db_path, "no entries yet"),
        None => Finding::ok(
            CHECK,
            db_path,
            format!(
                "not built yet (a store written before it): built from the {size} entries at \
                 the next start"
            ),
        ),
        Some(c) if c > size => Finding::damaged(
            CHECK,
            db_path,
            None,
            format!(
                "it covers {c} entries but sled holds {size}: sled lost committed audit \
                 entries (the index is cut back at the next start)"
            ),
        ),
        Some(c) if c < size => Finding::ok(
            CHECK,
            db_path,
            format!(
                "covers the first {c} of {size} entries and matches them; the rest are \
                 indexed at the next start"
            ),
        ),
        Some(_) => Finding::ok(
            CHECK,
            db_path,
            format!(
                "{} postings and every time block match the {size} entries",
                verdict.postings
            ),
        ),
    }
}
