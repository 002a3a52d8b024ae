//! Building a tree index from entries sorted by path: what `encode` writes into a version-2
//! manifest, and what a mount of a version-1 manifest or of several merged layers serves.

use super::{
    name_ok, BuildError, FrameRun, Rec, Tree, CONTENT_DIGEST_MIN_BYTES, HEADER_LEN, KIND_DIR,
    KIND_FILE, KIND_SYMLINK, MAGIC, NO_CHUNK, NO_DIGEST, ROOT, SECTIONS, VERSION,
};
use crate::types::{ChunkInfo, Digest, Entry, EntryKind, Extent, RootMeta};
use std::collections::HashMap;
use std::ops::Range;

impl Tree {
    /// Builds the tree from entries sorted by path (parents before children), as a validated
    /// manifest or a layer merge provides them. `frames`: empty, or each chunk's frame table.
    pub fn build(
        entries: &[Entry],
        chunks: Vec<ChunkInfo>,
        frames: &[Vec<ChunkInfo>],
        root: RootMeta,
    ) -> Result<Tree, BuildError> {
        u32_of(entries.len() + 1, "entries")?;
        u32_of(chunks.len() + 1, "chunks")?;
        if !frames.is_empty() && frames.len() != chunks.len() {
            return Err(BuildError(format!(
                "{} frame tables for {} chunks",
                frames.len(),
                chunks.len()
            )));
        }
        let mut fruns: Vec<FrameRun> = Vec::with_capacity(frames.len());
        let mut frame_infos: Vec<ChunkInfo> = Vec::new();
        for (c, f) in chunks.iter().zip(frames) {
            crate::frames::check(c, f).map_err(|why| BuildError(why.to_string()))?;
            fruns.push(FrameRun {
                first: u32_of(frame_infos.len(), "frames")?,
                count: u32_of(f.len(), "frames")?,
            });
            frame_infos.extend_from_slice(f);
        }
        u32_of(frame_infos.len(), "frames")?;
        let mut recs: Vec<Rec> = Vec::with_capacity(entries.len() + 1);
        let mut names: Vec<u8> = Vec::new();
        let mut targets: Vec<u8> = Vec::new();
        let mut extents: Vec<Extent> = Vec::new();
        let mut starts: Vec<u64> = Vec::new();
        let mut digests: Vec<Digest> = Vec::new();
        let mut total_bytes = 0u64;
        recs.push(Rec {
            size: 0,
            mtime_sec: root.mtime_sec,
            parent: ROOT as u32,
            name_off: 0,
            mode: root.mode,
            mtime_nsec: root.mtime_nsec,
            first: 0,
            count: 0,
            digest: NO_DIGEST,
            name_len: 0,
            kind: KIND_DIR,
            _pad: 0,
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
            if !name_ok(name) {
                return Err(BuildError(format!(
                    "{:?}: not a valid name",
                    e.path_lossy()
                )));
            }
            // What a kind does not use must be empty: the tree keeps only what each kind uses,
            // and must not quietly drop the rest.
            let stray = match e.kind {
                EntryKind::Dir => e.size != 0 || !e.extents.is_empty() || !e.target.is_empty(),
                EntryKind::Symlink => !e.extents.is_empty() || e.size != e.target.len() as u64,
                EntryKind::File => !e.target.is_empty(),
            };
            if stray {
                return Err(BuildError(format!(
                    "{:?}: has a size, extents or a target its kind does not have",
                    e.path_lossy()
                )));
            }
            let ino = recs.len() as u32 + 1;
            let name_len = u16::try_from(name.len())
                .map_err(|_| BuildError(format!("{:?}: name too long", e.path_lossy())))?;
            let name_off = u32_of(names.len(), "name bytes")?;
            names.extend_from_slice(name);
            let mut digest = NO_DIGEST;
            let (kind, first, count) = match e.kind {
                EntryKind::Dir => {
                    dirs.insert(&e.path, ino);
                    (KIND_DIR, 0, 0)
                }
                EntryKind::Symlink => {
                    let first = u32_of(targets.len(), "symlink target bytes")?;
                    targets.extend_from_slice(&e.target);
                    u32_of(targets.len(), "symlink target bytes")?;
                    (KIND_SYMLINK, first, u32_of(e.target.len(), "target bytes")?)
                }
                EntryKind::File => {
                    let first = u32_of(extents.len(), "extents")?;
                    let mut at = 0u64;
                    for x in &e.extents {
                        if x.chunk as usize >= chunks.len() {
                            return Err(BuildError(format!(
                                "{:?} names a chunk outside the table",
                                e.path_lossy()
                            )));
                        }
                        extents.push(*x);
                        starts.push(at);
                        at += u64::from(x.len);
                    }
                    u32_of(extents.len(), "extents")?;
                    if at != e.size {
                        return Err(BuildError(format!(
                            "{:?}: extents add up to {at} bytes, not its size {}",
                            e.path_lossy(),
                            e.size
                        )));
                    }
                    total_bytes += e.size;
                    if e.size >= CONTENT_DIGEST_MIN_BYTES {
                        digest = u32_of(digests.len(), "digests")?;
                        digests.push(e.content);
                    }
                    (KIND_FILE, first, u32_of(e.extents.len(), "extents")?)
                }
            };
            recs.push(Rec {
                size: e.size,
                mtime_sec: e.mtime_sec,
                parent,
                name_off,
                mode: e.mode,
                mtime_nsec: e.mtime_nsec,
                first,
                count,
                digest,
                name_len,
                kind,
                _pad: 0,
            });
            kids.entry(parent).or_default().push(ino);
        }
        drop(dirs);
        // Children in one array, each directory's sorted by name: the lookup index (binary
        // search), so no name map is kept.
        let name_of = |recs: &[Rec], ino: u32| -> &[u8] {
            let r = &recs[(ino - 1) as usize];
            let at = r.name_off as usize;
            &names[at..at + usize::from(r.name_len)]
        };
        let mut children: Vec<u32> = Vec::with_capacity(entries.len());
        for ino in 1..=recs.len() as u32 {
            if recs[(ino - 1) as usize].kind != KIND_DIR {
                continue;
            }
            let mut list = kids.remove(&ino).unwrap_or_default();
            list.sort_by(|a, b| name_of(&recs, *a).cmp(name_of(&recs, *b)));
            let first = u32_of(children.len(), "children")?;
            let count = u32_of(list.len(), "children")?;
            children.extend_from_slice(&list);
            let r = &mut recs[(ino - 1) as usize];
            r.first = first;
            r.count = count;
        }
        let next = chunk_successors(&extents, chunks.len());
        let parts: [&[u8]; SECTIONS] = [
            bytemuck::cast_slice(&recs),
            &names,
            &targets,
            bytemuck::cast_slice(&children),
            bytemuck::cast_slice(&extents),
            bytemuck::cast_slice(&starts),
            bytemuck::cast_slice(&digests),
            bytemuck::cast_slice(&chunks),
            bytemuck::cast_slice(&next),
            bytemuck::cast_slice(&fruns),
            bytemuck::cast_slice(&frame_infos),
        ];
        Ok(Tree::assemble(&parts, total_bytes))
    }

    /// Lays the sections out behind a header, each 8-byte aligned.
    fn assemble(parts: &[&[u8]; SECTIONS], total_bytes: u64) -> Tree {
        let mut sections: [Range<usize>; SECTIONS] = Default::default();
        let mut at = HEADER_LEN;
        for (i, p) in parts.iter().enumerate() {
            sections[i] = at..at + p.len();
            at = (at + p.len()).next_multiple_of(8);
        }
        let mut buf = vec![0u64; at / 8];
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut buf);
        bytes[..8].copy_from_slice(MAGIC);
        bytes[8..12].copy_from_slice(&VERSION.to_le_bytes());
        bytes[12..16].copy_from_slice(&(SECTIONS as u32).to_le_bytes());
        bytes[16..24].copy_from_slice(&total_bytes.to_le_bytes());
        for (i, (p, r)) in parts.iter().zip(&sections).enumerate() {
            let h = 24 + i * 16;
            bytes[h..h + 8].copy_from_slice(&(r.start as u64).to_le_bytes());
            bytes[h + 8..h + 16].copy_from_slice(&(r.len() as u64).to_le_bytes());
            bytes[r.clone()].copy_from_slice(p);
        }
        Tree {
            buf,
            sections,
            total_bytes,
        }
    }
}

fn u32_of(n: usize, what: &str) -> Result<u32, BuildError> {
    u32::try_from(n).map_err(|_| BuildError(format!("too many {what} for one tree")))
}

/// Each chunk's successor in path order of first use (`NO_CHUNK`: the last).
fn chunk_successors(extents: &[Extent], chunks: usize) -> Vec<u32> {
    let mut next = vec![NO_CHUNK; chunks];
    let mut seen = vec![false; chunks];
    let mut last: Option<u32> = None;
    for x in extents {
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
