//! The inode table: the merged tree of a mount, built once and never changed.
//!
//! Because the table is immutable, inode numbers are stable for the life of the mount, and the
//! kernel may cache entries and attributes for as long as it likes.
//! Invariants (established by manifest validation and checked again while building):
//! * inode 1 is the root; `nodes[ino - 1]` is inode `ino`;
//! * every node's parent is a directory that lists it among its `children`;
//! * `children` of a directory are sorted by name: readdir offsets are stable and lookups
//!   binary-search them;
//! * a file's `ext_starts[i]` is the file offset where `extents[i]` begins.

use crate::manifest::{ChunkInfo, Entry, EntryKind, Extent, RootMeta};
use std::collections::HashMap;

pub const ROOT: u64 = 1;

pub struct Node {
    pub parent: u64,
    pub name: Box<[u8]>,
    /// Full path from the root, for logs and the failure ledger.
    pub path: Box<[u8]>,
    pub kind: EntryKind,
    pub mode: u32,
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    pub target: Box<[u8]>,
    pub extents: Box<[Extent]>,
    pub ext_starts: Box<[u64]>,
    pub children: Vec<u64>,
    /// BLAKE3 of the whole content (files): names a materialized copy for passthrough.
    pub content: crate::manifest::Digest,
}

impl Node {
    pub fn path_lossy(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
}

pub struct InodeTable {
    nodes: Vec<Node>,
    chunks: Vec<ChunkInfo>,
    total_bytes: u64,
    /// Per chunk, the next chunk in path order (`u32::MAX`: the last).
    next_chunk: Vec<u32>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the tree: {0}")]
pub struct BuildError(String);

impl InodeTable {
    /// Builds the table from entries sorted by path (parents before children), as a validated
    /// manifest or a layer merge provides them.
    pub fn build(
        entries: &[Entry],
        chunks: Vec<ChunkInfo>,
        root: RootMeta,
    ) -> Result<InodeTable, BuildError> {
        let mut nodes = Vec::with_capacity(entries.len() + 1);
        nodes.push(Node {
            parent: ROOT,
            name: Box::from(&b""[..]),
            path: Box::from(&b""[..]),
            kind: EntryKind::Dir,
            mode: root.mode,
            size: 0,
            mtime_sec: root.mtime_sec,
            mtime_nsec: root.mtime_nsec,
            target: Box::default(),
            extents: Box::default(),
            ext_starts: Box::default(),
            children: Vec::new(),
            content: crate::manifest::Digest([0; 32]),
        });
        let mut by_path: HashMap<&[u8], u64> = HashMap::with_capacity(entries.len());
        let mut total_bytes = 0;
        for e in entries {
            let (parent, name) = match e.path.iter().rposition(|&b| b == b'/') {
                Some(i) => {
                    let parent = *by_path.get(&e.path[..i]).ok_or_else(|| {
                        BuildError(format!("{:?} has no parent directory", e.path_lossy()))
                    })?;
                    (parent, &e.path[i + 1..])
                }
                None => (ROOT, &e.path[..]),
            };
            if nodes[(parent - 1) as usize].kind != EntryKind::Dir {
                return Err(BuildError(format!(
                    "parent of {:?} is not a directory",
                    e.path_lossy()
                )));
            }
            let ino = nodes.len() as u64 + 1;
            let mut starts = Vec::with_capacity(e.extents.len());
            let mut at = 0u64;
            for x in &e.extents {
                if x.chunk as usize >= chunks.len() {
                    return Err(BuildError(format!(
                        "{:?} names a chunk outside the table",
                        e.path_lossy()
                    )));
                }
                starts.push(at);
                at += u64::from(x.len);
            }
            if e.kind == EntryKind::File {
                total_bytes += e.size;
            }
            nodes.push(Node {
                parent,
                name: Box::from(name),
                path: e.path.clone().into_boxed_slice(),
                kind: e.kind,
                mode: e.mode,
                size: e.size,
                mtime_sec: e.mtime_sec,
                mtime_nsec: e.mtime_nsec,
                target: e.target.clone().into_boxed_slice(),
                extents: e.extents.clone().into_boxed_slice(),
                ext_starts: starts.into_boxed_slice(),
                children: Vec::new(),
                content: e.content,
            });
            nodes[(parent - 1) as usize].children.push(ino);
            if by_path.insert(&e.path, ino).is_some() {
                return Err(BuildError(format!("duplicate path {:?}", e.path_lossy())));
            }
        }
        // Children were pushed in path order; names of one directory sort the same way, except
        // where a sibling's name is a prefix continued by a byte below '/': sort to be exact.
        // Sorted children are also the lookup index (binary search), so no name map is kept.
        for i in 0..nodes.len() {
            let mut children = std::mem::take(&mut nodes[i].children);
            children.sort_by(|a, b| {
                nodes[(*a - 1) as usize]
                    .name
                    .cmp(&nodes[(*b - 1) as usize].name)
            });
            nodes[i].children = children;
        }
        // Each chunk's successor in path order (the order packs were filled in: a directory's
        // files sit in consecutive packs), for the pack read-ahead.
        let mut next_chunk = vec![u32::MAX; chunks.len()];
        let mut seen = vec![false; chunks.len()];
        let mut last: Option<u32> = None;
        for n in &nodes {
            for x in n.extents.iter() {
                let i = x.chunk as usize;
                if seen.get(i) == Some(&false) {
                    seen[i] = true;
                    if let Some(l) = last {
                        next_chunk[l as usize] = x.chunk;
                    }
                    last = Some(x.chunk);
                }
            }
        }
        Ok(InodeTable {
            nodes,
            chunks,
            total_bytes,
            next_chunk,
        })
    }

    /// The chunk that follows `index` in path order (see `next_chunk`).
    pub fn next_chunk(&self, index: u32) -> Option<u32> {
        self.next_chunk
            .get(index as usize)
            .copied()
            .filter(|n| *n != u32::MAX)
    }

    pub fn get(&self, ino: u64) -> Option<&Node> {
        if ino == 0 {
            return None;
        }
        self.nodes.get((ino - 1) as usize)
    }

    /// Binary search over the parent's children, which are sorted by name: no allocation and
    /// no second index to keep in step with the tree.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Option<u64> {
        let children = &self.get(parent)?.children;
        children
            .binary_search_by(|c| self.nodes[(*c - 1) as usize].name.as_ref().cmp(name))
            .ok()
            .map(|i| children[i])
    }

    pub fn chunk(&self, index: u32) -> Option<&ChunkInfo> {
        self.chunks.get(index as usize)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Distinct chunks the tree uses.
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Every chunk the tree uses, once, in the order `--prefetch chunks|all` fetches them: first
    /// the packs (chunks holding small files, what most jobs open first and by the thousand),
    /// then the chunks of large files; each group in path order of first use, so a build
    /// walking the tree finds its files early. (In path order alone, a `build/` directory of
    /// large artifacts would be fetched before the sources.)
    pub fn chunks_in_path_order(&self) -> Vec<ChunkInfo> {
        let mut seen = vec![false; self.chunks.len()];
        let (mut packs, mut large) = (Vec::new(), Vec::new());
        for n in &self.nodes {
            let small = n.extents.len() == 1 && n.size < crate::manifest::chunker::SMALL_FILE_LIMIT;
            for x in n.extents.iter() {
                let i = x.chunk as usize;
                if let Some(false) = seen.get(i) {
                    seen[i] = true;
                    if small {
                        packs.push(self.chunks[i]);
                    } else {
                        large.push(self.chunks[i]);
                    }
                }
            }
        }
        packs.extend(large);
        packs
    }

    /// Iterates every node with its inode number.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Node)> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (i as u64 + 1, n))
    }
}
