//! `wsfs umount`: a clean unmount (refused while busy), `--force` for hung or dead daemons, and
//! `--all-stale` for mounts the kernel says are dead. Never stats a mount point; every step is
//! bounded in time.
//!
//! What may be removed is decided from the kernel, never from run-directory records (which
//! belong to one user or one `WSFS_RUN_DIR`, and can be lost): `--all-stale` removes only mounts
//! whose connection answers ENOTCONN ([`probe`]), leaves live and slow ones alone, and reports
//! frozen ones for `--force`.

use super::force_umount;
use super::linux::mountinfo::{self, MountEntry};
use super::linux::probe::{self, Liveness};
use super::linux::{overlay, unmount};
use super::run_records;
pub use super::wsfs_unmount::{force_remove, unmount_wsfs};
use crate::error::WsfsError;
use std::path::Path;
use std::time::{Duration, Instant};

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
        run_records::remove_all(&abs);
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
            run_records::run_dir().display()
        )));
    }
    unmount_wsfs(&abs, force, timeout)
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
    for rec in run_records::all_records() {
        let mounted = now.iter().any(|e| e.mount_point == rec.mountpoint);
        let running = rec.daemon().alive() || rec.keeper.is_some_and(|k| k.alive());
        if !mounted && !running {
            run_records::remove_all(&rec.mountpoint);
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
    run_records::remove_all(&e.mount_point);
    Ok(())
}
