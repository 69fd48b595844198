//! The bounds walk: every string, repeated field and number of a request,
//! at any depth, checked against the table in [`super::limits`] through the
//! schema's descriptors (so a field added to the schema without a bound is
//! caught by a test, not forgotten). Strings are bounded in bytes and
//! checked for control characters ([`super::text`]); lists are bounded in
//! items; floating-point numbers must be finite; timestamps must be real
//! instants (years 1-9999).
//!
//! The walk reads the encoded request itself ([`super::wire`]). Only what
//! that walk does not take — an encoding it refuses, such as a group in an
//! unknown field — is decoded into a `DynamicMessage` and walked here, as
//! every request was before; its tests compare the two walks.

use std::fmt::Write as _;

use prost_reflect::{DynamicMessage, ReflectMessage, Value};

use crate::time::timestamp_is_valid;

use super::limits::{FieldLimit, ID_BYTES, Text, field_limit};
use super::text::text_problem;
use super::{Collector, Violations};

/// The package every bounded message lives in.
pub(super) const PACKAGE: &str = "caseshare.v1";

/// A request message of one of the services, bounded by the table.
pub trait Bounded: prost::Message + Sized {
    /// The message's name in package `caseshare.v1`.
    const NAME: &'static str;
}

macro_rules! bounded {
    ($($t:ident),* $(,)?) => {
        $(impl Bounded for crate::pb::$t {
            const NAME: &'static str = stringify!($t);
        })*
        /// Every message that is the request of an RPC (each implements
        /// [`Bounded`]).
        pub const REQUEST_MESSAGES: &[&str] = &[$(stringify!($t)),*];
    };
}

bounded!(
    PublishRequest,
    GetEventStatusRequest,
    RetractEventRequest,
    Subscription,
    GetSubscriptionRequest,
    ListSubscriptionsRequest,
    DeleteSubscriptionRequest,
    SubscribeRequest,
    AckRequest,
    NackRequest,
    SeekRequest,
    ListDeadLettersRequest,
    ReplayDeadLettersRequest,
    ConsentRecord,
    WithdrawConsentRequest,
    ListConsentsRequest,
    RegisterAgencyRequest,
    ListAgenciesRequest,
    Agreement,
    EndAgreementRequest,
    ListAgreementsRequest,
    GetStatusRequest,
    BackupRequest,
    QueryRequest,
    GetCheckpointRequest,
    GetInclusionProofRequest,
    GetConsistencyProofRequest,
    GetEntriesRequest,
    SubjectAccessReportRequest,
);

/// A field the table has no row for (a test keeps there being none) is
/// still bounded, as an identifier.
pub(super) const FALLBACK: FieldLimit = FieldLimit {
    message: "",
    field: "",
    max_bytes: ID_BYTES,
    max_items: 64,
    text: Text::Id,
    note: "",
};

/// Checks every bound of a request.
pub fn check_bounds<M: Bounded>(request: &M) -> Result<(), Violations> {
    let mut c = Collector::default();
    collect(&mut c, request);
    c.finish(())
}

/// Checks every bound of an encoded message of package `caseshare.v1`
/// named `message` (e.g. `PublishRequest`).
pub fn check_encoded(message: &str, encoded: &[u8]) -> Result<(), Violations> {
    let mut c = Collector::default();
    collect_encoded(&mut c, message, encoded);
    c.finish(())
}

/// Adds every bound violation of `request` to `c`.
pub(super) fn collect<M: Bounded>(c: &mut Collector, request: &M) {
    collect_encoded(c, M::NAME, &request.encode_to_vec());
}

fn collect_encoded(c: &mut Collector, message: &str, encoded: &[u8]) {
    if let Some(plans) = super::wire::Plans::get()
        && let Some(root) = plans.root(message)
    {
        let mark = c.0.len();
        if super::wire::walk(c, plans, root, encoded, &mut String::with_capacity(64), 0).is_ok() {
            return;
        }
        // What it found before giving up is not the answer.
        c.0.truncate(mark);
    }
    // Malformed, or well-formed in a way the wire walk does not take: the
    // decoder says which.
    let desc = crate::minimise::descriptor_pool()
        .and_then(|p| p.get_message_by_name(&format!("{PACKAGE}.{message}")));
    let Some(desc) = desc else {
        c.add("", "the broker's schema is unavailable");
        return;
    };
    match DynamicMessage::decode(desc, encoded) {
        Ok(dynamic) => walk(c, &dynamic, &mut String::new()),
        Err(e) => c.add("", format!("the request could not be read: {e}")),
    }
}

/// The walk over a decoded message, as it was before [`super::wire`]: the
/// oracle of the tests. `Err` if `encoded` does not decode.
#[cfg(test)]
pub(super) fn check_decoded(
    message: &str,
    encoded: &[u8],
) -> Result<Vec<(String, String)>, String> {
    let desc = crate::minimise::descriptor_pool()
        .and_then(|p| p.get_message_by_name(&format!("{PACKAGE}.{message}")))
        .ok_or("no such message")?;
    let dynamic = DynamicMessage::decode(desc, encoded).map_err(|e| e.to_string())?;
    let mut c = Collector::default();
    walk(&mut c, &dynamic, &mut String::new());
    Ok(c.0.into_iter().map(|v| (v.field, v.description)).collect())
}

/// The wire walk alone: `Err` where it leaves the request to the decoder.
#[cfg(test)]
pub(super) fn check_wire(message: &str, encoded: &[u8]) -> Result<Vec<(String, String)>, String> {
    let plans = super::wire::Plans::get().ok_or("no schema")?;
    let root = plans.root(message).ok_or("no such message")?;
    let mut c = Collector::default();
    super::wire::walk(&mut c, plans, root, encoded, &mut String::new(), 0)?;
    Ok(c.0.into_iter().map(|v| (v.field, v.description)).collect())
}

/// Walks `msg`; `path` is its path from the request, extended and restored
/// in place (a path string is made only for a violation).
fn walk(c: &mut Collector, msg: &DynamicMessage, path: &mut String) {
    let desc = msg.descriptor();
    let own = desc.package_name() == PACKAGE;
    for field in desc.fields() {
        if !msg.has_field(&field) {
            continue;
        }
        let restore = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(field.name());
        let limit = if own {
            field_limit(desc.name(), field.name()).unwrap_or(&FALLBACK)
        } else {
            &FALLBACK
        };
        let value = msg.get_field(&field);
        match value.as_ref() {
            Value::List(items) if limit.max_items > 0 && items.len() > limit.max_items => {
                c.add(
                    path.as_str(),
                    format!(
                        "at most {} items are allowed; found {}",
                        limit.max_items,
                        items.len()
                    ),
                );
            }
            Value::List(items) => {
                for (i, item) in items.iter().enumerate() {
                    let item_restore = path.len();
                    let _ = write!(path, "[{i}]");
                    check_value(c, item, path, limit);
                    path.truncate(item_restore);
                }
            }
            v => check_value(c, v, path, limit),
        }
        path.truncate(restore);
    }
}

fn check_value(c: &mut Collector, value: &Value, path: &mut String, limit: &FieldLimit) {
    match value {
        Value::String(s) => {
            if s.len() > limit.max_bytes {
                c.add(
                    path.as_str(),
                    format!(
                        "at most {} bytes are allowed; found {}",
                        limit.max_bytes,
                        s.len()
                    ),
                );
            } else if let Some(problem) = text_problem(s, limit.text) {
                c.add(path.as_str(), problem);
            }
        }
        Value::Bytes(b) if b.len() > limit.max_bytes => c.add(
            path.as_str(),
            format!(
                "at most {} bytes are allowed; found {}",
                limit.max_bytes,
                b.len()
            ),
        ),
        Value::F64(x) if !x.is_finite() => c.add(
            path.as_str(),
            "must be a finite number (not NaN or infinity)",
        ),
        Value::F32(x) if !x.is_finite() => c.add(
            path.as_str(),
            "must be a finite number (not NaN or infinity)",
        ),
        // Timestamps and durations have no strings or lists: their ranges
        // are checked where they are used.
        // Every timestamp at any depth (a payload's included) is a real
        // instant; the event's own are checked further where they are used.
        Value::Message(m) if m.descriptor().full_name() == "google.protobuf.Timestamp" => {
            let valid = m
                .transcode_to::<prost_types::Timestamp>()
                .is_ok_and(|ts| timestamp_is_valid(&ts));
            if !valid {
                c.add(
                    path.as_str(),
                    "not a valid timestamp (years 1-9999, nanos 0-999999999)",
                );
            }
        }
        Value::Message(m) if m.descriptor().package_name() != PACKAGE => {}
        Value::Message(m) => walk(c, m, path),
        _ => {}
    }
}
