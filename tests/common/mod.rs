//! Shared test support: running the real `wsfs` binary, generating trees with the corner cases,
//! comparing a mounted tree with its source, and a mount guard that always unmounts (aborting
//! the FUSE connection if the daemon hangs) so no test leaves a mount or a process behind.
#![allow(dead_code)]

pub mod emulators;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const WSFS: &str = env!("CARGO_BIN_EXE_wsfs");

/// FUSE tests never skip: without root or /dev/fuse they fail and say why.
pub fn require_fuse() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "FUSE tests must run as root (they mount real filesystems); run scripts/test.sh as root"
    );
    assert!(
        Path::new("/dev/fuse").exists(),
        "FUSE tests need /dev/fuse, which is missing on this machine"
    );
}

/// A scratch area per test: stores, mountpoints and a private run dir for daemon records.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            dir: tempfile::Builder::new()
                .prefix("wsfs-test-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn store(&self, name: &str) -> String {
        format!("file://{}", self.path(name).display())
    }

    pub fn run_dir(&self) -> PathBuf {
        self.path("run")
    }

    /// Runs `wsfs` with this scratch's run dir.
    pub fn wsfs<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Output {
        self.command(args).output().expect("run wsfs")
    }

    /// `wsfs ARGS` with this scratch's run and persist-index directories, to add to and run.
    pub fn command<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut c = Command::new(WSFS);
        c.args(args)
            .env("WSFS_RUN_DIR", self.run_dir())
            .env("WSFS_PERSIST_INDEX_DIR", self.index_dir());
        c
    }

    /// The persist index directory of this scratch's persists (never the machine's).
    pub fn index_dir(&self) -> PathBuf {
        self.path("persist-index")
    }

    /// Everything the daemons of this scratch's mounts have logged so far.
    pub fn daemon_logs(&self) -> String {
        std::fs::read_dir(self.run_dir().join("logs"))
            .map(|d| {
                d.flatten()
                    .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn mkdir(&self, p: &str) -> PathBuf {
        let d = self.path(p);
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }
}

pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn assert_ok(o: &Output) {
    assert!(o.status.success(), "wsfs failed: {}", text(o));
}

pub fn assert_code(o: &Output, code: i32) {
    assert_eq!(o.status.code(), Some(code), "unexpected exit: {}", text(o));
}

/// A mount made by `wsfs mount` (a keeper and its daemon). Drop tears it down without ever
/// hanging: the keeper is killed first (so it replaces nothing), then force_unmount aborts the
/// connection if the daemon is stuck, detaches, and stops the daemon.
pub struct Mounted {
    pub mountpoint: PathBuf,
    pub run_dir: PathBuf,
}

impl Mounted {
    /// The runtime record of this mount in the test's run dir.
    pub fn record(&self) -> Option<wsfs::ops::run_records::MountRecord> {
        read_record(&self.run_dir, &self.mountpoint)
    }

    /// The daemon serving the mount now.
    pub fn pid(&self) -> Option<i32> {
        self.record().map(|r| r.pid)
    }

    /// The keeper holding the mount's connection.
    pub fn keeper(&self) -> Option<i32> {
        self.record().and_then(|r| r.keeper).map(|k| k.pid)
    }
}

/// The runtime record of the mount at `mp` in `run_dir`.
pub fn read_record(run_dir: &Path, mp: &Path) -> Option<wsfs::ops::run_records::MountRecord> {
    let p = run_dir
        .join("mounts")
        .join(format!("{}.json", wsfs::ops::run_records::mount_id(mp)));
    serde_json::from_slice(&std::fs::read(p).ok()?).ok()
}

/// Tears down a mount (and its processes) the test made, whatever state it is in.
pub fn teardown(run_dir: &Path, mp: &Path) {
    let rec = read_record(run_dir, mp);
    let running = rec
        .as_ref()
        .is_some_and(|r| r.daemon().alive() || r.keeper.is_some_and(|k| k.alive()));
    if !is_mounted(mp) && !running {
        return;
    }
    let r = wsfs::ops::umount::force_remove(mp, rec.as_ref(), Duration::from_secs(5));
    if !r.success() {
        eprintln!("test teardown of {} not clean: {r:?}", mp.display());
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        teardown(&self.run_dir, &self.mountpoint);
    }
}

/// An attach the test made: Drop detaches it by force (overlay, workspace mount, processes)
/// through the test's run dir, if the test did not already.
pub struct Attached {
    pub at: PathBuf,
    pub run_dir: PathBuf,
}

impl Drop for Attached {
    fn drop(&mut self) {
        if is_mounted(&self.at) {
            let _ = Command::new(WSFS)
                .args(["umount", "--force", "--timeout", "5s"])
                .arg(&self.at)
                .env("WSFS_RUN_DIR", &self.run_dir)
                .output();
        }
        // The workspace mount under the run dir, if the attach was half undone.
        let ws_root = self.run_dir.join("attach");
        for m in mount_table() {
            let p = PathBuf::from(&m);
            if p.starts_with(&ws_root) {
                teardown(&self.run_dir, &p);
            }
        }
    }
}

/// The `wsfs status --json` entry of the mount at `mp` (asserts the command succeeded).
/// This mount's entry of `wsfs status MP --json`, as the type the daemon serializes.
pub fn mount_status(s: &Scratch, mp: &Path) -> wsfs::ops::service::control::MountStatus {
    let o = s.wsfs(&["status", &mp.display().to_string(), "--json"]);
    assert_ok(&o);
    #[derive(serde::Deserialize)]
    struct All {
        mounts: Vec<wsfs::ops::service::control::MountStatus>,
    }
    let all: All = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("status json: {e}: {}", text(&o)));
    let want = mp.display().to_string();
    all.mounts
        .into_iter()
        .find(|m| m.mountpoint == want)
        .unwrap_or_else(|| panic!("{want} not in status: {}", text(&o)))
}

/// Reads the mount table (never stats the path).
pub fn is_mounted(p: &Path) -> bool {
    wsfs::ops::linux::mountinfo::read_mounts()
        .map(|m| m.iter().any(|e| e.mount_point == p))
        .unwrap_or(false)
}

pub fn mount_table() -> Vec<String> {
    wsfs::ops::linux::mountinfo::read_mounts()
        .map(|m| {
            m.iter()
                .map(|e| e.mount_point.display().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Mounts through the CLI; panics with the command's output if it fails.
pub fn mount(
    s: &Scratch,
    stores: &[String],
    ws: &str,
    layers: &[&str],
    mp: &Path,
    extra: &[&str],
) -> Mounted {
    let o = mount_cmd(s, stores, ws, layers, mp, extra);
    assert_ok(&o);
    assert!(
        is_mounted(mp),
        "wsfs mount returned 0 but {} is not in the mount table",
        mp.display()
    );
    Mounted {
        mountpoint: mp.to_path_buf(),
        run_dir: s.run_dir(),
    }
}

pub fn mount_cmd(
    s: &Scratch,
    stores: &[String],
    ws: &str,
    layers: &[&str],
    mp: &Path,
    extra: &[&str],
) -> Output {
    s.wsfs(&mount_args(None, stores, ws, layers, mp, extra))
}

/// `wsfs mount` with extra environment variables (`WSFS_NO_TAKEOVER`, `WSFS_TEST_PAUSE`…); the
/// command's output (it returns once the mount is ready, or failed).
pub fn mount_with_env(
    s: &Scratch,
    stores: &[String],
    layers: &[&str],
    mp: &Path,
    extra: &[&str],
    env: &[(&str, String)],
) -> Output {
    s.command(&mount_args(None, stores, "ws", layers, mp, extra))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run wsfs mount")
}

/// `wsfs mount` arguments: a `--config` file and/or `--store` flags, the workspace and layers,
/// a 2 s request timeout unless `extra` sets one, `extra`, the mount point.
fn mount_args(
    config: Option<&Path>,
    stores: &[String],
    ws: &str,
    layers: &[&str],
    mp: &Path,
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = vec!["mount".into()];
    if let Some(c) = config {
        args.extend(["--config".into(), c.display().to_string()]);
    }
    for st in stores {
        args.extend(["--store".into(), st.clone()]);
    }
    args.extend(["--workspace".into(), ws.into()]);
    for l in layers {
        args.extend(["--layer".into(), (*l).into()]);
    }
    if !extra.contains(&"--request-timeout") {
        args.extend(["--request-timeout".into(), "2s".into()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(mp.display().to_string());
    args
}

/// `wsfs mount` (with an optional `--config` file), timed; the guard if it mounted, else the
/// command's output.
pub fn try_mount(
    s: &Scratch,
    config: Option<&Path>,
    stores: &[String],
    ws: &str,
    layers: &[&str],
    mp: &Path,
    extra: &[&str],
) -> (Result<Mounted, Output>, Duration) {
    std::fs::create_dir_all(mp).expect("mountpoint");
    let t = std::time::Instant::now();
    let o = s.wsfs(&mount_args(config, stores, ws, layers, mp, extra));
    let took = t.elapsed();
    if !o.status.success() {
        return (Err(o), took);
    }
    assert!(
        is_mounted(mp),
        "wsfs mount returned 0 but {} is not in the mount table",
        mp.display()
    );
    (
        Ok(Mounted {
            mountpoint: mp.to_path_buf(),
            run_dir: s.run_dir(),
        }),
        took,
    )
}

/// Persists `src` as layer `l1` of workspace `ws` to `stores`, asserting success.
pub fn persist_ws_l1(s: &Scratch, stores: &[String], src: &Path) {
    assert_ok(&persist(s, stores, "ws", "l1", src, &[]));
}

pub fn persist(
    s: &Scratch,
    stores: &[String],
    ws: &str,
    layer: &str,
    root: &Path,
    extra: &[&str],
) -> Output {
    let mut args: Vec<String> = vec!["persist".into()];
    for st in stores {
        args.push("--store".into());
        args.push(st.clone());
    }
    args.extend([
        "--workspace".into(),
        ws.into(),
        "--layer".into(),
        layer.into(),
    ]);
    args.extend(["--root".into(), root.display().to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    s.wsfs(&refs)
}

/// A seeded random source, so generated trees are the same on every run (rand's StdRng, with
/// the few helpers the tests use).
pub struct Rng(rand::rngs::StdRng);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(<rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(
            seed,
        ))
    }
    pub fn next(&mut self) -> u64 {
        rand::RngCore::next_u64(&mut self.0)
    }
    /// Uniform in `0..n` (`0` for `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        rand::Rng::random_range(&mut self.0, 0..n.max(1))
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        rand::RngCore::fill_bytes(&mut self.0, &mut v);
        v
    }
}

fn set_mtime(p: &Path, sec: i64, nsec: u32) {
    let t = UNIX_EPOCH + Duration::new(sec as u64, nsec);
    let f = std::fs::File::options()
        .write(true)
        .open(p)
        .or_else(|_| std::fs::File::open(p))
        .expect("open for mtime");
    f.set_times(std::fs::FileTimes::new().set_modified(t).set_accessed(t))
        .expect("set mtime");
}

/// A tree with the corner cases: `n` small files over nested dirs, 0-byte and 1-byte files, files
/// spanning many chunks, names with spaces and non-ASCII, deep paths, exec bits, empty dirs,
/// symlinks (relative, absolute, dangling, to a directory), nanosecond mtimes.
pub fn make_tree(root: &Path, n: usize, big_mib: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    std::fs::create_dir_all(root).expect("root");
    let dirs = [
        "src",
        "src/lib",
        "node_modules/pkg a/dist",
        "docs/ünïcødé",
        "a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p",
    ];
    for d in dirs {
        std::fs::create_dir_all(root.join(d)).expect("dir");
    }
    for i in 0..n {
        let d = dirs[i % dirs.len()];
        let size = match i % 10 {
            0 => 0,
            1 => 1,
            2 => rng.below(200_000) as usize,
            _ => rng.below(8000) as usize,
        };
        let p = root.join(d).join(format!("file {i}.txt"));
        std::fs::write(&p, rng.bytes(size)).expect("write");
        if i % 7 == 0 {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        if i % 11 == 0 {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        set_mtime(
            &p,
            1_600_000_000 + i as i64,
            (rng.below(999_999_999)) as u32,
        );
    }
    // Duplicate content (stored once) and a file spanning many chunks.
    std::fs::write(root.join("src/dup1"), b"same bytes").expect("dup");
    std::fs::write(root.join("src/dup2"), b"same bytes").expect("dup");
    if big_mib > 0 {
        std::fs::write(root.join("big.bin"), rng.bytes(big_mib << 20)).expect("big");
    }
    std::fs::create_dir_all(root.join("empty/nested empty")).expect("empty");
    std::os::unix::fs::symlink("src/dup1", root.join("link-rel")).expect("link");
    std::os::unix::fs::symlink("/nonexistent/target", root.join("link-dangling")).expect("link");
    std::os::unix::fs::symlink("src", root.join("link-dir")).expect("link");
    std::fs::write(root.join("run.sh"), b"#!/bin/sh\necho hi\n").expect("script");
    std::fs::set_permissions(root.join("run.sh"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    set_mtime(&root.join("src"), 1_500_000_000, 123_456_789);
}

/// Compares every entry of `src` with `mnt`: kind, mode, size, mtime (ns), symlink target, file
/// bytes, and that both list the same names. Returns the number of entries compared.
pub fn compare_trees(src: &Path, mnt: &Path) -> usize {
    let list = |root: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = walkdir::WalkDir::new(root)
            .follow_links(false)
            .min_depth(1)
            .into_iter()
            .map(|e| {
                e.expect("walk")
                    .path()
                    .strip_prefix(root)
                    .expect("prefix")
                    .to_path_buf()
            })
            .collect();
        v.sort();
        v
    };
    let a = list(src);
    let b = list(mnt);
    assert_eq!(
        a.len(),
        b.len(),
        "different entry counts: source {} vs mount {}",
        a.len(),
        b.len()
    );
    assert_eq!(a, b, "different names");
    for rel in &a {
        let (x, y) = (src.join(rel), mnt.join(rel));
        let (mx, my) = (
            x.symlink_metadata().expect("src meta"),
            y.symlink_metadata().expect("mnt meta"),
        );
        assert_eq!(mx.file_type(), my.file_type(), "{rel:?}: kind");
        assert_eq!(mx.mode() & 0o7777, my.mode() & 0o7777, "{rel:?}: mode");
        if !mx.is_dir() {
            assert_eq!(mx.len(), my.len(), "{rel:?}: size");
        }
        if !mx.file_type().is_symlink() {
            assert_eq!(
                (mx.mtime(), mx.mtime_nsec()),
                (my.mtime(), my.mtime_nsec()),
                "{rel:?}: mtime"
            );
        }
        if mx.file_type().is_symlink() {
            assert_eq!(
                std::fs::read_link(&x).expect("link"),
                std::fs::read_link(&y).expect("link"),
                "{rel:?}: target"
            );
        } else if mx.is_file() {
            let (bx, by) = (
                std::fs::read(&x).expect("read src"),
                std::fs::read(&y).expect("read mnt"),
            );
            assert!(
                bx == by,
                "{rel:?}: content differs ({} vs {} bytes)",
                bx.len(),
                by.len()
            );
        }
    }
    a.len()
}

pub fn now() -> SystemTime {
    SystemTime::now()
}

/// Every chunk object under a file:// store.
pub fn chunk_files(store_dir: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(store_dir.join("chunks"))
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().to_path_buf())
        .collect()
}

/// Deletes every chunk object of a file:// store (its manifests and refs stay); returns how many.
pub fn remove_chunks(store_dir: &Path) -> usize {
    let chunks = chunk_files(store_dir);
    for c in &chunks {
        std::fs::remove_file(c).expect("remove chunk");
    }
    chunks.len()
}

/// The digest of the chunk holding the first extent of `path`, read from the (single) manifest
/// of a file:// store.
pub fn first_chunk_of(store_dir: &Path, path: &str) -> wsfs::manifest::Digest {
    let m = std::fs::read_dir(store_dir.join("manifests"))
        .expect("manifests dir")
        .next()
        .expect("one manifest")
        .expect("dir entry")
        .path();
    let man = wsfs::manifest::decode(&std::fs::read(m).expect("read manifest")).expect("decode");
    let e = man
        .entries
        .iter()
        .find(|e| e.path == path.as_bytes())
        .expect("entry in manifest");
    man.chunks[e.extents[0].chunk as usize].hash
}

// Scenarios that change the mount table of the machine run in a mount namespace of their own.

pub const IN_PRIVATE_NS: &str = "WSFS_TEST_IN_PRIVATE_MOUNT_NS";

/// Runs the (ignored) test `scenario` of this binary in a mount namespace of its own, and
/// asserts that it ran and passed.
pub fn run_in_private_namespace(scenario: &str) {
    let exe = std::env::current_exe().unwrap();
    let ns = std::fs::read_link("/proc/self/ns/mnt").expect("ns link");
    let o = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--"])
        .arg(exe)
        .args([
            scenario,
            "--exact",
            "--include-ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(IN_PRIVATE_NS, &ns)
        .output()
        .expect("run unshare (util-linux)");
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("1 passed"), "the scenario ran: {out}");
}

/// In a scenario: asserts that this process runs in another mount namespace than its outer
/// test (which names its own in the environment).
pub fn assert_in_private_namespace() {
    let outer = std::env::var_os(IN_PRIVATE_NS)
        .expect("this scenario changes the mount table: run it only through its outer test");
    let mine = std::fs::read_link("/proc/self/ns/mnt").expect("ns link");
    assert_ne!(
        mine.as_os_str(),
        outer.as_os_str(),
        "not in a private mount namespace: refusing to run"
    );
}

// Manifests written by hand: the formats a store may hold, including damaged ones.

/// A version-2 manifest from its parts, written without validation: `tree` is a tree index's
/// bytes (possibly damaged), `digests` 32 bytes per inode. Checked against `encode` in
/// tests/format.rs (`unchecked_encoders_match_encode`).
pub fn manifest_v2_bytes(head: &wsfs::manifest::Head, tree: &[u8], digests: &[u8]) -> Vec<u8> {
    let head = bincode::serde::encode_to_vec(head, bincode::config::standard()).expect("head");
    let mut out = b"WSFSMANI".to_vec();
    out.extend_from_slice(&2u32.to_le_bytes());
    out.extend_from_slice(&(head.len() as u32).to_le_bytes());
    out.extend_from_slice(&head);
    wsfs::manifest::codec::write_part(&mut out, tree).expect("tree part");
    wsfs::manifest::codec::write_part(&mut out, digests).expect("digests part");
    out
}

/// The manifest layer `layer` of `ws` names in a file:// store.
pub fn layer_manifest(store_dir: &Path, ws: &str, layer: &str) -> Vec<u8> {
    let r = std::fs::read(store_dir.join(format!("workspaces/{ws}/layers/{layer}"))).expect("ref");
    let (_, d) = wsfs::manifest::LayerRef::parse(&r).expect("ref parses");
    std::fs::read(store_dir.join(format!("manifests/{}", d.to_hex()))).expect("manifest")
}

/// Stores `bytes` as a manifest of a file:// store (under its digest) and points the ref of
/// `layer` of `ws` at it, as a persist would.
pub fn replace_layer_manifest(store_dir: &Path, ws: &str, layer: &str, bytes: &[u8]) {
    let d = wsfs::manifest::Digest::of(bytes);
    std::fs::write(store_dir.join(format!("manifests/{}", d.to_hex())), bytes).expect("manifest");
    let r = wsfs::manifest::LayerRef::new(d, 1_700_000_000);
    std::fs::write(
        store_dir.join(format!("workspaces/{ws}/layers/{layer}")),
        r.to_bytes(),
    )
    .expect("ref");
}
