//! Unmounting one wsfs mount: cleanly (refused while busy, naming the holders), or forced (the
//! keeper first, then abort, detach and stop the daemon). Used by `wsfs umount` and by attach,
//! which unmounts the workspace under its overlay — so it lives below both.

use super::force_umount::{self, force_unmount, ForceReport};
use super::linux::holders::find_holders;
use super::linux::mountinfo;
use super::linux::process::{self, ProcId};
use super::linux::unmount;
use super::run_records::{self, MountRecord};
use crate::error::WsfsError;
use std::path::Path;
use std::time::{Duration, Instant};

pub(crate) fn holders_text(h: &[(i32, String)]) -> String {
    h.iter()
        .map(|(p, c)| format!("{p} ({c})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Unmounts the wsfs mount at `abs` (clean, or `force`d) and waits, bounded, for its daemon
/// and keeper to exit.
pub fn unmount_wsfs(abs: &Path, force: bool, timeout: Duration) -> Result<(), WsfsError> {
    let entries = mountinfo::read_mounts()
        .map_err(|e| WsfsError::Failed(format!("cannot read mountinfo: {e}")))?;
    let Some(entry) = mountinfo::find_by_mountpoint(&entries, abs).cloned() else {
        run_records::remove_all(abs);
        return Err(WsfsError::Failed(format!(
            "{} is not mounted",
            abs.display()
        )));
    };
    if !force_umount::is_wsfs_mount(&entry) {
        return Err(WsfsError::Usage(format!(
            "{} is a {} mount, not a wsfs mount; refusing to touch it",
            abs.display(),
            entry.fs_type
        )));
    }
    let rec = run_records::read_record(abs);
    if force {
        let rep = force_remove(abs, rec.as_ref(), timeout);
        run_records::remove_all(abs);
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        println!(
            "{}: clean unmount: {}, connection aborted: {}, detached: {}, daemon stopped: {} ({:.2}s){}",
            abs.display(),
            yes_no(rep.clean_unmount),
            yes_no(rep.aborted),
            yes_no(rep.lazily_detached),
            rep.daemon_stopped.map(yes_no).unwrap_or("no daemon known"),
            rep.elapsed.as_secs_f64(),
            if rep.holders.is_empty() {
                String::new()
            } else {
                format!(
                    "; processes that held files: {}",
                    holders_text(&rep.holders)
                )
            }
        );
        return if rep.success() {
            Ok(())
        } else {
            Err(WsfsError::Timeout(format!(
                "force unmount incomplete: {}",
                rep.errors.join("; ")
            )))
        };
    }
    let started = Instant::now();
    // Background work of the daemon (the kernel cache warm-up) holds directories of the mount
    // open for moments at a time; ask it to stop first so the unmount is not refused as busy.
    // An old or unresponsive daemon simply does not answer.
    if let Some(r) = &rec {
        if let Err(e) = super::service::control::quiesce(&r.socket, Duration::from_secs(4)) {
            tracing::debug!(error = %e, "daemon did not confirm quiesce");
        }
    }
    let wait = timeout.min(Duration::from_secs(5));
    match unmount::umount2_bounded(abs, 0, wait).flatten() {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            let mut errs = Vec::new();
            let h = find_holders(&entry, true, Duration::from_secs(2), &mut errs);
            return Err(WsfsError::Mount(format!(
                "{} is busy{}; close them, or use wsfs umount --force",
                abs.display(),
                if h.is_empty() {
                    String::new()
                } else {
                    format!(": held by {}", holders_text(&h))
                }
            )));
        }
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            let st = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg(abs)
                .status()
                .map_err(|e| {
                    WsfsError::Mount(format!("not root and fusermount3 failed to start: {e}"))
                })?;
            if !st.success() {
                return Err(WsfsError::Mount(format!(
                    "fusermount3 -u {} failed ({st})",
                    abs.display()
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            return Err(WsfsError::Timeout(format!(
                "unmount of {} did not finish; use wsfs umount --force",
                abs.display()
            )))
        }
        Err(e) => {
            return Err(WsfsError::Mount(format!(
                "cannot unmount {}: {e}",
                abs.display()
            )))
        }
    }
    // The daemon sees the session end and exits, then the keeper; wait for both, bounded.
    if let Some(r) = &rec {
        let left = timeout.saturating_sub(started.elapsed());
        for p in std::iter::once(r.daemon()).chain(r.keeper) {
            if !p.wait_gone(left.max(Duration::from_millis(100))) {
                return Err(WsfsError::Timeout(format!(
                    "unmounted, but process {} did not exit within {}s",
                    p.pid,
                    timeout.as_secs()
                )));
            }
        }
    }
    run_records::remove_all(abs);
    Ok(())
}

/// `--force`: the keeper goes first (killed, so it replaces nothing), then the connection is
/// aborted, the mount detached and the daemon stopped ([`force_unmount`]).
pub fn force_remove(abs: &Path, rec: Option<&MountRecord>, timeout: Duration) -> ForceReport {
    let mut leftovers: Vec<ProcId> = Vec::new();
    if let Some(k) = rec.and_then(|r| r.keeper).filter(|k| k.alive()) {
        // A replacement the keeper is starting is not in the record yet.
        leftovers.extend(process::children(k.pid).into_iter().filter_map(ProcId::of));
        let _ = k.signal(libc::SIGKILL);
        k.wait_gone(Duration::from_secs(1));
    }
    let mut rep = force_unmount(abs, rec.map(|r| r.pid), timeout);
    for p in leftovers
        .iter()
        .filter(|p| rec.is_none_or(|r| r.pid != p.pid))
    {
        let _ = p.signal(libc::SIGKILL);
        if !p.wait_gone(Duration::from_secs(1)) {
            rep.errors.push(format!("daemon {} still alive", p.pid));
        }
    }
    rep
}
