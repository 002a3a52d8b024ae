//! wsfs: lazy, verified FUSE mounts of CI workspaces stored as content-addressed chunks on object
//! stores, read through an ordered provider failover chain. See docs/architecture.md.
//!
//! Three crates enforce the layering: `wsfs-format` (manifests, refs, the chunker; no I/O),
//! `wsfs-store` (providers, the failover chain, caches, the fetcher), and this one (the
//! filesystem, the daemon, the commands). The lower two appear here under their module names.

pub use wsfs_format as manifest;
pub use wsfs_store::{cache, fetcher, store};

pub mod attach;
pub mod cli;
pub mod daemon;
pub mod error;
pub mod fs;
pub mod keys;
pub mod layers;
pub mod mount;
pub mod mount_helper;
pub mod ops;
pub mod persist;
pub mod profile;
pub mod retention;
pub mod test_hooks;
pub mod verify;
