//! One group commit's worth of writes. The server's writer fills a batch
//! from many concurrent requests and commits it once; the backend maps each
//! field to its own records.

use caseshare_proto::v1 as pb;

use crate::records::{DeliveryRecord, StoredEvent, SubscriptionRecord};

/// Writes to apply atomically.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    /// New events.
    pub events: Vec<StoredEvent>,
    /// Audit entries, encoded, with consecutive indexes from `audit_first_index`.
    pub audit: Vec<Vec<u8>>,
    /// The index of `audit[0]`.
    pub audit_first_index: u64,
    /// Merkle tiles that changed: (level, index, concatenated hashes).
    pub tiles: Vec<(u8, u64, Vec<u8>)>,
    /// Agencies registered.
    pub agencies: Vec<pb::Agency>,
    /// Agreements put or ended.
    pub agreements: Vec<pb::Agreement>,
    /// Consents recorded or withdrawn.
    pub consents: Vec<pb::ConsentRecord>,
    /// Subscriptions created.
    pub subscriptions: Vec<SubscriptionRecord>,
    /// Subscriptions deleted, by id.
    pub deleted_subscriptions: Vec<u64>,
    /// Deleted subscriptions whose delivery records are still being removed
    /// (a bounded number per commit, see the backend).
    pub purge_deliveries: Vec<u64>,
    /// Delivery records written.
    pub deliveries: Vec<DeliveryRecord>,
    /// Delivery records to delete: (subscription id, from sequence) — every
    /// record of that subscription at or after the sequence (a seek).
    pub deleted_deliveries_from: Vec<(u64, u64)>,
    /// Events retracted or superseded by a correction: (sequence, reason).
    pub retracted: Vec<(u64, String)>,
    /// Events deleted at the end of their retention: (sequence, agency, event id).
    pub deleted_events: Vec<(u64, String, String)>,
    /// New floors: (subscription id, lowest unsettled sequence).
    pub floors: Vec<(u64, u64)>,
    /// The next event sequence, when it changed.
    pub next_sequence: Option<u64>,
    /// The next subscription id, when it changed.
    pub next_subscription_id: Option<u64>,
    /// Cluster mode: the sequence of the journal message this batch applies
    /// (stored with it, so a restarted replica resumes after it). `None`
    /// for the embedded store.
    pub journal_position: Option<u64>,
    /// Cluster mode: the stored times (µs) of the journal messages this
    /// batch applies, kept for the stale-proposal rule (stored with the
    /// batch, so a restarted or copied replica decides as the others do).
    pub journal_times: Vec<(u64, i64)>,
    /// Cluster mode: every kept journal time at or below this sequence is
    /// dropped (older than the rule can need: see the applier).
    pub journal_times_dropped_through: Option<u64>,
}

impl Batch {
    /// Empties the batch for reuse: every field as in `Batch::default()`,
    /// except that the vectors that grow with the batch (events, audit
    /// entries, delivery records) keep what they have allocated, so a
    /// writer that reuses its last committed batch does not free and grow
    /// them again at every commit.
    pub fn clear(&mut self) {
        fn emptied<T>(v: &mut Vec<T>) -> Vec<T> {
            let mut v = std::mem::take(v);
            v.clear();
            v
        }
        *self = Batch {
            events: emptied(&mut self.events),
            audit: emptied(&mut self.audit),
            deliveries: emptied(&mut self.deliveries),
            ..Batch::default()
        };
    }

    /// Whether a seek in this batch deletes the records of
    /// (`subscription_id`, `sequence`) written before it.
    pub fn seek_deletes(&self, subscription_id: u64, sequence: u64) -> bool {
        self.deleted_deliveries_from
            .iter()
            .any(|(s, from)| *s == subscription_id && sequence >= *from)
    }

    /// True if there is nothing to write. Every field is named (the
    /// destructuring has no `..`), so a field added to `Batch` does not
    /// compile until it is handled here.
    pub fn is_empty(&self) -> bool {
        let Batch {
            events,
            audit,
            // Only says where `audit` starts: nothing to write by itself.
            audit_first_index: _,
            tiles,
            agencies,
            agreements,
            consents,
            subscriptions,
            deleted_subscriptions,
            purge_deliveries,
            deliveries,
            deleted_deliveries_from,
            retracted,
            deleted_events,
            floors,
            next_sequence,
            next_subscription_id,
            journal_position,
            journal_times,
            journal_times_dropped_through,
        } = self;
        events.is_empty()
            && audit.is_empty()
            && tiles.is_empty()
            && agencies.is_empty()
            && agreements.is_empty()
            && consents.is_empty()
            && subscriptions.is_empty()
            && deleted_subscriptions.is_empty()
            && purge_deliveries.is_empty()
            && deliveries.is_empty()
            && deleted_deliveries_from.is_empty()
            && retracted.is_empty()
            && deleted_events.is_empty()
            && floors.is_empty()
            && next_sequence.is_none()
            && next_subscription_id.is_none()
            && journal_position.is_none()
            && journal_times.is_empty()
            && journal_times_dropped_through.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One batch per field that carries a write, each with only that field
    /// set: every one of them is not empty.
    #[test]
    fn any_one_write_makes_a_batch_non_empty() {
        let d = Batch::default;
        let cases: Vec<(&str, Batch)> = vec![
            (
                "events",
                Batch {
                    events: vec![StoredEvent::default()],
                    ..d()
                },
            ),
            (
                "audit",
                Batch {
                    audit: vec![vec![1]],
                    ..d()
                },
            ),
            (
                "tiles",
                Batch {
                    tiles: vec![(0, 0, vec![])],
                    ..d()
                },
            ),
            (
                "agencies",
                Batch {
                    agencies: vec![pb::Agency::default()],
                    ..d()
                },
            ),
            (
                "agreements",
                Batch {
                    agreements: vec![pb::Agreement::default()],
                    ..d()
                },
            ),
            (
                "consents",
                Batch {
                    consents: vec![pb::ConsentRecord::default()],
                    ..d()
                },
            ),
            (
                "subscriptions",
                Batch {
                    subscriptions: vec![SubscriptionRecord::default()],
                    ..d()
                },
            ),
            (
                "deleted_subscriptions",
                Batch {
                    deleted_subscriptions: vec![1],
                    ..d()
                },
            ),
            (
                "purge_deliveries",
                Batch {
                    purge_deliveries: vec![1],
                    ..d()
                },
            ),
            (
                "deliveries",
                Batch {
                    deliveries: vec![DeliveryRecord::default()],
                    ..d()
                },
            ),
            (
                "deleted_deliveries_from",
                Batch {
                    deleted_deliveries_from: vec![(1, 1)],
                    ..d()
                },
            ),
            (
                "retracted",
                Batch {
                    retracted: vec![(1, String::new())],
                    ..d()
                },
            ),
            (
                "deleted_events",
                Batch {
                    deleted_events: vec![(1, String::new(), String::new())],
                    ..d()
                },
            ),
            (
                "floors",
                Batch {
                    floors: vec![(1, 1)],
                    ..d()
                },
            ),
            (
                "next_sequence",
                Batch {
                    next_sequence: Some(1),
                    ..d()
                },
            ),
            (
                "next_subscription_id",
                Batch {
                    next_subscription_id: Some(1),
                    ..d()
                },
            ),
            (
                "journal_times",
                Batch {
                    journal_times: vec![(1, 1)],
                    ..d()
                },
            ),
            (
                "journal_times_dropped_through",
                Batch {
                    journal_times_dropped_through: Some(1),
                    ..d()
                },
            ),
            (
                "journal_position",
                Batch {
                    journal_position: Some(1),
                    ..d()
                },
            ),
        ];
        assert_eq!(cases.len(), 19);
        for (field, batch) in cases {
            assert!(
                !batch.is_empty(),
                "a batch with only `{field}` set is empty"
            );
        }
        assert!(d().is_empty());
        assert!(
            Batch {
                audit_first_index: 7,
                ..d()
            }
            .is_empty()
        );
    }
}
