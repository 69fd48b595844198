//! Audit entries and their stored bytes.
//!
//! A leaf of the log is the protobuf encoding of one `caseshare.v1.AuditEntry`
//! as prost writes it: fields in field-number order, default values omitted,
//! no maps and no unknown fields, so the same entry always has the same bytes.
//! The broker stores those bytes and never re-encodes them; the Merkle tree
//! and every proof are over exactly what was stored.

use caseshare_proto::v1 as pb;
use prost::Message;

/// Why stored bytes are not an audit entry.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// Not a protobuf `AuditEntry`.
    #[error("not an audit entry: {0}")]
    Decode(#[from] prost::DecodeError),
    /// Decodes, but is not in the canonical encoding the broker writes.
    #[error("audit entry is not canonically encoded")]
    NotCanonical,
}

/// Encodes an entry into its leaf bytes.
pub fn encode(entry: &pb::AuditEntry) -> Vec<u8> {
    entry.encode_to_vec()
}

/// Decodes leaf bytes, insisting they are the canonical encoding (so that two
/// different byte strings can never claim to be the same entry).
pub fn decode(leaf: &[u8]) -> Result<pb::AuditEntry, EntryError> {
    let entry = pb::AuditEntry::decode(leaf)?;
    if entry.encode_to_vec() != leaf {
        return Err(EntryError::NotCanonical);
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip_is_canonical() {
        let e = pb::AuditEntry {
            index: 7,
            kind: pb::EntryKind::ShareDecided as i32,
            actor: "spiffe://caseshare.local/agency/school-b".into(),
            child_pseudonym: vec![1; 32],
            decision: pb::Decision::Withheld as i32,
            reason: "no_agreement".into(),
            ..Default::default()
        };
        let bytes = encode(&e);
        assert_eq!(decode(&bytes).unwrap(), e);
        // A field repeated (last one wins in protobuf) decodes but is not canonical.
        let mut doubled = bytes.clone();
        doubled.extend_from_slice(&[0x08, 0x07]);
        assert!(matches!(decode(&doubled), Err(EntryError::NotCanonical)));
        assert!(decode(&[0xff, 0xff]).is_err());
    }
}
