//! The processes behind a mount: the keeper, which holds the FUSE connection and replaces a
//! daemon that dies; the daemon, which builds the filesystem and serves the connection; what
//! they tell each other; and the FUSE device work below fuser that makes a takeover possible.

pub mod fuse_dev;
pub mod handover;
pub mod keeper;
mod pins;
pub mod sd_notify;
pub mod serve;
mod stop;
