//! What every fuzz target shares: a byte-level mutator that turns a valid
//! input (an encoded request, an example JSON file, a signed note) into a
//! nearby invalid one, driven by bytes the fuzzer or proptest chooses, and
//! the replay of saved crashing inputs under `fuzz/regressions/<target>/`.
//!
//! This file is compiled twice: as a module of the `caseshare-fuzz` crate
//! (the cargo-fuzz targets) and, through `#[path]`, inside the bounded
//! proptest smoke runs in `crates/*/tests/fuzz_smoke.rs`. It therefore uses
//! nothing but `std`.

use std::path::Path;

/// Tokens the mutator splices in: the separators and alphabets the parsers
/// under test split on, so that mutations reach their branches quickly.
pub const DICTIONARY: &[&[u8]] = &[
    b"\n",
    b"\n\n",
    "\u{2014} ".as_bytes(),
    "\u{2014}".as_bytes(),
    b" ",
    b"+",
    b"/",
    b"=",
    b"==",
    b".",
    b".*",
    b"*",
    b":",
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b"null",
    b"\"NaN\"",
    b"-0",
    b"1e999",
    b"18446744073709551616",
    b"\\u0000",
    b"\\ud800",
    b"\r",
    b"\t",
    b"\0",
    b"\xff",
    b"\xc3",
    b"AAAA",
    b"spiffe://",
    b"kind:",
    b"9434765919",
    b"0001-01-01T00:00:00Z",
    b"9999-12-31T23:59:59.999999999Z",
    b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
    b"\x0a\x00",
    b"\x12\x7f",
];

/// Applies mutations to `seed`. `ops` is read four bytes at a time:
/// `[op, position high, position low, value]`; the position is taken
/// modulo the current length. Operations: overwrite a byte, flip a bit,
/// insert a byte, delete a run, truncate, duplicate a run, splice in a
/// [`DICTIONARY`] token, swap two bytes. A trailing partial chunk is
/// ignored, so any byte string is a valid `ops`.
pub fn mutate(seed: &[u8], ops: &[u8]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for op in ops.chunks_exact(4) {
        let (kind, value) = (op[0], op[3]);
        let raw = (usize::from(op[1]) << 8) | usize::from(op[2]);
        let at = if out.is_empty() { 0 } else { raw % out.len() };
        let run = usize::from(value % 16) + 1;
        match kind % 8 {
            0 if !out.is_empty() => out[at] = value,
            1 if !out.is_empty() => out[at] ^= 1 << (value % 8),
            2 => out.insert(at, value),
            3 if !out.is_empty() => {
                let end = (at + run).min(out.len());
                out.drain(at..end);
            }
            4 => out.truncate(at),
            5 if !out.is_empty() => {
                let end = (at + run).min(out.len());
                let copy = out[at..end].to_vec();
                out.splice(at..at, copy);
            }
            6 => {
                let token = DICTIONARY[usize::from(value) % DICTIONARY.len()];
                out.splice(at..at, token.iter().copied());
            }
            7 if !out.is_empty() => {
                let other = (at + usize::from(value)) % out.len();
                out.swap(at, other);
            }
            _ => {}
        }
    }
    out
}

/// Runs `check` on every file under `<regressions>/<target>/` (a missing
/// directory means no saved inputs) and returns how many it replayed. A
/// failing input panics with its file name, so the failure says which
/// saved input regressed.
pub fn replay(regressions: &Path, target: &str, check: impl Fn(&[u8])) -> usize {
    let dir = regressions.join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    for file in &files {
        let data = std::fs::read(file)
            .unwrap_or_else(|e| panic!("cannot read regression input {}: {e}", file.display()));
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&data)));
        if let Err(cause) = outcome {
            let message = cause
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| cause.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("regression input {} fails again: {message}", file.display());
        }
    }
    files.len()
}
