//! The example events in `examples/events/` are real input: one file per
//! event type, each published through the `caseshare publish` command (the
//! file as it is, proto3 JSON) by the agency that would publish it, shared
//! under an agreement, and delivered to the recipient's subscription.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use caseshare_core::event_type::EVENT_TYPES;
use caseshare_proto::v1 as pb;
use caseshare_testkit::*;

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/events")
}

fn example_path(event_type: &str) -> PathBuf {
    examples_dir().join(format!("{event_type}.json"))
}

fn example_json(event_type: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(example_path(event_type)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The agency that publishes events of this type.
fn publisher_of(event_type: &str) -> &'static str {
    match event_type.split_once('.').map(|(domain, _)| domain) {
        Some("health") => "nhs-trust-a",
        Some("education") => "school-b",
        Some("social_care" | "early_help") => "la-social-care-c",
        _ => panic!("unexpected event type {event_type}"),
    }
}

/// The agency the test's agreements share events of this type with.
fn recipient_of(event_type: &str) -> &'static str {
    match publisher_of(event_type) {
        "la-social-care-c" => "school-b",
        _ => "la-social-care-c",
    }
}

const ALL_PURPOSES: [pb::Purpose; 4] = [
    pb::Purpose::Safeguarding,
    pb::Purpose::EarlyHelp,
    pb::Purpose::HealthCare,
    pb::Purpose::EducationSupport,
];

fn agreement_for(id: &str, provider: &str, recipient: &str, event_types: &[&str]) -> pb::Agreement {
    pb::Agreement {
        agreement_id: id.into(),
        provider: provider.into(),
        recipient: recipient.into(),
        purposes: ALL_PURPOSES.iter().map(|p| *p as i32).collect(),
        event_types: event_types.iter().map(|s| s.to_string()).collect(),
        lawful_basis: pb::LawfulBasis::PublicTask as i32,
        ..Default::default()
    }
}

/// `caseshare publish FILE` as `agency`; the parsed JSON response.
fn cli_publish(b: &Broker, agency: &str, file: &Path) -> serde_json::Value {
    let pki = b.pki();
    let out = caseshare_command()
        .arg("publish")
        .arg("--server")
        .arg(format!("https://localhost:{}", b.grpc.port()))
        .arg("--ca")
        .arg(pki.join("ca.pem"))
        .arg("--cert")
        .arg(pki.join(format!("{agency}.pem")))
        .arg("--key")
        .arg(pki.join(format!("{agency}.key")))
        .arg(file)
        .output()
        .expect("run caseshare publish");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "caseshare publish {} as {agency}: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        file.display(),
        out.status
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("publish printed no JSON ({e}):\n{stdout}"))
}

/// A proto3 JSON uint64 (a string, or a number from lenient printers).
fn json_u64(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::String(s) => s.parse().ok(),
        serde_json::Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

#[test]
fn examples_dir_holds_exactly_one_file_per_event_type() {
    let files: BTreeSet<String> = std::fs::read_dir(examples_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let expected: BTreeSet<String> = EVENT_TYPES
        .iter()
        .map(|(t, _)| format!("{t}.json"))
        .collect();
    assert_eq!(files, expected);
    let ids: BTreeSet<String> = EVENT_TYPES
        .iter()
        .map(|(t, _)| example_json(t)["eventId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), EVENT_TYPES.len(), "event ids are unique");
}

#[tokio::test]
async fn every_example_is_published_through_the_cli_shared_and_delivered() {
    let b = Broker::start();
    b.register_sample_agencies().await;
    for a in [
        agreement_for(
            "isa-health-sc",
            "nhs-trust-a",
            "la-social-care-c",
            &["health.*"],
        ),
        agreement_for(
            "isa-edu-sc",
            "school-b",
            "kind:social_care",
            &["education.*"],
        ),
        agreement_for(
            "isa-sc-edu",
            "la-social-care-c",
            "kind:education",
            &["social_care.*", "early_help.*"],
        ),
    ] {
        put_agreement(&b, a).await;
    }
    create_subscription(&b, "la-social-care-c", "main").await;
    create_subscription(&b, "school-b", "main").await;

    // The mental health referral is SENSITIVE: whatever the agreement says,
    // it is shared only with an explicit consent naming its type.
    let sensitive = "health.mental_health_referral";
    let mh = example_json(sensitive);
    assert_eq!(mh["sensitivity"], "SENSITIVE");
    let purpose = pb::Purpose::from_str_name(mh["purpose"].as_str().unwrap()).unwrap();
    let consent = b
        .client("nhs-trust-a")
        .consent
        .record_consent(pb::ConsentRecord {
            nhs_number: mh["child"]["nhsNumber"].as_str().unwrap().into(),
            given_by: pb::GivenBy::Child as i32,
            purposes: vec![purpose as i32],
            recipients: vec![recipient_of(sensitive).into()],
            event_types: vec![sensitive.into()],
            evidence_ref: "camhs-referral-form:2026-11-12".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let mut last_sequence = 0;
    let mut expected_deliveries: Vec<(&str, BTreeSet<String>)> = vec![
        ("la-social-care-c", BTreeSet::new()),
        ("school-b", BTreeSet::new()),
    ];
    for (event_type, _) in EVENT_TYPES {
        let example = example_json(event_type);
        let event_id = example["eventId"].as_str().unwrap();
        let publisher = publisher_of(event_type);
        let recipient = recipient_of(event_type);
        let resp = cli_publish(&b, publisher, &example_path(event_type));

        assert_eq!(resp["eventType"], *event_type, "{resp}");
        assert_eq!(resp["eventId"], event_id, "{resp}");
        assert!(resp.get("duplicate").is_none(), "{resp}");
        let sequence = json_u64(&resp["sequence"]).unwrap_or_else(|| panic!("sequence: {resp}"));
        assert!(sequence > last_sequence, "{event_type}: {resp}");
        last_sequence = sequence;

        let decisions = resp["decisions"].as_array().expect("decisions");
        let decision = decisions
            .iter()
            .find(|d| d["agencyId"] == recipient)
            .unwrap_or_else(|| panic!("{event_type}: no decision for {recipient}: {resp}"));
        assert_eq!(decision["decision"], "SHARED", "{event_type}: {resp}");
        if *event_type == sensitive {
            assert_eq!(decision["reason"], "consent", "{resp}");
            assert_eq!(decision["consentId"], consent.consent_id.as_str(), "{resp}");
        } else {
            assert_eq!(decision["reason"], "agreement", "{resp}");
        }
        assert!(
            decisions.iter().all(|d| d["agencyId"] != publisher),
            "the publisher is never a recipient: {resp}"
        );
        expected_deliveries
            .iter_mut()
            .find(|(agency, _)| *agency == recipient)
            .unwrap()
            .1
            .insert(event_id.to_string());
    }

    // Each recipient receives exactly the examples shared with it.
    for (agency, expected) in expected_deliveries {
        let mut sub = Subscription::open(&b, agency, "main", 20).await;
        let mut got = BTreeSet::new();
        for _ in 0..expected.len() {
            let d = sub.next().await;
            let event = d.event.clone().unwrap();
            assert!(
                EVENT_TYPES.iter().any(|(t, _)| *t == d.event_type),
                "{}",
                d.event_type
            );
            assert_eq!(
                example_json(&d.event_type)["eventId"],
                event.event_id.as_str(),
                "{agency} got the example of its event type"
            );
            assert_eq!(d.source_agency, publisher_of(&d.event_type));
            assert!(got.insert(event.event_id), "delivered once");
            sub.ack(vec![d.delivery_id]).await;
        }
        assert_eq!(got, expected, "{agency}");
    }
}
