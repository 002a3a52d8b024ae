//! The manifest format: encode/decode round trips, every rejection the decoder and validator
//! must make, and the chunker (FastCDC for large files, packing for small ones, deduplication).

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use wsfs::manifest::chunker::{compress, LayerBuilder, Meta, NewChunk};
use wsfs::manifest::tree::Tree;
use wsfs::manifest::validate::{check_path, validate, MAX_CHUNK_RAW};
use wsfs::manifest::{
    decode, encode, encode_v1, open, ChunkInfo, Digest, Entry, EntryKind, Extent, Head, Manifest,
    ManifestError, RootMeta, FORMAT_VERSION, FORMAT_VERSION_V1,
};
use wsfs::store::VerifiedChunk;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The version-1 wire format, written by hand without validation, so tests can hand `decode`
/// manifests that `encode_v1` would refuse to produce. Checked against `encode_v1` in
/// `unchecked_encoders_match_encode`.
fn encode_unchecked(m: &Manifest) -> Vec<u8> {
    let body = bincode::serde::encode_to_vec(m, bincode::config::standard()).unwrap();
    wrap_body(&body)
}

fn wrap_body(body: &[u8]) -> Vec<u8> {
    let mut out = b"WSFSMANI".to_vec();
    out.extend_from_slice(&FORMAT_VERSION_V1.to_le_bytes());
    out.extend_from_slice(&zstd::bulk::compress(body, 3).unwrap());
    out
}

/// The version-2 wire format, written by hand without validation (the tree builder still
/// refuses what it cannot lay out: `None`). Checked against `encode` in
/// `unchecked_encoders_match_encode`.
fn encode_v2_unchecked(m: &Manifest) -> Option<Vec<u8>> {
    let tree = Tree::build(&m.entries, m.chunks.clone(), &m.frames, m.root).ok()?;
    let head = Head::of(m);
    let head = bincode::serde::encode_to_vec(&head, bincode::config::standard()).unwrap();
    let mut digests = vec![0u8; 32];
    for e in &m.entries {
        digests.extend_from_slice(&e.content.0);
    }
    let mut out = b"WSFSMANI".to_vec();
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(head.len() as u32).to_le_bytes());
    out.extend_from_slice(&head);
    wsfs::manifest::codec::write_part(&mut out, tree.as_bytes()).unwrap();
    wsfs::manifest::codec::write_part(&mut out, &digests).unwrap();
    Some(out)
}

/// Every way a mount reads an opened tree: each inode, its parts, its children and lookups of
/// their names. For the never-panic tests: a damaged tree may answer errors, never panic.
fn exercise(t: &Tree) -> usize {
    let mut seen = 0;
    for ino in 0..t.len() as u64 + 2 {
        if let Ok(Some(n)) = t.node(ino) {
            seen += 1;
            let _ = (
                n.target(),
                n.extents(),
                n.ext_starts(),
                n.content(),
                n.path(),
            );
            for x in n.extents() {
                let _ = t.chunk(x.chunk).map(|c| t.next_chunk(x.chunk).map(|_| c));
            }
            for c in n.children() {
                if let Ok(child) = t.child(ino, u64::from(*c)) {
                    let _ = t.lookup(ino, child.name());
                }
            }
            let _ = t.lookup(ino, b"x");
        }
    }
    let _ = t.chunks_in_path_order();
    seen
}

fn dir(path: &str) -> Entry {
    Entry {
        path: path.as_bytes().to_vec(),
        kind: EntryKind::Dir,
        mode: 0o755,
        mtime_sec: 1_700_000_000,
        mtime_nsec: 5,
        size: 0,
        target: Vec::new(),
        extents: Vec::new(),
        content: Digest([0; 32]),
    }
}

fn file(path: &str, extents: Vec<Extent>) -> Entry {
    let size = extents.iter().map(|x| u64::from(x.len)).sum();
    Entry {
        path: path.as_bytes().to_vec(),
        kind: EntryKind::File,
        mode: 0o644,
        mtime_sec: 1_700_000_000,
        mtime_nsec: 999_999_999,
        size,
        target: Vec::new(),
        extents,
        content: Digest([7; 32]),
    }
}

fn symlink(path: &str, target: &str) -> Entry {
    Entry {
        path: path.as_bytes().to_vec(),
        kind: EntryKind::Symlink,
        mode: 0o777,
        mtime_sec: -1,
        mtime_nsec: 0,
        size: target.len() as u64,
        target: target.as_bytes().to_vec(),
        extents: Vec::new(),
        content: Digest([0; 32]),
    }
}

fn ext(chunk: u32, offset: u32, len: u32) -> Extent {
    Extent { chunk, offset, len }
}

/// A small valid manifest: `d/`, `d/f` (two extents), `d/g`, `l -> d/f`.
fn base() -> Manifest {
    Manifest {
        workspace: "ws-1".into(),
        layer: "build_2.x".into(),
        parents: vec!["checkout".into()],
        created: 1_700_000_000,
        root: RootMeta {
            mode: 0o1777,
            mtime_sec: -3,
            mtime_nsec: 7,
        },
        chunks: vec![
            ChunkInfo {
                hash: Digest([1; 32]),
                raw_len: 100,
                stored_len: 40,
            },
            ChunkInfo {
                hash: Digest([2; 32]),
                raw_len: 1000,
                stored_len: 900,
            },
        ],
        entries: vec![
            dir("d"),
            file("d/f", vec![ext(0, 0, 100), ext(1, 10, 500)]),
            file("d/g", vec![ext(1, 999, 1)]),
            symlink("l", "d/f"),
        ],
        frames: vec![],
    }
}

/// Asserts `m` is rejected as invalid by `validate`, by `encode`, and by `decode` of its bytes,
/// each time with a message containing `needle`.
#[track_caller]
fn assert_invalid(m: &Manifest, needle: &str) {
    let check = |what: &str, r: Result<(), ManifestError>| match r {
        Err(ManifestError::Invalid(msg)) => {
            assert!(
                msg.contains(needle),
                "{what}: message {msg:?} does not mention {needle:?}"
            );
            let shown = ManifestError::Invalid(msg).to_string();
            assert!(shown.contains("invalid"), "{what}: {shown}");
        }
        other => panic!("{what}: expected Invalid({needle:?}), got {other:?}"),
    };
    check("validate", validate(m));
    check("encode", encode(m).map(|_| ()));
    check("encode_v1", encode_v1(m).map(|_| ()));
    check("decode v1", decode(&encode_unchecked(m)).map(|_| ()));
    // Version 2 refuses it too: as invalid, or — where the tree index notices first, as a
    // mount reading it in place would — as corrupt.
    if let Some(v2) = encode_v2_unchecked(m) {
        match decode(&v2) {
            Err(ManifestError::Invalid(_) | ManifestError::Corrupt(_)) => {}
            other => panic!("decode v2: expected a refusal ({needle:?}), got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Round trips (proptest)
// ---------------------------------------------------------------------------------------------

fn name_strategy() -> impl Strategy<Value = String> {
    "[A-Za-z0-9][A-Za-z0-9._-]{0,30}"
}

/// One path component: any bytes but `/` and NUL (spaces, newlines, non-UTF-8 included), never
/// `.` or `..`.
fn component_strategy() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        4 => prop::sample::select(b"abcxyz019._- \n\t".to_vec()),
        1 => (1u8..=255).prop_filter("no slash", |b| *b != b'/'),
        1 => 0x80u8..=0xff,
    ];
    prop_oneof![
        8 => prop::collection::vec(byte, 1..12),
        1 => Just(b"a b\nc".to_vec()),
        1 => Just(vec![0xff, 0xfe, b' ', 0xc3]),
        1 => prop::collection::vec(Just(b'z'), 255..=255),
    ]
    .prop_filter("not . or ..", |c| c != b"." && c != b"..")
}

#[derive(Clone, Debug)]
struct RawEntry {
    kind: u8,
    mode: u32,
    mtime_sec: i64,
    mtime_nsec: u32,
    target: Vec<u8>,
    extents: Vec<(u32, u32, u32)>,
    content: [u8; 32],
}

fn raw_entry_strategy() -> impl Strategy<Value = RawEntry> {
    (
        0u8..3,
        0u32..=0o7777,
        prop_oneof![
            any::<i64>(),
            -10_000_000_000i64..10_000_000_000,
            Just(0i64),
            Just(-1i64)
        ],
        prop_oneof![0u32..1_000_000_000, Just(999_999_999u32), Just(0u32)],
        prop::collection::vec(1u8..=255, 1..40),
        prop::collection::vec(any::<(u32, u32, u32)>(), 0..5),
        any::<[u8; 32]>(),
    )
        .prop_map(
            |(kind, mode, mtime_sec, mtime_nsec, target, extents, content)| RawEntry {
                kind,
                mode,
                mtime_sec,
                mtime_nsec,
                target,
                extents,
                content,
            },
        )
}

/// Arbitrary *valid* manifests: random paths (with every ancestor added as a directory), random
/// kinds for the leaves, extents folded into the chunk table, sizes computed from extents.
fn manifest_strategy() -> impl Strategy<Value = Manifest> {
    (
        name_strategy(),
        name_strategy(),
        prop::collection::vec(name_strategy(), 0..4),
        any::<i64>(),
        prop::collection::vec(
            (
                prop_oneof![1u32..70_000, Just(MAX_CHUNK_RAW), Just(1u32)],
                1u32..=u32::MAX,
                any::<[u8; 32]>(),
            ),
            0..6,
        ),
        prop::collection::vec(prop::collection::vec(component_strategy(), 1..5), 0..25),
        prop::collection::vec(raw_entry_strategy(), 1..8),
        (0u32..=0o7777, any::<i64>(), 0u32..1_000_000_000),
    )
        .prop_map(
            |(workspace, layer, parents, created, chunks, paths, raws, root)| {
                let root = RootMeta {
                    mode: root.0,
                    mtime_sec: root.1,
                    mtime_nsec: root.2,
                };
                let chunks: Vec<ChunkInfo> = chunks
                    .into_iter()
                    .map(|(raw_len, stored_len, h)| ChunkInfo {
                        hash: Digest(h),
                        raw_len,
                        stored_len,
                    })
                    .collect();
                let mut all: BTreeSet<Vec<u8>> = BTreeSet::new();
                let mut ancestors: BTreeSet<Vec<u8>> = BTreeSet::new();
                for comps in &paths {
                    let full = comps.join(&b'/');
                    for i in 1..comps.len() {
                        let a = comps[..i].join(&b'/');
                        ancestors.insert(a.clone());
                        all.insert(a);
                    }
                    all.insert(full);
                }
                let entries = all
                    .into_iter()
                    .enumerate()
                    .map(|(i, path)| {
                        let r = &raws[i % raws.len()];
                        let kind = if ancestors.contains(&path) {
                            EntryKind::Dir
                        } else {
                            [EntryKind::File, EntryKind::Dir, EntryKind::Symlink][r.kind as usize]
                        };
                        let mut e = Entry {
                            path,
                            kind,
                            mode: r.mode,
                            mtime_sec: r.mtime_sec,
                            mtime_nsec: r.mtime_nsec,
                            size: 0,
                            target: Vec::new(),
                            extents: Vec::new(),
                            content: Digest([0; 32]),
                        };
                        match kind {
                            EntryKind::Dir => {}
                            EntryKind::Symlink => {
                                e.target = r.target.clone();
                                e.size = e.target.len() as u64;
                            }
                            EntryKind::File => {
                                e.content = Digest(r.content);
                                if !chunks.is_empty() {
                                    for &(a, b, c) in &r.extents {
                                        let ci = a % chunks.len() as u32;
                                        let raw = chunks[ci as usize].raw_len;
                                        let offset = b % raw;
                                        let len = 1 + c % (raw - offset);
                                        e.extents.push(ext(ci, offset, len));
                                    }
                                }
                                e.size = e.extents.iter().map(|x| u64::from(x.len)).sum();
                            }
                        }
                        e
                    })
                    .collect();
                Manifest {
                    workspace,
                    layer,
                    parents,
                    created,
                    root,
                    chunks,
                    entries,
                    frames: vec![],
                }
            },
        )
}

fn fuzz_cases() -> u32 {
    std::env::var("WSFS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

proptest! {
    // 256 cases in the suite; WSFS_FUZZ_CASES=N runs N (a longer fuzz of the decoders).
    #![proptest_config(ProptestConfig::with_cases(fuzz_cases()))]

    #[test]
    fn roundtrip_arbitrary_valid_manifests(m in manifest_strategy()) {
        prop_assert!(validate(&m).is_ok(), "generator made an invalid manifest: {:?}", validate(&m));
        let bytes = encode(&m).unwrap();
        let back = decode(&bytes).unwrap();
        prop_assert_eq!(&back, &m);
        // Version 1 still decodes to the same manifest, and both open to the same tree.
        let v1 = encode_v1(&m).unwrap();
        prop_assert_eq!(&decode(&v1).unwrap(), &m);
        let t2 = open(bytes.clone().into()).unwrap();
        prop_assert!(t2.in_place());
        let t2 = t2.into_tree().unwrap();
        let t1 = open(v1.into()).unwrap();
        prop_assert!(!t1.in_place());
        let t1 = t1.into_tree().unwrap();
        prop_assert_eq!(t1.as_bytes(), t2.as_bytes());
        // Every entry is reachable by lookups from the root and reads back as it was given.
        for e in &m.entries {
            let mut ino = 1;
            for name in e.path.split(|b| *b == b'/') {
                ino = t2.lookup(ino, name).unwrap().unwrap();
            }
            let n = t2.node(ino).unwrap().unwrap();
            prop_assert_eq!(n.path(), e.path.clone());
            prop_assert_eq!((n.kind(), n.mode(), n.size(), n.mtime()), (e.kind, e.mode, e.size, (e.mtime_sec, e.mtime_nsec)));
            prop_assert_eq!(n.extents(), &e.extents[..]);
            prop_assert_eq!(n.target(), &e.target[..]);
        }
        prop_assert_eq!(exercise(&t2), m.entries.len() + 1);
        // Deterministic: the same manifest always encodes to the same bytes (and so the same
        // content address), also after a round trip.
        prop_assert_eq!(encode(&m).unwrap(), bytes.clone());
        prop_assert_eq!(encode(&back).unwrap(), bytes);
    }

    #[test]
    fn decode_never_panics_on_mutated_bytes(
        m in manifest_strategy(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        for bytes in [encode(&m).unwrap(), encode_v1(&m).unwrap()] {
            let mut mutated = bytes.clone();
            for (i, x) in &flips {
                let i = i.index(mutated.len());
                mutated[i] ^= x;
            }
            // Either rejected or a manifest that passes validation: never a panic.
            if let Ok(d) = decode(&mutated) {
                prop_assert!(validate(&d).is_ok());
            }
            // Opened for a mount: rejected, or a tree whose every read answers.
            if let Ok(o) = open(mutated.clone().into()) {
                if let Ok(t) = o.into_tree() {
                    exercise(&t);
                }
            }
            let cut = cut.index(bytes.len());
            if let Ok(d) = decode(&bytes[..cut]) {
                prop_assert!(validate(&d).is_ok());
            }
        }
    }

    /// A mount opens a version-2 manifest without checking every entry: a damaged tree index
    /// (the bytes a hostile store could serve, compressed as they would be) must answer every
    /// read with a value or an error, never a panic or an out-of-bounds read.
    #[test]
    fn damaged_tree_indexes_never_panic(
        m in manifest_strategy(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
    ) {
        let tree = Tree::build(&m.entries, m.chunks.clone(), &m.frames, m.root).unwrap();
        let mut raw = tree.as_bytes().to_vec();
        for (i, x) in &flips {
            let i = i.index(raw.len());
            raw[i] = *x;
        }
        let mut buf = vec![0u64; raw.len().div_ceil(8)];
        for (i, b) in raw.iter().enumerate() {
            buf[i / 8] |= u64::from(*b) << (8 * (i % 8));
        }
        if let Ok(t) = Tree::open(buf, raw.len()) {
            exercise(&t);
        }
    }

    #[test]
    fn arbitrary_bytes_never_open_to_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let _ = decode(&bytes);
        let mut framed = b"WSFSMANI".to_vec();
        framed.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        framed.extend_from_slice(&bytes);
        if let Ok(o) = open(framed.into()) {
            if let Ok(t) = o.into_tree() {
                exercise(&t);
            }
        }
        let mut buf = vec![0u64; bytes.len().div_ceil(8)];
        for (i, b) in bytes.iter().enumerate() {
            buf[i / 8] |= u64::from(*b) << (8 * (i % 8));
        }
        if let Ok(t) = Tree::open(buf, bytes.len()) {
            exercise(&t);
        }
    }
}

#[test]
fn unchecked_encoders_match_encode() {
    // The hand-made encoders used by the rejection tests write the real formats.
    let m = base();
    assert_eq!(encode_unchecked(&m), encode_v1(&m).unwrap());
    assert_eq!(decode(&encode_unchecked(&m)).unwrap(), m);
    assert_eq!(encode_v2_unchecked(&m).unwrap(), encode(&m).unwrap());
    assert_eq!(decode(&encode_v2_unchecked(&m).unwrap()).unwrap(), m);
}

#[test]
fn version_3_is_written_and_versions_2_and_1_still_read() {
    let m = base();
    let v3 = encode(&m).unwrap();
    assert_eq!(v3[8..12], FORMAT_VERSION.to_le_bytes());
    assert_eq!(FORMAT_VERSION, 3);
    let v1 = encode_v1(&m).unwrap();
    assert_eq!(v1[8..12], 1u32.to_le_bytes());
    assert_eq!(decode(&v1).unwrap(), decode(&v3).unwrap());
    let v2 = encode_format_2(&m);
    assert_eq!(v2[8..12], 2u32.to_le_bytes());
    assert_eq!(
        decode(&v2).unwrap(),
        m,
        "a format-2 manifest reads as it did"
    );
    let opened = wsfs::manifest::open(v2.into()).unwrap();
    assert!(opened.in_place());
    let tree = opened.into_tree().unwrap();
    assert!(tree.frames(0).is_empty() && tree.frames(1).is_empty());
}

/// `m` as wsfs of format 2 wrote it: the tree without its frame sections (tree version 1).
fn encode_format_2(m: &Manifest) -> Vec<u8> {
    let tree = Tree::build(&m.entries, m.chunks.clone(), &[], m.root).unwrap();
    let mut t = tree.as_bytes().to_vec();
    // Version 1, nine sections: the two frame sections' header slots and bytes stay behind,
    // named by nothing (as padding a reader skips).
    t[8..12].copy_from_slice(&1u32.to_le_bytes());
    t[12..16].copy_from_slice(&9u32.to_le_bytes());
    let head = bincode::serde::encode_to_vec(Head::of(m), bincode::config::standard()).unwrap();
    let mut digests = vec![0u8; 32];
    for e in &m.entries {
        digests.extend_from_slice(&e.content.0);
    }
    let mut out = b"WSFSMANI".to_vec();
    out.extend_from_slice(&2u32.to_le_bytes());
    out.extend_from_slice(&(head.len() as u32).to_le_bytes());
    out.extend_from_slice(&head);
    wsfs::manifest::codec::write_part(&mut out, &t).unwrap();
    wsfs::manifest::codec::write_part(&mut out, &digests).unwrap();
    out
}

/// A manifest whose second chunk is framed, as a persist writes it.
fn framed() -> Manifest {
    let raw: Vec<u8> = (0..1_300_000u32).map(|i| (i * 31 % 253) as u8).collect();
    let (stored, frames) = wsfs::manifest::frames::compress(&raw).unwrap();
    let mut m = base();
    m.chunks[1] = ChunkInfo {
        hash: Digest::of(&raw),
        raw_len: raw.len() as u32,
        stored_len: stored.len() as u32,
    };
    m.frames = vec![vec![], frames];
    m
}

#[test]
fn frame_tables_round_trip_and_damaged_ones_are_refused() {
    let m = framed();
    assert_eq!(m.frames[1].len(), 5);
    let bytes = encode(&m).unwrap();
    assert_eq!(decode(&bytes).unwrap(), m);
    let tree = wsfs::manifest::open(bytes.into())
        .unwrap()
        .into_tree()
        .unwrap();
    assert!(tree.frames(0).is_empty());
    assert_eq!(tree.frames(1), &m.frames[1][..]);
    assert!(tree.frames(2).is_empty(), "no such chunk");
    // Tables that do not describe their chunk: refused by validate/encode/decode alike.
    // (Version 1 cannot carry frames, so only validate and encode are asked.)
    let refused = |m: &Manifest, needle: &str| {
        for r in [wsfs::manifest::validate::validate(m), encode(m).map(|_| ())] {
            match r {
                Err(ManifestError::Invalid(msg)) => assert!(msg.contains(needle), "{msg}"),
                other => panic!("expected Invalid({needle:?}), got {other:?}"),
            }
        }
    };
    let mut missing = m.clone();
    missing.frames[1].pop();
    refused(&missing, "frames do not cover");
    let mut stored = m.clone();
    stored.frames[1][0].stored_len += 1;
    refused(&stored, "stored lengths");
    let mut count = m.clone();
    count.frames.pop();
    refused(&count, "frame tables for");
    // The same damage in an index served in place is refused when it opens.
    let mut t = m.clone();
    t.frames[1][2].raw_len -= 1;
    let bad = encode_v2_unchecked(&t);
    assert!(bad.is_none(), "the builder refuses it too");
}

#[test]
fn roundtrip_edge_values() {
    let mut m = base();
    m.created = i64::MIN;
    m.entries[0].mtime_sec = i64::MIN;
    m.entries[0].mtime_nsec = 999_999_999;
    m.entries[1].mtime_sec = -1;
    m.entries[1].mtime_nsec = 1;
    m.entries[1].mode = 0o7777;
    m.entries[2].mtime_sec = i64::MAX;
    m.chunks[1].stored_len = u32::MAX;
    let bytes = encode(&m).unwrap();
    assert_eq!(decode(&bytes).unwrap(), m);

    // Non-UTF-8 names, spaces and newlines in names and targets.
    let mut m = base();
    let mut weird = b"d/\xff\xfe name\nwith newline".to_vec();
    weird.push(0x80);
    let mut e = file("x", vec![ext(1, 0, 1000)]);
    e.path = weird;
    m.entries.insert(3, e);
    m.entries[4].target = b"\xc3\x28 \n/abs/target".to_vec();
    m.entries[4].size = m.entries[4].target.len() as u64;
    let bytes = encode(&m).unwrap();
    assert_eq!(decode(&bytes).unwrap(), m);

    // An empty manifest (no chunks, no entries) is valid.
    let m = Manifest {
        workspace: "w".into(),
        layer: "l".into(),
        parents: vec![],
        created: 0,
        root: RootMeta::default(),
        chunks: vec![],
        entries: vec![],
        frames: vec![],
    };
    assert_eq!(decode(&encode(&m).unwrap()).unwrap(), m);
}

// ---------------------------------------------------------------------------------------------
// Header and body rejections (decode)
// ---------------------------------------------------------------------------------------------

#[test]
fn rejects_bad_magic() {
    let good = encode(&base()).unwrap();
    for bad in [
        {
            let mut b = good.clone();
            b[0] = b'X';
            b
        },
        {
            let mut b = good.clone();
            b[7] ^= 1;
            b
        },
        Vec::new(),
        good[..11].to_vec(),
        b"WSFSMANI".to_vec(),
        b"{\"manifest\": 1}".to_vec(),
    ] {
        let err = decode(&bad).unwrap_err();
        assert!(matches!(err, ManifestError::NotAManifest), "{err:?}");
        assert!(err.to_string().contains("magic"), "{err}");
    }
}

#[test]
fn rejects_unknown_version() {
    let good = encode(&base()).unwrap();
    for v in [0u32, 4, FORMAT_VERSION + 1, u32::MAX] {
        let mut b = good.clone();
        b[8..12].copy_from_slice(&v.to_le_bytes());
        let err = decode(&b).unwrap_err();
        match &err {
            ManifestError::UnknownVersion { found, supported } => {
                assert_eq!(*found, v);
                assert_eq!(*supported, FORMAT_VERSION);
            }
            other => panic!("expected UnknownVersion, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(&format!("version {v}")), "{msg}");
        assert!(msg.contains(&FORMAT_VERSION.to_string()), "{msg}");
        assert!(msg.contains("upgrade"), "{msg}");
    }
}

#[test]
fn rejects_corrupt_v2_parts() {
    let good = encode(&base()).unwrap();
    // Truncated anywhere after the header: corrupt, never a panic.
    for cut in 12..good.len() {
        let err = decode(&good[..cut]).unwrap_err();
        assert!(
            matches!(err, ManifestError::Corrupt(_)),
            "cut at {cut}: {err:?}"
        );
        assert!(open(good[..cut].to_vec().into()).is_err(), "cut at {cut}");
    }
    // A tree that claims another length than its zstd frame holds: refused before allocating.
    let head_len = u32::from_le_bytes(good[12..16].try_into().unwrap()) as usize;
    let at = 16 + head_len;
    for claim in [0u64, 1, 511 << 20] {
        let mut b = good.clone();
        b[at..at + 8].copy_from_slice(&claim.to_le_bytes());
        let err = open(b.into())
            .err()
            .expect("a wrong tree length is refused");
        assert!(err.to_string().contains("tree"), "{err}");
    }
    // A head that is not a valid head (a bad layer name) is invalid.
    let mut m = base();
    m.layer = "ok".into();
    let mut b = encode(&m).unwrap();
    let i = b.windows(2).position(|w| w == b"ok").unwrap();
    b[i] = b'/';
    let err = open(b.into()).err().expect("a bad layer name is refused");
    assert!(matches!(err, ManifestError::Invalid(_)), "{err:?}");
}

#[test]
fn rejects_corrupt_body() {
    let good = encode_v1(&base()).unwrap();

    // Every body byte inverted: not a zstd frame.
    let mut b = good.clone();
    for x in &mut b[12..] {
        *x = !*x;
    }
    let err = decode(&b).unwrap_err();
    assert!(matches!(err, ManifestError::Corrupt(_)), "{err:?}");
    assert!(err.to_string().contains("corrupt"), "{err}");
    assert!(err.to_string().contains("decompress"), "{err}");

    // Body truncated.
    for cut in [12, 13, good.len() / 2, good.len() - 1] {
        let err = decode(&good[..cut]).unwrap_err();
        assert!(
            matches!(err, ManifestError::Corrupt(_)),
            "cut at {cut}: {err:?}"
        );
    }

    // A well-formed zstd frame whose content is not a manifest.
    let err = decode(&wrap_body(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff")).unwrap_err();
    assert!(matches!(err, ManifestError::Corrupt(_)), "{err:?}");
    assert!(err.to_string().contains("decode"), "{err}");

    // An empty body.
    let err = decode(&wrap_body(b"")).unwrap_err();
    assert!(matches!(err, ManifestError::Corrupt(_)), "{err:?}");

    // A body that claims a huge length for the first string (allocation bomb): rejected, not OOM.
    let mut body = vec![0xfd];
    body.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
    let err = decode(&wrap_body(&body)).unwrap_err();
    assert!(matches!(err, ManifestError::Corrupt(_)), "{err:?}");
}

#[test]
fn rejects_trailing_garbage_inside_body() {
    let m = base();
    let mut body = bincode::serde::encode_to_vec(&m, bincode::config::standard()).unwrap();
    body.extend_from_slice(b"junk");
    let err = decode(&wrap_body(&body)).unwrap_err();
    match &err {
        ManifestError::Corrupt(msg) => assert!(msg.contains("trailing"), "{msg}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(err.to_string().contains("4 trailing bytes"), "{err}");
}

#[test]
fn rejects_trailing_garbage_after_body() {
    let good = encode(&base()).unwrap();
    for junk in [&b"x"[..], b"garbage", &[0u8; 64][..]] {
        let mut b = good.clone();
        b.extend_from_slice(junk);
        let err = decode(&b).unwrap_err();
        assert!(
            matches!(err, ManifestError::Corrupt(_)),
            "{junk:?}: {err:?}"
        );
        assert!(err.to_string().contains("corrupt"), "{err}");
    }
}

// ---------------------------------------------------------------------------------------------
// Validation rejections (validate, encode and decode all refuse)
// ---------------------------------------------------------------------------------------------

#[test]
fn base_is_valid() {
    validate(&base()).unwrap();
}

fn with_path(path: &[u8]) -> Manifest {
    let mut m = base();
    m.entries[3].path = path.to_vec();
    m
}

#[test]
fn rejects_absolute_path() {
    assert_invalid(&with_path(b"/l"), "absolute path");
    assert_eq!(check_path(b"/").unwrap_err(), "absolute path");
    assert_eq!(check_path(b"/etc/passwd").unwrap_err(), "absolute path");
}

#[test]
fn rejects_dotdot_component() {
    assert_invalid(&with_path(b"../x"), "'..' component");
    assert_invalid(&with_path(b"z/.."), "'..' component");
    assert_invalid(&with_path(b"z/../z"), "'..' component");
    assert_eq!(check_path(b"..").unwrap_err(), "'..' component");
}

#[test]
fn rejects_dot_component() {
    assert_invalid(&with_path(b"./x"), "'.' component");
    assert_invalid(&with_path(b"z/."), "'.' component");
    assert_eq!(check_path(b".").unwrap_err(), "'.' component");
    // Names that merely start with dots are fine.
    check_path(b".hidden/...").unwrap();
    check_path(b"..x/.x").unwrap();
}

#[test]
fn rejects_empty_component() {
    assert_invalid(&with_path(b"z//b"), "empty path component");
    assert_invalid(&with_path(b"z/"), "empty path component");
    let mut m = base();
    m.entries[1].path = b"d//f".to_vec();
    assert_invalid(&m, "empty path component");
    let mut m = base();
    m.entries[0].path = b"d/".to_vec();
    assert_invalid(&m, "empty path component");
}

#[test]
fn rejects_empty_path() {
    let mut m = base();
    m.entries.insert(0, dir(""));
    assert_invalid(&m, "empty path");
    assert_eq!(check_path(b"").unwrap_err(), "empty path");
}

#[test]
fn rejects_nul_in_path() {
    assert_invalid(&with_path(b"l\0x"), "NUL");
    assert_eq!(check_path(b"a\0").unwrap_err(), "path contains NUL");
}

#[test]
fn rejects_overlong_component() {
    let long = vec![b'a'; 256];
    assert_invalid(&with_path(&long), "longer than 255");
    check_path(&[b'a'; 255]).unwrap();
}

#[test]
fn rejects_duplicate_paths() {
    let mut m = base();
    m.entries.push(symlink("l", "d"));
    assert_invalid(&m, "duplicate path");
    let mut m = base();
    m.entries.insert(1, dir("d"));
    assert_invalid(&m, "duplicate path");
}

#[test]
fn rejects_unsorted_entries() {
    let mut m = base();
    m.entries.swap(1, 2);
    assert_invalid(&m, "not sorted");
    let mut m = base();
    let l = m.entries.pop().unwrap();
    m.entries.insert(0, l);
    assert_invalid(&m, "not sorted");
}

#[test]
fn rejects_entry_without_parent_dir() {
    let mut m = base();
    m.entries.remove(0);
    assert_invalid(&m, "parent directory is not in the manifest");
    let mut m = base();
    m.entries.push(symlink("x/y/z", "t"));
    assert_invalid(&m, "parent directory is not in the manifest");
}

#[test]
fn rejects_parent_that_is_a_file() {
    let mut m = base();
    m.entries.insert(2, file("d/f/inner", vec![ext(0, 0, 1)]));
    assert_invalid(&m, "parent is not a directory");
    let mut m = base();
    m.entries.push(dir("l/x"));
    assert_invalid(&m, "parent is not a directory");
}

#[test]
fn rejects_extent_chunk_out_of_range() {
    let mut m = base();
    m.entries[2].extents[0].chunk = 2;
    assert_invalid(&m, "names chunk 2 but the table has 2 chunks");
    let mut m = base();
    m.entries[2].extents[0].chunk = u32::MAX;
    assert_invalid(&m, "but the table has 2 chunks");
}

#[test]
fn rejects_extent_outside_chunk() {
    let mut m = base();
    m.entries[2].extents[0] = ext(1, 1000, 1);
    assert_invalid(&m, "outside chunk 1 of 1000 bytes");
    let mut m = base();
    m.entries[1].extents[0] = ext(0, 1, 100);
    assert_invalid(&m, "outside chunk 0 of 100 bytes");
    // No overflow when offset + len exceeds u32.
    let mut m = base();
    m.entries[2].extents[0] = ext(1, u32::MAX, u32::MAX);
    m.entries[2].size = u64::from(u32::MAX);
    assert_invalid(&m, "outside chunk");
}

#[test]
fn rejects_zero_length_extent() {
    let mut m = base();
    m.entries[1].extents.push(ext(1, 0, 0));
    assert_invalid(&m, "extent 2 (0+0) lies outside chunk");
}

#[test]
fn rejects_extent_lengths_not_adding_up() {
    let mut m = base();
    m.entries[1].size += 1;
    assert_invalid(&m, "extent lengths add up to 600, but the size is 601");
    let mut m = base();
    m.entries[1].size = 0;
    assert_invalid(&m, "but the size is 0");
    let mut m = base();
    m.entries[2].extents.clear();
    assert_invalid(&m, "extent lengths add up to 0, but the size is 1");
}

#[test]
fn rejects_dir_with_size_extents_or_target() {
    let mut m = base();
    m.entries[0].size = 1;
    assert_invalid(&m, "a directory has a size");
    let mut m = base();
    m.entries[0].extents.push(ext(0, 0, 1));
    assert_invalid(&m, "a directory has a size, extents or a target");
    let mut m = base();
    m.entries[0].target = b"x".to_vec();
    assert_invalid(&m, "a directory has a size, extents or a target");
}

#[test]
fn rejects_symlink_with_empty_or_bad_target() {
    let mut m = base();
    m.entries[3].target.clear();
    m.entries[3].size = 0;
    assert_invalid(&m, "symlink target is empty");
    let mut m = base();
    m.entries[3].target = b"a\0b".to_vec();
    assert_invalid(&m, "contains NUL");
    let mut m = base();
    m.entries[3].size = 99;
    assert_invalid(&m, "symlink size differs from its target length");
    let mut m = base();
    m.entries[3].extents.push(ext(0, 0, 3));
    assert_invalid(&m, "symlink size differs");
}

#[test]
fn rejects_file_with_target() {
    let mut m = base();
    m.entries[1].target = b"x".to_vec();
    assert_invalid(&m, "a regular file has a symlink target");
}

#[test]
fn rejects_mode_with_file_type_bits() {
    for mode in [0o100644, 0o040755, 0o120777, 0o10000, u32::MAX] {
        let mut m = base();
        m.entries[1].mode = mode;
        assert_invalid(&m, &format!("mode {mode:o} has bits outside 0o7777"));
    }
}

#[test]
fn rejects_mtime_nsec_out_of_range() {
    for nsec in [1_000_000_000u32, 1_500_000_000, u32::MAX] {
        let mut m = base();
        m.entries[2].mtime_nsec = nsec;
        assert_invalid(&m, &format!("mtime nanoseconds {nsec} out of range"));
    }
}

#[test]
fn rejects_bad_workspace_layer_and_parent_names() {
    let bad = [
        "../x", "", "a/b", ".hidden", "-x", "a b", "a\nb", "é", "x\0", "..",
    ];
    let too_long = "a".repeat(129);
    for name in bad.iter().copied().chain([too_long.as_str()]) {
        let mut m = base();
        m.workspace = name.into();
        assert_invalid(&m, &format!("workspace name {name:?} is not valid"));
        let mut m = base();
        m.layer = name.into();
        assert_invalid(&m, &format!("layer name {name:?} is not valid"));
        let mut m = base();
        m.parents.push(name.into());
        assert_invalid(&m, &format!("parent layer name {name:?} is not valid"));
        assert!(wsfs::manifest::names::validate_name("workspace", name).is_err());
    }
    for good in ["a", "A.b_c-d", "0", &"z".repeat(128)] {
        wsfs::manifest::names::validate_name("layer", good).unwrap();
    }
}

#[test]
fn rejects_chunk_over_the_raw_limit() {
    let mut m = base();
    m.chunks[1].raw_len = MAX_CHUNK_RAW + 1;
    assert_invalid(
        &m,
        &format!(
            "chunk 1 claims {} raw bytes, more than the limit",
            MAX_CHUNK_RAW + 1
        ),
    );
    let mut m = base();
    m.chunks[0].raw_len = u32::MAX;
    assert_invalid(&m, "more than the limit");
    let mut m = base();
    m.chunks[1].raw_len = MAX_CHUNK_RAW;
    validate(&m).unwrap();
}

#[test]
fn rejects_bad_root_metadata() {
    let mut m = base();
    m.root.mode = 0o040755;
    assert_invalid(&m, "root directory metadata out of range (mode 40755");
    let mut m = base();
    m.root.mtime_nsec = 1_000_000_000;
    assert_invalid(&m, "root directory metadata out of range");
    assert_invalid(&m, "nsec 1000000000");
    let mut m = base();
    m.root = RootMeta {
        mode: 0o7777,
        mtime_sec: i64::MIN,
        mtime_nsec: 999_999_999,
    };
    assert_eq!(decode(&encode(&m).unwrap()).unwrap(), m);
}

#[test]
fn rejects_chunk_with_zero_stored_len() {
    let mut m = base();
    m.chunks[0].stored_len = 0;
    assert_invalid(&m, "chunk 0 has a stored length of 0");
}

#[test]
fn invalid_messages_name_the_entry() {
    let mut m = base();
    m.entries[2].mtime_nsec = 1_000_000_000;
    match validate(&m) {
        Err(ManifestError::Invalid(msg)) => {
            assert!(msg.contains("entry 2"), "{msg}");
            assert!(msg.contains("d/g"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Chunker
// ---------------------------------------------------------------------------------------------

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

fn meta(path: &str) -> Meta {
    Meta {
        path: path.as_bytes().to_vec(),
        mode: 0o100644,
        mtime_sec: 1_700_000_000,
        mtime_nsec: 123,
    }
}

/// A builder plus everything its sink saw.
struct Built {
    builder: LayerBuilder,
    chunks: HashMap<Digest, Vec<u8>>,
    /// Digests in the order the sink saw them (duplicates would show here).
    seen: Vec<Digest>,
    indices: Vec<u32>,
}

impl Built {
    fn new() -> Built {
        Built {
            builder: LayerBuilder::new(),
            chunks: HashMap::new(),
            seen: Vec::new(),
            indices: Vec::new(),
        }
    }

    fn add(&mut self, path: &str, content: &[u8]) {
        self.add_hinted(path, content.len() as u64, content);
    }

    fn add_hinted(&mut self, path: &str, hint: u64, content: &[u8]) {
        let chunks = &mut self.chunks;
        let seen = &mut self.seen;
        let indices = &mut self.indices;
        let mut sink = |c: NewChunk| -> Result<(), std::io::Error> {
            assert_eq!(
                Digest::of(&c.raw),
                c.hash,
                "sink got a chunk whose hash is wrong"
            );
            seen.push(c.hash);
            indices.push(c.index);
            chunks.insert(c.hash, c.raw.to_vec());
            Ok(())
        };
        self.builder
            .add_file(meta(path), hint, content, &mut sink)
            .unwrap();
    }

    fn finish(mut self) -> (Manifest, HashMap<Digest, Vec<u8>>, Vec<Digest>) {
        let chunks = &mut self.chunks;
        let seen = &mut self.seen;
        let indices = &mut self.indices;
        let mut sink = |c: NewChunk| -> Result<(), std::io::Error> {
            seen.push(c.hash);
            indices.push(c.index);
            chunks.insert(c.hash, c.raw.to_vec());
            Ok(())
        };
        self.builder.flush(&mut sink).unwrap();
        // Indices are handed out densely, in order.
        assert_eq!(
            self.indices,
            (0..self.indices.len() as u32).collect::<Vec<_>>()
        );
        for (i, h) in self.seen.iter().enumerate() {
            let (stored, frames) = wsfs::manifest::frames::compress(&self.chunks[h]).unwrap();
            self.builder
                .set_stored(i as u32, stored.len() as u32, frames);
        }
        let m = self
            .builder
            .finish("ws".into(), "layer".into(), vec![], 1_700_000_000);
        (m, self.chunks, self.seen)
    }
}

/// The bytes of a file, put back together from its extents.
fn reassemble(m: &Manifest, chunks: &HashMap<Digest, Vec<u8>>, path: &str) -> Vec<u8> {
    let e = m
        .entries
        .iter()
        .find(|e| e.path == path.as_bytes())
        .unwrap_or_else(|| panic!("{path} not in manifest"));
    let mut out = Vec::with_capacity(e.size as usize);
    for x in &e.extents {
        let c = &chunks[&m.chunks[x.chunk as usize].hash];
        out.extend_from_slice(&c[x.offset as usize..(x.offset + x.len) as usize]);
    }
    assert_eq!(out.len() as u64, e.size);
    out
}

fn entry<'a>(m: &'a Manifest, path: &str) -> &'a Entry {
    m.entries
        .iter()
        .find(|e| e.path == path.as_bytes())
        .unwrap()
}

#[test]
fn large_file_is_cut_by_cdc_into_bounded_chunks() {
    let data = random_bytes(1, 20 * MIB);
    let mut b = Built::new();
    b.add("big", &data);
    let (m, chunks, seen) = b.finish();
    validate(&m).unwrap();
    assert_eq!(reassemble(&m, &chunks, "big"), data);

    let e = entry(&m, "big");
    assert_eq!(e.kind, EntryKind::File);
    assert_eq!(e.mode, 0o644, "file-type bits are stripped");
    assert_eq!(e.size, data.len() as u64);
    assert_eq!(e.content, Digest::of(&data));
    assert_eq!(seen.len(), m.chunks.len());
    let n = m.chunks.len();
    // ~1 MiB average: 20 MiB gives several chunks, around 20.
    assert!((8..=60).contains(&n), "{n} chunks for 20 MiB");
    let avg = data.len() / n;
    assert!(
        (MIB / 3..=3 * MIB).contains(&avg),
        "average chunk size {avg}"
    );
    for (i, c) in m.chunks.iter().enumerate() {
        assert!(
            c.raw_len as usize <= 4 * MIB,
            "chunk {i} is {} bytes",
            c.raw_len
        );
        if i + 1 < n {
            assert!(
                c.raw_len as usize >= 256 * KIB,
                "chunk {i} is {} bytes",
                c.raw_len
            );
        }
        assert_eq!(c.raw_len as usize, chunks[&c.hash].len());
    }
    // Each extent covers a whole CDC chunk, in order.
    for (i, x) in e.extents.iter().enumerate() {
        assert_eq!((x.chunk, x.offset), (i as u32, 0));
        assert_eq!(x.len, m.chunks[i].raw_len);
    }
    assert_eq!(decode(&encode(&m).unwrap()).unwrap(), m);
}

#[test]
fn files_at_the_small_limit_are_not_packed() {
    let exactly = random_bytes(2, 64 * KIB);
    let below = random_bytes(3, 64 * KIB - 1);
    let mut b = Built::new();
    b.add("a_exact", &exactly);
    b.add("b_below", &below);
    let (m, chunks, _) = b.finish();
    // 64 KiB exactly: its own (CDC) chunk. One byte less: packed.
    let ea = entry(&m, "a_exact");
    assert_eq!(ea.extents.len(), 1);
    assert_eq!(
        chunks[&m.chunks[ea.extents[0].chunk as usize].hash],
        exactly
    );
    let eb = entry(&m, "b_below");
    assert_eq!(eb.extents.len(), 1);
    assert_eq!(reassemble(&m, &chunks, "b_below"), below);
    assert_ne!(ea.extents[0].chunk, eb.extents[0].chunk);
}

#[test]
fn file_that_grows_past_its_size_hint_is_cut_like_a_large_file() {
    let data = random_bytes(4, 3 * MIB);
    let mut b = Built::new();
    b.add_hinted("grew", 10, &data);
    let (m, chunks, _) = b.finish();
    assert_eq!(reassemble(&m, &chunks, "grew"), data);
    assert_eq!(entry(&m, "grew").size, data.len() as u64);
    assert!(m.chunks.iter().all(|c| c.raw_len as usize <= 4 * MIB));
    validate(&m).unwrap();
}

#[test]
fn small_files_are_packed_in_order() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut b = Built::new();
    let mut files = Vec::new();
    let mut total = 0usize;
    for i in 0..3000 {
        let len = rng.random_range(1..6000);
        let data = random_bytes(1000 + i, len);
        total += len;
        let path = format!("f{i:05}");
        b.add(&path, &data);
        files.push((path, data));
    }
    let (m, chunks, _) = b.finish();
    validate(&m).unwrap();
    let n = m.chunks.len();
    // ~9 MB of small files: a handful of ~4 MiB packs, not thousands of objects.
    assert!(n <= total / (4 * MIB) + 1, "{n} chunks for {total} bytes");
    assert!(n >= 2, "{n} chunks for {total} bytes");
    for c in &m.chunks {
        assert!(
            (c.raw_len as usize) < 4 * MIB + 64 * KIB,
            "pack of {}",
            c.raw_len
        );
    }
    // Packed in path (add) order: each file either continues the previous one's pack right after
    // it, or starts the next pack at offset 0.
    let mut prev: Option<Extent> = None;
    for (path, data) in &files {
        let e = entry(&m, path);
        assert_eq!(e.extents.len(), 1, "{path}");
        let x = e.extents[0];
        match prev {
            Some(p) if p.chunk == x.chunk => assert_eq!(x.offset, p.offset + p.len, "{path}"),
            Some(p) => {
                assert_eq!(x.chunk, p.chunk + 1, "{path}");
                assert_eq!(x.offset, 0, "{path}");
            }
            None => assert_eq!((x.chunk, x.offset), (0, 0)),
        }
        prev = Some(x);
        assert_eq!(&reassemble(&m, &chunks, path), data, "{path}");
        assert_eq!(e.content, Digest::of(data));
    }
    // Packs are filled: every pack but the last reaches the target.
    for c in &m.chunks[..n - 1] {
        assert!(
            c.raw_len as usize >= 4 * MIB,
            "underfull pack {}",
            c.raw_len
        );
    }
}

#[test]
fn a_few_small_files_share_one_pack() {
    let mut b = Built::new();
    for (i, s) in ["hello\n", "world", "#!/bin/sh\necho hi\n"]
        .iter()
        .enumerate()
    {
        b.add(&format!("s{i}"), s.as_bytes());
    }
    let (m, chunks, seen) = b.finish();
    assert_eq!(m.chunks.len(), 1);
    assert_eq!(seen.len(), 1);
    assert_eq!(
        chunks[&m.chunks[0].hash],
        b"hello\nworld#!/bin/sh\necho hi\n"
    );
    for e in &m.entries {
        assert_eq!(e.extents[0].chunk, 0);
    }
    assert_eq!(reassemble(&m, &chunks, "s1"), b"world");
}

#[test]
fn identical_large_files_are_stored_once() {
    let data = random_bytes(6, 6 * MIB);
    let mut one = Built::new();
    one.add("a", &data);
    let (m1, _, _) = one.finish();

    let mut two = Built::new();
    two.add("a", &data);
    two.add("b", &data);
    let (m2, chunks, seen) = two.finish();
    assert_eq!(m2.chunks.len(), m1.chunks.len(), "chunk count unchanged");
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "the sink saw a digest twice");
    assert_eq!(entry(&m2, "a").extents, entry(&m2, "b").extents);
    assert_eq!(reassemble(&m2, &chunks, "b"), data);
}

#[test]
fn identical_small_files_are_stored_once() {
    let same = random_bytes(7, 10 * KIB);
    let other = random_bytes(8, 5 * KIB);
    let mut b = Built::new();
    b.add("a", &same);
    b.add("b", &other);
    b.add("c", &same);
    b.add("d/e", &same);
    let (m, chunks, seen) = b.finish();
    assert_eq!(seen.len(), 1);
    assert_eq!(m.chunks.len(), 1);
    // The pack holds `same` once.
    assert_eq!(m.chunks[0].raw_len as usize, same.len() + other.len());
    assert_eq!(entry(&m, "a").extents, entry(&m, "c").extents);
    assert_eq!(entry(&m, "a").extents, entry(&m, "d/e").extents);
    assert_eq!(reassemble(&m, &chunks, "c"), same);
    assert_eq!(reassemble(&m, &chunks, "b"), other);
}

#[test]
fn identical_small_file_after_its_pack_was_sealed() {
    // The first copy lands in a pack that gets sealed; the second copy must point at that sealed
    // pack, not at the pending one.
    let same = random_bytes(9, 30 * KIB);
    let mut b = Built::new();
    b.add("a", &same);
    for i in 0..200 {
        b.add(&format!("fill{i:03}"), &random_bytes(100 + i, 60 * KIB));
    }
    b.add("z", &same);
    b.add("zz", &random_bytes(99, 100));
    let (m, chunks, _) = b.finish();
    validate(&m).unwrap();
    assert!(m.chunks.len() >= 3);
    assert_eq!(entry(&m, "a").extents, entry(&m, "z").extents);
    assert_eq!(reassemble(&m, &chunks, "z"), same);
    for i in 0..200 {
        let p = format!("fill{i:03}");
        assert_eq!(reassemble(&m, &chunks, &p), random_bytes(100 + i, 60 * KIB));
    }
}

#[test]
fn cdc_shares_chunks_after_an_insert_near_the_start() {
    let original = random_bytes(10, 16 * MIB);
    let mut edited = original.clone();
    let insert = random_bytes(11, 100);
    edited.splice(5000..5000, insert.iter().copied());

    let mut a = Built::new();
    a.add("f", &original);
    let (ma, _, _) = a.finish();
    let mut b = Built::new();
    b.add("f", &edited);
    let (mb, chunks_b, _) = b.finish();
    assert_eq!(reassemble(&mb, &chunks_b, "f"), edited);

    let ha: HashSet<Digest> = ma.chunks.iter().map(|c| c.hash).collect();
    let shared = mb.chunks.iter().filter(|c| ha.contains(&c.hash)).count();
    assert!(
        shared + 2 >= ma.chunks.len() && shared * 2 > ma.chunks.len(),
        "only {shared} of {} chunks shared after a 100-byte insert",
        ma.chunks.len()
    );
}

#[test]
fn empty_file_has_no_extents() {
    let mut b = Built::new();
    b.add("empty", b"");
    b.add_hinted("empty_big_hint", 10 * MIB as u64, b"");
    let (m, _, seen) = b.finish();
    assert!(seen.is_empty());
    assert!(m.chunks.is_empty());
    for p in ["empty", "empty_big_hint"] {
        let e = entry(&m, p);
        assert_eq!(e.kind, EntryKind::File);
        assert_eq!(e.size, 0);
        assert!(e.extents.is_empty());
        assert_eq!(e.content, Digest::of(b""));
    }
    assert_eq!(decode(&encode(&m).unwrap()).unwrap(), m);
}

#[test]
fn content_digest_is_blake3_of_the_file() {
    let small = random_bytes(12, 1000);
    let large = random_bytes(13, 2 * MIB + 17);
    let mut b = Built::new();
    b.add("large", &large);
    b.add("small", &small);
    let (m, _, _) = b.finish();
    assert_eq!(
        entry(&m, "small").content.0,
        *blake3::hash(&small).as_bytes()
    );
    assert_eq!(
        entry(&m, "large").content.0,
        *blake3::hash(&large).as_bytes()
    );
}

#[test]
fn builder_tree_with_dirs_symlinks_and_files_roundtrips() {
    let mut b = LayerBuilder::new();
    let mut sink = |_c: NewChunk| -> Result<(), std::io::Error> { Ok(()) };
    b.add_dir(Meta {
        path: b"dir".to_vec(),
        mode: 0o040755,
        mtime_sec: -5,
        mtime_nsec: 999_999_999,
    });
    b.add_symlink(meta("dir/link"), b"../target with space\n".to_vec());
    b.add_file(meta("dir/file"), 3, &b"abc"[..], &mut sink)
        .unwrap();
    b.set_root(RootMeta {
        mode: 0o700,
        mtime_sec: -7,
        mtime_nsec: 8,
    });
    b.flush(&mut sink).unwrap();
    b.set_stored(0, 12, Vec::new());
    let m = b.finish("ws".into(), "l".into(), vec!["p".into()], 0);
    let paths: Vec<&[u8]> = m.entries.iter().map(|e| e.path.as_slice()).collect();
    assert_eq!(paths, vec![&b"dir"[..], b"dir/file", b"dir/link"]);
    assert_eq!(entry(&m, "dir").mode, 0o755);
    assert_eq!(m.root.mtime_sec, -7);
    assert_eq!(m.root.mtime_nsec, 8);
    assert_eq!(m.root.mode, 0o700);
    let l = entry(&m, "dir/link");
    assert_eq!(l.kind, EntryKind::Symlink);
    assert_eq!(l.size, l.target.len() as u64);
    assert_eq!(decode(&encode(&m).unwrap()).unwrap(), m);
}

#[test]
fn sink_errors_propagate() {
    let mut b = LayerBuilder::new();
    let mut sink = |_c: NewChunk| -> Result<(), std::io::Error> {
        Err(std::io::Error::other("upload failed"))
    };
    let data = random_bytes(14, MIB);
    let err = b
        .add_file(meta("f"), data.len() as u64, &data[..], &mut sink)
        .unwrap_err();
    assert!(err.to_string().contains("upload failed"));
}

#[test]
fn compress_and_verify_roundtrip() {
    for (seed, len) in [(20u64, 1usize), (21, 1000), (22, 64 * KIB), (23, 4 * MIB)] {
        let raw = random_bytes(seed, len);
        let stored = compress(&raw).unwrap();
        let info = ChunkInfo {
            hash: Digest::of(&raw),
            raw_len: raw.len() as u32,
            stored_len: stored.len() as u32,
        };
        let v = VerifiedChunk::from_stored(&info, &stored).unwrap();
        assert_eq!(v.data().as_ref(), raw.as_slice());
        assert_eq!(v.hash(), info.hash);
        assert_eq!(v.len(), len);
    }
    // Compressible data too.
    let raw = vec![b'x'; 3 * MIB];
    let stored = compress(&raw).unwrap();
    assert!(stored.len() < raw.len() / 100);
    let info = ChunkInfo {
        hash: Digest::of(&raw),
        raw_len: raw.len() as u32,
        stored_len: stored.len() as u32,
    };
    assert_eq!(
        VerifiedChunk::from_stored(&info, &stored)
            .unwrap()
            .data()
            .as_ref(),
        raw.as_slice()
    );
}

#[test]
fn every_chunk_of_a_built_layer_verifies() {
    // End to end within the format: build, compress, verify each chunk against the manifest's
    // chunk table, reassemble every file from verified chunks.
    let mut b = Built::new();
    let big = random_bytes(30, 5 * MIB);
    b.add("a/big", &big);
    let mut smalls = BTreeMap::new();
    for i in 0..50u64 {
        let d = random_bytes(31 + i, (i as usize + 1) * 100);
        b.add(&format!("a/s{i:02}"), &d);
        smalls.insert(format!("a/s{i:02}"), d);
    }
    let (m, chunks, _) = b.finish();
    let mut verified = HashMap::new();
    for c in &m.chunks {
        let stored = compress(&chunks[&c.hash]).unwrap();
        assert_eq!(stored.len() as u32, c.stored_len);
        let v = VerifiedChunk::from_stored(c, &stored).unwrap();
        verified.insert(c.hash, v.data().to_vec());
    }
    assert_eq!(reassemble(&m, &verified, "a/big"), big);
    for (p, d) in &smalls {
        assert_eq!(&reassemble(&m, &verified, p), d);
    }
}

#[test]
fn manifest_generator_covers_the_interesting_cases() {
    // Guards the round-trip property against a generator that silently stops producing the
    // cases it is meant to cover.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = manifest_strategy();
    let (mut files_with_extents, mut symlinks, mut dirs, mut non_utf8, mut spaces_newlines) =
        (0, 0, 0, 0, 0);
    let (mut negative_mtime, mut nanos, mut nested) = (0, 0, 0);
    for _ in 0..200 {
        let m = strategy.new_tree(&mut runner).unwrap().current();
        validate(&m).unwrap();
        for e in &m.entries {
            match e.kind {
                EntryKind::File if !e.extents.is_empty() => files_with_extents += 1,
                EntryKind::Symlink => symlinks += 1,
                EntryKind::Dir => dirs += 1,
                _ => {}
            }
            non_utf8 += usize::from(std::str::from_utf8(&e.path).is_err());
            spaces_newlines += usize::from(e.path.contains(&b' ') || e.path.contains(&b'\n'));
            negative_mtime += usize::from(e.mtime_sec < 0);
            nanos += usize::from(e.mtime_nsec > 0);
            nested += usize::from(e.path.contains(&b'/'));
        }
    }
    for (what, n) in [
        ("files with extents", files_with_extents),
        ("symlinks", symlinks),
        ("dirs", dirs),
        ("non-UTF-8 paths", non_utf8),
        ("paths with spaces or newlines", spaces_newlines),
        ("negative mtimes", negative_mtime),
        ("mtimes with nanoseconds", nanos),
        ("nested paths", nested),
    ] {
        assert!(n >= 20, "only {n} {what} in 200 generated manifests");
    }
}
