//! Audit reads for auditors, backend-neutral: the filter of
//! `caseshare.v1.Audit/Query` and of a subject access report, the index
//! terms an entry is found by, and the query itself, which asks the
//! [`Storage`] for candidates by the most selective term (a child, else an
//! agency) inside the index ranges that may hold the time window, and keeps
//! those the filter accepts.
//!
//! The filter is the one place the meaning of a query lives: an indexed
//! query and a linear scan ([`query_by_scan`], for comparison) apply the same
//! [`AuditFilter::matches`] to every candidate, so an index only has to
//! find a superset of the matching entries, in index order, to give the same
//! answer.

use caseshare_audit::entry;
use caseshare_core::time::Micros;
use caseshare_proto::v1 as pb;

use crate::{Storage, StoreError};

/// Candidates asked of the store at a time.
const CANDIDATES: usize = 1_024;
/// Entries read at a time by a scan.
const SCAN_CHUNK: u64 = 2_048;

/// What an entry can be found by in the index.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AuditTerm {
    /// Entries about this child (`child_pseudonym`).
    Child(Vec<u8>),
    /// Entries an agency filter of this id accepts: the agency is the
    /// source, the recipient, the subject, or the actor's SPIFFE id ends in
    /// `/agency/<id>`.
    Agency(String),
}

/// The SPIFFE path segment before an agency id.
const AGENCY_PATH: &str = "/agency/";

impl AuditTerm {
    /// Whether `e` carries this term.
    pub fn matches(&self, e: &pb::AuditEntry) -> bool {
        match self {
            AuditTerm::Child(p) => !p.is_empty() && e.child_pseudonym == *p,
            AuditTerm::Agency(a) => !a.is_empty() && agency_matches(e, a),
        }
    }

    /// Every term of `e`, without repeats: each term `t` with
    /// `t.matches(e)`, and no other.
    pub fn of(e: &pb::AuditEntry) -> Vec<AuditTerm> {
        let mut out = Vec::with_capacity(4);
        if !e.child_pseudonym.is_empty() {
            out.push(AuditTerm::Child(e.child_pseudonym.clone()));
        }
        let mut agencies: Vec<&str> = vec![&e.source_agency, &e.recipient_agency, &e.subject];
        // `actor.ends_with("/agency/" + id)` holds for the rest of the actor
        // after every occurrence of "/agency/" (occurrences may overlap).
        let actor = e.actor.as_bytes();
        for i in 0..actor.len() {
            if actor[i..].starts_with(AGENCY_PATH.as_bytes()) {
                agencies.push(&e.actor[i + AGENCY_PATH.len()..]);
            }
        }
        agencies.retain(|a| !a.is_empty());
        agencies.sort_unstable();
        agencies.dedup();
        out.extend(
            agencies
                .into_iter()
                .map(|a| AuditTerm::Agency(a.to_string())),
        );
        out
    }
}

fn agency_matches(e: &pb::AuditEntry, agency_id: &str) -> bool {
    e.source_agency == agency_id
        || e.recipient_agency == agency_id
        || e.subject == agency_id
        || e.actor
            .strip_suffix(agency_id)
            .is_some_and(|head| head.ends_with(AGENCY_PATH))
}

/// When an entry was recorded, as queries compare it (no time = 0).
pub fn recorded_at(e: &pb::AuditEntry) -> Micros {
    e.recorded_at
        .as_ref()
        .map(Micros::from_timestamp)
        .unwrap_or_default()
}

/// A query's filter; an empty field does not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only entries about this child (its pseudonym).
    pub child_pseudonym: Vec<u8>,
    /// Only entries where this agency is the source, the recipient, the
    /// subject, or the actor (`…/agency/<id>`).
    pub agency_id: String,
    /// Only these kinds.
    pub kinds: Vec<i32>,
    /// Only entries recorded at or after this time.
    pub from: Option<Micros>,
    /// Only entries recorded before this time.
    pub to: Option<Micros>,
}

impl AuditFilter {
    /// Whether the filter accepts `e`.
    pub fn matches(&self, e: &pb::AuditEntry) -> bool {
        let recorded = recorded_at(e);
        (self.child_pseudonym.is_empty() || e.child_pseudonym == self.child_pseudonym)
            && (self.agency_id.is_empty() || agency_matches(e, &self.agency_id))
            && (self.kinds.is_empty() || self.kinds.contains(&e.kind))
            && self.from.is_none_or(|f| recorded >= f)
            && self.to.is_none_or(|t| recorded < t)
    }

    /// The term to look candidates up by: the child, else the agency.
    pub fn term(&self) -> Option<AuditTerm> {
        if !self.child_pseudonym.is_empty() {
            Some(AuditTerm::Child(self.child_pseudonym.clone()))
        } else if !self.agency_id.is_empty() {
            Some(AuditTerm::Agency(self.agency_id.clone()))
        } else {
            None
        }
    }
}

/// Decodes the leaf at `index`; a leaf that does not decode is a damaged
/// store, named.
pub fn decode_leaf(index: u64, leaf: &[u8]) -> Result<pb::AuditEntry, StoreError> {
    entry::decode(leaf).map_err(|e| StoreError::Corrupt {
        key: format!("audit entry {index}"),
        detail: e.to_string(),
    })
}

/// The first `page` entries with index in `[start, end)` that `filter`
/// accepts, in index order, found through the store's indexes. Blocking:
/// call it on a blocking thread.
pub fn query(
    store: &dyn Storage,
    filter: &AuditFilter,
    start: u64,
    end: u64,
    page: usize,
) -> Result<Vec<pb::AuditEntry>, StoreError> {
    let ranges = if filter.from.is_some() || filter.to.is_some() {
        store.audit_time_ranges(filter.from, filter.to, start, end)?
    } else {
        vec![(start, end)]
    };
    collect(store, filter, filter.term().as_ref(), &ranges, page)
}

/// [`query`] by reading every entry of `[start, end)` in turn (no index):
/// what queries cost before the index, kept to compare against.
pub fn query_by_scan(
    store: &dyn Storage,
    filter: &AuditFilter,
    start: u64,
    end: u64,
    page: usize,
) -> Result<Vec<pb::AuditEntry>, StoreError> {
    collect(store, filter, None, &[(start, end)], page)
}

/// Every `SHARE_DECIDED` entry about the child of `pseudonym` with index
/// below `end`, in index order: the body of a subject access report.
pub fn shares_of(
    store: &dyn Storage,
    pseudonym: &[u8],
    end: u64,
) -> Result<Vec<pb::AuditEntry>, StoreError> {
    let mut shares = query(store, &share_filter(pseudonym), 0, end, usize::MAX)?;
    // An empty pseudonym is no filter above; a report is about one child.
    shares.retain(|e| e.child_pseudonym == pseudonym);
    Ok(shares)
}

/// [`shares_of`] by a linear scan, kept to compare against.
pub fn shares_of_by_scan(
    store: &dyn Storage,
    pseudonym: &[u8],
    end: u64,
) -> Result<Vec<pb::AuditEntry>, StoreError> {
    let mut shares = query_by_scan(store, &share_filter(pseudonym), 0, end, usize::MAX)?;
    shares.retain(|e| e.child_pseudonym == pseudonym);
    Ok(shares)
}

fn share_filter(pseudonym: &[u8]) -> AuditFilter {
    AuditFilter {
        child_pseudonym: pseudonym.to_vec(),
        kinds: vec![pb::EntryKind::ShareDecided as i32],
        ..AuditFilter::default()
    }
}

/// Candidates from `ranges` (by `term`, or every entry), filtered, until
/// `page` are found.
fn collect(
    store: &dyn Storage,
    filter: &AuditFilter,
    term: Option<&AuditTerm>,
    ranges: &[(u64, u64)],
    page: usize,
) -> Result<Vec<pb::AuditEntry>, StoreError> {
    let mut out = Vec::new();
    if page == 0 {
        return Ok(out);
    }
    for &(start, end) in ranges {
        let mut from = start;
        while from < end {
            let candidates = match term {
                Some(t) => store.audit_entries_with(t, from, end, CANDIDATES)?,
                None => {
                    let to = end.min(from.saturating_add(SCAN_CHUNK));
                    (from..).zip(store.audit_entries(from, to)?).collect()
                }
            };
            let Some(&(last, _)) = candidates.last() else {
                break;
            };
            for (index, leaf) in candidates {
                let e = decode_leaf(index, &leaf)?;
                if filter.matches(&e) {
                    out.push(e);
                    if out.len() >= page {
                        return Ok(out);
                    }
                }
            }
            from = last + 1;
        }
    }
    Ok(out)
}

/// [`Storage::audit_entries_with`] for a backend without an index: reads
/// `[start, end)` in turn and keeps the entries carrying `term`.
pub fn entries_with_by_scan<S: Storage + ?Sized>(
    store: &S,
    term: &AuditTerm,
    start: u64,
    end: u64,
    max: usize,
) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    let mut out = Vec::new();
    let mut from = start;
    while from < end && out.len() < max {
        let to = end.min(from.saturating_add(SCAN_CHUNK));
        let leaves = store.audit_entries(from, to)?;
        if leaves.is_empty() {
            break;
        }
        for (index, leaf) in (from..).zip(leaves) {
            if term.matches(&decode_leaf(index, &leaf)?) {
                out.push((index, leaf));
                if out.len() >= max {
                    break;
                }
            }
        }
        from = to;
    }
    Ok(out)
}
