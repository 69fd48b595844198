//! Why an operation was refused, and what a [`crate::Lookup`] may fail with.
//! A refusal changes nothing: the state and the batch are as before the
//! operation (every check runs before the first change).

use caseshare_core::validate::{FieldViolation, Violations};

/// An operation the state machine refused. The server maps each variant to
/// one gRPC status in one place.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The request is invalid.
    #[error("{0}")]
    Invalid(Violations),
    /// A named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A name is taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// The caller may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The state does not allow this (e.g. an unregistered agency publishing).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A limit was hit.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A stored record the operation needs does not decode.
    #[error("stored record {key} is damaged: {detail}")]
    Corrupt {
        /// Names the record.
        key: String,
        /// What is wrong with it.
        detail: String,
    },
    /// Reading durable state failed.
    #[error("{0}")]
    Lookup(#[from] LookupError),
}

impl Refusal {
    /// An `INVALID_ARGUMENT` for one field.
    pub fn invalid(field: &str, description: impl Into<String>) -> Self {
        Refusal::Invalid(Violations(vec![FieldViolation {
            field: field.to_string(),
            description: description.into(),
        }]))
    }
}

/// A failed read of durable state, carrying the backend's own error so that
/// the server can report it as the storage failure it is.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LookupError(pub Box<dyn std::error::Error + Send + Sync + 'static>);
