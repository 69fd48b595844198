//! Below the typed clients: a plain HTTP GET for the ops port, a unary call
//! to any method path, a raw mutual-TLS socket with nothing sent, and a
//! wait for the peer to close a socket.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::broker::Broker;

/// A minimal HTTP/1.0 GET (the ops port is plain HTTP): status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    // One write: a request sent in pieces may meet a server that answered
    // and closed after the first (a broken pipe).
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let status = buf
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Calls any method path (known or not) with an empty unary request on
/// `channel` and returns the status code.
pub async fn call_path(channel: tonic::transport::Channel, path: &str) -> tonic::Code {
    let mut grpc = tonic::client::Grpc::new(channel);
    if grpc.ready().await.is_err() {
        return tonic::Code::Unavailable;
    }
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let Ok(path) = http::uri::PathAndQuery::try_from(path.to_string()) else {
        return tonic::Code::InvalidArgument;
    };
    match grpc.unary(tonic::Request::new(()), path, codec).await {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}

/// A raw mutual-TLS socket (ALPN h2) to the broker as one of the dev PKI's
/// identities, with nothing sent yet: for tests of what the broker does to
/// sockets that stall.
pub async fn raw_tls(
    b: &Broker,
    identity: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let pki = b.pki();
    let read = |n: String| std::fs::read(pki.join(n)).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut read("ca.pem".into()).as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let certs: Vec<_> = rustls_pemfile::certs(&mut read(format!("{identity}.pem")).as_slice())
        .map(|c| c.unwrap())
        .collect();
    let key = rustls_pemfile::private_key(&mut read(format!("{identity}.key")).as_slice())
        .unwrap()
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(b.grpc).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
}

/// The HTTP/2 client preface and an empty SETTINGS frame.
pub const H2_PREFACE: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Reads (and discards) until the peer closes the socket; returns how long
/// that took, or `None` if it was still open after `limit`.
pub async fn closed_within(
    s: &mut (impl tokio::io::AsyncRead + Unpin),
    limit: Duration,
) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.checked_sub(start.elapsed())?;
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_closed_peer_is_seen_through_data_and_an_open_one_is_not() {
        let (mut ours, mut theirs) = tokio::io::duplex(64);
        theirs.write_all(b"some bytes first").await.unwrap();
        drop(theirs);
        let took = closed_within(&mut ours, Duration::from_secs(5)).await;
        assert!(took.is_some_and(|d| d < Duration::from_secs(5)));

        let (mut ours, _theirs) = tokio::io::duplex(64);
        assert_eq!(
            closed_within(&mut ours, Duration::from_millis(100)).await,
            None
        );
    }

    #[test]
    fn http_get_reads_status_and_body() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            // Reads the whole request head before answering.
            let mut req = Vec::new();
            let mut byte = [0u8; 1];
            while !req.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap() == 1 {
                req.push(byte[0]);
            }
            s.write_all(b"HTTP/1.0 503 Service Unavailable\r\nX: y\r\n\r\nnot ready")
                .unwrap();
            String::from_utf8_lossy(&req).into_owned()
        });
        assert_eq!(http_get(addr, "/readyz"), (503, "not ready".to_string()));
        assert!(
            server
                .join()
                .unwrap()
                .starts_with("GET /readyz HTTP/1.0\r\n")
        );
    }
}
