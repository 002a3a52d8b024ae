//! Unmounting a FUSE mount that must go away *now*, whatever state its
//! daemon is in.
//!
//! Why this is its own module: the obvious tools hang. `umount`, `mountpoint`
//! and `stat` look up the mount point, which is a FUSE request; with the
//! daemon stopped (SIGSTOP) or wedged, that request is never answered. A lazy
//! `umount -l` detaches the mount but leaves every process already blocked in
//! it blocked. What does work is aborting the connection through fusectl,
//! which fails all pending requests, and then detaching.
//!
//! Rules every function here follows:
//! * the mount point is never `stat`-ed, opened or canonicalised; the mount
//!   is identified through `/proc/self/mountinfo` only, and `umount2` is
//!   given the exact path mountinfo lists;
//! * every syscall that can block (`umount2`, the `/proc` scan, the fusectl
//!   write) runs on a helper thread that is waited on with a deadline; a
//!   helper stuck in the kernel is abandoned, never joined. The connection is
//!   aborted before returning whenever the polite unmount did not finish,
//!   which wakes such a helper, so the process can still exit;
//! * `/proc/<pid>/{fd,cwd,root}` are only `readlink`-ed and
//!   `/proc/<pid>/{fdinfo,maps}` only read, never followed.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use super::linux::bounded::{remaining, run_bounded, Bounded};
use super::linux::fusectl;
use super::linux::holders::{holder_scan, PER_PROCESS_WAIT};
use super::linux::mountinfo::{self, MountEntry};
use super::linux::unmount::umount2_bounded;

/// Default overall budget of [`force_unmount`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest the polite `umount2(path, 0)` may take before escalating.
const CLEAN_UMOUNT_WAIT: Duration = Duration::from_secs(1);
/// Longest one holder scan of `/proc` may take.
const HOLDER_SCAN_WAIT: Duration = Duration::from_secs(2);
/// Longest a fusectl write or a lazy `umount2` may take (neither should
/// block; the bound is only a safety net).
const STEP_WAIT: Duration = Duration::from_secs(1);
/// How long a running (not stopped) daemon gets to exit on its own once its
/// mount is gone (it then sees ENODEV on /dev/fuse), before SIGTERM.
const DAEMON_SELF_EXIT_GRACE: Duration = Duration::from_millis(300);
/// How long after SIGTERM before SIGKILL.
const DAEMON_TERM_GRACE: Duration = Duration::from_secs(1);
/// Polling interval while waiting for a process to die.
const POLL: Duration = Duration::from_millis(5);

/// What [`force_unmount`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForceReport {
    /// The mount point as listed in mountinfo (or as given, if not mounted).
    pub mountpoint: PathBuf,
    /// The path was a mount point when the call started.
    pub was_mounted: bool,
    /// `umount2(path, 0)` succeeded and the mount disappeared: no abort was
    /// needed.
    pub clean_unmount: bool,
    /// The FUSE connection was aborted through fusectl.
    pub aborted: bool,
    /// `umount2(path, MNT_DETACH)` succeeded.
    pub lazily_detached: bool,
    /// The targeted mount (by mount id) is still listed in mountinfo at the
    /// end, or mountinfo could not be read. `false` is the success criterion.
    pub still_mounted: bool,
    /// `None` if no (valid) daemon pid was given; otherwise whether it is
    /// dead (or a zombie awaiting its parent) at the end.
    pub daemon_stopped: Option<bool>,
    /// Processes holding files, a cwd, a root or a mapping under the mount,
    /// as `(pid, comm)`, scanned before anything was unmounted.
    pub holders: Vec<(i32, String)>,
    /// The same scan after the abort and detach. Only open files and
    /// mappings are attributable then (by mount id and device number),
    /// because paths inside a detached mount no longer start with the mount
    /// point. Empty after a clean unmount.
    pub holders_after: Vec<(i32, String)>,
    /// Processes whose `/proc` entries could not be read in time during
    /// either scan (see [`HolderScan::uninspectable`]): likely holders stuck
    /// on the mount.
    pub uninspectable: Vec<(i32, String)>,
    /// Wall time the call took.
    pub elapsed: Duration,
    /// Everything that went wrong, in order. Non-empty does not by itself
    /// mean failure (see [`ForceReport::success`]).
    pub errors: Vec<String>,
    /// Log of the steps taken, each prefixed with the time since the start.
    pub notes: Vec<String>,
}

impl ForceReport {
    /// The mount is gone and, if a daemon pid was given, the daemon is too.
    pub fn success(&self) -> bool {
        !self.still_mounted && self.daemon_stopped != Some(false)
    }

    fn note(&mut self, start: Instant, msg: impl AsRef<str>) {
        self.notes
            .push(format!("[{:>8.1?}] {}", start.elapsed(), msg.as_ref()));
    }
}

/// Unmounts the FUSE mount at `mountpoint` without ever hanging, escalating
/// as needed, and stops its daemon if `daemon_pid` is given.
///
/// Steps, each bounded by what is left of `timeout`:
/// 1. look the mount up in mountinfo (not mounted: nothing to unmount; a
///    mount that is not FUSE is refused and left alone);
/// 2. scan `/proc` for processes holding it (`holders`) — before anything is
///    detached, because afterwards their paths no longer identify it;
/// 3. `umount2(path, 0)`, waited on for at most 1 s (or a fifth of the
///    budget); if the mount is then gone, steps 4–5 are skipped;
/// 4. make sure fusectl is mounted and abort the connection, which makes
///    every blocked reader fail instead of hanging;
/// 5. `umount2(path, MNT_DETACH)`, which no longer blocks after the abort;
/// 6. if `daemon_pid` is given (even when nothing was mounted: the caller
///    asked for it to go): unless it is stopped, give it a moment to exit by
///    itself; then SIGTERM + SIGCONT (a stopped process cannot act on
///    SIGTERM); then SIGKILL;
/// 7. scan `/proc` again (`holders_after`).
///
/// The call returns within `timeout` plus a few milliseconds of scheduling.
/// `daemon_pid` values `<= 0` and the caller's own pid are refused: a
/// `kill(0, ..)` or `kill(-1, ..)` would hit whole process groups. Pid reuse
/// between the caller learning the pid and this call is not guarded against.
pub fn force_unmount(mountpoint: &Path, daemon_pid: Option<i32>, timeout: Duration) -> ForceReport {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut r = ForceReport {
        mountpoint: mountpoint.to_path_buf(),
        ..ForceReport::default()
    };
    let daemon_pid = daemon_pid.filter(|&pid| {
        let ok = pid > 0 && u32::try_from(pid).ok() != Some(std::process::id());
        if !ok {
            r.errors.push(format!("refusing to signal pid {pid}"));
        }
        ok
    });

    let entry = unmount_steps(&mut r, mountpoint, start, deadline);

    if let Some(pid) = daemon_pid {
        // Keep a little time for the final holder scan.
        let reserve = (timeout / 10).min(Duration::from_millis(300));
        let daemon_deadline = deadline.checked_sub(reserve).unwrap_or(deadline);
        let stopped = stop_daemon(pid, daemon_deadline, &mut r, start);
        r.daemon_stopped = Some(stopped);
    }

    if let Some(entry) = entry.filter(|_| !r.clean_unmount) {
        if remaining(deadline).is_zero() {
            r.errors
                .push("deadline exhausted before the final holder scan".into());
        } else {
            r.holders_after = scan_holders(&entry, false, remaining(deadline), &mut r);
            let msg = format!("holders after: {:?}", r.holders_after);
            r.note(start, msg);
        }
    }
    r.elapsed = start.elapsed();
    r
}

/// Steps 1–5 of [`force_unmount`]. Returns the mount's entry if it was
/// mounted.
fn unmount_steps(
    r: &mut ForceReport,
    mountpoint: &Path,
    start: Instant,
    deadline: Instant,
) -> Option<MountEntry> {
    let entries = match mountinfo::read_mounts() {
        Ok(e) => e,
        Err(e) => {
            r.errors.push(format!("reading mountinfo: {e}"));
            // Without mountinfo nothing can be identified safely.
            r.still_mounted = true;
            return None;
        }
    };
    let Some(entry) = mountinfo::find_by_mountpoint(&entries, mountpoint).cloned() else {
        r.note(start, "not mounted");
        return None;
    };
    r.was_mounted = true;
    r.mountpoint = entry.mount_point.clone();
    r.note(
        start,
        format!(
            "found mount id {} ({} {} dev {}:{})",
            entry.mount_id, entry.fs_type, entry.source, entry.major, entry.minor
        ),
    );
    if !entry.is_fuse() {
        // Forcing a lazy detach on a wrong path (say, a real disk) would do
        // real damage; this tool is for FUSE mounts only.
        r.errors.push(format!(
            "{} is a {} mount, not FUSE: refusing to touch it",
            entry.mount_point.display(),
            entry.fs_type
        ));
        r.still_mounted = true;
        return None;
    }
    let path = entry.mount_point.clone();

    // 2. Holders, while paths still identify them.
    let scan_wait = HOLDER_SCAN_WAIT.min(remaining(deadline) / 5);
    r.holders = scan_holders(&entry, true, scan_wait, r);
    let msg = format!("holders before: {:?}", r.holders);
    r.note(start, msg);

    // 3. Polite attempt.
    let clean_wait = CLEAN_UMOUNT_WAIT.min(remaining(deadline) / 5);
    let mut stuck_clean: Option<Receiver<io::Result<()>>> = None;
    match umount2_bounded(&path, 0, clean_wait) {
        Bounded::Done(Ok(())) => r.note(start, "umount2(0) succeeded"),
        Bounded::Done(Err(e)) => r.note(start, format!("umount2(0) failed: {e}")),
        Bounded::TimedOut(rx) => {
            r.note(
                start,
                format!("umount2(0) still blocked after {clean_wait:?}"),
            );
            stuck_clean = Some(rx);
        }
        Bounded::Failed(e) => r.errors.push(format!("umount2(0): {e}")),
    }
    if stuck_clean.is_none() && gone(&entry, &mut r.errors) == Some(true) {
        r.clean_unmount = true;
        return Some(entry);
    }

    // 4. Abort the connection: wakes every process blocked on the mount.
    {
        let conn = entry.connection_id();
        let wait = STEP_WAIT.min(remaining(deadline));
        match run_bounded("fusectl-abort", wait, move || {
            fusectl::ensure_fusectl_mounted()?;
            fusectl::abort(conn)
        }) {
            Bounded::Done(Ok(())) => {
                r.aborted = true;
                r.note(start, format!("connection {conn} aborted"));
            }
            Bounded::Done(Err(e)) => r.errors.push(format!("fusectl abort: {e}")),
            Bounded::TimedOut(_) => r.errors.push("fusectl abort timed out".into()),
            Bounded::Failed(e) => r.errors.push(format!("fusectl abort: {e}")),
        }
    }

    // A polite umount that was stuck is normally woken by the abort. Let it
    // finish now, so it cannot fire later against an unrelated new mount.
    if let Some(rx) = stuck_clean.take() {
        match rx.recv_timeout(STEP_WAIT.min(remaining(deadline) / 2)) {
            Ok(res) => r.note(start, format!("stuck umount2(0) returned {res:?}")),
            Err(_) => r
                .errors
                .push("umount2(0) still blocked in the kernel; helper thread abandoned".into()),
        }
    }

    // 5. Lazy detach.
    if gone(&entry, &mut r.errors) == Some(true) {
        r.note(start, "mount gone before lazy detach");
    } else {
        let wait = STEP_WAIT.min(remaining(deadline));
        match umount2_bounded(&path, libc::MNT_DETACH, wait) {
            Bounded::Done(Ok(())) => {
                r.lazily_detached = true;
                r.note(start, "umount2(MNT_DETACH) succeeded");
            }
            Bounded::Done(Err(e)) => r.errors.push(format!("umount2(MNT_DETACH): {e}")),
            Bounded::TimedOut(_) => r
                .errors
                .push("umount2(MNT_DETACH) timed out; helper thread abandoned".into()),
            Bounded::Failed(e) => r.errors.push(format!("umount2(MNT_DETACH): {e}")),
        }
    }
    r.still_mounted = gone(&entry, &mut r.errors) != Some(true);
    Some(entry)
}

/// Whether `entry` (matched by mount id and mount point, since ids are
/// reused) has left mountinfo. `None` if mountinfo cannot be read.
fn gone(entry: &MountEntry, errors: &mut Vec<String>) -> Option<bool> {
    match mountinfo::read_mounts() {
        Ok(entries) => Some(
            !entries
                .iter()
                .any(|e| e.mount_id == entry.mount_id && e.mount_point == entry.mount_point),
        ),
        Err(e) => {
            errors.push(format!("reading mountinfo: {e}"));
            None
        }
    }
}

// ---------------------------------------------------------------------------
// Daemon handling

fn proc_state(pid: i32) -> Option<char> {
    super::linux::process::Stat::read(pid).map(|s| s.state)
}

/// A process state for people: its `/proc/PID/stat` letter, or `unknown`.
fn state_text(state: Option<char>) -> String {
    state.map_or_else(|| "unknown".to_string(), String::from)
}

use super::linux::process::pid_alive;

fn wait_dead(pid: i32, until: Instant) -> bool {
    loop {
        if !pid_alive(pid) {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

fn signal(pid: i32, sig: libc::c_int, r: &mut ForceReport) {
    if let Err(e) = super::linux::process::send_signal(pid, sig) {
        if e.raw_os_error() != Some(libc::ESRCH) {
            r.errors.push(format!("kill({pid}, {sig}): {e}"));
        }
    }
}

/// Step 6 of [`force_unmount`]. Returns whether the daemon is dead.
fn stop_daemon(pid: i32, deadline: Instant, r: &mut ForceReport, start: Instant) -> bool {
    let state = proc_state(pid);
    if !pid_alive(pid) {
        r.note(
            start,
            format!("daemon {pid} already gone (state {})", state_text(state)),
        );
        return true;
    }
    let stopped = matches!(state, Some('T') | Some('t'));
    if !stopped {
        let until = deadline.min(Instant::now() + DAEMON_SELF_EXIT_GRACE);
        if wait_dead(pid, until) {
            r.note(start, format!("daemon {pid} exited by itself"));
            return true;
        }
    }
    signal(pid, libc::SIGTERM, r);
    signal(pid, libc::SIGCONT, r);
    r.note(
        start,
        format!(
            "sent SIGTERM+SIGCONT to daemon {pid} (state was {})",
            state_text(state)
        ),
    );
    if wait_dead(pid, deadline.min(Instant::now() + DAEMON_TERM_GRACE)) {
        r.note(start, format!("daemon {pid} exited after SIGTERM"));
        return true;
    }
    signal(pid, libc::SIGKILL, r);
    r.note(start, format!("sent SIGKILL to daemon {pid}"));
    let dead = wait_dead(pid, deadline);
    if dead {
        r.note(start, format!("daemon {pid} exited after SIGKILL"));
    } else {
        r.errors.push(format!(
            "daemon {pid} still alive (state {}) at the deadline",
            state_text(proc_state(pid))
        ));
    }
    dead
}

/// [`holder_scan`] for [`force_unmount`]: folds problems into the report.
fn scan_holders(
    entry: &MountEntry,
    by_path: bool,
    wait: Duration,
    r: &mut ForceReport,
) -> Vec<(i32, String)> {
    let scan = holder_scan(entry, by_path, wait);
    if !scan.complete {
        r.errors.push(format!(
            "holder scan incomplete after {wait:?}; partial result reported"
        ));
    }
    for u in scan.uninspectable {
        if !r.uninspectable.contains(&u) {
            r.errors.push(format!(
                "/proc of pid {} ({}) unreadable within {PER_PROCESS_WAIT:?}: probably blocked \
                 on this mount",
                u.0, u.1
            ));
            r.uninspectable.push(u);
        }
    }
    scan.holders
}

/// True for FUSE mounts that belong to wsfs: `fuse.wsfs` type or a source
/// mentioning `wsfs`.
pub fn is_wsfs_mount(e: &MountEntry) -> bool {
    e.is_fuse() && (e.fs_type.contains("wsfs") || e.source.contains("wsfs"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_states_read_without_debug_text() {
        assert_eq!(state_text(Some('T')), "T");
        assert_eq!(state_text(None), "unknown");
    }

    #[test]
    fn not_mounted_is_quick_success() {
        let dir = std::env::temp_dir().join(format!("force-umount-nm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let r = force_unmount(&dir, None, Duration::from_secs(2));
        assert!(!r.was_mounted);
        assert!(r.success(), "{r:?}");
        assert!(r.elapsed < Duration::from_millis(500), "{r:?}");
        assert!(r.notes.iter().any(|n| n.contains("not mounted")));
        std::fs::remove_dir(&dir).expect("rmdir");
    }

    #[test]
    fn refuses_dangerous_pids() {
        let dir = std::env::temp_dir().join(format!("force-umount-pid-{}", std::process::id()));
        for pid in [0, -1, std::process::id() as i32] {
            let r = force_unmount(&dir, Some(pid), Duration::from_secs(1));
            assert_eq!(r.daemon_stopped, None);
            assert!(r.errors[0].contains("refusing"), "{r:?}");
        }
    }

    #[test]
    fn wsfs_mount_filter() {
        let entries = mountinfo::parse(
            "1 1 0:1 / /a rw - fuse.wsfs x rw\n\
             2 1 0:2 / /b rw - fuse wsfs:b rw\n\
             3 1 0:3 / /c rw - fuse.sshfs host:/ rw\n\
             4 1 0:4 / /d rw - tmpfs wsfs rw\n",
        )
        .expect("parse");
        let ids: Vec<u64> = entries
            .iter()
            .filter(|e| is_wsfs_mount(e))
            .map(|e| e.mount_id)
            .collect();
        assert_eq!(ids, vec![1, 2]);
    }
}
