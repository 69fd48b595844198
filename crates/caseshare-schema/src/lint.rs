//! The lint rules (versioned package matching its directory,
//! `*_UNSPECIFIED` enum zero values, `lower_snake_case` names, a leading
//! comment on every element) and reading the comments they check, which
//! the docs reuse.

use std::collections::HashMap;

use prost_types::source_code_info::Location;
use prost_types::{FileDescriptorProto, FileDescriptorSet};

use crate::index::{ENUM_VALUE, Index, MESSAGE_FIELD, SERVICE_METHOD, idx, is_map_entry};

/// The source-info location of each element, by (file, path).
pub(crate) type Comments<'a> = HashMap<(&'a str, Vec<i32>), &'a Location>;

/// Every element's source-info location in `set`.
pub(crate) fn comments(set: &FileDescriptorSet) -> Comments<'_> {
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
pub(crate) fn leading<'a>(
    comments: &Comments<'a>,
    file: &'a FileDescriptorProto,
    path: &[i32],
) -> String {
    comments
        .get(&(file.name(), path.to_vec()))
        .and_then(|l| l.leading_comments.as_deref())
        .map(tidy_comment)
        .unwrap_or_default()
}

/// A raw comment without its leading spaces and trailing blank lines.
fn tidy_comment(raw: &str) -> String {
    raw.lines()
        .map(|l| l.strip_prefix(' ').unwrap_or(l).trim_end())
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_string()
}

/// Whether a name is `lower_snake_case`.
fn is_lower_snake(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.contains("__")
        && !name.ends_with('_')
}

/// Whether a package's last component is a version (`v1`, `v2beta1`, …).
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

/// A `CamelCase` name in `UPPER_SNAKE_CASE`.
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
