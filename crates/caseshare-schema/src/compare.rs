//! The breaking-change rules: comparing a schema with its baseline message
//! by message, enum by enum and service by service, reserved numbers and
//! names, and (when protox rejects a schema) the reservation conflicts in
//! the sources.

use std::path::Path;

use prost_types::{EnumDescriptorProto, FileDescriptorSet};

use crate::Comparison;
use crate::compile::proto_files;
use crate::index::{
    Enm, Index, Msg, Svc, cardinality, is_map_entry, oneof_of, streaming_mode, type_label,
};

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

/// The breaking changes and additions between two versions of a message.
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

/// An enum's reserved ranges, made half-open.
pub(crate) fn enum_ranges(e: &EnumDescriptorProto) -> Vec<(i32, i32)> {
    // Enum reserved ranges are inclusive; make them half-open.
    e.reserved_range
        .iter()
        .map(|r| (r.start(), r.end().saturating_add(1)))
        .collect()
}

/// The breaking changes and additions between two versions of an enum.
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

/// The breaking changes and additions between two versions of a service.
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
pub(crate) fn reserved_conflicts_in_sources(proto_dir: &Path) -> Vec<String> {
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

/// Appends `line` unless it is already there.
fn push_unique(out: &mut Vec<String>, line: String) {
    if !out.contains(&line) {
        out.push(line);
    }
}
