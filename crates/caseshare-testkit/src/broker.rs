//! A running broker and its lifecycle: the builder (topology, binary,
//! environment, data directory, a wrapper command), starting the real
//! `caseshare serve` process and waiting for its listening line, refused
//! starts, signals (SIGTERM, SIGHUP, SIGKILL), restart on the same data
//! directory, its paths, its metrics and its typed clients.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use caseshare_cli::client::{ClientConfig, Clients};

use crate::net::http_get;

/// How long a start may take before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The line `caseshare serve` prints on stdout once it listens.
const LISTENING: &str = "caseshare listening: grpc https://";

/// What kind of broker a test runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Topology {
    /// One broker process (`caseshare serve`) on one data directory: the
    /// broker as it ships today. A process, not an in-process server, so
    /// that tests can SIGKILL it, signal it, limit it (`prlimit`) and read
    /// its stdout, stderr and exit status.
    #[default]
    Single,
    /// One broker replica in cluster mode on its own 3-node NATS JetStream
    /// cluster (`sync_interval: always`), owned by the [`Broker`] and
    /// stopped with it; every write goes through the journal. The suite
    /// runs its end-to-end tests on this topology too when
    /// `CASESHARE_TEST_TOPOLOGY=cluster` (a builder left at the default
    /// takes it from there). Several replicas: [`crate::BrokerCluster`].
    Cluster,
}

/// The environment variable that runs tests written for the default
/// topology on another one (`single` or `cluster`).
pub const TOPOLOGY_ENV: &str = "CASESHARE_TEST_TOPOLOGY";

impl Topology {
    /// The topology a builder left at the default uses: [`TOPOLOGY_ENV`].
    pub fn from_env() -> Topology {
        match std::env::var(TOPOLOGY_ENV).as_deref() {
            Ok("cluster") => Topology::Cluster,
            Ok("single") | Err(_) => Topology::Single,
            Ok(other) => panic!("{TOPOLOGY_ENV}={other:?}: single or cluster"),
        }
    }
}

/// How a broker is started; [`Broker::builder`] makes one.
#[derive(Debug, Clone, Default)]
pub struct BrokerBuilder {
    topology: Option<Topology>,
    binary: Option<PathBuf>,
    env: Vec<(String, String)>,
    wrap: Vec<String>,
    log: Option<String>,
    dir: Option<PathBuf>,
}

impl BrokerBuilder {
    /// The topology (default: [`Topology::from_env`]).
    pub fn topology(mut self, topology: Topology) -> Self {
        self.topology = Some(topology);
        self
    }

    /// The `caseshare` binary to run instead of [`crate::caseshare_bin`].
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// The binary named by command-line argument `index` of this process,
    /// if there is one (the measurement examples take the binary to measure
    /// as their first argument); otherwise unchanged.
    pub fn binary_arg(self, index: usize) -> Self {
        match std::env::args_os().nth(index) {
            Some(bin) => self.binary(bin),
            None => self,
        }
    }

    /// One extra environment variable for the broker (kept on restart).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Extra environment variables for the broker (kept on restart).
    pub fn envs(mut self, env: &[(&str, &str)]) -> Self {
        self.env
            .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    /// A command line the broker is run under, e.g. `prlimit --fsize=N` or
    /// `sh -c 'ulimit -n 4096 && exec "$0" "$@"'`; the binary and its
    /// arguments follow it. For this start only: a restart runs the broker
    /// bare.
    pub fn wrap(mut self, wrap: &[String]) -> Self {
        self.wrap = wrap.to_vec();
        self
    }

    /// `CASESHARE_LOG` (default `info`; the broker's stderr is appended to
    /// `broker.log` in the test directory).
    pub fn log(mut self, level: &str) -> Self {
        self.log = Some(level.into());
        self
    }

    /// The test directory (the data directory is its `data/`; an existing
    /// one is reused). Without it the broker gets a fresh temporary
    /// directory, deleted when the [`Broker`] is dropped.
    pub fn dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_path_buf());
        self
    }

    /// Starts the broker; a refused start fails the test with its stderr.
    pub fn start(self) -> Broker {
        match self.try_start() {
            Ok(b) => b,
            Err(r) => panic!("broker did not start ({}); stderr:\n{}", r.status, r.stderr),
        }
    }

    /// Starts the broker; one that exits before it listens (it refused to
    /// start) is returned as [`Refused`].
    pub fn try_start(mut self) -> Result<Broker, Refused> {
        let nats = match self.topology.unwrap_or_else(Topology::from_env) {
            Topology::Single => None,
            Topology::Cluster => {
                // Started on a runtime of its own: this may be called from
                // inside a test's runtime, where nothing may block on it.
                let nats = std::thread::spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap()
                        .block_on(crate::NatsCluster::start(3))
                })
                .join()
                .unwrap();
                self.env
                    .push(("CASESHARE_STORE_BACKEND".into(), "nats".into()));
                self.env
                    .push(("CASESHARE_NATS_SERVERS".into(), nats.urls().join(",")));
                Some(nats)
            }
        };
        let (dir, tmp) = match &self.dir {
            Some(d) => (d.clone(), None),
            None => {
                let t = tempfile::tempdir().unwrap();
                (t.path().to_path_buf(), Some(t))
            }
        };
        let launch = Launch {
            binary: self.binary.unwrap_or_else(crate::caseshare_bin),
            env: self.env,
            log: self.log.unwrap_or_else(|| "info".into()),
        };
        let (child, grpc, ops) = launch.spawn(&dir, &self.wrap)?;
        Ok(Broker {
            child: Some(child),
            dir,
            _tmp: tmp,
            grpc,
            ops,
            launch,
            _nats: nats,
        })
    }
}

/// What a restart repeats: the binary, the environment, the log level.
#[derive(Debug, Clone)]
struct Launch {
    binary: PathBuf,
    env: Vec<(String, String)>,
    log: String,
}

impl Launch {
    /// Runs `caseshare serve` on `dir/data` with ports chosen by the kernel
    /// and waits for its listening line.
    fn spawn(
        &self,
        dir: &Path,
        wrap: &[String],
    ) -> Result<(Child, SocketAddr, SocketAddr), Refused> {
        crate::install_crypto();
        let log_path = dir.join("broker.log");
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let mut cmd = match wrap.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
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
        .env("CASESHARE_LOG", &self.log)
        // Refusals are audited in aggregate per interval: short in tests.
        .env("CASESHARE_AUDIT_REFUSAL_INTERVAL_MS", "100")
        .env_remove("CASESHARE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // Through a pipe, not the log file: a limit on file size (a full
        // disk) must not swallow the broker's refusal.
        .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {} serve: {e}", self.binary.display()));
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
                if !sent && let Some(addrs) = parse_listening(&line) {
                    let _ = tx.send(addrs);
                    sent = true;
                }
            }
            // stdout closed without the line: the sender drops and the
            // receiver sees the broker go.
        });
        match rx.recv_timeout(START_TIMEOUT) {
            Ok((grpc, ops)) => Ok((child, grpc, ops)),
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
                panic!(
                    "broker neither started nor exited within {} s; log:\n{log}",
                    START_TIMEOUT.as_secs()
                );
            }
        }
    }
}

/// The gRPC and ops addresses in `caseshare listening: grpc https://A ops
/// http://B`, or `None` for any other line.
pub(crate) fn parse_listening(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = line.strip_prefix(LISTENING)?;
    let (grpc, ops) = rest.split_once(" ops http://")?;
    Some((grpc.parse().ok()?, ops.trim().parse().ok()?))
}

/// A start that ended before the broker listened: its exit status and what
/// it wrote to stderr during that start.
#[derive(Debug)]
pub struct Refused {
    /// The exit status.
    pub status: ExitStatus,
    /// Its stderr (the first MiB).
    pub stderr: String,
}

/// The single `error:` line a refused start printed (asserting there is
/// exactly one and the exit status is a failure).
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

/// Where a broker listens and where its certificates are: enough to make
/// clients, and cheap to clone into tasks that outlive a restart.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The gRPC address.
    pub grpc: SocketAddr,
    /// The development PKI directory (CA, server and client certificates).
    pub pki: PathBuf,
}

impl Endpoint {
    /// Client settings for one of the dev PKI's identities (`admin`,
    /// `auditor`, or an agency id).
    pub fn client_config(&self, name: &str) -> ClientConfig {
        ClientConfig::dev(
            format!("https://localhost:{}", self.grpc.port()),
            &self.pki,
            name,
        )
    }

    /// Typed clients (one per service) acting as `name`, over mutual TLS.
    pub fn client(&self, name: &str) -> Clients {
        Clients::connect(&self.client_config(name)).unwrap()
    }
}

/// A running broker. Dropping it kills the process (and deletes its
/// temporary directory, if the kit made one).
pub struct Broker {
    child: Option<Child>,
    /// The test directory: `broker.log` and the data directory `data/`.
    pub dir: PathBuf,
    // Held for its Drop: deletes the directory the kit made.
    _tmp: Option<tempfile::TempDir>,
    /// The gRPC address (mutual TLS).
    pub grpc: SocketAddr,
    /// The ops address (plain HTTP: `/healthz`, `/readyz`, `/metrics`).
    pub ops: SocketAddr,
    launch: Launch,
    // Topology::Cluster: the NATS cluster, stopped after the broker.
    _nats: Option<crate::NatsCluster>,
}

impl Broker {
    /// A builder, for what the shorthands below do not cover (a binary of
    /// the caller's, a wrapper, a log level, a topology).
    pub fn builder() -> BrokerBuilder {
        BrokerBuilder::default()
    }

    /// Starts a broker on a fresh temporary data directory.
    pub fn start() -> Broker {
        Broker::builder().start()
    }

    /// Starts a broker on a fresh temporary data directory with extra
    /// environment variables (e.g. short backoffs).
    pub fn start_with(env: &[(&str, &str)]) -> Broker {
        Broker::builder().envs(env).start()
    }

    /// Starts a broker on `dir` (an existing data directory is reused), with
    /// extra environment variables.
    pub fn start_in(dir: &Path, env: &[(&str, &str)]) -> Broker {
        Broker::builder().dir(dir).envs(env).start()
    }

    /// Starts the broker on `dir` like [`Broker::start_in`], but a broker
    /// that exits before it listens (it refused to start) is returned as
    /// [`Refused`] instead of failing the test. `wrap` is a command line
    /// the broker is run under (e.g. `prlimit --fsize=N`), empty for none.
    pub fn try_start_in(
        dir: &Path,
        env: &[(&str, &str)],
        wrap: &[String],
    ) -> Result<Broker, Refused> {
        Broker::builder().dir(dir).envs(env).wrap(wrap).try_start()
    }

    /// Restarts on the same data directory (after a kill or a stop), with
    /// the same binary and environment; new ports. A broker still running
    /// is killed first.
    pub fn restart(&mut self) {
        if let Err(r) = self.try_restart() {
            panic!(
                "broker did not restart ({}); stderr:\n{}",
                r.status, r.stderr
            )
        }
    }

    /// As [`Broker::restart`], but a broker that exits before it listens
    /// (it refused to start) is returned as [`Refused`]; the broker is then
    /// not running, and [`Broker::restart`] may start it again later.
    pub fn try_restart(&mut self) -> Result<(), Refused> {
        self.kill9();
        let (child, grpc, ops) = self.launch.spawn(&self.dir, &[])?;
        self.child = Some(child);
        self.grpc = grpc;
        self.ops = ops;
        Ok(())
    }

    /// The data directory.
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The development PKI directory (made on first start).
    pub fn pki(&self) -> PathBuf {
        self.data().join("pki")
    }

    /// The broker's stderr so far (`broker.log`, all its lifetimes).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("broker.log")
    }

    /// Where to reach this lifetime of the broker.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            grpc: self.grpc,
            pki: self.pki(),
        }
    }

    /// Client settings for one of the dev PKI's identities.
    pub fn client_config(&self, name: &str) -> ClientConfig {
        self.endpoint().client_config(name)
    }

    /// Typed clients (publisher, subscriber, consent, admin, audit) acting
    /// as one of the dev PKI's identities, over mutual TLS.
    pub fn client(&self, name: &str) -> Clients {
        self.endpoint().client(name)
    }

    /// The exit status of a broker that exited on its own (crash-only
    /// exits, a refused restart), reaped; `None` while it runs or is
    /// stopped (SIGSTOP), and once the kit itself killed or stopped it.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().unwrap()?;
        self.child = None;
        Some(status)
    }

    /// True while the kit has a process for it (running or SIGSTOPped).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// The last `n` lines of `broker.log` (all its lifetimes).
    pub fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGKILL and reap: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            c.wait().unwrap();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        sigterm(&c);
        c.wait().unwrap()
    }

    /// SIGTERM and wait for the exit without blocking the async runtime
    /// (the test's own client connections must keep being served while the
    /// broker drains them).
    pub async fn stop(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        sigterm(&c);
        tokio::task::spawn_blocking(move || c.wait().unwrap())
            .await
            .unwrap()
    }

    /// SIGHUP: reload the TLS files.
    pub fn hup(&self) {
        signal(self.pid(), nix::sys::signal::Signal::SIGHUP);
    }

    /// SIGSTOPs the broker: it keeps its sockets and does nothing (a
    /// paused VM, a long GC-like stall) until [`Broker::resume`].
    pub fn pause(&self) {
        signal(self.pid(), nix::sys::signal::Signal::SIGSTOP);
    }

    /// SIGCONTs the broker after [`Broker::pause`].
    pub fn resume(&self) {
        signal(self.pid(), nix::sys::signal::Signal::SIGCONT);
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// A Prometheus gauge or counter from the ops port (0 if absent).
    pub fn metric(&self, name: &str) -> f64 {
        let body = http_get(self.ops, "/metrics").1;
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }
}

fn sigterm(c: &Child) {
    signal(c.id(), nix::sys::signal::Signal::SIGTERM);
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
    nix::sys::signal::kill(pid, sig).unwrap();
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_line_gives_both_addresses_and_nothing_else_does() {
        assert_eq!(
            parse_listening(
                "caseshare listening: grpc https://127.0.0.1:40001 ops http://127.0.0.1:40002"
            ),
            Some((
                "127.0.0.1:40001".parse().unwrap(),
                "127.0.0.1:40002".parse().unwrap()
            ))
        );
        for other in [
            "caseshare dev PKI created in /tmp/x",
            "caseshare listening: grpc https://127.0.0.1:40001",
            "caseshare listening: grpc https://localhost:1 ops http://127.0.0.1:2",
            "",
        ] {
            assert_eq!(parse_listening(other), None, "{other:?}");
        }
    }

    #[test]
    fn a_refusal_is_its_one_error_line() {
        use std::os::unix::process::ExitStatusExt;
        let r = Refused {
            status: ExitStatus::from_raw(1 << 8),
            stderr: "INFO starting\nerror: limits.x must be at most 5\n".into(),
        };
        assert_eq!(refusal_message(&r), "error: limits.x must be at most 5");
        let two = Refused {
            status: ExitStatus::from_raw(1 << 8),
            stderr: "error: a\nerror: b\n".into(),
        };
        assert!(std::panic::catch_unwind(|| refusal_message(&two)).is_err());
        let success = Refused {
            status: ExitStatus::from_raw(0),
            stderr: "error: a\n".into(),
        };
        assert!(std::panic::catch_unwind(|| refusal_message(&success)).is_err());
    }
}
