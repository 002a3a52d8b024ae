//! Per-operation counters of the FUSE adapter: calls and error replies by op. Kept on [`WsFs`]
//! (so status and metrics see them) and bumped by the adapter, one line per callback.
//!
//! [`WsFs`]: super::WsFs

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The FUSE operations that are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FuseOp {
    Lookup,
    Getattr,
    Readlink,
    Open,
    Read,
    Readdir,
    Readdirplus,
    Opendir,
    Statfs,
    /// Answered ENOTTY (terminal and file-flag ioctls tools send on every open).
    Ioctl,
    /// SEEK_DATA / SEEK_HOLE.
    Lseek,
}

impl FuseOp {
    pub const ALL: [FuseOp; 11] = [
        FuseOp::Lookup,
        FuseOp::Getattr,
        FuseOp::Readlink,
        FuseOp::Open,
        FuseOp::Read,
        FuseOp::Readdir,
        FuseOp::Readdirplus,
        FuseOp::Opendir,
        FuseOp::Statfs,
        FuseOp::Ioctl,
        FuseOp::Lseek,
    ];

    /// The `op` label value.
    pub fn name(self) -> &'static str {
        match self {
            FuseOp::Lookup => "lookup",
            FuseOp::Getattr => "getattr",
            FuseOp::Readlink => "readlink",
            FuseOp::Open => "open",
            FuseOp::Read => "read",
            FuseOp::Readdir => "readdir",
            FuseOp::Readdirplus => "readdirplus",
            FuseOp::Opendir => "opendir",
            FuseOp::Statfs => "statfs",
            FuseOp::Ioctl => "ioctl",
            FuseOp::Lseek => "lseek",
        }
    }
}

#[derive(Debug, Default)]
pub struct FuseOpStats {
    calls: [AtomicU64; FuseOp::ALL.len()],
    errors: [AtomicU64; FuseOp::ALL.len()],
}

impl FuseOpStats {
    /// Counts one request of `op`.
    pub fn call(&self, op: FuseOp) {
        self.calls[op as usize].fetch_add(1, Relaxed);
    }

    /// Counts one error reply to `op`.
    pub fn error(&self, op: FuseOp) {
        self.errors[op as usize].fetch_add(1, Relaxed);
    }

    pub fn calls(&self, op: FuseOp) -> u64 {
        self.calls[op as usize].load(Relaxed)
    }

    pub fn errors(&self, op: FuseOp) -> u64 {
        self.errors[op as usize].load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_are_counted_separately() {
        let s = FuseOpStats::default();
        s.call(FuseOp::Read);
        s.call(FuseOp::Read);
        s.error(FuseOp::Read);
        s.call(FuseOp::Statfs);
        assert_eq!((s.calls(FuseOp::Read), s.errors(FuseOp::Read)), (2, 1));
        assert_eq!(s.calls(FuseOp::Statfs), 1);
        assert_eq!(s.calls(FuseOp::Lookup), 0);
        for (i, op) in FuseOp::ALL.iter().enumerate() {
            assert_eq!(*op as usize, i, "ALL is in declaration order");
        }
    }
}
