//! The Caseshare broker: gRPC services over mutual TLS on an embedded store.
//!
//! API Boundary: this crate exports what the `caseshare` binary, the
//! bench and the tests need, and nothing else:
//! - [`config`]: the configuration (TOML, environment, validation, the
//!   table of numeric keys).
//! - [`serve`] runs a broker until a shutdown future resolves, reporting
//!   its addresses through [`Bound`]; [`start`] does the same in a task and
//!   gives a [`Running`] handle to stop it.
//! - [`pki`]: the development PKI (`caseshare dev-pki`, tests).
//! - [`check_keys_and_pki`], [`principal_from_cert`], [`telemetry::init`]
//!   and [`telemetry::init_with_traces`] (logs, and OTLP trace export),
//!   and the errors [`ServeError`], [`BrokerError`], [`PkiError`],
//!   [`TlsError`].
//!
//! Inside (private modules): `tls` (rustls, principals from
//! certificates, reload), `auth` (authorisation of every RPC), `writer`
//! (the single writer around the state machine of `caseshare-state`, and
//! its group commit), `delivery` (subscriptions at runtime, flow control,
//! redelivery), `services` (the gRPC services), `auditlog` (the Merkle tree
//! and checkpoints), `ops` (health, readiness and metrics over HTTP),
//! `errors` (the one mapping from broker errors to gRPC statuses), `conns`,
//! `sendq`, `limits`, `refusals`, `keys`, `datadir`.
#![forbid(unsafe_code)]

mod auditlog;
mod auth;
mod backup;
mod cluster;
pub mod config;
mod conns;
mod datadir;
mod delivery;
mod errors;
#[cfg(test)]
mod gated_store;
pub mod keymode;
mod keys;
mod limits;
mod migrate;
mod ops;
pub mod pki;
mod refusals;
mod running;
mod sendq;
mod services;
mod settle;
pub mod telemetry;
mod tls;
mod writer;

pub use errors::BrokerError;
pub use keys::{NewKeys, check_keys_and_pki, read_pseudonym_key, write_new_keys};
pub use migrate::{Migrated, migrate};
pub use pki::PkiError;
pub use running::{Running, start};
pub use tls::{TlsError, principal_from_cert};

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use caseshare_core::pb;
use caseshare_core::validate::Limits;
use caseshare_store::{SledStore, Storage};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::config::Config;
use crate::delivery::Deliveries;
use crate::services::Shared;
use crate::writer::WriterTask;
use caseshare_state::Machine;

/// Why the broker could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A file or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// The PKI could not be created.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// TLS could not be configured.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The store could not be opened or loaded (its message names the file;
    /// transparent, so the CLI prints it once).
    #[error(transparent)]
    Store(#[from] caseshare_store::StoreError),
    /// The broker state could not be rebuilt.
    #[error("startup: {0}")]
    Startup(#[from] errors::BrokerError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A key, secret or dev PKI file is missing or unsafe (the message
    /// names the file and what to do).
    #[error("{0}")]
    Secret(String),
    /// The configured store backend cannot run in this build.
    #[error("{0}")]
    Backend(String),
}

/// The `recorded_at` of the store's last audit entry, if it has one: no
/// command is applied at an earlier time ([`Machine::apply`]).
fn last_audit_time(
    store: &dyn Storage,
    audit_size: u64,
) -> Result<Option<caseshare_core::time::Micros>, ServeError> {
    let Some(last) = audit_size.checked_sub(1) else {
        return Ok(None);
    };
    let leaves = store.audit_entries(last, audit_size)?;
    let Some(leaf) = leaves.first() else {
        return Ok(None);
    };
    let entry = caseshare_audit::entry::decode(leaf).map_err(|e| {
        errors::BrokerError::Internal(format!(
            "the last audit entry ({last}) does not decode: {e}"
        ))
    })?;
    Ok(entry
        .recorded_at
        .as_ref()
        .map(caseshare_core::time::Micros::from_timestamp))
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServeError {
    let context = context.into();
    move |source| ServeError::Io { context, source }
}

/// Where the TLS files the broker uses are.
#[derive(Debug, Clone)]
pub(crate) struct TlsFiles {
    /// CA bundle.
    pub ca: PathBuf,
    /// Server certificate.
    pub cert: PathBuf,
    /// Server key.
    pub key: PathBuf,
    /// Set when a dev PKI is in use: its directory.
    pub dev_pki: Option<PathBuf>,
    /// Set when that dev PKI was created by this call (a new data directory).
    pub dev_pki_created: Option<DevPkiCreated>,
}

/// A development PKI created on this start, for the caller to announce (the
/// `caseshare` binary prints it; the library only logs it).
#[derive(Debug, Clone)]
pub struct DevPkiCreated {
    /// Its directory.
    pub dir: PathBuf,
    /// The CA certificate clients trust.
    pub ca: PathBuf,
    /// Each sample client: its name, certificate and key.
    pub clients: Vec<(String, PathBuf, PathBuf)>,
}

/// Resolves the TLS files, creating a dev PKI in `<data_dir>/pki/` when none
/// is configured, none exists yet and the data directory holds no data
/// (`datadir`). Temporaries of an interrupted creation are removed; a
/// `pki/` that lacks a file is a refusal naming it.
pub(crate) fn resolve_tls(config: &Config) -> Result<TlsFiles, ServeError> {
    if let (Some(ca), Some(cert), Some(key)) = (&config.tls.ca, &config.tls.cert, &config.tls.key) {
        return Ok(TlsFiles {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
            dev_pki: None,
            dev_pki_created: None,
        });
    }
    let dir = config.data_dir.join("pki");
    datadir::remove_leftover_temporaries(&dir)?;
    let paths = pki::DevPkiPaths::in_dir(&dir);
    let mut created = None;
    if dir.exists() {
        keys::check_dev_pki(config)?;
    } else if let Some(data) = datadir::existing_data(&config.data_dir)? {
        return Err(ServeError::Secret(format!(
            "{} is missing, but the data directory already holds data ({} exists); \
             a new development CA would not be trusted by the clients holding the \
             certificates of the old one, so the broker will not make one. Restore {} \
             from a backup of this data directory; or configure tls.ca, tls.cert and \
             tls.key (CASESHARE_TLS_CA, _CERT, _KEY) to use your own PKI",
            dir.display(),
            data.display(),
            dir.display()
        )));
    } else {
        pki::write_dev_pki(&dir, &config.trust_domain)?;
        keys::check_dev_pki(config)?;
        tracing::warn!(dir = %dir.display(), "created a development PKI (not for production)");
        created = Some(DevPkiCreated {
            dir: dir.clone(),
            ca: paths.ca.clone(),
            clients: pki::DEV_CLIENTS
                .iter()
                .map(|(name, _)| {
                    let (c, k) = paths.client(name);
                    (name.to_string(), c, k)
                })
                .collect(),
        });
    }
    Ok(TlsFiles {
        ca: paths.ca.clone(),
        cert: paths.server_cert.clone(),
        key: paths.server_key.clone(),
        dev_pki: Some(dir),
        dev_pki_created: created,
    })
}

/// Runs blocking work (a store read, a scan) on the blocking pool: disk
/// reads stay off the async workers. The one way the server does this.
pub(crate) async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, errors::BrokerError> + Send + 'static,
) -> Result<T, errors::BrokerError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| errors::BrokerError::Internal(format!("a blocking read failed: {e}")))?
}

/// Deletes events below `below` (settled for every subscription) published
/// more than `retention_secs` ago, a thousand at a time.
pub(crate) async fn expunge(
    store: &Arc<dyn Storage>,
    writer: &writer::Writer,
    below: u64,
    retention_secs: i64,
) -> Result<usize, errors::BrokerError> {
    let cutoff = writer::now()
        .0
        .saturating_sub(retention_secs.saturating_mul(1_000_000));
    let mut total = 0;
    loop {
        let events: Vec<(u64, String, String)> = {
            let store = Arc::clone(store);
            off_runtime(move || Ok(store.events_from(0, 1_000)?)).await?
        }
        .into_iter()
        .take_while(|e| e.sequence < below && e.published_at_micros < cutoff)
        .map(|e| (e.sequence, e.source_agency, e.event_id))
        .collect();
        if events.is_empty() {
            return Ok(total);
        }
        let n = events.len();
        writer
            .call(|reply| writer::Op::Expunge { events, reply })
            .await?;
        total += n;
        if n < 1_000 {
            return Ok(total);
        }
    }
}

/// Removes the delivery records of deleted subscriptions, one bounded
/// writer op at a time (each its own commit, between other traffic), until
/// none remain.
pub(crate) async fn purge_deleted_subscriptions(
    store: &Arc<dyn Storage>,
    writer: &writer::Writer,
) -> Result<(), errors::BrokerError> {
    let mut purged = false;
    loop {
        let ids = {
            let store = Arc::clone(store);
            off_runtime(move || Ok(store.subscriptions_being_purged()?)).await?
        };
        if ids.is_empty() {
            if purged {
                metrics::counter!("caseshare_subscription_purges_finished_total").increment(1);
            }
            return Ok(());
        }
        purged = true;
        writer
            .call(|reply| writer::Op::PurgeDeliveries {
                subscription_ids: ids,
                reply,
            })
            .await?;
    }
}

/// A task aborted when this is dropped (an early return included).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a started broker reports to its caller: the addresses it listens
/// on, the audit log's verifier key, and the dev PKI it created, if any.
/// `serve` itself only logs (through `tracing`); printing is the caller's.
#[derive(Debug, Clone)]
pub struct Bound {
    /// gRPC.
    pub grpc: SocketAddr,
    /// Ops HTTP.
    pub ops: SocketAddr,
    /// The verifier key auditors pin (`<name>+<id>+<key>`).
    pub vkey: String,
    /// The development PKI created on this start (a new data directory).
    pub dev_pki_created: Option<DevPkiCreated>,
}

/// Runs the broker until `shutdown` resolves, then shuts down gracefully:
/// stop accepting, end subscribe streams, let in-flight publishes commit,
/// drain the writer. `on_bound` is called once the sockets are bound.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(Bound) + Send,
) -> Result<(), ServeError> {
    let _ = ops::prometheus();
    std::fs::create_dir_all(&config.data_dir)
        .map_err(io(format!("creating {}", config.data_dir.display())))?;
    // The ops port first: a liveness probe sees the process up (and not
    // ready) while keys load, the store opens or the NATS cluster is
    // awaited, which can take long on a big store.
    let ops_listener = TcpListener::bind(config.ops_listen)
        .await
        .map_err(io(format!("binding ops listener {}", config.ops_listen)))?;
    let ops_addr = ops_listener
        .local_addr()
        .map_err(io("ops listener address"))?;
    let ready = Arc::new(AtomicBool::new(false));
    let subs_cell: Arc<ops::SubsCell> = Arc::default();
    let (_ops_stop, ops_stop_rx) = watch::channel(false);
    let ops_task = AbortOnDrop(tokio::spawn(ops::serve(
        ops_listener,
        ready.clone(),
        subs_cell.clone(),
        ops_stop_rx,
    )));
    tracing::info!(ops = %ops_addr, "ops endpoints up: /healthz answers, /readyz once serving");
    let tls_files = resolve_tls(&config)?;
    let tls_reloader = Arc::new(tls::TlsReloader::new(tls::TlsSources {
        ca: tls_files.ca.clone(),
        cert: tls_files.cert.clone(),
        key: tls_files.key.clone(),
        crls: config.tls.crls.clone(),
    })?);
    let keys = keys::load_keys(&config)?;
    let pseudonym_key = keys.pseudonym;

    caseshare_store::backup::remove_stale_stages(&config.data_dir).map_err(io(
        "removing a backup staging folder left by an earlier run",
    ))?;
    let cache = config.store.cache_mib.saturating_mul(1024 * 1024);
    // The writer's store, and the readers', behind the commit thread's gate.
    let (raw, store, gate) = settle::open(SledStore::open_with_segments(
        &config.data_dir.join("store"),
        cache,
        config.store.segment_kib.saturating_mul(1024),
    )?);
    let snapshot = store.load()?;
    tracing::info!(
        events = snapshot.next_sequence - 1,
        audit_entries = snapshot.audit_size,
        subscriptions = snapshot.subscriptions.len(),
        "store loaded"
    );
    let log = auditlog::AuditLog::open(
        store.clone(),
        snapshot.audit_size,
        keys.signer,
        config.audit.origin.clone(),
    )?;
    tracing::info!(vkey = %log.vkey(), "audit log opened");
    let mut machine = Machine::from_snapshot(&snapshot, pseudonym_key.clone());
    if let Some(t) = last_audit_time(&*store, snapshot.audit_size)? {
        machine.set_time_floor(t);
    }
    let (writer_task, head) = WriterTask::new(raw, machine, config.store.max_batch, log.clone());
    let writer_task = writer_task
        .with_commit_delay(std::time::Duration::from_micros(
            config.store.commit_delay_us,
        ))
        .with_settle_gate(gate);
    let state = writer_task.shared_state();
    let tail = delivery::Tailing::new(state.clone());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut replica = None;
    let mut roster = None;
    let (writer, writer_join) = if config.store.backend == "nats" {
        // Cluster mode: this store is one replica's view of the journal.
        let journal = cluster::open(&config).await?;
        let held = cluster::Held {
            position: snapshot.journal_position,
            audit_size: snapshot.audit_size,
            checkpoint_size: caseshare_store::saved_checkpoint_size(
                &config.data_dir.join("store"),
            )?
            .unwrap_or(0),
        };
        let target = cluster::check_at_start(&journal, &held).await?;
        let id = cluster::instance_id();
        tracing::info!(replica = %id, position = held.position, journal_end = target, "cluster mode: following the journal");
        roster = Some(cluster::RosterView {
            me: id.clone(),
            members: Arc::default(),
        });
        let started = writer_task
            .spawn_cluster(writer::ClusterLink {
                journal: journal.clone(),
                replica: id,
                from: held.position + 1,
                stale_after: std::time::Duration::from_millis(config.store.nats.lease_ttl_ms),
                max_bytes: caseshare_cluster::DEFAULT_MAX_MESSAGE_BYTES / 4 * 3,
                times: snapshot.journal_times.clone(),
                times_dropped_through: snapshot.journal_times_dropped_through,
            })
            .map_err(io("starting the applier thread"))?;
        replica = Some((
            journal,
            started.notices,
            started.progress,
            started.reader,
            target,
            held,
        ));
        (started.writer, started.join)
    } else {
        writer_task
            .with_tail(tail.clone())
            .spawn()
            .map_err(io("starting the writer thread"))?
    };
    let deliveries = Deliveries::new(
        delivery::Parts {
            store: store.clone(),
            writer: writer.clone(),
            state: state.clone(),
            head,
            shutdown: shutdown_rx.clone(),
            max_outstanding: config.limits.max_outstanding,
            backoff: delivery::Backoff {
                base: std::time::Duration::from_millis(config.delivery.backoff_base_ms),
                cap: std::time::Duration::from_millis(config.delivery.backoff_cap_ms),
            },
            tail,
        },
        &snapshot.floors,
    )?;
    let shared = Shared {
        writer: writer.clone(),
        state,
        store,
        deliveries,
        limits: Limits {
            max_event_bytes: config.limits.max_event_bytes,
            max_subscriptions_per_agency: config.limits.max_subscriptions_per_agency,
            max_event_types_per_subscription: config.limits.max_event_types_per_subscription,
            ..Limits::default()
        },
        pseudonym_key: Arc::new(pseudonym_key),
        log: log.clone(),
        publish_rate: Arc::new(limits::RateLimiter::new(
            config.limits.publish_rate_per_sec,
            config.limits.publish_burst,
        )),
        streams: Arc::new(limits::StreamLimiter::new(
            config.limits.max_streams_per_principal,
            config.limits.max_stream_inflight_bytes,
        )),
        idle_timeout: std::time::Duration::from_secs(config.limits.idle_stream_timeout_secs),
        refusal_delay: std::time::Duration::from_millis(config.limits.refusal_delay_ms),
        refusals: Arc::new(refusals::Refusals::new(config.audit.refusal_max_keys)),
        send_budget: Arc::new(sendq::QueueBudget::new(
            config.limits.max_stream_queued_bytes,
            config.limits.max_principal_queued_bytes,
            std::time::Duration::from_millis(config.limits.slow_reader_grace_ms),
        )),
        publish_duration: metrics::histogram!("caseshare_publish_duration_seconds"),
    };
    // Hardening (issue 13): refusals flushed as aggregated AUTH_DENIED
    // entries; connections bounded (caps, timeouts, descriptor reserve).
    let refusal_task = tokio::spawn(shared.refusals.clone().run(
        writer.clone(),
        std::time::Duration::from_millis(config.audit.refusal_interval_ms),
        shutdown_rx.clone(),
    ));
    let fd_limit = conns::raise_nofile_limit();
    if fd_limit <= config.connections.fd_reserve + 16 {
        return Err(ServeError::Secret(format!(
            "config key connections.fd_reserve: {} leaves no room below RLIMIT_NOFILE {fd_limit}; lower it or raise the limit",
            config.connections.fd_reserve
        )));
    }
    let conn_limits = Arc::new(conns::ConnLimits::new(config.connections.clone(), fd_limit));
    let fd_task = {
        let limits = conn_limits.clone();
        tokio::spawn(async move {
            loop {
                let l = limits.clone();
                let _ = tokio::task::spawn_blocking(move || l.sample_fds()).await;
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        })
    };
    // Retention: events settled everywhere and older than the retention are
    // deleted (their salts with them); the audit log keeps its commitments.
    let retention_task = {
        let deliveries = shared.deliveries.clone();
        let store = shared.store.clone();
        let writer = writer.clone();
        let retention = i64::try_from(config.delivery.retention_secs).unwrap_or(i64::MAX);
        let every = std::time::Duration::from_secs(config.delivery.retention_sweep_secs);
        let mut stop = shutdown_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {},
                    _ = stop.changed() => return,
                }
                if let Err(e) = expunge(&store, &writer, deliveries.min_floor(), retention).await {
                    tracing::warn!(error = %e, "retention sweep failed");
                }
                if let Err(e) = purge_deleted_subscriptions(&store, &writer).await {
                    tracing::warn!(error = %e, "purging deleted subscriptions failed");
                }
            }
        })
    };
    // A fresh checkpoint at least every second while the log grows.
    let checkpoint_task = {
        let log = log.clone();
        let mut heads = log.subscribe();
        // One at start too, so the checkpoint metrics start from it.
        heads.mark_changed();
        let mut stop = shutdown_rx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = heads.changed() => if changed.is_err() { return },
                    _ = stop.changed() => return,
                }
                if let Err(e) = log.checkpoint() {
                    tracing::error!(error = %e, "could not sign a checkpoint");
                }
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {},
                    _ = stop.changed() => return,
                }
            }
        })
    };

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(io(format!("binding gRPC listener {}", config.listen)))?;
    let bound = Bound {
        grpc: listener.local_addr().map_err(io("gRPC listener address"))?,
        ops: ops_addr,
        vkey: log.vkey(),
        dev_pki_created: tls_files.dev_pki_created.clone(),
    };

    let sub_metrics = ops::gauges::Subscriptions::new(shared.deliveries.clone());
    let sampler_task = tokio::spawn(ops::gauges::sample(
        sub_metrics.clone(),
        shutdown_rx.clone(),
    ));
    let status =
        ops::status::StatusSource::new(&config, sub_metrics.clone(), log.clone(), roster.clone());
    // Moved, not cloned: the gauges hold the delivery engine and through it
    // a writer handle, which must all be gone for the writer to drain at
    // shutdown.
    let _ = subs_cell.set(sub_metrics);
    let (conn_tx, conn_rx) = mpsc::channel(256);
    let accept_task = tokio::spawn(tls::accept_loop(
        listener,
        tls_reloader.clone(),
        config.trust_domain.clone(),
        conn_tx,
        conn_limits,
    ));
    // The certificate, CA bundle and CRLs are reloaded on SIGHUP and when the
    // files change; established connections and streams are not touched.
    let reload_task = {
        let tls = tls_reloader.clone();
        let mut stop = shutdown_rx.clone();
        tokio::spawn(async move {
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
            loop {
                let hangup = async {
                    match hup.as_mut() {
                        Some(s) => s.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = hangup => {
                        if let Err(e) = tls.reload() {
                            tracing::error!(error = %e, "TLS reload on SIGHUP failed; keeping the previous configuration");
                        }
                    }
                    _ = tick.tick() => {
                        if let Err(e) = tls.reload_if_changed() {
                            tracing::error!(error = %e, "TLS files changed but do not load; keeping the previous configuration");
                        }
                    }
                    _ = stop.changed() => return,
                }
            }
        })
    };

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(caseshare_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Secret(format!("reflection: {e}")))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(caseshare_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| ServeError::Secret(format!("reflection: {e}")))?;
    let max_msg = config.limits.max_message_bytes;
    let backups = Arc::new(backup::BackupSource {
        store: shared.store.clone(),
        data_dir: config.data_dir.clone(),
        pseudonym_key: shared.pseudonym_key.clone(),
        cluster: replica
            .as_ref()
            .map(|(journal, _, progress, ..)| (journal.clone(), progress.clone())),
        busy: Arc::default(),
        writer: shared.writer.clone(),
    });
    use pb::{
        admin_server::AdminServer, audit_server::AuditServer, consent_server::ConsentServer,
        publisher_server::PublisherServer, subscriber_server::SubscriberServer,
    };
    for name in [
        "caseshare.v1.Publisher",
        "caseshare.v1.Subscriber",
        "caseshare.v1.Consent",
        "caseshare.v1.Admin",
        "caseshare.v1.Audit",
        "",
    ] {
        health_reporter
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
    }

    let secs = std::time::Duration::from_secs;
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(secs(config.limits.http2_keepalive_interval_secs)))
        .http2_keepalive_timeout(Some(secs(config.limits.http2_keepalive_timeout_secs)))
        .max_concurrent_streams(Some(config.limits.http2_max_concurrent_streams))
        // Outermost: the RPC's span (when trace export is on) covers the
        // authorisation and its refusals too.
        .layer(telemetry::rpc::RpcTraceLayer)
        .layer(auth::AuthLayer::new(auth::AuthConfig {
            refusals: shared.refusals.clone(),
            rates: auth::FamilyRates::new(
                shared.publish_rate.clone(),
                &config.limits.family_rates(),
            ),
            refusal_delay: shared.refusal_delay,
            state: shared.state.clone(),
        }))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            PublisherServer::new(services::publisher::PublisherService(shared.clone()))
                .max_decoding_message_size(max_msg),
        )
        .add_service(
            SubscriberServer::new(services::subscriber::SubscriberService(shared.clone()))
                .max_decoding_message_size(max_msg),
        )
        .add_service(
            ConsentServer::new(services::consent::ConsentService(shared.clone()))
                .max_decoding_message_size(max_msg),
        )
        .add_service(
            AdminServer::new(services::admin::AdminService(
                shared.clone(),
                status,
                backups,
            ))
            .max_decoding_message_size(max_msg),
        )
        .add_service(
            AuditServer::new(services::audit::AuditService(shared.clone()))
                .max_decoding_message_size(max_msg),
        );

    // Cluster mode: ready once the journal as it stood at start is applied
    // here; the regression guard watches from then on.
    let cluster_tasks = match replica {
        Some((journal, notices, progress, reader, target, held)) => {
            let follow = cluster::follow(notices, shared.deliveries.clone());
            let announce = roster.map(|view| {
                cluster::announce(
                    cluster::Announce {
                        journal: journal.clone(),
                        view,
                        address: bound.grpc.to_string(),
                        progress: progress.clone(),
                    },
                    shutdown_rx.clone(),
                )
            });
            let watch = cluster::watch(
                journal,
                progress,
                target,
                held,
                ready.clone(),
                shutdown_rx.clone(),
            );
            let mut tasks = vec![follow, watch];
            tasks.extend(announce);
            Some((tasks, reader))
        }
        None => {
            ready.store(true, Ordering::SeqCst);
            None
        }
    };
    tracing::info!(grpc = %bound.grpc, ops = %bound.ops, dev_pki = ?tls_files.dev_pki, "caseshare broker listening");
    on_bound(bound);

    let ready_for_stop = ready.clone();
    let stop_tx = shutdown_tx.clone();
    let stop = async move {
        shutdown.await;
        tracing::info!("shutting down: finishing in-flight requests");
        ready_for_stop.store(false, Ordering::SeqCst);
        let _ = stop_tx.send(true);
    };
    let result = router
        .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), stop)
        .await;
    let _ = shutdown_tx.send(true);
    accept_task.abort();
    // The ops task and the cell it reads hold the delivery engine's gauges,
    // and through them a writer handle: both go before the writer drains.
    drop(ops_task);
    drop(subs_cell);
    sampler_task.abort();
    checkpoint_task.abort();
    reload_task.abort();
    retention_task.abort();
    fd_task.abort();
    // Refusals counted since the last interval are written before the
    // writer stops.
    let _ = refusal_task.await;
    // Every request has finished; dropping the last writer handles lets the
    // writer drain its queue and stop (in cluster mode: this replica's last
    // proposals are applied, then the journal reader stops).
    // The engine's follower and the guard go first (the follower holds a
    // writer handle); the journal reader last, once this replica's own
    // proposals are applied.
    let reader = cluster_tasks.map(|(tasks, reader)| {
        for task in tasks {
            task.abort();
        }
        reader
    });
    drop(shared);
    drop(writer);
    let _ = tokio::task::spawn_blocking(move || writer_join.join()).await;
    if let Some(reader) = reader {
        reader.abort();
    }
    // Everything is committed: the last checkpoint covers all of it.
    match tokio::task::spawn_blocking(move || log.persist_final()).await {
        Ok(Ok(size)) => tracing::info!(tree_size = size, "final audit checkpoint saved"),
        Ok(Err(e)) => tracing::error!(error = %e, "could not save the final audit checkpoint"),
        Err(e) => tracing::error!(error = %e, "could not save the final audit checkpoint"),
    }
    tracing::info!("caseshare broker stopped");
    result.map_err(ServeError::from)
}
