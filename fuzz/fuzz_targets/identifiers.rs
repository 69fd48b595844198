//! Fuzz target: arbitrary strings through every identifier parser (SPIFFE
//! ids, NHS numbers, UPNs, event-type patterns, field paths); see
//! `caseshare_fuzz::identifiers` for the properties.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    caseshare_fuzz::identifiers::check_bytes(data);
});
