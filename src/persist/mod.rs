//! `wsfs persist`: walk a tree, chunk it, upload every new chunk to every store concurrently, then
//! the manifest, then — last, and only on stores that received everything — the layer ref.
//! A ref on a store therefore promises that the manifest and every chunk are on that store.
//!
//! The steps: walk (`walk.rs`) → plan what the persist index lets us skip reading
//! (`index.rs`, `reuse.rs`) → take the persist lease → confirm the reused chunks on the stores →
//! chunk and upload → leave the index for next time → commit (manifest, then ref, per store).

use crate::error::WsfsError;
use crate::manifest::chunker::{LayerBuilder, Meta, NewChunk};
use crate::manifest::frames::compress;
use crate::manifest::names::validate_name;
use crate::manifest::{self, keys, ChunkInfo};
use crate::store::{Outcome, Provider};
use bytes::Bytes;
use futures::StreamExt;
use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use walk::{build_globs, mtime, walk, Walked};

mod commit;
pub mod index;
mod report;
mod reuse;
mod walk;

pub use report::{IndexUse, PersistReport, StoreResult};

/// How many stores must hold the committed layer for persist to succeed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Require {
    All,
    Any,
    AtLeast(usize),
}

impl std::str::FromStr for Require {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(Require::All),
            "any" => Ok(Require::Any),
            n => n
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .map(Require::AtLeast)
                .ok_or_else(|| format!("--require takes all, any or a positive number, not {n:?}")),
        }
    }
}

pub struct PersistOptions {
    pub workspace: String,
    pub layer: String,
    pub parents: Vec<String>,
    pub root: PathBuf,
    /// Globs relative to `root` (CircleCI `paths`); empty = everything.
    pub paths: Vec<String>,
    pub require: Require,
    /// Chunks uploaded at once (each to every store).
    pub concurrency: usize,
    pub progress: bool,
    /// How long to wait for a gc running on a store before failing there.
    pub gc_wait: std::time::Duration,
    /// Commit a layer even if the path patterns matched nothing.
    pub allow_empty: bool,
    /// Sign the ref with this key.
    pub sign_key: Option<ed25519_dalek::SigningKey>,
    /// Where the persist index lives (see `persist/index.rs`); None: every file is read.
    pub index_dir: Option<PathBuf>,
}

/// Per-store progress shared by the upload tasks.
struct StoreState {
    new_chunks: AtomicU64,
    present: AtomicU64,
    bytes: AtomicU64,
    error: Mutex<Option<String>>,
}

async fn upload_to(p: &Provider, st: &StoreState, key: &str, body: Bytes) {
    if st.error.lock().map(|e| e.is_some()).unwrap_or(true) {
        return;
    }
    let len = body.len() as u64;
    match p.head(key).await {
        Ok(size) if size == len => {
            st.present.fetch_add(1, Relaxed);
            return;
        }
        Ok(_) | Err(Outcome::NotFound) => {}
        // A failed HEAD is not fatal: the PUT decides.
        Err(_) => {}
    }
    match p.put(key, body).await {
        Ok(()) => {
            st.new_chunks.fetch_add(1, Relaxed);
            st.bytes.fetch_add(len, Relaxed);
        }
        Err(o) => {
            if let Ok(mut e) = st.error.lock() {
                e.get_or_insert_with(|| format!("upload of {key} failed: {o}"));
            }
        }
    }
}

pub async fn persist(
    providers: &[Arc<Provider>],
    opts: PersistOptions,
) -> Result<PersistReport, WsfsError> {
    let started = std::time::Instant::now();
    // Before anything is read: the racy-timestamp rule of the index this persist leaves measures
    // from here (see persist/index.rs).
    let started_ns = index::now_ns();
    validate_name("workspace", &opts.workspace).map_err(WsfsError::Usage)?;
    validate_name("layer", &opts.layer).map_err(WsfsError::Usage)?;
    for p in &opts.parents {
        validate_name("parent layer", p).map_err(WsfsError::Usage)?;
        if p == &opts.layer {
            return Err(WsfsError::Usage(format!(
                "layer {p:?} cannot be its own parent"
            )));
        }
    }
    if let Require::AtLeast(n) = opts.require {
        if n > providers.len() {
            return Err(WsfsError::Usage(format!(
                "--require {n} but only {} stores are given",
                providers.len()
            )));
        }
    }
    let root_meta = std::fs::metadata(&opts.root)
        .map_err(|e| WsfsError::Usage(format!("--root {}: {e}", opts.root.display())))?;
    if !root_meta.is_dir() {
        return Err(WsfsError::Usage(format!(
            "--root {} is not a directory",
            opts.root.display()
        )));
    }
    let globs = build_globs(&opts.paths)?;
    // The parents as the stores hold them now: the ref pins them, so a later re-persist of a
    // parent cannot change what this layer's mounts show. A parent that does not exist is an
    // error now, not at the first mount.
    let ancestors = {
        let chain = crate::store::Chain::from_arcs(providers.to_vec());
        crate::layers::pins_for(&chain, &opts.workspace, &opts.parents).await?
    };
    let root_meta = {
        let (sec, nsec) = mtime(&root_meta);
        manifest::RootMeta {
            mode: root_meta.mode() & 0o7777,
            mtime_sec: sec,
            mtime_nsec: nsec,
        }
    };
    let mut report = PersistReport::default();
    let index_key = index::IndexKey {
        root: std::fs::canonicalize(&opts.root).unwrap_or_else(|_| opts.root.clone()),
        workspace: opts.workspace.clone(),
        layer: opts.layer.clone(),
    };
    // The index is read while the tree is walked (both wait on the disk, for different things).
    let loading = opts.index_dir.clone().map(|dir| {
        let key = index_key.clone();
        tokio::task::spawn_blocking(move || index::PersistIndex::load(&dir, &key))
    });
    let root = opts.root.clone();
    let paths = opts.paths.clone();
    let entries = {
        let mut skipped = Vec::new();
        let entries = tokio::task::spawn_blocking(move || {
            let mut unmatched = Vec::new();
            let r = walk(&root, globs.as_ref(), &paths, &mut skipped, &mut unmatched);
            r.map(|e| (e, skipped, unmatched))
        })
        .await??;
        if !opts.allow_empty {
            if !entries.2.is_empty() {
                let names: Vec<&str> = entries.2.iter().map(|i| opts.paths[*i].as_str()).collect();
                return Err(WsfsError::Usage(format!(
                    "path pattern(s) matched nothing under {}: {} (check the paths, or pass --allow-empty)",
                    opts.root.display(),
                    names.join(", ")
                )));
            }
            if entries.0.is_empty() {
                return Err(WsfsError::Usage(format!(
                    "nothing to persist: {} is empty (pass --allow-empty to commit an empty layer)",
                    opts.root.display()
                )));
            }
        }
        let entries = (entries.0, entries.1);
        for s in &entries.1 {
            tracing::warn!(path = %s, "skipping special file (socket, fifo or device)");
        }
        report.skipped_special = entries.1;
        entries.0
    };
    let (entries, mut plan) = plan_reuse(loading, entries, &mut report).await?;
    tracing::debug!(
        entries = entries.len(),
        ms = started.elapsed().as_millis() as u64,
        index = ?report.index,
        "walked and planned"
    );
    if let Some(w) = entries.iter().find(|w| w.rel.contains(&b'\n')) {
        tracing::warn!(path = %w.abs.display(), "file name contains a newline");
    }
    let total_bytes: u64 = entries
        .iter()
        .filter(|w| w.meta.is_file())
        .map(|w| w.meta.len())
        .sum();
    let bar = if opts.progress {
        let b = indicatif::ProgressBar::new(total_bytes);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(b)
    } else {
        None
    };

    // A persist lease on every store: a gc waits for it before deleting anything, and this
    // persist waits for a gc already running (see retention/lease.rs).
    let (lease, blocked) =
        crate::retention::lease::persist_gate(providers, &opts.workspace, opts.gc_wait).await;
    let result = async {
        if let Some(plan) = plan.as_mut() {
            let skip: Vec<usize> = blocked.iter().map(|(i, _)| *i).collect();
            let confirmed = reuse::confirm(providers, &skip, plan).await;
            let reused = plan.iter().flatten();
            let (reused_files, reused_bytes) = reused.fold((0, 0), |(n, b), r| (n + 1, b + r.size));
            let files = entries.iter().filter(|w| w.meta.is_file()).count() as u64;
            report.index = IndexUse::Used {
                reused_files,
                reused_bytes,
                read_files: files - reused_files,
                confirmed_chunks: confirmed.chunks,
                missing_chunks: confirmed.missing,
            };
        }
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            "lease held, reused chunks confirmed"
        );
        let chunked = chunk_and_upload(
            providers,
            &opts,
            entries,
            plan.unwrap_or_default(),
            bar,
            root_meta,
            &blocked,
        )
        .await?;
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            "chunked and uploaded"
        );
        // The index for next time is written while the layer is committed.
        let writing = opts.index_dir.clone().map(|dir| {
            let (key, manifest, stamps) = (
                index_key.clone(),
                chunked.manifest.clone(),
                chunked.stamps.clone(),
            );
            tokio::task::spawn_blocking(move || {
                write_index(&dir, &key, started_ns, &manifest, &stamps)
            })
        });
        let committed = commit::commit(
            providers, &opts, chunked, ancestors, &lease, report, started,
        )
        .await;
        if let Some(w) = writing {
            let _ = w.await;
            tracing::debug!(ms = started.elapsed().as_millis() as u64, "index written");
        }
        committed
    }
    .await;
    lease.release().await;
    result
}

/// Takes the index being loaded (if any) and decides which walked files need not be read;
/// fills in `report.index` for the cases where no plan comes out.
async fn plan_reuse(
    loading: Option<tokio::task::JoinHandle<Result<Option<index::PersistIndex>, String>>>,
    entries: Vec<Walked>,
    report: &mut PersistReport,
) -> Result<(Vec<Walked>, Option<reuse::Plan>), WsfsError> {
    let Some(loading) = loading else {
        report.index = IndexUse::Off;
        return Ok((entries, None));
    };
    let loaded = loading.await?;
    let (entries, loaded) = tokio::task::spawn_blocking(move || {
        let loaded = loaded.map(|i| i.map(|i| reuse::plan(&i, &entries)));
        (entries, loaded)
    })
    .await?;
    match loaded {
        Ok(Some(plan)) => Ok((entries, Some(plan))),
        Ok(None) => {
            report.index = IndexUse::Fresh;
            Ok((entries, None))
        }
        Err(why) => {
            tracing::warn!(reason = %why, "the persist index cannot be used; reading every file");
            report.index = IndexUse::Unusable(why);
            Ok((entries, None))
        }
    }
}

/// Leaves the index for the next persist of this tree. Best effort: a failure is a warning.
fn write_index(
    dir: &Path,
    key: &index::IndexKey,
    started_ns: i64,
    manifest: &manifest::Manifest,
    stamps: &HashMap<Vec<u8>, index::Stamp>,
) {
    let bytes = index::build(key, started_ns, manifest, stamps);
    if let Err(e) = index::store(dir, key, &bytes) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot write the persist index (the next persist reads every file)");
    }
}

/// How many of each kind of entry a layer holds.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    files: u64,
    dirs: u64,
    symlinks: u64,
}

/// The layer, chunked and its new chunks uploaded; not committed anywhere yet.
struct Chunked {
    manifest: Arc<manifest::Manifest>,
    counts: Counts,
    /// The walked stat of every regular file, for the next persist's index.
    stamps: Arc<HashMap<Vec<u8>, index::Stamp>>,
    /// Per store (same order as the providers): chunks uploaded, chunks already there, bytes
    /// written, and the first error (a store with an error gets no ref).
    states: Arc<Vec<StoreState>>,
}

/// Reads and chunks the walked tree (except what the plan reuses) on a blocking thread, and
/// uploads each new chunk to every store as it comes.
async fn chunk_and_upload(
    providers: &[Arc<Provider>],
    opts: &PersistOptions,
    entries: Vec<Walked>,
    plan: reuse::Plan,
    bar: Option<indicatif::ProgressBar>,
    root_meta: manifest::RootMeta,
    blocked: &[(usize, String)],
) -> Result<Chunked, WsfsError> {
    let states: Arc<Vec<StoreState>> = Arc::new(
        providers
            .iter()
            .map(|_| StoreState {
                new_chunks: AtomicU64::new(0),
                present: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
                error: Mutex::new(None),
            })
            .collect(),
    );
    for (i, why) in blocked {
        if let Some(st) = states.get(*i) {
            if let Ok(mut e) = st.error.lock() {
                e.get_or_insert_with(|| why.clone());
            }
        }
    }

    // Chunking runs on a blocking thread and hands new chunks to the uploaders through a bounded
    // channel, so memory stays bounded however large the tree is.
    let (tx, rx) = tokio::sync::mpsc::channel::<NewChunk>(opts.concurrency.max(1) * 2);
    let bar2 = bar.clone();
    let chunking = tokio::task::spawn_blocking(move || {
        let mut plan = plan.into_iter();
        let mut sink = |c: NewChunk| -> Result<(), std::io::Error> {
            tx.blocking_send(c)
                .map_err(|_| std::io::Error::other("uploads stopped"))
        };
        let mut b = LayerBuilder::new();
        b.set_root(root_meta);
        let mut counts = Counts::default();
        let mut stamps = HashMap::new();
        for w in entries {
            let reused = plan.next().flatten();
            let (sec, nsec) = mtime(&w.meta);
            let meta = Meta {
                path: w.rel.clone(),
                mode: w.meta.mode(),
                mtime_sec: sec,
                mtime_nsec: nsec,
            };
            let ft = w.meta.file_type();
            if ft.is_dir() {
                counts.dirs += 1;
                b.add_dir(meta);
            } else if ft.is_symlink() {
                counts.symlinks += 1;
                let t = std::fs::read_link(&w.abs).map_err(|e| {
                    WsfsError::Failed(format!("cannot read link {}: {e}", w.abs.display()))
                })?;
                b.add_symlink(meta, t.as_os_str().as_bytes().to_vec());
            } else {
                counts.files += 1;
                stamps.insert(w.rel.clone(), index::Stamp::of(&w.meta));
                if let Some(r) = reused {
                    b.add_stored_file(meta, r.size, r.content, &r.pieces, &|d| r.frames_of(d));
                } else {
                    let f = std::fs::File::open(&w.abs).map_err(|e| {
                        WsfsError::Failed(format!("cannot read {}: {e}", w.abs.display()))
                    })?;
                    b.add_file(
                        meta,
                        w.meta.len(),
                        std::io::BufReader::with_capacity(1 << 20, f),
                        &mut sink,
                    )
                    .map_err(|e| {
                        WsfsError::Failed(format!("cannot read {}: {e}", w.abs.display()))
                    })?;
                }
                if let Some(bar) = &bar2 {
                    bar.inc(w.meta.len());
                }
            }
        }
        b.flush(&mut sink)
            .map_err(|e| WsfsError::Failed(format!("chunking failed: {e}")))?;
        Ok::<_, WsfsError>((b, counts, stamps))
    });

    let provs: Vec<Arc<Provider>> = providers.to_vec();
    let stored_lens: Vec<(u32, u32, Vec<ChunkInfo>)> = tokio_stream_of(rx)
        .map(|c: NewChunk| {
            let provs = provs.clone();
            let states = states.clone();
            async move {
                let raw = c.raw.clone();
                let (stored, frames) =
                    tokio::task::spawn_blocking(move || compress(&raw))
                        .await?
                        .map_err(|e| WsfsError::Failed(format!("compression failed: {e}")))?;
                let stored = Bytes::from(stored);
                let key = keys::chunk(&c.hash);
                let uploads = provs
                    .iter()
                    .zip(states.iter())
                    .map(|(p, st)| upload_to(p, st, &key, stored.clone()));
                futures::future::join_all(uploads).await;
                Ok::<_, WsfsError>((c.index, stored.len() as u32, frames))
            }
        })
        .buffer_unordered(opts.concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let (mut builder, counts, stamps) = chunking.await??;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    for (i, len, frames) in stored_lens {
        builder.set_stored(i, len, frames);
    }
    let manifest = builder.finish(
        opts.workspace.clone(),
        opts.layer.clone(),
        opts.parents.clone(),
        crate::ops::linux::process::unix_now(),
    );
    Ok(Chunked {
        manifest: Arc::new(manifest),
        counts,
        stamps: Arc::new(stamps),
        states,
    })
}

fn tokio_stream_of<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
