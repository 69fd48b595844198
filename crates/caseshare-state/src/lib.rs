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
//! - [`Machine`] (machine.rs): the state, its counters and `apply`;
//!   [`Command`]/[`Reply`] (command.rs); [`Refusal`] (refusal.rs); the
//!   operations, one module per family under `ops/` (config, consent,
//!   events, subscriptions, delivery), each tested with a table.
//! - `testing` (feature `testing`): an in-memory [`Lookup`] and a recorded
//!   scenario of commands, for replay tests here and in the store.
//! - [`delivery`]: one delivery's life as a state machine (phases, inputs,
//!   the one transition function `step`), used by the server's registry.
//! - [`journal`]: a group commit's commands as the bytes of one journal
//!   message and back (cluster mode), bounded and checked on decode, with
//!   the header a follower checks to apply each batch at the right place.
//!
//! Architecture Invariant: the normal dependencies of this crate include no
//! tokio, sled, tonic or random-number crate (checked by a test).
//!
//! [`state digest`]: state::BrokerState::digest
#![forbid(unsafe_code)]

pub mod batch;
mod command;
pub mod delivery;
pub mod journal;
mod machine;
mod ops;
pub mod records;
mod refusal;
pub mod snapshot;
pub mod state;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use batch::Batch;
pub use command::{AckIntent, Command, DeliveryIntent, Reply, SubscriptionRef, Verdict};
pub use machine::{Counters, DeliveryIndex, Draft, Lookup, Machine, Sealed, newest_over};
pub use records::{DeliveryRecord, DeliveryState, StoredEvent, SubscriptionRecord};
pub use refusal::{LookupError, Refusal};
pub use snapshot::Snapshot;
pub use state::{BrokerState, EventContext, subscription_matches};
