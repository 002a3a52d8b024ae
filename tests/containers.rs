//! The workspace inside the job's container: a real container runtime (podman, crun) on this
//! machine, with the job directory bind-mounted into containers the way CI executors do
//! (`-v /job:/job…`).
//!
//! * A container started *before* the workspace is mounted sees the mount (and an attach over
//!   the checkout, and writes through it) when its bind is `rslave` and the host directory is a
//!   shared mount.
//! * With the default propagation (`rprivate`) such a container sees the empty directory under
//!   the mount: the pitfall docs/operations.md warns about, asserted so the docs stay true.
//! * A container started *after* the mount sees it with any propagation (the bind is recursive).
//!
//! Everything runs in a private mount namespace; podman gets its own storage, run and temp
//! directories inside the test's scratch, so nothing of the machine's containers is touched.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const IMAGE: &str = "localhost/wsfs-test-busybox";

#[test]
fn containers_see_mounts_and_attaches_by_propagation() {
    require_fuse();
    for tool in ["podman", "busybox"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            found,
            "container tests need {tool} (Debian packages podman and busybox-static; scripts/test.sh installs them)"
        );
    }
    run_in_private_namespace("container_scenario_in_a_private_namespace");
}

/// podman, confined to the scratch directory — except its run root, which podman wants at most
/// 50 characters long: a short directory of this test's own in /tmp, removed with it.
struct Podman {
    base: PathBuf,
    runroot: tempfile::TempDir,
}

impl Podman {
    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(self.base.join("root"))
            .arg("--runroot")
            .arg(self.runroot.path())
            .arg("--tmpdir")
            .arg(self.base.join("tmp"))
            .args([
                "--storage-driver",
                "vfs",
                "--events-backend",
                "none",
                "--cgroup-manager",
                "cgroupfs",
            ])
            // No raised ulimits: this machine's container runtime may not raise them.
            .env("CONTAINERS_CONF", self.base.join("containers.conf"));
        c
    }

    /// Starts `script` in a container with `volume` (`-v` argument), in the background.
    fn run(&self, volume: &str, script: &str) -> Child {
        self.cmd()
            .args([
                "run",
                "--rm",
                "--network",
                "none",
                "--cgroups",
                "disabled",
                "-v",
            ])
            .arg(volume)
            .arg(IMAGE)
            .args(["/bin/sh", "-c", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("podman run")
    }
}

fn wait_for(p: &Path, within: Duration) {
    let deadline = Instant::now() + within;
    while !p.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear in time",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn finish(child: Child, what: &str) -> String {
    let o = child.wait_with_output().expect("wait for podman");
    assert!(o.status.success(), "container {what}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
#[ignore = "run by containers_see_mounts_and_attaches_by_propagation, in a private mount namespace"]
fn container_scenario_in_a_private_namespace() {
    require_fuse();
    assert_in_private_namespace();
    let s = Scratch::new();

    // crun refuses a hybrid cgroup layout (v1 controllers plus a v2 "unified" tree); with
    // cgroups disabled for the containers, hide the v2 tree — in this namespace only.
    if is_mounted(Path::new("/sys/fs/cgroup/unified")) {
        let o = Command::new("umount")
            .arg("/sys/fs/cgroup/unified")
            .output()
            .unwrap();
        assert_ok(&o);
    }
    let podman = Podman {
        base: s.mkdir("podman"),
        runroot: tempfile::Builder::new()
            .prefix("wsfs-pr")
            .tempdir_in("/tmp")
            .expect("a short run root in /tmp"),
    };
    for d in ["root", "tmp"] {
        s.mkdir(&format!("podman/{d}"));
    }
    std::fs::write(
        podman.base.join("containers.conf"),
        "[containers]\ndefault_ulimits = []\n",
    )
    .unwrap();
    // A busybox image made here (no registry needed).
    let rootfs = s.mkdir("rootfs/bin");
    let busybox = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v busybox"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    std::fs::copy(busybox.trim(), rootfs.join("busybox")).expect("copy busybox");
    for c in ["sh", "cat", "ls", "sleep", "echo", "test"] {
        std::os::unix::fs::symlink("busybox", rootfs.join(c)).unwrap();
    }
    let tar = s.path("rootfs.tar");
    assert_ok(
        &Command::new("tar")
            .arg("-C")
            .arg(s.path("rootfs"))
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .output()
            .unwrap(),
    );
    let o = podman
        .cmd()
        .arg("import")
        .arg(&tar)
        .arg(IMAGE)
        .output()
        .unwrap();
    assert_ok(&o);

    // The workspace: one file to read, persisted as ws/build.
    let src = s.mkdir("src");
    std::fs::write(src.join("hello.txt"), "hello from the workspace\n").unwrap();
    std::fs::create_dir(src.join("lib")).unwrap();
    std::fs::write(src.join("lib/util.txt"), "util\n").unwrap();
    assert_ok(&persist(&s, &[s.store("store")], "ws", "build", &src, &[]));

    // The job directory, shared (as systemd makes / on a host), so binds of it can receive
    // mounts made later.
    let job = s.mkdir("job");
    for args in [
        vec!["--bind", job.to_str().unwrap(), job.to_str().unwrap()],
        vec!["--make-shared", job.to_str().unwrap()],
    ] {
        assert_ok(&Command::new("mount").args(&args).output().unwrap());
    }
    let ws = job.join("ws");
    let checkout = job.join("checkout");
    std::fs::create_dir(&ws).unwrap();
    std::fs::create_dir(&checkout).unwrap();
    std::fs::write(checkout.join("README"), "the job's own checkout\n").unwrap();

    // Containers started before the mount: one with rslave, one with the default.
    let wait_go =
        "i=0; while [ ! -e /job/go ]; do sleep 0.1; i=$((i+1)); [ $i -gt 900 ] && exit 9; done";
    let slave = podman.run(
        &format!("{}:/job:rslave", job.display()),
        &format!(
            "echo up > /job/slave-started; {wait_go}; cat /job/ws/hello.txt; cat /job/checkout/lib/util.txt; \
             cat /job/checkout/README; echo written-in-container > /job/checkout/out.txt"
        ),
    );
    let private = podman.run(
        &format!("{}:/job", job.display()),
        &format!(
            "echo up > /job/private-started; {wait_go}; echo entries: $(ls -A /job/ws | wc -l)"
        ),
    );
    wait_for(&job.join("slave-started"), Duration::from_secs(60));
    wait_for(&job.join("private-started"), Duration::from_secs(60));

    // Now the executor mounts the workspace and attaches it over the checkout.
    let _m = mount(&s, &[s.store("store")], "ws", &["build"], &ws, &[]);
    let o = s.wsfs(&[
        "attach",
        "--store",
        &s.store("store"),
        "--workspace",
        "ws",
        "--layer",
        "build",
        "--at",
        checkout.to_str().unwrap(),
        "--scratch",
        s.path("scratch").to_str().unwrap(),
    ]);
    assert_ok(&o);
    let _a = Attached {
        at: checkout.clone(),
        run_dir: s.run_dir(),
    };
    std::fs::write(job.join("go"), "").unwrap();

    let out = finish(slave, "with rslave");
    assert_eq!(
        out, "hello from the workspace\nutil\nthe job's own checkout\n",
        "an rslave container sees the mount and the attach made after it started"
    );
    // Its write went through the attach: visible on the host, kept in the scratch folder.
    assert_eq!(
        std::fs::read_to_string(checkout.join("out.txt")).unwrap(),
        "written-in-container\n"
    );
    assert!(s.path("scratch/upper/out.txt").exists());
    let out = finish(private, "with default propagation");
    assert_eq!(
        out.trim(),
        "entries: 0",
        "with rprivate a container started before the mount sees the empty directory (the documented pitfall)"
    );

    // A container started after the mount sees it whatever the propagation.
    let late = podman.run(
        &format!("{}:/job", job.display()),
        "cat /job/ws/hello.txt; cat /job/checkout/out.txt",
    );
    assert_eq!(
        finish(late, "started after the mount"),
        "hello from the workspace\nwritten-in-container\n"
    );

    let o = s.wsfs(&["umount", checkout.to_str().unwrap()]);
    assert_ok(&o);
    let o = s.wsfs(&["umount", ws.to_str().unwrap()]);
    assert_ok(&o);
    assert_ok(&Command::new("umount").arg(&job).output().unwrap());
}
