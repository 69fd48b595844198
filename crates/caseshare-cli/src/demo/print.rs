//! How the demo prints: one step's decisions and deliveries, aligned
//! tables, and the names, bases, payload contents and times in them.

use std::io::Write;

use anyhow::Result;
use caseshare_core::minimise::case_event_descriptor;
use caseshare_proto::v1 as pb;
use prost::Message;
use prost_reflect::{DynamicMessage, Kind, ReflectMessage, Value};

use super::{Demo, Step};

impl<W: Write> Demo<'_, W> {
    /// Prints one step: what was published, the decision for each
    /// candidate, and what each candidate received.
    pub(super) fn print_step(&mut self, step: &Step, notes: &[String]) -> Result<()> {
        let r = &step.response;
        let event = step.request.event.clone().unwrap_or_default();
        heading(self.out, &format!("({}) {}", step.label, step.title))?;
        for note in notes {
            writeln!(self.out, "  {note}")?;
        }
        writeln!(
            self.out,
            "  {} publishes {} (purpose {}{}): event sequence {}, audit entry {}",
            step.publisher,
            r.event_type,
            purpose_name(event.purpose),
            if event.sensitivity == pb::Sensitivity::Sensitive as i32 {
                ", SENSITIVE"
            } else {
                ""
            },
            r.sequence,
            r.audit_index
        )?;
        writeln!(self.out)?;
        let override_basis = step
            .request
            .basis
            .as_ref()
            .and_then(|b| b.safeguarding_override.as_ref())
            .map(|o| legal_basis(o.legal_basis));
        let mut rows = Vec::new();
        for (i, d) in r.decisions.iter().enumerate() {
            let first = i == 0;
            rows.push(vec![
                if first { step.label } else { "" }.to_string(),
                if first { r.event_type.as_str() } else { "" }.to_string(),
                if first { step.publisher.as_str() } else { "" }.to_string(),
                d.agency_id.clone(),
                decision_name(d.decision).to_string(),
                d.reason.clone(),
                basis(d, override_basis),
            ]);
        }
        if rows.is_empty() {
            writeln!(
                self.out,
                "  No agency subscribes to this event: nobody was a candidate."
            )?;
        } else {
            table(
                self.out,
                &[
                    "Step",
                    "Event type",
                    "From",
                    "To",
                    "Decision",
                    "Reason",
                    "Basis (agreement / consent / override)",
                ],
                &rows,
            )?;
        }
        writeln!(self.out, "\n  What each candidate received")?;
        for d in &r.decisions {
            let got: Vec<&pb::Delivery> = step
                .deliveries
                .iter()
                .filter(|(agency, _)| *agency == d.agency_id)
                .map(|(_, delivery)| delivery)
                .collect();
            if got.is_empty() {
                writeln!(
                    self.out,
                    "    {:<18}nothing: {} ({})",
                    d.agency_id,
                    decision_name(d.decision).to_lowercase(),
                    d.reason
                )?;
            }
            for delivery in got {
                let unexpected = if delivery.sequence == r.sequence {
                    ""
                } else {
                    "  << NOT THIS STEP'S EVENT"
                };
                writeln!(
                    self.out,
                    "    {:<18}{} (sequence {}, delivery {}){unexpected}",
                    d.agency_id, delivery.event_type, delivery.sequence, delivery.delivery_id
                )?;
                let event = delivery.event.clone().unwrap_or_default();
                writeln!(self.out, "    {:<18}  content:  {}", "", content(&event))?;
                writeln!(
                    self.out,
                    "    {:<18}  redacted: {}",
                    "",
                    if delivery.redacted_fields.is_empty() {
                        "nothing".to_string()
                    } else {
                        delivery.redacted_fields.join(", ")
                    }
                )?;
            }
        }
        Ok(())
    }
}

/// Prints a section title, underlined.
pub(super) fn heading(out: &mut impl Write, title: &str) -> std::io::Result<()> {
    writeln!(out, "\n{title}")?;
    writeln!(out, "{}", "-".repeat(title.chars().count()))
}

/// Prints an aligned table, indented by two spaces.
pub(super) fn table(
    out: &mut impl Write,
    header: &[&str],
    rows: &[Vec<String>],
) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| -> String {
        let mut s = String::from(" ");
        for (cell, width) in cells.zip(&widths) {
            s.push(' ');
            s.push_str(cell);
            for _ in cell.chars().count()..*width {
                s.push(' ');
            }
            s.push(' ');
        }
        s.trim_end().to_string()
    };
    writeln!(out, "{}", line(&mut header.iter().copied()))?;
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    writeln!(out, "{}", line(&mut rule.iter().map(String::as_str)))?;
    for row in rows {
        writeln!(out, "{}", line(&mut row.iter().map(String::as_str)))?;
    }
    Ok(())
}

/// Purposes by their enum names, comma-separated.
pub(super) fn purposes(ps: &[i32]) -> String {
    ps.iter()
        .map(|p| purpose_name(*p))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A purpose by its enum name (`?` if unknown).
fn purpose_name(p: i32) -> &'static str {
    pb::Purpose::try_from(p).map_or("?", |p| p.as_str_name())
}

/// A lawful basis by its enum name (`?` if unknown).
pub(super) fn lawful_basis(b: i32) -> &'static str {
    pb::LawfulBasis::try_from(b).map_or("?", |b| b.as_str_name())
}

/// An override's legal basis by its enum name (`?` if unknown).
pub(super) fn legal_basis(b: i32) -> &'static str {
    pb::LegalBasis::try_from(b).map_or("?", |b| b.as_str_name())
}

/// A decision by its enum name (`?` if unknown).
fn decision_name(d: i32) -> &'static str {
    pb::Decision::try_from(d).map_or("?", |d| d.as_str_name())
}

/// The basis column: agreement and lawful basis, plus the consent or the
/// override relied on.
fn basis(d: &pb::SharingDecision, override_basis: Option<&str>) -> String {
    if d.decision != pb::Decision::Shared as i32 {
        return if d.agreement_id.is_empty() {
            "-".to_string()
        } else {
            format!("agreement {} (not met)", d.agreement_id)
        };
    }
    let agreement = format!(
        "agreement {} ({})",
        d.agreement_id,
        lawful_basis(d.lawful_basis)
    );
    if d.override_used {
        format!(
            "OVERRIDE {} + {agreement}",
            override_basis.unwrap_or("(legal basis not shown)")
        )
    } else if !d.consent_id.is_empty() {
        format!("{agreement} + consent {}", d.consent_id)
    } else {
        agreement
    }
}

/// An NHS number as people write it: 3-3-4 digits.
pub(super) fn nhs_display(n: &str) -> String {
    if n.len() == 10 && n.bytes().all(|b| b.is_ascii_digit()) {
        format!("{} {} {}", &n[..3], &n[3..6], &n[6..])
    } else {
        n.to_string()
    }
}

/// The first six bytes, in hex (a pseudonym as the tables show it).
pub(super) fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// The payload fields (and the summary) a recipient actually has, as
/// `name value` pairs.
fn content(event: &pb::CaseEvent) -> String {
    let Some(desc) = case_event_descriptor() else {
        return "(schema unavailable)".into();
    };
    let Ok(msg) = DynamicMessage::decode(desc, event.encode_to_vec().as_slice()) else {
        return "(undecodable)".into();
    };
    let mut parts = Vec::new();
    for (field, value) in msg.fields() {
        if field.name() == "summary" {
            parts.push(format!("summary {value}"));
        }
        if field
            .containing_oneof()
            .is_some_and(|o| o.name() == "payload")
            && let Value::Message(payload) = value
        {
            for (f, v) in payload.fields() {
                parts.push(format!("{} {}", f.name(), show(v, &f.kind())));
            }
        }
    }
    if parts.is_empty() {
        "no payload fields".into()
    } else {
        parts.join(", ")
    }
}

/// One payload value as the tables show it: enum names, UTC times, lists.
fn show(v: &Value, kind: &Kind) -> String {
    match (v, kind) {
        (Value::String(s), _) => s.clone(),
        (Value::EnumNumber(n), Kind::Enum(e)) => e
            .get_value(*n)
            .map_or(n.to_string(), |v| v.name().to_string()),
        (Value::Message(m), _) if m.descriptor().full_name() == "google.protobuf.Timestamp" => {
            let seconds = m
                .get_field_by_name("seconds")
                .and_then(|s| s.as_i64())
                .unwrap_or(0);
            utc(seconds)
        }
        (Value::List(items), _) => format!(
            "[{}]",
            items
                .iter()
                .map(|i| show(i, kind))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        (other, _) => other.to_string(),
    }
}

/// `YYYY-MM-DD HH:MM` (UTC) for Unix seconds.
fn utc(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let secs = seconds.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        secs / 3_600,
        secs % 3_600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00");
        assert_eq!(utc(1_793_000_000 - 1_793_000_000 % 60), "2026-10-26 07:33");
    }

    #[test]
    fn tables_align() {
        let mut out = Vec::new();
        table(
            &mut out,
            &["A", "Bee"],
            &[vec!["long cell".into(), "x".into()]],
        )
        .ok();
        let text = String::from_utf8_lossy(&out).to_string();
        assert_eq!(text, "  A          Bee\n  ---------  ---\n  long cell  x\n");
    }
}
