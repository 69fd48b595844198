//! Fuzz properties of the CLI's proto3 JSON (`caseshare_cli::json`), the
//! path every event file a practitioner's system hands to `caseshare
//! publish` takes, and the path every delivery `caseshare subscribe`
//! prints takes:
//!
//! - `from_json::<CaseEvent>` and `from_json::<PublishRequest>` never panic
//!   on any string;
//! - what parses round-trips: `to_json` renders it, `from_json` of that
//!   rendering gives the same message (compared by its protobuf encoding,
//!   so NaN payload numbers compare equal), and rendering again gives the
//!   same JSON;
//! - a `PublishRequest` the broker would accept (`validate_publish`) can be
//!   rendered as proto3 JSON, so a recipient's CLI (or any proto3-JSON
//!   client) can print every event it can be sent.
//!
//! Shared by the `json_decode` cargo-fuzz target and the proptest smoke run
//! in `crates/caseshare-cli/tests/fuzz_smoke.rs`.

use std::fmt::Debug;
use std::path::Path;

use caseshare_cli::json::{from_json, to_json};
use caseshare_core::time::Micros;
use caseshare_core::validate::{Limits, validate_publish};
use caseshare_proto::v1 as pb;
use prost::Message;
use serde_json::Value;

/// The full name of the event message under test.
pub const CASE_EVENT: &str = "caseshare.v1.CaseEvent";
/// The full name of the publish request message under test.
pub const PUBLISH_REQUEST: &str = "caseshare.v1.PublishRequest";

/// JSON values the structural mutator puts in place of a node: edge cases
/// of proto3 JSON (64-bit integers as strings, NaN, timestamps at and past
/// the ends of their range, enum names and numbers, wrong types).
pub const LEAVES: &[&str] = &[
    "null",
    "true",
    "false",
    "0",
    "-1",
    "1.5",
    "-0.0",
    "1e308",
    "1e39",
    "4294967295",
    "4294967296",
    "18446744073709551616",
    "-9223372036854775809",
    "\"NaN\"",
    "\"Infinity\"",
    "\"-Infinity\"",
    "\"\"",
    "\"x\"",
    "\"1e3\"",
    "\"0x10\"",
    "\" 12\"",
    "\"9434765919\"",
    "\"9434765918\"",
    "\"EARLY_HELP\"",
    "\"SAFEGUARDING\"",
    "\"PURPOSE_UNSPECIFIED\"",
    "99",
    "-2147483649",
    "\"0001-01-01T00:00:00Z\"",
    "\"9999-12-31T23:59:59.999999999Z\"",
    "\"0000-12-31T23:59:59Z\"",
    "\"10000-01-01T00:00:00Z\"",
    "\"2026-02-30T00:00:00Z\"",
    "\"2026-10-09T16:00:00+01:00\"",
    "\"2026-10-09T16:00:00-23:59\"",
    "\"2026-10-09t16:00:00z\"",
    "\"1970-01-01T00:00:00.1234567891Z\"",
    "\"2026-10-09T16:00:60Z\"",
    "\"\\u0000\"",
    "\"\\u2014 \\n\"",
    "[]",
    "{}",
    "[1, 2]",
    "{\"nhsNumber\": \"9434765919\"}",
    "{\"nhs_number\": \"9434765919\"}",
    "{\"safeguardingOverride\": {\"legalBasis\": \"CHILDREN_ACT_1989_S47\", \"justification\": \"x\"}}",
];

/// Keys the structural mutator renames a member to: proto field names
/// (proto3 JSON accepts both `lowerCamel` and the original `snake_case`),
/// oneof siblings, and unknown names.
pub const KEYS: &[&str] = &[
    "eventId",
    "event_id",
    "child",
    "purpose",
    "occurredAt",
    "occurred_at",
    "summary",
    "sensitivity",
    "correctsEventId",
    "expiresAt",
    "educationAttendanceConcern",
    "education_attendance_concern",
    "healthWasNotBrought",
    "socialCareReferralAccepted",
    "event",
    "basis",
    "toAgencies",
    "to_agencies",
    "@type",
    "",
    "unknownField",
];

/// Example event files (`examples/events/*.json`) under `dir`, parsed.
pub fn load_examples(dir: &Path) -> Vec<Value> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .filter_map(|s| serde_json::from_str(&s).ok())
        .collect()
}

/// The fuzz target's body: the bytes as JSON text, and as an encoded
/// `PublishRequest` that, if the broker would accept it, must render.
pub fn check_bytes(data: &[u8]) {
    check_str(&String::from_utf8_lossy(data));
    check_encoded(data);
}

/// Parses `s` as each message type and checks the round trip of what
/// parses. Returns how many types it parsed as.
pub fn check_str(s: &str) -> usize {
    usize::from(round_trip::<pb::CaseEvent>(CASE_EVENT, s))
        + usize::from(round_trip::<pb::PublishRequest>(PUBLISH_REQUEST, s))
}

fn round_trip<M: Message + Default + Debug>(type_name: &str, s: &str) -> bool {
    let Ok(message) = from_json::<M>(type_name, s) else {
        return false;
    };
    check_renders(type_name, &message, &format!("parsed from {s:?}"));
    true
}

/// `message` renders as proto3 JSON, and that JSON parses back to the same
/// message and renders again identically.
pub fn check_renders<M: Message + Default + Debug>(type_name: &str, message: &M, origin: &str) {
    let json = to_json(type_name, message).unwrap_or_else(|e| {
        panic!("{type_name} {origin} cannot be rendered as proto3 JSON: {e}: {message:?}")
    });
    let text = json.to_string();
    let back: M = from_json(type_name, &text).unwrap_or_else(|e| {
        panic!("{type_name} {origin} renders as {text} which does not parse back: {e}")
    });
    assert_eq!(
        back.encode_to_vec(),
        message.encode_to_vec(),
        "{type_name} {origin} changes in a JSON round trip: {message:?} became {back:?} via {text}"
    );
    let again = to_json(type_name, &back).ok();
    assert_eq!(
        again.as_ref(),
        Some(&json),
        "{type_name} {origin} renders two ways"
    );
}

/// If `data` is a `PublishRequest` the broker would accept, it renders.
/// Returns whether it was one.
pub fn check_encoded(data: &[u8]) -> bool {
    let Ok(request) = pb::PublishRequest::decode(data) else {
        return false;
    };
    check_request(&request)
}

/// If `request` would be accepted, it (and its event) render.
pub fn check_request(request: &pb::PublishRequest) -> bool {
    let len = request.event.as_ref().map_or(0, Message::encoded_len);
    let now = Micros(1_800_000_000 * Micros::SECOND);
    if validate_publish(request, len, now, &Limits::default()).is_err() {
        return false;
    }
    check_renders(PUBLISH_REQUEST, request, "accepted by validate_publish");
    if let Some(event) = &request.event {
        check_renders(CASE_EVENT, event, "accepted by validate_publish");
    }
    true
}

/// JSON pointers of every node of `v`, root first.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let escaped = k.replace('~', "~0").replace('/', "~1");
                pointers(child, format!("{at}/{escaped}"), out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                pointers(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// Applies structural mutations to a JSON document. `ops` is read three
/// bytes at a time: `[op, node, value]`; `node` picks a node (modulo the
/// node count). Operations: replace the node with a [`LEAVES`] value,
/// delete it from its parent, add a member with a [`KEYS`] name, rename
/// its key to a [`KEYS`] name, wrap it in an array, or wrap it as the
/// `event` of a `PublishRequest`.
pub fn mutate_value(doc: &mut Value, ops: &[u8]) {
    for op in ops.chunks_exact(3) {
        let mut all = Vec::new();
        pointers(doc, String::new(), &mut all);
        let pointer = all[usize::from(op[1]) % all.len()].clone();
        let leaf = || -> Value {
            serde_json::from_str(LEAVES[usize::from(op[2]) % LEAVES.len()]).unwrap_or(Value::Null)
        };
        let key = KEYS[usize::from(op[2]) % KEYS.len()].to_string();
        let (parent, last) = match pointer.rfind('/') {
            Some(i) => (pointer[..i].to_string(), Some(pointer[i + 1..].to_string())),
            None => (String::new(), None),
        };
        let last = last.map(|l| l.replace("~1", "/").replace("~0", "~"));
        match op[0] % 6 {
            0 => {
                if let Some(node) = doc.pointer_mut(&pointer) {
                    *node = leaf();
                }
            }
            1 => match (doc.pointer_mut(&parent), last) {
                (Some(Value::Object(m)), Some(k)) => {
                    m.remove(&k);
                }
                (Some(Value::Array(a)), Some(i)) => {
                    if let Ok(i) = i.parse::<usize>()
                        && i < a.len()
                    {
                        a.remove(i);
                    }
                }
                _ => {}
            },
            2 => {
                if let Some(Value::Object(m)) = doc.pointer_mut(&pointer) {
                    m.insert(key, leaf());
                }
            }
            3 => {
                if let (Some(Value::Object(m)), Some(k)) = (doc.pointer_mut(&parent), last)
                    && let Some(v) = m.remove(&k)
                {
                    m.insert(key, v);
                }
            }
            4 => {
                if let Some(node) = doc.pointer_mut(&pointer) {
                    *node = Value::Array(vec![node.take()]);
                }
            }
            _ => {
                let event = doc.take();
                *doc = serde_json::json!({ "event": event, "toAgencies": ["la-social-care-c"] });
            }
        }
    }
}
