//! Layer semantics through the CLI and real mounts: descendants override ancestors, concurrent
//! layers conflict (exit 5, every path listed, nothing mounted) unless identical, file-vs-dir is
//! a conflict, diamond ancestry is applied once.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn layer(s: &Scratch, name: &str, parents: &[&str], files: &[(&str, &str)]) {
    let root = s.path(&format!("src-{name}"));
    std::fs::create_dir_all(&root).unwrap();
    for (p, content) in files {
        let f = root.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, content).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let mut extra: Vec<&str> = Vec::new();
    for p in parents {
        extra.extend(["--parent", p]);
    }
    assert_ok(&persist(s, &[s.store("st")], "ws", name, &root, &extra));
}

fn read(mp: &Path, p: &str) -> String {
    String::from_utf8(std::fs::read(mp.join(p)).unwrap()).unwrap()
}

#[test]
fn descendants_override_and_diamonds_apply_once() {
    require_fuse();
    let s = Scratch::new();
    layer(
        &s,
        "base",
        &[],
        &[
            ("a.txt", "base"),
            ("shared/keep.txt", "keep"),
            ("b.txt", "base-b"),
        ],
    );
    layer(
        &s,
        "left",
        &["base"],
        &[("a.txt", "left"), ("left.txt", "L")],
    );
    layer(
        &s,
        "right",
        &["base"],
        &[("right.txt", "R"), ("b.txt", "right-b")],
    );
    layer(&s, "top", &["left", "right"], &[("top.txt", "T")]);
    let mp = s.mkdir("mnt");
    let _m = mount(&s, &[s.store("st")], "ws", &["top"], &mp, &[]);
    assert_eq!(
        read(&mp, "a.txt"),
        "left",
        "descendant overrides its ancestor"
    );
    assert_eq!(read(&mp, "b.txt"), "right-b");
    assert_eq!(
        read(&mp, "shared/keep.txt"),
        "keep",
        "ancestor files come along"
    );
    assert_eq!(read(&mp, "left.txt"), "L");
    assert_eq!(read(&mp, "right.txt"), "R");
    assert_eq!(read(&mp, "top.txt"), "T");
    let st: serde_json::Value =
        serde_json::from_slice(&s.wsfs(&["status", mp.to_str().unwrap(), "--json"]).stdout)
            .unwrap();
    let layers: Vec<&str> = st["mounts"][0]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        layers,
        ["base", "left", "right", "top"],
        "topological, ties by name, base once"
    );
}

#[test]
fn concurrent_layers_writing_the_same_path_conflict() {
    require_fuse();
    let s = Scratch::new();
    layer(&s, "base", &[], &[("common.txt", "c")]);
    layer(
        &s,
        "x",
        &["base"],
        &[("out/a.txt", "x"), ("out/b.txt", "x"), ("same.txt", "same")],
    );
    layer(
        &s,
        "y",
        &["base"],
        &[("out/a.txt", "y"), ("out/b.txt", "y"), ("same.txt", "same")],
    );
    let mp = s.mkdir("mnt");
    let o = mount_cmd(&s, &[s.store("st")], "ws", &["x", "y"], &mp, &[]);
    assert_code(&o, 5);
    let e = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(e.contains("2 conflicting path(s)"), "{e}");
    assert!(
        e.contains("out/a.txt (layers x and y)") && e.contains("out/b.txt (layers x and y)"),
        "{e}"
    );
    assert!(
        !e.contains("same.txt"),
        "identical content and mode is not a conflict: {e}"
    );
    // The list reaches the user as a list (one path per line), through the keeper's one-line
    // readiness report.
    assert!(
        e.lines().any(|l| l.trim() == "out/a.txt (layers x and y)")
            && e.lines().any(|l| l.trim() == "out/b.txt (layers x and y)"),
        "one conflicting path per line: {e}"
    );
    assert!(!is_mounted(&mp), "nothing mounted");
}

#[test]
fn identical_files_in_concurrent_layers_are_fine() {
    require_fuse();
    let s = Scratch::new();
    layer(&s, "p", &[], &[("same.txt", "identical"), ("p.txt", "p")]);
    layer(&s, "q", &[], &[("same.txt", "identical"), ("q.txt", "q")]);
    let mp = s.mkdir("mnt");
    let _m = mount(&s, &[s.store("st")], "ws", &["p", "q"], &mp, &[]);
    assert_eq!(read(&mp, "same.txt"), "identical");
    assert_eq!(read(&mp, "p.txt"), "p");
    assert_eq!(read(&mp, "q.txt"), "q");
}

#[test]
fn file_versus_directory_is_a_conflict_and_missing_layers_exit_3() {
    require_fuse();
    let s = Scratch::new();
    layer(&s, "f", &[], &[("thing", "a file")]);
    layer(&s, "d", &[], &[("thing/inside.txt", "in a dir")]);
    let mp = s.mkdir("mnt");
    let o = mount_cmd(&s, &[s.store("st")], "ws", &["f", "d"], &mp, &[]);
    assert_code(&o, 5);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("thing (layers d and f)"),
        "{}",
        text(&o)
    );
    // A descendant may replace a directory with a file: the old contents disappear.
    layer(&s, "g", &["d"], &[("thing", "now a file")]);
    let _m = mount(&s, &[s.store("st")], "ws", &["g"], &mp, &[]);
    assert_eq!(read(&mp, "thing"), "now a file");
    drop(_m);
    // A parent no store has: the persist is refused (exit 3), naming it.
    let orphan = s.path("src-orphan");
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::write(orphan.join("o.txt"), "o").unwrap();
    let o = persist(
        &s,
        &[s.store("st")],
        "ws",
        "orphan",
        &orphan,
        &["--parent", "ghost"],
    );
    assert_code(&o, 3);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("\"ghost\""),
        "{}",
        text(&o)
    );
    // A pinned parent whose manifest is gone from every store: the mount fails (exit 3),
    // naming it.
    layer(&s, "ghost", &[], &[("g.txt", "g")]);
    layer(&s, "orphan", &["ghost"], &[("o.txt", "o")]);
    let ghost_ref: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.path("st/workspaces/ws/layers/ghost")).unwrap())
            .unwrap();
    std::fs::remove_file(s.path(&format!(
        "st/manifests/{}",
        ghost_ref["manifest"].as_str().unwrap()
    )))
    .unwrap();
    let o = mount_cmd(&s, &[s.store("st")], "ws", &["orphan"], &mp, &[]);
    assert_code(&o, 3);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("\"ghost\""),
        "{}",
        text(&o)
    );
    // No layer at all is a usage error.
    assert_code(
        &s.wsfs(&[
            "mount",
            "--store",
            &s.store("st"),
            "--workspace",
            "ws",
            mp.to_str().unwrap(),
        ]),
        2,
    );
}
