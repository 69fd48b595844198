//! The shipped compose files run for real (issue 17). The cluster file
//! (`deploy/compose/cluster.yaml`: three NATS JetStream nodes, two brokers)
//! is brought up from a temporary copy with the images built here (the
//! broker image from `deploy/Dockerfile` with `PREBUILT`, a NATS image
//! `FROM scratch` with the pinned `nats-server`; no registry) and the
//! secrets made by the shipped `make-secrets.sh` (NATS with mutual TLS on
//! its client and route ports, checked on every node's `/varz` and
//! `/routez`); a publisher (idempotent
//! retries across both brokers) and a consumer run through it while
//! `docker kill` takes out broker-1 (then `docker start`) and later the NATS
//! node leading the journal's stream (then `docker start`). It measures
//! the longest time without an acknowledged write after each kill
//! (at most 15 s), checks every acknowledged event was delivered, no event
//! id got two sequences, both brokers sign one audit log, and brings it
//! down (`down -v`). Then the single-node file: up, one publish and
//! subscribe, down. Needs Docker and docker-compose (fails saying so).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use caseshare_testkit::*;

/// The longest a kill may leave the cluster without an acknowledged write.
const MAX_GAP: Duration = Duration::from_secs(15);
/// How long a broker may take to become ready (first start, or restart).
const READY_WITHIN: Duration = Duration::from_secs(120);
/// One publish every this long.
const PACE: Duration = Duration::from_millis(50);

/// The two tests share the daemon and two cores: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The sample agencies, the agreement from school to social care and
/// social care's subscription `main`, over mutual TLS as admin and agency.
async fn share(e: &Endpoint) {
    e.school_shares_with_social_care().await;
}

/// Waits until the consumer has received `more` new sequences beyond
/// `from` (fails the test after `within`); gives the count then.
async fn progress(c: &Consumer, from: usize, more: usize, within: Duration, what: &str) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let n = c.received().len();
        if n >= from + more {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: only {} of {more} new deliveries within {} s",
            n - from,
            within.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One fault phase: a fresh publisher (`prefix`) across both brokers;
/// deliveries flowing; `fault()`; deliveries flowing again past it; then
/// `heal()` (start the container again, wait for it); deliveries after
/// that. Gives the publisher's report (its longest gap is the kill's).
async fn phase(
    c: &Compose,
    consumer: &Consumer,
    prefix: &str,
    fault: impl FnOnce(),
    heal: impl FnOnce() -> Duration,
) -> (PublishReport, Duration) {
    let publisher = Publisher::start(c.endpoints(), prefix, PACE);
    let n = consumer.received().len();
    let n = progress(consumer, n, 20, Duration::from_secs(30), "before the kill").await;
    fault();
    let n = progress(consumer, n, 40, Duration::from_secs(60), "after the kill").await;
    let back = heal();
    progress(
        consumer,
        n,
        20,
        Duration::from_secs(30),
        "after the restart",
    )
    .await;
    (publisher.finish().await, back)
}

/// The cluster file's NATS runs TLS on both ports (nats.conf): each
/// node's `/varz` says clients and routes must use TLS with a verified
/// certificate, and its routes to the other two nodes are up (formed over
/// that TLS). The brokers being ready means their journal connections are
/// too.
fn assert_nats_tls(c: &Compose) {
    for node in ["nats-1", "nats-2", "nats-3"] {
        let varz = c
            .nats_monitor(node, "/varz")
            .unwrap_or_else(|| panic!("{node}: no /varz"));
        let on = |v: &serde_json::Value, k: &str| v.get(k).and_then(|b| b.as_bool()) == Some(true);
        assert!(
            on(&varz, "tls_required") && on(&varz, "tls_verify"),
            "{node}: client TLS off: {varz}"
        );
        let cluster = &varz["cluster"];
        assert!(
            on(cluster, "tls_required") && on(cluster, "tls_verify"),
            "{node}: route TLS off: {cluster}"
        );
        let routez = c
            .nats_monitor(node, "/routez")
            .unwrap_or_else(|| panic!("{node}: no /routez"));
        let peers: std::collections::BTreeSet<&str> = routez["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["remote_name"].as_str())
            .collect();
        assert_eq!(peers.len(), 2, "{node}: routes to {peers:?}");
    }
    println!("NATS: client and route TLS required and verified on all three nodes, routes up");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_compose_cluster_survives_a_broker_and_a_nats_kill() {
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    println!("{}", require_docker_compose());
    let image = ContainerImage::build(&caseshare_bin());
    let nats = NatsImage::build();
    println!(
        "images {} and {} built in {:.1} s",
        image.tag,
        nats.tag,
        t0.elapsed().as_secs_f64()
    );
    let c = Compose::cluster(&image, &nats);
    println!(
        "project {}: make-secrets.sh {:.1} s, docker-compose up -d {:.1} s",
        c.project,
        c.secrets_time.as_secs_f64(),
        c.up_time.as_secs_f64()
    );
    for i in 0..c.brokers.len() {
        let t = c.wait_ready(i, READY_WITHIN);
        println!(
            "{} ready after {:.1} s more",
            c.brokers[i].service,
            t.as_secs_f64()
        );
    }
    assert_nats_tls(&c);
    share(&c.endpoint(0)).await;
    let consumer = Consumer::start(c.endpoints(), SOCIAL_CARE, "main");

    // A broker: docker kill broker-1, then docker start it again.
    let (broker_kill, broker_back) = phase(
        &c,
        &consumer,
        "k-broker",
        || c.kill("broker-1"),
        || {
            let started = Instant::now();
            c.start("broker-1");
            c.wait_ready(0, READY_WITHIN);
            started.elapsed()
        },
    )
    .await;
    println!(
        "docker kill broker-1: longest time without an acknowledged write {:.2} s \
         ({} acknowledged, {} retries); ready {:.1} s after docker start",
        broker_kill.longest_gap.as_secs_f64(),
        broker_kill.acked.len(),
        broker_kill.retries,
        broker_back.as_secs_f64()
    );

    // A NATS node: the journal's stream leader (nats-1 if none is named).
    let leader = c
        .stream_leader("nats-2")
        .or_else(|| c.stream_leader("nats-3"))
        .unwrap_or_else(|| "nats-1".to_string());
    let (nats_kill, nats_back) = phase(
        &c,
        &consumer,
        "k-nats",
        || c.kill(&leader),
        || {
            let started = Instant::now();
            c.start(&leader);
            let deadline = Instant::now() + Duration::from_secs(60);
            while !c.nats_healthy(&leader) {
                assert!(Instant::now() < deadline, "{leader} not healthy again");
                std::thread::sleep(Duration::from_millis(200));
            }
            started.elapsed()
        },
    )
    .await;
    let new_leader = c.stream_leader("nats-1").unwrap_or_default();
    println!(
        "docker kill {leader} (the journal's stream leader): longest time without an \
         acknowledged write {:.2} s ({} acknowledged, {} retries); healthy {:.1} s after \
         docker start; stream leader now {new_leader}",
        nats_kill.longest_gap.as_secs_f64(),
        nats_kill.acked.len(),
        nats_kill.retries,
        nats_back.as_secs_f64()
    );

    // Nothing acknowledged lost, no id with two sequences, no sequence for
    // two ids.
    let mut by_seq: BTreeMap<u64, &String> = BTreeMap::new();
    for report in [&broker_kill, &nats_kill] {
        assert!(
            report.forked.is_empty(),
            "ids with two sequences: {:?}",
            report.forked
        );
        for (id, seq) in &report.acked {
            if let Some(other) = by_seq.insert(*seq, id) {
                panic!("sequence {seq} acknowledged for {other} and {id}");
            }
        }
    }
    let consumed = consumer
        .until_all(by_seq.keys().copied(), Duration::from_secs(60))
        .await;
    println!(
        "{} acknowledged events all delivered ({} deliveries, stream reopened {} times)",
        by_seq.len(),
        consumed.received.values().sum::<u32>(),
        consumed.reopened
    );
    let (a, b) = assert_one_log(&c.endpoint(0), &c.endpoint(1)).await;
    println!(
        "one audit log: checkpoints of size {} and {} consistent",
        a.tree_size, b.tree_size
    );
    let mut c = c;
    let down = c.down();
    println!("docker-compose down -v {:.1} s", down.as_secs_f64());
    assert!(
        broker_kill.longest_gap <= MAX_GAP,
        "broker kill: {:?} without an acknowledged write",
        broker_kill.longest_gap
    );
    assert!(
        nats_kill.longest_gap <= MAX_GAP,
        "NATS kill: {:?} without an acknowledged write",
        nats_kill.longest_gap
    );
    drop(c);
    drop(nats);
    drop(image);
    println!(
        "compose cluster test took {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

/// `make-secrets.sh` with no `caseshare` on the host runs the image's
/// (`docker run --user <you>`): `dev-pki --nats-host …` and `keygen` write
/// every file, the keys mode 0600.
fn secrets_from_the_image(image: &ContainerImage) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("secrets");
    let run = std::process::Command::new("bash")
        .arg(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../deploy/compose/make-secrets.sh"),
        )
        .arg(&out)
        .env_remove("CASESHARE_BIN")
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("CASESHARE_IMAGE", &image.tag)
        .env("CASESHARE_CHOWN", "0")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "make-secrets.sh with the image: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    for f in [
        "pki/ca.pem",
        "pki/server.key",
        "pki/nats.pem",
        "pki/nats.key",
        "pki/nats-client.key",
        "keys/checkpoint.skey",
        "keys/pseudonym.key",
    ] {
        let meta = std::fs::metadata(out.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        if f.ends_with("key") {
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{f}");
        }
    }
    println!("make-secrets.sh with the image's caseshare: every file made");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_compose_single_node_serves_and_comes_down() {
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    require_docker_compose();
    let image = ContainerImage::build(&caseshare_bin());
    let mut c = Compose::single(&image);
    let ready = c.wait_ready(0, READY_WITHIN);
    let e = c.endpoint(0);
    share(&e).await;
    let r = e
        .client(SCHOOL)
        .publisher
        .publish(publish_request(attendance_event("single-1", CHILD_1)))
        .await
        .unwrap()
        .into_inner();
    let mut sub = Subscription::try_open_at(&e, SOCIAL_CARE, "main", 10)
        .await
        .unwrap();
    let d = sub.next().await;
    assert_eq!((d.sequence, d.source_agency.as_str()), (r.sequence, SCHOOL));
    sub.ack(vec![d.delivery_id]).await;
    let healthy = c.wait_healthy("caseshare", READY_WITHIN);
    let down = c.down();
    secrets_from_the_image(&image);
    let volumes = std::process::Command::new("docker")
        .args(["volume", "ls", "-q", "--filter"])
        .arg(format!("name={}_", c.project))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&volumes.stdout).trim().is_empty(),
        "volumes left after down -v"
    );
    println!(
        "single node: ready {:.1} s after up, healthy by docker's check {:.1} s later, \
         published and delivered sequence {}, down -v {:.1} s; test {:.1} s",
        ready.as_secs_f64(),
        healthy.as_secs_f64(),
        r.sequence,
        down.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}
