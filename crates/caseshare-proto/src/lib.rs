//! Generated prost messages and tonic stubs for package `caseshare.v1`, and
//! the encoded file descriptor set (for server reflection, proto3 JSON and
//! descriptor-driven field minimisation). The tonic stubs and codec come
//! with the `grpc` feature (on by default); the pure crates use the messages
//! alone.
//!
//! API Boundary: everything here is generated from `proto/`; the `.proto`
//! files are the contract with other agencies, not this crate.
#![forbid(unsafe_code)]
#![allow(clippy::all, clippy::pedantic, missing_docs)]

#[cfg(feature = "grpc")]
pub mod codec;

/// Package `caseshare.v1`.
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/caseshare.v1.rs"));
}

/// The compiled `FileDescriptorSet` of every file under `proto/`, including
/// the imported well-known types.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/caseshare_descriptor.bin"));
