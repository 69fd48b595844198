//! Fuzz properties of audit leaf decoding (`caseshare_audit::entry`): an
//! auditor's verifier decodes leaf bytes it fetched from a broker it does
//! not trust, so decoding must never panic, and the encoding must be
//! canonical: whatever `entry::decode` accepts re-encodes to exactly the
//! same bytes (two byte strings can never claim to be the same entry), and
//! bytes that protobuf decodes but `entry::decode` refuses are exactly
//! those that differ from their canonical re-encoding.
//!
//! Shared by the `audit_entry` cargo-fuzz target and the proptest smoke run
//! in `crates/caseshare-audit/tests/fuzz_smoke.rs`.

use caseshare_audit::entry;
use caseshare_audit::merkle::leaf_hash;
use caseshare_proto::v1 as pb;
use prost::Message;

/// The fuzz target's body. Returns whether the bytes were a canonical
/// entry.
pub fn check_bytes(data: &[u8]) -> bool {
    let decoded = entry::decode(data);
    if let Ok(e) = &decoded {
        assert_eq!(
            entry::encode(e),
            data,
            "entry::decode accepted bytes that do not re-encode to themselves"
        );
        // Hashing a leaf is total.
        let _ = leaf_hash(data);
    }
    match pb::AuditEntry::decode(data) {
        Ok(e) => {
            let canonical = entry::encode(&e);
            assert_eq!(
                decoded.is_ok(),
                canonical == data,
                "entry::decode must accept exactly the canonical encoding"
            );
            let again = entry::decode(&canonical).unwrap_or_else(|err| {
                panic!("the canonical encoding of a decoded entry is refused: {err}")
            });
            assert_eq!(again, e, "the canonical encoding decodes to another entry");
        }
        Err(_) => assert!(
            decoded.is_err(),
            "entry::decode accepted non-protobuf bytes"
        ),
    }
    decoded.is_ok()
}

/// Checks a well-formed entry: it encodes canonically and round-trips.
pub fn check_entry(e: &pb::AuditEntry) {
    let bytes = entry::encode(e);
    let back = entry::decode(&bytes)
        .unwrap_or_else(|err| panic!("a freshly encoded entry is refused: {err}: {e:?}"));
    assert_eq!(&back, e);
    assert!(check_bytes(&bytes));
}
