//! Configuration at its limits, end to end: the real broker starts and
//! shares an event with every numeric key at the bottom of its range, and
//! again with every key at the top; a value one past a bound is refused at
//! start with a message naming the key, a non-zero exit and no panic; a
//! memory target starts the thread that keeps it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use caseshare_proto::v1 as pb;
use caseshare_server::config::key_ranges;
use caseshare_testkit::*;

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

/// At the bottom of every range the broker is as strict as it can be: one
/// connection in all, one call per family before its bucket is empty,
/// 10 ms to finish a handshake. It must still start, be ready and answer
/// the one call each bound leaves room for (retrying a connection the
/// 10 ms handshake bound may cut on a loaded machine), then refuse the next.
#[tokio::test]
async fn every_key_at_the_bottom_of_its_range_serves() {
    let env = all_at(true);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let b = Broker::start_with(&env);
    assert_eq!(http_get(b.ops, "/readyz").0, 200);
    let mut answered = None;
    for _ in 0..50 {
        let Ok(mut admin) = caseshare_cli::client::Clients::connect(&b.client_config("admin"))
        else {
            continue;
        };
        match admin.admin.list_agencies(pb::ListAgenciesRequest {}).await {
            Ok(_) => {
                answered = Some(admin);
                break;
            }
            Err(s) if s.code() == tonic::Code::Unavailable => continue,
            // A connection the 10 ms handshake bound cut mid-call surfaces
            // as a transport error (a broken pipe), not as a refusal.
            Err(s)
                if std::error::Error::source(&s)
                    .is_some_and(|e| e.is::<tonic::transport::Error>()) =>
            {
                continue;
            }
            Err(s) => panic!("the first admin call was refused: {s:?}"),
        }
    }
    let mut admin = answered.expect("one admin call answered within 50 connection attempts");
    let second = admin
        .admin
        .list_agencies(pb::ListAgenciesRequest {})
        .await
        .expect_err("the admin bucket holds one call");
    assert_eq!(second.code(), tonic::Code::ResourceExhausted, "{second:?}");
}

/// Every key at the top of its range, except the descriptor reserve: its
/// top is checked against the process's RLIMIT_NOFILE at start, and a
/// reserve that leaves no room is refused naming the key (asserted here).
#[tokio::test]
async fn every_key_at_the_top_of_its_range_serves() {
    let mut env = all_at(false);
    let refused = Broker::try_start_in(
        tempfile::tempdir().unwrap().path(),
        &env.iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
        &[],
    )
    .err()
    .expect("a reserve of 2^32 descriptors is refused");
    assert!(
        refusal_message(&refused).contains("connections.fd_reserve"),
        "{}",
        refused.stderr
    );
    for (k, v) in &mut env {
        if k == "CASESHARE_CONN_FD_RESERVE" {
            *v = "128".into();
        }
    }
    shares_one_event(&env).await;
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
        let refused = match Broker::try_start_in(tmp.path(), &[(env, value)], &[]) {
            Ok(_) => panic!("{env}={value} started"),
            Err(r) => r,
        };
        let stderr = &refused.stderr;
        assert!(
            !refused.status.success(),
            "{env}={value}: {}",
            refused.status
        );
        assert!(stderr.contains(key), "{env}={value}: {stderr}");
        assert!(!stderr.contains("panicked"), "{env}={value}: {stderr}");
        // Refused before anything was created.
        assert!(
            !tmp.path().join("data").exists(),
            "{env}={value} wrote files"
        );
    }
}

/// The store backend keys: a bad value names its key; cluster mode, until
/// it is built, is refused at start naming `store.backend` — each before
/// anything is created in the data directory.
#[test]
fn store_backend_keys_are_checked_before_any_file() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&[(&str, &str)], &str); 6] = [
        (&[("CASESHARE_STORE_BACKEND", "postgres")], "store.backend"),
        // An event must fit a journal message in cluster mode: 192 KiB.
        (
            &[
                ("CASESHARE_STORE_BACKEND", "nats"),
                ("CASESHARE_NATS_SERVERS", "nats://127.0.0.1:4222"),
                ("CASESHARE_MAX_EVENT_BYTES", "196609"),
            ],
            "limits.max_event_bytes",
        ),
        (&[("CASESHARE_STORE_BACKEND", "nats")], "store.nats.servers"),
        (
            &[
                ("CASESHARE_STORE_BACKEND", "nats"),
                ("CASESHARE_NATS_SERVERS", "http://x:1"),
            ],
            "store.nats.servers",
        ),
        (&[("CASESHARE_NATS_REPLICAS", "6")], "store.nats.replicas"),
        // A journal that drops messages keeps them at least the duplicate
        // window (120 s by default) and 2 × lease_ttl + 60 s.
        (
            &[
                ("CASESHARE_STORE_BACKEND", "nats"),
                ("CASESHARE_NATS_SERVERS", "nats://127.0.0.1:4222"),
                ("CASESHARE_NATS_JOURNAL_MAX_AGE_S", "100"),
            ],
            "store.nats.journal_max_age_s",
        ),
    ];
    for (env, key) in cases {
        let refused = match Broker::try_start_in(tmp.path(), env, &[]) {
            Ok(_) => panic!("{env:?} started"),
            Err(r) => r,
        };
        assert!(!refused.status.success(), "{env:?}: {}", refused.status);
        assert!(refused.stderr.contains(key), "{env:?}: {}", refused.stderr);
        assert!(
            !refused.stderr.contains("panicked"),
            "{env:?}: {}",
            refused.stderr
        );
        assert!(!tmp.path().join("data").exists(), "{env:?} wrote files");
    }
    // At the top of its range the replica count is accepted (embedded
    // backend: it is not used).
    let b = Broker::start_in(tmp.path(), &[("CASESHARE_NATS_REPLICAS", "5")]);
    drop(b);
}

/// docs/OPERATIONS.md lists every key with the range the broker enforces
/// (a failure prints the rows to paste).
#[test]
fn the_operations_guide_lists_every_key_with_its_range() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/OPERATIONS.md"
    ))
    .unwrap();
    let missing: Vec<String> = key_ranges()
        .into_iter()
        .map(|k| {
            format!(
                "| `{}` | `{}` | {} | {} | {} |",
                k.name, k.env, k.min, k.max, k.unit
            )
        })
        .filter(|row| !doc.contains(row.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "rows missing from docs/OPERATIONS.md:\n{}",
        missing.join("\n")
    );
}

/// The names of a process's threads.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect()
}

/// `limits.memory_target_mib` starts the thread that keeps it (a target of
/// 1 MiB is below any broker: it purges freed memory at once all the time)
/// and the broker still shares; without a target there is no such thread.
#[tokio::test]
async fn a_memory_target_is_kept_by_its_thread_and_none_by_default() {
    let with = [
        ("CASESHARE_MEMORY_TARGET_MIB".to_string(), "1".to_string()),
        ("CASESHARE_LOG".to_string(), "warn".to_string()),
    ];
    let env: Vec<(&str, &str)> = with.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let b = Broker::start_with(&env);
    let names = thread_names(b.pid());
    assert!(names.iter().any(|n| n == "alloc-target"), "{names:?}");
    drop(b);
    shares_one_event(&with).await;

    let b = Broker::start_with(&[("CASESHARE_LOG", "warn")]);
    let names = thread_names(b.pid());
    assert!(!names.iter().any(|n| n == "alloc-target"), "{names:?}");
}
