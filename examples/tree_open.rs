//! What opening a version-2 manifest costs at scale, without a disk or a mount in the way:
//! builds a manifest shaped like scripts/bench-scale.sh's trees (directories of 100 files of
//! 0–2 KiB, packed into 4 MiB chunks), encodes it, and times the steps a mount takes — hash the
//! object, decompress the tree (frames on every core), check it whole — and a walk of every
//! entry.
//!
//!   cargo run --release --example tree_open -- [ENTRIES] [STORE_DIR]
//!
//! With STORE_DIR, the manifest and a ref (workspace `w`, layer `l`) are also written there as a
//! file:// store, for timing `wsfs mount --prefetch none` on it (no chunks: mount, stat, list).
use std::time::Instant;
use wsfs::manifest::{
    encode, open, ChunkInfo, Digest, Entry, EntryKind, Extent, LayerRef, Manifest, RootMeta,
};

fn entry(path: String, kind: EntryKind, size: u64, extents: Vec<Extent>) -> Entry {
    Entry {
        // Distinct per entry, as real files' are (they do not compress).
        content: Digest::of(path.as_bytes()),
        path: path.into_bytes(),
        kind,
        mode: if kind == EntryKind::Dir { 0o755 } else { 0o644 },
        mtime_sec: 1_700_000_000,
        mtime_nsec: 5,
        size,
        target: vec![],
        extents,
    }
}

fn manifest(n: usize) -> Manifest {
    let pack = |i: u32| ChunkInfo {
        hash: Digest([(i % 251) as u8; 32]),
        raw_len: 4 << 20,
        stored_len: 1,
    };
    let (mut chunks, mut chunk, mut at) = (vec![pack(0)], 0u32, 0u32);
    let mut dirs = std::collections::BTreeSet::new();
    let mut entries = Vec::with_capacity(n + n / 99);
    for i in 0..n {
        let top = format!("d{:03}", i / 10_000);
        let dir = format!("{top}/s{:02}", (i / 100) % 100);
        dirs.insert(top);
        dirs.insert(dir.clone());
        let size = (i * 7919 % 2049) as u32;
        let mut extents = vec![];
        if size > 0 {
            if at + size > 4 << 20 {
                chunk += 1;
                at = 0;
                chunks.push(pack(chunk));
            }
            extents.push(Extent {
                chunk,
                offset: at,
                len: size,
            });
            at += size;
        }
        entries.push(entry(
            format!("{dir}/f{i}.txt"),
            EntryKind::File,
            size.into(),
            extents,
        ));
    }
    entries.extend(
        dirs.into_iter()
            .map(|d| entry(d, EntryKind::Dir, 0, vec![])),
    );
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Manifest {
        workspace: "w".into(),
        layer: "l".into(),
        parents: vec![],
        created: 0,
        root: RootMeta::default(),
        chunks,
        entries,
        frames: vec![],
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let m = manifest(n);
    let t = Instant::now();
    let bytes = encode(&m)?;
    println!(
        "{} entries: encode {:.0?}, {} bytes",
        m.entries.len(),
        t.elapsed(),
        bytes.len()
    );
    drop(m);
    let t = Instant::now();
    let digest = Digest::of(&bytes);
    println!("hash (BLAKE3) {:.1?}", t.elapsed());
    if let Some(dir) = args.next() {
        let dir = std::path::Path::new(&dir);
        std::fs::create_dir_all(dir.join("manifests"))?;
        std::fs::create_dir_all(dir.join("workspaces/w/layers"))?;
        std::fs::write(dir.join(format!("manifests/{}", digest.to_hex())), &bytes)?;
        std::fs::write(
            dir.join("workspaces/w/layers/l"),
            LayerRef::new(digest, 1).to_bytes(),
        )?;
        println!("store written: file://{}", dir.display());
    }
    let t = Instant::now();
    let tree = open(bytes.into())?.into_tree()?;
    println!(
        "open (decompress + check) {:.0?}, tree {} bytes",
        t.elapsed(),
        tree.as_bytes().len()
    );
    let t = Instant::now();
    tree.check()?;
    println!("check alone {:.0?}", t.elapsed());
    let t = Instant::now();
    let walked = tree.iter().count();
    println!("walk of {walked} entries {:.0?}", t.elapsed());
    Ok(())
}
