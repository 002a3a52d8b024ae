//! Kernel cache warm-up: `--prefetch tree` (the default) and `--prefetch all`.
//!
//! Even with every chunk in wsfs's own caches (`--prefetch chunks`, in `fetcher.rs`), a reader
//! pays a LOOKUP and a READ round trip per file, and on a small VM each round trip is tens of
//! microseconds of cross-CPU wake-ups (docs/benchmarks.md, "Profile"). The warm-up moves that
//! work off the reader's path, in parallel, right after mounting:
//!
//! * **Names and attributes.** Worker threads in the daemon list every directory of the mount
//!   through the VFS, each to its end. The kernel asks wsfs with READDIRPLUS (always, not by
//!   the kernel's heuristic, on mounts that warm up: see `FuseAdapter::new`), which hands it
//!   every child's inode and attributes, so later path walks, `stat`s and listings are answered
//!   from the kernel's dentry, inode and directory caches.
//! * **Small file contents** (`all` only). Each regular file of at most [`MAX_STORED_FILE`]
//!   bytes is assembled from verified chunks and pushed into the kernel's page cache with
//!   `FUSE_NOTIFY_STORE`. A reader then opens and reads it without any FUSE request.
//!
//! Invariants:
//! * Only bytes that passed chunk verification are pushed, and only a file's whole content from
//!   offset 0 (the kernel marks a page valid only when it is full or ends the file). A file whose
//!   chunks cannot be fetched is skipped: its reader gets the usual READ, and the usual EIO.
//! * The walk opens directories relative to one descriptor of the mount's root, taken right
//!   after mounting, so a lazily detached mountpoint is never confused with the directory under
//!   it. A directory descriptor is open only while that directory is being listed, and the root
//!   descriptor only until the last listing ends (file pushes after it hold nothing open).
//! * [`Warmup::stop`] makes every worker finish within one listing (a wait for a chunk is cut
//!   short) and waits for them, bounded; the last worker closes the root descriptor before
//!   the stop returns. `wsfs umount` and SIGTERM call it first, so the walk never makes an
//!   unmount fail with EBUSY. Errors from the mount (it went away, was aborted) end the walk;
//!   a directory the daemon may not open or reach is skipped.
//! * Page-cache memory is bounded by `--prefetch-page-cache` ([`KernelPages`], shared with the
//!   neighbour push, charged in whole pages), and no file is pushed twice.
//! * A panic in a worker (a bug) ends the warm-up, not the daemon, and leaves no count that
//!   other workers or a stop would wait on forever.

use super::inode::ROOT;
#[cfg(doc)]
use super::pages::KernelPages;
use super::pages::{PageCacheSink, Reservation, MAX_STORED_FILE};
use super::WsFs;
use crate::manifest::EntryKind;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

/// How long an unmount waits for the warm-up's workers to put down their directories. Each
/// finishes within one listing or one file, so this is only reached if the mount stops answering.
pub const WARMUP_STOP_WAIT: Duration = Duration::from_secs(3);

/// Where the warm-up is; `status` and the metrics report it (`off`, `running`, `done`,
/// `stopped` in JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum WarmupState {
    /// Not asked for (`--prefetch none` or `chunks`).
    #[default]
    Off = 0,
    Running = 1,
    Done = 2,
    /// Stopped early by an unmount or a signal, or ended by an error from the mount.
    Stopped = 3,
}

impl WarmupState {
    pub fn name(self) -> &'static str {
        match self {
            WarmupState::Off => "off",
            WarmupState::Running => "running",
            WarmupState::Done => "done",
            WarmupState::Stopped => "stopped",
        }
    }
}

/// Counters and control of the warm-up; lives in [`WsFs`] so status and metrics see it.
#[derive(Debug, Default)]
pub struct Warmup {
    state: AtomicU8,
    stop: AtomicBool,
    pub dirs_listed: AtomicU64,
    pub files_stored: AtomicU64,
    pub bytes_stored: AtomicU64,
    /// Files left to the kernel because a chunk could not be fetched or the store failed.
    pub files_failed: AtomicU64,
    /// Files not pushed because the page-cache budget was spent.
    pub files_over_budget: AtomicU64,
    pub elapsed_ms: AtomicU64,
    /// Worker threads still running; [`Warmup::stop`] waits for zero.
    running: Mutex<usize>,
    finished: Condvar,
    /// Wakes workers waiting for a chunk, so a stop does not wait for a slow store.
    stop_notify: tokio::sync::Notify,
}

impl Warmup {
    pub fn state(&self) -> WarmupState {
        match self.state.load(Relaxed) {
            1 => WarmupState::Running,
            2 => WarmupState::Done,
            3 => WarmupState::Stopped,
            _ => WarmupState::Off,
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Relaxed)
    }

    /// A worker has ended and dropped its share of the walk (so, with the last one, the mount's
    /// root descriptor is closed before [`Warmup::stop`] can return). The last one out records
    /// how the warm-up ended.
    fn worker_exited(&self, started: Instant) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        *running = running.saturating_sub(1);
        if *running == 0 {
            let end = if self.stopping() {
                WarmupState::Stopped
            } else {
                WarmupState::Done
            };
            self.elapsed_ms
                .store(started.elapsed().as_millis() as u64, Relaxed);
            self.state.store(end as u8, Relaxed);
            tracing::info!(
                state = end.name(),
                dirs = self.dirs_listed.load(Relaxed),
                files = self.files_stored.load(Relaxed),
                bytes = self.bytes_stored.load(Relaxed),
                failed = self.files_failed.load(Relaxed),
                over_budget = self.files_over_budget.load(Relaxed),
                secs = started.elapsed().as_secs_f64(),
                "kernel cache warm-up finished"
            );
            self.finished.notify_all();
        }
    }

    /// Tells every worker to stop, waking those waiting for a chunk.
    fn request_stop(&self) {
        self.stop.store(true, Relaxed);
        self.stop_notify.notify_waiters();
    }

    /// Asks every worker to stop and waits up to `wait` for them. Returns whether none is left.
    /// Safe to call at any time, also when the warm-up never ran.
    pub fn stop(&self, wait: Duration) -> bool {
        self.request_stop();
        let deadline = Instant::now() + wait;
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        while *running > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            running = self
                .finished
                .wait_timeout(running, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

/// What [`start`] needs besides the filesystem.
pub struct WarmupConfig {
    /// Worker threads. The walk is bound by round-trip latency, not CPU, so a few threads
    /// overlap their waits even on two cores.
    pub threads: usize,
    /// Whether small files' contents are pushed too (`--prefetch all`), within the mount's
    /// page-cache budget; otherwise names and attributes only.
    pub push_files: bool,
}

/// Errors that mean the mount itself is gone (unmounted, aborted): the whole warm-up ends. Any
/// other error only skips one directory (and what is below it): a mode the daemon may not
/// read, a path longer than PATH_MAX, a transient ENOMEM or EMFILE. Those names are then
/// looked up on demand as usual.
fn mount_gone(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOTCONN | libc::ENODEV | libc::ECONNABORTED)
    )
}

/// Retries a syscall interrupted by a signal (the daemon handles SIGTERM and SIGINT).
fn retry_eintr(mut f: impl FnMut() -> i64) -> std::io::Result<i64> {
    loop {
        let r = f();
        if r >= 0 {
            return Ok(r);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

struct Walk {
    fs: Arc<WsFs>,
    /// The mount's root, while directories remain to be listed; closed as soon as the last
    /// listing ends, so the (possibly slow) file pushes after it keep nothing of the mount open.
    root: RwLock<Option<OwnedFd>>,
    sink: Box<dyn PageCacheSink>,
    rt: tokio::runtime::Handle,
    /// Whether file contents are pushed at all.
    push_files: bool,
    queue: Mutex<Queue>,
    wake: Condvar,
    started: Instant,
}

struct Queue {
    /// Directories still to list; a stack, so the walk goes depth-first in path order like the
    /// chunk prefetch, and the files it pushes are the ones whose chunks arrive first.
    dirs: Vec<u64>,
    /// Workers inside a directory (listing it or pushing its files).
    busy: usize,
    /// Workers listing a directory right now (they may queue more).
    listing: usize,
}

/// Starts the warm-up of the mount whose root directory is `root` (opened by the caller after
/// the mount is serving). Returns at once; the workers run until done or stopped.
pub fn start(
    fs: Arc<WsFs>,
    root: OwnedFd,
    sink: Box<dyn PageCacheSink>,
    rt: tokio::runtime::Handle,
    cfg: WarmupConfig,
) {
    let threads = cfg.threads.max(1);
    let walk = Arc::new(Walk {
        fs: fs.clone(),
        root: RwLock::new(Some(root)),
        sink,
        rt,
        push_files: cfg.push_files,
        queue: Mutex::new(Queue {
            dirs: vec![ROOT],
            busy: 0,
            listing: 0,
        }),
        wake: Condvar::new(),
        started: Instant::now(),
    });
    let started = walk.started;
    let w = &fs.warmup;
    w.state.store(WarmupState::Running as u8, Relaxed);
    *w.running.lock().unwrap_or_else(|p| p.into_inner()) = threads;
    // The last worker gets this function's own reference, so that once every worker has
    // exited, nothing holds the mount's root open.
    let mut walk = Some(walk);
    for i in 0..threads {
        let worker = if i + 1 == threads {
            walk.take()
        } else {
            walk.clone()
        };
        let Some(worker) = worker else { break };
        let spawned = std::thread::Builder::new()
            .name(format!("wsfs-warm-{i}"))
            .spawn(move || {
                worker.work();
                let (fs, started) = (worker.fs.clone(), worker.started);
                drop(worker);
                fs.warmup.worker_exited(started);
            });
        if let Err(e) = spawned {
            // The threads already started finish the walk; account for the missing ones.
            tracing::warn!(error = %e, "cannot start a warm-up thread");
            drop(walk.take());
            for _ in i..threads {
                fs.warmup.worker_exited(started);
            }
            break;
        }
    }
}

impl Walk {
    fn warmup(&self) -> &Warmup {
        &self.fs.warmup
    }

    fn work(&self) {
        while let Some(dir) = self.next_dir() {
            self.warm_dir(dir);
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.busy -= 1;
            self.wake.notify_all();
        }
    }

    /// Makes subdirectories available to every worker (first child on top of the stack).
    fn enqueue(&self, subdirs: Vec<u64>) {
        if subdirs.is_empty() {
            return;
        }
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.dirs.extend(subdirs.into_iter().rev());
        self.wake.notify_all();
    }

    /// The next directory to list, or `None` when the walk is over or stopped.
    fn next_dir(&self) -> Option<u64> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if self.warmup().stopping() {
                return None;
            }
            if let Some(d) = q.dirs.pop() {
                q.busy += 1;
                q.listing += 1;
                return Some(d);
            }
            if q.busy == 0 {
                return None;
            }
            // Another worker may still push subdirectories. The timeout re-checks `stop`.
            q = self
                .wake
                .wait_timeout(q, Duration::from_millis(20))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Lists one directory through the kernel, queues its subdirectories, and pushes its small
    /// files. Never panics out: a panic (a bug) ends the warm-up, not the daemon, and never
    /// leaves the counts that other workers wait on.
    fn warm_dir(&self, ino: u64) {
        let listed = catch_unwind(AssertUnwindSafe(|| self.list_dir(ino)))
            .unwrap_or_else(|_| Err(std::io::Error::other("the warm-up panicked")));
        self.done_listing();
        let files = match listed {
            Ok(files) => files,
            Err(e) if mount_gone(&e) || e.raw_os_error().is_none() => {
                tracing::debug!(error = %e, "warm-up ends");
                self.warmup().request_stop();
                return;
            }
            Err(e) => {
                tracing::debug!(ino, error = %e, "warm-up skips a directory");
                return;
            }
        };
        let pushed = catch_unwind(AssertUnwindSafe(|| {
            for f in files {
                if self.warmup().stopping() {
                    break;
                }
                self.store_file(f);
            }
        }));
        if pushed.is_err() {
            tracing::error!("the warm-up panicked while pushing files; it ends here");
            self.warmup().request_stop();
        }
    }

    /// Lists a directory and queues its subdirectories; returns its files to push.
    fn list_dir(&self, ino: u64) -> std::io::Result<Vec<u64>> {
        let table = self.fs.table();
        let Some(node) = table.get(ino) else {
            return Ok(Vec::new());
        };
        let dir = self.open_dir(&node.path())?;
        self.list(&dir)?;
        // The directory is closed, and its subdirectories handed to the other workers, before
        // the (slower) file pushes: an unmount waits for no open descriptor of ours longer than
        // one listing, and a slow chunk holds up only this directory's files.
        drop(dir);
        self.warmup().dirs_listed.fetch_add(1, Relaxed);
        // Its children are now inodes the kernel holds: pushes into it take effect.
        self.fs.pages.mark_listed(ino);
        let mut subdirs = Vec::new();
        let mut files = Vec::new();
        for c in node.children().iter().map(|c| u64::from(*c)) {
            let Some(child) = table.get(c) else { continue };
            match child.kind() {
                EntryKind::Dir => subdirs.push(c),
                EntryKind::File
                    if self.push_files && child.size() > 0 && child.size() <= MAX_STORED_FILE =>
                {
                    files.push(c)
                }
                _ => {}
            }
        }
        self.enqueue(subdirs);
        Ok(files)
    }

    /// A worker has finished listing (or failed to list) a directory. After the last listing,
    /// nothing more can be queued: the root is closed.
    fn done_listing(&self) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.listing -= 1;
        if q.listing == 0 && (q.dirs.is_empty() || self.warmup().stopping()) {
            self.root.write().unwrap_or_else(|p| p.into_inner()).take();
        }
        self.wake.notify_all();
    }

    fn open_dir(&self, path: &[u8]) -> std::io::Result<OwnedFd> {
        let rel = if path.is_empty() {
            CString::new(".")
        } else {
            CString::new(path)
        }
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        let root = self.root.read().unwrap_or_else(|p| p.into_inner());
        let Some(root) = root.as_ref() else {
            // Closed: the walk is over or stopping.
            return Err(std::io::Error::from_raw_os_error(libc::ENOTCONN));
        };
        let fd = retry_eintr(|| {
            // SAFETY: valid dirfd (held by the read lock) and NUL-terminated relative path.
            i64::from(unsafe {
                libc::openat(
                    root.as_raw_fd(),
                    rel.as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                )
            })
        })?;
        // SAFETY: fd is a fresh descriptor we own (openat returns an int).
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// Reads the listing to its end. The entries themselves are not needed: the kernel caches
    /// names and attributes from the READDIRPLUS replies, and a listing read to its end (the
    /// empty reply) is kept as the directory's cached listing, so later `ls`/`find` of it send no
    /// request. Stopping early saves one round trip per directory but leaves the cached listing
    /// incomplete, and the next walk then asks again (measured: a `find` after the warm-up
    /// took 0.44 s with 20,000 requests instead of 0.10 s with none).
    fn list(&self, dir: &OwnedFd) -> std::io::Result<()> {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = retry_eintr(|| {
                // SAFETY: buf is writable for its length; the fd is a directory.
                unsafe {
                    libc::syscall(
                        libc::SYS_getdents64,
                        dir.as_raw_fd(),
                        buf.as_mut_ptr(),
                        buf.len(),
                    )
                }
            })?;
            if n == 0 {
                return Ok(());
            }
        }
    }

    fn store_file(&self, ino: u64) {
        let w = self.warmup();
        let Some(size) = self.fs.table().get(ino).map(|n| n.size()) else {
            return;
        };
        let pages = &self.fs.pages;
        // Not if read through wsfs already or pushed as a neighbour (its pages are in the
        // kernel), nor beyond the budget.
        let charge = match pages.reserve(ino, size) {
            Reservation::Granted { charge } => charge,
            Reservation::OverBudget => {
                w.files_over_budget.fetch_add(1, Relaxed);
                return;
            }
            Reservation::AlreadyClaimed => return,
        };
        // Waiting for a chunk can take up to the read deadline on a slow store; a stop must not
        // wait that long (this worker holds the root descriptor, which keeps the mount busy).
        let content = self.rt.block_on(async {
            let stopped = w.stop_notify.notified();
            tokio::pin!(stopped);
            stopped.as_mut().enable();
            if w.stopping() {
                return None;
            }
            tokio::select! {
                r = self.fs.file_content(ino) => Some(r),
                _ = stopped => None,
            }
        });
        let Some(content) = content else {
            pages.give_back(charge);
            return;
        };
        let data = match content {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(ino, error = %e, "warm-up: file left to on-demand reads");
                w.files_failed.fetch_add(1, Relaxed);
                pages.give_back(charge);
                return;
            }
        };
        match self.sink.store(ino, &data) {
            Ok(()) => {
                w.files_stored.fetch_add(1, Relaxed);
                w.bytes_stored.fetch_add(data.len() as u64, Relaxed);
            }
            Err(e) => {
                tracing::debug!(ino, error = %e, "warm-up: the kernel refused the page-cache store");
                w.files_failed.fetch_add(1, Relaxed);
                pages.give_back(charge);
            }
        }
    }
}
