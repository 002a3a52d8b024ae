//! The filesystem's logic, independent of the kernel: attributes, lookups, directory listings and
//! reads over the immutable [`InodeTable`], with content from the [`Fetcher`]. The FUSE adapter
//! in `fuse.rs` only translates. Everything here can be tested without mounting.

use super::error::FsError;
use super::inode::{InodeTable, Node};
use super::ledger::{Failure, FailureLedger};
use super::opstats::FuseOpStats;
use super::pages::KernelPages;
use super::warmup::Warmup;
use crate::fetcher::{FetchError, Fetcher};
use crate::manifest::{ChunkInfo, EntryKind};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Attributes of one inode, in kernel-neutral terms.
#[derive(Clone, Debug, PartialEq)]
pub struct Attr {
    pub ino: u64,
    pub kind: EntryKind,
    pub perm: u16,
    pub size: u64,
    pub blocks: u64,
    pub mtime: SystemTime,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Default)]
pub struct FsStats {
    pub reads: AtomicU64,
    pub bytes_served: AtomicU64,
    pub eio: AtomicU64,
    /// `--passthrough`: opens answered with a backing file, opens that fell back to reads
    /// through wsfs (the kernel refused the backing file), and files materialized for it.
    pub passthrough_opens: AtomicU64,
    pub passthrough_fallbacks: AtomicU64,
    pub files_materialized: AtomicU64,
}

/// Files smaller than this are not worth a passthrough copy: the page cache serves them, and
/// wsfs pushes small files into it itself.
pub const PASSTHROUGH_MIN_BYTES: u64 = super::inode::CONTENT_DIGEST_MIN_BYTES;

/// How many extents past the last one a read touched are fetched ahead of time, at most…
pub const READ_AHEAD_EXTENTS: usize = 16;
/// …and how many bytes of them (whole extents; chunks average 1 MiB): as far ahead as the reader
/// has read from the file's start, between the two bounds — a reader that has come far is
/// sequential and needs several fetches in flight to fill a link with long round trips; one
/// near the start may read a header and stop.
pub const READ_AHEAD_MIN_BYTES: u64 = 4 << 20;
pub const READ_AHEAD_MAX_BYTES: u64 = 16 << 20;
/// After a read from a pack (small files packed together), how many of the packs that follow it
/// in path order are fetched too: a job reading a directory's files reads the next packs next.
pub const PACK_READ_AHEAD: usize = 2;

pub struct WsFs {
    table: InodeTable,
    fetcher: Arc<Fetcher>,
    uid: u32,
    gid: u32,
    pub stats: FsStats,
    /// FUSE requests and error replies by op (bumped by the adapter).
    pub ops: FuseOpStats,
    pub ledger: FailureLedger,
    /// The kernel cache warm-up of `--prefetch tree|all` (counters and stop control).
    pub warmup: Warmup,
    /// What has been pushed into the kernel's page cache, and the budget left for it.
    pub pages: KernelPages,
    /// `--profile`: the order of first reads per chunk, when this mount records one.
    recorder: std::sync::OnceLock<super::recorder::Recorder>,
    /// `--profile`: how the replay of the stored profile went.
    pub profile_stats: Arc<super::recorder::ProfileStats>,
}

/// One entry of a directory listing; `next` is the offset to resume after it.
pub struct DirItem<'a> {
    pub ino: u64,
    pub next: u64,
    pub kind: EntryKind,
    pub name: &'a [u8],
}

fn to_time(sec: i64, nsec: u32) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(u64::from(nsec))
    }
}

impl WsFs {
    pub fn new(table: InodeTable, fetcher: Arc<Fetcher>, uid: u32, gid: u32) -> WsFs {
        WsFs {
            pages: KernelPages::new(table.len() + 1),
            table,
            fetcher,
            uid,
            gid,
            stats: FsStats::default(),
            ops: FuseOpStats::default(),
            ledger: FailureLedger::default(),
            warmup: Warmup::default(),
            recorder: std::sync::OnceLock::new(),
            profile_stats: Arc::default(),
        }
    }

    /// From now on, record the order in which reads first touch chunks (`--profile`).
    /// `packs_whole`: a read of a small file records its whole pack, not its frames — on a
    /// mount that pushes a read file's pack neighbours into the page cache, the job reads those
    /// without a READ, so the frames its READs touch are not all it reads (a replay of just
    /// them would leave the rest to whole-pack fetches, later and on top).
    pub fn record_profile(&self, packs_whole: bool) {
        let _ = self.recorder.set(super::recorder::Recorder::new(
            self.table.chunk_count(),
            self.table.frame_count(),
            packs_whole,
        ));
    }

    /// A verified local copy of file `ino` for FUSE passthrough, if it is worth one: a regular
    /// file of at least [`PASSTHROUGH_MIN_BYTES`] whose copy is in the disk cache, or whose every
    /// chunk is (then the copy is made now, from verified chunks, and checked against the
    /// manifest's whole-file BLAKE3). `None`: serve it through wsfs as usual.
    pub async fn passthrough_source(&self, ino: u64) -> Option<std::fs::File> {
        let n = self.node(ino).ok()?;
        if n.kind() != EntryKind::File || n.size() < PASSTHROUGH_MIN_BYTES {
            return None;
        }
        let disk = self.fetcher.disk()?;
        let content = *n.content()?;
        if let Some(f) = disk.file(&content, n.size()) {
            return Some(f);
        }
        let infos: Vec<ChunkInfo> = n
            .extents()
            .iter()
            .filter_map(|x| self.table.chunk(x.chunk).copied())
            .collect();
        if infos.len() != n.extents().len() || !infos.iter().all(|c| disk.has_chunk(&c.hash)) {
            return None;
        }
        let made = async {
            let mut w = disk.begin_file(content, n.size())?;
            for (x, info) in n.extents().iter().zip(&infos) {
                let c = self
                    .fetcher
                    .get(info)
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                let (a, b) = (x.offset as usize, x.offset as usize + x.len as usize);
                let piece = c
                    .data()
                    .get(a..b)
                    .ok_or_else(|| std::io::Error::other("extent outside its chunk"))?;
                w.write(piece)?;
            }
            w.finish()
        };
        match made.await {
            Ok(f) => {
                self.stats.files_materialized.fetch_add(1, Relaxed);
                Some(f)
            }
            Err(e) => {
                tracing::warn!(path = %n.path_lossy(), error = %e, "cannot materialize the file for passthrough; it is read through wsfs");
                None
            }
        }
    }

    /// Starts fetching what a reader is likely to want next, after a read that ended at `end`
    /// within file `n`, whose extents before `next` it touched. Only hints: fetches run in the
    /// background and a reader that wants a chunk shares its fetch.
    fn read_ahead(&self, n: Node<'_>, next: usize, end: u64) {
        if next < n.extents().len() {
            // A large file: its next extents.
            let window = end.clamp(READ_AHEAD_MIN_BYTES, READ_AHEAD_MAX_BYTES);
            let mut ahead = 0u64;
            for x in n.extents().iter().skip(next).take(READ_AHEAD_EXTENTS) {
                if ahead >= window {
                    break;
                }
                ahead += u64::from(x.len);
                if let Some(c) = self.table.chunk(x.chunk) {
                    self.fetcher.prefetch(c);
                }
            }
        } else if n.extents().len() == 1 {
            // A small file (one extent, in a pack): the packs after its own in path order —
            // unless a profile foresaw this read (its frames are at hand): then the profile
            // says what comes next, and whole packs would only add bytes.
            let x = n.extents()[0];
            if self.fetcher.frames_ready(
                self.table.frames(x.chunk),
                x.offset,
                x.offset.saturating_add(x.len),
            ) {
                return;
            }
            let mut at = x.chunk;
            for _ in 0..PACK_READ_AHEAD {
                let Some(following) = self.table.next_chunk(at) else {
                    break;
                };
                if let Some(c) = self.table.chunk(following) {
                    self.fetcher.prefetch(c);
                }
                at = following;
            }
        }
    }

    /// The recorder, if this mount records a profile.
    pub fn recorder(&self) -> Option<&super::recorder::Recorder> {
        self.recorder.get()
    }

    pub fn table(&self) -> &InodeTable {
        &self.table
    }

    pub fn fetcher(&self) -> &Arc<Fetcher> {
        &self.fetcher
    }

    fn node(&self, ino: u64) -> Result<Node<'_>, FsError> {
        self.table.node(ino)?.ok_or(FsError::NotFound)
    }

    pub fn attr(&self, ino: u64) -> Result<Attr, FsError> {
        let n = self.node(ino)?;
        let nlink = match n.kind() {
            // A directory's link count: itself, its "." and each subdirectory's "..".
            EntryKind::Dir => {
                2 + n
                    .children()
                    .iter()
                    .filter(|c| {
                        self.table
                            .get(u64::from(**c))
                            .is_some_and(|c| c.kind() == EntryKind::Dir)
                    })
                    .count() as u32
            }
            _ => 1,
        };
        Ok(Attr {
            ino,
            kind: n.kind(),
            perm: (n.mode() & 0o7777) as u16,
            size: n.size(),
            blocks: distinct_bytes(n.extents()).div_ceil(512),
            mtime: {
                let (sec, nsec) = n.mtime();
                to_time(sec, nsec)
            },
            nlink,
            uid: self.uid,
            gid: self.gid,
        })
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr, FsError> {
        let p = self.node(parent)?;
        if p.kind() != EntryKind::Dir {
            return Err(FsError::NotDir);
        }
        let ino = self.table.lookup(parent, name)?.ok_or(FsError::NotFound)?;
        self.attr(ino)
    }

    pub fn opendir(&self, ino: u64) -> Result<(), FsError> {
        match self.node(ino)?.kind() {
            EntryKind::Dir => Ok(()),
            _ => Err(FsError::NotDir),
        }
    }

    /// Lists a directory from `offset` (0 = start): ".", "..", then children by name. Lazy: a
    /// reply holds about a page of entries, and building the whole rest of a directory of
    /// 100,000 entries for each of its thousands of replies would make a listing quadratic.
    pub fn readdir(
        &self,
        ino: u64,
        offset: u64,
    ) -> Result<impl Iterator<Item = Result<DirItem<'_>, FsError>> + '_, FsError> {
        let n = self.node(ino)?;
        if n.kind() != EntryKind::Dir {
            return Err(FsError::NotDir);
        }
        let dots = [(&b"."[..], ino), (&b".."[..], n.parent())]
            .into_iter()
            .enumerate()
            .filter(move |(i, _)| (*i as u64) >= offset)
            .map(|(i, (name, target))| DirItem {
                ino: target,
                next: i as u64 + 1,
                kind: EntryKind::Dir,
                name,
            });
        let skip = offset.saturating_sub(2) as usize;
        let children = n
            .children()
            .iter()
            .enumerate()
            .skip(skip)
            .map(move |(i, c)| {
                let child = self.table.child(ino, u64::from(*c))?;
                Ok(DirItem {
                    ino: u64::from(*c),
                    next: i as u64 + 3,
                    kind: child.kind(),
                    name: child.name(),
                })
            });
        Ok(dots.map(Ok).chain(children))
    }

    pub fn readlink(&self, ino: u64) -> Result<&[u8], FsError> {
        let n = self.node(ino)?;
        match n.kind() {
            EntryKind::Symlink => Ok(n.target()),
            _ => Err(FsError::NotSymlink),
        }
    }

    /// Checks an open: files only, and never for writing.
    pub fn open(&self, ino: u64, write: bool) -> Result<(), FsError> {
        let n = self.node(ino)?;
        if write {
            return Err(FsError::ReadOnly);
        }
        match n.kind() {
            EntryKind::File => Ok(()),
            EntryKind::Dir => Err(FsError::IsDir),
            EntryKind::Symlink => Err(FsError::NotFound),
        }
    }

    /// Reads exactly `min(size, file size - offset)` bytes at `offset`, or fails with EIO if any
    /// chunk it needs cannot be served. Never returns fewer bytes than asked except at EOF.
    pub async fn read(&self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        let n = self.node(ino)?;
        if n.kind() != EntryKind::File {
            return Err(FsError::IsDir);
        }
        self.stats.reads.fetch_add(1, Relaxed);
        let out = self
            .assemble(n, offset, u64::from(size), true)
            .await
            .map_err(|(chunk, err)| self.eio(n, chunk.as_ref(), err))?;
        self.stats.bytes_served.fetch_add(out.len() as u64, Relaxed);
        Ok(out)
    }

    /// The whole content of a regular file, for the kernel cache warm-up: the same verified
    /// assembly as [`WsFs::read`], but not counted as a read, and a miss is not an EIO (nobody
    /// asked; the file is simply left for the kernel to READ, where a miss is reported).
    pub async fn file_content(&self, ino: u64) -> Result<Vec<u8>, FetchError> {
        let n = self
            .node(ino)
            .map_err(|e| FetchError::Internal(e.to_string()))?;
        if n.kind() != EntryKind::File {
            return Err(FetchError::Internal(format!("inode {ino} is not a file")));
        }
        self.assemble(n, 0, n.size(), false)
            .await
            .map_err(|(_, e)| e)
    }

    /// Bytes `[offset, min(offset + len, size))` of file `n` from verified chunks; on failure,
    /// the chunk that could not be served (if one) and why.
    async fn assemble(
        &self,
        n: Node<'_>,
        offset: u64,
        len: u64,
        read_ahead: bool,
    ) -> Result<Vec<u8>, (Option<ChunkInfo>, FetchError)> {
        if offset >= n.size() || len == 0 {
            return Ok(Vec::new());
        }
        let end = n.size().min(offset.saturating_add(len));
        // First extent that ends after `offset`.
        let first = n
            .ext_starts()
            .partition_point(|&s| s <= offset)
            .saturating_sub(1);
        let mut pieces: Vec<(usize, u64, u64)> = Vec::new(); // (extent, from, to) within extent
        let mut i = first;
        while i < n.extents().len() && n.ext_starts()[i] < end {
            let x = &n.extents()[i];
            let s = n.ext_starts()[i];
            let from = offset.max(s) - s;
            let to = end.min(s + u64::from(x.len)) - s;
            pieces.push((i, from, to));
            i += 1;
        }
        let infos: Vec<ChunkInfo> = pieces
            .iter()
            .filter_map(|(e, _, _)| self.table.chunk(n.extents()[*e].chunk).copied())
            .collect();
        if infos.len() != pieces.len() {
            return Err((
                None,
                FetchError::Internal("extent names an unknown chunk".into()),
            ));
        }
        if read_ahead {
            // A job's own read (not the warm-up): the profile notes chunks it touches first.
            if let Some(r) = self.recorder.get() {
                let small =
                    n.extents().len() == 1 && n.size() < crate::manifest::chunker::SMALL_FILE_LIMIT;
                for (e, from, to) in &pieces {
                    let x = &n.extents()[*e];
                    if small && r.packs_whole() {
                        r.touch_chunk(x.chunk);
                    } else {
                        let at = u64::from(x.offset);
                        r.touch(&self.table, x.chunk, at + from, at + to);
                    }
                }
            }
            self.read_ahead(n, i, end);
        }
        let parts: Vec<Result<bytes::Bytes, FetchError>> =
            futures::future::join_all(pieces.iter().zip(&infos).map(|((e, from, to), c)| {
                let x = &n.extents()[*e];
                // Verified chunks have exactly raw_len bytes; an extent outside its chunk is a
                // damaged index (checked where it is used: see manifest::tree).
                let a = u64::from(x.offset) + from;
                let b = u64::from(x.offset) + to;
                let (a, b) = (
                    a.min(u64::from(u32::MAX)) as u32,
                    b.min(u64::from(u32::MAX)) as u32,
                );
                self.fetcher.get_bytes(c, self.table.frames(x.chunk), a, b)
            }))
            .await;
        let mut out = Vec::with_capacity((end - offset) as usize);
        for (r, info) in parts.into_iter().zip(&infos) {
            let piece = r.map_err(|err| (Some(*info), err))?;
            out.extend_from_slice(&piece);
        }
        // Validated extents cover the file without gaps; a shortfall would be a bug, and a short
        // result must never reach the kernel as if it were the file.
        if out.len() as u64 != end - offset {
            return Err((
                None,
                FetchError::Internal(format!(
                    "assembled {} bytes where {} were due",
                    out.len(),
                    end - offset
                )),
            ));
        }
        Ok(out)
    }

    fn eio(&self, n: Node<'_>, chunk: Option<&ChunkInfo>, err: FetchError) -> FsError {
        self.stats.eio.fetch_add(1, Relaxed);
        let path = n.path_lossy();
        let providers = match &err {
            FetchError::Missed(m) => m.attempts.iter().map(|a| a.to_string()).collect(),
            _ => Vec::new(),
        };
        let chunk_hex = chunk.map(|c| c.hash.to_hex()).unwrap_or_default();
        tracing::error!(
            path = %path,
            chunk = %chunk_hex,
            providers = %providers.join("; "),
            error = %err,
            "read failed: EIO"
        );
        self.ledger.push(Failure {
            time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
            path: path.clone(),
            chunk: chunk_hex,
            error: err.to_string(),
            providers,
            count: 1,
        });
        FsError::Io { path, source: err }
    }
}

/// The bytes a file occupies as distinct content: each distinct piece of a chunk counted once.
/// That is its size for ordinary files, and far less for sparse files (a run of zeros — a hole —
/// is one chunk, referenced again and again). It is what `st_blocks` reports (in 512-byte
/// units), so `du` shows what a file really holds and `cp --sparse=auto`, `tar --sparse` and
/// rsync see a sparse file as sparse (docs/semantics.md).
pub fn distinct_bytes(extents: &[crate::manifest::Extent]) -> u64 {
    if extents.len() <= 1 {
        return extents.iter().map(|x| u64::from(x.len)).sum();
    }
    let mut pieces: Vec<(u32, u32, u32)> =
        extents.iter().map(|x| (x.chunk, x.offset, x.len)).collect();
    pieces.sort_unstable();
    pieces.dedup();
    pieces.iter().map(|p| u64::from(p.2)).sum()
}
