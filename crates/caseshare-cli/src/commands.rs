//! The client subcommands' arguments (agency, agreement, audit,
//! subscription, consent), parsed by clap; `main.rs` runs them.

use std::path::PathBuf;

use clap::Subcommand;

use crate::Conn;

#[derive(Subcommand)]
pub(crate) enum AgencyCommand {
    /// Register an agency.
    Register {
        #[command(flatten)]
        conn: Conn,
        /// Agency id (as in its certificate).
        #[arg(long)]
        id: String,
        /// health, education, social_care or other.
        #[arg(long)]
        kind: String,
        /// Display name.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List agencies.
    List {
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
pub(crate) enum AgreementCommand {
    /// Create or replace an agreement from proto3 JSON (file or `-`).
    Put {
        #[command(flatten)]
        conn: Conn,
        /// The JSON file, or `-`.
        #[arg(default_value = "-")]
        file: String,
    },
    /// End an agreement.
    End {
        #[command(flatten)]
        conn: Conn,
        /// The agreement id.
        #[arg(long)]
        id: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// List agreements.
    List {
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// Print the latest signed checkpoint and the broker's verifier key.
    Checkpoint {
        #[command(flatten)]
        conn: Conn,
    },
    /// Verify the log without trusting the broker; exits non-zero with a
    /// one-line reason on any mismatch.
    Verify {
        #[command(flatten)]
        conn: Conn,
        /// The pinned verifier key (`<name>+<id>+<key>`), obtained out of band.
        #[arg(long, env = "CASESHARE_AUDIT_VKEY")]
        vkey: String,
        /// Where the last verified checkpoint is kept between runs.
        #[arg(long, default_value = "caseshare-audit-state.json")]
        state: PathBuf,
    },
    /// Query entries.
    Query {
        #[command(flatten)]
        conn: Conn,
        /// Only entries about this child.
        #[arg(long)]
        nhs_number: Option<String>,
        /// Only entries involving this agency.
        #[arg(long)]
        agency: Option<String>,
        /// Only these kinds (e.g. SHARE_DECIDED).
        #[arg(long = "kind")]
        kinds: Vec<String>,
        /// Page size.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        /// `table` or `json`.
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Every sharing decision about one child.
    Report {
        #[command(flatten)]
        conn: Conn,
        /// The child's NHS number.
        #[arg(long)]
        nhs_number: String,
        /// `table` or `json`.
        #[arg(long, default_value = "table")]
        format: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum SubscriptionCommand {
    /// Create a subscription for your agency.
    Create {
        #[command(flatten)]
        conn: Conn,
        /// Its name.
        #[arg(long)]
        name: String,
        /// Event types (exact or `prefix.*`); none = all.
        #[arg(long = "event-type")]
        event_types: Vec<String>,
        /// Ack deadline in seconds.
        #[arg(long)]
        ack_deadline_secs: Option<i64>,
    },
    /// List your agency's subscriptions.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a subscription.
    Delete {
        #[command(flatten)]
        conn: Conn,
        /// Its name.
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum ConsentCommand {
    /// Record a consent from proto3 JSON (file or `-`).
    Record {
        #[command(flatten)]
        conn: Conn,
        /// The JSON file, or `-`.
        #[arg(default_value = "-")]
        file: String,
    },
    /// Withdraw a consent.
    Withdraw {
        #[command(flatten)]
        conn: Conn,
        /// The consent id.
        #[arg(long)]
        id: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// List a child's consents.
    List {
        #[command(flatten)]
        conn: Conn,
        /// The child's NHS number.
        #[arg(long)]
        nhs_number: String,
    },
}
