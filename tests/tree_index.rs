//! The tree index on real mounts (issue 16): a version-2 manifest is served in place, a
//! version-1 manifest still mounts (built into the same layout) and shows the same tree, and a
//! damaged index fails loudly where it is damaged — EIO on that entry and on a listing of its
//! directory — while the rest of the tree keeps serving and the daemon keeps running.

mod common;
use common::*;
use std::path::Path;
use wsfs::manifest::tree::Tree;
use wsfs::manifest::{decode, encode_v1, Head};

fn small_tree(src: &Path) {
    std::fs::create_dir_all(src.join("d/sub")).unwrap();
    std::fs::create_dir_all(src.join("other")).unwrap();
    std::fs::write(src.join("d/ok.txt"), b"fine bytes\n").unwrap();
    std::fs::write(src.join("d/bad.txt"), b"this entry will be damaged\n").unwrap();
    std::fs::write(src.join("d/sub/deep.txt"), b"deep\n").unwrap();
    std::fs::write(src.join("other/x.bin"), vec![7u8; 100_000]).unwrap();
    std::os::unix::fs::symlink("d/ok.txt", src.join("link")).unwrap();
}

#[test]
fn a_version_1_manifest_still_mounts_and_shows_the_same_tree() {
    require_fuse();
    let s = Scratch::new();
    let src = s.path("src");
    make_tree(&src, 120, 3, 16);
    let stores = vec![s.store("st")];
    persist_ws_l1(&s, &stores, &src);
    let st = s.path("st");
    let v2 = layer_manifest(&st, "ws", "l1");
    assert_eq!(v2[8..12], 3u32.to_le_bytes(), "persist writes version 3");

    let mp = s.mkdir("mnt");
    {
        let m = mount(&s, &stores, "ws", &["l1"], &mp, &[]);
        let st = mount_status(&s, &m.mountpoint);
        assert!(st.tree.in_place, "a v3 layer is served in place: {st:?}");
        assert!(compare_trees(&src, &mp) > 120);
    }

    // The same layer as an older wsfs wrote it.
    let v1 = encode_v1(&decode(&v2).unwrap()).unwrap();
    assert_eq!(v1[8..12], 1u32.to_le_bytes());
    replace_layer_manifest(&st, "ws", "l1", &v1);
    let m = mount(&s, &stores, "ws", &["l1"], &mp, &[]);
    let status = mount_status(&s, &m.mountpoint);
    assert!(!status.tree.in_place, "a v1 layer is built: {status:?}");
    assert!(status.tree.bytes > 0);
    assert!(compare_trees(&src, &mp) > 120);
}

/// Byte offset of inode `ino`'s record in a tree index (the layout in manifest/tree.rs:
/// the RECS section's offset is the first section entry of the header, records are 48 bytes).
fn rec_at(tree: &[u8], ino: u64) -> usize {
    let off = u64::from_le_bytes(tree[24..32].try_into().unwrap()) as usize;
    off + (ino as usize - 1) * 48
}

/// The layer's manifest on a file:// store replaced by one whose tree index says d/bad.txt is
/// one byte longer than its extents: the digest matches (as a hostile or buggy writer could
/// make it), only the index is wrong.
fn damage_layer(st: &Path) {
    let m = decode(&layer_manifest(st, "ws", "l1")).unwrap();
    let tree = Tree::build(&m.entries, m.chunks.clone(), &m.frames, m.root).unwrap();
    let d = tree.lookup(1, b"d").unwrap().unwrap();
    let bad = tree.lookup(d, b"bad.txt").unwrap().unwrap();
    let mut raw = tree.as_bytes().to_vec();
    let at = rec_at(&raw, bad);
    let size = u64::from_le_bytes(raw[at..at + 8].try_into().unwrap());
    assert_eq!(size, 27, "found the record of d/bad.txt");
    raw[at..at + 8].copy_from_slice(&(size + 1).to_le_bytes());
    let mut digests = vec![0u8; 32];
    for e in &m.entries {
        digests.extend_from_slice(&e.content.0);
    }
    let head = Head::of(&m);
    replace_layer_manifest(st, "ws", "l1", &manifest_v2_bytes(&head, &raw, &digests));
}

#[test]
fn a_damaged_tree_index_is_refused_and_another_stores_copy_is_mounted() {
    require_fuse();
    let s = Scratch::new();
    let src = s.path("src");
    small_tree(&src);
    let (a, b) = (s.store("a"), s.store("b"));
    persist_ws_l1(&s, &[a.clone(), b.clone()], &src);
    damage_layer(&s.path("a"));

    // Only the damaged copy: nothing is mounted, and the error says why.
    let mp = s.mkdir("mnt");
    let (r, _) = try_mount(&s, None, std::slice::from_ref(&a), "ws", &["l1"], &mp, &[]);
    let o = r.err().expect("a damaged tree index must not mount");
    assert_eq!(
        o.status.code(),
        Some(4),
        "an integrity failure: {}",
        text(&o)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("damaged") && err.contains("extents do not add up"),
        "the error names the damage: {}",
        text(&o)
    );
    assert!(!is_mounted(&mp));

    // The damaged store first, a good one second: the good copy is mounted, whole.
    let m = mount(&s, &[a, b], "ws", &["l1"], &mp, &[]);
    compare_trees(&src, &mp);
    let st = mount_status(&s, &m.mountpoint);
    assert!(st.tree.in_place, "{st:?}");
}
