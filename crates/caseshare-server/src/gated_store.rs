//! Unit-test support: a real sled store whose chosen operation can be held.
//!
//! Armed at one point (a commit, an event read, a tile read), the next call
//! there says so and waits until let go. Tests use it to show what goes on,
//! or must not wait, while the broker is inside the store. It also records
//! the agencies of every commit, so that a test can tell which ops shared
//! one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Mutex;
use std::sync::mpsc;
use std::time::Duration;

use caseshare_store::{
    Batch, CommitStats, DeliveryRecord, SledStore, Snapshot, Storage, StoreError, StoredEvent,
};

/// Where a store call can be held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum At {
    /// `commit`.
    Commit,
    /// `event` and `events_from`.
    EventRead,
    /// `tile`.
    Tile,
}

/// A held call: it has entered once [`Held::entered`] returns, and goes on
/// after [`Held::release`].
pub(crate) struct Held {
    entered: mpsc::Receiver<()>,
    go: mpsc::Sender<()>,
}

impl Held {
    /// Waits (at most 30 s) until the held call has entered the store;
    /// false if it did not.
    pub(crate) fn entered(&self) -> bool {
        self.entered.recv_timeout(Duration::from_secs(30)).is_ok()
    }

    /// [`Held::entered`] from async code (on the blocking pool); panics
    /// with `what` if the call did not enter.
    pub(crate) async fn entered_async(self, what: &str) -> Self {
        let (held, entered) = tokio::task::spawn_blocking(move || {
            let entered = self.entered();
            (self, entered)
        })
        .await
        .unwrap();
        assert!(entered, "{what}");
        held
    }

    /// Lets the held call go on.
    pub(crate) fn release(self) {
        let _ = self.go.send(());
    }
}

type Armed = (At, mpsc::Sender<()>, mpsc::Receiver<()>);

/// A real store, holdable at one point.
pub(crate) struct Gated {
    inner: SledStore,
    armed: Mutex<Option<Armed>>,
    commits: Mutex<Vec<Vec<String>>>,
    threads: Mutex<Vec<String>>,
}

impl Gated {
    /// A store in `dir` with an 8 MiB cache.
    pub(crate) fn open(dir: &std::path::Path) -> Self {
        Gated {
            inner: SledStore::open(dir, 8 << 20).unwrap(),
            armed: Mutex::new(None),
            commits: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
        }
    }

    /// Holds the next call at `at`.
    pub(crate) fn arm(&self, at: At) -> Held {
        let (entered_tx, entered) = mpsc::channel();
        let (go, go_rx) = mpsc::channel();
        *self.armed.lock().unwrap() = Some((at, entered_tx, go_rx));
        Held { entered, go }
    }

    /// The agencies of each commit so far, in order.
    pub(crate) fn commits(&self) -> Vec<Vec<String>> {
        self.commits.lock().unwrap().clone()
    }

    /// The thread that made each commit so far, in order.
    pub(crate) fn commit_threads(&self) -> Vec<String> {
        self.threads.lock().unwrap().clone()
    }

    fn hold(&self, here: At) {
        let armed = {
            let mut slot = self.armed.lock().unwrap();
            match slot.take() {
                Some((at, entered, go)) if at == here => Some((entered, go)),
                other => {
                    *slot = other;
                    None
                }
            }
        };
        if let Some((entered, go)) = armed {
            let _ = entered.send(());
            let _ = go.recv();
        }
    }
}

impl Storage for Gated {
    fn commit(&self, batch: &Batch) -> Result<CommitStats, StoreError> {
        self.hold(At::Commit);
        let agencies = batch.agencies.iter().map(|a| a.agency_id.clone());
        self.commits.lock().unwrap().push(agencies.collect());
        let thread = std::thread::current().name().unwrap_or("").to_string();
        self.threads.lock().unwrap().push(thread);
        self.inner.commit(batch)
    }
    fn load(&self) -> Result<Snapshot, StoreError> {
        self.inner.load()
    }
    fn event(&self, sequence: u64) -> Result<Option<StoredEvent>, StoreError> {
        self.hold(At::EventRead);
        self.inner.event(sequence)
    }
    fn events_from(&self, from: u64, max: usize) -> Result<Vec<StoredEvent>, StoreError> {
        self.hold(At::EventRead);
        self.inner.events_from(from, max)
    }
    fn sequence_of(&self, agency_id: &str, event_id: &str) -> Result<Option<u64>, StoreError> {
        self.inner.sequence_of(agency_id, event_id)
    }
    fn deliveries_from(&self, id: u64, from: u64) -> Result<Vec<DeliveryRecord>, StoreError> {
        self.inner.deliveries_from(id, from)
    }
    fn deliveries_of(&self, ids: &[u64], sequence: u64) -> Result<Vec<DeliveryRecord>, StoreError> {
        self.inner.deliveries_of(ids, sequence)
    }
    fn newest_deliveries(
        &self,
        id: u64,
        sequences: &[u64],
    ) -> Result<Vec<Option<DeliveryRecord>>, StoreError> {
        self.inner.newest_deliveries(id, sequences)
    }
    fn audit_entries(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        self.inner.audit_entries(start, end)
    }
    fn tile(&self, level: u8, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.hold(At::Tile);
        self.inner.tile(level, index)
    }
}
