//! The layer manifest: what a persisted layer contains, independent of where its bytes live.
//!
//! Paths and symlink targets are raw bytes (Unix file names need not be UTF-8). Paths are relative to
//! the workspace root, `/`-separated, and validated on decode (see [`super::validate`]).

use bytemuck::{Pod, Zeroable};
use serde::{Deserialize, Serialize};
use std::fmt;

/// BLAKE3 digest of raw (uncompressed) bytes: the address of a chunk or a manifest.
#[repr(transparent)]
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Pod, Zeroable,
)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(*blake3::hash(bytes).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 lowercase or uppercase hex digits.
    pub fn from_hex(s: &str) -> Option<Digest> {
        let mut out = [0u8; 32];
        if s.len() != 64 {
            return None;
        }
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Digest(out))
    }

    /// Short form for logs and messages.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.short())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// One stored chunk: its raw digest, raw length, and stored (zstd-compressed) length.
/// (`repr(C)`: the tree index holds these in place.)
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Pod, Zeroable)]
pub struct ChunkInfo {
    pub hash: Digest,
    pub raw_len: u32,
    pub stored_len: u32,
}

/// A contiguous piece of a file's content inside one chunk. (`repr(C)`: the tree index holds
/// these in place.)
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Pod, Zeroable)]
pub struct Extent {
    /// Index into [`Manifest::chunks`].
    pub chunk: u32,
    /// Offset of the piece inside the chunk's raw bytes.
    pub offset: u32,
    pub len: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// One path in the layer. The root directory itself is implicit and never listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub path: Vec<u8>,
    pub kind: EntryKind,
    /// Permission bits (and setuid/setgid/sticky); never the file-type bits.
    pub mode: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    /// File: content length. Symlink: target length. Dir: 0.
    pub size: u64,
    /// Symlink target, raw bytes; empty for files and dirs.
    pub target: Vec<u8>,
    /// File content, in order; the lengths add up to `size`.
    pub extents: Vec<Extent>,
    /// BLAKE3 of the whole file content (files only; zero otherwise). Lets layers compare files
    /// without comparing how they were chunked.
    pub content: Digest,
}

impl Entry {
    pub fn path_lossy(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
}

/// A layer manifest. `entries` are sorted by path bytes (so lookups can binary search and
/// encodings are deterministic).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub workspace: String,
    pub layer: String,
    pub parents: Vec<String>,
    /// Unix seconds.
    pub created: i64,
    /// Mode and mtime of the persisted root directory itself.
    pub root: RootMeta,
    pub chunks: Vec<ChunkInfo>,
    pub entries: Vec<Entry>,
    /// How each chunk is stored in frames (see [`crate::frames`]): empty (no chunk is framed:
    /// manifests of older versions), or one table per chunk, empty for a chunk read only whole.
    /// Not part of the version-1 encoding, which cannot carry it.
    #[serde(skip)]
    pub frames: Vec<Vec<ChunkInfo>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootMeta {
    pub mode: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
}

impl Default for RootMeta {
    fn default() -> Self {
        RootMeta {
            mode: 0o755,
            mtime_sec: 0,
            mtime_nsec: 0,
        }
    }
}

impl Manifest {
    /// Chunk `index`'s frames (empty: read whole).
    pub fn frames_of(&self, index: usize) -> &[ChunkInfo] {
        self.frames
            .get(index)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    pub fn total_file_bytes(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .map(|e| e.size)
            .sum()
    }
}
