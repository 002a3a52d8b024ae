//! `wsfs persist`: walk a tree, chunk it, upload every new chunk to every store concurrently, then
//! the manifest, then — last, and only on stores that received everything — the layer ref.
//! A ref on a store therefore promises that the manifest and every chunk are on that store.

use crate::error::WsfsError;
use crate::manifest::chunker::{compress, LayerBuilder, Meta, NewChunk};
use crate::manifest::names::validate_name;
use crate::manifest::{self, keys, Digest, LayerRef};
use crate::store::{Outcome, Provider};
use bytes::Bytes;
use futures::StreamExt;
use globset::{Glob, GlobSet, GlobSetBuilder};
use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

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
}

#[derive(Debug, Default)]
pub struct StoreResult {
    pub name: String,
    pub new_chunks: u64,
    pub present_chunks: u64,
    pub bytes_written: u64,
    pub error: Option<String>,
    pub committed: bool,
}

#[derive(Debug, Default)]
pub struct PersistReport {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    pub chunks: u64,
    pub stored_bytes: u64,
    pub skipped_special: Vec<String>,
    pub manifest: Option<Digest>,
    pub stores: Vec<StoreResult>,
    pub seconds: f64,
}

impl PersistReport {
    pub fn summary(&self) -> String {
        let mut s = format!(
            "persisted {} files, {} dirs, {} symlinks, {} bytes in {} chunks ({} stored) in {:.2}s; manifest {}",
            self.files,
            self.dirs,
            self.symlinks,
            self.bytes,
            self.chunks,
            self.stored_bytes,
            self.seconds,
            self.manifest.map(|d| d.to_hex()).unwrap_or_else(|| "-".into())
        );
        for st in &self.stores {
            s.push_str(&format!(
                "\n  {}: {} new chunks, {} already present, {} bytes written, ref {}{}",
                st.name,
                st.new_chunks,
                st.present_chunks,
                st.bytes_written,
                if st.committed {
                    "committed"
                } else {
                    "NOT committed"
                },
                st.error
                    .as_ref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ));
        }
        s
    }
}

struct Walked {
    rel: Vec<u8>,
    abs: PathBuf,
    meta: std::fs::Metadata,
}

fn mtime(m: &std::fs::Metadata) -> (i64, u32) {
    (m.mtime(), m.mtime_nsec().clamp(0, 999_999_999) as u32)
}

fn build_globs(paths: &[String]) -> Result<Option<GlobSet>, WsfsError> {
    if paths.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for p in paths {
        let p = p.trim_start_matches("./").trim_end_matches('/');
        if p.starts_with('/') || p.split('/').any(|c| c == "..") {
            return Err(WsfsError::Usage(format!(
                "path {p:?} must be relative to --root and must not contain '..'"
            )));
        }
        let g =
            Glob::new(p).map_err(|e| WsfsError::Usage(format!("bad path pattern {p:?}: {e}")))?;
        b.add(g);
    }
    Ok(Some(
        b.build().map_err(|e| WsfsError::Usage(e.to_string()))?,
    ))
}

/// The leading components of a pattern that contain no glob syntax (`results/test-a` of
/// `results/test-a/**`): only that part of the tree can match, so only it is walked.
fn literal_prefix(pattern: &str) -> &str {
    let pattern = pattern.trim_start_matches("./").trim_end_matches('/');
    let mut end = 0;
    for (i, comp) in pattern.split('/').enumerate() {
        if comp.is_empty() || comp.contains(['*', '?', '[', ']', '{', '}', '\\']) {
            break;
        }
        end = if i == 0 {
            comp.len()
        } else {
            end + 1 + comp.len()
        };
    }
    &pattern[..end]
}

/// Where to walk for these patterns (relative to the root, "" = all of it): their literal
/// prefixes, without those inside another. Persisting `results` from a checkout with a
/// workspace attached over it must not read every workspace entry.
fn walk_starts(paths: &[String]) -> Vec<String> {
    let mut starts: Vec<String> = paths
        .iter()
        .map(|p| literal_prefix(p).to_string())
        .collect();
    if paths.is_empty() || starts.iter().any(|s| s.is_empty()) {
        return vec![String::new()];
    }
    starts.sort();
    starts.dedup();
    let mut out: Vec<String> = Vec::new();
    for s in starts {
        if !out.iter().any(|o| s.starts_with(&format!("{o}/"))) {
            out.push(s);
        }
    }
    out
}

/// Walks `root` (never following symlinks) and returns the entries to persist, sorted by path.
/// With patterns, `unmatched` gets the index of every pattern that matched nothing; only the
/// parts of the tree a pattern can match are walked (and the directories leading to them).
fn walk(
    root: &Path,
    globs: Option<&GlobSet>,
    paths: &[String],
    skipped: &mut Vec<String>,
    unmatched: &mut Vec<usize>,
) -> Result<Vec<Walked>, WsfsError> {
    let mut by_rel: std::collections::BTreeMap<Vec<u8>, Walked> = Default::default();
    let starts = if globs.is_some() {
        walk_starts(paths)
    } else {
        vec![String::new()]
    };
    for start in &starts {
        let top = root.join(start);
        if !start.is_empty() {
            // The start and the directories leading to it, as the whole walk would see them:
            // a symlink on the way is not followed (then nothing below it can match).
            let mut rel = PathBuf::new();
            let mut reachable = true;
            for comp in Path::new(start).components() {
                rel.push(comp);
                let abs = root.join(&rel);
                let Ok(meta) = abs.symlink_metadata() else {
                    reachable = false;
                    break;
                };
                let is_dir = meta.is_dir();
                let key = rel.as_os_str().as_bytes().to_vec();
                by_rel.entry(key.clone()).or_insert(Walked {
                    rel: key,
                    abs: abs.clone(),
                    meta,
                });
                if !is_dir {
                    reachable = abs == top;
                    break;
                }
            }
            if !reachable || !top.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                continue;
            }
        }
        for item in walkdir::WalkDir::new(&top)
            .follow_links(false)
            .sort_by_file_name()
            .min_depth(1)
        {
            let item =
                item.map_err(|e| WsfsError::Failed(format!("cannot walk {}: {e}", top.display())))?;
            let rel = item
                .path()
                .strip_prefix(root)
                .map_err(|e| WsfsError::Failed(e.to_string()))?
                .as_os_str()
                .as_bytes()
                .to_vec();
            let meta = item.path().symlink_metadata().map_err(|e| {
                WsfsError::Failed(format!("cannot stat {}: {e}", item.path().display()))
            })?;
            by_rel.entry(rel.clone()).or_insert(Walked {
                rel,
                abs: item.path().to_path_buf(),
                meta,
            });
        }
    }
    let mut all = Vec::with_capacity(by_rel.len());
    for (_, w) in by_rel {
        let ft = w.meta.file_type();
        if ft.is_socket() || ft.is_fifo() || ft.is_block_device() || ft.is_char_device() {
            skipped.push(w.abs.display().to_string());
            continue;
        }
        all.push(w);
    }
    let Some(globs) = globs else {
        all.sort_by(|a, b| a.rel.cmp(&b.rel));
        return Ok(all);
    };
    // CircleCI semantics: a path matching a pattern is included with everything under it; the
    // directories leading to it come along so the tree stays connected.
    let mut hit = vec![false; globs.len()];
    let mut matches = |rel: &[u8]| {
        let mut prefix_end = Some(rel.len());
        while let Some(end) = prefix_end {
            let p = Path::new(std::ffi::OsStr::from_bytes(&rel[..end]));
            let m = globs.matches(p);
            if !m.is_empty() {
                for i in m {
                    hit[i] = true;
                }
                return true;
            }
            prefix_end = rel[..end].iter().rposition(|&b| b == b'/');
        }
        false
    };
    let mut keep: BTreeSet<Vec<u8>> = BTreeSet::new();
    for w in &all {
        if matches(&w.rel) {
            keep.insert(w.rel.clone());
            let mut end = w.rel.len();
            while let Some(i) = w.rel[..end].iter().rposition(|&b| b == b'/') {
                keep.insert(w.rel[..i].to_vec());
                end = i;
            }
        }
    }
    unmatched.extend(hit.iter().enumerate().filter(|(_, h)| !**h).map(|(i, _)| i));
    let mut out: Vec<Walked> = all.into_iter().filter(|w| keep.contains(&w.rel)).collect();
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
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
    let root = opts.root.clone();
    let paths = opts.paths.clone();
    let entries = {
        let mut skipped = Vec::new();
        let entries = tokio::task::spawn_blocking(move || {
            let mut unmatched = Vec::new();
            let r = walk(&root, globs.as_ref(), &paths, &mut skipped, &mut unmatched);
            r.map(|e| (e, skipped, unmatched))
        })
        .await
        .map_err(|e| WsfsError::Failed(e.to_string()))??;
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
    let result = upload_and_commit(
        providers, &opts, entries, bar, root_meta, ancestors, &lease, &blocked, report, started,
    )
    .await;
    lease.release().await;
    result
}

/// Chunks and uploads the walked tree, then commits manifest and ref per store.
#[allow(clippy::too_many_arguments)]
async fn upload_and_commit(
    providers: &[Arc<Provider>],
    opts: &PersistOptions,
    entries: Vec<Walked>,
    bar: Option<indicatif::ProgressBar>,
    root_meta: manifest::RootMeta,
    ancestors: std::collections::BTreeMap<String, Digest>,
    lease: &crate::retention::lease::Held,
    blocked: &[(usize, String)],
    mut report: PersistReport,
    started: std::time::Instant,
) -> Result<PersistReport, WsfsError> {
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
    let chunking =
        tokio::task::spawn_blocking(move || -> Result<(LayerBuilder, [u64; 3]), WsfsError> {
            let mut b = LayerBuilder::new();
            b.set_root(root_meta);
            let mut counts = [0u64; 3];
            let mut sink = |c: NewChunk| -> Result<(), std::io::Error> {
                tx.blocking_send(c)
                    .map_err(|_| std::io::Error::other("uploads stopped"))
            };
            for w in entries {
                let (sec, nsec) = mtime(&w.meta);
                let meta = Meta {
                    path: w.rel.clone(),
                    mode: w.meta.mode(),
                    mtime_sec: sec,
                    mtime_nsec: nsec,
                };
                let ft = w.meta.file_type();
                if ft.is_dir() {
                    counts[1] += 1;
                    b.add_dir(meta);
                } else if ft.is_symlink() {
                    counts[2] += 1;
                    let t = std::fs::read_link(&w.abs).map_err(|e| {
                        WsfsError::Failed(format!("cannot read link {}: {e}", w.abs.display()))
                    })?;
                    b.add_symlink(meta, t.as_os_str().as_bytes().to_vec());
                } else {
                    counts[0] += 1;
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
                    if let Some(bar) = &bar2 {
                        bar.inc(w.meta.len());
                    }
                }
            }
            b.flush(&mut sink)
                .map_err(|e| WsfsError::Failed(format!("chunking failed: {e}")))?;
            Ok((b, counts))
        });

    let provs: Vec<Arc<Provider>> = providers.to_vec();
    let stored_lens: Vec<(u32, u32)> = tokio_stream_of(rx)
        .map(|c: NewChunk| {
            let provs = provs.clone();
            let states = states.clone();
            async move {
                let raw = c.raw.clone();
                let stored = tokio::task::spawn_blocking(move || compress(&raw))
                    .await
                    .map_err(|e| WsfsError::Failed(e.to_string()))?
                    .map_err(|e| WsfsError::Failed(format!("compression failed: {e}")))?;
                let stored = Bytes::from(stored);
                let key = keys::chunk(&c.hash);
                let uploads = provs
                    .iter()
                    .zip(states.iter())
                    .map(|(p, st)| upload_to(p, st, &key, stored.clone()));
                futures::future::join_all(uploads).await;
                Ok::<_, WsfsError>((c.index, stored.len() as u32))
            }
        })
        .buffer_unordered(opts.concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let (mut builder, counts) = chunking
        .await
        .map_err(|e| WsfsError::Failed(e.to_string()))??;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    for (i, len) in &stored_lens {
        builder.set_stored_len(*i, *len);
        report.stored_bytes += u64::from(*len);
    }
    report.files = counts[0];
    report.dirs = counts[1];
    report.symlinks = counts[2];
    report.chunks = builder.chunk_count() as u64;
    let created = crate::ops::process::unix_now();
    let m = builder.finish(
        opts.workspace.clone(),
        opts.layer.clone(),
        opts.parents.clone(),
        created,
    );
    report.bytes = m.total_file_bytes();
    let encoded = manifest::encode(&m).map_err(|e| WsfsError::Integrity(e.to_string()))?;
    let digest = Digest::of(&encoded);
    report.manifest = Some(digest);
    let encoded = Bytes::from(encoded);
    let mut layer_ref = LayerRef::with_ancestors(digest, created, &ancestors);
    if let Some(k) = &opts.sign_key {
        crate::manifest::signature::sign(&mut layer_ref, &opts.workspace, &opts.layer, k);
    }
    let layer_ref = Bytes::from(layer_ref.to_bytes());

    crate::test_hooks::pause("before-commit").await;
    // A store where the lease lapsed (unreachable for longer than it lasts) may have been
    // collected meanwhile: no ref there.
    for (i, st) in states.iter().enumerate() {
        if !lease.holds_on(i) {
            if let Ok(mut e) = st.error.lock() {
                e.get_or_insert_with(|| {
                    "the persist lease lapsed on this store (unreachable too long?): a gc may have run; not committing there — persist again".to_string()
                });
            }
        }
    }
    // Manifest, then ref, per store; a store that failed anything gets no ref.
    let commits = providers.iter().zip(states.iter()).map(|(p, st)| {
        let encoded = encoded.clone();
        let layer_ref = layer_ref.clone();
        let ws = opts.workspace.clone();
        let layer = opts.layer.clone();
        async move {
            let failed = st
                .error
                .lock()
                .map(|e| e.clone())
                .unwrap_or(Some("poisoned".into()));
            if let Some(e) = failed {
                return (false, Some(e));
            }
            if let Err(o) = p.put(&keys::manifest(&digest), encoded).await {
                return (false, Some(format!("manifest upload failed: {o}")));
            }
            let key = keys::layer_ref(&ws, &layer);
            if let Err(o) = p.put(&key, layer_ref).await {
                return (false, Some(format!("ref upload failed: {o}")));
            }
            crate::test_hooks::pause("before-readback").await;
            // Two persists of one layer race: the last ref wins. Read it back, and say so if
            // it is not ours (the layer is still complete: whichever ref won names a complete
            // layer on this store).
            let note = match p
                .get_capped(&key, crate::manifest::layer_ref::MAX_REF_BYTES as u64)
                .await
                .map(|b| LayerRef::parse(&b))
            {
                Ok(Ok((_, d))) if d == digest => None,
                Ok(Ok((_, other))) => Some(format!(
                    "another persist of this layer committed after this one: the ref now names manifest {} (not {})",
                    other.to_hex(),
                    digest.to_hex()
                )),
                Ok(Err(e)) => Some(format!("the ref read back is damaged: {e}")),
                Err(o) => Some(format!("the ref could not be read back: {o}")),
            };
            (true, note)
        }
    });
    let results = futures::future::join_all(commits).await;
    for ((p, st), (committed, error)) in providers.iter().zip(states.iter()).zip(results) {
        report.stores.push(StoreResult {
            name: p.name.clone(),
            new_chunks: st.new_chunks.load(Relaxed),
            present_chunks: st.present.load(Relaxed),
            bytes_written: st.bytes.load(Relaxed),
            error,
            committed,
        });
    }
    report.seconds = started.elapsed().as_secs_f64();
    let committed = report.stores.iter().filter(|s| s.committed).count();
    let needed = match opts.require {
        Require::All => providers.len(),
        Require::Any => 1,
        Require::AtLeast(n) => n,
    };
    if committed < needed {
        return Err(WsfsError::Failed(format!(
            "layer committed on {committed} of {} stores, but {needed} required\n{}",
            providers.len(),
            report.summary()
        )));
    }
    Ok(report)
}

fn tokio_stream_of<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_a_pattern_can_match_is_walked() {
        assert_eq!(literal_prefix("results/test-a/**"), "results/test-a");
        assert_eq!(literal_prefix("./dist/"), "dist");
        assert_eq!(literal_prefix("*.o"), "");
        assert_eq!(literal_prefix("src/*/x"), "src");
        assert_eq!(literal_prefix("a/b{c,d}"), "a");
        let v = |p: &[&str]| walk_starts(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(v(&["results", "results/x/**", "dist"]), ["dist", "results"]);
        assert_eq!(v(&["results", "**/*.log"]), [""]);
        assert_eq!(v(&["ab", "a/b"]), ["a/b", "ab"]);
    }

    #[test]
    fn a_pattern_walk_persists_what_the_whole_walk_would() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for d in ["results/a", "results/b", "dist/x", "other", "lnk-target/in"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        for f in [
            "results/a/1",
            "results/b/2",
            "dist/x/app",
            "other/o",
            "top.log",
            "lnk-target/in/f",
        ] {
            std::fs::write(r.join(f), f).unwrap();
        }
        std::os::unix::fs::symlink("lnk-target", r.join("lnk")).unwrap();
        let cases: [&[&str]; 5] = [
            &["results"],
            &["results/a/1", "dist"],
            &["*.log", "results/b"],
            &["lnk/in/f", "lnk"],
            &["missing/x", "dist/x/app"],
        ];
        for pats in cases {
            let pats: Vec<String> = pats.iter().map(|s| s.to_string()).collect();
            let globs = build_globs(&pats).unwrap();
            let (mut s1, mut u1, mut s2, mut u2) = (vec![], vec![], vec![], vec![]);
            let fast = walk(r, globs.as_ref(), &pats, &mut s1, &mut u1).unwrap();
            // The whole walk: the same patterns with a pattern that has no literal prefix.
            let mut all_pats = pats.clone();
            all_pats.push("*.nothing-matches".into());
            let all_globs = build_globs(&all_pats).unwrap();
            let full = walk(r, all_globs.as_ref(), &all_pats, &mut s2, &mut u2).unwrap();
            let names = |v: &[Walked]| v.iter().map(|w| w.rel.clone()).collect::<Vec<_>>();
            assert_eq!(names(&fast), names(&full), "{pats:?}");
            u2.retain(|i| *i < pats.len());
            assert_eq!(u1, u2, "{pats:?}: unmatched patterns");
        }
    }
}
