//! The recording half of profile-guided prefetch (`--profile`, see `profile.rs`): which chunks
//! the job's reads touch first, in order, and how the replay of a stored profile went. Kept in
//! the filesystem layer because the read path feeds it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Records the order in which reads first touch chunks (by chunk index in the mounted table).
pub struct Recorder {
    /// One bit per chunk: touched already.
    seen: Vec<AtomicU64>,
    order: Mutex<Vec<u32>>,
}

impl Recorder {
    pub fn new(chunks: usize) -> Recorder {
        Recorder {
            seen: (0..chunks.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            order: Mutex::new(Vec::new()),
        }
    }

    /// Notes that a read touched chunk `index`. Cheap when it was touched before (one load).
    pub fn touch(&self, index: u32) {
        let (word, bit) = ((index / 64) as usize, 1u64 << (index % 64));
        let Some(w) = self.seen.get(word) else {
            return;
        };
        if w.load(Relaxed) & bit != 0 {
            return;
        }
        if w.fetch_or(bit, Relaxed) & bit == 0 {
            self.order
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(index);
        }
    }

    /// Chunk indexes in first-touch order.
    pub fn order(&self) -> Vec<u32> {
        self.order.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn len(&self) -> usize {
        self.order.lock().map(|o| o.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What `status` says about a mount's profile.
#[derive(Debug, Default)]
pub struct ProfileStats {
    /// Chunks the stored profile listed.
    pub listed: AtomicU64,
    /// Of those, chunks this workspace has (queued for prefetch).
    pub matched: AtomicU64,
    /// Chunks the replay has dealt with so far.
    pub replayed: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorder_keeps_first_touches_in_order_once() {
        let r = Recorder::new(130);
        for i in [5, 129, 5, 0, 129, 64] {
            r.touch(i);
        }
        r.touch(1000); // outside the table: ignored
        assert_eq!(r.order(), vec![5, 129, 0, 64]);
        let r = std::sync::Arc::new(Recorder::new(10_000));
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let r = r.clone();
                std::thread::spawn(move || (0..10_000).for_each(|i| r.touch(i)))
            })
            .collect();
        hs.into_iter().for_each(|h| h.join().unwrap());
        let mut o = r.order();
        assert_eq!(o.len(), 10_000, "each chunk once, whatever the races");
        o.sort_unstable();
        o.dedup();
        assert_eq!(o.len(), 10_000);
    }
}
