//! Stored data lifecycle: `ls`, `rm`, `gc` (expiry, mark and sweep, grace, leases, the gc lock
//! against persists in flight), pinned parents, and the persist/resolve edge cases — on file://
//! stores and on moto.

mod common;
use common::emulators::*;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn stores(s: &Scratch) -> Vec<String> {
    vec![s.store("s1"), s.store("s2")]
}

/// `--store A --store B` flags.
fn flags(stores: &[String]) -> Vec<String> {
    stores
        .iter()
        .flat_map(|st| ["--store".to_string(), st.clone()])
        .collect()
}

fn run(s: &Scratch, args: &[&str], stores: &[String]) -> std::process::Output {
    let mut a: Vec<String> = args.iter().map(|x| x.to_string()).collect();
    a.extend(flags(stores));
    let r: Vec<&str> = a.iter().map(|x| x.as_str()).collect();
    s.wsfs(&r)
}

fn json(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("json: {e}: {}", text(o)))
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    if !dir.exists() {
        return Vec::new();
    }
    let mut v: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().to_path_buf())
        .collect();
    v.sort();
    v
}

/// A small tree with a unique file and a file shared with other trees (`shared.bin`).
fn tree(s: &Scratch, name: &str, seed: u64) -> PathBuf {
    let src = s.path(name);
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("shared.bin"), Rng::new(1).bytes(300_000)).unwrap();
    std::fs::write(src.join("unique.bin"), Rng::new(seed).bytes(400_000)).unwrap();
    std::fs::write(src.join("d/small.txt"), format!("small {name}\n")).unwrap();
    src
}

#[test]
fn ls_shows_workspaces_layers_pins_sizes_and_stores() {
    let s = Scratch::new();
    let st = stores(&s);
    let base = tree(&s, "base", 2);
    let child = tree(&s, "child", 3);
    assert_ok(&persist(&s, &st, "ws", "base", &base, &[]));
    assert_ok(&persist(
        &s,
        &st,
        "ws",
        "child",
        &child,
        &["--parent", "base"],
    ));
    // Only on the first store.
    assert_ok(&persist(&s, &st[..1], "ws2", "solo", &base, &[]));
    let o = run(&s, &["ls", "--json"], &st);
    assert_ok(&o);
    let v = json(&o);
    let ws: Vec<&str> = v["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["workspace"].as_str().unwrap())
        .collect();
    assert_eq!(ws, ["ws", "ws2"], "{v}");
    let layers = &v["workspaces"][0]["layers"];
    assert_eq!(layers[0]["layer"], "base");
    assert_eq!(layers[1]["layer"], "child");
    assert_eq!(layers[1]["parents"][0], "base", "{v}");
    assert_eq!(
        layers[1]["pinned"]["base"], layers[0]["manifest"],
        "the child pins the base it was persisted against: {v}"
    );
    assert_eq!(layers[0]["files"].as_u64(), Some(3));
    assert_eq!(layers[0]["logical_bytes"].as_u64(), Some(700_000 + 11));
    assert!(layers[0]["stored_bytes"].as_u64().unwrap() > 0);
    assert_eq!(layers[0]["stores"].as_array().unwrap().len(), 2);
    assert_eq!(
        v["workspaces"][1]["layers"][0]["stores"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // The table names the same things.
    let o = run(&s, &["ls"], &st);
    let t = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        t.contains("child") && t.contains("base") && t.contains("ws2"),
        "{t}"
    );
    // One workspace; an unknown one is exit 3.
    let o = run(&s, &["ls", "--workspace", "ws2", "--json"], &st);
    assert_eq!(json(&o)["workspaces"].as_array().unwrap().len(), 1);
    assert_code(&run(&s, &["ls", "--workspace", "nope"], &st), 3);
}

#[test]
fn rm_and_gc_collect_only_what_nothing_reaches() {
    require_fuse();
    let s = Scratch::new();
    let st = stores(&s);
    let keep = tree(&s, "keep", 2);
    let gone = tree(&s, "gone", 3);
    assert_ok(&persist(&s, &st, "kept", "l", &keep, &[]));
    assert_ok(&persist(&s, &st, "expired", "l", &gone, &[]));
    let before = files_under(&s.path("s1/chunks")).len();
    assert_ok(&run(&s, &["rm", "--workspace", "expired"], &st));
    // Refs only: chunks stay until gc.
    assert_eq!(files_under(&s.path("s1/chunks")).len(), before);
    // Inside the grace period nothing unreached goes.
    let o = run(&s, &["gc", "--older-than", "1h", "--json"], &st);
    assert_ok(&o);
    let v = json(&o);
    assert_eq!(v["stores"][0]["chunks"]["deleted"].as_u64(), Some(0), "{v}");
    assert!(
        v["stores"][0]["chunks"]["spared_young"].as_u64().unwrap() >= 1,
        "{v}"
    );
    // A dry run with no grace says what would go, and deletes nothing.
    let o = run(
        &s,
        &[
            "gc",
            "--older-than",
            "1h",
            "--grace",
            "0s",
            "--dry-run",
            "--json",
        ],
        &st,
    );
    assert_ok(&o);
    let dry = json(&o);
    assert_eq!(files_under(&s.path("s1/chunks")).len(), before);
    let would = dry["stores"][0]["chunks"]["deleted"].as_u64().unwrap();
    assert!(would >= 1, "{dry}");
    // The real thing, twice (idempotent).
    for _ in 0..2 {
        let o = run(
            &s,
            &["gc", "--older-than", "1h", "--grace", "0s", "--json"],
            &st,
        );
        assert_ok(&o);
        let v = json(&o);
        assert_eq!(v["stores"][0]["status"], "done", "{v}");
        assert_eq!(v["stores"][1]["status"], "done", "{v}");
    }
    assert_eq!(
        files_under(&s.path("s1/chunks")).len() as u64,
        before as u64 - would
    );
    // The expired workspace's unique chunk is gone, the shared one stayed, the kept workspace is
    // complete and mounts identically.
    assert_ok(&run(
        &s,
        &[
            "verify",
            "--workspace",
            "kept",
            "--layer",
            "l",
            "--all",
            "--deep",
        ],
        &st,
    ));
    let mp = s.mkdir("mnt");
    let _m = mount(&s, &st, "kept", &["l"], &mp, &[]);
    compare_trees(&keep, &mp);
    let o = Command::new("rsync")
        .args(["-rlpc", "--dry-run", "--itemize-changes", "--delete"])
        .arg(format!("{}/", keep.display()))
        .arg(format!("{}/", mp.display()))
        .output()
        .expect("rsync");
    assert!(
        o.status.success() && o.stdout.is_empty(),
        "rsync -c finds differences: {}",
        text(&o)
    );
    assert_code(
        &run(
            &s,
            &["verify", "--workspace", "expired", "--layer", "l"],
            &st,
        ),
        3,
    );
}

#[test]
fn a_mounted_workspace_is_never_collected_and_goes_after_unmount() {
    require_fuse();
    let s = Scratch::new();
    let st = stores(&s);
    let src = s.path("src");
    make_tree(&src, 80, 2, 31);
    assert_ok(&persist(&s, &st, "ws", "l1", &src, &[]));
    let mp = s.mkdir("mnt");
    let m = mount(&s, &st, "ws", &["l1"], &mp, &["--prefetch", "none"]);
    // The lease is written before the layers are resolved, and names the manifests right after.
    let t = Instant::now();
    while files_under(&s.path("s1/workspaces/ws/leases")).is_empty() {
        assert!(t.elapsed() < Duration::from_secs(10), "no lease written");
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = run(
        &s,
        &["gc", "--older-than", "0s", "--grace", "0s", "--json"],
        &st,
    );
    assert_ok(&o);
    let v = json(&o);
    assert_eq!(v["stores"][0]["workspaces_leased"][0], "ws", "{v}");
    assert_eq!(
        v["stores"][0]["refs_expired"].as_array().unwrap().len(),
        0,
        "{v}"
    );
    // Every file still reads right (nothing was fetched before the gc).
    compare_trees(&src, &mp);
    drop(m);
    // Unmounted: the lease is gone and the next gc collects the workspace.
    assert!(files_under(&s.path("s1/workspaces/ws/leases")).is_empty());
    let o = run(
        &s,
        &["gc", "--older-than", "0s", "--grace", "0s", "--json"],
        &st,
    );
    assert_ok(&o);
    let v = json(&o);
    assert_eq!(v["stores"][0]["refs_expired"][0], "ws/l1", "{v}");
    assert!(files_under(&s.path("s1/chunks")).is_empty());
    assert!(files_under(&s.path("s1/manifests")).is_empty());
}

#[test]
fn gc_never_sweeps_under_a_persist_in_flight() {
    let s = Scratch::new();
    let st = stores(&s);
    let old = tree(&s, "old", 2);
    assert_ok(&persist(&s, &st, "ws", "old", &old, &[]));
    assert_ok(&run(
        &s,
        &["rm", "--workspace", "ws", "--layer", "old"],
        &st,
    ));
    // A second persist of the same content relies on the (unreached, old) chunks it finds.
    let hold = s.path("hold");
    let p = held_at(&s, &persist_args(&st, "new", &old), "before-commit", &hold);
    let chunks_before = files_under(&s.path("s1/chunks"));
    // gc waits for the persist, then gives up on the store: nothing deleted.
    let o = run(
        &s,
        &[
            "gc",
            "--older-than",
            "0s",
            "--grace",
            "0s",
            "--wait",
            "2s",
            "--json",
        ],
        &st,
    );
    assert_code(&o, 1);
    let v = json(&o);
    assert_eq!(v["stores"][0]["status"], "skipped", "{v}");
    assert!(
        v["stores"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("persists still in flight"),
        "{v}"
    );
    assert_eq!(files_under(&s.path("s1/chunks")), chunks_before);
    // The persist goes on and commits a complete layer.
    std::fs::remove_file(&hold).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_ok(&run(
        &s,
        &[
            "verify",
            "--workspace",
            "ws",
            "--layer",
            "new",
            "--all",
            "--deep",
        ],
        &st,
    ));
    // With the persist done, gc runs; the new layer (younger than the retention) stays whole.
    let o = run(&s, &["gc", "--older-than", "1h", "--grace", "0s"], &st);
    assert_ok(&o);
    assert_ok(&run(
        &s,
        &[
            "verify",
            "--workspace",
            "ws",
            "--layer",
            "new",
            "--all",
            "--deep",
        ],
        &st,
    ));
}

#[test]
fn a_persist_waits_for_a_gc_holding_the_store() {
    let s = Scratch::new();
    let st = stores(&s);
    let src = tree(&s, "src", 2);
    // A live gc lock on the second store (as a running gc writes it).
    let lock = s.path("s2/gc/lock");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    std::fs::write(
        &lock,
        format!(
            r#"{{"kind":"gc","holder":"other host pid 1","created":{now},"expires":{}}}"#,
            now + 600
        ),
    )
    .unwrap();
    let t = Instant::now();
    let o = persist(&s, &st, "ws", "l", &src, &["--gc-wait", "2s"]);
    assert!(
        t.elapsed() >= Duration::from_secs(2),
        "it waited for the gc"
    );
    assert_code(&o, 1);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("a gc holds the store"), "{}", text(&o));
    assert!(
        !s.path("s2/workspaces/ws/layers/l").exists(),
        "no ref where gc runs"
    );
    // With --require any it commits where it may.
    assert_ok(&persist(
        &s,
        &st,
        "ws",
        "l",
        &src,
        &["--gc-wait", "1s", "--require", "any"],
    ));
    assert!(s.path("s1/workspaces/ws/layers/l").exists());
    std::fs::remove_file(&lock).unwrap();
    assert_ok(&persist(&s, &st, "ws", "l", &src, &[]));
    assert!(s.path("s2/workspaces/ws/layers/l").exists());
    // A persist leaves no lease behind.
    assert!(files_under(&s.path("s1/workspaces/ws/leases")).is_empty());
}

#[test]
fn a_child_mounts_the_parent_it_was_persisted_against() {
    require_fuse();
    let s = Scratch::new();
    let st = stores(&s);
    let p1 = s.path("p1");
    std::fs::create_dir_all(&p1).unwrap();
    std::fs::write(p1.join("lib.txt"), b"parent v1\n").unwrap();
    assert_ok(&persist(&s, &st, "ws", "parent", &p1, &[]));
    let c = s.path("c");
    std::fs::create_dir_all(&c).unwrap();
    std::fs::write(c.join("artifact"), b"built from parent v1\n").unwrap();
    assert_ok(&persist(
        &s,
        &st,
        "ws",
        "child",
        &c,
        &["--parent", "parent"],
    ));
    // The parent is persisted again.
    let p2 = s.path("p2");
    std::fs::create_dir_all(&p2).unwrap();
    std::fs::write(p2.join("lib.txt"), b"parent v2\n").unwrap();
    std::fs::write(p2.join("extra.txt"), b"only in v2\n").unwrap();
    assert_ok(&persist(&s, &st, "ws", "parent", &p2, &[]));
    let mp = s.mkdir("mnt");
    let m = mount(&s, &st, "ws", &["child"], &mp, &[]);
    assert_eq!(std::fs::read(mp.join("lib.txt")).unwrap(), b"parent v1\n");
    assert!(!mp.join("extra.txt").exists(), "v2's files do not appear");
    assert_eq!(
        std::fs::read(mp.join("artifact")).unwrap(),
        b"built from parent v1\n"
    );
    drop(m);
    // Asking for the child and the (newer) parent together is a conflict that names both.
    let o = mount_cmd(&s, &st, "ws", &["child", "parent"], &mp, &[]);
    assert_code(&o, 5);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("two versions"),
        "{}",
        text(&o)
    );
    assert!(!is_mounted(&mp));
    // A parent that does not exist: the persist fails (exit 3), naming it.
    let o = persist(&s, &st, "ws", "orphan", &c, &["--parent", "nope"]);
    assert_code(&o, 3);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("nope"),
        "{}",
        text(&o)
    );
    // A ref from before pinning (no ancestors) still mounts, by name, with a warning.
    let child_ref = s.path("s1/workspaces/ws/layers/child");
    let mut r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&child_ref).unwrap()).unwrap();
    r.as_object_mut().unwrap().remove("ancestors");
    for store in ["s1", "s2"] {
        std::fs::write(
            s.path(&format!("{store}/workspaces/ws/layers/child")),
            serde_json::to_vec(&r).unwrap(),
        )
        .unwrap();
    }
    let _m = mount(&s, &st, "ws", &["child"], &mp, &[]);
    assert_eq!(std::fs::read(mp.join("lib.txt")).unwrap(), b"parent v2\n");
    let log = s.daemon_logs();
    assert!(log.contains("pins no parent versions"), "{log}");
}

#[test]
fn patterns_that_match_nothing_are_refused_unless_allowed() {
    let s = Scratch::new();
    let st = stores(&s);
    let src = tree(&s, "src", 2);
    let o = persist(&s, &st, "ws", "l", &src, &["d", "no-such-dir", "*.nothing"]);
    assert_code(&o, 2);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no-such-dir") && err.contains("*.nothing") && !err.contains(" d,"),
        "{err}"
    );
    assert!(!s.path("s1/workspaces").exists(), "nothing committed");
    let empty = s.mkdir("empty");
    assert_code(&persist(&s, &st, "ws", "l", &empty, &[]), 2);
    assert_ok(&persist(
        &s,
        &st,
        "ws",
        "l",
        &src,
        &["no-such-dir", "--allow-empty"],
    ));
    assert_ok(&persist(&s, &st, "ws", "e", &empty, &["--allow-empty"]));
}

/// Starts `wsfs ARGS` held still at the test hook `point` while `hold` exists (see
/// src/test_hooks.rs), and returns once it is there.
fn held_at(s: &Scratch, args: &[String], point: &str, hold: &Path) -> std::process::Child {
    std::fs::write(hold, b"").unwrap();
    let child = s
        .command(args)
        .env("WSFS_TEST_PAUSE", format!("{point}:{}", hold.display()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let marker = PathBuf::from(format!("{}.paused", hold.display()));
    let t = Instant::now();
    while !marker.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "wsfs never reached {point}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// `persist` of `root` to `st` as ws/`layer`, as arguments.
fn persist_args(st: &[String], layer: &str, root: &Path) -> Vec<String> {
    let mut args = vec!["persist".to_string()];
    args.extend(flags(st));
    args.extend(
        [
            "--workspace",
            "ws",
            "--layer",
            layer,
            "--root",
            root.to_str().unwrap(),
        ]
        .iter()
        .map(|x| x.to_string()),
    );
    args
}

/// Starts `wsfs persist` of `root` as ws/l, held at `point` while `hold` exists.
fn paused_persist(
    s: &Scratch,
    st: &[String],
    root: &Path,
    point: &str,
    hold: &Path,
) -> std::process::Child {
    held_at(s, &persist_args(st, "l", root), point, hold)
}

#[test]
fn racing_persists_of_one_layer_leave_exactly_one_complete_version() {
    require_fuse();
    let s = Scratch::new();
    let st = stores(&s);
    let a = s.path("a");
    make_tree(&a, 60, 1, 5);
    let b = s.path("b");
    make_tree(&b, 60, 1, 6);
    // A writes its ref, then B persists completely, then A reads its ref back: B's.
    let hold = s.path("hold");
    let pa = paused_persist(&s, &st, &a, "before-readback", &hold);
    let ob = persist(&s, &st, "ws", "l", &b, &[]);
    assert_ok(&ob);
    std::fs::remove_file(&hold).unwrap();
    let oa = pa.wait_with_output().unwrap();
    assert!(
        oa.status.success(),
        "the overtaken persist still exits 0: {}",
        text(&oa)
    );
    let out = String::from_utf8_lossy(&oa.stdout).to_string();
    assert!(
        out.contains("another persist of this layer committed after this one"),
        "{out}"
    );
    let b_manifest = String::from_utf8_lossy(&ob.stdout)
        .split("manifest ")
        .nth(1)
        .and_then(|x| x.split_whitespace().next())
        .unwrap()
        .to_string();
    assert!(
        out.contains(&b_manifest),
        "A names the manifest that won: {out}"
    );
    // The mount shows exactly B, whole.
    let mp = s.mkdir("mnt");
    let m = mount(&s, &st, "ws", &["l"], &mp, &[]);
    compare_trees(&b, &mp);
    drop(m);
    // The other order: A paused before its commit, B commits, A commits last and wins.
    let pa = paused_persist(&s, &st, &a, "before-commit", &hold);
    assert_ok(&persist(&s, &st, "ws", "l", &b, &[]));
    std::fs::remove_file(&hold).unwrap();
    let oa = pa.wait_with_output().unwrap();
    assert!(oa.status.success(), "{}", text(&oa));
    let _m = mount(&s, &st, "ws", &["l"], &mp, &[]);
    compare_trees(&a, &mp);
}

#[test]
fn a_ref_whose_manifest_is_unusable_falls_over_to_the_next_stores_ref() {
    require_fuse();
    let s = Scratch::new();
    let st = stores(&s);
    let v1 = tree(&s, "v1", 2);
    assert_ok(&persist(&s, &st, "ws", "l", &v1, &[]));
    let mp = s.mkdir("mnt");
    // Store 1's ref points at a manifest that exists nowhere (a half-finished copy, say).
    let good_ref = std::fs::read(s.path("s1/workspaces/ws/layers/l")).unwrap();
    let bogus = wsfs::manifest::LayerRef::new(wsfs::manifest::Digest::of(b"nothing"), 1);
    std::fs::write(s.path("s1/workspaces/ws/layers/l"), bogus.to_bytes()).unwrap();
    let m = mount(&s, &st, "ws", &["l"], &mp, &[]);
    compare_trees(&v1, &mp);
    drop(m);
    // Store 1 gets a newer version whose manifest is damaged (and on no other store): store
    // 2's ref, to the complete v1, wins.
    std::fs::write(s.path("s1/workspaces/ws/layers/l"), good_ref).unwrap();
    let v2 = tree(&s, "v2", 3);
    assert_ok(&persist(&s, &st[..1], "ws", "l", &v2, &[]));
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.path("s1/workspaces/ws/layers/l")).unwrap())
            .unwrap();
    let m2 = s.path(&format!("s1/manifests/{}", r["manifest"].as_str().unwrap()));
    let mut body = std::fs::read(&m2).unwrap();
    let n = body.len();
    body[n - 3] ^= 0xff;
    std::fs::write(&m2, body).unwrap();
    let _m = mount(&s, &st, "ws", &["l"], &mp, &[]);
    compare_trees(&v1, &mp);
    // With store 1 alone, that is an integrity failure (exit 4), naming what was wrong.
    let mp2 = s.mkdir("mnt2");
    let o = mount_cmd(&s, &st[..1], "ws", &["l"], &mp2, &[]);
    assert_code(&o, 4);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("damaged"),
        "{}",
        text(&o)
    );
}

#[test]
fn an_oversized_object_is_rejected_without_being_read() {
    require_fuse();
    let s = Scratch::new();
    let st = stores(&s);
    let src = tree(&s, "src", 2);
    assert_ok(&persist(&s, &st, "ws", "l", &src, &[]));
    // Store 1's chunk of unique.bin becomes a 3 GB (sparse) object.
    let d = first_chunk_of(&s.path("s1"), "unique.bin");
    let f = std::fs::File::options()
        .write(true)
        .open(s.path("s1").join(wsfs::manifest::keys::chunk(&d)))
        .unwrap();
    f.set_len(3 << 30).unwrap();
    drop(f);
    let mp = s.mkdir("mnt");
    let _m = mount(&s, &st, "ws", &["l"], &mp, &["--prefetch", "none"]);
    assert!(
        std::fs::read(mp.join("unique.bin")).unwrap()
            == std::fs::read(src.join("unique.bin")).unwrap()
    );
    let stt = mount_status(&s, &mp);
    assert!(stt.stores[0].requests["corrupt"] >= 1, "{stt:?}");
    let pid = _m.pid().unwrap();
    let hwm: u64 = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    assert!(
        hwm < 1 << 20,
        "the 3 GB object was not read into memory (VmHWM {hwm} kB)"
    );
}

#[test]
fn verify_deep_says_damage_with_exit_4_and_repair_rewrites_it() {
    let s = Scratch::new();
    let st = stores(&s);
    let src = tree(&s, "src", 2);
    assert_ok(&persist(&s, &st, "ws", "l", &src, &[]));
    let d = first_chunk_of(&s.path("s1"), "unique.bin");
    let chunk = s.path("s1").join(wsfs::manifest::keys::chunk(&d));
    let mut body = std::fs::read(&chunk).unwrap();
    let n = body.len();
    body[n / 2] ^= 0xff;
    std::fs::write(&chunk, &body).unwrap();
    let o = run(
        &s,
        &[
            "verify",
            "--workspace",
            "ws",
            "--layer",
            "l",
            "--deep",
            "--all",
        ],
        &st,
    );
    assert_code(&o, 4);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("damaged"),
        "{}",
        text(&o)
    );
    let o = run(
        &s,
        &[
            "verify",
            "--workspace",
            "ws",
            "--layer",
            "l",
            "--deep",
            "--all",
            "--repair",
        ],
        &st,
    );
    assert_ok(&o);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("1 chunk(s) rewritten"),
        "{}",
        text(&o)
    );
    // A missing chunk (not damaged) is exit 3, as before.
    std::fs::remove_file(&chunk).unwrap();
    assert_code(
        &run(
            &s,
            &["verify", "--workspace", "ws", "--layer", "l", "--all"],
            &st,
        ),
        3,
    );
}

#[test]
fn gc_removes_upload_leftovers_of_killed_persists() {
    let s = Scratch::new();
    let st = stores(&s);
    let src = tree(&s, "src", 2);
    assert_ok(&persist(&s, &st, "ws", "l", &src, &[]));
    let leftover = s.path("s1/chunks/ab/abcdef#3");
    std::fs::create_dir_all(leftover.parent().unwrap()).unwrap();
    std::fs::write(&leftover, b"half an upload").unwrap();
    let o = run(
        &s,
        &["gc", "--older-than", "1h", "--grace", "0s", "--json"],
        &st,
    );
    assert_ok(&o);
    assert_eq!(
        json(&o)["stores"][0]["upload_leftovers_removed"].as_u64(),
        Some(1)
    );
    assert!(!leftover.exists());
    assert_ok(&run(
        &s,
        &["verify", "--workspace", "ws", "--layer", "l", "--all"],
        &st,
    ));
}

#[test]
fn ls_rm_and_gc_on_s3() {
    require_fuse();
    let e = env();
    let s = Scratch::new();
    let b = unique("gc");
    mk_s3(&e, &b);
    let st = vec![format!("s3://{b}/p")];
    let keep = tree(&s, "keep", 2);
    let gone = tree(&s, "gone", 3);
    assert_ok(&persist(&s, &st, "kept", "l", &keep, &[]));
    assert_ok(&persist(&s, &st, "expired", "l", &gone, &[]));
    let o = run(&s, &["ls", "--json"], &st);
    assert_ok(&o);
    assert_eq!(json(&o)["workspaces"].as_array().unwrap().len(), 2);
    assert_ok(&run(&s, &["rm", "--workspace", "expired"], &st));
    let o = run(
        &s,
        &["gc", "--older-than", "1h", "--grace", "0s", "--json"],
        &st,
    );
    assert_ok(&o);
    let v = json(&o);
    assert_eq!(v["stores"][0]["status"], "done", "{v}");
    // The expired tree's large file and its pack of small files; the shared file stays.
    assert_eq!(v["stores"][0]["chunks"]["deleted"].as_u64(), Some(2), "{v}");
    assert_eq!(
        v["stores"][0]["manifests"]["deleted"].as_u64(),
        Some(1),
        "{v}"
    );
    let mp = s.mkdir("mnt");
    let _m = mount(&s, &st, "kept", &["l"], &mp, &[]);
    compare_trees(&keep, &mp);
}

#[test]
fn ls_rm_and_a_dry_run_gc_on_fake_gcs() {
    let e = env();
    let s = Scratch::new();
    let src = tree(&s, "src", 2);
    assert_ok(&persist(&s, &[s.store("st")], "ws", "l", &src, &[]));
    let b = unique("gcsls");
    mk_gcs(&e, &b);
    // fake-gcs-server takes uploads only through its JSON API: seed it from a file store.
    gcs_seed(&e, &s.path("st"), &b, "p", |_| true);
    let st = vec![format!("gs://{b}/p")];
    let o = run(&s, &["ls", "--json"], &st);
    assert_ok(&o);
    let v = json(&o);
    assert_eq!(v["workspaces"][0]["layers"][0]["layer"], "l", "{v}");
    assert_eq!(
        v["workspaces"][0]["layers"][0]["files"].as_u64(),
        Some(3),
        "{v}"
    );
    let o = run(
        &s,
        &[
            "gc",
            "--older-than",
            "0s",
            "--grace",
            "0s",
            "--dry-run",
            "--json",
        ],
        &st,
    );
    assert_ok(&o);
    let v = json(&o);
    assert_eq!(v["stores"][0]["refs_expired"][0], "ws/l", "{v}");
    assert!(
        v["stores"][0]["chunks"]["deleted"].as_u64().unwrap() >= 2,
        "{v}"
    );
    // The emulator refuses object_store's uploads, so a real gc cannot take its lock there: it
    // says so and deletes nothing (a real GCS bucket takes the lock).
    let o = run(&s, &["gc", "--older-than", "0s", "--grace", "0s"], &st);
    assert_code(&o, 1);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("cannot write the gc lock"),
        "{}",
        text(&o)
    );
    let o = run(&s, &["ls", "--json"], &st);
    assert_eq!(json(&o)["workspaces"][0]["layers"][0]["layer"], "l");
    // rm works there (deletes are accepted).
    assert_ok(&run(&s, &["rm", "--workspace", "ws", "--layer", "l"], &st));
    assert_code(&run(&s, &["ls", "--workspace", "ws"], &st), 3);
}

#[test]
fn a_mount_that_starts_while_gc_expires_its_layer_keeps_its_data() {
    require_fuse();
    let s = Scratch::new();
    let st = stores(&s);
    let src = s.path("src");
    make_tree(&src, 60, 1, 71);
    assert_ok(&persist(&s, &st[..1], "ws", "l", &src, &[]));
    // gc decides the layer expires, then holds still before deleting anything.
    let hold = s.path("hold");
    let mut args = vec!["gc".to_string()];
    args.extend(flags(&st[..1]));
    args.extend(
        ["--older-than", "0s", "--grace", "0s", "--json"]
            .iter()
            .map(|x| x.to_string()),
    );
    let gc = held_at(&s, &args, "gc-before-ref-delete", &hold);
    // A job mounts the layer now: its ref is still there.
    let mp = s.mkdir("mnt");
    let _m = mount(&s, &st[..1], "ws", &["l"], &mp, &["--prefetch", "none"]);
    std::fs::remove_file(&hold).unwrap();
    let o = gc.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let v = json(&o);
    assert_eq!(v["stores"][0]["refs_expired"][0], "ws/l", "{v}");
    assert_eq!(
        v["stores"][0]["workspaces_leased"][0], "ws",
        "the late lease was seen: {v}"
    );
    assert_eq!(v["stores"][0]["chunks"]["deleted"].as_u64(), Some(0), "{v}");
    // The ref is gone, but every byte the mount serves is still there.
    assert!(!s.path("s1/workspaces/ws/layers/l").exists());
    compare_trees(&src, &mp);
}
