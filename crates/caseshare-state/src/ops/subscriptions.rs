//! Subscription operations: create (within the agency's quota), delete,
//! seek (move the cursor) and replay dead letters.

use caseshare_core::pb;
use caseshare_core::principal::Principal;

use crate::command::SubscriptionRef;
use crate::machine::{Machine, Step};
use crate::records::{DeliveryRecord, DeliveryState, SubscriptionRecord};
use crate::refusal::Refusal;

impl Machine {
    pub(crate) fn create_subscription(
        &mut self,
        step: &mut Step<'_>,
        actor: &Principal,
        mut subscription: pb::Subscription,
        quota: usize,
    ) -> Result<SubscriptionRecord, Refusal> {
        let agency = actor.name.clone();
        {
            let state = self.read();
            if !state.agencies.contains_key(&agency) {
                return Err(Refusal::FailedPrecondition(format!(
                    "agency {agency:?} is not registered"
                )));
            }
            if state.subscription(&agency, &subscription.name).is_some() {
                return Err(Refusal::AlreadyExists(format!(
                    "subscription {:?} already exists",
                    subscription.name
                )));
            }
            let held = state
                .subscription_ids
                .keys()
                .filter(|(a, _)| *a == agency)
                .count();
            if held >= quota {
                return Err(Refusal::ResourceExhausted(format!(
                    "agency {agency:?} holds {held} subscriptions, the most allowed \
                     (limits.max_subscriptions_per_agency); delete one first"
                )));
            }
        }
        subscription.agency_id = agency;
        subscription.created_at = Some(step.now.to_timestamp());
        subscription.start_sequence = self.peek_sequence();
        let record = SubscriptionRecord {
            id: self.take_subscription_id(),
            subscription: Some(subscription.clone()),
        };
        step.audit(pb::AuditEntry {
            kind: pb::EntryKind::SubscriptionChanged as i32,
            actor: actor.spiffe_id(),
            recipient_agency: subscription.agency_id.clone(),
            subscription: subscription.name.clone(),
            reason: "created".into(),
            ..Default::default()
        });
        step.draft.batch.subscriptions.push(record.clone());
        step.draft
            .batch
            .floors
            .push((record.id, subscription.start_sequence));
        self.write().put_subscription(record.clone());
        Ok(record)
    }

    pub(crate) fn delete_subscription(
        &mut self,
        step: &mut Step<'_>,
        actor: &Principal,
        name: &str,
    ) -> Result<SubscriptionRecord, Refusal> {
        let record = self
            .read()
            .subscription(&actor.name, name)
            .cloned()
            .ok_or_else(|| Refusal::NotFound(format!("no subscription {name:?}")))?;
        step.audit(pb::AuditEntry {
            kind: pb::EntryKind::SubscriptionChanged as i32,
            actor: actor.spiffe_id(),
            recipient_agency: actor.name.clone(),
            subscription: name.to_string(),
            reason: "deleted".into(),
            ..Default::default()
        });
        step.draft.batch.deleted_subscriptions.push(record.id);
        self.write().remove_subscription(record.id);
        Ok(record)
    }

    pub(crate) fn seek(
        &mut self,
        step: &mut Step<'_>,
        actor: &Principal,
        subscription: &SubscriptionRef,
        target: u64,
    ) {
        // The store deletes a batch's records before it writes the batch's
        // own: records this batch wrote before the seek (an inline ack just
        // ahead of it) go too, so that the batch means what its ops did in
        // order.
        step.draft.delete_deliveries_from(subscription.id, target);
        step.draft.batch.floors.push((subscription.id, target));
        step.audit(pb::AuditEntry {
            kind: pb::EntryKind::SubscriptionChanged as i32,
            actor: actor.spiffe_id(),
            recipient_agency: actor.name.clone(),
            subscription: subscription.name.clone(),
            sequence: target,
            reason: format!("seek to sequence {target}"),
            ..Default::default()
        });
    }

    pub(crate) fn replay(
        &mut self,
        step: &mut Step<'_>,
        actor: &Principal,
        subscription: &SubscriptionRef,
        sequences: &[u64],
        floor: Option<u64>,
    ) {
        for seq in sequences {
            step.draft.push_delivery(DeliveryRecord {
                subscription_id: subscription.id,
                sequence: *seq,
                state: DeliveryState::Delivered as i32,
                attempts: 0,
                ..Default::default()
            });
        }
        if let Some(f) = floor {
            step.draft.batch.floors.push((subscription.id, f));
        }
        step.audit(pb::AuditEntry {
            kind: pb::EntryKind::SubscriptionChanged as i32,
            actor: actor.spiffe_id(),
            recipient_agency: actor.name.clone(),
            subscription: subscription.name.clone(),
            reason: format!("replayed {} dead letters", sequences.len()),
            ..Default::default()
        });
    }
}
