//! Reading `/jsz`: leaders, stream state, the meta leader's view of its peers.
use super::*;

#[test]
fn only_the_leaders_view_with_every_peer_current_is_ready() {
    // Shapes nats-server 2.15.1 answered just after a 3-node start.
    let meta = |replicas: &str| -> Value {
        serde_json::from_str(&format!(
            r#"{{"meta_cluster":{{"leader":"n3","replicas":[{replicas}]}}}}"#
        ))
        .unwrap()
    };
    let rows = [
        (
            r#"{"name":"n1","current":true},{"name":"n2","current":true}"#,
            true,
        ),
        (
            r#"{"name":"n1","current":true},{"name":"n2","current":false}"#,
            false,
        ),
        (
            r#"{"name":"n1","current":true},{"name":"n2","current":true,"offline":true}"#,
            false,
        ),
        (r#"{"name":"n1","current":true}"#, false),
        // A follower's view lists the leader.
        (
            r#"{"name":"n2","current":true},{"name":"n3","current":true}"#,
            false,
        ),
    ];
    for (replicas, ready) in rows {
        assert_eq!(meta_peers_current(&meta(replicas), 3), ready, "{replicas}");
    }
    assert!(!meta_peers_current(&serde_json::json!({}), 3));
}

#[test]
fn leaders_and_stream_state_are_read_from_jsz() {
    // The shape nats-server 2.15.1 answers (abridged).
    let jsz: Value = serde_json::from_str(
        r#"{"meta_cluster":{"name":"t","leader":"n1","cluster_size":3},
            "account_details":[{"name":"$G","stream_detail":[
              {"name":"OTHER","cluster":{"leader":"n0"},"state":{"messages":1}},
              {"name":"KIT","cluster":{"name":"t","leader":"n2"},
               "state":{"messages":7,"first_seq":1,"last_seq":7}}]}]}"#,
    )
    .unwrap();
    assert_eq!(meta_leader_of(&jsz).as_deref(), Some("n1"));
    assert_eq!(
        stream_detail(&jsz, "KIT"),
        Some(StreamDetail {
            leader: Some("n2".into()),
            state: StreamState {
                messages: 7,
                first_seq: 1,
                last_seq: 7
            }
        })
    );
    assert_eq!(stream_detail(&jsz, "NONE"), None);
    let leaderless: Value = serde_json::from_str(r#"{"meta_cluster":{"leader":""}}"#).unwrap();
    assert_eq!(meta_leader_of(&leaderless), None);
}

#[tokio::test]
async fn a_binary_that_is_not_a_modern_nats_server_starts_no_cluster() {
    let e = NatsCluster::builder(3)
        .binary("true")
        .try_start()
        .await
        .err()
        .expect("`true` refused as a nats-server");
    assert!(e.0.contains("no version in"), "{e}");
}

#[test]
fn tail_keeps_the_last_lines() {
    assert_eq!(tail("a\nb\nc", 2), "b\nc");
    assert_eq!(tail("a", 5), "a");
}
