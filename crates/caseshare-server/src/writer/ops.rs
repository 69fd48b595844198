//! What requests send the writer: [`Op`], a [`caseshare_state::Command`]
//! with a typed reply channel, and its intake — drawing what the state
//! machine must not draw itself (a payload salt, a consent id) and turning
//! the machine's reply back into the caller's type.

use std::sync::Arc;

use caseshare_core::pb;
use caseshare_core::principal::Principal;
use caseshare_state::{Command, Reply, SubscriptionRecord, SubscriptionRef};
use tokio::sync::oneshot;

pub use caseshare_state::{AckIntent, DeliveryIntent, Verdict};

use crate::errors::BrokerError;

/// A reply channel.
pub type ReplyTx<T> = oneshot::Sender<Result<T, BrokerError>>;

/// A request to the writer.
pub enum Op {
    /// Publish an event (already validated).
    Publish {
        /// The caller.
        actor: Arc<Principal>,
        /// The request.
        request: pb::PublishRequest,
        /// The computed event type.
        event_type: &'static str,
        /// Set when the publish is traced (export on): the context of its
        /// decision and commit spans.
        trace: Option<crate::telemetry::OpTrace>,
        /// Reply.
        reply: ReplyTx<pb::PublishResponse>,
    },
    /// Register an agency.
    RegisterAgency {
        /// The caller.
        actor: Arc<Principal>,
        /// The request.
        request: pb::RegisterAgencyRequest,
        /// Reply.
        reply: ReplyTx<pb::Agency>,
    },
    /// Create or replace an agreement.
    PutAgreement {
        /// The caller.
        actor: Arc<Principal>,
        /// The agreement.
        agreement: pb::Agreement,
        /// Reply.
        reply: ReplyTx<pb::Agreement>,
    },
    /// End an agreement.
    EndAgreement {
        /// The caller.
        actor: Arc<Principal>,
        /// The request.
        request: pb::EndAgreementRequest,
        /// Reply.
        reply: ReplyTx<pb::Agreement>,
    },
    /// Record a consent.
    RecordConsent {
        /// The caller.
        actor: Arc<Principal>,
        /// The consent.
        consent: pb::ConsentRecord,
        /// Reply.
        reply: ReplyTx<pb::ConsentRecord>,
    },
    /// Withdraw a consent.
    WithdrawConsent {
        /// The caller.
        actor: Arc<Principal>,
        /// The request.
        request: pb::WithdrawConsentRequest,
        /// Reply.
        reply: ReplyTx<pb::ConsentRecord>,
    },
    /// Create a subscription.
    CreateSubscription {
        /// The caller.
        actor: Arc<Principal>,
        /// The validated subscription.
        subscription: pb::Subscription,
        /// Most subscriptions the agency may hold (`limits.max_subscriptions_per_agency`).
        quota: usize,
        /// Reply.
        reply: ReplyTx<SubscriptionRecord>,
    },
    /// Delete a subscription.
    DeleteSubscription {
        /// The caller.
        actor: Arc<Principal>,
        /// Its name.
        name: String,
        /// Reply: the deleted record.
        reply: ReplyTx<SubscriptionRecord>,
    },
    /// Re-decide and record deliveries about to be sent.
    Deliver {
        /// The deliveries.
        intents: Vec<DeliveryIntent>,
        /// Reply: per intent, the verdict.
        reply: ReplyTx<Vec<Verdict>>,
    },
    /// Record deliveries that used up their attempts.
    DeadLetter {
        /// The subscription's internal id.
        subscription_id: u64,
        /// Its name.
        subscription: String,
        /// Its agency.
        recipient: String,
        /// What was dead-lettered.
        items: Vec<AckIntent>,
        /// The new floor, if it moved.
        floor: Option<u64>,
        /// Reply.
        reply: ReplyTx<()>,
    },
    /// Put dead letters back for delivery.
    Replay {
        /// The caller.
        actor: Arc<Principal>,
        /// The subscription's internal id.
        subscription_id: u64,
        /// Its name.
        subscription: String,
        /// The sequences.
        sequences: Vec<u64>,
        /// The new floor.
        floor: Option<u64>,
        /// Reply.
        reply: ReplyTx<()>,
    },
    /// Move a subscription's cursor.
    Seek {
        /// The caller.
        actor: Arc<Principal>,
        /// The subscription's internal id.
        subscription_id: u64,
        /// Its name.
        subscription: String,
        /// The sequence to resume from.
        target: u64,
        /// Reply.
        reply: ReplyTx<()>,
    },
    /// Retract one of the caller's events.
    Retract {
        /// The caller.
        actor: Arc<Principal>,
        /// The request.
        request: pb::RetractEventRequest,
        /// Reply.
        reply: ReplyTx<pb::RetractEventResponse>,
    },
    /// Delete events at the end of their retention.
    Expunge {
        /// (sequence, agency, event id).
        events: Vec<(u64, String, String)>,
        /// Reply.
        reply: ReplyTx<()>,
    },
    /// Record acknowledgements.
    Ack {
        /// The caller.
        actor: Arc<Principal>,
        /// The subscription's internal id.
        subscription_id: u64,
        /// Its name.
        subscription: String,
        /// What was acknowledged.
        acks: Vec<AckIntent>,
        /// The subscription's new floor, if it moved.
        floor: Option<u64>,
        /// Nobody waits for this commit (acks inline on a stream): a batch
        /// of only such ops may wait up to [`super::LAZY_COMMIT_DELAY`] for
        /// other ops to share its commit.
        lazy: bool,
        /// Reply.
        reply: ReplyTx<()>,
    },
    /// Append one entry (e.g. AUDIT_ACCESSED); index and time are assigned.
    Record {
        /// The entry.
        entry: pb::AuditEntry,
        /// Reply: the index assigned.
        reply: ReplyTx<u64>,
    },
    /// Remove the next delivery records of deleted subscriptions.
    PurgeDeliveries {
        /// The deleted subscriptions' ids.
        subscription_ids: Vec<u64>,
        /// Reply.
        reply: ReplyTx<()>,
    },
    /// Record aggregated refusals (see `refusals`): `AUTH_DENIED` entries.
    AuthDenied {
        /// The entries, each with its count.
        entries: Vec<pb::AuditEntry>,
        /// Reply.
        reply: ReplyTx<()>,
    },
}

impl Op {
    /// Whether nobody waits for this op's commit.
    pub(super) fn is_lazy(&self) -> bool {
        matches!(self, Op::Ack { lazy: true, .. })
    }

    /// The trace of a traced publish, taken out of the op.
    pub(super) fn take_trace(&mut self) -> Option<crate::telemetry::OpTrace> {
        match self {
            Op::Publish { trace, .. } => trace.take(),
            _ => None,
        }
    }
}

/// Sends the reply once the batch is committed (`true`) or failed.
pub(super) type Finisher = Box<dyn FnOnce(bool, Result<Reply, BrokerError>) + Send>;

/// A typed reply channel, waiting for the machine's reply.
fn typed<T: Send + 'static>(reply: ReplyTx<T>, unwrap: fn(Reply) -> Option<T>) -> Finisher {
    Box::new(move |committed, result| {
        let result = if committed {
            result.and_then(|r| {
                unwrap(r).ok_or_else(|| {
                    BrokerError::Internal("the state machine answered with another reply".into())
                })
            })
        } else {
            Err(BrokerError::Unavailable(
                "the write could not be made durable".into(),
            ))
        };
        let _ = reply.send(result);
    })
}

fn done(r: Reply) -> Option<()> {
    matches!(r, Reply::Done).then_some(())
}

/// Splits an op into the command the machine applies and the finisher that
/// answers its caller. Draws the salt of a publish and the id of a consent
/// given none: the machine itself draws nothing, so that replaying the
/// command gives the same result.
pub(super) fn intake(op: Op) -> (Command, Finisher) {
    let sub = |id, name| SubscriptionRef { id, name };
    match op {
        Op::Publish {
            actor,
            request,
            event_type,
            reply,
            ..
        } => (
            Command::Publish {
                actor,
                request,
                event_type: event_type.to_string(),
                salt: rand::random(),
            },
            typed(reply, |r| match r {
                Reply::Published(p) => Some(p),
                _ => None,
            }),
        ),
        Op::RegisterAgency {
            actor,
            request,
            reply,
        } => (
            Command::RegisterAgency { actor, request },
            typed(reply, |r| match r {
                Reply::Agency(a) => Some(a),
                _ => None,
            }),
        ),
        Op::PutAgreement {
            actor,
            agreement,
            reply,
        } => (
            Command::PutAgreement { actor, agreement },
            typed(reply, agreement_reply),
        ),
        Op::EndAgreement {
            actor,
            request,
            reply,
        } => (
            Command::EndAgreement { actor, request },
            typed(reply, agreement_reply),
        ),
        Op::RecordConsent {
            actor,
            mut consent,
            reply,
        } => {
            let generated_id = consent.consent_id.is_empty();
            if generated_id {
                consent.consent_id = format!("consent-{}", hex::encode(rand::random::<[u8; 8]>()));
            }
            (
                Command::RecordConsent {
                    actor,
                    consent,
                    generated_id,
                },
                typed(reply, consent_reply),
            )
        }
        Op::WithdrawConsent {
            actor,
            request,
            reply,
        } => (
            Command::WithdrawConsent { actor, request },
            typed(reply, consent_reply),
        ),
        Op::CreateSubscription {
            actor,
            subscription,
            quota,
            reply,
        } => (
            Command::CreateSubscription {
                actor,
                subscription,
                quota,
            },
            typed(reply, subscription_reply),
        ),
        Op::DeleteSubscription { actor, name, reply } => (
            Command::DeleteSubscription { actor, name },
            typed(reply, subscription_reply),
        ),
        Op::Deliver { intents, reply } => (
            Command::Deliver { intents },
            typed(reply, |r| match r {
                Reply::Verdicts(v) => Some(v),
                _ => None,
            }),
        ),
        Op::DeadLetter {
            subscription_id,
            subscription,
            recipient,
            items,
            floor,
            reply,
        } => (
            Command::DeadLetter {
                subscription: sub(subscription_id, subscription),
                recipient,
                items,
                floor,
            },
            typed(reply, done),
        ),
        Op::Replay {
            actor,
            subscription_id,
            subscription,
            sequences,
            floor,
            reply,
        } => (
            Command::Replay {
                actor,
                subscription: sub(subscription_id, subscription),
                sequences,
                floor,
            },
            typed(reply, done),
        ),
        Op::Seek {
            actor,
            subscription_id,
            subscription,
            target,
            reply,
        } => (
            Command::Seek {
                actor,
                subscription: sub(subscription_id, subscription),
                target,
            },
            typed(reply, done),
        ),
        Op::Retract {
            actor,
            request,
            reply,
        } => (
            Command::Retract { actor, request },
            typed(reply, |r| match r {
                Reply::Retracted(x) => Some(x),
                _ => None,
            }),
        ),
        Op::Expunge { events, reply } => (Command::Expunge { events }, typed(reply, done)),
        Op::Ack {
            actor,
            subscription_id,
            subscription,
            acks,
            floor,
            lazy: _,
            reply,
        } => (
            Command::Ack {
                actor,
                subscription: sub(subscription_id, subscription),
                acks,
                floor,
            },
            typed(reply, done),
        ),
        Op::Record { entry, reply } => (
            Command::Record { entry },
            typed(reply, |r| match r {
                Reply::Recorded(i) => Some(i),
                _ => None,
            }),
        ),
        Op::PurgeDeliveries {
            subscription_ids,
            reply,
        } => (
            Command::PurgeDeliveries { subscription_ids },
            typed(reply, done),
        ),
        Op::AuthDenied { entries, reply } => (Command::AuthDenied { entries }, typed(reply, done)),
    }
}

fn agreement_reply(r: Reply) -> Option<pb::Agreement> {
    match r {
        Reply::Agreement(a) => Some(a),
        _ => None,
    }
}

fn consent_reply(r: Reply) -> Option<pb::ConsentRecord> {
    match r {
        Reply::Consent(c) => Some(c),
        _ => None,
    }
}

fn subscription_reply(r: Reply) -> Option<SubscriptionRecord> {
    match r {
        Reply::Subscription(s) => Some(s),
        _ => None,
    }
}
