//! The soak's checks (1)–(5) of the module docs of `main.rs`, over the
//! client records and the audit log read back in chunks as the auditor.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use caseshare_proto::v1 as pb;
use caseshare_testkit::Broker;
use tokio::time::timeout;

use super::publisher::{PubLog, PubResponse};
use super::subscriber::{AckKind, Received, SubLog};
use super::{CALL, MARKER_ID, NHS, SCHOOL, SOCIAL, SUBSCRIPTION};

/// Every audit entry, in chunks (GetEntries serves at most 10,000 per call).
pub(crate) async fn read_audit(b: &Broker) -> Vec<pb::AuditEntry> {
    let size = tokio::task::block_in_place(|| b.metric("caseshare_audit_size")) as u64;
    let mut auditor = b.client("auditor");
    let mut out = Vec::with_capacity(usize::try_from(size).unwrap());
    let mut start = 0;
    while start < size {
        let end = (start + 5_000).min(size);
        let mut stream = timeout(
            CALL,
            auditor
                .audit
                .get_entries(pb::GetEntriesRequest { start, end }),
        )
        .await
        .expect("GetEntries answers")
        .expect("GetEntries succeeds")
        .into_inner();
        let mut got = 0;
        while let Some(leaf) = timeout(CALL, stream.message())
            .await
            .expect("an audit leaf in time")
            .expect("an audit leaf, not an error")
        {
            let entry = caseshare_audit::entry::decode(&leaf.leaf).expect("a decodable leaf");
            assert_eq!(entry.index, leaf.index, "leaf index and entry index agree");
            out.push(entry);
            got += 1;
        }
        assert_eq!(got, end - start, "GetEntries returned the whole range");
        start = end;
    }
    out
}

/// Failed checks, by the check that failed.
#[derive(Debug, Default)]
pub(crate) struct Violations {
    pub counts: BTreeMap<&'static str, usize>,
    pub first: BTreeMap<&'static str, String>,
    pub messages: Vec<String>,
}

impl Violations {
    pub(crate) fn add(&mut self, check: &'static str, message: String) {
        *self.counts.entry(check).or_default() += 1;
        let message = format!("[{check}] {message}");
        self.first.entry(check).or_insert_with(|| message.clone());
        self.messages.push(message);
    }

    pub(crate) fn add_all(&mut self, check: &'static str, messages: &[String]) {
        for m in messages {
            self.add(check, m.clone());
        }
    }
}

/// What one soak run left to check.
pub(crate) struct Run<'a> {
    /// Distinct events published.
    pub n: usize,
    pub events: &'a [pb::CaseEvent],
    pub publog: &'a PubLog,
    /// The first answer per event (index into `events`).
    pub first: BTreeMap<usize, &'a PubResponse>,
    /// Event index by the sequence it was first answered with.
    pub by_seq: HashMap<u64, usize>,
    pub social: &'a SubLog,
    pub nhs: &'a SubLog,
    pub marker: &'a pb::PublishResponse,
    pub audit: &'a [pb::AuditEntry],
}

/// Counts for the summary.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub duplicates: usize,
    pub repeats: usize,
    pub redeliveries: usize,
    pub redelivered_after_inline_ack: usize,
    /// Distinct sequences la-social-care-c received.
    pub social_sequences: usize,
}

/// Runs every check; violations go to `violations`.
pub(crate) fn check_all(run: &Run, violations: &mut Violations) -> Tally {
    let (duplicates, repeats) = responses(run, violations);
    let social_by_seq = reached_social_care(run, violations);
    withheld_not_delivered(run, violations);
    let (redeliveries, redelivered_after_inline_ack) = redelivery(run, &social_by_seq, violations);
    audit_log(run, violations);
    Tally {
        duplicates,
        repeats,
        redeliveries,
        redelivered_after_inline_ack,
        social_sequences: social_by_seq.len(),
    }
}

/// (5) publish responses: `(duplicates, deliberate repeats)`.
fn responses(run: &Run, violations: &mut Violations) -> (usize, usize) {
    let (n, events, publog, first, by_seq) =
        (run.n, run.events, run.publog, &run.first, &run.by_seq);
    if by_seq.len() != first.len() {
        violations.add(
            "(5) distinct sequences",
            format!(
                "{} distinct events were answered with only {} distinct sequences",
                first.len(),
                by_seq.len()
            ),
        );
    }
    if first.len() != n {
        violations.add(
            "(5) all answered",
            format!("{} of {n} events were answered", first.len()),
        );
    }
    let mut originals: HashMap<usize, usize> = HashMap::new();
    let mut duplicates = 0usize;
    let mut repeats = 0usize;
    for r in &publog.responses {
        let f = first[&r.event];
        let id = &events[r.event].event_id;
        if r.sequence != f.sequence || r.audit_index != f.audit_index {
            violations.add(
                "(5) same sequence per event id",
                format!(
                    "{id}: answered with sequence {} / audit index {} (gen {}), first with {} / {} \
                 (gen {}) (duplicate = {})",
                    r.sequence,
                    r.audit_index,
                    r.generation,
                    f.sequence,
                    f.audit_index,
                    f.generation,
                    r.duplicate
                ),
            );
        }
        if r.duplicate {
            duplicates += 1;
            if r.sends < 2 {
                violations.add(
                    "(5) duplicate only if re-sent",
                    format!("{id}: duplicate = true although it had been sent once"),
                );
            }
        } else {
            *originals.entry(r.event).or_default() += 1;
        }
        if r.repeat {
            repeats += 1;
            if !r.duplicate {
                violations.add(
                    "(5) re-send of answered event is duplicate",
                    format!(
                        "{id}: a re-send of an answered event came back duplicate = false \
                     (sequence {}, gen {})",
                        r.sequence, r.generation
                    ),
                );
            }
        }
        let social_d = r.decisions.iter().find(|d| d.agency_id == SOCIAL);
        let nhs_d = r.decisions.iter().find(|d| d.agency_id == NHS);
        let ok = r.decisions.len() == 2
            && social_d.is_some_and(|d| d.decision == pb::Decision::Shared as i32)
            && nhs_d.is_some_and(|d| {
                d.decision == pb::Decision::Withheld as i32 && d.reason == "no_agreement"
            });
        if !ok {
            violations.add(
                "(1) publish decisions",
                format!("{id}: unexpected decisions {:?}", r.decisions),
            );
        }
    }
    for (e, count) in &originals {
        if *count > 1 {
            violations.add(
                "(5) one original answer",
                format!(
                    "{}: {count} answers with duplicate = false",
                    events[*e].event_id
                ),
            );
        }
    }
    (duplicates, repeats)
}

/// (1) every acknowledged publish reached la-social-care-c; its
/// deliveries by sequence.
fn reached_social_care<'a>(
    run: &Run<'a>,
    violations: &mut Violations,
) -> BTreeMap<u64, Vec<&'a Received>> {
    let (events, first, by_seq, social) = (run.events, &run.first, &run.by_seq, run.social);
    let mut social_by_seq: BTreeMap<u64, Vec<&Received>> = BTreeMap::new();
    for d in &social.received {
        social_by_seq.entry(d.sequence).or_default().push(d);
    }
    for (i, r) in first {
        let id = &events[*i].event_id;
        match social_by_seq.get(&r.sequence) {
            None => violations.add(
                "(1) LOST acknowledged publish",
                format!(
                    "LOST: {id} (sequence {}, acknowledged in gen {}) never reached {SOCIAL}",
                    r.sequence, r.generation
                ),
            ),
            Some(ds) => {
                for d in ds {
                    if &d.event_id != id
                        || d.source_agency != SCHOOL
                        || d.decision
                            .as_ref()
                            .is_none_or(|x| x.decision != pb::Decision::Shared as i32)
                    {
                        violations.add(
                            "(1) delivery content",
                            format!(
                                "delivery {} of sequence {} carries {:?} from {:?} with {:?}; \
                             published as {id} from {SCHOOL}",
                                d.delivery_id, d.sequence, d.event_id, d.source_agency, d.decision
                            ),
                        );
                    }
                }
            }
        }
    }
    for (seq, ds) in &social_by_seq {
        if !by_seq.contains_key(seq) {
            violations.add(
                "(1) unknown sequence delivered",
                format!(
                    "{SOCIAL} received sequence {seq} ({:?}), which no publish was answered with",
                    ds[0].event_id
                ),
            );
        }
    }
    social_by_seq
}

/// (2) nothing withheld was delivered.
fn withheld_not_delivered(run: &Run, violations: &mut Violations) {
    let (nhs, marker) = (run.nhs, run.marker);
    for d in &nhs.received {
        if d.sequence != marker.sequence || d.event_id != MARKER_ID {
            violations.add(
                "(2) WITHHELD event delivered",
                format!(
                    "WITHHELD EVENT DELIVERED: {NHS} received {} (sequence {}, {}, gen {})",
                    d.event_id, d.sequence, d.delivery_id, d.generation
                ),
            );
        }
    }
}

/// (3) redelivery only where no ack was durable at a crash:
/// `(redeliveries, redeliveries after an inline ack)`.
fn redelivery(
    run: &Run,
    social_by_seq: &BTreeMap<u64, Vec<&Received>>,
    violations: &mut Violations,
) -> (usize, usize) {
    let (audit, social, nhs) = (run.audit, run.social, run.nhs);
    let mut redeliveries = 0usize;
    let mut redelivered_after_inline_ack = 0usize;
    // For reports: what the subscriber saw of a sequence, and what the log
    // says happened to it.
    let mut trail: HashMap<u64, Vec<String>> = HashMap::new();
    for e in audit
        .iter()
        .filter(|e| e.recipient_agency == SOCIAL && e.source_agency != SOCIAL)
    {
        let kind = pb::EntryKind::try_from(e.kind).map_or("?", |k| k.as_str_name());
        trail
            .entry(e.sequence)
            .or_default()
            .push(format!("#{} {kind} {}", e.index, e.delivery_id));
    }
    let history = |seq: u64, ds: &[&Received]| {
        let seen: Vec<String> = ds
            .iter()
            .map(|d| {
                format!(
                    "{} gen {} stream {} ack {:?}",
                    d.delivery_id, d.generation, d.stream, d.ack
                )
            })
            .collect();
        format!(
            "received [{}]; audit [{}]",
            seen.join(", "),
            trail.get(&seq).map(|t| t.join(", ")).unwrap_or_default()
        )
    };
    for (seq, ds) in social_by_seq {
        let mut streams = BTreeSet::new();
        for (k, d) in ds.iter().enumerate() {
            if !streams.insert(d.stream) {
                violations.add(
                    "(3) twice on one stream",
                    format!(
                        "sequence {seq} was received twice on stream {} (gen {}): {}",
                        d.stream,
                        d.generation,
                        history(*seq, ds)
                    ),
                );
            }
            if k > 0 {
                redeliveries += 1;
                let prev = ds[k - 1];
                if prev.ack == AckKind::Inline {
                    redelivered_after_inline_ack += 1;
                }
                if d.attempt <= prev.attempt {
                    violations.add(
                        "(3) attempts increase",
                        format!(
                            "sequence {seq}: attempt {} after attempt {}: {}",
                            d.attempt,
                            prev.attempt,
                            history(*seq, ds)
                        ),
                    );
                }
            }
        }
        if let Some(confirmed) = ds.iter().find(|d| d.ack == AckKind::Unary)
            && let Some(again) = ds.iter().find(|d| d.index > confirmed.index)
        {
            violations.add("(3) redelivered after durable unary ack", format!(
                "DURABLY ACKED EVENT REDELIVERED: sequence {seq}: {} was acked with a successful \
                 unary Ack in gen {}, then {} arrived in gen {}: {}",
                confirmed.delivery_id,
                confirmed.generation,
                again.delivery_id,
                again.generation,
                history(*seq, ds)
            ));
        }
    }
    let sub_entry = |e: &pb::AuditEntry, agency: &str| {
        e.recipient_agency == agency && e.subscription == SUBSCRIPTION
    };
    let delivered_ids: HashMap<&str, &pb::AuditEntry> = audit
        .iter()
        .filter(|e| e.kind == pb::EntryKind::EventDelivered as i32)
        .map(|e| (e.delivery_id.as_str(), e))
        .collect();
    for d in social.received.iter().chain(&nhs.received) {
        match delivered_ids.get(d.delivery_id.as_str()) {
            Some(e) if e.sequence == d.sequence && e.attempt == d.attempt => {}
            other => violations.add(
                "(3) received without EVENT_DELIVERED",
                format!(
                    "delivery {} (sequence {}, attempt {}, gen {}) was received but its \
                 EVENT_DELIVERED entry is {other:?}",
                    d.delivery_id, d.sequence, d.attempt, d.generation
                ),
            ),
        }
    }
    let acked_by_client: BTreeSet<&str> = social
        .received
        .iter()
        .chain(&nhs.received)
        .filter(|d| d.ack != AckKind::NotSent)
        .map(|d| d.delivery_id.as_str())
        .collect();
    // Per sequence, in log order: attempts 1, 2, …; nothing after an ack.
    let mut log_state: HashMap<u64, (u32, Option<u64>)> = HashMap::new();
    for e in audit.iter().filter(|e| sub_entry(e, SOCIAL)) {
        let kind = pb::EntryKind::try_from(e.kind).unwrap_or(pb::EntryKind::Unspecified);
        let st = log_state.entry(e.sequence).or_insert((0, None));
        match kind {
            pb::EntryKind::EventDelivered => {
                if let Some(acked_at) = st.1 {
                    violations.add("(3) audit: delivered after EVENT_ACKED", format!(
                        "audit {}: sequence {} delivered again ({}) after EVENT_ACKED at {acked_at}",
                        e.index, e.sequence, e.delivery_id
                    ));
                }
                if e.attempt != st.0 + 1 {
                    violations.add(
                        "(3) audit: attempts 1, 2, 3, ...",
                        format!(
                            "audit {}: sequence {} delivered with attempt {} after attempt {}",
                            e.index, e.sequence, e.attempt, st.0
                        ),
                    );
                }
                st.0 = e.attempt;
            }
            pb::EntryKind::EventAcked => {
                if st.1.is_some() {
                    violations.add(
                        "(3) audit: acked twice",
                        format!("audit {}: sequence {} acked twice", e.index, e.sequence),
                    );
                }
                st.1 = Some(e.index);
                if !acked_by_client.contains(e.delivery_id.as_str()) {
                    violations.add(
                        "(3) audit: ack the subscriber never sent",
                        format!(
                            "audit {}: EVENT_ACKED for {}, which the subscriber never acked",
                            e.index, e.delivery_id
                        ),
                    );
                }
            }
            _ => {}
        }
    }
    (redeliveries, redelivered_after_inline_ack)
}

/// (4) the audit log: no gaps, one publication per event.
fn audit_log(run: &Run, violations: &mut Violations) {
    let (events, first, audit) = (run.events, &run.first, run.audit);
    for (i, e) in audit.iter().enumerate() {
        if e.index != i as u64 {
            violations.add(
                "(4) AUDIT GAP",
                format!(
                    "AUDIT GAP: entry {i} has index {} (log of {} entries)",
                    e.index,
                    audit.len()
                ),
            );
            break;
        }
    }
    let mut published: HashMap<&str, Vec<&pb::AuditEntry>> = HashMap::new();
    let mut decided: HashMap<(&str, &str), Vec<&pb::AuditEntry>> = HashMap::new();
    for e in audit.iter().filter(|e| e.source_agency == SCHOOL) {
        if e.kind == pb::EntryKind::EventPublished as i32 {
            published.entry(e.event_id.as_str()).or_default().push(e);
        } else if e.kind == pb::EntryKind::ShareDecided as i32 && e.subscription.is_empty() {
            decided
                .entry((e.event_id.as_str(), e.recipient_agency.as_str()))
                .or_default()
                .push(e);
        }
        if e.kind == pb::EntryKind::EventDelivered as i32 && e.recipient_agency == NHS {
            violations.add(
                "(2) audit: WITHHELD event delivered",
                format!(
                    "WITHHELD EVENT DELIVERED: audit {} records {} delivered to {NHS}",
                    e.index, e.event_id
                ),
            );
        }
    }
    if published.len() != first.len() {
        violations.add(
            "(4) one EVENT_PUBLISHED per event id",
            format!(
                "{} distinct school-b event ids published in the log, {} acknowledged",
                published.len(),
                first.len()
            ),
        );
    }
    for (i, r) in first {
        let id = events[*i].event_id.as_str();
        match published.get(id).map(Vec::as_slice) {
            Some([e]) if e.sequence == r.sequence && e.index == r.audit_index => {}
            other => violations.add(
                "(4) EVENT_PUBLISHED matches the answer",
                format!(
                    "{id} (sequence {}, audit index {}): EVENT_PUBLISHED entries {:?}",
                    r.sequence,
                    r.audit_index,
                    other.map(|es| es.iter().map(|e| (e.index, e.sequence)).collect::<Vec<_>>())
                ),
            ),
        }
        for (agency, decision) in [
            (SOCIAL, pb::Decision::Shared),
            (NHS, pb::Decision::Withheld),
        ] {
            match decided.get(&(id, agency)).map(Vec::as_slice) {
                Some([e]) if e.decision == decision as i32 && e.sequence == r.sequence => {}
                other => violations.add(
                    "(4) SHARE_DECIDED at publish",
                    format!(
                        "{id}: SHARE_DECIDED for {agency} at publish: {:?}",
                        other.map(|es| es
                            .iter()
                            .map(|e| (e.index, e.decision, e.reason.clone()))
                            .collect::<Vec<_>>())
                    ),
                ),
            }
        }
    }
}
