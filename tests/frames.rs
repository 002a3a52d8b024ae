//! Framed chunks and range fetch (issue 17): a profile that names frames is replayed as range
//! GETs of just those frames — adjacent ones merged into one request —, each frame verified
//! against the manifest; a store that holds another encoding of the chunk, or none, is a miss
//! and the next store serves the range; where no store can, the reader fetches the whole chunk
//! and still gets verified bytes. Against local stores and against the emulators (GCS without
//! the chunks in front of S3). Real FUSE mounts throughout.

mod common;

use common::emulators::*;
use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use wsfs::manifest::{ChunkInfo, Digest, Manifest};
use wsfs::ops::service::control::MountStatus;

/// 2,000 files of 3,000 bytes in two packs: the first (files 0–1398, 4.2 MB) has 17 frames of
/// 256 KiB; file `fNNNN` of it starts at byte 3000 × NNNN. The second pack is what a read of
/// the first would fetch ahead on a first run.
fn tree(s: &Scratch) -> PathBuf {
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut rng = Rng::new(17);
    for i in 0..2000 {
        std::fs::write(src.join(format!("f{i:04}")), rng.bytes(3000)).unwrap();
    }
    src
}

/// Files 0 (frame 0), 90 (frame 1) and 1100 (frame 12): a replay wants frames 0, 1 and 12 —
/// two range GETs (0–1 merged; 12 alone).
const READ: [&str; 3] = ["f0000", "f0090", "f1100"];
const WANTED: [usize; 3] = [0, 1, 12];

fn manifest_of(store_dir: &Path) -> Manifest {
    let m = std::fs::read_dir(store_dir.join("manifests"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    wsfs::manifest::decode(&std::fs::read(m).unwrap()).unwrap()
}

/// The first pack chunk and its frame table.
fn pack(store_dir: &Path) -> (ChunkInfo, Vec<ChunkInfo>) {
    let m = manifest_of(store_dir);
    assert_eq!(m.chunks.len(), 2, "two packs");
    (m.chunks[0], m.frames_of(0).to_vec())
}

fn manifest_digest_of(p: &Path) -> String {
    p.file_name().unwrap().to_str().unwrap().to_string()
}

/// The manifest digest workspace `ws`'s ref names.
fn current_manifest(store_dir: &Path, ws: &str) -> String {
    let r = std::fs::read(store_dir.join(format!("workspaces/{ws}/layers/build"))).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&r).unwrap();
    v["manifest"].as_str().unwrap().to_string()
}

fn chunk_path(store_dir: &Path, d: &Digest) -> PathBuf {
    let h = d.to_hex();
    store_dir.join("chunks").join(&h[..2]).join(h)
}

/// Rewrites a store's copy of `c` as one zstd frame: a valid encoding of the chunk (whole
/// reads verify), whose byte ranges are not the recorded frames.
fn store_unframed(store_dir: &Path, c: &ChunkInfo) {
    let p = chunk_path(store_dir, &c.hash);
    let raw = zstd::bulk::decompress(&std::fs::read(&p).unwrap(), c.raw_len as usize).unwrap();
    std::fs::write(&p, zstd::bulk::compress(&raw, 19).unwrap()).unwrap();
}

/// A scratch with [`tree`] persisted to its store `st` as workspace `ws`, layer `build`.
fn persisted(ws: &str) -> (Scratch, PathBuf, String) {
    let s = Scratch::new();
    let src = tree(&s);
    let store = s.store("st");
    assert_ok(&persist(
        &s,
        std::slice::from_ref(&store),
        ws,
        "build",
        &src,
        &[],
    ));
    (s, src, store)
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// Waits until the replay has dealt with every request it planned.
fn replay_done(s: &Scratch, mp: &Path) -> MountStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = mount_status(s, mp);
        let p = st
            .profile
            .clone()
            .expect("a mount with --profile reports it");
        if p.listed > 0 && p.replayed > 0 {
            // All requests done: nothing is in flight any more.
            std::thread::sleep(Duration::from_millis(300));
            let st2 = mount_status(s, mp);
            if st2.profile.as_ref().map(|p| p.replayed) == Some(p.replayed) {
                return st2;
            }
        }
        assert!(Instant::now() < deadline, "replay did not finish: {st:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Mounts `ws`, reads [`READ`], unmounts: the profile `name` is stored with those frames.
fn record(s: &Scratch, stores: &[String], ws: &str, name: &str, mp: &Path, src: &Path) {
    let m = mount(
        s,
        stores,
        ws,
        &["build"],
        mp,
        &["--profile", name, "--prefetch", "none"],
    );
    for f in READ {
        assert_eq!(read(&mp.join(f)), read(&src.join(f)));
    }
    assert_ok(&s.wsfs(&["umount", mp.to_str().unwrap()]));
    drop(m);
}

#[test]
fn a_replay_fetches_only_the_frames_read_in_merged_range_gets() {
    require_fuse();
    let (s, src, store) = persisted("run1");
    let (chunk, frames) = pack(&s.path("st"));
    assert_eq!(frames.len(), 17, "a 4.2 MB pack in 256 KiB frames");

    record(
        &s,
        std::slice::from_ref(&store),
        "run1",
        "job",
        &s.mkdir("mnt1"),
        &src,
    );
    let stored = std::fs::read(s.path("st").join("profiles/job")).unwrap();
    let listed = wsfs::profile::decode(&stored).unwrap();
    assert_eq!(
        listed,
        WANTED.iter().map(|&i| frames[i].hash).collect::<Vec<_>>(),
        "the frames read, in order: not the whole pack"
    );

    // The next commit's workspace: same content.
    assert_ok(&persist(
        &s,
        std::slice::from_ref(&store),
        "run2",
        "build",
        &src,
        &[],
    ));
    let mp = s.mkdir("mnt2");
    let _m = mount(
        &s,
        std::slice::from_ref(&store),
        "run2",
        &["build"],
        &mp,
        &["--profile", "job", "--prefetch", "none"],
    );
    let st = replay_done(&s, &mp);
    let p = st.profile.clone().unwrap();
    assert_eq!((p.listed, p.matched, p.replayed), (3, 3, 2), "{st:?}");
    assert_eq!(
        st.cache.range_gets, 2,
        "frames 0-1 in one request, 12 in another: {st:?}"
    );
    assert_eq!(st.cache.frames_fetched, 3, "{st:?}");
    assert_eq!(st.cache.fetched, 0, "no whole chunk: {st:?}");
    let stored_bytes: u64 = WANTED
        .iter()
        .map(|&i| u64::from(frames[i].stored_len))
        .sum();
    // Besides the frames, the store served the ref, the manifest and the profile.
    let st_dir = s.path("st");
    let size = |p: PathBuf| std::fs::metadata(p).unwrap().len();
    let manifest = std::fs::read_dir(st_dir.join("manifests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| manifest_digest_of(p) == current_manifest(&st_dir, "run2"))
        .unwrap();
    let other = size(st_dir.join("workspaces/run2/layers/build"))
        + size(manifest)
        + size(st_dir.join("profiles/job"));
    assert_eq!(
        st.stores[0].bytes,
        other + stored_bytes,
        "exactly the three frames' bytes: {st:?}"
    );
    assert!(stored_bytes * 5 < u64::from(chunk.stored_len));

    // The job's reads are served from the verified frames, without a fetch — and without the
    // pack read-ahead a first run does (the profile foresaw them: nothing else is fetched).
    for f in READ {
        assert_eq!(read(&mp.join(f)), read(&src.join(f)));
    }
    std::thread::sleep(Duration::from_millis(300));
    let st = mount_status(&s, &mp);
    assert_eq!(st.cache.frame_reads, 3, "{st:?}");
    assert_eq!((st.cache.fetched, st.cache.range_gets), (0, 2), "{st:?}");
    // A file the profile did not name: its chunk is fetched whole, as on a first run.
    assert_eq!(read(&mp.join("f0300")), read(&src.join("f0300")));
    let st = mount_status(&s, &mp);
    assert!(st.cache.fetched >= 1, "{st:?}");
    compare_trees(&src, &mp);
    assert_eq!(st.eio, 0);
}

#[test]
fn a_range_that_does_not_verify_fails_over_and_without_any_the_reader_fetches_the_chunk() {
    require_fuse();
    let s = Scratch::new();
    let src = tree(&s);
    let (s1, s2) = (s.store("s1"), s.store("s2"));
    let both = [s1.clone(), s2.clone()];
    assert_ok(&persist(&s, &both, "ws", "build", &src, &[]));
    let (chunk, frames) = pack(&s.path("s1"));
    record(&s, &both, "ws", "job", &s.mkdir("mnt0"), &src);

    // s1 now holds another encoding of the pack: its ranges are not the recorded frames.
    store_unframed(&s.path("s1"), &chunk);
    let mp = s.mkdir("mnt1");
    let m = mount(
        &s,
        &both,
        "ws",
        &["build"],
        &mp,
        &["--profile", "job", "--prefetch", "none"],
    );
    let st = replay_done(&s, &mp);
    assert_eq!(st.cache.frames_fetched, 3, "served by s2: {st:?}");
    assert_eq!(st.failovers, 2, "both range GETs failed over: {st:?}");
    let s1_misses: u64 = ["corrupt", "short"]
        .iter()
        .map(|k| st.stores[0].requests.get(*k).copied().unwrap_or(0))
        .sum();
    assert_eq!(s1_misses, 2, "s1's answers did not verify: {st:?}");
    for f in READ {
        assert_eq!(read(&mp.join(f)), read(&src.join(f)));
    }
    let st = mount_status(&s, &mp);
    assert_eq!(
        (st.cache.frame_reads, st.cache.fetched, st.eio),
        (3, 0, 0),
        "{st:?}"
    );
    assert_ok(&s.wsfs(&["umount", mp.to_str().unwrap()]));
    drop(m);

    // Neither store has the recorded frames: the replay misses, and every read still gets
    // verified bytes — from the whole chunk, which both stores can serve.
    store_unframed(&s.path("s2"), &chunk);
    let mp = s.mkdir("mnt2");
    let _m = mount(
        &s,
        &both,
        "ws",
        &["build"],
        &mp,
        &["--profile", "job", "--prefetch", "none"],
    );
    let st = replay_done(&s, &mp);
    assert_eq!(st.cache.frames_fetched, 0, "{st:?}");
    assert_eq!(st.cache.frame_misses, 2, "{st:?}");
    for f in READ {
        assert_eq!(read(&mp.join(f)), read(&src.join(f)));
    }
    // (The whole pack; a first-run read also fetches the next pack ahead.)
    let st = mount_status(&s, &mp);
    assert!(st.cache.fetched >= 1, "{st:?}");
    assert_eq!((st.cache.frame_reads, st.eio), (0, 0), "{st:?}");
    compare_trees(&src, &mp);
    assert_eq!(frames.len(), 17);
}

#[test]
fn range_gets_fail_over_from_gcs_without_chunks_to_s3() {
    require_fuse();
    let e = env();
    let s = Scratch::new();
    let src = tree(&s);
    let (g, b) = (unique("frm-g"), unique("frm-s"));
    mk_gcs(&e, &g);
    mk_s3(&e, &b);
    let s3 = format!("s3://{b}/p");
    assert_ok(&persist(
        &s,
        &[s.store("seed"), s3.clone()],
        "ws",
        "build",
        &src,
        &[],
    ));
    // GCS holds the ref and the manifest, not the chunk (the incident's state).
    let n = gcs_seed(&e, &s.path("seed"), &g, "p", |k| !k.starts_with("chunks/"));
    assert!(n >= 2, "seeded {n}");
    let (_, frames) = pack(&s.path("seed"));
    let stores = [format!("gs://{g}/p"), s3.clone()];
    // Run 1 reads through S3 (whole chunk after GCS's miss) and stores the profile on S3
    // (fake-gcs-server refuses object_store's uploads: that store's copy is a warning).
    record(&s, &stores, "ws", "job", &s.mkdir("mnt1"), &src);
    let mp = s.mkdir("mnt2");
    let _m = mount(
        &s,
        &stores,
        "ws",
        &["build"],
        &mp,
        &[
            "--profile",
            "job",
            "--prefetch",
            "none",
            "--request-timeout",
            "5s",
        ],
    );
    let st = replay_done(&s, &mp);
    assert_eq!(st.cache.range_gets, 2, "{st:?}");
    assert_eq!(st.cache.frames_fetched, 3, "{st:?}");
    assert_eq!(st.cache.fetched, 0, "{st:?}");
    assert!(
        st.stores[0].requests.get("not_found").copied().unwrap_or(0) >= 2,
        "GCS missed both ranges: {st:?}"
    );
    let stored_bytes: u64 = WANTED
        .iter()
        .map(|&i| u64::from(frames[i].stored_len))
        .sum();
    assert!(
        st.stores[1].bytes >= stored_bytes,
        "S3 served the ranges: {st:?}"
    );
    for f in READ {
        assert_eq!(read(&mp.join(f)), read(&src.join(f)));
    }
    let st = mount_status(&s, &mp);
    assert_eq!(
        (st.cache.frame_reads, st.cache.fetched, st.eio),
        (3, 0, 0),
        "{st:?}"
    );
}

#[test]
fn a_mount_that_pushes_pack_neighbours_records_packs_whole() {
    require_fuse();
    let (s, src, store) = persisted("ws");
    let (chunk, _) = pack(&s.path("st"));
    // The default `--prefetch tree` pushes a read file's pack neighbours into the page cache:
    // the job reads those without a READ, so frames would not name all it read.
    let mp = s.mkdir("mnt");
    let m = mount(
        &s,
        std::slice::from_ref(&store),
        "ws",
        &["build"],
        &mp,
        &["--profile", "job"],
    );
    for f in READ {
        assert_eq!(read(&mp.join(f)), read(&src.join(f)));
    }
    assert_ok(&s.wsfs(&["umount", mp.to_str().unwrap()]));
    drop(m);
    let stored = std::fs::read(s.path("st").join("profiles/job")).unwrap();
    assert_eq!(
        wsfs::profile::decode(&stored).unwrap(),
        vec![chunk.hash],
        "the pack, whole"
    );
}
