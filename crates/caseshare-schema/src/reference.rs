//! Generating `docs/SCHEMA.md` from the proto comments and the event
//! examples: services and RPCs, one section per event type with its JSON
//! example, messages with field tables (and the bounds the broker
//! enforces), and enums. The output is deterministic.

use std::fmt::Write as _;
use std::path::Path;

use prost_types::field_descriptor_proto::Type;
use prost_types::{FieldDescriptorProto, FileDescriptorProto, MethodDescriptorProto};
use protox::prost_reflect::{DescriptorPool, DynamicMessage};

use crate::compare::enum_ranges;
use crate::compile::compile_full;
use crate::index::{
    ENUM_VALUE, FILE_SYNTAX, Index, MESSAGE_FIELD, MESSAGE_ONEOF, Msg, SERVICE_METHOD, cardinality,
    idx, is_map_entry, oneof_of, scalar_name, streaming_mode,
};
use crate::lint::{Comments, comments, leading};
use crate::{EXAMPLES_DIR, SchemaError, V1_DIR, io_err};

/// The message every event is carried in, and its payload oneof.
const CASE_EVENT: &str = "caseshare.v1.CaseEvent";
const PAYLOAD_ONEOF: &str = "payload";

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

/// What rendering the docs needs: the index, the comments and the package.
struct Docs<'a> {
    index: Index<'a>,
    comments: Comments<'a>,
    package: String,
}

impl Docs<'_> {
    /// A full name without the package prefix.
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

    /// A field's type as the field tables show it (linked, or `map<K, V>`).
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

    /// A field's label column: its oneof, `map`, or its cardinality.
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

    /// The tidied leading comment of the element at `path`.
    fn comment(&self, file: &FileDescriptorProto, path: &[i32]) -> String {
        leading(&self.comments, file, path)
    }
}

/// An RPC as a line of proto.
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

/// The "Reserved" line of a message or enum (nothing when none).
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

/// One message's section: its comment, field table, oneofs and reservations.
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

/// The event types section: the table, then each type with its example.
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
