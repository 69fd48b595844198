//! Caseshare's fuzz properties, one module per cargo-fuzz target (see
//! `fuzz_targets/`). Each module's `check_*` functions are the target's
//! body; the same files are compiled into the bounded proptest smoke runs
//! in `crates/caseshare-{core,audit,cli}/tests/fuzz_smoke.rs` through
//! `#[path]`, so the properties CI checks and the properties the fuzzer
//! checks are one and the same code.
//!
//! | target             | module           | smoke run in                 |
//! |--------------------|------------------|------------------------------|
//! | `validate_publish` | [`validate`]     | `caseshare-core`             |
//! | `identifiers`      | [`identifiers`]  | `caseshare-core`             |
//! | `audit_entry`      | [`audit_entry`]  | `caseshare-audit`            |
//! | `signed_note`      | [`signed_note`]  | `caseshare-audit`            |
//! | `json_decode`      | [`json`]         | `caseshare-cli`              |

pub mod audit_entry;
pub mod common;
pub mod identifiers;
pub mod json;
pub mod signed_note;
pub mod validate;
