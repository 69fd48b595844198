//! C2SP signed notes with Ed25519 keys, and C2SP tlog-checkpoint bodies.
//!
//! This module owns the text formats by which the audit log commits to its
//! tree: verifier keys (`<name>+<8 hex key id>+base64(0x01 || public key)`),
//! signer keys (`PRIVATE+KEY+<name>+<8 hex key id>+base64(0x01 || seed)`, as
//! golang.org/x/mod/sumdb/note writes them), signing and verifying notes, and
//! building and parsing checkpoint texts.
//!
//! A signed note is its text (non-empty, ending in `\n`, no ASCII control
//! characters other than `\n`), a blank line, then one or more signature
//! lines `— <key name> <base64(4-byte big-endian key id || signature)>\n`,
//! where `—` is U+2014 EM DASH. The key id of an Ed25519 key is the first
//! four bytes of `SHA-256(key name || 0x0A || 0x01 || 32-byte public key)`.
//! Parsing follows golang.org/x/mod/sumdb/note's `Open`: any malformed
//! signature line rejects the whole note, signatures by unknown keys are
//! ignored, and a note with no signature by the expected key is rejected.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::merkle::Hash;

/// The algorithm byte of Ed25519 keys in C2SP signed notes.
pub const ALG_ED25519: u8 = 0x01;

/// The start of every signature line: U+2014 EM DASH and a space.
pub const SIGNATURE_LINE_PREFIX: &str = "\u{2014} ";

/// Most signature lines a note may carry (as in golang.org/x/mod).
pub const MAX_SIGNATURES: usize = 100;

const SKEY_PREFIX: &str = "PRIVATE+KEY+";
const ED25519_SIGNATURE_LEN: usize = 64;

/// Why a key, note or checkpoint was rejected.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum NoteError {
    /// A key name is not usable.
    #[error(
        "invalid key name {0:?}: a key name must be non-empty and contain no whitespace and no '+'"
    )]
    InvalidKeyName(String),
    /// A verifier key string does not parse.
    #[error(
        "malformed verifier key {0:?}: expected <name>+<8 hex digit key id>+<base64 of 0x01 and the 32-byte Ed25519 public key>"
    )]
    MalformedVerifierKey(String),
    /// A signer key string does not parse (the key itself is not echoed).
    #[error(
        "malformed signer key: expected PRIVATE+KEY+<name>+<8 hex digit key id>+<base64 of 0x01 and the 32-byte Ed25519 seed>"
    )]
    MalformedSignerKey,
    /// The key is not an Ed25519 key.
    #[error("unsupported key algorithm byte {0:#04x}: only Ed25519 (0x01) is supported")]
    UnsupportedAlgorithm(u8),
    /// The key bytes are not a valid Ed25519 public key.
    #[error("the verifier key for {0:?} is not a valid Ed25519 public key")]
    InvalidPublicKey(String),
    /// The key id written in a key does not match the key.
    #[error(
        "key id {stated:08x} in the key for {name:?} does not match its computed key id {computed:08x}: the key was altered or belongs to another name"
    )]
    KeyIdMismatch {
        /// Key name.
        name: String,
        /// Id written in the key string.
        stated: u32,
        /// Id computed from name and public key.
        computed: u32,
    },
    /// Text to sign or a note's text is empty.
    #[error("the note text is empty")]
    EmptyText,
    /// Text to sign does not end in a newline.
    #[error("the note text must end with a newline (\\n)")]
    TextWithoutFinalNewline,
    /// The note holds a forbidden control character.
    #[error(
        "the note contains the control character U+{code:04X} at byte {offset}; only \\n is allowed"
    )]
    ControlCharacter {
        /// The character's code point.
        code: u32,
        /// Its byte offset.
        offset: usize,
    },
    /// No blank line separates the text from the signatures.
    #[error(
        "malformed note: no blank line separating the text from the signature lines (the note must end \"\\n\\n— <name> <signature>\\n\")"
    )]
    MissingSeparator,
    /// The signature block is empty or does not end in a newline.
    #[error(
        "malformed note: the signature block must hold signature lines, each ending with a newline"
    )]
    MalformedSignatureBlock,
    /// A signature line is malformed.
    #[error(
        "malformed note: signature line {line} is not \"— <key name> <base64 of key id and signature>\": {reason}"
    )]
    MalformedSignatureLine {
        /// 1-based line number within the signature block.
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// Too many signature lines.
    #[error("the note carries more than {MAX_SIGNATURES} signatures")]
    TooManySignatures,
    /// No signature by the expected key.
    #[error("the note is not signed by key {name}+{key_id:08x}; it carries signatures by: {found}")]
    NotSignedByKey {
        /// Expected key name.
        name: String,
        /// Expected key id.
        key_id: u32,
        /// The `name+id` of the signatures present.
        found: String,
    },
    /// The expected key's signature has the wrong length.
    #[error(
        "the signature by {name}+{key_id:08x} is {len} bytes, but an Ed25519 signature is 64 bytes"
    )]
    BadSignatureLength {
        /// Key name.
        name: String,
        /// Key id.
        key_id: u32,
        /// Signature length found.
        len: usize,
    },
    /// The expected key's signature does not verify.
    #[error(
        "the signature by {name}+{key_id:08x} does not verify: the note text was altered, or it was signed by a different key with the same name and id"
    )]
    InvalidSignature {
        /// Key name.
        name: String,
        /// Key id.
        key_id: u32,
    },
    /// The signed text is not a valid checkpoint.
    #[error("invalid checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
}

/// Why a checkpoint text was rejected.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum CheckpointError {
    /// Fewer than the three mandatory lines.
    #[error(
        "a checkpoint needs at least three newline-terminated lines: origin, tree size, base64 root hash"
    )]
    TooFewLines,
    /// The text does not end in a newline.
    #[error("the checkpoint text must end with a newline")]
    NoFinalNewline,
    /// The origin line is empty.
    #[error("the origin (first line) is empty")]
    EmptyOrigin,
    /// The size line is not canonical decimal.
    #[error(
        "tree size {0:?} is not a decimal number without sign, spaces or leading zeros that fits in 64 bits"
    )]
    BadSize(String),
    /// The root line is not standard base64.
    #[error("root hash {0:?} is not standard padded base64")]
    BadRootBase64(String),
    /// The root is not a SHA-256 hash.
    #[error("root hash is {0} bytes, expected 32")]
    BadRootLength(usize),
    /// An extension line is empty.
    #[error("extension line {0} is empty; extension lines must be non-empty")]
    EmptyExtensionLine(usize),
}

/// The C2SP key id of an Ed25519 key: the first four bytes, big-endian, of
/// `SHA-256(name || 0x0A || 0x01 || public_key)`.
pub fn key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    let digest = Sha256::new()
        .chain_update(name.as_bytes())
        .chain_update([b'\n', ALG_ED25519])
        .chain_update(public_key)
        .finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// Whether `name` is a valid key name: non-empty, no Unicode whitespace, no `+`.
pub fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(|c: char| c.is_whitespace() || c == '+')
}

fn check_key_name(name: &str) -> Result<(), NoteError> {
    if is_valid_key_name(name) {
        Ok(())
    } else {
        Err(NoteError::InvalidKeyName(name.to_owned()))
    }
}

/// Parses exactly eight hex digits (either case), as x/mod accepts them.
fn parse_key_id(hex8: &str) -> Option<u32> {
    if hex8.len() != 8 || !hex8.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(hex8, 16).ok()
}

/// Decodes `base64(0x01 || 32 bytes)`.
fn decode_ed25519_key(b64: &str) -> Result<Option<[u8; 32]>, NoteError> {
    let Ok(bytes) = BASE64.decode(b64) else {
        return Ok(None);
    };
    match bytes.split_first() {
        None => Ok(None),
        Some((&ALG_ED25519, key)) => Ok(<[u8; 32]>::try_from(key).ok()),
        Some((&alg, _)) => Err(NoteError::UnsupportedAlgorithm(alg)),
    }
}

fn encode_ed25519_key(key: &[u8; 32]) -> String {
    let mut bytes = Vec::with_capacity(33);
    bytes.push(ALG_ED25519);
    bytes.extend_from_slice(key);
    BASE64.encode(bytes)
}

/// An Ed25519 note verifier: a key name, its key id and its public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    key_id: u32,
    key: VerifyingKey,
}

impl NoteVerifier {
    /// A verifier for `name` and `key`.
    pub fn new(name: &str, key: VerifyingKey) -> Result<Self, NoteError> {
        check_key_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            key_id: key_id(name, key.as_bytes()),
            key,
        })
    }

    /// Parses a verifier key `<name>+<8 hex id>+base64(0x01 || public key)`,
    /// checking that the id matches the name and key.
    pub fn from_vkey(vkey: &str) -> Result<Self, NoteError> {
        let malformed = || NoteError::MalformedVerifierKey(vkey.to_owned());
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(id), Some(key64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(malformed());
        };
        check_key_name(name)?;
        let stated = parse_key_id(id).ok_or_else(malformed)?;
        let key = decode_ed25519_key(key64)?.ok_or_else(malformed)?;
        let computed = key_id(name, &key);
        if stated != computed {
            return Err(NoteError::KeyIdMismatch {
                name: name.to_owned(),
                stated,
                computed,
            });
        }
        let key = VerifyingKey::from_bytes(&key)
            .map_err(|_| NoteError::InvalidPublicKey(name.to_owned()))?;
        Ok(Self {
            name: name.to_owned(),
            key_id: computed,
            key,
        })
    }

    /// The verifier key string, `<name>+<8 hex id>+base64(0x01 || public key)`.
    pub fn to_vkey(&self) -> String {
        format!(
            "{}+{:08x}+{}",
            self.name,
            self.key_id,
            encode_ed25519_key(self.key.as_bytes())
        )
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The Ed25519 public key.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }
}

/// An Ed25519 note signer. Its `Debug` output shows no key material.
#[derive(Clone)]
pub struct NoteSigner {
    name: String,
    key_id: u32,
    key: SigningKey,
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .field("key_id", &format_args!("{:08x}", self.key_id))
            .finish_non_exhaustive()
    }
}

impl NoteSigner {
    /// A signer for `name` with `key`.
    pub fn new(name: &str, key: SigningKey) -> Result<Self, NoteError> {
        check_key_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            key_id: key_id(name, key.verifying_key().as_bytes()),
            key,
        })
    }

    /// A signer for `name` with a fresh random key.
    pub fn generate<R: RngCore + CryptoRng>(name: &str, rng: &mut R) -> Result<Self, NoteError> {
        Self::new(name, SigningKey::generate(rng))
    }

    /// Parses a signer key `PRIVATE+KEY+<name>+<8 hex id>+base64(0x01 || seed)`,
    /// checking that the id matches the name and the derived public key.
    pub fn from_skey(skey: &str) -> Result<Self, NoteError> {
        let rest = skey
            .strip_prefix(SKEY_PREFIX)
            .ok_or(NoteError::MalformedSignerKey)?;
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(id), Some(key64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::MalformedSignerKey);
        };
        check_key_name(name)?;
        let stated = parse_key_id(id).ok_or(NoteError::MalformedSignerKey)?;
        let seed = decode_ed25519_key(key64)?.ok_or(NoteError::MalformedSignerKey)?;
        let signer = Self::new(name, SigningKey::from_bytes(&seed))?;
        if stated != signer.key_id {
            return Err(NoteError::KeyIdMismatch {
                name: name.to_owned(),
                stated,
                computed: signer.key_id,
            });
        }
        Ok(signer)
    }

    /// The signer key string. It is secret: store it like a password.
    pub fn to_skey(&self) -> String {
        format!(
            "{SKEY_PREFIX}{}+{:08x}+{}",
            self.name,
            self.key_id,
            encode_ed25519_key(self.key.as_bytes())
        )
    }

    /// The matching verifier.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            key_id: self.key_id,
            key: self.key.verifying_key(),
        }
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }
}

/// Rejects ASCII control characters other than `\n`.
fn check_no_control_chars(s: &str) -> Result<(), NoteError> {
    match s.char_indices().find(|&(_, c)| c < ' ' && c != '\n') {
        Some((offset, c)) => Err(NoteError::ControlCharacter {
            code: u32::from(c),
            offset,
        }),
        None => Ok(()),
    }
}

fn check_text(text: &str) -> Result<(), NoteError> {
    if text.is_empty() {
        return Err(NoteError::EmptyText);
    }
    if !text.ends_with('\n') {
        return Err(NoteError::TextWithoutFinalNewline);
    }
    check_no_control_chars(text)
}

/// Signs `text` (non-empty, ending in `\n`, no control characters but `\n`)
/// and returns the signed note: `text`, a blank line, and the signature line
/// `— <name> <base64(key id || signature)>\n`. Ed25519 is deterministic, so
/// the same text and key always give the same note.
pub fn sign_note(text: &str, signer: &NoteSigner) -> Result<String, NoteError> {
    check_text(text)?;
    let signature = signer.key.sign(text.as_bytes());
    let mut blob = Vec::with_capacity(4 + ED25519_SIGNATURE_LEN);
    blob.extend_from_slice(&signer.key_id.to_be_bytes());
    blob.extend_from_slice(&signature.to_bytes());
    Ok(format!(
        "{text}\n{SIGNATURE_LINE_PREFIX}{} {}\n",
        signer.name,
        BASE64.encode(blob)
    ))
}

/// One signature line of a note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteSignature<'a> {
    /// The key name.
    pub name: &'a str,
    /// The key id.
    pub key_id: u32,
    /// The signature bytes (after the key id).
    pub signature: Vec<u8>,
}

/// A syntactically valid note, signatures not yet checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedNote<'a> {
    /// The signed text, ending in `\n`.
    pub text: &'a str,
    /// The signature lines, in order.
    pub signatures: Vec<NoteSignature<'a>>,
}

/// Splits a note into its text and signature lines, rejecting anything
/// malformed (as golang.org/x/mod/sumdb/note does). Checks no signature.
pub fn parse_note(note: &str) -> Result<ParsedNote<'_>, NoteError> {
    check_no_control_chars(note)?;
    let split = note.rfind("\n\n").ok_or(NoteError::MissingSeparator)?;
    let (text, sigs) = (&note[..=split], &note[split + 2..]);
    if sigs.is_empty() || !sigs.ends_with('\n') {
        return Err(NoteError::MalformedSignatureBlock);
    }
    let lines: Vec<&str> = sigs[..sigs.len() - 1].split('\n').collect();
    if lines.len() > MAX_SIGNATURES {
        return Err(NoteError::TooManySignatures);
    }
    let mut signatures = Vec::with_capacity(lines.len());
    for (i, line) in lines.into_iter().enumerate() {
        let bad = |reason| NoteError::MalformedSignatureLine {
            line: i + 1,
            reason,
        };
        let line = line
            .strip_prefix(SIGNATURE_LINE_PREFIX)
            .ok_or_else(|| bad("it does not start with U+2014 EM DASH and a space"))?;
        let (name, b64) = line
            .split_once(' ')
            .ok_or_else(|| bad("no space between the key name and the signature"))?;
        if !is_valid_key_name(name) {
            return Err(bad("the key name is empty or contains whitespace or '+'"));
        }
        let blob = BASE64
            .decode(b64)
            .map_err(|_| bad("the signature is not standard padded base64"))?;
        if blob.len() < 5 {
            return Err(bad("the signature is shorter than a key id and one byte"));
        }
        let (id, signature) = blob.split_at(4);
        signatures.push(NoteSignature {
            name,
            key_id: u32::from_be_bytes([id[0], id[1], id[2], id[3]]),
            signature: signature.to_vec(),
        });
    }
    Ok(ParsedNote { text, signatures })
}

/// Verifies that `note` is well formed and carries a valid signature by
/// `verifier` (matched on key name and key id); returns the signed text.
/// Signatures by other keys are ignored; every signature line naming the
/// verifier's key must verify.
pub fn verify_note<'a>(note: &'a str, verifier: &NoteVerifier) -> Result<&'a str, NoteError> {
    let parsed = parse_note(note)?;
    let mut verified = false;
    for sig in &parsed.signatures {
        if sig.name != verifier.name || sig.key_id != verifier.key_id {
            continue;
        }
        let bytes =
            <[u8; ED25519_SIGNATURE_LEN]>::try_from(sig.signature.as_slice()).map_err(|_| {
                NoteError::BadSignatureLength {
                    name: verifier.name.clone(),
                    key_id: verifier.key_id,
                    len: sig.signature.len(),
                }
            })?;
        verifier
            .key
            .verify_strict(parsed.text.as_bytes(), &Signature::from_bytes(&bytes))
            .map_err(|_| NoteError::InvalidSignature {
                name: verifier.name.clone(),
                key_id: verifier.key_id,
            })?;
        verified = true;
    }
    if verified {
        Ok(parsed.text)
    } else {
        let found = parsed
            .signatures
            .iter()
            .map(|s| format!("{}+{:08x}", s.name, s.key_id))
            .collect::<Vec<_>>()
            .join(", ");
        Err(NoteError::NotSignedByKey {
            name: verifier.name.clone(),
            key_id: verifier.key_id,
            found,
        })
    }
}

/// The checkpoint text `<origin>\n<size>\n<base64 root>\n` (C2SP
/// tlog-checkpoint, no extension lines). `origin` must be a non-empty single
/// line without control characters; [`parse_checkpoint`] rejects others.
pub fn checkpoint_text(origin: &str, size: u64, root: &Hash) -> String {
    format!("{origin}\n{size}\n{}\n", BASE64.encode(root))
}

/// A parsed checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's origin line.
    pub origin: String,
    /// The tree size.
    pub size: u64,
    /// The RFC 6962 root hash of the tree of that size.
    pub root: Hash,
    /// Extension lines after the root, without their newlines.
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// The checkpoint's text, extension lines included.
    pub fn to_text(&self) -> String {
        let mut text = checkpoint_text(&self.origin, self.size, &self.root);
        for ext in &self.extensions {
            text.push_str(ext);
            text.push('\n');
        }
        text
    }
}

/// Parses `<origin>\n<size>\n<base64 root>\n[extension lines\n...]`: the
/// size in decimal without leading zeros (`0` itself is fine), the root
/// standard padded base64 of exactly 32 bytes, extension lines non-empty.
pub fn parse_checkpoint(text: &str) -> Result<Checkpoint, CheckpointError> {
    let body = text
        .strip_suffix('\n')
        .ok_or(CheckpointError::NoFinalNewline)?;
    let mut lines = body.split('\n');
    let (Some(origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next()) else {
        return Err(CheckpointError::TooFewLines);
    };
    if origin.is_empty() {
        return Err(CheckpointError::EmptyOrigin);
    }
    let canonical = !size.is_empty()
        && size.bytes().all(|b| b.is_ascii_digit())
        && (size == "0" || !size.starts_with('0'));
    let size_value = canonical
        .then(|| size.parse::<u64>().ok())
        .flatten()
        .ok_or_else(|| CheckpointError::BadSize(size.to_owned()))?;
    let root_bytes = BASE64
        .decode(root)
        .map_err(|_| CheckpointError::BadRootBase64(root.to_owned()))?;
    let root_hash = Hash::try_from(root_bytes.as_slice())
        .map_err(|_| CheckpointError::BadRootLength(root_bytes.len()))?;
    let mut extensions = Vec::new();
    for (i, line) in lines.enumerate() {
        if line.is_empty() {
            return Err(CheckpointError::EmptyExtensionLine(i + 1));
        }
        extensions.push(line.to_owned());
    }
    Ok(Checkpoint {
        origin: origin.to_owned(),
        size: size_value,
        root: root_hash,
        extensions,
    })
}

/// Verifies a signed checkpoint note with `verifier` and parses its text.
pub fn verify_checkpoint(note: &str, verifier: &NoteVerifier) -> Result<Checkpoint, NoteError> {
    let text = verify_note(note, verifier)?;
    Ok(parse_checkpoint(text)?)
}
