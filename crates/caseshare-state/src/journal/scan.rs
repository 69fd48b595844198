//! The bounds check that runs before a journal message is decoded: one pass
//! over the protobuf framing, with no allocation, that reads the format
//! version, counts the operations and the items inside their commands, and
//! checks every length it crosses. Only a message within the
//! [`JournalLimits`] is handed to prost, so a damaged message cannot make a
//! replica build millions of empty records from a few megabytes.
//!
//! The scan knows the layout, not the schema: the top level (version first,
//! the ops field), each op's command field (the oneof tags) and the fields
//! inside a command, each of which counts as one item, except an integer
//! list of [`PACKED_LISTS`] sent packed, whose integers count one each.

use prost::encoding::decode_varint;

use super::wire::{COMMAND_TAGS, OPS_TAG, PACKED_LISTS, VERSION_TAG};
use super::{FORMAT_VERSION, JournalError, JournalLimits};

/// What the scan found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scanned {
    /// Operations in the batch.
    pub(crate) ops: usize,
    /// Fields and list elements inside the commands.
    pub(crate) items: usize,
}

/// One field's value, as far as the framing tells.
enum Value<'a> {
    Varint(u64),
    Fixed,
    Bytes(&'a [u8]),
}

/// Reads the next field of `buf`: (tag, value), or `None` at the end.
fn next_field<'a>(buf: &mut &'a [u8]) -> Result<Option<(u32, Value<'a>)>, JournalError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let key = decode_varint(buf).map_err(|_| JournalError::Framing("a field key is cut"))?;
    let tag = u32::try_from(key >> 3)
        .ok()
        .filter(|t| *t != 0)
        .ok_or(JournalError::Framing("a field tag is out of range"))?;
    let value = match key & 7 {
        0 => {
            Value::Varint(decode_varint(buf).map_err(|_| JournalError::Framing("a varint is cut"))?)
        }
        1 => {
            skip(buf, 8)?;
            Value::Fixed
        }
        2 => {
            let len = decode_varint(buf).map_err(|_| JournalError::Framing("a length is cut"))?;
            let len = usize::try_from(len)
                .ok()
                .filter(|l| *l <= buf.len())
                .ok_or(JournalError::Framing("a length runs past the end"))?;
            let (bytes, rest) = buf.split_at(len);
            *buf = rest;
            Value::Bytes(bytes)
        }
        5 => {
            skip(buf, 4)?;
            Value::Fixed
        }
        _ => return Err(JournalError::Framing("a field has an unknown wire type")),
    };
    Ok(Some((tag, value)))
}

fn skip(buf: &mut &[u8], n: usize) -> Result<(), JournalError> {
    if buf.len() < n {
        return Err(JournalError::Framing("a fixed-width field is cut"));
    }
    *buf = &buf[n..];
    Ok(())
}

/// Reads the format version, the first field in every format, so that a
/// reader refuses a format it does not know before reading anything else.
/// Leaves `buf` after it.
pub(crate) fn version(buf: &mut &[u8]) -> Result<(), JournalError> {
    match next_field(buf)? {
        Some((VERSION_TAG, Value::Varint(v))) if v == u64::from(FORMAT_VERSION) => Ok(()),
        Some((VERSION_TAG, Value::Varint(v))) => Err(JournalError::UnknownVersion(v)),
        _ => Err(JournalError::MissingVersion),
    }
}

/// Checks the body of a journal message (without its checksum) against
/// `limits` and the format version.
pub(crate) fn scan(body: &[u8], limits: &JournalLimits) -> Result<Scanned, JournalError> {
    if body.len() > limits.max_bytes {
        return Err(JournalError::TooLarge {
            bytes: body.len(),
            max: limits.max_bytes,
        });
    }
    let mut buf = body;
    version(&mut buf)?;
    let mut found = Scanned { ops: 0, items: 0 };
    while let Some((tag, value)) = next_field(&mut buf)? {
        match (tag, value) {
            (VERSION_TAG, _) => return Err(JournalError::Framing("the version appears twice")),
            (OPS_TAG, Value::Bytes(op)) => {
                found.ops += 1;
                if found.ops > limits.max_ops {
                    return Err(JournalError::TooManyOps {
                        max: limits.max_ops,
                    });
                }
                found.items = found.items.saturating_add(op_items(op)?);
                if found.items > limits.max_items {
                    return Err(JournalError::TooManyItems {
                        max: limits.max_items,
                    });
                }
            }
            (OPS_TAG, _) => return Err(JournalError::Framing("an op is not a message")),
            _ => {}
        }
    }
    Ok(found)
}

/// The items inside one op's command(s).
fn op_items(mut op: &[u8]) -> Result<usize, JournalError> {
    let mut items = 0usize;
    while let Some((tag, value)) = next_field(&mut op)? {
        let Value::Bytes(mut command) = value else {
            continue;
        };
        if !COMMAND_TAGS.contains(&tag) {
            continue;
        }
        while let Some((field, value)) = next_field(&mut command)? {
            items = items.saturating_add(match value {
                Value::Bytes(b) if PACKED_LISTS.contains(&(tag, field)) => {
                    // One integer ends at each byte without the high bit.
                    b.iter().filter(|x| **x < 0x80).count().max(1)
                }
                _ => 1,
            });
        }
    }
    Ok(items)
}
