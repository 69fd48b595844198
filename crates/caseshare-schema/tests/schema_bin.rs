//! The `caseshare-schema` binary itself, run from the repository root as a
//! developer or CI runs it: `check` passes on the repository and fails
//! (exit 1, naming the problem) on a broken proto, and `docs` prints exactly
//! the committed docs/SCHEMA.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn schema(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_caseshare-schema"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap()
}

#[test]
fn check_passes_on_the_repository() {
    let out = schema(&["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("schema check passed"), "{stdout}");
}

#[test]
fn check_fails_on_a_removed_field() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = dir.path().join(caseshare_schema::V1_DIR);
    std::fs::create_dir_all(&v1).unwrap();
    let from = repo()
        .join(caseshare_schema::PROTO_DIR)
        .join(caseshare_schema::V1_DIR);
    let mut removed = false;
    for entry in std::fs::read_dir(&from).unwrap() {
        let path = entry.unwrap().path();
        let mut text = std::fs::read_to_string(&path).unwrap();
        if !removed && let Some(at) = text.find("  string event_id = ") {
            let end = at + text[at..].find('\n').unwrap() + 1;
            text.replace_range(at..end, "");
            removed = true;
        }
        std::fs::write(v1.join(path.file_name().unwrap()), text).unwrap();
    }
    assert!(removed, "no `string event_id` field found to remove");
    let out = schema(&["check", "--proto", dir.path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("breaking:"), "{stderr}");
    assert!(stderr.contains("event_id"), "{stderr}");
}

#[test]
fn docs_prints_the_committed_schema_reference() {
    let out = schema(&["docs"]);
    assert!(out.status.success());
    let committed = std::fs::read_to_string(repo().join(caseshare_schema::DOCS_PATH)).unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout) == committed,
        "docs/SCHEMA.md is stale: run `caseshare-schema docs > docs/SCHEMA.md`"
    );
}
