//! Mount lifecycle: whatever happens to the daemon, the workspace path shows the workspace or
//! fails loudly (EIO/ENOTCONN) — never an empty or different directory — and a mount goes away
//! only when someone asks.
//!
//! * daemon takeover: SIGKILL under every `--prefetch` mode, for `mount` and `attach`; a READ
//!   in flight when the daemon dies; readers in a loop through five kills;
//! * no takeover (keeper and daemon killed, takeover off, crash loop): ENOTCONN, never empty;
//! * SIGTERM while a file is open: the mount keeps serving;
//! * `--all-stale` judged by the kernel, in a private mount namespace;
//! * scratch folders: refused when unsafe, nothing deleted that wsfs did not create;
//! * the default mount is closed to other users, even for what the kernel has cached.

mod common;
#[path = "common/fault_proxy.rs"]
mod fault_proxy;

use common::emulators::*;
use common::*;
use fault_proxy::{Fault, FaultProxy, Matcher, Rule};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A tree of small files in a few directories and one multi-chunk file; persisted as ws/l1 on
/// the file store s1.
fn setup(s: &Scratch) -> PathBuf {
    let src = s.path("src");
    make_tree(&src, 120, 3, 77);
    assert_ok(&persist(s, &[s.store("s1")], "ws", "l1", &src, &[]));
    src
}

fn kill(pid: i32, sig: libc::c_int) {
    assert!(pid > 0);
    // SAFETY: signalling a process this test started (read from its own run dir).
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}

/// Waits until the record shows a daemon other than `old` serving (a finished takeover).
fn wait_replaced(run_dir: &Path, mp: &Path, old: i32) -> i32 {
    let t = Instant::now();
    loop {
        if let Some(r) = read_record(run_dir, mp) {
            if r.pid != old && r.daemon().alive() {
                return r.pid;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no replacement daemon after killing {old}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What a build tool sees at `path` for `dur`: every listing of the top directory must be
/// `names`, `probe` must stat with its size, and its bytes must be `want`. Returns the problems.
fn watch(
    path: &Path,
    names: &BTreeSet<String>,
    probe: &str,
    want: &[u8],
    dur: Duration,
) -> Vec<String> {
    let mut bad = Vec::new();
    let t = Instant::now();
    let mut rounds = 0;
    while t.elapsed() < dur {
        rounds += 1;
        match list_names(path) {
            Ok(got) => {
                if &got != names {
                    bad.push(format!("listing: {got:?}"));
                }
            }
            Err(e) => bad.push(format!("listing: {e}")),
        }
        match std::fs::symlink_metadata(path.join(probe)) {
            Ok(m) if m.len() == want.len() as u64 => {}
            Ok(m) => bad.push(format!("stat: size {}", m.len())),
            Err(e) => bad.push(format!("stat: {e}")),
        }
        match std::fs::read(path.join(probe)) {
            Ok(b) if b == want => {}
            Ok(b) => bad.push(format!("read: {} bytes, different", b.len())),
            Err(e) => bad.push(format!("read: {e}")),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(rounds > 10, "the watch barely ran");
    bad
}

/// The names in a directory, as `ls` sees them: an error from opening it or from any
/// `getdents` call is an error (a dead connection can fail the listing after the open worked;
/// dropping that error would turn a loud failure into an empty directory).
fn list_names(dir: &Path) -> std::io::Result<BTreeSet<String>> {
    std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect()
}

fn top_names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

const MODES: [&str; 4] = ["none", "tree", "chunks", "all"];

#[test]
fn a_killed_daemon_is_replaced_under_every_prefetch_mode_and_the_mount_never_changes() {
    require_fuse();
    let s = Scratch::new();
    let src = setup(&s);
    let names = top_names(&src);
    let probe = "src/lib/file 1.txt";
    let want = std::fs::read(src.join(probe)).unwrap();
    for mode in MODES {
        let mp = s.mkdir(&format!("mnt-{mode}"));
        let m = mount(
            &s,
            &[s.store("s1")],
            "ws",
            &["l1"],
            &mp,
            &["--prefetch", mode],
        );
        assert_eq!(top_names(&mp), names, "{mode}: before the kill");
        let rec = m.record().expect("record");
        let keeper = rec.keeper.expect("a keeper holds the connection");
        kill(rec.pid, libc::SIGKILL);
        let bad = watch(&mp, &names, probe, &want, Duration::from_secs(3));
        assert!(bad.is_empty(), "--prefetch {mode}: after SIGKILL: {bad:?}");
        let new = wait_replaced(&s.run_dir(), &mp, rec.pid);
        let st = mount_status(&s, &mp);
        assert_eq!(st.pid, new, "{st:?}");
        assert_eq!(st.keeper_pid, Some(keeper.pid), "{st:?}");
        assert_eq!(st.takeovers, 1, "{st:?}");
        assert_eq!(st.connection, "served", "{st:?}");
        // The replacement serves the same tree, byte for byte.
        compare_trees(&src, &mp);
        drop(m);
        assert!(!is_mounted(&mp));
        assert!(!keeper.alive(), "keeper gone with the mount");
    }
}

#[test]
fn an_attached_workspace_survives_a_killed_daemon_under_every_prefetch_mode() {
    require_fuse();
    let s = Scratch::new();
    let src = setup(&s);
    let probe = "src/lib/file 1.txt";
    let want = std::fs::read(src.join(probe)).unwrap();
    for mode in MODES {
        let co = s.mkdir(&format!("co-{mode}"));
        std::fs::write(co.join("CHECKOUT.md"), b"the job's own file\n").unwrap();
        let mut names = top_names(&src);
        names.insert("CHECKOUT.md".into());
        let o = s.wsfs(&[
            "attach",
            "--store",
            &s.store("s1"),
            "--workspace",
            "ws",
            "--layer",
            "l1",
            "--at",
            co.to_str().unwrap(),
            "--scratch",
            s.path(&format!("scratch-{mode}")).to_str().unwrap(),
            "--prefetch",
            mode,
        ]);
        assert_ok(&o);
        let _a = Attached {
            at: co.clone(),
            run_dir: s.run_dir(),
        };
        let ws_mount = s
            .run_dir()
            .join("attach")
            .join(wsfs::ops::run_records::mount_id(&co))
            .join("workspace");
        let rec = read_record(&s.run_dir(), &ws_mount).expect("workspace mount record");
        assert_eq!(rec.attached_at.as_deref(), Some(co.as_path()));
        kill(rec.pid, libc::SIGKILL);
        let bad = watch(&co, &names, probe, &want, Duration::from_secs(3));
        assert!(
            bad.is_empty(),
            "attach --prefetch {mode}: after SIGKILL: {bad:?}"
        );
        wait_replaced(&s.run_dir(), &ws_mount, rec.pid);
        // Writes still work, and status shows both layers of the attach.
        std::fs::write(co.join("out.txt"), b"written after the takeover").unwrap();
        let o = s.wsfs(&["status", co.to_str().unwrap(), "--json"]);
        assert_ok(&o);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["attaches"][0]["at"], co.display().to_string(), "{v}");
        assert_eq!(v["attaches"][0]["connection"], "served", "{v}");
        assert_eq!(
            v["mounts"][0]["mountpoint"],
            ws_mount.display().to_string(),
            "{v}"
        );
        assert_eq!(v["mounts"][0]["takeovers"].as_u64(), Some(1), "{v}");
        assert_ok(&s.wsfs(&["umount", co.to_str().unwrap()]));
        assert!(!is_mounted(&co) && !is_mounted(&ws_mount));
        assert_eq!(top_names(&co), BTreeSet::from(["CHECKOUT.md".to_string()]));
    }
}

#[test]
fn a_read_in_flight_when_the_daemon_dies_is_answered_by_the_replacement() {
    require_fuse();
    let e = env();
    let s = Scratch::new();
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let big = Rng::new(5).bytes(3 << 20);
    std::fs::write(src.join("big.bin"), &big).unwrap();
    let b = unique("inflight");
    mk_s3(&e, &b);
    assert_ok(&persist(
        &s,
        &[format!("s3://{b}/p")],
        "ws",
        "l1",
        &src,
        &[],
    ));
    // Every chunk GET takes 1.5 s: the daemon is mid-READ for that long.
    let proxy = FaultProxy::start_in_thread(&e.s3).expect("proxy");
    proxy.add_rule(Rule::always(
        Matcher::MethodAndPath("GET".into(), "chunks/".into()),
        Fault::Delay(Duration::from_millis(1500)),
    ));
    let cfg = s.path("stores.toml");
    write_config(&cfg, &[(format!("s3://{b}/p"), s3_via(&proxy.url()))]);
    let mp = s.mkdir("mnt");
    let o = s.wsfs(&[
        "mount",
        "--config",
        cfg.to_str().unwrap(),
        "--workspace",
        "ws",
        "--layer",
        "l1",
        "--prefetch",
        "none",
        mp.to_str().unwrap(),
    ]);
    assert_ok(&o);
    let m = Mounted {
        mountpoint: mp.clone(),
        run_dir: s.run_dir(),
    };
    let pid = m.pid().expect("daemon");
    let path = mp.join("big.bin");
    let reader = std::thread::spawn(move || std::fs::read(path));
    // Wait until the daemon has taken the READ and is waiting for the store.
    let t = Instant::now();
    while proxy.request_count() == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the read never reached the store"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    kill(pid, libc::SIGKILL);
    let got = reader
        .join()
        .unwrap()
        .expect("the reader got its bytes, not an error");
    assert!(got == big, "the reader got exactly the file's bytes");
    let new = wait_replaced(&s.run_dir(), &mp, pid);
    assert_ne!(new, pid);
    let log = std::fs::read_to_string(wsfs_log(&s, &mp)).unwrap();
    assert!(log.contains("takeover complete"), "{log}");
}

/// The daemon log of the mount at `mp`.
fn wsfs_log(s: &Scratch, mp: &Path) -> PathBuf {
    s.run_dir()
        .join("logs")
        .join(format!("{}.log", wsfs::ops::run_records::mount_id(mp)))
}

#[test]
fn readers_in_a_loop_see_no_error_through_five_kills() {
    require_fuse();
    let s = Scratch::new();
    let src = setup(&s);
    let mp = s.mkdir("mnt");
    let m = mount(
        &s,
        &[s.store("s1")],
        "ws",
        &["l1"],
        &mp,
        &["--prefetch", "none"],
    );
    let files: Vec<(PathBuf, Vec<u8>)> = walkdir::WalkDir::new(&src)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let rel = e.path().strip_prefix(&src).unwrap().to_path_buf();
            (rel, std::fs::read(e.path()).unwrap())
        })
        .collect();
    let files = Arc::new(files);
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..4)
        .map(|i| {
            let (files, stop, reads, mp) = (files.clone(), stop.clone(), reads.clone(), mp.clone());
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                let mut k = i;
                while !stop.load(Ordering::Relaxed) {
                    let (rel, want) = &files[k % files.len()];
                    k += 7;
                    match std::fs::read(mp.join(rel)) {
                        Ok(b) if &b == want => {}
                        Ok(b) => failures.push(format!("{rel:?}: {} bytes, wrong", b.len())),
                        Err(e) => failures.push(format!("{rel:?}: {e}")),
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                }
                failures
            })
        })
        .collect();
    let keeper = m.keeper().expect("keeper");
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(400));
        let pid = m.pid().expect("daemon");
        kill(pid, libc::SIGKILL);
        wait_replaced(&s.run_dir(), &mp, pid);
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let failures: Vec<String> = readers
        .into_iter()
        .flat_map(|r| r.join().unwrap())
        .collect();
    assert!(
        failures.is_empty(),
        "{} failed reads: {failures:?}",
        failures.len()
    );
    assert!(
        reads.load(Ordering::Relaxed) > 100,
        "the readers barely read"
    );
    let st = mount_status(&s, &mp);
    assert_eq!(st.takeovers, 5, "{st:?}");
    assert_eq!(st.keeper_pid, Some(keeper), "{st:?}");
}

fn loud(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOTCONN) | Some(libc::ECONNABORTED) | Some(libc::EIO)
    )
}

/// The workspace path of a mount that lost its connection, as a build tool sees it for a
/// while: what the kernel still has cached is the workspace (the full listing, right sizes and
/// bytes); everything else fails loudly. Never an empty directory, never ENOENT. `untouched`
/// was never looked up since the mount (with `--prefetch none`, nothing is cached for it): it
/// must fail with ENOTCONN.
fn assert_dead_and_loud(
    mp: &Path,
    names: &BTreeSet<String>,
    file: &str,
    want: &[u8],
    untouched: Option<&str>,
) {
    for _ in 0..20 {
        match list_names(mp) {
            Ok(got) => {
                assert_eq!(
                    &got, names,
                    "a listing of the dead mount is the workspace or an error"
                );
            }
            Err(e) => assert!(loud(&e), "listing: {e}"),
        }
        match std::fs::symlink_metadata(mp.join(file)) {
            Ok(m) => assert_eq!(m.len(), want.len() as u64),
            Err(e) => assert!(loud(&e), "stat: {e}"),
        }
        match std::fs::read(mp.join(file)) {
            Ok(b) => assert!(b == want, "read: different bytes"),
            Err(e) => assert!(loud(&e), "read: {e}"),
        }
        if let Some(u) = untouched {
            let e = std::fs::symlink_metadata(mp.join(u)).expect_err("nothing can answer");
            assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{u}: {e}");
            let e = std::fs::read(mp.join(u)).expect_err("nothing can answer");
            assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{u}: {e}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        is_mounted(mp),
        "the dead mount stays until someone unmounts it"
    );
}

/// The test tree mounted with `--prefetch none` (nothing cached in the kernel until read): its
/// top-level names, the bytes of run.sh, the mount point and the mount.
fn mounted_without_prefetch(s: &Scratch) -> (BTreeSet<String>, Vec<u8>, PathBuf, Mounted) {
    let src = setup(s);
    let mp = s.mkdir("mnt");
    let m = mount(
        s,
        &[s.store("s1")],
        "ws",
        &["l1"],
        &mp,
        &["--prefetch", "none"],
    );
    (
        top_names(&src),
        std::fs::read(src.join("run.sh")).unwrap(),
        mp,
        m,
    )
}

#[test]
fn with_keeper_and_daemon_killed_the_mount_is_dead_and_loud_until_unmounted() {
    require_fuse();
    let s = Scratch::new();
    let (names, want, mp, m) = mounted_without_prefetch(&s);
    let rec = m.record().expect("record");
    let keeper = rec.keeper.expect("keeper");
    kill(keeper.pid, libc::SIGKILL);
    assert!(keeper.wait_gone(Duration::from_secs(5)));
    // The daemon serves on without its keeper.
    assert!(std::fs::read(mp.join("run.sh")).unwrap() == want);
    kill(rec.pid, libc::SIGKILL);
    assert!(rec.daemon().wait_gone(Duration::from_secs(5)));
    assert_dead_and_loud(&mp, &names, "run.sh", &want, Some("src/dup1"));
    let st = mount_status(&s, &mp);
    assert_eq!(st.connection, "dead", "{st:?}");
    assert!(
        st.problem.as_deref().unwrap_or("").contains("ENOTCONN"),
        "{st:?}"
    );
    // An explicit unmount removes it.
    assert_ok(&s.wsfs(&["umount", mp.to_str().unwrap()]));
    assert!(!is_mounted(&mp));
}

#[test]
fn without_takeover_a_killed_daemon_leaves_a_loud_mount_not_an_empty_directory() {
    require_fuse();
    let s = Scratch::new();
    let src = setup(&s);
    let names = top_names(&src);
    let want = std::fs::read(src.join("run.sh")).unwrap();
    for mode in MODES {
        let mp = s.mkdir(&format!("mnt-{mode}"));
        // As on a kernel without FUSE_NOTIFY_RESEND (before 6.9).
        let o = mount_with_env(
            &s,
            &[s.store("s1")],
            &["l1"],
            &mp,
            &["--prefetch", mode],
            &[("WSFS_NO_TAKEOVER", "1".into())],
        );
        assert_ok(&o);
        let m = Mounted {
            mountpoint: mp.clone(),
            run_dir: s.run_dir(),
        };
        let rec = m.record().expect("record");
        assert!(std::fs::read(mp.join("run.sh")).is_ok());
        kill(rec.pid, libc::SIGKILL);
        // The keeper aborts the connection at once instead of leaving readers waiting.
        let keeper = rec.keeper.expect("keeper");
        assert!(
            keeper.wait_gone(Duration::from_secs(5)),
            "the keeper gives up and exits"
        );
        let untouched = (mode == "none" || mode == "chunks").then_some("src/dup1");
        assert_dead_and_loud(&mp, &names, "run.sh", &want, untouched);
        let log = std::fs::read_to_string(wsfs_log(&s, &mp)).unwrap();
        assert!(log.contains("keeper gives up"), "{log}");
        drop(m);
        assert!(!is_mounted(&mp));
    }
}

#[test]
fn a_daemon_that_keeps_crashing_is_given_up_on_loudly() {
    require_fuse();
    let s = Scratch::new();
    let (names, want, mp, m) = mounted_without_prefetch(&s);
    let keeper = m.record().and_then(|r| r.keeper).expect("keeper");
    // SIGUSR1 ends the daemon by itself (not a SIGKILL from outside): a crash. Each crash is
    // replaced after a growing pause; the sixth in a row ends the takeovers.
    let mut crashes = 0;
    while keeper.alive() && crashes < 10 {
        let pid = m.pid().expect("daemon");
        assert!(
            std::fs::read(mp.join("run.sh")).is_ok(),
            "served between crashes"
        );
        kill(pid, libc::SIGUSR1);
        crashes += 1;
        let t = Instant::now();
        loop {
            if !keeper.alive() {
                break;
            }
            if let Some(r) = m.record() {
                if r.pid != pid && r.daemon().alive() {
                    break;
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "neither replaced nor given up"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    assert_eq!(
        crashes, 6,
        "given up after the sixth crash within the window"
    );
    assert!(keeper.wait_gone(Duration::from_secs(5)));
    assert_dead_and_loud(&mp, &names, "run.sh", &want, Some("src/dup1"));
    let log = std::fs::read_to_string(wsfs_log(&s, &mp)).unwrap();
    assert!(log.contains("pausing before the next daemon"), "{log}");
    assert!(log.contains("keeper gives up"), "{log}");
}

#[test]
fn sigterm_with_a_file_open_keeps_serving_and_names_the_holder() {
    require_fuse();
    let s = Scratch::new();
    let src = setup(&s);
    let mp = s.mkdir("mnt");
    let m = mount(&s, &[s.store("s1")], "ws", &["l1"], &mp, &[]);
    let rec = m.record().expect("record");
    let keeper = rec.keeper.expect("keeper");
    let names = top_names(&src);
    let held = std::fs::File::open(mp.join("big.bin")).unwrap();
    // To the daemon, and (passed on) to the keeper: both leave the busy mount serving.
    for target in [rec.pid, keeper.pid] {
        kill(target, libc::SIGTERM);
        let want = std::fs::read(src.join("run.sh")).unwrap();
        let bad = watch(&mp, &names, "run.sh", &want, Duration::from_secs(2));
        assert!(bad.is_empty(), "after SIGTERM to {target}: {bad:?}");
        assert!(is_mounted(&mp));
        assert!(
            rec.daemon().alive() && keeper.alive(),
            "after SIGTERM to {target}: daemon alive {}, keeper alive {}, record now {:?}; log: {}",
            rec.daemon().alive(),
            keeper.alive(),
            m.record(),
            s.daemon_logs()
        );
    }
    let log = std::fs::read_to_string(wsfs_log(&s, &mp)).unwrap();
    let me = std::process::id().to_string();
    assert!(
        log.lines()
            .any(|l| l.contains("the mount is busy") && l.contains(&me)),
        "a WARN names this process as the holder: {log}"
    );
    assert!(!log.contains("detached lazily"), "{log}");
    // The held file still reads right.
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut &held, &mut got).unwrap();
    assert!(got == std::fs::read(src.join("big.bin")).unwrap());
    // Once nothing is open, SIGTERM unmounts and both processes exit.
    drop(held);
    kill(keeper.pid, libc::SIGTERM);
    assert!(
        rec.daemon().wait_gone(Duration::from_secs(10)),
        "daemon exits"
    );
    assert!(keeper.wait_gone(Duration::from_secs(10)), "keeper exits");
    assert!(!is_mounted(&mp));
}

/// A SIGTERM that follows the readiness at once (a CI step that mounts, finds it has nothing to
/// do, and stops the mount) is a stop request, not the default action: the daemon is held just
/// after reporting ready, signalled there, and must then unmount cleanly — no death, no takeover.
#[test]
fn sigterm_right_after_ready_is_a_clean_stop_not_a_death() {
    require_fuse();
    let s = Scratch::new();
    setup(&s);
    let mp = s.mkdir("mnt");
    let hold = s.path("hold");
    std::fs::write(&hold, b"").unwrap();
    let o = mount_with_env(
        &s,
        &[s.store("s1")],
        &["l1"],
        &mp,
        &["--prefetch", "none"],
        &[(
            "WSFS_TEST_PAUSE",
            format!("daemon-after-ready:{}", hold.display()),
        )],
    );
    assert_ok(&o);
    let m = Mounted {
        mountpoint: mp.clone(),
        run_dir: s.run_dir(),
    };
    let marker = PathBuf::from(format!("{}.paused", hold.display()));
    let t = Instant::now();
    while !marker.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the daemon never reached daemon-after-ready"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let rec = m.record().expect("record");
    let keeper = rec.keeper.expect("keeper");
    kill(rec.pid, libc::SIGTERM);
    // Let the default action (if it were still in place) take effect before the daemon moves on.
    std::thread::sleep(Duration::from_millis(200));
    std::fs::remove_file(&hold).unwrap();
    assert!(
        rec.daemon().wait_gone(Duration::from_secs(10)),
        "the daemon stops: {}",
        s.daemon_logs()
    );
    assert!(
        keeper.wait_gone(Duration::from_secs(10)),
        "the keeper exits with it: {}",
        s.daemon_logs()
    );
    assert!(!is_mounted(&mp), "unmounted");
    let log = s.daemon_logs();
    assert!(!log.contains("the daemon died"), "{log}");
    assert!(!log.contains("replacement daemon"), "{log}");
    assert!(log.contains("stop requested"), "{log}");
}

// ---------------------------------------------------------------------------------------------
// --all-stale, in a private mount namespace
// ---------------------------------------------------------------------------------------------

#[test]
fn all_stale_removes_only_dead_mounts_whatever_the_run_dir() {
    require_fuse();
    // The sweep runs in a mount namespace of its own: it must never see (let alone touch) the
    // machine's other mounts.
    run_in_private_namespace("all_stale_scenario_in_a_private_namespace");
}

#[test]
#[ignore = "run by all_stale_removes_only_dead_mounts_whatever_the_run_dir, in a private mount namespace"]
fn all_stale_scenario_in_a_private_namespace() {
    require_fuse();
    assert_in_private_namespace();
    let s = Scratch::new();
    setup(&s);
    let healthy = s.mkdir("healthy");
    let dead = s.mkdir("dead");
    let frozen = s.mkdir("frozen");
    let co = s.mkdir("co");
    std::fs::write(co.join("own.txt"), b"checkout").unwrap();
    let _h = mount(&s, &[s.store("s1")], "ws", &["l1"], &healthy, &[]);
    let _d = mount(&s, &[s.store("s1")], "ws", &["l1"], &dead, &[]);
    let f = mount(&s, &[s.store("s1")], "ws", &["l1"], &frozen, &[]);
    assert_ok(&s.wsfs(&[
        "attach",
        "--store",
        &s.store("s1"),
        "--workspace",
        "ws",
        "--layer",
        "l1",
        "--at",
        co.to_str().unwrap(),
        "--scratch",
        s.path("scratch").to_str().unwrap(),
    ]));
    let _a = Attached {
        at: co.clone(),
        run_dir: s.run_dir(),
    };
    let ws_mount = s
        .run_dir()
        .join("attach")
        .join(wsfs::ops::run_records::mount_id(&co))
        .join("workspace");
    // Kill keeper and daemon of `dead` and of the attach's workspace; stop `frozen`'s daemon.
    for mp in [&dead, &ws_mount] {
        let r = read_record(&s.run_dir(), mp).expect("record");
        let k = r.keeper.expect("keeper");
        kill(k.pid, libc::SIGKILL);
        assert!(k.wait_gone(Duration::from_secs(5)));
        kill(r.pid, libc::SIGKILL);
        assert!(r.daemon().wait_gone(Duration::from_secs(5)));
    }
    let fr = f.record().expect("record");
    kill(fr.pid, libc::SIGSTOP);
    // A sweep from another run directory: records there know none of these mounts.
    let other = s.mkdir("other-run");
    let sweep = Command::new(WSFS)
        .args(["umount", "--all-stale"])
        .env("WSFS_RUN_DIR", &other)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&sweep.stdout).to_string();
    assert!(sweep.status.success(), "{}", text(&sweep));
    kill(fr.pid, libc::SIGCONT);
    assert!(
        out.contains(&format!("{}: alive: left alone", healthy.display())),
        "{out}"
    );
    assert!(
        out.contains(&format!("{}: dead: removed", dead.display())),
        "{out}"
    );
    assert!(
        out.contains(&format!("{}: dead: removed", ws_mount.display())),
        "{out}"
    );
    assert!(
        out.contains(&format!("{}: not answering", frozen.display())),
        "{out}"
    );
    assert!(is_mounted(&healthy), "a healthy mount is never removed");
    assert!(
        is_mounted(&frozen),
        "a frozen mount is reported, not removed"
    );
    assert!(!is_mounted(&dead));
    assert!(!is_mounted(&ws_mount));
    assert!(!is_mounted(&co), "the dead attach's overlay is removed too");
    assert_eq!(
        top_names(&co),
        BTreeSet::from(["own.txt".to_string()]),
        "the checkout's own files are untouched"
    );
    // The healthy mount still serves, and status from the other run dir judges it by the kernel.
    assert!(std::fs::read(healthy.join("run.sh")).is_ok());
    let st = Command::new(WSFS)
        .args(["status", "--json"])
        .env("WSFS_RUN_DIR", &other)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    let h = v["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountpoint"] == healthy.display().to_string())
        .cloned()
        .expect("healthy mount listed");
    assert_eq!(h["connection"], "served", "{h}");
    assert!(
        h["problem"]
            .as_str()
            .unwrap_or("")
            .contains("no runtime record"),
        "{h}"
    );
}

// ---------------------------------------------------------------------------------------------
// Scratch folders and access
// ---------------------------------------------------------------------------------------------

fn attach_args(s: &Scratch, layer: &str, at: &Path, scratch: &Path) -> Vec<String> {
    [
        "attach",
        "--store",
        &s.store("s1"),
        "--workspace",
        "ws",
        "--layer",
        layer,
        "--at",
        at.to_str().unwrap(),
        "--scratch",
        scratch.to_str().unwrap(),
    ]
    .iter()
    .map(|x| x.to_string())
    .collect()
}

#[test]
fn an_unsafe_scratch_is_refused_and_nothing_wsfs_did_not_create_is_deleted() {
    require_fuse();
    let s = Scratch::new();
    setup(&s);
    let co = s.mkdir("box/at");
    std::fs::write(co.join("mine.txt"), b"the checkout").unwrap();
    let precious = s.mkdir("precious");
    std::fs::write(precious.join("data"), b"someone's").unwrap();
    // Non-empty, the attached directory itself, inside it, or containing it: exit 2.
    for bad in [precious.clone(), co.clone(), co.join("sub"), s.path("box")] {
        let o = s.wsfs(&attach_args(&s, "l1", &co, &bad));
        assert_code(&o, 2);
        assert!(!is_mounted(&co), "{}", text(&o));
    }
    assert_eq!(std::fs::read(precious.join("data")).unwrap(), b"someone's");
    assert_eq!(std::fs::read(co.join("mine.txt")).unwrap(), b"the checkout");
    assert!(!co.join("sub").exists());
    // A failed attach (no such layer) into an existing empty scratch: the folder stays.
    let empty = s.mkdir("empty-scratch");
    assert_code(&s.wsfs(&attach_args(&s, "nope", &co, &empty)), 3);
    assert!(
        empty.is_dir(),
        "a scratch folder wsfs did not create is not removed"
    );
    assert_eq!(
        std::fs::read_dir(&empty).unwrap().count(),
        0,
        "upper/ and work/ removed"
    );
    // ... into a new one (with a new parent): both are removed again.
    let fresh = s.path("new-parent/scratch");
    assert_code(&s.wsfs(&attach_args(&s, "nope", &co, &fresh)), 3);
    assert!(!s.path("new-parent").exists());
    // A successful attach and umount with the existing empty folder: it stays, empty.
    assert_ok(&s.wsfs(&attach_args(&s, "l1", &co, &empty)));
    let _a = Attached {
        at: co.clone(),
        run_dir: s.run_dir(),
    };
    std::fs::write(co.join("written.txt"), b"w").unwrap();
    assert_ok(&s.wsfs(&["umount", co.to_str().unwrap()]));
    assert!(empty.is_dir());
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    assert_eq!(top_names(&co), BTreeSet::from(["mine.txt".to_string()]));
}

#[test]
fn as_another_user_the_default_mount_refuses_even_what_the_kernel_has_cached() {
    require_fuse();
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new();
    // That user must be able to reach the mount point.
    std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    setup(&s);
    let mp = s.mkdir("mnt");
    std::fs::set_permissions(&mp, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _m = mount(
        &s,
        &[s.store("s1")],
        "ws",
        &["l1"],
        &mp,
        &["--prefetch", "all"],
    );
    // Everything cached in the kernel: names, attributes, pages.
    compare_trees(&s.path("src"), &mp);
    let as_nobody = |cmd: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args(cmd)
            .output()
            .unwrap()
    };
    let p = |rel: &str| mp.join(rel).display().to_string();
    for cmd in [
        vec!["ls".to_string(), p("")],
        vec!["stat".into(), p("run.sh")],
        vec!["find".into(), p("src")],
        vec!["cat".into(), p("run.sh")],
    ] {
        let c: Vec<&str> = cmd.iter().map(|x| x.as_str()).collect();
        let o = as_nobody(&c);
        assert!(!o.status.success(), "{cmd:?} as nobody: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("Permission denied"),
            "{cmd:?}: {}",
            text(&o)
        );
    }
    let entry = wsfs::ops::linux::mountinfo::read_mounts()
        .unwrap()
        .into_iter()
        .find(|e| e.mount_point == mp)
        .unwrap();
    assert!(
        !entry.super_options.contains("allow_other"),
        "{}",
        entry.super_options
    );
}

#[test]
fn an_unprivileged_user_mounts_through_fusermount3_and_keeps_the_takeover() {
    require_fuse();
    // Machines (and containers) differ in who may open /dev/fuse; the scenario gives itself a
    // world-usable one in a mount namespace of its own, as a stock distribution has.
    run_in_private_namespace("unprivileged_mount_scenario_in_a_private_namespace");
}

#[test]
#[ignore = "run by an_unprivileged_user_mounts_through_fusermount3_and_keeps_the_takeover, in a private mount namespace"]
fn unprivileged_mount_scenario_in_a_private_namespace() {
    require_fuse();
    assert_in_private_namespace();
    use std::os::unix::fs::{chown, PermissionsExt};
    let s = Scratch::new();
    std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // /dev/fuse as a stock system has it (crw-rw-rw-), in this namespace only.
    let dev = s.path("fuse-dev");
    let c = std::ffi::CString::new(dev.to_str().unwrap()).unwrap();
    // SAFETY: a valid path; creates a character device node for (10, 229), /dev/fuse.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(10, 229)) };
    assert_eq!(rc, 0, "mknod: {}", std::io::Error::last_os_error());
    std::fs::set_permissions(&dev, std::fs::Permissions::from_mode(0o666)).unwrap();
    let o = Command::new("mount")
        .arg("--bind")
        .arg(&dev)
        .arg("/dev/fuse")
        .output()
        .unwrap();
    assert!(o.status.success(), "bind /dev/fuse: {}", text(&o));
    let src = setup(&s);
    let want = std::fs::read(src.join("run.sh")).unwrap();
    let mp = s.mkdir("mnt");
    let run = s.mkdir("nobody-run");
    for d in [&mp, &run] {
        chown(d, Some(65534), Some(65534)).unwrap();
    }
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args(args)
            .env("WSFS_RUN_DIR", &run)
            .output()
            .unwrap()
    };
    let store = s.store("s1");
    let o = as_nobody(&[
        WSFS,
        "mount",
        "--store",
        &store,
        "--workspace",
        "ws",
        "--layer",
        "l1",
        mp.to_str().unwrap(),
    ]);
    assert_ok(&o);
    let m = Mounted {
        mountpoint: mp.clone(),
        run_dir: run.clone(),
    };
    let entry = wsfs::ops::linux::mountinfo::read_mounts()
        .unwrap()
        .into_iter()
        .find(|e| e.mount_point == mp)
        .expect("mounted");
    assert_eq!(entry.fs_type, "fuse.wsfs");
    assert!(
        entry.super_options.contains("user_id=65534"),
        "{}",
        entry.super_options
    );
    assert!(
        !entry.super_options.contains("allow_other"),
        "{}",
        entry.super_options
    );
    let cat = |o: &std::process::Output| {
        assert!(o.status.success(), "{}", text(o));
        assert!(o.stdout == want);
    };
    let file = mp.join("run.sh").display().to_string();
    cat(&as_nobody(&["cat", &file]));
    // The takeover works the same for an unprivileged mount.
    let rec = m.record().expect("record");
    kill(rec.pid, libc::SIGKILL);
    cat(&as_nobody(&["cat", &file]));
    wait_replaced(&run, &mp, rec.pid);
    // The user unmounts it (fusermount3 -u underneath); daemon and keeper exit.
    let o = as_nobody(&[WSFS, "umount", mp.to_str().unwrap()]);
    assert_ok(&o);
    assert!(!is_mounted(&mp));
    let keeper = rec.keeper.expect("keeper");
    assert!(keeper.wait_gone(Duration::from_secs(10)));
}
