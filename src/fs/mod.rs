//! The filesystem: the immutable inode table, the kernel-independent logic, and the thin FUSE
//! adapter.

pub mod error;
pub mod filesystem;
pub mod fuse;
pub mod inode;
pub mod ledger;
pub mod opstats;

pub use error::FsError;
pub use filesystem::WsFs;
pub use inode::InodeTable;
