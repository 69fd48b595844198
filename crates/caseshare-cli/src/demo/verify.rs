//! The end of the run: comparing what each agency received with what was
//! shared with it, and reading the whole audit log back as the auditor to
//! summarise it.

use std::io::Write;

use anyhow::{Context, Result, anyhow, bail};
use caseshare_proto::v1 as pb;

use super::print::{heading, hex_prefix, table};
use super::{AuditSummary, CHILD_NHS_NUMBER, Demo, Step};
use crate::client::Clients;

impl<W: Write> Demo<'_, W> {
    /// Compares what each agency received with what was shared with it.
    pub(super) fn check_deliveries(&mut self) -> Result<()> {
        heading(
            self.out,
            "Delivery check: each feed read in order up to its last shared event",
        )?;
        let label_of = |seq: u64, steps: &[Step]| {
            steps
                .iter()
                .find(|s| s.response.sequence == seq)
                .map_or(format!("#{seq}?"), |s| s.label.to_string())
        };
        let mut rows = Vec::new();
        let mut all_ok = true;
        for (agency, received) in &self.report.received {
            let shared: Vec<u64> = self
                .report
                .steps
                .iter()
                .filter(|s| {
                    s.decision(agency)
                        .is_some_and(|d| d.decision == pb::Decision::Shared as i32)
                })
                .map(|s| s.response.sequence)
                .collect();
            let withheld: Vec<&str> = self
                .report
                .steps
                .iter()
                .filter(|s| {
                    s.decision(agency)
                        .is_some_and(|d| d.decision == pb::Decision::Withheld as i32)
                })
                .map(|s| s.label)
                .collect();
            let got: Vec<u64> = received.iter().map(|d| d.sequence).collect();
            let ok = got == shared;
            all_ok &= ok;
            let labels = |seqs: &[u64]| {
                if seqs.is_empty() {
                    "-".to_string()
                } else {
                    seqs.iter()
                        .map(|s| label_of(*s, &self.report.steps))
                        .collect::<Vec<_>>()
                        .join(" ")
                }
            };
            rows.push(vec![
                agency.clone(),
                labels(&shared),
                labels(&got),
                if withheld.is_empty() {
                    "-".to_string()
                } else {
                    withheld.join(" ")
                },
                if ok { "ok" } else { "MISMATCH" }.to_string(),
            ]);
        }
        table(
            self.out,
            &[
                "Agency",
                "Shared with it",
                "Received",
                "Withheld from it",
                "Check",
            ],
            &rows,
        )?;
        writeln!(
            self.out,
            "  Feeds deliver in publish order, so a withheld event that had been sent would\n  \
             have arrived before the later events each agency did receive."
        )?;
        self.report.deliveries_match_decisions = all_ok;
        Ok(())
    }

    /// Reads the whole audit log as the auditor and summarises it.
    pub(super) async fn audit(&mut self) -> Result<()> {
        let lower = self.report.steps.last().map_or(0, |s| {
            s.response.audit_index + 1 + s.response.decisions.len() as u64
        });
        let size = audit_size(&mut self.auditor, lower).await?;
        let mut entries = Vec::new();
        let mut start = 0;
        while start < size {
            let end = size.min(start + 10_000);
            let mut stream = self
                .auditor
                .audit
                .get_entries(pb::GetEntriesRequest { start, end })
                .await
                .context("GetEntries")?
                .into_inner();
            while let Some(leaf) = stream.message().await.context("GetEntries")? {
                let entry = caseshare_audit::entry::decode(&leaf.leaf)
                    .map_err(|e| anyhow!("audit entry {}: {e}", leaf.index))?;
                entries.push((leaf.index, leaf.leaf, entry));
            }
            start = end;
        }
        let decided = |d: pb::Decision| {
            entries
                .iter()
                .filter(|(_, _, e)| {
                    e.kind == pb::EntryKind::ShareDecided as i32 && e.decision == d as i32
                })
                .count()
        };
        let kind = |k: pb::EntryKind| {
            entries
                .iter()
                .filter(|(_, _, e)| e.kind == k as i32)
                .count()
        };
        let child_pseudonym = entries
            .iter()
            .find(|(_, _, e)| e.kind == pb::EntryKind::EventPublished as i32)
            .map(|(_, _, e)| hex_prefix(&e.child_pseudonym))
            .unwrap_or_default();
        let summary = AuditSummary {
            entries: size,
            gap_free: entries
                .iter()
                .enumerate()
                .all(|(i, (index, _, e))| *index == i as u64 && e.index == i as u64),
            decisions_shared: decided(pb::Decision::Shared),
            decisions_withheld: decided(pb::Decision::Withheld),
            delivered: kind(pb::EntryKind::EventDelivered),
            consents_recorded: kind(pb::EntryKind::ConsentRecorded),
            consents_withdrawn: kind(pb::EntryKind::ConsentWithdrawn),
            overrides_with_justification: entries
                .iter()
                .filter(|(_, _, e)| {
                    e.kind == pb::EntryKind::ShareDecided as i32
                        && e.override_used
                        && e.safeguarding_override.as_ref().is_some_and(|o| {
                            !o.justification.is_empty() && !o.authorised_by.is_empty()
                        })
                })
                .count(),
            entries_with_nhs_number: entries
                .iter()
                .filter(|(_, leaf, _)| {
                    leaf.windows(CHILD_NHS_NUMBER.len())
                        .any(|w| w == CHILD_NHS_NUMBER.as_bytes())
                })
                .count(),
            child_pseudonym,
        };

        heading(self.out, "Audit log, read back as the auditor")?;
        let s = &summary;
        let rows = vec![
            vec![
                "Entries".to_string(),
                format!(
                    "{} (indexes 0 to {}{})",
                    s.entries,
                    s.entries.saturating_sub(1),
                    if s.gap_free {
                        ", no gaps"
                    } else {
                        ", WITH GAPS"
                    }
                ),
            ],
            vec![
                "Sharing decisions".to_string(),
                format!(
                    "{} shared, {} withheld, each with its reason and basis",
                    s.decisions_shared, s.decisions_withheld
                ),
            ],
            vec![
                "Deliveries".to_string(),
                format!(
                    "{} recorded, each re-decided just before it was sent",
                    s.delivered
                ),
            ],
            vec![
                "Consent".to_string(),
                format!(
                    "{} recorded, {} withdrawn",
                    s.consents_recorded, s.consents_withdrawn
                ),
            ],
            vec![
                "Overrides".to_string(),
                format!(
                    "{} decision(s), each with legal basis, justification and authoriser",
                    s.overrides_with_justification
                ),
            ],
            vec![
                "The child".to_string(),
                format!(
                    "appears only as pseudonym {}…; entries containing the NHS number: {}",
                    s.child_pseudonym, s.entries_with_nhs_number
                ),
            ],
        ];
        table(self.out, &["What", "Recorded"], &rows)?;
        self.report.audit = summary;
        Ok(())
    }
}

/// The log's size: the largest `n` for which entry `n - 1` exists, searched
/// from `lower` (known to exist) with GetEntries probes.
async fn audit_size(auditor: &mut Clients, lower: u64) -> Result<u64> {
    async fn exists(auditor: &mut Clients, n: u64) -> bool {
        n == 0
            || auditor
                .audit
                .get_entries(pb::GetEntriesRequest {
                    start: n - 1,
                    end: n,
                })
                .await
                .is_ok()
    }
    if !exists(auditor, lower).await {
        bail!("the audit log is shorter than the {lower} entries the publishes reported");
    }
    let (mut lo, mut step) = (lower, 16);
    while exists(auditor, lo + step).await {
        lo += step;
        step *= 2;
    }
    let mut hi = lo + step; // does not exist
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if exists(auditor, mid).await {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}
