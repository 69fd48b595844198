//! The audit log's format and its cryptography.
//!
//! - [`entry`]: building audit entries and their deterministic stored bytes.
//! - [`merkle`]: RFC 6962 hashing, proofs and their verification.
//! - [`tiles`]: the tiled layout that persists the tree with O(log n) appends.
//! - [`note`]: C2SP signed notes and checkpoints (Ed25519).
//!
//! Architecture Invariant: this crate does no I/O. Storage hands it tiles and
//! takes back the tiles to write; the server decides when to sign.
#![forbid(unsafe_code)]

pub mod entry;
pub mod merkle;
pub mod note;
pub mod tiles;
