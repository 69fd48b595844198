//! The writer's group commit against a real store whose commits can be held:
//! while the commit thread is busy, ops that arrive are applied at once into
//! the open batch and committed together when it is free.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use caseshare_audit::note::NoteSigner;
use caseshare_core::pb;
use caseshare_core::principal::{Principal, Role};
use caseshare_state::{Batch, DeliveryRecord, Machine, Snapshot, StoredEvent};
use caseshare_store::{CommitStats, SledStore, Storage, StoreError};

use super::{Op, WriterTask};
use crate::auditlog::AuditLog;

/// A real store whose next commit waits until let go, once armed; it
/// records the agencies of every commit.
struct CommitGated {
    inner: SledStore,
    gate: Mutex<Option<(std_mpsc::Sender<()>, std_mpsc::Receiver<()>)>>,
    commits: Mutex<Vec<Vec<String>>>,
}

impl Storage for CommitGated {
    fn commit(&self, batch: &Batch) -> Result<CommitStats, StoreError> {
        let gate = self.gate.lock().unwrap().take();
        if let Some((entered, go)) = gate {
            entered.send(()).unwrap();
            go.recv().unwrap();
        }
        let agencies = batch.agencies.iter().map(|a| a.agency_id.clone());
        self.commits.lock().unwrap().push(agencies.collect());
        self.inner.commit(batch)
    }
    fn load(&self) -> Result<Snapshot, StoreError> {
        self.inner.load()
    }
    fn event(&self, sequence: u64) -> Result<Option<StoredEvent>, StoreError> {
        self.inner.event(sequence)
    }
    fn events_from(&self, from: u64, max: usize) -> Result<Vec<StoredEvent>, StoreError> {
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
    fn audit_entries(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        self.inner.audit_entries(start, end)
    }
    fn tile(&self, level: u8, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.tile(level, index)
    }
}

fn register(id: &str) -> impl FnOnce(super::ReplyTx<pb::Agency>) -> Op {
    let actor = Arc::new(Principal {
        role: Role::Admin,
        name: "ops".into(),
        trust_domain: "caseshare.local".into(),
    });
    let request = pb::RegisterAgencyRequest {
        agency_id: id.into(),
        kind: pb::AgencyKind::Education as i32,
        display_name: id.into(),
    };
    move |reply| Op::RegisterAgency {
        actor,
        request,
        reply,
    }
}

/// Waits (bounded) until the writer has applied agency `id` to its state.
async fn applied(state: &std::sync::RwLock<caseshare_state::BrokerState>, id: &str) {
    let seen = tokio::time::timeout(Duration::from_secs(20), async {
        while !state.read().unwrap().agencies.contains_key(id) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(
        seen.is_ok(),
        "agency {id} was not applied while the previous batch was in commit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_arriving_during_a_commit_are_applied_at_once_and_committed_together() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(CommitGated {
        inner: SledStore::open(dir.path(), 8 << 20).unwrap(),
        gate: Mutex::new(None),
        commits: Mutex::new(Vec::new()),
    });
    let snapshot = store.load().unwrap();
    let signer = NoteSigner::generate("test.example/log", &mut rand::rngs::OsRng).unwrap();
    let log = AuditLog::open(store.clone(), 0, signer, "test.example/log".into()).unwrap();
    let machine = Machine::from_snapshot(&snapshot, vec![7; 32]);
    let (task, _head) = WriterTask::new(store.clone(), machine, 1_000, log);
    let state = task.shared_state();
    let (writer, join) = task.spawn().unwrap();

    // The first op's commit is held at the gate.
    let (entered_tx, entered) = std_mpsc::channel();
    let (go, go_rx) = std_mpsc::channel();
    *store.gate.lock().unwrap() = Some((entered_tx, go_rx));
    let first = writer.submit(register("a")).await.unwrap();
    tokio::task::spawn_blocking(move || entered.recv_timeout(Duration::from_secs(20)))
        .await
        .unwrap()
        .expect("the first commit reached the store");

    // Two ops arrive one after the other while it is held: each is applied
    // at once (not left in the queue behind a sealed batch).
    let second = writer.submit(register("b")).await.unwrap();
    applied(&state, "b").await;
    let third = writer.submit(register("c")).await.unwrap();
    applied(&state, "c").await;
    assert_eq!(
        store.commits.lock().unwrap().len(),
        0,
        "nothing committed yet"
    );

    go.send(()).unwrap();
    for (reply, id) in [(first, "a"), (second, "b"), (third, "c")] {
        let agency = reply.await.unwrap().unwrap();
        assert_eq!(agency.agency_id, id);
    }
    let commits = store.commits.lock().unwrap().clone();
    assert_eq!(
        commits,
        vec![
            vec!["a".to_string()],
            vec!["b".to_string(), "c".to_string()]
        ],
        "the ops that arrived during the first commit share the second"
    );
    drop(writer);
    tokio::task::spawn_blocking(move || join.join().unwrap())
        .await
        .unwrap();
}
