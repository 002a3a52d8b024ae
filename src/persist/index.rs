//! The persist index: what the last persist of the same tree read, so that a re-persist reads
//! and chunks only the files that changed (git's index, restic's cache).
//!
//! One index file per (root directory, workspace, layer), in the index directory
//! (`--index-dir`; `/var/cache/wsfs/persist-index` for root). It maps each file's path to the
//! stat it had when it was read — size, mtime and ctime in nanoseconds, inode, device — and to
//! the content digest and extents the layer recorded for it, with the chunks they name.
//!
//! Invariants:
//! * A file is reused only if every stat field is unchanged **and** neither its mtime nor its
//!   ctime falls within [`RACY_WINDOW_NS`] of the start of the persist that indexed it. A file
//!   changed again within the filesystem's timestamp granularity after it was read can keep its
//!   stat; git calls such entries "racily clean" and compares them again. Here they are read
//!   again. (The start of that persist is a lower bound for every read it made, so the rule errs
//!   towards reading.)
//! * The index is a hint, never a source of truth about stores: every chunk it names is confirmed
//!   on every target store (HEAD, with its stored size) before a layer that uses it is committed;
//!   a chunk missing anywhere sends its files back to be read (see `persist/reuse.rs`).
//! * An index that is missing, damaged, of another version, written with other chunking
//!   parameters or for another tree costs a full read, never a wrong layer: it is checked whole
//!   (a BLAKE3 trailer, every extent inside its chunk, sizes adding up) before anything in it is
//!   used.
//! * Persist never fails because of the index: a failure to read or write it is a warning.

use crate::manifest::chunker::{CDC_AVG, CDC_MAX, CDC_MIN, PACK_TARGET, SMALL_FILE_LIMIT};
use crate::manifest::{ChunkInfo, Digest, EntryKind, Extent, Manifest};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MAGIC: &[u8; 8] = b"WSFSPIX1";
/// 2: chunks carry their frame tables (an index of version 1 costs one full read).
const VERSION: u32 = 2;
const HEADER_LEN: usize = 12;
const TRAILER_LEN: usize = 32;
/// Files whose mtime or ctime is within this of (or after) the start of the persist that indexed
/// them are read again: one second covers the coarsest timestamps in use (ext3, some network
/// filesystems).
pub const RACY_WINDOW_NS: i64 = 1_000_000_000;
/// An index file larger than this is not read (about 4 million files).
const MAX_INDEX_BYTES: u64 = 1 << 30;
/// Upper bound on the decompressed body.
const MAX_BODY: usize = 2 << 30;

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_BODY>()
}

/// The chunker's parameters: an index written with others is not used (its packs and cut points
/// would not be what this build makes).
fn chunker_params() -> [u64; 5] {
    [
        SMALL_FILE_LIMIT,
        PACK_TARGET as u64,
        u64::from(CDC_MIN),
        u64::from(CDC_AVG),
        u64::from(CDC_MAX),
    ]
}

/// What a file's stat must still say for its indexed content to be reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    pub dev: u64,
}

impl Stamp {
    pub fn of(m: &std::fs::Metadata) -> Stamp {
        Stamp {
            size: m.len(),
            mtime_ns: m.mtime().saturating_mul(1_000_000_000) + m.mtime_nsec(),
            ctime_ns: m.ctime().saturating_mul(1_000_000_000) + m.ctime_nsec(),
            ino: m.ino(),
            dev: m.dev(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct IndexedFile {
    path: Vec<u8>,
    stamp: Stamp,
    content: Digest,
    /// Into [`Body::chunks`].
    extents: Vec<Extent>,
}

#[derive(Serialize, Deserialize)]
struct Body {
    chunker: [u64; 5],
    /// The tree, workspace and layer this index is for (its file name is a hash of them).
    root: Vec<u8>,
    workspace: String,
    layer: String,
    /// Unix nanoseconds when the persist that wrote this index started.
    started_ns: i64,
    chunks: Vec<ChunkInfo>,
    /// Each chunk's frame table, as the layer recorded it (empty: read whole).
    frames: Vec<Vec<ChunkInfo>>,
    /// Sorted by path, unique.
    files: Vec<IndexedFile>,
}

/// What the index says about one unchanged file.
#[derive(Clone, Debug, PartialEq)]
pub struct Reuse {
    pub size: u64,
    pub content: Digest,
    /// Each piece of the content: the chunk it is in, its offset there and its length.
    pub pieces: Vec<(ChunkInfo, u32, u32)>,
    /// Each piece's chunk's frame table (shared: a pack's table serves thousands of files).
    pub frames: Vec<Arc<[ChunkInfo]>>,
}

impl Reuse {
    /// The frame table recorded for chunk `d` (empty: none, or not one of this file's chunks).
    pub fn frames_of(&self, d: &Digest) -> Vec<ChunkInfo> {
        self.pieces
            .iter()
            .position(|(c, _, _)| c.hash == *d)
            .and_then(|i| self.frames.get(i))
            .map(|f| f.to_vec())
            .unwrap_or_default()
    }
}

/// A loaded, checked index.
pub struct PersistIndex {
    body: Body,
    /// `body.frames`, shared by the [`Reuse`]s handed out.
    frames: Vec<Arc<[ChunkInfo]>>,
}

/// Which tree an index is for.
#[derive(Clone, Debug)]
pub struct IndexKey {
    pub root: PathBuf,
    pub workspace: String,
    pub layer: String,
}

impl IndexKey {
    /// The index's file in `dir`: a hash of the key, so any root path makes a safe file name.
    pub fn file_in(&self, dir: &Path) -> PathBuf {
        let mut h = blake3::Hasher::new();
        h.update(std::os::unix::ffi::OsStrExt::as_bytes(
            self.root.as_os_str(),
        ));
        h.update(b"\0");
        h.update(self.workspace.as_bytes());
        h.update(b"\0");
        h.update(self.layer.as_bytes());
        let hex = h.finalize().to_hex();
        dir.join(format!("{}.idx", &hex[..32]))
    }
}

/// The default index directory: `/var/cache/wsfs/persist-index` for root, else under
/// `$XDG_CACHE_HOME` or `~/.cache`. None when there is no home to put it in.
pub fn default_dir() -> Option<PathBuf> {
    if nix::unistd::geteuid().is_root() {
        return Some(PathBuf::from("/var/cache/wsfs/persist-index"));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|h| h.join(".cache"))
        })?;
    Some(base.join("wsfs").join("persist-index"))
}

impl PersistIndex {
    /// Reads the index for `key` from `dir`. `Ok(None)`: there is none (a first persist).
    /// `Err`: there is one but it cannot be used (the reason, for a warning).
    pub fn load(dir: &Path, key: &IndexKey) -> Result<Option<PersistIndex>, String> {
        let path = key.file_in(dir);
        let f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let len = f.metadata().map_err(|e| e.to_string())?.len();
        if len > MAX_INDEX_BYTES {
            return Err(format!("{}: {len} bytes is too large", path.display()));
        }
        let mut bytes = Vec::with_capacity(len as usize);
        std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_INDEX_BYTES), &mut bytes)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let index = Self::decode(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        let b = &index.body;
        if b.root != std::os::unix::ffi::OsStrExt::as_bytes(key.root.as_os_str())
            || b.workspace != key.workspace
            || b.layer != key.layer
        {
            return Err(format!("{} is for another tree or layer", path.display()));
        }
        Ok(Some(index))
    }

    fn decode(bytes: &[u8]) -> Result<PersistIndex, String> {
        if bytes.len() < HEADER_LEN + TRAILER_LEN || &bytes[..8] != MAGIC {
            return Err("not a wsfs persist index".into());
        }
        let (content, trailer) = bytes.split_at(bytes.len() - TRAILER_LEN);
        if blake3::hash(content).as_bytes() != trailer {
            return Err("damaged (checksum mismatch)".into());
        }
        let mut v = [0u8; 4];
        v.copy_from_slice(&bytes[8..12]);
        let version = u32::from_le_bytes(v);
        if version != VERSION {
            return Err(format!(
                "format version {version}, this wsfs reads {VERSION}"
            ));
        }
        let mut raw = Vec::new();
        let decoder = zstd::stream::read::Decoder::new(&content[HEADER_LEN..])
            .map_err(|e| format!("does not decompress: {e}"))?;
        std::io::Read::read_to_end(
            &mut std::io::Read::take(decoder, MAX_BODY as u64 + 1),
            &mut raw,
        )
        .map_err(|e| format!("does not decompress: {e}"))?;
        if raw.len() > MAX_BODY {
            return Err("inflates past its limit".into());
        }
        let (body, used): (Body, usize) = bincode::serde::decode_from_slice(&raw, bincode_config())
            .map_err(|e| format!("does not decode: {e}"))?;
        if used != raw.len() {
            return Err("trailing bytes after the body".into());
        }
        if body.chunker != chunker_params() {
            return Err("written with other chunking parameters".into());
        }
        check(&body)?;
        let frames = (0..body.chunks.len())
            .map(|i| Arc::from(body.frames.get(i).cloned().unwrap_or_default()))
            .collect();
        Ok(PersistIndex { body, frames })
    }

    /// The indexed content of `rel`, if its stat `now` shows it unchanged and it was not racily
    /// clean when indexed.
    pub fn lookup(&self, rel: &[u8], now: &Stamp) -> Option<Reuse> {
        let i = self
            .body
            .files
            .binary_search_by(|f| f.path.as_slice().cmp(rel))
            .ok()?;
        let f = &self.body.files[i];
        if f.stamp != *now {
            return None;
        }
        let horizon = self.body.started_ns.saturating_sub(RACY_WINDOW_NS);
        if f.stamp.mtime_ns >= horizon || f.stamp.ctime_ns >= horizon {
            return None;
        }
        Some(Reuse {
            size: f.stamp.size,
            content: f.content,
            pieces: f
                .extents
                .iter()
                .map(|x| (self.body.chunks[x.chunk as usize], x.offset, x.len))
                .collect(),
            frames: f
                .extents
                .iter()
                .map(|x| self.frames[x.chunk as usize].clone())
                .collect(),
        })
    }

    pub fn len(&self) -> usize {
        self.body.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.body.files.is_empty()
    }
}

/// Everything [`PersistIndex::lookup`] relies on: sorted unique paths, extents inside their
/// chunks, sizes adding up.
fn check(b: &Body) -> Result<(), String> {
    if !b.frames.is_empty() && b.frames.len() != b.chunks.len() {
        return Err("frame tables and chunks differ in number".into());
    }
    for (c, f) in b.chunks.iter().zip(&b.frames) {
        crate::manifest::frames::check(c, f).map_err(|why| format!("a frame table: {why}"))?;
    }
    for w in b.files.windows(2) {
        if w[0].path >= w[1].path {
            return Err("paths are not sorted and unique".into());
        }
    }
    for f in &b.files {
        let mut total = 0u64;
        for x in &f.extents {
            let c = b
                .chunks
                .get(x.chunk as usize)
                .ok_or("an extent names a chunk that is not in the index")?;
            if u64::from(x.offset) + u64::from(x.len) > u64::from(c.raw_len) || x.len == 0 {
                return Err("an extent lies outside its chunk".into());
            }
            total += u64::from(x.len);
        }
        if total != f.stamp.size {
            return Err("a file's extents do not add up to its size".into());
        }
    }
    Ok(())
}

/// Builds the index a persist leaves behind: the files of its manifest, with the stat each had
/// when it was walked. A file whose walked size differs from what was read (it changed during
/// the persist) is left out, so it is read again next time.
pub fn build(
    key: &IndexKey,
    started_ns: i64,
    manifest: &Manifest,
    stamps: &HashMap<Vec<u8>, Stamp>,
) -> Vec<u8> {
    let files: Vec<IndexedFile> = manifest
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .filter_map(|e| {
            let stamp = stamps.get(&e.path)?;
            (stamp.size == e.size).then(|| IndexedFile {
                path: e.path.clone(),
                stamp: *stamp,
                content: e.content,
                extents: e.extents.clone(),
            })
        })
        .collect();
    let body = Body {
        chunker: chunker_params(),
        root: std::os::unix::ffi::OsStrExt::as_bytes(key.root.as_os_str()).to_vec(),
        workspace: key.workspace.clone(),
        layer: key.layer.clone(),
        started_ns,
        chunks: manifest.chunks.clone(),
        frames: manifest.frames.clone(),
        files,
    };
    encode(&body)
}

fn encode(body: &Body) -> Vec<u8> {
    // Encoding plain data into a Vec cannot fail short of memory; an empty index is harmless.
    let raw = bincode::serde::encode_to_vec(body, bincode_config()).unwrap_or_default();
    let compressed = zstd::bulk::compress(&raw, 1).unwrap_or_default();
    let mut out = Vec::with_capacity(HEADER_LEN + compressed.len() + TRAILER_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&compressed);
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

/// Writes an index atomically (a temporary file, then a rename), readable by its owner only.
pub fn store(dir: &Path, key: &IndexKey, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    let dest = key.file_in(dir);
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        dest.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let r = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &dest)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// Unix nanoseconds now.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Entry, RootMeta};

    fn chunk(n: u8, raw_len: u32) -> ChunkInfo {
        ChunkInfo {
            hash: Digest([n; 32]),
            raw_len,
            stored_len: raw_len / 2,
        }
    }

    fn stamp(size: u64, t: i64) -> Stamp {
        Stamp {
            size,
            mtime_ns: t,
            ctime_ns: t,
            ino: 7,
            dev: 9,
        }
    }

    fn key() -> IndexKey {
        IndexKey {
            root: PathBuf::from("/src/tree"),
            workspace: "ws".into(),
            layer: "l".into(),
        }
    }

    fn manifest() -> Manifest {
        let file = |p: &str, size: u64, extents: Vec<Extent>| Entry {
            path: p.as_bytes().to_vec(),
            kind: EntryKind::File,
            mode: 0o644,
            mtime_sec: 0,
            mtime_nsec: 0,
            size,
            target: vec![],
            extents,
            content: Digest([size as u8; 32]),
        };
        let x = |chunk, offset, len| Extent { chunk, offset, len };
        Manifest {
            workspace: "ws".into(),
            layer: "l".into(),
            parents: vec![],
            created: 0,
            root: RootMeta::default(),
            chunks: vec![chunk(1, 100), chunk(2, 1000)],
            entries: vec![
                file("a", 10, vec![x(0, 0, 10)]),
                file("b", 20, vec![x(0, 10, 20)]),
                file("big", 1000, vec![x(1, 0, 1000)]),
            ],
            frames: vec![],
        }
    }

    const T0: i64 = 1_700_000_000_000_000_000;

    fn written(started: i64, stamps: &[(&str, Stamp)]) -> PersistIndex {
        let stamps = stamps
            .iter()
            .map(|(p, s)| (p.as_bytes().to_vec(), *s))
            .collect();
        PersistIndex::decode(&build(&key(), started, &manifest(), &stamps)).unwrap()
    }

    #[test]
    fn an_unchanged_file_is_reused_with_its_chunks() {
        let old = T0 - 10 * RACY_WINDOW_NS;
        let idx = written(T0, &[("a", stamp(10, old)), ("big", stamp(1000, old))]);
        assert_eq!(idx.len(), 2);
        let r = idx.lookup(b"big", &stamp(1000, old)).unwrap();
        assert_eq!(r.size, 1000);
        assert_eq!(r.pieces, vec![(chunk(2, 1000), 0, 1000)]);
        assert_eq!(
            idx.lookup(b"a", &stamp(10, old)).unwrap().pieces,
            vec![(chunk(1, 100), 0, 10)]
        );
        // Not indexed (no stamp when written).
        assert_eq!(idx.lookup(b"b", &stamp(20, old)), None);
    }

    #[test]
    fn any_stat_change_means_read_again() {
        let old = T0 - 10 * RACY_WINDOW_NS;
        let idx = written(T0, &[("a", stamp(10, old))]);
        let base = stamp(10, old);
        for changed in [
            Stamp {
                mtime_ns: old + 1,
                ..base
            },
            Stamp {
                ctime_ns: old + 1,
                ..base
            },
            Stamp { ino: 8, ..base },
            Stamp { dev: 10, ..base },
        ] {
            assert_eq!(idx.lookup(b"a", &changed), None, "{changed:?}");
        }
        // A size change: the walked size no longer matches.
        let idx = written(T0, &[("a", stamp(11, old))]);
        assert_eq!(
            idx.len(),
            0,
            "a file whose size changed while read is not indexed"
        );
    }

    #[test]
    fn a_file_changed_within_the_racy_window_is_read_again() {
        // mtime (or ctime) within a second of the indexing persist's start: its stat could
        // hide a same-size change made just after it was read.
        for (m, c) in [
            (T0 - RACY_WINDOW_NS / 2, T0 - 5 * RACY_WINDOW_NS),
            (T0 - 5 * RACY_WINDOW_NS, T0 - 1),
            (T0 + 3, T0 + 3),
        ] {
            let s = Stamp {
                mtime_ns: m,
                ctime_ns: c,
                ..stamp(10, 0)
            };
            let idx = written(T0, &[("a", s)]);
            assert_eq!(idx.lookup(b"a", &s), None, "mtime {m} ctime {c}");
        }
        let s = stamp(10, T0 - RACY_WINDOW_NS - 1);
        assert!(written(T0, &[("a", s)]).lookup(b"a", &s).is_some());
    }

    #[test]
    fn a_damaged_foreign_or_inconsistent_index_is_refused() {
        let old = T0 - 10 * RACY_WINDOW_NS;
        let stamps: HashMap<Vec<u8>, Stamp> = [(b"a".to_vec(), stamp(10, old))].into();
        let good = build(&key(), T0, &manifest(), &stamps);
        assert!(PersistIndex::decode(&good).is_ok());
        for i in [0, 9, 13, good.len() / 2, good.len() - 1] {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            assert!(PersistIndex::decode(&bad).is_err(), "byte {i} flipped");
        }
        assert!(PersistIndex::decode(&good[..good.len() - 1]).is_err());
        assert!(PersistIndex::decode(b"").is_err());
        // Well-formed but inconsistent: an extent outside its chunk, with a valid checksum.
        let mut body = Body {
            chunker: chunker_params(),
            root: b"/src/tree".to_vec(),
            workspace: "ws".into(),
            layer: "l".into(),
            started_ns: T0,
            chunks: vec![chunk(1, 100)],
            frames: vec![],
            files: vec![IndexedFile {
                path: b"a".to_vec(),
                stamp: stamp(10, old),
                content: Digest([0; 32]),
                extents: vec![Extent {
                    chunk: 0,
                    offset: 95,
                    len: 10,
                }],
            }],
        };
        assert!(PersistIndex::decode(&encode(&body)).is_err());
        body.files[0].extents[0] = Extent {
            chunk: 1,
            offset: 0,
            len: 10,
        };
        assert!(PersistIndex::decode(&encode(&body)).is_err());
        body.files[0].extents[0].chunk = 0;
        body.chunker[1] += 1;
        assert!(
            PersistIndex::decode(&encode(&body)).is_err(),
            "other chunking"
        );
    }

    #[test]
    fn load_finds_the_index_of_its_tree_only() {
        let dir = tempfile::tempdir().unwrap();
        let k = key();
        assert!(PersistIndex::load(dir.path(), &k).unwrap().is_none());
        let old = T0 - 10 * RACY_WINDOW_NS;
        let stamps: HashMap<Vec<u8>, Stamp> = [(b"a".to_vec(), stamp(10, old))].into();
        store(dir.path(), &k, &build(&k, T0, &manifest(), &stamps)).unwrap();
        let f = k.file_in(dir.path());
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            PersistIndex::load(dir.path(), &k).unwrap().unwrap().len(),
            1
        );
        let other = IndexKey {
            layer: "m".into(),
            ..k.clone()
        };
        assert!(PersistIndex::load(dir.path(), &other).unwrap().is_none());
        // The right file name with another tree's content is refused.
        std::fs::copy(&f, other.file_in(dir.path())).unwrap();
        assert!(PersistIndex::load(dir.path(), &other).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..4096)) {
            let _ = PersistIndex::decode(&bytes);
            let mut framed = MAGIC.to_vec();
            framed.extend_from_slice(&VERSION.to_le_bytes());
            framed.extend_from_slice(&bytes);
            let sum = blake3::hash(&framed);
            framed.extend_from_slice(sum.as_bytes());
            let _ = PersistIndex::decode(&framed);
        }
    }
}
