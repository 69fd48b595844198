//! Compiling the v1 `.proto` files at run time with protox (keeping their
//! comments), and reading and normalising baseline descriptor sets.

use std::path::Path;

use prost::Message as _;
use prost_types::{FileDescriptorProto, FileDescriptorSet};
use protox::prost_reflect::DescriptorPool;

use crate::{SchemaError, V1_DIR, io_err};

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

/// A protox error as [`SchemaError::Compile`], naming the file.
fn compile_err(err: &protox::Error) -> SchemaError {
    match err.file() {
        Some(file) => SchemaError::Compile(format!("{file}: {err}")),
        None => SchemaError::Compile(err.to_string()),
    }
}

/// Compiles the v1 files with their comments; the set holds only the v1
/// files (no `google/protobuf/*` imports), in dependency order.
pub(crate) fn compile_full(
    proto_dir: &Path,
) -> Result<(FileDescriptorSet, DescriptorPool), SchemaError> {
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

/// Reads a baseline written by [`crate::baseline`].
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
