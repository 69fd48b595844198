//! `caseshare`: run the broker, make a dev PKI, and talk to a broker as an
//! agency, an administrator or an auditor. JSON in and out is proto3 JSON.

use std::io::Read;

/// mimalloc instead of glibc's allocator: the writer thread, sled and the
/// gRPC stack allocate many small, short-lived buffers across threads, and
/// under glibc malloc a quarter of the writer's time was `malloc`, `free`
/// and `realloc` (see docs/BENCHMARKS.md). Built with `no_thp`: with
/// transparent huge pages mimalloc's page faults zeroed 2 MiB at a time and
/// tripled the p99 of publish→delivery at 2,000 events/s. `serve` also
/// hands freed memory back once a burst is over (`caseshare_alloc`).
#[global_allocator]
static ALLOCATOR: caseshare_alloc::MiMalloc = caseshare_alloc::MiMalloc;
use std::path::PathBuf;

mod backup;
mod check;
mod commands;
mod keygen;
mod probe;

use commands::{
    AgencyCommand, AgreementCommand, AuditCommand, ConsentCommand, SubscriptionCommand,
};

use anyhow::{Context, Result, bail};
use caseshare_cli::client::{ClientConfig, Clients};
use caseshare_cli::json::{from_json, to_json};
use caseshare_proto::v1 as pb;
use caseshare_server::config::Config;
use clap::{Args, Parser, Subcommand};
use tokio_stream::StreamExt;

#[derive(Parser)]
#[command(
    name = "caseshare",
    version,
    about = "Consented child-record event broker with a verifiable sharing log"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Conn {
    /// The broker's gRPC address.
    #[arg(
        long,
        env = "CASESHARE_SERVER",
        default_value = "https://localhost:7443"
    )]
    server: String,
    /// CA bundle the server certificate chains to.
    #[arg(
        long,
        env = "CASESHARE_CA",
        default_value = "caseshare-data/pki/ca.pem"
    )]
    ca: PathBuf,
    /// Client certificate (its SPIFFE URI names who you are).
    #[arg(long, env = "CASESHARE_CERT")]
    cert: PathBuf,
    /// Client private key.
    #[arg(long, env = "CASESHARE_KEY")]
    key: PathBuf,
}

impl Conn {
    fn clients(&self) -> Result<Clients> {
        Ok(Clients::connect(&ClientConfig {
            server: self.server.clone(),
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            domain: None,
        })?)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker.
    Serve {
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data directory (store, secrets, dev PKI) [default: ./caseshare-data].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// gRPC listen address [default: 127.0.0.1:7443].
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Ops (HTTP) listen address [default: 127.0.0.1:7444].
        #[arg(long)]
        ops_listen: Option<std::net::SocketAddr>,
    },
    /// Make a stopped embedded broker's data directory the first replica of
    /// a new cluster: its store (events, subscriptions, consents, audit log)
    /// continues on the cluster's empty journal (docs/CLUSTER.md).
    Migrate {
        /// The stopped embedded broker's data directory.
        #[arg(long)]
        from: PathBuf,
        /// NATS servers, comma-separated (nats://host:port or tls://host:port).
        #[arg(long, value_delimiter = ',', required = true)]
        nats_servers: Vec<String>,
        /// TOML configuration file (its [store.nats] TLS, credentials,
        /// stream and replicas are used).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Take a consistent backup of a running broker (admin) into a new
    /// folder: its store, sealed with a key derived from the broker's
    /// pseudonym key, and a manifest (docs/OPERATIONS.md, "Back up and
    /// restore").
    Backup {
        #[command(flatten)]
        conn: Conn,
        /// The folder to create (it must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Restore a backup into an empty data directory of a stopped broker.
    /// Every file and chunk is checked before anything is put in place.
    Restore {
        /// The backup folder (`caseshare backup --out`).
        #[arg(long)]
        from: PathBuf,
        /// The data directory to restore into; its `store/` must be missing
        /// or empty.
        #[arg(long)]
        data_dir: PathBuf,
        /// The pseudonym key of the broker that took the backup (default:
        /// the configuration's, else `<data-dir>/secrets/pseudonym.key`).
        #[arg(long, env = "CASESHARE_PSEUDONYM_KEY")]
        pseudonym_key: Option<PathBuf>,
        /// TOML configuration file (its `[audit] pseudonym_key`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// A cluster replica's backup, after its journal is lost: forget
        /// the journal (its position and kept times), so that `caseshare
        /// migrate --from` starts a new cluster from the restored store.
        #[arg(long)]
        detach: bool,
    },
    /// Verify a stopped broker's data directory, read-only: one line per
    /// check; exits 1 if anything is damaged.
    Check {
        /// Data directory [default: ./caseshare-data].
        #[arg(long, env = "CASESHARE_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start a broker in a temporary directory and play a three-agency
    /// scenario, printing every sharing decision.
    Demo,
    /// GET a plain-HTTP URL and exit 0 on 200, 1 otherwise: the container's
    /// health check (`caseshare probe http://127.0.0.1:7444/readyz`), with
    /// no shell or curl in the image.
    Probe {
        /// The URL (`http://HOST:PORT/PATH`), e.g. the ops port's `/readyz` or `/healthz`.
        url: String,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Write a development PKI (CA, server and sample client certificates).
    DevPki {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// SPIFFE trust domain.
        #[arg(long, default_value = "caseshare.local")]
        trust_domain: String,
        /// Also a NATS server certificate for these host names (repeat the
        /// flag), nats.pem/.key, and the brokers' NATS client certificate,
        /// nats-client.pem/.key.
        #[arg(long = "nats-host")]
        nats_hosts: Vec<String>,
    },
    /// Write a new broker's keys (the audit log's signing key and the
    /// pseudonym key), never overwriting one.
    Keygen(keygen::KeygenArgs),
    /// Agencies (admin).
    Agency {
        #[command(subcommand)]
        command: AgencyCommand,
    },
    /// Information sharing agreements (admin).
    Agreement {
        #[command(subcommand)]
        command: AgreementCommand,
    },
    /// Consents (agency).
    Consent {
        #[command(subcommand)]
        command: ConsentCommand,
    },
    /// Subscriptions (agency).
    Subscription {
        #[command(subcommand)]
        command: SubscriptionCommand,
    },
    /// The broker at a glance (admin): version, uptime, store, audit log, subscriptions.
    Status {
        #[command(flatten)]
        conn: Conn,
        /// Print proto3 JSON of `caseshare.v1.BrokerStatus` (every field) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The audit log (auditor).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Publish one event: proto3 JSON of a CaseEvent or a PublishRequest, from a file or `-` for stdin.
    Publish {
        #[command(flatten)]
        conn: Conn,
        /// The JSON file, or `-`.
        #[arg(default_value = "-")]
        file: String,
        /// Restrict recipients to these agencies.
        #[arg(long = "to")]
        to_agencies: Vec<String>,
    },
    /// Receive deliveries as JSON lines, acknowledging each once printed.
    Subscribe {
        #[command(flatten)]
        conn: Conn,
        /// The subscription (created if missing).
        #[arg(long)]
        subscription: String,
        /// Event types for a new subscription (exact or `prefix.*`).
        #[arg(long = "event-type")]
        event_types: Vec<String>,
        /// Exit after this many deliveries.
        #[arg(long)]
        max: Option<u64>,
        /// Flow-control window.
        #[arg(long, default_value_t = 100)]
        max_outstanding: u32,
    },
}

fn read_input(file: &str) -> Result<String> {
    if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading stdin")?;
        Ok(s)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {file}"))
    }
}

fn print<M: prost::Message>(type_name: &str, msg: &M) -> Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(&to_json(type_name, msg)?)?
    );
    Ok(())
}

fn status_error(status: tonic::Status) -> anyhow::Error {
    use tonic_types::StatusExt;
    let mut msg = format!("{:?}: {}", status.code(), status.message());
    if let Some(br) = status.get_details_bad_request() {
        for v in br.field_violations {
            msg.push_str(&format!("\n  {}: {}", v.field, v.description));
        }
    }
    anyhow::anyhow!(msg)
}

fn agency_kind(s: &str) -> Result<pb::AgencyKind> {
    Ok(match s {
        "health" => pb::AgencyKind::Health,
        "education" => pb::AgencyKind::Education,
        "social_care" => pb::AgencyKind::SocialCare,
        "other" => pb::AgencyKind::Other,
        _ => bail!("--kind must be health, education, social_care or other"),
    })
}

async fn audit_command(command: AuditCommand) -> Result<()> {
    match command {
        AuditCommand::Checkpoint { conn } => {
            let mut c = conn.clients()?;
            let cp = c
                .audit
                .get_checkpoint(pb::GetCheckpointRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            print!("{}", cp.note);
            println!("vkey: {}", cp.vkey);
        }
        AuditCommand::Verify { conn, vkey, state } => {
            let mut c = conn.clients()?;
            match caseshare_cli::audit::verify(&mut c, &vkey, &state).await {
                Ok(s) => println!("verified: {} entries, root {}", s.tree_size, s.root_hex),
                Err(e) => bail!("verification failed: {e}"),
            }
        }
        AuditCommand::Query {
            conn,
            nhs_number,
            agency,
            kinds,
            limit,
            format,
        } => {
            let kinds = kinds
                .iter()
                .map(|k| {
                    pb::EntryKind::from_str_name(&k.to_uppercase())
                        .map(|k| k as i32)
                        .with_context(|| format!("unknown entry kind {k}"))
                })
                .collect::<Result<Vec<_>>>()?;
            let mut c = conn.clients()?;
            let mut stream = c
                .audit
                .query(pb::QueryRequest {
                    nhs_number: nhs_number.unwrap_or_default(),
                    agency_id: agency.unwrap_or_default(),
                    kinds,
                    page_size: limit,
                    ..Default::default()
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let mut entries = Vec::new();
            while let Some(e) = stream.next().await {
                entries.push(e.map_err(status_error)?);
            }
            if format == "json" {
                for e in &entries {
                    println!(
                        "{}",
                        serde_json::to_string(&to_json("caseshare.v1.AuditEntry", e)?)?
                    );
                }
            } else {
                print!("{}", caseshare_cli::audit::entries_table(&entries));
            }
        }
        AuditCommand::Report {
            conn,
            nhs_number,
            format,
        } => {
            let mut c = conn.clients()?;
            let r = c
                .audit
                .subject_access_report(pb::SubjectAccessReportRequest { nhs_number })
                .await
                .map_err(status_error)?
                .into_inner();
            if format == "json" {
                print("caseshare.v1.SubjectAccessReportResponse", &r)?;
            } else {
                print!("{}", caseshare_cli::audit::report_table(&r));
            }
        }
    }
    Ok(())
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is
/// called, not when the future is first polled: a SIGTERM that came between
/// the listening line and that first poll (a `docker stop` right after a
/// start) used to kill the broker with the default action (exit by signal,
/// no final checkpoint) instead of shutting it down.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate()).ok();
    let int = signal(SignalKind::interrupt()).ok();
    async move {
        let (Some(mut term), Some(mut int)) = (term, int) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    }
}

fn main() -> std::process::ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // A worker that parks collects the pages it freed once the idle
    // release asks (`caseshare_alloc`).
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(caseshare_alloc::on_park)
        .build()
        .context("starting the runtime")
        .and_then(|runtime| runtime.block_on(run(Cli::parse())));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Check { data_dir, json } => {
            let findings = check::run(&check::data_dir(data_dir))?;
            if !check::report(&findings, json) {
                // Damage found: exit 1 (a failure to run at all also exits 1,
                // with an `error:` line on stderr).
                std::process::exit(1);
            }
        }
        Command::Migrate {
            from,
            nats_servers,
            config,
        } => {
            let mut cfg = Config::load(config.as_deref(), |k| std::env::var(k).ok())?;
            cfg.data_dir = from;
            cfg.store.backend = "nats".into();
            cfg.store.nats.servers = nats_servers;
            cfg.validate()?;
            let m = caseshare_server::migrate(&cfg).await?;
            println!(
                "Migrated {}: events up to sequence {}, {} subscriptions, audit log of {} \
                 entries; the journal starts with its base message (sequence {}).",
                cfg.data_dir.display(),
                m.last_sequence,
                m.subscriptions,
                m.audit_size,
                m.base
            );
            println!(
                "Start it as the first replica (CASESHARE_STORE_BACKEND=nats); seed every other \
                 replica with a copy of this stopped directory."
            );
        }
        Command::Serve {
            config,
            data_dir,
            listen,
            ops_listen,
        } => {
            let mut cfg = Config::load(config.as_deref(), |k| std::env::var(k).ok())?;
            if let Some(d) = data_dir {
                cfg.data_dir = d;
            }
            if let Some(l) = listen {
                cfg.listen = l;
            }
            if let Some(l) = ops_listen {
                cfg.ops_listen = l;
            }
            cfg.validate()?;
            let telemetry =
                caseshare_server::telemetry::init_with_traces(&cfg.log_format, &cfg.telemetry)?;
            // After a burst, freed memory goes back to the system: parked
            // workers wake for an empty task each and collect as they park.
            let handle = tokio::runtime::Handle::current();
            let wake = move || (0..8).for_each(|_| drop(handle.spawn(async {})));
            if !caseshare_alloc::IdleRelease::default().spawn(wake)? {
                tracing::warn!(
                    "no /proc/self/stat: freed memory is returned only as mimalloc's own delay allows"
                );
            }
            let target_mib = cfg.limits.memory_target_mib;
            if target_mib > 0 && !caseshare_alloc::MemoryTarget::new(target_mib << 20).spawn()? {
                tracing::warn!(
                    target_mib,
                    "no /proc/self/status: limits.memory_target_mib is not kept"
                );
            }
            // The library reports through tracing only; the lines the test
            // harness and operators read from stdout are printed here.
            let served = caseshare_server::serve(cfg, shutdown_signal(), |bound| {
                if let Some(pki) = &bound.dev_pki_created {
                    println!(
                        "Created a development PKI in {} (not for production).",
                        pki.dir.display()
                    );
                    println!("  CA:                {}", pki.ca.display());
                    for (name, cert, key) in &pki.clients {
                        println!(
                            "  {name:<18} --cert {} --key {}",
                            cert.display(),
                            key.display()
                        );
                    }
                }
                println!("audit log verifier key: {}", bound.vkey);
                println!(
                    "caseshare listening: grpc https://{} ops http://{}",
                    bound.grpc, bound.ops
                );
            })
            .await;
            telemetry.shutdown().await; // exports what is buffered
            served?;
        }
        Command::Probe { url, timeout_ms } => {
            let line = probe::run(&url, std::time::Duration::from_millis(timeout_ms))?;
            println!("{line}");
        }
        Command::Demo => {
            caseshare_cli::demo::run(&mut std::io::stdout()).await?;
        }
        Command::DevPki {
            out,
            trust_domain,
            nats_hosts,
        } => {
            let paths =
                caseshare_server::pki::write_dev_pki_with_nats(&out, &trust_domain, &nats_hosts)?;
            println!("Wrote a development PKI to {}", paths.dir.display());
        }
        Command::Keygen(args) => keygen::run(args)?,
        Command::Agency { command } => match command {
            AgencyCommand::Register {
                conn,
                id,
                kind,
                name,
            } => {
                let mut c = conn.clients()?;
                let req = pb::RegisterAgencyRequest {
                    agency_id: id,
                    kind: agency_kind(&kind)? as i32,
                    display_name: name,
                };
                let a = c
                    .admin
                    .register_agency(req)
                    .await
                    .map_err(status_error)?
                    .into_inner();
                print("caseshare.v1.Agency", &a)?;
            }
            AgencyCommand::List { conn } => {
                let mut c = conn.clients()?;
                let r = c
                    .admin
                    .list_agencies(pb::ListAgenciesRequest {})
                    .await
                    .map_err(status_error)?;
                print("caseshare.v1.ListAgenciesResponse", r.get_ref())?;
            }
        },
        Command::Agreement { command } => match command {
            AgreementCommand::Put { conn, file } => {
                let a: pb::Agreement = from_json("caseshare.v1.Agreement", &read_input(&file)?)?;
                let mut c = conn.clients()?;
                let a = c
                    .admin
                    .put_agreement(a)
                    .await
                    .map_err(status_error)?
                    .into_inner();
                print("caseshare.v1.Agreement", &a)?;
            }
            AgreementCommand::End { conn, id, reason } => {
                let mut c = conn.clients()?;
                let req = pb::EndAgreementRequest {
                    agreement_id: id,
                    reason,
                };
                let a = c
                    .admin
                    .end_agreement(req)
                    .await
                    .map_err(status_error)?
                    .into_inner();
                print("caseshare.v1.Agreement", &a)?;
            }
            AgreementCommand::List { conn } => {
                let mut c = conn.clients()?;
                let r = c
                    .admin
                    .list_agreements(pb::ListAgreementsRequest::default())
                    .await
                    .map_err(status_error)?;
                print("caseshare.v1.ListAgreementsResponse", r.get_ref())?;
            }
        },
        Command::Consent { command } => match command {
            ConsentCommand::Record { conn, file } => {
                let k: pb::ConsentRecord =
                    from_json("caseshare.v1.ConsentRecord", &read_input(&file)?)?;
                let mut c = conn.clients()?;
                let k = c
                    .consent
                    .record_consent(k)
                    .await
                    .map_err(status_error)?
                    .into_inner();
                print("caseshare.v1.ConsentRecord", &k)?;
            }
            ConsentCommand::Withdraw { conn, id, reason } => {
                let mut c = conn.clients()?;
                let req = pb::WithdrawConsentRequest {
                    consent_id: id,
                    reason,
                };
                let k = c
                    .consent
                    .withdraw_consent(req)
                    .await
                    .map_err(status_error)?
                    .into_inner();
                print("caseshare.v1.ConsentRecord", &k)?;
            }
            ConsentCommand::List { conn, nhs_number } => {
                let mut c = conn.clients()?;
                let r = c
                    .consent
                    .list_consents(pb::ListConsentsRequest { nhs_number })
                    .await
                    .map_err(status_error)?;
                print("caseshare.v1.ListConsentsResponse", r.get_ref())?;
            }
        },
        Command::Subscription { command } => match command {
            SubscriptionCommand::Create {
                conn,
                name,
                event_types,
                ack_deadline_secs,
            } => {
                let mut c = conn.clients()?;
                let s = c
                    .subscriber
                    .create_subscription(pb::Subscription {
                        name,
                        event_types,
                        ack_deadline: ack_deadline_secs
                            .map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
                        ..Default::default()
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                print("caseshare.v1.Subscription", &s)?;
            }
            SubscriptionCommand::List { conn } => {
                let mut c = conn.clients()?;
                let r = c
                    .subscriber
                    .list_subscriptions(pb::ListSubscriptionsRequest {})
                    .await
                    .map_err(status_error)?;
                print("caseshare.v1.ListSubscriptionsResponse", r.get_ref())?;
            }
            SubscriptionCommand::Delete { conn, name } => {
                let mut c = conn.clients()?;
                c.subscriber
                    .delete_subscription(pb::DeleteSubscriptionRequest { name })
                    .await
                    .map_err(status_error)?;
            }
        },
        Command::Audit { command } => audit_command(command).await?,
        Command::Backup { conn, out } => {
            print!("{}", backup::backup(&mut conn.clients()?, &out).await?);
        }
        Command::Restore {
            from,
            data_dir,
            pseudonym_key,
            config,
            detach,
        } => {
            print!(
                "{}",
                backup::restore(backup::RestoreArgs {
                    from,
                    data_dir,
                    pseudonym_key,
                    config,
                    detach,
                })?
            );
        }
        Command::Status { conn, json } => {
            let text = caseshare_cli::status::run(&mut conn.clients()?, json).await?;
            print!("{text}");
        }
        Command::Publish {
            conn,
            file,
            to_agencies,
        } => {
            let text = read_input(&file)?;
            let value: serde_json::Value =
                serde_json::from_str(&text).context("the input is not JSON")?;
            let mut req: pb::PublishRequest = if value.get("event").is_some() {
                from_json("caseshare.v1.PublishRequest", &text)?
            } else {
                pb::PublishRequest {
                    event: Some(from_json("caseshare.v1.CaseEvent", &text)?),
                    ..Default::default()
                }
            };
            req.to_agencies.extend(to_agencies);
            let mut c = conn.clients()?;
            let r = c
                .publisher
                .publish(req)
                .await
                .map_err(status_error)?
                .into_inner();
            print("caseshare.v1.PublishResponse", &r)?;
        }
        Command::Subscribe {
            conn,
            subscription,
            event_types,
            max,
            max_outstanding,
        } => {
            let mut c = conn.clients()?;
            let existing = c
                .subscriber
                .get_subscription(pb::GetSubscriptionRequest {
                    name: subscription.clone(),
                })
                .await;
            match existing {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::NotFound => {
                    c.subscriber
                        .create_subscription(pb::Subscription {
                            name: subscription.clone(),
                            event_types,
                            ..Default::default()
                        })
                        .await
                        .map_err(status_error)?;
                    eprintln!("created subscription {subscription}");
                }
                Err(s) => return Err(status_error(s)),
            }
            let (tx, rx) = tokio::sync::mpsc::channel(1024);
            tx.send(pb::SubscribeRequest {
                subscription: subscription.clone(),
                max_outstanding,
                ..Default::default()
            })
            .await?;
            let mut stream = c
                .subscriber
                .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .map_err(status_error)?
                .into_inner();
            let mut received = 0u64;
            while let Some(item) = stream.next().await {
                let delivery = item.map_err(status_error)?;
                println!(
                    "{}",
                    serde_json::to_string(&to_json("caseshare.v1.Delivery", &delivery)?)?
                );
                tx.send(pb::SubscribeRequest {
                    ack: Some(pb::AckIds {
                        delivery_ids: vec![delivery.delivery_id.clone()],
                    }),
                    ..Default::default()
                })
                .await?;
                received += 1;
                if max.is_some_and(|m| received >= m) {
                    // Make sure the last ack is durable before exiting.
                    c.subscriber
                        .ack(pb::AckRequest {
                            subscription: subscription.clone(),
                            delivery_ids: vec![delivery.delivery_id],
                        })
                        .await
                        .map_err(status_error)?;
                    break;
                }
            }
        }
    }
    Ok(())
}
