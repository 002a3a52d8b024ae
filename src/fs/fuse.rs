//! The `fuser::Filesystem` adapter: a thin translation layer. Each callback runs in a tracing
//! span, calls [`WsFs`], and replies; every error becomes an errno in one place ([`reply_err`]).
//! The tree is immutable, so entry and attribute TTLs are long and file opens keep the page cache.

use super::error::FsError;
use super::filesystem::{Attr, WsFs};
use super::neighbours::NeighbourPush;
use super::opstats::FuseOp;
use crate::manifest::EntryKind;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags, IoctlFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyXattr, Request,
};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::Duration;

/// The tree never changes while mounted: the kernel may cache names and attributes "forever".
const TTL: Duration = Duration::from_secs(365 * 24 * 3600);
const GENERATION: Generation = Generation(0);

pub struct FuseAdapter {
    fs: Arc<WsFs>,
    rt: tokio::runtime::Handle,
    max_background: u16,
    readdirplus_always: bool,
    neighbours: Option<NeighbourPush>,
    passthrough: Passthrough,
}

/// FUSE passthrough (`--passthrough`): files with a verified local copy are opened with that
/// copy as their backing file, and the kernel reads it directly (native speed, no request per
/// read). Asking for it costs the no-open mode: every open is then answered (one round trip).
#[derive(Default)]
struct Passthrough {
    requested: bool,
    /// The kernel agreed at INIT (`FUSE_PASSTHROUGH`); else opens stay in no-open mode.
    negotiated: std::sync::atomic::AtomicBool,
    /// One backing id per inode while any open of it lasts (the kernel wants the same id for
    /// every open of one inode), with the count of those opens.
    backing: std::sync::Mutex<std::collections::HashMap<u64, (fuser::BackingId, usize)>>,
    /// The first refusal is logged at WARN, the rest are counted.
    warned: std::sync::atomic::AtomicBool,
}

impl FuseAdapter {
    /// `readdirplus_always`: every listing reply carries attributes (no kernel heuristic), so a
    /// listing read to its end instantiates every child in the kernel. The kernel cache
    /// warm-up relies on it; otherwise the heuristic saves attribute work for plain `ls`.
    /// `neighbours`: told of every file read from its start (see `neighbours.rs`).
    pub fn new(
        fs: Arc<WsFs>,
        rt: tokio::runtime::Handle,
        max_background: u16,
        readdirplus_always: bool,
        neighbours: Option<NeighbourPush>,
    ) -> FuseAdapter {
        FuseAdapter {
            fs,
            rt,
            max_background,
            readdirplus_always,
            neighbours,
            passthrough: Passthrough::default(),
        }
    }

    /// Asks the kernel for FUSE passthrough at INIT (see [`Passthrough`]).
    pub fn with_passthrough(mut self) -> FuseAdapter {
        self.passthrough.requested = true;
        self
    }

    fn passthrough_on(&self) -> bool {
        self.passthrough
            .negotiated
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Answers an open with the file's verified local copy as backing file, or — no copy, or the
    /// kernel refuses it (not root, a stacked filesystem under the cache) — as a plain open whose
    /// reads come to wsfs.
    fn open_passthrough(&self, ino: u64, reply: ReplyOpen) {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = &self.fs.stats;
        let mut map = self
            .passthrough
            .backing
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((id, opens)) = map.get_mut(&ino) {
            *opens += 1;
            stats.passthrough_opens.fetch_add(1, Relaxed);
            reply.opened_passthrough(FileHandle(0), FopenFlags::empty(), id);
            return;
        }
        drop(map);
        let Some(file) = self.rt.block_on(self.fs.passthrough_source(ino)) else {
            reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
            return;
        };
        match reply.open_backing(&file) {
            Ok(id) => {
                let mut map = self
                    .passthrough
                    .backing
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let (id, opens) = map.entry(ino).or_insert((id, 0));
                *opens += 1;
                stats.passthrough_opens.fetch_add(1, Relaxed);
                reply.opened_passthrough(FileHandle(0), FopenFlags::empty(), id);
            }
            Err(e) => {
                stats.passthrough_fallbacks.fetch_add(1, Relaxed);
                if !self.passthrough.warned.swap(true, Relaxed) {
                    tracing::warn!(ino, error = %e, "the kernel refused a passthrough backing file; such files are read through wsfs (counted as passthrough_fallbacks)");
                }
                reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
            }
        }
    }
}

fn file_type(k: EntryKind) -> FileType {
    match k {
        EntryKind::File => FileType::RegularFile,
        EntryKind::Dir => FileType::Directory,
        EntryKind::Symlink => FileType::Symlink,
    }
}

fn to_fuse(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// The one place an [`FsError`] becomes an errno. EIO is logged where it arises (with the path,
/// chunk and provider outcomes); other errors are routine (ENOENT on lookups) and traced only.
fn errno(e: &FsError) -> Errno {
    tracing::debug!(error = %e, errno = e.errno(), "fuse reply error");
    Errno::from_i32(e.errno())
}

impl FuseAdapter {
    /// Counts a request of `op` (every counted callback starts with this).
    fn count(&self, op: FuseOp) {
        self.fs.ops.call(op);
    }

    /// An error reply to `op`: counted, then mapped by [`errno`].
    fn fail(&self, op: FuseOp, e: &FsError) -> Errno {
        self.fs.ops.error(op);
        if let FsError::Damaged(d) = e {
            // Not a store failure: the manifest's own index does not hold together here.
            self.fs
                .stats
                .eio
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(op = op.name(), error = %d, "EIO: the tree index is damaged");
        }
        errno(e)
    }
}

impl fuser::Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let mut wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_PARALLEL_DIROPS;
        if !self.readdirplus_always {
            wanted |= InitFlags::FUSE_READDIRPLUS_AUTO;
        }
        let supported = config.capabilities() & wanted;
        let _ = config.add_capabilities(supported);
        let _ = config.set_max_background(self.max_background);
        let _ = config.set_congestion_threshold(self.max_background * 3 / 4);
        let _ = config.set_max_readahead(1 << 20);
        if self.passthrough.requested {
            if config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH)
                && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                // 1: backing files on a plain filesystem, and wsfs itself still usable under
                // overlayfs (attach).
                && config.set_max_stack_depth(1).is_ok()
            {
                self.passthrough
                    .negotiated
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            } else {
                tracing::warn!("this kernel offers no FUSE passthrough (Linux >= 6.9 has it): files are read through wsfs");
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _s = tracing::debug_span!("lookup", parent = parent.0, name = ?name).entered();
        self.count(FuseOp::Lookup);
        match self.fs.lookup(parent.0, name.as_bytes()) {
            Ok(a) => reply.entry(&TTL, &to_fuse(&a), GENERATION),
            Err(e) => reply.error(self.fail(FuseOp::Lookup, &e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _s = tracing::debug_span!("getattr", ino = ino.0).entered();
        self.count(FuseOp::Getattr);
        match self.fs.attr(ino.0) {
            Ok(a) => reply.attr(&TTL, &to_fuse(&a)),
            Err(e) => reply.error(self.fail(FuseOp::Getattr, &e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _s = tracing::debug_span!("readlink", ino = ino.0).entered();
        self.count(FuseOp::Readlink);
        match self.fs.readlink(ino.0) {
            Ok(t) => reply.data(t),
            Err(e) => reply.error(self.fail(FuseOp::Readlink, &e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _s = tracing::debug_span!("open", ino = ino.0).entered();
        self.count(FuseOp::Open);
        let write =
            !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY) || flags.0 & libc::O_TRUNC != 0;
        match self.fs.open(ino.0, write) {
            Ok(()) if self.passthrough_on() => self.open_passthrough(ino.0, reply),
            // ENOSYS for a valid open tells the kernel this filesystem needs no open/release at
            // all (it is stateless: no file handles). The kernel then stops sending OPEN, FLUSH
            // and RELEASE for every later open and keeps the page cache (no-open implies
            // FOPEN_KEEP_CACHE): two to three fewer round trips per file a build opens, which
            // measured ~40% off a cold read of 40,000 small files (docs/benchmarks.md). Writes
            // never get here: the mount is read-only, so the VFS refuses them first.
            Ok(()) => reply.error(Errno::ENOSYS),
            Err(e) => reply.error(self.fail(FuseOp::Open, &e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _s = tracing::debug_span!("read", ino = ino.0, offset, size).entered();
        self.count(FuseOp::Read);
        match self.rt.block_on(self.fs.read(ino.0, offset, size)) {
            Ok(data) => {
                reply.data(&data);
                if offset == 0 {
                    if let Some(n) = &self.neighbours {
                        n.file_read(ino.0);
                    }
                }
            }
            Err(e) => reply.error(self.fail(FuseOp::Read, &e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // The last close of a passthrough inode ends its backing id.
        let mut map = self
            .passthrough
            .backing
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((_, opens)) = map.get_mut(&ino.0) {
            *opens -= 1;
            if *opens == 0 {
                map.remove(&ino.0);
            }
        }
        drop(map);
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to flush in a read-only filesystem; ENOSYS stops the kernel from asking.
        reply.error(Errno::ENOSYS);
    }

    /// SEEK_DATA / SEEK_HOLE (cp, tar --sparse, cargo): every byte of a file is data to the
    /// reader (holes read as zeros like the rest), so data runs to the end and the only hole is
    /// the end of the file.
    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let _s = tracing::debug_span!("lseek", ino = ino.0, offset, whence).entered();
        self.count(FuseOp::Lseek);
        let size = match self.fs.attr(ino.0) {
            Ok(a) => a.size,
            Err(e) => return reply.error(self.fail(FuseOp::Lseek, &e)),
        };
        let Ok(off) = u64::try_from(offset) else {
            return reply.error(Errno::EINVAL);
        };
        match whence {
            libc::SEEK_DATA if off < size => reply.offset(offset),
            libc::SEEK_HOLE if off < size => reply.offset(size as i64),
            libc::SEEK_DATA | libc::SEEK_HOLE => reply.error(Errno::ENXIO),
            // SEEK_SET/CUR/END never reach a filesystem that does not ask for them.
            _ => reply.error(Errno::EINVAL),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _s = tracing::debug_span!("opendir", ino = ino.0).entered();
        self.count(FuseOp::Opendir);
        match self.fs.opendir(ino.0) {
            // As for open: ENOSYS switches the kernel to no-opendir mode, which keeps caching
            // directory listings (FOPEN_CACHE_DIR) without an OPENDIR/RELEASEDIR per listing.
            Ok(()) => reply.error(Errno::ENOSYS),
            Err(e) => reply.error(self.fail(FuseOp::Opendir, &e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _s = tracing::debug_span!("readdir", ino = ino.0, offset).entered();
        self.count(FuseOp::Readdir);
        match self.fs.readdir(ino.0, offset) {
            Ok(items) => {
                for (added, it) in items.enumerate() {
                    // A damaged entry ends the reply: with entries before it, they go out
                    // and the next call (starting at the damaged one) fails; alone, it fails
                    // now. A listing is whole or it fails — never silently shorter.
                    let it = match it {
                        Ok(it) => it,
                        Err(e) if added == 0 => return reply.error(self.fail(FuseOp::Readdir, &e)),
                        Err(_) => break,
                    };
                    if reply.add(
                        INodeNo(it.ino),
                        it.next,
                        file_type(it.kind),
                        OsStr::from_bytes(it.name),
                    ) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(self.fail(FuseOp::Readdir, &e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _s = tracing::debug_span!("readdirplus", ino = ino.0, offset).entered();
        self.count(FuseOp::Readdirplus);
        match self.fs.readdir(ino.0, offset) {
            Ok(items) => {
                for (added, it) in items.enumerate() {
                    // As in readdir: a damaged entry ends the reply, or fails it when first.
                    let item = it.and_then(|it| self.fs.attr(it.ino).map(|a| (it, a)));
                    let (it, a) = match item {
                        Ok(x) => x,
                        Err(e) if added == 0 => {
                            return reply.error(self.fail(FuseOp::Readdirplus, &e))
                        }
                        Err(_) => break,
                    };
                    if reply.add(
                        INodeNo(it.ino),
                        it.next,
                        OsStr::from_bytes(it.name),
                        &TTL,
                        &to_fuse(&a),
                        GENERATION,
                    ) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(self.fail(FuseOp::Readdirplus, &e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.count(FuseOp::Statfs);
        let t = self.fs.table();
        let blocks = t.total_bytes().div_ceil(4096);
        reply.statfs(blocks, 0, 0, t.len() as u64, 0, 4096, 255, 4096);
    }

    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        // Tools ask every file they open whether it is a terminal (TCGETS) or for its flags
        // (FS_IOC_GETFLAGS, overlayfs on copy-up): none applies here. Quietly "not a tty"
        // (fuser's default logs a warning per call), counted like every other op.
        tracing::trace!(ino = ino.0, cmd, "ioctl: ENOTTY");
        self.count(FuseOp::Ioctl);
        self.fs.ops.error(FuseOp::Ioctl);
        reply.error(Errno::ENOTTY);
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(errno(&FsError::NoAttr));
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }
}
