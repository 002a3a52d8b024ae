//! Profile-guided prefetch (`mount|attach --profile NAME`). CI jobs repeat: the same job reads
//! nearly the same files on every commit. A mount with a profile name
//!
//! * **records** the order in which the job's reads first touched each chunk (a bitmap check per
//!   read; a lock only the first time a chunk is touched, so recording never slows reads), and
//!   at unmount stores that order at `profiles/<NAME>` on every store, beside the workspaces;
//! * **replays** the stored profile of the same name at the next mount: right after the tree
//!   serves, the chunks it lists that the new workspace also has are fetched, in that order and
//!   several at a time, into the caches — so the job finds them there when it asks.
//!
//! A profile names chunks by digest, not by index, so it stays useful across commits (a new
//! workspace shares most chunks with the last one); chunks the workspace no longer has are
//! skipped. Unknown, stale, foreign or damaged profiles cost nothing: a damaged one (bad magic,
//! length or checksum) is a miss on that store and the next store is asked; if no store has a
//! good one, nothing is prefetched. Every prefetched chunk is verified by its digest like any
//! other, so a profile can waste bandwidth at worst, never change what a read returns.
//!
//! Format (`WSFSPRF1`): magic, u32 LE count, `count` × 32-byte chunk digests in first-read
//! order, then the BLAKE3 of everything before it.

use crate::manifest::Digest;
use std::sync::atomic::Ordering::Relaxed;

const MAGIC: &[u8; 8] = b"WSFSPRF1";
/// Profiles larger than this are not profiles (a million chunks is a 32 MiB profile).
pub const MAX_PROFILE_BYTES: u64 = 32 << 20;

/// The store key of profile `name`.
pub fn key(name: &str) -> String {
    format!("profiles/{name}")
}

/// Encodes an ordered list of chunk digests.
pub fn encode(order: &[Digest]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + 4 + order.len() * 32 + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(order.len() as u32).to_le_bytes());
    for d in order {
        out.extend_from_slice(&d.0);
    }
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

/// Decodes a profile, or says why it is not one.
pub fn decode(bytes: &[u8]) -> Result<Vec<Digest>, String> {
    if bytes.len() < 8 + 4 + 32 || &bytes[..8] != MAGIC {
        return Err("not a wsfs profile (bad magic or too short)".into());
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != sum {
        return Err("checksum mismatch (damaged profile)".into());
    }
    let mut n = [0u8; 4];
    n.copy_from_slice(&body[8..12]);
    let count = u32::from_le_bytes(n) as usize;
    let digests = &body[12..];
    if digests.len() != count.saturating_mul(32) {
        return Err(format!(
            "length mismatch: {count} digests announced, {} bytes present",
            digests.len()
        ));
    }
    Ok(digests
        .chunks_exact(32)
        .map(|c| {
            let mut d = [0u8; 32];
            d.copy_from_slice(c);
            Digest(d)
        })
        .collect())
}

use crate::fetcher::Prefetch;

/// Fetches profile `name` (failover: a damaged copy is a miss, the next store is asked) and
/// prefetches, in its order and `concurrency` at a time, the chunks of it this workspace has.
pub async fn replay(
    chain: &crate::store::Chain,
    fs: &std::sync::Arc<crate::fs::filesystem::WsFs>,
    name: &str,
    concurrency: usize,
) {
    use crate::store::Outcome;
    let got = chain
        .fetch("profile", &key(name), MAX_PROFILE_BYTES, |b| {
            decode(b).map_err(Outcome::Corrupt)
        })
        .await;
    let digests = match got {
        Ok(served) => served.value,
        Err(missed) => {
            if missed
                .attempts
                .iter()
                .all(|a| matches!(a.outcome, Outcome::NotFound))
            {
                tracing::info!(
                    profile = name,
                    "no stored profile yet: this mount records one"
                );
            } else {
                tracing::warn!(profile = name, error = %missed, "the stored profile cannot be used; nothing is prefetched by it");
            }
            return;
        }
    };
    let items = plan(fs.table(), &digests);
    let stats = fs.profile_stats.clone();
    stats.listed.store(digests.len() as u64, Relaxed);
    stats.matched.store(items.matched as u64, Relaxed);
    tracing::info!(
        profile = name,
        listed = digests.len(),
        matched = items.matched,
        requests = items.fetches.len(),
        "replaying the stored profile: prefetching what the last run read first"
    );
    fs.fetcher()
        .prefetch_in_order(items.fetches, concurrency, "the profile", move || {
            stats.replayed.fetch_add(1, Relaxed);
        });
}

/// What a replay fetches, in the profile's order.
pub struct Plan {
    /// Profile entries this workspace has (chunks or frames).
    pub matched: usize,
    /// One request each: whole chunks, and runs of a framed chunk's frames.
    pub fetches: Vec<Prefetch>,
}

/// Frames this close together (skipped frames between two wanted ones) go in one range GET:
/// a request costs a round trip, a 256 KiB frame (~60 KB stored) a fraction of one on a cloud link.
pub const MERGE_GAP_FRAMES: usize = 2;
/// A framed chunk of which the profile wants at least this share of frames is fetched whole.
const WHOLE_FROM_PERCENT: usize = 75;

/// Turns a profile's digests into requests against `table`: digests of whole chunks fetch the
/// chunk; digests of frames are grouped by chunk into runs (adjacent frames and frames at most
/// [`MERGE_GAP_FRAMES`] apart merged into one range GET; a chunk mostly wanted is fetched
/// whole). Requests keep the order of their first entry in the profile. Digests this table does
/// not have (another commit's content, a foreign profile) are skipped: they cost nothing.
pub fn plan(table: &crate::fs::inode::InodeTable, digests: &[Digest]) -> Plan {
    use std::collections::HashMap;
    enum Unit {
        Chunk(u32),
        Frame(u32, usize),
    }
    let mut by_digest: HashMap<Digest, Unit> = HashMap::new();
    for i in 0..table.chunk_count() as u32 {
        if let Some(c) = table.chunk(i) {
            by_digest.insert(c.hash, Unit::Chunk(i));
        }
        for (at, f) in table.frames(i).iter().enumerate() {
            by_digest.entry(f.hash).or_insert(Unit::Frame(i, at));
        }
    }
    // Per chunk, in order of first mention: whole, or the frames wanted.
    let mut order: Vec<u32> = Vec::new();
    let mut wanted: HashMap<u32, Option<Vec<usize>>> = HashMap::new();
    let mut matched = 0;
    let mut seen = std::collections::HashSet::new();
    for d in digests.iter().filter(|d| seen.insert(**d)) {
        let Some(u) = by_digest.get(d) else { continue };
        matched += 1;
        let (chunk, frame) = match u {
            Unit::Chunk(c) => (*c, None),
            Unit::Frame(c, at) => (*c, Some(*at)),
        };
        let slot = wanted.entry(chunk).or_insert_with(|| {
            order.push(chunk);
            Some(Vec::new())
        });
        match (slot.as_mut(), frame) {
            (Some(list), Some(at)) => list.push(at),
            _ => *slot = None,
        }
    }
    let mut fetches = Vec::new();
    for c in order {
        let Some(info) = table.chunk(c).copied() else {
            continue;
        };
        let frames = table.frames(c);
        match wanted.remove(&c).flatten() {
            Some(list)
                if !frames.is_empty() && list.len() * 100 < frames.len() * WHOLE_FROM_PERCENT =>
            {
                let shared: std::sync::Arc<[crate::manifest::ChunkInfo]> = frames.into();
                for run in crate::manifest::frames::merge_runs(list, MERGE_GAP_FRAMES) {
                    fetches.push(Prefetch::Frames {
                        chunk: info,
                        frames: shared.clone(),
                        run,
                    });
                }
            }
            _ => fetches.push(Prefetch::Chunk(info)),
        }
    }
    Plan { matched, fetches }
}

/// Stores what this mount recorded as profile `name` on every store (best effort: a store
/// that refuses is logged). Nothing is stored if no read touched a chunk: an idle mount must not
/// replace a useful profile.
pub async fn save(
    providers: &[std::sync::Arc<crate::store::Provider>],
    fs: &crate::fs::filesystem::WsFs,
    name: &str,
) {
    let Some(rec) = fs.recorder() else {
        return;
    };
    let table = fs.table();
    let order: Vec<Digest> = rec.profile(table);
    if order.is_empty() {
        tracing::info!(
            profile = name,
            "no chunk was read: the stored profile is left as it was"
        );
        return;
    }
    let bytes = bytes::Bytes::from(encode(&order));
    let k = key(name);
    let results =
        futures::future::join_all(providers.iter().map(|p| p.put(&k, bytes.clone()))).await;
    let mut saved = 0;
    for (p, r) in providers.iter().zip(results) {
        match r {
            Ok(()) => saved += 1,
            Err(o) => {
                tracing::warn!(store = %p.name, profile = name, outcome = %o, "cannot store the profile there")
            }
        }
    }
    tracing::info!(
        profile = name,
        chunks = order.len(),
        stores = saved,
        "profile stored"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(b: u8) -> Digest {
        Digest([b; 32])
    }

    #[test]
    fn round_trip_and_damage_is_refused() {
        let order = vec![d(3), d(1), d(2)];
        let bytes = encode(&order);
        assert_eq!(decode(&bytes).unwrap(), order);
        let mut bad = bytes.clone();
        bad[20] ^= 1;
        assert!(decode(&bad).unwrap_err().contains("checksum"));
        assert!(decode(b"garbage").unwrap_err().contains("magic"));
        let mut short = bytes[..bytes.len() - 32 - 32].to_vec();
        let sum = blake3::hash(&short);
        short.extend_from_slice(sum.as_bytes());
        assert!(decode(&short).unwrap_err().contains("length mismatch"));
        assert_eq!(decode(&encode(&[])).unwrap(), Vec::<Digest>::new());
    }

    /// A tree of two chunks: chunk 0 framed in 20 frames of 4 KiB, chunk 1 unframed.
    fn table() -> (
        crate::fs::inode::InodeTable,
        Vec<crate::manifest::ChunkInfo>,
    ) {
        use crate::manifest::{ChunkInfo, Entry, EntryKind, Extent, RootMeta};
        let frames: Vec<ChunkInfo> = (0..20u8)
            .map(|i| ChunkInfo {
                hash: d(100 + i),
                raw_len: 4096,
                stored_len: 10,
            })
            .collect();
        let chunks = vec![
            ChunkInfo {
                hash: d(1),
                raw_len: 20 * 4096,
                stored_len: 200,
            },
            ChunkInfo {
                hash: d(2),
                raw_len: 10,
                stored_len: 5,
            },
        ];
        let file = |name: &str, chunk, len| Entry {
            path: name.as_bytes().to_vec(),
            kind: EntryKind::File,
            mode: 0o644,
            mtime_sec: 0,
            mtime_nsec: 0,
            size: u64::from(len),
            target: vec![],
            extents: vec![Extent {
                chunk,
                offset: 0,
                len,
            }],
            content: d(0),
        };
        let entries = vec![file("a", 0, 20 * 4096), file("b", 1, 10)];
        let t = crate::fs::inode::InodeTable::build(
            &entries,
            chunks,
            &[frames.clone(), vec![]],
            RootMeta::default(),
        )
        .unwrap();
        (t, frames)
    }

    fn described(p: &Plan) -> Vec<String> {
        p.fetches
            .iter()
            .map(|f| match f {
                Prefetch::Chunk(c) => format!("chunk {}", c.hash.0[0]),
                Prefetch::Frames { chunk, run, .. } => {
                    format!(
                        "chunk {} frames {}..{}",
                        chunk.hash.0[0], run.start, run.end
                    )
                }
            })
            .collect()
    }

    #[test]
    fn a_plan_merges_near_frames_keeps_the_order_and_skips_what_is_not_here() {
        let (t, f) = table();
        // Chunk 1 first; frames 3, 4, 6 (gap of one: merged), 15; a foreign digest; frame 4
        // again (once is enough).
        let profile = vec![
            d(2),
            f[6].hash,
            d(77),
            f[3].hash,
            f[15].hash,
            f[4].hash,
            f[4].hash,
        ];
        let p = plan(&t, &profile);
        assert_eq!(
            p.matched, 5,
            "the foreign digest is skipped, the repeat counted once"
        );
        assert_eq!(
            described(&p),
            vec!["chunk 2", "chunk 1 frames 3..7", "chunk 1 frames 15..16"]
        );
        // Frames more than two apart stay apart.
        let p = plan(&t, &[f[0].hash, f[4].hash]);
        assert_eq!(
            described(&p),
            vec!["chunk 1 frames 0..1", "chunk 1 frames 4..5"]
        );
        // A chunk mostly wanted (15 of 20 frames) is fetched whole; so is one the profile names
        // whole as well as by frames.
        let most: Vec<Digest> = f[..15].iter().map(|x| x.hash).collect();
        assert_eq!(described(&plan(&t, &most)), vec!["chunk 1"]);
        assert_eq!(described(&plan(&t, &[f[2].hash, d(1)])), vec!["chunk 1"]);
        // Nothing known: nothing fetched.
        let p = plan(&t, &[d(9), d(10)]);
        assert_eq!((p.matched, p.fetches.len()), (0, 0));
    }
}
