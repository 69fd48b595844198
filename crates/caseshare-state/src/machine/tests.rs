//! The machine's own tests: the delivery index, reused batches, the
//! delivery lookup over a batch, and time that never goes back.

#![allow(clippy::unwrap_used)]
use super::*;
use crate::refusal::LookupError;

#[test]
fn the_delivery_index_finds_what_a_backward_search_finds() {
    let record = |sub: u64, seq: u64, attempts: u32| DeliveryRecord {
        subscription_id: sub,
        sequence: seq,
        attempts,
        ..Default::default()
    };
    let search = |batch: &Batch, sub: u64, seq: u64| {
        batch
            .deliveries
            .iter()
            .rev()
            .find(|r| r.subscription_id == sub && r.sequence == seq)
            .cloned()
    };
    let machine = Machine::new(BrokerState::default(), Counters::default(), vec![7; 32]);
    let mut draft = machine.begin();
    // Keys repeat: the newest record of each is the one found.
    for (i, (sub, seq)) in [(1, 1), (1, 2), (2, 1), (1, 1), (1, 2), (1, 1)]
        .into_iter()
        .enumerate()
    {
        draft.push_delivery(record(sub, seq, i as u32));
    }
    let keys = [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1)];
    let agrees = |draft: &Draft, when: &str| {
        for (sub, seq) in keys {
            assert_eq!(
                draft.newest_delivery(sub, seq).cloned(),
                search(&draft.batch, sub, seq),
                "{sub}/{seq} {when}"
            );
        }
    };
    agrees(&draft, "indexed");
    assert_eq!(draft.newest_delivery(1, 1).map(|r| r.attempts), Some(5));
    // A record added past the index is still found (by searching).
    draft.batch.deliveries.push(record(1, 2, 99));
    draft.push_delivery(record(2, 2, 100));
    agrees(&draft, "after a direct push");
    assert_eq!(draft.newest_delivery(1, 2).map(|r| r.attempts), Some(99));
    // A seek removes records; pushes after it bring the count back to
    // what was indexed before: positions must not be stale.
    let before = draft.batch.deliveries.len();
    draft.delete_deliveries_from(1, 2);
    while draft.batch.deliveries.len() < before {
        let n = draft.batch.deliveries.len() as u32;
        draft.push_delivery(record(3, 1, 200 + n));
    }
    agrees(&draft, "after a seek");
    assert_eq!(draft.newest_delivery(1, 2), None);
    // The sealed batch answers alike.
    let mut machine = machine;
    let sealed = machine.seal(draft);
    for (sub, seq) in keys {
        assert_eq!(
            sealed.newest_delivery(sub, seq).cloned(),
            search(&sealed.batch, sub, seq)
        );
    }
}

/// A committed batch reused for the next draft: the draft is empty and
/// finds nothing of the old batch, as a fresh one, but keeps the
/// vectors' allocations.
#[test]
fn a_reused_batch_starts_empty_and_keeps_its_allocations() {
    let mut machine = Machine::new(BrokerState::default(), Counters::default(), vec![7; 32]);
    let mut draft = machine.begin();
    for i in 0..100u64 {
        draft.push_event(StoredEvent {
            sequence: i + 1,
            source_agency: "school-b".into(),
            event_id: format!("e-{i}"),
            ..Default::default()
        });
        draft.push_delivery(DeliveryRecord {
            subscription_id: 1,
            sequence: i + 1,
            ..Default::default()
        });
        draft.audit(Micros(5), pb::AuditEntry::default());
    }
    draft.delete_deliveries_from(2, 1);
    draft.batch.next_sequence = Some(101);
    draft.batch.journal_position = Some(9);
    draft.batch.journal_times.push((9, 1));
    let sealed = machine.seal(draft);
    let (events, audit) = (
        sealed.batch.events.capacity(),
        sealed.batch.audit.capacity(),
    );
    let reused = machine.begin_reusing(sealed);
    assert!(reused.batch.is_empty(), "{:?}", reused.batch);
    assert_eq!(reused.batch.audit_first_index, 100);
    assert_eq!(
        format!("{:?}", reused.batch),
        format!("{:?}", machine.begin().batch)
    );
    assert_eq!(reused.event("school-b", "e-5"), None);
    assert_eq!(reused.newest_delivery(1, 5), None);
    assert!(!reused.batch.seek_deletes(2, 1));
    assert_eq!(reused.batch.events.capacity(), events);
    assert_eq!(reused.batch.audit.capacity(), audit);
    assert!(events >= 100 && audit >= 100);
}

/// The overlay answers first (a record, or a deletion), the durable
/// read gets only the rest, in order, once; a short answer is an error.
#[test]
fn newest_over_asks_the_store_once_for_what_the_overlay_does_not_know() {
    let rec = |seq: u64, attempts: u32| DeliveryRecord {
        subscription_id: 1,
        sequence: seq,
        attempts,
        ..Default::default()
    };
    let overlay = |s: u64| match s {
        1 => Some(Some(rec(1, 9))),
        2 => Some(None),
        _ => None,
    };
    let asked = std::cell::RefCell::new(Vec::new());
    let got = newest_over(&[3, 1, 2, 4, 1], overlay, |a| {
        asked.borrow_mut().push(a.to_vec());
        Ok(a.iter().map(|s| (*s == 3).then(|| rec(3, 1))).collect())
    })
    .unwrap();
    assert_eq!(asked.into_inner(), vec![vec![3, 4]]);
    assert_eq!(
        got,
        vec![
            Some(rec(3, 1)),
            Some(rec(1, 9)),
            None,
            None,
            Some(rec(1, 9))
        ]
    );
    let none_asked = newest_over(&[1, 2], overlay, |_| unreachable!("nothing to ask"));
    assert_eq!(none_asked.unwrap(), vec![Some(rec(1, 9)), None]);
    assert!(newest_over(&[3, 4], overlay, |_| Ok(vec![None])).is_err());
}

struct Nothing;

impl Lookup for Nothing {
    fn event_by_id(&self, _: &str, _: &str) -> Result<Option<StoredEvent>, LookupError> {
        Ok(None)
    }
    fn deliveries_of(&self, _: &[u64], _: u64) -> Result<Vec<DeliveryRecord>, LookupError> {
        Ok(Vec::new())
    }
}

fn recorded(sealed: &Sealed) -> Vec<i64> {
    sealed
        .batch
        .audit
        .iter()
        .map(|leaf| {
            let e = pb::AuditEntry::decode(leaf.as_slice()).unwrap();
            Micros::from_timestamp(&e.recorded_at.unwrap()).0
        })
        .collect()
}

/// Commands stamped by clocks that disagree (a change of proposer in
/// cluster mode): the audit log's times never go back, in a draft,
/// across drafts, and after a restart that read the last entry's time.
#[test]
fn time_never_goes_back_by_table() {
    const S: i64 = 1_000_000;
    // (the drafts, each the times its commands carry; the times the
    // audit entries get)
    let cases: [(&[&[i64]], &[i64]); 5] = [
        (&[&[10 * S, 11 * S, 12 * S]], &[10 * S, 11 * S, 12 * S]),
        (&[&[30 * S, 10 * S, 31 * S]], &[30 * S, 30 * S, 31 * S]),
        (
            &[&[30 * S], &[10 * S], &[29 * S, 32 * S]],
            &[30 * S, 30 * S, 30 * S, 32 * S],
        ),
        (&[&[5 * S], &[4 * S, 6 * S]], &[5 * S, 5 * S, 6 * S]),
        (&[&[-S], &[-2 * S]], &[-S, -S]),
    ];
    for (drafts, want) in cases {
        let mut m = Machine::new(BrokerState::default(), Counters::default(), vec![]);
        let mut m_floor = Micros(i64::MIN);
        m.set_time_floor(m_floor);
        let mut got = Vec::new();
        for times in drafts {
            let mut d = m.begin();
            for &t in *times {
                let entry = pb::AuditEntry {
                    kind: pb::EntryKind::AuditAccessed as i32,
                    ..Default::default()
                };
                m.apply(&mut d, Micros(t), Command::Record { entry }, &Nothing)
                    .unwrap();
            }
            let sealed = m.seal(d);
            got.extend(recorded(&sealed));
            // A restart: a new machine told the last entry's time.
            m_floor = m.time_floor();
            let counters = m.counters();
            m = Machine::new(BrokerState::default(), counters, vec![]);
            m.set_time_floor(m_floor);
        }
        assert_eq!(got, want, "drafts {drafts:?}");
        assert_eq!(m_floor.0, *want.last().unwrap());
    }
}

/// A draft dropped unsealed (a failed commit) leaves the floor where
/// the last commit put it.
#[test]
fn an_unsealed_draft_does_not_move_the_floor() {
    let mut m = Machine::new(BrokerState::default(), Counters::default(), vec![]);
    m.set_time_floor(Micros(5));
    let mut d = m.begin();
    let entry = pb::AuditEntry::default();
    m.apply(&mut d, Micros(9), Command::Record { entry }, &Nothing)
        .unwrap();
    drop(d);
    assert_eq!(m.time_floor(), Micros(5));
}
