//! The chunk source behind every read: memory cache → disk cache → provider chain.
//!
//! * Concurrent requests for the same chunk share one fetch (single flight).
//! * Each fetch runs as its own task, so a reader that gives up at its deadline does not cancel a
//!   fetch another reader (or the cache) still wants.
//! * A reader waits at most `deadline`; then it gets [`FetchError::Deadline`] (EIO), never a hang.

use crate::cache::{DiskCache, DiskLookup, MemoryCache};
use crate::manifest::{ChunkInfo, Digest};
use crate::store::{AllMissed, Chain, VerifiedChunk};
use futures::future::{BoxFuture, FutureExt, Shared};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::Instrument;

#[derive(Clone, Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    Missed(Arc<AllMissed>),
    #[error("no provider delivered the chunk within the read deadline of {0:?}")]
    Deadline(Duration),
    #[error("internal error: {0}")]
    Internal(String),
}

#[derive(Debug, Default)]
pub struct FetchStats {
    pub memory_hits: AtomicU64,
    pub disk_hits: AtomicU64,
    pub disk_corrupt: AtomicU64,
    /// Chunks fetched from providers (after a miss in both caches).
    pub fetched: AtomicU64,
    pub fetched_bytes: AtomicU64,
    pub failed: AtomicU64,
    /// Chunks the background prefetch (`--prefetch chunks|all`) has dealt with: fetched, found
    /// already cached, or failed (then a reader's own fetch reports it).
    pub prefetched: AtomicU64,
}

type SharedFetch = Shared<BoxFuture<'static, Result<VerifiedChunk, FetchError>>>;

pub struct Fetcher {
    chain: Arc<Chain>,
    memory: MemoryCache,
    disk: Option<Arc<DiskCache>>,
    inflight: Mutex<HashMap<Digest, SharedFetch>>,
    deadline: Duration,
    pub stats: FetchStats,
}

impl Fetcher {
    pub fn new(
        chain: Arc<Chain>,
        memory_bytes: usize,
        disk: Option<Arc<DiskCache>>,
        deadline: Duration,
    ) -> Arc<Fetcher> {
        Arc::new(Fetcher {
            chain,
            memory: MemoryCache::new(memory_bytes),
            disk,
            inflight: Mutex::new(HashMap::new()),
            deadline,
            stats: FetchStats::default(),
        })
    }

    pub fn chain(&self) -> &Arc<Chain> {
        &self.chain
    }

    pub fn memory(&self) -> &MemoryCache {
        &self.memory
    }

    /// The disk cache, if the mount has one (`--cache-dir`).
    pub fn disk(&self) -> Option<&Arc<DiskCache>> {
        self.disk.as_ref()
    }

    /// Returns the verified chunk, or an error after at most the read deadline.
    pub async fn get(self: &Arc<Self>, info: &ChunkInfo) -> Result<VerifiedChunk, FetchError> {
        if let Some(c) = self.memory.get(&info.hash) {
            self.stats.memory_hits.fetch_add(1, Relaxed);
            return Ok(c);
        }
        let fut = self.start(info);
        match tokio::time::timeout(self.deadline, fut).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Deadline(self.deadline)),
        }
    }

    /// Starts fetching a chunk in the background unless it is cached or already on its way.
    pub fn prefetch(self: &Arc<Self>, info: &ChunkInfo) {
        if self.memory.get(&info.hash).is_none() {
            drop(self.start(info));
        }
    }

    /// Fetches every chunk in the given order in the background, `concurrency` at a time, into
    /// the caches. On-demand reads are not delayed: they do not queue behind this task (each
    /// provider keeps most of its request slots free for them), and a chunk this task is already
    /// fetching is shared with any reader that wants it.
    pub fn prefetch_all(self: &Arc<Self>, chunks: Vec<ChunkInfo>, concurrency: usize) {
        let this = self.clone();
        self.prefetch_in_order(chunks, concurrency, "the whole workspace", move || {
            this.stats.prefetched.fetch_add(1, Relaxed);
        });
    }

    /// [`Fetcher::prefetch_all`] for any list (a profile's chunks), calling `done` once per
    /// chunk dealt with (fetched, found cached, or failed: a reader's own fetch reports that).
    pub fn prefetch_in_order(
        self: &Arc<Self>,
        chunks: Vec<ChunkInfo>,
        concurrency: usize,
        what: &'static str,
        done: impl Fn() + Send + Sync + 'static,
    ) {
        use futures::StreamExt;
        let this = self.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let total = chunks.len();
            let done = &done;
            futures::stream::iter(chunks)
                .for_each_concurrent(concurrency.max(1), |c| {
                    let this = this.clone();
                    async move {
                        // Already here (a reader or the kernel warm-up fetched it): done too.
                        if this.memory.get(&c.hash).is_none() {
                            let _ = this.start(&c).await;
                        }
                        done();
                    }
                })
                .await;
            tracing::info!(
                chunks = total,
                secs = started.elapsed().as_secs_f64(),
                "prefetch of {what} finished"
            );
        });
    }

    fn start(self: &Arc<Self>, info: &ChunkInfo) -> SharedFetch {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = inflight.get(&info.hash) {
            return f.clone();
        }
        let this = self.clone();
        let info = *info;
        let span =
            tracing::debug_span!("fetch", chunk = %info.hash.short(), raw_len = info.raw_len);
        let task = tokio::spawn(
            async move {
                let r = this.load(&info).await;
                this.inflight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&info.hash);
                r
            }
            .instrument(span),
        );
        let fut = async move {
            match task.await {
                Ok(r) => r,
                Err(e) => Err(FetchError::Internal(format!("fetch task failed: {e}"))),
            }
        }
        .boxed()
        .shared();
        inflight.insert(info.hash, fut.clone());
        fut
    }

    async fn load(&self, info: &ChunkInfo) -> Result<VerifiedChunk, FetchError> {
        if let Some(c) = self.memory.get(&info.hash) {
            return Ok(c);
        }
        if let Some(disk) = &self.disk {
            let d = disk.clone();
            let i = *info;
            match tokio::task::spawn_blocking(move || d.get(&i)).await {
                Ok(DiskLookup::Hit(c)) => {
                    self.stats.disk_hits.fetch_add(1, Relaxed);
                    self.memory.insert(c.clone());
                    return Ok(c);
                }
                Ok(DiskLookup::Corrupt) => {
                    self.stats.disk_corrupt.fetch_add(1, Relaxed);
                }
                _ => {}
            }
        }
        match self.chain.fetch_chunk(info).await {
            Ok(served) => {
                let c = served.value;
                self.stats.fetched.fetch_add(1, Relaxed);
                self.stats.fetched_bytes.fetch_add(c.len() as u64, Relaxed);
                self.memory.insert(c.clone());
                if let Some(disk) = &self.disk {
                    let d = disk.clone();
                    let c2 = c.clone();
                    // Off the read path: the reader has its bytes already.
                    tokio::task::spawn_blocking(move || d.put(&c2));
                }
                Ok(c)
            }
            Err(missed) => {
                self.stats.failed.fetch_add(1, Relaxed);
                Err(FetchError::Missed(Arc::new(missed)))
            }
        }
    }
}
