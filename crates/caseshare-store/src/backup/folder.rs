//! Writing a backup folder as the stream arrives (`caseshare backup`): into
//! `<out>.partial-<pid>`, every file synced, renamed to `<out>` only once
//! the manifest has come and matches what was received.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use caseshare_proto::v1 as pb;
use prost::Message;
use sha2::{Digest, Sha256};

use super::{FILES_DIR, MANIFEST_JSON, MANIFEST_PB, chunk_count, write_synced};

/// A backup folder being written.
#[derive(Debug)]
pub struct Folder {
    out: PathBuf,
    tmp: PathBuf,
    current: Option<Current>,
    received: Vec<pb::BackupFile>,
    done: bool,
}

#[derive(Debug)]
struct Current {
    file: BufWriter<File>,
    digest: Sha256,
    meta: pb::BackupFile,
    chunks: u64,
}

fn bad(detail: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, detail.into())
}

impl Folder {
    /// Starts a backup folder at `out`, which must not exist.
    pub fn create(out: &Path) -> std::io::Result<Folder> {
        if out.exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists: give a new path", out.display()),
            ));
        }
        let name = out
            .file_name()
            .ok_or_else(|| bad("the output path has no file name"))?
            .to_string_lossy()
            .into_owned();
        let tmp = out.with_file_name(format!("{name}.partial-{}", std::process::id()));
        std::fs::create_dir_all(tmp.join(FILES_DIR))?;
        Ok(Folder {
            out: out.to_path_buf(),
            tmp,
            current: None,
            received: Vec::new(),
            done: false,
        })
    }

    fn close_current(&mut self) -> std::io::Result<()> {
        if let Some(mut c) = self.current.take() {
            if c.chunks != c.meta.chunks {
                return Err(bad(format!(
                    "{}: {} chunks received, {} announced",
                    c.meta.path, c.chunks, c.meta.chunks
                )));
            }
            c.file.flush()?;
            c.file.get_ref().sync_all()?;
            c.meta.sha256 = c.digest.finalize().to_vec();
            self.received.push(c.meta);
        }
        Ok(())
    }

    /// A file starts.
    pub fn file(&mut self, meta: pb::BackupFile) -> std::io::Result<()> {
        self.close_current()?;
        let Some(rel) = super::inside_store(&meta.path) else {
            return Err(bad(format!("the broker named a file {:?}", meta.path)));
        };
        if meta.chunks != chunk_count(meta.size) {
            return Err(bad(format!(
                "{}: chunk count does not fit its size",
                meta.path
            )));
        }
        let path = self.tmp.join(FILES_DIR).join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        self.current = Some(Current {
            file: BufWriter::new(File::create(path)?),
            digest: Sha256::new(),
            meta,
            chunks: 0,
        });
        Ok(())
    }

    /// The next sealed chunk of the current file.
    pub fn sealed(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        let c = self
            .current
            .as_mut()
            .ok_or_else(|| bad("a chunk came before any file"))?;
        if chunk.len() > super::seal::CHUNK_BYTES + super::seal::TAG_BYTES {
            return Err(bad("a chunk is larger than a chunk can be"));
        }
        let len = u32::try_from(chunk.len()).map_err(|_| bad("chunk too large"))?;
        c.file.write_all(&len.to_le_bytes())?;
        c.file.write_all(chunk)?;
        c.digest.update(len.to_le_bytes());
        c.digest.update(chunk);
        c.chunks += 1;
        Ok(())
    }

    /// The manifest came: checks it against what was received, writes it
    /// (with the digests) and renames the folder into place. `json` is the
    /// manifest rendered for people.
    pub fn finish(
        mut self,
        mut manifest: pb::BackupManifest,
        json: impl FnOnce(&pb::BackupManifest) -> String,
    ) -> std::io::Result<pb::BackupManifest> {
        self.close_current()?;
        if manifest.files.len() != self.received.len()
            || manifest
                .files
                .iter()
                .zip(&self.received)
                .any(|(m, r)| m.path != r.path || m.size != r.size || m.chunks != r.chunks)
        {
            return Err(bad("the manifest does not list the files received"));
        }
        manifest.files = std::mem::take(&mut self.received);
        write_synced(&self.tmp.join(MANIFEST_PB), &manifest.encode_to_vec())?;
        write_synced(&self.tmp.join(MANIFEST_JSON), json(&manifest).as_bytes())?;
        sync_tree(&self.tmp)?;
        std::fs::rename(&self.tmp, &self.out)?;
        if let Some(parent) = self.out.parent() {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            File::open(parent)?.sync_all()?;
        }
        self.done = true;
        Ok(manifest)
    }
}

/// Syncs every directory under `dir` (files are synced as they close).
fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        }
    }
    File::open(dir)?.sync_all()
}

impl Drop for Folder {
    fn drop(&mut self) {
        if !self.done {
            // An unfinished backup is not a backup: only its own partial
            // folder is removed.
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}
