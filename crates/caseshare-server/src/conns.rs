//! Connection bounds (the `[connections]` config section): a cap on TLS
//! handshakes in progress (unauthenticated sockets), a global and a
//! per-principal cap on verified connections, and a file-descriptor
//! reserve below RLIMIT_NOFILE; plus each connection's activity record,
//! which the auth layer updates per request and [`crate::tls::TlsConn`]
//! reads to close a connection that sends no HTTP/2 preface or idles.
//! Every refusal closes the socket at once and counts in
//! `caseshare_conn_refused_total{reason}`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::ConnectionsConfig;

/// Why a socket was closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too few file descriptors left.
    FdReserve,
    /// Too many handshakes in progress.
    Handshakes,
    /// Too many verified connections.
    Global,
    /// Too many connections for this principal.
    PerPrincipal,
}

impl Refusal {
    /// Every reason (the metric's label values, zeroed at start).
    pub const ALL: [Refusal; 4] = [
        Refusal::FdReserve,
        Refusal::Handshakes,
        Refusal::Global,
        Refusal::PerPrincipal,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::FdReserve => "fd_reserve",
            Refusal::Handshakes => "handshakes",
            Refusal::Global => "max_connections",
            Refusal::PerPrincipal => "max_per_principal",
        }
    }

    fn count(self) {
        metrics::counter!("caseshare_conn_refused_total", "reason" => self.as_str()).increment(1);
    }
}

/// The limits and the live counts.
#[derive(Debug)]
pub struct ConnLimits {
    cfg: ConnectionsConfig,
    fd_limit: u64,
    handshakes: AtomicUsize,
    established: AtomicUsize,
    /// Sockets this module holds (handshaking or verified).
    sockets: AtomicU64,
    /// Descriptors open that are not those sockets (store files, listeners,
    /// …), sampled by [`ConnLimits::sample_fds`].
    other_fds: AtomicU64,
    per_principal: Arc<Mutex<HashMap<String, usize>>>,
    /// Handshakes in progress, oldest first: when the cap is reached the
    /// oldest is ended to make room, so silent sockets cannot hold every
    /// slot against a client that completes its handshake promptly.
    in_progress: Mutex<std::collections::VecDeque<(u64, Arc<tokio::sync::Notify>)>>,
    next_id: AtomicU64,
    started: Instant,
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the limit now
/// in force (the soft one, if raising failed).
pub fn raise_nofile_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard
                && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            {
                tracing::warn!(error = %e, soft, hard, "could not raise RLIMIT_NOFILE");
                return soft;
            }
            hard.max(soft)
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not read RLIMIT_NOFILE; assuming 1024");
            1024
        }
    }
}

/// Counts this process's open file descriptors (Linux `/proc/self/fd`).
pub fn open_fds() -> Option<u64> {
    std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as u64)
}

impl ConnLimits {
    /// Limits from config, with `fd_limit` descriptors available in all.
    pub fn new(cfg: ConnectionsConfig, fd_limit: u64) -> Self {
        metrics::gauge!("caseshare_fd_limit").set(fd_limit as f64);
        ConnLimits {
            cfg,
            fd_limit,
            handshakes: AtomicUsize::new(0),
            established: AtomicUsize::new(0),
            sockets: AtomicU64::new(0),
            other_fds: AtomicU64::new(0),
            per_principal: Arc::new(Mutex::new(HashMap::new())),
            in_progress: Mutex::new(std::collections::VecDeque::new()),
            next_id: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ConnectionsConfig {
        &self.cfg
    }

    /// Re-counts the descriptors open besides our sockets (blocking: a
    /// directory read; run it on the blocking pool).
    pub fn sample_fds(&self) {
        if let Some(open) = open_fds() {
            let ours = self.sockets.load(Ordering::Relaxed);
            self.other_fds
                .store(open.saturating_sub(ours), Ordering::Relaxed);
            metrics::gauge!("caseshare_open_fds").set(open as f64);
        }
    }

    /// Whether the descriptor just accepted leaves the reserve intact
    /// (`open` counts it).
    fn fds_ok(&self) -> bool {
        let open = self.other_fds.load(Ordering::Relaxed) + self.sockets.load(Ordering::Relaxed);
        open + self.cfg.fd_reserve <= self.fd_limit
    }

    /// Admits a freshly accepted socket to its TLS handshake, or says why
    /// not (the caller closes it at once).
    pub fn admit_handshake(self: &Arc<Self>) -> Result<HandshakeSlot, Refusal> {
        self.sockets.fetch_add(1, Ordering::Relaxed);
        let mut slot = HandshakeSlot {
            limits: Arc::clone(self),
            counted: false,
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            evicted: Arc::new(tokio::sync::Notify::new()),
        };
        let refuse = |r: Refusal| {
            r.count();
            Err(r)
        };
        if !self.fds_ok() {
            return refuse(Refusal::FdReserve);
        }
        if self.established.load(Ordering::Relaxed) >= self.cfg.max_connections {
            return refuse(Refusal::Global);
        }
        let mut queue = self.in_progress.lock().unwrap_or_else(|p| p.into_inner());
        if queue.len() >= self.cfg.max_handshakes {
            // End the oldest handshake in progress; its task closes it.
            if let Some((_, oldest)) = queue.pop_front() {
                oldest.notify_one();
                Refusal::Handshakes.count();
            }
        }
        queue.push_back((slot.id, slot.evicted.clone()));
        self.handshakes.fetch_add(1, Ordering::AcqRel);
        slot.counted = true;
        Ok(slot)
    }

    /// Turns a finished handshake into a verified connection of `principal`.
    pub fn admit_connection(
        self: &Arc<Self>,
        handshake: HandshakeSlot,
        principal: &str,
    ) -> Result<ConnSlot, Refusal> {
        // The socket stays counted; the handshake slot is given up.
        handshake.release_handshake_only();
        let mut conn = ConnSlot {
            limits: Arc::clone(self),
            principal: None,
            counted: false,
        };
        let prev = self.established.fetch_add(1, Ordering::AcqRel);
        conn.counted = true;
        if prev >= self.cfg.max_connections {
            Refusal::Global.count();
            return Err(Refusal::Global);
        }
        let mut map = self.per_principal.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(principal.to_string()).or_insert(0);
        if *n >= self.cfg.max_per_principal {
            if *n == 0 {
                map.remove(principal);
            }
            Refusal::PerPrincipal.count();
            return Err(Refusal::PerPrincipal);
        }
        *n += 1;
        conn.principal = Some(principal.to_string());
        metrics::gauge!("caseshare_connections").set(self.established() as f64);
        Ok(conn)
    }

    /// Verified connections open now.
    pub fn established(&self) -> usize {
        self.established.load(Ordering::Relaxed)
    }

    /// A new activity record for a verified connection.
    pub fn activity(&self) -> Arc<Activity> {
        let a = Activity {
            started: self.started,
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
        };
        a.touch();
        Arc::new(a)
    }
}

/// Holds a socket's place while its handshake runs.
#[derive(Debug)]
pub struct HandshakeSlot {
    limits: Arc<ConnLimits>,
    counted: bool,
    id: u64,
    evicted: Arc<tokio::sync::Notify>,
}

impl HandshakeSlot {
    /// Resolves when this handshake was ended to make room for a newer one.
    pub async fn evicted(&self) {
        self.evicted.notified().await
    }

    fn leave_queue(&mut self) {
        if self.counted {
            self.limits.handshakes.fetch_sub(1, Ordering::AcqRel);
            self.counted = false;
            let mut queue = self
                .limits
                .in_progress
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(i) = queue.iter().position(|(id, _)| *id == self.id) {
                queue.remove(i);
            }
        }
    }

    fn release_handshake_only(mut self) {
        self.leave_queue();
        // The socket goes on to the connection slot: keep it counted.
        self.limits.sockets.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.leave_queue();
        self.limits.sockets.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Holds a verified connection's place; dropped with the connection.
#[derive(Debug)]
pub struct ConnSlot {
    limits: Arc<ConnLimits>,
    principal: Option<String>,
    counted: bool,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if self.counted {
            self.limits.established.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(p) = self.principal.take() {
            let mut map = self
                .limits
                .per_principal
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(n) = map.get_mut(&p) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&p);
                }
            }
        }
        self.limits.sockets.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("caseshare_connections").set(self.limits.established() as f64);
    }
}

/// What a connection has been doing: requests in flight and when the last
/// one started or ended. Keepalive pings are not requests.
#[derive(Debug)]
pub struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// A request started; it is in flight until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.touch();
        RequestGuard(Arc::clone(self))
    }

    /// When the connection becomes idle-closable if nothing happens: `None`
    /// while a request is in flight.
    pub fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.started + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle)
    }
}

/// A request in flight on a connection.
#[derive(Debug)]
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(
        max_conn: usize,
        per: usize,
        hs: usize,
        reserve: u64,
        fd_limit: u64,
    ) -> Arc<ConnLimits> {
        Arc::new(ConnLimits::new(
            ConnectionsConfig {
                max_connections: max_conn,
                max_per_principal: per,
                max_handshakes: hs,
                fd_reserve: reserve,
                ..ConnectionsConfig::default()
            },
            fd_limit,
        ))
    }

    #[tokio::test]
    async fn handshakes_are_capped_at_their_limit_by_ending_the_oldest() {
        let l = limits(10, 10, 2, 0, 1_000);
        let a = l.admit_handshake().unwrap_or_else(|e| panic!("{e:?}"));
        let b = l.admit_handshake().unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(l.handshakes.load(Ordering::Relaxed), 2);
        // One past the cap: the oldest (a) is told to end, b is not.
        let c = l.admit_handshake().unwrap_or_else(|e| panic!("{e:?}"));
        let ended = |s: &HandshakeSlot| futures::FutureExt::now_or_never(s.evicted()).is_some();
        assert!(ended(&a));
        assert!(!ended(&b));
        assert!(!ended(&c));
        drop(a);
        assert_eq!(l.handshakes.load(Ordering::Relaxed), 2);
        drop((b, c));
        assert_eq!(l.handshakes.load(Ordering::Relaxed), 0);
        assert!(l.in_progress.lock().map(|q| q.is_empty()).unwrap_or(false));
    }

    #[test]
    fn connections_are_capped_globally_and_per_principal() {
        let l = limits(3, 2, 10, 0, 1_000);
        let mut held = Vec::new();
        for _ in 0..2 {
            let h = l.admit_handshake().unwrap_or_else(|e| panic!("{e:?}"));
            held.push(
                l.admit_connection(h, "a")
                    .unwrap_or_else(|e| panic!("{e:?}")),
            );
        }
        let h = l.admit_handshake().unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            l.admit_connection(h, "a").err(),
            Some(Refusal::PerPrincipal)
        );
        let h = l.admit_handshake().unwrap_or_else(|e| panic!("{e:?}"));
        held.push(
            l.admit_connection(h, "b")
                .unwrap_or_else(|e| panic!("{e:?}")),
        );
        assert_eq!(l.established(), 3);
        // At the global cap, a new socket is refused before its handshake.
        assert_eq!(l.admit_handshake().err(), Some(Refusal::Global));
        held.pop();
        assert_eq!(l.established(), 2);
        assert!(l.admit_handshake().is_ok());
        assert_eq!(l.sockets.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn the_fd_reserve_is_kept() {
        // 10 descriptors in all, 4 kept in reserve: 6 sockets fit.
        let l = limits(100, 100, 100, 4, 10);
        let held: Vec<_> = (0..6).map(|_| l.admit_handshake()).collect();
        assert!(held.iter().all(|h| h.is_ok()));
        assert_eq!(l.admit_handshake().err(), Some(Refusal::FdReserve));
        drop(held);
        assert_eq!(l.sockets.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn activity_tracks_requests_in_flight() {
        let l = limits(1, 1, 1, 0, 10);
        let a = l.activity();
        let idle = Duration::from_secs(5);
        assert!(a.idle_deadline(idle).is_some());
        let g = a.begin();
        assert!(a.idle_deadline(idle).is_none());
        drop(g);
        let d = a.idle_deadline(idle).unwrap_or_else(Instant::now);
        assert!(d > Instant::now() + Duration::from_secs(4));
    }
}
