//! The broker's core as a deterministic state machine.
//!
//! Applying one operation is a pure function of the state, the operation
//! and the time given with it: it yields the new state, the records to
//! persist (one [`Batch`] per group commit), the audit entries, the reply
//! and what subscribers must be told. Nothing in this crate reads a clock,
//! draws a random number or touches a disk or a socket; what an operation
//! needs from outside (a salt, a generated id, the time) travels in the
//! operation, and what it needs from durable state it asks of a [`Lookup`]
//! given to it. A replica or a restart that replays the same operations
//! therefore reaches the same state, byte for byte ([`state digest`]).
//!
//! - [`records`], [`batch`], [`snapshot`]: the persisted record types, one
//!   group commit's writes, and what a store hands back at start.
//! - [`state`]: the in-memory configuration state (agencies, agreements,
//!   consents, subscriptions, retractions) and the sharing decision on it.
//! - [`delivery`]: one delivery's life as a state machine (phases, inputs,
//!   the one transition function `step`), used by the server's registry.
//!
//! Architecture Invariant: the normal dependencies of this crate include no
//! tokio, sled, tonic or random-number crate (checked by a test).
//!
//! [`state digest`]: state::BrokerState::digest
#![forbid(unsafe_code)]

pub mod batch;
pub mod delivery;
pub mod records;
pub mod snapshot;
pub mod state;

pub use batch::Batch;
pub use records::{DeliveryRecord, DeliveryState, StoredEvent, SubscriptionRecord};
pub use snapshot::Snapshot;
pub use state::{BrokerState, EventContext, subscription_matches};
