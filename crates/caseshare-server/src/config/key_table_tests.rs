//! Every numeric key at its bounds and one past them, through the
//! environment and through the TOML file.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::keys::{Access, KEYS};
use super::*;

/// Keeps the rules that tie keys together satisfied while one key moves.
fn companions(name: &str, cfg: &mut Config) {
    match name {
        "limits.max_event_bytes" => {
            cfg.limits.max_message_bytes = 64 << 20;
            cfg.limits.max_stream_queued_bytes = 1 << 34;
            cfg.limits.max_principal_queued_bytes = 1 << 36;
        }
        "limits.max_message_bytes" => {
            cfg.limits.max_event_bytes = cfg
                .limits
                .max_event_bytes
                .min(cfg.limits.max_message_bytes)
                .max(1024)
        }
        "delivery.backoff_base_ms" => cfg.delivery.backoff_cap_ms = 86_400_000,
        "limits.max_stream_queued_bytes" => {
            cfg.limits.max_event_bytes = 1024;
            cfg.limits.max_principal_queued_bytes = 1 << 36;
        }
        "limits.max_principal_queued_bytes" => {
            cfg.limits.max_event_bytes = 1024;
            cfg.limits.max_stream_queued_bytes = 1024;
        }
        "connections.max_per_principal" => cfg.connections.max_connections = 10_000_000,
        "connections.max_connections" => cfg.connections.max_per_principal = 1,
        "delivery.backoff_cap_ms" => {
            cfg.delivery.backoff_base_ms = cfg
                .delivery
                .backoff_base_ms
                .min(cfg.delivery.backoff_cap_ms)
                .max(1)
        }
        _ => {}
    }
}

/// Loads the defaults with one environment variable set, then fixes up
/// companion keys and validates, as `caseshare serve` does.
fn with_env(env: &'static str, value: String) -> Result<Config, ConfigError> {
    let mut cfg = Config::default();
    cfg.apply_env(|k| (k == env).then(|| value.clone()))?;
    Ok(cfg)
}

fn bounds(access: Access) -> (String, String, Option<String>, String) {
    match access {
        Access::Int { min, max, .. } => (
            min.to_string(),
            max.to_string(),
            min.checked_sub(1).map(|v| v.to_string()),
            (max + 1).to_string(),
        ),
        Access::Float { min, max, .. } => (
            min.to_string(),
            max.to_string(),
            Some((min / 2.0).to_string()),
            (max * 2.0).to_string(),
        ),
    }
}

#[test]
fn every_numeric_key_is_in_the_table() {
    // Walk the defaults as TOML, nested tables too: every number must have
    // a row.
    fn walk(prefix: &str, value: &toml::Value, out: &mut Vec<String>) {
        match value {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let name = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&name, v, out);
                }
            }
            v if v.is_integer() || v.is_float() => out.push(prefix.to_string()),
            _ => {}
        }
    }
    let value = toml::Value::try_from(Config::default()).unwrap();
    let mut numeric = Vec::new();
    walk("", &value, &mut numeric);
    assert!(
        numeric.contains(&"store.nats.replicas".to_string()),
        "{numeric:?}"
    );
    let mut names: Vec<String> = KEYS.iter().map(|k| k.name.to_string()).collect();
    numeric.sort();
    names.sort();
    assert_eq!(
        numeric, names,
        "config keys without a range, or rows without a key"
    );
    let mut envs: Vec<&str> = KEYS.iter().map(|k| k.env).collect();
    envs.sort();
    envs.dedup();
    assert_eq!(
        envs.len(),
        KEYS.len(),
        "two keys share an environment variable"
    );
}

#[test]
fn defaults_are_inside_every_range() {
    Config::default().validate().unwrap();
}

#[test]
fn every_key_at_its_bounds_and_one_past() {
    for key in KEYS {
        let (min, max, below, above) = bounds(key.access);
        for ok in [&min, &max] {
            let mut cfg = with_env(key.env, ok.clone())
                .unwrap_or_else(|e| panic!("{} = {ok}: {e}", key.name));
            companions(key.name, &mut cfg);
            cfg.validate()
                .unwrap_or_else(|e| panic!("{} = {ok} should be accepted: {e}", key.name));
        }
        for past in below.iter().chain([&above]) {
            let err = with_env(key.env, past.clone()).and_then(|mut cfg| {
                companions(key.name, &mut cfg);
                cfg.validate().map(|()| cfg)
            });
            let msg = match err {
                Ok(_) => panic!("{} = {past} should be refused", key.name),
                Err(e) => e.to_string(),
            };
            assert!(msg.contains(key.name), "{msg}");
            assert!(msg.contains("out of range"), "{msg}");
        }
    }
}

#[test]
fn the_file_is_range_checked_too() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    for (text, key) in [
        ("[store]\ncache_mib = 0\n", "store.cache_mib"),
        (
            "[limits]\nhttp2_max_concurrent_streams = 0\n",
            "limits.http2_max_concurrent_streams",
        ),
        (
            "[limits]\nhttp2_keepalive_interval_secs = 18446744073709551615\n",
            "limits.http2_keepalive_interval_secs",
        ),
        (
            "[limits]\nidle_stream_timeout_secs = 99999999999\n",
            "limits.idle_stream_timeout_secs",
        ),
        (
            "[limits]\npublish_rate_per_sec = nan\n",
            "limits.publish_rate_per_sec",
        ),
        ("[limits]\npublish_burst = inf\n", "limits.publish_burst"),
        (
            "[delivery]\nbackoff_base_ms = 10\nbackoff_cap_ms = 5\n",
            "delivery.backoff_cap_ms",
        ),
        (
            "[limits]\nmax_event_bytes = 2000000\nmax_message_bytes = 1000000\n",
            "limits.max_event_bytes",
        ),
        ("trust_domain = \"bad domain\"\n", "trust_domain"),
        ("log_format = \"xml\"\n", "log_format"),
    ] {
        std::fs::write(&f, text).unwrap();
        let e = Config::load(Some(&f), |_| None)
            .err()
            .unwrap_or_else(|| panic!("{text:?} should be refused"))
            .to_string();
        assert!(e.contains(key), "{text:?}: {e}");
    }
}

#[test]
fn non_numbers_in_the_environment_name_the_key() {
    for key in KEYS {
        let e = with_env(key.env, "lots".into())
            .err()
            .map(|e| e.to_string());
        let e = e.unwrap_or_else(|| panic!("{} accepted \"lots\"", key.env));
        assert!(e.contains(key.env) && e.contains(key.name), "{e}");
    }
}
