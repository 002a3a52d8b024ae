//! How a platform runs wsfs: `mount -t fuse.wsfs` and fstab (mount(8)'s helper), plain
//! `umount`, the systemd unit (verified by systemd-analyze, readiness over `$NOTIFY_SOCKET`,
//! stop), `scripts/install.sh`, mount settings from a config file's `[mount]` table, and
//! store credentials kept off every command line.
//!
//! Scenarios that change what the machine sees (an overlay that adds the helper to /usr/sbin)
//! run in a mount namespace of their own.

mod common;

use common::*;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use wsfs::ops::linux::process::ProcId;

/// A small tree persisted as workspace `ws` layer `build` on the file store `store`.
fn persisted(s: &Scratch, ws: &str) -> PathBuf {
    let src = s.path("src");
    make_tree(&src, 40, 1, 11);
    assert_ok(&persist(s, &[s.store("store")], ws, "build", &src, &[]));
    src
}

/// The keeper and daemon of the mount at `mp` (from the test's run dir).
fn processes(s: &Scratch, mp: &Path) -> Vec<ProcId> {
    let rec = read_record(&s.run_dir(), mp).expect("a runtime record for the mount");
    let mut v = vec![ProcId::of(rec.pid).expect("daemon alive")];
    if let Some(k) = rec.keeper {
        v.push(k);
    }
    v
}

/// Leases under the workspace on a file store (a mount holds one while it lives).
fn leases(store_dir: &Path, ws: &str) -> Vec<String> {
    std::fs::read_dir(store_dir.join("workspaces").join(ws).join("leases"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The mount table entry's filesystem type at `mp` (never stats the path).
fn fs_type(mp: &Path) -> Option<String> {
    wsfs::ops::linux::mountinfo::read_mounts()
        .ok()?
        .into_iter()
        .find(|e| e.mount_point == mp)
        .map(|e| e.fs_type)
}

// ---------------------------------------------------------------------------------------------
// mount(8) helper and fstab
// ---------------------------------------------------------------------------------------------

#[test]
fn mount_t_fuse_wsfs_fstab_and_plain_umount() {
    require_fuse();
    run_in_private_namespace("helper_scenario_in_a_private_namespace");
}

#[test]
#[ignore = "run by mount_t_fuse_wsfs_fstab_and_plain_umount, in a private mount namespace"]
fn helper_scenario_in_a_private_namespace() {
    require_fuse();
    assert_in_private_namespace();
    let s = Scratch::new();
    let src = persisted(&s, "ci-1");
    let store = s.store("store");

    // mount(8) looks for /sbin/mount.fuse.wsfs; in this namespace only, a read-only overlay
    // adds ours to the real /sbin (so nothing of the machine's is replaced).
    let add = s.mkdir("sbin-add");
    std::os::unix::fs::symlink(WSFS, add.join("mount.fuse.wsfs")).expect("symlink");
    let sbin = std::fs::canonicalize("/sbin").expect("/sbin");
    let o = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("lowerdir={}:{}", add.display(), sbin.display()))
        .arg(&sbin)
        .output()
        .expect("mount overlay");
    assert_ok(&o);

    let mount8 = |args: &[&str]| {
        Command::new("mount")
            .args(args)
            .env("WSFS_RUN_DIR", s.run_dir())
            .env("WSFS_PERSIST_INDEX_DIR", s.index_dir())
            .output()
            .expect("run mount(8)")
    };

    // 1. `mount -t fuse.wsfs WORKSPACE DIR -o …`, with the options fstab lines carry anyway.
    let mp = s.mkdir("mnt-a");
    let o = mount8(&[
        "-t",
        "fuse.wsfs",
        "ci-1",
        mp.to_str().unwrap(),
        "-o",
        &format!("store={store},layer=build,request_timeout=2s,noatime,_netdev,nosuid"),
    ]);
    assert_ok(&o);
    let guard = Mounted {
        mountpoint: mp.clone(),
        run_dir: s.run_dir(),
    };
    assert_eq!(fs_type(&mp).as_deref(), Some("fuse.wsfs"));
    compare_trees(&src, &mp);
    assert_eq!(
        leases(&s.path("store"), "ci-1").len(),
        1,
        "the mount holds a lease"
    );
    let procs = processes(&s, &mp);

    // 2. A plain `umount DIR` is a clean unmount: daemon and keeper exit, the lease and the
    //    runtime record go.
    let o = Command::new("umount").arg(&mp).output().expect("umount");
    assert_ok(&o);
    for p in &procs {
        assert!(
            p.wait_gone(Duration::from_secs(10)),
            "pid {} exits after umount",
            p.pid
        );
    }
    assert!(!is_mounted(&mp));
    assert!(read_record(&s.run_dir(), &mp).is_none(), "record removed");
    assert!(
        leases(&s.path("store"), "ci-1").is_empty(),
        "lease removed at umount"
    );
    drop(guard);

    // 3. An fstab line whose options name a config file with a [mount] table; the source is a
    //    placeholder (`wsfs`), so the workspace comes from the file.
    let mp_b = s.mkdir("mnt-b");
    let cfg = s.path("ci.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[store]]\nurl = {store:?}\n[mount]\nworkspace = \"ci-1\"\nlayers = [\"build\"]\n"
        ),
    )
    .unwrap();
    let fstab = s.path("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# test fstab\nwsfs {} fuse.wsfs noauto,_netdev,config={} 0 0\n",
            mp_b.display(),
            cfg.display()
        ),
    )
    .unwrap();
    let o = mount8(&["-T", fstab.to_str().unwrap(), mp_b.to_str().unwrap()]);
    assert_ok(&o);
    let _guard_b = Mounted {
        mountpoint: mp_b.clone(),
        run_dir: s.run_dir(),
    };
    compare_trees(&src, &mp_b);
    let o = Command::new("umount").arg(&mp_b).output().expect("umount");
    assert_ok(&o);
    assert!(!is_mounted(&mp_b));

    // 4. Bad options and missing workspaces fail loudly and leave nothing mounted.
    let mp_c = s.mkdir("mnt-c");
    let o = mount8(&[
        "-t",
        "fuse.wsfs",
        "ci-1",
        mp_c.to_str().unwrap(),
        "-o",
        &format!("store={store},layer=build,bogus=1"),
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("unknown mount option \"bogus=1\""),
        "{}",
        text(&o)
    );
    let o = mount8(&[
        "-t",
        "fuse.wsfs",
        "ci-1",
        mp_c.to_str().unwrap(),
        "-o",
        &format!("store={store},layer=nope,request_timeout=2s"),
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("nope"),
        "names the missing layer: {}",
        text(&o)
    );
    // `mount -f` checks and mounts nothing.
    let o = mount8(&[
        "-f",
        "-t",
        "fuse.wsfs",
        "ci-1",
        mp_c.to_str().unwrap(),
        "-o",
        &format!("store={store},layer=build"),
    ]);
    assert_ok(&o);
    assert!(!is_mounted(&mp_c));

    let o = Command::new("umount").arg(&sbin).output().expect("umount");
    assert_ok(&o);
}

// ---------------------------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------------------------

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dist/systemd/wsfs@.service");

/// The unit's ExecStart for instance `name`, pointed at the built binary and at `cfg` in place of
/// /etc/wsfs/NAME.toml.
fn exec_start(name: &str, cfg: &Path) -> Vec<String> {
    let unit = std::fs::read_to_string(UNIT).expect("read the unit");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart");
    line.replace("/usr/local/bin/wsfs", WSFS)
        .replace(
            &format!("/etc/wsfs/{name}.toml"),
            &cfg.display().to_string(),
        )
        .replace("/etc/wsfs/%i.toml", &cfg.display().to_string())
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Receives systemd notifications until one contains `want` (or the deadline passes).
fn notifications_until(sock: &UnixDatagram, want: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = m.contains(want);
            got.push(m);
            if done {
                break;
            }
        }
    }
    got
}

/// The unit's `Key=value` lines (comments and section headers aside).
fn unit_directives(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with(';') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The options docs/operations.md ("systemd") says the unit leaves out because each would give
/// the service a mount namespace of its own.
fn left_out_in_docs() -> Vec<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .unwrap();
    let from = doc
        .find("Left out on purpose")
        .expect("the docs list what is left out");
    let rest = &doc[from..];
    let para = &rest[..rest
        .find("`systemd-analyze verify`")
        .expect("end of the list")];
    para.split('`')
        .skip(1)
        .step_by(2)
        .flat_map(|names| names.split('/'))
        .map(str::to_string)
        .collect()
}

/// What `systemd-analyze verify` does not judge: a missing config fails the start, /dev/fuse is
/// allowed, a busy stop can name its holders, and nothing hides the mount from the jobs.
fn unit_keeps_the_mount_visible_and_fails_loudly(unit: &str) {
    let d = unit_directives(unit);
    let has = |k: &str, v: &str| d.iter().any(|(dk, dv)| dk == k && dv == v);
    // An Assert fails `systemctl start`; a Condition would skip the unit: start succeeds and
    // nothing is mounted.
    assert!(has("AssertPathExists", "/etc/wsfs/%i.toml"), "{unit}");
    assert!(
        !d.iter().any(|(k, _)| k.starts_with("Condition")),
        "a Condition lets a start succeed with nothing mounted: {unit}"
    );
    assert!(has("DevicePolicy", "closed"), "{unit}");
    assert!(has("DeviceAllow", "/dev/fuse rw"), "{unit}");
    let caps: Vec<&str> = d
        .iter()
        .filter(|(k, _)| k == "CapabilityBoundingSet")
        .flat_map(|(_, v)| v.split_whitespace())
        .collect();
    for cap in ["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"] {
        assert!(caps.contains(&cap), "{cap} missing: {unit}");
    }
    let left_out = left_out_in_docs();
    for must in [
        "PrivateMounts",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectSystem",
        "ProtectHome",
        "ReadOnlyPaths",
        "InaccessiblePaths",
        "TemporaryFileSystem",
        "BindPaths",
        "RootDirectory",
        "MountFlags",
    ] {
        assert!(
            left_out.iter().any(|x| x == must),
            "docs/operations.md no longer lists {must} as left out: {left_out:?}"
        );
    }
    for (k, v) in &d {
        assert!(
            !left_out.contains(k),
            "{k}={v} gives the service a mount namespace of its own: the mount would be invisible to jobs"
        );
    }
}

#[test]
fn systemd_unit_and_install_script_verify_clean() {
    let s = Scratch::new();
    let root = s.path("inst");
    let dirs = [
        ("--prefix", root.join("usr/local")),
        ("--sbindir", root.join("sbin")),
        ("--unitdir", root.join("units")),
        ("--confdir", root.join("etc/wsfs")),
    ];
    let mut cmd = Command::new("bash");
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install.sh"))
        .args(["--bin", WSFS]);
    for (k, v) in &dirs {
        cmd.arg(k).arg(v);
    }
    let o = cmd.output().expect("run install.sh");
    assert_ok(&o);
    let bin = root.join("usr/local/bin/wsfs");
    let helper = root.join("sbin/mount.fuse.wsfs");
    let unit = root.join("units/wsfs@.service");
    assert!(bin.is_file(), "binary installed");
    assert_eq!(
        std::fs::read_link(&helper).unwrap(),
        bin,
        "helper links to it"
    );
    assert!(root.join("etc/wsfs/example.toml.sample").is_file());
    let text_unit = std::fs::read_to_string(&unit).unwrap();
    assert!(
        text_unit.contains(&format!("ExecStart={} mount --foreground", bin.display())),
        "{text_unit}"
    );
    // The installed unit (ExecStart at the installed binary) verifies without a word.
    let inst = s.path("wsfs@ci.service");
    std::fs::copy(&unit, &inst).unwrap();
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&inst)
        .output()
        .expect("systemd-analyze (package systemd; scripts/test.sh installs it)");
    assert_ok(&o);
    assert!(
        o.stdout.is_empty() && o.stderr.is_empty(),
        "systemd-analyze verify has remarks: {}",
        text(&o)
    );
    unit_keeps_the_mount_visible_and_fails_loudly(&text_unit);
    // The helper, run under its installed name, is the mount command.
    let o = Command::new(&helper).arg("--help").output().unwrap();
    assert!(
        text(&o).contains("usage: mount -t fuse.wsfs"),
        "{}",
        text(&o)
    );
    // Uninstall removes what it installed and keeps config files.
    std::fs::write(root.join("etc/wsfs/mine.toml"), "").unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install.sh"))
        .arg("--uninstall");
    for (k, v) in &dirs {
        cmd.arg(k).arg(v);
    }
    assert_ok(&cmd.output().unwrap());
    assert!(!bin.exists() && !helper.exists() && !unit.exists());
    assert!(root.join("etc/wsfs/mine.toml").exists(), "config kept");
}

#[test]
fn systemd_readiness_is_sent_when_the_tree_serves_and_stop_unmounts() {
    require_fuse();
    let s = Scratch::new();
    let src = persisted(&s, "ci-2");
    let mp = s.mkdir("mnt");
    let cfg = s.path("ci.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[store]]\nurl = {:?}\n[mount]\nworkspace = \"ci-2\"\nlayers = [\"build\"]\nmountpoint = {:?}\nprefetch = \"none\"\n",
            s.store("store"),
            mp.display().to_string()
        ),
    )
    .unwrap();
    let notify = s.path("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    let argv = exec_start("ci", &cfg);
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .env("NOTIFY_SOCKET", &notify)
        .env("WSFS_RUN_DIR", s.run_dir())
        .env("WSFS_PERSIST_INDEX_DIR", s.index_dir())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the unit's command");
    let _guard = Mounted {
        mountpoint: mp.clone(),
        run_dir: s.run_dir(),
    };
    let got = notifications_until(&sock, "READY=1", Duration::from_secs(60));
    let ready = got.iter().find(|m| m.contains("READY=1"));
    assert!(ready.is_some(), "no READY=1; got {got:?}");
    // READY=1 means the tree serves: read at once, nothing waited for.
    assert!(ready.unwrap().contains("STATUS=serving ci-2 at"), "{got:?}");
    compare_trees(&src, &mp);
    assert_eq!(fs_type(&mp).as_deref(), Some("fuse.wsfs"));

    // systemctl stop: SIGTERM to the main process (KillMode=mixed) unmounts cleanly.
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the keeper did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "stopped cleanly: {status}");
    assert!(!is_mounted(&mp), "unmounted at stop");
    let got = notifications_until(&sock, "STOPPING=1", Duration::from_secs(5));
    assert!(got.iter().any(|m| m.contains("STOPPING=1")), "{got:?}");
}

#[test]
fn systemd_start_of_a_missing_layer_fails_without_ready() {
    require_fuse();
    let s = Scratch::new();
    persisted(&s, "ci-3");
    let mp = s.mkdir("mnt");
    let cfg = s.path("ci.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[store]]\nurl = {:?}\noptions = {{ wsfs_request_timeout = \"2s\" }}\n[mount]\nworkspace = \"ci-3\"\nlayers = [\"missing\"]\nmountpoint = {:?}\n",
            s.store("store"),
            mp.display().to_string()
        ),
    )
    .unwrap();
    let notify = s.path("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    let argv = exec_start("ci", &cfg);
    let o = Command::new(&argv[0])
        .args(&argv[1..])
        .env("NOTIFY_SOCKET", &notify)
        .env("WSFS_RUN_DIR", s.run_dir())
        .env("WSFS_PERSIST_INDEX_DIR", s.index_dir())
        .output()
        .expect("run the unit's command");
    let _guard = Mounted {
        mountpoint: mp.clone(),
        run_dir: s.run_dir(),
    };
    assert_code(&o, 3);
    let got = notifications_until(&sock, "STOPPING=1", Duration::from_secs(2));
    assert!(!got.iter().any(|m| m.contains("READY=1")), "{got:?}");
    assert!(
        got.iter().any(|m| m.contains("STATUS=mount failed")),
        "{got:?}"
    );
    assert!(!is_mounted(&mp));
}

// ---------------------------------------------------------------------------------------------
// The [mount] table, --check-only, credentials
// ---------------------------------------------------------------------------------------------

#[test]
fn mount_settings_come_from_the_config_file_and_flags_win() {
    require_fuse();
    let s = Scratch::new();
    let src = persisted(&s, "ci-4");
    let mp = s.mkdir("mnt");
    let other = s.mkdir("other");
    let cfg = s.path("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[store]]\nurl = {:?}\n[mount]\nworkspace = \"ci-4\"\nlayers = [\"build\"]\nmountpoint = {:?}\nprefetch = \"chunks\"\n",
            s.store("store"),
            other.display().to_string()
        ),
    )
    .unwrap();
    // The mount point on the command line wins over the file's.
    let o = s.wsfs(&[
        "mount",
        "--config",
        cfg.to_str().unwrap(),
        mp.to_str().unwrap(),
    ]);
    assert_ok(&o);
    let _g = Mounted {
        mountpoint: mp.clone(),
        run_dir: s.run_dir(),
    };
    assert!(!is_mounted(&other));
    assert!(
        text(&o).contains("fetching every chunk in the background"),
        "{}",
        text(&o)
    );
    compare_trees(&src, &mp);
    // `--prefetch chunks` from the file: status shows how far the prefetch is, then done.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = mount_status(&s, &mp);
        let (done, total) = (st.cache.prefetched, st.cache.chunks);
        assert!(total > 0);
        if done >= total {
            break;
        }
        assert!(Instant::now() < deadline, "prefetch did not finish: {st:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = s.wsfs(&["status", mp.to_str().unwrap()]);
    assert!(text(&o).contains("prefetch: "), "{}", text(&o));
    assert!(text(&o).contains("(100%)"), "{}", text(&o));

    // What the file lacks and the command line does not give is a usage error naming it.
    let bare = s.path("bare.toml");
    std::fs::write(&bare, format!("[[store]]\nurl = {:?}\n", s.store("store"))).unwrap();
    let o = s.wsfs(&[
        "mount",
        "--config",
        bare.to_str().unwrap(),
        "--layer",
        "build",
    ]);
    assert_code(&o, 2);
    assert!(text(&o).contains("no workspace"), "{}", text(&o));
    let o = s.wsfs(&[
        "mount",
        "--config",
        bare.to_str().unwrap(),
        "--workspace",
        "ci-4",
        "x",
    ]);
    assert_code(&o, 2);
    assert!(text(&o).contains("no layer"), "{}", text(&o));
    std::fs::write(&bare, "[mount]\nprefetch = \"most\"\nworkspace = \"w\"\nlayers=[\"l\"]\n[[store]]\nurl = \"file:///x\"\n").unwrap();
    let o = s.wsfs(&["mount", "--config", bare.to_str().unwrap(), "/tmp"]);
    assert_code(&o, 2);
    assert!(text(&o).contains("prefetch = \"most\""), "{}", text(&o));
    // --check-only checks and mounts nothing.
    let free = s.mkdir("free");
    let o = s.wsfs(&[
        "mount",
        "--config",
        cfg.to_str().unwrap(),
        "--check-only",
        free.to_str().unwrap(),
    ]);
    assert_ok(&o);
    assert!(!is_mounted(&free));
    let o = s.wsfs(&[
        "mount",
        "--config",
        cfg.to_str().unwrap(),
        "--check-only",
        mp.to_str().unwrap(),
    ]);
    assert_code(&o, 6);
    assert!(text(&o).contains("already a mount point"), "{}", text(&o));
}

/// Asserts that `secret` shows nowhere a user of the machine can look while the mount at `mp`
/// (made with a store URL carrying it) lives: the command lines of its keeper and daemon,
/// `wsfs status`, the logs and runtime records of the run directory.
fn assert_secret_hidden(s: &Scratch, mp: &Path, secret: &str) -> Vec<ProcId> {
    let procs = processes(s, mp);
    assert_eq!(procs.len(), 2, "keeper and daemon");
    for p in &procs {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", p.pid)).unwrap();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains(secret),
            "pid {} shows {secret} on its command line",
            p.pid
        );
    }
    let st = s.wsfs(&["status", mp.to_str().unwrap(), "--json"]);
    assert_ok(&st);
    assert!(!text(&st).contains(secret), "{}", text(&st));
    for e in walkdir::WalkDir::new(s.run_dir()).into_iter().flatten() {
        if e.file_type().is_file() {
            let body = std::fs::read(e.path()).unwrap_or_default();
            assert!(
                !String::from_utf8_lossy(&body).contains(secret),
                "{} holds {secret}",
                e.path().display()
            );
        }
    }
    procs
}

#[test]
fn store_credentials_stay_off_every_command_line() {
    require_fuse();
    let s = Scratch::new();
    let src = persisted(&s, "ci-5");
    let mp = s.mkdir("mnt");
    // Tokens in the URL's query: a `token=` and a signed URL's `sig=` (a file store ignores
    // both; an Azure SAS or a signed GCS URL would need them).
    let url = format!("{}?token=s3cr3t-token&sig=s3cr3t-sig", s.store("store"));
    let (_g, procs) = mount_secret_url(&s, &url, "ci-5", &mp, &src);
    // A takeover daemon gets the stores too (from the keeper's environment, not its argv).
    let daemon = procs[0];
    // SAFETY: killing the daemon this test started.
    unsafe { libc::kill(daemon.pid, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = read_record(&s.run_dir(), &mp).map(|r| r.pid);
        if now.is_some_and(|p| p != daemon.pid) && mount_status(&s, &mp).alive {
            break;
        }
        assert!(Instant::now() < deadline, "no replacement daemon");
        std::thread::sleep(Duration::from_millis(50));
    }
    compare_trees(&src, &mp);
    assert_secret_hidden(&s, &mp, "s3cr3t");

    // `wsfs attach` hands the URLs down the same way: the keeper and daemon of its workspace
    // mount show no token either.
    let co = s.mkdir("checkout");
    let o = s.wsfs(&[
        "attach",
        "--store",
        &url,
        "--workspace",
        "ci-5",
        "--layer",
        "build",
        "--at",
        co.to_str().unwrap(),
        "--scratch",
        s.path("scratch").to_str().unwrap(),
    ]);
    assert_ok(&o);
    let _a = Attached {
        at: co.clone(),
        run_dir: s.run_dir(),
    };
    assert!(
        text(&o).contains("a --store URL carries credentials"),
        "warned: {}",
        text(&o)
    );
    let ws_mount = s
        .run_dir()
        .join("attach")
        .join(wsfs::ops::run_records::mount_id(&co))
        .join("workspace");
    assert_secret_hidden(&s, &ws_mount, "s3cr3t");
    assert_ok(&s.wsfs(&["umount", co.to_str().unwrap()]));
}

/// Userinfo (`http://user:password@host/…`): a plain HTTP store in front of a public-read moto
/// bucket (moto ignores the Basic credentials reqwest sends from the URL).
#[test]
fn a_store_url_with_userinfo_stays_off_every_command_line() {
    require_fuse();
    let e = emulators::env();
    let s = Scratch::new();
    let src = s.path("src");
    make_tree(&src, 40, 1, 12);
    let b = emulators::unique("userinfo");
    emulators::mk_s3(&e, &b);
    assert_ok(&persist(
        &s,
        &[format!("s3://{b}/p")],
        "ci-8",
        "build",
        &src,
        &[],
    ));
    emulators::s3_py(
        &e,
        "import json\ns3.put_bucket_policy(Bucket=sys.argv[2], Policy=json.dumps({'Version': '2012-10-17', \
         'Statement': [{'Effect': 'Allow', 'Principal': '*', 'Action': 's3:GetObject', \
         'Resource': 'arn:aws:s3:::' + sys.argv[2] + '/*'}]}))",
        &[&b],
    );
    let endpoint = e.s3.strip_prefix("http://").expect("moto over http");
    let url = format!("http://wsfs:s3cr3t-pw@{endpoint}/{b}/p");
    let mp = s.mkdir("mnt");
    let _g = mount_secret_url(&s, &url, "ci-8", &mp, &src);
}

/// Mounts layer `build` of `ws` from `url`, which carries the secret `s3cr3t`: the command warns,
/// the tree is `src`'s, and the secret is on no command line. The guard and the processes.
fn mount_secret_url(
    s: &Scratch,
    url: &str,
    ws: &str,
    mp: &Path,
    src: &Path,
) -> (Mounted, Vec<ProcId>) {
    let o = s.wsfs(&[
        "mount",
        "--store",
        url,
        "--workspace",
        ws,
        "--layer",
        "build",
        mp.to_str().unwrap(),
    ]);
    assert_ok(&o);
    let g = Mounted {
        mountpoint: mp.to_path_buf(),
        run_dir: s.run_dir(),
    };
    assert!(
        text(&o).contains("a --store URL carries credentials"),
        "warned: {}",
        text(&o)
    );
    compare_trees(src, mp);
    (g, assert_secret_hidden(s, mp, "s3cr3t"))
}

// ---------------------------------------------------------------------------------------------
// Progress where work is long
// ---------------------------------------------------------------------------------------------

/// `cmd` run on a pseudo-terminal (util-linux `script`), its output as the terminal got it.
fn on_a_terminal(cmd: &str) -> String {
    let o = Command::new("script")
        .args(["-qec", cmd, "/dev/null"])
        .output()
        .expect("script (util-linux)");
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn long_commands_show_progress_on_a_terminal_and_one_summary_otherwise() {
    let s = Scratch::new();
    let src = s.path("src");
    make_tree(&src, 200, 6, 3);
    let store = s.store("store");
    let persist_cmd = format!(
        "{WSFS} persist --store {store} --workspace ws --layer build --root {}",
        src.display()
    );
    let verify_cmd = format!("{WSFS} verify --store {store} --workspace ws --layer build --deep");
    // On a terminal: persist shows bytes, verify the chunks checked per layer and store.
    let out = on_a_terminal(&persist_cmd);
    assert!(out.contains("persisted "), "{out}");
    assert!(out.contains('\u{1b}'), "a progress bar was drawn: {out}");
    let out = on_a_terminal(&verify_cmd);
    assert!(out.contains("chunks build on"), "verify progress: {out}");
    assert!(out.contains("(download and hash)"), "{out}");
    assert!(out.contains("complete"), "{out}");
    // Not on a terminal (a CI log): the summary alone, no escape codes.
    for cmd in [&persist_cmd, &verify_cmd] {
        let o = Command::new("sh").args(["-c", cmd]).output().unwrap();
        assert_ok(&o);
        let all = text(&o);
        assert!(!all.contains('\u{1b}'), "escape codes in a log: {all}");
        assert!(!all.contains("chunks build on"), "progress in a log: {all}");
    }
    // gc, with a layer to expire and its data to delete (`--older-than 0s --grace 0s`): on a
    // terminal the step (marking, with counts) and a bar over the deletions, then the summary.
    let gc_cmd = |store: &str| format!("{WSFS} gc --store {store} --older-than 0s --grace 0s");
    let out = on_a_terminal(&gc_cmd(&store));
    assert!(out.contains("marking: "), "gc progress: {out}");
    assert!(out.contains("deleted on"), "gc deletion bar: {out}");
    assert!(out.contains("1 expired (ws/build)"), "gc summary: {out}");
    // In a log: the summary alone.
    let store2 = s.store("store2");
    assert_ok(&s.wsfs(&[
        "persist",
        "--store",
        &store2,
        "--workspace",
        "ws",
        "--layer",
        "build",
        "--root",
        src.to_str().unwrap(),
        "--no-index",
    ]));
    let o = Command::new("sh")
        .args(["-c", &gc_cmd(&store2)])
        .output()
        .unwrap();
    assert_ok(&o);
    let all = text(&o);
    assert!(!all.contains('\u{1b}'), "escape codes in a log: {all}");
    assert!(
        !all.contains("marking: ") && !all.contains("deleted on"),
        "progress in a log: {all}"
    );
    assert!(all.contains("1 expired (ws/build)"), "gc summary: {all}");
}

/// The status of an attach (`wsfs status DIR --json`), typed.
#[derive(serde::Deserialize)]
struct AttachDoc {
    attaches: Vec<wsfs::ops::status::AttachStatus>,
    mounts: Vec<wsfs::ops::service::control::MountStatus>,
}

/// `attach --prefetch all` returns as soon as the tree serves (the job must start); it says
/// where to watch the prefetch, and `wsfs status DIR` of the attached directory shows it up to
/// 100 %, naming the attach and its workspace mount.
#[test]
fn attach_prefetch_all_returns_at_once_and_status_of_the_attach_shows_the_prefetch() {
    require_fuse();
    let s = Scratch::new();
    let src = persisted(&s, "ci-7");
    let co = s.mkdir("checkout");
    std::fs::write(co.join("OWN.md"), b"the job's own file\n").unwrap();
    let o = s.wsfs(&[
        "attach",
        "--store",
        &s.store("store"),
        "--workspace",
        "ci-7",
        "--layer",
        "build",
        "--at",
        co.to_str().unwrap(),
        "--scratch",
        s.path("scratch").to_str().unwrap(),
        "--prefetch",
        "all",
    ]);
    assert_ok(&o);
    let _a = Attached {
        at: co.clone(),
        run_dir: s.run_dir(),
    };
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("fetching every chunk in the background (--prefetch all)")
            && err.contains(&format!("`wsfs status {}`", co.display())),
        "the hint: {}",
        text(&o)
    );
    let ws_mount = s
        .run_dir()
        .join("attach")
        .join(wsfs::ops::run_records::mount_id(&co))
        .join("workspace");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = s.wsfs(&["status", co.to_str().unwrap(), "--json"]);
        assert_ok(&o);
        let doc: AttachDoc = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("status json: {e}: {}", text(&o)));
        assert_eq!(doc.attaches.len(), 1, "{}", text(&o));
        assert_eq!(doc.attaches[0].at, co.display().to_string());
        assert_eq!(
            doc.attaches[0].workspace_mount,
            ws_mount.display().to_string()
        );
        assert_eq!(doc.mounts.len(), 1, "{}", text(&o));
        let m = &doc.mounts[0];
        assert_eq!(m.mountpoint, ws_mount.display().to_string());
        assert_eq!(m.attached_at.as_deref(), Some(co.to_str().unwrap()));
        assert!(m.cache.chunks > 0, "{}", text(&o));
        if m.cache.prefetched >= m.cache.chunks {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "prefetch did not finish: {}",
            text(&o)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The text form names the attach, its workspace mount, and the finished prefetch.
    let o = s.wsfs(&["status", co.to_str().unwrap()]);
    assert_ok(&o);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!(
            "{}  attach: overlay over the workspace mount {}",
            co.display(),
            ws_mount.display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{}  workspace=ci-7 layers=build",
            ws_mount.display()
        )) && out.contains(&format!("attached_at={}", co.display())),
        "{out}"
    );
    assert!(
        out.contains("prefetch: ") && out.contains("(100%)"),
        "{out}"
    );
    // The job's tree: the workspace over the checkout's own file.
    assert_eq!(
        std::fs::read(co.join("OWN.md")).unwrap(),
        b"the job's own file\n"
    );
    let probe = walkdir::WalkDir::new(&src)
        .into_iter()
        .flatten()
        .find(|e| e.file_type().is_file())
        .expect("a file in the tree");
    let rel = probe.path().strip_prefix(&src).unwrap();
    assert_eq!(
        std::fs::read(co.join(rel)).unwrap(),
        std::fs::read(probe.path()).unwrap()
    );
    assert_ok(&s.wsfs(&["umount", co.to_str().unwrap()]));
    assert!(!is_mounted(&co) && !is_mounted(&ws_mount));
}

// ---------------------------------------------------------------------------------------------
// Cleanup steps and working directories
// ---------------------------------------------------------------------------------------------

#[test]
fn keeper_and_daemon_hold_no_working_directory_and_relative_paths_work() {
    require_fuse();
    let s = Scratch::new();
    let src = persisted(&s, "ci-6");
    // The command runs inside the job's directory, with relative paths everywhere.
    let job = s.mkdir("job");
    std::fs::create_dir(job.join("ws")).unwrap();
    std::fs::write(
        job.join("c.toml"),
        format!("[[store]]\nurl = {:?}\n", s.store("store")),
    )
    .unwrap();
    let o = Command::new(WSFS)
        .args([
            "mount",
            "--config",
            "c.toml",
            "--workspace",
            "ci-6",
            "--layer",
            "build",
            "--cache-dir",
            "cache",
            "ws",
        ])
        .current_dir(&job)
        .env("WSFS_RUN_DIR", s.run_dir())
        .env("WSFS_PERSIST_INDEX_DIR", s.index_dir())
        .output()
        .unwrap();
    assert_ok(&o);
    let mp = job.join("ws");
    let _g = Mounted {
        mountpoint: mp.clone(),
        run_dir: s.run_dir(),
    };
    compare_trees(&src, &mp);
    assert!(
        job.join("cache").is_dir(),
        "--cache-dir taken against the caller's directory"
    );
    for p in processes(&s, &mp) {
        let cwd = std::fs::read_link(format!("/proc/{}/cwd", p.pid)).unwrap();
        assert_eq!(
            cwd,
            Path::new("/"),
            "pid {} holds {} (it would keep a checkout busy)",
            p.pid,
            cwd.display()
        );
    }
    // So a shell that left the directory can unmount it, and a cleanup step can always run.
    let o = s.wsfs(&["umount", mp.to_str().unwrap()]);
    assert_ok(&o);
    let o = s.wsfs(&["umount", mp.to_str().unwrap()]);
    assert_code(&o, 1);
    assert!(text(&o).contains("is not mounted"), "{}", text(&o));
    let o = s.wsfs(&["umount", "--if-mounted", mp.to_str().unwrap()]);
    assert_ok(&o);
    assert!(text(&o).contains("nothing is mounted"), "{}", text(&o));
}
