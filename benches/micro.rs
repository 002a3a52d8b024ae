//! Micro-benchmarks of the CPU-bound pieces of the read and persist paths (issue 7):
//! chunking, BLAKE3, zstd, chunk verification, manifest encode/decode, inode table build/lookup.
//!
//! `cargo bench --bench micro` (add `-- --quick` for a fast pass, or a name filter such as
//! `-- manifest`). The end-to-end numbers against baselines come from `scripts/bench.sh`.

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::io::Cursor;
use wsfs::fs::InodeTable;
use wsfs::manifest::chunker::{compress, LayerBuilder, Meta, NewChunk};
use wsfs::manifest::{decode, encode, ChunkInfo, Digest, Manifest, RootMeta};
use wsfs::store::VerifiedChunk;

const MIB: usize = 1 << 20;

/// Deterministic pseudo-random bytes (xorshift64*): incompressible, like already-compressed
/// artifacts.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        out.extend_from_slice(&s.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Deterministic text-like bytes (words drawn from a small vocabulary): compresses about as
/// well as JavaScript sources (~3-4x with zstd -3).
fn text_bytes(len: usize, seed: u64) -> Vec<u8> {
    const VOCABULARY: &str = "function return const let var this exports require module undefined \
        null true false if else for while new typeof prototype length value options callback error \
        result index object string number { } ( ) ; = => .";
    let words: Vec<&str> = VOCABULARY.split_whitespace().chain(["\n", "  "]).collect();
    let mut s = seed | 1;
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        let r = s.wrapping_mul(0x2545_f491_4f6c_dd1d);
        out.extend_from_slice(words[(r >> 33) as usize % words.len()].as_bytes());
        if r & 3 == 0 {
            out.extend_from_slice(format!("{}", (r >> 40) % 1000).as_bytes());
        }
        out.push(b' ');
    }
    out.truncate(len);
    out
}

fn meta(path: Vec<u8>, mode: u32) -> Meta {
    Meta {
        path,
        mode,
        mtime_sec: 1_700_000_000,
        mtime_nsec: 0,
    }
}

/// A node_modules-like manifest with `n` entries: ~8% directories, ~1% symlinks, the rest small
/// files (0-8 KiB, packed into ~4 MiB chunks), built the way `wsfs persist` builds one.
fn build_manifest(n: usize) -> Manifest {
    let mut b = LayerBuilder::new();
    let mut stored: Vec<(u32, u32)> = Vec::new();
    let mut sink = |c: NewChunk| -> Result<(), std::io::Error> {
        // The stored length only has to be plausible; compressing 40 MiB here would dominate.
        stored.push((c.index, (c.raw.len() as u32 / 3).max(1)));
        Ok(())
    };
    let corpus = text_bytes(4 * MIB, 7);
    b.add_dir(meta(b"node_modules".to_vec(), 0o755));
    let mut count = 1usize;
    let mut pkg = 0usize;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    'outer: loop {
        let p = format!("node_modules/pkg{pkg:05}");
        pkg += 1;
        for d in [p.clone(), format!("{p}/lib"), format!("{p}/lib/util")] {
            if count >= n {
                break 'outer;
            }
            b.add_dir(meta(d.into_bytes(), 0o755));
            count += 1;
        }
        for f in 0..34 {
            if count >= n {
                break 'outer;
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let dir = match f % 3 {
                0 => p.clone(),
                1 => format!("{p}/lib"),
                _ => format!("{p}/lib/util"),
            };
            if f == 33 {
                b.add_symlink(
                    meta(format!("{dir}/link{f}").into_bytes(), 0o777),
                    b"../index.js".to_vec(),
                );
            } else {
                let len = (x % 8192) as usize;
                let start = (x >> 20) as usize % (corpus.len() - len);
                let content = &corpus[start..start + len];
                b.add_file(
                    meta(format!("{dir}/file{f}.js").into_bytes(), 0o644),
                    len as u64,
                    Cursor::new(content),
                    &mut sink,
                )
                .unwrap();
            }
            count += 1;
        }
    }
    b.flush(&mut sink).unwrap();
    for (i, s) in stored {
        b.set_stored(i, s, Vec::new());
    }
    b.finish("bench".into(), "layer".into(), Vec::new(), 1_700_000_000)
}

fn chunking(c: &mut Criterion) {
    let mut g = c.benchmark_group("chunking");
    g.sample_size(10);
    let data = random_bytes(64 * MIB, 1);
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("add_file_64MiB_fastcdc", |bench| {
        bench.iter(|| {
            let mut b = LayerBuilder::new();
            let mut chunked = 0usize;
            b.add_file::<_, std::io::Error>(
                meta(b"big.bin".to_vec(), 0o644),
                data.len() as u64,
                Cursor::new(&data[..]),
                &mut |c: NewChunk| {
                    chunked += black_box(c.raw.len());
                    Ok(())
                },
            )
            .unwrap();
            chunked
        })
    });
    g.finish();
}

fn hashing(c: &mut Criterion) {
    let mut g = c.benchmark_group("blake3");
    for size in [64 * 1024, 4 * MIB] {
        let data = random_bytes(size, 2);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &data, |bench, d| {
            bench.iter(|| Digest::of(black_box(d)))
        });
    }
    g.finish();
}

fn zstd_chunk(c: &mut Criterion) {
    let mut g = c.benchmark_group("zstd_4MiB");
    g.sample_size(20);
    for (kind, raw) in [
        ("text", text_bytes(4 * MIB, 3)),
        ("random", random_bytes(4 * MIB, 3)),
    ] {
        let stored = compress(&raw).unwrap();
        g.throughput(Throughput::Bytes(raw.len() as u64));
        g.bench_function(format!("compress_{kind}"), |bench| {
            bench.iter(|| compress(black_box(&raw)).unwrap())
        });
        g.bench_function(format!("decompress_{kind}"), |bench| {
            bench.iter(|| zstd::bulk::decompress(black_box(&stored), raw.len()).unwrap())
        });
    }
    g.finish();
}

fn verify_chunk(c: &mut Criterion) {
    let mut g = c.benchmark_group("verified_chunk");
    g.sample_size(20);
    for (kind, raw) in [
        ("text", text_bytes(4 * MIB, 4)),
        ("random", random_bytes(4 * MIB, 4)),
    ] {
        let stored = compress(&raw).unwrap();
        let info = ChunkInfo {
            hash: Digest::of(&raw),
            raw_len: raw.len() as u32,
            stored_len: stored.len() as u32,
        };
        g.throughput(Throughput::Bytes(raw.len() as u64));
        // Decompress (bounded) + BLAKE3: what every chunk from a store costs.
        g.bench_function(format!("from_stored_4MiB_{kind}"), |bench| {
            bench.iter(|| VerifiedChunk::from_stored(&info, black_box(&stored)).unwrap())
        });
        // BLAKE3 only: what a disk-cache hit costs.
        let bytes = bytes::Bytes::from(raw.clone());
        g.bench_function(format!("from_raw_4MiB_{kind}"), |bench| {
            bench.iter(|| VerifiedChunk::from_raw(&info, black_box(bytes.clone())).unwrap())
        });
    }
    g.finish();
}

fn manifest_codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("manifest_50k");
    g.sample_size(10);
    let m = build_manifest(50_000);
    assert_eq!(m.entries.len(), 50_000);
    let bytes = encode(&m).unwrap();
    g.throughput(Throughput::Elements(m.entries.len() as u64));
    g.bench_function("encode", |bench| {
        bench.iter(|| encode(black_box(&m)).unwrap())
    });
    g.bench_function("decode", |bench| {
        bench.iter(|| decode(black_box(&bytes)).unwrap())
    });
    g.finish();
}

fn inode_table(c: &mut Criterion) {
    let mut g = c.benchmark_group("inode_table_50k");
    g.sample_size(10);
    let m = build_manifest(50_000);
    g.throughput(Throughput::Elements(m.entries.len() as u64));
    g.bench_function("build", |bench| {
        bench.iter_batched(
            || m.chunks.clone(),
            |chunks| {
                InodeTable::build(black_box(&m.entries), chunks, &[], RootMeta::default()).unwrap()
            },
            BatchSize::LargeInput,
        )
    });
    let table = InodeTable::build(&m.entries, m.chunks.clone(), &[], RootMeta::default()).unwrap();
    // Every (parent, name) pair, in a scrambled order so lookups do not walk memory in order.
    let mut keys: Vec<(u64, Vec<u8>)> = table
        .iter()
        .skip(1)
        .map(|(_, n)| (n.parent(), n.name().to_vec()))
        .collect();
    let len = keys.len();
    for i in 0..len {
        keys.swap(i, (i * 7919) % len);
    }
    g.throughput(Throughput::Elements(keys.len() as u64));
    g.bench_function("lookup_all", |bench| {
        bench.iter(|| {
            let mut found = 0u64;
            for (parent, name) in &keys {
                found += table.lookup(*parent, black_box(name)).unwrap().unwrap();
            }
            found
        })
    });
    g.bench_function("get_all", |bench| {
        bench.iter(|| {
            let mut size = 0u64;
            for ino in 1..=table.len() as u64 {
                size += table.get(black_box(ino)).unwrap().size();
            }
            size
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    chunking,
    hashing,
    zstd_chunk,
    verify_chunk,
    manifest_codec,
    inode_table
);
criterion_main!(benches);
