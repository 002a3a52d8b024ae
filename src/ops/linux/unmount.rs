//! The unmount and abort primitives, in one place: `umount2` on an exact path (never resolved
//! through the mount), bounded in time when it may block, and aborting a FUSE connection
//! through fusectl. Callers decide when each is right; see `force_umount.rs` for escalation.

use super::bounded::{run_bounded, Bounded};
use super::fusectl;
use super::mountinfo::MountEntry;
use std::io;
use std::path::Path;
use std::time::Duration;

/// `umount2(path, flags)` (nix's typed call; unknown flag bits are refused with EINVAL).
pub fn umount2(path: &Path, flags: libc::c_int) -> io::Result<()> {
    let flags = nix::mount::MntFlags::from_bits(flags)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    nix::mount::umount2(path, flags).map_err(io::Error::from)
}

/// A clean unmount: refused with EBUSY while anything under the mount is open.
pub fn umount(path: &Path) -> io::Result<()> {
    umount2(path, 0)
}

/// A lazy detach (`MNT_DETACH`): the mount leaves the namespace now; open files keep working
/// until closed. Never right for a workspace a job may still be using; for dead mounts and
/// for mounts no job was told about.
pub fn detach(path: &Path) -> io::Result<()> {
    umount2(path, libc::MNT_DETACH)
}

/// [`umount2`] on a helper thread, waited for at most `wait`.
pub fn umount2_bounded(path: &Path, flags: libc::c_int, wait: Duration) -> Bounded<io::Result<()>> {
    let path = path.to_path_buf();
    run_bounded("umount2", wait, move || umount2(&path, flags))
}

/// Aborts the FUSE connection of `entry` (mounting fusectl first if needed): every waiting and
/// later request fails, which wakes every reader blocked on the mount. Does not unmount.
pub fn abort_connection(entry: &MountEntry) -> io::Result<()> {
    let conn = entry.connection_id();
    run_bounded("fusectl-abort", Duration::from_secs(1), move || {
        fusectl::ensure_fusectl_mounted()?;
        fusectl::abort(conn)
    })
    .flatten()
}
