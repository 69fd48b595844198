//! Runs every reference vector in `testdata/` (copied unchanged from the
//! project's shared test vectors) against `merkle`, `tiles` and `note`:
//! RFC 6962 hashing, roots, inclusion and consistency proofs (generation and
//! verification, positive and negative), and C2SP signed notes/checkpoints.
//! Expected values are only ever read from the JSON files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use caseshare_audit::merkle::{
    self, Hash, MemTree, NodeSource, ProofError, ProofGenError, hash_children, leaf_hash,
    root_from_leaf_hashes, verify_consistency, verify_inclusion,
};
use caseshare_audit::note::{
    CheckpointError, NoteError, NoteSigner, NoteVerifier, checkpoint_text, parse_checkpoint,
    parse_note, sign_note, verify_checkpoint, verify_note,
};
use caseshare_audit::tiles::{MemTileStore, TiledTree};
use serde_json::Value;

fn load(name: &str) -> Value {
    let path = format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {path}: {e}"))
}

fn merkle_vectors() -> Value {
    load("rfc6962_merkle.json")
}

fn note_vectors() -> Value {
    load("signed_note.json")
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

fn bytes(v: &Value, key: &str) -> Vec<u8> {
    hex::decode(str_of(v, key)).unwrap()
}

fn hash(v: &Value) -> Hash {
    Hash::try_from(hex::decode(v.as_str().unwrap()).unwrap().as_slice()).unwrap()
}

fn u64_of(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

fn proof_of(v: &Value) -> Vec<Vec<u8>> {
    v["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| hex::decode(p.as_str().unwrap()).unwrap())
        .collect()
}

fn reference_leaf_hashes(d: &Value) -> Vec<Hash> {
    d["leaves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| leaf_hash(&hex::decode(l.as_str().unwrap()).unwrap()))
        .collect()
}

fn reference_root(d: &Value, size: u64) -> Hash {
    if size == 0 {
        hash(&d["empty_root"])
    } else {
        hash(&d["roots_by_size"][size.to_string()])
    }
}

/// The reference tree both in memory and tiled.
fn reference_trees(d: &Value) -> (MemTree, TiledTree, MemTileStore) {
    let leaves = reference_leaf_hashes(d);
    let mem = MemTree::from_leaf_hashes(&leaves);
    let mut tiled = TiledTree::new();
    let mut store = MemTileStore::new();
    store.apply(tiled.append(&leaves));
    (mem, tiled, store)
}

#[test]
fn hasher_vectors() {
    let d = merkle_vectors();
    let vectors = d["hasher_vectors"].as_array().unwrap();
    assert!(!vectors.is_empty());
    for v in vectors {
        let expected = bytes(v, "expected");
        let got: Hash = if v.get("leaf").is_some() {
            leaf_hash(&bytes(v, "leaf"))
        } else if v.get("left").is_some() {
            hash_children(&bytes(v, "left"), &bytes(v, "right"))
        } else {
            merkle::empty_root()
        };
        assert_eq!(got.to_vec(), expected, "{}", str_of(v, "desc"));
    }
    assert_eq!(merkle::empty_root(), hash(&d["empty_root"]));
    assert_eq!(root_from_leaf_hashes(&[]), hash(&d["empty_root"]));
}

#[test]
fn leaf_and_node_hashes_by_level() {
    let d = merkle_vectors();
    let (mem, tiled, store) = reference_trees(&d);
    let nodes = tiled.nodes(&store);
    let levels = d["node_hashes_by_level"].as_object().unwrap();
    assert!(!levels.is_empty());
    for (level, row) in levels {
        let level: u8 = level.parse().unwrap();
        for (index, expected) in row.as_array().unwrap().iter().enumerate() {
            let expected = hash(expected);
            let index = index as u64;
            assert_eq!(mem.perfect_node(level, index).unwrap(), expected);
            assert_eq!(nodes.perfect_node(level, index).unwrap(), expected);
        }
    }
    // Level 0 is the leaf hashes of the reference leaves.
    let leaf_row = levels["0"].as_array().unwrap();
    for (i, h) in reference_leaf_hashes(&d).iter().enumerate() {
        assert_eq!(*h, hash(&leaf_row[i]));
    }
}

#[test]
fn roots_by_size() {
    let d = merkle_vectors();
    let leaves = reference_leaf_hashes(&d);
    let (mem, tiled, store) = reference_trees(&d);
    let roots = d["roots_by_size"].as_object().unwrap();
    assert_eq!(roots.len(), leaves.len());
    for size in 0..=leaves.len() as u64 {
        let expected = reference_root(&d, size);
        assert_eq!(root_from_leaf_hashes(&leaves[..size as usize]), expected);
        assert_eq!(merkle::tree_root(size, &mem).unwrap(), expected);
        assert_eq!(tiled.root(size, &store).unwrap(), expected);
        // A tree appended one leaf at a time has the same current root.
        let mut grown = TiledTree::new();
        grown.append(&leaves[..size as usize]);
        assert_eq!(grown.current_root(), expected);
    }
    assert_eq!(mem.root(), tiled.current_root());
}

#[test]
fn inclusion_proof_vectors() {
    let d = merkle_vectors();
    let (mem, tiled, store) = reference_trees(&d);
    let vectors = d["inclusion_proofs"].as_array().unwrap();
    let (mut valid, mut invalid) = (0, 0);
    for v in vectors {
        let name = str_of(v, "file");
        let (index, size) = (u64_of(v, "leaf_index"), u64_of(v, "tree_size"));
        let (leaf, root, proof) = (bytes(v, "leaf_hash"), bytes(v, "root"), proof_of(v));
        let result = verify_inclusion(&leaf, index, size, &proof, &root);
        if v["want_error"].as_bool().unwrap() {
            assert!(result.is_err(), "{name}: accepted a bad proof");
            invalid += 1;
            continue;
        }
        result.unwrap_or_else(|e| panic!("{name}: {e}"));
        valid += 1;
        // Our generated proof is byte-for-byte the vector's. The proof's
        // shape depends only on (index, size), and every valid vector uses
        // the reference tree's hashes except the single-leaf one whose proof
        // is empty anyway.
        assert!(size <= mem.len(), "{name}: beyond the reference tree");
        let want: Vec<Hash> = proof
            .iter()
            .map(|p| Hash::try_from(&p[..]).unwrap())
            .collect();
        if size == 1 {
            assert!(want.is_empty());
        }
        if root == reference_root(&d, size).to_vec() || size == 1 {
            assert_eq!(
                merkle::inclusion_proof(index, size, &mem).unwrap(),
                want,
                "{name}"
            );
            assert_eq!(
                tiled.inclusion_proof(index, size, &store).unwrap(),
                want,
                "{name}"
            );
        } else {
            panic!("{name}: valid vector for a tree other than the reference one");
        }
    }
    assert!(valid > 0 && invalid > 0);
    assert_eq!(valid + invalid, vectors.len());
}

#[test]
fn consistency_proof_vectors() {
    let d = merkle_vectors();
    let (mem, tiled, store) = reference_trees(&d);
    let vectors = d["consistency_proofs"].as_array().unwrap();
    let (mut valid, mut invalid) = (0, 0);
    for v in vectors {
        let name = str_of(v, "file");
        let (size1, size2) = (u64_of(v, "size1"), u64_of(v, "size2"));
        let (root1, root2, proof) = (bytes(v, "root1"), bytes(v, "root2"), proof_of(v));
        let result = verify_consistency(size1, size2, &proof, &root1, &root2);
        if v["want_error"].as_bool().unwrap() {
            assert!(result.is_err(), "{name}: accepted a bad proof");
            invalid += 1;
            continue;
        }
        result.unwrap_or_else(|e| panic!("{name}: {e}"));
        valid += 1;
        // The proof depends only on the sizes and the tree; equal sizes give
        // an empty proof whatever the roots.
        assert!(size2 <= mem.len(), "{name}: beyond the reference tree");
        let want: Vec<Hash> = proof
            .iter()
            .map(|p| Hash::try_from(&p[..]).unwrap())
            .collect();
        assert!(size1 == size2 || root2 == reference_root(&d, size2).to_vec());
        assert_eq!(
            merkle::consistency_proof(size1, size2, &mem).unwrap(),
            want,
            "{name}"
        );
        assert_eq!(
            tiled.consistency_proof(size1, size2, &store).unwrap(),
            want,
            "{name}"
        );
    }
    assert!(valid > 0 && invalid > 0);
    assert_eq!(valid + invalid, vectors.len());
}

#[test]
fn specific_rejections_follow_transparency_dev() {
    let d = merkle_vectors();
    let root = reference_root(&d, 1);
    let leaf = reference_leaf_hashes(&d)[0];
    let none: [Hash; 0] = [];
    assert!(matches!(
        verify_consistency(0, 0, &none, &root, &root),
        Err(ProofError::EmptyOldTree)
    ));
    assert!(matches!(
        verify_consistency(1, 1, &[root], &root, &root),
        Err(ProofError::NonEmptyProofForEqualSizes { .. })
    ));
    assert!(matches!(
        verify_consistency(2, 1, &none, &root, &root),
        Err(ProofError::SizeDecreased { .. })
    ));
    assert!(matches!(
        verify_inclusion(&leaf, 1, 1, &none, &root),
        Err(ProofError::IndexOutOfRange { .. })
    ));
    assert!(matches!(
        verify_inclusion(&leaf[..31], 0, 1, &none, &root),
        Err(ProofError::BadLeafHashLength { len: 31 })
    ));
    assert!(matches!(
        verify_inclusion(&leaf, 0, 2, &none, &root),
        Err(ProofError::WrongProofLength { got: 0, want: 1 })
    ));
    let short: [&[u8]; 1] = [&leaf[..31]];
    assert!(matches!(
        verify_inclusion(&leaf, 0, 2, &short, &root),
        Err(ProofError::BadProofHashLength {
            position: 0,
            len: 31
        })
    ));
    // Errors read well.
    let e = verify_inclusion(&leaf, 0, 1, &none, &reference_root(&d, 2)).unwrap_err();
    assert!(e.to_string().contains(&hex::encode(leaf)), "{e}");

    let (mem, _, _) = reference_trees(&d);
    assert!(matches!(
        merkle::consistency_proof(0, 3, &mem),
        Err(ProofGenError::EmptyOldTree)
    ));
    assert!(matches!(
        merkle::consistency_proof(4, 3, &mem),
        Err(ProofGenError::SizeDecreased { .. })
    ));
    assert!(matches!(
        merkle::inclusion_proof(3, 3, &mem),
        Err(ProofGenError::IndexOutOfRange { .. })
    ));
    assert!(matches!(
        merkle::inclusion_proof(0, mem.len() + 1, &mem),
        Err(ProofGenError::BeyondTree { .. })
    ));
}

#[test]
fn all_reference_proofs_round_trip() {
    let d = merkle_vectors();
    let leaves = reference_leaf_hashes(&d);
    let (_, tiled, store) = reference_trees(&d);
    let n = leaves.len() as u64;
    for size2 in 1..=n {
        let root2 = reference_root(&d, size2);
        for index in 0..size2 {
            let proof = tiled.inclusion_proof(index, size2, &store).unwrap();
            verify_inclusion(&leaves[index as usize], index, size2, &proof, &root2).unwrap();
        }
        for size1 in 1..=size2 {
            let proof = tiled.consistency_proof(size1, size2, &store).unwrap();
            verify_consistency(size1, size2, &proof, &reference_root(&d, size1), &root2).unwrap();
        }
    }
}

// ---------------------------------------------------------------- notes --

fn note_cases() -> Vec<Value> {
    let v = note_vectors()["vectors"].as_array().unwrap().clone();
    assert!(!v.is_empty());
    v
}

fn is_valid(v: &Value) -> bool {
    match str_of(v, "expect") {
        "valid" => true,
        "invalid" => false,
        other => panic!("unknown expectation {other}"),
    }
}

#[test]
fn signed_note_vectors() {
    let (mut valid, mut invalid) = (0, 0);
    for v in note_cases() {
        let id = str_of(&v, "id");
        let vkey = str_of(&v, "vkey");
        let note = str_of(&v, "note");
        let verifier = NoteVerifier::from_vkey(vkey).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(verifier.to_vkey(), vkey, "{id}");
        let result = verify_note(note, &verifier);
        if !is_valid(&v) {
            assert!(result.is_err(), "{id}: accepted an invalid note");
            invalid += 1;
            continue;
        }
        let text = result.unwrap_or_else(|e| panic!("{id}: {e}"));
        valid += 1;
        assert!(note.starts_with(text) && text.ends_with('\n'), "{id}");
        assert_eq!(parse_note(note).unwrap().text, text);

        if let Some(cp) = v.get("checkpoint") {
            let parsed = parse_checkpoint(text).unwrap_or_else(|e| panic!("{id}: {e}"));
            assert_eq!(parsed.origin, str_of(cp, "origin"), "{id}");
            assert_eq!(parsed.size, u64_of(cp, "tree_size"), "{id}");
            let root: Hash = if let Some(b64) = cp.get("root_hash_b64") {
                BASE64
                    .decode(b64.as_str().unwrap())
                    .unwrap()
                    .try_into()
                    .unwrap()
            } else {
                hash(&cp["root_hash_hex"])
            };
            assert_eq!(parsed.root, root, "{id}");
            assert!(parsed.extensions.is_empty(), "{id}");
            assert_eq!(
                checkpoint_text(&parsed.origin, parsed.size, &parsed.root),
                text
            );
            assert_eq!(parsed.to_text(), text);
            assert_eq!(verify_checkpoint(note, &verifier).unwrap(), parsed);
        }

        if let Some(skey) = v.get("skey_public_test_key") {
            let skey = skey.as_str().unwrap();
            let signer = NoteSigner::from_skey(skey).unwrap_or_else(|e| panic!("{id}: {e}"));
            assert_eq!(signer.to_skey(), skey, "{id}");
            assert_eq!(signer.verifier(), verifier, "{id}");
            // Ed25519 is deterministic: re-signing reproduces the note.
            assert_eq!(sign_note(text, &signer).unwrap(), note, "{id}");
            assert!(!format!("{signer:?}").contains(skey.rsplit('+').next().unwrap()));
        }
    }
    assert!(valid > 0 && invalid > 0);
}

#[test]
fn derived_checkpoint_commits_to_the_reference_tree() {
    let d = merkle_vectors();
    for v in note_cases() {
        if let Some(cp) = v.get("checkpoint")
            && let Some(hex_root) = cp.get("root_hash_hex")
        {
            let size = u64_of(cp, "tree_size");
            assert_eq!(hash(hex_root), reference_root(&d, size));
        }
    }
}

#[test]
fn notes_verify_only_with_their_own_keys() {
    let cases = note_cases();
    for v in cases.iter().filter(|v| is_valid(v)) {
        let note = str_of(v, "note");
        let signers: Vec<(&str, u32)> = parse_note(note)
            .unwrap()
            .signatures
            .iter()
            .map(|s| (s.name, s.key_id))
            .collect();
        for other in &cases {
            let verifier = NoteVerifier::from_vkey(str_of(other, "vkey")).unwrap();
            let signed_by = signers.contains(&(verifier.name(), verifier.key_id()));
            let result = verify_note(note, &verifier);
            if signed_by && str_of(other, "vkey") == str_of(v, "vkey") {
                assert!(result.is_ok());
            }
            if !signed_by {
                assert!(
                    matches!(result, Err(NoteError::NotSignedByKey { .. })),
                    "{} verified by {}",
                    str_of(v, "id"),
                    str_of(other, "id")
                );
            }
        }
    }
}

/// Applies `mutate` to every valid vector's note and checks it is rejected.
fn assert_mutation_rejected(what: &str, mutate: impl Fn(&str, &NoteVerifier) -> String) {
    for v in note_cases().iter().filter(|v| is_valid(v)) {
        let verifier = NoteVerifier::from_vkey(str_of(v, "vkey")).unwrap();
        let bad = mutate(str_of(v, "note"), &verifier);
        assert!(
            verify_note(&bad, &verifier).is_err(),
            "{what}: {} accepted:\n{bad}",
            str_of(v, "id")
        );
    }
}

/// The (line index, line) of the verifier's own signature line.
fn own_line(note: &str, verifier: &NoteVerifier) -> (usize, String) {
    let lines: Vec<&str> = note.split_inclusive('\n').collect();
    let prefix = format!("\u{2014} {} ", verifier.name());
    let mut found = None;
    for (i, l) in lines.iter().enumerate() {
        if l.starts_with(&prefix) {
            found = Some((i, l.to_string()));
        }
    }
    found.unwrap()
}

fn replace_line(note: &str, index: usize, new: &str) -> String {
    let mut lines: Vec<String> = note.split_inclusive('\n').map(str::to_owned).collect();
    lines[index] = new.to_owned();
    lines.concat()
}

#[test]
fn malformed_and_tampered_notes_are_rejected() {
    assert_mutation_rejected("no blank line", |n, _| n.replacen("\n\n", "\n", 1));
    assert_mutation_rejected("no final newline", |n, _| {
        n.trim_end_matches('\n').to_owned()
    });
    assert_mutation_rejected("text only", |n, _| {
        n[..=n.rfind("\n\n").unwrap()].to_owned()
    });
    assert_mutation_rejected("hyphen not em dash", |n, _| n.replace('\u{2014}', "-"));
    assert_mutation_rejected("carriage return", |n, _| n.replacen('\n', "\r\n", 1));
    assert_mutation_rejected("text altered", |n, _| format!("x{n}"));
    assert_mutation_rejected("garbage line", |n, _| format!("{n}garbage\n"));
    assert_mutation_rejected("own signature removed", |n, v| {
        let (i, _) = own_line(n, v);
        replace_line(n, i, "")
    });
    assert_mutation_rejected("bad base64", |n, v| {
        let (i, line) = own_line(n, v);
        let (head, b64) = line.trim_end().rsplit_once(' ').unwrap();
        replace_line(n, i, &format!("{head} !{b64}\n"))
    });
    assert_mutation_rejected("signature bit flipped", |n, v| {
        let (i, line) = own_line(n, v);
        let (head, b64) = line.trim_end().rsplit_once(' ').unwrap();
        let mut blob = BASE64.decode(b64).unwrap();
        let last = blob.len() - 1;
        blob[last] ^= 0x01;
        replace_line(n, i, &format!("{head} {}\n", BASE64.encode(blob)))
    });
    assert_mutation_rejected("signature truncated", |n, v| {
        let (i, line) = own_line(n, v);
        let (head, b64) = line.trim_end().rsplit_once(' ').unwrap();
        let blob = BASE64.decode(b64).unwrap();
        replace_line(
            n,
            i,
            &format!("{head} {}\n", BASE64.encode(&blob[..blob.len() - 1])),
        )
    });
    assert_mutation_rejected("signature too short for a key id", |n, v| {
        let (i, line) = own_line(n, v);
        let (head, _) = line.trim_end().rsplit_once(' ').unwrap();
        replace_line(n, i, &format!("{head} {}\n", BASE64.encode([1u8, 2, 3, 4])))
    });
    assert_mutation_rejected("duplicate own line, second forged", |n, v| {
        let (i, line) = own_line(n, v);
        let (head, b64) = line.trim_end().rsplit_once(' ').unwrap();
        let mut blob = BASE64.decode(b64).unwrap();
        blob[10] ^= 0x80;
        let forged = format!("{head} {}\n", BASE64.encode(blob));
        replace_line(n, i, &format!("{line}{forged}"))
    });
    assert_mutation_rejected("key name with a space", |n, v| {
        let (i, line) = own_line(n, v);
        replace_line(
            n,
            i,
            &line.replacen(v.name(), &format!("{} x", v.name()), 1),
        )
    });

    // The specific reasons are reported.
    let v = note_cases().into_iter().find(is_valid).unwrap();
    let verifier = NoteVerifier::from_vkey(str_of(&v, "vkey")).unwrap();
    let note = str_of(&v, "note");
    assert!(matches!(
        verify_note(&note.replacen("\n\n", "\n", 1), &verifier),
        Err(NoteError::MissingSeparator)
    ));
    let (i, line) = own_line(note, &verifier);
    let (head, b64) = line.trim_end().rsplit_once(' ').unwrap();
    let blob = BASE64.decode(b64).unwrap();
    let short = replace_line(note, i, &format!("{head} {}\n", BASE64.encode(&blob[..40])));
    assert!(matches!(
        verify_note(&short, &verifier),
        Err(NoteError::BadSignatureLength { len: 36, .. })
    ));
    assert!(matches!(
        verify_note(&format!("x{note}"), &verifier),
        Err(NoteError::InvalidSignature { .. })
    ));
}

#[test]
fn signing_requires_well_formed_text() {
    let signer = NoteSigner::generate("example.com/test", &mut rand::thread_rng()).unwrap();
    assert_eq!(sign_note("", &signer), Err(NoteError::EmptyText));
    assert_eq!(
        sign_note("no newline", &signer),
        Err(NoteError::TextWithoutFinalNewline)
    );
    assert!(matches!(
        sign_note("tab\there\n", &signer),
        Err(NoteError::ControlCharacter { code: 9, offset: 3 })
    ));
    // Text may itself contain blank lines: the last one separates.
    let text = "a\n\nb\n\n";
    let note = sign_note(text, &signer).unwrap();
    assert_eq!(verify_note(&note, &signer.verifier()).unwrap(), text);
    // A fresh key round-trips through its string forms.
    let again = NoteSigner::from_skey(&signer.to_skey()).unwrap();
    assert_eq!(sign_note(text, &again).unwrap(), note);
    let verifier = NoteVerifier::from_vkey(&signer.verifier().to_vkey()).unwrap();
    assert_eq!(verify_note(&note, &verifier).unwrap(), text);
    assert!(NoteSigner::generate("bad name", &mut rand::thread_rng()).is_err());
    assert!(NoteSigner::generate("bad+name", &mut rand::thread_rng()).is_err());
    assert!(NoteSigner::generate("", &mut rand::thread_rng()).is_err());
}

#[test]
fn signatures_are_matched_on_name_and_key_id() {
    // Two keys under one name (a key rotation): each verifier checks its own
    // line and ignores the other key's.
    let mut rng = rand::thread_rng();
    let old = NoteSigner::generate("example.com/log", &mut rng).unwrap();
    let new = NoteSigner::generate("example.com/log", &mut rng).unwrap();
    assert_ne!(old.key_id(), new.key_id());
    let text = "example.com/log\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";
    let by_new = sign_note(text, &new).unwrap();
    let new_line = &by_new[text.len() + 1..];
    let both = format!("{}{new_line}", sign_note(text, &old).unwrap());
    assert_eq!(verify_note(&both, &old.verifier()).unwrap(), text);
    assert_eq!(verify_note(&both, &new.verifier()).unwrap(), text);
    let sigs = parse_note(&both).unwrap().signatures;
    assert_eq!(sigs.len(), 2);
    assert!(
        sigs.iter()
            .all(|s| s.name == "example.com/log" && s.signature.len() == 64)
    );
    assert!(matches!(
        verify_note(&by_new, &old.verifier()),
        Err(NoteError::NotSignedByKey { .. })
    ));
}

#[test]
fn malformed_keys_are_rejected() {
    for v in note_cases() {
        let vkey = str_of(&v, "vkey");
        let (name, rest) = vkey.split_once('+').unwrap();
        let (id, key64) = rest.split_once('+').unwrap();
        let key = BASE64.decode(key64).unwrap();
        // Another key id.
        let other_id = format!("{:08x}", u32::from_str_radix(id, 16).unwrap() ^ 1);
        assert!(matches!(
            NoteVerifier::from_vkey(&format!("{name}+{other_id}+{key64}")),
            Err(NoteError::KeyIdMismatch { .. })
        ));
        // Another name for the same key.
        assert!(matches!(
            NoteVerifier::from_vkey(&format!("{name}x+{id}+{key64}")),
            Err(NoteError::KeyIdMismatch { .. })
        ));
        // Another algorithm byte.
        let mut alg = key.clone();
        alg[0] = 0x02;
        assert!(matches!(
            NoteVerifier::from_vkey(&format!("{name}+{id}+{}", BASE64.encode(&alg))),
            Err(NoteError::UnsupportedAlgorithm(2))
        ));
        // Truncated key, short id, missing parts, bad base64.
        for bad in [
            format!("{name}+{id}+{}", BASE64.encode(&key[..32])),
            format!("{name}+{}+{key64}", &id[..7]),
            format!("{name}+{id}"),
            format!("{name}+{id}+{key64}!"),
            format!("+{id}+{key64}"),
        ] {
            assert!(NoteVerifier::from_vkey(&bad).is_err(), "{bad}");
        }
        // Upper-case hex ids are accepted, as golang.org/x/mod does.
        NoteVerifier::from_vkey(&format!("{name}+{}+{key64}", id.to_uppercase())).unwrap();

        if let Some(skey) = v.get("skey_public_test_key") {
            let skey = skey.as_str().unwrap();
            let no_prefix = skey.strip_prefix("PRIVATE+KEY+").unwrap();
            assert!(NoteSigner::from_skey(no_prefix).is_err());
            assert!(NoteSigner::from_skey(&format!("PRIVATE+KEYS+{no_prefix}")).is_err());
            let (sname, srest) = no_prefix.split_once('+').unwrap();
            let (sid, seed64) = srest.split_once('+').unwrap();
            let other_id = format!("{:08x}", u32::from_str_radix(sid, 16).unwrap() ^ 1);
            let err = NoteSigner::from_skey(&format!("PRIVATE+KEY+{sname}+{other_id}+{seed64}"))
                .unwrap_err();
            assert!(matches!(err, NoteError::KeyIdMismatch { .. }));
            // Errors never echo the secret seed.
            let err = NoteSigner::from_skey(&format!("{skey}=")).unwrap_err();
            assert!(!err.to_string().contains(seed64));
        }
    }
}

#[test]
fn malformed_checkpoints_are_rejected() {
    let d = merkle_vectors();
    let root = reference_root(&d, 8);
    let b64 = BASE64.encode(root);
    let good = checkpoint_text("example.com/log", 8, &root);
    assert_eq!(parse_checkpoint(&good).unwrap().size, 8);
    let zero = checkpoint_text("example.com/log", 0, &merkle::empty_root());
    assert_eq!(parse_checkpoint(&zero).unwrap().size, 0);
    let max = checkpoint_text("o", u64::MAX, &root);
    assert_eq!(parse_checkpoint(&max).unwrap().size, u64::MAX);

    let with_ext = format!("{good}ext one\n— not a sig\n");
    let parsed = parse_checkpoint(&with_ext).unwrap();
    assert_eq!(parsed.extensions, ["ext one", "— not a sig"]);
    assert_eq!(parsed.to_text(), with_ext);

    for size in [
        "08",
        "00",
        "+8",
        "-8",
        " 8",
        "8 ",
        "",
        "0x8",
        "8.0",
        "18446744073709551616",
    ] {
        let text = format!("o\n{size}\n{b64}\n");
        assert_eq!(
            parse_checkpoint(&text),
            Err(CheckpointError::BadSize(size.to_owned())),
            "{size:?}"
        );
    }
    let short_root = BASE64.encode(&root[..31]);
    assert_eq!(
        parse_checkpoint(&format!("o\n8\n{short_root}\n")),
        Err(CheckpointError::BadRootLength(31))
    );
    let unpadded = b64.trim_end_matches('=');
    assert!(matches!(
        parse_checkpoint(&format!("o\n8\n{unpadded}\n")),
        Err(CheckpointError::BadRootBase64(_))
    ));
    let url_safe = base64::engine::general_purpose::URL_SAFE.encode(root);
    if url_safe != b64 {
        assert!(parse_checkpoint(&format!("o\n8\n{url_safe}\n")).is_err());
    }
    assert_eq!(
        parse_checkpoint(good.trim_end()),
        Err(CheckpointError::NoFinalNewline)
    );
    assert_eq!(
        parse_checkpoint(&format!("\n8\n{b64}\n")),
        Err(CheckpointError::EmptyOrigin)
    );
    assert_eq!(
        parse_checkpoint("o\n8\n"),
        Err(CheckpointError::TooFewLines)
    );
    assert_eq!(
        parse_checkpoint(&format!("{good}\n")),
        Err(CheckpointError::EmptyExtensionLine(1))
    );

    // A signed checkpoint that is not a valid checkpoint.
    let signer = NoteSigner::generate("example.com/log", &mut rand::thread_rng()).unwrap();
    let note = sign_note(&format!("o\n08\n{b64}\n"), &signer).unwrap();
    assert!(matches!(
        verify_checkpoint(&note, &signer.verifier()),
        Err(NoteError::Checkpoint(CheckpointError::BadSize(_)))
    ));
}
