//! Fuzz target: arbitrary bytes as audit leaves (`caseshare_audit::entry`);
//! see `caseshare_fuzz::audit_entry` for the properties.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    caseshare_fuzz::audit_entry::check_bytes(data);
});
