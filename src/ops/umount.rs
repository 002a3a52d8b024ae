//! `wsfs umount`: a clean unmount (refused while busy), `--force` for hung or dead daemons, and
//! `--all-stale` for mounts the kernel says are dead. Never stats a mount point; every step is
//! bounded in time.
//!
//! What may be removed is decided from the kernel, never from run-directory records (which
//! belong to one user or one `WSFS_RUN_DIR`, and can be lost): `--all-stale` removes only mounts
//! whose connection answers ENOTCONN ([`probe`]), leaves live and slow ones alone, and reports
//! frozen ones for `--force`.

use super::force_umount::{self, find_holders, force_unmount, ForceReport};
use super::mountinfo::{self, MountEntry};
use super::probe::{self, Liveness};
use super::process::{self, ProcId};
use super::runtime::{self, MountRecord};
use super::{overlay, unmount};
use crate::error::WsfsError;
use std::path::Path;
use std::time::{Duration, Instant};

fn holders_text(h: &[(i32, String)]) -> String {
    h.iter()
        .map(|(p, c)| format!("{p} ({c})"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn run(
    mountpoint: Option<&Path>,
    force: bool,
    timeout: Duration,
    all_stale: bool,
    if_mounted: bool,
) -> Result<(), WsfsError> {
    if all_stale {
        if mountpoint.is_some() {
            return Err(WsfsError::Usage(
                "--all-stale takes no MOUNTPOINT (it sweeps every dead wsfs mount)".into(),
            ));
        }
        return sweep_stale(timeout);
    }
    let Some(mp) = mountpoint else {
        return Err(WsfsError::Usage("give a MOUNTPOINT, or --all-stale".into()));
    };
    let (abs, _) = mountinfo::absolute_lexical(mp).ok_or_else(|| {
        WsfsError::Usage(format!("{}: cannot make the path absolute", mp.display()))
    })?;
    // An attached directory: overlay + workspace mount + scratch, undone together.
    if let Some(rec) = crate::attach::read_record(&abs) {
        return crate::attach::detach(&rec, force, timeout);
    }
    let entries = mountinfo::read_mounts()
        .map_err(|e| WsfsError::Failed(format!("cannot read mountinfo: {e}")))?;
    if if_mounted && mountinfo::find_by_mountpoint(&entries, &abs).is_none() {
        runtime::remove_all(&abs);
        eprintln!(
            "wsfs: nothing is mounted at {}; nothing to do",
            abs.display()
        );
        return Ok(());
    }
    if overlay::attachments(&entries)
        .iter()
        .any(|a| a.at() == abs.as_path())
    {
        return Err(WsfsError::Usage(format!(
            "{} is attached, but its attach record is not in {} (attached with another WSFS_RUN_DIR?): run wsfs umount with that WSFS_RUN_DIR",
            abs.display(),
            runtime::run_dir().display()
        )));
    }
    unmount_wsfs(&abs, force, timeout)
}

/// Unmounts the wsfs mount at `abs` (clean, or `force`d) and waits, bounded, for its daemon
/// and keeper to exit.
pub fn unmount_wsfs(abs: &Path, force: bool, timeout: Duration) -> Result<(), WsfsError> {
    let entries = mountinfo::read_mounts()
        .map_err(|e| WsfsError::Failed(format!("cannot read mountinfo: {e}")))?;
    let Some(entry) = mountinfo::find_by_mountpoint(&entries, abs).cloned() else {
        runtime::remove_all(abs);
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
    let rec = runtime::read_record(abs);
    if force {
        let rep = force_remove(abs, rec.as_ref(), timeout);
        runtime::remove_all(abs);
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
        if let Err(e) = super::status::quiesce(&r.socket, Duration::from_secs(4)) {
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
    runtime::remove_all(abs);
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

/// What `--all-stale` did with one mount.
struct Swept {
    mountpoint: std::path::PathBuf,
    verdict: Liveness,
    removed: Option<Result<(), String>>,
}

/// `--all-stale`: removes every wsfs mount the kernel reports dead (and the overlay of an attach
/// on top of it), clears records of mounts that are gone, and leaves everything else alone.
fn sweep_stale(timeout: Duration) -> Result<(), WsfsError> {
    let deadline = Instant::now() + timeout;
    let entries = mountinfo::read_mounts()
        .map_err(|e| WsfsError::Failed(format!("cannot read mountinfo: {e}")))?;
    let attaches = overlay::attachments(&entries);
    // Children first: mountinfo lists parents before children.
    let wsfs: Vec<&MountEntry> = entries
        .iter()
        .rev()
        .filter(|e| force_umount::is_wsfs_mount(e))
        .collect();
    let verdicts = probe::probe_all(&wsfs, &entries, probe::PROBE_WAIT);
    let mut swept = Vec::new();
    for (e, v) in wsfs.iter().zip(verdicts) {
        let removed = (v == Liveness::Dead).then(|| remove_dead(e, &attaches, deadline));
        swept.push(Swept {
            mountpoint: e.mount_point.clone(),
            verdict: v,
            removed,
        });
    }
    let mut failed = 0;
    for s in &swept {
        let what = match (&s.verdict, &s.removed) {
            (_, Some(Ok(()))) => "dead: removed".to_string(),
            (_, Some(Err(e))) => {
                failed += 1;
                format!("dead: NOT removed ({e})")
            }
            (Liveness::Served, _) => "alive: left alone".to_string(),
            (Liveness::Unresponsive, _) => {
                "not answering (daemon stopped, hung or being replaced): left alone; if it stays so, wsfs umount --force it".to_string()
            }
            (Liveness::Unknown(why), _) => format!("not judged ({why}): left alone"),
            (Liveness::Dead, None) => "dead".to_string(),
        };
        println!("{}: {what}", s.mountpoint.display());
    }
    // Records (of this run directory) whose mount is gone and whose processes are gone.
    let now = mountinfo::read_mounts().unwrap_or_default();
    for rec in runtime::all_records() {
        let mounted = now.iter().any(|e| e.mount_point == rec.mountpoint);
        let running = rec.daemon().alive() || rec.keeper.is_some_and(|k| k.alive());
        if !mounted && !running {
            runtime::remove_all(&rec.mountpoint);
            println!(
                "{}: record of a mount that is gone removed",
                rec.mountpoint.display()
            );
        }
    }
    if swept.iter().all(|s| s.removed.is_none()) {
        println!("no dead wsfs mounts");
    }
    if failed > 0 {
        return Err(WsfsError::Failed(format!(
            "{failed} dead mount(s) could not be removed"
        )));
    }
    Ok(())
}

/// Removes a dead wsfs mount: first the overlay of any attach over it (the attached directory
/// then shows its own files again; the attach's record and scratch are cleaned up when this run
/// directory has them), then the mount itself.
fn remove_dead(
    e: &MountEntry,
    attaches: &[overlay::Attachment],
    deadline: Instant,
) -> Result<(), String> {
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(500));
    for a in attaches
        .iter()
        .filter(|a| a.workspace_mount == e.mount_point)
    {
        if let Some(rec) = crate::attach::read_record(a.at()) {
            crate::attach::detach(&rec, true, wait)
                .map_err(|x| format!("the attach at {}: {x}", a.at().display()))?;
            continue;
        }
        unmount::umount2_bounded(a.at(), libc::MNT_DETACH, wait)
            .flatten()
            .map_err(|x| format!("the overlay at {}: {x}", a.at().display()))?;
    }
    // Still there unless an attach's detach took it.
    let still = mountinfo::read_mounts()
        .map(|m| m.iter().any(|x| x.mount_id == e.mount_id))
        .unwrap_or(true);
    if still {
        // Already aborted (dead): nothing can block on it; abort again in case it was not.
        let _ = unmount::abort_connection(e);
        unmount::umount2_bounded(&e.mount_point, libc::MNT_DETACH, wait)
            .flatten()
            .map_err(|x| x.to_string())?;
    }
    runtime::remove_all(&e.mount_point);
    Ok(())
}
