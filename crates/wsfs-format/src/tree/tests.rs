//! Unit tests of the tree index: round trips, per-use and whole-tree checks, damage.

use super::*;
use crate::types::{Entry, RootMeta};

fn entry(path: &str, kind: EntryKind, size: u64, extents: Vec<Extent>) -> Entry {
    Entry {
        path: path.as_bytes().to_vec(),
        kind,
        mode: 0o644,
        mtime_sec: 7,
        mtime_nsec: 9,
        size,
        target: if kind == EntryKind::Symlink {
            b"t/x".to_vec()
        } else {
            vec![]
        },
        extents,
        content: Digest([size as u8; 32]),
    }
}

fn chunk(h: u8, raw_len: u32) -> ChunkInfo {
    ChunkInfo {
        hash: Digest([h; 32]),
        raw_len,
        stored_len: 5,
    }
}

fn sample() -> Tree {
    let x = |chunk, offset, len| Extent { chunk, offset, len };
    let big = CONTENT_DIGEST_MIN_BYTES;
    let entries = vec![
        entry("a", EntryKind::Dir, 0, vec![]),
        entry("a/b", EntryKind::File, 3, vec![x(0, 0, 3)]),
        entry("a/b-", EntryKind::Symlink, 3, vec![]),
        entry(
            "z",
            EntryKind::File,
            big,
            vec![x(1, 0, 100), x(2, 0, (big - 100) as u32)],
        ),
    ];
    let chunks = vec![chunk(1, 10), chunk(2, 100), chunk(3, (big - 100) as u32)];
    Tree::build(&entries, chunks, &[], RootMeta::default()).unwrap()
}

#[test]
fn a_tree_reads_back_as_it_was_given() {
    let x = |chunk, offset, len| Extent { chunk, offset, len };
    let big = CONTENT_DIGEST_MIN_BYTES;
    // "a/b/" is a directory whose parent "a/b" is a file: refused.
    let bad = vec![
        entry("a", EntryKind::Dir, 0, vec![]),
        entry("a/b", EntryKind::File, 3, vec![x(0, 0, 3)]),
        entry("a/b-", EntryKind::Symlink, 3, vec![]),
        entry("a/b/", EntryKind::Dir, 0, vec![]),
    ];
    assert!(Tree::build(&bad, vec![chunk(1, 10)], &[], RootMeta::default()).is_err());
    let t = sample();
    assert_eq!(t.len(), 5);
    let a = t.lookup(ROOT, b"a").unwrap().unwrap();
    let b = t.lookup(a, b"b").unwrap().unwrap();
    let n = t.get(b).unwrap();
    assert_eq!(
        (n.name(), n.kind(), n.size(), n.mtime()),
        (&b"b"[..], EntryKind::File, 3, (7, 9))
    );
    assert_eq!(n.path(), b"a/b");
    assert_eq!(n.parent(), a);
    assert_eq!(n.extents(), &[x(0, 0, 3)]);
    assert_eq!(n.content(), None, "small files keep no digest");
    let l = t.get(t.lookup(a, b"b-").unwrap().unwrap()).unwrap();
    assert_eq!(l.target(), b"t/x");
    assert!(l.extents().is_empty() && l.children().is_empty());
    let z = t.get(t.lookup(ROOT, b"z").unwrap().unwrap()).unwrap();
    assert_eq!(z.ext_starts(), &[0, 100]);
    assert_eq!(z.content(), Some(&Digest([big as u8; 32])));
    assert_eq!(t.get(ROOT).unwrap().path(), b"");
    let names: Vec<&[u8]> = t
        .get(a)
        .unwrap()
        .children()
        .iter()
        .map(|c| t.get(u64::from(*c)).unwrap().name())
        .collect();
    assert_eq!(names, [&b"b"[..], b"b-"]);
    assert_eq!(t.lookup(a, b"nope").unwrap(), None);
    assert!(t.get(0).is_none() && t.get(6).is_none());
    assert_eq!(t.next_chunk(0), Some(1));
    assert_eq!(t.next_chunk(2), None);
    assert_eq!(t.total_bytes(), 3 + big);
}

#[test]
fn a_tree_reopens_from_its_bytes() {
    let t = sample();
    let bytes = t.as_bytes().to_vec();
    let mut buf = vec![0u64; bytes.len().div_ceil(8)];
    bytemuck::cast_slice_mut::<u64, u8>(&mut buf)[..bytes.len()].copy_from_slice(&bytes);
    let back = Tree::open(buf, bytes.len()).unwrap();
    assert_eq!(back.as_bytes(), &bytes[..]);
    let a = back.lookup(ROOT, b"a").unwrap().unwrap();
    assert_eq!(
        back.get(back.lookup(a, b"b-").unwrap().unwrap())
            .unwrap()
            .target(),
        b"t/x"
    );
}

#[test]
fn children_sort_by_name_bytes_not_by_path() {
    // As paths, "d/a b" sorts before "d/a/x" (' ' < '/'); as names, "a" < "a b".
    let entries = vec![
        entry("d", EntryKind::Dir, 0, vec![]),
        entry("d/a b", EntryKind::File, 0, vec![]),
        entry("d/a", EntryKind::Dir, 0, vec![]),
    ];
    let mut sorted = entries.clone();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let t = Tree::build(&sorted, vec![], &[], RootMeta::default()).unwrap();
    let d = t.lookup(ROOT, b"d").unwrap().unwrap();
    let names: Vec<&[u8]> = t
        .get(d)
        .unwrap()
        .children()
        .iter()
        .map(|c| t.get(u64::from(*c)).unwrap().name())
        .collect();
    assert_eq!(names, [&b"a"[..], b"a b"]);
    assert!(t.lookup(d, b"a b").unwrap().is_some() && t.lookup(d, b"a").unwrap().is_some());
}

type Edit = fn(&mut Rec);

/// Flips a record field in place and reopens: each kind of damage is refused where used.
fn damaged(edit: Edit) -> Tree {
    let t = sample();
    let mut bytes = t.as_bytes().to_vec();
    let recs = t.sections[RECS].clone();
    let r: &mut [Rec] = bytemuck::cast_slice_mut(&mut bytes[recs]);
    edit(&mut r[1]); // inode 2: "a"
    edit(&mut r[2]); // inode 3: "a/b"
    let mut buf = vec![0u64; bytes.len().div_ceil(8)];
    bytemuck::cast_slice_mut::<u64, u8>(&mut buf)[..bytes.len()].copy_from_slice(&bytes);
    Tree::open(buf, bytes.len()).unwrap()
}

#[test]
fn damaged_records_are_errors_where_they_are_used() {
    let cases: [(&str, Edit); 6] = [
        ("kind", |r: &mut Rec| r.kind = 9),
        ("name", |r: &mut Rec| r.name_off = u32::MAX),
        ("parent", |r: &mut Rec| r.parent = 40),
        ("run", |r: &mut Rec| r.count = 1000),
        ("size", |r: &mut Rec| r.size += 1),
        ("mode", |r: &mut Rec| r.mode = 0o170000),
    ];
    for (what, edit) in cases {
        let t = damaged(edit);
        let a = t.node(2);
        let b = t.node(3);
        assert!(a.is_err() || b.is_err(), "{what}: damage not noticed");
        // Lookups through a damaged entry are errors too, never a panic.
        let _ = t.lookup(ROOT, b"a");
        let _ = t.lookup(2, b"b");
    }
}

#[test]
fn check_passes_a_built_tree_and_refuses_every_damage() {
    sample().check().unwrap();
    let cases: [Edit; 4] = [
        |r| r.size += 1,
        |r| r.kind = 9,
        |r| r.parent = 1, // "a/b" claims the root: listed by "a", not its parent
        |r| r.name_len = 0,
    ];
    for edit in cases {
        assert!(damaged(edit).check().is_err());
    }
    // An extent outside its chunk (chunk 0 has 10 bytes; "a/b" uses 0..3 of it).
    let t = sample();
    let mut bytes = t.as_bytes().to_vec();
    let xs = t.sections[EXTENTS].clone();
    let x: &mut [Extent] = bytemuck::cast_slice_mut(&mut bytes[xs]);
    x[0].offset = 9;
    let mut buf = vec![0u64; bytes.len().div_ceil(8)];
    bytemuck::cast_slice_mut::<u64, u8>(&mut buf)[..bytes.len()].copy_from_slice(&bytes);
    let t = Tree::open(buf, bytes.len()).unwrap();
    assert!(t.get(3).is_some(), "a per-use check cannot see it");
    assert_eq!(
        t.check().unwrap_err().why,
        "an extent lies outside its chunk"
    );
}

#[test]
fn arbitrary_bytes_never_panic() {
    let t = sample();
    let good = t.as_bytes().to_vec();
    let mut rng = 0x9e3779b97f4a7c15u64;
    for round in 0..2000 {
        let mut bytes = good.clone();
        for _ in 0..1 + round % 8 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let i = (rng as usize) % bytes.len();
            bytes[i] = (rng >> 32) as u8;
        }
        let len = if round % 5 == 0 {
            (rng as usize >> 8) % (bytes.len() + 1)
        } else {
            bytes.len()
        };
        let mut buf = vec![0u64; len.div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut buf)[..len].copy_from_slice(&bytes[..len]);
        if let Ok(t) = Tree::open(buf, len) {
            let _ = t.check();
            exercise(&t);
        }
    }
}

/// Every reader path over a tree, for the never-panic tests.
pub(crate) fn exercise(t: &Tree) {
    for ino in 0..t.len() as u64 + 2 {
        if let Ok(Some(n)) = t.node(ino) {
            let _ = (
                n.name(),
                n.target(),
                n.extents(),
                n.ext_starts(),
                n.content(),
                n.path(),
            );
            for c in n.children() {
                let _ = t.child(ino, u64::from(*c));
            }
            for name in [&b"a"[..], b"b", b"z", b"b-"] {
                let _ = t.lookup(ino, name);
            }
        }
    }
    for i in 0..t.chunk_count() as u32 + 1 {
        let _ = (t.chunk(i), t.next_chunk(i));
    }
    let _ = t.chunks_in_path_order();
}
