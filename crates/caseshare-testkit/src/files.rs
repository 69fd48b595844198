//! Data-directory and process helpers: digests and copies of directory
//! trees (to show a refusal changed nothing), `caseshare check` on a
//! stopped broker's data directory, and a process's resident memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A digest of every file and directory under `root` (mode, length,
/// SHA-256), by relative path: two equal digests mean byte-for-byte equal
/// trees.
pub fn digest_tree(root: &Path) -> BTreeMap<String, String> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::PermissionsExt;
    fn go(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let mode = meta.permissions().mode();
            if meta.is_dir() {
                out.insert(format!("{rel}/"), format!("dir {mode:o}"));
                go(root, &p, out);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                let hash: String = Sha256::digest(&bytes)
                    .iter()
                    .map(|x| format!("{x:02x}"))
                    .collect();
                out.insert(rel, format!("{mode:o} {} {hash}", bytes.len()));
            }
        }
    }
    let mut out = BTreeMap::new();
    go(root, root, &mut out);
    out
}

/// Every file under `dir` with its bytes (to show a refusal changed
/// nothing).
pub fn dir_contents(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Runs `caseshare check --data-dir <data>` (with `--json` if asked):
/// its exit code and stdout.
pub fn caseshare_check(data: &Path, json: bool) -> (i32, String) {
    let mut cmd = crate::caseshare_command();
    cmd.arg("check").arg("--data-dir").arg(data);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().expect("run caseshare check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A process's resident memory (VmRSS), MiB; 0 if it cannot be read.
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("a/b")).unwrap();
        std::fs::write(t.path().join("a/one"), b"one").unwrap();
        std::fs::write(t.path().join("a/b/two"), b"two").unwrap();
        t
    }

    #[test]
    fn a_copy_digests_equal_and_any_change_shows() {
        let from = tree();
        let to = tempfile::tempdir().unwrap();
        copy_dir(from.path(), to.path());
        assert_eq!(digest_tree(from.path()), digest_tree(to.path()));
        assert_eq!(digest_tree(from.path()).len(), 4, "two dirs, two files");
        let rel = |m: BTreeMap<PathBuf, Vec<u8>>, root: &Path| -> Vec<(PathBuf, Vec<u8>)> {
            m.into_iter()
                .map(|(p, b)| (p.strip_prefix(root).unwrap().to_path_buf(), b))
                .collect()
        };
        assert_eq!(
            rel(dir_contents(from.path()), from.path()),
            rel(dir_contents(to.path()), to.path())
        );

        let before = digest_tree(to.path());
        std::fs::write(to.path().join("a/b/two"), b"twO").unwrap();
        assert_ne!(digest_tree(to.path()), before, "same length, one byte");
        std::fs::write(to.path().join("a/b/two"), b"two").unwrap();
        assert_eq!(digest_tree(to.path()), before);
        let one = to.path().join("a/one");
        let mode = std::fs::metadata(&one).unwrap().permissions().mode();
        std::fs::set_permissions(&one, std::fs::Permissions::from_mode(mode ^ 0o004)).unwrap();
        assert_ne!(digest_tree(to.path()), before, "a mode change");
    }

    #[test]
    fn this_process_has_resident_memory_and_no_process_has_none() {
        assert!(rss_mib(std::process::id()) > 0.0);
        assert_eq!(rss_mib(u32::MAX), 0.0);
    }
}
