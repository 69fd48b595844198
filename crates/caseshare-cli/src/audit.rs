//! The auditor's side of the log: `caseshare audit verify` checks a broker's
//! log end to end without trusting it (the checkpoint's signature against a
//! pinned key, the root recomputed from every leaf, consistency with the
//! last checkpoint it verified), and readable tables for queries and
//! subject access reports.

use std::path::Path;

use caseshare_audit::entry;
use caseshare_audit::merkle::{Hash, leaf_hash, root_from_leaf_hashes, verify_consistency};
use caseshare_audit::note::{NoteVerifier, verify_checkpoint};
use caseshare_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use tokio_stream::StreamExt;

use crate::client::Clients;

/// What the verifier remembers between runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VerifyState {
    /// The last verified tree size.
    pub tree_size: u64,
    /// Its root, hex.
    pub root_hex: String,
    /// The signed note it came from.
    pub note: String,
}

/// A verification failure: one line saying what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct VerifyError(pub String);

fn fail<T>(msg: impl Into<String>) -> Result<T, VerifyError> {
    Err(VerifyError(msg.into()))
}

/// Leaves fetched per GetEntries call.
const PAGE: u64 = 10_000;

/// Verifies the log behind `clients` (an auditor connection).
pub async fn verify(
    clients: &mut Clients,
    vkey: &str,
    state_path: &Path,
) -> Result<VerifyState, VerifyError> {
    let verifier = NoteVerifier::from_vkey(vkey)
        .map_err(|e| VerifyError(format!("the pinned vkey is invalid: {e}")))?;
    let cp = clients
        .audit
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await
        .map_err(|s| VerifyError(format!("cannot fetch the checkpoint: {}", s.message())))?
        .into_inner();
    let signed = match verify_checkpoint(&cp.note, &verifier) {
        Ok(c) => c,
        Err(e) => {
            return fail(format!(
                "checkpoint signature does not verify with the pinned key: {e}"
            ));
        }
    };
    if signed.size != cp.tree_size || signed.root.as_slice() != cp.root_hash.as_slice() {
        return fail("the checkpoint's fields disagree with its signed note");
    }
    let size = signed.size;
    let mut hashes: Vec<Hash> = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    let mut start = 0;
    while start < size {
        let end = (start + PAGE).min(size);
        let mut stream = clients
            .audit
            .get_entries(pb::GetEntriesRequest { start, end })
            .await
            .map_err(|s| {
                VerifyError(format!(
                    "cannot fetch entries {start}..{end}: {}",
                    s.message()
                ))
            })?
            .into_inner();
        while let Some(item) = stream.next().await {
            let leaf =
                item.map_err(|s| VerifyError(format!("entry stream failed: {}", s.message())))?;
            let expected = hashes.len() as u64;
            if leaf.index != expected {
                return fail(format!(
                    "entries out of order: got index {} where {expected} was due",
                    leaf.index
                ));
            }
            match entry::decode(&leaf.leaf) {
                Ok(e) if e.index == leaf.index => {}
                Ok(e) => return fail(format!("entry {} claims index {}", leaf.index, e.index)),
                Err(e) => {
                    return fail(format!(
                        "entry {} is not a canonical audit entry: {e}",
                        leaf.index
                    ));
                }
            }
            hashes.push(leaf_hash(&leaf.leaf));
        }
        if hashes.len() as u64 != end {
            return fail(format!(
                "the server returned {} entries where {end} were due",
                hashes.len()
            ));
        }
        start = end;
    }
    let root = root_from_leaf_hashes(&hashes);
    if root != signed.root {
        return fail(format!(
            "the root recomputed from {size} entries ({}) does not match the signed checkpoint ({}): entries were altered",
            hex::encode(root),
            hex::encode(signed.root)
        ));
    }
    if let Some(prev) = read_state(state_path)? {
        let prev_root = hex::decode(&prev.root_hex)
            .map_err(|_| VerifyError("the state file's root is not hex".into()))?;
        if size < prev.tree_size {
            return fail(format!(
                "the log was rolled back: it now has {size} entries, but {} were verified before",
                prev.tree_size
            ));
        }
        if size == prev.tree_size {
            if prev_root != root {
                return fail(format!(
                    "the log forked: size {size} now has a different root than verified before"
                ));
            }
        } else {
            let proof = clients
                .audit
                .get_consistency_proof(pb::GetConsistencyProofRequest {
                    from_size: prev.tree_size,
                    to_size: size,
                })
                .await
                .map_err(|s| {
                    VerifyError(format!("cannot fetch a consistency proof: {}", s.message()))
                })?
                .into_inner();
            if let Err(e) =
                verify_consistency(prev.tree_size, size, &proof.hashes, &prev_root, &root)
            {
                return fail(format!(
                    "the log of {size} entries is not an extension of the {} verified before: {e}",
                    prev.tree_size
                ));
            }
        }
    }
    let state = VerifyState {
        tree_size: size,
        root_hex: hex::encode(root),
        note: cp.note,
    };
    write_state(state_path, &state)?;
    Ok(state)
}

fn read_state(path: &Path) -> Result<Option<VerifyState>, VerifyError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| VerifyError(format!("state file {} is unreadable: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => fail(format!("state file {}: {e}", path.display())),
    }
}

fn write_state(path: &Path, state: &VerifyState) -> Result<(), VerifyError> {
    let text = serde_json::to_string_pretty(state).map_err(|e| VerifyError(e.to_string()))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .map_err(|e| VerifyError(format!("writing {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| VerifyError(format!("writing {}: {e}", path.display())))
}

/// A timestamp for a table: UTC, to the second (`2026-11-18 11:06:40`).
pub(crate) fn ts(t: &Option<prost_types::Timestamp>) -> String {
    // RFC 3339, trimmed to seconds for a table.
    t.as_ref()
        .map(|t| {
            let full = prost_types::Timestamp {
                seconds: t.seconds,
                nanos: 0,
            }
            .to_string();
            full.trim_end_matches('Z').replacen('T', " ", 1)
        })
        .unwrap_or_default()
}

fn enum_name<E: TryFrom<i32> + std::fmt::Debug>(v: i32) -> String {
    E::try_from(v)
        .map(|e| format!("{e:?}"))
        .unwrap_or_else(|_| v.to_string())
}

/// A subject access report as a table a family can read.
pub fn report_table(r: &pb::SubjectAccessReportResponse) -> String {
    let mut out = format!(
        "{} sharing decisions (log size {})\n",
        r.shares.len(),
        r.tree_size
    );
    out.push_str(&format!(
        "{:<20} {:<42} {:<18} {:<18} {:<9} {:<34} {}\n",
        "when (UTC)", "event type", "from", "to", "decision", "reason", "basis"
    ));
    for s in &r.shares {
        let basis = if let Some(o) = &s.safeguarding_override {
            format!(
                "OVERRIDE {} by {}: {}",
                enum_name::<pb::LegalBasis>(o.legal_basis),
                o.authorised_by,
                o.justification
            )
        } else if !s.consent_id.is_empty() {
            format!("consent {} (agreement {})", s.consent_id, s.agreement_id)
        } else if !s.agreement_id.is_empty() {
            format!(
                "agreement {} ({})",
                s.agreement_id,
                enum_name::<pb::LawfulBasis>(s.lawful_basis)
            )
        } else {
            "-".to_string()
        };
        out.push_str(&format!(
            "{:<20} {:<42} {:<18} {:<18} {:<9} {:<34} {}\n",
            ts(&s.decided_at),
            s.event_type,
            s.from_agency,
            s.to_agency,
            enum_name::<pb::Decision>(s.decision),
            s.reason,
            basis
        ));
    }
    out
}

/// Query results as a table.
pub fn entries_table(entries: &[pb::AuditEntry]) -> String {
    let mut out = format!(
        "{:>7} {:<20} {:<20} {:<40} {:<18} {:<18} {}\n",
        "index", "when (UTC)", "kind", "event", "from", "to", "detail"
    );
    for e in entries {
        let detail = [e.reason.as_str(), e.subject.as_str(), e.rpc.as_str()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        out.push_str(&format!(
            "{:>7} {:<20} {:<20} {:<40} {:<18} {:<18} {}\n",
            e.index,
            ts(&e.recorded_at),
            enum_name::<pb::EntryKind>(e.kind),
            if e.event_type.is_empty() {
                "-".to_string()
            } else {
                format!("{} {}", e.event_type, e.event_id)
            },
            e.source_agency,
            e.recipient_agency,
            detail
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_times_are_readable() {
        assert_eq!(
            ts(&Some(prost_types::Timestamp {
                seconds: 1_795_000_000,
                nanos: 5
            })),
            "2026-11-18 11:06:40"
        );
        assert_eq!(ts(&None), "");
    }
}
