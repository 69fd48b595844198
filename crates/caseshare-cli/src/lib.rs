//! Client-side pieces of the `caseshare` command, shared with the
//! end-to-end tests: connecting over mutual TLS, and proto3 JSON in and out.
#![forbid(unsafe_code)]

pub mod audit;
pub mod client;
pub mod demo;
pub mod json;
pub mod status;
