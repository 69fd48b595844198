//! Security end to end: the authorisation matrix over every RPC in the
//! compiled schema for every role, ownership between agencies, refused
//! certificates (expired, not yet valid, revoked, wrong trust domain),
//! rotation of the server certificate and CA bundle under an open stream,
//! per-principal limits (publish rate, streams, window, idle streams), and
//! logs free of NHS numbers and payloads.
//!
//! One test binary, split by theme: `access` (roles and ownership),
//! `certificates` (client and server certificates, TLS), `limits`
//! (per-principal limits); the log test is here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod access;
mod certificates;
mod limits;

use caseshare_proto::v1 as pb;
use caseshare_testkit::*;

fn code<T>(r: Result<T, tonic::Status>) -> tonic::Code {
    r.map(|_| ()).unwrap_err().code()
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
