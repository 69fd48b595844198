//! The container image (issue 17), really built and run: `deploy/Dockerfile`
//! built with the classic builder and `PREBUILT` (the debug binary cargo
//! built for these tests) on a base made locally (no registry here), run
//! with a read-only root and only its data directory writable, healthy by
//! its own HEALTHCHECK, then the end-to-end smoke from outside the
//! container over mutual TLS with the development PKI the broker made in
//! its data directory (register, agreement, subscription, publish,
//! subscribe, ack, `caseshare audit verify`), then `docker stop` (SIGTERM)
//! and a clean exit. Needs Docker (it fails saying so without it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use caseshare_proto::v1 as pb;
use caseshare_testkit::*;
use tokio_stream::StreamExt;

/// The image's configuration: labels, user, health check, entry point.
fn check_image_config(image: &ContainerImage) {
    let labels = image.inspect("{{json .Config.Labels}}");
    for key in [
        "org.opencontainers.image.version",
        "org.opencontainers.image.source",
        "org.opencontainers.image.licenses",
    ] {
        assert!(labels.contains(key), "{key} missing: {labels}");
    }
    assert_eq!(image.inspect("{{.Config.User}}"), "65532:65532");
    let health = image.inspect("{{json .Config.Healthcheck.Test}}");
    assert!(
        health.contains("\"CMD\"") && health.contains("probe") && health.contains("/readyz"),
        "an exec-form probe of /readyz, no shell: {health}"
    );
    assert_eq!(
        image.inspect("{{json .Config.Entrypoint}}"),
        "[\"/usr/local/bin/caseshare\"]"
    );
    // The data directory belongs to the runtime user and is empty.
    let listing = image.list("/var/lib/caseshare");
    assert_eq!(listing.lines().count(), 1, "{listing}");
    assert!(listing.contains("65532/65532"), "{listing}");
}

/// The container's broker runs as the image's user, and nothing but the
/// data directory can be written.
fn check_confinement(c: &ContainerBroker) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", c.host_pid())).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let uids: Vec<u32> = uid_line
        .split_whitespace()
        .skip(1)
        .map(|u| u.parse().unwrap())
        .collect();
    assert_eq!(uids, vec![IMAGE_UID; 4], "{uid_line}");
    // No shell in the image: the broker binary writes (a dev PKI) where it
    // is told to.
    for dir in ["/tmp/x", "/etc/caseshare/x", "/x", "/home/nonroot/x"] {
        let out = c.exec(&["/usr/local/bin/caseshare", "dev-pki", "--out", dir]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "wrote {dir}");
        assert!(
            err.contains("Read-only file system") || err.contains("Permission denied"),
            "{dir}: {err}"
        );
    }
    let out = c.exec(&[
        "/usr/local/bin/caseshare",
        "dev-pki",
        "--out",
        "/var/lib/caseshare/write-check",
    ]);
    assert!(out.status.success(), "{out:?}");
    std::fs::remove_dir_all(c.data().join("write-check")).unwrap();
}

/// Register, agreement, subscription, publish, subscribe, ack, over mutual
/// TLS to the published port; the number of events delivered and acked.
async fn smoke(e: &Endpoint) -> usize {
    e.school_shares_with_social_care().await;
    let mut school = e.client(SCHOOL);
    let n = 3;
    for i in 0..n {
        let r = school
            .publisher
            .publish(publish_request(attendance_event(
                &format!("img-{i}"),
                CHILD_1,
            )))
            .await
            .unwrap()
            .into_inner();
        assert!(r.sequence > 0, "{r:?}");
    }
    let Subscription { tx, rx: mut stream } = Subscription::try_open_at(e, SOCIAL_CARE, "main", 10)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..n {
        let d = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("a delivery within 30 s")
            .unwrap()
            .unwrap();
        assert_eq!(d.source_agency, SCHOOL);
        ids.push(d.delivery_id);
    }
    // Acknowledged with the unary call, which says how many took effect.
    let acked = e
        .client(SOCIAL_CARE)
        .subscriber
        .ack(pb::AckRequest {
            subscription: "main".into(),
            delivery_ids: ids,
        })
        .await
        .unwrap()
        .into_inner()
        .acked;
    assert_eq!(acked as usize, n);
    drop(tx);
    n
}

/// `caseshare audit verify` from the host, as the auditor, against the
/// verifier key the broker printed at start.
fn audit_verify(c: &ContainerBroker, state: &std::path::Path) -> String {
    let logs = c.logs();
    let vkey = logs
        .lines()
        .find_map(|l| l.strip_prefix("audit log verifier key: "))
        .unwrap_or_else(|| panic!("no verifier key in the log:\n{logs}"))
        .trim()
        .to_string();
    let pki = c.endpoint().pki;
    let out = caseshare_command()
        .args(["audit", "verify", "--server"])
        .arg(format!("https://localhost:{}", c.grpc.port()))
        .arg("--ca")
        .arg(pki.join("ca.pem"))
        .arg("--cert")
        .arg(pki.join("auditor.pem"))
        .arg("--key")
        .arg(pki.join("auditor.key"))
        .args(["--vkey", &vkey])
        .arg("--state")
        .arg(state)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "audit verify: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn the_image_builds_runs_read_only_serves_mtls_and_stops_cleanly() {
    let t0 = Instant::now();
    let image = ContainerImage::build(&caseshare_bin());
    println!(
        "image {} built in {:.1} s: {:.1} MB (debug binary)",
        image.tag,
        image.build_time.as_secs_f64(),
        image.size() as f64 / 1e6
    );
    check_image_config(&image);

    let c = image.run();
    println!(
        "container {} healthy {:.1} s after docker run",
        c.name,
        c.time_to_healthy.as_secs_f64()
    );
    assert_eq!(http_get(c.ops, "/readyz").0, 200);
    check_confinement(&c);

    let delivered = smoke(&c.endpoint()).await;
    let state = tempfile::tempdir().unwrap();
    let verified = audit_verify(&c, &state.path().join("verify-state.json"));
    println!("delivered and acked {delivered}; {}", verified.trim());
    assert!(verified.starts_with("verified: "), "{verified}");

    let stopping = Instant::now();
    let code = c.stop(Duration::from_secs(30));
    let logs = c.logs();
    println!(
        "docker stop: exit {code} in {:.1} s",
        stopping.elapsed().as_secs_f64()
    );
    assert_eq!(code, 0, "a clean exit on SIGTERM; log:\n{logs}");
    assert!(
        logs.contains("caseshare broker stopped"),
        "the clean-shutdown line; log:\n{logs}"
    );
    assert!(!logs.contains(CHILD_1), "an NHS number in the log");
    drop(c);
    drop(image);
    println!("image test took {:.1} s", t0.elapsed().as_secs_f64());
}

/// The repository's `.dockerignore` sends the daemon only what a build
/// needs: the Cargo files, the crates, the protos, the Dockerfile and the
/// default config (and a host-built `target/*/caseshare`, if there is
/// one); no `.git`, docs, examples or other build output.
#[test]
fn the_build_context_is_only_what_the_image_needs() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let files = build_context_files(&root.canonicalize().unwrap());
    println!("{} files in the build context", files.len());
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "deploy/Dockerfile",
        "deploy/caseshare.toml",
        "crates/caseshare-cli/src/main.rs",
        "crates/caseshare-proto/build.rs",
    ] {
        assert!(files.iter().any(|f| f == needed), "{needed} not sent");
    }
    assert!(files.iter().any(|f| f.starts_with("proto/")), "no protos");
    let allowed = |f: &str| {
        ["Cargo.toml", "Cargo.lock", ".dockerignore"].contains(&f)
            || ["crates/", "proto/"].iter().any(|p| f.starts_with(p))
            || ["deploy/Dockerfile", "deploy/caseshare.toml"].contains(&f)
            || ["target/release/caseshare", "target/debug/caseshare"].contains(&f)
    };
    let extra: Vec<&String> = files.iter().filter(|f| !allowed(f)).collect();
    assert!(extra.is_empty(), "sent but not needed: {extra:#?}");
    assert!(
        !files.iter().any(|f| f.contains("/target/")),
        "build output under crates/ was sent"
    );
}
