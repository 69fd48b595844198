//! `caseshare check --data-dir DIR`: read-only verification of a stopped
//! broker's data directory (spec §5), one line per check, OK or DAMAGED with
//! the file and offset; exit 0 when all is well, 1 when anything is damaged.
//!
//! The store's checks are `caseshare_store::check` (sled is opened on a copy
//! in a temporary directory, since sled writes when it opens); here are the
//! key files and the dev PKI: present, secret ones not readable by other
//! users, and their contents checked as the broker checks them at start
//! (`caseshare_server::check_keys_and_pki`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use caseshare_store::check::Finding;

/// Runs every check on `data_dir`.
pub fn run(data_dir: &Path) -> anyhow::Result<Vec<Finding>> {
    if !data_dir.is_dir() {
        anyhow::bail!("{} is not a directory", data_dir.display());
    }
    let scratch = tempfile::tempdir()?;
    let store = data_dir.join("store");
    let has_store = store.join("db").exists();
    let mut out = Vec::new();
    if has_store {
        out.extend(caseshare_store::check::check_store(&store, scratch.path()));
    } else {
        out.push(finding(
            "store",
            &store,
            false,
            "no store here (store/db missing)",
        ));
    }
    // Secrets: present next to existing data, and private.
    let secrets = data_dir.join("secrets");
    out.push(secret(&secrets.join("pseudonym.key"), None));
    out.push(secret(&secrets.join("checkpoint.skey"), None));
    // The keys' contents and the dev PKI, exactly as `serve` would check
    // them at start (check values, key ids, the server certificate
    // against the CA), without creating anything.
    let config = caseshare_server::config::Config {
        data_dir: data_dir.to_path_buf(),
        ..Default::default()
    };
    let problems = caseshare_server::check_keys_and_pki(&config);
    if problems.is_empty() {
        out.push(finding(
            "keys and pki",
            data_dir,
            true,
            "the keys pass their checks and the dev PKI (if any) is whole",
        ));
    }
    for p in problems {
        out.push(finding("keys and pki", data_dir, false, p));
    }
    // The dev PKI, if this directory has one.
    let pki = data_dir.join("pki");
    if pki.is_dir() {
        for name in ["ca.pem", "server.pem"] {
            out.push(public(&pki.join(name)));
        }
        out.push(secret(&pki.join("server.key"), None));
        for (name, _) in caseshare_server::pki::DEV_CLIENTS {
            out.push(public(&pki.join(format!("{name}.pem"))));
            out.push(secret(&pki.join(format!("{name}.key")), None));
        }
        if pki.join("ca.key").exists() {
            out.push(secret(&pki.join("ca.key"), None));
        }
    }
    Ok(out)
}

fn finding(check: &str, file: &Path, ok: bool, detail: impl Into<String>) -> Finding {
    Finding {
        check: check.into(),
        file: file.to_path_buf(),
        ok,
        offset: None,
        detail: detail.into(),
    }
}

fn secret(path: &Path, len: Option<u64>) -> Finding {
    let Ok(m) = std::fs::metadata(path) else {
        return finding(
            "secret",
            path,
            false,
            "missing (the broker refuses to start rather than make a new one next to data)",
        );
    };
    // The broker's own rule (0600, or 0640/0440 owned by root or its user).
    if let Ok(Some(why)) = caseshare_server::keymode::check(path) {
        return finding("secret", path, false, why);
    }
    if len.is_some_and(|l| l != m.len()) {
        return finding(
            "secret",
            path,
            false,
            format!("{} bytes, expected {}", m.len(), len.unwrap_or(0)),
        );
    }
    finding(
        "secret",
        path,
        true,
        format!("present, mode {:o}", m.permissions().mode() & 0o777),
    )
}

fn public(path: &Path) -> Finding {
    match std::fs::metadata(path) {
        Ok(m) if m.len() > 0 => finding("pki", path, true, "present"),
        Ok(_) => finding("pki", path, false, "empty"),
        Err(_) => finding("pki", path, false, "missing"),
    }
}

/// Prints the report (text or JSON); returns whether all is well.
pub fn report(findings: &[Finding], json: bool) -> bool {
    let ok = findings.iter().all(|f| f.ok);
    if json {
        let items: Vec<serde_json::Value> = findings
            .iter()
            .map(|f| {
                serde_json::json!({
                    "check": f.check,
                    "file": f.file.display().to_string(),
                    "status": if f.ok { "OK" } else { "DAMAGED" },
                    "offset": f.offset,
                    "detail": f.detail,
                })
            })
            .collect();
        let doc = serde_json::json!({ "ok": ok, "checks": items });
        println!("{doc:#}");
    } else {
        for f in findings {
            let at = f.offset.map(|o| format!(" @{o}")).unwrap_or_default();
            println!(
                "{:<8} {:<24} {}{at}: {}",
                if f.ok { "OK" } else { "DAMAGED" },
                f.check,
                f.file.display(),
                f.detail
            );
        }
        let damaged = findings.iter().filter(|f| !f.ok).count();
        if damaged == 0 {
            println!("all {} checks passed", findings.len());
        } else {
            println!(
                "{damaged} of {} checks found damage; see `caseshare check` in docs/OPERATIONS.md",
                findings.len()
            );
        }
    }
    ok
}

/// Where the data directory is, as `serve` would pick it.
pub fn data_dir(arg: Option<PathBuf>) -> PathBuf {
    arg.unwrap_or_else(|| PathBuf::from("caseshare-data"))
}
