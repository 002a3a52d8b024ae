//! `wsfs persist` and `wsfs verify` through the real binary on file:// stores.

mod common;
use common::*;

fn stores(s: &Scratch) -> Vec<String> {
    vec![s.store("s1"), s.store("s2")]
}

fn verify(s: &Scratch, stores: &[String], layers: &[&str], extra: &[&str]) -> std::process::Output {
    let mut args = vec!["verify".to_string()];
    for st in stores {
        args.extend(["--store".into(), st.clone()]);
    }
    args.extend(["--workspace".into(), "ws".into()]);
    for l in layers {
        args.extend(["--layer".into(), l.to_string()]);
    }
    args.extend(extra.iter().map(|x| x.to_string()));
    let refs: Vec<&str> = args.iter().map(|x| x.as_str()).collect();
    s.wsfs(&refs)
}

#[test]
fn persist_then_verify_across_store_damage() {
    let s = Scratch::new();
    let src = s.path("src");
    make_tree(&src, 3000, 0, 7);
    // A file of hundreds of MB.
    std::fs::write(src.join("huge.bin"), Rng::new(9).bytes(200 << 20)).unwrap();
    let st = stores(&s);
    let o = persist(&s, &st, "ws", "l1", &src, &[]);
    assert_ok(&o);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(out.contains("ref committed"), "{out}");
    assert!(out.contains("3004 files"), "summary counts files: {out}");

    // Complete on both.
    let v = verify(&s, &st, &["l1"], &[]);
    assert_ok(&v);
    let complete_stores = String::from_utf8_lossy(&v.stdout)
        .lines()
        .filter(|l| l.starts_with("file://") && l.ends_with(": complete"))
        .count();
    assert_eq!(complete_stores, 2, "{}", text(&v));
    assert_ok(&verify(&s, &st, &["l1"], &["--deep", "--all"]));

    // Every chunk gone from the first store: still mountable, first store reported incomplete.
    let removed = remove_chunks(&s.path("s1"));
    assert!(removed > 100, "a 200 MiB file spans many chunks");
    let v = verify(&s, &st, &["l1"], &[]);
    assert_ok(&v);
    let t = String::from_utf8_lossy(&v.stdout).to_string();
    assert!(t.contains("s1: INCOMPLETE"), "{t}");
    assert!(
        t.contains(&format!("{} of {} chunks missing", removed, removed)),
        "{t}"
    );
    // --all requires every store complete.
    assert_code(&verify(&s, &st, &["l1"], &["--all"]), 3);

    // One chunk gone from both stores: no complete copy anywhere.
    let victim = chunk_files(&s.path("s2")).into_iter().next().unwrap();
    std::fs::remove_file(&victim).unwrap();
    let v = verify(&s, &st, &["l1"], &[]);
    assert_code(&v, 3);
    assert!(
        String::from_utf8_lossy(&v.stderr)
            .contains("no store holds a complete copy of layer(s): l1"),
        "{}",
        text(&v)
    );

    // A layer nobody has.
    assert_code(&verify(&s, &st, &["nope"], &[]), 3);
}

#[test]
fn persist_skips_chunks_a_store_already_has() {
    let s = Scratch::new();
    let src = s.path("src");
    make_tree(&src, 200, 3, 1);
    let st = stores(&s);
    assert_ok(&persist(&s, &st, "ws", "a", &src, &[]));
    let o = persist(&s, &st, "ws", "b", &src, &[]);
    assert_ok(&o);
    let t = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        t.contains(" 0 new chunks"),
        "second persist of the same tree uploads nothing new: {t}"
    );
}

#[test]
fn persist_requires_every_store_by_default() {
    let s = Scratch::new();
    let src = s.path("src");
    make_tree(&src, 20, 0, 3);
    // /dev/null is a file: no directory can be created below it, even by root.
    let bad = "file:///dev/null/wsfs-store".to_string();
    let st = vec![s.store("good"), bad.clone()];
    let o = persist(&s, &st, "ws", "l", &src, &[]);
    assert_code(&o, 1);
    let e = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(e.contains("committed on 1 of 2 stores"), "{e}");
    assert!(e.contains("NOT committed"), "{e}");
    // The good store still got a complete, committed layer.
    assert_ok(&verify(&s, &[s.store("good")], &["l"], &[]));
    // With --require any the same persist succeeds.
    assert_ok(&persist(&s, &st, "ws", "l2", &src, &["--require", "any"]));
    // --require 3 with two stores is a usage error.
    assert_code(&persist(&s, &st, "ws", "l3", &src, &["--require", "3"]), 2);
}

#[test]
fn persist_selected_paths_and_special_files() {
    let s = Scratch::new();
    let src = s.path("src");
    std::fs::create_dir_all(src.join("keep/sub")).unwrap();
    std::fs::create_dir_all(src.join("drop")).unwrap();
    std::fs::write(src.join("keep/sub/a.txt"), b"a").unwrap();
    std::fs::write(src.join("drop/b.txt"), b"b").unwrap();
    std::fs::write(src.join("top.log"), b"log").unwrap();
    let fifo = std::ffi::CString::new(src.join("fifo").to_str().unwrap()).unwrap();
    // SAFETY: valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let st = vec![s.store("s1")];
    let o = persist(&s, &st, "ws", "l", &src, &["keep", "*.log"]);
    assert_ok(&o);
    let t = text(&o);
    assert!(t.contains("persisted 2 files, 2 dirs"), "{t}");
    let o = persist(&s, &st, "ws", "all", &src, &[]);
    assert_ok(&o);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("skipped special file"),
        "{}",
        text(&o)
    );
}

#[test]
fn bad_input_is_a_clear_usage_error() {
    let s = Scratch::new();
    let src = s.mkdir("src");
    // Bad names.
    let o = persist(&s, &[s.store("s")], "../etc", "l", &src, &[]);
    assert_code(&o, 2);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("workspace name"),
        "{}",
        text(&o)
    );
    // Missing root.
    assert_code(
        &persist(&s, &[s.store("s")], "ws", "l", &s.path("nope"), &[]),
        2,
    );
    // No stores.
    let o = s.wsfs(&[
        "persist",
        "--workspace",
        "ws",
        "--layer",
        "l",
        "--root",
        src.to_str().unwrap(),
    ]);
    assert_code(&o, 2);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no stores given"),
        "{}",
        text(&o)
    );
    // Not a URL.
    assert_code(&persist(&s, &["not a url".into()], "ws", "l", &src, &[]), 2);
    // A malformed config file.
    let cfg = s.path("bad.toml");
    std::fs::write(&cfg, "[[store]]\nurl = 42\n").unwrap();
    let o = s.wsfs(&[
        "verify",
        "--config",
        cfg.to_str().unwrap(),
        "--workspace",
        "ws",
        "--layer",
        "l",
    ]);
    assert_code(&o, 2);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is not valid"),
        "{}",
        text(&o)
    );
    // Escaping paths.
    assert_code(&persist(&s, &[s.store("s")], "ws", "l", &src, &["../x"]), 2);
    // Unknown flag: clap's usage exit.
    assert_code(&s.wsfs(&["persist", "--bogus"]), 2);
}

#[test]
fn config_file_orders_the_chain_before_flags() {
    let s = Scratch::new();
    let src = s.path("src");
    make_tree(&src, 10, 0, 5);
    let cfg = s.path("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[store]]\nurl = \"{}\"\noptions = {{ wsfs_request_timeout = \"1s\" }}\n",
            s.store("cfg")
        ),
    )
    .unwrap();
    let o = s.wsfs(&[
        "persist",
        "--config",
        cfg.to_str().unwrap(),
        "--store",
        &s.store("flag"),
        "--workspace",
        "ws",
        "--layer",
        "l",
        "--root",
        src.to_str().unwrap(),
    ]);
    assert_ok(&o);
    let t = String::from_utf8_lossy(&o.stdout).to_string();
    let a = t.find("/cfg:").expect("config store listed");
    let b = t.find("/flag:").expect("flag store listed");
    assert!(a < b, "config stores come first: {t}");
}

#[test]
fn bad_mount_input_is_a_usage_error_before_anything_starts() {
    let s = Scratch::new();
    let src = s.path("src");
    make_tree(&src, 5, 0, 3);
    assert_ok(&persist(&s, &[s.store("s1")], "ws", "l1", &src, &[]));
    let mp = s.mkdir("mnt");
    let st = s.store("s1");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--store", &st, "--workspace", "ws", "--layer", "a/b"],
            "layer name",
        ),
        (
            vec!["--store", &st, "--workspace", "ws", "--layer", ".."],
            "layer name",
        ),
        (
            vec!["--store", &st, "--workspace", "ws", "--layer", ""],
            "layer name",
        ),
        (
            vec!["--store", &st, "--workspace", "ws", "--layer", "a\nb"],
            "layer name",
        ),
        (
            vec!["--store", &st, "--workspace", "..", "--layer", "l1"],
            "workspace name",
        ),
        (
            vec![
                "--store",
                &st,
                "--workspace",
                "ws",
                "--layer",
                "l1",
                "--request-timeout",
                "0s",
            ],
            "--request-timeout",
        ),
        (
            vec![
                "--store",
                &st,
                "--workspace",
                "ws",
                "--layer",
                "l1",
                "--read-deadline",
                "0s",
            ],
            "--read-deadline",
        ),
        (
            vec!["--store", "file:", "--workspace", "ws", "--layer", "l1"],
            "file:",
        ),
        (vec!["--workspace", "ws", "--layer", "l1"], "no store"),
        (
            vec![
                "--store",
                &st,
                "--workspace",
                "ws",
                "--layer",
                "l1",
                "--metrics-file",
                "x.txt",
            ],
            ".prom",
        ),
    ];
    for (args, says) in cases {
        let mut a = vec!["mount"];
        a.extend(args.iter().copied());
        a.push(mp.to_str().unwrap());
        let o = s.wsfs(&a);
        assert_code(&o, 2);
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(says),
            "{args:?} should say {says:?}: {}",
            text(&o)
        );
        assert!(!is_mounted(&mp), "{args:?}");
    }
}

#[test]
fn a_closed_pipe_ends_a_listing_quietly() {
    let s = Scratch::new();
    let src = s.path("src");
    make_tree(&src, 5, 0, 3);
    assert_ok(&persist(&s, &[s.store("s1")], "ws", "l1", &src, &[]));
    for args in [vec!["ls", "--store", &s.store("s1")], vec!["status"]] {
        // A pipe whose reader is gone, as when `| head` has exited.
        let mut fds = [0; 2];
        // SAFETY: fds is a valid array of two ints.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both descriptors were just created; the write end moves into the child.
        unsafe { libc::close(fds[0]) };
        let out = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[1]) };
        let o = std::process::Command::new(WSFS)
            .args(&args)
            .env("WSFS_RUN_DIR", s.run_dir())
            .stdout(out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            o.status.signal(),
            Some(libc::SIGPIPE),
            "{args:?}: {}",
            text(&o)
        );
    }
}
