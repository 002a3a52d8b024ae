//! The lazy mount through the real binary and a real FUSE mount: fidelity, failover, EIO,
//! refusals, concurrency and clean unmount.

mod common;
use common::*;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

fn setup(s: &Scratch, n: usize, big_mib: usize) -> std::path::PathBuf {
    let src = s.path("src");
    make_tree(&src, n, big_mib, 42);
    assert_ok(&persist(
        s,
        &[s.store("s1"), s.store("s2")],
        "ws",
        "l1",
        &src,
        &[],
    ));
    src
}

#[test]
fn mounted_tree_is_identical_to_its_source() {
    require_fuse();
    let s = Scratch::new();
    let src = setup(&s, 3000, 12);
    let mp = s.mkdir("mnt");
    let m = mount(&s, &[s.store("s1"), s.store("s2")], "ws", &["l1"], &mp, &[]);
    let n = compare_trees(&src, &mp);
    assert!(n > 3000, "compared {n} entries");
    // rsync agrees: no differences in content, links, perms, times.
    let o = Command::new("rsync")
        .args(["-rlptDnc", "--delete", "-i"])
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", mp.display()))
        .output();
    if let Ok(o) = o {
        assert!(o.status.success(), "rsync failed: {}", text(&o));
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            "",
            "rsync lists differences"
        );
    }
    // Inode numbers are stable for the life of the mount.
    let i1 = std::fs::metadata(mp.join("src/dup1")).unwrap().ino();
    let i2 = std::fs::metadata(mp.join("src/dup1")).unwrap().ino();
    assert_eq!(i1, i2);
    // The tree is read-only.
    let e = std::fs::write(mp.join("new"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    // Opening an existing file for writing fails too (opens never reach the daemon after the
    // first: the kernel's no-open mode; the read-only mount refuses writes in the VFS).
    for (w, rw) in [(true, false), (false, true)] {
        let e = std::fs::OpenOptions::new()
            .read(rw)
            .write(true)
            .open(mp.join("run.sh"))
            .unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::EROFS),
            "write={w} rw={rw}: {e}"
        );
    }
    assert_eq!(
        std::fs::read(mp.join("run.sh")).unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
    // Mount options and names.
    let entry = wsfs::ops::linux::mountinfo::read_mounts()
        .unwrap()
        .into_iter()
        .find(|e| e.mount_point == mp)
        .expect("in mount table");
    assert_eq!(entry.fs_type, "fuse.wsfs");
    assert_eq!(entry.source, "wsfs:ws");
    for opt in ["ro", "nosuid", "nodev"] {
        assert!(
            entry.options.split(',').any(|o| o == opt),
            "{opt} in {}",
            entry.options
        );
    }
    // Clean unmount: the daemon exits, the mount table is as before.
    let pid = m.pid().expect("daemon pid in runtime record");
    assert_ok(&s.wsfs(&["umount", mp.to_str().unwrap()]));
    assert!(!is_mounted(&mp));
    assert!(
        !wsfs::ops::linux::process::pid_alive(pid),
        "daemon {pid} still running after umount"
    );
    let ours = s.dir.path().display().to_string();
    assert!(
        !mount_table().iter().any(|m| m.starts_with(&ours)),
        "nothing of this test is left mounted"
    );
}

#[test]
fn every_chunk_missing_on_the_primary_is_served_by_the_secondary() {
    require_fuse();
    let s = Scratch::new();
    let src = setup(&s, 500, 6);
    let removed = remove_chunks(&s.path("s1"));
    let mp = s.mkdir("mnt");
    let _m = mount(&s, &[s.store("s1"), s.store("s2")], "ws", &["l1"], &mp, &[]);
    compare_trees(&src, &mp);
    let st = mount_status(&s, &mp);
    assert_eq!(
        st.failovers, removed as u64,
        "one failover per distinct chunk: {st:?}"
    );
    assert_eq!(st.eio, 0, "{st:?}");
    assert_eq!(st.stores[0].requests["not_found"], removed as u64, "{st:?}");
}

#[test]
fn all_providers_missing_a_chunk_is_eio_never_bad_data() {
    require_fuse();
    let s = Scratch::new();
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("zero"), b"").unwrap();
    let big = Rng::new(5).bytes(5 << 20);
    std::fs::write(src.join("big.bin"), &big).unwrap();
    std::fs::write(src.join("small.txt"), b"hello").unwrap();
    assert_ok(&persist(
        &s,
        &[s.store("s1"), s.store("s2")],
        "ws",
        "l1",
        &src,
        &[],
    ));
    for st in ["s1", "s2"] {
        remove_chunks(&s.path(st));
    }
    let mp = s.mkdir("mnt");
    let _m = mount(&s, &[s.store("s1"), s.store("s2")], "ws", &["l1"], &mp, &[]);
    // cat fails with "Input/output error" and exit 1.
    let o = Command::new("cat")
        .arg(mp.join("small.txt"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Input/output error"),
        "{}",
        text(&o)
    );
    assert!(o.stdout.is_empty(), "no bytes reach the reader");
    // pread in the middle of a file.
    let f = std::fs::File::open(mp.join("big.bin")).unwrap();
    let mut buf = vec![0u8; 4096];
    let e = f.read_at(&mut buf, 3 << 20).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    // Metadata is local: stat and ls still work, sizes are right, empty files read empty.
    assert_eq!(
        std::fs::metadata(mp.join("big.bin")).unwrap().len(),
        big.len() as u64
    );
    assert_eq!(std::fs::read(mp.join("zero")).unwrap(), b"");
    let names: Vec<_> = std::fs::read_dir(&mp)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 3);
    // The failure is counted and in the ledger with every provider's outcome.
    let st = mount_status(&s, &mp);
    assert!(st.eio >= 2, "{st:?}");
    let f0 = &st.failures[0];
    assert!(
        f0.path.ends_with(".txt") || f0.path.ends_with(".bin"),
        "{st:?}"
    );
    assert_eq!(f0.providers.len(), 2, "{st:?}");
    assert!(f0.providers[0].contains("not found"), "{st:?}");
}

#[test]
fn corrupt_chunk_on_primary_is_never_served() {
    require_fuse();
    let s = Scratch::new();
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let data = Rng::new(3).bytes(3 << 20);
    std::fs::write(src.join("f.bin"), &data).unwrap();
    assert_ok(&persist(
        &s,
        &[s.store("s1"), s.store("s2")],
        "ws",
        "l1",
        &src,
        &[],
    ));
    // Same length, wrong bytes on the primary; truncated on... nothing else.
    for c in chunk_files(&s.path("s1")) {
        let mut b = std::fs::read(&c).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 0xff;
        std::fs::write(&c, b).unwrap();
    }
    let mp = s.mkdir("mnt");
    let _m = mount(&s, &[s.store("s1"), s.store("s2")], "ws", &["l1"], &mp, &[]);
    assert!(std::fs::read(mp.join("f.bin")).unwrap() == data);
    let st = mount_status(&s, &mp);
    assert!(st.stores[0].requests["corrupt"] >= 1, "{st:?}");
}

#[test]
fn unknown_workspace_or_layer_is_refused_with_exit_3() {
    require_fuse();
    let s = Scratch::new();
    setup(&s, 10, 0);
    let mp = s.mkdir("mnt");
    for (ws, layer) in [("ws", "nope"), ("other", "l1")] {
        let o = mount_cmd(&s, &[s.store("s1"), s.store("s2")], ws, &[layer], &mp, &[]);
        assert_code(&o, 3);
        let e = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(e.contains("missed on every provider"), "{e}");
        assert!(
            e.contains("/s1: not found") && e.contains("/s2: not found"),
            "each provider's outcome: {e}"
        );
        assert!(!is_mounted(&mp), "nothing mounted");
    }
    // The mountpoint is untouched.
    assert_eq!(std::fs::read_dir(&mp).unwrap().count(), 0);
}

#[test]
fn unusable_mountpoints_are_refused_with_exit_6() {
    require_fuse();
    let s = Scratch::new();
    setup(&s, 10, 0);
    let st = [s.store("s1")];
    // Missing.
    let o = mount_cmd(&s, &st, "ws", &["l1"], &s.path("missing"), &[]);
    assert_code(&o, 6);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("create the directory"),
        "{}",
        text(&o)
    );
    // A file, not a directory.
    std::fs::write(s.path("file"), b"").unwrap();
    assert_code(&mount_cmd(&s, &st, "ws", &["l1"], &s.path("file"), &[]), 6);
    // Already a mount.
    let mp = s.mkdir("mnt");
    let _m = mount(&s, &st, "ws", &["l1"], &mp, &[]);
    let o = mount_cmd(&s, &st, "ws", &["l1"], &mp, &[]);
    assert_code(&o, 6);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already a mount point"),
        "{}",
        text(&o)
    );
}

#[test]
fn sixteen_threads_reading_random_ranges_all_match() {
    require_fuse();
    let s = Scratch::new();
    let src = setup(&s, 400, 20);
    let mp = s.mkdir("mnt");
    let _m = mount(
        &s,
        &[s.store("s1"), s.store("s2")],
        "ws",
        &["l1"],
        &mp,
        &["--memory-cache", "8M"],
    );
    let files: Vec<std::path::PathBuf> = walkdir::WalkDir::new(&src)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().strip_prefix(&src).unwrap().to_path_buf())
        .collect();
    let files = std::sync::Arc::new(files);
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let files = files.clone();
            let (src, mp) = (src.clone(), mp.clone());
            std::thread::spawn(move || {
                let mut rng = Rng::new(1000 + t);
                for _ in 0..150 {
                    let rel = if rng.below(4) == 0 {
                        std::path::PathBuf::from("big.bin")
                    } else {
                        files[rng.below(files.len() as u64) as usize].clone()
                    };
                    let want = std::fs::read(src.join(&rel)).unwrap();
                    let f = std::fs::File::open(mp.join(&rel)).unwrap();
                    let off = rng.below(want.len() as u64 + 1);
                    let len = rng.below(300_000) as usize;
                    let mut buf = vec![0u8; len];
                    let mut got = 0;
                    while got < len {
                        let n = f.read_at(&mut buf[got..], off + got as u64).unwrap();
                        if n == 0 {
                            break;
                        }
                        got += n;
                    }
                    let end = (off as usize + len).min(want.len());
                    assert_eq!(got, end - off as usize, "{rel:?} at {off}: short read");
                    assert!(
                        buf[..got] == want[off as usize..end],
                        "{rel:?} at {off}+{len}: bytes differ"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("reader thread");
    }
}

#[test]
fn sigterm_unmounts_cleanly_and_disk_cache_serves_a_second_mount() {
    require_fuse();
    let s = Scratch::new();
    let src = setup(&s, 100, 4);
    let mp = s.mkdir("mnt");
    let cache = s.path("cache");
    let args = ["--cache-dir", cache.to_str().unwrap()];
    let m = mount(&s, &[s.store("s1")], "ws", &["l1"], &mp, &args);
    compare_trees(&src, &mp);
    let pid = m.pid().unwrap();
    // SAFETY: signalling our own test daemon.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let t = std::time::Instant::now();
    while is_mounted(&mp) && t.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!is_mounted(&mp), "SIGTERM unmounts");
    drop(m);
    // With every chunk gone from the store, a new mount still reads from the disk cache.
    remove_chunks(&s.path("s1"));
    let _m2 = mount(&s, &[s.store("s1")], "ws", &["l1"], &mp, &args);
    compare_trees(&src, &mp);
    let st = mount_status(&s, &mp);
    assert!(st.cache.disk_hits > 0, "{st:?}");
    assert_eq!(st.eio, 0, "{st:?}");
}

#[test]
fn a_real_tree_nobody_here_wrote_compares_identical_with_rsync() {
    require_fuse();
    // /usr/include: thousands of real files, nested dirs and symlinks, from Debian packages.
    let real = Path::new("/usr/include");
    assert!(real.is_dir(), "/usr/include is missing (install libc6-dev)");
    let s = Scratch::new();
    assert_ok(&persist(&s, &[s.store("s1")], "ws", "real", real, &[]));
    let mp = s.mkdir("mnt");
    let _m = mount(&s, &[s.store("s1")], "ws", &["real"], &mp, &[]);
    let o = Command::new("rsync")
        .args(["-rlptDnc", "--delete", "-i"])
        .arg("/usr/include/")
        .arg(format!("{}/", mp.display()))
        .output()
        .expect("rsync is installed by scripts/test.sh");
    assert!(o.status.success(), "rsync failed: {}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "",
        "rsync lists differences"
    );
    assert!(compare_trees(real, &mp) > 1000);
}

#[test]
fn ownership_follows_uid_gid_flags() {
    require_fuse();
    let s = Scratch::new();
    setup(&s, 5, 0);
    let mp = s.mkdir("mnt");
    // Without --allow-other that user could not even reach the mount: refused, with the fix.
    let o = mount_cmd(
        &s,
        &[s.store("s1")],
        "ws",
        &["l1"],
        &mp,
        &["--uid", "1234", "--gid", "5678"],
    );
    assert_code(&o, 2);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--allow-other"),
        "{}",
        text(&o)
    );
    assert!(!is_mounted(&mp));
    let _m = mount(
        &s,
        &[s.store("s1")],
        "ws",
        &["l1"],
        &mp,
        &["--uid", "1234", "--gid", "5678", "--allow-other"],
    );
    let m = std::fs::symlink_metadata(mp.join("run.sh")).unwrap();
    assert_eq!((m.uid(), m.gid()), (1234, 5678));
    let m = std::fs::metadata(&mp).unwrap();
    assert_eq!((m.uid(), m.gid()), (1234, 5678));
}

#[test]
fn a_file_that_cannot_be_read_fails_the_persist() {
    require_fuse();
    // A wsfs mount whose chunks are gone is a directory whose files fail to read with EIO, even
    // for root: persisting a tree that contains it must fail, not store a short file.
    let s = Scratch::new();
    setup(&s, 5, 1);
    for st in ["s1", "s2"] {
        remove_chunks(&s.path(st));
    }
    let outer = s.mkdir("outer");
    std::fs::write(outer.join("fine.txt"), b"ok").unwrap();
    let mp = s.mkdir("outer/broken");
    let _m = mount(&s, &[s.store("s1"), s.store("s2")], "ws", &["l1"], &mp, &[]);
    let o = persist(&s, &[s.store("s3")], "ws", "outer", &outer, &[]);
    assert_code(&o, 1);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot read"),
        "{}",
        text(&o)
    );
    assert!(
        !s.path("s3/workspaces/ws/layers/outer").exists(),
        "no ref committed"
    );
}

#[test]
fn prefetch_all_fills_the_cache_and_read_ahead_is_raised() {
    require_fuse();
    let s = Scratch::new();
    let src = setup(&s, 300, 6);
    let chunks = chunk_files(&s.path("s1")).len() as u64;
    let mp = s.mkdir("mnt");
    let _m = mount(
        &s,
        &[s.store("s1")],
        "ws",
        &["l1"],
        &mp,
        &["--prefetch", "all", "--read-ahead-kb", "2048"],
    );
    let t = std::time::Instant::now();
    loop {
        let st = mount_status(&s, &mp);
        if st.cache.prefetched == chunks {
            assert_eq!(st.cache.fetched, chunks, "{st:?}");
            break;
        }
        assert!(
            t.elapsed().as_secs() < 30,
            "prefetch did not finish: {st:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Everything is local now: the store can vanish and every file still reads right.
    std::fs::remove_dir_all(s.path("s1/chunks")).unwrap();
    compare_trees(&src, &mp);
    let entry = wsfs::ops::linux::mountinfo::read_mounts()
        .unwrap()
        .into_iter()
        .find(|e| e.mount_point == mp)
        .unwrap();
    let ra = std::fs::read_to_string(format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        entry.major, entry.minor
    ))
    .unwrap();
    assert_eq!(ra.trim(), "2048");
}

#[test]
fn allow_other_lets_an_ordinary_user_read_with_modes_enforced() {
    require_fuse();
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new();
    // The job user must be able to reach the mountpoint.
    std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("public.txt"), b"everyone").unwrap();
    std::fs::write(src.join("private.txt"), b"owner only").unwrap();
    std::fs::set_permissions(
        src.join("private.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    assert_ok(&persist(&s, &[s.store("s1")], "ws", "l1", &src, &[]));
    let as_nobody = |path: &Path| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
            .arg(path)
            .output()
            .unwrap()
    };
    // Without --allow-other, another user cannot read root's mount at all.
    let mp = s.mkdir("closed");
    let m = mount(&s, &[s.store("s1")], "ws", &["l1"], &mp, &[]);
    let o = as_nobody(&mp.join("public.txt"));
    assert!(!o.status.success(), "{}", text(&o));
    drop(m);
    // With it, the kernel enforces the persisted modes.
    let mp = s.mkdir("open");
    let _m = mount(&s, &[s.store("s1")], "ws", &["l1"], &mp, &["--allow-other"]);
    let o = as_nobody(&mp.join("public.txt"));
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(o.stdout, b"everyone");
    let o = as_nobody(&mp.join("private.txt"));
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Permission denied"),
        "{}",
        text(&o)
    );
}

#[test]
fn ioctls_are_answered_not_a_tty_quietly_and_counted() {
    require_fuse();
    let s = Scratch::new();
    setup(&s, 5, 0);
    let mp = s.mkdir("mnt");
    let _m = mount(
        &s,
        &[s.store("s1")],
        "ws",
        &["l1"],
        &mp,
        &["--prefetch", "none"],
    );
    for _ in 0..3 {
        let f = std::fs::File::open(mp.join("run.sh")).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: a valid descriptor; isatty only issues TCGETS.
        assert_eq!(unsafe { libc::isatty(f.as_raw_fd()) }, 0);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ENOTTY)
        );
    }
    let st = mount_status(&s, &mp);
    assert!(st.fuse_ops["ioctl"] >= 3, "{st:?}");
    let log = s.daemon_logs();
    assert!(!log.contains("Not Implemented"), "{log}");
}

#[test]
fn seek_data_and_seek_hole_see_one_data_run_and_no_warning() {
    require_fuse();
    let s = Scratch::new();
    setup(&s, 5, 0);
    let mp = s.mkdir("mnt");
    let _m = mount(
        &s,
        &[s.store("s1")],
        "ws",
        &["l1"],
        &mp,
        &["--prefetch", "none"],
    );
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(mp.join("run.sh")).unwrap();
    let size = f.metadata().unwrap().len() as i64;
    assert!(size > 2);
    let fd = f.as_raw_fd();
    // SAFETY: a valid descriptor of an open file.
    let seek = |off: i64, whence: i32| unsafe { libc::lseek(fd, off, whence) };
    assert_eq!(seek(0, libc::SEEK_DATA), 0);
    assert_eq!(seek(1, libc::SEEK_DATA), 1);
    assert_eq!(seek(0, libc::SEEK_HOLE), size, "the only hole is the end");
    assert_eq!(seek(size, libc::SEEK_DATA), -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENXIO)
    );
    let st = mount_status(&s, &mp);
    assert!(st.fuse_ops["lseek"] >= 3, "{st:?}");
    let log = s.daemon_logs();
    assert!(!log.contains("Not Implemented"), "{log}");
}

#[test]
fn reading_a_packed_file_fetches_the_next_packs_in_path_order() {
    require_fuse();
    let s = Scratch::new();
    // Three directories of small files, about one 4 MiB pack each.
    let src = s.path("src");
    let mut rng = Rng::new(8);
    for d in ["a", "b", "c", "d"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
        for i in 0..70 {
            std::fs::write(src.join(format!("{d}/{i:03}")), rng.bytes(60 << 10)).unwrap();
        }
    }
    assert_ok(&persist(&s, &[s.store("s1")], "ws", "l1", &src, &[]));
    let packs = chunk_files(&s.path("s1")).len();
    assert!(packs >= 4, "{packs} packs");
    let mp = s.mkdir("mnt");
    let _m = mount(
        &s,
        &[s.store("s1")],
        "ws",
        &["l1"],
        &mp,
        &["--prefetch", "none"],
    );
    // One file of the first directory: its pack and the two after it come.
    assert_eq!(read_file(&mp.join("a/000")), read_file(&src.join("a/000")));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while mount_status(&s, &mp).cache.fetched < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            mount_status(&s, &mp)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        mount_status(&s, &mp).cache.fetched,
        3,
        "two packs ahead, not more"
    );
    // The next directory's files are there when the reader gets to them.
    let hits = mount_status(&s, &mp).cache.memory_hits;
    assert_eq!(read_file(&mp.join("b/000")), read_file(&src.join("b/000")));
    let st = mount_status(&s, &mp);
    assert!(st.cache.memory_hits > hits, "{st:?}");
}

fn read_file(p: &std::path::Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}
