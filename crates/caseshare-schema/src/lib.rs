//! The schema guard and the schema reference generator behind
//! `caseshare-schema check | baseline | docs`.
//!
//! The protobuf files in `proto/caseshare/v1/*.proto` are the contract with
//! every agency, so they must only ever change compatibly. This module
//! compiles them at run time with protox (keeping comments), and:
//!
//! - [`check`] compares the schema with the committed baseline
//!   ([`BASELINE_PATH`], a `FileDescriptorSet` of the v1 files without source
//!   info) and reports every breaking change (a removed message, field, enum,
//!   enum value, service or RPC; a renumbered or renamed field or enum value;
//!   a changed field type, cardinality, oneof membership or JSON name; a
//!   changed RPC request/response type or streaming mode; a reserved number
//!   or name reused, or a reservation dropped), plus the lint rules
//!   (versioned package matching its directory, `*_UNSPECIFIED` enum zero
//!   values, `lower_snake_case` field and oneof names, a leading comment on
//!   every message, field, enum, enum value, service and RPC). Additions pass.
//!   Each problem is one line, prefixed `breaking:`, `lint:` or `error:`, and
//!   names the element by its full protobuf name.
//! - [`baseline`] rewrites the baseline from the current schema; it refuses
//!   while there are lint problems or breaking changes against the existing
//!   baseline ([`baseline_allowing_breaking`] accepts the latter and lists
//!   them).
//! - [`docs`] renders `docs/SCHEMA.md`: services and RPCs, one section per
//!   event type with its JSON example from `examples/events/`, messages with
//!   field tables, and enums. The output is deterministic.
//!
//! How the `caseshare-schema` binary (`src/main.rs`) uses it (paths
//! relative to the repository root, the defaults being [`PROTO_DIR`],
//! [`BASELINE_PATH`], [`EXAMPLES_DIR`]):
//!
//! - `caseshare-schema check`: `check_report(proto, baseline)`; print every
//!   entry of [`CheckReport::problems`] to stderr and exit 1 if there are
//!   any (an `Err` also exits 1); otherwise print each of
//!   [`CheckReport::additions`] (compatible additions not yet in the
//!   baseline) as `compatible: …`, then `schema check passed`. [`check`] is the same returning
//!   just the problems.
//! - `caseshare-schema baseline`: `baseline(proto, baseline)`; print the
//!   additions it locked in. An `Err(SchemaError::Breaking(..))` or
//!   `Err(SchemaError::Lint(..))` lists what must be fixed first. An
//!   `--allow-breaking` flag, if offered, calls
//!   [`baseline_allowing_breaking`] and prints the accepted breaking changes.
//! - `caseshare-schema docs`: print `docs(proto, examples)` to stdout, as in
//!   `caseshare-schema docs > docs/SCHEMA.md`.
//!
//! Modules, by what each owns: `compile` (compiling `proto/` and loading the
//! baseline), `commands` (`check`, `baseline`), `index` (every message,
//! enum and service of a descriptor set by full name, and field helpers),
//! `compare` (the breaking-change rules), `lint` (the lint rules and
//! reading comments) and `reference` (generating `docs/SCHEMA.md`).

use std::path::{Path, PathBuf};

mod commands;
mod compare;
mod compile;
mod index;
mod lint;
mod reference;

pub use commands::{baseline, baseline_allowing_breaking, check, check_report};
pub use compare::compare;
pub use compile::{compile, load_baseline, proto_files, strip_source_info};
pub use lint::lint;
pub use reference::docs;

/// The include root holding the `.proto` files, relative to the repository.
pub const PROTO_DIR: &str = "proto";
/// The directory of the v1 files, relative to [`PROTO_DIR`].
pub const V1_DIR: &str = "caseshare/v1";
/// The committed baseline, relative to the repository.
pub const BASELINE_PATH: &str = "proto/baseline/caseshare_v1.binpb";
/// The generated schema reference, relative to the repository.
pub const DOCS_PATH: &str = "docs/SCHEMA.md";
/// The JSON example of each event type, relative to the repository.
pub const EXAMPLES_DIR: &str = "examples/events";

/// Why a schema command could not run (as opposed to the problems it found).
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The v1 directory holds no `.proto` file.
    #[error("no .proto files in {}", .0.display())]
    NoProtoFiles(PathBuf),
    /// protox rejected the schema.
    #[error("the schema does not compile: {0}")]
    Compile(String),
    /// The baseline is not an encoded `FileDescriptorSet`.
    #[error("{}: not a FileDescriptorSet: {source}", path.display())]
    Decode {
        /// The baseline file.
        path: PathBuf,
        /// The decoding error.
        #[source]
        source: prost::DecodeError,
    },
    /// `baseline` refused: the schema fails its lint rules.
    #[error("refusing to write the baseline; fix these first:\n{}", .0.join("\n"))]
    Lint(Vec<String>),
    /// `baseline` refused: the schema breaks the existing baseline.
    #[error(
        "refusing to write the baseline over breaking changes (v1 must stay compatible):\n{}",
        .0.join("\n")
    )]
    Breaking(Vec<String>),
    /// The docs could not be generated (a missing or invalid example, or an
    /// event type without its payload field).
    #[error("{0}")]
    Docs(String),
}

/// Maps an I/O error on `path` to [`SchemaError::Io`].
pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SchemaError + '_ {
    move |source| SchemaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What `caseshare-schema check` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Breaking changes against the baseline, each prefixed `breaking:`.
    pub breaking: Vec<String>,
    /// Lint problems in the current schema, each prefixed `lint:`.
    pub lint: Vec<String>,
    /// Compatible additions not yet in the baseline (informational).
    pub additions: Vec<String>,
}

impl CheckReport {
    /// Every problem: the breaking changes, then the lint problems. Empty
    /// means the check passes.
    pub fn problems(&self) -> Vec<String> {
        self.breaking.iter().chain(&self.lint).cloned().collect()
    }
}

/// What `caseshare-schema baseline` wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BaselineReport {
    /// Compatible additions newly locked in by the baseline.
    pub additions: Vec<String>,
    /// Breaking changes accepted (only ever non-empty from
    /// [`baseline_allowing_breaking`]).
    pub accepted_breaking: Vec<String>,
}

/// The result of comparing two descriptor sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Breaking changes, each prefixed `breaking:`.
    pub breaking: Vec<String>,
    /// Compatible additions, each prefixed `added`.
    pub additions: Vec<String>,
}
