//! Run records (not a tokio runtime): one JSON file per live mount under the run directory
//! (`/run/wsfs/mounts/` for root), written by the daemon when the mount is ready (again by each replacement daemon) and
//! removed when the mount ends. `wsfs status` and `wsfs umount` find daemons (pid, keeper,
//! control socket, log) through them. Records are a convenience, never the judge of whether a
//! mount is alive: that is asked of the kernel (`probe.rs`), because records can be lost or
//! belong to another run directory.

use super::linux::process::ProcId;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MountRecord {
    /// The daemon serving requests now.
    pub pid: i32,
    /// Its start time (with `pid`, the process identity; 0 in records of older versions).
    #[serde(default)]
    pub pid_start: u64,
    /// The keeper holding the connection, if any.
    #[serde(default)]
    pub keeper: Option<ProcId>,
    /// Replacement daemons started by the keeper so far.
    #[serde(default)]
    pub takeovers: u32,
    pub mountpoint: PathBuf,
    pub workspace: String,
    pub layers: Vec<String>,
    /// Store display names (no credentials).
    pub stores: Vec<String>,
    /// Unix seconds.
    pub started: i64,
    pub socket: PathBuf,
    pub log: Option<PathBuf>,
    /// Set when this mount is the read-only workspace under an attach at that directory.
    #[serde(default)]
    pub attached_at: Option<PathBuf>,
}

impl MountRecord {
    pub fn daemon(&self) -> ProcId {
        ProcId {
            pid: self.pid,
            start: self.pid_start,
        }
    }
}

/// The directory for records, sockets and daemon logs: `$WSFS_RUN_DIR`, else `/run/wsfs` for
/// root, else `$XDG_RUNTIME_DIR/wsfs`, else `/tmp/wsfs-<uid>`.
/// [`run_dir`] as an absolute path (a relative `WSFS_RUN_DIR` is taken against the current
/// directory), for processes that run elsewhere.
pub fn run_dir_absolute() -> PathBuf {
    let d = run_dir();
    super::linux::mountinfo::absolute_lexical(&d)
        .map(|(a, _)| a)
        .unwrap_or(d)
}

pub fn run_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("WSFS_RUN_DIR") {
        return PathBuf::from(d);
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return PathBuf::from("/run/wsfs");
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        return Path::new(&d).join("wsfs");
    }
    PathBuf::from(format!("/tmp/wsfs-{uid}"))
}

/// A stable file-name-safe id for a mountpoint.
pub fn mount_id(mountpoint: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let h = blake3::hash(mountpoint.as_os_str().as_bytes());
    hex::encode(&h.as_bytes()[..8])
}

pub fn records_dir() -> PathBuf {
    run_dir().join("mounts")
}

pub fn record_path(mountpoint: &Path) -> PathBuf {
    records_dir().join(format!("{}.json", mount_id(mountpoint)))
}

pub fn socket_path(mountpoint: &Path) -> PathBuf {
    records_dir().join(format!("{}.sock", mount_id(mountpoint)))
}

/// Where the first daemon keeps a copy of each manifest it mounted, for replacements: a takeover
/// then needs no store. Removed by the keeper when the mount ends.
pub fn pins_dir(mountpoint: &Path) -> PathBuf {
    records_dir().join(format!("{}.pins", mount_id(mountpoint)))
}

pub fn log_path(mountpoint: &Path) -> PathBuf {
    run_dir()
        .join("logs")
        .join(format!("{}.log", mount_id(mountpoint)))
}

pub fn write_record(r: &MountRecord) -> std::io::Result<()> {
    let dir = records_dir();
    std::fs::create_dir_all(&dir)?;
    let p = record_path(&r.mountpoint);
    let tmp = p.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(r).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(tmp, p)
}

pub fn read_record(mountpoint: &Path) -> Option<MountRecord> {
    let b = std::fs::read(record_path(mountpoint)).ok()?;
    serde_json::from_slice(&b).ok()
}

pub fn remove_record(mountpoint: &Path) {
    let _ = std::fs::remove_file(record_path(mountpoint));
    let _ = std::fs::remove_file(socket_path(mountpoint));
}

/// Removes the record and socket of a mount if they are still those of daemon `pid`: a daemon
/// exiting after its unmount must not remove the record of a new mount made at the same path
/// in the meantime (attach reuses its workspace path).
pub fn remove_own_record(mountpoint: &Path, pid: i32) {
    let ours = std::fs::read(record_path(mountpoint))
        .ok()
        .and_then(|b| serde_json::from_slice::<MountRecord>(&b).ok())
        .is_some_and(|r| r.pid == pid);
    if ours {
        remove_record(mountpoint);
    }
}

/// Removes everything the run directory holds for a mount that has ended: record, socket and
/// pinned manifests.
pub fn remove_all(mountpoint: &Path) {
    remove_record(mountpoint);
    let _ = std::fs::remove_dir_all(pins_dir(mountpoint));
}

pub fn all_records() -> Vec<MountRecord> {
    let Ok(rd) = std::fs::read_dir(records_dir()) else {
        return Vec::new();
    };
    let mut out: Vec<MountRecord> = rd
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect();
    out.sort_by(|a, b| a.mountpoint.cmp(&b.mountpoint));
    out
}
