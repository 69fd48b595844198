//! The journal encoding of state-machine commands, for cluster mode: one
//! group commit's operations, each a `(Micros, Command)`, as the bytes of
//! one journal message, and back, exactly. Every replica decodes the same
//! messages in the same order and applies them to its [`Machine`] with the
//! same times, so all reach the same state and the same audit log.
//!
//! - [`encode_batch`] (or [`JournalEncoder`], command by command as the
//!   leader applies them) / [`decode_batch`]: the batch and its
//!   [`JournalHeader`]. The encoding is hand-written prost messages
//!   (`wire.rs`, internal, not in `proto/`), requests as the validated
//!   `caseshare.v1` messages; the conversion is `convert.rs`.
//! - The header says where the batch applies: the machine's [`Counters`]
//!   before it (the first audit index, the next event sequence, the next
//!   subscription id) and, when the leader applied it first, where it
//!   ended ([`BatchEnd`]: the counters after and a digest of the audit
//!   leaves written). A follower checks the first before applying
//!   ([`JournalHeader::check_before`]: a gap, a repeat or a message from a
//!   forked journal is refused) and the second after
//!   ([`JournalHeader::check_after`]: a replica that ends elsewhere or
//!   wrote other leaves, e.g. with another pseudonym key, has diverged and
//!   must stop before it signs anything). Counters do not tell apart two
//!   batches that write no audit entry and draw no sequence or id (only
//!   `PurgeDeliveries`, say): the journal's own stream sequence orders
//!   those. `leader_term` names the term of the leader that appended it
//!   (fencing itself is the journal's expected-last-sequence; the term is
//!   for followers and diagnostics).
//! - Decoding is bounded ([`JournalLimits`], `scan.rs`): the message's
//!   size, its operations and the items inside them are counted over the
//!   framing before prost builds anything. [`encode_batch`] refuses what a
//!   follower's [`decode_batch`] would refuse, so a leader cannot append a
//!   message its followers cannot read.
//! - Every message ends with the SHA-256 of its bytes (`wire.rs`): a
//!   truncated message or a flipped bit is refused as a whole.
//! - An unknown `format_version`, a damaged framing, an op without a
//!   command, a missing required field or an unknown enum value is a
//!   [`JournalError`], never a default command.
//! - [`replay`]: a follower's step, the header checks around applying the
//!   decoded operations to one draft.

mod convert;
mod scan;
#[cfg(test)]
mod tests;
mod wire;

use caseshare_core::time::Micros;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::command::{Command, Reply};
use crate::machine::{Counters, Lookup, Machine, Sealed};
use crate::refusal::Refusal;

/// The encoding's version; a reader refuses any other.
pub const FORMAT_VERSION: u32 = 1;

/// What a decode accepts. The defaults match the broker's own bounds: at
/// most `store.max_batch`'s ceiling (65,536) of operations per group
/// commit, room for four fields each and lists besides, and the NATS
/// ceiling (64 MiB) on a message's size.
///
/// What they bound: a damaged (random, flipped or truncated) message is
/// refused by its checksum before anything is built. A message with a
/// valid checksum (a faulty leader, or anyone who may write to the stream
/// and so could forge any command anyway) builds at most `max_ops` ops
/// (488 bytes each in memory) and `max_items` list elements (at most 464
/// bytes each, an audit entry): about 0.28 GB at the defaults, where 64 MiB
/// of 2-byte empty elements would otherwise build 33 million (15 GB). The
/// `caseshare.v1` messages inside a request are bounded by the message's
/// size only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalLimits {
    /// Most bytes in one journal message.
    pub max_bytes: usize,
    /// Most operations in one batch.
    pub max_ops: usize,
    /// Most items inside the commands of one batch: each field of a
    /// command counts one, each element of a list one (intents, acks,
    /// audit entries, expunged events, sequences, subscription ids).
    pub max_items: usize,
}

impl Default for JournalLimits {
    fn default() -> Self {
        JournalLimits {
            max_bytes: 64 << 20,
            max_ops: 65_536,
            max_items: 1 << 19,
        }
    }
}

/// Where a batch applies, carried with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalHeader {
    /// The term (epoch) of the leader that appended the batch.
    pub leader_term: u64,
    /// The machine's counters before the batch: `audit_size` is the first
    /// audit index it writes, `next_sequence` its first event's sequence.
    /// `None` for a batch proposed without applying it first (cluster
    /// mode: the journal's order decides where it applies).
    pub before: Option<Counters>,
    /// The replica that proposed the batch (cluster mode).
    pub origin: Option<Origin>,
    /// Where the leader ended the batch, when it applied it before
    /// appending (the broker does); `None` when it did not.
    pub after: Option<BatchEnd>,
}

/// The replica that proposed a batch, so that it can answer its callers
/// when it applies the batch, and what it had seen: a batch proposed on
/// a view older than the journal allows is refused as a whole when it is
/// applied (the stale-proposal rule, `docs/CLUSTER.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The proposing replica's instance id: at most [`MAX_REPLICA_ID`]
    /// bytes.
    pub replica: String,
    /// The batch's number at that replica.
    pub batch: u64,
    /// The last journal sequence the replica had applied when it proposed.
    pub seen: u64,
}

/// Longest replica instance id in an [`Origin`].
pub const MAX_REPLICA_ID: usize = 64;

/// Where a machine ended a batch: its counters, and a digest of the audit
/// leaves the batch wrote. Two replicas that end a batch with the same
/// counters but different leaves (a different pseudonym key, a
/// nondeterminism) would fork the audit log; this tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchEnd {
    /// The counters after the batch.
    pub counters: Counters,
    /// [`leaves_digest`] of the batch's audit leaves.
    pub leaves: [u8; 32],
}

impl BatchEnd {
    /// Where `machine` is after sealing `sealed`.
    pub fn of(machine: &Machine, sealed: &Sealed) -> Self {
        BatchEnd {
            counters: machine.counters(),
            leaves: leaves_digest(&sealed.batch.audit),
        }
    }
}

/// SHA-256 over the leaves in order, each prefixed by its length (u64,
/// big-endian), so that no two lists of leaves share a digest by
/// splitting differently.
pub fn leaves_digest(leaves: &[Vec<u8>]) -> [u8; 32] {
    let mut h = Sha256::new();
    for leaf in leaves {
        h.update((leaf.len() as u64).to_be_bytes());
        h.update(leaf);
    }
    h.finalize().into()
}

impl JournalHeader {
    /// Refuses to apply the batch unless `machine` is where it starts.
    pub fn check_before(&self, machine: Counters) -> Result<(), JournalError> {
        match self.before {
            Some(before) if before != machine => Err(JournalError::WrongPosition {
                batch: before,
                machine,
            }),
            _ => Ok(()),
        }
    }

    /// After applying: refuses unless `machine` ended where the leader did
    /// (same counters, same audit leaves).
    pub fn check_after(&self, machine: &BatchEnd) -> Result<(), JournalError> {
        match self.after {
            Some(leader) if leader != *machine => Err(JournalError::Diverged {
                leader: leader.counters,
                machine: machine.counters,
                same_leaves: leader.leaves == machine.leaves,
            }),
            _ => Ok(()),
        }
    }
}

/// Why a journal message cannot be encoded, decoded or applied.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The message is larger than the limit.
    #[error("the journal message is {bytes} bytes, more than the {max} allowed")]
    TooLarge {
        /// Its size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The message does not start with its format version.
    #[error("the journal message does not start with its format version")]
    MissingVersion,
    /// The format version is not this reader's.
    #[error(
        "the journal message has format version {0}; this broker reads version {FORMAT_VERSION} only"
    )]
    UnknownVersion(u64),
    /// More operations than the limit.
    #[error("the journal batch holds more than {max} operations")]
    TooManyOps {
        /// The limit.
        max: usize,
    },
    /// More items inside the commands than the limit.
    #[error("the journal batch holds more than {max} fields and list elements in its commands")]
    TooManyItems {
        /// The limit.
        max: usize,
    },
    /// The trailing checksum is missing or does not match: the message was
    /// truncated or damaged.
    #[error(
        "the journal message's checksum is missing or does not match its bytes (truncated or damaged)"
    )]
    Checksum,
    /// The protobuf framing is damaged (a length past the end, a cut varint).
    #[error("the journal message's framing is damaged: {0}")]
    Framing(&'static str),
    /// prost refused the message.
    #[error("the journal message does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The header is incomplete or inconsistent.
    #[error("the journal batch's header is invalid: {0}")]
    BadHeader(&'static str),
    /// An operation carries no command (or one this reader does not know).
    #[error("journal operation {op} has no command")]
    MissingCommand {
        /// The operation's position in the batch.
        op: usize,
    },
    /// A required field is absent.
    #[error("journal operation {op} ({command}) lacks its {field}")]
    MissingField {
        /// The operation's position in the batch.
        op: usize,
        /// The command.
        command: &'static str,
        /// The field.
        field: &'static str,
    },
    /// A field's value is not one the command can hold.
    #[error("journal operation {op} ({command}): {field} is invalid: {reason}")]
    InvalidField {
        /// The operation's position in the batch.
        op: usize,
        /// The command.
        command: &'static str,
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The batch does not start where the machine is.
    #[error("the journal batch applies at {batch:?} but the machine is at {machine:?}")]
    WrongPosition {
        /// Where the batch starts.
        batch: Counters,
        /// Where the machine is.
        machine: Counters,
    },
    /// The machine ended the batch elsewhere than the leader did.
    #[error(
        "after the journal batch the machine is at {machine:?}, the leader was at {leader:?}, same audit leaves: {same_leaves}: the replicas have diverged"
    )]
    Diverged {
        /// The leader's counters after the batch.
        leader: Counters,
        /// This machine's.
        machine: Counters,
        /// Whether the audit leaves written were the same.
        same_leaves: bool,
    },
    /// Applying an operation failed on this replica's own storage (a lookup
    /// or a damaged record), which the leader did not: stop, do not skip.
    #[error("journal operation {op} failed on this replica's storage: {refusal}")]
    Local {
        /// The operation's position in the batch.
        op: usize,
        /// The refusal.
        refusal: Refusal,
    },
}

/// Encodes one batch. Refuses (with the error [`decode_batch`] would give)
/// a batch a follower could not read: more operations or items than the
/// default [`JournalLimits`], or larger than their size limit. The leader
/// then splits the batch (or the command) and appends the parts in order.
pub fn encode_batch(
    ops: &[(Micros, Command)],
    header: &JournalHeader,
) -> Result<Vec<u8>, JournalError> {
    let mut encoder = JournalEncoder::new(header.leader_term, header.before);
    if let Some(origin) = &header.origin {
        encoder.set_origin(origin.clone());
    }
    for (now, command) in ops {
        encoder.push(*now, command)?;
    }
    encoder.finish(header.after)
}

/// A batch being encoded as its commands are applied, so that the leader
/// need not keep a copy of each command (`Machine::apply` consumes it):
/// [`push`](Self::push) each command before applying it, then
/// [`finish`](Self::finish) with the counters after the seal.
#[derive(Debug)]
pub struct JournalEncoder {
    message: wire::JournalBatch,
    limits: JournalLimits,
    /// The encoded size of the ops so far (each with its key and length).
    ops_bytes: usize,
}

impl JournalEncoder {
    /// A batch appended in `leader_term` that starts at `before` (`None`:
    /// wherever the journal's order puts it).
    pub fn new(leader_term: u64, before: Option<Counters>) -> Self {
        let before = before.unwrap_or(Counters {
            next_sequence: 0,
            next_subscription_id: 0,
            audit_size: 0,
        });
        JournalEncoder {
            message: wire::JournalBatch {
                format_version: FORMAT_VERSION,
                leader_term,
                first_audit_index: before.audit_size,
                first_sequence: before.next_sequence,
                first_subscription_id: before.next_subscription_id,
                after: None,
                ops: Vec::new(),
                origin: None,
            },
            limits: JournalLimits::default(),
            ops_bytes: 0,
        }
    }

    /// Names the replica that proposes the batch.
    pub fn set_origin(&mut self, origin: Origin) {
        self.message.origin = Some(wire::OriginRecord {
            replica: origin.replica,
            batch: origin.batch,
            seen: origin.seen,
        });
    }

    /// About how many bytes the message has so far (the ops, plus a
    /// header of at most a few hundred bytes): what a proposer compares
    /// with its byte budget.
    pub fn approximate_len(&self) -> usize {
        self.ops_bytes + 256
    }

    /// The operations pushed so far.
    pub fn len(&self) -> usize {
        self.message.ops.len()
    }

    /// True before the first push.
    pub fn is_empty(&self) -> bool {
        self.message.ops.is_empty()
    }

    /// Adds one command at `now`; refuses one past the operation limit.
    pub fn push(&mut self, now: Micros, command: &Command) -> Result<(), JournalError> {
        if self.message.ops.len() >= self.limits.max_ops {
            return Err(JournalError::TooManyOps {
                max: self.limits.max_ops,
            });
        }
        let op = convert::to_wire(now, command);
        self.ops_bytes += prost::length_delimiter_len(op.encoded_len()) + 1 + op.encoded_len();
        self.message.ops.push(op);
        Ok(())
    }

    /// Takes back the last command pushed (a proposer's batch it would
    /// make too large: it starts the next one instead).
    pub fn pop(&mut self) {
        if let Some(op) = self.message.ops.pop() {
            let len = op.encoded_len();
            self.ops_bytes = self
                .ops_bytes
                .saturating_sub(prost::length_delimiter_len(len) + 1 + len);
        }
    }

    /// The journal message, with where the batch ended if known
    /// ([`BatchEnd::of`] the leader's machine and sealed batch). Refuses a
    /// message a follower would refuse (size, items).
    pub fn finish(mut self, after: Option<BatchEnd>) -> Result<Vec<u8>, JournalError> {
        self.message.after = after.map(|end| wire::EndRecord {
            next_sequence: end.counters.next_sequence,
            next_subscription_id: end.counters.next_subscription_id,
            audit_size: end.counters.audit_size,
            leaves_digest: end.leaves.to_vec(),
        });
        if self
            .message
            .origin
            .as_ref()
            .is_some_and(|o| o.replica.is_empty() || o.replica.len() > MAX_REPLICA_ID)
        {
            return Err(JournalError::BadHeader(
                "the origin's replica id is empty or too long",
            ));
        }
        let body = self.message.encode_to_vec();
        let bytes = body.len() + wire::TRAILER_LEN;
        if bytes > self.limits.max_bytes {
            return Err(JournalError::TooLarge {
                bytes,
                max: self.limits.max_bytes,
            });
        }
        scan::scan(&body, &self.limits)?;
        Ok(seal(body))
    }
}

/// Decodes one batch within the default [`JournalLimits`].
pub fn decode_batch(bytes: &[u8]) -> Result<(JournalHeader, Vec<(Micros, Command)>), JournalError> {
    decode_batch_with(bytes, &JournalLimits::default())
}

/// Decodes one batch within `limits`: the size, the version and the
/// checksum are checked and the framing scanned and counted before prost
/// builds anything.
pub fn decode_batch_with(
    bytes: &[u8],
    limits: &JournalLimits,
) -> Result<(JournalHeader, Vec<(Micros, Command)>), JournalError> {
    if bytes.len() > limits.max_bytes {
        return Err(JournalError::TooLarge {
            bytes: bytes.len(),
            max: limits.max_bytes,
        });
    }
    scan::version(&mut &bytes[..])?;
    let body = body(bytes)?;
    scan::scan(body, limits)?;
    let message = wire::JournalBatch::decode(body)?;
    let header = header(&message)?;
    let ops = message
        .ops
        .into_iter()
        .enumerate()
        .map(|(i, op)| convert::from_wire(i, op))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((header, ops))
}

/// Appends the checksum field to an encoded `JournalBatch`.
fn seal(mut body: Vec<u8>) -> Vec<u8> {
    let digest = Sha256::digest(&body);
    body.reserve(wire::TRAILER_LEN);
    // Key (tag 15, length-delimited) and length, each one byte.
    body.push(((wire::CHECKSUM_TAG << 3) | 2) as u8);
    body.push(digest.len() as u8);
    body.extend_from_slice(&digest);
    body
}

/// The body of a journal message, once its trailing checksum matches.
fn body(message: &[u8]) -> Result<&[u8], JournalError> {
    let split = message
        .len()
        .checked_sub(wire::TRAILER_LEN)
        .ok_or(JournalError::Checksum)?;
    let (body, trailer) = message.split_at(split);
    let key = ((wire::CHECKSUM_TAG << 3) | 2) as u8;
    match trailer {
        [k, 32, digest @ ..] if *k == key && Sha256::digest(body).as_slice() == digest => Ok(body),
        _ => Err(JournalError::Checksum),
    }
}

fn header(m: &wire::JournalBatch) -> Result<JournalHeader, JournalError> {
    let before = Counters {
        next_sequence: m.first_sequence,
        next_subscription_id: m.first_subscription_id,
        audit_size: m.first_audit_index,
    };
    // A batch proposed without applying it first carries no counters at
    // all; otherwise sequences and subscription ids start at 1, and a 0
    // is a missing field.
    let unplaced = before.next_sequence == 0
        && before.next_subscription_id == 0
        && before.audit_size == 0
        && m.after.is_none();
    if !unplaced && before.next_sequence == 0 {
        return Err(JournalError::BadHeader("first_sequence is missing"));
    }
    if !unplaced && before.next_subscription_id == 0 {
        return Err(JournalError::BadHeader("first_subscription_id is missing"));
    }
    let origin = match &m.origin {
        None => None,
        Some(o) if o.replica.is_empty() || o.replica.len() > MAX_REPLICA_ID => {
            return Err(JournalError::BadHeader(
                "the origin's replica id is empty or too long",
            ));
        }
        Some(o) => Some(Origin {
            replica: o.replica.clone(),
            batch: o.batch,
            seen: o.seen,
        }),
    };
    let after = match &m.after {
        None => None,
        Some(end) => Some(BatchEnd {
            counters: Counters {
                next_sequence: end.next_sequence,
                next_subscription_id: end.next_subscription_id,
                audit_size: end.audit_size,
            },
            leaves: <[u8; 32]>::try_from(end.leaves_digest.as_slice())
                .map_err(|_| JournalError::BadHeader("the leaves digest is not 32 bytes"))?,
        }),
    };
    if let Some(BatchEnd {
        counters: after, ..
    }) = after
    {
        // The counters only grow.
        if after.next_sequence < before.next_sequence
            || after.next_subscription_id < before.next_subscription_id
            || after.audit_size < before.audit_size
        {
            return Err(JournalError::BadHeader(
                "the counters after the batch are below those before it",
            ));
        }
    }
    Ok(JournalHeader {
        leader_term: m.leader_term,
        before: (!unplaced).then_some(before),
        origin,
        after,
    })
}

/// A follower's step: checks that `machine` is where the batch starts,
/// applies every operation to one draft, seals it and checks that the
/// machine ends where the leader did. Gives the sealed batch (for the
/// store) and each operation's reply; a refusal of the machine's own rules
/// is a reply (the leader got the same one), but a failed lookup or a
/// damaged record is this replica's problem and an error. After any error
/// past `check_before` the machine may hold part of the batch: the replica
/// must stop applying and rebuild its machine from its store.
pub fn replay(
    machine: &mut Machine,
    header: &JournalHeader,
    ops: Vec<(Micros, Command)>,
    lookup: &dyn Lookup,
) -> Result<(Sealed, Vec<Result<Reply, Refusal>>), JournalError> {
    header.check_before(machine.counters())?;
    let mut draft = machine.begin();
    let mut replies = Vec::with_capacity(ops.len());
    for (op, (now, command)) in ops.into_iter().enumerate() {
        match machine.apply(&mut draft, now, command, lookup) {
            Err(refusal @ (Refusal::Lookup(_) | Refusal::Corrupt { .. })) => {
                return Err(JournalError::Local { op, refusal });
            }
            reply => replies.push(reply),
        }
    }
    let sealed = machine.seal(draft);
    header.check_after(&BatchEnd::of(machine, &sealed))?;
    Ok((sealed, replies))
}
