//! `caseshare status` (admin): the broker at a glance, from
//! `Admin.GetStatus`, as a table for people or, with `--json`, the same
//! figures as proto3 JSON of `caseshare.v1.BrokerStatus` with every field
//! present (zeros included) for scripts.

use caseshare_proto::v1 as pb;

use crate::client::Clients;
use crate::json::{JsonError, to_json_with_defaults};

/// Why `caseshare status` printed nothing.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The broker refused or failed the call (e.g. `PermissionDenied` for
    /// anyone but an admin).
    #[error("{:?}: {}", .0.code(), .0.message())]
    Rpc(tonic::Status),
    /// The answer could not be rendered as JSON.
    #[error(transparent)]
    Json(#[from] JsonError),
}

/// Asks the broker for its status.
pub async fn fetch(clients: &mut Clients) -> Result<pb::BrokerStatus, tonic::Status> {
    Ok(clients
        .admin
        .get_status(pb::GetStatusRequest {})
        .await?
        .into_inner())
}

/// `caseshare status [--json]`: what to print.
pub async fn run(clients: &mut Clients, json: bool) -> Result<String, StatusError> {
    let status = fetch(clients).await.map_err(StatusError::Rpc)?;
    Ok(render(&status, json)?)
}

/// The status as printed: the table, or pretty JSON; ends with a newline.
pub fn render(status: &pb::BrokerStatus, json: bool) -> Result<String, JsonError> {
    if json {
        let value = to_json_with_defaults("caseshare.v1.BrokerStatus", status)?;
        let text =
            serde_json::to_string_pretty(&value).map_err(|e| JsonError::Invalid(e.to_string()))?;
        Ok(format!("{text}\n"))
    } else {
        Ok(table(status))
    }
}

/// `1h 02m 05s`, `2m 05s`, `5s`; days when there are any.
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h:02}h {m:02}m {s:02}s")
    } else if h > 0 {
        format!("{h}h {m:02}m {s:02}s")
    } else if m > 0 {
        format!("{m}m {s:02}s")
    } else {
        format!("{s}s")
    }
}

/// Bytes with a binary-prefixed figure beside them: `1536 bytes (1.5 KiB)`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{n} bytes ({v:.1} {})", UNITS[unit])
}

/// The status as a table.
pub fn table(s: &pb::BrokerStatus) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("version", s.version.clone()),
        (
            "uptime",
            format!(
                "{} (since {} UTC)",
                duration(s.uptime_seconds),
                crate::audit::ts(&s.started_at)
            ),
        ),
        ("role", s.role.clone()),
        ("backend", s.backend.clone()),
    ];
    if s.replicas.is_empty() {
        let none = if s.role == "replica" {
            "none seen yet (the roster is read every 5 s)"
        } else {
            "none (single broker)"
        };
        rows.push(("replicas", none.into()));
    }
    for r in &s.replicas {
        let this = if r.this_replica { " (this one)" } else { "" };
        rows.push((
            "replica",
            format!(
                "{} {}{this}: applied journal message {}, seen {} ago, {}",
                r.replica_id,
                r.address,
                r.applied_sequence,
                duration(r.seen_seconds_ago),
                r.version
            ),
        ));
    }
    rows.push(("store size", bytes(s.store_bytes)));
    rows.push(("audit log", format!("{} entries", s.audit_tree_size)));
    rows.push((
        "last checkpoint",
        match &s.last_checkpoint {
            Some(c) => format!(
                "{} entries, signed {} ago",
                c.tree_size,
                duration(c.age_seconds)
            ),
            None => "none signed yet".into(),
        },
    ));
    let mut out = String::new();
    for (k, v) in rows {
        out.push_str(&format!("{k:<16} {v}\n"));
    }
    out.push('\n');
    if s.subscriptions.is_empty() {
        out.push_str("no subscriptions\n");
        return out;
    }
    let header = [
        "AGENCY",
        "SUBSCRIPTION",
        "BACKLOG",
        "OLDEST UNACKED",
        "IN FLIGHT",
        "DEAD LETTERS",
    ];
    let cells: Vec<[String; 6]> = s
        .subscriptions
        .iter()
        .map(|x| {
            [
                x.agency_id.clone(),
                x.name.clone(),
                x.backlog.to_string(),
                duration(x.oldest_unacked_age_seconds),
                x.in_flight.to_string(),
                x.dead_letters.to_string(),
            ]
        })
        .collect();
    let mut width = header.map(str::len);
    for row in &cells {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |row: [&str; 6]| {
        // Names left-aligned, figures right-aligned.
        let mut l = format!("{:<a$}  {:<b$}", row[0], row[1], a = width[0], b = width[1]);
        for (cell, w) in row.iter().zip(width).skip(2) {
            l.push_str(&format!("  {cell:>w$}"));
        }
        l.push('\n');
        l
    };
    out.push_str(&line(header));
    for row in &cells {
        out.push_str(&line(row.each_ref().map(String::as_str)));
    }
    out.push_str(
        "(backlog: unsettled deliveries plus unread log events, an upper bound until a \
         stream has caught up; dead letters: since the broker started)\n",
    );
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample() -> pb::BrokerStatus {
        pb::BrokerStatus {
            version: "caseshare 0.1.0".into(),
            started_at: Some(prost_types::Timestamp {
                seconds: 1_795_000_000,
                nanos: 0,
            }),
            uptime_seconds: 3_725,
            role: "single".into(),
            backend: "embedded".into(),
            replicas: vec![],
            store_bytes: 1536,
            audit_tree_size: 42,
            last_checkpoint: Some(pb::CheckpointSummary {
                tree_size: 40,
                age_seconds: 1,
            }),
            subscriptions: vec![pb::SubscriptionStatus {
                agency_id: "la-social-care-c".into(),
                name: "main".into(),
                backlog: 3,
                oldest_unacked_age_seconds: 65,
                in_flight: 2,
                dead_letters: 0,
            }],
        }
    }

    #[test]
    fn the_table_reads_as_a_person_expects() {
        let t = table(&sample());
        let expected = "\
version          caseshare 0.1.0
uptime           1h 02m 05s (since 2026-11-18 11:06:40 UTC)
role             single
backend          embedded
replicas         none (single broker)
store size       1536 bytes (1.5 KiB)
audit log        42 entries
last checkpoint  40 entries, signed 1s ago

AGENCY            SUBSCRIPTION  BACKLOG  OLDEST UNACKED  IN FLIGHT  DEAD LETTERS
la-social-care-c  main                3          1m 05s          2             0
";
        assert!(t.starts_with(expected), "{t}");
    }

    #[test]
    fn json_keeps_zero_figures() {
        let text = render(&sample(), true).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let sub = &v["subscriptions"][0];
        assert_eq!(sub["deadLetters"], "0");
        assert_eq!(sub["backlog"], "3");
        assert_eq!(v["replicas"], serde_json::json!([]));
        assert_eq!(v["version"], "caseshare 0.1.0");
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(60), "1m 00s");
        assert_eq!(duration(86_400 + 1), "1d 00h 00m 01s");
        assert_eq!(bytes(1023), "1023 bytes");
        assert_eq!(bytes(5 * 1024 * 1024), "5242880 bytes (5.0 MiB)");
    }

    #[test]
    fn no_subscriptions_and_no_checkpoint_say_so() {
        let s = pb::BrokerStatus {
            subscriptions: vec![],
            last_checkpoint: None,
            ..sample()
        };
        let t = table(&s);
        assert!(t.contains("last checkpoint  none signed yet\n"), "{t}");
        assert!(t.ends_with("\nno subscriptions\n"), "{t}");
    }
}
