//! Configuration at its limits, end to end: the real broker starts and
//! shares an event with every numeric key at the bottom of its range, and
//! again with every key at the top; a value one past a bound is refused at
//! start with a message naming the key, a non-zero exit and no panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Command, Stdio};

use caseshare_server::config::key_ranges;
use support::*;

/// Every key at one end of its range.
fn all_at(bottom: bool) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = key_ranges()
        .into_iter()
        .map(|k| (k.env.to_string(), if bottom { k.min } else { k.max }))
        .collect();
    // The rules between keys hold at both ends: the smallest message is
    // larger than the smallest event, the largest event fits the largest
    // message, and the backoff cap's range starts and ends with the base's.
    env.push(("CASESHARE_LOG".into(), "warn".into()));
    env
}

/// Starts the broker with `env`, shares one event and checks it arrives.
async fn shares_one_event(env: &[(String, String)]) {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let b = Broker::start_with(&env);
    b.register_sample_agencies().await;
    put_agreement(
        &b,
        agreement("isa", "school-b", "kind:social_care", &["education.*"]),
    )
    .await;
    create_subscription(&b, "la-social-care-c", "main").await;
    let mut sub = Subscription::open(&b, "la-social-care-c", "main", 1).await;
    let resp = b
        .client("school-b")
        .publisher
        .publish(publish_request(attendance_event("evt-limits", CHILD_1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.sequence, 1);
    let d = sub.next().await;
    assert_eq!(d.event.unwrap().event_id, "evt-limits");
}

#[tokio::test]
async fn every_key_at_the_bottom_of_its_range_serves() {
    shares_one_event(&all_at(true)).await;
}

#[tokio::test]
async fn every_key_at_the_top_of_its_range_serves() {
    shares_one_event(&all_at(false)).await;
}

#[test]
fn a_value_past_its_bound_is_refused_at_start_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    for (env, value, key) in [
        ("CASESHARE_STORE_CACHE_MIB", "0", "store.cache_mib"),
        (
            "CASESHARE_HTTP2_MAX_CONCURRENT_STREAMS",
            "0",
            "limits.http2_max_concurrent_streams",
        ),
        (
            "CASESHARE_HTTP2_KEEPALIVE_INTERVAL_SECS",
            "18446744073709551615",
            "limits.http2_keepalive_interval_secs",
        ),
        (
            "CASESHARE_IDLE_STREAM_TIMEOUT_SECS",
            "99999999999",
            "limits.idle_stream_timeout_secs",
        ),
        (
            "CASESHARE_PUBLISH_RATE_PER_SEC",
            "NaN",
            "limits.publish_rate_per_sec",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_caseshare"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--ops-listen",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(tmp.path().join("data"))
            .env(env, value)
            .env_remove("CASESHARE_CONFIG")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{env}={value} started");
        assert!(stderr.contains(key), "{env}={value}: {stderr}");
        assert!(!stderr.contains("panicked"), "{env}={value}: {stderr}");
        // Refused before anything was created.
        assert!(
            !tmp.path().join("data").exists(),
            "{env}={value} wrote files"
        );
    }
}
