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

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::source_code_info::Location;
use prost_types::{
    DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorProto,
    FileDescriptorSet, MethodDescriptorProto, ServiceDescriptorProto,
};
use protox::prost_reflect::{DescriptorPool, DynamicMessage};

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

/// The message every event is carried in, and its payload oneof.
const CASE_EVENT: &str = "caseshare.v1.CaseEvent";
const PAYLOAD_ONEOF: &str = "payload";

// Field numbers of the descriptor messages, as used in source-info paths.
const FILE_MESSAGE: i32 = 4;
const FILE_ENUM: i32 = 5;
const FILE_SERVICE: i32 = 6;
const FILE_SYNTAX: i32 = 12;
const MESSAGE_FIELD: i32 = 2;
const MESSAGE_NESTED: i32 = 3;
const MESSAGE_ENUM: i32 = 4;
const MESSAGE_ONEOF: i32 = 8;
const ENUM_VALUE: i32 = 2;
const SERVICE_METHOD: i32 = 2;

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

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SchemaError + '_ {
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

// ---------------------------------------------------------------------------
// Compiling and loading

/// The `.proto` files of the v1 package, as names relative to `proto_dir`
/// (`caseshare/v1/admin.proto`, …), sorted.
pub fn proto_files(proto_dir: &Path) -> Result<Vec<String>, SchemaError> {
    let dir = proto_dir.join(V1_DIR);
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
        let path = entry.map_err(io_err(&dir))?.path();
        if path.extension().is_some_and(|e| e == "proto")
            && let Some(file) = path.file_name().and_then(|n| n.to_str())
        {
            names.push(format!("{V1_DIR}/{file}"));
        }
    }
    if names.is_empty() {
        return Err(SchemaError::NoProtoFiles(dir));
    }
    names.sort();
    Ok(names)
}

fn compile_err(err: &protox::Error) -> SchemaError {
    match err.file() {
        Some(file) => SchemaError::Compile(format!("{file}: {err}")),
        None => SchemaError::Compile(err.to_string()),
    }
}

/// Compiles the v1 files with their comments; the set holds only the v1
/// files (no `google/protobuf/*` imports), in dependency order.
fn compile_full(proto_dir: &Path) -> Result<(FileDescriptorSet, DescriptorPool), SchemaError> {
    let files = proto_files(proto_dir)?;
    let mut compiler = protox::Compiler::new([proto_dir]).map_err(|e| compile_err(&e))?;
    compiler
        .include_source_info(true)
        .include_imports(false)
        .open_files(&files)
        .map_err(|e| compile_err(&e))?;
    Ok((compiler.file_descriptor_set(), compiler.descriptor_pool()))
}

/// Compiles `proto_dir/caseshare/v1/*.proto` with source info (comments).
pub fn compile(proto_dir: &Path) -> Result<FileDescriptorSet, SchemaError> {
    compile_full(proto_dir).map(|(set, _)| set)
}

/// Reads a baseline written by [`baseline`].
pub fn load_baseline(path: &Path) -> Result<FileDescriptorSet, SchemaError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    FileDescriptorSet::decode(bytes.as_slice()).map_err(|source| SchemaError::Decode {
        path: path.to_path_buf(),
        source,
    })
}

/// The baseline form of a descriptor set: the same files without source
/// info, so comment edits never change it.
pub fn strip_source_info(set: &FileDescriptorSet) -> FileDescriptorSet {
    FileDescriptorSet {
        file: set
            .file
            .iter()
            .map(|f| FileDescriptorProto {
                source_code_info: None,
                ..f.clone()
            })
            .collect(),
    }
}

// ---------------------------------------------------------------------------
// The commands

/// `caseshare-schema check`: the breaking changes against the baseline, the
/// lint problems, and (informational) the additions not yet in the baseline.
///
/// A schema that protox rejects only because a field or enum value uses a
/// reserved number or name is reported as problems naming that element;
/// any other compile failure is an `Err`.
pub fn check_report(proto_dir: &Path, baseline_path: &Path) -> Result<CheckReport, SchemaError> {
    let base = load_baseline(baseline_path)?;
    let current = match compile(proto_dir) {
        Ok(set) => set,
        Err(err) => {
            let conflicts = reserved_conflicts_in_sources(proto_dir);
            if conflicts.is_empty() {
                return Err(err);
            }
            let mut breaking = conflicts;
            breaking.push(format!("error: {err}"));
            return Ok(CheckReport {
                breaking,
                ..CheckReport::default()
            });
        }
    };
    let comparison = compare(&base, &current);
    Ok(CheckReport {
        breaking: comparison.breaking,
        lint: lint(&current),
        additions: comparison.additions,
    })
}

/// `caseshare-schema check`: every problem (breaking changes, then lint
/// problems), one line each; empty means the schema passes.
pub fn check(proto_dir: &Path, baseline_path: &Path) -> Result<Vec<String>, SchemaError> {
    check_report(proto_dir, baseline_path).map(|r| r.problems())
}

/// `caseshare-schema baseline`: writes the current schema as the new
/// baseline. Refuses while the schema fails its lint rules or breaks the
/// existing baseline (if there is one).
pub fn baseline(proto_dir: &Path, baseline_path: &Path) -> Result<BaselineReport, SchemaError> {
    write_baseline(proto_dir, baseline_path, false)
}

/// `caseshare-schema baseline --allow-breaking`: as [`baseline`], but
/// accepts breaking changes against the existing baseline and lists them.
/// Only for a schema no agency has built against yet.
pub fn baseline_allowing_breaking(
    proto_dir: &Path,
    baseline_path: &Path,
) -> Result<BaselineReport, SchemaError> {
    write_baseline(proto_dir, baseline_path, true)
}

fn write_baseline(
    proto_dir: &Path,
    baseline_path: &Path,
    allow_breaking: bool,
) -> Result<BaselineReport, SchemaError> {
    let current = compile(proto_dir)?;
    let problems = lint(&current);
    if !problems.is_empty() {
        return Err(SchemaError::Lint(problems));
    }
    let comparison = if baseline_path.exists() {
        compare(&load_baseline(baseline_path)?, &current)
    } else {
        Comparison::default()
    };
    if !comparison.breaking.is_empty() && !allow_breaking {
        return Err(SchemaError::Breaking(comparison.breaking));
    }
    if let Some(parent) = baseline_path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let bytes = strip_source_info(&current).encode_to_vec();
    std::fs::write(baseline_path, bytes).map_err(io_err(baseline_path))?;
    Ok(BaselineReport {
        additions: comparison.additions,
        accepted_breaking: comparison.breaking,
    })
}

// ---------------------------------------------------------------------------
// An index of the elements of a descriptor set

struct Msg<'a> {
    full: String,
    file: &'a FileDescriptorProto,
    desc: &'a DescriptorProto,
    path: Vec<i32>,
}

struct Enm<'a> {
    full: String,
    file: &'a FileDescriptorProto,
    desc: &'a EnumDescriptorProto,
    path: Vec<i32>,
}

struct Svc<'a> {
    full: String,
    file: &'a FileDescriptorProto,
    desc: &'a ServiceDescriptorProto,
    path: Vec<i32>,
}

/// Every message, enum and service of a set (nested ones included), in file
/// and declaration order, by full name.
#[derive(Default)]
struct Index<'a> {
    messages: Vec<Msg<'a>>,
    enums: Vec<Enm<'a>>,
    services: Vec<Svc<'a>>,
    message_at: HashMap<String, usize>,
    enum_at: HashMap<String, usize>,
    service_at: HashMap<String, usize>,
}

fn idx(i: usize) -> i32 {
    i32::try_from(i).unwrap_or(i32::MAX)
}

fn qualify(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

impl<'a> Index<'a> {
    fn new(set: &'a FileDescriptorSet) -> Self {
        let mut index = Index::default();
        for file in &set.file {
            let package = file.package();
            for (i, m) in file.message_type.iter().enumerate() {
                index.add_message(file, m, package, vec![FILE_MESSAGE, idx(i)]);
            }
            for (i, e) in file.enum_type.iter().enumerate() {
                index.add_enum(file, e, package, vec![FILE_ENUM, idx(i)]);
            }
            for (i, s) in file.service.iter().enumerate() {
                let full = qualify(package, s.name());
                index.service_at.insert(full.clone(), index.services.len());
                index.services.push(Svc {
                    full,
                    file,
                    desc: s,
                    path: vec![FILE_SERVICE, idx(i)],
                });
            }
        }
        index
    }

    fn add_message(
        &mut self,
        file: &'a FileDescriptorProto,
        desc: &'a DescriptorProto,
        prefix: &str,
        path: Vec<i32>,
    ) {
        let full = qualify(prefix, desc.name());
        self.message_at.insert(full.clone(), self.messages.len());
        self.messages.push(Msg {
            full: full.clone(),
            file,
            desc,
            path: path.clone(),
        });
        for (i, m) in desc.nested_type.iter().enumerate() {
            let mut p = path.clone();
            p.extend([MESSAGE_NESTED, idx(i)]);
            self.add_message(file, m, &full, p);
        }
        for (i, e) in desc.enum_type.iter().enumerate() {
            let mut p = path.clone();
            p.extend([MESSAGE_ENUM, idx(i)]);
            self.add_enum(file, e, &full, p);
        }
    }

    fn add_enum(
        &mut self,
        file: &'a FileDescriptorProto,
        desc: &'a EnumDescriptorProto,
        prefix: &str,
        path: Vec<i32>,
    ) {
        let full = qualify(prefix, desc.name());
        self.enum_at.insert(full.clone(), self.enums.len());
        self.enums.push(Enm {
            full,
            file,
            desc,
            path,
        });
    }

    fn message(&self, full: &str) -> Option<&Msg<'a>> {
        self.message_at
            .get(full)
            .and_then(|&i| self.messages.get(i))
    }

    fn enumeration(&self, full: &str) -> Option<&Enm<'a>> {
        self.enum_at.get(full).and_then(|&i| self.enums.get(i))
    }

    fn service(&self, full: &str) -> Option<&Svc<'a>> {
        self.service_at
            .get(full)
            .and_then(|&i| self.services.get(i))
    }
}

fn is_map_entry(m: &DescriptorProto) -> bool {
    m.options
        .as_ref()
        .and_then(|o| o.map_entry)
        .unwrap_or(false)
}

/// The real (not proto3-`optional` synthetic) oneof a field belongs to.
fn oneof_of<'a>(msg: &'a DescriptorProto, field: &FieldDescriptorProto) -> Option<&'a str> {
    if field.proto3_optional() {
        return None;
    }
    let i = usize::try_from(field.oneof_index?).ok()?;
    msg.oneof_decl.get(i).map(|o| o.name())
}

fn cardinality(file: &FileDescriptorProto, field: &FieldDescriptorProto) -> &'static str {
    match field.label() {
        Label::Repeated => "repeated",
        Label::Required => "required",
        Label::Optional if field.proto3_optional() => "optional",
        Label::Optional if file.syntax() == "proto3" => "singular",
        Label::Optional => "optional",
    }
}

fn scalar_name(t: Type) -> &'static str {
    match t {
        Type::Double => "double",
        Type::Float => "float",
        Type::Int64 => "int64",
        Type::Uint64 => "uint64",
        Type::Int32 => "int32",
        Type::Fixed64 => "fixed64",
        Type::Fixed32 => "fixed32",
        Type::Bool => "bool",
        Type::String => "string",
        Type::Group => "group",
        Type::Message => "message",
        Type::Bytes => "bytes",
        Type::Uint32 => "uint32",
        Type::Enum => "enum",
        Type::Sfixed32 => "sfixed32",
        Type::Sfixed64 => "sfixed64",
        Type::Sint32 => "sint32",
        Type::Sint64 => "sint64",
    }
}

/// A field's type as written in the schema, fully qualified.
fn type_label(field: &FieldDescriptorProto) -> String {
    match field.r#type() {
        Type::Message | Type::Enum | Type::Group => {
            field.type_name().trim_start_matches('.').to_string()
        }
        t => scalar_name(t).to_string(),
    }
}

fn streaming_mode(m: &MethodDescriptorProto) -> &'static str {
    match (m.client_streaming(), m.server_streaming()) {
        (false, false) => "unary",
        (true, false) => "client streaming",
        (false, true) => "server streaming",
        (true, true) => "bidirectional streaming",
    }
}

fn push_unique(out: &mut Vec<String>, line: String) {
    if !out.contains(&line) {
        out.push(line);
    }
}

// ---------------------------------------------------------------------------
// Breaking changes

/// Compares a schema with its baseline: every breaking change, and every
/// compatible addition.
pub fn compare(baseline: &FileDescriptorSet, current: &FileDescriptorSet) -> Comparison {
    let base = Index::new(baseline);
    let cur = Index::new(current);
    let mut out = Comparison::default();

    for bm in &base.messages {
        match cur.message(&bm.full) {
            None => out
                .breaking
                .push(format!("breaking: removed message {}", bm.full)),
            Some(cm) => compare_message(bm, cm, &mut out),
        }
    }
    for cm in &cur.messages {
        if base.message(&cm.full).is_none() && !is_map_entry(cm.desc) {
            out.additions.push(format!("added message {}", cm.full));
        }
    }

    for be in &base.enums {
        match cur.enumeration(&be.full) {
            None => out
                .breaking
                .push(format!("breaking: removed enum {}", be.full)),
            Some(ce) => compare_enum(be, ce, &mut out),
        }
    }
    for ce in &cur.enums {
        if base.enumeration(&ce.full).is_none() {
            out.additions.push(format!("added enum {}", ce.full));
        }
    }

    for bs in &base.services {
        match cur.service(&bs.full) {
            None => out
                .breaking
                .push(format!("breaking: removed service {}", bs.full)),
            Some(cs) => compare_service(bs, cs, &mut out),
        }
    }
    for cs in &cur.services {
        if base.service(&cs.full).is_none() {
            out.additions.push(format!("added service {}", cs.full));
        }
    }
    out
}

fn compare_message(bm: &Msg<'_>, cm: &Msg<'_>, out: &mut Comparison) {
    let (b, c) = (bm.desc, cm.desc);
    for bf in &b.field {
        let name = bf.name();
        let full = format!("{}.{name}", bm.full);
        let same_name = c.field.iter().find(|f| f.name() == name);
        let same_number = c
            .field
            .iter()
            .find(|f| f.number() == bf.number() && f.name() != name);
        match same_name {
            None => out.breaking.push(format!(
                "breaking: removed field {full} (number {})",
                bf.number()
            )),
            Some(cf) => {
                if cf.number() != bf.number() {
                    out.breaking.push(format!(
                        "breaking: renumbered field {full}: {} -> {}",
                        bf.number(),
                        cf.number()
                    ));
                }
                let (bt, ct) = (type_label(bf), type_label(cf));
                if bt != ct {
                    out.breaking.push(format!(
                        "breaking: changed type of field {full}: {bt} -> {ct}"
                    ));
                }
                let (bc, cc) = (cardinality(bm.file, bf), cardinality(cm.file, cf));
                if bc != cc {
                    out.breaking.push(format!(
                        "breaking: changed cardinality of field {full}: {bc} -> {cc}"
                    ));
                }
                match (oneof_of(b, bf), oneof_of(c, cf)) {
                    (None, Some(o)) => out
                        .breaking
                        .push(format!("breaking: moved field {full} into oneof `{o}`")),
                    (Some(o), None) => out
                        .breaking
                        .push(format!("breaking: moved field {full} out of oneof `{o}`")),
                    (Some(x), Some(y)) if x != y => out.breaking.push(format!(
                        "breaking: moved field {full} from oneof `{x}` to oneof `{y}`"
                    )),
                    _ => {}
                }
                if let (Some(bj), Some(cj)) = (&bf.json_name, &cf.json_name)
                    && bj != cj
                {
                    out.breaking.push(format!(
                        "breaking: changed JSON name of field {full}: {bj} -> {cj}"
                    ));
                }
            }
        }
        if let Some(other) = same_number {
            out.breaking.push(format!(
                "breaking: field number {} of {} reused by a different name: `{name}` is now `{}`",
                bf.number(),
                bm.full,
                other.name()
            ));
        }
    }
    for cf in &c.field {
        if !b.field.iter().any(|f| f.name() == cf.name()) && !is_map_entry(c) {
            out.additions.push(format!(
                "added field {}.{} (number {})",
                cm.full,
                cf.name(),
                cf.number()
            ));
        }
    }

    // Reservations: what the baseline reserved stays reserved and unused.
    let b_ranges: Vec<(i32, i32)> = b
        .reserved_range
        .iter()
        .map(|r| (r.start(), r.end()))
        .collect();
    let c_ranges: Vec<(i32, i32)> = c
        .reserved_range
        .iter()
        .map(|r| (r.start(), r.end()))
        .collect();
    let numbered: Vec<(&str, i32)> = c.field.iter().map(|f| (f.name(), f.number())).collect();
    reserved_reuse(
        "field",
        &cm.full,
        &numbered,
        &b_ranges,
        &b.reserved_name,
        &mut out.breaking,
    );
    reserved_reuse(
        "field",
        &cm.full,
        &numbered,
        &c_ranges,
        &c.reserved_name,
        &mut out.breaking,
    );
    dropped_reservations(
        &bm.full,
        &b_ranges,
        &c_ranges,
        &b.reserved_name,
        &c.reserved_name,
        &mut out.breaking,
    );
}

/// Elements (`kind` = field or enum value) of `parent` that use a reserved
/// number (half-open ranges) or name.
fn reserved_reuse(
    kind: &str,
    parent: &str,
    elements: &[(&str, i32)],
    ranges: &[(i32, i32)],
    names: &[String],
    out: &mut Vec<String>,
) {
    for &(name, number) in elements {
        if ranges.iter().any(|&(s, e)| s <= number && number < e) {
            push_unique(
                out,
                format!("breaking: {kind} {parent}.{name} reuses reserved number {number}"),
            );
        }
        if names.iter().any(|n| n == name) {
            push_unique(
                out,
                format!("breaking: {kind} {parent}.{name} reuses reserved name `{name}`"),
            );
        }
    }
}

/// Reservations (half-open ranges, names) of the baseline that the current
/// schema no longer has.
fn dropped_reservations(
    parent: &str,
    base_ranges: &[(i32, i32)],
    cur_ranges: &[(i32, i32)],
    base_names: &[String],
    cur_names: &[String],
    out: &mut Vec<String>,
) {
    for &(s, e) in base_ranges {
        if !range_covered(s, e, cur_ranges) {
            let what = if e - s == 1 {
                format!("number {s}")
            } else {
                format!("numbers {s} to {}", e.saturating_sub(1))
            };
            out.push(format!(
                "breaking: removed the reservation of {what} in {parent}"
            ));
        }
    }
    for name in base_names {
        if !cur_names.contains(name) {
            out.push(format!(
                "breaking: removed the reservation of name `{name}` in {parent}"
            ));
        }
    }
}

/// Whether the half-open range `[s, e)` is inside the union of `ranges`.
fn range_covered(s: i32, e: i32, ranges: &[(i32, i32)]) -> bool {
    let mut sorted = ranges.to_vec();
    sorted.sort_unstable();
    let mut next = s;
    for (rs, re) in sorted {
        if rs <= next && re > next {
            next = re;
        }
        if next >= e {
            return true;
        }
    }
    next >= e
}

fn enum_ranges(e: &EnumDescriptorProto) -> Vec<(i32, i32)> {
    // Enum reserved ranges are inclusive; make them half-open.
    e.reserved_range
        .iter()
        .map(|r| (r.start(), r.end().saturating_add(1)))
        .collect()
}

fn compare_enum(be: &Enm<'_>, ce: &Enm<'_>, out: &mut Comparison) {
    let (b, c) = (be.desc, ce.desc);
    for bv in &b.value {
        let name = bv.name();
        let full = format!("{}.{name}", be.full);
        match c.value.iter().find(|v| v.name() == name) {
            None => {
                let reused = c
                    .value
                    .iter()
                    .find(|v| v.number() == bv.number())
                    .map(|v| format!("; number {} is now `{}`", bv.number(), v.name()))
                    .unwrap_or_default();
                out.breaking.push(format!(
                    "breaking: removed enum value {full} (number {}{reused})",
                    bv.number()
                ));
            }
            Some(cv) if cv.number() != bv.number() => out.breaking.push(format!(
                "breaking: renumbered enum value {full}: {} -> {}",
                bv.number(),
                cv.number()
            )),
            Some(_) => {}
        }
    }
    for cv in &c.value {
        if !b.value.iter().any(|v| v.name() == cv.name()) {
            out.additions.push(format!(
                "added enum value {}.{} (number {})",
                ce.full,
                cv.name(),
                cv.number()
            ));
        }
    }
    let (b_ranges, c_ranges) = (enum_ranges(b), enum_ranges(c));
    let numbered: Vec<(&str, i32)> = c.value.iter().map(|v| (v.name(), v.number())).collect();
    reserved_reuse(
        "enum value",
        &ce.full,
        &numbered,
        &b_ranges,
        &b.reserved_name,
        &mut out.breaking,
    );
    reserved_reuse(
        "enum value",
        &ce.full,
        &numbered,
        &c_ranges,
        &c.reserved_name,
        &mut out.breaking,
    );
    dropped_reservations(
        &be.full,
        &b_ranges,
        &c_ranges,
        &b.reserved_name,
        &c.reserved_name,
        &mut out.breaking,
    );
}

fn compare_service(bs: &Svc<'_>, cs: &Svc<'_>, out: &mut Comparison) {
    for bm in &bs.desc.method {
        let full = format!("{}.{}", bs.full, bm.name());
        let Some(cm) = cs.desc.method.iter().find(|m| m.name() == bm.name()) else {
            out.breaking.push(format!("breaking: removed RPC {full}"));
            continue;
        };
        let strip = |s: &str| s.trim_start_matches('.').to_string();
        if bm.input_type() != cm.input_type() {
            out.breaking.push(format!(
                "breaking: changed request type of RPC {full}: {} -> {}",
                strip(bm.input_type()),
                strip(cm.input_type())
            ));
        }
        if bm.output_type() != cm.output_type() {
            out.breaking.push(format!(
                "breaking: changed response type of RPC {full}: {} -> {}",
                strip(bm.output_type()),
                strip(cm.output_type())
            ));
        }
        let (bmode, cmode) = (streaming_mode(bm), streaming_mode(cm));
        if bmode != cmode {
            out.breaking.push(format!(
                "breaking: changed streaming of RPC {full}: {bmode} -> {cmode}"
            ));
        }
    }
    for cm in &cs.desc.method {
        if !bs.desc.method.iter().any(|m| m.name() == cm.name()) {
            out.additions
                .push(format!("added RPC {}.{}", cs.full, cm.name()));
        }
    }
}

/// When protox rejects the schema, parse the files without checking them
/// and report fields and enum values that use a number or name their own
/// message or enum reserves (protox's own message does not name them).
fn reserved_conflicts_in_sources(proto_dir: &Path) -> Vec<String> {
    let Ok(names) = proto_files(proto_dir) else {
        return Vec::new();
    };
    let set = FileDescriptorSet {
        file: names
            .iter()
            .filter_map(|name| {
                protox::file::File::open(name, &proto_dir.join(name))
                    .ok()
                    .map(|f| f.file_descriptor_proto().clone())
            })
            .collect(),
    };
    let index = Index::new(&set);
    let mut out = Vec::new();
    for m in &index.messages {
        let ranges: Vec<(i32, i32)> = m
            .desc
            .reserved_range
            .iter()
            .map(|r| (r.start(), r.end()))
            .collect();
        let fields: Vec<(&str, i32)> = m
            .desc
            .field
            .iter()
            .map(|f| (f.name(), f.number()))
            .collect();
        reserved_reuse(
            "field",
            &m.full,
            &fields,
            &ranges,
            &m.desc.reserved_name,
            &mut out,
        );
    }
    for e in &index.enums {
        let values: Vec<(&str, i32)> = e
            .desc
            .value
            .iter()
            .map(|v| (v.name(), v.number()))
            .collect();
        reserved_reuse(
            "enum value",
            &e.full,
            &values,
            &enum_ranges(e.desc),
            &e.desc.reserved_name,
            &mut out,
        );
    }
    out
}

// ---------------------------------------------------------------------------
// Lint

type Comments<'a> = HashMap<(&'a str, Vec<i32>), &'a Location>;

fn comments(set: &FileDescriptorSet) -> Comments<'_> {
    let mut map = HashMap::new();
    for file in &set.file {
        if let Some(info) = &file.source_code_info {
            for loc in &info.location {
                map.insert((file.name(), loc.path.clone()), loc);
            }
        }
    }
    map
}

/// The leading comment of the element at `path`, tidied: one leading space
/// removed from each line, trailing blank lines dropped.
fn leading<'a>(comments: &Comments<'a>, file: &'a FileDescriptorProto, path: &[i32]) -> String {
    comments
        .get(&(file.name(), path.to_vec()))
        .and_then(|l| l.leading_comments.as_deref())
        .map(tidy_comment)
        .unwrap_or_default()
}

fn tidy_comment(raw: &str) -> String {
    raw.lines()
        .map(|l| l.strip_prefix(' ').unwrap_or(l).trim_end())
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_string()
}

fn is_lower_snake(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.contains("__")
        && !name.ends_with('_')
}

fn is_versioned(package: &str) -> bool {
    let Some(last) = package.rsplit('.').next() else {
        return false;
    };
    let Some(rest) = last.strip_prefix('v') else {
        return false;
    };
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    if digits == 0 || rest.starts_with('0') {
        return false;
    }
    let suffix = &rest[digits..];
    suffix.is_empty()
        || ["alpha", "beta"].iter().any(|s| {
            suffix
                .strip_prefix(s)
                .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
        })
}

fn upper_snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// The lint rules over a schema compiled with source info.
pub fn lint(set: &FileDescriptorSet) -> Vec<String> {
    let index = Index::new(set);
    let comments = comments(set);
    let mut out = Vec::new();

    for file in &set.file {
        let package = file.package();
        if !is_versioned(package) {
            out.push(format!(
                "lint: file {}: package `{package}` is not versioned (its last component must be like `v1`)",
                file.name()
            ));
        }
        let dir = file
            .name()
            .rsplit_once('/')
            .map(|(d, _)| d.replace('/', "."))
            .unwrap_or_default();
        if package != dir {
            out.push(format!(
                "lint: file {}: package `{package}` does not match its directory (expected `{dir}`)",
                file.name()
            ));
        }
    }

    let mut missing = |kind: &str, full: &str, file: &FileDescriptorProto, path: &[i32]| {
        if leading(&comments, file, path).is_empty() {
            out.push(format!("lint: {kind} {full}: missing leading comment"));
        }
    };
    for m in &index.messages {
        if is_map_entry(m.desc) {
            continue;
        }
        missing("message", &m.full, m.file, &m.path);
        for (i, f) in m.desc.field.iter().enumerate() {
            let mut p = m.path.clone();
            p.extend([MESSAGE_FIELD, idx(i)]);
            missing("field", &format!("{}.{}", m.full, f.name()), m.file, &p);
        }
    }
    for e in &index.enums {
        missing("enum", &e.full, e.file, &e.path);
        for (i, v) in e.desc.value.iter().enumerate() {
            let mut p = e.path.clone();
            p.extend([ENUM_VALUE, idx(i)]);
            missing(
                "enum value",
                &format!("{}.{}", e.full, v.name()),
                e.file,
                &p,
            );
        }
    }
    for s in &index.services {
        missing("service", &s.full, s.file, &s.path);
        for (i, m) in s.desc.method.iter().enumerate() {
            let mut p = s.path.clone();
            p.extend([SERVICE_METHOD, idx(i)]);
            missing("RPC", &format!("{}.{}", s.full, m.name()), s.file, &p);
        }
    }

    for e in &index.enums {
        match e.desc.value.iter().find(|v| v.number() == 0) {
            Some(zero) if zero.name().ends_with("_UNSPECIFIED") => {}
            Some(zero) => out.push(format!(
                "lint: enum value {}.{}: the zero value of enum {} must be named `*_UNSPECIFIED` (e.g. `{}_UNSPECIFIED`)",
                e.full,
                zero.name(),
                e.full,
                upper_snake(e.desc.name())
            )),
            None => out.push(format!(
                "lint: enum {}: has no zero value (it must be `{}_UNSPECIFIED = 0`)",
                e.full,
                upper_snake(e.desc.name())
            )),
        }
    }

    for m in &index.messages {
        if is_map_entry(m.desc) {
            continue;
        }
        for f in &m.desc.field {
            if !is_lower_snake(f.name()) {
                out.push(format!(
                    "lint: field {}.{}: name is not lower_snake_case",
                    m.full,
                    f.name()
                ));
            }
        }
        for (i, o) in m.desc.oneof_decl.iter().enumerate() {
            let synthetic = m
                .desc
                .field
                .iter()
                .any(|f| f.proto3_optional() && f.oneof_index == Some(idx(i)));
            if !synthetic && !is_lower_snake(o.name()) {
                out.push(format!(
                    "lint: oneof {}.{}: name is not lower_snake_case",
                    m.full,
                    o.name()
                ));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Docs

/// Escapes text for one Markdown table cell.
fn cell(text: &str) -> String {
    text.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// The first paragraph of a comment.
fn first_paragraph(text: &str) -> String {
    cell(text.split("\n\n").next().unwrap_or_default())
}

struct Docs<'a> {
    index: Index<'a>,
    comments: Comments<'a>,
    package: String,
}

impl Docs<'_> {
    fn short<'n>(&self, full: &'n str) -> &'n str {
        full.strip_prefix(self.package.as_str())
            .and_then(|s| s.strip_prefix('.'))
            .unwrap_or(full)
    }

    /// A Markdown link to a message or enum of the schema, else its name.
    fn type_link(&self, type_name: &str) -> String {
        let full = type_name.trim_start_matches('.');
        if self.index.message(full).is_some() || self.index.enumeration(full).is_some() {
            format!("[`{}`](#{full})", self.short(full))
        } else {
            format!("`{full}`")
        }
    }

    fn field_type(&self, field: &FieldDescriptorProto) -> String {
        match field.r#type() {
            Type::Message | Type::Enum | Type::Group => {
                let full = field.type_name().trim_start_matches('.');
                if let Some(entry) = self.index.message(full).filter(|m| is_map_entry(m.desc)) {
                    let key = entry.desc.field.iter().find(|f| f.number() == 1);
                    let value = entry.desc.field.iter().find(|f| f.number() == 2);
                    if let (Some(k), Some(v)) = (key, value) {
                        return format!(
                            "map<{}, {}>",
                            self.field_type(k).trim_matches('`'),
                            self.field_type(v)
                        );
                    }
                }
                self.type_link(field.type_name())
            }
            t => format!("`{}`", scalar_name(t)),
        }
    }

    fn field_label(&self, m: &Msg<'_>, field: &FieldDescriptorProto) -> String {
        if let Some(o) = oneof_of(m.desc, field) {
            return format!("oneof `{o}`");
        }
        let is_map = field.r#type() == Type::Message
            && self
                .index
                .message(field.type_name().trim_start_matches('.'))
                .is_some_and(|e| is_map_entry(e.desc));
        if is_map {
            "map".to_string()
        } else {
            cardinality(m.file, field).to_string()
        }
    }

    fn comment(&self, file: &FileDescriptorProto, path: &[i32]) -> String {
        leading(&self.comments, file, path)
    }
}

fn rpc_signature(short: &dyn Fn(&str) -> String, m: &MethodDescriptorProto) -> String {
    let stream = |yes: bool| if yes { "stream " } else { "" };
    format!(
        "rpc {}({}{}) returns ({}{});",
        m.name(),
        stream(m.client_streaming()),
        short(m.input_type()),
        stream(m.server_streaming()),
        short(m.output_type())
    )
}

/// `caseshare-schema docs`: the Markdown of `docs/SCHEMA.md`, generated
/// from the proto comments and the event examples in `examples_dir`
/// (`<event type>.json`, each checked to parse as a `CaseEvent` carrying
/// that event type).
pub fn docs(proto_dir: &Path, examples_dir: &Path) -> Result<String, SchemaError> {
    let (set, pool) = compile_full(proto_dir)?;
    let package = set
        .file
        .first()
        .map(|f| f.package().to_string())
        .unwrap_or_default();
    let d = Docs {
        index: Index::new(&set),
        comments: comments(&set),
        package,
    };
    let mut md = String::new();
    let pkg = d.package.clone();

    // Header.
    let _ = writeln!(md, "# Caseshare schema reference: `{pkg}`");
    md.push('\n');
    let _ = writeln!(
        md,
        "<!-- Generated by `caseshare-schema docs > docs/SCHEMA.md` from proto/{V1_DIR}/*.proto and {EXAMPLES_DIR}/*.json. Do not edit by hand: the test suite fails when this file is out of date. -->"
    );
    md.push('\n');
    md.push_str(
        "The protobuf files in `proto/` are the contract between agencies: generate a client in any \
         language from them. This page is generated from their comments. Within `caseshare.v1` \
         the schema only changes compatibly (fields, messages, enum values and RPCs are added, \
         never removed, renumbered or retyped); `caseshare-schema check` enforces this against \
         the committed baseline `proto/baseline/caseshare_v1.binpb`.\n\n",
    );

    // Contents.
    md.push_str("## Contents\n\n");
    md.push_str("- [Files](#files)\n- [Services](#services)\n");
    for s in &d.index.services {
        let _ = writeln!(md, "  - [{}](#{})", s.desc.name(), s.full);
    }
    md.push_str("- [Event types](#event-types)\n- [Messages](#messages)\n- [Enums](#enums)\n\n");

    // Files.
    md.push_str("## Files\n\n| File | Description |\n| --- | --- |\n");
    for f in &set.file {
        let about = d.comment(f, &[FILE_SYNTAX]);
        let _ = writeln!(md, "| `{}` | {} |", f.name(), first_paragraph(&about));
    }
    md.push('\n');

    // Services.
    md.push_str("## Services\n\n");
    let short_type = |t: &str| d.short(t.trim_start_matches('.')).to_string();
    for s in &d.index.services {
        let _ = writeln!(md, "<a id=\"{}\"></a>\n", s.full);
        let _ = writeln!(md, "### {}\n", s.desc.name());
        let _ = writeln!(
            md,
            "Service `{}`, defined in `{}`.\n",
            s.full,
            s.file.name()
        );
        let about = d.comment(s.file, &s.path);
        if !about.is_empty() {
            let _ = writeln!(md, "{about}\n");
        }
        md.push_str("| RPC | Request | Response | Description |\n| --- | --- | --- | --- |\n");
        for (i, m) in s.desc.method.iter().enumerate() {
            let mut p = s.path.clone();
            p.extend([SERVICE_METHOD, idx(i)]);
            let stream = |yes: bool| if yes { "stream " } else { "" };
            let _ = writeln!(
                md,
                "| [`{}`](#{}.{}) | {}{} | {}{} | {} |",
                m.name(),
                s.full,
                m.name(),
                stream(m.client_streaming()),
                d.type_link(m.input_type()),
                stream(m.server_streaming()),
                d.type_link(m.output_type()),
                first_paragraph(&d.comment(s.file, &p))
            );
        }
        md.push('\n');
        for (i, m) in s.desc.method.iter().enumerate() {
            let mut p = s.path.clone();
            p.extend([SERVICE_METHOD, idx(i)]);
            let _ = writeln!(md, "<a id=\"{}.{}\"></a>\n", s.full, m.name());
            let _ = writeln!(md, "#### {}.{}\n", s.desc.name(), m.name());
            let _ = writeln!(md, "```proto\n{}\n```\n", rpc_signature(&short_type, m));
            let about = d.comment(s.file, &p);
            if !about.is_empty() {
                let _ = writeln!(md, "{about}\n");
            }
            let _ = writeln!(
                md,
                "Request: {}. Response: {} ({}).\n",
                d.type_link(m.input_type()),
                d.type_link(m.output_type()),
                streaming_mode(m)
            );
        }
    }

    // Event types.
    write_event_types(&d, &pool, examples_dir, &mut md)?;

    // Messages.
    md.push_str("## Messages\n\n");
    for m in &d.index.messages {
        if is_map_entry(m.desc) {
            continue;
        }
        write_message(&d, m, &mut md);
    }

    // Enums.
    md.push_str("## Enums\n\n");
    for e in &d.index.enums {
        let _ = writeln!(md, "<a id=\"{}\"></a>\n", e.full);
        let _ = writeln!(md, "### {}\n", d.short(&e.full));
        let _ = writeln!(md, "Enum `{}`, defined in `{}`.\n", e.full, e.file.name());
        let about = d.comment(e.file, &e.path);
        if !about.is_empty() {
            let _ = writeln!(md, "{about}\n");
        }
        md.push_str("| Value | Number | Description |\n| --- | --- | --- |\n");
        for (i, v) in e.desc.value.iter().enumerate() {
            let mut p = e.path.clone();
            p.extend([ENUM_VALUE, idx(i)]);
            let _ = writeln!(
                md,
                "| `{}` | {} | {} |",
                v.name(),
                v.number(),
                cell(&d.comment(e.file, &p))
            );
        }
        md.push('\n');
        write_reserved(&enum_ranges(e.desc), &e.desc.reserved_name, &mut md);
    }

    // One trailing newline.
    while md.ends_with("\n\n") {
        md.pop();
    }
    Ok(md)
}

fn write_reserved(ranges: &[(i32, i32)], names: &[String], md: &mut String) {
    if ranges.is_empty() && names.is_empty() {
        return;
    }
    let mut parts: Vec<String> = ranges
        .iter()
        .map(|&(s, e)| {
            if e - s == 1 {
                s.to_string()
            } else {
                format!("{s} to {}", e.saturating_sub(1))
            }
        })
        .collect();
    parts.extend(names.iter().map(|n| format!("`{n}`")));
    let _ = writeln!(md, "Reserved (never to be reused): {}.\n", parts.join(", "));
}

fn write_message(d: &Docs<'_>, m: &Msg<'_>, md: &mut String) {
    let _ = writeln!(md, "<a id=\"{}\"></a>\n", m.full);
    let _ = writeln!(md, "### {}\n", d.short(&m.full));
    let _ = writeln!(
        md,
        "Message `{}`, defined in `{}`.\n",
        m.full,
        m.file.name()
    );
    let about = d.comment(m.file, &m.path);
    if !about.is_empty() {
        let _ = writeln!(md, "{about}\n");
    }
    if m.desc.field.is_empty() {
        md.push_str("No fields.\n\n");
    } else {
        md.push_str(
            "| Field | Number | Type | Label | Description |\n| --- | --- | --- | --- | --- |\n",
        );
        for (i, f) in m.desc.field.iter().enumerate() {
            let mut p = m.path.clone();
            p.extend([MESSAGE_FIELD, idx(i)]);
            let about = [cell(&d.comment(m.file, &p)), cell(&field_bound(m, f))]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            let _ = writeln!(
                md,
                "| `{}` | {} | {} | {} | {} |",
                f.name(),
                f.number(),
                d.field_type(f),
                d.field_label(m, f),
                about
            );
        }
        md.push('\n');
    }
    for (i, o) in m.desc.oneof_decl.iter().enumerate() {
        let synthetic = m
            .desc
            .field
            .iter()
            .any(|f| f.proto3_optional() && f.oneof_index == Some(idx(i)));
        if synthetic {
            continue;
        }
        let mut p = m.path.clone();
        p.extend([MESSAGE_ONEOF, idx(i)]);
        let about = cell(&d.comment(m.file, &p));
        if about.is_empty() {
            let _ = writeln!(md, "Oneof `{}`.\n", o.name());
        } else {
            let _ = writeln!(md, "Oneof `{}`: {about}\n", o.name());
        }
    }
    let ranges: Vec<(i32, i32)> = m
        .desc
        .reserved_range
        .iter()
        .map(|r| (r.start(), r.end()))
        .collect();
    write_reserved(&ranges, &m.desc.reserved_name, md);
}

/// The bound the broker enforces on a field of a request, from the one
/// table in `caseshare-core` (`validate::limits`), as a sentence to append
/// to its description; empty when there is none.
fn field_bound(m: &Msg<'_>, f: &FieldDescriptorProto) -> String {
    if !m.full.starts_with("caseshare.v1.") {
        return String::new();
    }
    if matches!(f.r#type(), Type::Double | Type::Float) {
        return "**Limit:** a finite number (not NaN or infinity).".to_string();
    }
    match caseshare_core::validate::limits::field_limit(m.desc.name(), f.name()) {
        Some(limit) => format!("**Limit:** {}.", limit.describe()),
        None => String::new(),
    }
}

fn write_event_types(
    d: &Docs<'_>,
    pool: &DescriptorPool,
    examples_dir: &Path,
    md: &mut String,
) -> Result<(), SchemaError> {
    let event = d
        .index
        .message(CASE_EVENT)
        .ok_or_else(|| SchemaError::Docs(format!("the schema has no message {CASE_EVENT}")))?;
    let event_desc = pool
        .get_message_by_name(CASE_EVENT)
        .ok_or_else(|| SchemaError::Docs(format!("the schema has no message {CASE_EVENT}")))?;
    let types = caseshare_core::event_type::EVENT_TYPES;

    // Every payload field has an event type, and every event type a field.
    for f in &event.desc.field {
        if oneof_of(event.desc, f) == Some(PAYLOAD_ONEOF)
            && !types.iter().any(|(_, field)| *field == f.name())
        {
            return Err(SchemaError::Docs(format!(
                "{CASE_EVENT}.{} is a payload field without an event type in caseshare_core::event_type::EVENT_TYPES",
                f.name()
            )));
        }
    }

    md.push_str("## Event types\n\n");
    md.push_str(
        "A `CaseEvent` carries exactly one payload in its `payload` oneof, and the payload field \
         that is set determines the event's dotted event type; subscriptions, agreements and \
         consents select events by it (exactly, or as `prefix.*`). Each example below is proto3 \
         canonical JSON, from `examples/events/<event type>.json`: the form grpcurl-style tools \
         and every protobuf runtime's JSON parser accept.\n\n",
    );
    md.push_str("| Event type | Payload field | Payload message |\n| --- | --- | --- |\n");
    let mut rows = Vec::new();
    for &(event_type, field_name) in types {
        let field = event
            .desc
            .field
            .iter()
            .find(|f| f.name() == field_name && oneof_of(event.desc, f) == Some(PAYLOAD_ONEOF))
            .ok_or_else(|| {
                SchemaError::Docs(format!(
                    "event type {event_type}: {CASE_EVENT} has no payload field `{field_name}`"
                ))
            })?;
        let _ = writeln!(
            md,
            "| [`{event_type}`](#event-{event_type}) | `{field_name}` ({}) | {} |",
            field.number(),
            d.type_link(field.type_name())
        );
        rows.push((event_type, field));
    }
    md.push('\n');

    for (event_type, field) in rows {
        let field_name = field.name();
        let path = examples_dir.join(format!("{event_type}.json"));
        let json = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        let mut de = serde_json::Deserializer::from_str(&json);
        let parsed = DynamicMessage::deserialize(event_desc.clone(), &mut de)
            .and_then(|m| de.end().map(|()| m))
            .map_err(|e| SchemaError::Docs(format!("{}: {e}", path.display())))?;
        if !parsed.has_field_by_name(field_name) {
            return Err(SchemaError::Docs(format!(
                "{}: the example does not set payload field `{field_name}`",
                path.display()
            )));
        }
        let payload = field.type_name().trim_start_matches('.');
        let about = d
            .index
            .message(payload)
            .map(|m| d.comment(m.file, &m.path))
            .unwrap_or_default();
        let _ = writeln!(md, "<a id=\"event-{event_type}\"></a>\n");
        let _ = writeln!(md, "### {event_type}\n");
        let _ = writeln!(
            md,
            "Payload field `CaseEvent.{field_name}` ({}), message {}.\n",
            field.number(),
            d.type_link(field.type_name())
        );
        if !about.is_empty() {
            let _ = writeln!(md, "{about}\n");
        }
        let _ = writeln!(
            md,
            "Example (`examples/events/{event_type}.json`):\n\n```json\n{}\n```\n",
            json.trim_end()
        );
    }
    Ok(())
}
