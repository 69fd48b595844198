//! Finding the `caseshare` binary from a library crate (see the crate docs,
//! "Which binary"), and a command line for its client subcommands.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The environment variable that names the binary, overriding the search.
pub const BIN_ENV: &str = "CASESHARE_BIN";

/// The `caseshare` binary the kit runs when the caller names none:
/// `$CASESHARE_BIN`, else `caseshare` in the cargo profile directory of the
/// running test or example. Panics, saying how to build it, when neither
/// exists.
pub fn caseshare_bin() -> PathBuf {
    if let Some(p) = std::env::var_os(BIN_ENV) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "{BIN_ENV}={} names no file: build the broker or unset {BIN_ENV}",
            p.display()
        );
        return p;
    }
    let exe = std::env::current_exe().expect("the running executable's path");
    let bin = next_to(&exe);
    assert!(
        bin.is_file(),
        "no caseshare binary at {} (found from {}): build it with \
         `cargo build -p caseshare-cli --bin caseshare` (add --release for a release \
         example), or set {BIN_ENV}",
        bin.display(),
        exe.display()
    );
    bin
}

/// Where cargo puts the package's binary, seen from a test or example
/// executable: the profile directory, i.e. the executable's directory
/// without a trailing `deps` or `examples`.
pub(crate) fn next_to(exe: &Path) -> PathBuf {
    let dir = exe.parent().unwrap_or(Path::new("."));
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("deps" | "examples") => dir.parent().unwrap_or(dir),
        _ => dir,
    };
    profile.join(format!("caseshare{}", std::env::consts::EXE_SUFFIX))
}

/// A command running the `caseshare` binary with no arguments yet and no
/// client settings inherited from the environment (`CASESHARE_SERVER`,
/// `_CA`, `_CERT`, `_KEY`, `_CONFIG`): for the client subcommands and
/// `check`. Brokers are started with [`crate::Broker`], never through this.
pub fn caseshare_command() -> Command {
    let mut cmd = Command::new(caseshare_bin());
    for var in [
        "CASESHARE_SERVER",
        "CASESHARE_CA",
        "CASESHARE_CERT",
        "CASESHARE_KEY",
        "CASESHARE_CONFIG",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binary_is_found_in_the_profile_directory_of_a_test_or_example() {
        let exe = std::env::consts::EXE_SUFFIX;
        for (from, expected) in [
            ("/t/debug/deps/e2e_audit-0123abcd", "/t/debug"),
            ("/t/release/examples/backlog_rss", "/t/release"),
            (
                "/t/x86_64-unknown-linux-gnu/debug/deps/tidy-1",
                "/t/x86_64-unknown-linux-gnu/debug",
            ),
            ("/opt/tools/runner", "/opt/tools"),
        ] {
            assert_eq!(
                next_to(Path::new(from)),
                Path::new(expected).join(format!("caseshare{exe}")),
                "from {from}"
            );
        }
    }
}
