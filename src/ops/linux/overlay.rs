//! The overlays of `wsfs attach`, read from the mount table: which directory an attach covers,
//! and which wsfs mount is its workspace. Read from mountinfo rather than from attach records,
//! so that `status` and `umount --all-stale` see every attach, whatever run directory or user
//! made it.

use super::mountinfo::MountEntry;
use std::path::PathBuf;

/// The mount source `wsfs attach` gives its overlays.
pub const OVERLAY_SOURCE: &str = "wsfs-overlay";

/// One attach as the kernel shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// The overlay mount at the attached directory.
    pub overlay: MountEntry,
    /// The wsfs mount that is the overlay's top lower layer (the workspace).
    pub workspace_mount: PathBuf,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
}

impl Attachment {
    pub fn at(&self) -> &std::path::Path {
        &self.overlay.mount_point
    }
}

/// The value of `key=` in a comma-separated option list (overlayfs escapes `,` and `:` in
/// paths; attach refuses such paths, so plain splitting is exact for its overlays).
fn option<'a>(opts: &'a str, key: &str) -> Option<&'a str> {
    opts.split(',')
        .find_map(|o| o.strip_prefix(key)?.strip_prefix('='))
}

/// Every overlay of an attach in `entries`.
pub fn attachments(entries: &[MountEntry]) -> Vec<Attachment> {
    entries
        .iter()
        .filter(|e| e.fs_type == "overlay" && e.source == OVERLAY_SOURCE)
        .filter_map(|e| {
            let lower = option(&e.super_options, "lowerdir")?;
            let top = lower.split(':').next()?;
            Some(Attachment {
                overlay: e.clone(),
                workspace_mount: PathBuf::from(top),
                upper: option(&e.super_options, "upperdir").map(PathBuf::from),
                work: option(&e.super_options, "workdir").map(PathBuf::from),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_attach_overlays_and_their_workspace() {
        let entries = super::super::mountinfo::parse(
            "45 27 0:39 / /job/co rw,relatime - overlay wsfs-overlay rw,lowerdir=/run/wsfs/attach/ab/workspace:/job/co,upperdir=/var/tmp/wsfs/ab/upper,workdir=/var/tmp/wsfs/ab/work,uuid=on\n\
             46 27 0:40 / /other rw - overlay overlay rw,lowerdir=/a:/b,upperdir=/u,workdir=/w\n",
        )
        .expect("parse");
        let a = attachments(&entries);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].at(), std::path::Path::new("/job/co"));
        assert_eq!(
            a[0].workspace_mount,
            PathBuf::from("/run/wsfs/attach/ab/workspace")
        );
        assert_eq!(a[0].upper, Some(PathBuf::from("/var/tmp/wsfs/ab/upper")));
    }
}
