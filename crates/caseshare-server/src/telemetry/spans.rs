//! The broker's child spans about one event, made with the OpenTelemetry
//! API (they carry explicit start and end times, since the work they time
//! happens on the writer and commit threads, away from the request's
//! `tracing` span):
//!
//! - `caseshare.share_decision`: the state machine deciding a publish, per
//!   candidate recipient (on the writer thread), a child of the publish's
//!   span;
//! - `caseshare.commit`: from the start of the group commit that made the
//!   publish durable to its reply, with the batch's size, a child of the
//!   publish's span;
//! - `caseshare.deliver`: each delivery attempt (the first and every
//!   redelivery) and each delivery stopped at re-decision, a child of the
//!   trace context stored with the event;
//! - `caseshare.dead_letter`: a delivery that used up its attempts, in the
//!   same trace.
//!
//! Attributes name agencies, subscriptions, event types, decisions and
//! reason codes, and count things; never an NHS number, an event id chosen
//! by a publisher, or payload text. Everything here is a no-op unless
//! export is on.

use std::cell::Cell;
use std::time::{Instant, SystemTime};

use caseshare_core::pb;
use caseshare_state::Reply;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};

use crate::errors::BrokerError;

/// A reply finisher, as the writer holds it.
type Finish = Box<dyn FnOnce(bool, Result<Reply, BrokerError>) + Send>;

/// A publish the writer is asked to trace: the context its spans are
/// children of.
#[derive(Clone)]
pub struct OpTrace {
    parent: Context,
}

impl std::fmt::Debug for OpTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpTrace").finish_non_exhaustive()
    }
}

impl OpTrace {
    /// The trace of the work done under `span`; `None` when export is off
    /// or the span is not sampled.
    pub fn of(span: &tracing::Span) -> Option<Self> {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        if !super::exporting() {
            return None;
        }
        let parent = span.context();
        let sampled = parent.span().span_context().is_sampled();
        sampled.then_some(OpTrace { parent })
    }

    /// Records the decision span (from `started` to now) from the machine's
    /// answer, and returns `finish` wrapped so that the commit span is
    /// recorded when the batch's commit answers.
    pub fn decided(
        self,
        started: SystemTime,
        result: &Result<Reply, BrokerError>,
        finish: Finish,
    ) -> Finish {
        let Some(tracer) = super::tracer() else {
            return finish;
        };
        let mut attributes = Vec::new();
        let mut status = Status::Unset;
        match result {
            Ok(Reply::Published(p)) => {
                let shared = |d: &&pb::SharingDecision| d.decision == pb::Decision::Shared as i32;
                let list = |keep: bool, f: fn(&pb::SharingDecision) -> String| {
                    opentelemetry::Value::Array(
                        p.decisions
                            .iter()
                            .filter(|d| shared(d) == keep)
                            .map(|d| f(d).into())
                            .collect::<Vec<opentelemetry::StringValue>>()
                            .into(),
                    )
                };
                attributes.extend([
                    KeyValue::new("caseshare.event_type", p.event_type.clone()),
                    KeyValue::new("caseshare.event.sequence", p.sequence as i64),
                    KeyValue::new("caseshare.duplicate", p.duplicate),
                    KeyValue::new("caseshare.decisions", p.decisions.len() as i64),
                    KeyValue::new("caseshare.shared_with", list(true, |d| d.agency_id.clone())),
                    KeyValue::new(
                        "caseshare.withheld_from",
                        list(false, |d| d.agency_id.clone()),
                    ),
                    KeyValue::new(
                        "caseshare.withheld_reasons",
                        list(false, |d| d.reason.clone()),
                    ),
                ]);
            }
            Ok(_) => {}
            Err(e) => {
                attributes.push(KeyValue::new("caseshare.refused", refusal_kind(e)));
                status = Status::error("refused");
            }
        }
        let span = tracer
            .span_builder("caseshare.share_decision")
            .with_kind(SpanKind::Internal)
            .with_start_time(started)
            .with_attributes(attributes)
            .start_with_context(&tracer, &self.parent);
        let cx = self.parent.with_span(span);
        cx.span().set_status(status);
        cx.span().end();
        let parent = self.parent;
        Box::new(move |committed, result| {
            if let Some(commit) = COMMIT.with(Cell::get) {
                let span = tracer
                    .span_builder("caseshare.commit")
                    .with_kind(SpanKind::Internal)
                    .with_start_time(commit.started)
                    .with_attributes([
                        KeyValue::new("caseshare.commit.batch_ops", commit.ops as i64),
                        KeyValue::new("caseshare.commit.batch_events", commit.events as i64),
                        KeyValue::new("caseshare.commit.durable", committed),
                    ])
                    .start_with_context(&tracer, &parent);
                let cx = parent.with_span(span);
                if !committed {
                    cx.span().set_status(Status::error("commit failed"));
                }
                cx.span().end();
            }
            finish(committed, result);
        })
    }
}

/// The kind of a refusal, as a code (never the message, which may quote
/// the request).
fn refusal_kind(e: &BrokerError) -> &'static str {
    match e {
        BrokerError::Invalid(_) => "invalid_argument",
        BrokerError::NotFound(_) => "not_found",
        BrokerError::AlreadyExists(_) => "already_exists",
        BrokerError::PermissionDenied(_) => "permission_denied",
        BrokerError::FailedPrecondition(_) => "failed_precondition",
        BrokerError::ResourceExhausted(_) | BrokerError::RateLimited { .. } => "resource_exhausted",
        BrokerError::Unavailable(_) => "unavailable",
        BrokerError::Store(_) => "storage",
        _ => "internal",
    }
}

/// The group commit whose replies are being sent on this (the commit)
/// thread.
#[derive(Clone, Copy)]
struct Commit {
    started: SystemTime,
    ops: usize,
    events: usize,
}

thread_local! {
    static COMMIT: Cell<Option<Commit>> = const { Cell::new(None) };
}

/// Set by the commit thread while it answers a batch's ops, so that the
/// commit span of a traced publish knows when the commit began and how big
/// it was.
#[derive(Debug)]
pub struct CommitScope(());

impl CommitScope {
    /// The commit that started at `started` with `ops` ops and `events`
    /// events is answering its ops until the scope is dropped.
    pub fn enter(started: Instant, ops: usize, events: usize) -> Self {
        if super::exporting() {
            let started = SystemTime::now()
                .checked_sub(started.elapsed())
                .unwrap_or_else(SystemTime::now);
            COMMIT.with(|c| {
                c.set(Some(Commit {
                    started,
                    ops,
                    events,
                }))
            });
        }
        CommitScope(())
    }
}

impl Drop for CommitScope {
    fn drop(&mut self) {
        COMMIT.with(|c| c.set(None));
    }
}

/// What a delivery span names.
#[derive(Debug)]
pub struct DeliverySpan<'a> {
    /// The stored trace context of the event.
    pub trace: Option<&'a pb::TraceContext>,
    /// The publishing agency.
    pub source_agency: &'a str,
    /// The recipient agency.
    pub recipient: &'a str,
    /// The subscription's name.
    pub subscription: &'a str,
    /// The event type.
    pub event_type: &'a str,
    /// The event's sequence.
    pub sequence: u64,
    /// The attempt (1 for the first send).
    pub attempt: u32,
    /// `shared`, `notice`, `stopped` or `expired`.
    pub decision: &'static str,
    /// The decision's reason code.
    pub reason: &'a str,
}

fn trace_span(
    name: &'static str,
    kind: SpanKind,
    stored: &pb::TraceContext,
    attributes: Vec<KeyValue>,
) {
    let Some(tracer) = super::tracer() else {
        return;
    };
    let parent = super::w3c::parent(stored);
    let span = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_attributes(attributes)
        .start_with_context(&tracer, &parent);
    parent.with_span(span).span().end();
}

/// Records one delivery attempt (or its stop) in the event's trace.
pub fn delivery(d: DeliverySpan<'_>) {
    let Some(stored) = d.trace.filter(|_| super::exporting()) else {
        return;
    };
    trace_span(
        "caseshare.deliver",
        SpanKind::Producer,
        stored,
        vec![
            KeyValue::new("messaging.system", "caseshare"),
            KeyValue::new("messaging.operation.type", "send"),
            KeyValue::new("messaging.destination.name", d.subscription.to_string()),
            KeyValue::new("caseshare.source_agency", d.source_agency.to_string()),
            KeyValue::new("caseshare.recipient", d.recipient.to_string()),
            KeyValue::new("caseshare.subscription", d.subscription.to_string()),
            KeyValue::new("caseshare.event_type", d.event_type.to_string()),
            KeyValue::new("caseshare.event.sequence", d.sequence as i64),
            KeyValue::new("caseshare.delivery.attempt", i64::from(d.attempt)),
            KeyValue::new("caseshare.redelivery", d.attempt > 1),
            KeyValue::new("caseshare.decision", d.decision),
            KeyValue::new("caseshare.reason", d.reason.to_string()),
        ],
    );
}

/// Records a dead letter in the event's trace.
pub fn dead_letter(
    stored: Option<&pb::TraceContext>,
    recipient: &str,
    subscription: &str,
    event_type: &str,
    sequence: u64,
    attempts: u32,
) {
    let Some(stored) = stored.filter(|_| super::exporting()) else {
        return;
    };
    trace_span(
        "caseshare.dead_letter",
        SpanKind::Internal,
        stored,
        vec![
            KeyValue::new("caseshare.recipient", recipient.to_string()),
            KeyValue::new("caseshare.subscription", subscription.to_string()),
            KeyValue::new("caseshare.event_type", event_type.to_string()),
            KeyValue::new("caseshare.event.sequence", sequence as i64),
            KeyValue::new("caseshare.delivery.attempts", i64::from(attempts)),
        ],
    );
}
