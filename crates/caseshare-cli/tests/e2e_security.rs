//! Security end to end: the authorisation matrix over every RPC in the
//! compiled schema for every role, ownership between agencies, refused
//! certificates (expired, not yet valid, revoked, wrong trust domain),
//! rotation of the server certificate and CA bundle under an open stream,
//! per-principal limits (publish rate, streams, window, idle streams), and
//! logs free of NHS numbers and payloads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use caseshare_core::authz::TABLE;
use caseshare_core::principal::Role;
use caseshare_proto::v1 as pb;
use caseshare_server::pki::{DevCa, time_offset::Offset};
use caseshare_testkit::*;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_types::StatusExt;

/// Calls any method with an empty request and returns the status code.
async fn call_raw(channel: Channel, method: &'static str) -> tonic::Code {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let path = http::uri::PathAndQuery::from_static(method);
    let request = tonic::Request::new(tokio_stream::iter(vec![()]));
    match grpc.streaming(request, path, codec).await {
        Err(status) => status.code(),
        Ok(resp) => {
            let mut stream = resp.into_inner();
            match stream.message().await {
                Err(status) => status.code(),
                Ok(_) => tonic::Code::Ok,
            }
        }
    }
}

fn role_of(identity: &str) -> Role {
    match identity {
        "auditor" => Role::Auditor,
        "admin" => Role::Admin,
        _ => Role::Agency,
    }
}

#[tokio::test]
async fn every_rpc_for_every_role_follows_the_table() {
    let b = Broker::start();
    b.register_sample_agencies().await;
    let mut checked = 0;
    for rule in TABLE
        .iter()
        .filter(|r| r.method.starts_with("/caseshare.v1."))
    {
        for identity in ["school-b", "la-social-care-c", "auditor", "admin"] {
            let channel = b.client_config(identity).connect_lazy().unwrap();
            let code = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                call_raw(channel, rule.method),
            )
            .await
            .unwrap_or(tonic::Code::DeadlineExceeded);
            let allowed = rule.roles.contains(&role_of(identity));
            if allowed {
                assert!(
                    !matches!(
                        code,
                        tonic::Code::PermissionDenied
                            | tonic::Code::Unauthenticated
                            | tonic::Code::Unimplemented
                    ),
                    "{identity} may call {} but got {code:?}",
                    rule.method
                );
            } else {
                assert_eq!(
                    code,
                    tonic::Code::PermissionDenied,
                    "{identity} must not call {}",
                    rule.method
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 28 * 4);
    // Every refusal is in the log (counted in aggregated entries).
    let expected_calls = TABLE
        .iter()
        .filter(|r| r.method.starts_with("/caseshare.v1."))
        .map(|r| {
            ["school-b", "la-social-care-c", "auditor", "admin"]
                .iter()
                .filter(|i| !r.roles.contains(&role_of(i)))
                .count() as u64
        })
        .sum::<u64>();
    let entries = b.auth_denied(expected_calls).await;
    assert!(
        entries.iter().all(|e| e.count == 1),
        "one refusal per key here"
    );
    let denied = entries.len();
    let expected: usize = TABLE
        .iter()
        .filter(|r| r.method.starts_with("/caseshare.v1."))
        .map(|r| {
            ["school-b", "la-social-care-c", "auditor", "admin"]
                .iter()
                .filter(|i| !r.roles.contains(&role_of(i)))
                .count()
        })
        .sum();
    assert_eq!(denied, expected);
}

#[tokio::test]
async fn an_agency_cannot_touch_another_agencys_resources() {
    let b = Broker::start();
    b.register_sample_agencies().await;
    put_agreement(
        &b,
        agreement("isa", "school-b", "kind:social_care", &["education.*"]),
    )
    .await;
    create_subscription(&b, "la-social-care-c", "main").await;
    b.client("school-b")
        .publisher
        .publish(publish_request(attendance_event("mine", CHILD_1)))
        .await
        .unwrap();
    let mut social = Subscription::open(&b, "la-social-care-c", "main", 10).await;
    let d = social.next().await;

    let mut other = b.client("nhs-trust-a");
    assert_eq!(
        code(
            other
                .subscriber
                .get_subscription(pb::GetSubscriptionRequest {
                    name: "main".into()
                })
                .await
        ),
        tonic::Code::NotFound
    );
    assert!(
        other
            .subscriber
            .list_subscriptions(pb::ListSubscriptionsRequest {})
            .await
            .unwrap()
            .into_inner()
            .subscriptions
            .is_empty()
    );
    assert_eq!(
        code(
            other
                .subscriber
                .ack(pb::AckRequest {
                    subscription: "main".into(),
                    delivery_ids: vec![d.delivery_id.clone()]
                })
                .await
        ),
        tonic::Code::NotFound
    );
    assert_eq!(
        code(
            other
                .subscriber
                .delete_subscription(pb::DeleteSubscriptionRequest {
                    name: "main".into()
                })
                .await
        ),
        tonic::Code::NotFound
    );
    assert_eq!(
        code(
            other
                .publisher
                .get_event_status(pb::GetEventStatusRequest {
                    event_id: "mine".into()
                })
                .await
        ),
        tonic::Code::NotFound
    );
    assert_eq!(
        code(
            other
                .publisher
                .retract_event(pb::RetractEventRequest {
                    event_id: "mine".into(),
                    reason: "x".into()
                })
                .await
        ),
        tonic::Code::NotFound
    );
    // Subscribing to another agency's subscription is refused.
    let mut c = b.client("nhs-trust-a");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::SubscribeRequest {
        subscription: "main".into(),
        max_outstanding: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    let r = c
        .subscriber
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    assert_eq!(code(r), tonic::Code::NotFound);
    // A consent may be withdrawn by its recorder or an agency it names, not others.
    let consent = b
        .client("school-b")
        .consent
        .record_consent(pb::ConsentRecord {
            nhs_number: CHILD_1.into(),
            given_by: pb::GivenBy::Parent as i32,
            purposes: vec![pb::Purpose::EarlyHelp as i32],
            recipients: vec!["la-social-care-c".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        consent.recorded_by, "school-b",
        "recorded_by comes from the certificate"
    );
    let w = |id: &str| pb::WithdrawConsentRequest {
        consent_id: id.into(),
        reason: "asked".into(),
    };
    let denied_before = auth_denied(&b).await;
    for _ in 0..3 {
        assert_eq!(
            code(other.consent.withdraw_consent(w(&consent.consent_id)).await),
            tonic::Code::PermissionDenied
        );
    }
    // The refusals are on the record, in aggregate: entries naming the
    // caller, the method and the reason, counting the three calls (one
    // entry, or two if the calls straddled an interval).
    let denied = b.auth_denied(denied_before + 3).await;
    assert_eq!(
        denied.iter().map(|e| e.count).sum::<u64>(),
        denied_before + 3
    );
    let withdrawals: Vec<_> = denied
        .iter()
        .filter(|e| e.rpc == "/caseshare.v1.Consent/WithdrawConsent")
        .collect();
    assert!(!withdrawals.is_empty() && withdrawals.len() <= 2);
    assert_eq!(withdrawals.iter().map(|e| e.count).sum::<u64>(), 3);
    for e in withdrawals {
        assert!(e.actor.ends_with("/nhs-trust-a"), "{}", e.actor);
        assert!(
            e.reason.contains("not named by the consent"),
            "{}",
            e.reason
        );
    }
    assert!(
        b.client("la-social-care-c")
            .consent
            .withdraw_consent(w(&consent.consent_id))
            .await
            .is_ok()
    );
    // The owner still sees its delivery settle normally.
    social.ack(vec![d.delivery_id]).await;
}

/// Refused calls on the record so far (sum of the aggregated counts).
async fn auth_denied(b: &Broker) -> u64 {
    b.auth_denied(0).await.iter().map(|e| e.count).sum()
}

fn code<T>(r: Result<T, tonic::Status>) -> tonic::Code {
    r.map(|_| ()).unwrap_err().code()
}

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

#[tokio::test]
async fn one_client_over_its_rate_is_refused_while_others_publish() {
    // One token every 5 s: on a loaded machine a publish can take a second
    // or more, and a faster refill would let the loop below earn its tokens
    // back (seen once on a busy CI machine).
    let b = Broker::start_with(&[
        ("CASESHARE_PUBLISH_RATE_PER_SEC", "0.2"),
        ("CASESHARE_PUBLISH_BURST", "5"),
        ("CASESHARE_REFUSAL_DELAY_MS", "300"),
    ]);
    b.register_sample_agencies().await;
    let mut school = b.client("school-b");
    let mut refused = 0;
    for i in 0..10 {
        let sent = Instant::now();
        match school
            .publisher
            .publish(publish_request(attendance_event(
                &format!("r-{i}"),
                CHILD_1,
            )))
            .await
        {
            Ok(_) => {}
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::ResourceExhausted);
                assert!(
                    s.message().contains("limits.publish_rate_per_sec"),
                    "{}",
                    s.message()
                );
                // Held before it is answered, so a flood gets few of them.
                assert!(
                    sent.elapsed() >= Duration::from_millis(300),
                    "refused after {:?}",
                    sent.elapsed()
                );
                // It says when a token comes: at 1 per 5 s, within 5 s.
                let retry = s
                    .get_details_retry_info()
                    .and_then(|r| r.retry_delay)
                    .expect("a rate refusal carries google.rpc.RetryInfo");
                assert!(
                    retry > Duration::ZERO && retry <= Duration::from_secs(5),
                    "{retry:?}"
                );
                refused += 1;
            }
        }
    }
    assert!(refused >= 4, "refused {refused} of 10 with a burst of 5");
    let ok = b
        .client("nhs-trust-a")
        .publisher
        .publish(publish_request(was_not_brought_event("other", CHILD_2)))
        .await;
    assert!(
        ok.is_ok(),
        "another client's publish still succeeds: {ok:?}"
    );
}

#[tokio::test]
async fn trace_logs_carry_no_nhs_number_or_payload_text() {
    let b = Broker::start_with(&[("CASESHARE_LOG", "trace"), ("CASESHARE_LOG_FORMAT", "json")]);
    b.register_sample_agencies().await;
    put_agreement(
        &b,
        agreement("isa", "school-b", "kind:social_care", &["education.*"]),
    )
    .await;
    create_subscription(&b, "la-social-care-c", "main").await;
    let mut social = Subscription::open(&b, "la-social-care-c", "main", 10).await;
    b.client("school-b")
        .publisher
        .publish(publish_request(attendance_event("log-1", CHILD_1)))
        .await
        .unwrap();
    let d = social.next().await;
    social.ack(vec![d.delivery_id]).await;
    let _ = b
        .client("school-b")
        .publisher
        .publish(publish_request(attendance_event("log-2", "9434765918")))
        .await;
    b.client("auditor")
        .audit
        .subject_access_report(pb::SubjectAccessReportRequest {
            nhs_number: CHILD_1.into(),
        })
        .await
        .unwrap();
    let log = std::fs::read_to_string(b.dir.join("broker.log")).unwrap();
    assert!(log.lines().count() > 20, "trace logging is on");
    assert!(log.lines().all(|l| l.starts_with('{')), "JSON lines");
    for needle in [
        CHILD_1,
        "9434765918",
        "Attendance has fallen sharply",
        "2026-autumn-1",
    ] {
        assert!(
            !log.contains(needle),
            "{needle:?} appears in the broker's log"
        );
    }
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
async fn only_registered_agencies_may_act_as_agencies() {
    let b = Broker::start();
    let consent = || pb::ConsentRecord {
        nhs_number: CHILD_1.into(),
        given_by: pb::GivenBy::Parent as i32,
        purposes: vec![pb::Purpose::EarlyHelp as i32],
        recipients: vec!["school-b".into()],
        ..Default::default()
    };
    let list = || pb::ListConsentsRequest {
        nhs_number: CHILD_1.into(),
    };
    let mut never_registered = b.client("la-social-care-c");
    let refused = never_registered
        .consent
        .record_consent(consent())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("not registered"),
        "{}",
        refused.message()
    );
    assert_eq!(
        code(never_registered.consent.list_consents(list()).await),
        tonic::Code::FailedPrecondition
    );
    assert_eq!(
        code(
            never_registered
                .subscriber
                .list_subscriptions(pb::ListSubscriptionsRequest {})
                .await
        ),
        tonic::Code::FailedPrecondition
    );
    assert_eq!(
        code(
            never_registered
                .publisher
                .publish(publish_request(attendance_event("u-1", CHILD_1)))
                .await
        ),
        tonic::Code::FailedPrecondition
    );
    // Nothing was recorded, and the refusals are on the record.
    let denied = b.auth_denied(4).await;
    assert_eq!(denied.iter().map(|e| e.count).sum::<u64>(), 4);
    assert!(denied.iter().all(|e| e.reason.contains("not registered")));
    b.register_sample_agencies().await;
    assert!(
        never_registered
            .consent
            .list_consents(list())
            .await
            .unwrap()
            .into_inner()
            .consents
            .is_empty()
    );
    assert!(
        never_registered
            .consent
            .record_consent(consent())
            .await
            .is_ok(),
        "once registered it may"
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

async fn try_subscribe(
    b: &Broker,
    agency: &str,
    max_outstanding: u32,
) -> Result<Subscription, tonic::Status> {
    Subscription::try_open(b, agency, "main", max_outstanding).await
}

#[tokio::test]
async fn stream_and_window_caps_are_enforced_per_principal() {
    let b = Broker::start_with(&[
        ("CASESHARE_MAX_STREAMS_PER_PRINCIPAL", "2"),
        ("CASESHARE_MAX_OUTSTANDING", "50"),
    ]);
    b.register_sample_agencies().await;
    create_subscription(&b, "la-social-care-c", "main").await;
    create_subscription(&b, "school-b", "main").await;

    // A window above the broker's cap is refused, naming the limit.
    let too_wide = try_subscribe(&b, "la-social-care-c", 51).await;
    let status = too_wide.expect_err("a window of 51 is refused");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(
        status.message().contains("limits.max_outstanding"),
        "{}",
        status.message()
    );

    let first = try_subscribe(&b, "la-social-care-c", 50).await.unwrap();
    let second = try_subscribe(&b, "la-social-care-c", 10).await.unwrap();
    let third = try_subscribe(&b, "la-social-care-c", 10).await;
    let status = third.expect_err("a third stream is refused");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(
        status
            .message()
            .contains("limits.max_streams_per_principal"),
        "{}",
        status.message()
    );
    // A PublishStream counts against the same cap.
    let (_ptx, prx) = tokio::sync::mpsc::channel::<pb::PublishRequest>(1);
    let publish_stream = b
        .client("la-social-care-c")
        .publisher
        .publish_stream(tokio_stream::wrappers::ReceiverStream::new(prx))
        .await;
    assert_eq!(code(publish_stream), tonic::Code::ResourceExhausted);
    // Another agency is not affected.
    let other = try_subscribe(&b, "school-b", 10).await;
    assert!(other.is_ok(), "{:?}", other.err());
    // Closing a stream frees its slot.
    drop(first);
    let mut reopened = None;
    for _ in 0..100 {
        match try_subscribe(&b, "la-social-care-c", 10).await {
            Ok(s) => {
                reopened = Some(s);
                break;
            }
            // The broker notices the closed stream when its task ends.
            Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => panic!("unexpected refusal: {s}"),
        }
    }
    assert!(reopened.is_some(), "a slot is freed when a stream closes");
    drop(second);
}

#[tokio::test]
async fn an_idle_subscribe_stream_is_closed_naming_the_limit() {
    let b = Broker::start_with(&[("CASESHARE_IDLE_STREAM_TIMEOUT_SECS", "1")]);
    b.register_sample_agencies().await;
    create_subscription(&b, "la-social-care-c", "main").await;
    let opened = Instant::now();
    // Held whole: dropping its sender would end the stream from this side.
    let mut stream = try_subscribe(&b, "la-social-care-c", 10).await.unwrap();
    // Nothing to deliver and nothing sent: the broker ends the stream.
    let end = tokio::time::timeout(Duration::from_secs(30), stream.rx.message())
        .await
        .expect("the broker ends an idle stream");
    let status = end.expect_err("the stream ends with a status");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(
        status.message().contains("limits.idle_stream_timeout_secs"),
        "{}",
        status.message()
    );
    assert!(opened.elapsed() >= Duration::from_secs(1));
}
