//! Fuzz properties of C2SP signed notes and checkpoints
//! (`caseshare_audit::note`): `parse_note`, `verify_note`,
//! `parse_checkpoint`, `verify_checkpoint`, `NoteVerifier::from_vkey` and
//! `NoteSigner::from_skey` never panic on any string, and
//!
//! - a note that parses prints back, line for line, as the same string
//!   (the signature block is canonical base64, so nothing is ignored);
//! - a checkpoint text that parses prints back as the same text;
//! - a key that parses prints back as the same key (modulo the case of the
//!   hex key id, which x/mod accepts in either case);
//! - **a note never verifies unless its signed text and its signature by
//!   the verifier's key are ones that key really made**: mutating a valid
//!   note anywhere in its text or in the verifying signature line makes it
//!   fail. (Lines by other keys are not covered by the signature, as in
//!   golang.org/x/mod/sumdb/note: changing them may leave the note valid.)
//!
//! The known-good notes are the vectors in
//! `crates/caseshare-audit/testdata/signed_note.json` plus any the caller
//! signs with fresh keys ([`Known::add`]).
//!
//! Shared by the `signed_note` cargo-fuzz target and the proptest smoke run
//! in `crates/caseshare-audit/tests/fuzz_smoke.rs`.

use caseshare_audit::note::{
    NoteSigner, NoteVerifier, SIGNATURE_LINE_PREFIX, parse_checkpoint, parse_note,
    verify_checkpoint, verify_note,
};

/// The reference vectors, embedded so the fuzz binary needs no files.
pub const VECTORS_JSON: &str =
    include_str!("../../crates/caseshare-audit/testdata/signed_note.json");

/// One signature a key really made: over `text`, the bytes `signature`.
#[derive(Clone, Debug)]
struct Signed {
    verifier: usize,
    text: String,
    signature: Vec<u8>,
}

/// The verifiers under test, the signatures each really made, and the
/// notes to mutate.
#[derive(Clone, Debug, Default)]
pub struct Known {
    verifiers: Vec<NoteVerifier>,
    signed: Vec<Signed>,
    /// Notes to use as mutation seeds (valid ones and the invalid vectors).
    pub notes: Vec<String>,
}

impl Known {
    /// The vectors of `signed_note.json`.
    pub fn vectors() -> Known {
        let doc: serde_json::Value = serde_json::from_str(VECTORS_JSON)
            .unwrap_or_else(|e| panic!("signed_note.json does not parse: {e}"));
        let mut known = Known::default();
        let vectors = doc["vectors"].as_array().cloned().unwrap_or_default();
        assert!(!vectors.is_empty(), "signed_note.json has no vectors");
        for v in vectors {
            let (Some(vkey), Some(note)) = (v["vkey"].as_str(), v["note"].as_str()) else {
                panic!("a vector without vkey or note: {v}");
            };
            let verifier = NoteVerifier::from_vkey(vkey)
                .unwrap_or_else(|e| panic!("vector key {vkey:?}: {e}"));
            if v["expect"].as_str() == Some("valid") {
                known.add(verifier, note);
            } else {
                known.add_verifier(verifier);
                known.notes.push(note.to_string());
            }
        }
        known
    }

    fn add_verifier(&mut self, verifier: NoteVerifier) -> usize {
        if let Some(i) = self.verifiers.iter().position(|v| *v == verifier) {
            return i;
        }
        self.verifiers.push(verifier);
        self.verifiers.len() - 1
    }

    /// Adds a note that `verifier` verifies, its signatures by that key
    /// becoming "really made", and the note a mutation seed.
    pub fn add(&mut self, verifier: NoteVerifier, note: &str) {
        let text = verify_note(note, &verifier)
            .unwrap_or_else(|e| panic!("a known-good note does not verify: {e}: {note:?}"));
        let index = self.add_verifier(verifier.clone());
        let parsed = parse_note(note).unwrap_or_else(|e| panic!("{e}"));
        for sig in parsed.signatures {
            if sig.name == verifier.name() && sig.key_id == verifier.key_id() {
                self.signed.push(Signed {
                    verifier: index,
                    text: text.to_string(),
                    signature: sig.signature,
                });
            }
        }
        self.notes.push(note.to_string());
    }

    /// Adds a signer's verifier and a note it signs over `text` (if `text`
    /// is signable); returns the note.
    pub fn sign(&mut self, signer: &NoteSigner, text: &str) -> Option<String> {
        let note = caseshare_audit::note::sign_note(text, signer).ok()?;
        self.add(signer.verifier(), &note);
        Some(note)
    }

    fn really_signed(&self, verifier: usize, text: &str, signature: &[u8]) -> bool {
        self.signed
            .iter()
            .any(|s| s.verifier == verifier && s.text == text && s.signature == signature)
    }
}

/// The fuzz target's body: the bytes as a note, and a mutation of a
/// known-good note (the first byte chooses the note, the rest are the
/// operations `mutate` applies; the targets pass `common::mutate`).
pub fn check_bytes(data: &[u8], known: &Known, mutate: impl Fn(&[u8], &[u8]) -> Vec<u8>) {
    check_note(&String::from_utf8_lossy(data), known);
    if let Some((&first, ops)) = data.split_first()
        && !known.notes.is_empty()
    {
        let seed = &known.notes[usize::from(first) % known.notes.len()];
        let mutated = mutate(seed.as_bytes(), ops);
        check_note(&String::from_utf8_lossy(&mutated), known);
    }
}

/// Runs every note, checkpoint and key parser on `note`; returns how many
/// of the known verifiers accepted it.
pub fn check_note(note: &str, known: &Known) -> usize {
    check_parse_round_trip(note);
    check_checkpoint_text(note);
    check_keys(note);
    let mut verified = 0;
    for (index, verifier) in known.verifiers.iter().enumerate() {
        let Ok(text) = verify_note(note, verifier) else {
            assert!(
                verify_checkpoint(note, verifier).is_err(),
                "a checkpoint verified although its note does not"
            );
            continue;
        };
        verified += 1;
        assert!(
            note.starts_with(text),
            "the verified text is not the note's text"
        );
        let Ok(parsed) = parse_note(note) else {
            panic!("a note verified but does not parse: {note:?}");
        };
        let mine: Vec<_> = parsed
            .signatures
            .iter()
            .filter(|s| s.name == verifier.name() && s.key_id == verifier.key_id())
            .collect();
        assert!(
            !mine.is_empty(),
            "verified without a signature line for the key"
        );
        for sig in mine {
            assert!(
                known.really_signed(index, text, &sig.signature),
                "FORGERY: key {} accepted a note it never signed (text {text:?}): {note:?}",
                verifier.to_vkey()
            );
        }
        check_checkpoint_text(text);
        if let Ok(cp) = verify_checkpoint(note, verifier) {
            assert_eq!(
                cp.to_text(),
                text,
                "a verified checkpoint prints differently"
            );
        }
    }
    verified
}

fn check_parse_round_trip(note: &str) {
    let Ok(parsed) = parse_note(note) else {
        return;
    };
    use base64::Engine;
    let mut printed = parsed.text.to_string();
    printed.push('\n');
    for sig in &parsed.signatures {
        let mut blob = sig.key_id.to_be_bytes().to_vec();
        blob.extend_from_slice(&sig.signature);
        printed.push_str(SIGNATURE_LINE_PREFIX);
        printed.push_str(sig.name);
        printed.push(' ');
        printed.push_str(&base64::engine::general_purpose::STANDARD.encode(blob));
        printed.push('\n');
    }
    assert_eq!(printed, note, "a parsed note does not print back as itself");
}

fn check_checkpoint_text(text: &str) {
    if let Ok(cp) = parse_checkpoint(text) {
        assert_eq!(
            cp.to_text(),
            text,
            "a parsed checkpoint does not print back as itself"
        );
        assert_eq!(parse_checkpoint(&cp.to_text()), Ok(cp));
    }
}

/// `name+ID+key` with the hex id lower-cased, as keys print.
fn with_lower_id(key: &str, skip: usize) -> Option<String> {
    let parts: Vec<&str> = key.splitn(skip + 3, '+').collect();
    if parts.len() != skip + 3 {
        return None;
    }
    let mut parts: Vec<String> = parts.into_iter().map(str::to_string).collect();
    parts[skip + 1] = parts[skip + 1].to_ascii_lowercase();
    Some(parts.join("+"))
}

fn check_keys(s: &str) {
    if let Ok(v) = NoteVerifier::from_vkey(s) {
        assert_eq!(
            Some(v.to_vkey()),
            with_lower_id(s, 0),
            "a parsed vkey prints differently"
        );
        assert_eq!(NoteVerifier::from_vkey(&v.to_vkey()), Ok(v));
    }
    if let Ok(signer) = NoteSigner::from_skey(s) {
        assert_eq!(
            Some(signer.to_skey()),
            with_lower_id(s, 2),
            "a parsed skey prints differently"
        );
        let verifier = signer.verifier();
        assert_eq!(NoteVerifier::from_vkey(&verifier.to_vkey()), Ok(verifier));
    }
}
