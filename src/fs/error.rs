//! The filesystem's one error type. Each variant carries its errno; the FUSE adapter turns
//! errors into replies in exactly one place ([`FsError::errno`]).

use crate::fetcher::FetchError;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such entry")]
    NotFound,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("not a symlink")]
    NotSymlink,
    #[error("read-only filesystem")]
    ReadOnly,
    #[error("no such attribute")]
    NoAttr,
    /// The tree index does not hold together at this entry (a damaged or hostile manifest).
    #[error(transparent)]
    Damaged(#[from] super::inode::Damaged),
    /// Content could not be served: every provider missed a chunk, or the read deadline passed.
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: FetchError,
    },
}

impl FsError {
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotSymlink => libc::EINVAL,
            FsError::ReadOnly => libc::EROFS,
            FsError::NoAttr => libc::ENODATA,
            FsError::Io { .. } | FsError::Damaged(_) => libc::EIO,
        }
    }
}
