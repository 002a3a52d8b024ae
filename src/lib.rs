//! wsfs: lazy, verified FUSE mounts of CI workspaces stored as content-addressed chunks on object
//! stores, read through an ordered provider failover chain. See docs/architecture.md.

pub mod manifest;
pub mod store;
pub mod cache;
pub mod fetcher;
pub mod fs;
pub mod error;
pub mod layers;
pub mod persist;
pub mod verify;
pub mod mount;
pub mod ops;
pub mod cli;
