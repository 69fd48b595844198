//! The Caseshare test kit: the one way an end-to-end test or an example
//! starts a broker. It owns starting a real broker (the `caseshare serve`
//! binary on a temporary data directory, free ports, its development PKI —
//! generated certificates for the CA, the server, `admin`, `auditor` and the
//! three sample agencies — made on first start), stopping, killing and
//! restarting it, the sample agencies and the sharing set-ups the tests
//! share, typed gRPC clients over mutual TLS, and the file, socket and
//! process helpers the tests use.
//!
//! ```no_run
//! # async fn demo() {
//! use caseshare_testkit::*;
//! let b = Broker::start();
//! b.school_shares_with_social_care().await;
//! let mut school = b.client(SCHOOL);
//! school
//!     .publisher
//!     .publish(publish_request(attendance_event("e-1", CHILD_1)))
//!     .await
//!     .unwrap();
//! let mut sub = Subscription::open(&b, SOCIAL_CARE, "main", 10).await;
//! assert_eq!(sub.next().await.source_agency, SCHOOL);
//! # }
//! ```
//!
//! # Which binary
//!
//! A library crate is not given `CARGO_BIN_EXE_caseshare` (cargo sets it
//! only while compiling the `caseshare-cli` package's own integration tests
//! and benches), so the kit finds the binary at run time, in this order
//! (see [`caseshare_bin`]):
//! 1. [`BrokerBuilder::binary`], when the caller names one (the measurement
//!    examples take a binary on their command line, to compare builds);
//! 2. the `CASESHARE_BIN` environment variable (the Python interoperability
//!    suite uses the same variable);
//! 3. `caseshare` in the cargo profile directory of the running executable:
//!    an integration test runs from `target/<profile>/deps/` and an example
//!    from `target/<profile>/examples/`, and cargo builds the package's
//!    binary into `target/<profile>/` before it runs the package's
//!    integration tests (that path is exactly `CARGO_BIN_EXE_caseshare`,
//!    which `caseshare-cli`'s `tidy` test checks). An example is run with
//!    `cargo run --example`, which does not build the binary: build it first
//!    (`cargo build -p caseshare-cli --bin caseshare`, with `--release` for a
//!    release example) or pass one.
//!
//! # Topologies
//!
//! [`Topology::Single`] is the only topology today: one broker process on
//! one data directory. Cluster mode (the next issue) adds a variant there;
//! [`Broker::builder`] is where a test will ask for it.
//!
//! # NATS JetStream clusters
//!
//! [`NatsCluster::start`] runs a real JetStream cluster on loopback (one
//! `nats-server` process per node, file storage with `sync_interval:
//! always`, routes between all nodes) for the tests of cluster mode, with
//! kill, stop, continue and restart per node and the meta and stream
//! leaders read from the monitoring port; built with
//! [`NatsClusterBuilder::own_addresses`], each node has its own loopback
//! address and [`NatsCluster::partition`] cuts it off the network with
//! iptables (root only) until [`NatsCluster::heal`]. The binary is
//! `$CASESHARE_NATS_SERVER`, else the pinned copy `tests/run-all.sh`
//! installs into the target directory (`nats-server-venv/`), else
//! `nats-server` on `PATH`; anything older than 2.10 is refused (see
//! [`nats_server_bin`]).
//!
//! # Container image
//!
//! [`ContainerImage::build`] builds `deploy/Dockerfile` with `PREBUILT` (the
//! binary cargo built) on a base image made on the fly from the host's
//! loader and libraries (no registry here), and [`ContainerImage::run`]
//! runs it as a [`ContainerBroker`]: read-only root, the data directory
//! bind-mounted, ports published on loopback, healthy before it returns.
//! Docker is required; without it the test fails saying so.
//!
//! # Compose
//!
//! [`Compose::cluster`] and [`Compose::single`] bring the shipped
//! `deploy/compose/` files up from a temporary copy (secrets made by its
//! `make-secrets.sh`, a unique project name, free host ports, the images
//! a test built: [`ContainerImage`] and a local [`NatsImage`]), with
//! `docker kill`/`docker start` per service, and `down -v` when dropped.
//!
//! # OpenTelemetry
//!
//! [`OtlpCollector`] is an in-test OTLP/gRPC trace collector on loopback
//! (the TraceService of the `opentelemetry-proto` crate) that keeps every
//! span a broker exports to it; point a broker at it with
//! `OTEL_EXPORTER_OTLP_ENDPOINT=http://<addr>`.
//!
//! A test kit panics when a step that is not under test fails: that is how
//! the test fails, so `unwrap` and `expect` are allowed here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agencies;
mod binary;
mod broker;
mod chaos;
mod cluster;
mod compose;
mod container;
mod files;
mod load;
mod loading;
mod nats;
mod nats_setup;
mod net;
mod otlp;
mod partition;
mod subscription;
mod wal;

pub use agencies::{
    ADMIN, AUDITOR, CHILD_1, CHILD_2, HEALTH, SAMPLE_AGENCIES, SCHOOL, SOCIAL_CARE, agreement,
    attendance_event, create_subscription, publish_request, put_agreement, was_not_brought_event,
};
pub use binary::{caseshare_bin, caseshare_command};
pub use broker::{
    Broker, BrokerBuilder, Endpoint, Refused, TOPOLOGY_ENV, Topology, refusal_message,
};
pub use chaos::{
    CHAOS_FAULTS_ENV, CHAOS_PARTITIONS_ENV, CHAOS_SEED_ENV, Chaos, ChaosReport, Partitions,
};
pub use cluster::{BrokerCluster, assert_extends, assert_one_log};
pub use compose::{Compose, ComposeBroker, JOURNAL_STREAM, NatsImage, require_docker_compose};
pub use container::{
    ContainerBroker, ContainerImage, IMAGE_UID, build_context_files, require_docker,
};
pub use files::{caseshare_check, copy_dir, digest_tree, dir_contents, rss_mib};
pub use load::{Consumed, Consumer, PublishReport, Publisher};
pub use loading::Loading;
pub use nats::{
    MIN_NATS_VERSION, NATS_SERVER_ENV, NatsCluster, NatsClusterBuilder, NatsSetupError, NodeState,
    StreamState, nats_server_bin, server_version,
};
pub use net::{H2_PREFACE, call_path, closed_within, http_get, raw_tls};
pub use otlp::OtlpCollector;
pub use subscription::Subscription;
pub use wal::{settle_the_wal, wal_files};

/// Installs rustls' ring crypto provider for the process (idempotent).
/// Every broker start calls it; a test that builds TLS configurations
/// before starting a broker calls it itself.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
