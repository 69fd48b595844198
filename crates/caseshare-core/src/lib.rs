//! Caseshare's domain logic, pure: identifiers and their validation, event
//! types and patterns, principals and the authorisation table, request
//! validation, the sharing decision, field minimisation and pseudonyms.
//!
//! Architecture Invariant: no I/O, no async runtime, no tonic, no sled. Every
//! function here is a function of its arguments (the current time is passed
//! in), so it can be tested with tables and fuzzed.
#![forbid(unsafe_code)]

pub mod authz;
pub mod decision;
pub mod event_type;
pub mod minimise;
pub mod nhs;
pub mod principal;
pub mod pseudonym;
pub mod time;
pub mod upn;
pub mod validate;

pub use caseshare_proto::v1 as pb;
