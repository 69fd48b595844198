//! `--otlp-sink`: an OTLP/gRPC trace receiver in the bench process (the
//! `TraceService` of the `opentelemetry-proto` crate on loopback, plaintext
//! as the broker exports) that counts the spans it is sent, by name, and
//! drops them, so that the embedded broker's trace export is measured end
//! to end (encoding and sending included) without a collector's own cost
//! or memory growing with the run.
//!
//! Unlike `caseshare-testkit`'s `OtlpCollector` (which keeps every span
//! for tests to inspect) it keeps counts only.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

/// What the sink has received.
#[derive(Debug, Default, Clone)]
pub(crate) struct Received {
    /// Export requests (batches).
    pub(crate) requests: u64,
    /// Spans, over all requests.
    pub(crate) spans: u64,
    /// Spans by span name.
    pub(crate) by_name: BTreeMap<String, u64>,
}

/// The counting receiver; clones share the counts.
#[derive(Debug, Default, Clone)]
pub(crate) struct OtlpSink {
    received: Arc<Mutex<Received>>,
}

#[tonic::async_trait]
impl TraceService for OtlpSink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut batch = Received::default();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                for span in ss.spans {
                    batch.spans += 1;
                    *batch.by_name.entry(span.name).or_default() += 1;
                }
            }
        }
        let mut r = self.received.lock().unwrap_or_else(|p| p.into_inner());
        r.requests += 1;
        r.spans += batch.spans;
        for (name, n) in batch.by_name {
            *r.by_name.entry(name).or_default() += n;
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl OtlpSink {
    /// A sink on a free loopback port; returns it and its endpoint URL
    /// (`http://127.0.0.1:PORT`, what `OTEL_EXPORTER_OTLP_ENDPOINT` would say).
    pub(crate) async fn start() -> Result<(OtlpSink, String)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the OTLP sink on loopback")?;
        let addr: SocketAddr = listener.local_addr()?;
        let sink = OtlpSink::default();
        let service =
            TraceServiceServer::new(sink.clone()).max_decoding_message_size(64 * 1024 * 1024);
        tokio::spawn(async move {
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
            {
                eprintln!("the OTLP sink stopped: {e}");
            }
        });
        Ok((sink, format!("http://{addr}")))
    }

    /// The counts so far.
    pub(crate) fn received(&self) -> Received {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    use super::*;

    #[tokio::test]
    async fn counts_spans_by_name() {
        let (sink, endpoint) = OtlpSink::start().await.unwrap();
        let mut client = TraceServiceClient::connect(endpoint).await.unwrap();
        let span = |name: &str| Span {
            name: name.into(),
            ..Default::default()
        };
        client
            .export(ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    scope_spans: vec![ScopeSpans {
                        spans: vec![span("a"), span("b"), span("a")],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            })
            .await
            .unwrap();
        let r = sink.received();
        assert_eq!((r.requests, r.spans), (1, 3));
        assert_eq!(r.by_name.get("a"), Some(&2));
        assert_eq!(r.by_name.get("b"), Some(&1));
    }
}
