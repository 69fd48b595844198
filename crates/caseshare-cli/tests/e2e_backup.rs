//! The backup and restore drill, end to end: `caseshare backup` of a
//! broker that keeps taking writes, the broker destroyed, `caseshare
//! restore` into a new data directory, and the restored broker checked:
//! every event acknowledged before the backup is there (and nothing after
//! the manifest's last sequence), acknowledged deliveries stay settled,
//! and its audit log is consistent with the last checkpoint handed out
//! before the backup. Also: the backup holds no payload or NHS number in
//! the clear, only the admin may take one, and a restore with the wrong
//! key, into a used directory or from a damaged backup is refused and
//! writes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use caseshare_proto::v1 as pb;
use caseshare_testkit::*;

const SUMMARY: &str = "Attendance has fallen sharply this half term";

fn conn_args(b: &Broker, identity: &str) -> Vec<String> {
    let pki = b.pki();
    let p = |s: String| pki.join(s).display().to_string();
    vec![
        "--server".into(),
        format!("https://localhost:{}", b.grpc.port()),
        "--ca".into(),
        p("ca.pem".into()),
        "--cert".into(),
        p(format!("{identity}.pem")),
        "--key".into(),
        p(format!("{identity}.key")),
    ]
}

fn backup_cli(b: &Broker, identity: &str, out: &Path) -> Output {
    caseshare_command()
        .arg("backup")
        .args(conn_args(b, identity))
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

fn restore_cli(from: &Path, data_dir: &Path, key: Option<&Path>) -> Output {
    let mut c = caseshare_command();
    c.arg("restore")
        .arg("--from")
        .arg(from)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("CASESHARE_PSEUDONYM_KEY");
    if let Some(k) = key {
        c.arg("--pseudonym-key").arg(k);
    }
    c.output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(out: &Output) -> String {
    assert!(!out.status.success(), "expected a refusal: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn contains(dir: &Path, needle: &[u8]) -> bool {
    files(dir).iter().any(|f| {
        std::fs::read(f)
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle)
    })
}

/// The event's status for social care, or `None` if the broker has no such event.
async fn social_care_state(b: &Broker, id: &str) -> Option<i32> {
    let status = b
        .client(SCHOOL)
        .publisher
        .get_event_status(pb::GetEventStatusRequest {
            event_id: id.into(),
        })
        .await
        .ok()?
        .into_inner();
    status
        .recipients
        .iter()
        .find(|r| r.agency_id == SOCIAL_CARE)
        .map(|r| r.state)
}

const ACKED: i32 = pb::recipient_status::State::Acked as i32;

async fn checkpoint(b: &Broker) -> pb::Checkpoint {
    b.client(AUDITOR)
        .audit
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// The manifest's last sequence, from the restore's summary line.
fn last_sequence_in(summary: &str) -> u64 {
    let tail = summary
        .split("events up to sequence ")
        .nth(1)
        .unwrap_or_else(|| panic!("no sequence in {summary:?}"));
    tail.split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_backed_up_while_writing_is_destroyed_restored_and_verified() {
    let tmp = tempfile::tempdir().unwrap();
    let old_dir = tmp.path().join("old");
    std::fs::create_dir_all(&old_dir).unwrap();
    let mut old = Broker::builder()
        .topology(Topology::Single)
        .dir(&old_dir)
        .start();
    old.school_shares_with_social_care().await;
    // 30 events; social care acknowledges the first 12.
    let mut published = Vec::new();
    for i in 0..30 {
        published.push(publish_id(&old, &format!("e-{i}"), CHILD_1).await);
    }
    let mut sub = Subscription::open(&old, SOCIAL_CARE, "main", 12).await;
    let mut acked = BTreeSet::new();
    while acked.len() < 12 {
        let d = sub.next().await;
        if d.sequence <= published[11] {
            acked.insert(d.sequence);
            sub.ack(vec![d.delivery_id]).await;
        }
    }
    // The acks are stored once the event's status says so.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for i in 0..12 {
        while social_care_state(&old, &format!("e-{i}")).await != Some(ACKED) {
            assert!(
                std::time::Instant::now() < deadline,
                "e-{i} not acknowledged"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    drop(sub);
    let before = checkpoint(&old).await;
    // The store in the clear holds the summary (so the check below could fail).
    assert!(contains(&old_dir.join("data/store"), SUMMARY.as_bytes()));

    // Only the admin may take a backup.
    let backup = tmp.path().join("backup-1");
    for who in [SCHOOL, AUDITOR] {
        let err = refused(&backup_cli(&old, who, &backup));
        assert!(err.contains("PermissionDenied"), "{who}: {err}");
        assert!(!backup.exists());
    }

    // The backup is taken while the school keeps publishing.
    let load = Publisher::start(vec![old.endpoint()], "during", Duration::from_millis(5));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let summary = ok(&backup_cli(&old, ADMIN, &backup));
    println!("{summary}");
    let during = load.finish().await;
    assert!(
        !during.acked.is_empty(),
        "nothing was published during the backup"
    );
    // A second backup into the same folder is refused; nothing is changed.
    let again = refused(&backup_cli(&old, ADMIN, &backup));
    assert!(again.contains("exists"), "{again}");
    assert!(backup.join("MANIFEST.pb").exists());
    assert!(backup.join("MANIFEST.json").exists());
    assert!(!contains(&backup, SUMMARY.as_bytes()));
    assert!(!contains(&backup, CHILD_1.as_bytes()));

    // Destroyed: the operator keeps the keys and TLS files (as Secrets or
    // files, never in the backup); everything else is gone.
    assert!(old.stop().await.success());
    let keys = tmp.path().join("keys");
    copy_dir(&old_dir.join("data/pki"), &keys.join("pki"));
    copy_dir(&old_dir.join("data/secrets"), &keys.join("secrets"));
    std::fs::remove_dir_all(&old_dir).unwrap();

    // Refusals first: each writes nothing.
    let new_dir = tmp.path().join("new");
    let data = new_dir.join("data");
    let wrong_key = tmp.path().join("wrong.key");
    std::fs::write(&wrong_key, [7u8; 32]).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrong_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = refused(&restore_cli(&backup, &data, Some(&wrong_key)));
    assert!(err.contains("not the key of the broker"), "{err}");
    assert!(!data.join("store").exists());
    let damaged = tmp.path().join("damaged");
    copy_dir(&backup, &damaged);
    let db = damaged.join("store/db");
    let mut bytes = std::fs::read(&db).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&db, bytes).unwrap();
    let err = refused(&restore_cli(
        &damaged,
        &data,
        Some(&keys.join("secrets/pseudonym.key")),
    ));
    assert!(err.contains(&db.display().to_string()), "{err}");
    assert!(!data.join("store").exists());

    // The restore: the keys go back in place, then the store.
    copy_dir(&keys.join("pki"), &data.join("pki"));
    copy_dir(&keys.join("secrets"), &data.join("secrets"));
    let restored = ok(&restore_cli(&backup, &data, None));
    println!("{restored}");
    let last = last_sequence_in(&restored);
    let err = refused(&restore_cli(&backup, &data, None));
    assert!(err.contains("already holds a store"), "{err}");

    let new = Broker::builder()
        .topology(Topology::Single)
        .dir(&new_dir)
        .start();
    // Every event acknowledged before the backup is there; those
    // published during it are there up to the manifest's last sequence.
    assert!(last >= published[29]);
    let during_seqs: BTreeSet<u64> = during.acked.values().copied().collect();
    assert!(
        during_seqs.iter().any(|s| *s <= last),
        "none of the writes during the backup made it in"
    );
    let ids = (0..30)
        .map(|i| (format!("e-{i}"), published[i]))
        .chain(during.acked.iter().map(|(id, s)| (id.clone(), *s)));
    for (id, seq) in ids {
        let state = social_care_state(&new, &id).await;
        assert_eq!(
            state.is_some(),
            seq <= last,
            "{id} (sequence {seq}): {state:?}"
        );
        if acked.contains(&seq) {
            assert_eq!(state, Some(ACKED), "{id}");
        }
    }
    // The backup is in the log it copied: once, by the admin, under its id.
    let manifest = {
        use prost::Message;
        pb::BackupManifest::decode(
            std::fs::read(backup.join("MANIFEST.pb"))
                .unwrap()
                .as_slice(),
        )
        .unwrap()
    };
    let taken: Vec<pb::AuditEntry> = new
        .audit_entries()
        .await
        .into_iter()
        .filter(|e| e.kind == pb::EntryKind::BackupTaken as i32)
        .collect();
    assert_eq!(taken.len(), 1, "{taken:?}");
    assert!(taken[0].actor.ends_with("/admin"), "{:?}", taken[0].actor);
    assert_eq!(
        taken[0].subject,
        format!("backup {}", hex::encode(&manifest.backup_id))
    );
    assert_eq!(manifest.last_sequence, last);
    // Deliveries: what was acknowledged stays settled; the rest is owed.
    let mut sub = Subscription::open(&new, SOCIAL_CARE, "main", 100).await;
    let want: BTreeSet<u64> = (published[0]..=last)
        .filter(|s| !acked.contains(s))
        .collect();
    let mut got = BTreeSet::new();
    while got.len() < want.len() {
        let d = sub.next().await;
        got.insert(d.sequence);
    }
    assert_eq!(got, want);
    // The restored log is consistent with the checkpoint handed out before.
    assert_extends(&new.endpoint(), &before).await;
}

/// The school publishes an attendance concern about `nhs`; gives its sequence.
async fn publish_id(b: &Broker, id: &str, nhs: &str) -> u64 {
    b.client(SCHOOL)
        .publisher
        .publish(publish_request(attendance_event(id, nhs)))
        .await
        .unwrap()
        .into_inner()
        .sequence
}

/// The cluster drill: a backup taken through one replica while both take
/// writes holds every write acknowledged through the other before the
/// call; then the whole cluster — brokers, NATS nodes and their storage —
/// is lost, and the backup, restored with `--detach` and migrated into a
/// new NATS cluster, serves again with every event up to the manifest's
/// last sequence and a log consistent with the checkpoint handed out
/// before the backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_is_lost_whole_and_restored_from_a_replica_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = BrokerCluster::start(2).await;
    cluster.broker(0).school_shares_with_social_care().await;
    let mut ids: Vec<(String, u64)> = Vec::new();
    for i in 0..20 {
        let id = format!("c-{i}");
        let seq = publish_id(cluster.broker(i % 2), &id, CHILD_2).await;
        ids.push((id, seq));
    }
    let before = checkpoint(cluster.broker(1)).await;
    let load = Publisher::start(
        vec![cluster.broker(0).endpoint(), cluster.broker(1).endpoint()],
        "during",
        Duration::from_millis(5),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Acknowledged through replica 0 just before the backup through
    // replica 1: the backup must hold it.
    let just_before = publish_id(cluster.broker(0), "just-before", CHILD_2).await;
    let backup = tmp.path().join("cluster-backup");
    let summary = ok(&backup_cli(cluster.broker(1), ADMIN, &backup));
    println!("{summary}");
    assert!(summary.contains("journal position"), "{summary}");
    let during = load.finish().await;
    assert!(!during.acked.is_empty());
    assert!(!contains(&backup, SUMMARY.as_bytes()));

    // Lost whole: the operator keeps only the keys, TLS files and backup.
    let keys = tmp.path().join("keys");
    let first = cluster.replica_dir(0).join("data");
    copy_dir(&first.join("pki"), &keys.join("pki"));
    copy_dir(&first.join("secrets"), &keys.join("secrets"));
    let old_nats_dir = cluster.nats.dir().to_path_buf();
    drop(cluster);
    assert!(!old_nats_dir.exists(), "the old NATS storage is gone");

    let nats = NatsCluster::start(3).await;
    let servers = nats.urls().join(",");
    let new_dir = tmp.path().join("restored");
    let data = new_dir.join("data");
    copy_dir(&keys.join("pki"), &data.join("pki"));
    copy_dir(&keys.join("secrets"), &data.join("secrets"));
    let mut restore = caseshare_command();
    restore
        .args(["restore", "--detach", "--from"])
        .arg(&backup)
        .arg("--data-dir")
        .arg(&data)
        .env_remove("CASESHARE_PSEUDONYM_KEY");
    let restored = ok(&restore.output().unwrap());
    println!("{restored}");
    assert!(restored.contains("detached"), "{restored}");
    let last = last_sequence_in(&restored);
    let migrated = ok(&caseshare_command()
        .args(["migrate", "--from"])
        .arg(&data)
        .args(["--nats-servers", &servers])
        .output()
        .unwrap());
    println!("{migrated}");
    let env = [
        ("CASESHARE_STORE_BACKEND", "nats"),
        ("CASESHARE_NATS_SERVERS", servers.as_str()),
    ];
    let new = Broker::builder()
        .topology(Topology::Single)
        .dir(&new_dir)
        .envs(&env)
        .start();
    assert!(
        last >= just_before,
        "the backup missed a write acknowledged before it"
    );
    let all = ids
        .into_iter()
        .chain([("just-before".to_string(), just_before)])
        .chain(during.acked.iter().map(|(id, s)| (id.clone(), *s)));
    for (id, seq) in all {
        let state = social_care_state(&new, &id).await;
        assert_eq!(
            state.is_some(),
            seq <= last,
            "{id} (sequence {seq}): {state:?}"
        );
    }
    // The new cluster takes writes, continuing the sequence.
    assert_eq!(publish_id(&new, "after-restore", CHILD_2).await, last + 1);
    assert_extends(&new.endpoint(), &before).await;
}

fn stages(data: &Path) -> Vec<String> {
    std::fs::read_dir(data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".backup-stage-"))
        .collect()
}

/// One backup at a time: a second call while one streams is refused
/// `RESOURCE_EXHAUSTED` at once; when the first caller goes away its
/// staged copy is removed and the next backup is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_backup_at_a_time_and_an_abandoned_one_is_cleaned_up() {
    let b = Broker::builder().topology(Topology::Single).start();
    b.school_shares_with_social_care().await;
    // A store well past what the connection buffers (HTTP/2 windows, the
    // sockets, the four chunks queued): a caller that does not read holds
    // its backup open.
    const N: usize = 20_000;
    let mut school = b.client(SCHOOL);
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let mut responses = school
        .publisher
        .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let feeder = tokio::spawn(async move {
        for i in 0..N {
            let e = attendance_event(&format!("o-{i}"), CHILD_1);
            tx.send(publish_request(e)).await.unwrap();
        }
    });
    for _ in 0..N {
        responses.message().await.unwrap().unwrap();
    }
    feeder.await.unwrap();
    let store_bytes: u64 = files(&b.data().join("store"))
        .iter()
        .map(|f| f.metadata().unwrap().len())
        .sum();
    println!("store: {store_bytes} bytes");
    let mut admin = b.client(ADMIN);
    let first = admin
        .admin
        .backup(pb::BackupRequest {})
        .await
        .unwrap_or_else(|s| panic!("{s:?}; log:\n{}", b.log_tail(40)))
        .into_inner();
    assert_eq!(stages(&b.data()).len(), 1, "the first backup is staged");
    let second = b.client(ADMIN).admin.backup(pb::BackupRequest {}).await;
    let status = second.expect_err("a second backup is refused");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    drop(first);
    drop(admin);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // The client stays alive while its stream is read.
    let mut admin = b.client(ADMIN);
    let mut third = loop {
        match admin.admin.backup(pb::BackupRequest {}).await {
            Ok(s) => break s.into_inner(),
            Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the slot was never freed"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => panic!("{s:?}"),
        }
    };
    let mut manifest = None;
    while let Some(part) = tokio_stream::StreamExt::next(&mut third).await {
        if let Some(pb::backup_chunk::Part::Manifest(m)) = part.unwrap().part {
            manifest = Some(m);
        }
    }
    let manifest = manifest.unwrap_or_else(|| panic!("no manifest; log:\n{}", b.log_tail(30)));
    assert_eq!(manifest.last_sequence, N as u64);
    println!(
        "backup of {N} events: writes paused {:.1} ms",
        manifest.paused_micros as f64 / 1000.0
    );
    // The stream is over: no staged copy is left behind.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !stages(&b.data()).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            stages(&b.data())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
