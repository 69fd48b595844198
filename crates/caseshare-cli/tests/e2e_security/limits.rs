//! Per-principal limits: the publish rate, concurrent streams, the
//! delivery window, and idle Subscribe streams.

use std::time::{Duration, Instant};

use caseshare_proto::v1 as pb;
use caseshare_testkit::*;
use tonic_types::StatusExt;

use super::code;

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
