//! The verifiable log end to end: checkpoints and inclusion proofs checked
//! independently of our crates, `caseshare audit verify` catching an altered
//! entry and a rolled-back log, subject access reports, auditor calls logged
//! as AUDIT_ACCESSED, and no raw NHS number or payload text in any leaf.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine;
use caseshare_proto::v1 as pb;
use caseshare_testkit::*;
use sha2::{Digest, Sha256};

/// RFC 9162 §2.1.3.2, written out here so the check does not depend on
/// caseshare-audit.
fn root_from_inclusion(leaf: &[u8], index: u64, size: u64, proof: &[Vec<u8>]) -> Vec<u8> {
    let node = |l: &[u8], r: &[u8]| {
        Sha256::new()
            .chain_update([1u8])
            .chain_update(l)
            .chain_update(r)
            .finalize()
            .to_vec()
    };
    let mut hash = Sha256::new()
        .chain_update([0u8])
        .chain_update(leaf)
        .finalize()
        .to_vec();
    let (mut fn_, mut sn) = (index, size - 1);
    for p in proof {
        assert!(sn != 0, "proof too long");
        if fn_ & 1 == 1 || fn_ == sn {
            hash = node(p, &hash);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            hash = node(&hash, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    assert_eq!(sn, 0, "proof too short");
    hash
}

/// Checks a C2SP signed note's Ed25519 signature with ed25519-dalek directly.
fn check_note(note: &str, vkey: &str) -> String {
    let mut parts = vkey.splitn(3, '+');
    let (name, id_hex, key_b64) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let key = base64::engine::general_purpose::STANDARD
        .decode(key_b64)
        .unwrap();
    assert_eq!(key[0], 1, "Ed25519 key type");
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&key[1..33].try_into().unwrap()).unwrap();
    let (text, sigs) = note.split_at(note.rfind("\n\n").unwrap() + 1);
    let line = sigs
        .trim_start_matches('\n')
        .lines()
        .find(|l| l.starts_with(&format!("\u{2014} {name} ")))
        .unwrap();
    let sig = base64::engine::general_purpose::STANDARD
        .decode(line.rsplit(' ').next().unwrap())
        .unwrap();
    assert_eq!(hex::encode(&sig[..4]), id_hex);
    let sig = ed25519_dalek::Signature::from_slice(&sig[4..]).unwrap();
    vk.verify_strict(text.as_bytes(), &sig)
        .expect("checkpoint signature verifies");
    text.to_string()
}

async fn scenario(b: &Broker) {
    b.register_sample_agencies().await;
    let mut a = agreement(
        "isa-edu-sc",
        "school-b",
        "la-social-care-c",
        &["education.*"],
    );
    a.requires_consent = true;
    put_agreement(b, a).await;
    create_subscription(b, "la-social-care-c", "main").await;
    create_subscription(b, "nhs-trust-a", "main").await;
    b.client("school-b")
        .consent
        .record_consent(pb::ConsentRecord {
            consent_id: "consent-1".into(),
            nhs_number: CHILD_1.into(),
            given_by: pb::GivenBy::Parent as i32,
            purposes: vec![pb::Purpose::EarlyHelp as i32],
            recipients: vec!["kind:social_care".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let mut school = b.client("school-b");
    for i in 0..5 {
        school
            .publisher
            .publish(publish_request(attendance_event(
                &format!("a-{i}"),
                CHILD_1,
            )))
            .await
            .unwrap();
    }
    let mut ov = attendance_event("override-1", CHILD_2);
    ov.purpose = pb::Purpose::Safeguarding as i32;
    school
        .publisher
        .publish(pb::PublishRequest {
            event: Some(ov),
            basis: Some(pb::SharingBasis {
                safeguarding_override: Some(pb::SafeguardingOverride {
                    legal_basis: pb::LegalBasis::ChildrenAct1989S47 as i32,
                    justification: "Child disclosed harm at home to the class teacher today".into(),
                    authorised_by: "DSL A. Patel".into(),
                }),
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut social = Subscription::open(b, "la-social-care-c", "main", 10).await;
    for _ in 0..6 {
        let d = social.next().await;
        social.ack(vec![d.delivery_id]).await;
    }
}

fn vkey_of(b: &Broker) -> String {
    // The verifier key is printed at start; read it from the key file the
    // operator would publish out of band instead of trusting the server.
    let skey = std::fs::read_to_string(b.data().join("secrets/checkpoint.skey")).unwrap();
    caseshare_audit::note::NoteSigner::from_skey(skey.trim())
        .unwrap()
        .verifier()
        .to_vkey()
}

#[tokio::test]
async fn checkpoint_and_inclusion_proof_verify_independently() {
    let b = Broker::start();
    scenario(&b).await;
    let mut auditor = b.client("auditor");
    let cp = auditor
        .audit
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await
        .unwrap()
        .into_inner();
    let text = check_note(&cp.note, &vkey_of(&b));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "caseshare.local/audit");
    assert_eq!(lines[1], cp.tree_size.to_string());
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(lines[2])
            .unwrap(),
        cp.root_hash
    );

    let entries = b.audit_entries().await;
    let chosen = entries
        .iter()
        .find(|e| e.kind == pb::EntryKind::ShareDecided as i32 && e.event_id == "a-3")
        .expect("a SHARE_DECIDED entry");
    let leaf = auditor
        .audit
        .get_entries(pb::GetEntriesRequest {
            start: chosen.index,
            end: chosen.index + 1,
        })
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap()
        .leaf;
    let proof = auditor
        .audit
        .get_inclusion_proof(pb::GetInclusionProofRequest {
            leaf_index: chosen.index,
            tree_size: cp.tree_size,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        root_from_inclusion(&leaf, chosen.index, cp.tree_size, &proof.hashes),
        cp.root_hash
    );
    // A proof for another leaf does not fit this one.
    let other = auditor
        .audit
        .get_inclusion_proof(pb::GetInclusionProofRequest {
            leaf_index: chosen.index + 1,
            tree_size: cp.tree_size,
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(
        root_from_inclusion(&leaf, chosen.index, cp.tree_size, &other.hashes),
        cp.root_hash
    );

    // Every auditor call was itself logged.
    let after = b.audit_entries().await;
    let accessed: Vec<&str> = after
        .iter()
        .filter(|e| e.kind == pb::EntryKind::AuditAccessed as i32)
        .map(|e| e.rpc.as_str())
        .collect();
    for rpc in [
        "/caseshare.v1.Audit/GetCheckpoint",
        "/caseshare.v1.Audit/GetInclusionProof",
        "/caseshare.v1.Audit/GetEntries",
    ] {
        assert!(accessed.contains(&rpc), "{rpc} not logged: {accessed:?}");
    }
    // Non-auditors may not read the log.
    let err = b
        .client("school-b")
        .audit
        .get_checkpoint(pb::GetCheckpointRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let err = b
        .client("admin")
        .audit
        .get_entries(pb::GetEntriesRequest { start: 0, end: 1 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    // No raw NHS number and no payload text in any leaf.
    let size = b.metric("caseshare_audit_size") as u64;
    let mut stream = auditor
        .audit
        .get_entries(pb::GetEntriesRequest {
            start: 0,
            end: size,
        })
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(leaf) = stream.message().await.unwrap() {
        for needle in [CHILD_1, CHILD_2, "Attendance has fallen", "2026-autumn-1"] {
            assert!(
                !leaf
                    .leaf
                    .windows(needle.len())
                    .any(|w| w == needle.as_bytes()),
                "{needle:?} in leaf {}",
                leaf.index
            );
        }
        n += 1;
    }
    assert_eq!(n, size);
}

#[tokio::test]
async fn subject_access_report_and_query() {
    let b = Broker::start();
    scenario(&b).await;
    let mut auditor = b.client("auditor");
    let report = auditor
        .audit
        .subject_access_report(pb::SubjectAccessReportRequest {
            nhs_number: CHILD_2.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let shared: Vec<_> = report
        .shares
        .iter()
        .filter(|s| s.to_agency == "la-social-care-c")
        .collect();
    assert_eq!(shared.len(), 1);
    let s = shared[0];
    assert_eq!(s.decision, pb::Decision::Shared as i32);
    assert_eq!(s.reason, "override");
    assert_eq!(s.event_type, "education.attendance_concern");
    assert_eq!(s.from_agency, "school-b");
    let o = s
        .safeguarding_override
        .as_ref()
        .expect("the override and its justification");
    assert!(o.justification.contains("disclosed harm"));
    assert_eq!(o.authorised_by, "DSL A. Patel");
    let withheld: Vec<_> = report
        .shares
        .iter()
        .filter(|s| s.to_agency == "nhs-trust-a")
        .collect();
    assert_eq!(withheld.len(), 1);
    assert_eq!(withheld[0].reason, "no_agreement");

    let child1 = auditor
        .audit
        .subject_access_report(pb::SubjectAccessReportRequest {
            nhs_number: CHILD_1.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        child1
            .shares
            .iter()
            .any(|s| s.consent_id == "consent-1" && s.reason == "consent")
    );
    assert!(child1.shares.iter().all(|s| s.event_id.starts_with("a-")));

    let err = auditor
        .audit
        .subject_access_report(pb::SubjectAccessReportRequest {
            nhs_number: "9434765918".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let mut q = auditor
        .audit
        .query(pb::QueryRequest {
            nhs_number: CHILD_1.into(),
            kinds: vec![pb::EntryKind::EventDelivered as i32],
            page_size: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut page = Vec::new();
    while let Some(e) = q.message().await.unwrap() {
        page.push(e);
    }
    assert_eq!(page.len(), 3);
    assert!(
        page.iter()
            .all(|e| e.kind == pb::EntryKind::EventDelivered as i32)
    );
    let next = (page[2].index + 1).to_string();
    let mut q = auditor
        .audit
        .query(pb::QueryRequest {
            nhs_number: CHILD_1.into(),
            kinds: vec![pb::EntryKind::EventDelivered as i32],
            page_token: next,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut rest = 0;
    while let Some(e) = q.message().await.unwrap() {
        assert!(e.index > page[2].index);
        rest += 1;
    }
    assert_eq!(rest, 2, "five deliveries for the child in all");
    let accessed = b
        .audit_entries()
        .await
        .into_iter()
        .filter(|e| {
            e.kind == pb::EntryKind::AuditAccessed as i32 && e.rpc.ends_with("SubjectAccessReport")
        })
        .count();
    assert_eq!(
        accessed, 2,
        "the refused report (invalid number) wrote nothing"
    );
}

fn verify_cli(b: &Broker, vkey: &str, state: &std::path::Path) -> std::process::Output {
    let pki = b.pki();
    caseshare_command()
        .args([
            "audit",
            "verify",
            "--server",
            &format!("https://localhost:{}", b.grpc.port()),
        ])
        .arg("--ca")
        .arg(pki.join("ca.pem"))
        .arg("--cert")
        .arg(pki.join("auditor.pem"))
        .arg("--key")
        .arg(pki.join("auditor.key"))
        .args(["--vkey", vkey])
        .arg("--state")
        .arg(state)
        .output()
        .unwrap()
}

/// Alters the first audit entry naming school-b in the audit log's files
/// (`school-b` becomes `school-x`) and makes its frame's checksum good
/// again, as an insider would; gives the file.
fn alter_an_entry(b: &Broker) -> std::path::PathBuf {
    use caseshare_store::segments::{BATCH_END, LEN_MASK, frame_crc};
    let dir = b.data().join("store").join(caseshare_store::audit_log::DIR);
    let path = dir.join(caseshare_store::audit_log::file_name(1));
    let mut bytes = std::fs::read(&path).unwrap();
    let mut at = 0;
    let mut altered = false;
    while at + 8 <= bytes.len() && !altered {
        let word = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let end = at + 8 + (word & LEN_MASK) as usize;
        if let Some(pos) = bytes[at + 8..end].windows(8).position(|w| w == b"school-b") {
            bytes[at + 8 + pos + 7] = b'x';
            let crc = frame_crc(&bytes[at + 8..end], word & BATCH_END != 0);
            bytes[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
            altered = true;
        }
        at = end;
    }
    assert!(altered, "a chunk naming school-b");
    std::fs::write(&path, bytes).unwrap();
    path
}

#[tokio::test]
async fn verify_catches_an_altered_entry() {
    let mut b = Broker::start();
    scenario(&b).await;
    // Past the first whole tile of leaf hashes (256 leaves): the entry
    // altered below is one of them, and the broker, which hashes only the
    // leaves after the last whole tile again at start, serves it.
    let mut school = b.client("school-b");
    let mut i = 0;
    while b.checkpoint().await.tree_size <= 300 {
        for _ in 0..20 {
            school
                .publisher
                .publish(publish_request(attendance_event(
                    &format!("more-{i}"),
                    CHILD_1,
                )))
                .await
                .unwrap();
            i += 1;
        }
    }
    let vkey = vkey_of(&b);
    let state = b.dir.join("verify-state.json");
    let ok = verify_cli(&b, &vkey, &state);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("verified:"));

    settle_the_wal(&mut b, "school-b").await;
    alter_an_entry(&b);
    b.restart();
    let out = verify_cli(&b, &vkey, &state);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not match the signed checkpoint"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one-line reason: {err}");
}

#[tokio::test]
async fn an_altered_entry_after_the_last_whole_tile_is_refused_at_start() {
    let mut b = Broker::start();
    scenario(&b).await;
    let size = b.checkpoint().await.tree_size;
    assert!(size < 256, "{size} entries: all after the last whole tile");
    assert!(b.stop().await.success());
    // While the WAL still holds the commit (about the last second), the
    // entry is found unlike the frame's copy of it.
    let file = b
        .data()
        .join("store")
        .join(caseshare_store::audit_log::DIR)
        .join(caseshare_store::audit_log::file_name(1));
    let original = std::fs::read(&file).unwrap();
    let path = altered_entry_is_refused(&mut b, "differ from the copy in commit frame");
    // Put back, and the WAL's copies gone: the leaves after the last whole
    // tile, hashed again at start, are checked against the checkpoint.
    std::fs::write(&path, original).unwrap();
    settle_the_wal(&mut b, "school-b").await;
    let size = caseshare_store::saved_checkpoint_size(&b.data().join("store"))
        .unwrap()
        .unwrap();
    assert!(size < 256, "{size} entries: all after the last whole tile");
    altered_entry_is_refused(&mut b, "do not hash to the root of the checkpoint");
}

/// Alters an entry of the stopped broker's audit log; a start is refused
/// naming the file, with `expect` in the message, and changes nothing.
/// Gives the file.
fn altered_entry_is_refused(b: &mut Broker, expect: &str) -> std::path::PathBuf {
    let path = alter_an_entry(b);
    let before = digest_tree(&b.data().join("store"));
    let refused = match b.try_restart() {
        Ok(()) => panic!("an altered entry must be refused"),
        Err(r) => r,
    };
    let msg = refusal_message(&refused);
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains(expect), "{msg}");
    assert_eq!(
        digest_tree(&b.data().join("store")),
        before,
        "nothing changed"
    );
    path
}

#[tokio::test]
async fn verify_catches_a_rolled_back_log() {
    let mut b = Broker::start();
    scenario(&b).await;
    let vkey = vkey_of(&b);
    let state = b.dir.join("verify-state.json");
    assert!(verify_cli(&b, &vkey, &state).status.success());
    let verified: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let verified_size = verified["tree_size"].as_u64().unwrap();

    assert!(b.stop().await.success());
    {
        // Drop every audit chunk from the one holding the middle entry on.
        let store = caseshare_store::SledStore::open(&b.data().join("store"), 8 << 20).unwrap();
        let tree = store.raw_tree();
        let mut last_key = vec![b'A'];
        last_key.extend_from_slice(&(verified_size / 2).to_be_bytes());
        let (from, _) = tree.range(..=last_key).next_back().unwrap().unwrap();
        let doomed: Vec<_> = tree
            .range(from.to_vec()..)
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k[0] == b'A')
            .collect();
        // And the audit log's files from that chunk on, as a restore of
        // an older copy would leave them.
        let pointer =
            caseshare_store::audit_log::Pointer::decode(&tree.get(&from).unwrap().unwrap())
                .unwrap()
                .expect("a pointer");
        for k in doomed {
            tree.remove(k).unwrap();
        }
        store.accept_sled_as_it_is().unwrap();
        let dir = b.data().join("store").join(caseshare_store::audit_log::DIR);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join(caseshare_store::audit_log::file_name(pointer.serial)))
            .unwrap();
        file.set_len(pointer.offset).unwrap();
        for later in pointer.serial + 1..pointer.serial + 100 {
            let _ = std::fs::remove_file(dir.join(caseshare_store::audit_log::file_name(later)));
        }
    }
    // The broker itself notices: the last checkpoint it signed is saved
    // beside sled, and sled now holds fewer entries.
    let refused = Broker::try_start_in(&b.dir, &[], &[])
        .err()
        .expect("a rolled-back audit log is refused at start");
    let message = refusal_message(&refused);
    assert!(message.contains("sled lost committed writes"), "{message}");
    // An operator who hides the rollback (removes the saved checkpoint, and
    // the write-ahead log, whose frames still hold copies of the dropped
    // entries, with sled's record of the last frame it applied) gets a
    // broker that starts, and the independent verifier still catches it.
    let store_dir = b.data().join("store");
    std::fs::remove_file(store_dir.join("checkpoint")).unwrap();
    {
        let db = caseshare_store::sled_open::open_sled(&store_dir, 8 << 20).unwrap();
        let tree = db.open_tree("caseshare").unwrap();
        tree.remove(b"Mcommit")
            .unwrap()
            .expect("sled's record of the last frame");
        db.flush().unwrap();
    }
    std::fs::remove_dir_all(store_dir.join(caseshare_store::wal::DIR)).unwrap();
    b.restart();
    let out = verify_cli(&b, &vkey, &state);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rolled back"), "{err}");

    // The operator then grows the log past the old size: consistency fails.
    let mut school = b.client("school-b");
    for i in 0..5 {
        school
            .publisher
            .publish(publish_request(attendance_event(
                &format!("later-{i}"),
                CHILD_1,
            )))
            .await
            .unwrap();
    }
    let out = verify_cli(&b, &vkey, &state);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not an extension"), "{err}");
}
