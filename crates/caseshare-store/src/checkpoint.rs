//! The latest signed audit checkpoint, persisted outside sled in
//! `<store>/checkpoint` when the broker makes one (about once a second while
//! the log grows), so that at open a sled that went back — fewer audit
//! entries than a checkpoint already handed out, or another root at that
//! size — is refused instead of silently rewriting history.
//!
//! Format: `CSCKPT01` ‖ size (u64 LE) ‖ root (32 bytes) ‖ note length (u32
//! LE) ‖ note ‖ CRC-32 of everything before it (u32 LE). Written with
//! [`crate::recovery::write_atomic`]; `checkpoint.tmp` is its temporary.

use std::path::{Path, PathBuf};

use crate::StoreError;
use crate::recovery::{ADVICE_RESTORE, damaged};

const MAGIC: &[u8; 8] = b"CSCKPT01";

/// The file name, in the store directory.
pub const FILE: &str = "checkpoint";

/// A persisted checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persisted {
    /// Tree size.
    pub size: u64,
    /// Root hash at that size.
    pub root: [u8; 32],
    /// The signed note.
    pub note: String,
}

/// Where the checkpoint of the store in `store_dir` is.
pub fn path(store_dir: &Path) -> PathBuf {
    store_dir.join(FILE)
}

/// Encodes a checkpoint.
pub fn encode(cp: &Persisted) -> Vec<u8> {
    let mut out = Vec::with_capacity(56 + cp.note.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&cp.size.to_le_bytes());
    out.extend_from_slice(&cp.root);
    out.extend_from_slice(&(cp.note.len() as u32).to_le_bytes());
    out.extend_from_slice(cp.note.as_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a checkpoint; `Err(why)` if damaged.
pub fn decode(bytes: &[u8]) -> Result<Persisted, String> {
    if bytes.len() < 56 {
        return Err(format!("only {} bytes", bytes.len()));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32fast::hash(body) != crc {
        return Err("its CRC does not match".into());
    }
    if &body[..8] != MAGIC {
        return Err("not a checkpoint file".into());
    }
    let mut w = [0u8; 8];
    w.copy_from_slice(&body[8..16]);
    let size = u64::from_le_bytes(w);
    let mut root = [0u8; 32];
    root.copy_from_slice(&body[16..48]);
    let len = u32::from_le_bytes([body[48], body[49], body[50], body[51]]) as usize;
    let note = body
        .get(52..)
        .filter(|n| n.len() == len)
        .ok_or("the note's length does not match")?;
    let note = String::from_utf8(note.to_vec()).map_err(|_| "the note is not UTF-8")?;
    Ok(Persisted { size, root, note })
}

/// Reads the persisted checkpoint: `None` if there is none (a store older
/// than this file, or one that never made a checkpoint), a refusal if the
/// file is damaged.
pub fn read(store_dir: &Path) -> Result<Option<Persisted>, StoreError> {
    let p = path(store_dir);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    decode(&bytes).map(Some).map_err(|why| {
        damaged(
            &p,
            None,
            format!(
                "the persisted audit checkpoint is unreadable ({why}), so the store cannot \
                 prove sled kept every audit entry"
            ),
            ADVICE_RESTORE,
        )
    })
}

/// Persists a checkpoint durably (temporary, sync, rename, directory sync).
pub fn write(store_dir: &Path, cp: &Persisted) -> Result<(), StoreError> {
    crate::recovery::write_atomic(&path(store_dir), &encode(cp), 0o600)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trips_and_any_flipped_byte_is_caught() {
        let cp = Persisted {
            size: 1234,
            root: [9; 32],
            note: "caseshare.local/log\n1234\nAAAA\n\n— sig\n".into(),
        };
        let bytes = encode(&cp);
        assert_eq!(decode(&bytes).unwrap(), cp);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(decode(&b).is_err(), "flip at {i}");
        }
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode(&[]).is_err());
    }
}
