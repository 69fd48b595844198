//! Bounded smoke run of the `json_decode` fuzz target (issue 7, item 5),
//! inside `cargo test`: the very property code of `fuzz/src/json.rs`,
//! compiled in here through `#[path]`, driven by proptest with arbitrary
//! strings, JSON-shaped strings, byte-level and structural mutations of the
//! example events in `examples/events/*.json`, and publish requests whose
//! timestamps (payload ones included) are set to arbitrary values. Whatever
//! `from_json` parses must round-trip through `to_json`, and whatever the
//! broker would accept must render as proto3 JSON. Then every saved
//! crashing input under `fuzz/regressions/json_decode/` is replayed.
//!
//! `PROPTEST_CASES=<n>` runs every property `n` times instead of the
//! bounded default; the unbounded run is `cargo fuzz` (see `fuzz/`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../fuzz/src/common.rs"]
mod common;
#[path = "../../../fuzz/src/json.rs"]
mod json;

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use caseshare_cli::json::from_json;
use caseshare_core::minimise::case_event_descriptor;
use caseshare_proto::v1 as pb;
use proptest::collection::vec;
use proptest::prelude::*;
use prost::Message;
use prost_reflect::{DynamicMessage, Kind, Value};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

static EXAMPLES: LazyLock<Vec<serde_json::Value>> =
    LazyLock::new(|| json::load_examples(&repo().join("examples/events")));

/// `cases` runs, unless `PROPTEST_CASES` says otherwise. Failing cases are
/// not persisted beside this file: crashing inputs are kept, as bytes the
/// fuzz targets read too, under `fuzz/regressions/<target>/`.
fn config(cases: u32) -> ProptestConfig {
    let mut c = ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = cases;
    }
    c
}

fn example(i: usize) -> &'static serde_json::Value {
    &EXAMPLES[i % EXAMPLES.len()]
}

fn example_event(i: usize) -> pb::CaseEvent {
    from_json(json::CASE_EVENT, &example(i).to_string()).unwrap()
}

/// Sets every timestamp set in `event` (payload included) to the next of
/// `values`, cycling.
fn set_timestamps(event: &pb::CaseEvent, values: &[(i64, i32)]) -> pb::CaseEvent {
    fn walk(msg: &mut DynamicMessage, values: &[(i64, i32)], next: &mut usize) {
        let fields: Vec<_> = msg.fields().map(|(f, _)| f).collect();
        for field in fields {
            let Kind::Message(kind) = field.kind() else {
                continue;
            };
            if field.is_list() || field.is_map() {
                continue;
            }
            let Value::Message(inner) = msg.get_field_mut(&field) else {
                continue;
            };
            if kind.full_name() == "google.protobuf.Timestamp" {
                let (seconds, nanos) = values[*next % values.len()];
                *next += 1;
                let ts = prost_types::Timestamp { seconds, nanos };
                *inner = DynamicMessage::decode(kind, ts.encode_to_vec().as_slice()).unwrap();
            } else {
                walk(inner, values, next);
            }
        }
    }
    let mut dynamic = DynamicMessage::decode(
        case_event_descriptor().unwrap(),
        event.encode_to_vec().as_slice(),
    )
    .unwrap();
    if !values.is_empty() {
        walk(&mut dynamic, values, &mut 0);
    }
    let back: pb::CaseEvent = dynamic.transcode_to().unwrap();
    back
}

fn timestamp_value() -> impl Strategy<Value = (i64, i32)> {
    let seconds = prop_oneof![
        4 => 1_600_000_000i64..1_790_000_000,
        1 => -62_135_596_800i64..=253_402_300_799,
        1 => any::<i64>(),
        1 => prop::sample::select(vec![i64::MIN, i64::MAX, -62_135_596_801, 253_402_300_800]),
    ];
    let nanos = prop_oneof![6 => 0..1_000_000_000i32, 1 => any::<i32>()];
    (seconds, nanos)
}

proptest! {
    #![proptest_config(config(6_000))]

    #[test]
    fn json_never_panics_on_arbitrary_strings(s in any::<String>()) {
        json::check_str(&s);
    }
}

proptest! {
    #![proptest_config(config(2_000))]

    #[test]
    fn json_shaped_strings_round_trip(
        s in concat!(
            r#"\{("(eventId|event_id|purpose|summary|child|occurredAt|sensitivity|event|toAgencies|"#,
            r#"educationAttendanceConcern|healthWasNotBrought|[a-zA-Z_]{0,8})": ?"#,
            r#"("[ -~]{0,12}"|-?[0-9]{1,20}(\.[0-9]{1,4})?(e-?[0-9]{1,3})?|null|true|\[\]|\{\}|"#,
            r#"\{"nhsNumber": "[0-9]{10}"\}|"(EARLY_HELP|SAFEGUARDING|[A-Z_]{1,8})"),?){0,5}\}"#,
        ),
    ) {
        json::check_str(&s);
    }
}

proptest! {
    #![proptest_config(config(10_000))]

    #[test]
    fn byte_mutated_examples_round_trip(i in 0..64usize, pretty in any::<bool>(), ops in vec(any::<u8>(), 4..48)) {
        let text = if pretty {
            serde_json::to_string_pretty(example(i)).unwrap()
        } else {
            example(i).to_string()
        };
        json::check_bytes(&common::mutate(text.as_bytes(), &ops));
    }

    #[test]
    fn structurally_mutated_examples_round_trip(i in 0..64usize, ops in vec(any::<u8>(), 3..24)) {
        let mut doc = example(i).clone();
        json::mutate_value(&mut doc, &ops);
        json::check_str(&doc.to_string());
    }
}

proptest! {
    #![proptest_config(config(3_000))]

    #[test]
    fn accepted_requests_render_whatever_their_timestamps(
        i in 0..64usize,
        values in vec(timestamp_value(), 1..4),
        ops in vec(any::<u8>(), 0..24),
    ) {
        let request = pb::PublishRequest {
            event: Some(set_timestamps(&example_event(i), &values)),
            ..Default::default()
        };
        json::check_request(&request);
        json::check_encoded(&common::mutate(&request.encode_to_vec(), &ops));
    }
}

/// Every example parses as an event and as the event of a request, round
/// trips, and would be accepted (so the checks on accepted requests run).
#[test]
fn every_example_round_trips_and_is_accepted() {
    assert!(
        EXAMPLES.len() >= 15,
        "examples/events/ holds {} files",
        EXAMPLES.len()
    );
    for (i, e) in EXAMPLES.iter().enumerate() {
        assert_eq!(json::check_str(&e.to_string()), 1, "{e}");
        let request = serde_json::json!({ "event": e }).to_string();
        assert_eq!(json::check_str(&request), 1, "{request}");
        let event = set_timestamps(&example_event(i), &[]);
        let request = pb::PublishRequest {
            event: Some(event),
            ..Default::default()
        };
        assert!(json::check_request(&request), "example {i} is not accepted");
    }
}

/// Every saved crashing input still passes.
#[test]
fn fuzz_regressions_replay() {
    common::replay(
        &repo().join("fuzz/regressions"),
        "json_decode",
        json::check_bytes,
    );
}
