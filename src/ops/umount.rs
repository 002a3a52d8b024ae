//! `wsfs umount`: clean unmount, `--force` for hung or dead daemons, `--all-stale` for mounts
//! whose daemon is gone. Never stats the mountpoint; every step is bounded in time.

use super::force_umount::{self, find_holders, force_unmount, remove_stale};
use super::mountinfo::{self, MountEntry};
use super::runtime;
use crate::error::WsfsError;
use std::path::Path;
use std::time::{Duration, Instant};

fn holders_text(h: &[(i32, String)]) -> String {
    h.iter()
        .map(|(p, c)| format!("{p} ({c})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether the daemon serving a mount is alive, judged by its runtime record.
fn daemon_alive(e: &MountEntry) -> bool {
    runtime::read_record(&e.mount_point).is_some_and(|r| runtime::pid_alive(r.pid))
}

pub fn run(
    mountpoint: Option<&Path>,
    force: bool,
    timeout: Duration,
    all_stale: bool,
) -> Result<(), WsfsError> {
    if all_stale {
        let entries = mountinfo::read_mounts()
            .map_err(|e| WsfsError::Failed(format!("cannot read mountinfo: {e}")))?;
        let removed = remove_stale(&entries, daemon_alive, timeout);
        for r in &removed {
            runtime::remove_record(&r.mount_point);
            println!(
                "{}: {}{}",
                r.mount_point.display(),
                if r.gone { "removed" } else { "NOT removed" },
                if r.errors.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", r.errors.join("; "))
                }
            );
        }
        // Records whose daemon died and whose mount is already gone.
        for rec in runtime::all_records() {
            if !runtime::pid_alive(rec.pid)
                && !entries.iter().any(|e| e.mount_point == rec.mountpoint)
            {
                runtime::remove_record(&rec.mountpoint);
                println!(
                    "{}: record of a dead daemon removed (the mount was already gone)",
                    rec.mountpoint.display()
                );
            }
        }
        if removed.is_empty() {
            println!("no stale wsfs mounts");
        }
        return if removed.iter().all(|r| r.gone) {
            Ok(())
        } else {
            Err(WsfsError::Failed(
                "some stale mounts could not be removed".into(),
            ))
        };
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
    let Some(entry) = mountinfo::find_by_mountpoint(&entries, &abs).cloned() else {
        runtime::remove_record(&abs);
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
    let pid = runtime::read_record(&abs).map(|r| r.pid);
    if force {
        let rep = force_unmount(&abs, pid, timeout);
        println!(
            "{}: clean={} aborted={} detached={} daemon_stopped={:?} in {:.2}s{}",
            abs.display(),
            rep.clean_unmount,
            rep.aborted,
            rep.lazily_detached,
            rep.daemon_stopped,
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
        runtime::remove_record(&abs);
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
    if let Some(rec) = runtime::read_record(&abs) {
        if let Err(e) = super::status::quiesce(&rec.socket, Duration::from_secs(4)) {
            tracing::debug!(error = %e, "daemon did not confirm quiesce");
        }
    }
    match umount2_bounded(&abs, timeout.min(Duration::from_secs(5))) {
        Ok(()) => {}
        Err(e) if e == libc::EBUSY => {
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
        Err(e) if e == libc::EPERM => {
            let st = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg(&abs)
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
        Err(libc::ETIMEDOUT) => {
            return Err(WsfsError::Timeout(format!(
                "unmount of {} did not finish; use wsfs umount --force",
                abs.display()
            )))
        }
        Err(e) => {
            return Err(WsfsError::Mount(format!(
                "cannot unmount {}: {}",
                abs.display(),
                std::io::Error::from_raw_os_error(e)
            )))
        }
    }
    // The daemon sees the session end and exits; wait for it, bounded.
    if let Some(pid) = pid {
        while runtime::pid_alive(pid) && started.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(20));
        }
        if runtime::pid_alive(pid) {
            return Err(WsfsError::Timeout(format!(
                "unmounted, but daemon {pid} did not exit within {}s",
                timeout.as_secs()
            )));
        }
    }
    runtime::remove_record(&abs);
    Ok(())
}

/// umount2(path, 0) on a helper thread, abandoned if it does not return in time.
fn umount2_bounded(p: &Path, wait: Duration) -> Result<(), i32> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| libc::EINVAL)?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: c is a valid NUL-terminated path.
        let r = unsafe { libc::umount2(c.as_ptr(), 0) };
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        let _ = tx.send(if r == 0 { Ok(()) } else { Err(errno) });
    });
    rx.recv_timeout(wait).unwrap_or(Err(libc::ETIMEDOUT))
}
