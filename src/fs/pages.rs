//! What wsfs pushes into the kernel's page cache (`FUSE_NOTIFY_STORE`): each inode at most once
//! per mount, and in total no more bytes than `--prefetch-page-cache`. Shared by the two pushers,
//! the warm-up of `--prefetch all` and the neighbour push after a read.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct KernelPages {
    /// One bit per inode: set once the inode has been pushed (or read through wsfs).
    claimed: Vec<AtomicU64>,
    budget: AtomicU64,
    /// Files and bytes pushed as the neighbours of a file that was read.
    pub neighbour_files: AtomicU64,
    pub neighbour_bytes: AtomicU64,
}

impl KernelPages {
    /// Room for inodes `1..=inodes`, with no budget yet.
    pub fn new(inodes: usize) -> KernelPages {
        KernelPages {
            claimed: (0..inodes / 64 + 1).map(|_| AtomicU64::new(0)).collect(),
            ..KernelPages::default()
        }
    }

    pub fn set_budget(&self, bytes: u64) {
        self.budget.store(bytes, Relaxed);
    }

    /// Claims `ino` for a push; false if it was claimed before (or is out of range).
    pub fn claim(&self, ino: u64) -> bool {
        let Some(word) = self.claimed.get((ino / 64) as usize) else {
            return false;
        };
        let bit = 1u64 << (ino % 64);
        word.fetch_or(bit, Relaxed) & bit == 0
    }

    /// Takes `n` bytes from the budget; false, taking nothing, if fewer are left. Concurrent
    /// pushers never overspend it.
    pub fn take(&self, n: u64) -> bool {
        self.budget
            .fetch_update(Relaxed, Relaxed, |b| b.checked_sub(n))
            .is_ok()
    }

    /// Returns bytes taken for a push that did not happen.
    pub fn give_back(&self, n: u64) {
        self.budget.fetch_add(n, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_inode_is_claimed_once_and_the_budget_is_never_overspent() {
        let p = KernelPages::new(130);
        assert!(p.claim(1));
        assert!(!p.claim(1));
        assert!(p.claim(64));
        assert!(p.claim(130));
        assert!(!p.claim(10_000), "out of range is never claimable");
        p.set_budget(100);
        assert!(p.take(60));
        assert!(!p.take(41));
        assert!(p.take(40));
        assert!(!p.take(1));
        p.give_back(5);
        assert!(p.take(5));
    }
}
