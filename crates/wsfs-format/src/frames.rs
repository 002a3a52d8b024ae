//! Framed chunks: a chunk stored as independent zstd frames, so that a reader can fetch part of
//! it with one range GET and verify what it got on its own.
//!
//! A chunk larger than [`FRAME_RAW`] is compressed frame by frame: frame `i` holds raw bytes
//! `i * FRAME_RAW ..` of the chunk (the last frame what is left), and the frames are stored back
//! to back in the chunk's one object. That object is still a valid zstd stream (concatenated
//! frames decompress to the whole chunk), so whole-chunk reads — and older wsfs — read it as
//! before; the chunk's key is still the BLAKE3 of its raw bytes.
//!
//! The manifest records each frame as a [`ChunkInfo`] of its own raw bytes (their BLAKE3, raw
//! length, stored length). The stored lengths give each frame's place in the object (their
//! running sum), and the digest is the check: a frame fetched by range is served only if it
//! inflates to exactly its raw length and hashes to its digest. A chunk with no frames recorded
//! (at most one frame long, or written by an older wsfs) is only ever read whole.
//!
//! Invariants a frame table keeps ([`check`]): every frame but the last has the same raw
//! length, between [`MIN_FRAME_RAW`] and the chunk's length; the raw lengths add up to the
//! chunk's and the stored lengths to its stored length; no stored length is zero.

use crate::types::{ChunkInfo, Digest};
use std::ops::Range;

/// Raw bytes per frame as this wsfs writes them: a 4 MiB pack has 16 frames. Smaller frames
/// compress worse (independent frames share no history): on a tree of JavaScript sources,
/// 64 KiB frames at zstd level 3 stored 23 % more than whole 4 MiB chunks; 256 KiB frames at
/// level 5 store 2 % more (docs/benchmarks.md, "Framed chunks").
pub const FRAME_RAW: usize = 256 << 10;
/// zstd level of framed chunks (a chunk of one frame keeps level 3, as before).
pub const FRAME_LEVEL: i32 = 5;
/// The smallest frame a manifest may record (bounds the frames of one chunk to 4,096).
pub const MIN_FRAME_RAW: u32 = 4 << 10;

/// Compresses a raw chunk for storage: the object's bytes and, for a chunk of more than one
/// frame, its frame table (empty for a chunk stored as one frame).
pub fn compress(raw: &[u8]) -> std::io::Result<(Vec<u8>, Vec<ChunkInfo>)> {
    if raw.len() <= FRAME_RAW {
        return Ok((zstd::bulk::compress(raw, 3)?, Vec::new()));
    }
    let mut c = zstd::bulk::Compressor::new(FRAME_LEVEL)?;
    let mut out = Vec::with_capacity(raw.len() / 2);
    let mut frames = Vec::with_capacity(raw.len().div_ceil(FRAME_RAW));
    for piece in raw.chunks(FRAME_RAW) {
        let z = c.compress(piece)?;
        frames.push(ChunkInfo {
            hash: Digest::of(piece),
            raw_len: piece.len() as u32,
            stored_len: z.len() as u32,
        });
        out.extend_from_slice(&z);
    }
    Ok((out, frames))
}

/// Checks a chunk's frame table (see the module's invariants). Empty is valid (read whole).
pub fn check(chunk: &ChunkInfo, frames: &[ChunkInfo]) -> Result<(), &'static str> {
    let Some(first) = frames.first() else {
        return Ok(());
    };
    let step = first.raw_len;
    if step < MIN_FRAME_RAW || step > chunk.raw_len {
        return Err("a frame's raw length is out of range");
    }
    if frames.len() != chunk.raw_len.div_ceil(step) as usize {
        return Err("the frames do not cover the chunk");
    }
    let (mut raw, mut stored) = (0u64, 0u64);
    for (i, f) in frames.iter().enumerate() {
        let last = i + 1 == frames.len();
        if (!last && f.raw_len != step) || f.raw_len == 0 || f.raw_len > step {
            return Err("the frames are not of one size");
        }
        if f.stored_len == 0 {
            return Err("a frame has a stored length of 0");
        }
        raw += u64::from(f.raw_len);
        stored += u64::from(f.stored_len);
    }
    if raw != u64::from(chunk.raw_len) {
        return Err("the frames' raw lengths do not add up to the chunk's");
    }
    if stored != u64::from(chunk.stored_len) {
        return Err("the frames' stored lengths do not add up to the chunk's");
    }
    Ok(())
}

/// The frames holding raw bytes `offset .. offset + len` of a chunk (a checked table). Empty
/// if the table or the range is, or the range lies outside the chunk.
pub fn covering(frames: &[ChunkInfo], offset: u32, len: u32) -> Range<usize> {
    let Some(step) = frames.first().map(|f| f.raw_len.max(1)) else {
        return 0..0;
    };
    if len == 0 {
        return 0..0;
    }
    let first = (offset / step) as usize;
    let last = ((u64::from(offset) + u64::from(len) - 1) / u64::from(step)) as usize;
    first.min(frames.len())..(last + 1).min(frames.len())
}

/// Where frames `run` lie in the chunk's stored object (byte range).
pub fn stored_range(frames: &[ChunkInfo], run: Range<usize>) -> Range<u64> {
    let start: u64 = frames[..run.start.min(frames.len())]
        .iter()
        .map(|f| u64::from(f.stored_len))
        .sum();
    let len: u64 = frames
        .get(run)
        .unwrap_or_default()
        .iter()
        .map(|f| u64::from(f.stored_len))
        .sum();
    start..start + len
}

/// Where frame `i` begins in the chunk's raw bytes.
pub fn raw_start(frames: &[ChunkInfo], i: usize) -> u64 {
    frames
        .first()
        .map(|f| u64::from(f.raw_len) * i as u64)
        .unwrap_or(0)
}

/// Frame indexes cut into runs for range GETs: sorted, each run of consecutive frames, and runs
/// closer than `gap` frames merged (one request costs a round trip; a few skipped frames cost
/// less than that on any link a CI machine has).
pub fn merge_runs(mut wanted: Vec<usize>, gap: usize) -> Vec<Range<usize>> {
    wanted.sort_unstable();
    wanted.dedup();
    let mut runs: Vec<Range<usize>> = Vec::new();
    for i in wanted {
        match runs.last_mut() {
            Some(r) if i <= r.end + gap => r.end = i + 1,
            _ => runs.push(i..i + 1),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk_of(raw: &[u8], stored: &[u8]) -> ChunkInfo {
        ChunkInfo {
            hash: Digest::of(raw),
            raw_len: raw.len() as u32,
            stored_len: stored.len() as u32,
        }
    }

    #[test]
    fn a_framed_chunk_is_one_zstd_stream_and_each_frame_stands_alone() {
        let raw: Vec<u8> = (0..1_300_000u32)
            .map(|i| (i % 251) as u8 ^ (i / 7) as u8)
            .collect();
        let (stored, frames) = compress(&raw).unwrap();
        let chunk = chunk_of(&raw, &stored);
        assert_eq!(frames.len(), 5);
        check(&chunk, &frames).unwrap();
        // Whole: what an older reader does.
        let whole = zstd::bulk::decompress(&stored, raw.len()).unwrap();
        assert_eq!(whole, raw);
        // Each frame from its own stored range.
        for (i, f) in frames.iter().enumerate() {
            let r = stored_range(&frames, i..i + 1);
            let z = &stored[r.start as usize..r.end as usize];
            let got = zstd::bulk::decompress(z, f.raw_len as usize).unwrap();
            let at = raw_start(&frames, i) as usize;
            assert_eq!(got, &raw[at..at + f.raw_len as usize]);
            assert_eq!(Digest::of(&got), f.hash);
        }
        // A small chunk is one frame and records none.
        let (_, none) = compress(&raw[..FRAME_RAW]).unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn covering_and_runs() {
        let f = |raw_len| ChunkInfo {
            hash: Digest([0; 32]),
            raw_len,
            stored_len: 10,
        };
        let frames = vec![f(100_000), f(100_000), f(100_000), f(5)];
        assert_eq!(covering(&frames, 0, 1), 0..1);
        assert_eq!(covering(&frames, 99_999, 2), 0..2);
        assert_eq!(covering(&frames, 300_000, 5), 3..4);
        assert_eq!(covering(&frames, 400_000, 5), 4..4, "outside: nothing");
        assert!(
            covering(&frames, 10, 0).is_empty(),
            "an empty range: nothing"
        );
        assert_eq!(stored_range(&frames, 1..3), 10..30);
        assert_eq!(
            merge_runs(vec![7, 1, 2, 2, 4, 20], 0),
            vec![1..3, 4..5, 7..8, 20..21]
        );
        assert_eq!(
            merge_runs(vec![7, 1, 2, 4, 20], 1),
            vec![1..5, 7..8, 20..21]
        );
        assert_eq!(merge_runs(vec![7, 1, 2, 4, 20], 2), vec![1..8, 20..21]);
        assert!(merge_runs(Vec::new(), 2).is_empty());
    }

    #[test]
    fn damaged_frame_tables_are_refused() {
        let raw = vec![7u8; 800_000];
        let (stored, frames) = compress(&raw).unwrap();
        let chunk = chunk_of(&raw, &stored);
        check(&chunk, &frames).unwrap();
        let mut short = frames.clone();
        short.pop();
        assert!(check(&chunk, &short).is_err(), "missing frame");
        let mut uneven = frames.clone();
        uneven[0].raw_len -= 1;
        uneven[1].raw_len += 1;
        assert!(check(&chunk, &uneven).is_err(), "frames of two sizes");
        let mut stored_off = frames.clone();
        stored_off[1].stored_len += 1;
        assert!(check(&chunk, &stored_off).is_err(), "stored lengths");
        let mut zero = frames.clone();
        zero[2].stored_len = 0;
        assert!(check(&chunk, &zero).is_err());
        let tiny: Vec<ChunkInfo> = (0..200)
            .map(|_| ChunkInfo {
                hash: Digest([0; 32]),
                raw_len: 1000,
                stored_len: 1,
            })
            .collect();
        let c = ChunkInfo {
            hash: Digest([0; 32]),
            raw_len: 200_000,
            stored_len: 200,
        };
        assert!(check(&c, &tiny).is_err(), "frames below the minimum size");
    }
}
