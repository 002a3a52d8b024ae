//! Pushing into the kernel's page cache (`FUSE_NOTIFY_STORE`, through a [`PageCacheSink`]), and
//! what has been pushed: each inode at most once per mount, and in total no more page-cache
//! memory than `--prefetch-page-cache`. Shared by the
//! two pushers, the warm-up of `--prefetch all` and the neighbour push after a read. Also records
//! which directories the warm-up has listed (their children are then inodes the kernel holds,
//! so a push to one of them is not a silent no-op).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The page-cache unit a pushed file occupies at least.
const PAGE: u64 = 4096;

/// Larger files are left to the kernel's read-ahead: a few 1 MiB READs cost little per byte,
/// and pushing them would only evict other pages.
pub const MAX_STORED_FILE: u64 = 1 << 20;

/// Pushes verified bytes into the kernel's page cache for an inode, whole file from offset 0.
/// The daemon passes fuser's notifier (`FUSE_NOTIFY_STORE`); tests may pass anything.
pub trait PageCacheSink: Send + Sync + 'static {
    fn store(&self, ino: u64, data: &[u8]) -> std::io::Result<()>;
}

impl PageCacheSink for fuser::Notifier {
    fn store(&self, ino: u64, data: &[u8]) -> std::io::Result<()> {
        fuser::Notifier::store(self, fuser::INodeNo(ino), 0, data)
    }
}

/// A set of inode numbers, one bit each, safe to update from any thread.
#[derive(Debug, Default)]
struct InodeBits(Vec<AtomicU64>);

impl InodeBits {
    fn new(inodes: usize) -> InodeBits {
        InodeBits((0..inodes / 64 + 1).map(|_| AtomicU64::new(0)).collect())
    }

    /// Sets the bit; true if it was clear. Out of range: false (never settable).
    fn set(&self, ino: u64) -> bool {
        let Some(word) = self.0.get((ino / 64) as usize) else {
            return false;
        };
        let bit = 1u64 << (ino % 64);
        word.fetch_or(bit, Relaxed) & bit == 0
    }

    fn get(&self, ino: u64) -> bool {
        self.0
            .get((ino / 64) as usize)
            .is_some_and(|w| w.load(Relaxed) & (1u64 << (ino % 64)) != 0)
    }
}

#[derive(Debug, Default)]
pub struct KernelPages {
    /// Inodes pushed (or read through wsfs from their start).
    claimed: InodeBits,
    /// Directories the warm-up has listed to their end.
    listed: InodeBits,
    budget: AtomicU64,
    /// Files and bytes pushed as the neighbours of a file that was read.
    pub neighbour_files: AtomicU64,
    pub neighbour_bytes: AtomicU64,
}

impl KernelPages {
    /// Room for inodes `1..=inodes`, with no budget yet.
    pub fn new(inodes: usize) -> KernelPages {
        KernelPages {
            claimed: InodeBits::new(inodes),
            listed: InodeBits::new(inodes),
            ..KernelPages::default()
        }
    }

    pub fn set_budget(&self, bytes: u64) {
        self.budget.store(bytes, Relaxed);
    }

    pub fn budget_left(&self) -> u64 {
        self.budget.load(Relaxed)
    }

    /// What pushing a file of `size` bytes costs the budget: whole pages, as the page cache
    /// holds it (a 200-byte file takes a 4 KiB page).
    pub fn charge(size: u64) -> u64 {
        size.div_ceil(PAGE) * PAGE
    }

    /// Claims `ino` for a push; false if it was claimed before (or is out of range).
    pub fn claim(&self, ino: u64) -> bool {
        self.claimed.set(ino)
    }

    pub fn is_claimed(&self, ino: u64) -> bool {
        self.claimed.get(ino)
    }

    pub fn mark_listed(&self, dir: u64) {
        self.listed.set(dir);
    }

    pub fn is_listed(&self, dir: u64) -> bool {
        self.listed.get(dir)
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

    /// Takes the budget for a file, then claims it: a file over budget stays unclaimed (a
    /// later push may still take it), and a claimed file never holds budget it did not use.
    pub fn reserve(&self, ino: u64, size: u64) -> Reservation {
        if self.is_claimed(ino) {
            return Reservation::AlreadyClaimed;
        }
        let charge = Self::charge(size);
        if !self.take(charge) {
            return Reservation::OverBudget;
        }
        if !self.claim(ino) {
            self.give_back(charge);
            return Reservation::AlreadyClaimed;
        }
        Reservation::Granted { charge }
    }
}

/// What [`KernelPages::reserve`] decided about one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reservation {
    /// Claimed, and `charge` bytes of budget taken: give them back if the push then fails.
    Granted { charge: u64 },
    /// Its pages are in the kernel already (read through wsfs, or pushed).
    AlreadyClaimed,
    /// Not enough budget left; the file stays unclaimed, so a later push may still take it.
    OverBudget,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_inode_is_claimed_once_and_the_budget_is_never_overspent() {
        let p = KernelPages::new(130);
        assert!(p.claim(1));
        assert!(!p.claim(1));
        assert!(p.is_claimed(1) && !p.is_claimed(2));
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

    #[test]
    fn reservations_charge_whole_pages_and_leave_over_budget_files_unclaimed() {
        let p = KernelPages::new(10);
        p.set_budget(3 * PAGE);
        let granted = |charge| Reservation::Granted { charge };
        assert_eq!(p.reserve(2, 200), granted(PAGE));
        assert_eq!(
            p.reserve(2, 200),
            Reservation::AlreadyClaimed,
            "claimed once"
        );
        assert_eq!(p.reserve(3, PAGE + 1), granted(2 * PAGE));
        assert_eq!(p.budget_left(), 0);
        assert_eq!(p.reserve(4, 1), Reservation::OverBudget);
        assert!(!p.is_claimed(4), "an over-budget file stays pushable");
        p.give_back(PAGE);
        assert_eq!(p.reserve(4, 1), granted(PAGE));
        assert!(!p.is_listed(5));
        p.mark_listed(5);
        assert!(p.is_listed(5));
    }
}
