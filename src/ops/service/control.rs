//! The daemon's control socket: beside its run record, it answers `status` with a JSON snapshot
//! of its counters and failure ledger ([`MountStatus`]) and `quiesce` by stopping its warm-up.
//! The server ([`serve`]) runs in the daemon; the client ([`query`], [`quiesce`]) in `wsfs
//! status` and `wsfs umount`. The JSON shape is documented in docs/operations.md and kept stable:
//! `{"mounts": [{"mountpoint": …, "pid": …, …}]}`.

use crate::fs::ledger::Failure;
use crate::fs::opstats::FuseOp;
use crate::fs::warmup::WarmupState;
use crate::fs::WsFs;
use crate::store::breaker::State as BreakerState;
use crate::store::outcome::OutcomeKind;
use crate::store::stats::get;
use crate::store::Chain;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StoreStatus {
    pub name: String,
    /// Requests by outcome: hit, not_found, unavailable, timeout, corrupt, short, skipped.
    pub requests: BTreeMap<String, u64>,
    /// Chunks (and manifests) this store served.
    pub served: u64,
    pub bytes: u64,
    pub breaker: BreakerState,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CacheStatus {
    pub memory_hits: u64,
    pub disk_hits: u64,
    pub disk_corrupt: u64,
    pub fetched: u64,
    /// Chunks the background prefetch (`--prefetch chunks|all`) has dealt with (fetched or
    /// found cached); equal to the workspace's chunk count when it is done.
    #[serde(default)]
    pub prefetched: u64,
    /// Chunks in the workspace (what a finished `--prefetch chunks|all` has dealt with).
    #[serde(default)]
    pub chunks: u64,
    pub memory_bytes: u64,
    /// Range GETs of framed chunks that served, the frames they brought (verified), reads
    /// served from frames instead of whole chunks, and runs of frames no store could serve.
    #[serde(default)]
    pub range_gets: u64,
    #[serde(default)]
    pub frames_fetched: u64,
    #[serde(default)]
    pub frame_reads: u64,
    #[serde(default)]
    pub frame_misses: u64,
}

/// Profile-guided prefetch (`--profile NAME`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProfileStatus {
    pub name: String,
    /// Entries (chunks or frames) the stored profile listed, how many of them this workspace
    /// has, and how many requests of the replay (whole chunks, runs of frames) are done.
    pub listed: u64,
    pub matched: u64,
    pub replayed: u64,
    /// Chunks (or frames) this run's reads have touched so far (stored at unmount).
    pub recorded: u64,
}

/// The kernel cache warm-up of `--prefetch all`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WarmupStatus {
    pub state: WarmupState,
    pub dirs_listed: u64,
    /// Small files pushed into the kernel's page cache, and their bytes.
    pub files_stored: u64,
    pub bytes_stored: u64,
    /// Files left to on-demand reads: a chunk could not be fetched, or the kernel refused.
    pub files_failed: u64,
    /// Files not pushed because `--prefetch-page-cache` was spent.
    pub files_over_budget: u64,
    /// How long the warm-up took (0 while running).
    pub elapsed_ms: u64,
    /// Small files pushed into the page cache because a file of the same pack chunk was read (`--prefetch tree|all`), and their bytes.
    #[serde(default)]
    pub neighbour_files_stored: u64,
    #[serde(default)]
    pub neighbour_bytes_stored: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MountStatus {
    pub mountpoint: String,
    pub workspace: String,
    pub layers: Vec<String>,
    /// The daemon serving requests now (after a takeover, the replacement).
    pub pid: i32,
    /// The daemon answered on its control socket.
    pub alive: bool,
    /// The kernel's view of the connection (a bounded probe): `served`, `dead` (nothing holds
    /// it: reads fail with ENOTCONN), `unresponsive` (a daemon stopped, hung or being replaced)
    /// or `unknown`.
    #[serde(default)]
    pub connection: String,
    /// The keeper holding the connection, and whether it still runs.
    #[serde(default)]
    pub keeper_pid: Option<i32>,
    #[serde(default)]
    pub keeper_alive: bool,
    /// Replacement daemons the keeper has started for this mount.
    #[serde(default)]
    pub takeovers: u32,
    /// The directory this mount is the workspace of (`wsfs attach --at`), if any.
    #[serde(default)]
    pub attached_at: Option<String>,
    /// Per layer: the key id of the signature that vouched for its ref, `unsigned`, or
    /// `pinned by <layer>` (an ancestor vouched for by a signed descendant's pins).
    #[serde(default)]
    pub signers: BTreeMap<String, String>,
    /// Refs refused for their signature while mounting (another store's was used).
    #[serde(default)]
    pub signature_failures: u64,
    pub started: i64,
    pub uptime_secs: u64,
    pub fuse_waiting: Option<u64>,
    pub entries: u64,
    /// How the tree is held: the manifest's own index served in place, or built.
    #[serde(default)]
    pub tree: TreeStatus,
    pub reads: u64,
    pub bytes_served: u64,
    pub failovers: u64,
    pub eio: u64,
    pub repairs: u64,
    pub cache: CacheStatus,
    #[serde(default)]
    pub warmup: WarmupStatus,
    #[serde(default)]
    pub profile: Option<ProfileStatus>,
    /// `--passthrough`: opens served by a backing file, opens that fell back to reads through
    /// wsfs, and files materialized in the disk cache for it.
    #[serde(default)]
    pub passthrough_opens: u64,
    #[serde(default)]
    pub passthrough_fallbacks: u64,
    #[serde(default)]
    pub files_materialized: u64,
    pub stores: Vec<StoreStatus>,
    /// FUSE requests by op (lookup, getattr, readlink, open, read, readdir, readdirplus, opendir,
    /// statfs) and the error replies among them.
    #[serde(default)]
    pub fuse_ops: BTreeMap<String, u64>,
    #[serde(default)]
    pub fuse_errors: BTreeMap<String, u64>,
    pub failures: Vec<Failure>,
    /// Set for mounts whose status could not be read (stale or unresponsive daemon).
    pub problem: Option<String>,
}

/// The tree a mount serves ([`crate::fs::InodeTable`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TreeStatus {
    /// Served in place from a version-2 manifest's tree index (one layer); otherwise built from
    /// a version-1 manifest or a merge of several layers.
    pub in_place: bool,
    /// Bytes the tree occupies in memory.
    pub bytes: u64,
}

/// What the daemon knows about itself.
pub struct StatusSource {
    pub fs: Arc<WsFs>,
    pub chain: Arc<Chain>,
    pub base: MountStatus,
}

impl StatusSource {
    pub fn snapshot(&self) -> MountStatus {
        let mut s = self.base.clone();
        let now = crate::ops::linux::process::unix_now();
        s.alive = true;
        s.uptime_secs = (now - s.started).max(0) as u64;
        s.entries = self.fs.table().len() as u64;
        s.reads = get(&self.fs.stats.reads);
        s.bytes_served = get(&self.fs.stats.bytes_served);
        s.eio = get(&self.fs.stats.eio);
        s.passthrough_opens = get(&self.fs.stats.passthrough_opens);
        s.passthrough_fallbacks = get(&self.fs.stats.passthrough_fallbacks);
        s.files_materialized = get(&self.fs.stats.files_materialized);
        s.failovers = get(&self.chain.stats.failovers);
        s.repairs = get(&self.chain.stats.repairs);
        s.signature_failures = get(&self.chain.stats.signature_failures);
        let f = &self.fs.fetcher().stats;
        s.cache = CacheStatus {
            memory_hits: get(&f.memory_hits),
            disk_hits: get(&f.disk_hits),
            disk_corrupt: get(&f.disk_corrupt),
            fetched: get(&f.fetched),
            prefetched: get(&f.prefetched),
            chunks: self.fs.table().chunk_count() as u64,
            memory_bytes: self.fs.fetcher().memory().bytes() as u64,
            range_gets: get(&self.chain.stats.range_gets),
            frames_fetched: get(&f.frames_fetched),
            frame_reads: get(&f.frame_reads),
            frame_misses: get(&f.frame_misses),
        };
        if let Some(p) = s.profile.as_mut() {
            let ps = &self.fs.profile_stats;
            p.listed = get(&ps.listed);
            p.matched = get(&ps.matched);
            p.replayed = get(&ps.replayed);
            p.recorded = self.fs.recorder().map(|r| r.len() as u64).unwrap_or(0);
        }
        let w = &self.fs.warmup;
        s.warmup = WarmupStatus {
            state: w.state(),
            dirs_listed: get(&w.dirs_listed),
            files_stored: get(&w.files_stored),
            bytes_stored: get(&w.bytes_stored),
            files_failed: get(&w.files_failed),
            files_over_budget: get(&w.files_over_budget),
            elapsed_ms: get(&w.elapsed_ms),
            neighbour_files_stored: get(&self.fs.pages.neighbour_files),
            neighbour_bytes_stored: get(&self.fs.pages.neighbour_bytes),
        };
        s.stores = self
            .chain
            .providers()
            .iter()
            .map(|p| StoreStatus {
                name: p.name.clone(),
                requests: OutcomeKind::ALL
                    .iter()
                    .map(|k| (k.label().to_string(), p.stats.count(*k)))
                    .collect(),
                served: p.stats.count(OutcomeKind::Hit),
                bytes: get(&p.stats.bytes),
                breaker: p.breaker.state(),
            })
            .collect();
        let ops = &self.fs.ops;
        s.fuse_ops = FuseOp::ALL
            .iter()
            .map(|o| (o.name().to_string(), ops.calls(*o)))
            .collect();
        s.fuse_errors = FuseOp::ALL
            .iter()
            .map(|o| (o.name().to_string(), ops.errors(*o)))
            .collect();
        s.failures = self.fs.ledger.recent();
        s
    }
}

/// Serves the daemon's control socket from a background thread. A client sends one request
/// line and reads one JSON document back:
/// * `status` (or nothing, then end of input): a [`MountStatus`] snapshot;
/// * `quiesce`: stop background work that holds files of the mount open (the kernel cache
///   warm-up), so that an unmount is not refused as busy; answers `{"quiesced": bool}`.
pub fn serve(socket: &Path, source: Arc<StatusSource>) -> std::io::Result<()> {
    let _ = std::fs::remove_file(socket);
    if let Some(d) = socket.parent() {
        std::fs::create_dir_all(d)?;
    }
    let listener = std::os::unix::net::UnixListener::bind(socket)?;
    std::thread::Builder::new()
        .name("wsfs-status".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
                let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
                let body = match read_request(&mut conn).as_str() {
                    "quiesce" => {
                        let done = source.fs.warmup.stop(crate::fs::warmup::WARMUP_STOP_WAIT);
                        serde_json::json!({ "quiesced": done })
                            .to_string()
                            .into_bytes()
                    }
                    _ => serde_json::to_vec(&source.snapshot()).unwrap_or_default(),
                };
                let _ = conn.write_all(&body);
            }
        })?;
    Ok(())
}

/// The request line (at most 64 bytes, up to a newline or the end of input); empty if none.
fn read_request(conn: &mut std::os::unix::net::UnixStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while buf.len() < 64 {
        match conn.read(&mut byte) {
            Ok(1) if byte[0] != b'\n' => buf.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf).trim().to_string()
}

/// Sends one request line and reads the whole answer, bounded in time.
fn request(socket: &Path, line: &str, timeout: Duration) -> Result<Vec<u8>, String> {
    let mut c = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("cannot reach daemon at {}: {e}", socket.display()))?;
    c.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    c.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    c.write_all(format!("{line}\n").as_bytes())
        .map_err(|e| format!("cannot ask the daemon: {e}"))?;
    let mut buf = Vec::new();
    c.read_to_end(&mut buf)
        .map_err(|e| format!("daemon did not answer: {e}"))?;
    Ok(buf)
}

/// Asks a daemon for its status, bounded in time.
pub fn query(socket: &Path, timeout: Duration) -> Result<MountStatus, String> {
    let buf = request(socket, "status", timeout)?;
    serde_json::from_slice(&buf).map_err(|e| format!("bad status from daemon: {e}"))
}

/// Asks a daemon to stop background work that keeps files of its mount open, and waits for it
/// (bounded). Returns whether the daemon confirmed.
pub fn quiesce(socket: &Path, timeout: Duration) -> Result<bool, String> {
    let buf = request(socket, "quiesce", timeout)?;
    let v: serde_json::Value =
        serde_json::from_slice(&buf).map_err(|e| format!("bad answer from daemon: {e}"))?;
    Ok(v["quiesced"].as_bool() == Some(true))
}
