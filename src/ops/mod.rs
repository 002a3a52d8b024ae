//! Operations: the mount table (read from /proc/self/mountinfo, never by stat-ing a mount that may
//! hang), fusectl, forced unmount of hung or dead mounts, runtime records of live daemons, status,
//! Prometheus metrics.

pub mod bounded;
pub mod force_umount;
pub mod fusectl;
pub mod holders;
pub mod metrics;
pub mod metrics_file;
pub mod metrics_http;
pub mod mountinfo;
pub mod overlay;
pub mod probe;
pub mod process;
pub mod run_records;
pub mod status;
pub mod umount;
pub mod unmount;
pub mod wsfs_unmount;
