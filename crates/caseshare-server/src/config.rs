//! Broker configuration: defaults, then a TOML file, then `CASESHARE_*`
//! environment variables, then command-line flags (applied by the CLI).
//! Every problem is reported with the key and what to write instead.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod backend;
mod keys;
mod telemetry;

pub use telemetry::{SAMPLERS, TelemetryConfig};

/// A configuration problem an operator can fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config file {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said (names the key).
        message: String,
    },
    /// A value is out of range or malformed.
    #[error("config key {key}: {message}")]
    Value {
        /// The key, as written in the file (or its environment variable).
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// TLS files. All three or none: with none, a dev PKI is created in
/// `<data_dir>/pki/`.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The CA bundle that client certificates must chain to (PEM).
    pub ca: Option<PathBuf>,
    /// The server certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// The server private key (PEM).
    pub key: Option<PathBuf>,
    /// Certificate revocation lists (PEM) checked for client certificates.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
}

/// The highest `limits.max_subscriptions_per_agency` allowed.
pub const MAX_SUBSCRIPTIONS_PER_AGENCY: usize = 1_000;

/// Limits on what clients may send and hold.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest encoded event, bytes.
    pub max_event_bytes: usize,
    /// Largest gRPC message, bytes.
    pub max_message_bytes: usize,
    /// The highest `max_outstanding` a subscriber may ask for.
    pub max_outstanding: u32,
    /// Publishes per second per principal (token bucket refill).
    pub publish_rate_per_sec: f64,
    /// Publishes a principal may burst above the rate.
    pub publish_burst: f64,
    /// Concurrent Subscribe and PublishStream streams per principal.
    pub max_streams_per_principal: usize,
    /// Encoded bytes of publishes one PublishStream may have read and not
    /// yet answered; while it is full the stream reads no more (HTTP/2 flow
    /// control holds the client). A larger publish goes alone.
    pub max_stream_inflight_bytes: usize,
    /// The `caseshare` binary's memory target, MiB; 0 = none. While the
    /// process's resident set is above it, the allocator hands freed
    /// memory back at once rather than after its delay
    /// (`caseshare_alloc::MemoryTarget`). Not a limit: live memory stays.
    pub memory_target_mib: u64,
    /// A stream with no message either way for this long is closed, seconds.
    pub idle_stream_timeout_secs: u64,
    /// HTTP/2 keepalive ping interval, seconds.
    pub http2_keepalive_interval_secs: u64,
    /// HTTP/2 keepalive ping timeout, seconds.
    pub http2_keepalive_timeout_secs: u64,
    /// HTTP/2 concurrent streams per connection.
    pub http2_max_concurrent_streams: u32,
    /// A publish refused by the rate limit is answered after this long, ms:
    /// a client that ignores refusals then gets at most
    /// `http2_max_concurrent_streams` of them per connection per delay.
    pub refusal_delay_ms: u64,
    /// Most subscriptions one agency may hold (a quota: over it,
    /// `RESOURCE_EXHAUSTED`).
    pub max_subscriptions_per_agency: usize,
    /// Most event types (or patterns) in one subscription.
    pub max_event_types_per_subscription: usize,
    /// Subscriber RPCs (management, stream opens, acks) per second per
    /// principal, and the burst above it; likewise consent, admin and audit.
    pub subscribe_rate_per_sec: f64,
    /// Subscriber burst.
    pub subscribe_burst: f64,
    /// Consent RPCs per second per principal.
    pub consent_rate_per_sec: f64,
    /// Consent burst.
    pub consent_burst: f64,
    /// Admin RPCs per second per principal.
    pub admin_rate_per_sec: f64,
    /// Admin burst.
    pub admin_burst: f64,
    /// Audit RPCs per second per principal.
    pub audit_rate_per_sec: f64,
    /// Audit burst.
    pub audit_burst: f64,
    /// Bytes of deliveries queued for sending on one Subscribe stream; a
    /// stream that stays over it for `slow_reader_grace_ms` is ended.
    pub max_stream_queued_bytes: usize,
    /// Bytes queued for sending over all of one principal's streams.
    pub max_principal_queued_bytes: usize,
    /// How long a stream may stay at its bound before it is ended, ms.
    pub slow_reader_grace_ms: u64,
}

impl LimitsConfig {
    /// (family, rate, burst) for every RPC family.
    pub fn family_rates(&self) -> [(&'static str, f64, f64); 5] {
        [
            ("publish", self.publish_rate_per_sec, self.publish_burst),
            (
                "subscribe",
                self.subscribe_rate_per_sec,
                self.subscribe_burst,
            ),
            ("consent", self.consent_rate_per_sec, self.consent_burst),
            ("admin", self.admin_rate_per_sec, self.admin_burst),
            ("audit", self.audit_rate_per_sec, self.audit_burst),
        ]
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_event_bytes: 64 * 1024,
            max_message_bytes: 4 * 1024 * 1024,
            max_outstanding: 1_000,
            publish_rate_per_sec: 100_000.0,
            publish_burst: 200_000.0,
            max_streams_per_principal: 32,
            max_stream_inflight_bytes: 1024 * 1024,
            memory_target_mib: 0,
            idle_stream_timeout_secs: 3_600,
            http2_keepalive_interval_secs: 30,
            http2_keepalive_timeout_secs: 20,
            http2_max_concurrent_streams: 256,
            refusal_delay_ms: 250,
            max_subscriptions_per_agency: 100,
            max_event_types_per_subscription: 64,
            subscribe_rate_per_sec: 100_000.0,
            subscribe_burst: 200_000.0,
            consent_rate_per_sec: 10_000.0,
            consent_burst: 20_000.0,
            admin_rate_per_sec: 10_000.0,
            admin_burst: 20_000.0,
            audit_rate_per_sec: 10_000.0,
            audit_burst: 20_000.0,
            max_stream_queued_bytes: 8 * 1024 * 1024,
            max_principal_queued_bytes: 64 * 1024 * 1024,
            slow_reader_grace_ms: 10_000,
        }
    }
}

/// The default of `store.commit_delay_us` (see `docs/BENCHMARKS.md`,
/// "The commit delay" and "Delivery in the publish's commit").
pub const DEFAULT_COMMIT_DELAY_US: u64 = 2_000;

/// Storage tuning.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// sled page cache, MiB.
    pub cache_mib: u64,
    /// Most operations in one group commit.
    pub max_batch: usize,
    /// How long, µs, a batch whose commit thread is free may wait for more
    /// operations, while it holds fewer than the last batch and they
    /// arrive faster than that (0 ..= 10,000, default 2,000; 0 never
    /// waits; env `CASESHARE_STORE_COMMIT_DELAY_US`). One client that
    /// publishes one at a time is not made to wait. Embedded store only.
    pub commit_delay_us: u64,
    /// Size at which the event log starts a new segment file, KiB
    /// (64 ..= 1,048,576; env `CASESHARE_STORE_SEGMENT_KIB`).
    pub segment_kib: u64,
    /// `"embedded"` (the default: sled and the event log in `data_dir`) or
    /// `"nats"` (cluster mode on NATS JetStream, `docs/CLUSTER.md`; env
    /// `CASESHARE_STORE_BACKEND`).
    pub backend: String,
    /// Cluster mode's NATS connection and journal (`[store.nats]`).
    pub nats: NatsConfig,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            cache_mib: 64,
            max_batch: 2_048,
            commit_delay_us: DEFAULT_COMMIT_DELAY_US,
            segment_kib: 64 * 1024,
            backend: "embedded".into(),
            nats: NatsConfig::default(),
        }
    }
}

/// Cluster mode: where the NATS JetStream cluster is and how the journal
/// and the leader lease are kept there.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URLs, `nats://host:port` or `tls://host:port` (env
    /// `CASESHARE_NATS_SERVERS`, comma-separated).
    pub servers: Vec<String>,
    /// The journal stream's name (env `CASESHARE_NATS_STREAM`).
    pub stream: String,
    /// Replicas of the journal stream and the lease bucket (1 ..= 5, env
    /// `CASESHARE_NATS_REPLICAS`).
    pub replicas: u64,
    /// How long a leader's lease lasts without renewal, ms (env
    /// `CASESHARE_NATS_LEASE_TTL_MS`).
    pub lease_ttl_ms: u64,
    /// How long the journal stream keeps a message, seconds (its
    /// `max_age`; env `CASESHARE_NATS_JOURNAL_MAX_AGE_S`). 0, the default,
    /// keeps every message; otherwise at least `duplicate_window_s` and
    /// `2 × lease_ttl_ms + 60 s`. A replica behind the first message kept
    /// refuses to start (`docs/CLUSTER.md`).
    pub journal_max_age_s: u64,
    /// How long the journal stream remembers an append's message id to
    /// refuse a second copy, seconds (env
    /// `CASESHARE_NATS_DUPLICATE_WINDOW_S`).
    pub duplicate_window_s: u64,
    /// CA bundle that signs the NATS servers' certificates (env
    /// `CASESHARE_NATS_CA`).
    pub ca: Option<PathBuf>,
    /// Client certificate and key for NATS mutual TLS (env
    /// `CASESHARE_NATS_CERT`, `CASESHARE_NATS_KEY`).
    pub cert: Option<PathBuf>,
    /// Client key for NATS mutual TLS.
    pub key: Option<PathBuf>,
    /// A NATS credentials file (JWT and nkey seed; env `CASESHARE_NATS_CREDS`).
    pub creds: Option<PathBuf>,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            servers: Vec::new(),
            stream: "CASESHARE_JOURNAL".into(),
            replicas: 3,
            lease_ttl_ms: 5_000,
            journal_max_age_s: 0,
            duplicate_window_s: 120,
            ca: None,
            cert: None,
            key: None,
            creds: None,
        }
    }
}

/// Delivery and retention.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Delay before the first redelivery, ms (doubling per attempt).
    pub backoff_base_ms: u64,
    /// Longest redelivery delay, ms.
    pub backoff_cap_ms: u64,
    /// How long an event whose deliveries are all settled is kept, seconds.
    pub retention_secs: u64,
    /// How often retention runs, seconds.
    pub retention_sweep_secs: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            backoff_base_ms: 1_000,
            backoff_cap_ms: 60_000,
            retention_secs: 7 * 24 * 3600,
            retention_sweep_secs: 60,
        }
    }
}

/// The audit log.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// The checkpoint origin line (and signing key name).
    pub origin: String,
    /// The checkpoint signing key (C2SP `PRIVATE+KEY+…`); default
    /// `<data_dir>/secrets/checkpoint.skey`, created on first start.
    pub signing_key: Option<PathBuf>,
    /// The pseudonym key (32 random bytes, hex); default
    /// `<data_dir>/secrets/pseudonym.key`, created on first start. Set it
    /// to supply the key from a file mounted elsewhere (a Kubernetes
    /// Secret); every replica of a cluster needs the same one.
    pub pseudonym_key: Option<PathBuf>,
    /// Refusals are written as one `AUTH_DENIED` entry per (caller, method,
    /// reason) per this interval, with a count, ms.
    pub refusal_interval_ms: u64,
    /// Most distinct (caller, method, reason) keys per interval; refusals
    /// past it are counted in one overflow entry.
    pub refusal_max_keys: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            origin: "caseshare.local/audit".into(),
            signing_key: None,
            pseudonym_key: None,
            refusal_interval_ms: 60_000,
            refusal_max_keys: 10_000,
        }
    }
}

/// Connections: caps, timeouts and the file-descriptor reserve.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionsConfig {
    /// Verified connections open at once, all principals.
    pub max_connections: usize,
    /// Verified connections open at once per principal.
    pub max_per_principal: usize,
    /// TLS handshakes in progress at once (unauthenticated sockets); at the
    /// cap the oldest is ended to admit the new one.
    pub max_handshakes: usize,
    /// A TLS handshake not finished in this long is closed, ms.
    pub handshake_timeout_ms: u64,
    /// A verified connection that sends no byte within this long after the
    /// handshake (no HTTP/2 preface) is closed, ms.
    pub preface_timeout_ms: u64,
    /// A connection with no request in flight for this long is closed, ms
    /// (the server's keepalive pings and their acks do not count).
    pub idle_timeout_ms: u64,
    /// New sockets are closed at once when fewer than this many file
    /// descriptors are left below RLIMIT_NOFILE.
    pub fd_reserve: u64,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        ConnectionsConfig {
            max_connections: 10_000,
            max_per_principal: 256,
            max_handshakes: 512,
            handshake_timeout_ms: 10_000,
            preface_timeout_ms: 10_000,
            idle_timeout_ms: 600_000,
            fd_reserve: 128,
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the store, secrets and dev PKI live.
    pub data_dir: PathBuf,
    /// gRPC (mTLS) listen address.
    pub listen: SocketAddr,
    /// Plain-HTTP ops listen address (/healthz, /readyz, /metrics).
    pub ops_listen: SocketAddr,
    /// The SPIFFE trust domain of client certificates.
    pub trust_domain: String,
    /// `text` or `json` logs.
    pub log_format: String,
    /// TLS files.
    pub tls: TlsConfig,
    /// Limits.
    pub limits: LimitsConfig,
    /// Storage tuning.
    pub store: StoreConfig,
    /// The audit log.
    pub audit: AuditConfig,
    /// Delivery and retention.
    pub delivery: DeliveryConfig,
    /// Connections.
    pub connections: ConnectionsConfig,
    /// OpenTelemetry trace export (`[telemetry]`, `OTEL_*`).
    pub telemetry: TelemetryConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./caseshare-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 7443)),
            ops_listen: SocketAddr::from(([127, 0, 0, 1], 7444)),
            trust_domain: "caseshare.local".into(),
            log_format: "text".into(),
            tls: TlsConfig::default(),
            limits: LimitsConfig::default(),
            store: StoreConfig::default(),
            audit: AuditConfig::default(),
            delivery: DeliveryConfig::default(),
            connections: ConnectionsConfig::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

fn parse_env<T: std::str::FromStr>(key: &str, raw: &str) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    raw.parse().map_err(|e: T::Err| ConfigError::Value {
        key: key.to_string(),
        message: format!("{raw:?}: {e}"),
    })
}

impl Config {
    /// Loads defaults, then `file` if given, then environment variables
    /// read through `env` (normally `std::env::var`).
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut cfg = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?
            }
            None => Config::default(),
        };
        cfg.apply_env(env)?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let get = |k: &str| env(k).filter(|v| !v.is_empty());
        if let Some(v) = get("CASESHARE_DATA_DIR") {
            self.data_dir = v.into();
        }
        if let Some(v) = get("CASESHARE_LISTEN") {
            self.listen = parse_env("CASESHARE_LISTEN", &v)?;
        }
        if let Some(v) = get("CASESHARE_OPS_LISTEN") {
            self.ops_listen = parse_env("CASESHARE_OPS_LISTEN", &v)?;
        }
        if let Some(v) = get("CASESHARE_TRUST_DOMAIN") {
            self.trust_domain = v;
        }
        if let Some(v) = get("CASESHARE_LOG_FORMAT") {
            self.log_format = v;
        }
        if let Some(v) = get("CASESHARE_TLS_CA") {
            self.tls.ca = Some(v.into());
        }
        if let Some(v) = get("CASESHARE_TLS_CERT") {
            self.tls.cert = Some(v.into());
        }
        if let Some(v) = get("CASESHARE_TLS_KEY") {
            self.tls.key = Some(v.into());
        }
        if let Some(v) = get("CASESHARE_TLS_CRLS") {
            self.tls.crls = v
                .split(',')
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect();
        }
        if let Some(v) = get("CASESHARE_AUDIT_ORIGIN") {
            self.audit.origin = v;
        }
        if let Some(v) = get("CASESHARE_AUDIT_SIGNING_KEY") {
            self.audit.signing_key = Some(v.into());
        }
        if let Some(v) = get("CASESHARE_PSEUDONYM_KEY") {
            self.audit.pseudonym_key = Some(v.into());
        }
        if let Some(v) = get("CASESHARE_STORE_BACKEND") {
            self.store.backend = v;
        }
        let nats = &mut self.store.nats;
        if let Some(v) = get("CASESHARE_NATS_SERVERS") {
            nats.servers = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
        }
        if let Some(v) = get("CASESHARE_NATS_STREAM") {
            nats.stream = v;
        }
        for (var, slot) in [
            ("CASESHARE_NATS_CA", &mut nats.ca),
            ("CASESHARE_NATS_CERT", &mut nats.cert),
            ("CASESHARE_NATS_KEY", &mut nats.key),
            ("CASESHARE_NATS_CREDS", &mut nats.creds),
        ] {
            if let Some(v) = get(var) {
                *slot = Some(v.into());
            }
        }
        for key in keys::KEYS {
            if let Some(v) = get(key.env) {
                keys::set_from_str(key, self, &v).map_err(|message| ConfigError::Value {
                    key: format!("{} ({})", key.name, key.env),
                    message,
                })?;
            }
        }
        self.apply_telemetry_env(get)
    }

    /// Checks every value: each numeric key against its range (see
    /// [`keys::KEYS`]), then the rules that tie keys together. The error
    /// names the key, the value and what is allowed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| {
            Err(ConfigError::Value {
                key: key.into(),
                message,
            })
        };
        for key in keys::KEYS {
            keys::check(key, self).map_err(|message| ConfigError::Value {
                key: key.name.into(),
                message,
            })?;
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return bad(
                "log_format",
                format!("{:?}: must be \"text\" or \"json\"", self.log_format),
            );
        }
        if !is_dns_name(&self.trust_domain) {
            return bad(
                "trust_domain",
                format!(
                    "{:?}: a DNS-like name of at most 253 characters (letters, digits, '-', '.'), such as caseshare.local",
                    self.trust_domain
                ),
            );
        }
        if self.data_dir.as_os_str().is_empty() {
            return bad("data_dir", "must not be empty".into());
        }
        self.validate_backend()?;
        self.validate_telemetry()?;
        let t = &self.tls;
        let set = [t.ca.is_some(), t.cert.is_some(), t.key.is_some()];
        if set.iter().any(|s| *s) && !set.iter().all(|s| *s) {
            return bad(
                "tls",
                "set all of tls.ca, tls.cert and tls.key, or none (for a dev PKI)".into(),
            );
        }
        if self.limits.max_event_bytes > self.limits.max_message_bytes {
            return bad(
                "limits.max_event_bytes",
                format!(
                    "{} is larger than limits.max_message_bytes ({}): an event must fit in a message",
                    self.limits.max_event_bytes, self.limits.max_message_bytes
                ),
            );
        }
        if self.audit.origin.len() > 256
            || !caseshare_audit::note::is_valid_key_name(&self.audit.origin)
        {
            return bad(
                "audit.origin",
                format!(
                    "{:?}: a key name of at most 256 characters without spaces or '+', such as caseshare.local/audit",
                    self.audit.origin
                ),
            );
        }
        if self.delivery.backoff_cap_ms < self.delivery.backoff_base_ms {
            return bad(
                "delivery.backoff_cap_ms",
                format!(
                    "{} is below delivery.backoff_base_ms ({}): the cap must be at least the base",
                    self.delivery.backoff_cap_ms, self.delivery.backoff_base_ms
                ),
            );
        }
        let l = &self.limits;
        if l.max_stream_queued_bytes < l.max_event_bytes {
            return bad(
                "limits.max_stream_queued_bytes",
                format!(
                    "{} is below limits.max_event_bytes ({}): a stream must be able to queue one event",
                    l.max_stream_queued_bytes, l.max_event_bytes
                ),
            );
        }
        if l.max_principal_queued_bytes < l.max_stream_queued_bytes {
            return bad(
                "limits.max_principal_queued_bytes",
                format!(
                    "{} is below limits.max_stream_queued_bytes ({}): a principal must be able to fill one stream",
                    l.max_principal_queued_bytes, l.max_stream_queued_bytes
                ),
            );
        }
        let c = &self.connections;
        if c.max_per_principal > c.max_connections {
            return bad(
                "connections.max_per_principal",
                format!(
                    "{} is above connections.max_connections ({})",
                    c.max_per_principal, c.max_connections
                ),
            );
        }
        if self.listen == self.ops_listen && self.listen.port() != 0 {
            return bad(
                "ops_listen",
                format!("{} must differ from listen", self.ops_listen),
            );
        }
        Ok(())
    }
}

/// One numeric key and its allowed range, as an operator would write it.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRange {
    /// The key in the TOML file, e.g. `limits.max_outstanding`.
    pub name: &'static str,
    /// Its environment variable.
    pub env: &'static str,
    /// Its unit.
    pub unit: &'static str,
    /// The smallest value accepted.
    pub min: String,
    /// The largest value accepted.
    pub max: String,
}

/// Every numeric key with its range (for documentation and tests).
pub fn key_ranges() -> Vec<KeyRange> {
    keys::KEYS
        .iter()
        .map(|k| {
            let (min, max) = match k.access {
                keys::Access::Int { min, max, .. } => (min.to_string(), max.to_string()),
                keys::Access::Float { min, max, .. } => (min.to_string(), max.to_string()),
            };
            KeyRange {
                name: k.name,
                env: k.env,
                unit: k.unit,
                min,
                max,
            }
        })
        .collect()
}

/// A DNS-like name: labels of letters, digits and '-', separated by '.'.
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn file_then_env() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "listen = \"127.0.0.1:9000\"\n[limits]\nmax_outstanding = 50\n",
        )
        .unwrap();
        let cfg = Config::load(Some(&f), |k| {
            (k == "CASESHARE_OPS_LISTEN").then(|| "127.0.0.1:9001".to_string())
        })
        .unwrap();
        assert_eq!(cfg.listen.port(), 9000);
        assert_eq!(cfg.ops_listen.port(), 9001);
        assert_eq!(cfg.limits.max_outstanding, 50);
        assert_eq!(cfg.limits.max_event_bytes, 64 * 1024);
    }

    #[test]
    fn errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "lisen = \"x\"\n").unwrap();
        let e = Config::load(Some(&f), |_| None).unwrap_err().to_string();
        assert!(e.contains("lisen"), "{e}");
        let e = Config::load(None, |k| {
            (k == "CASESHARE_LISTEN").then(|| "nope".to_string())
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("CASESHARE_LISTEN"), "{e}");
        let e = Config::load(None, |k| {
            (k == "CASESHARE_TLS_CA").then(|| "/x".to_string())
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("tls"), "{e}");
    }
}

#[cfg(test)]
mod key_table_tests;
