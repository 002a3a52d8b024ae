//! The tree index: a layer's (or a merged mount's) directory tree in one flat, position-free
//! buffer that a mount serves from in place — no per-entry heap object is ever built.
//!
//! Version-2 manifests carry this buffer (zstd-compressed); a mount decompresses it once into
//! an aligned allocation and answers every lookup, getattr and readdir straight from it. Older
//! (version-1) manifests and merges of several layers are built into the same buffer, so there
//! is one representation to serve and to test.
//!
//! # Layout (little-endian, every section 8-byte aligned)
//!
//! ```text
//! header    magic "WSFSTREE", version u32, section count u32, total file bytes u64,
//!           then per section (byte offset u64, byte length u64)
//! RECS      one 48-byte record per inode; inode n is record n - 1, inode 1 the root
//! NAMES     every entry's name, once, back to back (records hold offset + length)
//! TARGETS   symlink targets, back to back
//! CHILDREN  u32 inode numbers, each directory's run sorted by name (lookups binary-search it)
//! EXTENTS   12-byte extents (chunk, offset, len), each file's run in file order
//! STARTS    u64 per extent: the file offset where it begins
//! DIGESTS   32-byte whole-file BLAKE3 of files of at least 1 MiB (for passthrough)
//! CHUNKS    40-byte chunk infos (digest, raw length, stored length)
//! NEXT      u32 per chunk: the next chunk in path order (u32::MAX: none), for pack read-ahead
//! FRUNS     per chunk (first u32, count u32) into FRAMES (count 0: read whole); or empty
//! FRAMES    40-byte frame infos of framed chunks (see `crate::frames`)
//! ```
//!
//! Version 1 (in manifests of format 2) has the first nine sections only: no chunk is framed.
//!
//! # Trust
//!
//! A buffer from a store may be hostile (a manifest's digest proves only that it is the one the
//! ref names). Opening checks what is O(1) or O(chunks): the header, that every section lies
//! inside the buffer and holds whole records, the chunk table's bounds. Everything per entry is
//! checked when the entry is used ([`Tree::node`]): its kind, its name (non-empty, no `/`, no
//! NUL, not `.`/`..`), that its parent is an earlier directory (so parent chains end at the
//! root and the tree has no cycles), that every range it names lies inside its section, that a
//! symlink's size is its target's length, and that a file's extents start at 0 and end at its
//! size — all O(1), for the read path. [`Tree::check`], which a mount runs once on open, adds
//! what needs the whole tree or a whole run: extents follow one another and lie inside their
//! chunks, children are their directory's, sorted, listed once. The read path checks extent
//! bounds inside chunks again where content is assembled. A damaged entry is an error ([`Damaged`], EIO to a reader),
//! never a panic, an out-of-bounds read, or a silently different tree.

mod build;
mod check;

use crate::chunker::SMALL_FILE_LIMIT;
use crate::types::{ChunkInfo, Digest, EntryKind, Extent};
use crate::validate::MAX_CHUNK_RAW;
use bytemuck::{Pod, Zeroable};
use std::ops::Range;

#[cfg(not(target_endian = "little"))]
compile_error!("the tree index is read in place and is little-endian");

pub const ROOT: u64 = 1;

/// Files at least this large keep their whole-content digest in the tree: it names their
/// verified copy for FUSE passthrough, which only such files get.
pub const CONTENT_DIGEST_MIN_BYTES: u64 = 1 << 20;

const MAGIC: &[u8; 8] = b"WSFSTREE";
const VERSION: u32 = 2;
/// Trees without frame tables (manifest format 2): still opened.
const VERSION_V1: u32 = 1;
const SECTIONS_V1: usize = 9;
/// No digest kept for this record.
const NO_DIGEST: u32 = u32::MAX;
const NO_CHUNK: u32 = u32::MAX;

const RECS: usize = 0;
const NAMES: usize = 1;
const TARGETS: usize = 2;
const CHILDREN: usize = 3;
const EXTENTS: usize = 4;
const STARTS: usize = 5;
const DIGESTS: usize = 6;
const CHUNKS: usize = 7;
const NEXT: usize = 8;
const FRUNS: usize = 9;
const FRAMES: usize = 10;
const SECTIONS: usize = 11;
const HEADER_LEN: usize = 24 + SECTIONS * 16;

const KIND_FILE: u8 = 0;
const KIND_DIR: u8 = 1;
const KIND_SYMLINK: u8 = 2;

/// One inode, as stored. Dirs: `first`/`count` index CHILDREN. Files: EXTENTS and STARTS.
/// Symlinks: TARGETS (`count` bytes). Field order leaves no padding (48 bytes, align 8).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Rec {
    size: u64,
    mtime_sec: i64,
    parent: u32,
    name_off: u32,
    mode: u32,
    mtime_nsec: u32,
    first: u32,
    count: u32,
    digest: u32,
    name_len: u16,
    kind: u8,
    _pad: u8,
}

/// A chunk's frames: `count` entries of FRAMES from `first` (0: the chunk is read whole).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct FrameRun {
    first: u32,
    count: u32,
}

/// A tree entry that does not hold together: the index is damaged or hostile.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the tree index is damaged at inode {ino}: {why}")]
pub struct Damaged {
    pub ino: u64,
    pub why: &'static str,
}

/// Why a tree could not be built from entries (or a buffer opened).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the tree: {0}")]
pub struct BuildError(pub String);

/// The tree index, owned, in an 8-byte-aligned buffer.
pub struct Tree {
    buf: Vec<u64>,
    /// Byte ranges of the sections, checked against the buffer when opened.
    sections: [Range<usize>; SECTIONS],
    total_bytes: u64,
}

/// A borrowed view of one inode whose ranges were checked ([`Tree::node`]).
#[derive(Clone, Copy)]
pub struct Node<'a> {
    tree: &'a Tree,
    ino: u64,
    rec: &'a Rec,
    kind: EntryKind,
}

impl<'a> Node<'a> {
    pub fn ino(&self) -> u64 {
        self.ino
    }

    pub fn parent(&self) -> u64 {
        u64::from(self.rec.parent)
    }

    pub fn name(&self) -> &'a [u8] {
        self.tree
            .section(NAMES)
            .get(self.rec.name_off as usize..)
            .and_then(|s| s.get(..usize::from(self.rec.name_len)))
            .unwrap_or_default()
    }

    pub fn kind(&self) -> EntryKind {
        self.kind
    }

    /// Permission bits (and setuid/setgid/sticky).
    pub fn mode(&self) -> u32 {
        self.rec.mode
    }

    /// File: content length. Symlink: target length. Dir: 0.
    pub fn size(&self) -> u64 {
        self.rec.size
    }

    pub fn mtime(&self) -> (i64, u32) {
        (self.rec.mtime_sec, self.rec.mtime_nsec)
    }

    fn run(&self) -> Range<usize> {
        let at = self.rec.first as usize;
        at..at + self.rec.count as usize
    }

    /// A symlink's target (empty for the rest).
    pub fn target(&self) -> &'a [u8] {
        if self.kind != EntryKind::Symlink {
            return &[];
        }
        self.tree
            .section(TARGETS)
            .get(self.run())
            .unwrap_or_default()
    }

    /// A file's content, in order (empty for the rest).
    pub fn extents(&self) -> &'a [Extent] {
        if self.kind != EntryKind::File {
            return &[];
        }
        self.tree.extents().get(self.run()).unwrap_or_default()
    }

    /// Where each of [`Node::extents`] begins in the file.
    pub fn ext_starts(&self) -> &'a [u64] {
        if self.kind != EntryKind::File {
            return &[];
        }
        self.tree.starts().get(self.run()).unwrap_or_default()
    }

    /// A directory's entries, sorted by name (empty for the rest).
    pub fn children(&self) -> &'a [u32] {
        if self.kind != EntryKind::Dir {
            return &[];
        }
        self.tree.children().get(self.run()).unwrap_or_default()
    }

    /// The BLAKE3 of the whole content, for files of at least [`CONTENT_DIGEST_MIN_BYTES`].
    pub fn content(&self) -> Option<&'a Digest> {
        self.tree.digests().get(self.rec.digest as usize)
    }

    /// The path from the root (`a/b/c`; empty for the root), made from the parent chain.
    pub fn path(&self) -> Vec<u8> {
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut n = *self;
        // Parents are earlier inodes (checked by `Tree::node`), so the chain ends at the root.
        while n.ino != ROOT {
            parts.push(n.name());
            match self.tree.get(n.parent()) {
                Some(p) => n = p,
                None => break,
            }
        }
        parts.reverse();
        parts.join(&b'/')
    }

    pub fn path_lossy(&self) -> String {
        String::from_utf8_lossy(&self.path()).into_owned()
    }
}

/// A name as a directory entry may carry it.
fn name_ok(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != b"."
        && name != b".."
        && !name.iter().any(|&b| b == b'/' || b == 0)
}

impl Tree {
    /// Opens a tree from its bytes: `buf` holds `len` bytes (the rest of its last word is
    /// padding). Checks the header, the sections and the chunk table; entries are checked as
    /// they are used (see the module's doc).
    pub fn open(buf: Vec<u64>, len: usize) -> Result<Tree, BuildError> {
        let bad = |why: &str| BuildError(format!("the tree index is damaged: {why}"));
        let all: &[u8] = bytemuck::cast_slice(&buf);
        let bytes = all
            .get(..len)
            .ok_or_else(|| bad("shorter than its length"))?;
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return Err(bad("no tree header"));
        }
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let count = match u32_at(8) {
            VERSION => SECTIONS,
            VERSION_V1 => SECTIONS_V1,
            _ => return Err(bad("unknown tree version")),
        };
        if u32_at(12) as usize != count {
            return Err(bad("wrong number of sections"));
        }
        if bytes.len() < 24 + count * 16 {
            return Err(bad("no tree header"));
        }
        let total_bytes = u64_at(16);
        // A version-1 tree's frame sections stay empty.
        let mut sections: [Range<usize>; SECTIONS] = Default::default();
        let sizes = [48, 1, 1, 4, 12, 8, 32, 40, 4, 8, 40];
        for (i, s) in sections.iter_mut().enumerate().take(count) {
            let off = u64_at(24 + i * 16);
            let n = u64_at(24 + i * 16 + 8);
            let end = off
                .checked_add(n)
                .ok_or_else(|| bad("section past the end"))?;
            if off < (24 + count * 16) as u64
                || end > len as u64
                || off % 8 != 0
                || n % sizes[i] != 0
            {
                return Err(bad(
                    "a section lies outside the buffer or holds partial records",
                ));
            }
            *s = off as usize..end as usize;
        }
        let t = Tree {
            buf,
            sections,
            total_bytes,
        };
        let recs = t.recs();
        if recs.is_empty() || recs.len() > u32::MAX as usize - 1 {
            return Err(bad("no root"));
        }
        if recs[0].kind != KIND_DIR || recs[0].parent != ROOT as u32 {
            return Err(bad("the root is not a directory"));
        }
        if t.starts().len() != t.extents().len() {
            return Err(bad("extent starts and extents differ in number"));
        }
        if t.next().len() != t.chunks().len() {
            return Err(bad("chunk successors and chunks differ in number"));
        }
        for c in t.chunks() {
            if c.raw_len > MAX_CHUNK_RAW || c.stored_len == 0 {
                return Err(bad("a chunk's lengths are out of range"));
            }
        }
        if t.next()
            .iter()
            .any(|n| *n != NO_CHUNK && *n as usize >= t.chunks().len())
        {
            return Err(bad("a chunk successor lies outside the chunk table"));
        }
        let runs = t.fruns();
        if !runs.is_empty() && runs.len() != t.chunks().len() {
            return Err(bad("frame runs and chunks differ in number"));
        }
        if runs.is_empty() && !t.frame_infos().is_empty() {
            return Err(bad("frames without frame runs"));
        }
        for (c, r) in t.chunks().iter().zip(runs) {
            let frames = t
                .frame_infos()
                .get(r.first as usize..r.first as usize + r.count as usize)
                .ok_or_else(|| bad("a chunk's frames lie outside the frame table"))?;
            crate::frames::check(c, frames).map_err(bad)?;
        }
        Ok(t)
    }

    /// The tree's bytes (as [`Tree::open`] takes them).
    pub fn as_bytes(&self) -> &[u8] {
        let all: &[u8] = bytemuck::cast_slice(&self.buf);
        let end = self
            .sections
            .iter()
            .map(|r| r.end)
            .max()
            .unwrap_or(HEADER_LEN);
        &all[..end]
    }

    fn section(&self, i: usize) -> &[u8] {
        let all: &[u8] = bytemuck::cast_slice(&self.buf);
        all.get(self.sections[i].clone()).unwrap_or_default()
    }

    fn cast<T: Pod>(&self, i: usize) -> &[T] {
        bytemuck::try_cast_slice(self.section(i)).unwrap_or_default()
    }

    fn recs(&self) -> &[Rec] {
        self.cast(RECS)
    }
    fn children(&self) -> &[u32] {
        self.cast(CHILDREN)
    }
    fn extents(&self) -> &[Extent] {
        self.cast(EXTENTS)
    }
    fn starts(&self) -> &[u64] {
        self.cast(STARTS)
    }
    fn digests(&self) -> &[Digest] {
        self.cast(DIGESTS)
    }
    fn chunks(&self) -> &[ChunkInfo] {
        self.cast(CHUNKS)
    }
    fn next(&self) -> &[u32] {
        self.cast(NEXT)
    }
    fn fruns(&self) -> &[FrameRun] {
        self.cast(FRUNS)
    }
    fn frame_infos(&self) -> &[ChunkInfo] {
        self.cast(FRAMES)
    }

    /// Chunk `index`'s frames (empty: the chunk is read whole). Checked when the tree opened.
    pub fn frames(&self, index: u32) -> &[ChunkInfo] {
        self.fruns()
            .get(index as usize)
            .and_then(|r| {
                self.frame_infos()
                    .get(r.first as usize..r.first as usize + r.count as usize)
            })
            .unwrap_or_default()
    }

    /// Where chunk `index`'s frames begin in the tree's frame table (see [`Tree::frame`]).
    pub fn frame_first(&self, index: u32) -> u32 {
        self.fruns()
            .get(index as usize)
            .map(|r| r.first)
            .unwrap_or(0)
    }

    /// Frames of every framed chunk, in one table.
    pub fn frame_count(&self) -> usize {
        self.frame_infos().len()
    }

    /// Entry `at` of the frame table.
    pub fn frame(&self, at: u32) -> Option<&ChunkInfo> {
        self.frame_infos().get(at as usize)
    }

    /// Every chunk's frames, as a [`Manifest`](crate::Manifest) holds them (empty: none framed).
    pub fn frame_tables(&self) -> Vec<Vec<ChunkInfo>> {
        if self.fruns().is_empty() {
            return Vec::new();
        }
        (0..self.chunks().len() as u32)
            .map(|i| self.frames(i).to_vec())
            .collect()
    }

    /// Inode `ino`, with its ranges checked: `Ok(None)` if there is no such inode, `Err` if
    /// its record does not hold together.
    pub fn node(&self, ino: u64) -> Result<Option<Node<'_>>, Damaged> {
        let Some(rec) = ino
            .checked_sub(1)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.recs().get(i))
        else {
            return Ok(None);
        };
        let damaged = |why| Damaged { ino, why };
        let kind = match rec.kind {
            KIND_FILE => EntryKind::File,
            KIND_DIR => EntryKind::Dir,
            KIND_SYMLINK => EntryKind::Symlink,
            _ => return Err(damaged("unknown entry kind")),
        };
        if rec.mode & !0o7777 != 0 || rec.mtime_nsec >= 1_000_000_000 {
            return Err(damaged("mode or mtime out of range"));
        }
        let name = self
            .section(NAMES)
            .get(rec.name_off as usize..)
            .and_then(|s| s.get(..usize::from(rec.name_len)))
            .ok_or(damaged("name outside the name table"))?;
        if ino != ROOT {
            if !name_ok(name) {
                return Err(damaged("not a valid name"));
            }
            let parent = u64::from(rec.parent);
            if parent == 0 || parent >= ino {
                return Err(damaged("its parent is not an earlier inode"));
            }
            if self.recs()[(parent - 1) as usize].kind != KIND_DIR {
                return Err(damaged("its parent is not a directory"));
            }
        }
        let run = rec.first as usize..rec.first as usize + rec.count as usize;
        match kind {
            EntryKind::Dir => {
                if rec.size != 0 || run.end > self.children().len() {
                    return Err(damaged("directory children outside the table"));
                }
            }
            EntryKind::Symlink => {
                if rec.count == 0
                    || u64::from(rec.count) != rec.size
                    || run.end > self.section(TARGETS).len()
                {
                    return Err(damaged("symlink target outside the table"));
                }
            }
            EntryKind::File => {
                let (Some(xs), Some(ss)) =
                    (self.extents().get(run.clone()), self.starts().get(run))
                else {
                    return Err(damaged("extents outside the table"));
                };
                // O(1) here (a read looks its file up every time: a 10 GiB file has thousands
                // of extents): the ends. That every extent follows the last is checked once,
                // for the whole tree, by `check`; a gap left by a tree that skipped it is a
                // shortfall the read path refuses (EIO).
                let end = match (xs.last(), ss.last()) {
                    (Some(x), Some(s)) if ss[0] == 0 => s.checked_add(u64::from(x.len)),
                    (None, None) => Some(0),
                    _ => None,
                };
                if end != Some(rec.size) {
                    return Err(damaged("extents do not add up to the size"));
                }
                if rec.digest != NO_DIGEST && rec.digest as usize >= self.digests().len() {
                    return Err(damaged("content digest outside the table"));
                }
            }
        }
        Ok(Some(Node {
            tree: self,
            ino,
            rec,
            kind,
        }))
    }

    /// Inode `ino` if it exists and holds together (callers that must tell the two apart use
    /// [`Tree::node`]).
    pub fn get(&self, ino: u64) -> Option<Node<'_>> {
        self.node(ino).ok().flatten()
    }

    fn name_of(&self, ino: u32) -> Option<&[u8]> {
        let r = self.recs().get((ino as usize).checked_sub(1)?)?;
        self.section(NAMES)
            .get(r.name_off as usize..)?
            .get(..usize::from(r.name_len))
    }

    /// The child of `parent` called `name`: a binary search over the parent's children, which
    /// are sorted by name — no allocation and no second index. The child found must name
    /// `parent` as its parent.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Option<u64>, Damaged> {
        let Some(p) = self.node(parent)? else {
            return Ok(None);
        };
        let children = p.children();
        let (mut lo, mut hi) = (0usize, children.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let c = children[mid];
            let n = self.name_of(c).ok_or(Damaged {
                ino: u64::from(c),
                why: "a child outside the inode table",
            })?;
            match n.cmp(name) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => {
                    let ino = u64::from(c);
                    self.child(parent, ino)?;
                    return Ok(Some(ino));
                }
            }
        }
        Ok(None)
    }

    /// Child `ino` of directory `parent`, checked: it exists, holds together and names `parent`.
    pub fn child(&self, parent: u64, ino: u64) -> Result<Node<'_>, Damaged> {
        match self.node(ino)? {
            Some(n) if n.parent() == parent && ino != ROOT => Ok(n),
            _ => Err(Damaged {
                ino,
                why: "a directory lists an entry that is not its child",
            }),
        }
    }

    pub fn chunk(&self, index: u32) -> Option<&ChunkInfo> {
        self.chunks().get(index as usize)
    }

    /// The chunk that follows `index` in path order (the order packs were filled in: a
    /// directory's files sit in consecutive packs), for the pack read-ahead.
    pub fn next_chunk(&self, index: u32) -> Option<u32> {
        self.next()
            .get(index as usize)
            .copied()
            .filter(|n| *n != NO_CHUNK)
    }

    /// Inodes, the root included.
    pub fn len(&self) -> usize {
        self.recs().len()
    }

    pub fn is_empty(&self) -> bool {
        self.recs().is_empty()
    }

    /// Distinct chunks the tree uses.
    pub fn chunk_count(&self) -> usize {
        self.chunks().len()
    }

    pub fn chunk_table(&self) -> &[ChunkInfo] {
        self.chunks()
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Bytes the tree's buffer holds, for status and the memory bench.
    pub fn heap_bytes(&self) -> u64 {
        (self.buf.capacity() * 8) as u64
    }

    /// Every inode that holds together, with its number, in inode order (= path order).
    pub fn iter(&self) -> impl Iterator<Item = (u64, Node<'_>)> {
        (1..=self.recs().len() as u64).filter_map(move |ino| self.get(ino).map(|n| (ino, n)))
    }

    /// Every chunk the tree uses, once, in the order `--prefetch chunks|all` fetches them: first
    /// the packs (chunks holding small files, what most jobs open first and by the thousand),
    /// then the chunks of large files; each group in path order of first use, so a build
    /// walking the tree finds its files early. (In path order alone, a `build/` directory of
    /// large artifacts would be fetched before the sources.)
    pub fn chunks_in_path_order(&self) -> Vec<ChunkInfo> {
        let chunks = self.chunks();
        let mut seen = vec![false; chunks.len()];
        let (mut packs, mut large) = (Vec::new(), Vec::new());
        for (_, n) in self.iter() {
            let extents = n.extents();
            let small = extents.len() == 1 && n.size() < SMALL_FILE_LIMIT;
            for x in extents {
                let i = x.chunk as usize;
                if let Some(false) = seen.get(i) {
                    seen[i] = true;
                    if small {
                        packs.push(chunks[i]);
                    } else {
                        large.push(chunks[i]);
                    }
                }
            }
        }
        packs.extend(large);
        packs
    }
}

#[cfg(test)]
mod tests;
