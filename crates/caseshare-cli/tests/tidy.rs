//! Repository hygiene, checked inside `cargo test`: every Rust module starts
//! with a `//!` doc comment saying what it owns, no test is marked ignored,
//! and the shipped deployment config parses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_has_a_doc_header() {
    let mut files = Vec::new();
    rust_files(&repo().join("crates"), &mut files);
    assert!(files.len() > 20);
    let missing: Vec<_> = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            !first.starts_with("//!")
        })
        .collect();
    assert!(
        missing.is_empty(),
        "modules without a //! header: {missing:?}"
    );
}

#[test]
fn no_ignored_tests() {
    let mut files = Vec::new();
    rust_files(&repo().join("crates"), &mut files);
    let needle = ["#[", "ignore"].concat();
    let offenders: Vec<_> = files
        .iter()
        .filter(|f| std::fs::read_to_string(f).unwrap().contains(&needle))
        .collect();
    assert!(offenders.is_empty(), "ignored tests: {offenders:?}");
}

#[test]
fn deploy_config_parses() {
    let cfg =
        caseshare_server::config::Config::load(Some(&repo().join("deploy/caseshare.toml")), |_| {
            None
        })
        .unwrap();
    assert_eq!(cfg.listen.port(), 7443);
    assert!(cfg.tls.ca.is_some());
}

#[test]
fn server_library_reports_through_tracing_only() {
    // `serve()` and everything under it log through `tracing`; the lines read
    // from stdout (dev PKI, verifier key, `caseshare listening: …`) are the
    // `caseshare` binary's, printed from the `Bound` handed to `on_bound`.
    let mut files = Vec::new();
    rust_files(&repo().join("crates/caseshare-server/src"), &mut files);
    assert!(files.len() > 10);
    let needles = [["print", "ln!("].concat(), ["print", "!("].concat()];
    let offenders: Vec<_> = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            needles.iter().any(|n| text.contains(n.as_str()))
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "stdout printing in the server library: {offenders:?}"
    );
}
