//! Load during daemon takeovers (scripts/bench.sh, "Takeover"): N readers read the files of a
//! mounted workspace in a loop, each read checked against the source's bytes (BLAKE3), while the
//! mount's daemon is SIGKILLed K times. With `--kills 0` the same loop runs without kills: the
//! baseline of the same run.
//!
//! ```text
//! takeover_load --mount MP --source DIR --list FILES --run-dir RUN
//!               [--readers 4] [--kills 5] [--interval-ms 1000] [--duration-ms 5000]
//! ```
//! `FILES` holds NUL-separated paths relative to MP and DIR. Prints one JSON line: reads,
//! failed and wrong reads, the longest single read (the stall a reader saw), the 99th
//! percentile, and how long each takeover took (kill → the replacement recorded as serving).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    mount: PathBuf,
    source: PathBuf,
    list: PathBuf,
    run_dir: PathBuf,
    readers: usize,
    kills: usize,
    interval: Duration,
    duration: Duration,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        mount: PathBuf::new(),
        source: PathBuf::new(),
        list: PathBuf::new(),
        run_dir: PathBuf::new(),
        readers: 4,
        kills: 5,
        interval: Duration::from_millis(1000),
        duration: Duration::from_millis(5000),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().ok_or_else(|| format!("{k} needs a value"))?;
        let ms = |v: &str| {
            v.parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|e| e.to_string())
        };
        match k.as_str() {
            "--mount" => a.mount = v.into(),
            "--source" => a.source = v.into(),
            "--list" => a.list = v.into(),
            "--run-dir" => a.run_dir = v.into(),
            "--readers" => a.readers = v.parse().map_err(|e| format!("--readers: {e}"))?,
            "--kills" => a.kills = v.parse().map_err(|e| format!("--kills: {e}"))?,
            "--interval-ms" => a.interval = ms(&v)?,
            "--duration-ms" => a.duration = ms(&v)?,
            _ => return Err(format!("unknown argument {k}")),
        }
    }
    if a.mount.as_os_str().is_empty() || a.source.as_os_str().is_empty() {
        return Err("--mount and --source are required".into());
    }
    Ok(a)
}

/// The daemon pid recorded for the mount, and whether it is alive.
fn daemon(run_dir: &Path, mp: &Path) -> Option<wsfs::ops::linux::process::ProcId> {
    let p = run_dir
        .join("mounts")
        .join(format!("{}.json", wsfs::ops::run_records::mount_id(mp)));
    let r: wsfs::ops::run_records::MountRecord =
        serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
    Some(r.daemon()).filter(|d| d.alive())
}

struct ReaderReport {
    reads: u64,
    failed: Vec<String>,
    wrong: u64,
    latencies_us: Vec<u64>,
}

fn main() {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("takeover_load: {e}");
            std::process::exit(2);
        }
    };
    let list = std::fs::read(&a.list).unwrap_or_else(|e| {
        eprintln!("takeover_load: {}: {e}", a.list.display());
        std::process::exit(2)
    });
    let files: Vec<(PathBuf, blake3::Hash)> = list
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let rel = PathBuf::from(std::ffi::OsStr::new(std::str::from_utf8(p).ok()?));
            let bytes = std::fs::read(a.source.join(&rel)).ok()?;
            Some((rel, blake3::hash(&bytes)))
        })
        .collect();
    if files.is_empty() {
        eprintln!("takeover_load: no readable files in the list");
        std::process::exit(2);
    }
    let files = Arc::new(files);
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..a.readers)
        .map(|i| {
            let (files, stop, mp) = (files.clone(), stop.clone(), a.mount.clone());
            std::thread::spawn(move || {
                let mut r = ReaderReport {
                    reads: 0,
                    failed: Vec::new(),
                    wrong: 0,
                    latencies_us: Vec::new(),
                };
                let n = files.len();
                let mut k = i * n / 4;
                while !stop.load(Ordering::Relaxed) {
                    let (rel, want) = &files[k % n];
                    k += 1;
                    let t = Instant::now();
                    let got = std::fs::read(mp.join(rel));
                    r.latencies_us.push(t.elapsed().as_micros() as u64);
                    r.reads += 1;
                    match got {
                        Ok(b) if blake3::hash(&b) == *want => {}
                        Ok(_) => r.wrong += 1,
                        Err(e) => r.failed.push(format!("{}: {e}", rel.display())),
                    }
                }
                r
            })
        })
        .collect();
    let mut takeovers_ms = Vec::new();
    let mut errors = Vec::new();
    let started = Instant::now();
    if a.kills == 0 {
        std::thread::sleep(a.duration);
    }
    for _ in 0..a.kills {
        std::thread::sleep(a.interval);
        let Some(d) = daemon(&a.run_dir, &a.mount) else {
            errors.push("no live daemon recorded".to_string());
            break;
        };
        let t = Instant::now();
        if let Err(e) = d.signal(libc::SIGKILL) {
            errors.push(format!("kill {}: {e}", d.pid));
            break;
        }
        loop {
            if daemon(&a.run_dir, &a.mount).is_some_and(|n| n.pid != d.pid) {
                takeovers_ms.push(t.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if t.elapsed() > Duration::from_secs(30) {
                errors.push(format!("no replacement 30 s after killing {}", d.pid));
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    std::thread::sleep(a.interval.min(Duration::from_millis(500)));
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let mut reads = 0;
    let mut wrong = 0;
    let mut failed = Vec::new();
    let mut lat = Vec::new();
    for r in readers {
        match r.join() {
            Ok(r) => {
                reads += r.reads;
                wrong += r.wrong;
                failed.extend(r.failed);
                lat.extend(r.latencies_us);
            }
            Err(_) => errors.push("a reader panicked".into()),
        }
    }
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    let out = serde_json::json!({
        "readers": a.readers,
        "kills": a.kills,
        "seconds": elapsed.as_secs_f64(),
        "reads": reads,
        "failed": failed.len(),
        "failed_examples": failed.iter().take(5).collect::<Vec<_>>(),
        "wrong": wrong,
        "max_stall_ms": pct(1.0) as f64 / 1000.0,
        "p99_ms": pct(0.99) as f64 / 1000.0,
        "median_ms": pct(0.5) as f64 / 1000.0,
        "takeover_ms": takeovers_ms,
        "errors": errors,
    });
    println!("{out}");
    let ok = failed.is_empty() && wrong == 0 && errors.is_empty();
    std::process::exit(if ok { 0 } else { 1 });
}
