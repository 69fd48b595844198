//! The span of every incoming RPC: a tower layer, outermost in front of the
//! services (refusals are traced too), that opens one SERVER-kind span per
//! call following the OpenTelemetry semantic conventions for RPC —
//! `rpc.system = "grpc"`, `rpc.service`, `rpc.method`, and
//! `rpc.grpc.status_code` once the call ends — as a child of the caller's
//! W3C `traceparent`/`tracestate` metadata when it sends one. The span
//! stays open until the response body ends (a Subscribe stream's span
//! covers the stream), and is current while the handler runs, so what the
//! handler starts are its children.
//!
//! Only names from the method table are recorded: a path that is not a
//! known method is `_OTHER` (nothing of the client's text), and the caller
//! is named by role, and by agency id for an agency.

use std::task::{Context, Poll};

use caseshare_core::principal::Role;
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::tls::PeerInfo;

/// The layer; a pass-through while export is off.
#[derive(Clone, Debug, Default)]
pub struct RpcTraceLayer;

impl<S> tower::Layer<S> for RpcTraceLayer {
    type Service = RpcTrace<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcTrace { inner }
    }
}

/// The service the layer wraps.
#[derive(Clone, Debug)]
pub struct RpcTrace<S> {
    inner: S,
}

/// gRPC status codes that are the server's fault (semantic conventions:
/// a SERVER span's status is Error for these).
fn server_error(code: i64) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

fn grpc_status(headers: &http::HeaderMap) -> Option<i64> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn record_status(span: &tracing::Span, code: i64) {
    span.record("rpc.grpc.status_code", code);
    if server_error(code) {
        span.record("otel.status_code", "ERROR");
    }
}

/// The span for a call to `path`.
fn rpc_span<B>(req: &http::Request<B>) -> tracing::Span {
    let known = caseshare_core::authz::rule(req.uri().path()).map(|r| r.method);
    let (service, method) = known
        .and_then(|m| m.trim_start_matches('/').split_once('/'))
        .unwrap_or(("_OTHER", "_OTHER"));
    let name = if method == "_OTHER" {
        "_OTHER".to_string()
    } else {
        format!("{service}/{method}")
    };
    let span = tracing::info_span!(
        target: "caseshare_server::rpc",
        "rpc",
        otel.name = name.as_str(),
        otel.kind = "server",
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        caseshare.principal.role = Empty,
        caseshare.agency = Empty,
    );
    if let Some(peer) = req.extensions().get::<PeerInfo>() {
        let p = &peer.principal;
        span.record("caseshare.principal.role", p.role.as_str());
        if p.role == Role::Agency {
            span.record("caseshare.agency", p.name.as_str());
        }
    }
    if let Some(stored) = traceparent(req.headers()) {
        let _ = span.set_parent(super::w3c::parent(&stored));
    }
    span
}

/// The caller's W3C context from the request headers, if valid.
fn traceparent(headers: &http::HeaderMap) -> Option<caseshare_core::pb::TraceContext> {
    let tp = headers.get("traceparent")?.to_str().ok()?;
    let ts: Vec<&str> = headers
        .get_all("tracestate")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    super::w3c::context(tp, &ts.join(","))
}

impl<S, B> tower::Service<http::Request<B>> for RpcTrace<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // Take the ready service, leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if !super::exporting() {
            return Box::pin(inner.call(req));
        }
        let span = rpc_span(&req);
        let fut = {
            let _entered = span.enter();
            inner.call(req)
        };
        Box::pin(
            async move {
                let response = fut.await?;
                let span = tracing::Span::current();
                if let Some(code) = grpc_status(response.headers()) {
                    // Trailers-only: a refusal or an error before any message.
                    record_status(&span, code);
                    return Ok(response);
                }
                // The status comes in the trailers; the span ends with the body.
                Ok(response.map(|body| {
                    tonic::body::Body::new(body.map_frame(move |frame| {
                        if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                            record_status(&span, code);
                        }
                        frame
                    }))
                }))
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_faults_are_errors_and_client_faults_are_not() {
        for code in [2, 4, 12, 13, 14, 15] {
            assert!(server_error(code), "{code}");
        }
        for code in [0, 1, 3, 5, 6, 7, 8, 9, 10, 11, 16] {
            assert!(!server_error(code), "{code}");
        }
    }
}
