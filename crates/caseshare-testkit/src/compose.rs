//! The shipped compose files run for real (issue 17): [`NatsImage`], a
//! stand-in for the `nats` image built here `FROM scratch` with the pinned
//! static `nats-server` binary (these machines have no registry), and
//! [`Compose`]: a copy of `deploy/compose/` in a temporary directory, its
//! `secrets/` made by the shipped `make-secrets.sh`, brought up with
//! `docker-compose -p <unique project> -f <file> up -d` on free host ports
//! (the files' port variables), with the container operations the fault
//! tests need (`docker kill`, `docker start`, container addresses, the NATS
//! journal's stream leader from a node's monitoring port) and `down -v`
//! when dropped (after printing the end of every service's log if the test
//! is failing). Brokers here are still started through the kit: by the
//! compose file it runs.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::broker::Endpoint;
use crate::container::{ContainerImage, docker, docker_output, repo, require_docker, unique};

/// The journal's stream name (the brokers' default).
pub const JOURNAL_STREAM: &str = "CASESHARE_JOURNAL";

/// A NATS image made here: `FROM scratch`, the pinned `nats-server` (a
/// static binary) as `/nats-server`, its entry point, and an empty `/data`
/// (the compose file's JetStream volume, owned by root, the user it runs
/// as). Dropping it removes it.
pub struct NatsImage {
    /// The image's tag.
    pub tag: String,
}

impl NatsImage {
    /// Builds it from [`crate::nats_server_bin`] with the classic builder.
    pub fn build() -> NatsImage {
        require_docker();
        let bin = crate::nats_server_bin().unwrap_or_else(|e| panic!("nats-server: {e}"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(&bin, dir.path().join("nats-server"))
            .unwrap_or_else(|e| panic!("copy {}: {e}", bin.display()));
        std::fs::create_dir(dir.path().join("data")).unwrap();
        std::fs::write(
            dir.path().join("Dockerfile"),
            "FROM scratch\nCOPY nats-server /nats-server\nCOPY data/ /data/\n\
             EXPOSE 4222 6222 8222\nENTRYPOINT [\"/nats-server\"]\n",
        )
        .unwrap();
        let tag = format!("caseshare-test-nats:{}", unique());
        docker(&[
            "build",
            "--force-rm",
            "-q",
            "-t",
            &tag,
            dir.path().to_str().unwrap(),
        ]);
        NatsImage { tag }
    }
}

impl Drop for NatsImage {
    fn drop(&mut self) {
        let _ = docker_output(&["rmi", "-f", &self.tag]);
    }
}

/// Fails the test, saying why, unless `docker-compose` runs.
pub fn require_docker_compose() -> String {
    require_docker();
    match Command::new("docker-compose").arg("version").output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
        Ok(o) => panic!(
            "the compose test needs docker-compose: `docker-compose version` failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!(
            "the compose test needs docker-compose ({e}); Debian: apt-get install docker-compose"
        ),
    }
}

/// A broker service of a compose project, as the host reaches it.
#[derive(Debug, Clone)]
pub struct ComposeBroker {
    /// The service name (`broker-1`, `caseshare`, …).
    pub service: String,
    /// The published gRPC address (mutual TLS).
    pub grpc: SocketAddr,
    /// The published ops address (plain HTTP, loopback).
    pub ops: SocketAddr,
}

/// A shipped compose file brought up from a temporary copy of
/// `deploy/compose/`; see the module documentation. Dropping it runs
/// `docker-compose down -v` (containers, network and volumes).
pub struct Compose {
    /// The project name (`-p`), unique on this machine.
    pub project: String,
    /// The file in [`Self::dir`] (`cluster.yaml`, `single.yaml`).
    pub file: String,
    /// The broker services and where the host reaches them.
    pub brokers: Vec<ComposeBroker>,
    /// How long `make-secrets.sh` took.
    pub secrets_time: Duration,
    /// How long `docker-compose up -d` took.
    pub up_time: Duration,
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
    down: bool,
}

/// A free TCP port on the host for the daemon to publish a container's port
/// on, moments later. Taken below the kernel's ephemeral range (so no
/// outgoing connection, such as another container's proxy, takes it in
/// between, as one did in CI with ports bound to `:0`), never twice in one
/// test process, and only if it binds now.
fn free_port() -> u16 {
    use std::sync::Mutex;
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| {
            r.split_whitespace()
                .next()
                .and_then(|p| p.parse::<u16>().ok())
        })
        .unwrap_or(32_768);
    let (low, high) = (10_000u16, ephemeral_low.max(10_001));
    let span = u32::from(high - low);
    let start = std::process::id().wrapping_mul(2_654_435_761) % span;
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for i in 0..span {
        let port = low + u16::try_from((start + i) % span).unwrap_or(0);
        if handed.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            handed.push(port);
            return port;
        }
    }
    panic!("no free port between {low} and {high}");
}

impl Compose {
    /// `deploy/compose/cluster.yaml`: three NATS nodes on `nats`, brokers
    /// `broker-1` and `broker-2` on `image`.
    pub fn cluster(image: &ContainerImage, nats: &NatsImage) -> Compose {
        Self::up(
            "cluster.yaml",
            image,
            Some(nats),
            &[
                ("broker-1", "CASESHARE_1_GRPC_PORT", "CASESHARE_1_OPS_PORT"),
                ("broker-2", "CASESHARE_2_GRPC_PORT", "CASESHARE_2_OPS_PORT"),
            ],
        )
    }

    /// `deploy/compose/single.yaml`: one broker, `caseshare`, on `image`.
    pub fn single(image: &ContainerImage) -> Compose {
        Self::up(
            "single.yaml",
            image,
            None,
            &[("caseshare", "CASESHARE_GRPC_PORT", "CASESHARE_OPS_PORT")],
        )
    }

    fn up(
        file: &str,
        image: &ContainerImage,
        nats: Option<&NatsImage>,
        brokers: &[(&str, &str, &str)],
    ) -> Compose {
        require_docker_compose();
        let dir = tempfile::Builder::new()
            .prefix("caseshare-compose-")
            .tempdir()
            .unwrap();
        crate::copy_dir(&repo().join("deploy/compose"), dir.path());
        // Never the checkout's own secrets, if an administrator made some.
        let _ = std::fs::remove_dir_all(dir.path().join("secrets"));
        let mut env = vec![("CASESHARE_IMAGE".to_string(), image.tag.clone())];
        if let Some(n) = nats {
            env.push(("NATS_IMAGE".to_string(), n.tag.clone()));
        }
        let mut services = Vec::new();
        for (service, grpc_var, ops_var) in brokers {
            let (grpc, ops) = (free_port(), free_port());
            env.push((grpc_var.to_string(), grpc.to_string()));
            env.push((ops_var.to_string(), ops.to_string()));
            services.push(ComposeBroker {
                service: service.to_string(),
                grpc: SocketAddr::from((Ipv4Addr::LOCALHOST, grpc)),
                ops: SocketAddr::from((Ipv4Addr::LOCALHOST, ops)),
            });
        }
        let mut c = Compose {
            project: format!("cs-{}", unique()),
            file: file.to_string(),
            brokers: services,
            secrets_time: Duration::ZERO,
            up_time: Duration::ZERO,
            env,
            dir,
            down: false,
        };
        // The documented command, run in the copy: makes ./secrets there.
        let started = Instant::now();
        let out = Command::new("bash")
            .arg(c.dir.path().join("make-secrets.sh"))
            .env("CASESHARE_BIN", crate::caseshare_bin())
            .env("CASESHARE_IMAGE", &image.tag)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "make-secrets.sh: {}", show(&out));
        c.secrets_time = started.elapsed();
        let started = Instant::now();
        let out = c.compose(&["up", "-d"]);
        assert!(out.status.success(), "docker-compose up -d: {}", show(&out));
        c.up_time = started.elapsed();
        c
    }

    /// Runs `docker-compose -p <project> -f <file> ARGS` in the copy, with
    /// the images' and ports' variables; whatever it returns.
    pub fn compose(&self, args: &[&str]) -> Output {
        Command::new("docker-compose")
            .current_dir(self.dir.path())
            .args(["-p", &self.project, "-f", &self.file])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run docker-compose {}: {e}", args.join(" ")))
    }

    /// The variables the test set for compose (images, host ports).
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// The copy of `deploy/compose/` (with its `secrets/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The development PKI `make-secrets.sh` made (client certificates).
    pub fn pki(&self) -> PathBuf {
        self.dir.path().join("secrets/pki")
    }

    /// Where to reach broker `i` over mutual TLS.
    pub fn endpoint(&self, i: usize) -> Endpoint {
        crate::install_crypto();
        Endpoint {
            grpc: self.brokers[i].grpc,
            pki: self.pki(),
        }
    }

    /// Every broker's endpoint.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        (0..self.brokers.len()).map(|i| self.endpoint(i)).collect()
    }

    /// The container id of `service`.
    pub fn container(&self, service: &str) -> String {
        let out = self.compose(&["ps", "-q", service]);
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            out.status.success() && !id.is_empty(),
            "no container for {service}: {}",
            show(&out)
        );
        id
    }

    /// `docker kill` (SIGKILL) the container of `service`.
    pub fn kill(&self, service: &str) {
        docker(&["kill", &self.container(service)]);
    }

    /// `docker start` the container of `service` again.
    pub fn start(&self, service: &str) {
        docker(&["start", &self.container(service)]);
    }

    /// A value of `service`'s container state (`docker inspect -f`).
    pub fn inspect(&self, service: &str, format: &str) -> String {
        docker(&["inspect", "-f", format, &self.container(service)])
    }

    /// The container's address on the project's network (the host reaches
    /// it directly on Linux: how the NATS monitoring ports, unpublished,
    /// are read).
    pub fn ip(&self, service: &str) -> Ipv4Addr {
        let ip = self.inspect(
            service,
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        );
        ip.parse()
            .unwrap_or_else(|_| panic!("{service} has no address: {ip:?}"))
    }

    /// The end of `service`'s log.
    pub fn logs(&self, service: &str, lines: usize) -> String {
        show(&self.compose(&["logs", "--no-color", "--tail", &lines.to_string(), service]))
    }

    /// Waits until broker `i` answers `/readyz` with 200 on its published
    /// ops port; how long that took.
    pub fn wait_ready(&self, i: usize, within: Duration) -> Duration {
        let started = Instant::now();
        let b = &self.brokers[i];
        loop {
            if matches!(try_get(b.ops, "/readyz"), Some((200, _))) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "{} not ready within {} s; log:\n{}",
                b.service,
                within.as_secs(),
                self.logs(&b.service, 40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until docker's health check calls `service` healthy.
    pub fn wait_healthy(&self, service: &str, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let state = self.inspect(service, "{{.State.Health.Status}}");
            if state == "healthy" {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "{service} not healthy within {} s ({state}); log:\n{}",
                within.as_secs(),
                self.logs(service, 40)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Whether NATS node `service` answers `/healthz` with 200 on its
    /// monitoring port.
    pub fn nats_healthy(&self, service: &str) -> bool {
        let addr = SocketAddr::from((self.ip(service), 8222));
        matches!(try_get(addr, "/healthz"), Some((200, _)))
    }

    /// What NATS node `service`'s monitoring port answers at `path`
    /// (`/varz`, `/routez`, …), as JSON; `None` if it does not answer.
    pub fn nats_monitor(&self, service: &str, path: &str) -> Option<serde_json::Value> {
        let addr = SocketAddr::from((self.ip(service), 8222));
        let (_, body) = try_get(addr, path)?;
        serde_json::from_str(&body).ok()
    }

    /// The NATS node (service name) leading the journal's stream, as node
    /// `ask` reports it from its monitoring port (`/jsz`).
    pub fn stream_leader(&self, ask: &str) -> Option<String> {
        let addr = SocketAddr::from((self.ip(ask), 8222));
        let (_, body) = try_get(addr, "/jsz?accounts=true&streams=true")?;
        let jsz: serde_json::Value = serde_json::from_str(&body).ok()?;
        jsz.get("account_details")?
            .as_array()?
            .iter()
            .filter_map(|a| a.get("stream_detail")?.as_array())
            .flatten()
            .find(|s| s.get("name").and_then(|n| n.as_str()) == Some(JOURNAL_STREAM))?
            .get("cluster")?
            .get("leader")?
            .as_str()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
    }

    /// `docker-compose down -v`: containers, network and volumes removed.
    pub fn down(&mut self) -> Duration {
        let started = Instant::now();
        let out = self.compose(&["down", "-v", "--remove-orphans", "-t", "30"]);
        self.down = true;
        assert!(
            out.status.success(),
            "docker-compose down -v: {}",
            show(&out)
        );
        started.elapsed()
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let services = self.compose(&["config", "--services"]);
            for s in String::from_utf8_lossy(&services.stdout).lines() {
                eprintln!("--- {s} log (last lines):\n{}", self.logs(s, 25));
            }
        }
        if !self.down {
            let _ = self.compose(&["down", "-v", "--remove-orphans", "-t", "5"]);
        }
    }
}

/// A GET that gives up (`None`) instead of failing the test: the ops and
/// monitoring ports of containers that may be dead.
fn try_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split(' ').nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

fn show(out: &Output) -> String {
    format!(
        "({}) {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
