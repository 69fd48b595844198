//! Authorisation, in one place: a tower layer in front of every gRPC
//! service. In order, before the request body is read:
//! - a method not in `caseshare_core::authz::TABLE` gets `UNIMPLEMENTED`
//!   (counted in `caseshare_unknown_method_total`; nothing audited, nothing
//!   of the client's path logged);
//! - a role the table does not allow gets `PERMISSION_DENIED`, and the
//!   refusal is counted in `refusals` (aggregated `AUTH_DENIED` entries);
//! - an agency certificate naming an agency that was never registered gets
//!   `FAILED_PRECONDITION` for every `caseshare.v1` method (also counted);
//! - each RPC family has a per-principal token bucket (`PublishStream`
//!   applies the publish rate per message, in the service); a refusal is
//!   `RESOURCE_EXHAUSTED` with RetryInfo, answered only after
//!   `limits.refusal_delay_ms`, so a flooding client costs little and gets
//!   few refusals per second per connection.
//!
//! Services then apply ownership (an agency acts only on its own
//! resources) using [`caller`]. Every request is also recorded as in
//! flight on its connection until its response body ends (the idle
//! timeout, `conns`).

use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use caseshare_core::authz::{self, Family};
use caseshare_core::principal::{Principal, Role};
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use tonic::Status;

use crate::limits::RateLimiter;
use crate::refusals::{Refusals, reason};
use crate::tls::PeerInfo;
use caseshare_state::BrokerState;

/// The streaming method whose messages the publish rate applies to in the
/// service rather than here.
const PUBLISH_STREAM: &str = "/caseshare.v1.Publisher/PublishStream";

/// One token bucket per RPC family.
#[derive(Debug)]
pub struct FamilyRates {
    limiters: [Arc<RateLimiter>; 5],
}

impl FamilyRates {
    /// From `(family, rate, burst)` in `Family::ALL` order; the publish
    /// limiter is `publish` (shared with `PublishStream`).
    pub fn new(publish: Arc<RateLimiter>, rates: &[(&'static str, f64, f64); 5]) -> Self {
        let make = |i: usize| {
            let (name, rate, burst) = rates[i];
            Arc::new(RateLimiter::for_family(
                name,
                rate,
                burst,
                crate::limits::DEFAULT_MAX_PRINCIPALS,
            ))
        };
        FamilyRates {
            limiters: [publish, make(1), make(2), make(3), make(4)],
        }
    }

    /// The limiter of a family.
    pub fn get(&self, family: Family) -> &RateLimiter {
        let i = Family::ALL.iter().position(|f| *f == family).unwrap_or(0);
        &self.limiters[i]
    }
}

/// The authenticated caller of a request.
pub fn caller<T>(req: &tonic::Request<T>) -> Result<Arc<Principal>, Status> {
    req.extensions()
        .get::<PeerInfo>()
        .map(|p| p.principal.clone())
        .ok_or_else(|| Status::unauthenticated("no verified client certificate on this connection"))
}

/// What the layer needs, shared by every clone.
#[derive(Debug)]
pub struct AuthConfig {
    /// Aggregated refusal auditing.
    pub refusals: Arc<Refusals>,
    /// Per-family rates.
    pub rates: FamilyRates,
    /// How long a rate refusal is held.
    pub refusal_delay: std::time::Duration,
    /// Registered agencies live here.
    pub state: Arc<RwLock<BrokerState>>,
}

/// The layer.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    cfg: Arc<AuthConfig>,
}

impl AuthLayer {
    /// A layer applying `cfg`.
    pub fn new(cfg: AuthConfig) -> Self {
        AuthLayer { cfg: Arc::new(cfg) }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            cfg: self.cfg.clone(),
        }
    }
}

/// The service the layer wraps around the router.
#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    cfg: Arc<AuthConfig>,
}

/// Why the layer answers a call itself.
enum Refused {
    Unauthenticated,
    Unknown,
    Role(Arc<Principal>, &'static str),
    Unregistered(Arc<Principal>, &'static str),
    Rate(crate::errors::BrokerError),
}

impl AuthConfig {
    fn admit(&self, principal: Option<&Arc<Principal>>, path: &str) -> Result<(), Refused> {
        let principal = principal.ok_or(Refused::Unauthenticated)?;
        let rule = authz::rule(path).ok_or(Refused::Unknown)?;
        if !rule.roles.contains(&principal.role) {
            return Err(Refused::Role(principal.clone(), rule.method));
        }
        let Some(family) = authz::family(rule.method) else {
            return Ok(());
        };
        if principal.role == Role::Agency
            && !self
                .state
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .agencies
                .contains_key(&principal.name)
        {
            return Err(Refused::Unregistered(principal.clone(), rule.method));
        }
        if rule.method == PUBLISH_STREAM {
            return Ok(());
        }
        self.rates
            .get(family)
            .acquire(&principal.name)
            .map_err(Refused::Rate)
    }

    /// The status for a refusal; counts and records it.
    async fn answer(&self, refused: Refused) -> Status {
        match refused {
            Refused::Unauthenticated => {
                Status::unauthenticated("no verified client certificate on this connection")
            }
            Refused::Unknown => {
                metrics::counter!("caseshare_unknown_method_total").increment(1);
                Status::unimplemented("no such method")
            }
            Refused::Role(principal, method) => {
                self.refusals.note(&principal, method, reason::ROLE);
                tracing::info!(principal = %principal, method, "permission denied");
                let role = principal.role.as_str();
                Status::permission_denied(format!("role {role} may not call {method}"))
            }
            Refused::Unregistered(principal, method) => {
                self.refusals.note(&principal, method, reason::UNREGISTERED);
                Status::failed_precondition(format!(
                    "agency {:?} is not registered; an administrator must register it before it can act as an agency",
                    principal.name
                ))
            }
            Refused::Rate(e) => {
                tokio::time::sleep(self.refusal_delay).await;
                Status::from(e)
            }
        }
    }
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
        let peer = req.extensions().get::<PeerInfo>();
        let guard = peer.map(|p| p.activity.begin());
        let principal = peer.map(|p| p.principal.clone());
        match self.cfg.admit(principal.as_ref(), req.uri().path()) {
            Ok(()) => {
                // Take the ready service, leave a fresh clone in its place.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let fut = inner.call(req);
                Box::pin(async move {
                    let response = fut.await?;
                    // In flight until the response body ends or is dropped.
                    Ok(response.map(|body| {
                        tonic::body::Body::new(body.map_frame(move |f| {
                            let _in_flight = &guard;
                            f
                        }))
                    }))
                })
            }
            Err(refused) => {
                // The body is dropped unread with the request.
                drop(req);
                let cfg = self.cfg.clone();
                Box::pin(async move {
                    let status = cfg.answer(refused).await;
                    drop(guard);
                    Ok(status.into_http())
                })
            }
        }
    }
}
