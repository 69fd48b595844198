//! Certificates and TLS: refused client certificates (expired, not yet
//! valid, revoked, wrong trust domain), rotation of the server certificate
//! and CA bundle under an open stream, server keys and certificates the
//! broker refuses to start with, and TLS 1.2 refused.

use std::path::Path;

use caseshare_proto::v1 as pb;
use caseshare_server::pki::{DevCa, time_offset::Offset};
use caseshare_testkit::*;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

async fn first_call(b: &Broker, ca_pem: &str, cert: &str, key: &str) -> Result<(), tonic::Status> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .identity(Identity::from_pem(cert, key))
        .domain_name("localhost");
    let ch = match Endpoint::from_shared(format!("https://localhost:{}", b.grpc.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
    {
        Ok(ch) => ch,
        Err(e) => return Err(tonic::Status::unavailable(e.to_string())),
    };
    pb::subscriber_client::SubscriberClient::new(ch)
        .list_subscriptions(pb::ListSubscriptionsRequest {})
        .await
        .map(|_| ())
}

fn pki_env(dir: &Path) -> Vec<(String, String)> {
    let p = dir.join("data/pki");
    vec![
        (
            "CASESHARE_TLS_CA".into(),
            p.join("ca.pem").display().to_string(),
        ),
        (
            "CASESHARE_TLS_CERT".into(),
            p.join("server.pem").display().to_string(),
        ),
        (
            "CASESHARE_TLS_KEY".into(),
            p.join("server.key").display().to_string(),
        ),
        (
            "CASESHARE_TLS_CRLS".into(),
            p.join("revoked.pem").display().to_string(),
        ),
    ]
}

#[tokio::test]
async fn expired_early_revoked_and_foreign_domain_certificates_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path().join("data/pki");
    caseshare_server::pki::write_dev_pki(&pki, "caseshare.local").unwrap();
    let ca = DevCa::load(&pki).unwrap();
    caseshare_server::pki::write_file(
        &pki.join("revoked.pem"),
        ca.revocation_list(&[], 1).unwrap().as_bytes(),
        0o644,
    )
    .unwrap();
    let env = pki_env(tmp.path());
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let b = Broker::start_in(tmp.path(), &env_ref);
    b.register_sample_agencies().await;
    let id = "spiffe://caseshare.local/agency/school-b";

    let (cert, key) = ca.issue_client_with_serial(id, None, 4242).unwrap();
    assert!(
        first_call(&b, &ca.cert_pem, &cert, &key).await.is_ok(),
        "a fresh certificate works"
    );
    let (c, k) = ca.issue_client(id, Some(Offset::Expired)).unwrap();
    assert!(
        first_call(&b, &ca.cert_pem, &c, &k).await.is_err(),
        "expired"
    );
    let (c, k) = ca.issue_client(id, Some(Offset::NotYetValid)).unwrap();
    assert!(
        first_call(&b, &ca.cert_pem, &c, &k).await.is_err(),
        "not yet valid"
    );
    let (c, k) = ca
        .issue_client("spiffe://evil.example/agency/school-b", None)
        .unwrap();
    assert!(
        first_call(&b, &ca.cert_pem, &c, &k).await.is_err(),
        "another trust domain"
    );
    let (c, k) = ca
        .issue_client("spiffe://caseshare.local/root/school-b", None)
        .unwrap();
    assert!(
        first_call(&b, &ca.cert_pem, &c, &k).await.is_err(),
        "not a known role"
    );
    // Identity is exactly one SPIFFE URI SAN, on a clientAuth certificate.
    let other = "spiffe://caseshare.local/agency/nhs-trust-a";
    let (c, k) = ca.issue_leaf(&[id], &[], true, false).unwrap();
    assert!(
        first_call(&b, &ca.cert_pem, &c, &k).await.is_ok(),
        "one SPIFFE id and clientAuth"
    );
    let (c, k) = ca
        .issue_leaf(&[id, "https://agency.example/school-b"], &[], true, false)
        .unwrap();
    assert!(
        first_call(&b, &ca.cert_pem, &c, &k).await.is_ok(),
        "one SPIFFE id beside a URI of another scheme"
    );
    let (c, k) = ca.issue_leaf(&[id, other], &[], true, false).unwrap();
    assert!(
        first_call(&b, &ca.cert_pem, &c, &k).await.is_err(),
        "two SPIFFE URI SANs"
    );
    let (c, k) = ca.issue_leaf(&[other, id], &[], true, false).unwrap();
    assert!(
        first_call(&b, &ca.cert_pem, &c, &k).await.is_err(),
        "two SPIFFE URI SANs, either order"
    );
    let (c, k) = ca.issue_leaf(&[id], &[], false, true).unwrap();
    assert!(
        first_call(&b, &ca.cert_pem, &c, &k).await.is_err(),
        "serverAuth but no clientAuth"
    );
    let (c, k) = ca.issue_leaf(&[id], &[], false, false).unwrap();
    assert!(
        first_call(&b, &ca.cert_pem, &c, &k).await.is_err(),
        "no extended key usage at all"
    );

    // Revoke serial 4242 and reload with SIGHUP: its next connection fails.
    caseshare_server::pki::write_file(
        &pki.join("revoked.pem"),
        ca.revocation_list(&[4242], 2).unwrap().as_bytes(),
        0o644,
    )
    .unwrap();
    b.hup();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        // The reload is asynchronous to the signal: retry until it lands.
        if first_call(&b, &ca.cert_pem, &cert, &key).await.is_err() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the revoked certificate is still accepted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (c, k) = ca.issue_client(id, None).unwrap();
    assert!(
        first_call(&b, &ca.cert_pem, &c, &k).await.is_ok(),
        "other certificates still work"
    );
}

#[tokio::test]
async fn rotating_the_server_certificate_and_ca_keeps_streams_open() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path().join("data/pki");
    caseshare_server::pki::write_dev_pki(&pki, "caseshare.local").unwrap();
    let old_ca = DevCa::load(&pki).unwrap();
    caseshare_server::pki::write_file(
        &pki.join("revoked.pem"),
        old_ca.revocation_list(&[], 1).unwrap().as_bytes(),
        0o644,
    )
    .unwrap();
    let env = pki_env(tmp.path());
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let b = Broker::start_in(tmp.path(), &env_ref);
    b.register_sample_agencies().await;
    put_agreement(
        &b,
        agreement("isa", "school-b", "kind:social_care", &["education.*"]),
    )
    .await;
    create_subscription(&b, "la-social-care-c", "main").await;
    let mut stream = Subscription::open(&b, "la-social-care-c", "main", 10).await;

    // A new CA; the bundle holds both during the rotation; a new server
    // certificate from the new CA; the old CRL file is replaced by one from
    // the new CA.
    let new_ca = DevCa::new("Caseshare CA 2").unwrap();
    let (server_cert, server_key) = new_ca.issue_server(&["localhost", "127.0.0.1"]).unwrap();
    let bundle = format!("{}{}", old_ca.cert_pem, new_ca.cert_pem);
    caseshare_server::pki::write_file(&pki.join("server.key"), server_key.as_bytes(), 0o600)
        .unwrap();
    caseshare_server::pki::write_file(&pki.join("server.pem"), server_cert.as_bytes(), 0o644)
        .unwrap();
    caseshare_server::pki::write_file(&pki.join("ca.pem"), bundle.as_bytes(), 0o644).unwrap();
    let crls = format!(
        "{}{}",
        old_ca.revocation_list(&[], 2).unwrap(),
        new_ca.revocation_list(&[], 1).unwrap()
    );
    caseshare_server::pki::write_file(&pki.join("revoked.pem"), crls.as_bytes(), 0o644).unwrap();
    b.hup();

    // New connections see the new server certificate.
    let (c2, k2) = new_ca
        .issue_client("spiffe://caseshare.local/agency/school-b", None)
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while first_call(&b, &new_ca.cert_pem, &c2, &k2).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "new connections never used the new certificate"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let old_client = std::fs::read_to_string(pki.join("school-b.pem")).unwrap();
    let old_key = std::fs::read_to_string(pki.join("school-b.key")).unwrap();
    assert!(
        first_call(&b, &old_ca.cert_pem, &old_client, &old_key)
            .await
            .is_err(),
        "the old server certificate is gone"
    );

    // The stream opened before the rotation still works.
    let r = b.client_config("school-b");
    let mut school = {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&new_ca.cert_pem))
            .identity(Identity::from_pem(
                std::fs::read(&r.cert).unwrap(),
                std::fs::read(&r.key).unwrap(),
            ));
        let ch = Endpoint::from_shared(r.server.clone())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        pb::publisher_client::PublisherClient::new(ch)
    };
    let sent = school
        .publish(publish_request(attendance_event("after-rotation", CHILD_1)))
        .await
        .unwrap()
        .into_inner();
    let d = stream.next().await;
    assert_eq!(d.sequence, sent.sequence);
}

#[test]
fn the_broker_refuses_to_start_with_a_world_readable_key() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path().join("data/pki");
    caseshare_server::pki::write_dev_pki(&pki, "caseshare.local").unwrap();
    std::fs::set_permissions(
        pki.join("server.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let Err(refused) = Broker::try_start_in(tmp.path(), &[], &[]) else {
        panic!("the broker started with a world-readable key");
    };
    assert!(!refused.status.success());
    let err = &refused.stderr;
    assert!(
        err.contains("readable by other users") && err.contains("chmod 600"),
        "{err}"
    );
}

#[test]
fn the_broker_refuses_a_server_certificate_without_server_auth() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path().join("data/pki");
    caseshare_server::pki::write_dev_pki(&pki, "caseshare.local").unwrap();
    let ca = DevCa::load(&pki).unwrap();
    let (cert, key) = ca
        .issue_leaf(&[], &["localhost", "127.0.0.1"], true, false)
        .unwrap();
    caseshare_server::pki::write_file(&pki.join("server.key"), key.as_bytes(), 0o600).unwrap();
    caseshare_server::pki::write_file(&pki.join("server.pem"), cert.as_bytes(), 0o644).unwrap();
    caseshare_server::pki::write_file(
        &pki.join("revoked.pem"),
        ca.revocation_list(&[], 1).unwrap().as_bytes(),
        0o644,
    )
    .unwrap();
    let env = pki_env(tmp.path());
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let Err(refused) = Broker::try_start_in(tmp.path(), &env, &[]) else {
        panic!("the broker started with a server certificate without serverAuth");
    };
    assert!(!refused.status.success());
    let err = &refused.stderr;
    assert!(
        err.contains("server.pem") && err.contains("serverAuth"),
        "{err}"
    );
}

#[tokio::test]
async fn tls_1_2_clients_are_refused() {
    let b = Broker::start();
    let pki = b.pki();
    let read = |n: &str| std::fs::read(pki.join(n)).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut read("ca.pem").as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let certs: Vec<_> = rustls_pemfile::certs(&mut read("school-b.pem").as_slice())
        .map(|c| c.unwrap())
        .collect();
    let key = rustls_pemfile::private_key(&mut read("school-b.key").as_slice())
        .unwrap()
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls12 = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(certs.clone(), key.clone_key())
        .unwrap();
    let tls13 = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap();
    let handshake = |config: rustls::ClientConfig| async move {
        let tcp = tokio::net::TcpStream::connect(b.grpc).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await
    };
    assert!(handshake(tls12).await.is_err(), "TLS 1.2 must be refused");
    assert!(handshake(tls13).await.is_ok(), "TLS 1.3 is accepted");
}
