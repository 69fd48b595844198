//! The writer's group commit against a real store whose commit can be held:
//! while the commit thread is busy, ops that arrive are applied at once into
//! the open batch and committed together when it is free; with a commit
//! delay, a batch smaller than the last waits for the next op; small
//! batches one after another are committed by the writer itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use caseshare_audit::note::NoteSigner;
use caseshare_core::pb;
use caseshare_core::principal::{Principal, Role};
use caseshare_state::Machine;
use caseshare_store::Storage;

use super::{Op, WriterTask};
use crate::auditlog::AuditLog;
use crate::gated_store::{At, Gated};

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

/// A writer over a fresh gated store.
struct Started {
    _dir: tempfile::TempDir,
    store: Arc<Gated>,
    state: Arc<std::sync::RwLock<caseshare_state::BrokerState>>,
    writer: super::Writer,
    join: std::thread::JoinHandle<()>,
}

/// Starts a writer with this commit delay over a fresh gated store.
fn start(delay: Duration) -> Started {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Gated::open(dir.path()));
    let snapshot = store.load().unwrap();
    let signer = NoteSigner::generate("test.example/log", &mut rand::rngs::OsRng).unwrap();
    let log = AuditLog::open(store.clone(), 0, signer, "test.example/log".into()).unwrap();
    let machine = Machine::from_snapshot(&snapshot, vec![7; 32]);
    let (task, _head) = WriterTask::new(store.clone(), machine, 1_000, log);
    let task = task.with_commit_delay(delay);
    let state = task.shared_state();
    let (writer, join) = task.spawn().unwrap();
    Started {
        _dir: dir,
        store,
        state,
        writer,
        join,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_arriving_during_a_commit_are_applied_at_once_and_committed_together() {
    let w = start(Duration::ZERO);

    // The first op's commit is held at the gate.
    let held = w.store.arm(At::Commit);
    let first = w.writer.submit(register("a")).await.unwrap();
    let held = held
        .entered_async("the first commit reached the store")
        .await;

    // Two ops arrive one after the other while it is held: each is applied
    // at once (not left in the queue behind a sealed batch).
    let second = w.writer.submit(register("b")).await.unwrap();
    applied(&w.state, "b").await;
    let third = w.writer.submit(register("c")).await.unwrap();
    applied(&w.state, "c").await;
    assert_eq!(w.store.commits().len(), 0, "nothing committed yet");

    held.release();
    for (reply, id) in [(first, "a"), (second, "b"), (third, "c")] {
        let agency = reply.await.unwrap().unwrap();
        assert_eq!(agency.agency_id, id);
    }
    assert_eq!(
        w.store.commits(),
        vec![
            vec!["a".to_string()],
            vec!["b".to_string(), "c".to_string()]
        ],
        "the ops that arrived during the first commit share the second"
    );
    drop(w.writer);
    tokio::task::spawn_blocking(move || w.join.join().unwrap())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_commit_delay_a_batch_smaller_than_the_last_waits_for_the_next_op() {
    // A delay far longer than the test: a batch that waits is sealed only
    // by the op it waits for.
    let w = start(Duration::from_secs(300));

    // A first batch of one, then a batch of two (arriving during its
    // commit), as in the test above.
    let held = w.store.arm(At::Commit);
    let a = w.writer.submit(register("a")).await.unwrap();
    let held = held
        .entered_async("the first commit reached the store")
        .await;
    let b = w.writer.submit(register("b")).await.unwrap();
    let c = w.writer.submit(register("c")).await.unwrap();
    applied(&w.state, "c").await;
    held.release();
    for reply in [a, b, c] {
        reply.await.unwrap().unwrap();
    }
    assert_eq!(w.store.commits().len(), 2);

    // One op while the commit thread is free: fewer than the last batch,
    // so it waits for the next instead of committing alone.
    let d = w.writer.submit(register("d")).await.unwrap();
    applied(&w.state, "d").await;
    assert_eq!(w.store.commits().len(), 2, "d is waiting for company");
    let e = w.writer.submit(register("e")).await.unwrap();
    for reply in [d, e] {
        reply.await.unwrap().unwrap();
    }
    assert_eq!(
        w.store.commits()[2],
        vec!["d".to_string(), "e".to_string()],
        "d waited for e and they share a commit"
    );
    drop(w.writer);
    tokio::task::spawn_blocking(move || w.join.join().unwrap())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_batches_one_after_another_are_committed_by_the_writer_itself() {
    let w = start(Duration::ZERO);
    const COMMIT: &str = "caseshare-commit";
    const WRITER: &str = "caseshare-writer";

    // The first batch goes to the commit thread (held there); a large
    // batch (INLINE_OPS + 1 ops, applied meanwhile) goes there too.
    let held = w.store.arm(At::Commit);
    let first = w.writer.submit(register("first")).await.unwrap();
    let held = held
        .entered_async("the first commit reached the store")
        .await;
    let mut large = Vec::new();
    for i in 0..=super::INLINE_OPS {
        let id = format!("large-{i}");
        large.push(w.writer.submit(register(&id)).await.unwrap());
        applied(&w.state, &id).await;
    }
    held.release();
    first.await.unwrap().unwrap();
    for reply in large {
        reply.await.unwrap().unwrap();
    }
    // Then one op at a time: the small batch after the large one goes to
    // the commit thread; the ones after it (small after small, the commit
    // thread free) are committed by the writer itself.
    for id in ["a", "b", "c"] {
        let reply = w.writer.submit(register(id)).await.unwrap();
        assert_eq!(reply.await.unwrap().unwrap().agency_id, id);
    }
    let commits = w.store.commits();
    assert_eq!(commits.len(), 5, "{commits:?}");
    assert_eq!(commits[1].len(), super::INLINE_OPS + 1, "{commits:?}");
    assert_eq!(
        w.store.commit_threads(),
        [COMMIT, COMMIT, COMMIT, WRITER, WRITER]
    );
    drop(w.writer);
    tokio::task::spawn_blocking(move || w.join.join().unwrap())
        .await
        .unwrap();
}
