//! wsfs: lazy, verified FUSE mounts of CI workspaces stored as content-addressed chunks on object
//! stores, read through an ordered provider failover chain. See docs/architecture.md.

pub mod attach;
pub mod cache;
pub mod cli;
pub mod daemon;
pub mod error;
pub mod fetcher;
pub mod fs;
pub mod keys;
pub mod layers;
pub mod manifest;
pub mod mount;
pub mod mount_helper;
pub mod ops;
pub mod persist;
pub mod profile;
pub mod retention;
pub mod store;
pub mod test_hooks;
pub mod verify;
