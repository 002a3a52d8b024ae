//! wsfs's storage side: where verified chunk bytes come from.
//!
//! * [`store`] — providers (one object store each, with limits, breaker and counters), the
//!   ordered failover chain that returns only verified values, and `--config` store specs.
//! * [`cache`] — verified chunks in memory (per mount) and on disk (shared by a machine's
//!   mounts), and whole files materialized for FUSE passthrough.
//! * [`fetcher`] — memory → disk → chain, one fetch per chunk however many readers wait.
//!
//! It depends on the format crate only; nothing here knows about FUSE, mounts or commands.

/// The format crate under the name the modules use.
pub(crate) use wsfs_format as manifest;

pub mod cache;
pub mod fetcher;
pub mod store;
