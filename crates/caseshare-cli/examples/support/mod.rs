//! What the measurement examples share: starting the real `caseshare serve`
//! binary on a temporary data directory and connecting to it with its dev
//! PKI.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use caseshare_cli::client::{ClientConfig, Clients};
use caseshare_proto::v1 as pb;

/// A broker process and where to reach it.
pub struct Served {
    /// The process (killed by the caller).
    pub child: Child,
    /// Its gRPC port.
    pub port: u16,
    /// Its data directory (deleted on drop).
    pub dir: tempfile::TempDir,
}

impl Served {
    /// Starts `bin serve` on port 0 with extra environment variables and
    /// waits for its listening line.
    pub fn start(bin: &str, env: &[(&str, &str)]) -> Served {
        Self::start_limited(bin, env, None)
    }

    /// As [`Served::start`], with RLIMIT_NOFILE (soft and hard) set to
    /// `nofile` for the broker process when given (through `sh -c ulimit`).
    pub fn start_limited(bin: &str, env: &[(&str, &str)], nofile: Option<u64>) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = Command::new("sh");
                c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\""), bin]);
                c
            }
            None => Command::new(bin),
        };
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--ops-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .env("CASESHARE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let port = loop {
            let line = lines.next().unwrap().unwrap();
            if let Some(rest) = line.strip_prefix("caseshare listening: grpc https://") {
                break rest
                    .split(' ')
                    .next()
                    .unwrap()
                    .rsplit(':')
                    .next()
                    .unwrap()
                    .parse::<u16>()
                    .unwrap();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Served { child, port, dir }
    }

    /// Clients acting as one of the dev PKI's identities.
    pub fn connect(&self, name: &str) -> Clients {
        let pki = self.dir.path().join("data/pki");
        Clients::connect(&ClientConfig::dev(
            format!("https://localhost:{}", self.port),
            &pki,
            name,
        ))
        .unwrap()
    }

    /// Registers the dev PKI's three agencies, as the administrator.
    pub async fn register_agencies(&self) {
        let mut admin = self.connect("admin");
        for (id, kind) in [
            ("school-b", pb::AgencyKind::Education),
            ("nhs-trust-a", pb::AgencyKind::Health),
            ("la-social-care-c", pb::AgencyKind::SocialCare),
        ] {
            admin
                .admin
                .register_agency(pb::RegisterAgencyRequest {
                    agency_id: id.into(),
                    kind: kind as i32,
                    display_name: id.into(),
                })
                .await
                .unwrap();
        }
    }

    /// SIGKILL and reap.
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
