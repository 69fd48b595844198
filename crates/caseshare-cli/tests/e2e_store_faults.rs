//! Storage faults with the real binary (issue 13, findings 1–4): a broker
//! holding ~1,000 acknowledged events is stopped cleanly (SIGTERM), one of
//! its files is damaged, and it is started again. Each test asserts that
//! the broker either recovers with every acknowledged event (a retry of
//! each is answered `duplicate` with its original sequence) or refuses to
//! start with one message naming the file, leaving every byte as it was;
//! and that `caseshare check` exits 1 on the damaged directory and 0 on a
//! healthy one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use caseshare_proto::v1 as pb;
use caseshare_testkit::*;

/// Small segments, so that ~1,000 events seal several (with `.ids` files).
const ENV: &[(&str, &str)] = &[("CASESHARE_STORE_SEGMENT_KIB", "64")];
const EVENTS: usize = 1_000;

/// Publishes `ids` on one PublishStream; the responses in order.
async fn publish_all(b: &Broker, ids: &[String]) -> Vec<pb::PublishResponse> {
    let mut school = b.client("school-b");
    let (tx, rx) = tokio::sync::mpsc::channel(ids.len().max(1));
    let mut responses = school
        .publisher
        .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for id in ids {
        tx.send(publish_request(attendance_event(id, CHILD_1)))
            .await
            .unwrap();
    }
    let mut out = Vec::with_capacity(ids.len());
    for _ in ids {
        out.push(responses.message().await.unwrap().unwrap());
    }
    out
}

/// A stopped broker's directory holding `EVENTS` acknowledged events:
/// (directory, event ids, their sequences).
async fn filled() -> (tempfile::TempDir, Vec<String>, Vec<u64>) {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = Broker::start_in(tmp.path(), ENV);
    b.register_sample_agencies().await;
    put_agreement(
        &b,
        agreement(
            "isa-edu-sc",
            "school-b",
            "la-social-care-c",
            &["education.*"],
        ),
    )
    .await;
    let ids: Vec<String> = (0..EVENTS).map(|i| format!("f-{i}")).collect();
    // In rounds, so that there are many batches and several segments.
    let mut responses = Vec::new();
    for round in ids.chunks(EVENTS / 10) {
        responses.extend(publish_all(&b, round).await);
    }
    assert!(responses.iter().all(|r| !r.duplicate));
    let seqs = responses.iter().map(|r| r.sequence).collect();
    // Let the checkpoint task persist a checkpoint of the final size.
    let mut auditor = b.client("auditor");
    auditor
        .audit
        .get_checkpoint(pb::GetCheckpointRequest::default())
        .await
        .unwrap();
    let cp = b.data().join("store").join("checkpoint");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !cp.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint persisted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(b.stop().await.success());
    (tmp, ids, seqs)
}

/// Every acknowledged event is still there: a retry of each is a duplicate
/// answered with its original sequence.
async fn assert_all_events_kept(b: &Broker, ids: &[String], seqs: &[u64]) {
    let again = publish_all(b, ids).await;
    for ((r, id), seq) in again.iter().zip(ids).zip(seqs) {
        assert!(r.duplicate, "{id} was accepted as a new event");
        assert_eq!(r.sequence, *seq, "{id}");
    }
}

fn store(tmp: &Path) -> PathBuf {
    tmp.join("data").join("store")
}

fn flip(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x5a;
    std::fs::write(path, bytes).unwrap();
}

fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    v
}

/// Starts the broker on a damaged directory: either it refuses (one clear
/// message naming `file`, non-zero exit, nothing changed) or it starts with
/// every event. Returns whether it refused.
async fn restart_refuses_or_keeps_everything(
    tmp: &Path,
    file: &str,
    ids: &[String],
    seqs: &[u64],
) -> bool {
    let before = dir_contents(&store(tmp));
    match Broker::try_start_in(tmp, ENV, &[]) {
        Err(refused) => {
            let error = refusal_message(&refused);
            assert!(error.contains(file), "names {file}: {error}");
            assert!(error.contains("is damaged"), "{error}");
            assert!(error.contains("caseshare check"), "{error}");
            let after = dir_contents(&store(tmp));
            assert_eq!(
                after.keys().collect::<Vec<_>>(),
                before.keys().collect::<Vec<_>>()
            );
            for (path, bytes) in &before {
                assert!(after[path] == *bytes, "{} changed", path.display());
            }
            true
        }
        Ok(mut b) => {
            assert_all_events_kept(&b, ids, seqs).await;
            assert!(b.stop().await.success());
            false
        }
    }
}

#[tokio::test]
async fn a_byte_flipped_in_the_middle_of_sled_never_loses_events_silently() {
    let (tmp, ids, seqs) = filled().await;
    let db = store(tmp.path()).join("db");
    let len = std::fs::metadata(&db).unwrap().len() as usize;
    println!("flipping sled db byte {} of {len}", len / 2);
    flip(&db, len / 2);
    let (code, report) = caseshare_check(&tmp.path().join("data"), false);
    println!("{report}");
    let refused = restart_refuses_or_keeps_everything(tmp.path(), "db", &ids, &seqs).await;
    // Sled recovers a damaged byte as lost writes. Once that made the
    // broker cut the event log to match; then it was a refusal; now the
    // write-ahead log (all of this young store's frames are still there)
    // gives them back, checked against its digest, and `check`, which
    // does the same on its copy, agrees with the broker either way.
    if refused {
        assert_eq!(code, 1, "{report}");
        assert!(report.contains("DAMAGED"), "{report}");
    } else {
        assert_eq!(code, 0, "the broker started but check says: {report}");
    }
}

#[tokio::test]
async fn a_checksum_failure_mid_segment_is_refused_and_nothing_is_cut() {
    let (tmp, ids, seqs) = filled().await;
    let segments = files_with_ext(&store(tmp.path()).join("events"), "seg");
    assert!(segments.len() >= 3, "{segments:?}");
    // The middle of the first segment and of the last one.
    for seg in [&segments[0], &segments[segments.len() - 1]] {
        let len = std::fs::metadata(seg).unwrap().len() as usize;
        flip(seg, len / 2);
        let (code, report) = caseshare_check(&tmp.path().join("data"), false);
        assert_eq!(code, 1, "{report}");
        let name = seg.file_name().unwrap().to_str().unwrap();
        assert!(
            report
                .lines()
                .any(|l| l.starts_with("DAMAGED") && l.contains(name)),
            "{report}"
        );
        assert!(
            restart_refuses_or_keeps_everything(tmp.path(), name, &ids, &seqs).await,
            "a committed event is damaged: the broker must refuse"
        );
        flip(seg, len / 2);
    }
    // Repaired (the byte put back), everything is there.
    assert_eq!(caseshare_check(&tmp.path().join("data"), false).0, 0);
    assert!(!restart_refuses_or_keeps_everything(tmp.path(), "", &ids, &seqs).await);
}

#[tokio::test]
async fn a_byte_flipped_in_an_ids_file_is_rebuilt_and_a_retry_is_still_a_duplicate() {
    let (tmp, ids, seqs) = filled().await;
    let events = store(tmp.path()).join("events");
    let id_files = files_with_ext(&events, "ids");
    assert!(!id_files.is_empty(), "sealed segments have .ids files");
    let target = &id_files[0];
    let len = std::fs::metadata(target).unwrap().len() as usize;
    flip(target, len / 2);
    let (code, report) = caseshare_check(&tmp.path().join("data"), false);
    assert_eq!(code, 1, "{report}");
    let mut b = Broker::start_in(tmp.path(), ENV);
    assert_all_events_kept(&b, &ids, &seqs).await;
    assert!(b.stop().await.success());
    let mut aside = target.clone().into_os_string();
    aside.push(".damaged-1");
    assert!(
        PathBuf::from(aside).exists(),
        "the damaged file is set aside"
    );
    let log = std::fs::read_to_string(tmp.path().join("broker.log")).unwrap();
    assert!(log.contains("rebuilding it from its segment"), "{log}");
    assert_eq!(caseshare_check(&tmp.path().join("data"), false).0, 0);
}

#[tokio::test]
async fn a_zero_byte_snapshot_left_by_a_full_disk_is_cleaned_up() {
    let (tmp, ids, seqs) = filled().await;
    let dir = store(tmp.path());
    // What sled leaves when the disk fills while it writes a snapshot at
    // open: a 0-byte `snap.<lsn>.generating`, which it reads next time.
    let generating = dir.join("snap.FFFFFFFFFFFFFFF0.generating");
    std::fs::write(&generating, b"").unwrap();
    let (code, report) = caseshare_check(&tmp.path().join("data"), false);
    assert_eq!(code, 1, "{report}");
    assert!(report.contains("generating"), "{report}");
    let mut b = Broker::start_in(tmp.path(), ENV);
    assert!(!generating.exists(), "the temporary is removed");
    assert_all_events_kept(&b, &ids, &seqs).await;
    assert!(b.stop().await.success());
    // A finished snapshot damaged (0 bytes): set aside, sled rebuilds it.
    let snaps: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("snap.")
        })
        .collect();
    assert!(!snaps.is_empty());
    let original = std::fs::read(&snaps[0]).unwrap();
    std::fs::write(&snaps[0], b"").unwrap();
    assert_eq!(caseshare_check(&tmp.path().join("data"), false).0, 1);
    let mut b = Broker::start_in(tmp.path(), ENV);
    assert_all_events_kept(&b, &ids, &seqs).await;
    assert!(b.stop().await.success());
    let name = snaps[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        dir.join("damaged")
            .join(format!("{name}.damaged-1"))
            .exists()
    );
    assert!(!original.is_empty());
    assert_eq!(caseshare_check(&tmp.path().join("data"), false).0, 0);
}

#[tokio::test]
async fn check_passes_on_a_healthy_directory_and_changes_nothing() {
    let (tmp, _, _) = filled().await;
    let data = tmp.path().join("data");
    let before = dir_contents(&data);
    let (code, report) = caseshare_check(&data, false);
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("all "), "{report}");
    for check in [
        "segment",
        "id index",
        "audit log",
        "audit checkpoint",
        "secret",
    ] {
        assert!(report.contains(check), "{check}: {report}");
    }
    let (code, json) = caseshare_check(&data, true);
    assert_eq!(code, 0);
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["ok"], true);
    assert!(doc["checks"].as_array().unwrap().len() > 10);
    assert_eq!(dir_contents(&data), before, "check is read-only");
    // A secret readable by others is reported.
    use std::os::unix::fs::PermissionsExt;
    let key = data.join("secrets").join("pseudonym.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, report) = caseshare_check(&data, false);
    assert_eq!(code, 1, "{report}");
    assert!(report.contains("pseudonym.key"), "{report}");
    // So is a changed byte in it (its check value no longer matches), as
    // the broker would refuse it at start.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(caseshare_check(&data, false).0, 0);
    let mut bytes = std::fs::read(&key).unwrap();
    bytes[3] ^= 0x01;
    std::fs::write(&key, &bytes).unwrap();
    let (code, report) = caseshare_check(&data, false);
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains("pseudonym.key is damaged: its check value does not match"),
        "{report}"
    );
}
