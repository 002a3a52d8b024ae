//! What a mount daemon serves besides the filesystem: its control socket (status snapshots,
//! quiesce) and its Prometheus metrics (text exposition, the textfile writer, the HTTP
//! endpoint).

pub mod control;
pub mod metrics;
pub mod metrics_file;
pub mod metrics_http;
