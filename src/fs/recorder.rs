//! The recording half of profile-guided prefetch (`--profile`, see `profile.rs`): which chunks
//! — or, of framed chunks, which frames — the job's reads touch first, in order, and how the
//! replay of a stored profile went. Kept in the filesystem layer because the read path feeds it.

use super::inode::InodeTable;
use crate::manifest::Digest;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Records the order in which reads first touch units: a unit is a chunk read only whole
/// (unit = its index in the mounted table) or one frame of a framed chunk (unit = chunk count
/// + the frame's place in the tree's frame table). A profile then names exactly what was read.
pub struct Recorder {
    chunks: u32,
    /// Small files' reads record their pack whole (see `WsFs::record_profile`).
    packs_whole: bool,
    /// One bit per unit: touched already.
    seen: Vec<AtomicU64>,
    order: Mutex<Vec<u32>>,
}

impl Recorder {
    /// A recorder for a table of `chunks` chunks and `frames` frames.
    pub fn new(chunks: usize, frames: usize, packs_whole: bool) -> Recorder {
        Recorder {
            chunks: chunks as u32,
            packs_whole,
            seen: (0..(chunks + frames).div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            order: Mutex::new(Vec::new()),
        }
    }

    pub fn packs_whole(&self) -> bool {
        self.packs_whole
    }

    /// Notes that a read touched raw bytes `from..to` of chunk `index` of `table`: the frames
    /// holding them, or the chunk if it has none.
    pub fn touch(&self, table: &InodeTable, index: u32, from: u64, to: u64) {
        let frames = table.frames(index);
        if frames.is_empty() || to <= from {
            return self.touch_chunk(index);
        }
        let base = self.chunks + table.frame_first(index);
        let len = (to - from).min(u64::from(u32::MAX)) as u32;
        for i in crate::manifest::frames::covering(frames, from as u32, len) {
            self.touch_unit(base + i as u32);
        }
    }

    /// The digest a unit stands for in a stored profile: its chunk's or its frame's.
    pub fn digest_of(&self, table: &InodeTable, unit: u32) -> Option<Digest> {
        if unit < self.chunks {
            table.chunk(unit).map(|c| c.hash)
        } else {
            table.frame(unit - self.chunks).map(|f| f.hash)
        }
    }

    /// What a stored profile lists: the digest of each unit in first-touch order, except that a
    /// framed chunk whose every frame was read is listed once, as the chunk, where its first
    /// frame was (a whole read fetches it whole, and a 1 GiB read does not list 16,384 frames).
    pub fn profile(&self, table: &InodeTable) -> Vec<Digest> {
        use std::collections::HashMap;
        let order = self.order();
        // Which chunk each frame of the table belongs to (once, at unmount).
        let mut owner = vec![u32::MAX; table.frame_count()];
        for c in 0..self.chunks {
            let first = table.frame_first(c) as usize;
            for i in 0..table.frames(c).len() {
                if let Some(o) = owner.get_mut(first + i) {
                    *o = c;
                }
            }
        }
        let chunk_of = |unit: u32| -> Option<u32> {
            owner
                .get((unit - self.chunks) as usize)
                .copied()
                .filter(|c| *c != u32::MAX)
        };
        let mut touched: HashMap<u32, usize> = HashMap::new();
        for &u in &order {
            if u >= self.chunks {
                if let Some(c) = chunk_of(u) {
                    *touched.entry(c).or_default() += 1;
                }
            }
        }
        let mut listed_whole = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(order.len());
        for u in order {
            if u >= self.chunks {
                if let Some(c) = chunk_of(u) {
                    if touched.get(&c) == Some(&table.frames(c).len()) {
                        if listed_whole.insert(c) {
                            out.extend(table.chunk(c).map(|x| x.hash));
                        }
                        continue;
                    }
                }
            }
            out.extend(self.digest_of(table, u));
        }
        out
    }

    /// Notes that a read touched chunk `index` as a whole (its frames are not named).
    pub fn touch_chunk(&self, index: u32) {
        self.touch_unit(index)
    }

    /// Notes that a read touched unit `index`. Cheap when it was touched before (one load).
    fn touch_unit(&self, index: u32) {
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

    /// Units in first-touch order.
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
        let r = Recorder::new(100, 30, false);
        for i in [5, 129, 5, 0, 129, 64] {
            r.touch_unit(i);
        }
        r.touch_unit(1000); // outside the table: ignored
        assert_eq!(r.order(), vec![5, 129, 0, 64]);
        let r = std::sync::Arc::new(Recorder::new(10_000, 0, false));
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let r = r.clone();
                std::thread::spawn(move || (0..10_000).for_each(|i| r.touch_unit(i)))
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
