//! `caseshare status` end to end, against a real broker over mutual TLS:
//! the admin sees the version exactly as `caseshare --version` prints it,
//! the uptime, and each subscription's exact backlog and in-flight count
//! after N unacknowledged events; `--json` parses and says the same as the
//! table; an agency or an auditor is refused `PERMISSION_DENIED`, and the
//! refusals are audited like every other (aggregated `AUTH_DENIED`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::Output;
use std::time::{Duration, Instant};

use caseshare_proto::v1 as pb;
use caseshare_testkit::*;

const GET_STATUS: &str = "/caseshare.v1.Admin/GetStatus";

/// `caseshare status` as `identity`, with `extra` arguments.
fn status_cli(b: &Broker, identity: &str, extra: &[&str]) -> Output {
    let pki = b.pki();
    caseshare_command()
        .arg("status")
        .args(["--server", &format!("https://localhost:{}", b.grpc.port())])
        .arg("--ca")
        .arg(pki.join("ca.pem"))
        .arg("--cert")
        .arg(pki.join(format!("{identity}.pem")))
        .arg("--key")
        .arg(pki.join(format!("{identity}.key")))
        .args(extra)
        .output()
        .unwrap()
}

fn stdout_of(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}; stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The table's `key  value` lines above the subscriptions.
fn table_fields(table: &str) -> BTreeMap<String, String> {
    table
        .lines()
        .take_while(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_at(16);
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

/// The table's subscription rows: (agency, name) -> [backlog, oldest
/// unacked, in flight, dead letters] as printed.
fn table_rows(table: &str) -> BTreeMap<(String, String), Vec<String>> {
    let mut lines = table.lines().skip_while(|l| !l.starts_with("AGENCY"));
    let header = lines.next().expect("the subscriptions header");
    assert!(header.contains("BACKLOG") && header.contains("IN FLIGHT"));
    lines
        .take_while(|l| !l.starts_with('('))
        .map(|l| {
            let cells: Vec<&str> = l
                .split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect();
            assert_eq!(cells.len(), 6, "a row of six cells: {l:?}");
            (
                (cells[0].to_string(), cells[1].to_string()),
                cells[2..].iter().map(|c| c.to_string()).collect(),
            )
        })
        .collect()
}

/// A proto3 JSON uint64 (a string) as a number.
fn u64_of(v: &serde_json::Value) -> u64 {
    v.as_str()
        .unwrap_or_else(|| panic!("a uint64 in proto3 JSON is a string: {v}"))
        .parse()
        .unwrap()
}

fn sub<'a>(s: &'a pb::BrokerStatus, agency: &str, name: &str) -> &'a pb::SubscriptionStatus {
    s.subscriptions
        .iter()
        .find(|x| x.agency_id == agency && x.name == name)
        .unwrap_or_else(|| panic!("{agency}/{name} in {:?}", s.subscriptions))
}

#[tokio::test]
async fn admin_sees_version_uptime_and_the_exact_backlog_in_table_and_json() {
    const N: u64 = 3;
    let started = Instant::now();
    let b = Broker::start();
    b.school_shares_with_social_care().await;
    // A second subscription that no stream reads: its backlog is the
    // events after its cursor.
    create_subscription(&b, SOCIAL_CARE, "idle").await;
    let mut stream = Subscription::open(&b, SOCIAL_CARE, "main", 10).await;
    let mut school = b.client(SCHOOL);
    for i in 0..N {
        school
            .publisher
            .publish(publish_request(attendance_event(
                &format!("evt-status-{i}"),
                CHILD_1,
            )))
            .await
            .unwrap();
    }
    // `main` receives all N and acknowledges none of them.
    let mut ids = Vec::new();
    for _ in 0..N {
        ids.push(stream.next().await.delivery_id);
    }

    // The table.
    let version = stdout_of(&caseshare_command().arg("--version").output().unwrap());
    let version = version.trim_end_matches('\n');
    assert!(version.starts_with("caseshare "), "{version:?}");
    // In cluster mode the replica lists itself once it has put itself in
    // the roster and read it back (at start, then every 5 s).
    let cluster = matches!(Topology::from_env(), Topology::Cluster);
    let deadline = Instant::now() + Duration::from_secs(20);
    let table = loop {
        let table = stdout_of(&status_cli(&b, ADMIN, &[]));
        if !cluster || table.contains("(this one)") || Instant::now() > deadline {
            break table;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("{table}");
    let fields = table_fields(&table);
    assert_eq!(fields["version"], version, "{table}");
    assert!(fields["uptime"].contains("(since "), "{table}");
    // The suite runs on both backends (CASESHARE_TEST_TOPOLOGY).
    let (role, backend) = match Topology::from_env() {
        Topology::Cluster => ("replica", "nats"),
        _ => ("single", "embedded"),
    };
    assert_eq!(fields["role"], role);
    assert_eq!(fields["backend"], backend);
    if cluster {
        let me = &fields["replica"];
        assert!(me.contains(&b.grpc.to_string()), "{table}");
        assert!(
            me.contains("(this one): applied journal message "),
            "{table}"
        );
    } else {
        assert_eq!(fields["replicas"], "none (single broker)");
    }
    assert!(
        fields["store size"].ends_with(')'),
        "a store of some KiB: {table}"
    );
    assert!(fields["audit log"].ends_with(" entries"));
    assert!(
        fields["last checkpoint"].contains("entries, signed"),
        "{table}"
    );
    let rows = table_rows(&table);
    let n = N.to_string();
    let main = &rows[&(SOCIAL_CARE.to_string(), "main".to_string())];
    assert_eq!(
        (&main[0], &main[2], &main[3]),
        (&n, &n, &"0".to_string()),
        "main: backlog N, N in flight, no dead letters: {table}"
    );
    let idle = &rows[&(SOCIAL_CARE.to_string(), "idle".to_string())];
    assert_eq!(
        (&idle[0], &idle[2], &idle[3]),
        (&n, &"0".to_string(), &"0".to_string()),
        "idle: backlog N, nothing in flight: {table}"
    );
    assert_eq!(rows.len(), 2, "{table}");

    // `--json`: the same figures, every field present.
    let json: serde_json::Value =
        serde_json::from_str(&stdout_of(&status_cli(&b, ADMIN, &["--json"]))).unwrap();
    assert_eq!(json["version"], version);
    assert_eq!(json["role"], role);
    assert_eq!(json["backend"], backend);
    if cluster {
        let replicas = json["replicas"].as_array().unwrap();
        assert_eq!(replicas.len(), 1, "{json}");
        assert_eq!(replicas[0]["thisReplica"], true, "{json}");
        assert_eq!(replicas[0]["address"], b.grpc.to_string(), "{json}");
    } else {
        assert_eq!(json["replicas"], serde_json::json!([]));
    }
    assert!(json["startedAt"].as_str().unwrap().ends_with('Z'), "{json}");
    let uptime = u64_of(&json["uptimeSeconds"]);
    assert!(uptime <= started.elapsed().as_secs(), "{uptime} s");
    assert!(u64_of(&json["storeBytes"]) > 0);
    let audit_size = u64_of(&json["auditTreeSize"]);
    assert!(audit_size > 0);
    assert!(u64_of(&json["lastCheckpoint"]["treeSize"]) <= audit_size);
    let subs = json["subscriptions"].as_array().unwrap();
    assert_eq!(subs.len(), rows.len());
    for s in subs {
        let key = (
            s["agencyId"].as_str().unwrap().to_string(),
            s["name"].as_str().unwrap().to_string(),
        );
        let row = &rows[&key];
        assert_eq!(u64_of(&s["backlog"]).to_string(), row[0], "{key:?}");
        assert_eq!(u64_of(&s["inFlight"]).to_string(), row[2], "{key:?}");
        assert_eq!(u64_of(&s["deadLetters"]).to_string(), row[3], "{key:?}");
        assert!(u64_of(&s["oldestUnackedAgeSeconds"]) <= started.elapsed().as_secs());
    }

    // Acknowledged (a unary ack answers once it is settled and durable):
    // `main` owes nothing, `idle` still owes all N.
    let mut social = b.client(SOCIAL_CARE);
    social
        .subscriber
        .ack(pb::AckRequest {
            subscription: "main".into(),
            delivery_ids: ids,
        })
        .await
        .unwrap();
    let after = b
        .client(ADMIN)
        .admin
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let main = sub(&after, SOCIAL_CARE, "main");
    assert_eq!((main.backlog, main.in_flight), (0, 0), "{main:?}");
    assert_eq!(main.oldest_unacked_age_seconds, 0, "{main:?}");
    assert_eq!(sub(&after, SOCIAL_CARE, "idle").backlog, N);
    assert!(after.uptime_seconds >= uptime);
    assert_eq!(after.version, version);
}

#[tokio::test]
async fn only_the_admin_may_ask_and_refusals_are_audited() {
    let b = Broker::start_with(&[("CASESHARE_AUDIT_REFUSAL_INTERVAL_MS", "100")]);
    b.register_sample_agencies().await;
    for identity in [SCHOOL, AUDITOR] {
        let refused = b
            .client(identity)
            .admin
            .get_status(pb::GetStatusRequest {})
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{identity}");
    }
    let out = status_cli(&b, SOCIAL_CARE, &["--json"]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "nothing printed on a refusal");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: PermissionDenied"),
        "one error line: {stderr}"
    );

    // Three refused calls, each counted in an AUTH_DENIED entry for
    // GetStatus naming the caller.
    let denied: Vec<pb::AuditEntry> = b
        .auth_denied(3)
        .await
        .into_iter()
        .filter(|e| e.rpc == GET_STATUS)
        .collect();
    assert_eq!(denied.iter().map(|e| e.count).sum::<u64>(), 3, "{denied:?}");
    for who in [
        "agency/school-b",
        "auditor/auditor",
        "agency/la-social-care-c",
    ] {
        assert!(
            denied.iter().any(|e| e.actor.ends_with(who)),
            "{who} in {denied:?}"
        );
    }

    // The admin is answered.
    let ok = b
        .client(ADMIN)
        .admin
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(ok.subscriptions.is_empty());
    assert!(ok.role == "single" || ok.role == "replica", "{}", ok.role);
}
