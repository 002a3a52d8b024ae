//! `wsfs attach`: the workspace as a writable overlay over a directory (usually the job's
//! checkout), so build tools can create, modify, delete and rename files in place.
//!
//! The workspace is mounted read-only at a private place under the run directory, then kernel
//! overlayfs is mounted at DIR with `lowerdir=<workspace>:<DIR>` (workspace files over the
//! checkout's, as extracting a workspace over a checkout does) and `upperdir`/`workdir` in a
//! scratch folder. Writes land in the scratch folder; DIR's own contents are never modified.
//! `wsfs umount DIR` takes down the overlay and the workspace mount together.
//!
//! wsfs never deletes what it did not create: the scratch folder must be new or empty, and
//! must not be, contain or lie inside DIR; wsfs creates `upper/` and `work/` in it and removes
//! exactly those (unless `--keep-scratch`), and removes the folder itself — and any parent it
//! had to create for it — only if it created them and they are empty. The same holds on every
//! path where an attach fails.

use crate::error::WsfsError;
use crate::ops::{
    linux::{mountinfo, overlay, unmount},
    run_records,
};
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
    /// The directories wsfs created for the scratch folder, deepest first (the folder itself
    /// and parents that did not exist); removed, if empty, after `upper/` and `work/`.
    #[serde(default)]
    pub scratch_created: Vec<PathBuf>,
    /// The same for the workspace mount point under the run directory.
    #[serde(default)]
    pub workspace_created: Vec<PathBuf>,
}

pub struct AttachArgs {
    /// Arguments for the inner `wsfs mount` (stores, timeouts, workspace, layers, cache…),
    /// without the mountpoint.
    pub mount_args: Vec<OsString>,
    /// `--store` URLs, handed to the mount in its environment (never on a command line).
    pub store_urls: Vec<String>,
    /// `--uid`/`--gid`: also the owner of the attached directory's top (see [`own_top`]).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub at: PathBuf,
    pub scratch: Option<PathBuf>,
    pub keep_scratch: bool,
}

fn records_dir() -> PathBuf {
    run_records::run_dir().join("attach")
}

fn record_path(at: &Path) -> PathBuf {
    records_dir().join(format!("{}.json", run_records::mount_id(at)))
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

/// Creates `dir` and any missing parents; returns what it created, deepest first.
fn create_dirs(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut p = Some(dir);
    while let Some(d) = p {
        if d.symlink_metadata().is_ok() {
            break;
        }
        missing.push(d.to_path_buf());
        p = d.parent();
    }
    let mut created = Vec::with_capacity(missing.len());
    for d in missing.into_iter().rev() {
        match std::fs::create_dir(&d) {
            Ok(()) => created.insert(0, d),
            // Someone else made it meanwhile: not ours to remove.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                remove_created(&created);
                return Err(e);
            }
        }
    }
    Ok(created)
}

/// Removes directories wsfs created, deepest first, each only if empty (`rmdir`): whatever
/// someone else put there stays, and with it every directory above.
fn remove_created(created: &[PathBuf]) {
    for d in created {
        if std::fs::remove_dir(d).is_err() {
            break;
        }
    }
}

/// The scratch folder's rules; returns what had to be created for it.
fn prepare_scratch(scratch: &Path, at: &Path) -> Result<Vec<PathBuf>, WsfsError> {
    if scratch == at || scratch.starts_with(at) || at.starts_with(scratch) {
        return Err(WsfsError::Usage(format!(
            "--scratch {} must not be the attached directory {}, lie inside it, or contain it: pick a separate, new or empty directory",
            scratch.display(),
            at.display()
        )));
    }
    match scratch.symlink_metadata() {
        Ok(m) if !m.is_dir() => Err(WsfsError::Usage(format!(
            "--scratch {} exists and is not a directory: pick a new or empty directory",
            scratch.display()
        ))),
        Ok(_) => {
            let mut it = std::fs::read_dir(scratch)
                .map_err(|e| WsfsError::Usage(format!("--scratch {}: {e}", scratch.display())))?;
            if it.next().is_some() {
                return Err(WsfsError::Usage(format!(
                    "--scratch {} is not empty (a kept scratch folder, or someone's files?): wsfs only uses a new or empty directory; remove its contents yourself or pick another",
                    scratch.display()
                )));
            }
            Ok(Vec::new())
        }
        Err(_) => create_dirs(scratch)
            .map_err(|e| WsfsError::Mount(format!("cannot create {}: {e}", scratch.display()))),
    }
}

/// Everything an attach made so far, undone on failure.
struct Made {
    upper_work: Vec<PathBuf>,
    scratch_created: Vec<PathBuf>,
    workspace_created: Vec<PathBuf>,
}

impl Made {
    fn undo(&self) {
        for d in &self.upper_work {
            let _ = std::fs::remove_dir_all(d);
        }
        remove_created(&self.scratch_created);
        remove_created(&self.workspace_created);
    }
}

/// The overlay's top directory takes its owner and mode from `upper/`, which root just made:
/// without this, a job running as its own user could not create anything at the top of its own
/// checkout after an attach. `upper/` gets DIR's owner and mode, or `--uid/--gid` if given.
fn own_top(upper: &Path, at: &Path, uid: Option<u32>, gid: Option<u32>) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let m = std::fs::metadata(at)?;
    std::os::unix::fs::chown(
        upper,
        Some(uid.unwrap_or(m.uid())),
        Some(gid.unwrap_or(m.gid())),
    )?;
    std::fs::set_permissions(upper, std::fs::Permissions::from_mode(m.mode() & 0o7777))
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
    let id = run_records::mount_id(&at);
    let ws_mount = run_records::run_dir()
        .join("attach")
        .join(&id)
        .join("workspace");
    let scratch = args
        .scratch
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/tmp/wsfs").join(&id));
    let (scratch, dotdot) = mountinfo::absolute_lexical(&scratch)
        .ok_or_else(|| WsfsError::Usage("bad --scratch path".into()))?;
    if dotdot {
        return Err(WsfsError::Usage(format!(
            "--scratch {}: give a path without '..'",
            scratch.display()
        )));
    }
    for p in [&at, &ws_mount, &scratch] {
        check_overlay_path(p)?;
    }
    let scratch_created = prepare_scratch(&scratch, &at)?;
    let mut made = Made {
        upper_work: Vec::new(),
        scratch_created,
        workspace_created: Vec::new(),
    };
    let upper = scratch.join("upper");
    let work = scratch.join("work");
    for d in [&upper, &work] {
        if let Err(e) = std::fs::create_dir(d) {
            made.undo();
            return Err(WsfsError::Mount(format!(
                "cannot create {}: {e}",
                d.display()
            )));
        }
        made.upper_work.push(d.clone());
    }
    if let Err(e) = own_top(&upper, &at, args.uid, args.gid) {
        made.undo();
        return Err(WsfsError::Mount(format!(
            "cannot give {} the owner and mode of {}: {e}",
            upper.display(),
            at.display()
        )));
    }
    match create_dirs(&ws_mount) {
        Ok(c) => made.workspace_created = c,
        Err(e) => {
            made.undo();
            return Err(WsfsError::Mount(format!(
                "cannot create {}: {e}",
                ws_mount.display()
            )));
        }
    }

    // 1. The read-only workspace, through the normal mount path (same readiness and exit codes).
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            made.undo();
            return Err(WsfsError::Failed(format!(
                "cannot find own executable: {e}"
            )));
        }
    };
    let out = std::process::Command::new(exe)
        .arg("mount")
        .args(&args.mount_args)
        .env(crate::mount::STORE_URLS_ENV, args.store_urls.join("\n"))
        .arg("--attach-lower")
        .arg(&at)
        .arg(&ws_mount)
        .stdin(std::process::Stdio::null())
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            made.undo();
            return Err(WsfsError::Failed(format!("cannot run wsfs mount: {e}")));
        }
    };
    if !out.status.success() {
        made.undo();
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
    let mounted = (|| {
        let (src, tgt, fstype, data) = (
            cstr(Path::new(overlay::OVERLAY_SOURCE))?,
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
            return Err(WsfsError::Mount(format!(
                "cannot mount the overlay at {}: {}",
                at.display(),
                std::io::Error::last_os_error()
            )));
        }
        Ok(())
    })();
    if let Err(e) = mounted {
        // Nobody was told the workspace mount exists: take it down (forced, so it cannot stay).
        let _ = crate::ops::wsfs_unmount::unmount_wsfs(&ws_mount, true, Duration::from_secs(10));
        made.undo();
        return Err(e);
    }
    let rec = AttachRecord {
        at: at.clone(),
        workspace_mount: ws_mount,
        scratch,
        keep_scratch: args.keep_scratch,
        scratch_created: made.scratch_created.clone(),
        workspace_created: made.workspace_created.clone(),
    };
    let written = std::fs::create_dir_all(records_dir()).and_then(|_| {
        let bytes = serde_json::to_vec_pretty(&rec).map_err(std::io::Error::other)?;
        std::fs::write(record_path(&at), bytes)
    });
    if let Err(e) = written {
        let _ = detach(&rec, true, Duration::from_secs(10));
        return Err(WsfsError::Failed(format!(
            "cannot write the attach record ({e}); the attach was undone"
        )));
    }
    eprintln!(
        "wsfs: attached at {} (writes go to {})",
        at.display(),
        rec.scratch.display()
    );
    Ok(())
}

/// Undoes an attach: overlay, then the workspace mount, then what wsfs made for the scratch
/// folder. Without `force`, a busy overlay is left in place with an error naming its holders.
pub fn detach(rec: &AttachRecord, force: bool, timeout: Duration) -> Result<(), WsfsError> {
    let entries = mountinfo::read_mounts()
        .map_err(|e| WsfsError::Failed(format!("cannot read mountinfo: {e}")))?;
    if let Some(entry) = mountinfo::find_by_mountpoint(&entries, &rec.at)
        .filter(|e| e.fs_type == "overlay" && e.source == overlay::OVERLAY_SOURCE)
        .cloned()
    {
        match unmount::umount2_bounded(&rec.at, 0, timeout.min(Duration::from_secs(5))).flatten() {
            Ok(()) => {}
            Err(e) if !force => {
                let mut errs = Vec::new();
                let h = crate::ops::linux::holders::find_holders(
                    &entry,
                    true,
                    Duration::from_secs(2),
                    &mut errs,
                );
                return Err(WsfsError::Mount(format!(
                    "cannot unmount the overlay at {}: {e}{}; close what uses it, or use --force",
                    rec.at.display(),
                    if h.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " (held by {})",
                            h.iter()
                                .map(|(p, c)| format!("{p} ({c})"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                )));
            }
            Err(_) => {
                unmount::umount2_bounded(&rec.at, libc::MNT_DETACH, Duration::from_secs(2))
                    .flatten()
                    .map_err(|e| {
                        WsfsError::Mount(format!(
                            "cannot detach the overlay at {}: {e}",
                            rec.at.display()
                        ))
                    })?;
            }
        }
    }
    let ws = crate::ops::wsfs_unmount::unmount_wsfs(&rec.workspace_mount, force, timeout);
    if let Err(e) = ws {
        // Still mounted? Then report; otherwise it was already gone.
        let still = mountinfo::read_mounts()
            .map(|m| m.iter().any(|x| x.mount_point == rec.workspace_mount))
            .unwrap_or(false);
        if still {
            return Err(e);
        }
    }
    if rec.workspace_created.is_empty() {
        // A record from before wsfs tracked what it created: these two are wsfs's own.
        let _ = std::fs::remove_dir(&rec.workspace_mount);
        if let Some(p) = rec.workspace_mount.parent() {
            let _ = std::fs::remove_dir(p);
        }
    } else {
        remove_created(&rec.workspace_created);
    }
    if !rec.keep_scratch {
        for d in ["upper", "work"] {
            let p = rec.scratch.join(d);
            match std::fs::remove_dir_all(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(WsfsError::Failed(format!(
                        "detached, but cannot remove {}: {e}",
                        p.display()
                    )))
                }
            }
        }
        remove_created(&rec.scratch_created);
    }
    let _ = std::fs::remove_file(record_path(&rec.at));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_directories_are_removed_only_when_empty() {
        let t = tempfile::tempdir().expect("tempdir");
        let deep = t.path().join("a/b/c");
        let made = create_dirs(&deep).expect("create");
        assert_eq!(made.len(), 3);
        std::fs::write(t.path().join("a/keep"), b"someone's").expect("write");
        remove_created(&made);
        assert!(!t.path().join("a/b").exists());
        assert!(
            t.path().join("a/keep").exists(),
            "a file wsfs did not make stays"
        );
        assert!(create_dirs(t.path()).expect("exists").is_empty());
    }

    #[test]
    fn scratch_rules() {
        let t = tempfile::tempdir().expect("tempdir");
        let at = t.path().join("at");
        std::fs::create_dir(&at).expect("mkdir");
        for bad in [at.clone(), at.join("inner"), t.path().to_path_buf()] {
            assert!(matches!(
                prepare_scratch(&bad, &at),
                Err(WsfsError::Usage(_))
            ));
        }
        let full = t.path().join("full");
        std::fs::create_dir(&full).expect("mkdir");
        std::fs::write(full.join("precious"), b"x").expect("write");
        assert!(matches!(
            prepare_scratch(&full, &at),
            Err(WsfsError::Usage(_))
        ));
        assert!(full.join("precious").exists());
        let empty = t.path().join("empty");
        std::fs::create_dir(&empty).expect("mkdir");
        assert_eq!(
            prepare_scratch(&empty, &at).expect("ok"),
            Vec::<PathBuf>::new()
        );
        let fresh = t.path().join("new/scratch");
        assert_eq!(prepare_scratch(&fresh, &at).expect("ok").len(), 2);
    }
}
