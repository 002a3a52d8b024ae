//! The inode table a mount serves: the [tree index](crate::manifest::tree), used in place.
//!
//! A version-2 manifest's tree is opened straight from the manifest (one decompression); a
//! version-1 manifest or a merge of several layers is built into the same layout. The table is
//! immutable, so inode numbers are stable for the life of the mount and the kernel may cache
//! entries and attributes for as long as it likes. Entries are checked as they are used; a
//! damaged one is [`Damaged`], which the filesystem answers with EIO.

pub use crate::manifest::tree::{
    BuildError, Damaged, Node, Tree as InodeTable, CONTENT_DIGEST_MIN_BYTES, ROOT,
};
