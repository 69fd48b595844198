//! The one integration harness every end-to-end test uses: the real
//! `caseshare` binary, started on a temporary data directory with free
//! ports, its dev PKI created on first start, and gRPC clients connected
//! over mutual TLS with the PKI's certificates.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use caseshare_cli::client::{ClientConfig, Clients};
use caseshare_proto::v1 as pb;
use tokio_stream::StreamExt;

/// Valid NHS numbers for test children.
pub const CHILD_1: &str = "9434765919";
pub const CHILD_2: &str = "4010232137";

pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A running broker process.
pub struct Broker {
    child: Option<Child>,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub grpc: SocketAddr,
    pub ops: SocketAddr,
}

impl Broker {
    /// Starts a broker on a fresh temporary data directory.
    pub fn start() -> Broker {
        let tmp = tempfile::tempdir().unwrap();
        let mut b = Broker::start_in(tmp.path(), &[]);
        b._tmp = Some(tmp);
        b
    }

    /// Starts a broker on a fresh temporary data directory with extra
    /// environment variables (e.g. short backoffs).
    pub fn start_with(env: &[(&str, &str)]) -> Broker {
        let tmp = tempfile::tempdir().unwrap();
        let mut b = Broker::start_in(tmp.path(), env);
        b._tmp = Some(tmp);
        b
    }

    /// Starts a broker on `dir` (an existing data directory is reused), with
    /// extra environment variables.
    pub fn start_in(dir: &Path, env: &[(&str, &str)]) -> Broker {
        match Broker::try_start_in(dir, env, &[]) {
            Ok(b) => b,
            Err(r) => panic!("broker did not start ({}); stderr:\n{}", r.status, r.stderr),
        }
    }

    /// Restarts on the same data directory (after a kill or a stop).
    pub fn restart(&mut self) {
        let tmp = self._tmp.take();
        let mut b = Broker::start_in(&self.dir, &[]);
        b._tmp = tmp;
        *self = b;
    }

    pub fn pki(&self) -> PathBuf {
        self.dir.join("data").join("pki")
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn client_config(&self, name: &str) -> ClientConfig {
        ClientConfig::dev(
            format!("https://localhost:{}", self.grpc.port()),
            &self.pki(),
            name,
        )
    }

    /// Clients acting as one of the dev PKI's identities.
    pub fn client(&self, name: &str) -> Clients {
        Clients::connect(&self.client_config(name)).unwrap()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        c.wait().unwrap()
    }

    /// SIGTERM and wait for the exit without blocking the async runtime
    /// (the test's own client connections must keep being served while the
    /// broker drains them).
    pub async fn stop(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        tokio::task::spawn_blocking(move || c.wait().unwrap())
            .await
            .unwrap()
    }

    /// SIGHUP: reload the TLS files.
    pub fn hup(&self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// A Prometheus gauge or counter from the ops port.
    pub fn metric(&self, name: &str) -> f64 {
        let body = http_get(self.ops, "/metrics").1;
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }

    /// Registers the three sample agencies as admin.
    pub async fn register_sample_agencies(&self) {
        let mut admin = self.client("admin");
        for (id, kind) in [
            ("nhs-trust-a", pb::AgencyKind::Health),
            ("school-b", pb::AgencyKind::Education),
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

    /// The `AUTH_DENIED` entries once they account for at least `calls`
    /// refused calls (refusals are written in aggregate per interval), or
    /// after 10 s, whatever they then are.
    pub async fn auth_denied(&self, calls: u64) -> Vec<pb::AuditEntry> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let denied: Vec<_> = self
                .audit_entries()
                .await
                .into_iter()
                .filter(|e| e.kind == pb::EntryKind::AuthDenied as i32)
                .collect();
            let counted: u64 = denied.iter().map(|e| e.count).sum();
            if counted >= calls || std::time::Instant::now() > deadline {
                return denied;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The common sharing set-up: the sample agencies registered, an
    /// agreement `isa-edu-sc` from `school-b` to `la-social-care-c` for
    /// `education.*`, and social care's subscription `main`.
    pub async fn school_shares_with_social_care(&self) {
        self.register_sample_agencies().await;
        put_agreement(
            self,
            agreement(
                "isa-edu-sc",
                "school-b",
                "la-social-care-c",
                &["education.*"],
            ),
        )
        .await;
        create_subscription(self, "la-social-care-c", "main").await;
    }

    /// Every audit entry, via the Audit service as the auditor. The size
    /// comes from a checkpoint, which is answered only after every earlier
    /// commit, so nothing already written is missed.
    pub async fn audit_entries(&self) -> Vec<pb::AuditEntry> {
        let mut auditor = self.client("auditor");
        let size = auditor
            .audit
            .get_checkpoint(pb::GetCheckpointRequest {})
            .await
            .unwrap()
            .into_inner()
            .tree_size;
        let mut out = Vec::new();
        let mut stream = auditor
            .audit
            .get_entries(pb::GetEntriesRequest {
                start: 0,
                end: size,
            })
            .await
            .unwrap()
            .into_inner();
        while let Some(leaf) = stream.next().await {
            let leaf = leaf.unwrap();
            let entry = caseshare_audit::entry::decode(&leaf.leaf).unwrap();
            assert_eq!(entry.index, leaf.index);
            out.push(entry);
        }
        out
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A minimal HTTP/1.0 GET (the ops port is plain HTTP).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let status = buf
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// An attendance-concern event from the school.
pub fn attendance_event(id: &str, nhs: &str) -> pb::CaseEvent {
    pb::CaseEvent {
        event_id: id.into(),
        child: Some(pb::ChildRef {
            nhs_number: nhs.into(),
            local_ids: vec![],
        }),
        purpose: pb::Purpose::EarlyHelp as i32,
        occurred_at: Some(prost_types::Timestamp {
            seconds: 1_793_000_000,
            nanos: 0,
        }),
        summary: "Attendance has fallen sharply this half term".into(),
        payload: Some(pb::case_event::Payload::EducationAttendanceConcern(
            pb::AttendanceConcern {
                period: "2026-autumn-1".into(),
                attendance_percent: 78.5,
                unauthorised_sessions: 11,
            },
        )),
        ..Default::default()
    }
}

/// A health event.
pub fn was_not_brought_event(id: &str, nhs: &str) -> pb::CaseEvent {
    pb::CaseEvent {
        event_id: id.into(),
        child: Some(pb::ChildRef {
            nhs_number: nhs.into(),
            local_ids: vec![],
        }),
        purpose: pb::Purpose::EarlyHelp as i32,
        occurred_at: Some(prost_types::Timestamp {
            seconds: 1_793_000_000,
            nanos: 0,
        }),
        payload: Some(pb::case_event::Payload::HealthWasNotBrought(
            pb::WasNotBrought {
                appointment_kind: "paediatric_outpatient".into(),
                appointment_at: Some(prost_types::Timestamp {
                    seconds: 1_793_000_000,
                    nanos: 0,
                }),
                consecutive_missed: 2,
            },
        )),
        ..Default::default()
    }
}

pub fn agreement(id: &str, provider: &str, recipient: &str, event_types: &[&str]) -> pb::Agreement {
    pb::Agreement {
        agreement_id: id.into(),
        provider: provider.into(),
        recipient: recipient.into(),
        purposes: vec![
            pb::Purpose::EarlyHelp as i32,
            pb::Purpose::Safeguarding as i32,
        ],
        event_types: event_types.iter().map(|s| s.to_string()).collect(),
        lawful_basis: pb::LawfulBasis::PublicTask as i32,
        ..Default::default()
    }
}

pub async fn put_agreement(b: &Broker, a: pb::Agreement) {
    b.client("admin").admin.put_agreement(a).await.unwrap();
}

pub async fn create_subscription(b: &Broker, agency: &str, name: &str) {
    b.client(agency)
        .subscriber
        .create_subscription(pb::Subscription {
            name: name.into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

pub fn publish_request(event: pb::CaseEvent) -> pb::PublishRequest {
    pb::PublishRequest {
        event: Some(event),
        ..Default::default()
    }
}

/// An open Subscribe stream.
#[derive(Debug)]
pub struct Subscription {
    pub tx: tokio::sync::mpsc::Sender<pb::SubscribeRequest>,
    pub rx: tonic::Streaming<pb::Delivery>,
}

impl Subscription {
    pub async fn open(b: &Broker, agency: &str, name: &str, max_outstanding: u32) -> Subscription {
        Self::try_open(b, agency, name, max_outstanding)
            .await
            .unwrap()
    }

    /// Opens a stream, or returns the status the broker refused it with.
    pub async fn try_open(
        b: &Broker,
        agency: &str,
        name: &str,
        max_outstanding: u32,
    ) -> Result<Subscription, tonic::Status> {
        let mut c = b.client(agency);
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        tx.send(pb::SubscribeRequest {
            subscription: name.into(),
            max_outstanding,
            ..Default::default()
        })
        .await
        .unwrap();
        let rx = c
            .subscriber
            .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Subscription { tx, rx })
    }

    /// The next delivery (fails the test after 30 s).
    pub async fn next(&mut self) -> pb::Delivery {
        tokio::time::timeout(Duration::from_secs(30), self.rx.next())
            .await
            .expect("a delivery within 30 s")
            .expect("stream open")
            .expect("delivery, not an error")
    }

    pub async fn ack(&self, ids: Vec<String>) {
        self.tx
            .send(pb::SubscribeRequest {
                ack: Some(pb::AckIds { delivery_ids: ids }),
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

/// A start that ended before the broker listened: its exit status and what
/// it wrote to stderr during that start.
#[derive(Debug)]
pub struct Refused {
    pub status: ExitStatus,
    pub stderr: String,
}

impl Broker {
    /// Starts the broker on `dir` like [`Broker::start_in`], but a broker
    /// that exits before it listens (it refused to start) is returned as
    /// [`Refused`] instead of failing the test. `wrap` is a command line
    /// the broker is run under (e.g. `prlimit --fsize=N`), empty for none.
    pub fn try_start_in(
        dir: &Path,
        env: &[(&str, &str)],
        wrap: &[String],
    ) -> Result<Broker, Refused> {
        install_crypto();
        let log_path = dir.join("broker.log");
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let bin = env!("CARGO_BIN_EXE_caseshare");
        let mut cmd = match wrap.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
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
        .arg(dir.join("data"))
        .env("CASESHARE_LOG", "info")
        // Refusals are audited in aggregate per interval: short in tests.
        .env("CASESHARE_AUDIT_REFUSAL_INTERVAL_MS", "100")
        .env_remove("CASESHARE_CONFIG")
        .stdout(Stdio::piped())
        // Through a pipe, not the log file: a limit on file size (a full
        // disk) must not swallow the broker's refusal.
        .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start caseshare serve");
        let stderr = child.stderr.take().unwrap();
        let stderr_copy = std::thread::spawn(move || {
            use std::io::Write;
            let mut seen = String::new();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log, "{line}");
                if seen.len() < 1 << 20 {
                    seen.push_str(&line);
                    seen.push('\n');
                }
            }
            seen
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let (false, Some(rest)) = (
                    sent,
                    line.strip_prefix("caseshare listening: grpc https://"),
                ) {
                    let mut parts = rest.split(" ops http://");
                    let grpc: SocketAddr = parts.next().unwrap().parse().unwrap();
                    let ops: SocketAddr = parts.next().unwrap().parse().unwrap();
                    let _ = tx.send((grpc, ops));
                    sent = true;
                }
            }
            // stdout closed without the line: the sender drops and the
            // receiver sees the broker go.
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok((grpc, ops)) => Ok(Broker {
                child: Some(child),
                dir: dir.to_path_buf(),
                _tmp: None,
                grpc,
                ops,
            }),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().unwrap();
                Err(Refused {
                    status,
                    stderr: stderr_copy.join().unwrap(),
                })
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("broker neither started nor exited within 60 s; log:\n{log}");
            }
        }
    }
}

/// A digest of every file and directory under `root` (mode, length,
/// SHA-256), by relative path: two equal digests mean byte-for-byte equal
/// trees.
pub fn digest_tree(root: &Path) -> std::collections::BTreeMap<String, String> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::PermissionsExt;
    fn go(root: &Path, dir: &Path, out: &mut std::collections::BTreeMap<String, String>) {
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
    let mut out = std::collections::BTreeMap::new();
    go(root, root, &mut out);
    out
}

/// The single `error:` line a refused start printed.
pub fn refusal_message(r: &Refused) -> String {
    let lines: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "one error line expected; stderr:\n{}",
        r.stderr
    );
    assert!(!r.status.success(), "{}", r.status);
    lines[0].to_string()
}

/// Runs `caseshare check --data-dir <data>` (with `--json` if asked):
/// its exit code and stdout.
pub fn caseshare_check(data: &Path, json: bool) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_caseshare"));
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

/// Every file under `dir` with its bytes (to show a refusal changed
/// nothing).
pub fn dir_contents(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
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

/// Calls any method path (known or not) with an empty unary request on
/// `channel` and returns the status code.
pub async fn call_path(channel: tonic::transport::Channel, path: &str) -> tonic::Code {
    let mut grpc = tonic::client::Grpc::new(channel);
    if grpc.ready().await.is_err() {
        return tonic::Code::Unavailable;
    }
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let Ok(path) = http::uri::PathAndQuery::try_from(path.to_string()) else {
        return tonic::Code::InvalidArgument;
    };
    match grpc.unary(tonic::Request::new(()), path, codec).await {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}

/// A raw mutual-TLS socket (ALPN h2) to the broker as one of the dev PKI's
/// identities, with nothing sent yet: for tests of what the broker does to
/// sockets that stall.
pub async fn raw_tls(
    b: &Broker,
    identity: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let pki = b.pki();
    let read = |n: String| std::fs::read(pki.join(n)).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut read("ca.pem".into()).as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let certs: Vec<_> = rustls_pemfile::certs(&mut read(format!("{identity}.pem")).as_slice())
        .map(|c| c.unwrap())
        .collect();
    let key = rustls_pemfile::private_key(&mut read(format!("{identity}.key")).as_slice())
        .unwrap()
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(b.grpc).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
}

/// The HTTP/2 client preface and an empty SETTINGS frame.
pub const H2_PREFACE: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Reads (and discards) until the peer closes the socket; returns how long
/// that took, or `None` if it was still open after `limit`.
pub async fn closed_within(
    s: &mut (impl tokio::io::AsyncRead + Unpin),
    limit: Duration,
) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let start = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.checked_sub(start.elapsed())?;
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}
