//! Keyed pseudonyms and commitments: the only forms in which a child's NHS
//! number and an event's payload reach the audit log.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// HMAC-SHA-256 of an NHS number under the broker's pseudonym key. The same
/// child always maps to the same pseudonym under one key, so auditors can
/// query by NHS number without the log ever holding one.
pub fn child_pseudonym(key: &[u8], nhs_number: &str) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0; 32],
    };
    mac.update(b"caseshare/v1/child\0");
    mac.update(nhs_number.as_bytes());
    mac.finalize().into_bytes().into()
}

/// A salted commitment to an event's bytes: SHA-256(salt ‖ bytes). The salt
/// stays beside the event (and is deleted with it), so the log commits to
/// the payload without letting anyone guess a low-entropy one.
pub fn payload_commitment(salt: &[u8], event_bytes: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(event_bytes);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonym_is_keyed_and_stable() {
        let a = child_pseudonym(b"k1", "9434765919");
        assert_eq!(a, child_pseudonym(b"k1", "9434765919"));
        assert_ne!(a, child_pseudonym(b"k2", "9434765919"));
        assert_ne!(a, child_pseudonym(b"k1", "4010232137"));
    }

    #[test]
    fn commitment_depends_on_salt() {
        assert_ne!(
            payload_commitment(b"s1", b"x"),
            payload_commitment(b"s2", b"x")
        );
    }
}
