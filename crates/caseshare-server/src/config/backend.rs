//! The store backend keys: `store.backend` and cluster mode's
//! `[store.nats]` (servers, journal stream, TLS and credentials files).
//! Numeric keys (`store.nats.replicas`, `store.nats.lease_ttl_ms`,
//! `store.nats.journal_max_age_s`, `store.nats.duplicate_window_s`) are in
//! the key table with the others; the rule tying the journal's retention
//! to the duplicate window and the stale-proposal bound is here.

use super::{Config, ConfigError};

/// Most NATS server URLs a broker is given.
const MAX_SERVERS: usize = 16;
/// Longest server URL.
const MAX_URL: usize = 256;
/// Longest stream name (JetStream allows more; ours is a plain token).
const MAX_STREAM: usize = 64;
/// Largest event in cluster mode (`limits.max_event_bytes`): a journal
/// message's budget is 768 KiB before its last op, its limit 1 MiB.
pub(crate) const MAX_CLUSTER_EVENT_BYTES: usize = 192 * 1024;

impl Config {
    /// Checks `store.backend` and, for `"nats"`, `[store.nats]`.
    pub(super) fn validate_backend(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| {
            Err(ConfigError::Value {
                key: key.into(),
                message,
            })
        };
        match self.store.backend.as_str() {
            "embedded" => return Ok(()),
            "nats" => {}
            other => {
                return bad(
                    "store.backend",
                    format!(
                        "{other:?}: must be \"embedded\" (the default) or \"nats\" (cluster mode)"
                    ),
                );
            }
        }
        if self.limits.max_event_bytes > MAX_CLUSTER_EVENT_BYTES {
            return bad(
                "limits.max_event_bytes",
                format!(
                    "{} bytes: in cluster mode (store.backend = \"nats\") an event is at most \
                     {MAX_CLUSTER_EVENT_BYTES} bytes, so that a journal message (at most 1 MiB, \
                     filled to 768 KiB before the last op) always holds it",
                    self.limits.max_event_bytes
                ),
            );
        }
        let n = &self.store.nats;
        if n.servers.is_empty() {
            return bad(
                "store.nats.servers",
                "cluster mode needs at least one server, e.g. [\"nats://127.0.0.1:4222\"] \
                 (env CASESHARE_NATS_SERVERS, comma-separated)"
                    .into(),
            );
        }
        if n.servers.len() > MAX_SERVERS {
            return bad(
                "store.nats.servers",
                format!("{} servers: at most {MAX_SERVERS}", n.servers.len()),
            );
        }
        for url in &n.servers {
            if !server_url_ok(url) {
                return bad(
                    "store.nats.servers",
                    format!(
                        "{:?}: a server is nats://host:port or tls://host:port, at most {MAX_URL} characters",
                        url.chars().take(MAX_URL).collect::<String>()
                    ),
                );
            }
        }
        let stream_ok = !n.stream.is_empty()
            && n.stream.len() <= MAX_STREAM
            && n.stream
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !stream_ok {
            return bad(
                "store.nats.stream",
                format!(
                    "{:?}: 1 to {MAX_STREAM} letters, digits, '_' or '-'",
                    n.stream.chars().take(MAX_STREAM + 1).collect::<String>()
                ),
            );
        }
        let floor = min_journal_max_age_s(n);
        if n.journal_max_age_s != 0 && n.journal_max_age_s < floor {
            return bad(
                "store.nats.journal_max_age_s",
                format!(
                    "{} s is shorter than {floor} s: a journal that drops messages must keep \
                     them at least as long as store.nats.duplicate_window_s ({} s) and as \
                     the stale-proposal rule needs (2 × store.nats.lease_ttl_ms + 60 s = {} s); \
                     0 keeps every message",
                    n.journal_max_age_s,
                    n.duplicate_window_s,
                    stale_rule_s(n.lease_ttl_ms)
                ),
            );
        }
        if n.cert.is_some() != n.key.is_some() {
            return bad(
                "store.nats.cert",
                "set both store.nats.cert and store.nats.key (NATS mutual TLS), or neither".into(),
            );
        }
        Ok(())
    }
}

/// How long the stale-proposal rule may need a journal message's time,
/// whole seconds rounded up: `2 × lease_ttl_ms + 60 s` (what a replica
/// keeps of the journal's times, `writer::times`).
fn stale_rule_s(lease_ttl_ms: u64) -> u64 {
    lease_ttl_ms
        .saturating_mul(2)
        .div_ceil(1000)
        .saturating_add(60)
}

/// The shortest non-zero `store.nats.journal_max_age_s` accepted.
pub(crate) fn min_journal_max_age_s(n: &super::NatsConfig) -> u64 {
    n.duplicate_window_s.max(stale_rule_s(n.lease_ttl_ms))
}

/// `nats://host:port` or `tls://host:port` with a non-empty host and a
/// port in 1 ..= 65535.
fn server_url_ok(url: &str) -> bool {
    if url.len() > MAX_URL {
        return false;
    }
    let Some(rest) = url
        .strip_prefix("nats://")
        .or_else(|| url.strip_prefix("tls://"))
    else {
        return false;
    };
    let Some((host, port)) = rest.rsplit_once(':') else {
        return false;
    };
    !host.is_empty() && !host.contains(['/', '@', ' ']) && port.parse::<u16>().is_ok_and(|p| p > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nats(servers: &[&str]) -> Config {
        let mut c = Config::default();
        c.store.backend = "nats".into();
        c.store.nats.servers = servers.iter().map(|s| s.to_string()).collect();
        c
    }

    fn refused_key(c: &Config) -> Option<String> {
        match c.validate_backend() {
            Err(ConfigError::Value { key, .. }) => Some(key),
            _ => None,
        }
    }

    #[test]
    fn backend_values() {
        let table: Vec<(&str, Config, Option<&str>)> = vec![
            ("default is embedded", Config::default(), None),
            (
                "unknown backend",
                Config {
                    store: super::super::StoreConfig {
                        backend: "postgres".into(),
                        ..Default::default()
                    },
                    ..Config::default()
                },
                Some("store.backend"),
            ),
            (
                "nats without servers",
                nats(&[]),
                Some("store.nats.servers"),
            ),
            ("nats with a server", nats(&["nats://127.0.0.1:4222"]), None),
            (
                "tls url",
                nats(&["tls://nats-0.nats:4222", "tls://nats-1.nats:4222"]),
                None,
            ),
            (
                "http url",
                nats(&["http://127.0.0.1:4222"]),
                Some("store.nats.servers"),
            ),
            (
                "no port",
                nats(&["nats://127.0.0.1"]),
                Some("store.nats.servers"),
            ),
            (
                "port 0",
                nats(&["nats://127.0.0.1:0"]),
                Some("store.nats.servers"),
            ),
            (
                "credentials in the url",
                nats(&["nats://u:p@host:4222"]),
                Some("store.nats.servers"),
            ),
            (
                "17 servers",
                nats(&["nats://a:1"; 17]),
                Some("store.nats.servers"),
            ),
            ("16 servers", nats(&["nats://a:1"; 16]), None),
        ];
        for (name, config, want) in table {
            assert_eq!(refused_key(&config).as_deref(), want, "{name}");
        }
    }

    #[test]
    fn stream_names_and_tls_pairs() {
        let mut c = nats(&["nats://127.0.0.1:4222"]);
        c.store.nats.stream = "A".repeat(MAX_STREAM);
        assert_eq!(refused_key(&c), None);
        c.store.nats.stream = "A".repeat(MAX_STREAM + 1);
        assert_eq!(refused_key(&c).as_deref(), Some("store.nats.stream"));
        c.store.nats.stream = "journal.v1".into();
        assert_eq!(refused_key(&c).as_deref(), Some("store.nats.stream"));
        c.store.nats.stream = "CASESHARE_JOURNAL".into();
        c.store.nats.cert = Some("client.pem".into());
        assert_eq!(refused_key(&c).as_deref(), Some("store.nats.cert"));
        c.store.nats.key = Some("client.key".into());
        assert_eq!(refused_key(&c), None);
    }

    #[test]
    fn journal_retention_floors() {
        // (max age, duplicate window, lease ttl ms) → refused key.
        let table: Vec<(u64, u64, u64, Option<&str>)> = vec![
            (0, 120, 5_000, None),
            (1, 120, 5_000, Some("store.nats.journal_max_age_s")),
            (119, 120, 5_000, Some("store.nats.journal_max_age_s")),
            (120, 120, 5_000, None),
            (69, 60, 5_000, Some("store.nats.journal_max_age_s")),
            (70, 60, 5_000, None),
            (61, 60, 1_000, Some("store.nats.journal_max_age_s")),
            (62, 60, 1_000, None),
            (179, 60, 60_000, Some("store.nats.journal_max_age_s")),
            (180, 60, 60_000, None),
            (180, 60, 60_001, Some("store.nats.journal_max_age_s")),
            (181, 60, 60_001, None),
            (180, 60, 59_999, None),
            (86_400 * 30, 86_400, 60_000, None),
        ];
        for (age, window, ttl, want) in table {
            let mut c = nats(&["nats://127.0.0.1:4222"]);
            c.store.nats.journal_max_age_s = age;
            c.store.nats.duplicate_window_s = window;
            c.store.nats.lease_ttl_ms = ttl;
            assert_eq!(
                refused_key(&c).as_deref(),
                want,
                "max age {age}, window {window}, ttl {ttl}"
            );
        }
        let mut c = nats(&["nats://127.0.0.1:4222"]);
        c.store.nats.journal_max_age_s = 100;
        let Err(ConfigError::Value { message, .. }) = c.validate_backend() else {
            panic!("100 s accepted")
        };
        assert!(message.contains("shorter than 120 s"), "{message}");
        // The embedded backend ignores [store.nats].
        let mut c = Config::default();
        c.store.nats.journal_max_age_s = 1;
        assert_eq!(refused_key(&c), None);
    }

    #[test]
    fn the_environment_sets_the_backend_and_servers() {
        let env = |k: &str| match k {
            "CASESHARE_STORE_BACKEND" => Some("nats".to_string()),
            "CASESHARE_NATS_SERVERS" => {
                Some("nats://127.0.0.1:4222, nats://127.0.0.1:4223,".to_string())
            }
            "CASESHARE_NATS_JOURNAL_MAX_AGE_S" => Some("86400".to_string()),
            "CASESHARE_NATS_DUPLICATE_WINDOW_S" => Some("90".to_string()),
            _ => None,
        };
        let c = Config::load(None, env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.store.backend, "nats");
        assert_eq!(
            c.store.nats.servers,
            vec!["nats://127.0.0.1:4222", "nats://127.0.0.1:4223"]
        );
        assert_eq!(c.store.nats.journal_max_age_s, 86_400);
        assert_eq!(c.store.nats.duplicate_window_s, 90);
    }
}
