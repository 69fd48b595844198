//! Field minimisation, driven by the schema's descriptors: a recipient gets
//! only the field paths its agreement allows, plus the fields every
//! recipient needs to handle an event (see [`ALWAYS_SHARED`]); every other
//! set field is cleared and its path reported.
//!
//! Paths are relative to `CaseEvent`: `summary`,
//! `education_attendance_concern` (the whole payload) or
//! `education_attendance_concern.attendance_percent` (one field of it).

use std::sync::OnceLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor};

use crate::pb;

/// Fields of `CaseEvent` that every recipient of a shared event receives:
/// what the event is, about whom, why, when, how to handle it, and what it
/// corrects.
pub const ALWAYS_SHARED: &[&str] = &[
    "event_id",
    "child",
    "purpose",
    "occurred_at",
    "sensitivity",
    "corrects_event_id",
];

/// Why a field path is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldPathError {
    /// Does not name a field of `CaseEvent`.
    #[error("{0:?} is not a field path of caseshare.v1.CaseEvent")]
    Unknown(String),
    /// The schema could not be loaded (a build defect).
    #[error("the compiled schema is unavailable")]
    Schema,
}

/// Why minimisation failed (only on a build defect or corrupt input).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MinimiseError {
    /// The schema could not be loaded.
    #[error("the compiled schema is unavailable")]
    Schema,
    /// The event could not be transcoded.
    #[error("could not transcode the event: {0}")]
    Transcode(String),
}

fn pool() -> Option<&'static DescriptorPool> {
    static POOL: OnceLock<Option<DescriptorPool>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(caseshare_proto::FILE_DESCRIPTOR_SET).ok())
        .as_ref()
}

/// The descriptor of `caseshare.v1.CaseEvent`.
pub fn case_event_descriptor() -> Option<MessageDescriptor> {
    pool()?.get_message_by_name("caseshare.v1.CaseEvent")
}

/// The descriptor pool of the whole v1 schema.
pub fn descriptor_pool() -> Option<&'static DescriptorPool> {
    pool()
}

/// Checks that a path names a field (at any depth) of `CaseEvent`.
pub fn validate_field_path(path: &str) -> Result<(), FieldPathError> {
    let mut desc = case_event_descriptor().ok_or(FieldPathError::Schema)?;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let field = desc
            .get_field_by_name(part)
            .ok_or_else(|| FieldPathError::Unknown(path.to_string()))?;
        if parts.peek().is_some() {
            match field.kind() {
                Kind::Message(m) if !field.is_list() && !field.is_map() => desc = m,
                _ => return Err(FieldPathError::Unknown(path.to_string())),
            }
        }
    }
    Ok(())
}

/// What a recipient receives: the minimised event and the paths removed.
#[derive(Debug, Clone, PartialEq)]
pub struct Minimised {
    /// The event with disallowed fields cleared.
    pub event: pb::CaseEvent,
    /// Paths of fields that were set and removed, in schema order.
    pub redacted_fields: Vec<String>,
}

enum Keep {
    All,
    Some,
    None,
}

fn keep(path: &str, allowed: &[String]) -> Keep {
    if ALWAYS_SHARED.contains(&path) {
        return Keep::All;
    }
    let mut some = false;
    for a in allowed {
        if a == path
            || (path.starts_with(a.as_str()) && path.as_bytes().get(a.len()) == Some(&b'.'))
        {
            return Keep::All;
        }
        if a.starts_with(path) && a.as_bytes().get(path.len()) == Some(&b'.') {
            some = true;
        }
    }
    if some { Keep::Some } else { Keep::None }
}

fn prune(msg: &mut DynamicMessage, prefix: &str, allowed: &[String], removed: &mut Vec<String>) {
    let set: Vec<_> = msg.fields().map(|(f, _)| f).collect();
    for field in set {
        let path = if prefix.is_empty() {
            field.name().to_string()
        } else {
            format!("{prefix}.{}", field.name())
        };
        match keep(&path, allowed) {
            Keep::All => {}
            Keep::None => {
                msg.clear_field(&field);
                removed.push(path);
            }
            Keep::Some => {
                if let prost_reflect::Value::Message(inner) = msg.get_field_mut(&field) {
                    prune(inner, &path, allowed, removed);
                } else {
                    msg.clear_field(&field);
                    removed.push(path);
                }
            }
        }
    }
}

/// Minimises an event to the allowed paths. An empty `allowed` list means
/// the whole event.
pub fn minimise(event: &pb::CaseEvent, allowed: &[String]) -> Result<Minimised, MinimiseError> {
    if allowed.is_empty() {
        return Ok(Minimised {
            event: event.clone(),
            redacted_fields: Vec::new(),
        });
    }
    let desc = case_event_descriptor().ok_or(MinimiseError::Schema)?;
    let mut dynamic = DynamicMessage::decode(desc, event.encode_to_vec().as_slice())
        .map_err(|e| MinimiseError::Transcode(e.to_string()))?;
    let mut removed = Vec::new();
    prune(&mut dynamic, "", allowed, &mut removed);
    let event = pb::CaseEvent::decode(dynamic.encode_to_vec().as_slice())
        .map_err(|e| MinimiseError::Transcode(e.to_string()))?;
    Ok(Minimised {
        event,
        redacted_fields: removed,
    })
}

/// Every set field path of an event (leaves and messages), for tests and
/// audits of what a message carries.
pub fn set_field_paths(event: &pb::CaseEvent) -> Vec<String> {
    fn walk(msg: &DynamicMessage, prefix: &str, out: &mut Vec<String>) {
        for (field, value) in msg.fields() {
            let path = if prefix.is_empty() {
                field.name().to_string()
            } else {
                format!("{prefix}.{}", field.name())
            };
            out.push(path.clone());
            if let prost_reflect::Value::Message(m) = value {
                walk(m, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    if let Some(desc) = case_event_descriptor()
        && let Ok(dynamic) = DynamicMessage::decode(desc, event.encode_to_vec().as_slice())
    {
        walk(&dynamic, "", &mut out);
    }
    out
}

#[cfg(test)]
mod tests;
