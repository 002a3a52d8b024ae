//! Pushing a read file's neighbours into the kernel's page cache.
//!
//! Small files are packed with their path neighbours into one chunk, and reading one of them
//! brings the whole chunk into wsfs's memory cache: the neighbours' bytes are verified and at
//! hand. Each neighbour would still cost its reader a READ round trip, which on a small VM is
//! most of the cost of reading a small file (docs/benchmarks.md, "Profile"). So after the first
//! read of a small file, a background thread pushes the other small files of the same directory
//! that live in the same chunk into the page cache with `FUSE_NOTIFY_STORE`; a build that reads a
//! package's files then sends one READ per package directory instead of one per file.
//!
//! Invariants:
//! * Only a chunk already in the memory cache is used: a push never fetches and never waits, and
//!   its bytes passed verification when the chunk was loaded.
//! * A file is pushed whole (it lies in one extent of that chunk), at most once per mount
//!   ([`KernelPages`], shared with the warm-up), within `--prefetch-page-cache` (whole pages).
//! * Only into a directory the warm-up has listed: its children are inodes the kernel holds (a
//!   store to an inode the kernel lacks does nothing, yet would use up the file's one push).
//! * Bounded work: a file that was claimed before its read (pushed already, or read before)
//!   triggers no scan, so each chunk's neighbours in a directory are scanned about once.
//! * The queue is bounded and the FUSE thread never blocks on it: when it is full, a push is
//!   dropped and those files are read with READs as usual.
//! * Active on mounts that warm the kernel (`--prefetch tree|all`): there the neighbours' inodes
//!   are in the kernel; elsewhere a store would mostly find no inode and do nothing.

use super::inode::Node;
#[cfg(doc)]
use super::pages::KernelPages;
use super::warmup::{PageCacheSink, MAX_STORED_FILE};
use super::WsFs;
use crate::manifest::EntryKind;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

/// Reads waiting for their neighbours to be pushed; more are dropped.
const QUEUE: usize = 1024;

/// The FUSE side: tells the pusher which file was read.
pub struct NeighbourPush {
    tx: SyncSender<u64>,
}

/// The pusher's end of the queue, until [`start`] gives it a thread.
pub struct NeighbourQueue {
    rx: Receiver<u64>,
}

pub fn channel() -> (NeighbourPush, NeighbourQueue) {
    let (tx, rx) = sync_channel(QUEUE);
    (NeighbourPush { tx }, NeighbourQueue { rx })
}

impl NeighbourPush {
    /// A READ at offset 0 of `ino` was answered.
    pub fn file_read(&self, ino: u64) {
        match self.tx.try_send(ino) {
            Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// Starts the pusher thread; it ends when the FUSE side is dropped (the session ended).
pub fn start(
    queue: NeighbourQueue,
    fs: Arc<WsFs>,
    sink: Box<dyn PageCacheSink>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("wsfs-neighbours".into())
        .spawn(move || {
            for ino in queue.rx {
                push_neighbours(&fs, sink.as_ref(), ino);
            }
        })
        .map(|_| ())
}

/// A small file held whole in one extent: `(chunk index, offset in the chunk)`.
fn single_extent(n: &Node) -> Option<(u32, u32)> {
    match &n.extents[..] {
        [x] if n.kind == EntryKind::File
            && n.size > 0
            && n.size <= MAX_STORED_FILE
            && u64::from(x.len) == n.size =>
        {
            Some((x.chunk, x.offset))
        }
        _ => None,
    }
}

/// Pushes the small files of `ino`'s directory that share its chunk, if that chunk is in memory.
pub fn push_neighbours(fs: &WsFs, sink: &dyn PageCacheSink, ino: u64) {
    let table = fs.table();
    let pages = &fs.pages;
    if pages.budget_left() == 0 {
        return;
    }
    // The file itself was just read through wsfs: its pages are in the kernel already. If it
    // was claimed before, its neighbours were handled when it was (or when one of them was).
    if !pages.claim(ino) {
        return;
    }
    let Some(node) = table.get(ino) else { return };
    if !pages.is_listed(node.parent) {
        return;
    }
    let Some((chunk, _)) = single_extent(node) else {
        return;
    };
    let Some(info) = table.chunk(chunk) else {
        return;
    };
    // Alone in its chunk (a file of 64 KiB or more): there is no neighbour to push, and the
    // directory need not be scanned (reading every file of a large directory would otherwise
    // scan it once per file).
    if u64::from(info.raw_len) == node.size {
        return;
    }
    let Some(verified) = fs.fetcher().memory().get(&info.hash) else {
        return;
    };
    let Some(parent) = table.get(node.parent) else {
        return;
    };
    let data = verified.data();
    for &sib in &parent.children {
        let Some(s) = table.get(sib) else { continue };
        let Some((c, offset)) = single_extent(s) else {
            continue;
        };
        if c != chunk {
            continue;
        }
        let (a, b) = (offset as usize, offset as usize + s.size as usize);
        // Validated extents lie inside their chunk; checked again rather than trusted.
        let Some(bytes) = data.get(a..b) else {
            continue;
        };
        let charge = match pages.reserve(sib, s.size) {
            Ok(c) => c,
            Err(true) => return, // over budget
            Err(false) => continue,
        };
        match sink.store(sib, bytes) {
            Ok(()) => {
                pages.neighbour_files.fetch_add(1, Relaxed);
                pages.neighbour_bytes.fetch_add(s.size, Relaxed);
            }
            Err(e) => {
                pages.give_back(charge);
                tracing::debug!(ino = sib, error = %e, "neighbour push refused by the kernel");
            }
        }
    }
}
