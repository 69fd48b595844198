//! Logging and tracing. Logs: `tracing` with an `EnvFilter`
//! (`CASESHARE_LOG`, default `info`) and text or JSON output on stderr.
//! Traces (issue 16): OpenTelemetry spans exported over OTLP/gRPC, off
//! unless `[telemetry] otlp_endpoint` (or `OTEL_EXPORTER_OTLP_ENDPOINT`)
//! is set. Nothing logged or exported carries an NHS number or payload.
//!
//! - `w3c`: W3C Trace Context — what a publisher sends, what a publish
//!   stores (`pb::TraceContext`, carried on every delivery whether or not
//!   export is on), and the conversions to OpenTelemetry contexts.
//! - `rpc`: the tower layer opening a SERVER span per RPC (semantic
//!   conventions for RPC), a child of the caller's `traceparent`.
//! - `spans`: the child spans about one event — the sharing decision, the
//!   commit (with the batch size), each delivery and dead letter.
//! - `export`: the OTLP exporter, sampler, resource and batch processor.
//!
//! `tracing` spans reach the exporter through `tracing-opentelemetry`;
//! only the `caseshare_server` targets at `info` and above are exported,
//! whatever `CASESHARE_LOG` says (it filters log output only).

mod export;
pub(crate) mod rpc;
pub(crate) mod spans;
pub(crate) mod w3c;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::TelemetryConfig;

pub use spans::{CommitScope, OpTrace};

/// Trace export could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("trace export: {0}")]
pub struct TelemetryError(String);

static EXPORTING: AtomicBool = AtomicBool::new(false);
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Whether spans are being exported.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The tracer of the broker's own child spans, once export is on.
fn tracer() -> Option<SdkTracer> {
    TRACER.get().cloned()
}

/// The installed trace export; [`Telemetry::shutdown`] flushes what is
/// buffered.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exports(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is buffered and stops export (on the blocking pool:
    /// the SDK waits for its batch thread).
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            EXPORTING.store(false, Ordering::Relaxed);
            let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        }
    }
}

/// Installs the global subscriber with log output only; a second call is
/// a no-op.
pub fn init(format: &str) {
    let _ = install(format, None);
}

/// Installs the global subscriber: log output, and trace export when
/// `config` has an endpoint. Call inside the tokio runtime. A second call
/// installs nothing and exports nothing.
pub fn init_with_traces(
    format: &str,
    config: &TelemetryConfig,
) -> Result<Telemetry, TelemetryError> {
    let provider = if config.exports() {
        Some(export::provider(config)?)
    } else {
        None
    };
    if !install(format, provider.as_ref()) {
        return Ok(Telemetry::default());
    }
    if let Some(p) = &provider {
        let _ = TRACER.set(p.tracer("caseshare"));
        EXPORTING.store(true, Ordering::Relaxed);
        tracing::info!(
            endpoint = %config.otlp_endpoint,
            sampler = %config.sampler,
            service = %config.service_name,
            "trace export on (OTLP/gRPC)"
        );
    }
    Ok(Telemetry { provider })
}

/// The subscriber; false when one was installed already.
fn install(format: &str, provider: Option<&SdkTracerProvider>) -> bool {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CASESHARE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if format == "json" {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    let otel = provider.map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("caseshare"))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_level(false)
            .with_target(false)
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("caseshare_server", tracing::Level::INFO),
            )
    });
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init()
        .is_ok()
}
