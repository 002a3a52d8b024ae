//! The kernel cache warm-up of `--prefetch tree|all` on real FUSE mounts: what it pushes is
//! exactly the source, reads and walks after it send no FUSE request, a missing chunk still
//! reads as EIO (never as an empty or zero-filled file), the page-cache budget holds, and an
//! unmount or SIGTERM in the middle of it succeeds.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use wsfs::fs::warmup::WarmupState;
use wsfs::ops::service::control::MountStatus;

/// Mounts layer l1 of workspace ws from store s1 at `mp`.
fn mount_s1(s: &Scratch, mp: &Path, flags: &[&str]) -> Mounted {
    mount(s, &[s.store("s1")], "ws", &["l1"], mp, flags)
}

/// Waits (bounded) until the warm-up has ended; returns the final status.
fn wait_warm(s: &Scratch, mp: &Path) -> MountStatus {
    let t = Instant::now();
    loop {
        let st = mount_status(s, mp);
        if st.warmup.state != WarmupState::Running {
            return st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "warm-up never ended: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ops(st: &MountStatus) -> BTreeMap<String, u64> {
    st.fuse_ops.clone()
}

/// FUSE requests of each op between two snapshots (ops that did not change are left out).
fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0);
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

/// Directories (the root included) and regular files of 1 byte to 1 MiB in a source tree.
fn census(src: &Path) -> (u64, u64, u64) {
    let (mut dirs, mut small, mut small_bytes) = (0, 0, 0);
    for e in walkdir::WalkDir::new(src).follow_links(false) {
        let e = e.expect("walk");
        let m = e.path().symlink_metadata().expect("meta");
        if m.is_dir() {
            dirs += 1;
        } else if m.is_file() && m.len() > 0 && m.len() <= 1 << 20 {
            small += 1;
            small_bytes += m.len();
        }
    }
    (dirs, small, small_bytes)
}

fn setup(s: &Scratch, n: usize, big_mib: usize) -> std::path::PathBuf {
    let src = s.path("src");
    make_tree(&src, n, big_mib, 7);
    assert_ok(&persist(s, &[s.store("s1")], "ws", "l1", &src, &[]));
    src
}

#[test]
fn prefetch_all_pushes_the_tree_into_the_kernel_and_reads_send_no_request() {
    require_fuse();
    let s = Scratch::new();
    let src = setup(&s, 1500, 3);
    let (dirs, small, small_bytes) = census(&src);
    let mp = s.mkdir("mnt");
    let _m = mount_s1(&s, &mp, &["--prefetch", "all"]);
    let st = wait_warm(&s, &mp);
    let w = &st.warmup;
    assert_eq!(w.state, WarmupState::Done, "{st:?}");
    assert_eq!(w.dirs_listed, dirs, "{st:?}");
    assert_eq!(w.files_stored, small, "{st:?}");
    assert_eq!(w.bytes_stored, small_bytes, "{st:?}");
    assert_eq!(w.files_failed, 0, "{st:?}");
    assert_eq!(w.files_over_budget, 0, "{st:?}");
    // The warm-up is not a reader: no reads or served bytes are counted for it.
    assert_eq!(st.reads, 0, "{st:?}");
    let before = ops(&st);

    // Every name, attribute, listing, link and byte, compared with the source.
    let n = compare_trees(&src, &mp);
    assert!(n > 1500, "compared {n} entries");

    let after = ops(&mount_status(&s, &mp));
    let d = delta(&before, &after);
    // Only the one file over 1 MiB (big.bin) and the symlinks reach the daemon; no lookup, no
    // listing, no read of a small file. (The kernel sends one OPEN per mount, to learn that
    // wsfs needs none.)
    for (op, count) in &d {
        assert!(
            op == "read" || op == "readlink" || op == "statfs" || (op == "open" && *count == 1),
            "{op}: {count} requests after the warm-up: {d:?}"
        );
    }
    let big_reads = d.get("read").copied().unwrap_or(0);
    assert!(big_reads >= 1, "big.bin was read through wsfs: {d:?}");
    // big.bin is 3 MiB, read in 1 MiB requests or less; small files would add hundreds.
    assert!(
        big_reads <= 48,
        "{big_reads} READs: small files were not served from the page cache"
    );
}

#[test]
fn prefetch_tree_caches_names_and_attributes_but_not_contents() {
    require_fuse();
    let s = Scratch::new();
    let src = setup(&s, 600, 0);
    let (dirs, _, _) = census(&src);
    let mp = s.mkdir("mnt");
    let _m = mount_s1(&s, &mp, &["--prefetch", "tree"]);
    let st = wait_warm(&s, &mp);
    assert_eq!(st.warmup.state, WarmupState::Done, "{st:?}");
    assert_eq!(st.warmup.dirs_listed, dirs, "{st:?}");
    assert_eq!(st.warmup.files_stored, 0, "{st:?}");
    // No chunk was fetched: `tree` is names only.
    assert_eq!(st.cache.fetched, 0, "{st:?}");
    let before = ops(&st);
    // A walk with stat of every entry: answered by the kernel alone.
    let mut seen = 0;
    for e in walkdir::WalkDir::new(&mp).follow_links(false) {
        let e = e.expect("walk");
        e.path().symlink_metadata().expect("stat");
        seen += 1;
    }
    assert!(seen > 600);
    let d = delta(&before, &ops(&mount_status(&s, &mp)));
    assert!(
        d.keys().all(|k| k == "statfs"),
        "the walk after the warm-up sent requests: {d:?}"
    );
    // Contents still come from wsfs, on demand, and are right.
    assert_eq!(
        std::fs::read(mp.join("src/dup1")).unwrap(),
        std::fs::read(src.join("src/dup1")).unwrap()
    );
    let d = delta(&before, &ops(&mount_status(&s, &mp)));
    assert_eq!(d.get("read").copied(), Some(1), "{d:?}");
}

#[test]
fn a_missing_chunk_is_left_to_reads_which_fail_with_eio() {
    require_fuse();
    let s = Scratch::new();
    let src = s.path("src");
    std::fs::create_dir_all(src.join("zkeep")).unwrap();
    std::fs::create_dir_all(src.join("lost")).unwrap();
    std::fs::write(src.join("zkeep/a.txt"), b"still here").unwrap();
    // Random (incompressible) and large enough that most of `lost/` fills a pack chunk of its
    // own (packs close at ~4 MiB, in path order; `zkeep/` sorts last).
    for i in 0..80 {
        std::fs::write(
            src.join(format!("lost/{i:02}.bin")),
            Rng::new(i).bytes(60_000),
        )
        .unwrap();
    }
    assert_ok(&persist(&s, &[s.store("s1")], "ws", "l1", &src, &[]));
    let gone = first_chunk_of(&s.path("s1"), "lost/40.bin");
    assert_ne!(gone, first_chunk_of(&s.path("s1"), "zkeep/a.txt"));
    std::fs::remove_file(s.path("s1").join(wsfs::manifest::keys::chunk(&gone))).unwrap();
    // The files of the removed pack, from the manifest.
    let man = std::fs::read_dir(s.path("s1/manifests"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let man = wsfs::manifest::decode(&std::fs::read(man).unwrap()).unwrap();
    let lost: Vec<String> = man
        .entries
        .iter()
        .filter(|e| {
            e.extents
                .iter()
                .any(|x| man.chunks[x.chunk as usize].hash == gone)
        })
        .map(|e| String::from_utf8_lossy(&e.path).into_owned())
        .collect();
    assert!(lost.len() > 10, "{lost:?}");

    let mp = s.mkdir("mnt");
    let _m = mount_s1(&s, &mp, &["--prefetch", "all"]);
    let st = wait_warm(&s, &mp);
    assert_eq!(st.warmup.state, WarmupState::Done, "{st:?}");
    assert_eq!(st.warmup.files_failed, lost.len() as u64, "{st:?}");
    // Nothing was read yet: the warm-up's misses are not reader failures.
    assert_eq!(st.eio, 0, "{st:?}");
    assert!(st.failures.is_empty(), "{st:?}");
    for p in &lost {
        let e = std::fs::read(mp.join(p)).expect_err("a file of the missing chunk must not read");
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{p}: {e}");
    }
    assert_eq!(
        std::fs::read(mp.join("zkeep/a.txt")).unwrap(),
        b"still here"
    );
    for i in 0..80 {
        let p = format!("lost/{i:02}.bin");
        if !lost.contains(&p) {
            assert!(
                std::fs::read(mp.join(&p)).unwrap() == Rng::new(i).bytes(60_000),
                "{p}"
            );
        }
    }
    let st = mount_status(&s, &mp);
    assert!(st.eio >= lost.len() as u64, "{st:?}");
}

#[test]
fn the_page_cache_budget_is_respected_and_the_rest_reads_on_demand() {
    require_fuse();
    let s = Scratch::new();
    let src = setup(&s, 400, 0);
    let (_, small, _) = census(&src);
    let mp = s.mkdir("mnt");
    let budget = 100_000u64;
    let _m = mount_s1(
        &s,
        &mp,
        &["--prefetch", "all", "--prefetch-page-cache", "100000"],
    );
    let st = wait_warm(&s, &mp);
    let w = &st.warmup;
    assert_eq!(w.state, WarmupState::Done, "{st:?}");
    let stored = w.files_stored;
    assert!(stored > 0, "{st:?}");
    assert!(w.bytes_stored <= budget, "{st:?}");
    assert_eq!(stored + w.files_over_budget, small, "{st:?}");
    compare_trees(&src, &mp);
}

/// A tree of many directories, so the warm-up is still listing when the test acts.
fn wide_tree(s: &Scratch) {
    let src = s.path("src");
    for i in 0..6000 {
        let d = src.join(format!("d{:03}/e{i}", i % 300));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("f"), format!("{i}")).unwrap();
    }
    assert_ok(&persist(s, &[s.store("s1")], "ws", "l1", &src, &[]));
}

#[test]
fn wsfs_umount_during_the_warm_up_is_not_refused_as_busy() {
    require_fuse();
    let s = Scratch::new();
    wide_tree(&s);
    let mp = s.mkdir("mnt");
    let mut caught_running = 0;
    for _ in 0..5 {
        let m = mount_s1(&s, &mp, &["--prefetch", "all"]);
        let pid = m.pid().expect("daemon pid");
        let running = mount_status(&s, &mp).warmup.state == WarmupState::Running;
        let o = s.wsfs(&["umount", mp.to_str().unwrap()]);
        assert_ok(&o);
        assert!(!is_mounted(&mp), "still mounted after wsfs umount");
        assert!(
            !wsfs::ops::linux::process::pid_alive(pid),
            "daemon {pid} still running"
        );
        if running {
            caught_running += 1;
        }
    }
    assert!(
        caught_running > 0,
        "the warm-up had always finished before the unmount: the test did not test anything"
    );
}

#[test]
fn sigterm_during_the_warm_up_unmounts_cleanly() {
    require_fuse();
    let s = Scratch::new();
    wide_tree(&s);
    let mp = s.mkdir("mnt");
    let logs = || -> String { s.daemon_logs() };
    let stopped_by_signal = |l: &str| {
        l.lines()
            .any(|l| l.contains("kernel cache warm-up finished") && l.contains("stopped"))
    };
    for _ in 0..8 {
        let m = mount_s1(&s, &mp, &["--prefetch", "tree"]);
        let pid = m.pid().expect("daemon pid");
        if mount_status(&s, &mp).warmup.state != WarmupState::Running {
            // Finished before we could act; try again.
            assert_ok(&s.wsfs(&["umount", mp.to_str().unwrap()]));
            continue;
        }
        // SAFETY: signalling the daemon this test started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let t = Instant::now();
        while wsfs::ops::linux::process::pid_alive(pid) {
            assert!(t.elapsed() < Duration::from_secs(15), "daemon did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!is_mounted(&mp), "SIGTERM left the mount behind");
        // Always a clean unmount, never a lazy detach with the warm-up holding the tree.
        let l = logs();
        assert!(!l.contains("detached lazily"), "{l}");
        // The warm-up may still have finished between the status check and the signal; only
        // a run where the signal stopped it tests the stop.
        if stopped_by_signal(&l) {
            return;
        }
    }
    panic!("the warm-up always finished before the signal: the test did not test anything");
}

#[test]
fn reading_one_small_file_pushes_its_pack_into_the_page_cache() {
    require_fuse();
    let s = Scratch::new();
    let src = s.path("src");
    std::fs::create_dir_all(src.join("pkg")).unwrap();
    std::fs::create_dir_all(src.join("other")).unwrap();
    let body = |i: usize| Rng::new(i as u64).bytes(500 + 97 * i);
    for i in 0..40 {
        std::fs::write(src.join(format!("pkg/f{i:02}.js")), body(i)).unwrap();
    }
    // Same pack (small files are packed in path order), another directory.
    std::fs::write(src.join("other/x.js"), b"elsewhere").unwrap();
    // 100 KB: a chunk of its own, never a pack neighbour.
    let big = Rng::new(99).bytes(100_000);
    std::fs::write(src.join("other/big.bin"), &big).unwrap();
    assert_ok(&persist(&s, &[s.store("s1")], "ws", "l1", &src, &[]));

    // The default mount (`--prefetch tree`): one READ for the whole pack.
    let mp = s.mkdir("mnt");
    let m = mount_s1(&s, &mp, &[]);
    assert_eq!(wait_warm(&s, &mp).warmup.state, WarmupState::Done);
    let before = ops(&mount_status(&s, &mp));
    assert_eq!(std::fs::read(mp.join("pkg/f07.js")).unwrap(), body(7));
    let t = Instant::now();
    loop {
        let st = mount_status(&s, &mp);
        // 39 other pkg files and other/x.js.
        if st.warmup.neighbour_files_stored == 40 {
            let bytes: u64 = (0..40)
                .filter(|&i| i != 7)
                .map(|i| body(i).len() as u64)
                .sum::<u64>()
                + 9;
            assert_eq!(st.warmup.neighbour_bytes_stored, bytes, "{st:?}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "pack not pushed: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in 0..40 {
        let p = format!("pkg/f{i:02}.js");
        assert!(std::fs::read(mp.join(&p)).unwrap() == body(i), "{p}");
    }
    assert_eq!(std::fs::read(mp.join("other/x.js")).unwrap(), b"elsewhere");
    let d = delta(&before, &ops(&mount_status(&s, &mp)));
    assert_eq!(d.get("read").copied(), Some(1), "{d:?}");
    // A file alone in its chunk is not pushed: reading it is a READ.
    assert!(std::fs::read(mp.join("other/big.bin")).unwrap() == big);
    let d = delta(&before, &ops(&mount_status(&s, &mp)));
    assert!(d.get("read").copied().unwrap_or(0) >= 2, "{d:?}");
    assert_eq!(mount_status(&s, &mp).warmup.neighbour_files_stored, 40);
    drop(m);

    // `--prefetch none`: nothing is pushed; every file is a READ.
    let mp = s.mkdir("mnt-none");
    let _m = mount_s1(&s, &mp, &["--prefetch", "none"]);
    for i in 0..40 {
        assert!(std::fs::read(mp.join(format!("pkg/f{i:02}.js"))).unwrap() == body(i));
    }
    let st = mount_status(&s, &mp);
    assert_eq!(st.warmup.state, WarmupState::Off, "{st:?}");
    assert_eq!(st.warmup.neighbour_files_stored, 0, "{st:?}");
    assert_eq!(st.fuse_ops.get("read"), Some(&40), "{st:?}");
}
