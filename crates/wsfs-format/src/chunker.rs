//! Turns file contents into content-addressed chunks and extents.
//!
//! * Files of at least [`SMALL_FILE_LIMIT`] bytes are cut by FastCDC (content-defined, so an edit
//!   near the start of a file does not shift every later chunk boundary).
//! * Smaller files are appended, in the order they are added (path order), to a pack buffer that
//!   is sealed into one chunk at [`PACK_TARGET`] bytes: a directory of thousands of small files
//!   costs a few requests, and reading one file brings its neighbours along.
//! * Identical content is stored once: chunks are deduplicated by digest, and identical small files
//!   share one extent.
//!
//! The builder sees each new chunk once, through a sink, so the caller can compress and upload it
//! while the walk continues. Stored (compressed) lengths are filled in afterwards with
//! [`LayerBuilder::set_stored`].

use super::types::{ChunkInfo, Digest, Entry, EntryKind, Extent, Manifest, RootMeta};
use bytes::Bytes;
use std::collections::HashMap;
use std::io::Read;

pub const SMALL_FILE_LIMIT: u64 = 64 * 1024;
pub const PACK_TARGET: usize = 4 << 20;
pub const CDC_MIN: u32 = 256 * 1024;
pub const CDC_AVG: u32 = 1 << 20;
pub const CDC_MAX: u32 = 4 << 20;

/// A chunk the builder has not seen before: the caller must store it.
pub struct NewChunk {
    pub index: u32,
    pub hash: Digest,
    pub raw: Bytes,
}

/// Marks an extent whose pack chunk is not sealed yet.
const PENDING: u32 = u32::MAX;

#[derive(Default)]
pub struct LayerBuilder {
    chunks: Vec<ChunkInfo>,
    /// Each chunk's frame table (see `crate::frames`), set with its stored length.
    frames: Vec<Vec<ChunkInfo>>,
    by_hash: HashMap<Digest, u32>,
    entries: Vec<Entry>,
    pack: Vec<u8>,
    /// Entries whose single extent points into the unsealed pack.
    pending: Vec<usize>,
    /// Small-file content digest → index of the first entry with that content.
    small_seen: HashMap<Digest, usize>,
    root: RootMeta,
}

/// What [`LayerBuilder`] needs to know about a path besides its content.
pub struct Meta {
    pub path: Vec<u8>,
    pub mode: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
}

impl LayerBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the root directory's own mode and mtime.
    pub fn set_root(&mut self, root: RootMeta) {
        self.root = root;
    }

    pub fn add_dir(&mut self, meta: Meta) {
        self.push(
            meta,
            EntryKind::Dir,
            0,
            Vec::new(),
            Vec::new(),
            Digest([0; 32]),
        );
    }

    pub fn add_symlink(&mut self, meta: Meta, target: Vec<u8>) {
        let size = target.len() as u64;
        self.push(
            meta,
            EntryKind::Symlink,
            size,
            target,
            Vec::new(),
            Digest([0; 32]),
        );
    }

    /// Adds a regular file, reading its content from `reader` to the end. The recorded size is
    /// what was read, so a file that changes during the walk is still self-consistent.
    pub fn add_file<R: Read, E: From<std::io::Error>>(
        &mut self,
        meta: Meta,
        size_hint: u64,
        mut reader: R,
        sink: &mut dyn FnMut(NewChunk) -> Result<(), E>,
    ) -> Result<(), E> {
        if size_hint < SMALL_FILE_LIMIT {
            let mut buf = Vec::with_capacity(size_hint as usize);
            reader.read_to_end(&mut buf)?;
            if (buf.len() as u64) < SMALL_FILE_LIMIT {
                return self.add_small(meta, buf, sink);
            }
            // It grew past the limit while we read it: cut it like a large file.
            return self.add_large(meta, std::io::Cursor::new(buf), sink);
        }
        self.add_large(meta, reader, sink)
    }

    fn add_small<E>(
        &mut self,
        meta: Meta,
        content: Vec<u8>,
        sink: &mut dyn FnMut(NewChunk) -> Result<(), E>,
    ) -> Result<(), E> {
        let size = content.len() as u64;
        let digest = Digest::of(&content);
        if content.is_empty() {
            self.push(meta, EntryKind::File, 0, Vec::new(), Vec::new(), digest);
            return Ok(());
        }
        if let Some(&first) = self.small_seen.get(&digest) {
            let extents = self.entries[first].extents.clone();
            let pending = extents.first().is_some_and(|x| x.chunk == PENDING);
            let idx = self.push(meta, EntryKind::File, size, Vec::new(), extents, digest);
            if pending {
                self.pending.push(idx);
            }
            return Ok(());
        }
        let ext = Extent {
            chunk: PENDING,
            offset: self.pack.len() as u32,
            len: content.len() as u32,
        };
        self.pack.extend_from_slice(&content);
        let idx = self.push(meta, EntryKind::File, size, Vec::new(), vec![ext], digest);
        self.pending.push(idx);
        self.small_seen.insert(digest, idx);
        if self.pack.len() >= PACK_TARGET {
            self.seal_pack(sink)?;
        }
        Ok(())
    }

    fn add_large<R: Read, E: From<std::io::Error>>(
        &mut self,
        meta: Meta,
        reader: R,
        sink: &mut dyn FnMut(NewChunk) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut extents = Vec::new();
        let mut size = 0u64;
        let mut whole = blake3::Hasher::new();
        let cdc = fastcdc::v2020::StreamCDC::new(reader, CDC_MIN, CDC_AVG, CDC_MAX);
        for piece in cdc {
            let piece = piece.map_err(|e| match e {
                fastcdc::v2020::Error::IoError(io) => E::from(io),
                other => E::from(std::io::Error::other(other.to_string())),
            })?;
            let len = piece.data.len() as u32;
            size += u64::from(len);
            whole.update(&piece.data);
            let chunk = self.add_chunk(Bytes::from(piece.data), sink)?;
            extents.push(Extent {
                chunk,
                offset: 0,
                len,
            });
        }
        let digest = Digest(*whole.finalize().as_bytes());
        self.push(meta, EntryKind::File, size, Vec::new(), extents, digest);
        Ok(())
    }

    /// Adds a regular file whose content is already stored: its digest and its pieces (chunk,
    /// offset in the chunk, length), as an earlier layer recorded them, and `frames_of`, the
    /// frame table that layer recorded for a chunk. Nothing is read and no chunk goes to the
    /// sink; the caller must have confirmed that every chunk named here is on every store the
    /// layer is committed to.
    pub fn add_stored_file(
        &mut self,
        meta: Meta,
        size: u64,
        content: Digest,
        pieces: &[(ChunkInfo, u32, u32)],
        frames_of: &dyn Fn(&Digest) -> Vec<ChunkInfo>,
    ) {
        let extents = pieces
            .iter()
            .map(|(c, offset, len)| Extent {
                chunk: self.known_chunk(*c, frames_of),
                offset: *offset,
                len: *len,
            })
            .collect();
        self.push(meta, EntryKind::File, size, Vec::new(), extents, content);
    }

    /// Registers a chunk that is already stored (with its stored length and frames) and returns
    /// its index.
    fn known_chunk(&mut self, c: ChunkInfo, frames_of: &dyn Fn(&Digest) -> Vec<ChunkInfo>) -> u32 {
        if let Some(&i) = self.by_hash.get(&c.hash) {
            return i;
        }
        let index = self.chunks.len() as u32;
        self.chunks.push(c);
        let frames = frames_of(&c.hash);
        // A table that does not fit the chunk is dropped: the chunk is then read whole.
        let frames = if crate::frames::check(&c, &frames).is_ok() {
            frames
        } else {
            Vec::new()
        };
        self.frames.push(frames);
        self.by_hash.insert(c.hash, index);
        index
    }

    /// Registers a chunk (deduplicated by digest) and returns its index.
    fn add_chunk<E>(
        &mut self,
        raw: Bytes,
        sink: &mut dyn FnMut(NewChunk) -> Result<(), E>,
    ) -> Result<u32, E> {
        let hash = Digest::of(&raw);
        if let Some(&i) = self.by_hash.get(&hash) {
            return Ok(i);
        }
        let index = self.chunks.len() as u32;
        self.chunks.push(ChunkInfo {
            hash,
            raw_len: raw.len() as u32,
            stored_len: 0,
        });
        self.frames.push(Vec::new());
        self.by_hash.insert(hash, index);
        sink(NewChunk { index, hash, raw })?;
        Ok(index)
    }

    fn seal_pack<E>(&mut self, sink: &mut dyn FnMut(NewChunk) -> Result<(), E>) -> Result<(), E> {
        if self.pack.is_empty() {
            return Ok(());
        }
        let raw = Bytes::from(std::mem::take(&mut self.pack));
        let chunk = self.add_chunk(raw, sink)?;
        for idx in self.pending.drain(..) {
            for x in &mut self.entries[idx].extents {
                x.chunk = chunk;
            }
        }
        Ok(())
    }

    fn push(
        &mut self,
        meta: Meta,
        kind: EntryKind,
        size: u64,
        target: Vec<u8>,
        extents: Vec<Extent>,
        content: Digest,
    ) -> usize {
        self.entries.push(Entry {
            path: meta.path,
            kind,
            mode: meta.mode & 0o7777,
            mtime_sec: meta.mtime_sec,
            mtime_nsec: meta.mtime_nsec,
            size,
            target,
            extents,
            content,
        });
        self.entries.len() - 1
    }

    /// Seals the last pack. Call once, after the last file, before [`Self::finish`].
    pub fn flush<E>(&mut self, sink: &mut dyn FnMut(NewChunk) -> Result<(), E>) -> Result<(), E> {
        self.seal_pack(sink)
    }

    /// Records how a new chunk was stored: its stored length and frame table (as
    /// [`compress`] made them).
    pub fn set_stored(&mut self, index: u32, stored_len: u32, frames: Vec<ChunkInfo>) {
        if let Some(c) = self.chunks.get_mut(index as usize) {
            c.stored_len = stored_len;
        }
        if let Some(f) = self.frames.get_mut(index as usize) {
            *f = frames;
        }
    }

    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// Builds the manifest; entries are sorted by path bytes.
    pub fn finish(
        mut self,
        workspace: String,
        layer: String,
        parents: Vec<String>,
        created: i64,
    ) -> Manifest {
        self.entries.sort_by(|a, b| a.path.cmp(&b.path));
        Manifest {
            workspace,
            layer,
            parents,
            created,
            root: self.root,
            chunks: self.chunks,
            entries: self.entries,
            frames: self.frames,
        }
    }
}

/// Compresses a raw chunk for storage, framed as [`crate::frames::compress`] does (which also
/// gives the frame table a manifest records).
pub fn compress(raw: &[u8]) -> std::io::Result<Vec<u8>> {
    crate::frames::compress(raw).map(|(stored, _)| stored)
}
