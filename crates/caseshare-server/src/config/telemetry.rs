//! The `[telemetry]` keys: OpenTelemetry trace export over OTLP/gRPC, off
//! unless an endpoint is given. The standard `OTEL_*` environment variables
//! override the file, as `CASESHARE_*` ones do for the other keys:
//!
//! | key | environment | default |
//! |---|---|---|
//! | `telemetry.otlp_endpoint` | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT` | empty: export off |
//! | `telemetry.service_name` | `OTEL_SERVICE_NAME` | `caseshare` |
//! | `telemetry.sampler` | `OTEL_TRACES_SAMPLER` | `parentbased_always_on` |
//! | `telemetry.sampler_arg` | `OTEL_TRACES_SAMPLER_ARG` | unset (1.0 for the ratio samplers) |
//! | `telemetry.resource_attributes` | `OTEL_RESOURCE_ATTRIBUTES` (`k=v,k2=v2`, merged over the file's) | none |
//!
//! `OTEL_SDK_DISABLED=true` turns export off whatever else is set. Every
//! value is checked at start; a refusal names the key.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Config, ConfigError};

/// The samplers of the OpenTelemetry specification that the broker offers.
pub const SAMPLERS: &[&str] = &[
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
];

/// Longest endpoint URL.
const MAX_ENDPOINT: usize = 2048;
/// Longest service name, resource attribute key or value.
const MAX_TEXT: usize = 256;
/// Most resource attributes.
const MAX_ATTRIBUTES: usize = 64;

/// Trace export settings.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`; empty turns
    /// trace export off.
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// One of [`SAMPLERS`].
    pub sampler: String,
    /// The ratio of the `*traceidratio` samplers, 0.0 to 1.0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampler_arg: Option<f64>,
    /// More resource attributes (e.g. `deployment.environment`).
    pub resource_attributes: BTreeMap<String, String>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: String::new(),
            service_name: "caseshare".into(),
            sampler: "parentbased_always_on".into(),
            sampler_arg: None,
            resource_attributes: BTreeMap::new(),
        }
    }
}

impl TelemetryConfig {
    /// Whether spans are exported.
    pub fn exports(&self) -> bool {
        !self.otlp_endpoint.is_empty()
    }
}

fn value(key: &str, message: String) -> ConfigError {
    ConfigError::Value {
        key: key.into(),
        message,
    }
}

fn plain(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

/// `%XX` escapes of `OTEL_RESOURCE_ATTRIBUTES` (W3C Baggage octets).
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl Config {
    /// Applies the `OTEL_*` variables to `[telemetry]`.
    pub(super) fn apply_telemetry_env(
        &mut self,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let t = &mut self.telemetry;
        if let Some(v) =
            get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        {
            t.otlp_endpoint = v.trim().to_string();
        }
        if let Some(v) = get("OTEL_SERVICE_NAME") {
            t.service_name = v;
        }
        if let Some(v) = get("OTEL_TRACES_SAMPLER") {
            t.sampler = v.trim().to_ascii_lowercase();
        }
        if let Some(v) = get("OTEL_TRACES_SAMPLER_ARG") {
            let arg = v.trim().parse::<f64>().map_err(|e| {
                value(
                    "telemetry.sampler_arg (OTEL_TRACES_SAMPLER_ARG)",
                    format!("{v:?}: {e}"),
                )
            })?;
            t.sampler_arg = Some(arg);
        }
        if let Some(v) = get("OTEL_RESOURCE_ATTRIBUTES") {
            for pair in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let parsed = pair.split_once('=').and_then(|(k, v)| {
                    Some((percent_decode(k.trim())?, percent_decode(v.trim())?))
                });
                let Some((k, v)) = parsed else {
                    return Err(value(
                        "telemetry.resource_attributes (OTEL_RESOURCE_ATTRIBUTES)",
                        format!("{pair:?}: write key=value pairs separated by commas"),
                    ));
                };
                t.resource_attributes.insert(k, v);
            }
        }
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            t.otlp_endpoint.clear();
        }
        Ok(())
    }

    /// Checks `[telemetry]`.
    pub(super) fn validate_telemetry(&self) -> Result<(), ConfigError> {
        let t = &self.telemetry;
        if t.exports() {
            let key = "telemetry.otlp_endpoint (OTEL_EXPORTER_OTLP_ENDPOINT)";
            if t.otlp_endpoint.len() > MAX_ENDPOINT || !plain(&t.otlp_endpoint) {
                return Err(value(
                    key,
                    format!("a URL of at most {MAX_ENDPOINT} characters"),
                ));
            }
            let uri = t
                .otlp_endpoint
                .parse::<http::Uri>()
                .map_err(|e| value(key, format!("{:?}: not a URL: {e}", t.otlp_endpoint)))?;
            if uri.scheme_str() != Some("http") || uri.authority().is_none() {
                return Err(value(
                    key,
                    format!(
                        "{:?}: an OTLP/gRPC endpoint such as http://127.0.0.1:4317 \
                         (plaintext gRPC to a collector or agent next to the broker; \
                         https is not supported by this build)",
                        t.otlp_endpoint
                    ),
                ));
            }
        }
        if t.service_name.is_empty() || t.service_name.len() > MAX_TEXT || !plain(&t.service_name) {
            return Err(value(
                "telemetry.service_name (OTEL_SERVICE_NAME)",
                format!("1 to {MAX_TEXT} characters without control characters"),
            ));
        }
        if !SAMPLERS.contains(&t.sampler.as_str()) {
            return Err(value(
                "telemetry.sampler (OTEL_TRACES_SAMPLER)",
                format!("{:?}: one of {}", t.sampler, SAMPLERS.join(", ")),
            ));
        }
        if let Some(arg) = t.sampler_arg
            && !(arg.is_finite() && (0.0..=1.0).contains(&arg))
        {
            return Err(value(
                "telemetry.sampler_arg (OTEL_TRACES_SAMPLER_ARG)",
                format!("{arg}: a ratio from 0.0 to 1.0"),
            ));
        }
        if t.resource_attributes.len() > MAX_ATTRIBUTES {
            return Err(value(
                "telemetry.resource_attributes (OTEL_RESOURCE_ATTRIBUTES)",
                format!(
                    "{} attributes: at most {MAX_ATTRIBUTES}",
                    t.resource_attributes.len()
                ),
            ));
        }
        for (k, v) in &t.resource_attributes {
            if k.is_empty() || k.len() > MAX_TEXT || v.len() > MAX_TEXT || !plain(k) || !plain(v) {
                return Err(value(
                    "telemetry.resource_attributes (OTEL_RESOURCE_ATTRIBUTES)",
                    format!(
                        "{:?}: keys of 1 to {MAX_TEXT} characters and values of at most \
                         {MAX_TEXT}, without control characters",
                        k.chars().take(MAX_TEXT).collect::<String>()
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load(None, |k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn off_by_default_and_on_with_the_endpoint_alone() {
        let cfg = load(&[]).unwrap();
        assert!(!cfg.telemetry.exports());
        let cfg = load(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")]).unwrap();
        assert!(cfg.telemetry.exports());
        assert_eq!(cfg.telemetry.sampler, "parentbased_always_on");
        let cfg = load(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            ("OTEL_SDK_DISABLED", "true"),
        ])
        .unwrap();
        assert!(!cfg.telemetry.exports());
    }

    #[test]
    fn file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "[telemetry]\notlp_endpoint = \"http://collector:4317\"\nsampler = \"traceidratio\"\n\
             sampler_arg = 0.25\n[telemetry.resource_attributes]\n\"deployment.environment\" = \"test\"\n",
        )
        .unwrap();
        let cfg = Config::load(Some(&f), |k| {
            match k {
                "OTEL_SERVICE_NAME" => Some("broker-a"),
                "OTEL_RESOURCE_ATTRIBUTES" => Some("region=north%20west, team=ops"),
                _ => None,
            }
            .map(String::from)
        })
        .unwrap();
        let t = &cfg.telemetry;
        assert_eq!(t.otlp_endpoint, "http://collector:4317");
        assert_eq!(t.sampler_arg, Some(0.25));
        assert_eq!(t.service_name, "broker-a");
        assert_eq!(t.resource_attributes["deployment.environment"], "test");
        assert_eq!(t.resource_attributes["region"], "north west");
        assert_eq!(t.resource_attributes["team"], "ops");
    }

    #[test]
    fn refusals_name_the_key() {
        for (vars, key) in [
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")],
                "telemetry.otlp_endpoint",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317")],
                "telemetry.otlp_endpoint",
            ),
            (
                vec![("OTEL_TRACES_SAMPLER", "sometimes")],
                "telemetry.sampler",
            ),
            (
                vec![("OTEL_TRACES_SAMPLER_ARG", "1.5")],
                "telemetry.sampler_arg",
            ),
            (
                vec![("OTEL_TRACES_SAMPLER_ARG", "-0.1")],
                "telemetry.sampler_arg",
            ),
            (
                vec![("OTEL_TRACES_SAMPLER_ARG", "half")],
                "OTEL_TRACES_SAMPLER_ARG",
            ),
            (
                vec![("OTEL_RESOURCE_ATTRIBUTES", "novalue")],
                "telemetry.resource_attributes",
            ),
        ] {
            let e = load(&vars).unwrap_err().to_string();
            assert!(e.contains(key), "{vars:?}: {e}");
        }
        for ok in ["0", "1", "0.1"] {
            load(&[("OTEL_TRACES_SAMPLER_ARG", ok)]).unwrap();
        }
    }
}
