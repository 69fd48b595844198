//! Connecting to a broker with a client certificate.

use std::path::{Path, PathBuf};

use caseshare_proto::v1 as pb;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `https://host:port`.
    pub server: String,
    /// CA bundle that the server certificate must chain to.
    pub ca: PathBuf,
    /// Client certificate.
    pub cert: PathBuf,
    /// Client key.
    pub key: PathBuf,
    /// The name to verify in the server certificate (default: the host).
    pub domain: Option<String>,
}

/// A connection failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The endpoint or TLS setup failed.
    #[error("cannot connect to {server}: {source}")]
    Connect {
        /// The server.
        server: String,
        /// Why.
        source: tonic::transport::Error,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl ClientConfig {
    /// The files of a dev PKI for one of its clients.
    pub fn dev(server: impl Into<String>, pki_dir: &Path, client: &str) -> Self {
        ClientConfig {
            server: server.into(),
            ca: pki_dir.join("ca.pem"),
            cert: pki_dir.join(format!("{client}.pem")),
            key: pki_dir.join(format!("{client}.key")),
            domain: None,
        }
    }

    /// Opens a channel (lazily: failures show on the first call).
    pub fn connect_lazy(&self) -> Result<Channel, ClientError> {
        let err = |source| ClientError::Connect {
            server: self.server.clone(),
            source,
        };
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&self.ca)?))
            .identity(Identity::from_pem(read(&self.cert)?, read(&self.key)?));
        if let Some(d) = &self.domain {
            tls = tls.domain_name(d.clone());
        }
        let endpoint = Endpoint::from_shared(self.server.clone())
            .map_err(err)?
            .tls_config(tls)
            .map_err(err)?
            .tcp_nodelay(true);
        Ok(endpoint.connect_lazy())
    }
}

/// The clients of every service on one channel.
#[derive(Debug, Clone)]
pub struct Clients {
    /// Publisher.
    pub publisher: pb::publisher_client::PublisherClient<Channel>,
    /// Subscriber.
    pub subscriber: pb::subscriber_client::SubscriberClient<Channel>,
    /// Consent.
    pub consent: pb::consent_client::ConsentClient<Channel>,
    /// Admin.
    pub admin: pb::admin_client::AdminClient<Channel>,
    /// Audit.
    pub audit: pb::audit_client::AuditClient<Channel>,
}

impl Clients {
    /// Clients over one channel.
    pub fn new(channel: Channel) -> Self {
        Clients {
            publisher: pb::publisher_client::PublisherClient::new(channel.clone()),
            subscriber: pb::subscriber_client::SubscriberClient::new(channel.clone()),
            consent: pb::consent_client::ConsentClient::new(channel.clone()),
            admin: pb::admin_client::AdminClient::new(channel.clone()),
            audit: pb::audit_client::AuditClient::new(channel),
        }
    }

    /// Connects with `config`.
    pub fn connect(config: &ClientConfig) -> Result<Self, ClientError> {
        Ok(Self::new(config.connect_lazy()?))
    }
}
