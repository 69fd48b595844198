//! Who may read a private key file: the one rule for the TLS key, the
//! checkpoint signing key and the pseudonym key (and `caseshare check`).
//!
//! PostgreSQL's rule for `ssl_key_file`: a key owned by the broker's own
//! user must be `0600` or stricter; a key owned by root or by the broker's
//! user may also be group-readable (`0640`, `0440`), because that is how a
//! Kubernetes Secret volume with `fsGroup` presents it (owner root, group
//! the pod's `fsGroup`, `defaultMode: 0440`). Never world-accessible, never
//! group-writable or executable, and a group-readable key owned by any
//! other user is refused.

use std::path::Path;

/// Mode bits no key may have: any permission for others, and group write
/// or execute.
const NEVER: u32 = 0o037;

/// Why a key file with this mode and owner must not be used, or `None`.
/// `me` is the broker's effective uid.
pub fn problem(mode: u32, owner: u32, me: u32) -> Option<String> {
    let mode = mode & 0o777;
    if mode & 0o077 == 0 {
        return None;
    }
    if mode & 0o007 != 0 {
        return Some(format!("readable by other users (mode {mode:o})"));
    }
    if mode & NEVER != 0 {
        return Some(format!("group-writable or executable (mode {mode:o})"));
    }
    if owner != 0 && owner != me {
        return Some(format!(
            "group-readable (mode {mode:o}) and owned by uid {owner}, neither root nor this \
             process's uid {me}"
        ));
    }
    None
}

/// [`problem`] for the file at `path` (following symbolic links, as a
/// Secret volume's files are), with the fix appended; `Ok(None)` if the key
/// may be used.
pub fn check(path: &Path) -> std::io::Result<Option<String>> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    let me = nix::unistd::geteuid().as_raw();
    Ok(problem(meta.mode(), meta.uid(), me).map(|why| {
        format!(
            "{why}; run `chmod 600 {}` (or 0640/0440 owned by root or this user, no access for \
             others)",
            path.display()
        )
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const ME: u32 = 10001;

    /// The modes Kubernetes gives a Secret's files: `defaultMode` 0400,
    /// 0440 (with `fsGroup`), 0640, and the default 0644; 0444 is what a
    /// `defaultMode: 0444` gives. Owned by root, as the kubelet writes them.
    #[test]
    fn kubernetes_secret_modes_owned_by_root() {
        for mode in [0o400, 0o440, 0o600, 0o640] {
            assert_eq!(problem(mode, 0, ME), None, "{mode:o}");
        }
        for mode in [0o444, 0o644, 0o604, 0o666, 0o660, 0o650, 0o700 | 0o001] {
            assert!(problem(mode, 0, ME).is_some(), "{mode:o}");
        }
    }

    #[test]
    fn owned_by_this_user_or_another() {
        for mode in [0o400, 0o600, 0o440, 0o640] {
            assert_eq!(problem(mode, ME, ME), None, "{mode:o}");
        }
        assert!(problem(0o644, ME, ME).unwrap().contains("other users"));
        // Another user's key: only without group bits (as before).
        assert_eq!(problem(0o600, 4242, ME), None);
        assert!(problem(0o440, 4242, ME).unwrap().contains("uid 4242"));
        assert!(problem(0o640, 4242, ME).is_some());
        // Only the permission bits count (the file type bits are ignored).
        assert_eq!(problem(0o100_440, 0, ME), None);
    }
}
