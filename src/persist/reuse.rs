//! Which walked files a re-persist takes from the persist index instead of reading them.
//!
//! Three filters, in order; a file that fails any is read and chunked as on a first persist:
//! 1. the index says it is unchanged ([`PersistIndex::lookup`]: same stat, not racily clean);
//! 2. its small-file pack is still worth keeping: when less than half of a pack's bytes are
//!    still in use, every file in it is read again and packed afresh, so that packs do not decay
//!    into mostly dead bytes over many re-persists (a reader would fetch the dead bytes too);
//! 3. every chunk it names is confirmed, with its stored size, on every store the layer can be
//!    committed to (HEAD) — after the persist lease is held, so no gc can remove it before the
//!    ref is written. A chunk missing or unconfirmable anywhere sends its files back to be read
//!    (which stores the chunk again where it is missing).

use super::index::{PersistIndex, Reuse, Stamp};
use super::walk::Walked;
use crate::manifest::{keys, Digest};
use crate::store::Provider;
use futures::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// HEAD requests in flight at once while confirming chunks.
const CONFIRM_CONCURRENCY: usize = 32;

/// Per walked entry (same order): the stored content to reuse, if any.
pub type Plan = Vec<Option<Reuse>>;

/// Filter 1 and 2: what the index allows, without packs that are mostly dead.
pub fn plan(index: &PersistIndex, entries: &[Walked]) -> Plan {
    let mut plan: Plan = entries
        .iter()
        .map(|w| {
            if !w.meta.file_type().is_file() {
                return None;
            }
            index.lookup(&w.rel, &Stamp::of(&w.meta))
        })
        .collect();
    drop_sparse_packs(&mut plan);
    plan
}

fn drop_sparse_packs(plan: &mut Plan) {
    let mut pieces: HashSet<(Digest, u32, u32)> = HashSet::new();
    let mut live: HashMap<Digest, (u64, u32)> = HashMap::new();
    for r in plan.iter().flatten() {
        for (c, off, len) in &r.pieces {
            if pieces.insert((c.hash, *off, *len)) {
                let e = live.entry(c.hash).or_insert((0, c.raw_len));
                e.0 += u64::from(*len);
            }
        }
    }
    let sparse: HashSet<Digest> = live
        .into_iter()
        .filter(|(_, (used, raw))| used * 2 < u64::from(*raw))
        .map(|(h, _)| h)
        .collect();
    if sparse.is_empty() {
        return;
    }
    for slot in plan.iter_mut() {
        if slot
            .as_ref()
            .is_some_and(|r| r.pieces.iter().any(|(c, _, _)| sparse.contains(&c.hash)))
        {
            *slot = None;
        }
    }
}

/// What [`confirm`] found.
#[derive(Debug, Default, Clone, Copy)]
pub struct Confirmed {
    /// Distinct chunks the plan names, each confirmed on every store asked.
    pub chunks: u64,
    /// Chunks that were missing (or could not be confirmed) on some store.
    pub missing: u64,
}

/// Filter 3: confirms every chunk the plan names on each of `providers` (skipping the indexes in
/// `skip`: stores that will not be committed to anyway) and drops the files naming a chunk that
/// is not there with its stored size.
pub async fn confirm(providers: &[Arc<Provider>], skip: &[usize], plan: &mut Plan) -> Confirmed {
    let mut wanted: HashMap<Digest, u32> = HashMap::new();
    for r in plan.iter().flatten() {
        for (c, _, _) in &r.pieces {
            wanted.insert(c.hash, c.stored_len);
        }
    }
    let asks = providers
        .iter()
        .enumerate()
        .filter(|(i, _)| !skip.contains(i))
        .flat_map(|(_, p)| wanted.iter().map(move |(h, len)| (p.clone(), *h, *len)));
    let absent: HashSet<Digest> = futures::stream::iter(asks)
        .map(|(p, h, len)| async move {
            match p.head(&keys::chunk(&h)).await {
                Ok(size) if size == u64::from(len) => None,
                Ok(size) => {
                    tracing::warn!(store = %p.name, chunk = %h.short(), size, expected = len, "a stored chunk has an unexpected size; its files are read again");
                    Some(h)
                }
                Err(o) => {
                    tracing::debug!(store = %p.name, chunk = %h.short(), outcome = %o, "chunk not confirmed; its files are read again");
                    Some(h)
                }
            }
        })
        .buffer_unordered(CONFIRM_CONCURRENCY)
        .filter_map(|x| async move { x })
        .collect()
        .await;
    if !absent.is_empty() {
        for slot in plan.iter_mut() {
            if slot
                .as_ref()
                .is_some_and(|r| r.pieces.iter().any(|(c, _, _)| absent.contains(&c.hash)))
            {
                *slot = None;
            }
        }
    }
    Confirmed {
        chunks: (wanted.len() - absent.len()) as u64,
        missing: absent.len() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::ChunkInfo;

    fn reuse(chunk: u8, raw_len: u32, off: u32, len: u32) -> Option<Reuse> {
        Some(Reuse {
            size: u64::from(len),
            content: Digest([off as u8; 32]),
            pieces: vec![(
                ChunkInfo {
                    hash: Digest([chunk; 32]),
                    raw_len,
                    stored_len: 1,
                },
                off,
                len,
            )],
            frames: vec![std::sync::Arc::from(Vec::new())],
        })
    }

    #[test]
    fn files_of_a_mostly_dead_pack_are_read_again() {
        // Pack 1: 60 of 100 bytes still used (kept). Pack 2: 40 of 100 (repacked), counting a
        // piece two identical files share once.
        let mut plan = vec![
            reuse(1, 100, 0, 30),
            reuse(1, 100, 30, 30),
            reuse(2, 100, 0, 20),
            reuse(2, 100, 0, 20),
            reuse(2, 100, 50, 20),
            None,
        ];
        drop_sparse_packs(&mut plan);
        let kept: Vec<bool> = plan.iter().map(|r| r.is_some()).collect();
        assert_eq!(kept, [true, true, false, false, false, false]);
    }
}
