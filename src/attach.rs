//! `wsfs attach`: the workspace as a writable overlay over a directory (usually the job's
//! checkout), so build tools can create, modify, delete and rename files in place.
//!
//! The workspace is mounted read-only at a private place under the run directory, then kernel
//! overlayfs is mounted at DIR with `lowerdir=<workspace>:<DIR>` (workspace files over the
//! checkout's, as extracting a workspace over a checkout does) and `upperdir`/`workdir` in a
//! scratch folder. Writes land in the scratch folder; DIR's own contents are never modified.
//! `wsfs umount DIR` takes down the overlay and the workspace mount together and removes the
//! scratch folder unless it was attached with `--keep-scratch`.

use crate::error::WsfsError;
use crate::ops::{mountinfo, runtime};
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What `wsfs umount DIR` needs to undo an attach.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttachRecord {
    pub at: PathBuf,
    pub workspace_mount: PathBuf,
    pub scratch: PathBuf,
    pub keep_scratch: bool,
}

pub struct AttachArgs {
    /// Arguments for the inner `wsfs mount` (stores, timeouts, workspace, layers, cache…),
    /// without the mountpoint.
    pub mount_args: Vec<OsString>,
    pub at: PathBuf,
    pub scratch: Option<PathBuf>,
    pub keep_scratch: bool,
}

fn records_dir() -> PathBuf {
    runtime::run_dir().join("attach")
}

fn record_path(at: &Path) -> PathBuf {
    records_dir().join(format!("{}.json", runtime::mount_id(at)))
}

pub fn read_record(at: &Path) -> Option<AttachRecord> {
    serde_json::from_slice(&std::fs::read(record_path(at)).ok()?).ok()
}

fn overlay_supported() -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .map(|s| {
            s.lines()
                .any(|l| l.split_whitespace().last() == Some("overlay"))
        })
        .unwrap_or(false)
}

fn cstr(p: &Path) -> Result<std::ffi::CString, WsfsError> {
    std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()))
        .map_err(|_| WsfsError::Usage(format!("{}: path contains NUL", p.display())))
}

/// Characters overlayfs's option parser treats specially.
fn check_overlay_path(p: &Path) -> Result<(), WsfsError> {
    let s = p.to_string_lossy();
    if s.contains([',', ':', '\\']) {
        return Err(WsfsError::Usage(format!(
            "{}: overlay paths cannot contain ',', ':' or '\\'; attach somewhere else",
            p.display()
        )));
    }
    Ok(())
}

pub fn attach(args: AttachArgs) -> Result<(), WsfsError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(WsfsError::Mount(
            "attach needs root: it mounts kernel overlayfs (run it with sudo; files can be owned by the job's user with --uid/--gid)".into(),
        ));
    }
    if !overlay_supported() {
        return Err(WsfsError::Mount(
            "this kernel has no overlayfs (modprobe overlay), which attach needs; use wsfs mount for a read-only tree".into(),
        ));
    }
    let at = crate::mount::check_mountpoint(&args.at)?;
    let id = runtime::mount_id(&at);
    let ws_mount = runtime::run_dir()
        .join("attach")
        .join(&id)
        .join("workspace");
    let scratch = args
        .scratch
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/tmp/wsfs").join(&id));
    let (scratch, _) = mountinfo::absolute_lexical(&scratch)
        .ok_or_else(|| WsfsError::Usage("bad --scratch path".into()))?;
    for p in [&at, &ws_mount, &scratch] {
        check_overlay_path(p)?;
    }
    if scratch.starts_with(&at) {
        return Err(WsfsError::Usage(format!(
            "--scratch {} must not be inside the attached directory {}",
            scratch.display(),
            at.display()
        )));
    }
    if scratch.join("upper").exists() {
        return Err(WsfsError::Usage(format!(
            "scratch folder {} is already in use (a previous attach kept it?); remove it or pass another --scratch",
            scratch.display()
        )));
    }
    let upper = scratch.join("upper");
    let work = scratch.join("work");
    for d in [&ws_mount, &upper, &work] {
        std::fs::create_dir_all(d)
            .map_err(|e| WsfsError::Mount(format!("cannot create {}: {e}", d.display())))?;
    }
    let cleanup_dirs = || {
        let _ = std::fs::remove_dir_all(&scratch);
        let _ = std::fs::remove_dir(&ws_mount);
    };

    // 1. The read-only workspace, through the normal mount path (same readiness and exit codes).
    let exe = std::env::current_exe()
        .map_err(|e| WsfsError::Failed(format!("cannot find own executable: {e}")))?;
    let out = std::process::Command::new(exe)
        .arg("mount")
        .args(&args.mount_args)
        .arg(&ws_mount)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| WsfsError::Failed(format!("cannot run wsfs mount: {e}")))?;
    if !out.status.success() {
        cleanup_dirs();
        let msg = String::from_utf8_lossy(&out.stderr)
            .trim()
            .trim_start_matches("wsfs: error: ")
            .to_string();
        return Err(WsfsError::from_code(out.status.code().unwrap_or(1), msg));
    }

    // 2. The overlay at DIR: workspace over the directory's own files.
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        ws_mount.display(),
        at.display(),
        upper.display(),
        work.display()
    );
    let (src, tgt, fstype, data) = (
        cstr(Path::new("wsfs-overlay"))?,
        cstr(&at)?,
        cstr(Path::new("overlay"))?,
        cstr(Path::new(&opts))?,
    );
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fstype.as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        let _ = crate::ops::umount::run(Some(&ws_mount), false, Duration::from_secs(10), false);
        cleanup_dirs();
        return Err(WsfsError::Mount(format!(
            "cannot mount the overlay at {}: {e}",
            at.display()
        )));
    }
    let rec = AttachRecord {
        at: at.clone(),
        workspace_mount: ws_mount,
        scratch,
        keep_scratch: args.keep_scratch,
    };
    std::fs::create_dir_all(records_dir())
        .and_then(|_| {
            std::fs::write(
                record_path(&at),
                serde_json::to_vec_pretty(&rec).unwrap_or_default(),
            )
        })
        .map_err(|e| {
            WsfsError::Failed(format!("attached, but cannot write the attach record: {e}"))
        })?;
    eprintln!(
        "wsfs: attached at {} (writes go to {})",
        at.display(),
        rec.scratch.display()
    );
    Ok(())
}

/// Undoes an attach: overlay, then the workspace mount, then the scratch folder.
pub fn detach(rec: &AttachRecord, force: bool, timeout: Duration) -> Result<(), WsfsError> {
    let tgt = cstr(&rec.at)?;
    // SAFETY: valid NUL-terminated path.
    if unsafe { libc::umount2(tgt.as_ptr(), 0) } != 0 {
        let e = std::io::Error::last_os_error();
        if !force {
            return Err(WsfsError::Mount(format!(
                "cannot unmount the overlay at {}: {e}; close what uses it, or use --force",
                rec.at.display()
            )));
        }
        // SAFETY: as above.
        unsafe { libc::umount2(tgt.as_ptr(), libc::MNT_DETACH) };
    }
    let ws = crate::ops::umount::run(Some(&rec.workspace_mount), force, timeout, false);
    if let Err(e) = ws {
        // Still mounted? Then report; otherwise it was already gone.
        let still = mountinfo::read_mounts()
            .map(|m| m.iter().any(|x| x.mount_point == rec.workspace_mount))
            .unwrap_or(false);
        if still {
            return Err(e);
        }
    }
    let _ = std::fs::remove_dir(&rec.workspace_mount);
    if let Some(p) = rec.workspace_mount.parent() {
        let _ = std::fs::remove_dir(p);
    }
    if !rec.keep_scratch {
        std::fs::remove_dir_all(&rec.scratch).map_err(|e| {
            WsfsError::Failed(format!(
                "detached, but cannot remove {}: {e}",
                rec.scratch.display()
            ))
        })?;
    }
    let _ = std::fs::remove_file(record_path(&rec.at));
    Ok(())
}
