//! The table of every numeric configuration key: its TOML name, its
//! environment variable, its allowed range and how to read and write it.
//! Environment overrides, range checks and the table test all walk this one
//! list, so a key added here is parsed, checked and tested at its bounds;
//! a key missing from it is caught by the test that walks the defaults.
//!
//! Ranges are chosen so that no value inside them can make the broker panic,
//! hang or overflow a timer: durations stay far below what `Instant`
//! arithmetic can hold, counts stay within what a 64-bit process can
//! allocate, and every divisor or window is at least 1.

use super::Config;

/// How a key's value is read and written (all numeric keys are held as
/// `u64` or `f64` for checking).
#[derive(Clone, Copy)]
pub(crate) enum Access {
    /// An integer key.
    Int {
        get: fn(&Config) -> u64,
        set: fn(&mut Config, u64) -> bool,
        min: u64,
        max: u64,
    },
    /// A floating-point key (must also be finite).
    Float {
        get: fn(&Config) -> f64,
        set: fn(&mut Config, f64),
        min: f64,
        max: f64,
    },
}

/// One numeric key.
#[derive(Clone, Copy)]
pub(crate) struct Key {
    /// The key as written in the TOML file.
    pub name: &'static str,
    /// Its environment variable.
    pub env: &'static str,
    /// Unit, for messages.
    pub unit: &'static str,
    pub access: Access,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("name", &self.name).finish()
    }
}

const MIB: u64 = 1024 * 1024;
const DAY: u64 = 24 * 3600;

macro_rules! int {
    ($name:literal, $env:literal, $unit:literal, $($field:ident).+ : $ty:ty, $min:expr, $max:expr) => {
        Key {
            name: $name,
            env: $env,
            unit: $unit,
            access: Access::Int {
                get: |c| c.$($field).+ as u64,
                set: |c, v| match <$ty>::try_from(v) {
                    Ok(v) => {
                        c.$($field).+ = v;
                        true
                    }
                    Err(_) => false,
                },
                min: $min,
                max: $max,
            },
        }
    };
}

macro_rules! float {
    ($name:literal, $env:literal, $unit:literal, $($field:ident).+, $min:expr, $max:expr) => {
        Key {
            name: $name,
            env: $env,
            unit: $unit,
            access: Access::Float {
                get: |c| c.$($field).+,
                set: |c, v| c.$($field).+ = v,
                min: $min,
                max: $max,
            },
        }
    };
}

/// Every numeric key, with its range.
pub(crate) const KEYS: &[Key] = &[
    int!("limits.max_event_bytes", "CASESHARE_MAX_EVENT_BYTES", "bytes",
        limits.max_event_bytes: usize, 1024, 16 * MIB),
    int!("limits.max_message_bytes", "CASESHARE_MAX_MESSAGE_BYTES", "bytes",
        limits.max_message_bytes: usize, 64 * 1024, 64 * MIB),
    int!("limits.max_outstanding", "CASESHARE_MAX_OUTSTANDING", "deliveries",
        limits.max_outstanding: u32, 1, 100_000),
    float!(
        "limits.publish_rate_per_sec",
        "CASESHARE_PUBLISH_RATE_PER_SEC",
        "per second",
        limits.publish_rate_per_sec,
        0.001,
        10_000_000.0
    ),
    float!(
        "limits.publish_burst",
        "CASESHARE_PUBLISH_BURST",
        "publishes",
        limits.publish_burst,
        1.0,
        10_000_000.0
    ),
    int!("limits.max_streams_per_principal", "CASESHARE_MAX_STREAMS_PER_PRINCIPAL", "streams",
        limits.max_streams_per_principal: usize, 1, 10_000),
    int!("limits.idle_stream_timeout_secs", "CASESHARE_IDLE_STREAM_TIMEOUT_SECS", "seconds",
        limits.idle_stream_timeout_secs: u64, 1, 7 * DAY),
    int!("limits.http2_keepalive_interval_secs", "CASESHARE_HTTP2_KEEPALIVE_INTERVAL_SECS", "seconds",
        limits.http2_keepalive_interval_secs: u64, 1, 3_600),
    int!("limits.http2_keepalive_timeout_secs", "CASESHARE_HTTP2_KEEPALIVE_TIMEOUT_SECS", "seconds",
        limits.http2_keepalive_timeout_secs: u64, 1, 600),
    int!("limits.http2_max_concurrent_streams", "CASESHARE_HTTP2_MAX_CONCURRENT_STREAMS", "streams",
        limits.http2_max_concurrent_streams: u32, 1, 10_000),
    int!("limits.max_subscriptions_per_agency", "CASESHARE_MAX_SUBSCRIPTIONS_PER_AGENCY", "subscriptions",
        limits.max_subscriptions_per_agency: usize, 1, super::MAX_SUBSCRIPTIONS_PER_AGENCY as u64),
    int!("limits.max_event_types_per_subscription", "CASESHARE_MAX_EVENT_TYPES_PER_SUBSCRIPTION", "event types",
        limits.max_event_types_per_subscription: usize, 1,
        caseshare_core::validate::limits::MAX_SUBSCRIPTION_EVENT_TYPES as u64),
    float!(
        "limits.subscribe_rate_per_sec",
        "CASESHARE_SUBSCRIBE_RATE_PER_SEC",
        "per second",
        limits.subscribe_rate_per_sec,
        0.001,
        1e9
    ),
    float!(
        "limits.subscribe_burst",
        "CASESHARE_SUBSCRIBE_BURST",
        "calls",
        limits.subscribe_burst,
        1.0,
        1e9
    ),
    float!(
        "limits.consent_rate_per_sec",
        "CASESHARE_CONSENT_RATE_PER_SEC",
        "per second",
        limits.consent_rate_per_sec,
        0.001,
        1e9
    ),
    float!(
        "limits.consent_burst",
        "CASESHARE_CONSENT_BURST",
        "calls",
        limits.consent_burst,
        1.0,
        1e9
    ),
    float!(
        "limits.admin_rate_per_sec",
        "CASESHARE_ADMIN_RATE_PER_SEC",
        "per second",
        limits.admin_rate_per_sec,
        0.001,
        1e9
    ),
    float!(
        "limits.admin_burst",
        "CASESHARE_ADMIN_BURST",
        "calls",
        limits.admin_burst,
        1.0,
        1e9
    ),
    float!(
        "limits.audit_rate_per_sec",
        "CASESHARE_AUDIT_RATE_PER_SEC",
        "per second",
        limits.audit_rate_per_sec,
        0.001,
        1e9
    ),
    float!(
        "limits.audit_burst",
        "CASESHARE_AUDIT_BURST",
        "calls",
        limits.audit_burst,
        1.0,
        1e9
    ),
    int!("limits.max_stream_inflight_bytes", "CASESHARE_MAX_STREAM_INFLIGHT_BYTES", "bytes",
        limits.max_stream_inflight_bytes: usize, 1024, 1 << 30),
    int!("limits.memory_target_mib", "CASESHARE_MEMORY_TARGET_MIB", "MiB",
        limits.memory_target_mib: u64, 0, 1 << 20),
    int!("limits.max_stream_queued_bytes", "CASESHARE_MAX_STREAM_QUEUED_BYTES", "bytes",
        limits.max_stream_queued_bytes: usize, 1024, 1 << 34),
    int!("limits.max_principal_queued_bytes", "CASESHARE_MAX_PRINCIPAL_QUEUED_BYTES", "bytes",
        limits.max_principal_queued_bytes: usize, 1024, 1 << 36),
    int!("limits.slow_reader_grace_ms", "CASESHARE_SLOW_READER_GRACE_MS", "ms",
        limits.slow_reader_grace_ms: u64, 10, 3_600_000),
    int!("audit.refusal_interval_ms", "CASESHARE_AUDIT_REFUSAL_INTERVAL_MS", "ms",
        audit.refusal_interval_ms: u64, 10, 86_400_000),
    int!("audit.refusal_max_keys", "CASESHARE_AUDIT_REFUSAL_MAX_KEYS", "keys",
        audit.refusal_max_keys: usize, 1, 10_000_000),
    int!("connections.max_connections", "CASESHARE_CONN_MAX", "connections",
        connections.max_connections: usize, 1, 10_000_000),
    int!("connections.max_per_principal", "CASESHARE_CONN_MAX_PER_PRINCIPAL", "connections",
        connections.max_per_principal: usize, 1, 10_000_000),
    int!("connections.max_handshakes", "CASESHARE_CONN_MAX_HANDSHAKES", "handshakes",
        connections.max_handshakes: usize, 1, 10_000_000),
    int!("connections.handshake_timeout_ms", "CASESHARE_CONN_HANDSHAKE_TIMEOUT_MS", "ms",
        connections.handshake_timeout_ms: u64, 10, 600_000),
    int!("connections.preface_timeout_ms", "CASESHARE_CONN_PREFACE_TIMEOUT_MS", "ms",
        connections.preface_timeout_ms: u64, 10, 600_000),
    int!("connections.idle_timeout_ms", "CASESHARE_CONN_IDLE_TIMEOUT_MS", "ms",
        connections.idle_timeout_ms: u64, 10, 86_400_000),
    int!("connections.fd_reserve", "CASESHARE_CONN_FD_RESERVE", "descriptors",
        connections.fd_reserve: u64, 0, 1 << 32),
    int!("limits.refusal_delay_ms", "CASESHARE_REFUSAL_DELAY_MS", "ms",
        limits.refusal_delay_ms: u64, 0, 60_000),
    int!("store.cache_mib", "CASESHARE_STORE_CACHE_MIB", "MiB",
        store.cache_mib: u64, 1, 1024 * 1024),
    int!("store.max_batch", "CASESHARE_STORE_MAX_BATCH", "operations",
        store.max_batch: usize, 1, 65_536),
    int!("store.commit_delay_us", "CASESHARE_STORE_COMMIT_DELAY_US", "µs",
        store.commit_delay_us: u64, 0, crate::writer::MAX_COMMIT_DELAY_US),
    int!("store.segment_kib", "CASESHARE_STORE_SEGMENT_KIB", "KiB",
        store.segment_kib: u64, 64, 1_048_576),
    int!("store.nats.replicas", "CASESHARE_NATS_REPLICAS", "replicas",
        store.nats.replicas: u64, 1, 5),
    int!("store.nats.lease_ttl_ms", "CASESHARE_NATS_LEASE_TTL_MS", "ms",
        store.nats.lease_ttl_ms: u64, 1_000, 60_000),
    int!("store.nats.journal_max_age_s", "CASESHARE_NATS_JOURNAL_MAX_AGE_S", "seconds",
        store.nats.journal_max_age_s: u64, 0, 3_660 * DAY),
    int!("store.nats.duplicate_window_s", "CASESHARE_NATS_DUPLICATE_WINDOW_S", "seconds",
        store.nats.duplicate_window_s: u64, 60, DAY),
    int!("delivery.backoff_base_ms", "CASESHARE_BACKOFF_BASE_MS", "ms",
        delivery.backoff_base_ms: u64, 1, 3_600_000),
    int!("delivery.backoff_cap_ms", "CASESHARE_BACKOFF_CAP_MS", "ms",
        delivery.backoff_cap_ms: u64, 1, DAY * 1000),
    int!("delivery.retention_secs", "CASESHARE_RETENTION_SECS", "seconds",
        delivery.retention_secs: u64, 0, 3_660 * DAY),
    int!("delivery.retention_sweep_secs", "CASESHARE_RETENTION_SWEEP_SECS", "seconds",
        delivery.retention_sweep_secs: u64, 1, DAY),
];

/// A value outside its key's range, as an operator-facing message.
pub(crate) fn out_of_range(key: &Key, value: &str) -> String {
    match key.access {
        Access::Int { min, max, .. } => format!(
            "{value} is out of range: allowed {min} to {max} {} (environment variable {})",
            key.unit, key.env
        ),
        Access::Float { min, max, .. } => format!(
            "{value} is out of range: allowed {min} to {max} {} (environment variable {})",
            key.unit, key.env
        ),
    }
}

/// Checks one key's current value against its range.
pub(crate) fn check(key: &Key, cfg: &Config) -> Result<(), String> {
    match key.access {
        Access::Int { get, min, max, .. } => {
            let v = get(cfg);
            if v < min || v > max {
                return Err(out_of_range(key, &v.to_string()));
            }
        }
        Access::Float { get, min, max, .. } => {
            let v = get(cfg);
            if !v.is_finite() || v < min || v > max {
                return Err(out_of_range(key, &v.to_string()));
            }
        }
    }
    Ok(())
}

/// Applies an environment value to a key; `Err` says why it does not parse.
pub(crate) fn set_from_str(key: &Key, cfg: &mut Config, raw: &str) -> Result<(), String> {
    match key.access {
        Access::Int { set, .. } => {
            let v: u64 = raw
                .trim()
                .parse()
                .map_err(|e| format!("{raw:?} is not a whole number: {e}"))?;
            if !set(cfg, v) {
                return Err(out_of_range(key, raw));
            }
        }
        Access::Float { set, .. } => {
            let v: f64 = raw
                .trim()
                .parse()
                .map_err(|e| format!("{raw:?} is not a number: {e}"))?;
            set(cfg, v);
        }
    }
    Ok(())
}
