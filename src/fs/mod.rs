//! The filesystem: the immutable inode table, the kernel-independent logic, the thin FUSE
//! adapter, and the kernel cache warm-up of `--prefetch all`.

pub mod error;
pub mod filesystem;
pub mod fuse;
pub mod inode;
pub mod ledger;
pub mod neighbours;
pub mod opstats;
pub mod pages;
pub mod recorder;
pub mod warmup;

pub use error::FsError;
pub use filesystem::WsFs;
pub use inode::InodeTable;
