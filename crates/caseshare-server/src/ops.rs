//! The plain-HTTP ops port: `/healthz` (the process is up), `/readyz` (the
//! broker is serving, not shutting down and has found no damaged record) and `/metrics` (Prometheus text).
//! It carries no case data. `catalogue` lists every metric; `gauges`
//! renders the per-subscription series and keeps the sampled ages;
//! `status` answers `Admin.GetStatus` (`caseshare status`) from them.

pub mod catalogue;
pub mod gauges;
pub mod status;

#[cfg(test)]
mod dashboard_tests;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The process-wide Prometheus recorder (installed once).
pub fn prometheus() -> Option<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<Option<PrometheusHandle>> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = catalogue::builder().build_recorder();
            let handle = recorder.handle();
            let installed = metrics::set_global_recorder(recorder).ok().map(|_| handle);
            catalogue::register_at_start();
            if let Some(h) = &installed {
                start_upkeep(h.clone());
            }
            installed
        })
        .clone()
}

/// How often histogram samples are folded into their buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// A recorder made with `build_recorder` keeps every histogram sample
/// until something drains it: a scrape, or this upkeep. Without it the
/// samples of a broker nobody scrapes grew with every publish (~14 bytes
/// each: 7 MB after 500,000 events in `heaptrack`), so it runs on a thread
/// of its own, as the exporter's own listener would run it.
fn start_upkeep(handle: PrometheusHandle) {
    let started = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                handle.run_upkeep();
            }
        });
    if let Err(e) = started {
        tracing::warn!(error = %e, "could not start the metrics upkeep thread: histogram samples are drained only by scrapes");
    }
}

fn respond(status: u16, body: String, content_type: &str) -> http::Response<Full<Bytes>> {
    let mut resp = http::Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}

/// The `/metrics` body: the recorder's metrics, then the per-subscription
/// series.
fn render(handle: Option<&PrometheusHandle>, ready: bool, subs: &SubsCell) -> String {
    metrics::gauge!("caseshare_ready").set(if ready { 1.0 } else { 0.0 });
    let mut body = handle.map(|h| h.render()).unwrap_or_default();
    if let Some(subs) = subs.get() {
        body.push_str(&subs.render());
    }
    body
}

/// The per-subscription series, once the delivery engine exists (the ops
/// port serves from before the store is open).
pub type SubsCell = std::sync::OnceLock<Arc<gauges::Subscriptions>>;

/// Serves the ops endpoints until `shutdown` turns true. Started before
/// the store opens: `/healthz` answers while the broker loads, `/readyz`
/// only once it serves.
pub async fn serve(
    listener: TcpListener,
    ready: Arc<AtomicBool>,
    subs: Arc<SubsCell>,
    mut shutdown: watch::Receiver<bool>,
) {
    let handle = prometheus();
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => continue,
            },
            _ = shutdown.changed() => return,
        };
        let ready = ready.clone();
        let handle = handle.clone();
        let subs = subs.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let ready = ready.clone();
                let handle = handle.clone();
                let subs = subs.clone();
                async move {
                    let is_ready =
                        ready.load(Ordering::SeqCst) && !crate::errors::storage_damaged();
                    let resp = match req.uri().path() {
                        "/healthz" => respond(200, "ok\n".into(), "text/plain"),
                        "/readyz" if is_ready => respond(200, "ready\n".into(), "text/plain"),
                        "/readyz" => respond(503, "not ready\n".into(), "text/plain"),
                        "/metrics" => respond(
                            200,
                            render(handle.as_ref(), is_ready, &subs),
                            "text/plain; version=0.0.4",
                        ),
                        _ => respond(404, "not found\n".into(), "text/plain"),
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
