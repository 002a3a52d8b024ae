//! Which processes hold a mount busy, found through `/proc` without ever touching the mount:
//! the scan is safe on a hung FUSE mount and bounded in time. `wsfs umount` names them when a
//! clean unmount is refused, the daemon names them when a stop finds the mount busy, and
//! `--force` reports them before and after.
//!
//! `/proc/<pid>/{fd,cwd,root}` are only `readlink`-ed and `/proc/<pid>/{fdinfo,maps}` only
//! read, never followed.

use super::bounded::remaining;
use super::mountinfo::MountEntry;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Longest a single process's `/proc` entries may take to read before the
/// scan gives up on that process and moves on.
pub const PER_PROCESS_WAIT: Duration = Duration::from_millis(200);

/// Result of [`holder_scan`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HolderScan {
    /// Processes found holding the mount, `(pid, comm)`, sorted by pid.
    pub holders: Vec<(i32, String)>,
    /// Processes whose `/proc` entries could not be read within the
    /// per-process budget. Reading `/proc/<pid>/fd*` blocks while that
    /// process is inside `execve` holding its exec lock, which happens
    /// exactly when it inherited a descriptor on a hung FUSE mount and is
    /// stuck flushing it in close-on-exec; so these are likely holders.
    pub uninspectable: Vec<(i32, String)>,
    /// Every process was examined within the time limit.
    pub complete: bool,
}

/// Lists processes that hold `entry`'s mount busy. Safe on a hung mount and
/// bounded by `wait`.
///
/// A process counts if one of its open files is on the mount (`mnt_id` in
/// `/proc/<pid>/fdinfo/<fd>`), it maps a file from the mount's device
/// (`/proc/<pid>/maps`), or, with `by_path`, an fd, its cwd or its root
/// `readlink`s to a path at or below the mount point. Per-thread cwds
/// (`unshare(CLONE_FS)`) are not examined.
///
/// Why the watchdog: reading another process's `/proc` files can block (on
/// its exec lock during `execve`, or on its mmap lock for `maps`). The scan
/// runs on a helper thread that reports progress; a process taking longer
/// than 200 ms is recorded as uninspectable, its helper abandoned, and a new
/// helper continues with the next process.
pub fn holder_scan(entry: &MountEntry, by_path: bool, wait: Duration) -> HolderScan {
    let deadline = Instant::now() + wait;
    let mut out = HolderScan::default();
    let mut pids: Vec<i32> = match std::fs::read_dir("/proc") {
        Ok(d) => d
            .filter_map(|d| d.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => return out,
    };
    pids.sort_unstable();
    // Pass 1 (fds, cwd, root) for every process, then pass 2 (maps), which
    // is the more likely to block.
    let items: Arc<Vec<(i32, Probe)>> = Arc::new(
        pids.iter()
            .map(|&p| (p, Probe::Files))
            .chain(pids.iter().map(|&p| (p, Probe::Maps)))
            .collect(),
    );
    // Pids already settled (found or uninspectable): later probes skip them.
    let settled: Arc<Mutex<Vec<i32>>> = Arc::default();
    let mut next = 0;
    'helpers: while next < items.len() {
        let (tx, rx) = mpsc::channel();
        let (it, st, target) = (Arc::clone(&items), Arc::clone(&settled), entry.clone());
        let first = next;
        let spawned = std::thread::Builder::new()
            .name("holder-scan".into())
            .stack_size(256 * 1024)
            .spawn(move || scan_items(&it, first, &target, by_path, &st, &tx));
        if spawned.is_err() {
            return out;
        }
        let mut current: Option<(usize, String)> = None;
        loop {
            let budget = PER_PROCESS_WAIT.min(remaining(deadline));
            match rx.recv_timeout(budget) {
                Ok(ScanMsg::Start(i, comm)) => current = Some((i, comm)),
                Ok(ScanMsg::Hit(i, comm)) => {
                    let pid = items[i].0;
                    lock(&settled).push(pid);
                    if !out.holders.iter().any(|(p, _)| *p == pid) {
                        out.holders.push((pid, comm));
                    }
                }
                Ok(ScanMsg::Done) => {
                    out.complete = true;
                    break 'helpers;
                }
                Err(RecvTimeoutError::Timeout) if remaining(deadline).is_zero() => {
                    break 'helpers;
                }
                Err(_) => {
                    // Stuck (or the helper died): skip the current process
                    // and let a fresh helper continue after it.
                    let (i, comm) = current.unwrap_or((first, "?".into()));
                    let pid = items[i].0;
                    lock(&settled).push(pid);
                    if !out.uninspectable.iter().any(|(p, _)| *p == pid) {
                        out.uninspectable.push((pid, comm));
                    }
                    next = i + 1;
                    continue 'helpers;
                }
            }
        }
    }
    out.holders.sort();
    out.uninspectable.sort();
    out
}

/// [`holder_scan`] as a plain list: holders only, with an incomplete scan
/// and uninspectable processes (likely holders stuck on the mount) reported
/// as messages in `errors`.
pub fn find_holders(
    entry: &MountEntry,
    by_path: bool,
    wait: Duration,
    errors: &mut Vec<String>,
) -> Vec<(i32, String)> {
    let scan = holder_scan(entry, by_path, wait);
    if !scan.complete {
        errors.push(format!(
            "holder scan incomplete after {wait:?}; partial result reported"
        ));
    }
    for (pid, comm) in &scan.uninspectable {
        errors.push(format!(
            "/proc of pid {pid} ({comm}) unreadable within {PER_PROCESS_WAIT:?}: probably \
             blocked on this mount"
        ));
    }
    scan.holders
}

#[derive(Clone, Copy)]
enum Probe {
    Files,
    Maps,
}

enum ScanMsg {
    /// About to probe item `i`, whose process is called `comm`.
    Start(usize, String),
    /// Item `i` holds the mount.
    Hit(usize, String),
    Done,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Body of a holder-scan helper. Stops as soon as the coordinator stops
/// listening (it abandoned this helper).
fn scan_items(
    items: &[(i32, Probe)],
    first: usize,
    entry: &MountEntry,
    by_path: bool,
    settled: &Mutex<Vec<i32>>,
    tx: &mpsc::Sender<ScanMsg>,
) {
    let mp = entry.mount_point.as_path();
    // Matching every path against "/" would report every process.
    let by_path = by_path && mp != Path::new("/");
    for (i, &(pid, probe)) in items.iter().enumerate().skip(first) {
        if lock(settled).contains(&pid) {
            continue;
        }
        let name = comm(pid);
        if tx.send(ScanMsg::Start(i, name.clone())).is_err() {
            return;
        }
        let hit = match probe {
            Probe::Files => holds_fd_or_dir(pid, entry, mp, by_path),
            Probe::Maps => maps_device(pid, entry.major, entry.minor),
        };
        if hit && tx.send(ScanMsg::Hit(i, name)).is_err() {
            return;
        }
    }
    let _ = tx.send(ScanMsg::Done);
}

fn holds_fd_or_dir(pid: i32, entry: &MountEntry, mp: &Path, by_path: bool) -> bool {
    let base = PathBuf::from(format!("/proc/{pid}"));
    if by_path {
        for link in ["cwd", "root"] {
            if std::fs::read_link(base.join(link)).is_ok_and(|t| t.starts_with(mp)) {
                return true;
            }
        }
    }
    let Ok(fds) = std::fs::read_dir(base.join("fd")) else {
        return false;
    };
    for fd in fds.flatten() {
        let name = fd.file_name();
        if fdinfo_mnt_id(&base.join("fdinfo").join(&name)) == Some(entry.mount_id) {
            return true;
        }
        if by_path && std::fs::read_link(fd.path()).is_ok_and(|t| t.starts_with(mp)) {
            return true;
        }
    }
    false
}

fn fdinfo_mnt_id(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .and_then(|v| v.trim().parse().ok())
}

fn maps_device(pid: i32, major: u32, minor: u32) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return false;
    };
    text.lines().any(|line| {
        let mut f = line.split_ascii_whitespace();
        let (Some(dev), Some(inode)) = (f.nth(3), f.next()) else {
            return false;
        };
        inode != "0" && parse_hex_dev(dev) == Some((major, minor))
    })
}

fn parse_hex_dev(dev: &str) -> Option<(u32, u32)> {
    let (ma, mi) = dev.split_once(':')?;
    Some((
        u32::from_str_radix(ma, 16).ok()?,
        u32::from_str_radix(mi, 16).ok()?,
    ))
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end_matches('\n').to_owned())
        .unwrap_or_else(|_| "?".to_owned())
}

// ---------------------------------------------------------------------------
// Stale mounts

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_dev_parsing() {
        assert_eq!(parse_hex_dev("00:2f"), Some((0, 47)));
        assert_eq!(parse_hex_dev("103:1a5"), Some((259, 421)));
        assert_eq!(parse_hex_dev("zz"), None);
    }

    #[test]
    fn holder_scan_finds_own_cwd_and_fds() {
        // A fake entry whose mount point is a directory we hold open: the
        // path-based scan must attribute it to us, safely.
        let dir = std::env::temp_dir().join(format!("force-umount-h-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let f = std::fs::File::create(dir.join("f")).expect("create");
        let entry = MountEntry {
            mount_id: u64::MAX,
            parent_id: 0,
            major: 4095,
            minor: 0,
            root: "/".into(),
            mount_point: dir.clone(),
            options: String::new(),
            optional_fields: vec![],
            fs_type: "fuse.wsfs".into(),
            source: "wsfs:fake".into(),
            super_options: String::new(),
        };
        let me = std::process::id() as i32;
        let scan = holder_scan(&entry, true, Duration::from_secs(5));
        assert!(scan.complete, "{scan:?}");
        assert!(scan.holders.iter().any(|(p, _)| *p == me), "{scan:?}");
        let mut errors = vec![];
        let list = find_holders(&entry, true, Duration::from_secs(5), &mut errors);
        assert_eq!(list, scan.holders);
        assert!(errors.is_empty(), "{errors:?}");
        let scan = holder_scan(&entry, false, Duration::from_secs(5));
        assert!(scan.complete, "{scan:?}");
        assert!(!scan.holders.iter().any(|(p, _)| *p == me), "{scan:?}");
        drop(f);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
