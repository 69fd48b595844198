//! The ops port during a slow start (issue 17): it is bound before the
//! broker loads its keys and store or waits for its NATS cluster, so a
//! Kubernetes liveness probe on `/healthz` sees the process up, and
//! `/readyz` tells the truth (503) until the broker serves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use caseshare_testkit::*;

/// A cluster-mode broker whose NATS cluster is not up waits for it (up to
/// a minute). Meanwhile: `/healthz` 200, `/readyz` 503, `/metrics` says
/// `caseshare_ready 0`, and the process runs on.
#[test]
fn the_ops_port_answers_while_the_broker_waits_to_serve() {
    // A loopback port with nothing behind it: the NATS cluster "not up".
    let nothing = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("nats://{nothing}");
    let mut b = Loading::spawn(&[
        ("CASESHARE_STORE_BACKEND", "nats"),
        ("CASESHARE_NATS_SERVERS", url.as_str()),
    ]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !b.log_text().contains("waiting for the NATS cluster") {
        assert!(b.running(), "the broker exited:\n{}", b.log_text());
        assert!(
            Instant::now() < deadline,
            "the broker never waited for NATS:\n{}",
            b.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Its store is open, it is not serving: probes answer all the same.
    assert_eq!(http_get(b.ops, "/healthz").0, 200);
    assert_eq!(http_get(b.ops, "/readyz").0, 503);
    let (status, metrics) = http_get(b.ops, "/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.lines().any(|l| l == "caseshare_ready 0"),
        "{metrics}"
    );
    assert!(b.running());
    assert!(
        !b.log_text().contains("caseshare broker listening"),
        "it serves without its journal?\n{}",
        b.log_text()
    );
}
