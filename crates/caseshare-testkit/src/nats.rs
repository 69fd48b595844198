//! A real NATS JetStream cluster on loopback for tests: finding a modern
//! `nats-server` (and refusing an old one), one configuration file and one
//! file store per node (`sync_interval: always`, routes between all nodes,
//! loopback ports for clients, routes and monitoring), starting the
//! processes and waiting for a meta leader, killing (SIGKILL), stopping
//! (SIGSTOP), continuing (SIGCONT) and restarting nodes on the same store,
//! and asking the monitoring endpoints who leads. With
//! [`NatsClusterBuilder::own_addresses`] each node has its own loopback
//! address and can be cut off the network and healed (`partition`). The
//! processes are real; dropping the cluster kills them all.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

pub use crate::nats_setup::{
    MIN_NATS_VERSION, NATS_SERVER_ENV, NatsSetupError, nats_server_bin, server_version,
};
use crate::nats_setup::{Ports, node_config};
use crate::partition::{Firewall, gid_of, own_hosts};

/// How long a start or restart may take before the test fails.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one monitoring request may take (a stopped node accepts the
/// connection and never answers).
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(50);

/// Where a node's process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Running (and answering, as far as the kit knows).
    Running,
    /// Stopped with SIGSTOP: alive, holding its ports, answering nothing.
    Stopped,
    /// Killed (or never restarted): no process.
    Dead,
}

/// Why a start or restart did not end with healthy nodes.
enum NotReady {
    /// A node's process exited.
    Exited(NatsSetupError),
    /// The nodes ran but were not healthy in time.
    Timeout(NatsSetupError),
}

/// One node: its ports, its files and its process.
struct Node {
    name: String,
    ports: Ports,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    state: NodeState,
}

/// How a cluster is started; [`NatsCluster::builder`] makes one.
#[derive(Debug, Clone)]
pub struct NatsClusterBuilder {
    nodes: usize,
    binary: Option<PathBuf>,
    sync_always: bool,
    own_addresses: bool,
}

impl NatsClusterBuilder {
    /// The `nats-server` binary to run instead of [`nats_server_bin`]'s.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// `sync_interval: always` (the default here: an acknowledgement means
    /// fsynced on a majority) or, with `false`, the server's default (an
    /// fsync every two minutes), for measurements.
    pub fn sync_always(mut self, always: bool) -> Self {
        self.sync_always = always;
        self
    }

    /// Gives each node its own loopback address (`127.A.B.11`, `.12`, …,
    /// `A.B` unique to this cluster; client, route and monitoring
    /// listeners there, routes naming them) so that
    /// [`NatsCluster::partition`] can cut it off with iptables, and short
    /// route pings so that dead routes close within seconds. Needs
    /// iptables and the right to change its rules (root): the start fails
    /// saying so otherwise.
    pub fn own_addresses(mut self, own: bool) -> Self {
        self.own_addresses = own;
        self
    }

    /// Starts the cluster and waits for a meta leader; a setup failure
    /// fails the test with its explanation.
    pub async fn start(self) -> NatsCluster {
        match self.try_start().await {
            Ok(c) => c,
            Err(e) => panic!("NATS cluster did not start: {e}"),
        }
    }

    /// Starts the cluster and waits until every node is healthy and all
    /// agree on a meta leader. A node that exits during the start (a port
    /// taken by someone else between its choice and the server's bind)
    /// makes the start try again on new ports, three times at most.
    pub async fn try_start(self) -> Result<NatsCluster, NatsSetupError> {
        assert!(self.nodes >= 1, "a cluster has at least one node");
        let bin = match self.binary {
            Some(b) => b,
            None => nats_server_bin()?,
        };
        let version = server_version(&bin).await?;
        let hosts = self.own_addresses.then(|| own_hosts(self.nodes));
        let mut firewall = match &hosts {
            Some(h) => Some(Firewall::install(h)?),
            None => None,
        };
        let mut last = None;
        for _attempt in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("caseshare-nats-")
                .tempdir()
                .map_err(|e| NatsSetupError(format!("temporary directory: {e}")))?;
            let mut ports = Ports::pick(self.nodes);
            if let Some(hosts) = &hosts {
                for (p, h) in ports.iter_mut().zip(hosts) {
                    p.host = *h;
                }
            }
            let mut cluster = NatsCluster {
                nodes: Vec::new(),
                bin: bin.clone(),
                version: version.clone(),
                firewall: firewall.take(),
                dir,
            };
            for (i, p) in ports.iter().enumerate() {
                let name = format!("n{i}");
                let store = cluster.dir.path().join(format!("{name}-store"));
                let text = node_config(
                    &name,
                    p,
                    &ports,
                    &store,
                    self.sync_always,
                    self.own_addresses,
                );
                let config = cluster.dir.path().join(format!("{name}.conf"));
                std::fs::write(&config, text)
                    .map_err(|e| NatsSetupError(format!("{}: {e}", config.display())))?;
                let log = cluster.dir.path().join(format!("{name}.log"));
                cluster.nodes.push(Node {
                    name,
                    ports: *p,
                    config,
                    log,
                    child: None,
                    state: NodeState::Dead,
                });
            }
            for i in 0..self.nodes {
                cluster.spawn(i)?;
            }
            match cluster.wait_ready(None).await {
                Ok(()) => return Ok(cluster),
                // Most likely a port taken meanwhile: again, on new ones.
                Err(NotReady::Exited(e)) => {
                    firewall = cluster.firewall.take();
                    last = Some(e);
                }
                Err(NotReady::Timeout(e)) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| NatsSetupError("no attempt made".into())))
    }
}

/// A running NATS JetStream cluster on loopback; node `i` is server
/// `n{i}`. Dropping it kills every node and deletes the stores.
pub struct NatsCluster {
    nodes: Vec<Node>,
    bin: PathBuf,
    version: String,
    // After the processes are killed (in Drop): the iptables chains.
    firewall: Option<Firewall>,
    // Last: the processes are killed (in Drop) before the stores go.
    dir: tempfile::TempDir,
}

impl NatsCluster {
    /// A cluster of `nodes` nodes with `sync_interval: always`, started
    /// with the binary [`nats_server_bin`] finds.
    pub async fn start(nodes: usize) -> NatsCluster {
        Self::builder(nodes).start().await
    }

    /// A builder for a cluster of `nodes` nodes.
    pub fn builder(nodes: usize) -> NatsClusterBuilder {
        NatsClusterBuilder {
            nodes,
            binary: None,
            sync_always: true,
            own_addresses: false,
        }
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Never true: a cluster has at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The client URL of every node (`nats://ADDRESS:PORT`), in order.
    pub fn urls(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.url(i)).collect()
    }

    /// The client URL of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://{}:{}", self.host(i), self.nodes[i].ports.client)
    }

    /// The loopback address node `i` listens on (127.0.0.1 unless the
    /// cluster was built with [`NatsClusterBuilder::own_addresses`]).
    pub fn host(&self, i: usize) -> Ipv4Addr {
        self.nodes[i].ports.host
    }

    /// The server name of node `i` (`n{i}`).
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The monitoring (HTTP) address of node `i`.
    pub fn monitor(&self, i: usize) -> SocketAddr {
        SocketAddr::from((self.host(i), self.nodes[i].ports.http))
    }

    /// The server's version line (`nats-server: v2.15.1`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The `nats-server` binary the nodes run.
    pub fn binary(&self) -> &Path {
        &self.bin
    }

    /// The directory holding every node's configuration, log and store.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Node `i`'s log so far (the server's stderr, kept across restarts).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    /// Where node `i`'s process is.
    pub fn state(&self, i: usize) -> NodeState {
        self.nodes[i].state
    }

    /// The process id of node `i`, while it has a process.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(Child::id)
    }

    /// SIGKILLs node `i` (running or stopped) and reaps it.
    pub fn kill9(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        node.state = NodeState::Dead;
    }

    /// SIGSTOPs node `i`: it keeps its sockets and answers nothing.
    pub fn stop(&mut self, i: usize) {
        self.signal(i, Signal::SIGSTOP);
        self.nodes[i].state = NodeState::Stopped;
    }

    /// SIGCONTs node `i` after [`NatsCluster::stop`].
    pub fn cont(&mut self, i: usize) {
        self.signal(i, Signal::SIGCONT);
        self.nodes[i].state = NodeState::Running;
    }

    fn signal(&self, i: usize, sig: Signal) {
        let pid = self
            .pid(i)
            .unwrap_or_else(|| panic!("node {i} has no process"));
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
        nix::sys::signal::kill(pid, sig).unwrap_or_else(|e| panic!("{sig} to node {i}: {e}"));
    }

    /// Cuts node `i` off the network for real (its process runs on):
    /// iptables drops every packet of every connection to or from its
    /// address — routes both ways, clients, monitoring. Needs a cluster
    /// built with [`NatsClusterBuilder::own_addresses`].
    pub fn partition(&mut self, i: usize) {
        self.firewall_mut()
            .cut(i)
            .unwrap_or_else(|e| panic!("cutting node {i} off: {e}"));
    }

    /// Undoes [`NatsCluster::partition`]: node `i`'s packets flow again
    /// (its routes are dialled again within about a second).
    pub fn heal(&mut self, i: usize) {
        self.firewall_mut()
            .heal(i)
            .unwrap_or_else(|e| panic!("healing node {i}: {e}"));
    }

    /// Resets every TCP connection to or from node `i` (see
    /// `Firewall::reset`).
    pub fn reset_connections(&self, i: usize) {
        self.firewall
            .as_ref()
            .expect("resets need a cluster built with own_addresses(true)")
            .reset(i)
            .unwrap_or_else(|e| panic!("resetting node {i}'s connections: {e}"));
    }

    /// Whether node `i` is cut off.
    pub fn is_partitioned(&self, i: usize) -> bool {
        self.firewall.as_ref().is_some_and(|f| f.is_cut(i))
    }

    fn firewall_mut(&mut self) -> &mut Firewall {
        self.firewall
            .as_mut()
            .expect("partitions need a cluster built with own_addresses(true)")
    }

    /// Restarts node `i` on its own configuration, ports and store (a
    /// running or stopped node is SIGKILLed first) and waits until it is
    /// healthy again, i.e. JetStream reports it current with the meta
    /// leader and its streams. Returns how long the wait took.
    pub async fn restart(&mut self, i: usize) -> Duration {
        self.kill9(i);
        let started = Instant::now();
        self.spawn(i)
            .unwrap_or_else(|e| panic!("restarting node {i}: {e}"));
        if let Err(NotReady::Exited(e) | NotReady::Timeout(e)) = self.wait_ready(Some(i)).await {
            panic!("node {i} did not come back: {e}");
        }
        started.elapsed()
    }

    /// Starts node `i`'s process on its configuration.
    fn spawn(&mut self, i: usize) -> Result<(), NatsSetupError> {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(|e| NatsSetupError(format!("{}: {e}", node.log.display())))?;
        let mut command = Command::new(&self.bin);
        if self.firewall.is_some() {
            // The group the firewall rewrites the source address of.
            command.gid(gid_of(node.ports.host));
        }
        let child = command
            .arg("-c")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| NatsSetupError(format!("starting {}: {e}", self.bin.display())))?;
        node.child = Some(child);
        node.state = NodeState::Running;
        Ok(())
    }

    /// Waits until node `only` (or every node) is healthy and, for a whole
    /// cluster, all running nodes name the same meta leader.
    async fn wait_ready(&mut self, only: Option<usize>) -> Result<(), NotReady> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let which: Vec<usize> = match only {
            Some(i) => vec![i],
            None => (0..self.len()).collect(),
        };
        loop {
            for &i in &which {
                if let Some(child) = self.nodes[i].child.as_mut()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    self.nodes[i].child = None;
                    self.nodes[i].state = NodeState::Dead;
                    return Err(NotReady::Exited(NatsSetupError(format!(
                        "node {i} exited ({status}); its log:\n{}",
                        self.log(i)
                    ))));
                }
            }
            if self.ready(&which, only.is_none()).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = which
                    .iter()
                    .map(|&i| format!("--- n{i}:\n{}", tail(&self.log(i), 20)))
                    .collect();
                return Err(NotReady::Timeout(NatsSetupError(format!(
                    "not ready within {} s; logs:\n{}",
                    READY_TIMEOUT.as_secs(),
                    logs.join("\n")
                ))));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn ready(&self, which: &[usize], same_leader: bool) -> bool {
        let mut leaders = Vec::new();
        for &i in which {
            if !matches!(self.get(i, "/healthz").await, Some((200, _))) {
                return false;
            }
            match self.jsz(i, "").await.and_then(|j| meta_leader_of(&j)) {
                Some(l) => leaders.push(l),
                None => return false,
            }
        }
        if !same_leader {
            return true;
        }
        if !leaders.windows(2).all(|w| w[0] == w[1]) {
            return false;
        }
        // The meta leader must see every other peer current: a stream made
        // before that is refused "no suitable peers for placement, peer
        // offline" (as CI saw right after a start).
        for &i in which {
            if let Some(j) = self.jsz(i, "").await
                && meta_peers_current(&j, self.len())
            {
                return true;
            }
        }
        false
    }

    /// A monitoring GET on node `i`: status and body, or `None` if it did
    /// not answer (dead, stopped, or slower than two seconds). Asked
    /// whatever the kit thinks of the node.
    pub async fn get(&self, i: usize, path: &str) -> Option<(u16, String)> {
        tokio::time::timeout(HTTP_TIMEOUT, http_get(self.monitor(i), path))
            .await
            .ok()?
            .ok()
    }

    /// Node `i`'s `/jsz{query}` (e.g. `?accounts=true&streams=true`) as
    /// JSON, if it answered.
    pub async fn jsz(&self, i: usize, query: &str) -> Option<Value> {
        match self.get(i, &format!("/jsz{query}")).await? {
            (200, body) => serde_json::from_str(&body).ok(),
            _ => None,
        }
    }

    /// Whether node `i` answers `/healthz` with 200 (JetStream enabled and
    /// current with the meta leader and its assigned streams).
    pub async fn healthy(&self, i: usize) -> bool {
        matches!(self.get(i, "/healthz").await, Some((200, _)))
    }

    /// The meta leader, if every running node that names one names the
    /// same (just after a kill, a survivor may still name the dead leader).
    pub async fn meta_leader(&self) -> Option<usize> {
        let mut named = Vec::new();
        for i in self.running() {
            named.push(self.jsz(i, "").await.and_then(|j| meta_leader_of(&j)));
        }
        self.agreed(named)
    }

    /// The leader of stream `stream`, if every running node that names one
    /// names the same.
    pub async fn stream_leader(&self, stream: &str) -> Option<usize> {
        let mut named = Vec::new();
        for i in self.running() {
            let jsz = self.jsz(i, "?accounts=true&streams=true").await;
            named.push(jsz.and_then(|j| stream_detail(&j, stream)?.leader));
        }
        self.agreed(named)
    }

    /// The node all the given names agree on (ignoring nodes that named
    /// none), if there is one.
    fn agreed(&self, named: Vec<Option<String>>) -> Option<usize> {
        let mut names = named.into_iter().flatten();
        let first = names.next()?;
        names.all(|n| n == first).then(|| self.index_of(&first))?
    }

    /// Stream `stream` as node `i` holds it (its own replica's state).
    pub async fn stream_state(&self, i: usize, stream: &str) -> Option<StreamState> {
        let jsz = self.jsz(i, "?accounts=true&streams=true").await?;
        stream_detail(&jsz, stream).map(|d| d.state)
    }

    /// Waits up to `limit` for a meta leader other than `not` (a node just
    /// killed, say); returns it and how long the wait took.
    pub async fn wait_meta_leader(
        &self,
        not: Option<usize>,
        limit: Duration,
    ) -> Option<(usize, Duration)> {
        let start = Instant::now();
        loop {
            match self.meta_leader().await {
                Some(l) if Some(l) != not => return Some((l, start.elapsed())),
                _ if start.elapsed() > limit => return None,
                _ => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// Waits up to `limit` for a leader of `stream` other than `not`;
    /// returns it and how long the wait took.
    pub async fn wait_stream_leader(
        &self,
        stream: &str,
        not: Option<usize>,
        limit: Duration,
    ) -> Option<(usize, Duration)> {
        let start = Instant::now();
        loop {
            match self.stream_leader(stream).await {
                Some(l) if Some(l) != not => return Some((l, start.elapsed())),
                _ if start.elapsed() > limit => return None,
                _ => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// Makes node `to` the leader of `stream`: asks its leader to step
    /// down with `to` preferred (nats-server honours the preference since
    /// 2.11; without it the new leader is random), again until `to` leads.
    /// Fails the test after `limit`; gives how long it took.
    pub async fn move_stream_leader(&self, stream: &str, to: usize, limit: Duration) -> Duration {
        let start = Instant::now();
        let servers: Vec<async_nats::ServerAddr> = self
            .running()
            .iter()
            .filter_map(|&i| self.url(i).parse().ok())
            .collect();
        let client = async_nats::connect(servers)
            .await
            .unwrap_or_else(|e| panic!("connecting to the NATS cluster: {e}"));
        let subject = format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}");
        let body = serde_json::json!({ "placement": { "preferred": self.name(to) } }).to_string();
        let mut answer = String::new();
        loop {
            match self.stream_leader(stream).await {
                Some(l) if l == to => return start.elapsed(),
                Some(l) => {
                    answer = match client.request(subject.clone(), body.clone().into()).await {
                        Ok(m) => String::from_utf8_lossy(&m.payload).into_owned(),
                        Err(e) => e.to_string(),
                    };
                    let left = limit.saturating_sub(start.elapsed());
                    self.wait_stream_leader(stream, Some(l), left).await;
                }
                None => tokio::time::sleep(POLL).await,
            }
            assert!(
                start.elapsed() < limit,
                "{stream}'s leader did not move to node {to} within {limit:?}; last \
                 step-down answer: {answer}"
            );
        }
    }

    /// Running nodes the kit can reach (not cut off).
    fn running(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.nodes[i].state == NodeState::Running && !self.is_partitioned(i))
            .collect()
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }
}

impl Drop for NatsCluster {
    /// Kills every node. When a test fails, the nodes' files are kept and
    /// the end of each log (without the route reconnection noise) printed.
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        for i in 0..self.len() {
            self.kill9(i);
            if panicking {
                let log = self.log(i);
                let lines: Vec<&str> = log
                    .lines()
                    .filter(|l| !l.contains("Error trying to connect to route"))
                    .collect();
                let tail = &lines[lines.len().saturating_sub(40)..];
                eprintln!("--- NATS node n{i} log (last lines):\n{}", tail.join("\n"));
            }
        }
        if panicking {
            self.dir.disable_cleanup(true);
            eprintln!("NATS cluster files kept in {}", self.dir.path().display());
        }
    }
}

/// A stream replica's state, from `/jsz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamState {
    /// Messages held.
    pub messages: u64,
    /// First sequence held.
    pub first_seq: u64,
    /// Last sequence assigned.
    pub last_seq: u64,
}

/// What `/jsz?accounts=true&streams=true` says of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StreamDetail {
    leader: Option<String>,
    state: StreamState,
}

/// Whether `jsz` is the meta leader's and shows all `n - 1` other peers
/// current and online (a follower's `/jsz` lists the leader among its
/// replicas, and its view of the others is not current).
fn meta_peers_current(jsz: &Value, n: usize) -> bool {
    let Some(meta) = jsz.get("meta_cluster") else {
        return false;
    };
    let Some(leader) = meta_leader_of(jsz) else {
        return false;
    };
    let Some(replicas) = meta.get("replicas").and_then(Value::as_array) else {
        return false;
    };
    let is_leader = !replicas
        .iter()
        .any(|r| r.get("name").and_then(Value::as_str) == Some(leader.as_str()));
    is_leader
        && replicas.len() + 1 == n
        && replicas.iter().all(|r| {
            r.get("current").and_then(Value::as_bool) == Some(true)
                && r.get("offline").and_then(Value::as_bool) != Some(true)
        })
}

fn meta_leader_of(jsz: &Value) -> Option<String> {
    let leader = jsz.get("meta_cluster")?.get("leader")?.as_str()?;
    (!leader.is_empty()).then(|| leader.to_string())
}

fn stream_detail(jsz: &Value, stream: &str) -> Option<StreamDetail> {
    let accounts = jsz.get("account_details")?.as_array()?;
    let detail = accounts
        .iter()
        .filter_map(|a| a.get("stream_detail")?.as_array())
        .flatten()
        .find(|s| s.get("name").and_then(Value::as_str) == Some(stream))?;
    let leader = detail
        .get("cluster")
        .and_then(|c| c.get("leader"))
        .and_then(Value::as_str)
        .filter(|l| !l.is_empty())
        .map(str::to_string);
    let num = |k: &str| {
        detail
            .get("state")
            .and_then(|s| s.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    Some(StreamDetail {
        leader,
        state: StreamState {
            messages: num("messages"),
            first_seq: num("first_seq"),
            last_seq: num("last_seq"),
        },
    })
}

/// A minimal HTTP/1.0 GET over tokio: status and body.
async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests;
