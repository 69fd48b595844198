//! OpenTelemetry traces across agencies, end to end (issue 16, items 1–2):
//! a real broker started through the test kit exports over OTLP/gRPC to an
//! in-test collector (`caseshare_testkit::OtlpCollector`: a tonic server
//! implementing the OTLP TraceService of the `opentelemetry-proto` crate). A school publishes with a known W3C
//! `traceparent`; social care receives the event over mutual TLS. The
//! spans arrive in the publisher's trace with the expected parents
//! (Publish RPC span under the publisher's span; decision and commit under
//! the RPC span; every delivery attempt and the dead letter under the
//! stored context), with the semantic-convention attributes and kind
//! SERVER; the delivered message carries the trace context; and no
//! attribute anywhere holds the NHS number or the payload's text.
//!
//! Also: export pointed where nothing listens leaves the broker serving,
//! logs the failure once (bounded rate), and resumes by itself once a
//! collector comes up on that address.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use caseshare_proto::v1 as pb;
use caseshare_testkit::*;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};

/// The publisher's own span, as its W3C `traceparent`.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PUBLISHER_SPAN: &str = "00f067aa0ba902b7";
const TRACESTATE: &str = "school=mis-7";

fn traceparent() -> String {
    format!("00-{TRACE_ID}-{PUBLISHER_SPAN}-01")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn str_attr<'a>(span: &'a Span, key: &str) -> &'a str {
    match attr(&span.attributes, key) {
        Some(any_value::Value::StringValue(s)) => s,
        other => panic!("span {} attribute {key}: {other:?}", span.name),
    }
}

fn int_attr(span: &Span, key: &str) -> i64 {
    match attr(&span.attributes, key) {
        Some(any_value::Value::IntValue(i)) => *i,
        other => panic!("span {} attribute {key}: {other:?}", span.name),
    }
}

fn strings_attr(span: &Span, key: &str) -> Vec<String> {
    match attr(&span.attributes, key) {
        Some(any_value::Value::ArrayValue(a)) => a
            .values
            .iter()
            .filter_map(|v| match &v.value {
                Some(any_value::Value::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        other => panic!("span {} attribute {key}: {other:?}", span.name),
    }
}

/// Every value in an attribute, as text (nested arrays and maps too).
fn texts(value: &AnyValue, out: &mut Vec<String>) {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => out.push(s.clone()),
        Some(any_value::Value::IntValue(i)) => out.push(i.to_string()),
        Some(any_value::Value::DoubleValue(d)) => out.push(d.to_string()),
        Some(any_value::Value::BoolValue(b)) => out.push(b.to_string()),
        Some(any_value::Value::BytesValue(b)) => out.push(String::from_utf8_lossy(b).into()),
        Some(any_value::Value::ArrayValue(a)) => a.values.iter().for_each(|v| texts(v, out)),
        Some(any_value::Value::KvlistValue(l)) => l.values.iter().for_each(|kv| {
            out.push(kv.key.clone());
            if let Some(v) = &kv.value {
                texts(v, out);
            }
        }),
        // Anything newer (e.g. string-table indexes) as it prints.
        Some(other) => out.push(format!("{other:?}")),
        None => {}
    }
}

/// Every key and value of every attribute of a span (its own, its events'
/// and its links'), its name and its status message, and the resource's.
fn everything_said(resource: &[KeyValue], span: &Span) -> Vec<String> {
    let mut out = vec![span.name.clone()];
    let add = |attrs: &[KeyValue], out: &mut Vec<String>| {
        for kv in attrs {
            out.push(kv.key.clone());
            if let Some(v) = &kv.value {
                texts(v, out);
            }
        }
    };
    add(resource, &mut out);
    add(&span.attributes, &mut out);
    for e in &span.events {
        out.push(e.name.clone());
        add(&e.attributes, &mut out);
    }
    for l in &span.links {
        add(&l.attributes, &mut out);
    }
    if let Some(s) = &span.status {
        out.push(s.message.clone());
    }
    out
}

fn find<'a>(spans: &'a [Span], name: &str, pred: impl Fn(&Span) -> bool) -> Option<&'a Span> {
    spans.iter().find(|s| s.name == name && pred(s))
}

fn in_trace(s: &Span) -> bool {
    hex(&s.trace_id) == TRACE_ID
}

fn traced_broker(endpoint: SocketAddr) -> Broker {
    Broker::builder()
        .envs(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &format!("http://{endpoint}")),
            ("OTEL_SERVICE_NAME", "caseshare-e2e"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test"),
            // Export every 100 ms rather than every 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            // Redeliveries after 50 ms.
            ("CASESHARE_BACKOFF_BASE_MS", "50"),
        ])
        .start()
}

/// A publish carrying the publisher's trace in its gRPC metadata.
fn traced_publish(event: pb::CaseEvent) -> tonic::Request<pb::PublishRequest> {
    let mut req = tonic::Request::new(publish_request(event));
    req.metadata_mut()
        .insert("traceparent", traceparent().parse().unwrap());
    req.metadata_mut()
        .insert("tracestate", TRACESTATE.parse().unwrap());
    req
}

#[tokio::test]
async fn a_publishers_trace_continues_through_the_broker_to_the_recipient() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (collector, addr) = OtlpCollector::start().await;
    let b = traced_broker(addr);
    b.school_shares_with_social_care().await;
    // A second subscription that gives up after two attempts: its delivery
    // is nacked twice, so it is redelivered once and then dead-lettered.
    let mut sc = b.client(SOCIAL_CARE);
    sc.subscriber
        .create_subscription(pb::Subscription {
            name: "fragile".into(),
            event_types: vec!["education.*".into()],
            ack_deadline: Some(prost_types::Duration {
                seconds: 30,
                nanos: 0,
            }),
            max_attempts: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut main = Subscription::open(&b, SOCIAL_CARE, "main", 10).await;
    let mut fragile = Subscription::open(&b, SOCIAL_CARE, "fragile", 10).await;

    let event = attendance_event("e-traced-1", CHILD_1);
    let summary = event.summary.clone();
    let mut school = b.client(SCHOOL);
    let published = school
        .publisher
        .publish(traced_publish(event))
        .await
        .unwrap()
        .into_inner();
    assert!(!published.duplicate);

    // The recipient's delivery carries the publisher's context, unchanged.
    let delivered = main.next().await;
    assert_eq!(delivered.sequence, published.sequence);
    let carried = delivered.trace_context.clone().expect("trace_context");
    assert_eq!(carried.traceparent, traceparent());
    assert_eq!(carried.tracestate, TRACESTATE);
    main.ack(vec![delivered.delivery_id.clone()]).await;

    // The fragile subscription: attempt 1, nack; attempt 2 (a redelivery,
    // same context), nack; then a dead letter.
    let mut sub = b.client(SOCIAL_CARE);
    for attempt in 1..=2 {
        let d = fragile.next().await;
        assert_eq!(d.attempt, attempt);
        assert_eq!(d.trace_context.as_ref(), Some(&carried));
        sub.subscriber
            .nack(pb::NackRequest {
                subscription: "fragile".into(),
                delivery_ids: vec![d.delivery_id],
            })
            .await
            .unwrap();
    }

    let spans = collector
        .wait_for(
            "publish, decision, commit, deliveries and dead letter",
            |spans| {
                let rpc = find(spans, "caseshare.v1.Publisher/Publish", in_trace);
                rpc.is_some()
                    && find(spans, "caseshare.share_decision", in_trace).is_some()
                    && find(spans, "caseshare.commit", in_trace).is_some()
                    && spans
                        .iter()
                        .filter(|s| s.name == "caseshare.deliver" && in_trace(s))
                        .count()
                        >= 3
                    && find(spans, "caseshare.dead_letter", in_trace).is_some()
            },
        )
        .await;

    // The Publish RPC span: SERVER, a child of the publisher's span, with
    // the semantic-convention attributes and the final status code.
    let rpc = find(&spans, "caseshare.v1.Publisher/Publish", in_trace).unwrap();
    assert_eq!(rpc.kind, SpanKind::Server as i32);
    assert_eq!(hex(&rpc.parent_span_id), PUBLISHER_SPAN);
    assert_eq!(str_attr(rpc, "rpc.system"), "grpc");
    assert_eq!(str_attr(rpc, "rpc.service"), "caseshare.v1.Publisher");
    assert_eq!(str_attr(rpc, "rpc.method"), "Publish");
    assert_eq!(int_attr(rpc, "rpc.grpc.status_code"), 0);
    assert_eq!(str_attr(rpc, "caseshare.agency"), SCHOOL);
    let rpc_id = rpc.span_id.clone();

    // The sharing decision and the commit are children of the RPC span.
    let decision = find(&spans, "caseshare.share_decision", in_trace).unwrap();
    assert_eq!(decision.parent_span_id, rpc_id);
    assert_eq!(
        str_attr(decision, "caseshare.event_type"),
        "education.attendance_concern"
    );
    assert_eq!(
        strings_attr(decision, "caseshare.shared_with"),
        vec![SOCIAL_CARE.to_string()]
    );
    assert_eq!(
        int_attr(decision, "caseshare.event.sequence"),
        published.sequence as i64
    );
    let commit = find(&spans, "caseshare.commit", in_trace).unwrap();
    assert_eq!(commit.parent_span_id, rpc_id);
    assert!(int_attr(commit, "caseshare.commit.batch_ops") >= 1);
    assert!(int_attr(commit, "caseshare.commit.batch_events") >= 1);
    assert!(commit.start_time_unix_nano >= decision.end_time_unix_nano);
    assert!(commit.end_time_unix_nano <= rpc.end_time_unix_nano);

    // Every delivery attempt, the redelivery included, and the dead letter
    // are in the same trace, children of the stored context.
    let deliveries: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "caseshare.deliver" && in_trace(s))
        .collect();
    let mut seen: Vec<(String, i64)> = deliveries
        .iter()
        .map(|s| {
            assert_eq!(hex(&s.parent_span_id), PUBLISHER_SPAN, "{s:?}");
            assert_eq!(s.kind, SpanKind::Producer as i32);
            assert_eq!(str_attr(s, "caseshare.recipient"), SOCIAL_CARE);
            assert_eq!(str_attr(s, "caseshare.source_agency"), SCHOOL);
            assert_eq!(str_attr(s, "caseshare.decision"), "shared");
            (
                str_attr(s, "caseshare.subscription").to_string(),
                int_attr(s, "caseshare.delivery.attempt"),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("fragile".to_string(), 1),
            ("fragile".to_string(), 2),
            ("main".to_string(), 1)
        ]
    );
    let dead = find(&spans, "caseshare.dead_letter", in_trace).unwrap();
    assert_eq!(hex(&dead.parent_span_id), PUBLISHER_SPAN);
    assert_eq!(str_attr(dead, "caseshare.subscription"), "fragile");
    assert_eq!(int_attr(dead, "caseshare.delivery.attempts"), 2);

    // The subscriber's stream and the nacks are RPC spans too.
    let nack = find(&spans, "caseshare.v1.Subscriber/Nack", |_| true).unwrap();
    assert_eq!(nack.kind, SpanKind::Server as i32);
    assert_eq!(str_attr(nack, "caseshare.agency"), SOCIAL_CARE);

    // The resource names the service.
    let all = collector.spans();
    let (resource, _) = all.iter().find(|(_, s)| s.span_id == rpc_id).unwrap();
    let resource_of = |key: &str| match attr(resource, key) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        other => panic!("resource {key}: {other:?}"),
    };
    assert_eq!(resource_of("service.name"), "caseshare-e2e");
    assert_eq!(resource_of("deployment.environment"), "test");

    // Nothing anywhere names the child or quotes the payload.
    let forbidden = [CHILD_1, summary.as_str(), "2026-autumn-1", "e-traced-1"];
    for (resource, span) in &all {
        for said in everything_said(resource, span) {
            for f in forbidden {
                assert!(
                    !said.contains(f),
                    "span {} says {said:?}, which contains {f:?}",
                    span.name
                );
            }
        }
    }
}

#[tokio::test]
async fn without_a_traceparent_the_broker_starts_the_trace_it_delivers() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (collector, addr) = OtlpCollector::start().await;
    let b = traced_broker(addr);
    b.school_shares_with_social_care().await;
    let mut main = Subscription::open(&b, SOCIAL_CARE, "main", 10).await;
    b.client(SCHOOL)
        .publisher
        .publish(publish_request(attendance_event("e-untraced", CHILD_2)))
        .await
        .unwrap();
    let delivered = main.next().await;
    let carried = delivered.trace_context.expect("trace_context");
    let fields: Vec<&str> = carried.traceparent.split('-').collect();
    assert_eq!(fields.len(), 4, "{}", carried.traceparent);
    let (trace, span) = (fields[1].to_string(), fields[2].to_string());
    // The context delivered is the broker's Publish span: a root span.
    let spans = collector
        .wait_for("the Publish span", |spans| {
            spans.iter().any(|s| hex(&s.span_id) == span)
        })
        .await;
    let rpc = spans.iter().find(|s| hex(&s.span_id) == span).unwrap();
    assert_eq!(rpc.name, "caseshare.v1.Publisher/Publish");
    assert_eq!(hex(&rpc.trace_id), trace);
    assert!(rpc.parent_span_id.is_empty());
}

#[tokio::test]
async fn with_no_collector_the_broker_serves_and_export_resumes_when_one_comes_up() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // An address where nothing listens (yet).
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let b = traced_broker(addr);
    b.school_shares_with_social_care().await;
    let mut main = Subscription::open(&b, SOCIAL_CARE, "main", 100).await;
    let mut school = b.client(SCHOOL);
    for i in 0..20 {
        let started = Instant::now();
        school
            .publisher
            .publish(traced_publish(attendance_event(
                &format!("e-down-{i}"),
                CHILD_1,
            )))
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        let d = main.next().await;
        assert_eq!(d.trace_context.unwrap().traceparent, traceparent());
        main.ack(vec![d.delivery_id]).await;
        // Several export rounds fail while this runs.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(b.log_path()).unwrap();
    let failures = log
        .lines()
        .filter(|l| l.contains("trace export to the OTLP collector failed"))
        .count();
    assert_eq!(
        failures, 1,
        "failures are logged once a minute at most:\n{log}"
    );

    // The collector comes up on that address: export resumes by itself.
    let collector = OtlpCollector::start_on(addr).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    loop {
        school
            .publisher
            .publish(traced_publish(attendance_event(
                &format!("e-up-{i}"),
                CHILD_1,
            )))
            .await
            .unwrap();
        let d = main.next().await;
        main.ack(vec![d.delivery_id]).await;
        i += 1;
        if collector
            .spans()
            .iter()
            .any(|(_, s)| s.name == "caseshare.v1.Publisher/Publish" && in_trace(s))
        {
            break;
        }
        assert!(Instant::now() < deadline, "export did not resume in 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
