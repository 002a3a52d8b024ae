//! The whole-tree check a mount runs once when it opens a version-2 manifest.

use super::{Damaged, Tree, ROOT};
use std::ops::RangeInclusive;

/// Below this many inodes the check runs on one thread (starting threads costs more).
const PARALLEL_FROM: u64 = 100_000;

impl Tree {
    /// Checks the whole tree in one pass: every entry holds together ([`Tree::node`]), every
    /// extent lies inside a chunk of the table, each directory lists only entries that name it
    /// as their parent, sorted by name with no two alike, and every inode but the root is listed
    /// (so exactly once: only by its parent, and never twice there). A tree that passes is one a
    /// validated manifest builds. A mount runs this once when it opens a v2 manifest, so a
    /// damaged index is refused (and another store's copy tried) before anything is mounted;
    /// the per-use checks stay, as the last line. Ranges of inodes are checked on every core.
    pub fn check(&self) -> Result<(), Damaged> {
        let total = self.len() as u64;
        if total == 0 {
            return Err(Damaged {
                ino: ROOT,
                why: "no root",
            });
        }
        let workers = if total < PARALLEL_FROM {
            1
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get() as u64)
                .unwrap_or(1)
                .clamp(1, 8)
        };
        let per = total.div_ceil(workers);
        let ranges: Vec<RangeInclusive<u64>> = (0..workers)
            .map(|w| ROOT + w * per..=(ROOT + (w + 1) * per - 1).min(total))
            .filter(|r| !r.is_empty())
            .collect();
        let listed: u64 = if ranges.len() == 1 {
            self.check_range(ranges[0].clone())?
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = ranges
                    .iter()
                    .map(|r| s.spawn(|| self.check_range(r.clone())))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or(Err(Damaged {
                            ino: ROOT,
                            why: "a checker failed",
                        }))
                    })
                    .sum::<Result<u64, Damaged>>()
            })?
        };
        if listed != total - 1 {
            return Err(Damaged {
                ino: ROOT,
                why: "an entry is listed by no directory",
            });
        }
        Ok(())
    }

    /// Checks inodes `range`; returns how many children their directories list.
    fn check_range(&self, range: RangeInclusive<u64>) -> Result<u64, Damaged> {
        let chunks = self.chunks();
        let recs = self.recs();
        let mut listed = 0u64;
        for ino in range {
            let n = self.node(ino)?.ok_or(Damaged {
                ino,
                why: "an inode is missing",
            })?;
            let mut at = 0u64;
            for (x, s) in n.extents().iter().zip(n.ext_starts()) {
                if *s != at || x.len == 0 {
                    return Err(Damaged {
                        ino,
                        why: "extents do not follow one another",
                    });
                }
                at += u64::from(x.len);
                let fits = chunks.get(x.chunk as usize).is_some_and(|c| {
                    u64::from(x.offset) + u64::from(x.len) <= u64::from(c.raw_len)
                });
                if !fits {
                    return Err(Damaged {
                        ino,
                        why: "an extent lies outside its chunk",
                    });
                }
            }
            // Each child is checked whole in its own turn; here only that it is this
            // directory's, and the order of the names.
            let mut prev: Option<&[u8]> = None;
            for &c in n.children() {
                let theirs = c as u64 != ROOT
                    && recs
                        .get((c as usize).wrapping_sub(1))
                        .is_some_and(|r| u64::from(r.parent) == ino);
                let name = self.name_of(c).filter(|_| theirs).ok_or(Damaged {
                    ino: u64::from(c),
                    why: "a directory lists an entry that is not its child",
                })?;
                if prev.is_some_and(|p| p >= name) {
                    return Err(Damaged {
                        ino,
                        why: "children not sorted by name, or two alike",
                    });
                }
                prev = Some(name);
                listed += 1;
            }
        }
        Ok(listed)
    }
}
