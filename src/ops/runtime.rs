//! Runtime records: one JSON file per live mount under the run directory (`/run/wsfs/mounts/` for
//! root), written by the daemon when the mount is ready and removed when it exits. `wsfs status`
//! and `wsfs umount` find daemons (pid, control socket, log) through them.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MountRecord {
    pub pid: i32,
    pub mountpoint: PathBuf,
    pub workspace: String,
    pub layers: Vec<String>,
    /// Store display names (no credentials).
    pub stores: Vec<String>,
    /// Unix seconds.
    pub started: i64,
    pub socket: PathBuf,
    pub log: Option<PathBuf>,
}

/// The directory for records, sockets and daemon logs: `$WSFS_RUN_DIR`, else `/run/wsfs` for
/// root, else `$XDG_RUNTIME_DIR/wsfs`, else `/tmp/wsfs-<uid>`.
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

/// Whether a process exists (signal 0). A zombie counts as gone.
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        if let Some(rest) = stat.rsplit(')').next() {
            if rest.trim_start().starts_with('Z') {
                return false;
            }
        }
    }
    // SAFETY: kill with signal 0 only checks for existence and permission.
    unsafe { libc::kill(pid, 0) == 0 }
}
