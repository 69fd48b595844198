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

/// [`child_pseudonym`] under one key, with the key absorbed once: each
/// pseudonym then costs two SHA-256 compressions instead of four (the
/// writer makes several per event).
#[derive(Clone)]
pub struct PseudonymKey(Hmac<Sha256>);

impl PseudonymKey {
    /// The key, absorbed.
    pub fn new(key: &[u8]) -> Self {
        // HMAC accepts keys of any length; `new_from_slice` cannot fail.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
            .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new(&Default::default()));
        PseudonymKey(mac)
    }

    /// The child pseudonym of `nhs_number`: [`child_pseudonym`] under this key.
    pub fn child(&self, nhs_number: &str) -> [u8; 32] {
        let mut mac = self.0.clone();
        mac.update(b"caseshare/v1/child\0");
        mac.update(nhs_number.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

impl std::fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PseudonymKey(..)")
    }
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
    fn the_absorbed_key_gives_the_same_pseudonyms_by_table() {
        let long = [7u8; 100];
        for key in [&b""[..], b"k1", &[9u8; 32], &[1u8; 64], &long] {
            let absorbed = PseudonymKey::new(key);
            for nhs in ["9434765919", "4010232137", "", "x"] {
                assert_eq!(
                    absorbed.child(nhs),
                    child_pseudonym(key, nhs),
                    "{key:?} {nhs}"
                );
            }
        }
        assert_eq!(
            format!("{:?}", PseudonymKey::new(b"secret")),
            "PseudonymKey(..)"
        );
    }

    #[test]
    fn commitment_depends_on_salt() {
        assert_ne!(
            payload_commitment(b"s1", b"x"),
            payload_commitment(b"s2", b"x")
        );
    }
}
