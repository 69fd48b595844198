//! The broker as its container image (issue 17): a base image made here
//! from the host's dynamic loader and the shared libraries the binary
//! links (these machines have Docker but no registry, so nothing can be
//! pulled), the image built from `deploy/Dockerfile` with the classic
//! builder and `PREBUILT` (the binary cargo built, in a small temporary
//! build context), and [`ContainerBroker`]: that image run read-only with
//! only its bind-mounted data directory writable, its ports published on
//! loopback, health waited for, stopped with SIGTERM. Everything made
//! (images, containers, directories) is removed when dropped.
//!
//! A container broker is still a broker started through the kit: the
//! `caseshare serve` command line it runs is here, beside [`crate::Broker`]'s.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::broker::Endpoint;

/// The runtime user of `deploy/Dockerfile` (distroless's `nonroot`).
pub const IMAGE_UID: u32 = 65532;

/// The Dockerfile's gRPC and ops ports inside the container.
const GRPC_PORT: u16 = 7443;
const OPS_PORT: u16 = 7444;

/// How long the container may take to report healthy.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `docker ARGS`, failing the test with its output if it fails.
pub(crate) fn docker(args: &[&str]) -> String {
    let out = docker_output(args);
    assert!(
        out.status.success(),
        "docker {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs `docker ARGS` with the classic builder, whatever it returns.
pub(crate) fn docker_output(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .env("DOCKER_BUILDKIT", "0")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run docker {}: {e}", args.join(" ")))
}

/// Fails the test, saying why, unless the Docker CLI runs and reaches a
/// daemon (CI machines have Docker Engine).
pub fn require_docker() {
    match Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
    {
        Err(e) => panic!(
            "the container image test needs Docker: `docker` could not be run ({e}); install \
             Docker Engine (CI machines have it)"
        ),
        Ok(o) if !o.status.success() => panic!(
            "the container image test needs Docker: `docker version` found no daemon:\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Ok(_) => {}
    }
}

/// A name no other test run on this machine uses at the same time.
pub(crate) fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{}-{nanos:08x}", std::process::id())
}

/// The shared libraries and loader `ldd` lists for `binary`.
fn linked_libraries(binary: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(binary).output().expect("run ldd");
    assert!(out.status.success(), "ldd {}", binary.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or
            // `/lib64/ld-linux-x86-64.so.2 (0x…)`; not the vDSO.
            let path = l.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// The two images a test builds: the local base and the broker image on
/// it. Dropping it removes both.
pub struct ContainerImage {
    /// The base: loader, libraries, `/etc/passwd` and `/etc/group` naming
    /// the runtime user, an empty `/tmp`. No shell.
    pub base: String,
    /// The broker image built from `deploy/Dockerfile` on [`Self::base`].
    pub tag: String,
    /// How long `docker build` took (the base not included).
    pub build_time: Duration,
    dir: tempfile::TempDir,
}

impl ContainerImage {
    /// Builds the local base from `binary`'s libraries, then the image with
    /// `--target prebuilt --build-arg PREBUILT=target/debug/caseshare
    /// --build-arg RUNTIME_IMAGE=<base>` from a context holding only the
    /// repository's `.dockerignore`, `deploy/Dockerfile`,
    /// `deploy/caseshare.toml` and the binary.
    pub fn build(binary: &Path) -> ContainerImage {
        require_docker();
        let dir = tempfile::tempdir().unwrap();
        let id = unique();
        let base = format!("caseshare-test-base:local-{id}");
        make_base(binary, &dir.path().join("base"), &base);
        let mut image = ContainerImage {
            base,
            tag: String::new(),
            build_time: Duration::ZERO,
            dir,
        };
        let ctx = image.dir.path().join("context");
        std::fs::create_dir_all(ctx.join("deploy")).unwrap();
        std::fs::create_dir_all(ctx.join("target/debug")).unwrap();
        for f in [
            ".dockerignore",
            "deploy/Dockerfile",
            "deploy/caseshare.toml",
        ] {
            std::fs::copy(repo().join(f), ctx.join(f)).unwrap();
        }
        let bin = ctx.join("target/debug/caseshare");
        if std::fs::hard_link(binary, &bin).is_err() {
            std::fs::copy(binary, &bin).unwrap();
        }
        let tag = format!("caseshare-test:{id}");
        let dockerfile = ctx.join("deploy/Dockerfile");
        let started = Instant::now();
        docker(&[
            "build",
            "--force-rm",
            "--target",
            "prebuilt",
            "--build-arg",
            &format!("RUNTIME_IMAGE={}", image.base),
            "--build-arg",
            "PREBUILT=target/debug/caseshare",
            "-f",
            dockerfile.to_str().unwrap(),
            "-t",
            &tag,
            ctx.to_str().unwrap(),
        ]);
        image.build_time = started.elapsed();
        image.tag = tag;
        image
    }

    /// The image's size in bytes, as `docker image inspect` reports it.
    pub fn size(&self) -> u64 {
        docker(&["image", "inspect", "-f", "{{.Size}}", &self.tag])
            .parse()
            .unwrap()
    }

    /// A value of the image's configuration (`docker image inspect -f`).
    pub fn inspect(&self, format: &str) -> String {
        docker(&["image", "inspect", "-f", format, &self.tag])
    }

    /// The files of a path in the image, as `tar tv --numeric-owner` lists them (the
    /// image is created as a container, never started).
    pub fn list(&self, path: &str) -> String {
        let name = format!("caseshare-test-ls-{}", unique());
        docker(&["create", "--name", &name, &self.tag]);
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "docker cp {name}:{path} - | tar --numeric-owner -tvf -"
            ))
            .output()
            .unwrap();
        docker(&["rm", "-f", &name]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the image as a broker; see [`ContainerBroker`].
    pub fn run(&self) -> ContainerBroker {
        ContainerBroker::run(self)
    }
}

impl Drop for ContainerImage {
    fn drop(&mut self) {
        for image in [&self.tag, &self.base] {
            if !image.is_empty() {
                let _ = docker_output(&["rmi", "-f", image]);
            }
        }
    }
}

/// The files a `docker build` with `root` as its context sends to the
/// daemon once `root/.dockerignore` is applied: a throwaway image
/// `FROM scratch` + `COPY . /ctx/` (nothing pulled, nothing run) is built,
/// exported and listed, then removed. Paths are relative to `root`.
pub fn build_context_files(root: &Path) -> Vec<String> {
    require_docker();
    let dir = tempfile::tempdir().unwrap();
    let dockerfile = dir.path().join("Dockerfile");
    std::fs::write(&dockerfile, "FROM scratch\nCOPY . /ctx/\n").unwrap();
    let id = unique();
    let tag = format!("caseshare-test-context:{id}");
    let name = format!("caseshare-test-context-{id}");
    let result = std::panic::catch_unwind(|| {
        docker(&[
            "build",
            "--force-rm",
            "-f",
            dockerfile.to_str().unwrap(),
            "-t",
            &tag,
            root.to_str().unwrap(),
        ]);
        // A container is only created (scratch has no command; never run).
        docker(&["create", "--name", &name, &tag, "/none"]);
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("docker export {name} | tar -tf -"))
            .output()
            .unwrap();
        assert!(out.status.success(), "docker export {name}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("ctx/"))
            .filter(|l| !l.is_empty() && !l.ends_with('/'))
            .map(str::to_string)
            .collect::<Vec<_>>()
    });
    let _ = docker_output(&["rm", "-f", &name]);
    let _ = docker_output(&["rmi", "-f", &tag]);
    result.unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Writes the base's root in `root` and imports it as `tag`.
fn make_base(binary: &Path, root: &Path, tag: &str) {
    for lib in linked_libraries(binary) {
        let to = root.join(lib.strip_prefix("/").unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        // The file itself, not a symbolic link to it.
        std::fs::copy(&lib, &to).unwrap();
    }
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(
        root.join("etc/passwd"),
        format!(
            "root:x:0:0:root:/root:/sbin/nologin\n\
             nonroot:x:{IMAGE_UID}:{IMAGE_UID}:nonroot:/home/nonroot:/sbin/nologin\n"
        ),
    )
    .unwrap();
    std::fs::write(
        root.join("etc/group"),
        format!("root:x:0:\nnonroot:x:{IMAGE_UID}:\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar --numeric-owner --owner=0 --group=0 -C '{}' -c . | docker import - '{tag}' >/dev/null",
            root.display()
        ))
        .status()
        .unwrap();
    assert!(status.success(), "making the base image {tag}");
}

/// The broker image running as a container: read-only root, the data
/// directory a bind mount owned by [`IMAGE_UID`], gRPC and ops published on
/// loopback, `caseshare serve` with no configuration file (so the broker
/// makes its development PKI in its data directory). Dropping it removes
/// the container and the directory.
pub struct ContainerBroker {
    /// The container's name.
    pub name: String,
    /// The test directory; the data directory is its `data/`.
    dir: tempfile::TempDir,
    /// The published gRPC address (mutual TLS).
    pub grpc: SocketAddr,
    /// The published ops address (plain HTTP).
    pub ops: SocketAddr,
    /// From `docker run` to the health check reporting healthy.
    pub time_to_healthy: Duration,
}

impl ContainerBroker {
    fn run(image: &ContainerImage) -> ContainerBroker {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::os::unix::fs::chown(&data, Some(IMAGE_UID), Some(IMAGE_UID)).unwrap_or_else(|e| {
            panic!(
                "chown the data directory to uid {IMAGE_UID} (the image's user): {e}; the \
                 container test runs as root"
            )
        });
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
        let name = format!("caseshare-test-{}", unique());
        let started = Instant::now();
        docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--read-only",
            // The image's HEALTHCHECK, polled every second here.
            "--health-interval",
            "1s",
            "-v",
            &format!("{}:/var/lib/caseshare", data.display()),
            "-p",
            &format!("127.0.0.1::{GRPC_PORT}"),
            "-p",
            &format!("127.0.0.1::{OPS_PORT}"),
            &image.tag,
            "serve",
            "--listen",
            &format!("0.0.0.0:{GRPC_PORT}"),
            "--ops-listen",
            &format!("0.0.0.0:{OPS_PORT}"),
            "--data-dir",
            "/var/lib/caseshare",
        ]);
        let mut c = ContainerBroker {
            grpc: published(&name, GRPC_PORT),
            ops: published(&name, OPS_PORT),
            name,
            dir,
            time_to_healthy: Duration::ZERO,
        };
        c.wait_healthy();
        c.time_to_healthy = started.elapsed();
        c
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + HEALTHY_TIMEOUT;
        loop {
            let state = self.inspect("{{.State.Status}} {{.State.Health.Status}}");
            match state.as_str() {
                "running healthy" => return,
                s if !s.starts_with("running") => {
                    panic!("the container stopped ({s}); log:\n{}", self.logs())
                }
                s if Instant::now() > deadline => panic!(
                    "not healthy within {} s ({s}); log:\n{}",
                    HEALTHY_TIMEOUT.as_secs(),
                    self.logs()
                ),
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// A value of the container's state (`docker inspect -f`).
    pub fn inspect(&self, format: &str) -> String {
        docker(&["inspect", "-f", format, &self.name])
    }

    /// Its stdout and stderr so far.
    pub fn logs(&self) -> String {
        let out = docker_output(&["logs", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Runs a command in the running container as the image's user (there
    /// is no shell: `args[0]` is a program, e.g. `/usr/local/bin/caseshare`).
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut all = vec!["exec", self.name.as_str()];
        all.extend_from_slice(args);
        docker_output(&all)
    }

    /// The broker's process id on the host.
    pub fn host_pid(&self) -> u32 {
        self.inspect("{{.State.Pid}}").parse().unwrap()
    }

    /// The data directory (on the host).
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Where to reach it: the published gRPC port and the development PKI
    /// the broker made in its data directory.
    pub fn endpoint(&self) -> Endpoint {
        crate::install_crypto();
        Endpoint {
            grpc: self.grpc,
            pki: self.data().join("pki"),
        }
    }

    /// `docker stop` (SIGTERM, then SIGKILL after `grace`): the exit code.
    pub fn stop(&self, grace: Duration) -> i64 {
        docker(&["stop", "-t", &grace.as_secs().to_string(), &self.name]);
        self.inspect("{{.State.ExitCode}}").parse().unwrap()
    }
}

/// The host address `docker port` gives a container port.
fn published(name: &str, port: u16) -> SocketAddr {
    let out = docker(&["port", name, &format!("{port}/tcp")]);
    out.lines()
        .find_map(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no published address for {port}: {out}"))
}

impl Drop for ContainerBroker {
    fn drop(&mut self) {
        let _ = docker_output(&["rm", "-f", "-v", &self.name]);
    }
}
