//! The broker's error type and its one mapping to gRPC statuses, including
//! `google.rpc.BadRequest` field violations for invalid input. Damaged
//! storage is `DATA_LOSS` and marks the broker not ready
//! ([`storage_damaged`], read by `/readyz`); other faults are `INTERNAL`.

use std::sync::atomic::{AtomicBool, Ordering};

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
    /// A fault of the broker itself (not of the request or of storage).
    #[error("internal fault: {0}")]
    Internal(String),
}

impl BrokerError {
    /// The refusal of a streamed request message that did not decode (the
    /// codec's `INVALID_ARGUMENT`, with its field violations), so that a
    /// stream ends with it instead of silently; `None` for other statuses
    /// (the client went away).
    pub fn from_decode_status(status: &Status) -> Option<BrokerError> {
        if status.code() != Code::InvalidArgument {
            return None;
        }
        let violations = status
            .get_details_bad_request()
            .map(|b| {
                b.field_violations
                    .into_iter()
                    .map(|v| caseshare_core::validate::FieldViolation {
                        field: v.field,
                        description: v.description,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(BrokerError::Invalid(Violations(violations)))
    }
}

/// Set once a stored record is found damaged; never cleared (a restart,
/// after the operator has looked, clears it).
static STORAGE_DAMAGED: AtomicBool = AtomicBool::new(false);

/// True once a request found a damaged stored record: the broker then
/// answers `/readyz` with 503 so that it is taken out of service.
pub fn storage_damaged() -> bool {
    STORAGE_DAMAGED.load(Ordering::SeqCst)
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

impl From<caseshare_state::Refusal> for BrokerError {
    fn from(r: caseshare_state::Refusal) -> Self {
        use caseshare_state::Refusal as R;
        match r {
            R::Invalid(v) => BrokerError::Invalid(v),
            R::NotFound(m) => BrokerError::NotFound(m),
            R::AlreadyExists(m) => BrokerError::AlreadyExists(m),
            R::PermissionDenied(m) => BrokerError::PermissionDenied(m),
            R::FailedPrecondition(m) => BrokerError::FailedPrecondition(m),
            R::ResourceExhausted(m) => BrokerError::ResourceExhausted(m),
            R::Corrupt { key, detail } => BrokerError::Store(StoreError::Corrupt { key, detail }),
            R::Lookup(e) => match e.0.downcast::<StoreError>() {
                Ok(store) => BrokerError::Store(*store),
                Err(other) => BrokerError::Internal(other.to_string()),
            },
        }
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
            BrokerError::Store(e @ StoreError::Corrupt { .. }) => {
                STORAGE_DAMAGED.store(true, Ordering::SeqCst);
                tracing::error!(error = %e, "damaged storage: the broker is now not ready");
                Status::data_loss(
                    "a stored record is damaged; the operation was not applied and the broker is marked not ready",
                )
            }
            BrokerError::Store(e) => {
                tracing::error!(error = %e, "storage failure");
                Status::internal("storage failure; the operation was not applied")
            }
            BrokerError::Internal(m) => {
                tracing::error!(error = %m, "internal fault");
                Status::internal("internal fault; the operation was not applied")
            }
        }
    }
}
