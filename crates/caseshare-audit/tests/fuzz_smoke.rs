//! Bounded smoke runs of the `audit_entry` and `signed_note` fuzz targets
//! (issue 7, item 5), inside `cargo test`: the very property code of
//! `fuzz/src/{audit_entry,signed_note}.rs`, compiled in here through
//! `#[path]`, driven by proptest with arbitrary bytes and strings, with
//! generated audit entries and their mutations, and with byte-level
//! mutations of the signed-note vectors in `testdata/signed_note.json` and
//! of notes and checkpoints signed with fresh keys. A mutated note must
//! never verify unless its text and signature are ones the key made. Then
//! every saved crashing input under `fuzz/regressions/{audit_entry,
//! signed_note}/` is replayed.
//!
//! `PROPTEST_CASES=<n>` runs every property `n` times instead of the
//! bounded default; the unbounded run is `cargo fuzz` (see `fuzz/`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../fuzz/src/audit_entry.rs"]
mod audit_entry;
#[path = "../../../fuzz/src/common.rs"]
mod common;
#[path = "../../../fuzz/src/signed_note.rs"]
mod signed_note;

use std::path::Path;
use std::sync::LazyLock;

use caseshare_audit::note::{NoteSigner, checkpoint_text, verify_checkpoint};
use caseshare_proto::v1 as pb;
use ed25519_dalek::SigningKey;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use signed_note::Known;

static VECTORS: LazyLock<Known> = LazyLock::new(Known::vectors);

/// `cases` runs, unless `PROPTEST_CASES` says otherwise. Failing cases are
/// not persisted beside this file: crashing inputs are kept, as bytes the
/// fuzz targets read too, under `fuzz/regressions/<target>/`.
fn config(cases: u32) -> ProptestConfig {
    let mut c = ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = cases;
    }
    c
}

fn regressions() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions")
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[ -~]{1,20}\n([ -~]{0,20}\n){0,3}",
        1 => ".{0,30}",
    ]
}

fn audit_entry() -> impl Strategy<Value = pb::AuditEntry> {
    let ts = (any::<i64>(), any::<i32>())
        .prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos });
    let o = (any::<i32>(), ".{0,30}", ".{0,10}").prop_map(
        |(legal_basis, justification, authorised_by)| pb::SafeguardingOverride {
            legal_basis,
            justification,
            authorised_by,
        },
    );
    (
        (
            any::<u64>(),
            -1..14i32,
            option::of(ts),
            ".{0,40}",
            vec(any::<u8>(), 0..33),
        ),
        (
            ".{0,12}",
            ".{0,30}",
            any::<u64>(),
            "[a-z-]{0,16}",
            "[a-z-]{0,16}",
            -1..4i32,
        ),
        (
            ".{0,16}",
            ".{0,8}",
            ".{0,8}",
            -1..6i32,
            option::of(o),
            vec(any::<u8>(), 0..33),
        ),
        (
            ".{0,8}",
            ".{0,8}",
            any::<u32>(),
            ".{0,30}",
            -1..6i32,
            ".{0,20}",
            any::<bool>(),
            any::<u64>(),
        ),
    )
        .prop_map(
            |(
                (index, kind, recorded_at, actor, child_pseudonym),
                (event_id, event_type, sequence, source_agency, recipient_agency, decision),
                (
                    reason,
                    agreement_id,
                    consent_id,
                    lawful_basis,
                    safeguarding_override,
                    payload_commitment,
                ),
                (subscription, delivery_id, attempt, rpc, purpose, subject, override_used, count),
            )| pb::AuditEntry {
                index,
                kind,
                recorded_at,
                actor,
                child_pseudonym,
                event_id,
                event_type,
                sequence,
                source_agency,
                recipient_agency,
                decision,
                reason,
                agreement_id,
                consent_id,
                lawful_basis,
                safeguarding_override,
                payload_commitment,
                subscription,
                delivery_id,
                attempt,
                rpc,
                purpose,
                subject,
                override_used,
                count,
            },
        )
}

proptest! {
    #![proptest_config(config(10_000))]

    #[test]
    fn audit_entry_never_panics_on_arbitrary_bytes(data in vec(any::<u8>(), 0..300)) {
        audit_entry::check_bytes(&data);
    }
}

proptest! {
    #![proptest_config(config(4_000))]

    #[test]
    fn audit_entries_are_canonical_and_mutations_are_caught(
        e in audit_entry(),
        ops in vec(any::<u8>(), 0..40),
    ) {
        audit_entry::check_entry(&e);
        audit_entry::check_bytes(&common::mutate(&caseshare_audit::entry::encode(&e), &ops));
    }
}

proptest! {
    #![proptest_config(config(4_000))]

    #[test]
    fn note_parsers_never_panic_on_arbitrary_strings(s in any::<String>()) {
        signed_note::check_note(&s, &VECTORS);
    }
}

proptest! {
    #![proptest_config(config(3_000))]

    #[test]
    fn note_shaped_strings_hold_up(
        s in "[ -~]{0,20}\n{1,3}(\u{2014} [!-~]{0,12} [A-Za-z0-9+/=]{0,96}\n){0,3}",
    ) {
        signed_note::check_note(&s, &VECTORS);
    }
}

proptest! {
    // Ed25519 is slow in a debug build: these cases verify signatures.
    #![proptest_config(config(800))]

    #[test]
    fn mutated_vector_notes_verify_only_as_signed(
        seed in 0..64usize,
        ops in vec(any::<u8>(), 4..48),
    ) {
        let note = &VECTORS.notes[seed % VECTORS.notes.len()];
        let mutated = common::mutate(note.as_bytes(), &ops);
        signed_note::check_note(&String::from_utf8_lossy(&mutated), &VECTORS);
    }
}

proptest! {
    #![proptest_config(config(40))]

    #[test]
    fn mutated_fresh_notes_and_checkpoints_verify_only_as_signed(
        key in any::<[u8; 32]>(),
        name in "[!-*,-~]{1,12}",
        body in text(),
        size in any::<u64>(),
        root in any::<[u8; 32]>(),
        ops in vec(any::<u8>(), 4..48),
    ) {
        let signer = NoteSigner::new(&name, SigningKey::from_bytes(&key)).unwrap();
        let mut known = VECTORS.clone();
        let origin = name.clone();
        let checkpoint = known.sign(&signer, &checkpoint_text(&origin, size, &root)).unwrap();
        let parsed = verify_checkpoint(&checkpoint, &signer.verifier()).unwrap();
        prop_assert_eq!((parsed.size, parsed.root), (size, root));
        let note = known.sign(&signer, &body);
        for seed in std::iter::once(checkpoint).chain(note) {
            prop_assert_eq!(signed_note::check_note(&seed, &known), 1);
            let mutated = common::mutate(seed.as_bytes(), &ops);
            signed_note::check_note(&String::from_utf8_lossy(&mutated), &known);
        }
    }
}

/// The vectors load and each valid one verifies with exactly its own keys.
#[test]
fn note_vectors_are_seeds() {
    assert!(VECTORS.notes.len() >= 8);
    let verified: usize = VECTORS
        .notes
        .iter()
        .map(|n| signed_note::check_note(n, &VECTORS))
        .sum();
    assert!(
        verified >= 8,
        "only {verified} verifications of the vectors"
    );
}

/// Every saved crashing input still passes.
#[test]
fn fuzz_regressions_replay() {
    let dir = regressions();
    common::replay(&dir, "audit_entry", |d| {
        audit_entry::check_bytes(d);
    });
    common::replay(&dir, "signed_note", |d| {
        signed_note::check_bytes(d, &VECTORS, common::mutate);
    });
}
