//! Sealing a backup's chunks: ChaCha20-Poly1305 under a key derived from
//! the broker's pseudonym key and the backup's id, so that the admin who
//! takes a backup never holds a payload in the clear.
//!
//! - Key: HMAC-SHA256(pseudonym key, `caseshare backup v1` ‖ backup id).
//! - Nonce: file number (u32, big-endian) ‖ chunk number (u64, big-endian):
//!   unique per key, since a backup id is used once.
//! - Associated data: the file's path, `0`, and `1` on a file's last chunk
//!   (`0` otherwise), so a chunk moved to another file or place, or a file
//!   cut at a chunk boundary, does not open.
//! - Key check: SHA-256(`caseshare backup key check` ‖ key), kept in the
//!   manifest, so a wrong key is told apart from damaged chunks.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use sha2::{Digest, Sha256};

/// Plaintext bytes per chunk.
pub const CHUNK_BYTES: usize = 256 * 1024;
/// Bytes a sealed chunk adds (the tag).
pub const TAG_BYTES: usize = 16;

/// A backup's sealing key.
pub struct Sealer {
    key: LessSafeKey,
    check: [u8; 32],
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").finish_non_exhaustive()
    }
}

/// Where a chunk is: which file, which chunk of it, and whether it is the
/// file's last.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    /// The file's number in the backup (stream order).
    pub file: u32,
    /// Its path in the store.
    pub path: &'a str,
    /// The chunk's number in the file.
    pub chunk: u64,
    /// True on the file's last chunk.
    pub last: bool,
}

/// A chunk did not open: damaged, moved or sealed under another key.
#[derive(Debug, thiserror::Error)]
#[error("a sealed chunk did not open")]
pub struct Unsealable;

impl Sealer {
    /// The key for backup `backup_id` of the broker whose pseudonym key is
    /// `pseudonym_key`.
    pub fn new(pseudonym_key: &[u8], backup_id: &[u8]) -> Sealer {
        let mac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, pseudonym_key);
        let mut ctx = ring::hmac::Context::with_key(&mac);
        ctx.update(b"caseshare backup v1");
        ctx.update(backup_id);
        let tag = ctx.sign();
        let bytes = tag.as_ref();
        let mut check = Sha256::new();
        check.update(b"caseshare backup key check");
        check.update(bytes);
        // HMAC-SHA256 gives 32 bytes, ChaCha20-Poly1305's key length.
        let key = LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, bytes)
                .unwrap_or_else(|_| unreachable!("HMAC-SHA256 yields a 32-byte key")),
        );
        Sealer {
            key,
            check: check.finalize().into(),
        }
    }

    /// The key check for the manifest.
    pub fn key_check(&self) -> [u8; 32] {
        self.check
    }

    fn nonce(place: &Place<'_>) -> Nonce {
        let mut n = [0u8; 12];
        n[..4].copy_from_slice(&place.file.to_be_bytes());
        n[4..].copy_from_slice(&place.chunk.to_be_bytes());
        Nonce::assume_unique_for_key(n)
    }

    fn aad(place: &Place<'_>) -> Vec<u8> {
        let mut a = Vec::with_capacity(place.path.len() + 2);
        a.extend_from_slice(place.path.as_bytes());
        a.push(0);
        a.push(u8::from(place.last));
        a
    }

    /// Seals `plain` in place (the tag is appended).
    pub fn seal(&self, place: &Place<'_>, plain: &mut Vec<u8>) {
        // Sealing fails only for inputs over 256 GiB; chunks are 256 KiB.
        if self
            .key
            .seal_in_place_append_tag(Self::nonce(place), Aad::from(Self::aad(place)), plain)
            .is_err()
        {
            unreachable!("a chunk is far below ChaCha20-Poly1305's limit");
        }
    }

    /// Opens a sealed chunk in place; returns the plaintext's length.
    pub fn open<'b>(
        &self,
        place: &Place<'_>,
        sealed: &'b mut [u8],
    ) -> Result<&'b mut [u8], Unsealable> {
        self.key
            .open_in_place(Self::nonce(place), Aad::from(Self::aad(place)), sealed)
            .map_err(|_| Unsealable)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn place(file: u32, chunk: u64, last: bool) -> Place<'static> {
        Place {
            file,
            path: "db",
            chunk,
            last,
        }
    }

    #[test]
    fn a_sealed_chunk_opens_only_where_it_was_sealed_and_under_its_key() {
        let s = Sealer::new(b"pseudonym key", b"backup-1");
        let mut c = b"payload NHS 9434765919".to_vec();
        s.seal(&place(0, 3, false), &mut c);
        assert!(!c.windows(7).any(|w| w == b"payload"));
        assert_eq!(c.len(), 22 + TAG_BYTES);
        let cases: [(&Sealer, Place<'_>, bool); 5] = [
            (&s, place(0, 3, false), true),
            (&s, place(0, 4, false), false),
            (&s, place(1, 3, false), false),
            (&s, place(0, 3, true), false),
            (
                &s,
                Place {
                    path: "conf",
                    ..place(0, 3, false)
                },
                false,
            ),
        ];
        for (sealer, p, opens) in cases {
            let mut copy = c.clone();
            assert_eq!(sealer.open(&p, &mut copy).is_ok(), opens, "{p:?}");
        }
        let mut copy = c.clone();
        let plain = s.open(&place(0, 3, false), &mut copy).unwrap();
        assert_eq!(plain, b"payload NHS 9434765919");
        for other in [
            Sealer::new(b"another key", b"backup-1"),
            Sealer::new(b"pseudonym key", b"backup-2"),
        ] {
            let mut copy = c.clone();
            assert!(other.open(&place(0, 3, false), &mut copy).is_err());
            assert_ne!(other.key_check(), s.key_check());
        }
        assert_eq!(
            Sealer::new(b"pseudonym key", b"backup-1").key_check(),
            s.key_check()
        );
    }
}
