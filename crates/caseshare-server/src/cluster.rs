//! Cluster mode's start and watch (`docs/CLUSTER.md`): the NATS settings
//! from `[store.nats]`, the journal opened (created with its replicas, or
//! checked), the **regression guard** at start and while running, the
//! refusal of a replica the journal's retention left behind (its next
//! message was dropped), the readiness of a replica (ready once it has
//! applied the journal as it stood at start), and the delivery engine following subscription changes
//! made through other replicas, and the **roster** this replica puts
//! itself in for `caseshare status`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use caseshare_cluster::{ClusterError, DEFAULT_STREAM, DEFAULT_SUBJECT, Journal, JournalConfig};
use tokio::sync::{mpsc, watch};

use crate::ServeError;
use crate::config::Config;
use crate::delivery::Deliveries;
use crate::writer::{Notice, Progress};

/// How long a start waits for the NATS cluster to answer.
const CONNECT_PATIENCE: Duration = Duration::from_secs(60);
/// How often a running replica compares the journal's end with its own.
const GUARD_EVERY: Duration = Duration::from_secs(2);
/// How long the journal's end must stay below what a running replica
/// applied before the guard trips for good. A NATS node that led the
/// journal's stream and comes back from a partition shorter than its
/// lost-quorum step-down still answers as the leader, with its stale end,
/// for a few seconds (seen in the chaos run: about 10 s); a journal that
/// really went back stays back. Meanwhile the replica refuses writes and
/// is not ready.
const GUARD_CONFIRM: Duration = Duration::from_secs(30);
/// How often a replica puts itself in the roster and reads it back.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(5);
/// How long one roster call may take before the round is skipped.
const ROSTER_PATIENCE: Duration = Duration::from_secs(3);

/// The journal settings from `[store.nats]`.
pub(crate) fn journal_config(config: &Config) -> JournalConfig {
    let n = &config.store.nats;
    JournalConfig {
        servers: n.servers.clone(),
        stream: n.stream.clone(),
        // One subject per stream, so that two journals on one NATS
        // cluster (a test, a staging copy) never share messages.
        subject: if n.stream == DEFAULT_STREAM {
            DEFAULT_SUBJECT.to_string()
        } else {
            format!("{DEFAULT_SUBJECT}.{}", n.stream.to_ascii_lowercase())
        },
        replicas: usize::try_from(n.replicas).unwrap_or(3),
        max_age: Duration::from_secs(n.journal_max_age_s),
        duplicate_window: Duration::from_secs(n.duplicate_window_s),
        tls_ca: n.ca.clone(),
        tls_cert: n.cert.clone(),
        tls_key: n.key.clone(),
        creds: n.creds.clone(),
        client_name: Some(format!("caseshare {}", config.listen)),
        ..JournalConfig::default()
    }
}

/// Opens the journal, retrying while the NATS cluster comes up.
pub(crate) async fn open(config: &Config) -> Result<Arc<Journal>, ServeError> {
    let jc = journal_config(config);
    let started = Instant::now();
    loop {
        match Journal::open(&jc).await {
            Ok(j) => return Ok(Arc::new(j)),
            Err(e @ (ClusterError::Connect(_) | ClusterError::JetStream(_)))
                if started.elapsed() < CONNECT_PATIENCE =>
            {
                tracing::warn!(error = %e, "waiting for the NATS cluster");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => {
                return Err(ServeError::Backend(format!(
                    "store.nats: cannot open the journal stream {:?} on {:?}: {e}",
                    jc.stream, jc.servers
                )));
            }
        }
    }
}

/// The journal's first and last sequences, retrying while the stream
/// elects.
async fn bounds(journal: &Journal) -> Result<(u64, u64), ServeError> {
    let started = Instant::now();
    loop {
        match journal.bounds().await {
            Ok(n) => return Ok(n),
            Err(e) if started.elapsed() < CONNECT_PATIENCE => {
                tracing::warn!(error = %e, "waiting for the journal stream's leader");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(ServeError::Backend(format!("store.nats: {e}"))),
        }
    }
}

/// What this replica holds, for the guard's messages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Held {
    /// The journal sequence its store has applied.
    pub position: u64,
    /// Its audit tree's size.
    pub audit_size: u64,
    /// The size of the last checkpoint it signed or saw (saved in its
    /// data directory).
    pub checkpoint_size: u64,
}

fn regression(end: u64, held: &Held) -> String {
    format!(
        "the journal went back: it ends at message {end}, but this replica has applied \
         through message {} (audit tree size {}, last checkpoint signed or seen here: tree \
         size {}). A NATS node that lost messages may have become the stream's leader. This \
         replica refuses writes and stays not ready rather than sign a log inconsistent with \
         its checkpoint; see docs/CLUSTER.md, runbook: the journal went back",
        held.position, held.audit_size, held.checkpoint_size
    )
}

/// Why a replica behind the journal's retention cannot start.
fn compacted(first: u64, held: &Held) -> String {
    format!(
        "the journal no longer holds the messages this replica needs: this replica has \
         applied through message {}, but the journal's first message is now {first} \
         (dropped by store.nats.journal_max_age_s: {}). This replica \
         refuses to start rather than skip them. Seed its data directory from a newer \
         copy of a live replica: a backup of a live replica restored with `caseshare \
         restore`, or a copy of a stopped replica's data directory; see docs/CLUSTER.md, \
         runbook: a replica behind the journal's retention",
        held.position,
        dropped(held.position.saturating_add(1), first.saturating_sub(1))
    )
}

/// "message 7", or "messages 7 to 9".
fn dropped(from: u64, to: u64) -> String {
    if from == to {
        format!("message {from}")
    } else {
        format!("messages {from} to {to}")
    }
}

/// The checks at start: the journal must hold at least what this replica's
/// store has applied (the regression guard: an end below it must last
/// [`GUARD_CONFIRM`], asked again every [`GUARD_EVERY`], before the start
/// is refused — a stale answer passes), and still hold the message after
/// it (a journal with `max_age` drops old messages). Gives the journal's
/// end (the replica is ready once it has applied that far).
pub(crate) async fn check_at_start(journal: &Journal, held: &Held) -> Result<u64, ServeError> {
    let mut suspicion = Suspicion::default();
    let (first, end) = loop {
        let (first, end) = bounds(journal).await?;
        match suspicion.observe(end, held.position, Instant::now()) {
            Guard::Fine | Guard::Cleared => break (first, end),
            Guard::Suspect => tracing::warn!(
                end,
                position = held.position,
                "the journal's end is below what this replica applied: asking again until it \
                 is back (a stale answer from a NATS node back from a partition) or \
                 {GUARD_CONFIRM:?} have passed"
            ),
            Guard::Waiting => {}
            Guard::Trip { end } => return Err(ServeError::Backend(regression(end, held))),
        }
        tokio::time::sleep(GUARD_EVERY).await;
    };
    if first > held.position.saturating_add(1) {
        return Err(ServeError::Backend(compacted(first, held)));
    }
    Ok(end)
}

/// What the guard makes of one answer for the journal's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Guard {
    /// At or past this replica's position, as before.
    Fine,
    /// Below it, for the first time: refuse writes, not ready.
    Suspect,
    /// Below it still, for less than [`GUARD_CONFIRM`].
    Waiting,
    /// At or past it again after [`Guard::Suspect`]: it was a stale answer.
    Cleared,
    /// Below it for [`GUARD_CONFIRM`]: the journal went back (the lowest
    /// end told).
    Trip {
        /// The lowest end told meanwhile.
        end: u64,
    },
}

/// Since when, and how low, the journal's end has looked below this
/// replica's position.
#[derive(Debug, Default)]
struct Suspicion {
    since: Option<(Instant, u64)>,
}

impl Suspicion {
    /// The guard's verdict on the end `end` told at `now`, for a replica
    /// at `position`.
    fn observe(&mut self, end: u64, position: u64, now: Instant) -> Guard {
        if end >= position {
            return match self.since.take() {
                Some(_) => Guard::Cleared,
                None => Guard::Fine,
            };
        }
        match &mut self.since {
            None => {
                self.since = Some((now, end));
                Guard::Suspect
            }
            Some((since, lowest)) => {
                *lowest = (*lowest).min(end);
                if now.saturating_duration_since(*since) >= GUARD_CONFIRM {
                    Guard::Trip { end: *lowest }
                } else {
                    Guard::Waiting
                }
            }
        }
    }
}

/// Marks the replica ready once it has applied through `target`, then
/// watches the journal's end: while it is below what this replica applied,
/// writes are refused and the replica is not ready; if that lasts
/// [`GUARD_CONFIRM`], for good.
pub(crate) fn watch(
    journal: Arc<Journal>,
    progress: Progress,
    target: u64,
    held: Held,
    ready: Arc<AtomicBool>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        while progress.applied() < target {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
        }
        tracing::info!(
            applied = progress.applied(),
            "caught up with the journal: ready"
        );
        ready.store(true, Ordering::SeqCst);
        let mut tick = tokio::time::interval(GUARD_EVERY);
        let mut suspicion = Suspicion::default();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let applied = progress.applied();
            let end = match journal.last_sequence().await {
                Ok(end) => end,
                Err(e) => {
                    tracing::debug!(error = %e, "journal end unknown for now");
                    continue;
                }
            };
            match suspicion.observe(end, applied, Instant::now()) {
                Guard::Fine | Guard::Waiting => {}
                Guard::Suspect => {
                    tracing::warn!(
                        end,
                        applied,
                        "the journal's end is below what this replica applied: refusing \
                         writes and not ready while it lasts (a stale answer from a NATS \
                         node back from a partition passes; the guard trips if it lasts \
                         {GUARD_CONFIRM:?})"
                    );
                    set_serving(&progress, &ready, false);
                }
                Guard::Cleared => {
                    tracing::warn!(
                        end,
                        applied,
                        "the journal's end is back at or past what this replica applied \
                         (the lower end was a stale answer): taking writes again, ready"
                    );
                    set_serving(&progress, &ready, true);
                }
                Guard::Trip { end } => {
                    let held = Held {
                        position: applied,
                        ..held
                    };
                    tracing::error!("{}", regression(end, &held));
                    return;
                }
            }
        }
    })
}

/// Takes writes and is ready, or refuses writes and is not ready.
fn set_serving(progress: &Progress, ready: &AtomicBool, serving: bool) {
    if serving {
        progress.allow_writes();
    } else {
        progress.refuse_writes();
    }
    ready.store(serving, Ordering::SeqCst);
    metrics::gauge!("caseshare_ready").set(if serving { 1.0 } else { 0.0 });
}

/// Follows subscription changes made through other replicas.
pub(crate) fn follow(
    mut notices: mpsc::Receiver<Notice>,
    deliveries: Arc<Deliveries>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(notice) = notices.recv().await {
            match notice {
                Notice::Created(rec) => {
                    let id = rec.id;
                    if let Err(e) = deliveries.add_created(rec).await {
                        tracing::error!(error = %e, subscription = id, "could not follow a subscription created elsewhere");
                    }
                }
                Notice::Deleted(id) => deliveries.remove(id),
                Notice::Seek { id, target } => deliveries.follow_seek(id, target),
                Notice::Replayed {
                    id,
                    sequences,
                    floor,
                } => deliveries.follow_replay(id, &sequences, floor),
            }
        }
    })
}

/// A new instance id for this start of this replica.
pub(crate) fn instance_id() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

/// The roster as this replica last read it, for `caseshare status`.
#[derive(Debug, Clone)]
pub(crate) struct RosterView {
    /// This start's replica id.
    pub me: String,
    /// The members last read (empty until the first read).
    pub members: Arc<std::sync::Mutex<Vec<caseshare_cluster::Member>>>,
}

/// What a replica says of itself in the roster.
pub(crate) struct Announce {
    pub journal: Arc<Journal>,
    pub view: RosterView,
    pub address: String,
    pub progress: Progress,
}

/// Puts this replica in the roster every [`ANNOUNCE_EVERY`] with how far it
/// has applied, and reads the roster back into the view. A stopped replica
/// leaves the roster when its entry expires (15 s). Roster failures are
/// logged and retried: the roster is for operators, nothing depends on it.
pub(crate) fn announce(
    a: Announce,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut roster: Option<caseshare_cluster::Roster> = None;
        let mut tick = tokio::time::interval(ANNOUNCE_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => break,
            }
            if roster.is_none() {
                match tokio::time::timeout(
                    ROSTER_PATIENCE,
                    caseshare_cluster::Roster::open(&a.journal),
                )
                .await
                {
                    Ok(Ok(r)) => roster = Some(r),
                    Ok(Err(e)) => tracing::debug!(error = %e, "roster not open yet"),
                    Err(_) => tracing::debug!("roster not open yet: timed out"),
                }
            }
            let Some(r) = &roster else { continue };
            let me = caseshare_cluster::Member {
                replica_id: a.view.me.clone(),
                address: a.address.clone(),
                version: crate::ops::status::VERSION.to_string(),
                applied_sequence: a.progress.applied(),
                put_at_unix_ms: now_unix_ms(),
            };
            if let Err(e) = timeout(r.announce(&me)).await {
                tracing::debug!(error = %e, "could not put this replica in the roster");
            }
            match timeout(r.members()).await {
                Ok(members) => {
                    if let Ok(mut view) = a.view.members.lock() {
                        *view = members;
                    }
                }
                Err(e) => tracing::debug!(error = %e, "could not read the roster"),
            }
        }
    })
}

async fn timeout<T>(
    f: impl std::future::Future<Output = Result<T, ClusterError>>,
) -> Result<T, String> {
    match tokio::time::timeout(ROSTER_PATIENCE, f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// The wall clock in Unix milliseconds (0 before 1970).
pub(crate) fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guard by table: a low end is suspected at once, cleared when
    /// the end is back, and trips only after [`GUARD_CONFIRM`] of low
    /// ends, naming the lowest.
    #[test]
    fn the_guard_waits_out_a_stale_end_by_table() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let c = GUARD_CONFIRM.as_secs();
        // Each case: (end told, position, seconds) → verdict, in order.
        let cases: [&[(u64, u64, u64, Guard)]; 4] = [
            &[(10, 10, 0, Guard::Fine), (12, 11, 2, Guard::Fine)],
            &[
                (5, 10, 0, Guard::Suspect),
                (5, 10, 2, Guard::Waiting),
                (11, 11, 4, Guard::Cleared),
                (12, 12, 6, Guard::Fine),
                (3, 12, 8, Guard::Suspect),
            ],
            &[
                (7, 10, 0, Guard::Suspect),
                (4, 10, c - 1, Guard::Waiting),
                (6, 10, c, Guard::Trip { end: 4 }),
            ],
            &[
                (7, 10, 0, Guard::Suspect),
                (10, 10, c - 1, Guard::Cleared),
                (7, 10, c, Guard::Suspect),
                (7, 10, c + 2, Guard::Waiting),
            ],
        ];
        for (k, steps) in cases.iter().enumerate() {
            let mut s = Suspicion::default();
            for &(end, position, secs, want) in *steps {
                assert_eq!(
                    s.observe(end, position, at(secs)),
                    want,
                    "case {k}: end {end}, position {position}, at {secs} s"
                );
            }
        }
    }
}
