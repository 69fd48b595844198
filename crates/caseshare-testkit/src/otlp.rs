//! An OpenTelemetry collector for tests: a real gRPC server on loopback
//! speaking the OTLP TraceService (from the `opentelemetry-proto` crate),
//! keeping every span a broker exports to it, with the attributes of the
//! resource that sent it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;

/// What the collector received: (resource attributes, span).
type Received = Arc<Mutex<Vec<(Vec<KeyValue>, Span)>>>;

/// An in-test OTLP/gRPC trace collector (plaintext, as brokers export).
#[derive(Clone, Debug, Default)]
pub struct OtlpCollector {
    spans: Received,
}

#[tonic::async_trait]
impl TraceService for OtlpCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push((resource.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl OtlpCollector {
    /// A collector on a free loopback port; its address is the broker's
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (as `http://{addr}`).
    pub async fn start() -> (OtlpCollector, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (Self::serve(listener), addr)
    }

    /// A collector on `addr` (e.g. one a broker was already pointed at).
    pub async fn start_on(addr: SocketAddr) -> OtlpCollector {
        Self::serve(tokio::net::TcpListener::bind(addr).await.unwrap())
    }

    fn serve(listener: tokio::net::TcpListener) -> OtlpCollector {
        let collector = OtlpCollector::default();
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        collector
    }

    /// Every span received so far, with its resource's attributes.
    pub fn spans(&self) -> Vec<(Vec<KeyValue>, Span)> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits (up to 30 s, failing the test after) until `ready` holds over
    /// the spans received; returns them.
    pub async fn wait_for(&self, what: &str, ready: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans: Vec<Span> = self.spans().into_iter().map(|(_, s)| s).collect();
            if ready(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} after 30 s; spans received: {:#?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
