//! Fuzz target: arbitrary strings as proto3 JSON `CaseEvent` and
//! `PublishRequest` (the CLI's `from_json`), and arbitrary bytes as an
//! encoded `PublishRequest` that, if valid, must render as JSON; see
//! `caseshare_fuzz::json` for the properties. Seed it with the example
//! events: `cargo fuzz run json_decode fuzz/corpus/json_decode examples/events`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    caseshare_fuzz::json::check_bytes(data);
});
