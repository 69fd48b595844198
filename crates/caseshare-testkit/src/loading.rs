//! A broker watched while it starts: `caseshare serve` spawned with an ops
//! port chosen here, not waited for, so a test can probe `/healthz` and
//! `/readyz` while the broker loads its store or waits for its NATS
//! cluster (issue 17: a liveness probe must not kill a slow start).
//! Dropping it kills the process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A `caseshare serve` process that may not be serving yet.
#[derive(Debug)]
pub struct Loading {
    child: Child,
    /// Its ops address (plain HTTP).
    pub ops: SocketAddr,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Loading {
    /// Spawns the broker on a new data directory with `env`; its ops port
    /// is one that was free a moment ago.
    pub fn spawn(env: &[(&str, &str)]) -> Loading {
        crate::install_crypto();
        let dir = tempfile::tempdir().unwrap();
        let ops = free_port();
        let log = dir.path().join("broker.log");
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let mut cmd = Command::new(crate::caseshare_bin());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--ops-listen"])
            .arg(ops.to_string())
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("CASESHARE_LOG", "info")
            .env_remove("CASESHARE_CONFIG")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        Loading {
            child,
            ops,
            log,
            _dir: dir,
        }
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The data directory.
    pub fn data(&self) -> PathBuf {
        self._dir.path().join("data")
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(Path::new(&self.log)).unwrap_or_default()
    }
}

impl Drop for Loading {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free when asked (the kernel's pick, released).
fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}
