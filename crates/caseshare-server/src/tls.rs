//! Mutual TLS: a rustls server configuration (TLS 1.3 only, client
//! certificate required and verified against the configured CA), and the
//! accept loop that turns each verified connection into a stream carrying
//! the caller's [`Principal`], read from the certificate's SPIFFE URI SAN.
//! Connections whose certificate names no principal of this trust domain
//! are closed before any RPC is read.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use caseshare_core::principal::{Principal, parse_spiffe_id};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use crate::conns::{Activity, ConnLimits, ConnSlot};

/// A TLS setup failure.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("client certificate verifier: {0}")]
    Verifier(String),
}

fn file_err(path: &Path, message: impl ToString) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = std::fs::read(path).map_err(|e| file_err(path, e))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no certificate found"));
    }
    Ok(certs)
}

/// Reads the private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = std::fs::read(path).map_err(|e| file_err(path, e))?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(|e| file_err(path, e))?
        .ok_or_else(|| file_err(path, "no private key found"))
}

/// Reads every CRL in a PEM file.
pub fn load_crls(
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateRevocationListDer<'static>>, TlsError> {
    let data = std::fs::read(path).map_err(|e| file_err(path, e))?;
    let crls: Vec<_> = rustls_pemfile::crls(&mut data.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(path, e))?;
    if crls.is_empty() {
        return Err(file_err(path, "no certificate revocation list found"));
    }
    Ok(crls)
}

/// Refuses a private key file that other users can read (the rule is
/// [`crate::keymode`]'s).
pub fn check_key_permissions(path: &Path) -> Result<(), TlsError> {
    match crate::keymode::check(path) {
        Ok(None) => Ok(()),
        Ok(Some(why)) => Err(file_err(path, format!("the private key is {why}"))),
        Err(e) => Err(file_err(path, e)),
    }
}

/// The files the TLS configuration is built from.
#[derive(Debug, Clone)]
pub struct TlsSources {
    /// CA bundle.
    pub ca: std::path::PathBuf,
    /// Server certificate chain.
    pub cert: std::path::PathBuf,
    /// Server key.
    pub key: std::path::PathBuf,
    /// CRLs.
    pub crls: Vec<std::path::PathBuf>,
}

impl TlsSources {
    /// Builds a configuration from the files as they are now.
    pub fn build(&self) -> Result<rustls::ServerConfig, TlsError> {
        server_config(&self.ca, &self.cert, &self.key, &self.crls)
    }

    /// Records the expiry of the server certificate (the chain's leaf) and
    /// of the CA bundle's earliest certificate for the metrics; a file that
    /// no longer parses (it did a moment ago) leaves the last figures.
    pub fn record_expiry(&self) {
        let earliest = |path: &Path| -> Option<i64> {
            load_certs(path)
                .ok()?
                .iter()
                .filter_map(|c| not_after(c.as_ref()))
                .min()
        };
        let server = load_certs(&self.cert)
            .ok()
            .and_then(|chain| chain.first().and_then(|c| not_after(c.as_ref())));
        if let (Some(server), Some(ca)) = (server, earliest(&self.ca)) {
            crate::ops::gauges::certificates_loaded(server, ca);
        }
    }

    /// The files' modification times, to notice changes.
    pub fn stamp(&self) -> Vec<Option<std::time::SystemTime>> {
        [&self.ca, &self.cert, &self.key]
            .into_iter()
            .chain(self.crls.iter())
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }
}

/// The current TLS configuration, replaced on reload. Established
/// connections keep the configuration they were accepted with.
#[derive(Debug)]
pub struct TlsReloader {
    sources: TlsSources,
    current: std::sync::RwLock<Arc<rustls::ServerConfig>>,
    stamp: std::sync::Mutex<Vec<Option<std::time::SystemTime>>>,
}

impl TlsReloader {
    /// Builds the first configuration.
    pub fn new(sources: TlsSources) -> Result<Self, TlsError> {
        let config = Arc::new(sources.build()?);
        let stamp = sources.stamp();
        sources.record_expiry();
        Ok(TlsReloader {
            sources,
            current: std::sync::RwLock::new(config),
            stamp: std::sync::Mutex::new(stamp),
        })
    }

    /// The configuration for new connections.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Rebuilds from the files; on failure the old configuration stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamp = self.sources.stamp();
        let config = Arc::new(self.sources.build()?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = config;
        *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) = stamp;
        metrics::counter!("caseshare_tls_reloads_total").increment(1);
        self.sources.record_expiry();
        tracing::info!("TLS configuration reloaded (certificate, CA bundle, CRLs)");
        Ok(())
    }

    /// Reloads if any file changed since the last load.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let changed = *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) != self.sources.stamp();
        if changed {
            self.reload()?;
        }
        Ok(changed)
    }
}

/// Builds the server's rustls configuration: TLS 1.3 only, client
/// certificates required, chained to `ca`, not revoked by any of `crls`,
/// within their validity period.
pub fn server_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
    crls: &[std::path::PathBuf],
) -> Result<rustls::ServerConfig, TlsError> {
    check_key_permissions(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(ca)? {
        roots.add(c).map_err(|e| file_err(ca, e))?;
    }
    let mut all_crls = Vec::new();
    for p in crls {
        all_crls.extend(load_crls(p)?);
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls(all_crls)
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let chain = load_certs(cert)?;
    if let Some(leaf) = chain.first() {
        check_eku(leaf.as_ref(), Usage::Server).map_err(|m| {
            file_err(
                cert,
                format!("{m}; issue the server certificate with extendedKeyUsage = serverAuth"),
            )
        })?;
    }
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, load_key(key)?)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A certificate's notAfter, Unix seconds.
pub fn not_after(der: &[u8]) -> Option<i64> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Which extended key usage a certificate must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// TLS client authentication (id-kp-clientAuth).
    Client,
    /// TLS server authentication (id-kp-serverAuth).
    Server,
}

/// Checks that a certificate carries the extended key usage for `usage`;
/// one without the extension at all is refused too.
pub fn check_eku(der: &[u8], usage: Usage) -> Result<(), String> {
    use x509_parser::prelude::*;
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("unparseable certificate: {e}"))?;
    let eku = cert
        .extended_key_usage()
        .map_err(|e| format!("bad extended key usage extension: {e}"))?;
    let (ok, name) = match (usage, eku) {
        (Usage::Client, Some(e)) => (e.value.client_auth, "clientAuth"),
        (Usage::Server, Some(e)) => (e.value.server_auth, "serverAuth"),
        (Usage::Client, None) => (false, "clientAuth"),
        (Usage::Server, None) => (false, "serverAuth"),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the certificate lacks the {name} extended key usage (it must list {name})"
        ))
    }
}

/// Reads the principal from a verified client certificate: it must carry
/// the clientAuth extended key usage and exactly one SPIFFE URI SAN, naming
/// a principal of `trust_domain`.
pub fn principal_from_cert(der: &[u8], trust_domain: &str) -> Result<Principal, String> {
    use x509_parser::prelude::*;
    check_eku(der, Usage::Client)?;
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("unparseable certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad SAN extension: {e}"))?
        .ok_or("the certificate has no subject alternative name")?;
    let spiffe: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri)
                if uri
                    .get(..9)
                    .is_some_and(|s| s.eq_ignore_ascii_case("spiffe://")) =>
            {
                Some(*uri)
            }
            _ => None,
        })
        .collect();
    match spiffe.as_slice() {
        [] => Err("the certificate has no SPIFFE URI SAN".to_string()),
        [one] => parse_spiffe_id(one, trust_domain).map_err(|e| e.to_string()),
        many => Err(format!(
            "the certificate has {} SPIFFE URI SANs; exactly one is required",
            many.len()
        )),
    }
}

/// What every request on a connection knows about its caller.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The authenticated principal.
    pub principal: Arc<Principal>,
    /// The remote address.
    pub remote: SocketAddr,
    /// The connection's requests in flight (for the idle timeout).
    pub activity: Arc<Activity>,
}

/// A verified mutual-TLS connection. Reading from it ends with an error
/// (and hyper closes the connection) when the client sent no byte within
/// `connections.preface_timeout_ms` of the handshake, or had no request in
/// flight for `connections.idle_timeout_ms`.
pub struct TlsConn {
    inner: TlsStream<TcpStream>,
    info: PeerInfo,
    _slot: ConnSlot,
    timer: Pin<Box<tokio::time::Sleep>>,
    got_bytes: bool,
    idle: Duration,
}

impl TlsConn {
    /// Called when the timer fires: `Some(reason)` to close now, else the
    /// timer is re-armed for the next possible idle moment.
    fn expired(&mut self) -> Option<&'static str> {
        if !self.got_bytes {
            return Some("preface");
        }
        let now = tokio::time::Instant::now();
        match self.info.activity.idle_deadline(self.idle) {
            Some(at) if at <= now.into_std() => Some("idle"),
            Some(at) => {
                self.timer
                    .as_mut()
                    .reset(tokio::time::Instant::from_std(at));
                None
            }
            None => {
                self.timer.as_mut().reset(now + self.idle);
                None
            }
        }
    }
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.got_bytes = true;
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            if let Some(why) = self.expired() {
                metrics::counter!("caseshare_conn_closed_total", "reason" => why).increment(1);
                tracing::info!(remote = %self.info.remote, principal = %self.info.principal, reason = why, "closing connection");
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connection closed: {why} timeout"),
                )));
            }
        }
        Poll::Pending
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts TCP connections, completes the TLS handshake and identifies the
/// caller; verified connections are sent to `out` for tonic to serve.
/// `limits` bounds handshakes, connections and descriptors; a refused
/// socket is closed at once.
pub async fn accept_loop(
    listener: TcpListener,
    tls: Arc<TlsReloader>,
    trust_domain: String,
    out: mpsc::Sender<Result<TlsConn, io::Error>>,
    limits: Arc<ConnLimits>,
) {
    let cfg = limits.config().clone();
    let handshake_timeout = Duration::from_millis(cfg.handshake_timeout_ms);
    let preface_timeout = Duration::from_millis(cfg.preface_timeout_ms);
    let idle = Duration::from_millis(cfg.idle_timeout_ms);
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if out.is_closed() {
            return;
        }
        let handshake = match limits.admit_handshake() {
            Ok(slot) => slot,
            Err(why) => {
                tracing::debug!(%remote, reason = why.as_str(), "socket refused");
                drop(tcp);
                continue;
            }
        };
        let limits = limits.clone();
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(tls.current());
        let out = out.clone();
        let trust_domain = trust_domain.clone();
        tokio::spawn(async move {
            let finished = tokio::select! {
                r = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)) => r,
                () = handshake.evicted() => {
                    tracing::debug!(%remote, "TLS handshake ended to admit a newer one (connections.max_handshakes)");
                    return;
                }
            };
            let tls = match finished {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    metrics::counter!("caseshare_tls_handshake_failures_total").increment(1);
                    tracing::info!(%remote, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    metrics::counter!("caseshare_conn_closed_total", "reason" => "handshake")
                        .increment(1);
                    tracing::info!(%remote, "TLS handshake timed out");
                    return;
                }
            };
            let principal = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                Some(cert) => principal_from_cert(cert.as_ref(), &trust_domain),
                None => Err("no client certificate".to_string()),
            };
            match principal {
                Ok(principal) => {
                    let slot = match limits.admit_connection(handshake, &principal.spiffe_id()) {
                        Ok(slot) => slot,
                        Err(why) => {
                            tracing::info!(%remote, %principal, reason = why.as_str(), "connection refused");
                            return;
                        }
                    };
                    let info = PeerInfo {
                        principal: Arc::new(principal),
                        remote,
                        activity: limits.activity(),
                    };
                    let conn = TlsConn {
                        inner: tls,
                        info,
                        _slot: slot,
                        timer: Box::pin(tokio::time::sleep(preface_timeout)),
                        got_bytes: false,
                        idle,
                    };
                    let _ = out.send(Ok(conn)).await;
                }
                Err(reason) => {
                    metrics::counter!("caseshare_tls_handshake_failures_total").increment(1);
                    tracing::info!(%remote, %reason, "client certificate names no principal of this broker; closing");
                }
            }
        });
    }
}
