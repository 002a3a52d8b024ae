//! Access to the FUSE control filesystem (`fusectl`).
//!
//! Why: the only thing that reliably un-wedges a FUSE mount whose daemon is
//! stopped or hung is aborting the connection. Writing to
//! `/sys/fs/fuse/connections/<N>/abort` fails every pending and future request
//! of that connection, which wakes all processes blocked in it (a plain or
//! lazy `umount` does not). `<N>` is the mount's device number as shown in
//! mountinfo (for `fuse` mounts, whose major is 0, simply the minor; see
//! [`super::mountinfo::MountEntry::connection_id`]), never obtained by
//! `stat`-ing the mount point, which would hang.
//!
//! fusectl is not mounted by default on every system, so
//! [`ensure_fusectl_mounted`] mounts it when needed. Nothing here ever
//! touches a FUSE mount itself; all files live in the fusectl pseudo-fs.

use std::ffi::CString;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::mountinfo;

/// The standard fusectl mount point.
pub const FUSECTL_DIR: &str = "/sys/fs/fuse/connections";

/// Makes sure fusectl is mounted at [`FUSECTL_DIR`] and returns that path.
///
/// Checks mountinfo first (no syscalls against the directory), then mounts
/// with `mount("fusectl", FUSECTL_DIR, "fusectl")`. A concurrent mounter
/// winning the race (`EBUSY`) counts as success if mountinfo then shows the
/// mount. The mount is deliberately left in place afterwards: other aborts may
/// be in flight, and it is harmless (systemd mounts it on most distros).
///
/// Errors: `NotFound` if `/sys/fs/fuse/connections` does not exist (the fuse
/// module is not loaded); `PermissionDenied` when not privileged.
pub fn ensure_fusectl_mounted() -> io::Result<PathBuf> {
    let dir = PathBuf::from(FUSECTL_DIR);
    if is_fusectl_mounted(&mountinfo::read_mounts()?) {
        return Ok(dir);
    }
    if !dir.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{FUSECTL_DIR} does not exist: is the fuse kernel module loaded?"),
        ));
    }
    let target = CString::new(FUSECTL_DIR).map_err(io::Error::other)?;
    let name = c"fusectl";
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the
    // call; `data` may be NULL for fusectl, which takes no options.
    let rc = unsafe {
        libc::mount(
            name.as_ptr(),
            target.as_ptr(),
            name.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        return Ok(dir);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EBUSY) && is_fusectl_mounted(&mountinfo::read_mounts()?) {
        return Ok(dir);
    }
    Err(io::Error::new(
        err.kind(),
        format!("mounting fusectl on {FUSECTL_DIR}: {err}"),
    ))
}

/// True if `entries` contain a fusectl mount at [`FUSECTL_DIR`].
pub fn is_fusectl_mounted(entries: &[mountinfo::MountEntry]) -> bool {
    entries
        .iter()
        .any(|e| e.fs_type == "fusectl" && e.mount_point == Path::new(FUSECTL_DIR))
}

/// Directory of connection `conn` (for `fuse` mounts: the minor device
/// number of the mount).
pub fn connection_dir(minor: u32) -> PathBuf {
    Path::new(FUSECTL_DIR).join(minor.to_string())
}

/// True if fusectl lists connection `minor`. A connection outlives its mount
/// while files on it are still open (for example after a lazy detach).
pub fn connection_exists(minor: u32) -> bool {
    std::fs::symlink_metadata(connection_dir(minor)).is_ok_and(|m| m.is_dir())
}

/// Aborts connection `minor`: every pending request fails and later ones
/// fail with `ENOTCONN`; the daemon's `/dev/fuse` reads fail too (fuser's
/// session loop then ends normally). Never blocks. Does not unmount.
///
/// Measured on Linux 6.18: a `read(2)` whose request the daemon had already
/// taken gets `ECONNABORTED`; operations still queued get `ECONNABORTED` or
/// `ENOTCONN`; the subsequent `close(2)` of such a file reports `ENOTCONN`
/// (from FLUSH), which `cat` prints as a second error.
pub fn abort(minor: u32) -> io::Result<()> {
    write_ctl(minor, "abort", "1")
}

/// Number of requests currently waiting on connection `minor` (sent to the
/// daemon or queued and not yet answered). A value that stays above zero
/// while the daemon is idle indicates a hung daemon.
pub fn waiting(minor: u32) -> io::Result<u64> {
    read_ctl(minor, "waiting")
}

/// Maximum number of outstanding background requests (readahead, async
/// writes) on connection `minor`.
pub fn max_background(minor: u32) -> io::Result<u64> {
    read_ctl(minor, "max_background")
}

/// Sets `max_background` for connection `minor` (root only; the kernel
/// caps the value).
pub fn set_max_background(minor: u32, value: u64) -> io::Result<()> {
    write_ctl(minor, "max_background", &value.to_string())
}

/// Number of background requests at which the kernel reports the
/// connection as congested (throttling writeback).
pub fn congestion_threshold(minor: u32) -> io::Result<u64> {
    read_ctl(minor, "congestion_threshold")
}

/// Sets `congestion_threshold` for connection `minor`.
pub fn set_congestion_threshold(minor: u32, value: u64) -> io::Result<()> {
    write_ctl(minor, "congestion_threshold", &value.to_string())
}

fn read_ctl(minor: u32, file: &str) -> io::Result<u64> {
    let path = connection_dir(minor).join(file);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", path.display())))?;
    text.trim().parse::<u64>().map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {:?} is not a number: {e}", path.display(), text.trim()),
        )
    })
}

fn write_ctl(minor: u32, file: &str, value: &str) -> io::Result<()> {
    let path = connection_dir(minor).join(file);
    // No O_CREAT/O_TRUNC: these are fusectl attribute files, which must exist.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
    f.write_all(value.as_bytes())
        .map_err(|e| io::Error::new(e.kind(), format!("writing {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_dir_is_named_by_minor() {
        assert_eq!(connection_dir(42), Path::new("/sys/fs/fuse/connections/42"));
    }

    #[test]
    fn missing_connection_is_not_found() {
        // u32::MAX can never be a live connection id (majors are 12 bits).
        let err = waiting(u32::MAX).expect_err("no such connection");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(!connection_exists(u32::MAX));
        assert!(abort(u32::MAX).is_err());
    }
}
