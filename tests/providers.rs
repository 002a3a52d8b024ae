//! Provider tests against real object-store emulators (moto for S3, fake-gcs-server for GCS),
//! with real FUSE mounts: double-write persist, mounts over GCS-then-S3 chains, the incident
//! (GCS has the refs and manifests but not one chunk), the fault conformance matrix through the
//! fault-injecting proxy (checked against the table in docs/failure-model.md), the circuit
//! breaker, and repair-on-read.
//!
//! The emulators are started by scripts/test.sh (or by hand: `scripts/servers.sh start` and
//! `source /tmp/wsfs-test-servers/env.sh`). These tests never skip: without the environment
//! the scripts export they fail and say so.

mod common;
#[path = "common/fault_proxy.rs"]
mod fault_proxy;

use common::emulators::*;
use common::*;
use fault_proxy::{Fault, FaultProxy, Matcher, Rule};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use wsfs::fs::warmup::WarmupState;
use wsfs::ops::service::control::MountStatus;

// ---------------------------------------------------------------------------------------------
// Environment, buckets, seeding
// ---------------------------------------------------------------------------------------------

fn s3_delete_prefix(e: &Env, bucket: &str, prefix: &str) {
    s3_py(
        e,
        "n = 0\nfor page in s3.get_paginator('list_objects_v2').paginate(Bucket=sys.argv[2], Prefix=sys.argv[3]):\n    \
         for o in page.get('Contents', []):\n        s3.delete_object(Bucket=sys.argv[2], Key=o['Key'])\n        n += 1\n\
         assert n > 0, 'nothing to delete'",
        &[bucket, prefix],
    );
}

// ---------------------------------------------------------------------------------------------
// Running wsfs
// ---------------------------------------------------------------------------------------------

fn must_mount(
    s: &Scratch,
    config: Option<&Path>,
    stores: &[String],
    mp: &Path,
    extra: &[&str],
) -> Mounted {
    match try_mount(s, config, stores, "ws", &["l1"], mp, extra).0 {
        Ok(m) => m,
        Err(o) => panic!("mount failed: {}", text(&o)),
    }
}

fn verify_store(s: &Scratch, store: &str) -> Output {
    let args: Vec<String> = [
        "verify",
        "--store",
        store,
        "--workspace",
        "ws",
        "--layer",
        "l1",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    s.wsfs(&args)
}

fn store_requests(st: &MountStatus, idx: usize, label: &str) -> u64 {
    st.stores[idx]
        .requests
        .get(label)
        .copied()
        .unwrap_or_else(|| panic!("stores[{idx}].requests.{label} in {st:?}"))
}

/// Regular files of a tree (relative path, size).
fn files_of(root: &Path) -> Vec<(PathBuf, u64)> {
    let mut v: Vec<(PathBuf, u64)> = walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .map(|e| e.expect("walk"))
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            (
                e.path().strip_prefix(root).unwrap().to_path_buf(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    v.sort();
    v
}

/// What reading every file of a mount gave, compared with its source.
#[derive(Debug, Default)]
struct Reads {
    correct_nonempty: usize,
    empty_ok: usize,
    eio: usize,
    nonempty: usize,
    /// Wrong, short or empty content, or an error other than EIO, or wrong metadata: always a bug.
    bad: Vec<String>,
    slowest: Duration,
}

fn read_all(src: &Path, mnt: &Path) -> Reads {
    let mut r = Reads::default();
    for (rel, size) in files_of(src) {
        let m = mnt.join(&rel);
        match m.symlink_metadata() {
            Ok(md) if md.is_file() && md.len() == size => {}
            Ok(md) => r.bad.push(format!(
                "{rel:?}: metadata says {:?} {} bytes, want file of {size}",
                md.file_type(),
                md.len()
            )),
            Err(e) => r.bad.push(format!("{rel:?}: stat failed: {e}")),
        }
        if size > 0 {
            r.nonempty += 1;
        }
        let want = std::fs::read(src.join(&rel)).expect("read source");
        let t = Instant::now();
        let got = std::fs::read(&m);
        r.slowest = r.slowest.max(t.elapsed());
        match got {
            Ok(b) if b == want && size == 0 => r.empty_ok += 1,
            Ok(b) if b == want => r.correct_nonempty += 1,
            Ok(b) => r.bad.push(format!(
                "{rel:?}: WRONG DATA: got {} bytes, want {size}",
                b.len()
            )),
            Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                if size == 0 {
                    r.bad.push(format!("{rel:?}: 0-byte file failed with EIO"));
                } else {
                    r.eio += 1;
                }
            }
            Err(e) => r.bad.push(format!("{rel:?}: error other than EIO: {e}")),
        }
    }
    r
}

// ---------------------------------------------------------------------------------------------
// 1. Double-write persist to file:// + two S3 buckets
// ---------------------------------------------------------------------------------------------

#[test]
fn persist_double_writes_to_file_and_two_s3_buckets() {
    require_fuse();
    let e = env();
    let s = Scratch::new();
    let src = s.path("src");
    make_tree(&src, 200, 6, 11);
    let (a, b) = (unique("dw-a"), unique("dw-b"));
    mk_s3(&e, &a);
    mk_s3(&e, &b);
    let stores = [s.store("f"), format!("s3://{a}/p"), format!("s3://{b}/p")];
    persist_ws_l1(&s, &stores, &src);
    for st in &stores {
        let o = verify_store(&s, st);
        assert_code(&o, 0);
        assert!(text(&o).contains("complete"), "verify {st}: {}", text(&o));
    }
    // The same layer persisted again to the file store and one bucket (chunks already there).
    persist_ws_l1(&s, &stores[..2], &src);
    for st in &stores[1..] {
        let mp = s.path(&format!("mnt-{}", if st.contains(&a) { "a" } else { "b" }));
        let _m = must_mount(
            &s,
            None,
            std::slice::from_ref(st),
            &mp,
            &["--request-timeout", "2s"],
        );
        let n = compare_trees(&src, &mp);
        assert!(n > 200, "compared only {n} entries");
    }
}

// ---------------------------------------------------------------------------------------------
// 2. GCS then S3, GCS complete
// ---------------------------------------------------------------------------------------------

#[test]
fn gcs_then_s3_with_gcs_complete_never_fails_over() {
    require_fuse();
    let e = env();
    let s = Scratch::new();
    let src = s.path("src");
    make_tree(&src, 200, 6, 22);
    let (g, b) = (unique("full-g"), unique("full-s"));
    mk_gcs(&e, &g);
    mk_s3(&e, &b);
    persist_ws_l1(&s, &[s.store("seed"), format!("s3://{b}/p")], &src);
    let n = gcs_seed(&e, &s.path("seed"), &g, "p", |_| true);
    assert!(n > 3, "seeded only {n} objects");
    let mp = s.path("mnt");
    let _m = must_mount(
        &s,
        None,
        &[format!("gs://{g}/p"), format!("s3://{b}/p")],
        &mp,
        &["--request-timeout", "2s"],
    );
    compare_trees(&src, &mp);
    let st = mount_status(&s, &mp);
    assert_eq!(st.failovers, 0, "status: {st:?}");
    assert_eq!(st.eio, 0, "status: {st:?}");
    assert!(
        store_requests(&st, 0, "hit") > 0,
        "GCS served nothing: {st:?}"
    );
    let s3_total: u64 = st.stores[1].requests.values().sum();
    assert_eq!(
        s3_total, 0,
        "S3 was asked although GCS had everything: {st:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. The incident: GCS holds refs and manifests but not one chunk
// ---------------------------------------------------------------------------------------------

/// Seeds GCS with only the refs and manifests of a persisted layer (the incident's state).
fn incident_setup(
    s: &Scratch,
    e: &Env,
    seed_tag: u64,
    s3_chunks: bool,
) -> (PathBuf, String, String) {
    let src = s.path("src");
    make_tree(&src, 200, 6, seed_tag);
    let (g, b) = (unique("inc-g"), unique("inc-s"));
    mk_gcs(e, &g);
    mk_s3(e, &b);
    persist_ws_l1(s, &[s.store("seed"), format!("s3://{b}/p")], &src);
    if !s3_chunks {
        s3_delete_prefix(e, &b, "p/chunks/");
    }
    let n = gcs_seed(e, &s.path("seed"), &g, "p", |k| !k.starts_with("chunks/"));
    assert!(n >= 2, "seeded {n} objects (want the ref and the manifest)");
    (src, g, b)
}

#[test]
fn incident_gcs_without_chunks_fails_over_to_s3_for_every_chunk() {
    require_fuse();
    let e = env();
    let s = Scratch::new();
    let (src, g, b) = incident_setup(&s, &e, 33, true);
    let chunks = chunk_files(&s.path("seed")).len() as u64;
    assert!(
        chunks >= 4,
        "the tree should span several chunks, got {chunks}"
    );
    let mp = s.path("mnt");
    let _m = must_mount(
        &s,
        None,
        &[format!("gs://{g}/p"), format!("s3://{b}/p")],
        &mp,
        &["--request-timeout", "2s"],
    );
    compare_trees(&src, &mp);
    let st = mount_status(&s, &mp);
    assert_eq!(st.eio, 0, "status: {st:?}");
    assert_eq!(
        st.failovers,
        chunks,
        "every chunk ({chunks}) must have been served by S3 after a GCS miss (ref and manifest come from GCS): {st:?}"
    );
    assert_eq!(
        store_requests(&st, 0, "not_found"),
        chunks,
        "GCS misses: {st:?}"
    );
    assert_eq!(store_requests(&st, 1, "hit"), chunks, "S3 hits: {st:?}");
}

#[test]
fn incident_no_provider_has_the_chunks_every_read_is_eio() {
    require_fuse();
    let e = env();
    let s = Scratch::new();
    let (src, g, b) = incident_setup(&s, &e, 34, false);
    let mp = s.path("mnt");
    let _m = must_mount(
        &s,
        None,
        &[format!("gs://{g}/p"), format!("s3://{b}/p")],
        &mp,
        &["--request-timeout", "2s"],
    );
    let r = read_all(&src, &mp);
    assert!(r.bad.is_empty(), "{:#?}", r.bad);
    assert_eq!(r.correct_nonempty, 0, "{r:?}");
    assert_eq!(
        r.eio, r.nonempty,
        "every non-empty file must fail with EIO: {r:?}"
    );
    assert!(r.empty_ok > 0, "0-byte files must still read empty: {r:?}");
    // Metadata (names, modes, sizes, mtimes, symlinks) is all still right.
    for ent in walkdir::WalkDir::new(&src).min_depth(1) {
        let ent = ent.unwrap();
        let rel = ent.path().strip_prefix(&src).unwrap();
        let (x, y) = (
            ent.path().symlink_metadata().unwrap(),
            mp.join(rel).symlink_metadata().unwrap(),
        );
        assert_eq!(x.file_type(), y.file_type(), "{rel:?}");
        assert_eq!(x.mode() & 0o7777, y.mode() & 0o7777, "{rel:?}");
        if x.is_file() {
            assert_eq!(x.len(), y.len(), "{rel:?}");
            assert_eq!(
                (x.mtime(), x.mtime_nsec()),
                (y.mtime(), y.mtime_nsec()),
                "{rel:?}"
            );
        }
        if x.file_type().is_symlink() {
            assert_eq!(
                std::fs::read_link(ent.path()).unwrap(),
                std::fs::read_link(mp.join(rel)).unwrap()
            );
        }
    }
    let st = mount_status(&s, &mp);
    assert!(st.eio >= r.eio as u64, "status eio: {st:?}");
    assert!(!st.failures.is_empty(), "failure ledger is empty: {st:?}");
    assert_eq!(st.failovers, 0, "status: {st:?}");
}

// ---------------------------------------------------------------------------------------------
// 4. The conformance matrix
// ---------------------------------------------------------------------------------------------

const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/failure-model.md");

/// Limits the matrix mounts run with (also stated in docs/failure-model.md).
const MATRIX_FLAGS: [&str; 8] = [
    "--request-timeout",
    "1s",
    "--connect-timeout",
    "1s",
    "--retries",
    "1",
    "--read-deadline",
    "5s",
];

fn faults() -> Vec<(&'static str, Fault)> {
    vec![
        ("404", Fault::Status(404)),
        ("403", Fault::Status(403)),
        ("500", Fault::Status(500)),
        ("503", Fault::Status(503)),
        ("NeverAnswer", Fault::NeverAnswer),
        ("HeadersThenHang", Fault::HeadersThenHang),
        (
            "SlowDrip 1000 B/s",
            Fault::SlowDrip {
                bytes_per_sec: 1000,
            },
        ),
        ("ResetMidBody", Fault::ResetMidBody),
        ("TruncatedBody", Fault::TruncatedBody),
        ("WrongBytes", Fault::WrongBytes),
        ("EmptyOk", Fault::EmptyOk),
    ]
}

const TARGETS: [(&str, &str); 3] = [
    ("chunk", "chunks/"),
    ("manifest", "manifests/"),
    ("ref", "workspaces/"),
];

#[derive(Debug, Clone)]
struct CaseResult {
    fault: String,
    position: &'static str,
    target: &'static str,
    outcome: String,
    elapsed: Duration,
    slowest_step: Duration,
}

/// Everything the matrix cases share: the source tree, the S3 bucket with the whole layer, and
/// file stores that each lack one kind of object.
struct MatrixWorld {
    src: PathBuf,
    bucket: String,
    /// target -> file store URL holding everything except that kind of object.
    partial: BTreeMap<&'static str, String>,
    full: String,
}

fn copy_store(from: &Path, to: &Path, skip_prefix: &str) {
    for ent in walkdir::WalkDir::new(from).into_iter().map(|x| x.unwrap()) {
        let rel = ent.path().strip_prefix(from).unwrap();
        if rel.to_str().unwrap().starts_with(skip_prefix) && !skip_prefix.is_empty() {
            continue;
        }
        let dst = to.join(rel);
        if ent.file_type().is_dir() {
            std::fs::create_dir_all(&dst).unwrap();
        } else {
            std::fs::copy(ent.path(), &dst).unwrap();
        }
    }
}

/// One case: returns the observed outcome ("correct data", "EIO", "exit N") or an error that
/// describes an invariant violation.
fn run_case(
    w: &MatrixWorld,
    e: &Env,
    fault: &Fault,
    faulty_first: bool,
    target: &'static str,
    pattern: &str,
    step_bound: Duration,
) -> Result<(String, Duration, Duration), String> {
    let s = Scratch::new();
    let proxy = FaultProxy::start_in_thread(&e.s3).map_err(|x| format!("proxy: {x}"))?;
    proxy.add_rule(Rule::always(
        Matcher::PathContains(pattern.into()),
        fault.clone(),
    ));
    let s3 = (format!("s3://{}/p", w.bucket), s3_via(&proxy.url()));
    let cfg = s.path("stores.toml");
    if faulty_first {
        write_config(&cfg, &[s3, (w.full.clone(), vec![])]);
    } else {
        write_config(&cfg, &[(w.partial[target].clone(), vec![]), s3]);
    }
    let mp = s.path("mnt");
    let t = Instant::now();
    let (m, mount_took) = try_mount(&s, Some(&cfg), &[], "ws", &["l1"], &mp, &MATRIX_FLAGS);
    if mount_took > step_bound {
        return Err(format!("mount took {mount_took:?} (bound {step_bound:?})"));
    }
    let m = match m {
        Err(o) => {
            let code = o.status.code().unwrap_or(-1);
            let why = String::from_utf8_lossy(&o.stderr).to_string();
            eprintln!("  [{fault:?} / first={faulty_first} / {target}] mount exit {code}: {why}");
            return Ok((format!("exit {code}"), t.elapsed(), mount_took));
        }
        Ok(m) => m,
    };
    let r = read_all(&w.src, &mp);
    let elapsed = t.elapsed();
    let slowest = r.slowest.max(mount_took);
    if !r.bad.is_empty() {
        return Err(format!("invariant violated: {:?}", r.bad));
    }
    if r.slowest > step_bound {
        return Err(format!(
            "a read took {:?} (bound {step_bound:?})",
            r.slowest
        ));
    }
    let outcome = if r.eio == 0 && r.correct_nonempty == r.nonempty {
        // Everything read right; now the full comparison (modes, mtimes, links, names).
        compare_trees(&w.src, &mp);
        "correct data".to_string()
    } else if r.correct_nonempty == 0 && r.eio == r.nonempty {
        "EIO".to_string()
    } else {
        format!(
            "mixed: {} correct, {} EIO of {} non-empty files",
            r.correct_nonempty, r.eio, r.nonempty
        )
    };
    if outcome != "correct data" {
        let st = mount_status(&s, &mp);
        eprintln!(
            "  [{fault:?} / first={faulty_first} / {target}] {outcome}; failure ledger: {}",
            serde_json::to_string(&st.failures).unwrap_or_default()
        );
        if std::env::var_os("WSFS_MATRIX_ONLY").is_some() {
            for ent in walkdir::WalkDir::new(s.run_dir()).into_iter().flatten() {
                if ent.path().extension().is_some_and(|x| x == "log") {
                    eprintln!(
                        "--- {}\n{}",
                        ent.path().display(),
                        std::fs::read_to_string(ent.path()).unwrap_or_default()
                    );
                }
            }
        }
    }
    drop(m);
    drop(proxy);
    Ok((outcome, elapsed, slowest))
}

/// A row of the matrix table in docs/failure-model.md.
#[derive(Debug, Clone)]
struct DocRow {
    first: String,
    second: String,
    bound_secs: u64,
}

/// Parses the conformance table: `| fault | target | faulty first | faulty second | bound |`.
fn doc_matrix() -> BTreeMap<(String, String), DocRow> {
    let doc = std::fs::read_to_string(DOC).unwrap_or_else(|e| panic!("{DOC}: {e}"));
    let section = doc
        .split("## Conformance matrix")
        .nth(1)
        .unwrap_or_else(|| panic!("{DOC} has no '## Conformance matrix' section"));
    let section = section.split("\n## ").next().unwrap();
    let mut rows = BTreeMap::new();
    for line in section
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('|'))
    {
        let cells: Vec<String> = line
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().trim_matches('`').trim().to_string())
            .collect();
        if cells.len() != 5 || cells[0] == "Fault" || cells[0].starts_with("--") {
            continue;
        }
        let bound_secs = cells[4]
            .trim_start_matches('≤')
            .trim()
            .trim_end_matches('s')
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{DOC}: bad time bound {:?} in {line}", cells[4]));
        let key = (cells[0].clone(), cells[1].clone());
        let row = DocRow {
            first: cells[2].clone(),
            second: cells[3].clone(),
            bound_secs,
        };
        assert!(
            rows.insert(key, row).is_none(),
            "{DOC}: duplicate row {line}"
        );
    }
    assert!(!rows.is_empty(), "{DOC}: no matrix rows parsed");
    rows
}

#[test]
fn conformance_matrix_matches_the_failure_model_doc() {
    require_fuse();
    let e = env();
    let doc = doc_matrix();
    let world_dir = Scratch::new();
    let src = world_dir.path("src");
    make_tree(&src, 6, 3, 44);
    let bucket = unique("matrix");
    mk_s3(&e, &bucket);
    let full_dir = world_dir.path("full");
    persist_ws_l1(
        &world_dir,
        &[world_dir.store("full"), format!("s3://{bucket}/p")],
        &src,
    );
    let mut partial = BTreeMap::new();
    for (t, pat) in TARGETS {
        let d = world_dir.path(&format!("no-{t}"));
        copy_store(&full_dir, &d, pat);
        partial.insert(t, format!("file://{}", d.display()));
    }
    let w = MatrixWorld {
        src,
        bucket,
        partial,
        full: world_dir.store("full"),
    };

    // WSFS_MATRIX_ONLY=text runs only the cases whose "fault / faulty position / target" label
    // contains it (for debugging one case); the full run is the test.
    let only = std::env::var("WSFS_MATRIX_ONLY").ok();
    let mut cases = Vec::new();
    for (name, f) in faults() {
        for (target, pat) in TARGETS {
            for first in [true, false] {
                let label = format!(
                    "{name} / faulty {} / {target}",
                    if first { "first" } else { "second" }
                );
                if only.as_ref().is_some_and(|o| !label.contains(o.as_str())) {
                    continue;
                }
                cases.push((name, f.clone(), first, target, pat));
            }
        }
    }
    let queue = Mutex::new(cases.into_iter());
    let results: Mutex<Vec<Result<CaseResult, String>>> = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|sc| {
        for _ in 0..6 {
            sc.spawn(|| loop {
                let Some((name, f, first, target, pat)) = queue.lock().unwrap().next() else {
                    break;
                };
                let position = if first { "first" } else { "second" };
                let bound = doc
                    .get(&(name.to_string(), target.to_string()))
                    .map(|r| Duration::from_secs(r.bound_secs))
                    .unwrap_or(Duration::from_secs(14));
                let label = format!("{name} / faulty {position} / {target}");
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run_case(&w, &e, &f, first, target, pat, bound)
                }));
                let r = match r {
                    Ok(Ok((outcome, elapsed, slowest_step))) => Ok(CaseResult {
                        fault: name.to_string(),
                        position,
                        target,
                        outcome,
                        elapsed,
                        slowest_step,
                    }),
                    Ok(Err(why)) => Err(format!("{label}: {why}")),
                    Err(p) => Err(format!(
                        "{label}: panicked: {}",
                        p.downcast_ref::<String>()
                            .cloned()
                            .or(p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default()
                    )),
                };
                results.lock().unwrap().push(r);
            });
        }
    });
    let total = started.elapsed();
    let results = results.into_inner().unwrap();
    let mut failures: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().cloned())
        .collect();
    let mut ok: Vec<CaseResult> = results.into_iter().filter_map(|r| r.ok()).collect();
    ok.sort_by(|a, b| (&a.fault, a.target, a.position).cmp(&(&b.fault, b.target, b.position)));
    eprintln!(
        "conformance matrix: {} cases in {total:?}",
        ok.len() + failures.len()
    );
    eprintln!(
        "{:<20} {:<9} {:<7} {:<14} {:>9} {:>9}",
        "fault", "target", "faulty", "outcome", "elapsed", "slowest"
    );
    for c in &ok {
        eprintln!(
            "{:<20} {:<9} {:<7} {:<14} {:>8.2}s {:>8.2}s",
            c.fault,
            c.target,
            c.position,
            c.outcome,
            c.elapsed.as_secs_f64(),
            c.slowest_step.as_secs_f64()
        );
    }
    for c in &ok {
        // The invariants, independent of the doc.
        let allowed: &[&str] = if c.position == "first" {
            &["correct data"]
        } else if c.fault.starts_with("SlowDrip") && c.target == "ref" {
            // A slow drip only delays correct bytes: an object smaller than rate x timeout
            // (a ref is ~100 bytes) arrives whole in time, and is served.
            &["correct data"]
        } else if c.target == "chunk" {
            &["EIO"]
        } else if ["WrongBytes", "EmptyOk"].contains(&c.fault.as_str()) {
            // Only faults that deliver bytes may be an integrity failure (4) rather than 3.
            &["exit 3", "exit 4"]
        } else {
            &["exit 3"]
        };
        if !allowed.contains(&c.outcome.as_str()) {
            failures.push(format!(
                "{} / faulty {} / {}: outcome {:?}, allowed {allowed:?}",
                c.fault, c.position, c.target, c.outcome
            ));
        }
        // The doc must say the same.
        match doc.get(&(c.fault.clone(), c.target.to_string())) {
            None => failures.push(format!(
                "{DOC}: no row for fault {:?} target {:?}",
                c.fault, c.target
            )),
            Some(row) => {
                let want = if c.position == "first" {
                    &row.first
                } else {
                    &row.second
                };
                if *want != c.outcome {
                    failures.push(format!(
                        "{} / faulty {} / {}: observed {:?} but {DOC} says {want:?}",
                        c.fault, c.position, c.target, c.outcome
                    ));
                }
            }
        }
    }
    // And the doc has no rows the test does not run.
    for (fault, target) in doc.keys() {
        if !faults().iter().any(|(n, _)| n == fault) || !TARGETS.iter().any(|(t, _)| t == target) {
            failures.push(format!(
                "{DOC}: row ({fault}, {target}) is not a case this test runs"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "conformance matrix failures:\n{}",
        failures.join("\n")
    );
    if only.is_none() {
        assert_eq!(ok.len(), faults().len() * TARGETS.len() * 2);
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Circuit breaker
// ---------------------------------------------------------------------------------------------

#[test]
fn breaker_skips_a_primary_that_never_answers() {
    require_fuse();
    let e = env();
    let s = Scratch::new();
    let src = s.path("src");
    make_tree(&src, 100, 4, 55);
    let b = unique("brk");
    mk_s3(&e, &b);
    persist_ws_l1(&s, &[s.store("sec"), format!("s3://{b}/p")], &src);
    let proxy = FaultProxy::start_in_thread(&e.s3).expect("proxy");
    proxy.add_rule(Rule::always(Matcher::Any, Fault::NeverAnswer));
    let cfg = s.path("stores.toml");
    write_config(
        &cfg,
        &[
            (format!("s3://{b}/p"), s3_via(&proxy.url())),
            (s.store("sec"), vec![]),
        ],
    );
    let mp = s.path("mnt");
    let t = Instant::now();
    let (m, _) = try_mount(
        &s,
        Some(&cfg),
        &[],
        "ws",
        &["l1"],
        &mp,
        &[
            "--request-timeout",
            "1s",
            "--connect-timeout",
            "1s",
            "--retries",
            "1",
        ],
    );
    let _m = m.unwrap_or_else(|o| panic!("mount failed: {}", text(&o)));
    compare_trees(&src, &mp);
    let took = t.elapsed();
    eprintln!(
        "breaker: mount + full read of {} files in {took:?}",
        files_of(&src).len()
    );
    assert!(
        took < Duration::from_secs(60),
        "mount and read took {took:?}: the breaker did not spare the dead primary"
    );
    let st = mount_status(&s, &mp);
    assert!(
        store_requests(&st, 0, "skipped") > 0,
        "primary never skipped: {st:?}"
    );
    assert_eq!(store_requests(&st, 0, "hit"), 0, "{st:?}");
    assert_eq!(st.eio, 0, "{st:?}");
    assert!(proxy.request_count() > 0, "the primary was never asked");
}

/// `--prefetch all` on a store whose chunk GETs never answer: the warm-up waits for chunks, and
/// `wsfs umount` must still succeed at once (a worker waiting for a chunk holds the mount's root
/// open; the stop has to wake it, not wait out the request timeout).
#[test]
fn umount_is_not_held_up_by_a_warm_up_waiting_for_a_hung_store() {
    require_fuse();
    let e = env();
    let s = Scratch::new();
    let src = s.path("src");
    make_tree(&src, 200, 0, 56);
    let b = unique("wrm");
    mk_s3(&e, &b);
    persist_ws_l1(&s, &[format!("s3://{b}/p")], &src);
    let proxy = FaultProxy::start_in_thread(&e.s3).expect("proxy");
    proxy.add_rule(Rule::always(
        Matcher::MethodAndPath("GET".into(), "chunks/".into()),
        Fault::NeverAnswer,
    ));
    let cfg = s.path("stores.toml");
    write_config(&cfg, &[(format!("s3://{b}/p"), s3_via(&proxy.url()))]);
    let mp = s.path("mnt");
    let (m, _) = try_mount(
        &s,
        Some(&cfg),
        &[],
        "ws",
        &["l1"],
        &mp,
        &[
            "--prefetch",
            "all",
            "--request-timeout",
            "60s",
            "--read-deadline",
            "120s",
        ],
    );
    let m = m.unwrap_or_else(|o| panic!("mount failed: {}", text(&o)));
    let dirs = walkdir::WalkDir::new(&src)
        .into_iter()
        .filter(|e| e.as_ref().is_ok_and(|e| e.file_type().is_dir()))
        .count() as u64;
    // Wait until the warm-up has listed every directory and is waiting for chunks.
    let t = Instant::now();
    loop {
        let st = mount_status(&s, &mp);
        assert_eq!(st.warmup.state, WarmupState::Running, "{st:?}");
        if st.warmup.dirs_listed == dirs && proxy.request_count() > 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "warm-up did not list: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    // With the listings done, the daemon holds nothing of the mount open while it waits for
    // chunks, so any unmount (not only wsfs umount) would succeed.
    let pid = m.pid().expect("daemon pid");
    let open_inside: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|l| l.starts_with(&mp))
        .collect();
    assert!(open_inside.is_empty(), "daemon holds {open_inside:?}");
    let t = Instant::now();
    let o = s.wsfs(&["umount", mp.to_str().unwrap()]);
    let took = t.elapsed();
    assert_ok(&o);
    assert!(!is_mounted(&mp));
    // Bounded by the warm-up's stop wait (3 s), never by the 60 s request timeout.
    assert!(took < Duration::from_secs(10), "wsfs umount took {took:?}");
}

// ---------------------------------------------------------------------------------------------
// 6. Repair-on-read
// ---------------------------------------------------------------------------------------------

#[test]
fn repair_writes_missing_chunks_back_to_the_primary() {
    require_fuse();
    let e = env();
    let s = Scratch::new();
    let src = s.path("src");
    make_tree(&src, 60, 3, 66);
    let b = unique("rep");
    mk_s3(&e, &b);
    let primary = format!("s3://{b}/p");
    persist_ws_l1(&s, &[primary.clone(), s.store("sec")], &src);
    s3_delete_prefix(&e, &b, "p/chunks/");
    let o = verify_store(&s, &primary);
    assert_ne!(
        o.status.code(),
        Some(0),
        "primary should be incomplete now: {}",
        text(&o)
    );
    let mp = s.path("mnt");
    let _m = must_mount(
        &s,
        None,
        &[primary.clone(), s.store("sec")],
        &mp,
        &["--request-timeout", "2s", "--repair"],
    );
    compare_trees(&src, &mp);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = verify_store(&s, &primary);
        if o.status.code() == Some(0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "primary not repaired within 10 s: {}",
            text(&o)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let st = mount_status(&s, &mp);
    let chunks = chunk_files(&s.path("sec")).len() as u64;
    assert_eq!(st.repairs, chunks, "{st:?}");
    // A deep verify downloads and hashes what repair wrote.
    let args: Vec<String> = [
        "verify",
        "--deep",
        "--store",
        &primary,
        "--workspace",
        "ws",
        "--layer",
        "l1",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    assert_code(&s.wsfs(&args), 0);
}

// ---------------------------------------------------------------------------------------------
// 7. Retries only where they can help
// ---------------------------------------------------------------------------------------------

/// A 404 or 403 is an answer: asked once, then the next provider. A 503 is transient: retried
/// within the request timeout (`--retries 2` → three requests), then the next provider.
#[test]
fn retries_only_on_errors_worth_retrying() {
    require_fuse();
    let e = env();
    let s = Scratch::new();
    let src = s.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f.bin"), Rng::new(77).bytes(200_000)).unwrap();
    let b = unique("rty");
    mk_s3(&e, &b);
    persist_ws_l1(&s, &[s.store("sec"), format!("s3://{b}/p")], &src);
    for (status, expected) in [(404u16, 1usize), (403, 1), (503, 3)] {
        let proxy = FaultProxy::start_in_thread(&e.s3).expect("proxy");
        proxy.add_rule(Rule::always(
            Matcher::PathContains("chunks".into()),
            Fault::Status(status),
        ));
        let cfg = s.path(&format!("stores-{status}.toml"));
        write_config(
            &cfg,
            &[
                (format!("s3://{b}/p"), s3_via(&proxy.url())),
                (s.store("sec"), vec![]),
            ],
        );
        let mp = s.path(&format!("mnt-{status}"));
        let (m, _) = try_mount(
            &s,
            Some(&cfg),
            &[],
            "ws",
            &["l1"],
            &mp,
            &["--request-timeout", "5s", "--retries", "2"],
        );
        let _m = m.unwrap_or_else(|o| panic!("mount failed: {}", text(&o)));
        compare_trees(&src, &mp);
        let chunk_gets = proxy
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.fault.is_some())
            .count();
        assert_eq!(
            chunk_gets, expected,
            "{status}: GETs of the one chunk on the faulty primary"
        );
    }
}

#[test]
fn a_plain_http_store_needs_no_extra_option() {
    require_fuse();
    let e = env();
    let s = Scratch::new();
    let src = s.path("src");
    make_tree(&src, 40, 1, 61);
    let b = unique("http");
    mk_s3(&e, &b);
    persist_ws_l1(&s, &[format!("s3://{b}/p")], &src);
    // A public-read bucket, served as plain HTTP (as a web server or CDN in front of a bucket is).
    s3_py(
        &e,
        "import json\ns3.put_bucket_policy(Bucket=sys.argv[2], Policy=json.dumps({'Version': '2012-10-17', \
         'Statement': [{'Effect': 'Allow', 'Principal': '*', 'Action': 's3:GetObject', \
         'Resource': 'arn:aws:s3:::' + sys.argv[2] + '/*'}]}))",
        &[&b],
    );
    let mp = s.path("mnt");
    let m = must_mount(&s, None, &[format!("{}/{b}/p", e.s3)], &mp, &[]);
    compare_trees(&src, &m.mountpoint);
}
