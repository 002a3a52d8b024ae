//! The inode table: the merged tree of a mount, built once and never changed.
//!
//! Because the table is immutable, inode numbers are stable for the life of the mount, and the
//! kernel may cache entries and attributes for as long as it likes.
//!
//! Layout, for memory that stays small at a million entries (about 80 bytes per entry, against
//! about 450 with a heap object per entry): one fixed 48-byte record per inode, and every
//! variable-length part in one shared array — names, symlink targets, children, extents and their
//! start offsets. A record names its parts by offset and length; [`Node`] is a borrowed view
//! that reads them. Full paths are not stored (they are made from the parent chain when a log
//! line or an open needs one); whole-file digests only for files large enough for passthrough.
//!
//! Invariants (established by manifest validation and checked again while building):
//! * inode 1 is the root; `recs[ino - 1]` is inode `ino`; inode numbers fit in `u32`;
//! * every node's parent is a directory that lists it among its children;
//! * a directory's children are sorted by name: readdir offsets are stable and lookups
//!   binary-search them;
//! * a file's `ext_starts()[i]` is the file offset where `extents()[i]` begins;
//! * every offset and length a record holds lies inside its array (checked when building).

use crate::manifest::{ChunkInfo, Digest, Entry, EntryKind, Extent, RootMeta};
use std::collections::HashMap;

pub const ROOT: u64 = 1;

/// Files at least this large keep their whole-content digest in the table: it names their
/// verified copy for FUSE passthrough, which only such files get.
pub const CONTENT_DIGEST_MIN_BYTES: u64 = 1 << 20;

/// No digest kept for this record.
const NO_DIGEST: u32 = u32::MAX;

/// One inode. Dirs: `first`/`count` index `children`. Files: `extents` and `ext_starts`.
/// Symlinks: `targets` (`count` bytes).
#[derive(Clone, Copy)]
struct Rec {
    parent: u32,
    name_off: u32,
    name_len: u16,
    kind: EntryKind,
    mode: u32,
    size: u64,
    mtime_sec: i64,
    mtime_nsec: u32,
    first: u32,
    count: u32,
    digest: u32,
}

pub struct InodeTable {
    recs: Vec<Rec>,
    names: Vec<u8>,
    targets: Vec<u8>,
    /// Inode numbers, grouped per directory.
    children: Vec<u32>,
    extents: Vec<Extent>,
    /// Per extent, the file offset where it begins.
    ext_starts: Vec<u64>,
    digests: Vec<Digest>,
    chunks: Vec<ChunkInfo>,
    total_bytes: u64,
    /// Per chunk, the next chunk in path order (`u32::MAX`: the last).
    next_chunk: Vec<u32>,
}

/// A borrowed view of one inode.
#[derive(Clone, Copy)]
pub struct Node<'a> {
    table: &'a InodeTable,
    ino: u64,
    rec: &'a Rec,
}

impl<'a> Node<'a> {
    pub fn ino(&self) -> u64 {
        self.ino
    }

    pub fn parent(&self) -> u64 {
        u64::from(self.rec.parent)
    }

    pub fn name(&self) -> &'a [u8] {
        let at = self.rec.name_off as usize;
        &self.table.names[at..at + usize::from(self.rec.name_len)]
    }

    pub fn kind(&self) -> EntryKind {
        self.rec.kind
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

    /// A symlink's target (empty for the rest).
    pub fn target(&self) -> &'a [u8] {
        if self.rec.kind != EntryKind::Symlink {
            return &[];
        }
        let at = self.rec.first as usize;
        &self.table.targets[at..at + self.rec.count as usize]
    }

    /// A file's content, in order (empty for the rest).
    pub fn extents(&self) -> &'a [Extent] {
        if self.rec.kind != EntryKind::File {
            return &[];
        }
        let at = self.rec.first as usize;
        &self.table.extents[at..at + self.rec.count as usize]
    }

    /// Where each of [`Node::extents`] begins in the file.
    pub fn ext_starts(&self) -> &'a [u64] {
        if self.rec.kind != EntryKind::File {
            return &[];
        }
        let at = self.rec.first as usize;
        &self.table.ext_starts[at..at + self.rec.count as usize]
    }

    /// A directory's entries, sorted by name (empty for the rest).
    pub fn children(&self) -> &'a [u32] {
        if self.rec.kind != EntryKind::Dir {
            return &[];
        }
        let at = self.rec.first as usize;
        &self.table.children[at..at + self.rec.count as usize]
    }

    /// The BLAKE3 of the whole content, for files of at least [`CONTENT_DIGEST_MIN_BYTES`].
    pub fn content(&self) -> Option<&'a Digest> {
        self.table.digests.get(self.rec.digest as usize)
    }

    /// The path from the root (`a/b/c`; empty for the root), made from the parent chain.
    pub fn path(&self) -> Vec<u8> {
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut n = *self;
        // Bounded by the table's size: a parent chain always ends at the root (built so).
        for _ in 0..self.table.recs.len() {
            if n.ino == ROOT {
                break;
            }
            parts.push(n.name());
            match self.table.get(n.parent()) {
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

#[derive(Debug, thiserror::Error)]
#[error("cannot build the tree: {0}")]
pub struct BuildError(String);

fn u32_of(n: usize, what: &str) -> Result<u32, BuildError> {
    u32::try_from(n).map_err(|_| BuildError(format!("too many {what} for one mount")))
}

impl InodeTable {
    /// Builds the table from entries sorted by path (parents before children), as a validated
    /// manifest or a layer merge provides them.
    pub fn build(
        entries: &[Entry],
        chunks: Vec<ChunkInfo>,
        root: RootMeta,
    ) -> Result<InodeTable, BuildError> {
        u32_of(entries.len() + 1, "entries")?;
        let mut t = InodeTable {
            recs: Vec::with_capacity(entries.len() + 1),
            names: Vec::new(),
            targets: Vec::new(),
            children: Vec::new(),
            extents: Vec::new(),
            ext_starts: Vec::new(),
            digests: Vec::new(),
            chunks,
            total_bytes: 0,
            next_chunk: Vec::new(),
        };
        t.recs.push(Rec {
            parent: ROOT as u32,
            name_off: 0,
            name_len: 0,
            kind: EntryKind::Dir,
            mode: root.mode,
            size: 0,
            mtime_sec: root.mtime_sec,
            mtime_nsec: root.mtime_nsec,
            first: 0,
            count: 0,
            digest: NO_DIGEST,
        });
        // Children per directory while building (then laid out in one array, sorted by name).
        let mut kids: HashMap<u32, Vec<u32>> = HashMap::new();
        // Directory path → inode, for finding parents.
        let mut dirs: HashMap<&[u8], u32> = HashMap::new();
        let mut last: Option<&[u8]> = None;
        for e in entries {
            if last.is_some_and(|l| l >= e.path.as_slice()) {
                return Err(BuildError(format!(
                    "entries are not sorted and unique at {:?}",
                    e.path_lossy()
                )));
            }
            last = Some(&e.path);
            let (parent, name) = match e.path.iter().rposition(|&b| b == b'/') {
                Some(i) => {
                    let parent = *dirs.get(&e.path[..i]).ok_or_else(|| {
                        BuildError(format!(
                            "{:?} has no parent directory (or its parent is not one)",
                            e.path_lossy()
                        ))
                    })?;
                    (parent, &e.path[i + 1..])
                }
                None => (ROOT as u32, &e.path[..]),
            };
            let ino = t.recs.len() as u32 + 1;
            let name_len = u16::try_from(name.len())
                .map_err(|_| BuildError(format!("{:?}: name too long", e.path_lossy())))?;
            let name_off = u32_of(t.names.len(), "name bytes")?;
            t.names.extend_from_slice(name);
            let (first, count, mut digest) = match e.kind {
                EntryKind::Dir => {
                    dirs.insert(&e.path, ino);
                    (0, 0, NO_DIGEST)
                }
                EntryKind::Symlink => {
                    let first = u32_of(t.targets.len(), "symlink target bytes")?;
                    t.targets.extend_from_slice(&e.target);
                    (
                        first,
                        u32_of(e.target.len(), "symlink target bytes")?,
                        NO_DIGEST,
                    )
                }
                EntryKind::File => {
                    let first = u32_of(t.extents.len(), "extents")?;
                    let mut at = 0u64;
                    for x in &e.extents {
                        if x.chunk as usize >= t.chunks.len() {
                            return Err(BuildError(format!(
                                "{:?} names a chunk outside the table",
                                e.path_lossy()
                            )));
                        }
                        t.extents.push(*x);
                        t.ext_starts.push(at);
                        at += u64::from(x.len);
                    }
                    t.total_bytes += e.size;
                    (first, u32_of(e.extents.len(), "extents")?, NO_DIGEST)
                }
            };
            if e.kind == EntryKind::File && e.size >= CONTENT_DIGEST_MIN_BYTES {
                digest = u32_of(t.digests.len(), "digests")?;
                t.digests.push(e.content);
            }
            t.recs.push(Rec {
                parent,
                name_off,
                name_len,
                kind: e.kind,
                mode: e.mode,
                size: e.size,
                mtime_sec: e.mtime_sec,
                mtime_nsec: e.mtime_nsec,
                first,
                count,
                digest,
            });
            kids.entry(parent).or_default().push(ino);
        }
        drop(dirs);
        // Children in one array, each directory's sorted by name: the lookup index (binary
        // search), so no name map is kept.
        for ino in 1..=t.recs.len() as u32 {
            if t.recs[(ino - 1) as usize].kind != EntryKind::Dir {
                continue;
            }
            let mut list = kids.remove(&ino).unwrap_or_default();
            list.sort_by(|a, b| t.name_of(*a).cmp(t.name_of(*b)));
            let first = u32_of(t.children.len(), "children")?;
            let count = u32_of(list.len(), "children")?;
            t.children.extend_from_slice(&list);
            let r = &mut t.recs[(ino - 1) as usize];
            r.first = first;
            r.count = count;
        }
        t.next_chunk = t.chunk_successors();
        t.shrink();
        Ok(t)
    }

    fn name_of(&self, ino: u32) -> &[u8] {
        let r = &self.recs[(ino - 1) as usize];
        let at = r.name_off as usize;
        &self.names[at..at + usize::from(r.name_len)]
    }

    /// Each chunk's successor in path order (the order packs were filled in: a directory's files
    /// sit in consecutive packs), for the pack read-ahead.
    fn chunk_successors(&self) -> Vec<u32> {
        let mut next = vec![u32::MAX; self.chunks.len()];
        let mut seen = vec![false; self.chunks.len()];
        let mut last: Option<u32> = None;
        for x in &self.extents {
            let i = x.chunk as usize;
            if seen.get(i) == Some(&false) {
                seen[i] = true;
                if let Some(l) = last {
                    next[l as usize] = x.chunk;
                }
                last = Some(x.chunk);
            }
        }
        next
    }

    /// Gives back what the growing arrays reserved beyond their length.
    fn shrink(&mut self) {
        self.recs.shrink_to_fit();
        self.names.shrink_to_fit();
        self.targets.shrink_to_fit();
        self.children.shrink_to_fit();
        self.extents.shrink_to_fit();
        self.ext_starts.shrink_to_fit();
        self.digests.shrink_to_fit();
    }

    /// The chunk that follows `index` in path order (see `next_chunk`).
    pub fn next_chunk(&self, index: u32) -> Option<u32> {
        self.next_chunk
            .get(index as usize)
            .copied()
            .filter(|n| *n != u32::MAX)
    }

    pub fn get(&self, ino: u64) -> Option<Node<'_>> {
        let i = usize::try_from(ino.checked_sub(1)?).ok()?;
        self.recs.get(i).map(|rec| Node {
            table: self,
            ino,
            rec,
        })
    }

    /// Binary search over the parent's children, which are sorted by name: no allocation and
    /// no second index to keep in step with the tree.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Option<u64> {
        let children = self.get(parent)?.children();
        children
            .binary_search_by(|c| self.name_of(*c).cmp(name))
            .ok()
            .map(|i| u64::from(children[i]))
    }

    pub fn chunk(&self, index: u32) -> Option<&ChunkInfo> {
        self.chunks.get(index as usize)
    }

    pub fn len(&self) -> usize {
        self.recs.len()
    }

    /// Distinct chunks the tree uses.
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.recs.is_empty()
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Bytes the table itself holds (its arrays), for status and the memory bench.
    pub fn heap_bytes(&self) -> u64 {
        (self.recs.capacity() * std::mem::size_of::<Rec>()
            + self.names.capacity()
            + self.targets.capacity()
            + self.children.capacity() * 4
            + self.extents.capacity() * std::mem::size_of::<Extent>()
            + self.ext_starts.capacity() * 8
            + self.digests.capacity() * 32
            + self.chunks.capacity() * std::mem::size_of::<ChunkInfo>()
            + self.next_chunk.capacity() * 4) as u64
    }

    /// Every chunk the tree uses, once, in the order `--prefetch chunks|all` fetches them: first
    /// the packs (chunks holding small files, what most jobs open first and by the thousand),
    /// then the chunks of large files; each group in path order of first use, so a build
    /// walking the tree finds its files early. (In path order alone, a `build/` directory of
    /// large artifacts would be fetched before the sources.)
    pub fn chunks_in_path_order(&self) -> Vec<ChunkInfo> {
        let mut seen = vec![false; self.chunks.len()];
        let (mut packs, mut large) = (Vec::new(), Vec::new());
        for (_, n) in self.iter() {
            let extents = n.extents();
            let small = extents.len() == 1 && n.size() < crate::manifest::chunker::SMALL_FILE_LIMIT;
            for x in extents {
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
    pub fn iter(&self) -> impl Iterator<Item = (u64, Node<'_>)> {
        (1..=self.recs.len() as u64).filter_map(move |ino| self.get(ino).map(|n| (ino, n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: EntryKind, size: u64, extents: Vec<Extent>) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            kind,
            mode: 0o644,
            mtime_sec: 7,
            mtime_nsec: 9,
            size,
            target: if kind == EntryKind::Symlink {
                b"t/x".to_vec()
            } else {
                vec![]
            },
            extents,
            content: Digest([size as u8; 32]),
        }
    }

    #[test]
    fn a_tree_reads_back_as_it_was_given() {
        let x = |chunk, offset, len| Extent { chunk, offset, len };
        let big = CONTENT_DIGEST_MIN_BYTES;
        let entries = vec![
            entry("a", EntryKind::Dir, 0, vec![]),
            entry("a/b", EntryKind::File, 3, vec![x(0, 0, 3)]),
            entry("a/b-", EntryKind::Symlink, 3, vec![]),
            entry("a/b/", EntryKind::Dir, 0, vec![]), // sorts after "a/b-": not a child of a file
            entry(
                "z",
                EntryKind::File,
                big,
                vec![x(1, 0, 100), x(2, 0, (big - 100) as u32)],
            ),
        ];
        // "a/b/" is a directory whose parent "a/b" is a file: refused.
        let chunks = vec![
            ChunkInfo {
                hash: Digest([1; 32]),
                raw_len: 10,
                stored_len: 5,
            },
            ChunkInfo {
                hash: Digest([2; 32]),
                raw_len: 100,
                stored_len: 5,
            },
            ChunkInfo {
                hash: Digest([3; 32]),
                raw_len: (big - 100) as u32,
                stored_len: 5,
            },
        ];
        assert!(InodeTable::build(&entries, chunks.clone(), RootMeta::default()).is_err());
        let mut entries = entries;
        entries.remove(3);
        let t = InodeTable::build(&entries, chunks, RootMeta::default()).unwrap();
        assert_eq!(t.len(), 5);
        let a = t.lookup(ROOT, b"a").unwrap();
        let b = t.lookup(a, b"b").unwrap();
        let n = t.get(b).unwrap();
        assert_eq!(
            (n.name(), n.kind(), n.size(), n.mtime()),
            (&b"b"[..], EntryKind::File, 3, (7, 9))
        );
        assert_eq!(n.path(), b"a/b");
        assert_eq!(n.parent(), a);
        assert_eq!(n.extents(), &[x(0, 0, 3)]);
        assert_eq!(n.content(), None, "small files keep no digest");
        let l = t.get(t.lookup(a, b"b-").unwrap()).unwrap();
        assert_eq!(l.target(), b"t/x");
        assert!(l.extents().is_empty() && l.children().is_empty());
        let z = t.get(t.lookup(ROOT, b"z").unwrap()).unwrap();
        assert_eq!(z.ext_starts(), &[0, 100]);
        assert_eq!(z.content(), Some(&Digest([big as u8; 32])));
        assert_eq!(t.get(ROOT).unwrap().path(), b"");
        let names: Vec<&[u8]> = t
            .get(a)
            .unwrap()
            .children()
            .iter()
            .map(|c| t.get(u64::from(*c)).unwrap().name())
            .collect();
        assert_eq!(names, [&b"b"[..], b"b-"]);
        assert_eq!(t.lookup(a, b"nope"), None);
        assert!(t.get(0).is_none() && t.get(6).is_none());
        assert_eq!(t.next_chunk(0), Some(1));
        assert_eq!(t.next_chunk(2), None);
        assert_eq!(t.total_bytes(), 3 + big);
    }

    #[test]
    fn children_sort_by_name_bytes_not_by_path() {
        // Path order puts "d/a b" after "d/a/x"? No: ' ' (0x20) < '/' (0x2f), so "d/a b" comes
        // first in path order, but as names "a" < "a b": the table sorts names itself.
        let entries = vec![
            entry("d", EntryKind::Dir, 0, vec![]),
            entry("d/a b", EntryKind::File, 0, vec![]),
            entry("d/a", EntryKind::Dir, 0, vec![]),
        ];
        let mut sorted = entries.clone();
        sorted.sort_by(|a, b| a.path.cmp(&b.path));
        let t = InodeTable::build(&sorted, vec![], RootMeta::default()).unwrap();
        let d = t.lookup(ROOT, b"d").unwrap();
        let names: Vec<&[u8]> = t
            .get(d)
            .unwrap()
            .children()
            .iter()
            .map(|c| t.get(u64::from(*c)).unwrap().name())
            .collect();
        assert_eq!(names, [&b"a"[..], b"a b"]);
        assert!(t.lookup(d, b"a b").is_some() && t.lookup(d, b"a").is_some());
    }
}
