//! Caches of verified chunks: memory (per mount) and disk (shared by the machine's mounts).

pub mod disk;
pub mod memory;

pub use disk::{DiskCache, DiskLookup};
pub use memory::MemoryCache;
