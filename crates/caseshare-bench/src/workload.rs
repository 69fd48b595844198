//! The events the bench publishes: attendance concerns about valid,
//! distinct (invented) children, padded to `--payload-bytes`, each carrying
//! its send time in its `event_id`; with `--trace-context`, each publish
//! also carries its own W3C trace context.

use anyhow::{Context, Result, bail};
use caseshare_proto::v1 as pb;
use prost::Message;

use crate::BenchArgs;

/// The events the bench publishes.
#[derive(Debug)]
pub(crate) struct Workload {
    /// Unique per run, so that ids never collide with an earlier run's
    /// (the broker would answer them as duplicates).
    pub(crate) prefix: String,
    pub(crate) template: pb::CaseEvent,
    pub(crate) children: Vec<String>,
    pub(crate) event_bytes: usize,
    pub(crate) publishers: u64,
    /// `--trace-context`: the fraction of events flagged sampled.
    trace_ratio: Option<f64>,
    /// Seeds the trace and span ids (differs per run).
    trace_seed: u64,
}

/// SplitMix64: well-spread 64-bit values from a counter, for trace ids.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// `count` valid, distinct (invented) NHS numbers.
fn nhs_numbers(count: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(count);
    let mut n: u64 = 400_000_000;
    while out.len() < count && n < 1_000_000_000 {
        if let Some(nhs) = caseshare_core::nhs::with_check_digit(&format!("{n:09}")) {
            out.push(nhs);
        }
        n += 7;
    }
    out
}

/// The text events are padded with, through their `summary`.
const PAD: &str = "Attendance has fallen sharply this half term; the school has written to \
                   the family twice and offered an early help assessment. ";

impl Workload {
    /// The run's events, padded to `--payload-bytes`.
    pub(crate) fn new(args: &BenchArgs) -> Result<Self> {
        let run = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let prefix = format!("bench{run:x}{:x}", std::process::id());
        let children = nhs_numbers(args.children as usize);
        let first = children
            .first()
            .cloned()
            .context("could not make NHS numbers")?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let mut template = pb::CaseEvent {
            event_id: String::new(),
            child: Some(pb::ChildRef {
                nhs_number: first,
                local_ids: vec![],
            }),
            purpose: pb::Purpose::EarlyHelp as i32,
            occurred_at: Some(prost_types::Timestamp {
                seconds: i64::try_from(now).unwrap_or(1_793_000_000) - 3600,
                nanos: 0,
            }),
            summary: String::new(),
            payload: Some(pb::case_event::Payload::EducationAttendanceConcern(
                pb::AttendanceConcern {
                    period: "2026-autumn-1".into(),
                    attendance_percent: 78.5,
                    unauthorised_sessions: 11,
                },
            )),
            ..Default::default()
        };
        let mut w = Workload {
            prefix,
            template: template.clone(),
            children,
            event_bytes: 0,
            publishers: u64::from(args.publishers),
            trace_ratio: args.trace_context,
            trace_seed: splitmix(
                u64::try_from(run).unwrap_or_default() ^ u64::from(std::process::id()),
            ),
        };
        // Ids are fixed-width, so every event encodes to the same size.
        template.event_id = w.event_id(0, 0, 0);
        let base = template.encoded_len();
        let max_summary = 4_000;
        if args.payload_bytes > base {
            // Tag + length prefix of the summary take 2-3 bytes.
            let mut n = (args.payload_bytes - base)
                .saturating_sub(2)
                .min(max_summary);
            loop {
                template.summary = PAD.chars().cycle().take(n).collect();
                if template.encoded_len() <= args.payload_bytes || n == 0 {
                    break;
                }
                n -= 1;
            }
            if template.encoded_len() < args.payload_bytes && n == max_summary {
                bail!(
                    "--payload-bytes {} is more than an event can carry ({} bytes with a {max_summary}-character summary)",
                    args.payload_bytes,
                    template.encoded_len()
                );
            }
        }
        w.event_bytes = template.encoded_len();
        template.event_id.clear();
        w.template = template;
        Ok(w)
    }

    /// A fixed-width id carrying the publisher, index and send time.
    fn event_id(&self, publisher: u64, index: u64, sent_ns: u64) -> String {
        format!("{}-{publisher:04}-{index:010}-{sent_ns:016}", self.prefix)
    }

    /// Event `index` of publisher `publisher`, sent at `sent_ns`.
    pub(crate) fn event(&self, publisher: u64, index: u64, sent_ns: u64) -> pb::CaseEvent {
        let mut e = self.template.clone();
        e.event_id = self.event_id(publisher, index, sent_ns);
        let child = usize::try_from(index * self.publishers + publisher).unwrap_or(0);
        if let Some(nhs) = self.children.get(child % self.children.len().max(1)) {
            e.child = Some(pb::ChildRef {
                nhs_number: nhs.clone(),
                local_ids: vec![],
            });
        }
        e
    }

    /// With `--trace-context`, the W3C trace context publish `index` of
    /// publisher `publisher` carries: a fresh trace id and parent span id,
    /// flagged sampled when the trace id falls in the ratio (as the
    /// OpenTelemetry `TraceIdRatioBased` sampler decides).
    pub(crate) fn trace_context(&self, publisher: u64, index: u64) -> Option<pb::TraceContext> {
        let ratio = self.trace_ratio?;
        let n = splitmix(self.trace_seed ^ (index * self.publishers + publisher));
        let (hi, lo, span) = (splitmix(n), splitmix(n ^ 1), splitmix(n ^ 2) | 1);
        // The low 63 bits of the trace id against ratio × 2^63.
        let sampled = ((lo >> 1) as f64) < ratio * (1u64 << 63) as f64;
        Some(pb::TraceContext {
            traceparent: format!(
                "00-{hi:016x}{lo:016x}-{span:016x}-{}",
                if sampled { "01" } else { "00" }
            ),
            tracestate: String::new(),
        })
    }

    /// The send time carried in one of this run's event ids.
    pub(crate) fn sent_ns(&self, event_id: &str) -> Option<u64> {
        let rest = event_id.strip_prefix(self.prefix.as_str())?;
        rest.rsplit_once('-')?.1.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::args::testing::parse;

    #[test]
    fn events_are_padded_to_the_payload_size_and_carry_their_send_time() {
        let args = parse(&["--embedded", "--payload-bytes", "512", "--publishers", "3"]);
        let w = Workload::new(&args).unwrap();
        assert_eq!(w.event_bytes, 512);
        let e = w.event(2, 12_345, 987_654_321);
        assert_eq!(e.encoded_len(), 512);
        assert_eq!(w.sent_ns(&e.event_id), Some(987_654_321));
        assert_eq!(w.sent_ns("someone-else-1"), None);
        caseshare_core::nhs::validate_nhs_number(&e.child.unwrap().nhs_number).unwrap();
    }

    #[test]
    fn trace_contexts_are_fresh_and_sampled_at_the_ratio() {
        let none = Workload::new(&parse(&["--embedded"])).unwrap();
        assert!(none.trace_context(0, 0).is_none());
        let args = parse(&["--embedded", "--publishers", "2", "--trace-context", "0.1"]);
        let w = Workload::new(&args).unwrap();
        let mut ids = std::collections::HashSet::new();
        let mut sampled = 0;
        for i in 0..10_000 {
            let t = w.trace_context(i % 2, i / 2).unwrap();
            let parts: Vec<&str> = t.traceparent.split('-').collect();
            assert_eq!(parts.len(), 4, "{}", t.traceparent);
            assert_eq!((parts[0], parts[1].len(), parts[2].len()), ("00", 32, 16));
            assert!(ids.insert(parts[1].to_string()));
            sampled += usize::from(parts[3] == "01");
        }
        assert!((800..1200).contains(&sampled), "{sampled} of 10000 sampled");
        let all = Workload::new(&parse(&["--embedded", "--trace-context", "1"])).unwrap();
        assert!(
            all.trace_context(0, 7)
                .unwrap()
                .traceparent
                .ends_with("-01")
        );
    }

    #[test]
    fn small_payloads_leave_the_summary_empty() {
        let args = parse(&["--embedded", "--payload-bytes", "10"]);
        let w = Workload::new(&args).unwrap();
        assert!(w.template.summary.is_empty());
        assert!(w.event_bytes > 10);
    }

    #[test]
    fn children_are_valid_and_distinct() {
        let kids = nhs_numbers(500);
        assert_eq!(kids.len(), 500);
        let set: std::collections::HashSet<_> = kids.iter().collect();
        assert_eq!(set.len(), 500);
        for k in &kids {
            caseshare_core::nhs::validate_nhs_number(k).unwrap();
        }
    }
}
