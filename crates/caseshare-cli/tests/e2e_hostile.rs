//! A hostile client, over real mutual TLS against the real binary: every
//! bound of issue 13's "connections" work at its limit and one past it.
//! Refusal floods (unknown and forbidden methods with long paths) leave a
//! bounded, aggregated audit trail with no client text; every RPC family
//! has its own rate; connection floods (silent TCP sockets, TLS sockets
//! with no HTTP/2 preface) and a descriptor reserve leave a good agency
//! able to connect and publish; handshake, preface and idle timeouts close
//! sockets; connection caps hold globally and per principal; a slow reader
//! is ended with RESOURCE_EXHAUSTED and its events are redelivered; a
//! PublishStream whose client reads no answers holds at most its window of
//! publishes in flight.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use caseshare_proto::v1 as pb;
use caseshare_testkit::*;
use prost::Message as _;
use tokio::io::AsyncWriteExt;
use tonic_types::StatusExt;

const FORBIDDEN_FOR_AGENCY: &str = "/caseshare.v1.Admin/RegisterAgency";
const FORBIDDEN_FOR_ADMIN: &str = "/caseshare.v1.Audit/Query";

fn forbidden_for(identity: &str) -> &'static str {
    match identity {
        "admin" => FORBIDDEN_FOR_ADMIN,
        _ => FORBIDDEN_FOR_AGENCY,
    }
}

/// A long method path carrying text a client would like to plant in the
/// log (an NHS number).
fn planted_path() -> String {
    format!("/caseshare.v1.Admin/RegisterAgency{}", CHILD_2.repeat(600))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_flood_leaves_a_bounded_audit_trail_without_client_text() {
    let interval_ms = 200u64;
    let b = Broker::start_with(&[(
        "CASESHARE_AUDIT_REFUSAL_INTERVAL_MS",
        &interval_ms.to_string(),
    )]);
    b.register_sample_agencies().await;
    let before = b.audit_entries().await;
    let identities = ["school-b", "auditor", "admin"];
    let flood = Duration::from_secs(3);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for identity in identities {
        for _ in 0..2 {
            let channel = b.client_config(identity).connect_lazy().unwrap();
            tasks.push(tokio::spawn(async move {
                let (mut unknown, mut forbidden) = (0u64, 0u64);
                let path = planted_path();
                while start.elapsed() < flood {
                    assert_eq!(
                        call_path(channel.clone(), &path).await,
                        tonic::Code::Unimplemented,
                        "an unknown method is refused before authorisation"
                    );
                    unknown += 1;
                    assert_eq!(
                        call_path(channel.clone(), forbidden_for(identity)).await,
                        tonic::Code::PermissionDenied
                    );
                    forbidden += 1;
                }
                (unknown, forbidden)
            }));
        }
    }
    let (mut unknown, mut forbidden) = (0u64, 0u64);
    for t in tasks {
        let (u, f) = t.await.unwrap();
        unknown += u;
        forbidden += f;
    }
    let elapsed = start.elapsed();
    assert!(forbidden >= 100, "the flood made only {forbidden} calls");

    // Every forbidden call is counted, in few entries: at most one per
    // (caller, method, reason) per interval.
    let denied = b.auth_denied(forbidden).await;
    let counted: u64 = denied.iter().map(|e| e.count).sum();
    assert_eq!(counted, forbidden);
    let windows = elapsed.as_millis() as u64 / interval_ms + 3;
    assert!(
        denied.len() as u64 <= identities.len() as u64 * windows,
        "{} AUTH_DENIED entries for {forbidden} refusals in {windows} intervals",
        denied.len()
    );
    for e in &denied {
        assert!(
            [FORBIDDEN_FOR_AGENCY, FORBIDDEN_FOR_ADMIN].contains(&e.rpc.as_str()),
            "{}",
            e.rpc
        );
    }
    // Unknown methods were never audited; nothing the client sent is in
    // the log, the broker's log or its metrics.
    let after = b.audit_entries().await;
    for e in &after[before.len()..] {
        assert!(
            [pb::EntryKind::AuthDenied, pb::EntryKind::AuditAccessed]
                .iter()
                .any(|k| *k as i32 == e.kind),
            "only refusals (and the test's own audit reads) were added: {e:?}"
        );
    }
    let new_entries: Vec<_> = after[before.len()..]
        .iter()
        .filter(|e| e.kind == pb::EntryKind::AuthDenied as i32)
        .collect();
    for e in &after[before.len()..] {
        assert!(!format!("{e:?}").contains(CHILD_2), "client text in {e:?}");
    }
    let log = std::fs::read_to_string(b.dir.join("broker.log")).unwrap();
    assert!(!log.contains(CHILD_2), "client text in the broker's log");
    assert_eq!(b.metric("caseshare_unknown_method_total"), unknown as f64);
    let bytes: usize = new_entries.iter().map(|e| e.encoded_len()).sum();
    println!(
        "refusal flood: {forbidden} forbidden + {unknown} unknown calls in {elapsed:?} -> {} AUTH_DENIED entries, {bytes} bytes ({:.3} bytes per refused call)",
        new_entries.len(),
        bytes as f64 / (forbidden + unknown) as f64
    );
    assert!(
        bytes < 64 * 1024,
        "{bytes} bytes of audit log for the flood"
    );
}

#[tokio::test]
async fn refusal_keys_are_bounded_per_interval_and_flushed_on_shutdown() {
    // One interval covers the whole test: the entries are written when the
    // broker stops.
    let mut b = Broker::start_with(&[
        ("CASESHARE_AUDIT_REFUSAL_INTERVAL_MS", "600000"),
        ("CASESHARE_AUDIT_REFUSAL_MAX_KEYS", "2"),
    ]);
    let call = |identity: &'static str| {
        let channel = b.client_config(identity).connect_lazy().unwrap();
        async move { call_path(channel, forbidden_for(identity)).await }
    };
    // Two keys: at the bound.
    for identity in ["school-b", "school-b", "auditor"] {
        assert_eq!(call(identity).await, tonic::Code::PermissionDenied);
    }
    // A third key: past it, counted in the overflow entry.
    for _ in 0..3 {
        assert_eq!(call("admin").await, tonic::Code::PermissionDenied);
    }
    assert!(
        b.auth_denied(0).await.is_empty(),
        "nothing is written before the interval ends"
    );
    assert!(b.stop().await.success());
    b.restart();
    let denied = b.auth_denied(6).await;
    let summary: Vec<(String, String, u64)> = denied
        .iter()
        .map(|e| (e.actor.clone(), e.rpc.clone(), e.count))
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "spiffe://caseshare.local/agency/school-b".to_string(),
                FORBIDDEN_FOR_AGENCY.to_string(),
                2
            ),
            (
                "spiffe://caseshare.local/auditor/auditor".to_string(),
                FORBIDDEN_FOR_AGENCY.to_string(),
                1
            ),
            ("system".to_string(), String::new(), 3),
        ]
    );
    assert!(denied[2].reason.contains("audit.refusal_max_keys"));
}

fn assert_rate_refusal(status: &tonic::Status, family: &str, held: Duration) {
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .contains(&format!("limits.{family}_rate_per_sec")),
        "{}",
        status.message()
    );
    assert!(
        status.get_details_retry_info().is_some(),
        "a rate refusal says when to retry"
    );
    assert!(
        held >= Duration::from_millis(200),
        "refusals are held for limits.refusal_delay_ms"
    );
}

#[tokio::test]
async fn every_rpc_family_has_its_own_per_principal_rate() {
    let slow = "0.001";
    let b = Broker::start_with(&[
        ("CASESHARE_ADMIN_RATE_PER_SEC", slow),
        ("CASESHARE_ADMIN_BURST", "4"),
        ("CASESHARE_CONSENT_RATE_PER_SEC", slow),
        ("CASESHARE_CONSENT_BURST", "2"),
        ("CASESHARE_SUBSCRIBE_RATE_PER_SEC", slow),
        ("CASESHARE_SUBSCRIBE_BURST", "2"),
        ("CASESHARE_REFUSAL_DELAY_MS", "200"),
    ]);
    // Admin: three registrations and one list are the burst of four.
    b.register_sample_agencies().await;
    let mut admin = b.client("admin");
    assert!(
        admin
            .admin
            .list_agencies(pb::ListAgenciesRequest {})
            .await
            .is_ok()
    );
    let t = Instant::now();
    let refused = admin
        .admin
        .list_agencies(pb::ListAgenciesRequest {})
        .await
        .unwrap_err();
    assert_rate_refusal(&refused, "admin", t.elapsed());
    // Consent: two calls, then a refusal; another agency is unaffected.
    let list = || pb::ListConsentsRequest {
        nhs_number: CHILD_1.into(),
    };
    let mut school = b.client("school-b");
    for _ in 0..2 {
        assert!(school.consent.list_consents(list()).await.is_ok());
    }
    let t = Instant::now();
    let refused = school.consent.list_consents(list()).await.unwrap_err();
    assert_rate_refusal(&refused, "consent", t.elapsed());
    assert!(
        b.client("la-social-care-c")
            .consent
            .list_consents(list())
            .await
            .is_ok()
    );
    // Subscriber: its own bucket, not spent by the consent calls.
    for _ in 0..2 {
        assert!(
            school
                .subscriber
                .list_subscriptions(pb::ListSubscriptionsRequest {})
                .await
                .is_ok()
        );
    }
    let t = Instant::now();
    let refused = school
        .subscriber
        .list_subscriptions(pb::ListSubscriptionsRequest {})
        .await
        .unwrap_err();
    assert_rate_refusal(&refused, "subscribe", t.elapsed());
    // Publish and audit keep their own (default) buckets.
    assert!(
        school
            .publisher
            .publish(publish_request(attendance_event("r-1", CHILD_1)))
            .await
            .is_ok()
    );
    assert!(!b.audit_entries().await.is_empty());
}

/// Raises this test process's descriptor limit so that it can hold a flood.
fn raise_own_nofile() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    hard
}

async fn publish_as(b: &Broker, agency: &str, id: &str) -> Result<(), tonic::Status> {
    b.client(agency)
        .publisher
        .publish(publish_request(attendance_event(id, CHILD_1)))
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_does_not_lock_out_a_good_agency() {
    let hard = raise_own_nofile();
    let silent_sockets = 2_000.min(hard as usize / 2 - 100);
    let b = Broker::start_with(&[
        ("CASESHARE_CONN_MAX_HANDSHAKES", "64"),
        ("CASESHARE_CONN_HANDSHAKE_TIMEOUT_MS", "10000"),
        ("CASESHARE_CONN_PREFACE_TIMEOUT_MS", "10000"),
    ]);
    b.register_sample_agencies().await;
    let t = Instant::now();
    publish_as(&b, "school-b", "calm-1").await.unwrap();
    let calm = t.elapsed();

    // Thousands of TCP connections that never start a handshake …
    let mut silent = Vec::new();
    for _ in 0..silent_sockets {
        silent.push(tokio::net::TcpStream::connect(b.grpc).await.unwrap());
    }
    // … and TLS connections that never send the HTTP/2 preface.
    let mut mute = Vec::new();
    for _ in 0..50 {
        mute.push(raw_tls(&b, "la-social-care-c").await.unwrap());
    }
    let t = Instant::now();
    publish_as(&b, "school-b", "flood-1").await.unwrap();
    let during = t.elapsed();
    println!(
        "connect + first publish for a good agency: {calm:?} calm, {during:?} during a flood of {silent_sockets} silent TCP sockets and 50 mute TLS connections"
    );
    assert!(during < Duration::from_secs(5), "{during:?}");
    let evicted = b.metric("caseshare_conn_refused_total{reason=\"handshakes\"}");
    assert!(
        evicted >= (silent_sockets - 64) as f64,
        "silent sockets beyond the cap were closed ({evicted})"
    );
    // The silent sockets were closed by the broker, not kept.
    let mut closed = 0;
    for s in silent.iter_mut().take(100) {
        if closed_within(s, Duration::from_millis(100)).await.is_some() {
            closed += 1;
        }
    }
    assert!(
        closed >= 90,
        "only {closed} of the first 100 silent sockets were closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_descriptor_reserve_keeps_connected_agencies_working() {
    let hard = raise_own_nofile();
    // The broker raises its soft limit to this hard limit; leave it 200
    // descriptors, most of which its store and listeners already use.
    let room = 200u64;
    let reserve = (hard - room).to_string();
    let b = Broker::start_with(&[
        ("CASESHARE_CONN_FD_RESERVE", &reserve),
        ("CASESHARE_CONN_MAX_HANDSHAKES", "100000"),
    ]);
    b.register_sample_agencies().await;
    let mut connected = b.client("school-b");
    connected
        .publisher
        .publish(publish_request(attendance_event("before", CHILD_1)))
        .await
        .unwrap();
    let mut flood = Vec::new();
    for _ in 0..400 {
        flood.push(tokio::net::TcpStream::connect(b.grpc).await.unwrap());
    }
    // Wait for the broker to have accepted (and refused) the flood.
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.metric("caseshare_conn_refused_total{reason=\"fd_reserve\"}") < 1.0 {
        assert!(Instant::now() < deadline, "no socket was refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let open = std::fs::read_dir(format!("/proc/{}/fd", b.pid()))
        .unwrap()
        .count() as u64;
    assert!(
        open <= room + 8,
        "{open} descriptors open, limit {hard}, reserve {reserve}"
    );
    // The agency already connected keeps working.
    connected
        .publisher
        .publish(publish_request(attendance_event("during", CHILD_1)))
        .await
        .unwrap();
    // Once the flood goes, new agencies connect again.
    drop(flood);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    while publish_as(&b, "la-social-care-c", &format!("after-{n}"))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "no new connection after the flood"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        n += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_preface_and_idle_timeouts_close_sockets() {
    let b = Broker::start_with(&[
        ("CASESHARE_CONN_HANDSHAKE_TIMEOUT_MS", "500"),
        ("CASESHARE_CONN_PREFACE_TIMEOUT_MS", "500"),
        ("CASESHARE_CONN_IDLE_TIMEOUT_MS", "2000"),
    ]);
    // No TLS handshake: closed after the handshake timeout.
    let mut tcp = tokio::net::TcpStream::connect(b.grpc).await.unwrap();
    let t = closed_within(&mut tcp, Duration::from_secs(5)).await;
    assert!(
        t.is_some_and(|t| t >= Duration::from_millis(400)),
        "handshake timeout: {t:?}"
    );
    // TLS but no HTTP/2 preface: closed after the preface timeout.
    let mut mute = raw_tls(&b, "school-b").await.unwrap();
    let t = closed_within(&mut mute, Duration::from_secs(5)).await;
    assert!(
        t.is_some_and(|t| t >= Duration::from_millis(400)),
        "preface timeout: {t:?}"
    );
    assert!(
        b.metric("caseshare_conn_closed_total{reason=\"preface\"}") >= 1.0,
        "closed for want of a preface, not as idle"
    );
    // The preface, then nothing: kept past the preface timeout, closed
    // once idle for the idle timeout.
    let mut idle = raw_tls(&b, "school-b").await.unwrap();
    idle.write_all(H2_PREFACE).await.unwrap();
    idle.flush().await.unwrap();
    let t = closed_within(&mut idle, Duration::from_secs(8)).await;
    assert!(
        t.is_some_and(|t| t >= Duration::from_millis(1900)),
        "idle timeout: {t:?}"
    );
    assert!(b.metric("caseshare_conn_closed_total{reason=\"preface\"}") >= 1.0);
    assert!(b.metric("caseshare_conn_closed_total{reason=\"idle\"}") >= 1.0);
    assert!(b.metric("caseshare_conn_closed_total{reason=\"handshake\"}") >= 1.0);

    // A request in flight (an open Subscribe stream) is not idle: a
    // delivery published after three idle timeouts still arrives.
    b.register_sample_agencies().await;
    put_agreement(
        &b,
        agreement(
            "isa",
            "school-b",
            "la-social-care-c",
            &["education.attendance_concern"],
        ),
    )
    .await;
    create_subscription(&b, "la-social-care-c", "main").await;
    let mut sub = Subscription::open(&b, "la-social-care-c", "main", 10).await;
    tokio::time::sleep(Duration::from_millis(6_500)).await;
    publish_as(&b, "school-b", "late").await.unwrap();
    let d = sub.next().await;
    assert_eq!(d.event.unwrap().event_id, "late");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps_hold_globally_and_per_principal() {
    let b = Broker::start_with(&[
        ("CASESHARE_CONN_MAX", "5"),
        ("CASESHARE_CONN_MAX_PER_PRINCIPAL", "3"),
        ("CASESHARE_CONN_PREFACE_TIMEOUT_MS", "60000"),
    ]);
    // Kept: still open after 300 ms. Refused: closed (within 5 s).
    let still_open = |s| async move {
        let mut s = s;
        let open = closed_within(&mut s, Duration::from_millis(300))
            .await
            .is_none();
        (open, s)
    };
    let refused = |s| async move {
        let mut s = s;
        closed_within(&mut s, Duration::from_secs(5))
            .await
            .is_some()
    };
    // Three for school-b: at its cap, all kept.
    let mut held = Vec::new();
    for _ in 0..3 {
        let (open, s) = still_open(raw_tls(&b, "school-b").await.unwrap()).await;
        assert!(open, "a connection within the per-principal cap is kept");
        held.push(s);
    }
    // A fourth: closed at once.
    let closed = match raw_tls(&b, "school-b").await {
        Ok(s) => refused(s).await,
        Err(_) => true,
    };
    assert!(closed, "one past the per-principal cap is closed");
    assert!(b.metric("caseshare_conn_refused_total{reason=\"max_per_principal\"}") >= 1.0);
    // Two for another principal: at the global cap of five.
    for _ in 0..2 {
        let (open, s) = still_open(raw_tls(&b, "la-social-care-c").await.unwrap()).await;
        assert!(open, "a connection within the global cap is kept");
        held.push(s);
    }
    // A sixth, from anyone: refused.
    let sixth_closed = match raw_tls(&b, "auditor").await {
        Ok(s) => refused(s).await,
        Err(_) => true,
    };
    assert!(sixth_closed, "one past the global cap is closed");
    assert!(b.metric("caseshare_conn_refused_total{reason=\"max_connections\"}") >= 1.0);
    // Closing one frees its place.
    held.truncate(4);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(s) = raw_tls(&b, "auditor").await
            && still_open(s).await.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "the freed place was not reused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A channel whose HTTP/2 flow-control windows are small, so that a
/// subscriber that stops reading stops the broker's sending quickly.
fn small_window_client(b: &Broker, identity: &str) -> caseshare_cli::client::Clients {
    windowed_client(b, identity, 65_535, 65_535)
}

/// A channel with the given HTTP/2 flow-control windows (stream, then
/// connection), bytes.
fn windowed_client(
    b: &Broker,
    identity: &str,
    stream: u32,
    connection: u32,
) -> caseshare_cli::client::Clients {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let pki = b.pki();
    let read = |n: String| std::fs::read(pki.join(n)).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem".into())))
        .identity(Identity::from_pem(
            read(format!("{identity}.pem")),
            read(format!("{identity}.key")),
        ))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://localhost:{}", b.grpc.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .initial_stream_window_size(Some(stream))
        .initial_connection_window_size(Some(connection))
        .connect_lazy();
    caseshare_cli::client::Clients::new(channel)
}

fn big_event(i: usize) -> pb::CaseEvent {
    pb::CaseEvent {
        summary: format!("{i:04} {}", "x".repeat(3_900)),
        ..attendance_event(&format!("big-{i}"), CHILD_1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_dropped_and_its_events_are_redelivered() {
    let b = Broker::start_with(&[
        ("CASESHARE_MAX_STREAM_QUEUED_BYTES", "65536"),
        ("CASESHARE_SLOW_READER_GRACE_MS", "300"),
    ]);
    b.register_sample_agencies().await;
    put_agreement(
        &b,
        agreement(
            "isa",
            "school-b",
            "la-social-care-c",
            &["education.attendance_concern"],
        ),
    )
    .await;
    create_subscription(&b, "la-social-care-c", "main").await;
    // A subscriber that opens a wide window and then reads nothing.
    let mut slow = small_window_client(&b, "la-social-care-c");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::SubscribeRequest {
        subscription: "main".into(),
        max_outstanding: 200,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut stalled = slow
        .subscriber
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let events = 150;
    let mut publisher = b.client("school-b");
    for i in 0..events {
        publisher
            .publisher
            .publish(publish_request(big_event(i)))
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.metric("caseshare_slow_readers_dropped_total") < 1.0 {
        assert!(Instant::now() < deadline, "the slow reader was not dropped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Told why, after what it had already been sent.
    let mut got_before = 0;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), stalled.message()).await {
            Ok(Ok(Some(_))) => got_before += 1,
            Ok(Ok(None)) => panic!("the stream ended without a status"),
            Ok(Err(status)) => break status,
            Err(_) => panic!("no status within 10 s"),
        }
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(
        status.message().starts_with("slow reader:"),
        "{}",
        status.message()
    );
    assert!(got_before < events, "it cannot have had everything");
    drop(tx);
    // A fresh stream gets every event (those sent and never acked too).
    let mut fresh = Subscription::open(&b, "la-social-care-c", "main", 200).await;
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < events {
        let d = fresh.next().await;
        seen.insert(d.event.unwrap().event_id);
        fresh.ack(vec![d.delivery_id]).await;
    }
    println!("slow reader: {got_before} read before the drop, all {events} redelivered");
}

/// A PublishStream whose client never reads its answers: the broker reads
/// (and commits) only what its window of publishes in flight
/// (`limits.max_stream_inflight_bytes`, here at its minimum) and the
/// answers already queued allow, then stops reading, so a client cannot
/// make the broker hold its stream's requests without bound. Every publish
/// here is larger than the window, so each goes alone. Reading the answers
/// then lets the rest through, all answered, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_stream_holds_at_most_its_window_in_flight() {
    let b = Broker::start_with(&[("CASESHARE_MAX_STREAM_INFLIGHT_BYTES", "1024")]);
    b.register_sample_agencies().await;
    let events = 8_000usize;
    let event = |i: usize| pb::CaseEvent {
        summary: format!("{i:05} {}", "y".repeat(1_100)),
        ..attendance_event(&format!("window-{i}"), CHILD_1)
    };
    assert!(
        event(0).encoded_len() > 1024,
        "each publish is past the window"
    );
    // A 64 KiB stream window holds about a thousand answers; a wide
    // connection window lets the client's HTTP/2 hold that many small
    // frames unread (it closes a connection holding more than half that
    // window's worth of framing).
    let mut school = windowed_client(&b, "school-b", 65_535, 8 << 20);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let sender = tokio::spawn(async move {
        for i in 0..events {
            if tx.send(publish_request(event(i))).await.is_err() {
                break;
            }
        }
    });
    let mut answers = school
        .publisher
        .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // Without reading an answer, wait for the broker to have committed
    // and then to stop committing.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut last, mut same) = (-1.0, 0);
    while same < 3 || last <= 0.0 {
        assert!(
            Instant::now() < deadline,
            "the broker never stopped reading"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = b.metric("caseshare_events_published_total");
        (last, same) = if now == last {
            (now, same + 1)
        } else {
            (now, 0)
        };
    }
    // The answers queued for the client (64, and those HTTP/2 holds in its
    // 64 KiB window), plus one publish in flight. Without the window the
    // broker read up to 4,096 more.
    println!("committed while the client read nothing: {last} of {events}");
    assert!(
        last < 4_000.0,
        "{last} publishes committed while no answer was read"
    );
    let mut n = 0usize;
    while let Some(answer) = answers.message().await.unwrap() {
        assert_eq!(answer.event_id, format!("window-{n}"), "answered in order");
        n += 1;
    }
    sender.await.unwrap();
    assert_eq!(n, events, "every publish answered");
    assert_eq!(b.metric("caseshare_events_published_total"), events as f64);
}
