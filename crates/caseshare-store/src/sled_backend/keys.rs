//! Sled's keys and values: building a key from a prefix and parts,
//! big-endian numbers, decoding a record, splitting an audit chunk.

use prost::Message;

use crate::StoreError;

pub(crate) fn key(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + parts.iter().map(|p| p.len()).sum::<usize>());
    k.push(prefix);
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

pub(crate) fn be(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

pub(crate) fn read_be(bytes: &[u8], what: &str) -> Result<u64, StoreError> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        key: what.to_string(),
        detail: format!("expected 8 bytes, found {}", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(arr))
}

pub(crate) fn decode<M: Message + Default>(k: &[u8], v: &[u8]) -> Result<M, StoreError> {
    M::decode(v).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(&k[..k.len().min(24)]).into_owned(),
        detail: e.to_string(),
    })
}

/// Splits a chunk record into its entries.
pub(crate) fn split_chunk(v: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
    crate::audit_log::chunk_entries(v)
        .map(|span| span.map(|(start, len)| v[start..start + len].to_vec()))
        .collect()
}
