//! The OTLP/gRPC span exporter and its tracer provider, from
//! `[telemetry]`: the sampler, the resource (`service.name`,
//! `service.version` and the configured attributes) and a batch processor
//! (its `OTEL_BSP_*` variables apply). The tonic channel connects lazily
//! and reconnects, so export starts or resumes by itself whenever the
//! collector answers; until then batches fail, are dropped (spans never
//! wait for the collector, and a publish never waits for a span), and the
//! failures are logged at most once a minute.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};

use super::TelemetryError;
use crate::config::TelemetryConfig;

/// How often an export failure is logged at most.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The sampler named by `[telemetry] sampler` and `sampler_arg`.
pub(super) fn sampler(cfg: &TelemetryConfig) -> Sampler {
    let ratio = cfg.sampler_arg.unwrap_or(1.0);
    match cfg.sampler.as_str() {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio),
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
        }
        // "parentbased_always_on", the default (validated at start).
        _ => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
    }
}

/// Builds the provider. Must run inside the tokio runtime (the channel's
/// worker is spawned on it).
pub(super) fn provider(cfg: &TelemetryConfig) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(cfg.otlp_endpoint.clone())
        .with_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| TelemetryError(format!("OTLP exporter: {e}")))?;
    let resource = Resource::builder_empty()
        .with_service_name(cfg.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .with_attributes(
            cfg.resource_attributes
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .build();
    Ok(SdkTracerProvider::builder()
        .with_sampler(sampler(cfg))
        .with_resource(resource)
        .with_batch_exporter(Logged::new(exporter, cfg.otlp_endpoint.clone()))
        .build())
}

/// An exporter whose failures are logged at a bounded rate.
#[derive(Debug)]
struct Logged<E> {
    inner: E,
    endpoint: String,
    failures: AtomicU64,
    last_logged: Mutex<Option<Instant>>,
}

impl<E> Logged<E> {
    fn new(inner: E, endpoint: String) -> Self {
        Logged {
            inner,
            endpoint,
            failures: AtomicU64::new(0),
            last_logged: Mutex::new(None),
        }
    }

    fn failed(&self, error: &dyn std::fmt::Display) {
        let failed = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last_logged.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= FAILURE_LOG_INTERVAL) {
            *last = Some(Instant::now());
            self.failures.store(0, Ordering::Relaxed);
            tracing::warn!(
                endpoint = %self.endpoint,
                error = %error,
                failed_batches = failed,
                "trace export to the OTLP collector failed; spans are dropped until it answers (logged at most once a minute)"
            );
        }
    }

    fn recovered(&self) {
        let mut last = self.last_logged.lock().unwrap_or_else(|p| p.into_inner());
        if last.take().is_some() {
            self.failures.store(0, Ordering::Relaxed);
            tracing::info!(endpoint = %self.endpoint, "trace export to the OTLP collector resumed");
        }
    }
}

impl<E: SpanExporter> SpanExporter for Logged<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => self.recovered(),
            Err(e) => self.failed(e),
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
