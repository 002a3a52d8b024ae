//! Operations on mounts, by what they are:
//! * `linux/` — the plumbing: mount table, fusectl, `umount2`, processes, the /proc holder scan;
//! * `service/` — what a daemon serves besides the filesystem: its control socket and metrics;
//! * the commands and what they share: `status` (`wsfs status`), `umount` (`wsfs umount`),
//!   `wsfs_unmount` (unmounting one wsfs mount, clean or forced), `force_umount` (the
//!   escalation for hung and dead mounts), `run_records` (the records of live mounts).

pub mod force_umount;
pub mod linux;
pub mod run_records;
pub mod service;
pub mod status;
pub mod umount;
pub mod wsfs_unmount;
