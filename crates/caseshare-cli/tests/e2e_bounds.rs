//! Input bounds and status codes end to end, against the real binary over
//! real mTLS: each finding's bound at its limit (accepted) and one past it
//! (`INVALID_ARGUMENT` naming the field, nothing stored, no audit entry);
//! the subscription-count and event-type caps; malformed protobuf and
//! non-UTF-8 strings at depth sent as hand-made bytes; NaN and control
//! characters; a damaged stored event answered `DATA_LOSS` with `/readyz`
//! going 503; and the memory an attacker can make the broker hold with
//! subscriptions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use caseshare_core::validate::limits;
use caseshare_proto::v1 as pb;
use caseshare_testkit::*;
use prost::Message;
use tonic::Code;
use tonic_types::StatusExt;

/// The field paths of a status's `google.rpc.BadRequest`.
fn fields(status: &tonic::Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// Asserts `INVALID_ARGUMENT` with a violation on `field`.
fn assert_invalid(result: Result<impl std::fmt::Debug, tonic::Status>, field: &str, case: &str) {
    match result {
        Ok(v) => panic!("{case}: accepted ({v:?}), expected INVALID_ARGUMENT on {field}"),
        Err(s) => {
            assert_eq!(s.code(), Code::InvalidArgument, "{case}: {s:?}");
            assert!(
                fields(&s).iter().any(|f| f == field),
                "{case}: violations {:?} do not name {field}",
                fields(&s)
            );
        }
    }
}

/// Audit entries other than the auditor's own reads.
async fn audit_count(b: &Broker) -> usize {
    b.audit_entries()
        .await
        .iter()
        .filter(|e| e.kind != pb::EntryKind::AuditAccessed as i32)
        .count()
}

/// The school → social care setup every test here uses.
async fn sharing_broker(env: &[(&str, &str)]) -> Broker {
    let b = Broker::start_with(env);
    b.school_shares_with_social_care().await;
    b
}

async fn status_of(
    b: &Broker,
    agency: &str,
    event_id: &str,
) -> Result<pb::EventStatus, tonic::Status> {
    b.client(agency)
        .publisher
        .get_event_status(pb::GetEventStatusRequest {
            event_id: event_id.into(),
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn finding_bounds_at_the_limit_and_one_past() {
    let b = sharing_broker(&[]).await;
    let mut school = b.client("school-b");
    let agencies = |n: usize| (0..n).map(|i| format!("agency-{i}")).collect::<Vec<_>>();

    // to_agencies: 64 names accepted, 65 refused (the issue sent 60,000).
    let mut at = publish_request(attendance_event("to-64", CHILD_1));
    at.to_agencies = agencies(limits::MAX_AGENCIES);
    school.publisher.publish(at).await.unwrap();
    let before = audit_count(&b).await;
    for (n, id) in [(limits::MAX_AGENCIES + 1, "to-65"), (60_000, "to-60k")] {
        let mut past = publish_request(attendance_event(id, CHILD_1));
        past.to_agencies = agencies(n);
        assert_invalid(school.publisher.publish(past).await, "to_agencies", id);
        assert_eq!(
            status_of(&b, "school-b", id).await.unwrap_err().code(),
            Code::NotFound,
            "{id} was stored"
        );
    }
    // One agency id one byte too long is named by its index.
    let mut long = publish_request(attendance_event("to-long", CHILD_1));
    long.to_agencies = vec!["a".into(), "b".repeat(limits::AGENCY_ID_BYTES + 1)];
    assert_invalid(
        school.publisher.publish(long).await,
        "to_agencies[1]",
        "long id",
    );

    // RetractEvent reason: the limit accepted, one byte more refused.
    let retract = |id: &str, reason: String| pb::RetractEventRequest {
        event_id: id.into(),
        reason,
    };
    let past = retract("to-64", "r".repeat(limits::REASON_BYTES + 1));
    assert_invalid(
        school.publisher.retract_event(past).await,
        "reason",
        "retract",
    );
    assert!(!status_of(&b, "school-b", "to-64").await.unwrap().retracted);
    assert_eq!(audit_count(&b).await, before, "a refused call was audited");

    // WithdrawConsent reason.
    let mut admin = b.client("admin");
    let consent = school
        .consent
        .record_consent(pb::ConsentRecord {
            nhs_number: CHILD_2.into(),
            given_by: pb::GivenBy::Parent as i32,
            purposes: vec![pb::Purpose::EarlyHelp as i32],
            recipients: vec!["kind:social_care".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let before_withdraw = audit_count(&b).await;
    let withdraw = |reason: String| pb::WithdrawConsentRequest {
        consent_id: consent.consent_id.clone(),
        reason,
    };
    let past = withdraw("w".repeat(limits::REASON_BYTES + 1));
    assert_invalid(
        school.consent.withdraw_consent(past).await,
        "reason",
        "withdraw",
    );
    let listed = school
        .consent
        .list_consents(pb::ListConsentsRequest {
            nhs_number: CHILD_2.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .consents;
    assert!(
        listed.iter().all(|c| c.withdrawn_at.is_none()),
        "{listed:?}"
    );
    assert_eq!(
        audit_count(&b).await,
        before_withdraw,
        "a refused withdrawal was audited"
    );

    // At the limits: accepted.
    let at = withdraw("w".repeat(limits::REASON_BYTES));
    school.consent.withdraw_consent(at).await.unwrap();
    let at = retract("to-64", "r".repeat(limits::REASON_BYTES));
    school.publisher.retract_event(at).await.unwrap();
    assert!(status_of(&b, "school-b", "to-64").await.unwrap().retracted);

    // Summary, at its character limit and one past.
    let mut e = attendance_event("summary-at", CHILD_1);
    e.summary = "s".repeat(4_000);
    school.publisher.publish(publish_request(e)).await.unwrap();
    let mut e = attendance_event("summary-past", CHILD_1);
    e.summary = "s".repeat(4_001);
    assert_invalid(
        school.publisher.publish(publish_request(e)).await,
        "event.summary",
        "summary",
    );

    // Other services: a display name, an agreement's end reason, a
    // subscription name, an audit query's page token.
    let agency = |name: String| pb::RegisterAgencyRequest {
        agency_id: "school-z".into(),
        kind: pb::AgencyKind::Education as i32,
        display_name: name,
    };
    assert_invalid(
        admin.admin.register_agency(agency("n".repeat(201))).await,
        "display_name",
        "display name",
    );
    admin
        .admin
        .register_agency(agency("n".repeat(200)))
        .await
        .unwrap();
    let end = |reason: String| pb::EndAgreementRequest {
        agreement_id: "isa-edu-sc".into(),
        reason,
    };
    assert_invalid(
        admin
            .admin
            .end_agreement(end("e".repeat(limits::REASON_BYTES + 1)))
            .await,
        "reason",
        "end reason",
    );
    let mut social = b.client("la-social-care-c");
    let sub = |name: String| pb::Subscription {
        name,
        ..Default::default()
    };
    assert_invalid(
        social
            .subscriber
            .create_subscription(sub("s".repeat(65)))
            .await,
        "name",
        "subscription name",
    );
    social
        .subscriber
        .create_subscription(sub("s".repeat(64)))
        .await
        .unwrap();
    let mut auditor = b.client("auditor");
    let query = auditor
        .audit
        .query(pb::QueryRequest {
            page_token: "1".repeat(limits::PAGE_TOKEN_BYTES + 1),
            ..Default::default()
        })
        .await;
    assert_invalid(query.map(|_| ()), "page_token", "page token");
    let ack = social
        .subscriber
        .ack(pb::AckRequest {
            subscription: "main".into(),
            delivery_ids: vec!["x".into(); limits::MAX_DELIVERY_IDS + 1],
        })
        .await;
    assert_invalid(ack, "delivery_ids", "ack ids");
}

#[tokio::test]
async fn subscription_count_and_event_type_caps() {
    let b = Broker::start_with(&[
        ("CASESHARE_MAX_SUBSCRIPTIONS_PER_AGENCY", "3"),
        ("CASESHARE_MAX_EVENT_TYPES_PER_SUBSCRIPTION", "4"),
    ]);
    b.register_sample_agencies().await;
    let mut social = b.client("la-social-care-c");
    let sub = |name: &str, n: usize| pb::Subscription {
        name: name.into(),
        event_types: (0..n).map(|i| format!("education.t{i}")).collect(),
        ..Default::default()
    };
    // Event types: 4 accepted, 5 refused naming the list.
    social
        .subscriber
        .create_subscription(sub("s1", 4))
        .await
        .unwrap();
    assert_invalid(
        social.subscriber.create_subscription(sub("s2", 5)).await,
        "event_types",
        "event types",
    );
    // Count: 3 accepted, the 4th is a quota refusal.
    social
        .subscriber
        .create_subscription(sub("s2", 1))
        .await
        .unwrap();
    social
        .subscriber
        .create_subscription(sub("s3", 1))
        .await
        .unwrap();
    let before = audit_count(&b).await;
    let over = social.subscriber.create_subscription(sub("s4", 1)).await;
    assert_eq!(over.unwrap_err().code(), Code::ResourceExhausted);
    let listed = social
        .subscriber
        .list_subscriptions(pb::ListSubscriptionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .subscriptions;
    assert_eq!(listed.len(), 3);
    assert_eq!(
        audit_count(&b).await,
        before,
        "a refused subscription was audited"
    );
    // The quota is per agency: another agency still has its own.
    create_subscription(&b, "school-b", "s1").await;
    // Deleting one frees a place.
    social
        .subscriber
        .delete_subscription(pb::DeleteSubscriptionRequest { name: "s3".into() })
        .await
        .unwrap();
    social
        .subscriber
        .create_subscription(sub("s4", 1))
        .await
        .unwrap();
}

/// A gRPC codec for hand-made request bytes (responses kept as bytes).
#[derive(Debug, Clone, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// Sends `bytes` as the request of a unary `method` over mTLS as `who`.
async fn raw_unary(b: &Broker, who: &str, method: &'static str, bytes: Vec<u8>) -> tonic::Status {
    let channel = b.client_config(who).connect_lazy().unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(method);
    match grpc.unary(tonic::Request::new(bytes), path, RawCodec).await {
        Ok(r) => panic!("{method}: accepted, answered {:?}", r.into_inner()),
        Err(s) => s,
    }
}

/// Sends `messages` on a streaming `method` and returns the status the
/// response stream ends with (its messages are skipped).
async fn raw_stream(
    b: &Broker,
    who: &str,
    method: &'static str,
    messages: Vec<Vec<u8>>,
) -> tonic::Status {
    let channel = b.client_config(who).connect_lazy().unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(method);
    // Keep the request stream open so that only the broker ends the call.
    let requests =
        tokio_stream::StreamExt::chain(tokio_stream::iter(messages), tokio_stream::pending());
    let mut stream = match grpc
        .streaming(tonic::Request::new(requests), path, RawCodec)
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return s,
    };
    loop {
        let next = tokio::time::timeout(Duration::from_secs(30), stream.message()).await;
        match next.expect("the broker answers within 30 s") {
            Ok(Some(_)) => {}
            Ok(None) => panic!("{method}: the stream ended without a status"),
            Err(s) => return s,
        }
    }
}

/// Field `tag` as a length-delimited value.
fn ld(tag: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_varint(u64::from(tag << 3 | 2), &mut out);
    prost::encoding::encode_varint(body.len() as u64, &mut out);
    out.extend_from_slice(body);
    out
}

#[tokio::test]
async fn malformed_protobuf_and_non_utf8_at_depth_are_invalid_argument() {
    let b = sharing_broker(&[]).await;
    let before = audit_count(&b).await;
    let good = attendance_event("raw-1", CHILD_1).encode_to_vec();
    const PUBLISH: &str = "/caseshare.v1.Publisher/Publish";
    // (bytes, the field the violation must name, case)
    let mut cases: Vec<(Vec<u8>, &str, &str)> = Vec::new();
    // CaseEvent.summary (5) not UTF-8, inside PublishRequest.event (1).
    let mut ev = good.clone();
    ev.extend(ld(5, &[0xff, 0xfe, b'x']));
    cases.push((ld(1, &ev), "event.summary", "non-UTF-8 summary"));
    // Three deep: event.child (2).local_ids (2).value (2) not UTF-8.
    let local = ld(2, &[0xc3, 0x28]);
    let child = [ld(1, CHILD_1.as_bytes()), ld(2, &local)].concat();
    let mut ev = good.clone();
    ev.extend(ld(2, &child));
    cases.push((
        ld(1, &ev),
        "event.child.local_ids.value",
        "non-UTF-8 local id",
    ));
    // A nested message whose length runs past its parent.
    let mut ev = good.clone();
    ev.extend([(2 << 3) | 2, 50, 0x0a, 0x01]);
    cases.push((ld(1, &ev), "event.child", "truncated child"));
    // An invalid wire type inside the payload message.
    let mut ev = good.clone();
    ev.extend(ld(40, &[(1 << 3) | 7, 0]));
    cases.push((ld(1, &ev), "event.payload", "bad wire type in payload"));
    // Garbage at the top level.
    cases.push((vec![0xff; 12], "", "garbage"));
    for (bytes, field, case) in cases {
        let s = raw_unary(&b, "school-b", PUBLISH, bytes).await;
        assert_eq!(s.code(), Code::InvalidArgument, "{case}: {s:?}");
        assert!(
            fields(&s).iter().any(|f| f == field),
            "{case}: violations {:?} do not name {field:?}",
            fields(&s)
        );
    }
    // The good event was never stored under any of those.
    assert_eq!(
        status_of(&b, "school-b", "raw-1").await.unwrap_err().code(),
        Code::NotFound
    );
    // Another service: a non-UTF-8 withdrawal reason.
    let req = [ld(1, b"c-1"), ld(2, &[b'o', b'k', 0x80])].concat();
    let s = raw_unary(&b, "school-b", "/caseshare.v1.Consent/WithdrawConsent", req).await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert_eq!(fields(&s), vec!["reason".to_string()]);
    assert_eq!(audit_count(&b).await, before);
    // Streams: a malformed message ends PublishStream and Subscribe with
    // INVALID_ARGUMENT naming the field (not a silent end).
    let mut bad_event = good.clone();
    bad_event.extend(ld(5, &[0xff]));
    for (who, method, first, bad, field) in [
        (
            "school-b",
            "/caseshare.v1.Publisher/PublishStream",
            ld(1, &attendance_event("stream-ok", CHILD_1).encode_to_vec()),
            ld(1, &bad_event),
            "event.summary",
        ),
        (
            "la-social-care-c",
            "/caseshare.v1.Subscriber/Subscribe",
            ld(1, b"main"),
            ld(3, &ld(1, &[0xff, 0xff])),
            "ack.delivery_ids",
        ),
    ] {
        let s = raw_stream(&b, who, method, vec![first, bad]).await;
        assert_eq!(s.code(), Code::InvalidArgument, "{method}: {s:?}");
        assert_eq!(fields(&s), vec![field.to_string()], "{method}");
    }
    // The same bytes, well formed, are accepted (the harness is honest).
    let s = {
        let channel = b.client_config("school-b").connect_lazy().unwrap();
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let path = http::uri::PathAndQuery::from_static(PUBLISH);
        grpc.unary(tonic::Request::new(ld(1, &good)), path, RawCodec)
            .await
            .map(|r| r.into_inner())
    };
    let resp = pb::PublishResponse::decode(s.unwrap().as_slice()).unwrap();
    assert_eq!(resp.event_id, "raw-1");
}

#[tokio::test]
async fn nan_and_control_characters_are_refused() {
    let b = sharing_broker(&[]).await;
    let mut school = b.client("school-b");
    let before = audit_count(&b).await;
    for (i, x) in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY]
        .into_iter()
        .enumerate()
    {
        let mut e = attendance_event(&format!("nan-{i}"), CHILD_1);
        if let Some(pb::case_event::Payload::EducationAttendanceConcern(a)) = e.payload.as_mut() {
            a.attendance_percent = x;
        }
        assert_invalid(
            school.publisher.publish(publish_request(e)).await,
            "event.education_attendance_concern.attendance_percent",
            &format!("{x}"),
        );
    }
    for (i, bad) in ["NUL \0 here", "clear \u{1b}[2J", "csi \u{9b}31m", "cr\r"]
        .iter()
        .enumerate()
    {
        let mut e = attendance_event(&format!("ctl-{i}"), CHILD_1);
        e.summary = bad.to_string();
        assert_invalid(
            school.publisher.publish(publish_request(e)).await,
            "event.summary",
            bad,
        );
    }
    // One-line text refuses even a newline; an identifier refuses a tab.
    let mut e = attendance_event("ctl-line", CHILD_1);
    if let Some(pb::case_event::Payload::EducationAttendanceConcern(a)) = e.payload.as_mut() {
        a.period = "2026\nautumn".into();
    }
    assert_invalid(
        school.publisher.publish(publish_request(e)).await,
        "event.education_attendance_concern.period",
        "newline in period",
    );
    let s = school
        .publisher
        .get_event_status(pb::GetEventStatusRequest {
            event_id: "e\t1".into(),
        })
        .await;
    assert_invalid(s, "event_id", "tab in event id");
    assert_eq!(
        audit_count(&b).await,
        before,
        "a refused publish was audited"
    );
    // Multi-line free text keeps its newlines and tabs.
    let mut e = attendance_event("ctl-ok", CHILD_1);
    e.summary = "First line\n\tindented second line".into();
    school.publisher.publish(publish_request(e)).await.unwrap();
}

/// Rewrites, in the stopped broker's event log, the stored `CaseEvent`
/// bytes of `event_id` with bytes that do not decode, keeping the record's
/// length and re-computing its checksum (so only a read notices).
fn damage_event(data: &std::path::Path, event_id: &str) {
    let mut segments = Vec::new();
    let mut stack = vec![data.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "seg") {
                segments.push(p);
            }
        }
    }
    for seg in segments {
        let mut bytes = std::fs::read(&seg).unwrap();
        let mut at = 0;
        while at + 8 <= bytes.len() {
            let word = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
            let batch_end = word & caseshare_store::segments::BATCH_END != 0;
            let len = (word & caseshare_store::segments::LEN_MASK) as usize;
            let start = at + 8;
            let Some(payload) = bytes.get(start..start + len) else {
                break;
            };
            let mut stored = caseshare_store::StoredEvent::decode(payload).unwrap();
            if stored.event_id == event_id {
                stored.event = vec![0xff; stored.event.len()];
                let new = stored.encode_to_vec();
                assert_eq!(new.len(), len, "the damage keeps the record's length");
                let crc = caseshare_store::segments::frame_crc(&new, batch_end);
                bytes[at + 4..start].copy_from_slice(&crc.to_le_bytes());
                bytes[start..start + len].copy_from_slice(&new);
                std::fs::write(&seg, &bytes).unwrap();
                return;
            }
            at = start + len;
        }
    }
    panic!("event {event_id} not found in the event log");
}

#[tokio::test]
async fn a_damaged_stored_event_is_data_loss_and_the_broker_goes_not_ready() {
    let mut b = sharing_broker(&[]).await;
    let mut school = b.client("school-b");
    for id in ["kept-1", "damaged", "kept-2"] {
        school
            .publisher
            .publish(publish_request(attendance_event(id, CHILD_1)))
            .await
            .unwrap();
    }
    drop(school);
    // The damage is older than the WAL's copies (which a start would find
    // it unlike, and refuse): the event log's own check finds it on read.
    settle_the_wal(&mut b, "school-b").await;
    damage_event(&b.data(), "damaged");
    b.restart();
    assert_eq!(http_get(b.ops, "/readyz").0, 200, "ready after the restart");
    // Undamaged events still answer.
    assert!(status_of(&b, "school-b", "kept-1").await.is_ok());
    // The damaged one is DATA_LOSS, never an empty event.
    let s = status_of(&b, "school-b", "damaged").await.unwrap_err();
    assert_eq!(s.code(), Code::DataLoss, "{s:?}");
    let (code, body) = http_get(b.ops, "/readyz");
    assert_eq!(code, 503, "{body}");
    // Retracting it changes nothing and says why.
    let s = b
        .client("school-b")
        .publisher
        .retract_event(pb::RetractEventRequest {
            event_id: "damaged".into(),
            reason: "entered in error".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::DataLoss, "{s:?}");
    // Delivery: the stream ends with DATA_LOSS at the damaged event instead
    // of delivering it as an empty event (what it holds before is sent).
    let mut social = match Subscription::try_open(&b, "la-social-care-c", "main", 10).await {
        Ok(s) => s,
        Err(s) => panic!("the stream was refused at open: {s:?}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let end = loop {
        let next = tokio::time::timeout(Duration::from_secs(30), social.rx.message()).await;
        match next.expect("the stream answers") {
            Ok(Some(d)) => {
                let id = d.event.map(|e| e.event_id).unwrap_or_default();
                assert_ne!(id, "", "an empty event was delivered");
                assert_ne!(id, "damaged", "the damaged event was delivered");
            }
            Ok(None) => panic!("the stream ended without an error"),
            Err(s) => break s,
        }
        assert!(Instant::now() < deadline, "no DATA_LOSS within 30 s");
    };
    assert_eq!(end.code(), Code::DataLoss, "{end:?}");
}

fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

async fn publish_millis(b: &Broker, prefix: &str, n: usize) -> f64 {
    let mut school = b.client("school-b");
    let t = Instant::now();
    for i in 0..n {
        school
            .publisher
            .publish(publish_request(attendance_event(
                &format!("{prefix}-{i}"),
                CHILD_1,
            )))
            .await
            .unwrap();
    }
    t.elapsed().as_secs_f64() * 1e3 / n as f64
}

/// The issue's attack (40 subscriptions × 190k event types: +1 GB, publish
/// 10× slower) at the most the caps now allow: every subscription an
/// agency may hold, each with the most event types, each the longest.
#[tokio::test]
async fn the_subscription_attack_is_bounded_in_memory() {
    let b = sharing_broker(&[]).await;
    publish_millis(&b, "warm", 20).await;
    let idle = vm_rss_kib(b.pid());
    let publish_idle = publish_millis(&b, "idle", 100).await;
    let mut attacker = b.client("school-b");
    let per_sub = limits::MAX_EVENT_TYPES;
    let most = caseshare_core::validate::Limits::default().max_subscriptions_per_agency;
    for s in 0..most {
        let event_types = (0..per_sub)
            .map(|i| format!("{s:03}{i:03}.{}", "x".repeat(limits::ID_BYTES - 8)))
            .collect();
        attacker
            .subscriber
            .create_subscription(pb::Subscription {
                name: format!("attack-{s}"),
                event_types,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let over = attacker
        .subscriber
        .create_subscription(pb::Subscription {
            name: "attack-over".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(over.unwrap_err().code(), Code::ResourceExhausted);
    let attacked = vm_rss_kib(b.pid());
    let publish_attacked = publish_millis(&b, "attacked", 100).await;
    let grown_mib = attacked.saturating_sub(idle) as f64 / 1024.0;
    println!(
        "subscription attack: {most} subscriptions x {per_sub} event types of {} bytes; \
         VmRSS idle {} MiB, after {} MiB (+{grown_mib:.1} MiB); \
         publish {publish_idle:.2} ms idle, {publish_attacked:.2} ms after",
        limits::ID_BYTES,
        idle / 1024,
        attacked / 1024,
    );
    assert!(
        grown_mib < 64.0,
        "the capped attack grew the broker by {grown_mib:.1} MiB"
    );
}
