//! Incremental persist: the persist index lets a re-persist read only what changed, and never
//! makes a wrong or incomplete layer. Real binary, file:// stores, real FUSE mounts to check
//! what a downstream job would see.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

/// `(unchanged, read)` from the summary's index line; None when the index was not used.
fn index_counts(o: &std::process::Output) -> Option<(u64, u64)> {
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out.lines().find(|l| l.trim_start().starts_with("index:"))?;
    let num_before = |word: &str| -> Option<u64> {
        let at = line.find(word)?;
        line[..at]
            .split_whitespace()
            .last()?
            .trim_start_matches('(')
            .parse()
            .ok()
    };
    Some((num_before(" files unchanged")?, num_before(" read;")?))
}

fn index_line(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .find(|l| l.trim_start().starts_with("index:"))
        .unwrap_or_default()
        .to_string()
}

fn files_in(root: &Path) -> u64 {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter(|e| e.as_ref().is_ok_and(|e| e.file_type().is_file()))
        .count() as u64
}

/// Files whose ctime is within the racy window of a persist are read again by the next one; the
/// tests wait that out so that a tree they just made counts as settled.
fn settle() {
    std::thread::sleep(Duration::from_millis(1100));
}

/// What a job mounting `layer` sees is exactly `src`.
fn assert_mounts_as(s: &Scratch, stores: &[String], layer: &str, src: &Path) {
    require_fuse();
    let mp = s.mkdir(&format!("mnt-{layer}-{}", std::process::id()));
    let _m = mount(s, stores, "ws", &[layer], &mp, &["--prefetch", "none"]);
    assert!(compare_trees(src, &mp) > 0);
}

#[test]
fn a_re_persist_reads_only_what_changed_and_the_layer_is_the_new_tree() {
    let s = Scratch::new();
    let src = s.path("src");
    make_tree(&src, 300, 3, 11);
    settle();
    let st = vec![s.store("s1")];
    let total = files_in(&src);

    let first = persist(&s, &st, "ws", "l", &src, &[]);
    assert_ok(&first);
    assert!(index_line(&first).contains("none yet"), "{}", text(&first));
    let idx: Vec<_> = std::fs::read_dir(s.index_dir())
        .expect("the index directory is made")
        .flatten()
        .collect();
    assert_eq!(idx.len(), 1, "one index file for this tree and layer");
    assert_eq!(
        idx[0].metadata().unwrap().permissions().mode() & 0o777,
        0o600
    );

    let again = persist(&s, &st, "ws", "l", &src, &[]);
    assert_ok(&again);
    assert_eq!(index_counts(&again), Some((total, 0)), "{}", text(&again));
    assert!(text(&again).contains(" 0 new chunks"), "{}", text(&again));

    // Changes of every kind: content and size, a same-size rewrite of part of a large file, a
    // new file, a removed file, a mode change.
    std::fs::write(src.join("src/file 0.txt"), b"now with content").unwrap();
    let big = src.join("big.bin");
    let mut bytes = std::fs::read(&big).unwrap();
    bytes[1 << 20..(1 << 20) + 4096].fill(0xAB);
    std::fs::write(&big, &bytes).unwrap();
    std::fs::write(src.join("docs/new file"), b"new").unwrap();
    std::fs::remove_file(src.join("src/lib/file 1.txt")).unwrap();
    std::fs::set_permissions(src.join("run.sh"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let total = files_in(&src);
    let changed = persist(&s, &st, "ws", "l", &src, &[]);
    assert_ok(&changed);
    assert_eq!(
        index_counts(&changed),
        Some((total - 4, 4)),
        "exactly the changed, new and re-moded files are read: {}",
        text(&changed)
    );
    assert_mounts_as(&s, &st, "l", &src);
}

#[test]
fn a_same_size_change_with_its_mtime_put_back_is_read_again() {
    let s = Scratch::new();
    let src = s.path("src");
    make_tree(&src, 40, 0, 12);
    let f = src.join("src/file 5.txt");
    std::fs::write(&f, b"original-content").unwrap();
    settle();
    let st = vec![s.store("s1")];
    assert_ok(&persist(&s, &st, "ws", "l", &src, &[]));
    let before = std::fs::metadata(&f).unwrap();
    // Same size, and the mtime restored as `touch -r` or a tar extract would: only the ctime
    // says the file changed.
    std::fs::write(&f, b"CHANGED-content!").unwrap();
    let t =
        std::time::UNIX_EPOCH + Duration::new(before.mtime() as u64, before.mtime_nsec() as u32);
    std::fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_modified(t)
        .unwrap();
    let o = persist(&s, &st, "ws", "l", &src, &[]);
    assert_ok(&o);
    let (_, read) = index_counts(&o).expect("index used");
    assert_eq!(read, 1, "{}", text(&o));
    assert_mounts_as(&s, &st, "l", &src);
}

use std::os::unix::fs::MetadataExt;

#[test]
fn files_written_just_before_a_persist_are_read_again_next_time() {
    // A file whose timestamps are within a second of the persist that indexed it may change
    // again without its stat changing (coarse timestamps): the next persist reads it.
    let s = Scratch::new();
    let src = s.path("src");
    make_tree(&src, 40, 0, 13);
    settle();
    std::fs::write(src.join("fresh"), b"written just now").unwrap();
    let st = vec![s.store("s1")];
    assert_ok(&persist(&s, &st, "ws", "l", &src, &[]));
    let o = persist(&s, &st, "ws", "l", &src, &[]);
    assert_ok(&o);
    assert_eq!(
        index_counts(&o),
        Some((files_in(&src) - 1, 1)),
        "{}",
        text(&o)
    );
    // Once it is older than the window, it is reused like the rest.
    settle();
    let o = persist(&s, &st, "ws", "l", &src, &[]);
    assert_ok(&o);
    let (_, read) = index_counts(&o).expect("index used");
    assert_eq!(
        read,
        1,
        "re-read files were indexed by a persist that started just after: {}",
        text(&o)
    );
    settle();
    let o = persist(&s, &st, "ws", "l", &src, &[]);
    assert_eq!(index_counts(&o), Some((files_in(&src), 0)), "{}", text(&o));
}

#[test]
fn a_chunk_a_store_lacks_is_stored_again_before_the_ref() {
    let s = Scratch::new();
    let src = s.path("src");
    make_tree(&src, 100, 2, 14);
    settle();
    let s1 = vec![s.store("s1")];
    assert_ok(&persist(&s, &s1, "ws", "l", &src, &[]));
    // A chunk of the large file vanishes from s1 (a damaged bucket, a lifecycle rule).
    let victim = first_chunk_of(&s.path("s1"), "big.bin");
    let hex = victim.to_hex();
    let path = s.path("s1").join("chunks").join(&hex[..2]).join(&hex);
    std::fs::remove_file(&path).unwrap();
    let o = persist(&s, &s1, "ws", "l", &src, &[]);
    assert_ok(&o);
    assert!(index_line(&o).contains("1 missing"), "{}", text(&o));
    let (_, read) = index_counts(&o).expect("index used");
    assert_eq!(
        read,
        1,
        "only the file naming the missing chunk: {}",
        text(&o)
    );
    assert!(path.exists(), "the chunk is stored again");
    // A second store that has nothing: every chunk is missing there, so every file is read
    // and uploaded to it, and both stores hold a complete layer.
    let both = vec![s.store("s1"), s.store("s2")];
    let o = persist(&s, &both, "ws", "l", &src, &[]);
    assert_ok(&o);
    let empty = walkdir::WalkDir::new(&src)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file() && e.metadata().unwrap().len() == 0)
        .count() as u64;
    assert!(empty > 0);
    assert_eq!(
        index_counts(&o),
        Some((empty, files_in(&src) - empty)),
        "only empty files (no chunks) are reused: {}",
        text(&o)
    );
    for one in [&s.store("s1"), &s.store("s2")] {
        let v = s.wsfs(&[
            "verify",
            "--store",
            one,
            "--workspace",
            "ws",
            "--layer",
            "l",
            "--deep",
        ]);
        assert_ok(&v);
    }
    assert_mounts_as(&s, &[s.store("s2")], "l", &src);
}

#[test]
fn a_damaged_index_costs_a_full_read_never_a_wrong_layer() {
    let s = Scratch::new();
    let src = s.path("src");
    make_tree(&src, 60, 1, 15);
    settle();
    let st = vec![s.store("s1")];
    assert_ok(&persist(&s, &st, "ws", "l", &src, &[]));
    let idx = std::fs::read_dir(s.index_dir())
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&idx).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(&idx, &bytes).unwrap();
    std::fs::write(
        src.join("src/file 3.txt"),
        b"changed after the index was damaged",
    )
    .unwrap();
    settle();
    let o = persist(&s, &st, "ws", "l", &src, &[]);
    assert_ok(&o);
    assert!(index_line(&o).contains("unusable"), "{}", text(&o));
    assert!(index_line(&o).contains("damaged"), "{}", text(&o));
    assert_mounts_as(&s, &st, "l", &src);
    // The persist wrote a good index again.
    settle();
    let o = persist(&s, &st, "ws", "l", &src, &[]);
    assert_eq!(index_counts(&o), Some((files_in(&src), 0)), "{}", text(&o));
}

#[test]
fn no_index_reads_everything_and_leaves_nothing() {
    let s = Scratch::new();
    let src = s.path("src");
    make_tree(&src, 30, 0, 16);
    let st = vec![s.store("s1")];
    let o = persist(&s, &st, "ws", "l", &src, &["--no-index"]);
    assert_ok(&o);
    assert!(index_line(&o).contains("not used"), "{}", text(&o));
    assert!(!s.index_dir().exists(), "no index written");
    // An index directory that cannot be made is a warning, not a failed persist.
    let o = persist(&s, &st, "ws", "l", &src, &["--index-dir", "/dev/null/idx"]);
    assert_ok(&o);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot write the persist index"),
        "{}",
        text(&o)
    );
    // Layers and roots do not share an index.
    settle();
    assert_ok(&persist(&s, &st, "ws", "a", &src, &[]));
    let o = persist(&s, &st, "ws", "b", &src, &[]);
    assert!(index_line(&o).contains("none yet"), "{}", text(&o));
}

#[test]
fn on_s3_an_unchanged_tree_is_confirmed_by_head_and_not_read() {
    let e = common::emulators::env();
    let s = Scratch::new();
    let b = common::emulators::unique("pidx");
    common::emulators::mk_s3(&e, &b);
    let src = s.path("src");
    make_tree(&src, 80, 1, 17);
    settle();
    let st = vec![format!("s3://{b}/p")];
    assert_ok(&persist(&s, &st, "ws", "l", &src, &[]));
    let o = persist(&s, &st, "ws", "l", &src, &[]);
    assert_ok(&o);
    assert_eq!(index_counts(&o), Some((files_in(&src), 0)), "{}", text(&o));
    assert!(
        index_line(&o).contains("stored chunks confirmed"),
        "{}",
        text(&o)
    );
    assert!(!index_line(&o).contains("missing"), "{}", text(&o));
    assert_mounts_as(&s, &st, "l", &src);
}
