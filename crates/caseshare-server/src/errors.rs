//! The broker's error type and its one mapping to gRPC statuses, including
//! `google.rpc.BadRequest` field violations for invalid input.

use caseshare_core::validate::Violations;
use caseshare_store::StoreError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The request is invalid; nothing was written.
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
    /// The system is not in a state that allows this (e.g. an unregistered
    /// agency publishing).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A limit was hit.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A rate limit was hit; the caller may try again after `retry_after`.
    #[error("{message}")]
    RateLimited {
        /// Names the limit.
        message: String,
        /// When a token will be available.
        retry_after: std::time::Duration,
    },
    /// The capability is not built yet.
    #[error("{0} is not implemented yet")]
    Unimplemented(&'static str),
    /// The broker is shutting down or its writer has stopped.
    #[error("{0}")]
    Unavailable(String),
    /// Storage failed; the operation did not happen.
    #[error("storage failure: {0}")]
    Store(#[from] StoreError),
}

impl BrokerError {
    /// An `INVALID_ARGUMENT` for one field.
    pub fn invalid(field: &str, description: impl Into<String>) -> Self {
        BrokerError::Invalid(Violations(vec![caseshare_core::validate::FieldViolation {
            field: field.to_string(),
            description: description.into(),
        }]))
    }
}

impl From<Violations> for BrokerError {
    fn from(v: Violations) -> Self {
        BrokerError::Invalid(v)
    }
}

impl From<BrokerError> for Status {
    fn from(e: BrokerError) -> Status {
        match e {
            BrokerError::Invalid(v) => {
                let mut details = ErrorDetails::new();
                for violation in &v.0 {
                    details.add_bad_request_violation(
                        violation.field.clone(),
                        violation.description.clone(),
                    );
                }
                Status::with_error_details(Code::InvalidArgument, v.to_string(), details)
            }
            BrokerError::NotFound(m) => Status::not_found(m),
            BrokerError::AlreadyExists(m) => Status::already_exists(m),
            BrokerError::PermissionDenied(m) => Status::permission_denied(m),
            BrokerError::FailedPrecondition(m) => Status::failed_precondition(m),
            BrokerError::ResourceExhausted(m) => Status::resource_exhausted(m),
            BrokerError::RateLimited {
                message,
                retry_after,
            } => Status::with_error_details(
                Code::ResourceExhausted,
                message,
                ErrorDetails::with_retry_info(Some(retry_after)),
            ),
            e @ BrokerError::Unimplemented(_) => Status::unimplemented(e.to_string()),
            BrokerError::Unavailable(m) => Status::unavailable(m),
            BrokerError::Store(e) => {
                tracing::error!(error = %e, "storage failure");
                Status::internal("storage failure; the operation was not applied")
            }
        }
    }
}
