//! Fuzz target: arbitrary bytes decoded as `PublishRequest`, `Agreement`,
//! `ConsentRecord`, `Subscription` and `RegisterAgencyRequest`, then
//! validated; see `caseshare_fuzz::validate` for the properties.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    caseshare_fuzz::validate::check_bytes(data);
});
