//! Fuzz target: arbitrary strings, and byte-level mutations of the signed
//! note vectors, through note, checkpoint and key parsing and verification;
//! see `caseshare_fuzz::signed_note` for the properties.
#![no_main]

use std::sync::LazyLock;

use caseshare_fuzz::common::mutate;
use caseshare_fuzz::signed_note::{Known, check_bytes};
use libfuzzer_sys::fuzz_target;

static KNOWN: LazyLock<Known> = LazyLock::new(Known::vectors);

fuzz_target!(|data: &[u8]| {
    check_bytes(data, &KNOWN, mutate);
});
