//! Fidelity decisions (docs/semantics.md): setuid bits, hard links, files over 4 GiB, sparse
//! files, names with newlines, directory mtimes.

mod common;
use common::*;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};

#[test]
fn setuid_hardlinks_newlines_and_directory_mtimes() {
    require_fuse();
    let s = Scratch::new();
    let src = s.path("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("suid"), b"#!/bin/sh\nid -u\n").unwrap();
    std::fs::set_permissions(src.join("suid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::write(src.join("d/first"), b"linked content").unwrap();
    std::fs::hard_link(src.join("d/first"), src.join("second")).unwrap();
    std::fs::write(src.join("new\nline"), b"nl").unwrap();
    let o = persist(&s, &[s.store("st")], "ws", "l", &src, &[]);
    assert_ok(&o);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("newline"),
        "a newline in a name is warned about: {}",
        text(&o)
    );
    let mp = s.mkdir("mnt");
    let _m = mount(&s, &[s.store("st")], "ws", &["l"], &mp, &[]);
    // setuid kept in the mode, never honoured: the mount is nosuid.
    assert_eq!(
        std::fs::metadata(mp.join("suid")).unwrap().mode() & 0o7777,
        0o4755
    );
    let entry = wsfs::ops::linux::mountinfo::read_mounts()
        .unwrap()
        .into_iter()
        .find(|e| e.mount_point == mp)
        .unwrap();
    assert!(entry.options.split(',').any(|o| o == "nosuid"));
    // Hard links become two files with the same content (stored once), link count 1 each.
    let (a, b) = (
        std::fs::metadata(mp.join("d/first")).unwrap(),
        std::fs::metadata(mp.join("second")).unwrap(),
    );
    assert_eq!((a.nlink(), b.nlink()), (1, 1));
    assert_ne!(a.ino(), b.ino());
    assert_eq!(std::fs::read(mp.join("second")).unwrap(), b"linked content");
    // A name with a newline.
    assert_eq!(std::fs::read(mp.join("new\nline")).unwrap(), b"nl");
    // Directory mtimes (and the root's) with nanoseconds.
    compare_trees(&src, &mp);
    let (x, y) = (
        std::fs::metadata(&src).unwrap(),
        std::fs::metadata(&mp).unwrap(),
    );
    assert_eq!(
        (x.mtime(), x.mtime_nsec(), x.mode() & 0o7777),
        (y.mtime(), y.mtime_nsec(), y.mode() & 0o7777)
    );
}

#[test]
fn sparse_file_larger_than_4_gib() {
    require_fuse();
    let s = Scratch::new();
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let size: u64 = (4 << 30) + (300 << 20) + 12345;
    let f = std::fs::File::create(src.join("sparse.img")).unwrap();
    f.set_len(size).unwrap();
    // Data at the start, across the 4 GiB boundary, and at the end.
    let marks: [(u64, &[u8]); 3] = [
        (0, b"head"),
        ((4 << 30) - 2, b"boundary"),
        (size - 4, b"tail"),
    ];
    for (off, data) in marks {
        f.write_all_at(data, off).unwrap();
    }
    drop(f);
    let o = persist(&s, &[s.store("st")], "ws", "l", &src, &[]);
    assert_ok(&o);
    // Zeros deduplicate: a 4.3 GiB sparse file costs a handful of chunks.
    assert!(chunk_files(&s.path("st")).len() < 20, "{}", text(&o));
    let mp = s.mkdir("mnt");
    let _m = mount(&s, &[s.store("st")], "ws", &["l"], &mp, &[]);
    assert_eq!(
        std::fs::metadata(mp.join("sparse.img")).unwrap().len(),
        size
    );
    let g = std::fs::File::open(mp.join("sparse.img")).unwrap();
    for (off, data) in marks {
        let mut buf = vec![0u8; data.len()];
        g.read_exact_at(&mut buf, off).unwrap();
        assert_eq!(buf, data, "at {off}");
    }
    let mut zeros = vec![1u8; 1 << 20];
    g.read_exact_at(&mut zeros, (4 << 30) + (100 << 20))
        .unwrap();
    assert!(
        zeros.iter().all(|b| *b == 0),
        "holes read as zeros past 4 GiB"
    );
    // Reading at the very end returns exactly the tail, then EOF.
    let mut buf = vec![0u8; 100];
    let n = g.read_at(&mut buf, size - 4).unwrap();
    assert_eq!(&buf[..n], b"tail");
    // st_blocks counts distinct content, so the file is seen as sparse (`du`, cp --sparse=auto):
    // its repeated zero chunks count once.
    let m = std::fs::metadata(mp.join("sparse.img")).unwrap();
    assert!(
        m.blocks() * 512 < size / 16,
        "a sparse file reports its distinct content, not {} blocks",
        m.blocks()
    );
}

#[test]
fn block_counts_are_the_distinct_content_of_a_file() {
    require_fuse();
    let s = Scratch::new();
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut rng = Rng::new(9);
    // Ordinary files: their size, rounded up to 512-byte blocks, like a local filesystem's
    // apparent size.
    for (name, len) in [
        ("tiny", 3usize),
        ("page", 4096),
        ("odd", 70_001),
        ("big", 9 << 20),
    ] {
        std::fs::write(src.join(name), rng.bytes(len)).unwrap();
    }
    // A 64 MiB file that is a hole with a few bytes in the middle.
    let f = std::fs::File::create(src.join("holey")).unwrap();
    f.set_len(64 << 20).unwrap();
    f.write_all_at(b"middle", 32 << 20).unwrap();
    drop(f);
    std::fs::write(src.join("empty"), b"").unwrap();
    assert_ok(&persist(&s, &[s.store("st")], "ws", "l", &src, &[]));
    let mp = s.mkdir("mnt");
    let _m = mount(&s, &[s.store("st")], "ws", &["l"], &mp, &[]);
    for (name, len) in [
        ("tiny", 3u64),
        ("page", 4096),
        ("odd", 70_001),
        ("big", 9 << 20),
        ("empty", 0),
    ] {
        let m = std::fs::metadata(mp.join(name)).unwrap();
        assert_eq!(m.len(), len, "{name}");
        assert_eq!(m.blocks(), len.div_ceil(512), "{name}: blocks");
    }
    let m = std::fs::metadata(mp.join("holey")).unwrap();
    assert_eq!(m.len(), 64 << 20);
    assert!(
        m.blocks() * 512 <= 16 << 20,
        "the hole counts once: {} blocks for 64 MiB",
        m.blocks()
    );
    assert!(m.blocks() > 0);
    // `du` agrees, and a sparse-aware copy makes a sparse file that compares equal.
    let o = std::process::Command::new("cp")
        .arg("--sparse=auto")
        .arg(mp.join("holey"))
        .arg(s.path("copy"))
        .output()
        .unwrap();
    assert_ok(&o);
    let copy = std::fs::metadata(s.path("copy")).unwrap();
    assert!(
        copy.blocks() * 512 < 64 << 20,
        "cp --sparse=auto kept the copy sparse: {} blocks",
        copy.blocks()
    );
    assert_eq!(
        std::fs::read(s.path("copy")).unwrap(),
        std::fs::read(src.join("holey")).unwrap()
    );
}
