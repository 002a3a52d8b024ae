//! Pushing a read file's pack neighbours into the kernel's page cache.
//!
//! Small files are packed with their path neighbours into one chunk (about 4 MiB: a few thousand
//! files of some dozens of packages), and reading one of them brings the whole chunk into wsfs's
//! memory cache: the neighbours' bytes are verified and at hand. Each neighbour would still cost
//! its reader a READ round trip, which on a small VM is most of the cost of reading a small file
//! (docs/benchmarks.md, "Profile"). So after the first read from a pack, a background thread
//! pushes every other file of that pack into the page cache with `FUSE_NOTIFY_STORE`, starting
//! with the files after the one read (readers tend to go in path order). A build that reads a
//! tree then sends about one READ per pack it touches, not one per file, and nothing is fetched
//! that the reader did not already cause to be fetched.
//!
//! Invariants:
//! * Only a chunk already in the memory cache is used: a push never fetches and never waits, and
//!   its bytes passed verification when the chunk was loaded.
//! * A file is pushed whole (it lies in one extent of its pack), at most once per mount
//!   ([`KernelPages`], shared with the warm-up), within `--prefetch-page-cache` (whole pages).
//! * Only into a directory the warm-up has listed: its children are inodes the kernel holds (a
//!   store to an inode the kernel lacks does nothing, yet would use up the file's one push).
//! * Bounded work: a pack is pushed once, so a mount's pushes cost at most one store per small
//!   file in total; only while the warm-up has not yet listed some of its directories can a
//!   later read from the pack scan it again (for the files not yet pushed).
//! * The queue is bounded and the FUSE thread never blocks on it: when it is full, a push is
//!   dropped and those files are read with READs as usual.
//! * Active on mounts that warm the kernel (`--prefetch tree|all`): there the files' inodes are in
//!   the kernel; elsewhere a store would mostly find no inode and do nothing.

use super::inode::{InodeTable, Node};
#[cfg(doc)]
use super::pages::KernelPages;
use super::pages::{PageCacheSink, Reservation, MAX_STORED_FILE};
use super::WsFs;
use crate::manifest::EntryKind;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

/// Reads waiting for their pack to be pushed; more are dropped.
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
            // Built here, not at mount: a mount is ready before this index exists.
            let mut packs = Packs::new(fs.table());
            for ino in queue.rx {
                packs.push_after_read(&fs, sink.as_ref(), ino);
            }
        })
        .map(|_| ())
}

/// A small file held whole in one extent: `(chunk index, offset in the chunk)`.
fn single_extent(n: Node<'_>) -> Option<(u32, u32)> {
    match n.extents() {
        [x] if n.kind() == EntryKind::File
            && n.size() > 0
            && n.size() <= MAX_STORED_FILE
            && u64::from(x.len) == n.size() =>
        {
            Some((x.chunk, x.offset))
        }
        _ => None,
    }
}

/// The files of each pack chunk, in path (inode) order, and which packs were pushed.
pub struct Packs {
    /// By chunk index: the inodes of the small files inside it; empty for chunks that hold one
    /// file (nothing to push) or none.
    files: Vec<Vec<u64>>,
    pushed: Vec<bool>,
}

impl Packs {
    pub fn new(table: &InodeTable) -> Packs {
        let mut files: Vec<Vec<u64>> = Vec::new();
        for (ino, n) in table.iter() {
            let Some((chunk, _)) = single_extent(n) else {
                continue;
            };
            let Some(info) = table.chunk(chunk) else {
                continue;
            };
            // Alone in its chunk (64 KiB or more): no neighbours.
            if u64::from(info.raw_len) == n.size() {
                continue;
            }
            let i = chunk as usize;
            if files.len() <= i {
                files.resize_with(i + 1, Vec::new);
            }
            files[i].push(ino);
        }
        let pushed = vec![false; files.len()];
        Packs { files, pushed }
    }

    /// `ino` was read from its start: push the rest of its pack, once per pack.
    pub fn push_after_read(&mut self, fs: &WsFs, sink: &dyn PageCacheSink, ino: u64) {
        let table = fs.table();
        let pages = &fs.pages;
        // Its own pages came with the READ.
        pages.claim(ino);
        if pages.budget_left() == 0 {
            return;
        }
        let Some((chunk, _)) = table.get(ino).and_then(single_extent) else {
            return;
        };
        let i = chunk as usize;
        if self.files.get(i).is_none_or(|f| f.is_empty()) || self.pushed[i] {
            return;
        }
        let Some(info) = table.chunk(chunk) else {
            return;
        };
        // Evicted since the read: no push (this pack may be pushed after a later read).
        let Some(verified) = fs.fetcher().memory().get(&info.hash) else {
            return;
        };
        self.pushed[i] = true;
        // Files in directories the warm-up has not listed yet are left for a later read.
        let mut deferred = false;
        let data = verified.data();
        let files = &self.files[i];
        // The files after the one read first: a reader going in path order meets them next.
        let at = files.partition_point(|&f| f <= ino);
        for &f in files[at..].iter().chain(&files[..at]) {
            let Some(n) = table.get(f) else { continue };
            if !pages.is_listed(n.parent()) {
                deferred = true;
                continue;
            }
            let Some((_, offset)) = single_extent(n) else {
                continue;
            };
            // Validated extents lie inside their chunk; checked again rather than trusted.
            let (a, b) = (offset as usize, offset as usize + n.size() as usize);
            let Some(bytes) = data.get(a..b) else {
                continue;
            };
            let charge = match pages.reserve(f, n.size()) {
                Reservation::Granted { charge } => charge,
                Reservation::OverBudget => return,
                Reservation::AlreadyClaimed => continue,
            };
            match sink.store(f, bytes) {
                Ok(()) => {
                    pages.neighbour_files.fetch_add(1, Relaxed);
                    pages.neighbour_bytes.fetch_add(n.size(), Relaxed);
                }
                Err(e) => {
                    pages.give_back(charge);
                    tracing::debug!(ino = f, error = %e, "neighbour push refused by the kernel");
                }
            }
        }
        if deferred {
            // Read again from this pack once the warm-up has got further (files pushed now are
            // claimed, so a second pass only stores the rest).
            self.pushed[i] = false;
        }
    }
}
