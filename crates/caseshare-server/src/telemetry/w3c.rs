//! W3C Trace Context (`traceparent`, `tracestate`): parsing what a
//! publisher sends, choosing the context a publish stores, and converting
//! between the stored form (`pb::TraceContext`) and OpenTelemetry contexts.
//!
//! Propagation does not depend on export: a publisher's context is stored
//! and delivered whether or not this broker exports spans. An invalid
//! `traceparent` is ignored (as the W3C recommendation asks), and a
//! `tracestate` that is too long or not printable ASCII is dropped while its
//! `traceparent` is kept.

use std::collections::HashMap;

use caseshare_core::pb;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The longest `tracestate` kept (what W3C asks every platform to carry).
pub const MAX_TRACESTATE: usize = 512;

fn lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `s` is a valid W3C `traceparent` (version 00 exactly, a later
/// version by its first four fields; never version `ff`, an all-zero trace
/// id or an all-zero parent id).
pub fn valid_traceparent(s: &str) -> bool {
    if s.len() < 55 || !s.is_ascii() {
        return false;
    }
    let (version, rest) = s.split_at(2);
    if !lower_hex(version) || version == "ff" || (version == "00" && s.len() != 55) {
        return false;
    }
    if s.len() > 55 && s.as_bytes()[55] != b'-' {
        return false;
    }
    let fields: Vec<&str> = rest[..53].split('-').collect();
    matches!(fields.as_slice(), ["", trace, parent, flags]
        if trace.len() == 32 && parent.len() == 16 && flags.len() == 2
            && lower_hex(trace) && lower_hex(parent) && lower_hex(flags)
            && trace.bytes().any(|b| b != b'0') && parent.bytes().any(|b| b != b'0'))
}

/// A `tracestate` worth carrying: at most [`MAX_TRACESTATE`] bytes of
/// printable ASCII and at most 32 entries.
fn valid_tracestate(s: &str) -> bool {
    s.len() <= MAX_TRACESTATE
        && s.bytes().all(|b| (0x20..0x7f).contains(&b))
        && s.split(',').count() <= 32
}

/// A stored context from a `traceparent` and `tracestate`, or `None` when
/// the `traceparent` is not valid.
pub fn context(traceparent: &str, tracestate: &str) -> Option<pb::TraceContext> {
    let traceparent = traceparent.trim();
    valid_traceparent(traceparent).then(|| pb::TraceContext {
        traceparent: traceparent.to_string(),
        tracestate: if valid_tracestate(tracestate.trim()) {
            tracestate.trim().to_string()
        } else {
            String::new()
        },
    })
}

/// The context in a call's gRPC metadata (several `tracestate` values are
/// joined with commas, as HTTP header lists are).
pub fn from_metadata(metadata: &tonic::metadata::MetadataMap) -> Option<pb::TraceContext> {
    let traceparent = metadata.get("traceparent")?.to_str().ok()?;
    let tracestate: Vec<&str> = metadata
        .get_all("tracestate")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    context(traceparent, &tracestate.join(","))
}

/// The context a publish stores: the request's own field when it holds a
/// valid `traceparent` (a PublishStream message naming its own trace),
/// else the call's metadata, else none.
pub fn resolve(
    body: Option<pb::TraceContext>,
    call: Option<&pb::TraceContext>,
) -> Option<pb::TraceContext> {
    body.and_then(|b| context(&b.traceparent, &b.tracestate))
        .or_else(|| call.cloned())
}

/// The OpenTelemetry context whose remote parent is `stored`, for the
/// broker's spans about that event.
pub fn parent(stored: &pb::TraceContext) -> opentelemetry::Context {
    let mut carrier = HashMap::with_capacity(2);
    carrier.insert("traceparent".to_string(), stored.traceparent.clone());
    if !stored.tracestate.is_empty() {
        carrier.insert("tracestate".to_string(), stored.tracestate.clone());
    }
    TraceContextPropagator::new().extract(&carrier)
}

/// The context of a `tracing` span as W3C values, when it is exported (a
/// valid OpenTelemetry span context); `None` when export is off.
pub fn of_span(span: &tracing::Span) -> Option<pb::TraceContext> {
    use opentelemetry::trace::TraceContextExt;
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::with_capacity(2);
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    context(
        carrier.get("traceparent").map_or("", String::as_str),
        carrier.get("tracestate").map_or("", String::as_str),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_forms() {
        assert!(valid_traceparent(TP));
        assert!(valid_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later"
        ));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert!(!valid_traceparent(bad), "{bad}");
        }
    }

    #[test]
    fn the_body_wins_then_the_metadata() {
        let call = context(TP, "a=1");
        let other = "00-11111111111111111111111111111111-2222222222222222-01";
        let body = pb::TraceContext {
            traceparent: other.into(),
            tracestate: String::new(),
        };
        assert_eq!(
            resolve(Some(body), call.as_ref()).map(|c| c.traceparent),
            Some(other.to_string())
        );
        let junk = pb::TraceContext {
            traceparent: "nonsense".into(),
            tracestate: "x=1".into(),
        };
        assert_eq!(resolve(Some(junk), call.as_ref()), call);
        assert_eq!(resolve(None, None), None);
    }

    #[test]
    fn an_unusable_tracestate_is_dropped_and_the_parent_kept() {
        let long = "k=".to_string() + &"v".repeat(MAX_TRACESTATE);
        let c = context(TP, &long).map(|c| (c.traceparent, c.tracestate));
        assert_eq!(c, Some((TP.to_string(), String::new())));
        let c = context(TP, "a=1\u{7},b=2").map(|c| c.tracestate);
        assert_eq!(c, Some(String::new()));
    }

    #[test]
    fn a_stored_context_becomes_a_remote_parent() {
        use opentelemetry::trace::TraceContextExt;
        let cx = parent(&pb::TraceContext {
            traceparent: TP.into(),
            tracestate: "a=1".into(),
        });
        let sc = cx.span().span_context().clone();
        assert!(sc.is_remote() && sc.is_sampled());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(sc.trace_state().header(), "a=1");
    }
}
