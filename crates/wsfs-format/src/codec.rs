//! Binary encoding of a [`Manifest`]. Every version starts with a fixed header (magic, format
//! version). Decoding never trusts its input: sizes are bounded before anything is allocated.
//!
//! * **Version 3** (written): as version 2, and its tree records how each chunk is stored in
//!   frames ([`crate::frames`]: what a range GET of part of a chunk is verified against).
//! * **Version 2** (read): a small head (names, parents, creation time, root metadata), the
//!   [tree index](crate::tree) zstd-compressed, and the per-entry whole-file digests
//!   zstd-compressed apart from it. A mount [`open`]s it: one decompression into an aligned
//!   buffer, and lookups are served from that buffer in place — no per-entry structure is
//!   built, so mount time and memory stay close to the size of the tree itself. The digests
//!   section is only decompressed by readers that want whole [`Manifest`]s (gc, verify, merges).
//! * **Version 1** (read; written only by [`encode_v1`]): a zstd-compressed bincode body of the
//!   whole manifest. It is decoded and validated entirely, and a mount builds the tree from it.
//!
//! ```text
//! v2/3: "WSFSMANI" | u32 2|3 | u32 head length | head (bincode) | part(tree) | part(digests)
//! part: u64 length | u32 frames | per frame (u64 raw length, u64 stored length) | the frames
//! ```
//!
//! A part is cut into independent zstd frames of [`FRAME_BYTES`] raw bytes, decompressed on
//! every core at once; the digests part holds 32 bytes per inode, root first.

use super::tree::{BuildError, Tree, ROOT};
use super::types::{ChunkInfo, Digest, Entry, EntryKind, Manifest, RootMeta};
use super::validate::validate;
use super::ManifestError;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

const MAGIC: &[u8; 8] = b"WSFSMANI";
/// The format version this build writes. Older binaries refuse it with a clear message instead
/// of misreading it.
pub const FORMAT_VERSION: u32 = 3;
/// Format 2: as 3, but its tree records no frames (see [`crate::frames`]). Still read.
pub const FORMAT_VERSION_V2: u32 = 2;
/// The first format: still read (and mounted), no longer written.
pub const FORMAT_VERSION_V1: u32 = 1;
const HEADER_LEN: usize = 12;
/// Upper bound on a decompressed manifest body or tree: ~2M entries. Protects the decoder from
/// a decompression bomb in a corrupt or hostile manifest.
const MAX_BODY: usize = 512 << 20;
/// Upper bound on a v2 head (names of the layer and its parents).
const MAX_HEAD: usize = 1 << 20;
/// Upper bound on a stored (compressed) manifest: a larger object is not read.
pub const MAX_MANIFEST_BYTES: u64 = 256 << 20;

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_BODY>()
}

/// What a manifest says about itself, apart from its tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub workspace: String,
    pub layer: String,
    pub parents: Vec<String>,
    /// Unix seconds.
    pub created: i64,
    pub root: RootMeta,
}

impl Head {
    /// The head of `m`.
    pub fn of(m: &Manifest) -> Head {
        Head {
            workspace: m.workspace.clone(),
            layer: m.layer.clone(),
            parents: m.parents.clone(),
            created: m.created,
            root: m.root,
        }
    }

    fn check(&self) -> Result<(), ManifestError> {
        use super::names::validate_name;
        validate_name("workspace", &self.workspace).map_err(ManifestError::Invalid)?;
        validate_name("layer", &self.layer).map_err(ManifestError::Invalid)?;
        for p in &self.parents {
            validate_name("parent layer", p).map_err(ManifestError::Invalid)?;
        }
        if self.root.mode & !0o7777 != 0 || self.root.mtime_nsec >= 1_000_000_000 {
            return Err(ManifestError::Invalid(format!(
                "root directory metadata out of range (mode {:o}, nsec {})",
                self.root.mode, self.root.mtime_nsec
            )));
        }
        Ok(())
    }
}

/// A manifest opened for mounting: its head, and its tree in place (v2) or decoded (v1).
pub struct Opened {
    pub head: Head,
    body: Body,
}

enum Body {
    Decoded(Manifest),
    InPlace { tree: Tree, object: Bytes },
}

impl Opened {
    /// True when the tree is served from the manifest's own index (version 2).
    pub fn in_place(&self) -> bool {
        matches!(self.body, Body::InPlace { .. })
    }

    /// The chunks the manifest names.
    pub fn chunks(&self) -> &[ChunkInfo] {
        match &self.body {
            Body::Decoded(m) => &m.chunks,
            Body::InPlace { tree, .. } => tree.chunk_table(),
        }
    }

    /// The tree to serve: v2's own index, or built from a v1 manifest.
    pub fn into_tree(self) -> Result<Tree, ManifestError> {
        match self.body {
            Body::InPlace { tree, .. } => Ok(tree),
            Body::Decoded(m) => {
                Tree::build(&m.entries, m.chunks, &m.frames, m.root).map_err(build_error)
            }
        }
    }

    /// The whole manifest, decoded and validated (for merges, gc and verify).
    pub fn into_manifest(self) -> Result<Manifest, ManifestError> {
        match self.body {
            Body::Decoded(m) => Ok(m),
            Body::InPlace { tree, object } => {
                let digests = v2_sections(&object)?.digests;
                let m = rebuild(self.head, &tree, digests)?;
                validate(&m)?;
                Ok(m)
            }
        }
    }
}

fn build_error(e: BuildError) -> ManifestError {
    ManifestError::Invalid(e.0)
}

/// Encodes `manifest` in the current format (which must be valid: it is checked, so a bug
/// cannot persist a manifest that no mount would accept).
pub fn encode(manifest: &Manifest) -> Result<Vec<u8>, ManifestError> {
    validate(manifest)?;
    let enc = |e: String| ManifestError::Encode(e);
    let head = bincode::serde::encode_to_vec(Head::of(manifest), bincode_config())
        .map_err(|e| enc(e.to_string()))?;
    let tree = Tree::build(
        &manifest.entries,
        manifest.chunks.clone(),
        &manifest.frames,
        manifest.root,
    )
    .map_err(|e| enc(e.0))?;
    let mut digests = Vec::with_capacity((manifest.entries.len() + 1) * 32);
    digests.extend_from_slice(&[0u8; 32]);
    for e in &manifest.entries {
        digests.extend_from_slice(&e.content.0);
    }
    let mut out = Vec::with_capacity(HEADER_LEN + 4 + head.len() + tree.as_bytes().len() / 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(head.len() as u32).to_le_bytes());
    out.extend_from_slice(&head);
    write_part(&mut out, tree.as_bytes())?;
    write_part(&mut out, &digests)?;
    Ok(out)
}

/// Raw bytes per zstd frame of a part: frames are independent, so a mount decompresses them on
/// every core at once (a 1M-entry tree is about 80 MiB).
pub const FRAME_BYTES: usize = 8 << 20;
/// Upper bound on the frames of one part (MAX_BODY / FRAME_BYTES, with room).
const MAX_FRAMES: usize = 256;

/// Appends a part: its length, its frame count, each frame's (raw, stored) length, the frames.
pub fn write_part(out: &mut Vec<u8>, raw: &[u8]) -> Result<(), ManifestError> {
    let frames = raw
        .chunks(FRAME_BYTES)
        .map(|c| zstd::bulk::compress(c, 3))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ManifestError::Encode(e.to_string()))?;
    out.extend_from_slice(&(raw.len() as u64).to_le_bytes());
    out.extend_from_slice(&(frames.len() as u32).to_le_bytes());
    for (c, z) in raw.chunks(FRAME_BYTES).zip(&frames) {
        out.extend_from_slice(&(c.len() as u64).to_le_bytes());
        out.extend_from_slice(&(z.len() as u64).to_le_bytes());
    }
    for z in &frames {
        out.extend_from_slice(z);
    }
    Ok(())
}

/// Encodes `manifest` in format version 1, as wsfs before the tree index wrote it. Kept so
/// that tests can prove such manifests still mount.
pub fn encode_v1(manifest: &Manifest) -> Result<Vec<u8>, ManifestError> {
    validate(manifest)?;
    let body = bincode::serde::encode_to_vec(manifest, bincode_config())
        .map_err(|e| ManifestError::Encode(e.to_string()))?;
    let compressed =
        zstd::bulk::compress(&body, 3).map_err(|e| ManifestError::Encode(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + compressed.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION_V1.to_le_bytes());
    out.extend_from_slice(&compressed);
    Ok(out)
}

fn version(bytes: &[u8]) -> Result<u32, ManifestError> {
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err(ManifestError::NotAManifest);
    }
    let mut v = [0u8; 4];
    v.copy_from_slice(&bytes[8..12]);
    match u32::from_le_bytes(v) {
        v @ (FORMAT_VERSION | FORMAT_VERSION_V2 | FORMAT_VERSION_V1) => Ok(v),
        found => Err(ManifestError::UnknownVersion {
            found,
            supported: FORMAT_VERSION,
        }),
    }
}

/// Decodes and validates a whole manifest, of either version.
pub fn decode(bytes: &[u8]) -> Result<Manifest, ManifestError> {
    match version(bytes)? {
        FORMAT_VERSION_V1 => decode_v1(bytes),
        _ => open(Bytes::copy_from_slice(bytes))?.into_manifest(),
    }
}

/// Opens a manifest for mounting. v2: the head is checked, the tree decompressed, opened and
/// checked whole in one pass over its records ([`Tree::check`]; no per-entry structure is
/// built); v1: decoded and validated whole.
pub fn open(bytes: Bytes) -> Result<Opened, ManifestError> {
    match version(&bytes)? {
        FORMAT_VERSION_V1 => {
            let m = decode_v1(&bytes)?;
            Ok(Opened {
                head: Head::of(&m),
                body: Body::Decoded(m),
            })
        }
        _ => {
            let s = v2_sections(&bytes)?;
            let head = s.head;
            let tree = inflate_tree(&s.tree)?;
            Ok(Opened {
                head,
                body: Body::InPlace {
                    tree,
                    object: bytes,
                },
            })
        }
    }
}

/// A v2 manifest's parts: the decoded head, the tree and the digests.
struct V2<'a> {
    head: Head,
    tree: Part<'a>,
    digests: Part<'a>,
}

/// A compressed part: its length, and its frames as (raw length, stored bytes), in order.
struct Part<'a> {
    len: usize,
    frames: Vec<(usize, &'a [u8])>,
}

fn corrupt(why: impl Into<String>) -> ManifestError {
    ManifestError::Corrupt(why.into())
}

fn v2_sections(bytes: &[u8]) -> Result<V2<'_>, ManifestError> {
    let mut at = HEADER_LEN;
    let mut take = |n: usize, what: &str| -> Result<&[u8], ManifestError> {
        let end = at
            .checked_add(n)
            .filter(|e| *e <= bytes.len())
            .ok_or_else(|| corrupt(format!("truncated in its {what}")))?;
        let s = &bytes[at..end];
        at = end;
        Ok(s)
    };
    let le = |b: &[u8]| -> u64 { b.iter().rev().fold(0u64, |a, x| (a << 8) | u64::from(*x)) };
    let head_len = le(take(4, "head length")?) as usize;
    if head_len > MAX_HEAD {
        return Err(corrupt(format!(
            "a head of {head_len} bytes is over the limit"
        )));
    }
    let head_bytes = take(head_len, "head")?;
    let (head, used): (Head, usize) =
        bincode::serde::decode_from_slice(head_bytes, bincode_config())
            .map_err(|e| corrupt(format!("head does not decode: {e}")))?;
    if used != head_len {
        return Err(corrupt("trailing bytes after the head"));
    }
    head.check()?;
    let mut part = |what: &str| -> Result<Part<'_>, ManifestError> {
        let len = le(take(8, what)?);
        let count = le(take(4, what)?) as usize;
        if len > MAX_BODY as u64 || count > MAX_FRAMES {
            return Err(corrupt(format!("its {what} is over the size limit")));
        }
        let mut sizes = Vec::with_capacity(count);
        let mut sum = 0u64;
        for _ in 0..count {
            let raw = le(take(8, what)?);
            let stored = le(take(8, what)?);
            if raw > FRAME_BYTES as u64 || stored > MAX_BODY as u64 {
                return Err(corrupt(format!(
                    "a frame of its {what} is over the size limit"
                )));
            }
            sum += raw;
            sizes.push((raw as usize, stored as usize));
        }
        if sum != len {
            return Err(corrupt(format!(
                "its {what}'s frames do not add up to its length"
            )));
        }
        let mut frames = Vec::with_capacity(count);
        for (raw, stored) in sizes {
            frames.push((raw, take(stored, what)?));
        }
        Ok(Part {
            len: len as usize,
            frames,
        })
    };
    let tree = part("tree")?;
    let digests = part("digests")?;
    if at != bytes.len() {
        return Err(corrupt(format!("{} trailing bytes", bytes.len() - at)));
    }
    Ok(V2 {
        head,
        tree,
        digests,
    })
}

/// Decompresses a part into a new buffer (8-byte aligned for the tree), its frames on every
/// core at once. Each frame must say it holds exactly its recorded length, which is checked
/// before anything of that size is allocated.
fn inflate(part: &Part<'_>, what: &str) -> Result<Vec<u64>, ManifestError> {
    for (raw, stored) in &part.frames {
        match zstd::zstd_safe::get_frame_content_size(stored) {
            Ok(Some(n)) if n == *raw as u64 => {}
            _ => {
                return Err(corrupt(format!(
                    "a frame of its {what} is not one zstd frame of {raw} bytes"
                )))
            }
        }
    }
    let mut buf = vec![0u64; part.len.div_ceil(8)];
    let out: &mut [u8] = &mut bytemuck::cast_slice_mut(&mut buf)[..part.len];
    // Each worker takes every n-th frame; frames are FRAME_BYTES long but the last.
    let mut slices: Vec<(&mut [u8], &[u8])> = out
        .chunks_mut(FRAME_BYTES)
        .zip(part.frames.iter().map(|(_, z)| *z))
        .collect();
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8)
        .min(slices.len().max(1));
    let decompress = |jobs: &mut [(&mut [u8], &[u8])]| -> Result<(), ManifestError> {
        let mut d = zstd::bulk::Decompressor::new().map_err(|e| corrupt(e.to_string()))?;
        for (o, z) in jobs.iter_mut() {
            let want = o.len();
            let got = d
                .decompress_to_buffer(z, &mut **o)
                .map_err(|e| corrupt(format!("its {what} does not decompress: {e}")))?;
            if got != want {
                return Err(corrupt(format!(
                    "a frame of its {what} decompresses to {got} bytes, not {want}"
                )));
            }
        }
        Ok(())
    };
    if workers <= 1 {
        decompress(&mut slices)?;
    } else {
        let per = slices.len().div_ceil(workers);
        std::thread::scope(|s| {
            let handles: Vec<_> = slices
                .chunks_mut(per)
                .map(|jobs| s.spawn(|| decompress(jobs)))
                .collect();
            handles.into_iter().try_for_each(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(corrupt("a decompressor failed")))
            })
        })?;
    }
    Ok(buf)
}

fn inflate_tree(part: &Part<'_>) -> Result<Tree, ManifestError> {
    let tree = Tree::open(inflate(part, "tree")?, part.len).map_err(|e| corrupt(e.0))?;
    tree.check().map_err(|e| corrupt(e.to_string()))?;
    Ok(tree)
}

/// The entries of a v2 tree, paths made from the parent chains, in inode (= path) order.
fn rebuild(head: Head, tree: &Tree, digests: Part<'_>) -> Result<Manifest, ManifestError> {
    let len = digests.len;
    if len != tree.len() * 32 {
        return Err(corrupt("its digests do not match its entries in number"));
    }
    let digests = inflate(&digests, "digests")?;
    let digests: &[u8] = &bytemuck::cast_slice(&digests)[..len];
    let mut dirs: HashMap<u64, Vec<u8>> = HashMap::from([(ROOT, Vec::new())]);
    let mut entries = Vec::with_capacity(tree.len().saturating_sub(1));
    for ino in ROOT + 1..=tree.len() as u64 {
        let n = tree
            .node(ino)
            .map_err(|e| corrupt(e.to_string()))?
            .ok_or_else(|| corrupt("an inode is missing"))?;
        let parent = dirs
            .get(&n.parent())
            .ok_or_else(|| corrupt("an entry's parent is not a directory"))?;
        let mut path = Vec::with_capacity(parent.len() + 1 + n.name().len());
        if !parent.is_empty() {
            path.extend_from_slice(parent);
            path.push(b'/');
        }
        path.extend_from_slice(n.name());
        if n.kind() == EntryKind::Dir {
            dirs.insert(ino, path.clone());
        }
        let at = (ino - 1) as usize * 32;
        let mut content = [0u8; 32];
        content.copy_from_slice(&digests[at..at + 32]);
        let (mtime_sec, mtime_nsec) = n.mtime();
        entries.push(Entry {
            path,
            kind: n.kind(),
            mode: n.mode(),
            mtime_sec,
            mtime_nsec,
            size: n.size(),
            target: n.target().to_vec(),
            extents: n.extents().to_vec(),
            content: Digest(content),
        });
    }
    Ok(Manifest {
        workspace: head.workspace,
        layer: head.layer,
        parents: head.parents,
        created: head.created,
        root: head.root,
        chunks: tree.chunk_table().to_vec(),
        entries,
        frames: tree.frame_tables(),
    })
}

fn decode_v1(bytes: &[u8]) -> Result<Manifest, ManifestError> {
    // Streamed through a bounded reader: memory grows with the real body, never to MAX_BODY up
    // front, and a body that inflates past MAX_BODY is rejected.
    let mut body = Vec::new();
    let decoder = zstd::stream::read::Decoder::new(&bytes[HEADER_LEN..])
        .map_err(|e| corrupt(format!("body does not decompress: {e}")))?;
    std::io::Read::read_to_end(
        &mut std::io::Read::take(decoder, MAX_BODY as u64 + 1),
        &mut body,
    )
    .map_err(|e| corrupt(format!("body does not decompress: {e}")))?;
    if body.len() > MAX_BODY {
        return Err(corrupt(format!(
            "body inflates past the limit of {MAX_BODY} bytes"
        )));
    }
    let (manifest, used): (Manifest, usize) =
        bincode::serde::decode_from_slice(&body, bincode_config())
            .map_err(|e| corrupt(format!("body does not decode: {e}")))?;
    if used != body.len() {
        return Err(corrupt(format!(
            "{} trailing bytes after the manifest body",
            body.len() - used
        )));
    }
    validate(&manifest)?;
    Ok(manifest)
}
