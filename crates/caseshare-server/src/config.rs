//! Broker configuration: defaults, then a TOML file, then `CASESHARE_*`
//! environment variables, then command-line flags (applied by the CLI).
//! Every problem is reported with the key and what to write instead.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

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
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
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

/// Limits on what clients may send and hold.
#[derive(Debug, Clone, Deserialize, PartialEq)]
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
            idle_stream_timeout_secs: 3_600,
            http2_keepalive_interval_secs: 30,
            http2_keepalive_timeout_secs: 20,
            http2_max_concurrent_streams: 256,
            refusal_delay_ms: 250,
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

/// Storage tuning.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// sled page cache, MiB.
    pub cache_mib: u64,
    /// Most operations in one group commit.
    pub max_batch: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            cache_mib: 64,
            max_batch: 2_048,
        }
    }
}

/// Delivery and retention.
#[derive(Debug, Clone, Deserialize, PartialEq)]
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
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// The checkpoint origin line (and signing key name).
    pub origin: String,
    /// The checkpoint signing key (C2SP `PRIVATE+KEY+…`); default
    /// `<data_dir>/secrets/checkpoint.skey`, created on first start.
    pub signing_key: Option<PathBuf>,
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
            refusal_interval_ms: 60_000,
            refusal_max_keys: 10_000,
        }
    }
}

/// Connections: caps, timeouts and the file-descriptor reserve.
#[derive(Debug, Clone, Deserialize, PartialEq)]
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
#[derive(Debug, Clone, Deserialize, PartialEq)]
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
        if let Some(v) = get("CASESHARE_BACKOFF_BASE_MS") {
            self.delivery.backoff_base_ms = parse_env("CASESHARE_BACKOFF_BASE_MS", &v)?;
        }
        if let Some(v) = get("CASESHARE_BACKOFF_CAP_MS") {
            self.delivery.backoff_cap_ms = parse_env("CASESHARE_BACKOFF_CAP_MS", &v)?;
        }
        if let Some(v) = get("CASESHARE_RETENTION_SECS") {
            self.delivery.retention_secs = parse_env("CASESHARE_RETENTION_SECS", &v)?;
        }
        if let Some(v) = get("CASESHARE_RETENTION_SWEEP_SECS") {
            self.delivery.retention_sweep_secs = parse_env("CASESHARE_RETENTION_SWEEP_SECS", &v)?;
        }
        if let Some(v) = get("CASESHARE_MAX_EVENT_BYTES") {
            self.limits.max_event_bytes = parse_env("CASESHARE_MAX_EVENT_BYTES", &v)?;
        }
        if let Some(v) = get("CASESHARE_PUBLISH_RATE_PER_SEC") {
            self.limits.publish_rate_per_sec = parse_env("CASESHARE_PUBLISH_RATE_PER_SEC", &v)?;
        }
        if let Some(v) = get("CASESHARE_PUBLISH_BURST") {
            self.limits.publish_burst = parse_env("CASESHARE_PUBLISH_BURST", &v)?;
        }
        if let Some(v) = get("CASESHARE_MAX_STREAMS_PER_PRINCIPAL") {
            self.limits.max_streams_per_principal =
                parse_env("CASESHARE_MAX_STREAMS_PER_PRINCIPAL", &v)?;
        }
        if let Some(v) = get("CASESHARE_REFUSAL_DELAY_MS") {
            self.limits.refusal_delay_ms = parse_env("CASESHARE_REFUSAL_DELAY_MS", &v)?;
        }
        if let Some(v) = get("CASESHARE_IDLE_STREAM_TIMEOUT_SECS") {
            self.limits.idle_stream_timeout_secs =
                parse_env("CASESHARE_IDLE_STREAM_TIMEOUT_SECS", &v)?;
        }
        if let Some(v) = get("CASESHARE_MAX_OUTSTANDING") {
            self.limits.max_outstanding = parse_env("CASESHARE_MAX_OUTSTANDING", &v)?;
        }
        // Hardening (issue 13): rates per family, slow readers, refusal
        // auditing, connections.
        macro_rules! env_keys {
            ($($var:literal => $($field:ident).+;)*) => {
                $( if let Some(v) = get($var) { self.$($field).+ = parse_env($var, &v)?; } )*
            };
        }
        env_keys! {
            "CASESHARE_SUBSCRIBE_RATE_PER_SEC" => limits.subscribe_rate_per_sec;
            "CASESHARE_SUBSCRIBE_BURST" => limits.subscribe_burst;
            "CASESHARE_CONSENT_RATE_PER_SEC" => limits.consent_rate_per_sec;
            "CASESHARE_CONSENT_BURST" => limits.consent_burst;
            "CASESHARE_ADMIN_RATE_PER_SEC" => limits.admin_rate_per_sec;
            "CASESHARE_ADMIN_BURST" => limits.admin_burst;
            "CASESHARE_AUDIT_RATE_PER_SEC" => limits.audit_rate_per_sec;
            "CASESHARE_AUDIT_BURST" => limits.audit_burst;
            "CASESHARE_MAX_STREAM_QUEUED_BYTES" => limits.max_stream_queued_bytes;
            "CASESHARE_MAX_PRINCIPAL_QUEUED_BYTES" => limits.max_principal_queued_bytes;
            "CASESHARE_SLOW_READER_GRACE_MS" => limits.slow_reader_grace_ms;
            "CASESHARE_AUDIT_REFUSAL_INTERVAL_MS" => audit.refusal_interval_ms;
            "CASESHARE_AUDIT_REFUSAL_MAX_KEYS" => audit.refusal_max_keys;
            "CASESHARE_CONN_MAX" => connections.max_connections;
            "CASESHARE_CONN_MAX_PER_PRINCIPAL" => connections.max_per_principal;
            "CASESHARE_CONN_MAX_HANDSHAKES" => connections.max_handshakes;
            "CASESHARE_CONN_HANDSHAKE_TIMEOUT_MS" => connections.handshake_timeout_ms;
            "CASESHARE_CONN_PREFACE_TIMEOUT_MS" => connections.preface_timeout_ms;
            "CASESHARE_CONN_IDLE_TIMEOUT_MS" => connections.idle_timeout_ms;
            "CASESHARE_CONN_FD_RESERVE" => connections.fd_reserve;
        }
        Ok(())
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: &str| {
            Err(ConfigError::Value {
                key: key.into(),
                message: message.into(),
            })
        };
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return bad("log_format", "must be \"text\" or \"json\"");
        }
        if self.trust_domain.is_empty() || self.trust_domain.contains('/') {
            return bad("trust_domain", "a DNS-like name such as caseshare.local");
        }
        let t = &self.tls;
        let set = [t.ca.is_some(), t.cert.is_some(), t.key.is_some()];
        if set.iter().any(|s| *s) && !set.iter().all(|s| *s) {
            return bad(
                "tls",
                "set all of tls.ca, tls.cert and tls.key, or none (for a dev PKI)",
            );
        }
        if self.limits.max_event_bytes == 0
            || self.limits.max_event_bytes > self.limits.max_message_bytes
        {
            return bad(
                "limits.max_event_bytes",
                "between 1 and limits.max_message_bytes",
            );
        }
        if !self.limits.publish_rate_per_sec.is_finite()
            || self.limits.publish_rate_per_sec <= 0.0
            || self.limits.publish_burst < 1.0
        {
            return bad(
                "limits.publish_rate_per_sec",
                "a positive rate, and publish_burst at least 1",
            );
        }
        if self.limits.max_streams_per_principal == 0 {
            return bad("limits.max_streams_per_principal", "at least 1");
        }
        if self.limits.max_outstanding == 0 {
            return bad("limits.max_outstanding", "at least 1");
        }
        if caseshare_audit::note::is_valid_key_name(&self.audit.origin)
            .then_some(())
            .is_none()
        {
            return bad(
                "audit.origin",
                "a key name without spaces or '+', such as caseshare.local/audit",
            );
        }
        if self.delivery.backoff_base_ms == 0
            || self.delivery.backoff_cap_ms < self.delivery.backoff_base_ms
        {
            return bad(
                "delivery.backoff_cap_ms",
                "backoff_base_ms must be at least 1 and backoff_cap_ms at least backoff_base_ms",
            );
        }
        if self.delivery.retention_sweep_secs == 0 {
            return bad("delivery.retention_sweep_secs", "at least 1");
        }
        if self.store.max_batch == 0 {
            return bad("store.max_batch", "at least 1");
        }
        self.validate_hardening()?;
        if self.listen == self.ops_listen && self.listen.port() != 0 {
            return bad("ops_listen", "must differ from listen");
        }
        Ok(())
    }
}

impl Config {
    /// Range checks of the hardening keys (issue 13): each error names the
    /// key, the value and the allowed range.
    fn validate_hardening(&self) -> Result<(), ConfigError> {
        fn range<T: PartialOrd + std::fmt::Display>(
            key: &str,
            v: T,
            lo: T,
            hi: T,
        ) -> Result<(), ConfigError> {
            if v >= lo && v <= hi {
                Ok(())
            } else {
                Err(ConfigError::Value {
                    key: key.into(),
                    message: format!("{v} is out of range; allowed {lo}..={hi}"),
                })
            }
        }
        let l = &self.limits;
        for (family, rate, burst) in l.family_rates().into_iter().skip(1) {
            range(&format!("limits.{family}_rate_per_sec"), rate, 0.001, 1e9)?;
            range(&format!("limits.{family}_burst"), burst, 1.0, 1e9)?;
        }
        range(
            "limits.max_stream_queued_bytes",
            l.max_stream_queued_bytes,
            l.max_event_bytes,
            1 << 34,
        )?;
        range(
            "limits.max_principal_queued_bytes",
            l.max_principal_queued_bytes,
            l.max_stream_queued_bytes,
            1 << 36,
        )?;
        range(
            "limits.slow_reader_grace_ms",
            l.slow_reader_grace_ms,
            10,
            3_600_000,
        )?;
        let a = &self.audit;
        range(
            "audit.refusal_interval_ms",
            a.refusal_interval_ms,
            10,
            86_400_000,
        )?;
        range("audit.refusal_max_keys", a.refusal_max_keys, 1, 10_000_000)?;
        let c = &self.connections;
        range(
            "connections.max_connections",
            c.max_connections,
            1,
            10_000_000,
        )?;
        range(
            "connections.max_per_principal",
            c.max_per_principal,
            1,
            c.max_connections,
        )?;
        range(
            "connections.max_handshakes",
            c.max_handshakes,
            1,
            10_000_000,
        )?;
        range(
            "connections.handshake_timeout_ms",
            c.handshake_timeout_ms,
            10,
            600_000,
        )?;
        range(
            "connections.preface_timeout_ms",
            c.preface_timeout_ms,
            10,
            600_000,
        )?;
        range(
            "connections.idle_timeout_ms",
            c.idle_timeout_ms,
            10,
            86_400_000,
        )?;
        range("connections.fd_reserve", c.fd_reserve, 0, 1 << 32)?;
        Ok(())
    }
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
    fn hardening_keys_are_range_checked_at_their_bounds() {
        // Per-principal connections at 1 so the global cap can be tested
        // down to its own lower bound.
        let load = |k: &'static str, v: &'static str| {
            Config::load(None, move |key| {
                if key == k {
                    Some(v.to_string())
                } else {
                    (key == "CASESHARE_CONN_MAX_PER_PRINCIPAL").then(|| "1".to_string())
                }
            })
        };
        for (var, key, ok, bad) in [
            (
                "CASESHARE_CONN_MAX",
                "connections.max_connections",
                "1",
                "0",
            ),
            (
                "CASESHARE_CONN_MAX_HANDSHAKES",
                "connections.max_handshakes",
                "1",
                "0",
            ),
            (
                "CASESHARE_CONN_MAX_PER_PRINCIPAL",
                "connections.max_per_principal",
                "10000",
                "0",
            ),
            (
                "CASESHARE_CONN_HANDSHAKE_TIMEOUT_MS",
                "connections.handshake_timeout_ms",
                "600000",
                "600001",
            ),
            (
                "CASESHARE_CONN_PREFACE_TIMEOUT_MS",
                "connections.preface_timeout_ms",
                "10",
                "9",
            ),
            (
                "CASESHARE_CONN_IDLE_TIMEOUT_MS",
                "connections.idle_timeout_ms",
                "86400000",
                "86400001",
            ),
            (
                "CASESHARE_CONN_FD_RESERVE",
                "connections.fd_reserve",
                "4294967296",
                "4294967297",
            ),
            (
                "CASESHARE_AUDIT_REFUSAL_INTERVAL_MS",
                "audit.refusal_interval_ms",
                "10",
                "9",
            ),
            (
                "CASESHARE_AUDIT_REFUSAL_MAX_KEYS",
                "audit.refusal_max_keys",
                "1",
                "0",
            ),
            (
                "CASESHARE_ADMIN_RATE_PER_SEC",
                "limits.admin_rate_per_sec",
                "0.001",
                "0",
            ),
            (
                "CASESHARE_AUDIT_RATE_PER_SEC",
                "limits.audit_rate_per_sec",
                "1000000000",
                "NaN",
            ),
            (
                "CASESHARE_CONSENT_BURST",
                "limits.consent_burst",
                "1",
                "0.5",
            ),
            (
                "CASESHARE_SUBSCRIBE_BURST",
                "limits.subscribe_burst",
                "1",
                "inf",
            ),
            (
                "CASESHARE_SLOW_READER_GRACE_MS",
                "limits.slow_reader_grace_ms",
                "10",
                "9",
            ),
            (
                "CASESHARE_MAX_STREAM_QUEUED_BYTES",
                "limits.max_stream_queued_bytes",
                "65536",
                "65535",
            ),
            (
                "CASESHARE_MAX_PRINCIPAL_QUEUED_BYTES",
                "limits.max_principal_queued_bytes",
                "8388608",
                "8388607",
            ),
        ] {
            assert!(load(var, ok).is_ok(), "{var}={ok} should load");
            let e = load(var, bad).unwrap_err().to_string();
            assert!(e.contains(key), "{var}={bad}: {e}");
        }
        // A connection cap per principal above the global cap.
        let e = Config::load(None, |k| match k {
            "CASESHARE_CONN_MAX" => Some("5".into()),
            "CASESHARE_CONN_MAX_PER_PRINCIPAL" => Some("6".into()),
            _ => None,
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("connections.max_per_principal") && e.contains("1..=5"),
            "{e}"
        );
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
