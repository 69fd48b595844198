//! An index of the elements of a descriptor set: every message, enum and
//! service (nested ones included) by full name, with its file and its
//! source-info path, and what the rules and the docs ask of fields and RPCs
//! (map entries, oneofs, cardinality, type names, streaming modes).

use std::collections::HashMap;

use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{
    DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorProto,
    FileDescriptorSet, MethodDescriptorProto, ServiceDescriptorProto,
};

// Field numbers of the descriptor messages, as used in source-info paths.
const FILE_MESSAGE: i32 = 4;
const FILE_ENUM: i32 = 5;
const FILE_SERVICE: i32 = 6;
pub(crate) const FILE_SYNTAX: i32 = 12;
pub(crate) const MESSAGE_FIELD: i32 = 2;
const MESSAGE_NESTED: i32 = 3;
const MESSAGE_ENUM: i32 = 4;
pub(crate) const MESSAGE_ONEOF: i32 = 8;
pub(crate) const ENUM_VALUE: i32 = 2;
pub(crate) const SERVICE_METHOD: i32 = 2;

/// A message, with its file and source-info path.
pub(crate) struct Msg<'a> {
    pub(crate) full: String,
    pub(crate) file: &'a FileDescriptorProto,
    pub(crate) desc: &'a DescriptorProto,
    pub(crate) path: Vec<i32>,
}

/// An enum, with its file and source-info path.
pub(crate) struct Enm<'a> {
    pub(crate) full: String,
    pub(crate) file: &'a FileDescriptorProto,
    pub(crate) desc: &'a EnumDescriptorProto,
    pub(crate) path: Vec<i32>,
}

/// A service, with its file and source-info path.
pub(crate) struct Svc<'a> {
    pub(crate) full: String,
    pub(crate) file: &'a FileDescriptorProto,
    pub(crate) desc: &'a ServiceDescriptorProto,
    pub(crate) path: Vec<i32>,
}

/// Every message, enum and service of a set (nested ones included), in file
/// and declaration order, by full name.
#[derive(Default)]
pub(crate) struct Index<'a> {
    pub(crate) messages: Vec<Msg<'a>>,
    pub(crate) enums: Vec<Enm<'a>>,
    pub(crate) services: Vec<Svc<'a>>,
    message_at: HashMap<String, usize>,
    enum_at: HashMap<String, usize>,
    service_at: HashMap<String, usize>,
}

/// A declaration index as a source-info path element.
pub(crate) fn idx(i: usize) -> i32 {
    i32::try_from(i).unwrap_or(i32::MAX)
}

/// `prefix.name`, or `name` at the top level.
fn qualify(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

impl<'a> Index<'a> {
    /// Indexes every element of `set`.
    pub(crate) fn new(set: &'a FileDescriptorSet) -> Self {
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

    /// Adds a message and, recursively, its nested messages and enums.
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

    /// Adds an enum.
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

    /// A message by full name.
    pub(crate) fn message(&self, full: &str) -> Option<&Msg<'a>> {
        self.message_at
            .get(full)
            .and_then(|&i| self.messages.get(i))
    }

    /// An enum by full name.
    pub(crate) fn enumeration(&self, full: &str) -> Option<&Enm<'a>> {
        self.enum_at.get(full).and_then(|&i| self.enums.get(i))
    }

    /// A service by full name.
    pub(crate) fn service(&self, full: &str) -> Option<&Svc<'a>> {
        self.service_at
            .get(full)
            .and_then(|&i| self.services.get(i))
    }
}

/// Whether a message is a synthesised map entry.
pub(crate) fn is_map_entry(m: &DescriptorProto) -> bool {
    m.options
        .as_ref()
        .and_then(|o| o.map_entry)
        .unwrap_or(false)
}

/// The real (not proto3-`optional` synthetic) oneof a field belongs to.
pub(crate) fn oneof_of<'a>(
    msg: &'a DescriptorProto,
    field: &FieldDescriptorProto,
) -> Option<&'a str> {
    if field.proto3_optional() {
        return None;
    }
    let i = usize::try_from(field.oneof_index?).ok()?;
    msg.oneof_decl.get(i).map(|o| o.name())
}

/// A field's cardinality as the rules and the docs name it.
pub(crate) fn cardinality(
    file: &FileDescriptorProto,
    field: &FieldDescriptorProto,
) -> &'static str {
    match field.label() {
        Label::Repeated => "repeated",
        Label::Required => "required",
        Label::Optional if field.proto3_optional() => "optional",
        Label::Optional if file.syntax() == "proto3" => "singular",
        Label::Optional => "optional",
    }
}

/// A scalar type as written in the schema.
pub(crate) fn scalar_name(t: Type) -> &'static str {
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
pub(crate) fn type_label(field: &FieldDescriptorProto) -> String {
    match field.r#type() {
        Type::Message | Type::Enum | Type::Group => {
            field.type_name().trim_start_matches('.').to_string()
        }
        t => scalar_name(t).to_string(),
    }
}

/// An RPC's streaming mode, in words.
pub(crate) fn streaming_mode(m: &MethodDescriptorProto) -> &'static str {
    match (m.client_streaming(), m.server_streaming()) {
        (false, false) => "unary",
        (true, false) => "client streaming",
        (false, true) => "server streaming",
        (true, true) => "bidirectional streaming",
    }
}
