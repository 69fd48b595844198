//! Authorisation, in one place: a tower layer in front of every gRPC
//! service that looks the method up in `caseshare_core::authz::TABLE` for
//! the caller's role. A refused call gets `PERMISSION_DENIED` and an
//! `AUTH_DENIED` audit entry, and never reaches a service. Services then
//! apply ownership (an agency acts only on its own resources) using
//! [`caller`].
//!
//! The same layer applies the per-principal publish rate to unary
//! `Publish` before the request body is read or decoded, and answers a
//! refusal only after `limits.refusal_delay_ms`: a flooding client costs
//! the broker little per refused call and, since each of its calls is held
//! that long, gets few refusals per second per connection.

use std::sync::Arc;
use std::task::{Context, Poll};

use caseshare_core::authz::{self, Verdict};
use caseshare_core::principal::Principal;
use futures::future::BoxFuture;
use tonic::Status;

use crate::limits::RateLimiter;
use crate::tls::PeerInfo;
use crate::writer::{Op, Writer};

/// The unary method the publish rate applies to in the layer
/// (`PublishStream` applies it per message, in the service).
const UNARY_PUBLISH: &str = "/caseshare.v1.Publisher/Publish";

/// The authenticated caller of a request.
pub fn caller<T>(req: &tonic::Request<T>) -> Result<Arc<Principal>, Status> {
    req.extensions()
        .get::<PeerInfo>()
        .map(|p| p.principal.clone())
        .ok_or_else(|| Status::unauthenticated("no verified client certificate on this connection"))
}

/// The layer.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    writer: Writer,
    publish_rate: Arc<RateLimiter>,
    refusal_delay: std::time::Duration,
}

impl AuthLayer {
    /// A layer that records refusals through `writer` and applies
    /// `publish_rate` to unary publishes, holding each rate refusal for
    /// `refusal_delay`.
    pub fn new(
        writer: Writer,
        publish_rate: Arc<RateLimiter>,
        refusal_delay: std::time::Duration,
    ) -> Self {
        AuthLayer {
            writer,
            publish_rate,
            refusal_delay,
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            writer: self.writer.clone(),
            publish_rate: self.publish_rate.clone(),
            refusal_delay: self.refusal_delay,
        }
    }
}

/// The service the layer wraps around the router.
#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    writer: Writer,
    publish_rate: Arc<RateLimiter>,
    refusal_delay: std::time::Duration,
}

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
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
        let method = req.uri().path().to_string();
        let principal = req
            .extensions()
            .get::<PeerInfo>()
            .map(|p| p.principal.clone());
        let verdict = principal.as_ref().map(|p| authz::check(p.role, &method));
        match (principal, verdict) {
            (Some(principal), Some(Verdict::Allowed(_))) if method == UNARY_PUBLISH => {
                match self.publish_rate.acquire(&principal.name) {
                    Ok(()) => {
                        let clone = self.inner.clone();
                        let mut inner = std::mem::replace(&mut self.inner, clone);
                        Box::pin(inner.call(req))
                    }
                    Err(refused) => {
                        let delay = self.refusal_delay;
                        // The body is dropped unread with the request.
                        drop(req);
                        Box::pin(async move {
                            tokio::time::sleep(delay).await;
                            Ok(Status::from(refused).into_http())
                        })
                    }
                }
            }
            (Some(_), Some(Verdict::Allowed(_))) => {
                // Take the ready service, leave a fresh clone in its place.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(inner.call(req))
            }
            (Some(principal), _) => {
                let writer = self.writer.clone();
                Box::pin(async move {
                    metrics::counter!("caseshare_auth_denied_total").increment(1);
                    tracing::info!(principal = %principal, %method, "permission denied");
                    let role = principal.role.as_str();
                    let recorded = writer
                        .call(|reply| Op::AuthDenied {
                            actor: principal.clone(),
                            method: method.clone(),
                            reply,
                        })
                        .await;
                    if let Err(e) = recorded {
                        tracing::error!(error = %e, "could not record AUTH_DENIED");
                    }
                    Ok(
                        Status::permission_denied(format!("role {role} may not call {method}"))
                            .into_http(),
                    )
                })
            }
            (None, _) => Box::pin(async move {
                Ok(
                    Status::unauthenticated("no verified client certificate on this connection")
                        .into_http(),
                )
            }),
        }
    }
}
