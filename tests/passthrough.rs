//! FUSE passthrough (`--passthrough`): a file whose chunks are all in the disk cache is
//! materialized there once (checked against the manifest's whole-file BLAKE3) and opened with
//! that copy as backing file — the kernel then reads it without asking wsfs. A copy that changed
//! since it was made is dropped and made again from verified chunks; where the kernel refuses
//! the backing file, the file is read through wsfs as usual.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn tree(s: &Scratch) -> PathBuf {
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut rng = Rng::new(5);
    std::fs::write(src.join("big"), rng.bytes(3 << 20)).unwrap();
    std::fs::write(src.join("small"), rng.bytes(10 << 10)).unwrap();
    src
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn counters(s: &Scratch, mp: &Path) -> (u64, u64, u64, u64) {
    let st = mount_status(s, mp);
    (
        st.passthrough_opens,
        st.passthrough_fallbacks,
        st.files_materialized,
        st.reads,
    )
}

/// Reads `big` until an open of it is served by passthrough (its chunks reach the disk cache
/// shortly after the first read).
fn until_passthrough(s: &Scratch, mp: &Path, src: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert_eq!(read(&mp.join("big")), read(&src.join("big")));
        if counters(s, mp).0 > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no passthrough open: {:?}",
            mount_status(s, mp)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn mount_pt(s: &Scratch, mp: &Path, cache: &Path) -> Mounted {
    mount(
        s,
        &[s.store("st")],
        "ws",
        &["l"],
        mp,
        &[
            "--cache-dir",
            cache.to_str().unwrap(),
            "--passthrough",
            "--prefetch",
            "none",
        ],
    )
}

#[test]
fn cached_files_are_read_from_a_verified_copy_and_a_changed_copy_is_remade() {
    require_fuse();
    let s = Scratch::new();
    let src = tree(&s);
    assert_ok(&persist(&s, &[s.store("st")], "ws", "l", &src, &[]));
    let cache = s.path("cache");

    // Mount 1: the first read goes through wsfs (nothing cached yet); once the chunks are on
    // disk, an open is served by a materialized copy.
    let mp = s.mkdir("mnt1");
    let m = mount_pt(&s, &mp, &cache);
    until_passthrough(&s, &mp, &src);
    let (opens, fallbacks, made, reads) = counters(&s, &mp);
    assert_eq!((fallbacks, made), (0, 1), "one copy made, none refused");
    // Passthrough reads never reach wsfs: the READ count stands still.
    assert_eq!(read(&mp.join("big")), read(&src.join("big")));
    let after = counters(&s, &mp);
    assert_eq!(after.3, reads, "no FUSE READ for a passthrough file");
    assert_eq!(after.0, opens + 1);
    // Small files are not worth a copy: the page cache serves them.
    assert_eq!(read(&mp.join("small")), read(&src.join("small")));
    assert_eq!(counters(&s, &mp).2, 1);
    let copies: Vec<PathBuf> = std::fs::read_dir(cache.join("files"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_none())
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(read(&copies[0]), read(&src.join("big")));
    assert_ok(&s.wsfs(&["umount", mp.to_str().unwrap()]));
    drop(m);

    // Mount 2, same cache: the copy is used at the first open.
    let mp2 = s.mkdir("mnt2");
    let m2 = mount_pt(&s, &mp2, &cache);
    assert_eq!(read(&mp2.join("big")), read(&src.join("big")));
    let (opens, _, made, reads) = counters(&s, &mp2);
    assert_eq!(
        (opens, made, reads),
        (1, 0, 0),
        "served by the copy at once"
    );
    assert_ok(&s.wsfs(&["umount", mp2.to_str().unwrap()]));
    drop(m2);

    // A changed copy (one byte, same size, even with its old mtime put back) is not used: it
    // is made again from verified chunks, and the reader gets the workspace's bytes.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::options()
            .write(true)
            .open(&copies[0])
            .unwrap();
        let mtime = f.metadata().unwrap().modified().unwrap();
        f.write_all_at(b"X", 1000).unwrap();
        f.set_modified(mtime).unwrap();
    }
    let mp3 = s.mkdir("mnt3");
    let _m3 = mount_pt(&s, &mp3, &cache);
    assert_eq!(read(&mp3.join("big")), read(&src.join("big")));
    let (opens, _, made, _) = counters(&s, &mp3);
    assert_eq!((opens, made), (1, 1), "remade, then served");
    assert_eq!(
        read(&copies[0]),
        read(&src.join("big")),
        "the copy is right again"
    );
    let log = s.daemon_logs();
    assert!(log.contains("changed since it was verified"), "{log}");

    // Refused without a disk cache, before anything starts.
    let o = mount_cmd(
        &s,
        &[s.store("st")],
        "ws",
        &["l"],
        &s.mkdir("x"),
        &["--passthrough"],
    );
    assert_code(&o, 2);
    assert!(
        text(&o).contains("--passthrough needs --cache-dir"),
        "{}",
        text(&o)
    );
}

#[test]
fn attach_with_passthrough_reads_right_through_the_overlay() {
    require_fuse();
    let s = Scratch::new();
    let src = tree(&s);
    assert_ok(&persist(&s, &[s.store("st")], "ws", "l", &src, &[]));
    let cache = s.path("cache");
    // Fill the cache and make the copy with a plain mount first.
    let mp = s.mkdir("mnt");
    let m = mount_pt(&s, &mp, &cache);
    until_passthrough(&s, &mp, &src);
    assert_ok(&s.wsfs(&["umount", mp.to_str().unwrap()]));
    drop(m);
    let at = s.mkdir("checkout");
    let o = s.wsfs(&[
        "attach",
        "--store",
        &s.store("st"),
        "--workspace",
        "ws",
        "--layer",
        "l",
        "--at",
        at.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
        "--passthrough",
        "--scratch",
        s.path("scratch").to_str().unwrap(),
    ]);
    assert_ok(&o);
    let _a = Attached {
        at: at.clone(),
        run_dir: s.run_dir(),
    };
    assert_eq!(read(&at.join("big")), read(&src.join("big")));
    let st = s.wsfs(&["status", at.to_str().unwrap(), "--json"]);
    assert_ok(&st);
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(v["mounts"][0]["passthrough_opens"], 1, "{v}");
    assert_ok(&s.wsfs(&["umount", at.to_str().unwrap()]));
}

#[test]
fn a_refused_backing_file_falls_back_to_reads_through_wsfs() {
    require_fuse();
    run_in_private_namespace("refusal_scenario_in_a_private_namespace");
}

#[test]
#[ignore = "run by a_refused_backing_file_falls_back_to_reads_through_wsfs, in a private mount namespace"]
fn refusal_scenario_in_a_private_namespace() {
    require_fuse();
    assert_in_private_namespace();
    let s = Scratch::new();
    let src = tree(&s);
    assert_ok(&persist(&s, &[s.store("st")], "ws", "l", &src, &[]));
    // The cache on overlayfs: a stacked filesystem, which the kernel refuses as a backing file
    // for a FUSE mount that can itself sit under an overlay (stack depth 1).
    for d in ["lower", "upper", "work", "ovl"] {
        s.mkdir(d);
    }
    let o = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            s.path("lower").display(),
            s.path("upper").display(),
            s.path("work").display()
        ))
        .arg(s.path("ovl"))
        .output()
        .unwrap();
    assert_ok(&o);
    let cache = s.path("ovl/cache");
    let mp = s.mkdir("mnt");
    let m = mount_pt(&s, &mp, &cache);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert_eq!(read(&mp.join("big")), read(&src.join("big")));
        let (opens, fallbacks, _, _) = counters(&s, &mp);
        assert_eq!(
            opens, 0,
            "the kernel must refuse a backing file on overlayfs"
        );
        if fallbacks > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{:?}", mount_status(&s, &mp));
        std::thread::sleep(Duration::from_millis(100));
    }
    // Reads keep going through wsfs, verified, and the refusal is logged once.
    let before = counters(&s, &mp).3;
    assert_eq!(read(&mp.join("big")), read(&src.join("big")));
    assert!(counters(&s, &mp).3 >= before);
    assert_ok(&s.wsfs(&["umount", mp.to_str().unwrap()]));
    drop(m);
    let log = s.daemon_logs();
    assert_eq!(
        log.matches("refused a passthrough backing file").count(),
        1,
        "{log}"
    );
    assert_ok(
        &std::process::Command::new("umount")
            .arg(s.path("ovl"))
            .output()
            .unwrap(),
    );
}
