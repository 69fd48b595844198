//! The gRPC services. Each handler validates its input (nothing is written
//! on a validation error), applies ownership using the caller from the
//! connection, and hands writes to the writer. Errors become statuses in
//! `errors.rs` only.

pub mod admin;
pub mod audit;
pub mod consent;
pub mod publisher;
pub mod subscriber;

use std::sync::{Arc, RwLock};

use caseshare_core::validate::{Bounded, Limits, check_bounds};
use caseshare_store::Storage;

use crate::delivery::Deliveries;
use crate::errors::BrokerError;
use crate::writer::Writer;
use caseshare_state::BrokerState;

/// What every service shares.
#[derive(Clone)]
pub struct Shared {
    /// The writer.
    pub writer: Writer,
    /// Configuration state.
    pub state: Arc<RwLock<BrokerState>>,
    /// The store, for reads.
    pub store: Arc<dyn Storage>,
    /// The delivery engine.
    pub deliveries: Arc<Deliveries>,
    /// Validation limits.
    pub limits: Limits,
    /// The pseudonym key (for auditor queries by NHS number).
    pub pseudonym_key: Arc<Vec<u8>>,
    /// The audit log's tree and checkpoints.
    pub log: Arc<crate::auditlog::AuditLog>,
    /// Per-principal publish rate.
    pub publish_rate: Arc<crate::limits::RateLimiter>,
    /// Per-principal stream count.
    pub streams: Arc<crate::limits::StreamLimiter>,
    /// Streams idle this long are closed.
    pub idle_timeout: std::time::Duration,
    /// How long a rate refusal is held before it is answered.
    pub refusal_delay: std::time::Duration,
    /// Refusals, aggregated for the audit log.
    pub refusals: Arc<crate::refusals::Refusals>,
    /// Bytes queued for sending per stream and per principal.
    pub send_budget: Arc<crate::sendq::QueueBudget>,
    /// `caseshare_publish_duration_seconds`, looked up once (not per
    /// publish) after the recorder is installed.
    pub publish_duration: metrics::Histogram,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    /// Reads the configuration state.
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, BrokerState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// Checks a request against the bounds of `caseshare-core` (every string's
/// length and text, every list's count, every number finite) before
/// anything else reads it.
pub fn bounded<M: Bounded>(request: &M) -> Result<(), BrokerError> {
    check_bounds(request).map_err(BrokerError::from)
}
