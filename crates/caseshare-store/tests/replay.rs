//! The property cluster mode stands on: a recorded sequence of operations
//! applied to a fresh state twice, and the state rebuilt from the store
//! those operations were committed to, end byte-identical (state digest),
//! with byte-identical audit logs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use caseshare_state::testing::{KEY, fresh_machine, scenario};
use caseshare_state::{DeliveryRecord, Lookup, LookupError, Machine, StoredEvent};
use caseshare_store::{SledStore, Storage};

/// The store as the state machine's lookup (the server adds the batch in
/// commit; here every batch is committed before the next is applied).
struct Committed<'a>(&'a dyn Storage);

impl Lookup for Committed<'_> {
    fn event_by_id(
        &self,
        agency: &str,
        event_id: &str,
    ) -> Result<Option<StoredEvent>, LookupError> {
        self.0
            .event_by_id(agency, event_id)
            .map_err(|e| LookupError(Box::new(e)))
    }
    fn deliveries_of(&self, subs: &[u64], seq: u64) -> Result<Vec<DeliveryRecord>, LookupError> {
        self.0
            .deliveries_of(subs, seq)
            .map_err(|e| LookupError(Box::new(e)))
    }
}

/// Applies the scenario, `chunk` commands per commit, to a fresh machine
/// over the store in `dir`. Returns the machine's digest, every reply and
/// the audit leaves written.
fn run_on_disk(dir: &std::path::Path, chunk: usize) -> ([u8; 32], Vec<String>, Vec<Vec<u8>>) {
    let store = SledStore::open(dir, 8 << 20).unwrap();
    let mut m = fresh_machine();
    let mut replies = Vec::new();
    let mut leaves = Vec::new();
    for ops in scenario().chunks(chunk) {
        let mut draft = m.begin();
        for (now, c) in ops.iter().cloned() {
            replies.push(format!(
                "{:?}",
                m.apply(&mut draft, now, c, &Committed(&store))
            ));
        }
        let sealed = m.seal(draft);
        leaves.extend(sealed.batch.audit.clone());
        store.commit(&sealed.batch).unwrap();
    }
    (m.digest(), replies, leaves)
}

#[test]
fn replayed_twice_and_rebuilt_from_disk_the_state_is_the_same() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (digest_a, replies_a, leaves_a) = run_on_disk(&a.path().join("store"), 3);
    let (digest_b, replies_b, leaves_b) = run_on_disk(&b.path().join("store"), 5);
    assert_eq!(digest_a, digest_b, "two replays differ");
    assert_eq!(replies_a, replies_b);
    assert_eq!(leaves_a, leaves_b);

    // Rebuilt from what the store holds after a reopen.
    let store = SledStore::open(&a.path().join("store"), 8 << 20).unwrap();
    let snapshot = store.load().unwrap();
    let rebuilt = Machine::from_snapshot(&snapshot, KEY.to_vec());
    assert_eq!(
        rebuilt.digest(),
        digest_a,
        "the state rebuilt from disk differs"
    );
    assert_eq!(
        store.audit_entries(0, leaves_a.len() as u64).unwrap(),
        leaves_a,
        "the stored audit log differs from what the machine wrote"
    );
}

#[test]
fn a_different_operation_gives_a_different_digest() {
    // The digest is not constant: one operation fewer changes it.
    let mut full = fresh_machine();
    let mut short = fresh_machine();
    let ops = scenario();
    let store = caseshare_state::testing::MemLookup::default();
    for (i, (now, c)) in ops.into_iter().enumerate() {
        let mut d = full.begin();
        let _ = full.apply(&mut d, now, c.clone(), &store);
        full.seal(d);
        if i < 4 {
            let mut d = short.begin();
            let _ = short.apply(&mut d, now, c, &store);
            short.seal(d);
        }
    }
    assert_ne!(full.digest(), short.digest());
}
