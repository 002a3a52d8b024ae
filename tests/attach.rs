//! `wsfs attach`: a writable overlay of the workspace over a checkout, in which build tools work,
//! and after which the checkout is exactly as it was.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

/// Path → (mode, content or link target, mtime) for every entry under `root`.
fn snapshot(root: &Path) -> BTreeMap<String, (u32, Vec<u8>, i64, i64)> {
    let mut m = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).min_depth(1) {
        let e = e.unwrap();
        let md = e.path().symlink_metadata().unwrap();
        let body = if md.file_type().is_symlink() {
            std::fs::read_link(e.path())
                .unwrap()
                .into_os_string()
                .into_encoded_bytes()
        } else if md.is_file() {
            std::fs::read(e.path()).unwrap()
        } else {
            Vec::new()
        };
        let rel = e.path().strip_prefix(root).unwrap().display().to_string();
        m.insert(rel, (md.mode(), body, md.mtime(), md.mtime_nsec()));
    }
    m
}

fn sh(dir: &Path, script: &str) -> std::process::Output {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn build_tools_work_in_an_attached_checkout_and_it_is_restored_after() {
    require_fuse();
    let s = Scratch::new();
    // The upstream job's outputs.
    let ws = s.path("ws-src");
    std::fs::create_dir_all(ws.join("build")).unwrap();
    std::fs::write(ws.join("build/lib.o"), b"object code").unwrap();
    std::fs::write(ws.join("VERSION"), b"from the workspace\n").unwrap();
    assert_ok(&persist(&s, &[s.store("st")], "ws", "build", &ws, &[]));
    // The downstream job's checkout.
    let co = s.path("checkout");
    std::fs::create_dir_all(co.join("src")).unwrap();
    std::fs::write(co.join("src/main.c"), b"int main(){return 0;}\n").unwrap();
    std::fs::write(co.join("VERSION"), b"from the checkout\n").unwrap();
    std::fs::write(
        co.join("Makefile"),
        b"all: out/app.txt\nout/app.txt: src/main.c build/lib.o\n\tmkdir -p out\n\tcat src/main.c build/lib.o > out/app.txt\n",
    )
    .unwrap();
    let before = snapshot(&co);
    let scratch = s.path("scratch");
    let o = s.wsfs(&[
        "attach",
        "--store",
        &s.store("st"),
        "--workspace",
        "ws",
        "--layer",
        "build",
        "--at",
        co.to_str().unwrap(),
        "--scratch",
        scratch.to_str().unwrap(),
    ]);
    assert_ok(&o);
    // The checkout's files stay visible; workspace files win where both have a path.
    assert_eq!(
        std::fs::read(co.join("src/main.c")).unwrap(),
        b"int main(){return 0;}\n"
    );
    assert_eq!(
        std::fs::read(co.join("VERSION")).unwrap(),
        b"from the workspace\n"
    );
    assert_eq!(
        std::fs::read(co.join("build/lib.o")).unwrap(),
        b"object code"
    );
    // make writes its outputs.
    let o = sh(&co, "make");
    assert!(o.status.success(), "make: {}", text(&o));
    assert_eq!(
        std::fs::read(co.join("out/app.txt")).unwrap(),
        b"int main(){return 0;}\nobject code"
    );
    // Create, modify, delete, rename, chmod, symlink, hard-link.
    let o = sh(
        &co,
        "echo more >> VERSION && rm build/lib.o && mv src/main.c src/app.c && chmod 700 Makefile \
         && ln -s app.c src/link.c && ln src/app.c src/hard.c && echo x > new.txt",
    );
    assert!(o.status.success(), "file operations: {}", text(&o));
    // git works inside.
    let o = sh(
        &co,
        "git init -q && git -c user.name=t -c user.email=t@t add -A && git -c user.name=t -c user.email=t@t commit -qm build && git log --oneline | wc -l",
    );
    assert!(o.status.success(), "git: {}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "1");
    // Unmount: the checkout is byte-for-byte and mode-for-mode what it was; nothing left mounted.
    assert_ok(&s.wsfs(&["umount", co.to_str().unwrap()]));
    assert!(!is_mounted(&co));
    let ours = s.dir.path().display().to_string();
    assert!(
        !mount_table().iter().any(|m| m.starts_with(&ours)),
        "{:?}",
        mount_table()
    );
    assert!(
        !mount_table()
            .iter()
            .any(|m| m.starts_with(&ours) && m.contains("/attach/")),
        "workspace mount gone (other tests' attaches may run meanwhile: only ours count)"
    );
    assert_eq!(
        snapshot(&co),
        before,
        "the checkout is exactly as before the attach"
    );
    assert!(!scratch.exists(), "scratch folder removed");
}

#[test]
fn keep_scratch_and_refusals() {
    require_fuse();
    let s = Scratch::new();
    let ws = s.path("ws-src");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::write(ws.join("a"), b"a").unwrap();
    assert_ok(&persist(&s, &[s.store("st")], "ws", "l", &ws, &[]));
    let co = s.mkdir("co");
    let scratch = s.path("scratch");
    let args = |layer: &str| {
        vec![
            "attach".to_string(),
            "--store".into(),
            s.store("st"),
            "--workspace".into(),
            "ws".into(),
            "--layer".into(),
            layer.into(),
            "--at".into(),
            co.display().to_string(),
            "--scratch".into(),
            scratch.display().to_string(),
        ]
    };
    let run = |a: Vec<String>| {
        let r: Vec<&str> = a.iter().map(|x| x.as_str()).collect();
        s.wsfs(&r)
    };
    // A missing layer: exit 3, nothing mounted, no scratch left.
    let o = run(args("nope"));
    assert_code(&o, 3);
    assert!(!is_mounted(&co));
    assert!(!scratch.exists());
    // --keep-scratch keeps the writes.
    let mut a = args("l");
    a.push("--keep-scratch".into());
    assert_ok(&run(a));
    std::fs::write(co.join("written"), b"w").unwrap();
    // Attaching twice at the same place is refused (already a mount).
    assert_code(&run(args("l")), 6);
    assert_ok(&s.wsfs(&["umount", co.to_str().unwrap()]));
    assert!(!is_mounted(&co));
    assert_eq!(std::fs::read(scratch.join("upper/written")).unwrap(), b"w");
    assert!(!co.join("written").exists());
    // Not root: exit 6 and a reason.
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", WSFS])
        .args([
            "attach",
            "--store",
            "file:///nonexistent",
            "--workspace",
            "ws",
            "--layer",
            "l",
            "--at",
            "/tmp",
        ])
        .env("WSFS_RUN_DIR", "/tmp/wsfs-nobody-test")
        .output()
        .unwrap();
    assert_code(&o, 6);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("attach needs root"),
        "{}",
        text(&o)
    );
}

#[test]
fn prefetch_all_warms_the_workspace_under_the_overlay_and_umount_mid_warm_up_works() {
    require_fuse();
    let s = Scratch::new();
    let ws = s.path("ws-src");
    for i in 0..3000 {
        let d = ws.join(format!("pkg{:02}/m{i}", i % 50));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("index.js"), format!("module.exports = {i};\n")).unwrap();
    }
    assert_ok(&persist(&s, &[s.store("st")], "ws", "build", &ws, &[]));
    let co = s.path("checkout");
    std::fs::create_dir_all(&co).unwrap();
    std::fs::write(co.join("README"), b"checkout\n").unwrap();
    let before = snapshot(&co);
    // Detached on drop if an assertion fails on the way.
    let _guard = Attached {
        at: co.clone(),
        run_dir: s.run_dir(),
    };
    let attach = || {
        s.wsfs(&[
            "attach",
            "--store",
            &s.store("st"),
            "--workspace",
            "ws",
            "--layer",
            "build",
            "--at",
            co.to_str().unwrap(),
            "--scratch",
            s.path("scratch").to_str().unwrap(),
            "--prefetch",
            "all",
        ])
    };
    // This test's workspace mount only: other tests attach at the same time.
    let ours = s.run_dir().join("attach").display().to_string();
    let inner = || -> serde_json::Value {
        let o = s.wsfs(&["status", "--json"]);
        assert_ok(&o);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountpoint"].as_str().unwrap_or("").starts_with(&ours))
            .cloned()
            .expect("the attach's workspace mount")
    };
    // Detach right away, while the warm-up is listing: not refused as busy.
    assert_ok(&attach());
    assert_ok(&s.wsfs(&["umount", co.to_str().unwrap()]));
    // Only this test's mounts count: other tests attach at the same time.
    let ours = s.dir.path().display().to_string();
    assert!(
        !mount_table()
            .iter()
            .any(|m| m.starts_with(&ours) && m.contains("/attach/")),
        "{:?}",
        mount_table()
    );
    assert_eq!(snapshot(&co), before);
    // Attach again and let the warm-up finish: reads through the overlay are right and are
    // served by the kernel's caches of the workspace mount.
    assert_ok(&attach());
    let t = std::time::Instant::now();
    let st = loop {
        let st = inner();
        if st["warmup"]["state"] != "running" {
            break st;
        }
        assert!(t.elapsed().as_secs() < 60, "warm-up never ended: {st}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(st["warmup"]["state"], "done", "{st}");
    assert_eq!(st["warmup"]["files_stored"].as_u64(), Some(3000), "{st}");
    for i in (0..3000).step_by(7) {
        let p = format!("pkg{:02}/m{i}/index.js", i % 50);
        assert_eq!(
            std::fs::read_to_string(co.join(&p)).unwrap(),
            format!("module.exports = {i};\n"),
            "{p}"
        );
    }
    assert_eq!(std::fs::read(co.join("README")).unwrap(), b"checkout\n");
    let after = inner();
    assert_eq!(after["fuse_ops"]["read"].as_u64(), Some(0), "{after}");
    assert_ok(&s.wsfs(&["umount", co.to_str().unwrap()]));
    assert_eq!(snapshot(&co), before);
}

/// Runs `script` in `dir` as user and group 65534 (nobody), as a CI job's own user would.
fn as_nobody(dir: &Path, script: &str) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .current_dir(dir)
        .output()
        .expect("setpriv (util-linux)")
}

#[test]
fn a_job_user_can_write_at_the_top_of_its_attached_checkout() {
    require_fuse();
    let s = Scratch::new();
    // The job's user must be able to reach the test's directories.
    std::fs::set_permissions(
        s.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let src = s.mkdir("src");
    std::fs::create_dir(src.join("dist")).unwrap();
    std::fs::write(src.join("dist/app"), "built\n").unwrap();
    assert_ok(&persist(&s, &[s.store("st")], "ws", "build", &src, &[]));
    let attach = |at: &Path, extra: &[&str]| {
        let mut args = vec![
            "attach",
            "--store",
            Box::leak(s.store("st").into_boxed_str()),
            "--workspace",
            "ws",
            "--layer",
            "build",
            "--at",
            Box::leak(at.display().to_string().into_boxed_str()),
        ];
        args.extend_from_slice(extra);
        let o = s.wsfs(&args);
        assert_ok(&o);
        Attached {
            at: at.to_path_buf(),
            run_dir: s.run_dir(),
        }
    };

    // A root-owned checkout, attached with --uid/--gid: the top directory becomes the user's.
    let a = s.mkdir("checkout-a");
    let _ga = attach(&a, &["--uid", "65534", "--gid", "65534"]);
    let o = as_nobody(
        &a,
        "mkdir results && echo ok > results/x && echo more >> dist/app && cat dist/app",
    );
    assert!(
        o.status.success(),
        "the job's user writes in its checkout: {}",
        text(&o)
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "built\nmore\n");
    let md = std::fs::metadata(&a).unwrap();
    assert_eq!((md.uid(), md.gid()), (65534, 65534));

    // Without --uid/--gid the top keeps the checkout's own owner and mode.
    let b = s.mkdir("checkout-b");
    std::os::unix::fs::chown(&b, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&b, std::os::unix::fs::PermissionsExt::from_mode(0o750)).unwrap();
    let _gb = attach(&b, &[]);
    let md = std::fs::metadata(&b).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777),
        (65534, 65534, 0o750)
    );
    let o = as_nobody(&b, "touch top-level-file");
    assert!(o.status.success(), "{}", text(&o));
}
