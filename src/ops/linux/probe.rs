//! Is a FUSE mount being served? Asked of the kernel, not of records: run directories differ
//! between users and jobs, records get lost, pids get reused; the connection itself does not
//! lie.
//!
//! The probe is one `statfs` of the mount point on a helper thread, waited for a bounded time:
//! * it returns → the connection is served (`Served`);
//! * it fails with ENOTCONN or ECONNABORTED → nothing holds the connection any more, or it was
//!   aborted: the mount is `Dead` and can never serve again;
//! * it does not return in time → a daemon is stopped, hung, or being replaced
//!   (`Unresponsive`): such a mount is reported, never removed by a sweep;
//! * anything else (EACCES for a user the mount does not admit, a mount covered by another one,
//!   a FUSE mount above it that could answer for it) → `Unknown`, also left alone.
//!
//! A probe abandoned in the kernel is harmless: FUSE waits are killable, so the helper thread
//! goes when the process exits.

use super::mountinfo::MountEntry;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

/// How long `status` and `umount --all-stale` wait for a mount to answer.
pub const PROBE_WAIT: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    Served,
    Dead,
    Unresponsive,
    Unknown(String),
}

impl Liveness {
    pub fn name(&self) -> &'static str {
        match self {
            Liveness::Served => "served",
            Liveness::Dead => "dead",
            Liveness::Unresponsive => "unresponsive",
            Liveness::Unknown(_) => "unknown",
        }
    }
}

/// Probes every entry at once (each on its own thread), so a sweep over many hung mounts
/// costs one `wait`, not one per mount. `all` is the whole mount table (to see what covers or
/// sits above each entry).
pub fn probe_all(entries: &[&MountEntry], all: &[MountEntry], wait: Duration) -> Vec<Liveness> {
    let pending: Vec<Result<std::sync::mpsc::Receiver<Liveness>, Liveness>> =
        entries.iter().map(|e| start(e, all)).collect();
    let deadline = std::time::Instant::now() + wait;
    pending
        .into_iter()
        .map(|p| match p {
            Err(l) => l,
            Ok(rx) => {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                rx.recv_timeout(left).unwrap_or(Liveness::Unresponsive)
            }
        })
        .collect()
}

/// Probes one mount.
pub fn probe(entry: &MountEntry, all: &[MountEntry], wait: Duration) -> Liveness {
    probe_all(&[entry], all, wait)
        .pop()
        .unwrap_or(Liveness::Unknown("no probe".into()))
}

fn start(
    entry: &MountEntry,
    all: &[MountEntry],
) -> Result<std::sync::mpsc::Receiver<Liveness>, Liveness> {
    if let Some(why) = unreliable(entry, all) {
        return Err(Liveness::Unknown(why));
    }
    let path: PathBuf = entry.mount_point.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    // Waited for in probe_all; a thread stuck in the kernel is abandoned there.
    std::thread::Builder::new()
        .name("mount-probe".into())
        .stack_size(128 * 1024)
        .spawn(move || {
            let _ = tx.send(statfs(&path));
        })
        .map_err(|e| Liveness::Unknown(format!("cannot start a probe: {e}")))?;
    Ok(rx)
}

/// Why a statfs of this entry's path might not be about this entry.
fn unreliable(entry: &MountEntry, all: &[MountEntry]) -> Option<String> {
    if all
        .iter()
        .any(|o| o.mount_point == entry.mount_point && o.parent_id == entry.mount_id)
    {
        return Some("another mount covers it".into());
    }
    let above = all.iter().find(|o| {
        o.is_fuse()
            && o.mount_id != entry.mount_id
            && o.mount_point != entry.mount_point
            && entry.mount_point.starts_with(&o.mount_point)
            && o.mount_point != std::path::Path::new("/")
    });
    above.map(|o| {
        format!(
            "it lies under another FUSE mount ({}), which could answer for it",
            o.mount_point.display()
        )
    })
}

fn statfs(path: &std::path::Path) -> Liveness {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return Liveness::Unknown("mount point contains NUL".into());
    };
    let mut buf = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: c is a valid path; buf is a valid out-pointer for one statfs.
    if unsafe { libc::statfs(c.as_ptr(), buf.as_mut_ptr()) } == 0 {
        return Liveness::Served;
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOTCONN) | Some(libc::ECONNABORTED) => Liveness::Dead,
        _ => Liveness::Unknown(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64, parent: u64, mp: &str, fs: &str) -> MountEntry {
        MountEntry {
            mount_id: id,
            parent_id: parent,
            major: 0,
            minor: id as u32,
            root: "/".into(),
            mount_point: mp.into(),
            options: String::new(),
            optional_fields: vec![],
            fs_type: fs.into(),
            source: "wsfs:x".into(),
            super_options: String::new(),
        }
    }

    #[test]
    fn a_covered_mount_or_one_under_another_fuse_mount_is_unknown() {
        let all = vec![
            entry(1, 0, "/", "ext4"),
            entry(2, 1, "/w", "fuse.wsfs"),
            entry(3, 2, "/w", "fuse.wsfs"),
            entry(4, 3, "/w/inner", "fuse.wsfs"),
            entry(5, 1, "/plain", "fuse.wsfs"),
        ];
        assert!(unreliable(&all[1], &all).is_some(), "covered by 3");
        assert!(unreliable(&all[2], &all).is_none());
        assert!(unreliable(&all[3], &all).is_some(), "under /w");
        assert!(unreliable(&all[4], &all).is_none());
    }

    #[test]
    fn a_real_directory_answers() {
        let all = super::super::mountinfo::read_mounts().expect("mountinfo");
        let root = all
            .iter()
            .find(|e| e.mount_point == std::path::Path::new("/"))
            .expect("root mount")
            .clone();
        assert_eq!(probe(&root, &all, Duration::from_secs(2)), Liveness::Served);
    }
}
