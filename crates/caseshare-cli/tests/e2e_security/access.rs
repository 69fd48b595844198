//! Who may call what: the authorisation matrix over every RPC in the
//! compiled schema for every role, ownership between agencies, and
//! certificates of agencies that were never registered.

use caseshare_core::authz::TABLE;
use caseshare_core::principal::Role;
use caseshare_proto::v1 as pb;
use caseshare_testkit::*;
use tonic::transport::Channel;

use super::code;

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
