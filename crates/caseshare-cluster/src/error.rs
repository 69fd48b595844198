//! What can go wrong talking to the cluster: set-up and I/O failures
//! ([`ClusterError`]), an append's outcomes other than a new sequence
//! ([`AppendError`]: fenced, duplicate, unavailable) and a lease the
//! holder no longer has ([`LeaseLost`]).

use thiserror::Error;

/// A failure of the cluster parts outside an append's own outcomes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClusterError {
    /// The settings cannot work; the message names the setting.
    #[error("cluster configuration: {0}")]
    Config(String),
    /// No connection to the NATS servers.
    #[error("cannot connect to NATS: {0}")]
    Connect(String),
    /// The stream (or bucket) exists with another shape than configured;
    /// the message names each difference. Nothing was changed.
    #[error("{what} exists with another configuration: {differences}")]
    Mismatch {
        /// `stream CASESHARE_JOURNAL` or `KV bucket CASESHARE_LEASE`.
        what: String,
        /// Each difference, `field: found X, configured Y`.
        differences: String,
    },
    /// A JetStream request failed (the cluster may be electing a leader:
    /// callers may retry).
    #[error("JetStream: {0}")]
    JetStream(String),
    /// The journal has a hole: a reader expected `expected` and was given
    /// `found`: the stream dropped messages this reader needed (older than
    /// the journal's `max_age`) or lost acknowledged ones; the reader
    /// stops rather than skip them.
    #[error("journal gap: expected sequence {expected}, the stream gave {found}")]
    Gap {
        /// The sequence the reader needed next.
        expected: u64,
        /// The sequence it was given.
        found: u64,
    },
    /// A lease value that is not a [`crate::LeaderInfo`].
    #[error("lease value unreadable: {0}")]
    LeaseValue(String),
}

/// Why an append did not add a message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AppendError {
    /// The stream's last sequence is not the one the appender expected:
    /// someone else appended (a newer leader), so this appender is deposed
    /// and nothing was written (JetStream error 10071). `actual` is the
    /// stream's last sequence when the server says it.
    #[error("append fenced: expected last sequence {expected}, the stream is at {actual:?}")]
    Fenced {
        /// The last sequence the appender expected.
        expected: u64,
        /// The stream's last sequence, as the refusal named it.
        actual: Option<u64>,
    },
    /// A message with this `Nats-Msg-Id` is already in the stream (within
    /// the duplicate window), at `sequence`: an earlier try of this append
    /// succeeded and its acknowledgement was lost. Nothing new was written.
    #[error("duplicate append: message id already stored at sequence {sequence}")]
    Duplicate {
        /// Where the first copy is.
        sequence: u64,
    },
    /// No acknowledgement (a timeout, no responders, the connection down,
    /// the stream electing a leader). The append may or may not have been
    /// stored: retry with the same message id and the same expected
    /// sequence, which gives either the sequence, `Duplicate` (it had been
    /// stored) or `Fenced` (someone else appended meanwhile).
    #[error("journal unavailable: {0}")]
    Unavailable(String),
    /// Refused for another reason (too large, a misconfigured stream);
    /// retrying will not help.
    #[error("append refused: {0}")]
    Refused(String),
}

/// Why a lease renewal failed: the holder must stop writing once its
/// lease's validity ([`crate::Held::valid_until`]) has passed without a
/// successful renewal; its appends are fenced anyway.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LeaseLost {
    /// The entry changed since the holder's last renewal: it expired and
    /// another replica (or this one, in a new epoch) took it, or it was
    /// released. The holder is deposed now.
    #[error("lease superseded (held at revision {revision})")]
    Superseded {
        /// The revision the holder last wrote.
        revision: u64,
    },
    /// The renewal got no answer. The lease may still be held until
    /// [`crate::Held::valid_until`]; renew again before then.
    #[error("lease renewal got no answer: {0}")]
    Unavailable(String),
}
