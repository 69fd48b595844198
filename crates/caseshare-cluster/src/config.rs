//! What the cluster parts are told: the NATS servers and how to
//! authenticate to them (TLS, client certificate, credentials file), the
//! journal stream's shape, and connecting with those settings.

use std::path::PathBuf;
use std::time::Duration;

use caseshare_state::journal::JournalLimits;

use crate::error::ClusterError;

/// The journal stream's default name.
pub const DEFAULT_STREAM: &str = "CASESHARE_JOURNAL";
/// The journal's default subject.
pub const DEFAULT_SUBJECT: &str = "caseshare.journal";
/// The default number of replicas (of the stream and of the lease bucket).
pub const DEFAULT_REPLICAS: usize = 3;
/// The default largest journal message: NATS' own default `max_payload`
/// (1 MiB). A server configured with a larger `max_payload` allows more,
/// up to the journal encoding's ceiling ([`JournalLimits::max_bytes`]).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1 << 20;

/// How to reach the NATS cluster and the journal stream's shape.
///
/// TLS and credentials are handed to `async_nats::ConnectOptions` as they
/// are: `tls_ca` is a PEM file of roots to trust (the servers' CA; giving
/// it also requires TLS), `tls_cert` + `tls_key` a PEM client certificate
/// and its key for servers that verify clients (`verify: true` in the
/// server's `tls` block), and `creds` a NATS `.creds` file (a user JWT and
/// its nkey seed, as `nsc` writes them) for servers in operator mode.
/// Servers given as `tls://host:port` require TLS as well. Nothing here is
/// read before [`connect`] runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalConfig {
    /// Server URLs (`nats://127.0.0.1:4222`, `tls://nats-1:4222`); the
    /// client reconnects to any of them and to servers they announce.
    pub servers: Vec<String>,
    /// The stream's name.
    pub stream: String,
    /// The one subject the stream holds.
    pub subject: String,
    /// Replicas of the stream (file storage). 3 survives one lost node.
    pub replicas: usize,
    /// The largest journal message (the stream's `max_msg_size`); a larger
    /// append is refused by the server.
    pub max_message_bytes: usize,
    /// How long JetStream remembers a `Nats-Msg-Id` to refuse a second
    /// copy: retries of one append must happen within it.
    pub duplicate_window: Duration,
    /// How long the stream keeps a message (its `max_age`): zero keeps
    /// every message; otherwise at least `duplicate_window` (JetStream
    /// refuses a shorter one). A replica whose position falls behind the
    /// stream's first message refuses to start (seed it from a copy).
    pub max_age: Duration,
    /// How long an append waits for its acknowledgement, and a JetStream
    /// API request for its answer, before giving `Unavailable`.
    pub request_timeout: Duration,
    /// PEM file of CA certificates to trust for the servers' TLS.
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate (with `tls_key`) for mutual TLS.
    pub tls_cert: Option<PathBuf>,
    /// PEM key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// A NATS credentials (`.creds`) file.
    pub creds: Option<PathBuf>,
    /// The connection's name, as the servers' monitoring shows it.
    pub client_name: Option<String>,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            servers: vec!["nats://127.0.0.1:4222".into()],
            stream: DEFAULT_STREAM.into(),
            subject: DEFAULT_SUBJECT.into(),
            replicas: DEFAULT_REPLICAS,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            duplicate_window: Duration::from_secs(120),
            max_age: Duration::ZERO,
            request_timeout: Duration::from_secs(2),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            creds: None,
            client_name: None,
        }
    }
}

impl JournalConfig {
    /// The defaults with these servers.
    pub fn new(servers: Vec<String>) -> Self {
        JournalConfig {
            servers,
            ..JournalConfig::default()
        }
    }

    /// Refuses settings no stream could have, naming the setting.
    pub fn validate(&self) -> Result<(), ClusterError> {
        let bad = |what: String| Err(ClusterError::Config(what));
        if self.servers.is_empty() {
            return bad("no NATS servers given".into());
        }
        if self.stream.is_empty() || self.stream.contains(['.', ' ', '*', '>']) {
            return bad(format!(
                "stream name {:?} must be non-empty without '.', ' ', '*' or '>'",
                self.stream
            ));
        }
        if self.subject.is_empty() || self.subject.contains(['*', '>', ' ']) {
            return bad(format!(
                "subject {:?} must be one literal subject",
                self.subject
            ));
        }
        if !(1..=5).contains(&self.replicas) {
            return bad(format!(
                "replicas = {} (JetStream allows 1 to 5)",
                self.replicas
            ));
        }
        let ceiling = JournalLimits::default().max_bytes;
        if self.max_message_bytes == 0 || self.max_message_bytes > ceiling {
            return bad(format!(
                "max_message_bytes = {} (1 to {ceiling}, the journal encoding's limit)",
                self.max_message_bytes
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("a TLS client certificate needs its key, and a key its certificate".into());
        }
        if self.request_timeout.is_zero() || self.duplicate_window.is_zero() {
            return bad("request_timeout and duplicate_window must be positive".into());
        }
        if !self.max_age.is_zero() && self.max_age < self.duplicate_window {
            return bad(format!(
                "max_age = {:?} is shorter than duplicate_window = {:?} (zero keeps every message)",
                self.max_age, self.duplicate_window
            ));
        }
        Ok(())
    }

    /// The connection options these settings give.
    async fn options(&self) -> Result<async_nats::ConnectOptions, ClusterError> {
        let mut options = async_nats::ConnectOptions::new()
            .request_timeout(Some(self.request_timeout))
            .connection_timeout(self.request_timeout.max(Duration::from_secs(2)))
            .retry_on_initial_connect()
            .max_reconnects(None)
            // A server cut off by the network leaves the TCP connection
            // open: only missed pongs tell. The client's default (60 s)
            // kept a broker on a cut-off node without writes for minutes;
            // at 2 s it moves to another server within ~6 s.
            .ping_interval(PING_INTERVAL);
        if let Some(creds) = &self.creds {
            options = options.credentials_file(creds).await.map_err(|e| {
                ClusterError::Config(format!("credentials file {}: {e}", creds.display()))
            })?;
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if let Some(name) = &self.client_name {
            options = options.name(name);
        }
        Ok(options)
    }
}

/// How often the client pings its server; two unanswered pings and it
/// reconnects to another.
pub const PING_INTERVAL: Duration = Duration::from_secs(2);

/// Connects to the configured servers. With `retry_on_initial_connect` the
/// client keeps trying in the background, so this waits up to the request
/// timeout (at least 5 s) for a first connection before giving
/// [`ClusterError::Connect`].
pub async fn connect(config: &JournalConfig) -> Result<async_nats::Client, ClusterError> {
    config.validate()?;
    let options = config.options().await?;
    let servers: Vec<async_nats::ServerAddr> = config
        .servers
        .iter()
        .map(|s| {
            s.parse()
                .map_err(|e| ClusterError::Config(format!("server {s:?}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let client = options
        .connect(servers)
        .await
        .map_err(|e| ClusterError::Connect(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + config.request_timeout.max(Duration::from_secs(5));
    while client.connection_state() != async_nats::connection::State::Connected {
        if tokio::time::Instant::now() > deadline {
            return Err(ClusterError::Connect(format!(
                "no server of {:?} answered",
                config.servers
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(client)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_settings_are_named() {
        assert_eq!(JournalConfig::default().validate(), Ok(()));
        let named = |c: JournalConfig, word: &str| match c.validate() {
            Err(ClusterError::Config(m)) => assert!(m.contains(word), "{m}"),
            other => panic!("{other:?}"),
        };
        named(JournalConfig::new(vec![]), "servers");
        named(
            JournalConfig {
                replicas: 7,
                ..JournalConfig::default()
            },
            "replicas",
        );
        named(
            JournalConfig {
                stream: "A.B".into(),
                ..JournalConfig::default()
            },
            "stream",
        );
        named(
            JournalConfig {
                subject: "a.*".into(),
                ..JournalConfig::default()
            },
            "subject",
        );
        named(
            JournalConfig {
                max_message_bytes: (64 << 20) + 1,
                ..JournalConfig::default()
            },
            "max_message_bytes",
        );
        named(
            JournalConfig {
                tls_cert: Some("c.pem".into()),
                ..JournalConfig::default()
            },
            "key",
        );
        named(
            JournalConfig {
                max_age: Duration::from_secs(60),
                ..JournalConfig::default()
            },
            "max_age",
        );
        let kept = JournalConfig {
            max_age: Duration::from_secs(120),
            ..JournalConfig::default()
        };
        assert_eq!(kept.validate(), Ok(()));
    }
}
