//! Repository hygiene, checked inside `cargo test`: every Rust module starts
//! with a `//!` doc comment saying what it owns, no test is marked ignored,
//! the shipped deployment config parses, no test or example starts a broker
//! but through `caseshare-testkit` (which runs the binary cargo built for
//! these tests), test, example and kit files stay under 800 lines, and
//! every crate but `caseshare-alloc` forbids `unsafe` code.
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
fn only_the_allocator_crate_may_hold_unsafe_code() {
    // Every other crate takes the workspace's lints, which forbid `unsafe`.
    let mut without = Vec::new();
    for entry in std::fs::read_dir(repo().join("crates")).unwrap() {
        let dir = entry.unwrap().path();
        let manifest = dir.join("Cargo.toml");
        if !manifest.exists() || dir.ends_with("caseshare-alloc") {
            continue;
        }
        let text = std::fs::read_to_string(&manifest).unwrap();
        if !text.contains("[lints]\nworkspace = true") {
            without.push(manifest);
        }
    }
    assert!(
        without.is_empty(),
        "crates without the workspace lints: {without:?}"
    );
    let root = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    assert!(root.contains("unsafe_code = \"forbid\""));
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
    // The image's config and the one the Kubernetes manifests mount.
    for file in ["deploy/caseshare.toml", "deploy/k8s/base/caseshare.toml"] {
        let cfg = caseshare_server::config::Config::load(Some(&repo().join(file)), |_| None)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(cfg.listen.port(), 7443, "{file}");
        assert!(cfg.tls.ca.is_some(), "{file}");
    }
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

/// The test and example sources of every crate but the kit (which starts
/// brokers) and the bench (tooling with its own embedded broker).
fn test_and_example_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(repo().join("crates")).unwrap() {
        let krate = entry.unwrap().path();
        let name = krate.file_name().unwrap().to_string_lossy().into_owned();
        if name == "caseshare-testkit" || name == "caseshare-bench" {
            continue;
        }
        for dir in ["tests", "examples", "benches"] {
            if krate.join(dir).is_dir() {
                rust_files(&krate.join(dir), &mut files);
            }
        }
    }
    files
}

#[test]
fn no_test_or_example_starts_a_broker_but_through_the_kit() {
    // This file names the binary once, below, to check the kit runs the one
    // cargo built; nothing here starts a broker.
    let this = Path::new(file!()).file_name().unwrap().to_owned();
    let files: Vec<PathBuf> = test_and_example_files()
        .into_iter()
        .filter(|f| f.file_name() != Some(this.as_os_str()))
        .collect();
    assert!(files.len() > 15, "{files:?}");
    let needles = [
        // The binary, run by hand (client commands go through
        // `caseshare_testkit::caseshare_command`).
        "CARGO_BIN_EXE_caseshare\"",
        // `caseshare serve` spawned by hand.
        "\"serve\"",
        // The server library served in-process.
        "caseshare_server::serve",
        "Server::builder(",
    ];
    let offenders: Vec<String> = files
        .iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            needles
                .iter()
                .filter(|n| text.contains(**n))
                .map(|n| format!("{}: {n}", f.display()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "start brokers with caseshare_testkit::Broker: {offenders:#?}"
    );
}

#[test]
fn the_kit_runs_the_binary_cargo_built_for_these_tests() {
    let expected = match std::env::var_os("CASESHARE_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_BIN_EXE_caseshare")),
    };
    assert_eq!(
        caseshare_testkit::caseshare_bin().canonicalize().unwrap(),
        expected.canonicalize().unwrap()
    );
}

#[test]
fn every_source_file_in_crates_stays_small_with_no_many_arguments_allowance() {
    let mut files = Vec::new();
    rust_files(&repo().join("crates"), &mut files);
    assert!(
        files.len() > 100,
        "the walk found the sources: {}",
        files.len()
    );
    let allowance = ["too_many", "arguments"].join("_");
    let allowed: Vec<String> = files
        .iter()
        .filter(|f| std::fs::read_to_string(f).unwrap().contains(&allowance))
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        allowed.is_empty(),
        "a function that needs many arguments wants a type: {allowed:#?}"
    );
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let lines = std::fs::read_to_string(f).unwrap().lines().count();
            (lines > 800).then(|| format!("{}: {lines} lines", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "split these files: {long:#?}");
}
