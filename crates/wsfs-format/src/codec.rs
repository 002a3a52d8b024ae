//! Binary encoding of a [`Manifest`]. Every version starts with a fixed header (magic, format
//! version). Decoding never trusts its input: sizes are bounded before anything is allocated.
//!
//! * **Version 2** (written): a small head (names, parents, creation time, root metadata), the
//!   [tree index](crate::tree) zstd-compressed, and the per-entry whole-file digests
//!   zstd-compressed apart from it. A mount [`open`]s it: one decompression into an aligned
//!   buffer, and lookups are served from that buffer in place — no per-entry structure is
//!   built, so mount time and memory stay close to the size of the tree itself. The digests
//!   section is only decompressed by readers that want whole [`Manifest`]s (gc, verify, merges).
//! * **Version 1** (read; written only by [`encode_v1`]): a zstd-compressed bincode body of the
//!   whole manifest. It is decoded and validated entirely, and a mount builds the tree from it.
//!
//! ```text
//! v2:  "WSFSMANI" | u32 2 | u32 head length | head (bincode)
//!      | u64 tree length | u64 stored length | zstd(tree)
//!      | u64 digests length | u64 stored length | zstd(32 bytes per inode, root first)
//! ```

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
pub const FORMAT_VERSION: u32 = 2;
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
    fn of(m: &Manifest) -> Head {
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
            Body::Decoded(m) => Tree::build(&m.entries, m.chunks, m.root).map_err(build_error),
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
    let tree = Tree::build(&manifest.entries, manifest.chunks.clone(), manifest.root)
        .map_err(|e| enc(e.0))?;
    let mut digests = Vec::with_capacity((manifest.entries.len() + 1) * 32);
    digests.extend_from_slice(&[0u8; 32]);
    for e in &manifest.entries {
        digests.extend_from_slice(&e.content.0);
    }
    let ztree = zstd::bulk::compress(tree.as_bytes(), 3).map_err(|e| enc(e.to_string()))?;
    let zdig = zstd::bulk::compress(&digests, 3).map_err(|e| enc(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + 4 + head.len() + 32 + ztree.len() + zdig.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(head.len() as u32).to_le_bytes());
    out.extend_from_slice(&head);
    for (raw, z) in [(tree.as_bytes().len(), &ztree), (digests.len(), &zdig)] {
        out.extend_from_slice(&(raw as u64).to_le_bytes());
        out.extend_from_slice(&(z.len() as u64).to_le_bytes());
        out.extend_from_slice(z);
    }
    Ok(out)
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
        v @ (FORMAT_VERSION | FORMAT_VERSION_V1) => Ok(v),
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

/// Opens a manifest for mounting. v2: the head is checked and the tree decompressed and opened
/// (its entries are checked as they are used); v1: decoded and validated whole.
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
            let tree = inflate_tree(s.tree)?;
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

/// A v2 manifest's parts: the decoded head, the tree's and the digests' (length, stored bytes).
struct V2<'a> {
    head: Head,
    tree: (usize, &'a [u8]),
    digests: (usize, &'a [u8]),
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
    let mut part = |what: &str| -> Result<(usize, &[u8]), ManifestError> {
        let raw = le(take(8, what)?);
        let stored = le(take(8, what)?);
        if raw > MAX_BODY as u64 || stored > MAX_BODY as u64 {
            return Err(corrupt(format!("its {what} is over the size limit")));
        }
        Ok((raw as usize, take(stored as usize, what)?))
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

/// Decompresses exactly `len` bytes into a new buffer (8-byte aligned for the tree).
fn inflate(len: usize, stored: &[u8], what: &str) -> Result<Vec<u64>, ManifestError> {
    // The frame says how much it holds: a length that disagrees is refused before anything of
    // that size is allocated.
    match zstd::zstd_safe::get_frame_content_size(stored) {
        Ok(Some(n)) if n == len as u64 => {}
        _ => {
            return Err(corrupt(format!(
                "its {what} is not one zstd frame of {len} bytes"
            )))
        }
    }
    let mut buf = vec![0u64; len.div_ceil(8)];
    let out: &mut [u8] = &mut bytemuck::cast_slice_mut(&mut buf)[..len];
    let got = zstd::bulk::Decompressor::new()
        .and_then(|mut d| d.decompress_to_buffer(stored, out))
        .map_err(|e| {
            corrupt(format!(
                "its {what} does not decompress to {len} bytes: {e}"
            ))
        })?;
    if got != len {
        return Err(corrupt(format!(
            "its {what} decompresses to {got} bytes, not {len}"
        )));
    }
    Ok(buf)
}

fn inflate_tree((len, stored): (usize, &[u8])) -> Result<Tree, ManifestError> {
    Tree::open(inflate(len, stored, "tree")?, len).map_err(|e| corrupt(e.0))
}

/// The entries of a v2 tree, paths made from the parent chains, in inode (= path) order.
fn rebuild(head: Head, tree: &Tree, digests: (usize, &[u8])) -> Result<Manifest, ManifestError> {
    let (len, stored) = digests;
    if len != tree.len() * 32 {
        return Err(corrupt("its digests do not match its entries in number"));
    }
    let digests = inflate(len, stored, "digests")?;
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
