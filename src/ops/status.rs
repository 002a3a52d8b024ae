//! Mount status: the daemon serves a JSON snapshot of its counters and failure ledger on a Unix
//! socket beside its runtime record; `wsfs status` collects them (and lists stale mounts whose
//! daemon is gone). The JSON shape is documented in docs/operations.md and kept stable:
//! `{"mounts": [{"mountpoint": …, "pid": …, …}]}`.

use crate::fs::ledger::Failure;
use crate::fs::opstats::FuseOp;
use crate::fs::WsFs;
use crate::store::stats::{get, OUTCOME_LABELS};
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
    pub breaker: String,
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
    pub memory_bytes: u64,
}

/// The kernel cache warm-up of `--prefetch all`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WarmupStatus {
    /// off, running, done or stopped.
    pub state: String,
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
    pub pid: i32,
    pub alive: bool,
    pub started: i64,
    pub uptime_secs: u64,
    pub fuse_waiting: Option<u64>,
    pub entries: u64,
    pub reads: u64,
    pub bytes_served: u64,
    pub failovers: u64,
    pub eio: u64,
    pub repairs: u64,
    pub cache: CacheStatus,
    #[serde(default)]
    pub warmup: WarmupStatus,
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

/// What the daemon knows about itself.
pub struct StatusSource {
    pub fs: Arc<WsFs>,
    pub chain: Arc<Chain>,
    pub base: MountStatus,
}

impl StatusSource {
    pub fn snapshot(&self) -> MountStatus {
        let mut s = self.base.clone();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        s.alive = true;
        s.uptime_secs = (now - s.started).max(0) as u64;
        s.entries = self.fs.table().len() as u64;
        s.reads = get(&self.fs.stats.reads);
        s.bytes_served = get(&self.fs.stats.bytes_served);
        s.eio = get(&self.fs.stats.eio);
        s.failovers = get(&self.chain.stats.failovers);
        s.repairs = get(&self.chain.stats.repairs);
        let f = &self.fs.fetcher().stats;
        s.cache = CacheStatus {
            memory_hits: get(&f.memory_hits),
            disk_hits: get(&f.disk_hits),
            disk_corrupt: get(&f.disk_corrupt),
            fetched: get(&f.fetched),
            prefetched: get(&f.prefetched),
            memory_bytes: self.fs.fetcher().memory().bytes() as u64,
        };
        let w = &self.fs.warmup;
        s.warmup = WarmupStatus {
            state: w.state().name().to_string(),
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
                requests: OUTCOME_LABELS
                    .iter()
                    .map(|l| (l.to_string(), p.stats.count(l)))
                    .collect(),
                served: p.stats.count("hit"),
                bytes: get(&p.stats.bytes),
                breaker: format!("{:?}", p.breaker.state()).to_lowercase(),
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
                        let done = source.fs.warmup.stop(crate::mount::WARMUP_STOP_WAIT);
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

/// `wsfs status`: every wsfs mount in the mount table (live or stale) and every runtime record.
pub fn print(mountpoint: Option<&Path>, json: bool) -> Result<(), crate::error::WsfsError> {
    use super::{mountinfo, runtime};
    let want = match mountpoint {
        Some(p) => Some(
            mountinfo::absolute_lexical(p)
                .map(|(a, _)| a)
                .ok_or_else(|| {
                    crate::error::WsfsError::Usage(format!("{}: bad path", p.display()))
                })?,
        ),
        None => None,
    };
    let entries = mountinfo::read_mounts().unwrap_or_default();
    let mut points: Vec<std::path::PathBuf> = entries
        .iter()
        .filter(|e| super::force_umount::is_wsfs_mount(e))
        .map(|e| e.mount_point.clone())
        .collect();
    for r in runtime::all_records() {
        if !points.contains(&r.mountpoint) {
            points.push(r.mountpoint);
        }
    }
    points.sort();
    points.dedup();
    if let Some(w) = &want {
        points.retain(|p| p == w);
        if points.is_empty() {
            return Err(crate::error::WsfsError::Failed(format!(
                "{} is not a wsfs mount",
                w.display()
            )));
        }
    }
    let mut mounts = Vec::new();
    for p in points {
        let entry = entries.iter().find(|e| e.mount_point == p);
        let rec = runtime::read_record(&p);
        let mut st = match &rec {
            Some(r) if runtime::pid_alive(r.pid) => query(&r.socket, Duration::from_secs(2))
                .unwrap_or_else(|e| MountStatus {
                    problem: Some(e),
                    pid: r.pid,
                    alive: true,
                    ..Default::default()
                }),
            Some(r) => MountStatus {
                pid: r.pid,
                problem: Some("daemon is gone (stale mount): run wsfs umount --all-stale".into()),
                ..Default::default()
            },
            None => MountStatus {
                problem: Some("no runtime record: daemon unknown (stale?)".into()),
                ..Default::default()
            },
        };
        st.mountpoint = p.display().to_string();
        if let Some(r) = &rec {
            st.workspace = r.workspace.clone();
            if st.layers.is_empty() {
                st.layers = r.layers.clone();
            }
            st.started = r.started;
        }
        if entry.is_none() {
            st.problem = Some(if st.alive {
                "not in the mount table (daemon starting or exiting?)".into()
            } else {
                "daemon and mount are gone (daemon killed?); wsfs umount --all-stale clears this record"
                    .into()
            });
        }
        st.fuse_waiting = entry.and_then(|e| super::fusectl::waiting(e.connection_id()).ok());
        mounts.push(st);
    }
    if json {
        let doc = serde_json::json!({ "mounts": mounts });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return Ok(());
    }
    if mounts.is_empty() {
        println!("no wsfs mounts");
    }
    for m in &mounts {
        println!(
            "{}  workspace={} layers={} pid={} alive={} uptime={}s waiting={}",
            m.mountpoint,
            m.workspace,
            m.layers.join(","),
            m.pid,
            m.alive,
            m.uptime_secs,
            m.fuse_waiting
                .map(|w| w.to_string())
                .unwrap_or_else(|| "-".into())
        );
        if let Some(p) = &m.problem {
            println!("  PROBLEM: {p}");
        }
        println!(
            "  reads={} bytes_served={} failovers={} eio={} repairs={} cache: memory_hits={} disk_hits={} fetched={}",
            m.reads, m.bytes_served, m.failovers, m.eio, m.repairs, m.cache.memory_hits, m.cache.disk_hits, m.cache.fetched
        );
        let w = &m.warmup;
        if m.alive && !w.state.is_empty() && w.state != "off" {
            println!(
                "  warm-up: {} dirs_listed={} files_stored={} bytes_stored={} failed={} over_budget={}{} neighbours_pushed={}",
                w.state,
                w.dirs_listed,
                w.files_stored,
                w.bytes_stored,
                w.files_failed,
                w.files_over_budget,
                if w.state == "running" {
                    String::new()
                } else {
                    format!(" took={}ms", w.elapsed_ms)
                },
                w.neighbour_files_stored
            );
        }
        for s in &m.stores {
            let reqs: Vec<String> = s
                .requests
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            println!(
                "  store {} breaker={} served={} bytes={} [{}]",
                s.name,
                s.breaker,
                s.served,
                s.bytes,
                reqs.join(" ")
            );
        }
        for f in &m.failures {
            println!(
                "  EIO {} chunk {}{}: {}",
                f.path,
                f.chunk,
                if f.count > 1 {
                    format!(" (x{})", f.count)
                } else {
                    String::new()
                },
                f.providers.join("; ")
            );
        }
    }
    Ok(())
}
