//! `caseshare demo`: a three-agency scenario played end to end against a
//! real broker, printed as tables a Caldicott guardian can read.
//!
//! [`run`] starts a broker in a temporary directory (in this process, on
//! free loopback ports, with a development PKI), connects over mutual TLS as
//! the administrator, the auditor and the three sample agencies
//! (`nhs-trust-a`, `school-b`, `la-social-care-c`), registers the agencies,
//! loads three information sharing agreements, records the parent's consent,
//! creates subscriptions, and plays six steps:
//!
//! - (a) the school's attendance concern is shared with social care under
//!   consent, minimised to the agreement's fields;
//! - (b) a hospital `was_not_brought` is shared with social care and
//!   withheld from the school, which has no agreement for it;
//! - (c) the parent withdraws consent, so the next attendance concern is
//!   withheld (`consent_withdrawn`);
//! - (d) the school shares under a safeguarding override (Children Act 1989
//!   s47), flagged `override_used`;
//! - (e) a sensitive mental-health referral is withheld without explicit
//!   consent (`sensitive_needs_explicit_consent`);
//! - (f) an emergency attendance is shared for safeguarding with social care
//!   and the school. It is the first event the school may receive and the
//!   last one social care receives, so reading each feed up to it shows that
//!   nothing withheld earlier was delivered.
//!
//! Deliveries are read from `Subscribe` streams and acknowledged on them;
//! every wait has a timeout. At the end the audit log is read back as the
//! auditor and summarised, and the broker is shut down.
//!
//! All names, numbers and case details are invented.
//!
//! The module is split by what each part owns: `report` holds the types
//! the run returns, `feed` the `Subscribe` streams, `setup` the
//! registrations, agreements, consent and subscriptions, `scenario` the six
//! published steps, `verify` the delivery check and the audit read-back,
//! and `print` the tables and value formatting.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use caseshare_server::config::Config;
use tokio::sync::oneshot;

use crate::client::{ClientConfig, Clients};

mod feed;
mod print;
mod report;
mod scenario;
mod setup;
mod verify;

use feed::Feed;
use print::nhs_display;
pub use report::{AuditSummary, DemoReport, Step};

/// The hospital trust (HEALTH).
pub const HEALTH: &str = "nhs-trust-a";
/// The school (EDUCATION).
pub const SCHOOL: &str = "school-b";
/// The local authority's children's social care (SOCIAL_CARE).
pub const SOCIAL_CARE: &str = "la-social-care-c";
/// The child every event is about (an invented, modulus-11 valid number).
pub const CHILD_NHS_NUMBER: &str = "9434765919";
/// The child's Unique Pupil Number, carried on the school's events.
pub const CHILD_UPN: &str = "B801200005001";
/// The parent's consent the school records.
pub const CONSENT_ID: &str = "consent-0001";
/// School → social care, education events, needs consent, limited fields.
pub const ISA_SCHOOL_SOCIAL_CARE: &str = "isa-school-sc";
/// Hospital → social care, health events, no consent needed.
pub const ISA_HEALTH_SOCIAL_CARE: &str = "isa-health-sc";
/// Hospital → school, emergency attendances for safeguarding only.
pub const ISA_HEALTH_SCHOOL: &str = "isa-health-school";
/// Social care's subscription (every event type).
pub const SOCIAL_CARE_SUBSCRIPTION: &str = "all-events";
/// The school's subscription (`health.*`).
pub const SCHOOL_SUBSCRIPTION: &str = "health-alerts";

/// How long any one wait (a delivery, the broker starting) may take.
const TIMEOUT: Duration = Duration::from_secs(20);
/// The flow-control window of each demo subscriber.
const WINDOW: u32 = 16;

/// Plays the demo scenario against a broker started for the purpose, writing
/// the tables to `out`. Fails if the broker cannot start, a call fails, an
/// expected delivery does not arrive in time, or an agency receives
/// something other than what was shared with it.
pub async fn run(out: &mut impl Write) -> Result<DemoReport> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::Builder::new()
        .prefix("caseshare-demo-")
        .tempdir()
        .context("creating a temporary directory for the demo broker")?;
    let data_dir = tmp.path().join("data");
    let pki_dir = data_dir.join("pki");
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let config = Config {
        data_dir: data_dir.clone(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ops_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..Config::default()
    };
    // Created here rather than by the broker so that its notice about the
    // new PKI does not interleave with the demo's output.
    caseshare_server::pki::write_dev_pki(&pki_dir, &config.trust_domain)
        .context("creating the development PKI")?;

    writeln!(out, "Caseshare demo: sharing information about one child")?;
    writeln!(out, "====================================================")?;
    writeln!(
        out,
        "A broker runs in a temporary directory ({}) with a development PKI;\n\
         every call below is real gRPC over mutual TLS. All names and case details are invented.",
        tmp.path().display()
    )?;

    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (bound_tx, bound_rx) = oneshot::channel();
    let server = caseshare_server::serve(
        config,
        async move {
            let _ = stop_rx.await;
        },
        move |bound| {
            let _ = bound_tx.send(bound);
        },
    );
    let scenario = async {
        let played = match tokio::time::timeout(TIMEOUT, bound_rx).await {
            Ok(Ok(bound)) => play(&mut *out, bound.grpc, &pki_dir).await,
            Ok(Err(_)) => Err(anyhow!("the broker stopped before it was listening")),
            Err(_) => Err(anyhow!(
                "the broker did not start listening within {} s",
                TIMEOUT.as_secs()
            )),
        };
        // Every client is dropped by now; stop the broker whatever happened.
        let _ = stop_tx.send(());
        played
    };
    let (served, played) = tokio::join!(server, scenario);
    let _ = tmp.close();
    let report = match (played, served) {
        (Ok(report), Ok(())) => report,
        (Err(e), Ok(())) => return Err(e),
        (Err(e), Err(s)) => return Err(e.context(format!("the broker failed: {s}"))),
        (Ok(_), Err(s)) => return Err(anyhow!("the broker failed: {s}")),
    };
    writeln!(
        out,
        "\nThe broker has shut down and its temporary directory is deleted."
    )?;
    if !report.deliveries_match_decisions {
        bail!("an agency received something other than what was shared with it (see above)");
    }
    Ok(report)
}

/// The connections and state of one demo run.
struct Demo<'o, W: Write> {
    out: &'o mut W,
    admin: Clients,
    auditor: Clients,
    agencies: BTreeMap<&'static str, Clients>,
    feeds: Vec<Feed>,
    report: DemoReport,
    base: i64,
}

/// Connects to the broker listening on `grpc` and plays the scenario.
async fn play(out: &mut impl Write, grpc: SocketAddr, pki: &Path) -> Result<DemoReport> {
    let server = format!("https://localhost:{}", grpc.port());
    let connect = |name: &str| -> Result<Clients> {
        Clients::connect(&ClientConfig::dev(server.clone(), pki, name))
            .with_context(|| format!("connecting as {name}"))
    };
    let mut agencies = BTreeMap::new();
    for agency in [HEALTH, SCHOOL, SOCIAL_CARE] {
        agencies.insert(agency, connect(agency)?);
    }
    let mut demo = Demo {
        out,
        admin: connect("admin")?,
        auditor: connect("auditor")?,
        agencies,
        feeds: Vec::new(),
        report: DemoReport {
            grpc: Some(grpc),
            ..DemoReport::default()
        },
        // Midnight UTC 30 days ago: event dates are relative to it.
        base: unix_now() / 86_400 * 86_400 - 30 * 86_400,
    };
    writeln!(demo.out, "Broker listening on {server}")?;
    writeln!(
        demo.out,
        "The child: NHS number {}, Unique Pupil Number {CHILD_UPN}",
        nhs_display(CHILD_NHS_NUMBER)
    )?;
    demo.setup().await?;
    demo.scenario().await?;
    demo.check_deliveries()?;
    demo.audit().await?;
    Ok(demo.report)
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

impl<W: Write> Demo<'_, W> {
    /// The time `day` days and `hour` hours after the run's base midnight.
    fn ts(&self, day: i64, hour: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp {
            seconds: self.base + day * 86_400 + hour * 3_600,
            nanos: 0,
        })
    }

    /// The connection of one of the three sample agencies.
    fn agency(&self, agency: &str) -> Result<Clients> {
        self.agencies
            .get(agency)
            .cloned()
            .ok_or_else(|| anyhow!("no connection for {agency}"))
    }
}
