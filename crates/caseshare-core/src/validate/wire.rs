//! The bounds walk over the wire format: the encoded request is read field
//! by field against a plan of each message made once from the schema's
//! descriptors (each field's name, list-ness, oneof, bound and how to read
//! it), without decoding it into a `DynamicMessage` (which allocated a value
//! for every field and was most of the walk's cost: ~10 % of the broker's
//! CPU when publishing pipelined).
//!
//! Each message is read twice: once to count the items of its repeated
//! fields (they may be split across the message, and packed scalars hold
//! many items in one field), then to check every value, so that a list
//! over its bound gets one violation and its items are not read. An `Err`
//! means "not taken here": malformed, a group, or what decoding would
//! merge or overwrite (a singular field written twice, two fields of one
//! oneof); the caller then decodes and walks the decoded message, so the
//! answer is always the decoded walk's.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::OnceLock;

use prost::encoding::decode_varint;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor};
use smallvec::SmallVec;

use crate::time::timestamp_is_valid;

use super::Collector;
use super::bounds::{FALLBACK, PACKAGE};
use super::limits::{FieldLimit, field_limit};
use super::text::text_problem;

/// The largest field number protobuf allows (2^29 - 1).
const MAX_FIELD_NUMBER: u32 = (1 << 29) - 1;

/// How deep messages may nest (prost's own decoding limit).
const MAX_DEPTH: u32 = 100;

/// One field as written: its number and its value's bytes.
enum Raw<'a> {
    Varint(u64),
    Fixed64([u8; 8]),
    Fixed32([u8; 4]),
    Delimited(&'a [u8]),
}

/// The fields of an encoded message, in the order written.
struct Fields<'a> {
    buf: &'a [u8],
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Raw<'a>), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        let item = self.read();
        if item.is_err() {
            self.buf = &[];
        }
        Some(item)
    }
}

impl<'a> Fields<'a> {
    fn read(&mut self) -> Result<(u32, Raw<'a>), String> {
        let key = decode_varint(&mut self.buf).map_err(|e| e.to_string())?;
        let number = u32::try_from(key >> 3)
            .ok()
            .filter(|n| (1..=MAX_FIELD_NUMBER).contains(n))
            .ok_or_else(|| format!("invalid field number in key {key}"))?;
        let raw = match key & 7 {
            0 => Raw::Varint(decode_varint(&mut self.buf).map_err(|e| e.to_string())?),
            1 => Raw::Fixed64(self.take_array()?),
            5 => Raw::Fixed32(self.take_array()?),
            2 => {
                let len = decode_varint(&mut self.buf).map_err(|e| e.to_string())?;
                let len = usize::try_from(len)
                    .ok()
                    .filter(|l| *l <= self.buf.len())
                    .ok_or("a length-delimited field runs past the end")?;
                let (value, rest) = self.buf.split_at(len);
                self.buf = rest;
                Raw::Delimited(value)
            }
            w => return Err(format!("unsupported wire type {w} (field {number})")),
        };
        Ok((number, raw))
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let (head, rest) = self
            .buf
            .split_first_chunk::<N>()
            .ok_or("a fixed-width field runs past the end")?;
        self.buf = rest;
        Ok(*head)
    }
}

/// What the walk needs to know of one field, looked up once.
struct FieldPlan {
    name: String,
    list: bool,
    /// Its oneof, as an index among its message's oneofs.
    oneof: Option<usize>,
    limit: &'static FieldLimit,
    kind: Shape,
}

/// How a field's values are read and checked.
enum Shape {
    Str,
    Bytes,
    Double,
    Float,
    Timestamp,
    /// A message of this package: the index of its plan.
    Own(usize),
    /// Another package's message: no bounds, but it must decode.
    Foreign(MessageDescriptor),
    /// Any other scalar, written with this wire type (unpacked).
    Scalar(u64),
}

impl Shape {
    /// The wire type of one unpacked item, for scalars (which may be
    /// packed in a list).
    fn scalar_wire(&self) -> Option<u64> {
        match self {
            Shape::Double => Some(1),
            Shape::Float => Some(5),
            Shape::Scalar(w) => Some(*w),
            _ => None,
        }
    }
}

/// One message's fields, sorted by number.
struct Plan {
    fields: Vec<(u32, FieldPlan)>,
}

impl Plan {
    fn field(&self, number: u32) -> Option<&FieldPlan> {
        self.fields
            .binary_search_by_key(&number, |(n, _)| *n)
            .ok()
            .and_then(|i| self.fields.get(i))
            .map(|(_, f)| f)
    }
}

/// The plans of every message of the package, built once from the schema.
pub(super) struct Plans {
    by_name: HashMap<String, usize>,
    plans: Vec<Plan>,
}

impl Plans {
    /// The plans, or `None` if the broker's schema is unavailable.
    pub(super) fn get() -> Option<&'static Plans> {
        static PLANS: OnceLock<Option<Plans>> = OnceLock::new();
        PLANS
            .get_or_init(|| crate::minimise::descriptor_pool().map(Plans::build))
            .as_ref()
    }

    fn build(pool: &DescriptorPool) -> Plans {
        let messages: Vec<MessageDescriptor> = pool
            .all_messages()
            .filter(|m| m.package_name() == PACKAGE)
            .collect();
        let by_full: HashMap<String, usize> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| (m.full_name().to_owned(), i))
            .collect();
        let plans = messages
            .iter()
            .map(|m| {
                let oneofs: Vec<String> = m.oneofs().map(|o| o.name().to_owned()).collect();
                let mut fields: Vec<(u32, FieldPlan)> = m
                    .fields()
                    .map(|f| {
                        let kind = match f.kind() {
                            Kind::String => Shape::Str,
                            Kind::Bytes => Shape::Bytes,
                            Kind::Double => Shape::Double,
                            Kind::Float => Shape::Float,
                            Kind::Message(inner)
                                if inner.full_name() == "google.protobuf.Timestamp" =>
                            {
                                Shape::Timestamp
                            }
                            Kind::Message(inner) => match by_full.get(inner.full_name()) {
                                Some(i) => Shape::Own(*i),
                                None => Shape::Foreign(inner),
                            },
                            Kind::Fixed64 | Kind::Sfixed64 => Shape::Scalar(1),
                            Kind::Fixed32 | Kind::Sfixed32 => Shape::Scalar(5),
                            _ => Shape::Scalar(0),
                        };
                        let oneof = f
                            .containing_oneof()
                            .and_then(|o| oneofs.iter().position(|n| n == o.name()));
                        let plan = FieldPlan {
                            name: f.name().to_owned(),
                            list: f.is_list(),
                            oneof,
                            limit: field_limit(m.name(), f.name()).unwrap_or(&FALLBACK),
                            kind,
                        };
                        (f.number(), plan)
                    })
                    .collect();
                fields.sort_by_key(|(n, _)| *n);
                Plan { fields }
            })
            .collect();
        let by_name = messages
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name().to_owned(), i))
            .collect();
        Plans { by_name, plans }
    }

    /// The plan of message `name` of the package.
    pub(super) fn root(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }
}

fn wire_of(raw: &Raw<'_>) -> u64 {
    match raw {
        Raw::Varint(_) => 0,
        Raw::Fixed64(_) => 1,
        Raw::Fixed32(_) => 5,
        Raw::Delimited(_) => 2,
    }
}

/// Items of a packed run of scalars written with `wire`.
fn packed_items(mut buf: &[u8], wire: u64) -> Result<Vec<Raw<'_>>, String> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        out.push(match wire {
            0 => Raw::Varint(decode_varint(&mut buf).map_err(|e| e.to_string())?),
            1 => {
                let (head, rest) = buf
                    .split_first_chunk::<8>()
                    .ok_or("a packed field has a partial item")?;
                buf = rest;
                Raw::Fixed64(*head)
            }
            _ => {
                let (head, rest) = buf
                    .split_first_chunk::<4>()
                    .ok_or("a packed field has a partial item")?;
                buf = rest;
                Raw::Fixed32(*head)
            }
        });
    }
    Ok(out)
}

/// How many items a field written as `raw` adds to its list.
fn items_in(field: &FieldPlan, raw: &Raw<'_>) -> Result<usize, String> {
    match (field.kind.scalar_wire(), raw) {
        (Some(wire), Raw::Delimited(b)) => Ok(packed_items(b, wire)?.len()),
        _ => Ok(1),
    }
}

/// Checks every bound of the encoded message `buf` whose plan is `index`;
/// `Err` leaves the request to the decoder (see the module's doc).
pub(super) fn walk(
    c: &mut Collector,
    plans: &Plans,
    index: usize,
    buf: &[u8],
    path: &mut String,
    depth: u32,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err("messages nest too deeply".into());
    }
    let plan = plans.plans.get(index).ok_or("no such message")?;
    // Pass 1: the items of each repeated field. A singular field written
    // twice, or two fields of one oneof, are left to the decoder (which
    // keeps the last, and merges messages).
    // On the stack for messages of up to 16 fields (every message of the
    // schema today): the walk runs for every request.
    let mut counts: SmallVec<[(u32, usize, usize); 4]> = SmallVec::new();
    let mut singles: SmallVec<[u32; 16]> = SmallVec::new();
    let mut oneofs: SmallVec<[usize; 4]> = SmallVec::new();
    for item in (Fields { buf }) {
        let (number, raw) = item?;
        let Some(field) = plan.field(number) else {
            continue;
        };
        if field.list {
            let n = items_in(field, &raw)?;
            match counts.iter_mut().find(|(f, _, _)| *f == number) {
                Some((_, count, _)) => *count += n,
                None => counts.push((number, n, 0)),
            }
            continue;
        }
        if singles.contains(&number) {
            return Err(format!("field {} is written more than once", field.name));
        }
        singles.push(number);
        if let Some(oneof) = field.oneof {
            if oneofs.contains(&oneof) {
                return Err(format!("a oneof of field {} is set twice", field.name));
            }
            oneofs.push(oneof);
        }
    }
    // Pass 2: every value.
    for item in (Fields { buf }) {
        let (number, raw) = item?;
        let Some(field) = plan.field(number) else {
            continue;
        };
        let restore = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(&field.name);
        let limit = field.limit;
        let result =
            if let Some((_, count, seen)) = counts.iter_mut().find(|(f, _, _)| *f == number) {
                if limit.max_items > 0 && *count > limit.max_items {
                    // One violation for the list, at its first piece.
                    if *seen == 0 {
                        c.add(
                            path.as_str(),
                            format!(
                                "at most {} items are allowed; found {}",
                                limit.max_items, count
                            ),
                        );
                    }
                    *seen += 1;
                    Ok(())
                } else {
                    check_items(c, plans, field, raw, path, seen, depth)
                }
            } else {
                check_value(c, plans, field, raw, path, depth)
            };
        path.truncate(restore);
        result?;
    }
    Ok(())
}

/// Checks the items of one piece of a list; `seen` counts the items before.
fn check_items(
    c: &mut Collector,
    plans: &Plans,
    field: &FieldPlan,
    raw: Raw<'_>,
    path: &mut String,
    seen: &mut usize,
    depth: u32,
) -> Result<(), String> {
    let items = match (field.kind.scalar_wire(), raw) {
        (Some(wire), Raw::Delimited(b)) => packed_items(b, wire)?,
        (_, raw) => vec![raw],
    };
    for item in items {
        let restore = path.len();
        let _ = write!(path, "[{seen}]");
        *seen += 1;
        let result = check_value(c, plans, field, item, path, depth);
        path.truncate(restore);
        result?;
    }
    Ok(())
}

fn check_value(
    c: &mut Collector,
    plans: &Plans,
    field: &FieldPlan,
    raw: Raw<'_>,
    path: &mut String,
    depth: u32,
) -> Result<(), String> {
    let limit = field.limit;
    let wrong = || format!("field {} has the wrong wire type", field.name);
    match (&field.kind, raw) {
        (Shape::Str, Raw::Delimited(b)) => {
            let s = std::str::from_utf8(b)
                .map_err(|_| format!("field {} is not valid UTF-8", field.name))?;
            if s.len() > limit.max_bytes {
                c.add(path.as_str(), too_long(limit, s.len()));
            } else if let Some(problem) = text_problem(s, limit.text) {
                c.add(path.as_str(), problem);
            }
        }
        (Shape::Bytes, Raw::Delimited(b)) => {
            if b.len() > limit.max_bytes {
                c.add(path.as_str(), too_long(limit, b.len()));
            }
        }
        (Shape::Double, Raw::Fixed64(b)) => {
            if !f64::from_le_bytes(b).is_finite() {
                c.add(path.as_str(), NOT_FINITE);
            }
        }
        (Shape::Float, Raw::Fixed32(b)) => {
            if !f32::from_le_bytes(b).is_finite() {
                c.add(path.as_str(), NOT_FINITE);
            }
        }
        (Shape::Timestamp, Raw::Delimited(b)) => {
            if !timestamp_ok(b)? {
                c.add(
                    path.as_str(),
                    "not a valid timestamp (years 1-9999, nanos 0-999999999)",
                );
            }
        }
        (Shape::Own(index), Raw::Delimited(b)) => walk(c, plans, *index, b, path, depth + 1)?,
        (Shape::Foreign(m), Raw::Delimited(b)) => {
            DynamicMessage::decode(m.clone(), b).map_err(|e| e.to_string())?;
        }
        (Shape::Scalar(w), raw) if wire_of(&raw) == *w => {}
        _ => return Err(wrong()),
    }
    Ok(())
}

const NOT_FINITE: &str = "must be a finite number (not NaN or infinity)";

fn too_long(limit: &FieldLimit, found: usize) -> String {
    format!(
        "at most {} bytes are allowed; found {found}",
        limit.max_bytes
    )
}

/// Whether an encoded `google.protobuf.Timestamp` is a real instant.
fn timestamp_ok(buf: &[u8]) -> Result<bool, String> {
    let mut ts = prost_types::Timestamp::default();
    for item in (Fields { buf }) {
        match item? {
            // int64 and int32 as varints (two's complement, truncated).
            (1, Raw::Varint(v)) => ts.seconds = v as i64,
            (2, Raw::Varint(v)) => ts.nanos = v as i64 as i32,
            (1 | 2, _) => return Err("a timestamp field has the wrong wire type".into()),
            _ => {}
        }
    }
    Ok(timestamp_is_valid(&ts))
}
