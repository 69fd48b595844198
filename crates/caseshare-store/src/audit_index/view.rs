//! What the audit index needs of an entry, borrowed: read straight from
//! the leaf's protobuf bytes on the commit path ([`EntryView::read`]), or
//! from an entry already decoded ([`EntryView::of`]).
//!
//! Decoding the six fields the index reads into owned strings, turning
//! them into an entry and its terms into owned keys cost about a dozen
//! allocations per entry on the commit thread, ~11 % of the broker's CPU
//! when publishing pipelined with a subscriber (`docs/BENCHMARKS.md`,
//! issue #18). A view allocates nothing, and [`EntryView::terms`] yields
//! exactly the terms of [`AuditTerm::of`], as byte strings.

use caseshare_core::time::Micros;
use caseshare_proto::v1 as pb;
use prost::encoding::decode_varint;

#[cfg(test)]
use crate::audit_query::AuditTerm;
use crate::audit_query::recorded_at;

use super::{AGENCY, CHILD};

/// The SPIFFE path segment before an agency id (as [`AuditTerm::of`]).
const AGENCY_PATH: &[u8] = b"/agency/";

/// The indexed fields of one audit entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct EntryView<'a> {
    pub recorded_at: Micros,
    pub actor: &'a str,
    pub child_pseudonym: &'a [u8],
    pub source_agency: &'a str,
    pub recipient_agency: &'a str,
    pub subject: &'a str,
}

/// A protobuf field's value as written.
enum Value<'a> {
    Varint(u64),
    Delimited(&'a [u8]),
    Fixed,
}

/// Reads the next field of `buf`: its number and value.
fn field<'a>(buf: &mut &'a [u8]) -> Result<(u64, Value<'a>), String> {
    let tag = decode_varint(buf).map_err(|e| e.to_string())?;
    let number = tag >> 3;
    if number == 0 || tag > u64::from(u32::MAX) {
        return Err(format!("invalid tag {tag}"));
    }
    let value = match tag & 7 {
        0 => Value::Varint(decode_varint(buf).map_err(|e| e.to_string())?),
        1 | 5 => {
            let n = if tag & 7 == 1 { 8 } else { 4 };
            *buf = buf.get(n..).ok_or("truncated fixed-width field")?;
            Value::Fixed
        }
        2 => {
            let len = usize::try_from(decode_varint(buf).map_err(|e| e.to_string())?)
                .map_err(|_| "length out of range")?;
            let (bytes, rest) = buf.split_at_checked(len).ok_or("truncated field")?;
            *buf = rest;
            Value::Delimited(bytes)
        }
        w => return Err(format!("wire type {w}")),
    };
    Ok((number, value))
}

fn text<'a>(value: Value<'a>, name: &str) -> Result<&'a str, String> {
    match value {
        Value::Delimited(bytes) => {
            std::str::from_utf8(bytes).map_err(|_| format!("{name} is not UTF-8"))
        }
        _ => Err(format!("{name} has the wrong wire type")),
    }
}

/// Merges one `google.protobuf.Timestamp` occurrence into `(seconds, nanos)`.
fn merge_timestamp(mut buf: &[u8], ts: &mut prost_types::Timestamp) -> Result<(), String> {
    while !buf.is_empty() {
        match field(&mut buf)? {
            // As prost: int64 and int32 read from the varint's low bits.
            (1, Value::Varint(v)) => ts.seconds = v as i64,
            (2, Value::Varint(v)) => ts.nanos = v as i32,
            (1 | 2, _) => return Err("recorded_at has the wrong wire type".into()),
            _ => {}
        }
    }
    Ok(())
}

impl<'a> EntryView<'a> {
    /// The indexed fields of an encoded `AuditEntry`, as prost would
    /// decode them (a later occurrence of a field replaces an earlier one;
    /// a message field merges); bytes that are no protobuf message, a
    /// string that is not UTF-8, or a group (no entry has one), are an
    /// error.
    pub(crate) fn read(mut leaf: &'a [u8]) -> Result<EntryView<'a>, String> {
        let mut view = EntryView::default();
        let mut ts: Option<prost_types::Timestamp> = None;
        while !leaf.is_empty() {
            match field(&mut leaf)? {
                (3, Value::Delimited(bytes)) => {
                    merge_timestamp(bytes, ts.get_or_insert_with(Default::default))?
                }
                (3, _) => return Err("recorded_at has the wrong wire type".into()),
                (4, v) => view.actor = text(v, "actor")?,
                (5, Value::Delimited(bytes)) => view.child_pseudonym = bytes,
                (5, _) => return Err("child_pseudonym has the wrong wire type".into()),
                (9, v) => view.source_agency = text(v, "source_agency")?,
                (10, v) => view.recipient_agency = text(v, "recipient_agency")?,
                (23, v) => view.subject = text(v, "subject")?,
                _ => {}
            }
        }
        view.recorded_at = ts.as_ref().map(Micros::from_timestamp).unwrap_or_default();
        Ok(view)
    }

    /// The indexed fields of a decoded entry.
    pub(crate) fn of(e: &'a pb::AuditEntry) -> EntryView<'a> {
        EntryView {
            recorded_at: recorded_at(e),
            actor: &e.actor,
            child_pseudonym: &e.child_pseudonym,
            source_agency: &e.source_agency,
            recipient_agency: &e.recipient_agency,
            subject: &e.subject,
        }
    }

    /// Each term of [`AuditTerm::of`] as (its first byte, [`CHILD`] or
    /// [`AGENCY`]; its value), without repeats.
    pub(crate) fn terms(&self, mut f: impl FnMut(u8, &'a [u8])) {
        if !self.child_pseudonym.is_empty() {
            f(CHILD, self.child_pseudonym);
        }
        let mut agencies: [&'a [u8]; 8] = [&[]; 8];
        let mut n = 0;
        let mut push = |a: &'a [u8]| {
            if a.is_empty() {
                return;
            }
            if n < agencies.len() {
                agencies[n] = a;
                n += 1;
            } else if !agencies.contains(&a) {
                // More distinct agencies than fit: rare, so no sorting.
                f(AGENCY, a);
            }
        };
        push(self.source_agency.as_bytes());
        push(self.recipient_agency.as_bytes());
        push(self.subject.as_bytes());
        let actor = self.actor.as_bytes();
        for (i, _) in actor.iter().enumerate().filter(|(_, b)| **b == b'/') {
            if actor[i..].starts_with(AGENCY_PATH) {
                push(&actor[i + AGENCY_PATH.len()..]);
            }
        }
        let agencies = &mut agencies[..n];
        agencies.sort_unstable();
        for (i, a) in agencies.iter().enumerate() {
            if i == 0 || agencies[i - 1] != *a {
                f(AGENCY, a);
            }
        }
    }
}

/// The terms of [`AuditTerm::of`] in the form [`EntryView::terms`] gives.
#[cfg(test)]
pub(crate) fn owned_terms(e: &pb::AuditEntry) -> Vec<(u8, Vec<u8>)> {
    AuditTerm::of(e)
        .into_iter()
        .map(|t| match t {
            AuditTerm::Child(p) => (CHILD, p),
            AuditTerm::Agency(a) => (AGENCY, a.into_bytes()),
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use prost::Message;

    fn entry(
        actor: &str,
        child: &[u8],
        source: &str,
        recipient: &str,
        subject: &str,
    ) -> pb::AuditEntry {
        pb::AuditEntry {
            index: 7,
            recorded_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 123_456_789,
            }),
            actor: actor.into(),
            child_pseudonym: child.to_vec(),
            source_agency: source.into(),
            recipient_agency: recipient.into(),
            subject: subject.into(),
            reason: "not indexed".into(),
            ..Default::default()
        }
    }

    fn view_terms(v: &EntryView<'_>) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        v.terms(|p, t| out.push((p, t.to_vec())));
        out.sort();
        out
    }

    #[test]
    fn a_view_reads_what_prost_decodes_and_gives_the_terms_of_audit_term_of() {
        let many = "spiffe://x/agency/a/agency/b/agency/c/agency/d/agency/e/agency/f/agency/g";
        let table = [
            entry("", b"", "", "", ""),
            entry(
                "spiffe://caseshare/agency/school-b",
                b"\x01\x02",
                "gp-a",
                "school-b",
                "",
            ),
            entry("spiffe://caseshare/admin", b"", "gp-a", "gp-a", "gp-a"),
            entry("spiffe://x/agency/agency/y", b"c", "", "", "y"),
            entry(many, b"c", "h", "a", "z"),
            entry("/agency/", b"", "", "", ""),
        ];
        for e in &table {
            let bytes = e.encode_to_vec();
            let v = EntryView::read(&bytes).unwrap();
            assert_eq!(v, EntryView::of(e), "{e:?}");
            let mut want = owned_terms(e);
            want.sort();
            assert_eq!(view_terms(&v), want, "{e:?}");
        }
    }

    #[test]
    fn later_occurrences_replace_and_timestamps_merge_as_prost_does() {
        let a = entry("first", b"1", "s1", "r1", "x1");
        let mut b = entry("second", b"2", "s2", "r2", "x2");
        b.recorded_at = Some(prost_types::Timestamp {
            seconds: 0,
            nanos: 5_000,
        });
        let mut bytes = a.encode_to_vec();
        bytes.extend(b.encode_to_vec());
        let decoded = pb::AuditEntry::decode(bytes.as_slice()).unwrap();
        assert_eq!(EntryView::read(&bytes).unwrap(), EntryView::of(&decoded));
    }

    #[test]
    fn bytes_that_are_no_entry_are_refused() {
        let good = entry("a", b"c", "s", "r", "x").encode_to_vec();
        // Truncated anywhere inside a field.
        for cut in 1..good.len() {
            let part = &good[..cut];
            let prost_ok = pb::AuditEntry::decode(part).is_ok();
            assert_eq!(EntryView::read(part).is_ok(), prost_ok, "cut at {cut}");
        }
        // A string that is not UTF-8.
        assert!(EntryView::read(&[0x22, 1, 0xff]).is_err());
        // A known field with the wrong wire type.
        assert!(EntryView::read(&[0x28, 1]).is_err());
        // Field number 0.
        assert!(EntryView::read(&[0x02, 0]).is_err());
    }
}
