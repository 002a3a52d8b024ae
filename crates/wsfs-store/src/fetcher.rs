//! The chunk source behind every read: memory cache → disk cache → provider chain.
//!
//! * Concurrent requests for the same chunk share one fetch (single flight).
//! * Each fetch runs as its own task, so a reader that gives up at its deadline does not cancel a
//!   fetch another reader (or the cache) still wants.
//! * A reader waits at most `deadline`; then it gets [`FetchError::Deadline`] (EIO), never a hang.
//! * Framed chunks (see `manifest::frames`) can also be fetched in part: runs of frames by
//!   range GET ([`Fetcher::prefetch_frames`], what a profile replay asks for), each frame
//!   verified and cached under its own digest. A read uses frames when every frame it needs is
//!   cached or on its way; otherwise it fetches the whole chunk, as before (a first run does not
//!   know what it will read next, and a whole pack brings its neighbours along).

use crate::cache::{DiskCache, DiskLookup, MemoryCache};
use crate::manifest::{frames, ChunkInfo, Digest};
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
    /// Frames fetched by range (verified; their raw bytes count in `fetched_bytes`).
    pub frames_fetched: AtomicU64,
    /// Reads served from frames (cached or fetched by range) instead of their whole chunk.
    pub frame_reads: AtomicU64,
    /// Runs of frames that no provider could serve (the reader then fetched the whole chunk).
    pub frame_misses: AtomicU64,
}

type SharedFetch = Shared<BoxFuture<'static, Result<VerifiedChunk, FetchError>>>;
type SharedRun = Shared<BoxFuture<'static, Result<Arc<Vec<VerifiedChunk>>, FetchError>>>;

/// Where a frame a read needs comes from.
enum FrameSource {
    Cached(VerifiedChunk),
    /// Frame `.1` of a range fetch on its way.
    Coming(SharedRun, usize),
}
/// Something to fetch ahead of the reader.
#[derive(Clone)]
pub enum Prefetch {
    /// A whole chunk.
    Chunk(ChunkInfo),
    /// Frames `run` of a framed chunk (`frames`: its table), by one range GET.
    Frames {
        chunk: ChunkInfo,
        frames: Arc<[ChunkInfo]>,
        run: std::ops::Range<usize>,
    },
}

pub struct Fetcher {
    chain: Arc<Chain>,
    memory: MemoryCache,
    disk: Option<Arc<DiskCache>>,
    inflight: Mutex<HashMap<Digest, SharedFetch>>,
    /// Frame digest → the range fetch bringing it, and its place in that run.
    inflight_frames: Mutex<HashMap<Digest, (SharedRun, usize)>>,
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
            inflight_frames: Mutex::new(HashMap::new()),
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
        self.get_until(info, tokio::time::Instant::now() + self.deadline)
            .await
    }

    /// [`Fetcher::get`], waiting until `until` at most (a read that already waited for frames
    /// has only what is left of its deadline).
    async fn get_until(
        self: &Arc<Self>,
        info: &ChunkInfo,
        until: tokio::time::Instant,
    ) -> Result<VerifiedChunk, FetchError> {
        if let Some(c) = self.memory.get(&info.hash) {
            self.stats.memory_hits.fetch_add(1, Relaxed);
            return Ok(c);
        }
        let fut = self.start(info);
        match tokio::time::timeout_at(until, fut).await {
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
        let items = chunks.into_iter().map(Prefetch::Chunk).collect();
        self.prefetch_in_order(items, concurrency, "the whole workspace", move || {
            this.stats.prefetched.fetch_add(1, Relaxed);
        });
    }

    /// [`Fetcher::prefetch_all`] for any list (a profile's chunks and runs of frames), calling
    /// `done` once per item dealt with (fetched, found cached, or failed: a reader's own fetch
    /// reports that).
    pub fn prefetch_in_order(
        self: &Arc<Self>,
        chunks: Vec<Prefetch>,
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
                .for_each_concurrent(concurrency.max(1), |item| {
                    let this = this.clone();
                    async move {
                        match item {
                            // Already here (a reader or the kernel warm-up fetched it): done too.
                            Prefetch::Chunk(c) => {
                                if this.memory.get(&c.hash).is_none() {
                                    let _ = this.start(&c).await;
                                }
                            }
                            // A chunk the disk cache holds whole is read from there whole.
                            Prefetch::Frames { chunk, .. }
                                if this.disk.as_ref().is_some_and(|d| d.has_chunk(&chunk.hash)) =>
                            {
                                if this.memory.get(&chunk.hash).is_none() {
                                    let _ = this.start(&chunk).await;
                                }
                            }
                            Prefetch::Frames { chunk, frames, run } => {
                                if let Some(f) = this.prefetch_frames(&chunk, &frames, run) {
                                    let _ = f.await;
                                }
                            }
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

    /// Raw bytes `from..to` of a chunk (`frames`: its frame table, empty if it has none),
    /// verified, within one read deadline in all: from the whole chunk if it is cached, from
    /// frames if every frame they need is cached or on its way, else (or if their run missed
    /// everywhere) from the whole chunk, fetched.
    pub async fn get_bytes(
        self: &Arc<Self>,
        info: &ChunkInfo,
        frames: &[ChunkInfo],
        from: u32,
        to: u32,
    ) -> Result<bytes::Bytes, FetchError> {
        let slice = |data: &bytes::Bytes, base: u64| {
            let a = (u64::from(from) - base) as usize;
            let b = (u64::from(to) - base) as usize;
            if a <= b && b <= data.len() {
                Ok(data.slice(a..b))
            } else {
                Err(FetchError::Internal(
                    "an extent lies outside its chunk".into(),
                ))
            }
        };
        if let Some(c) = self.memory.get(&info.hash) {
            self.stats.memory_hits.fetch_add(1, Relaxed);
            return slice(c.data(), 0);
        }
        let until = tokio::time::Instant::now() + self.deadline;
        let run = frames::covering(frames, from, to.saturating_sub(from));
        if let Some(sources) = self.frames_at_hand(frames, run.clone()) {
            let waits = sources.into_iter().map(|src| async move {
                match src {
                    FrameSource::Cached(c) => Ok(c),
                    FrameSource::Coming(fut, at) => {
                        fut.await?.get(at).cloned().ok_or_else(|| {
                            FetchError::Internal("a frame run came back short".into())
                        })
                    }
                }
            });
            let got = tokio::time::timeout_at(until, futures::future::join_all(waits))
                .await
                .map_err(|_| FetchError::Deadline(self.deadline))?;
            // A run that missed everywhere: the whole chunk may still be had (below).
            if let Ok(parts) = got.into_iter().collect::<Result<Vec<_>, _>>() {
                self.stats.frame_reads.fetch_add(1, Relaxed);
                let mut joined = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
                for p in &parts {
                    joined.extend_from_slice(p.data());
                }
                let base = frames::raw_start(frames, run.start);
                return slice(&bytes::Bytes::from(joined), base);
            }
        }
        let c = self.get_until(info, until).await?;
        slice(c.data(), 0)
    }

    /// True when raw bytes `from..to` of a framed chunk will be served from frames (each is
    /// cached or on its way): a profile foresaw the read, so nothing around it is fetched ahead.
    pub fn frames_ready(&self, frames: &[ChunkInfo], from: u32, to: u32) -> bool {
        let run = frames::covering(frames, from, to.saturating_sub(from));
        self.frames_at_hand(frames, run).is_some()
    }

    /// For each frame of `run`: where it comes from — the memory cache or a range fetch on its
    /// way. None if any is neither, or the run is empty (the read uses the whole chunk).
    fn frames_at_hand(
        &self,
        frames: &[ChunkInfo],
        run: std::ops::Range<usize>,
    ) -> Option<Vec<FrameSource>> {
        let wanted = frames.get(run).filter(|w| !w.is_empty())?;
        let inflight = self
            .inflight_frames
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        wanted
            .iter()
            .map(|f| match self.memory.get(&f.hash) {
                Some(c) => Some(FrameSource::Cached(c)),
                None => inflight
                    .get(&f.hash)
                    .map(|(fut, at)| FrameSource::Coming(fut.clone(), *at)),
            })
            .collect()
    }

    /// Starts fetching frames `run` of a framed chunk by range (those not cached or already on
    /// their way: the rest of the run, one request). None if there is nothing left to fetch.
    pub fn prefetch_frames(
        self: &Arc<Self>,
        info: &ChunkInfo,
        frames: &Arc<[ChunkInfo]>,
        run: std::ops::Range<usize>,
    ) -> Option<SharedRun> {
        let mut inflight = self
            .inflight_frames
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let todo: Vec<usize> = run
            .filter(|&i| {
                frames.get(i).is_some_and(|f| {
                    self.memory.get(&f.hash).is_none() && !inflight.contains_key(&f.hash)
                })
            })
            .collect();
        let run = todo.first().copied()?..todo.last().copied()? + 1;
        let this = self.clone();
        let (info, table) = (*info, frames.clone());
        let r2 = run.clone();
        let task = tokio::spawn(async move {
            let r = this.chain.fetch_frames(&info, &table, r2.clone()).await;
            let out = match r {
                Ok(served) => {
                    let got = served.value;
                    for c in &got {
                        this.stats.frames_fetched.fetch_add(1, Relaxed);
                        this.stats.fetched_bytes.fetch_add(c.len() as u64, Relaxed);
                        this.memory.insert(c.clone());
                    }
                    Ok(Arc::new(got))
                }
                Err(missed) => {
                    this.stats.frame_misses.fetch_add(1, Relaxed);
                    tracing::debug!(%missed, "a run of frames missed; readers fetch the whole chunk");
                    Err(FetchError::Missed(Arc::new(missed)))
                }
            };
            let mut inflight = this
                .inflight_frames
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for f in table.get(r2).unwrap_or_default() {
                inflight.remove(&f.hash);
            }
            out
        });
        let fut: SharedRun = async move {
            match task.await {
                Ok(r) => r,
                Err(e) => Err(FetchError::Internal(format!("fetch task failed: {e}"))),
            }
        }
        .boxed()
        .shared();
        for (at, f) in frames.get(run).unwrap_or_default().iter().enumerate() {
            inflight.insert(f.hash, (fut.clone(), at));
        }
        Some(fut)
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
