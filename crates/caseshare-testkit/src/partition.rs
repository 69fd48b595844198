//! Network partitions of a NATS test cluster, for real: each node's own
//! loopback address (`127.A.B.11`, `.12`, … with `A.B` unique to the
//! cluster) and the iptables rules, in chains of the kit's own named
//! `CS-<pid>-<n>`, that cut a node off and heal it.
//!
//! A node's listeners (client, route, monitoring) are on its address, but
//! the connections it dials (its routes to the others) would leave from
//! 127.0.0.1, the kernel's source for every loopback destination. So each
//! node runs with its own group id (the numeric value of its address), and
//! a `nat` chain jumped to from `POSTROUTING` rewrites the source of that
//! group's packets to the node's address (`-m owner --gid-owner G -j
//! SNAT`): every connection of the node carries its address on one end.
//! Cutting node `i` off adds four rules to a `filter` chain jumped to from
//! `INPUT` and `OUTPUT` (loopback only) that DROP every packet of any
//! connection whose original or reply tuple names the node's address
//! (`-m conntrack --ctorigsrc/--ctorigdst/--ctreplsrc/--ctrepldst`):
//! routes both ways, clients, monitoring. The conntrack match sees the
//! addresses before and after NAT alike, which a plain `-s`/`-d` match in
//! `filter` does not (the reply to a rewritten connection is translated
//! back before `filter` sees it). Healing deletes those rules; dropping the
//! [`Firewall`] deletes both chains and their jumps, also when a test
//! panics. Chains left by a killed test process are removed at the next
//! install.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::nats_setup::NatsSetupError;

/// The prefix of every chain the kit makes (`CS-<pid>-<n>`).
const CHAIN_PREFIX: &str = "CS-";
/// Node `i`'s address ends in `FIRST_HOST + i`.
const FIRST_HOST: u8 = 11;

/// Cluster prefixes (`A.B` of `127.A.B.x`) this process has handed out.
static PREFIXES: Mutex<Option<HashSet<(u8, u8)>>> = Mutex::new(None);
/// The `n` of `CS-<pid>-<n>`.
static CHAINS: AtomicU32 = AtomicU32::new(0);

/// Loopback addresses for `n` nodes of one cluster: `127.A.B.11`, `.12`, …
/// with `A.B` chosen at random (never `127.0.0.x`: 127.0.0.1 is everyone's
/// and 127.0.0.11 is Docker's DNS) and never twice in this process, so
/// that clusters in parallel tests, or in other test processes, cut only
/// their own nodes.
pub(crate) fn own_hosts(n: usize) -> Vec<Ipv4Addr> {
    assert!(n <= usize::from(255 - FIRST_HOST), "too many nodes");
    let mut taken = PREFIXES.lock().unwrap_or_else(|p| p.into_inner());
    let taken = taken.get_or_insert_with(HashSet::new);
    let mut rng = std::collections::hash_map::RandomState::new().build_hasher();
    rng.write_u32(std::process::id());
    let (a, b) = loop {
        rng.write_usize(taken.len());
        let r = rng.finish();
        let a = 1 + (r % 254) as u8;
        let b = ((r >> 8) % 256) as u8;
        if taken.insert((a, b)) {
            break (a, b);
        }
    };
    (0..n)
        .map(|i| Ipv4Addr::new(127, a, b, FIRST_HOST + i as u8))
        .collect()
}

/// The group id node processes on `host` run with (its address as a
/// number: unique as the address is).
pub(crate) fn gid_of(host: Ipv4Addr) -> u32 {
    u32::from(host)
}

/// The kit's iptables chains for one cluster.
pub(crate) struct Firewall {
    chain: String,
    hosts: Vec<Ipv4Addr>,
    cut: Vec<bool>,
}

impl Firewall {
    /// Makes the chains for a cluster on `hosts`: the source rewriting of
    /// each node's connections now, the cuts later. A missing `iptables`
    /// or one not permitted to change rules is an error saying so.
    pub(crate) fn install(hosts: &[Ipv4Addr]) -> Result<Firewall, NatsSetupError> {
        remove_stale_chains();
        let chain = format!(
            "{CHAIN_PREFIX}{}-{}",
            std::process::id(),
            CHAINS.fetch_add(1, Ordering::Relaxed)
        );
        // A missing or forbidden iptables fails here, with nothing made.
        iptables(&["-t", "nat", "-N", &chain])?;
        // From here on, Drop removes whatever was made.
        let fw = Firewall {
            chain: chain.clone(),
            hosts: hosts.to_vec(),
            cut: vec![false; hosts.len()],
        };
        iptables(&[
            "-t",
            "nat",
            "-I",
            "POSTROUTING",
            "1",
            "-o",
            "lo",
            "-j",
            &chain,
        ])?;
        for &h in hosts {
            iptables(&[
                "-t",
                "nat",
                "-A",
                &chain,
                "-m",
                "owner",
                "--gid-owner",
                &gid_of(h).to_string(),
                "-j",
                "SNAT",
                "--to-source",
                &h.to_string(),
            ])?;
        }
        iptables(&["-N", &chain])?;
        iptables(&["-I", "INPUT", "1", "-i", "lo", "-j", &chain])?;
        iptables(&["-I", "OUTPUT", "1", "-o", "lo", "-j", &chain])?;
        Ok(fw)
    }

    /// Whether node `i` is cut off.
    pub(crate) fn is_cut(&self, i: usize) -> bool {
        self.cut[i]
    }

    /// Drops every packet of every connection of node `i`.
    pub(crate) fn cut(&mut self, i: usize) -> Result<(), NatsSetupError> {
        if !self.cut[i] {
            self.rules(i, "-A")?;
            self.cut[i] = true;
        }
        Ok(())
    }

    /// Deletes node `i`'s DROP rules.
    pub(crate) fn heal(&mut self, i: usize) -> Result<(), NatsSetupError> {
        if self.cut[i] {
            self.rules(i, "-D")?;
            self.cut[i] = false;
        }
        Ok(())
    }

    /// Aborts every established TCP connection to or from node `i`'s
    /// address (`ss -K`; the kernel resets both ends): routes, clients and
    /// monitoring are dialled again at once. A connection that lived through
    /// a cut may otherwise stay stalled in TCP's backed-off retransmissions
    /// (or in what the node made of them) long after the heal.
    pub(crate) fn reset(&self, i: usize) -> Result<(), NatsSetupError> {
        let host = self.hosts[i].to_string();
        for side in ["src", "dst"] {
            let out = Command::new("ss")
                .args(["-K", "-n", "-t", "state", "established", side, &host])
                .output()
                .map_err(|e| NatsSetupError(format!("ss -K: {e}")))?;
            if !out.status.success() {
                return Err(NatsSetupError(format!(
                    "ss -K {side} {host}: {}",
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
        }
        Ok(())
    }

    fn rules(&self, i: usize, op: &str) -> Result<(), NatsSetupError> {
        let host = self.hosts[i].to_string();
        for m in ["--ctorigsrc", "--ctorigdst", "--ctreplsrc", "--ctrepldst"] {
            iptables(&[op, &self.chain, "-m", "conntrack", m, &host, "-j", "DROP"])?;
        }
        Ok(())
    }
}

impl Drop for Firewall {
    /// Removes both chains and their jumps (every step tried; a failure
    /// is printed, not raised: this runs while a failed test unwinds).
    fn drop(&mut self) {
        if let Err(e) = remove_chain(&self.chain) {
            eprintln!("removing the kit's iptables chain {}: {e}", self.chain);
        }
    }
}

/// Deletes chain `chain` from `filter` and `nat`, with the jumps to it.
fn remove_chain(chain: &str) -> Result<(), NatsSetupError> {
    let mut first_error = None;
    let steps: [&[&str]; 7] = [
        &["-D", "INPUT", "-i", "lo", "-j", chain],
        &["-D", "OUTPUT", "-o", "lo", "-j", chain],
        &["-F", chain],
        &["-X", chain],
        &["-t", "nat", "-D", "POSTROUTING", "-o", "lo", "-j", chain],
        &["-t", "nat", "-F", chain],
        &["-t", "nat", "-X", chain],
    ];
    for step in steps {
        if let Err(e) = iptables(step) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Removes the chains of test processes that are gone (killed before
/// their clusters were dropped). Best effort.
fn remove_stale_chains() {
    let mut listing = String::new();
    for table in ["filter", "nat"] {
        if let Ok(out) = Command::new("iptables")
            .args(["-w", "-t", table, "-S"])
            .output()
        {
            listing.push_str(&String::from_utf8_lossy(&out.stdout));
        }
    }
    let mut stale = stale_chains(&listing, |pid| {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
    stale.sort();
    stale.dedup();
    for chain in stale {
        let _ = remove_chain(&chain);
    }
}

/// The kit's chains in an `iptables -S` listing whose process is not
/// alive.
fn stale_chains(listing: &str, alive: impl Fn(u32) -> bool) -> Vec<String> {
    listing
        .lines()
        .filter_map(|l| l.strip_prefix("-N "))
        .filter(|chain| {
            let Some(rest) = chain.strip_prefix(CHAIN_PREFIX) else {
                return false;
            };
            match rest.split_once('-').map(|(p, _)| p.parse::<u32>()) {
                Some(Ok(pid)) => !alive(pid),
                _ => false,
            }
        })
        .map(str::to_string)
        .collect()
}

/// Runs `iptables -w ARGS`; an error that says what to do when iptables
/// is missing or not permitted.
fn iptables(args: &[&str]) -> Result<(), NatsSetupError> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .map_err(|e| {
            NatsSetupError(format!(
                "the partition tests need iptables, and running it failed ({e}): install it \
                 (`apt-get install iptables`; tests/run-all.sh does)"
            ))
        })?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let hint = if err.contains("ermission") || err.contains("must be root") {
        " (the partition tests change firewall rules: run them as root or with CAP_NET_ADMIN)"
    } else {
        ""
    };
    Err(NatsSetupError(format!(
        "iptables {} failed ({}): {err}{hint}",
        args.join(" "),
        out.status
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cluster_gets_its_own_addresses_off_127_0_0() {
        let a = own_hosts(3);
        let b = own_hosts(3);
        assert_eq!(a.len(), 3);
        for hosts in [&a, &b] {
            let o = hosts[0].octets();
            assert_eq!(o[0], 127);
            assert_ne!((o[1], o[2]), (0, 0));
            assert_eq!(
                hosts.iter().map(|h| h.octets()[3]).collect::<Vec<_>>(),
                [11, 12, 13]
            );
            assert!(hosts.iter().all(|h| h.octets()[..3] == o[..3]));
        }
        assert_ne!(a[0].octets()[..3], b[0].octets()[..3]);
        assert_eq!(gid_of(Ipv4Addr::new(127, 1, 2, 11)), 0x7f01_020b);
    }

    #[test]
    fn a_reset_aborts_the_connections_of_that_node_only() {
        use std::io::Read;
        let hosts = own_hosts(2);
        // Root and iptables, as the partition tests need.
        let fw = Firewall::install(&hosts).expect("iptables (run as root)");
        let pair = |host: Ipv4Addr| {
            let listener = std::net::TcpListener::bind((host, 0)).unwrap();
            let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server, _) = listener.accept().unwrap();
            client
                .set_read_timeout(Some(std::time::Duration::from_millis(300)))
                .unwrap();
            (client, server)
        };
        let (mut to_0, _held_0) = pair(hosts[0]);
        let (mut to_1, _held_1) = pair(hosts[1]);
        fw.reset(0).unwrap();
        let mut buf = [0u8; 1];
        let aborted = to_0.read(&mut buf);
        let was_aborted = match &aborted {
            Ok(n) => *n == 0,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        };
        assert!(was_aborted, "node 0's connection is aborted: {aborted:?}");
        let other = to_1.read(&mut buf).unwrap_err();
        assert!(
            matches!(
                other.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "node 1's connection is untouched (a read times out): {other:?}"
        );
    }

    #[test]
    fn chains_of_dead_processes_are_stale() {
        let listing = "-P INPUT ACCEPT\n-N DOCKER\n-N CS-10-0\n-N CS-20-3\n-N CS-x-1\n\
                       -A INPUT -i lo -j CS-10-0\n";
        assert_eq!(stale_chains(listing, |pid| pid == 10), ["CS-20-3"]);
    }
}
