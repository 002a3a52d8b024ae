//! `wsfs mount`: the command side. It checks the mount point, starts the keeper (this
//! executable again, `--foreground`, in its own session, logging to a file), and waits until
//! the keeper reports the mount ready — or why not, with the exit code the contract assigns —
//! on a pipe. The caller therefore returns only when the tree can be read, or fails before the
//! job runs.
//!
//! Process model (see docs/architecture.md, "Mount lifecycle"):
//! ```text
//! wsfs mount …            returns at READY
//!  └─ keeper              mount --foreground: holds the FUSE connection, replaces dead daemons
//!      └─ daemon          mount --serve-daemon: resolves, mounts, serves
//! ```

use crate::error::WsfsError;
use crate::ops::linux::process::{self, ProcId};
use crate::ops::{
    linux::{mountinfo, unmount},
    run_records,
};
use crate::store::{Limits, StoreSpec};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct MountArgs {
    pub specs: Vec<StoreSpec>,
    pub limits: Limits,
    pub workspace: String,
    pub layers: Vec<String>,
    pub mountpoint: PathBuf,
    pub cache_dir: Option<PathBuf>,
    pub disk_cache_bytes: u64,
    pub memory_cache_bytes: usize,
    pub allow_other: bool,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub read_deadline: Duration,
    pub repair: bool,
    pub threads: usize,
    /// Fetch every chunk in the background after mounting (`--prefetch chunks|all`).
    pub prefetch_chunks: bool,
    /// Warm the kernel's caches: names and attributes (`--prefetch tree|all`); push the
    /// neighbours of files that are read.
    pub warm_kernel: bool,
    /// Push every small file's pages too (`--prefetch all`).
    pub warm_files: bool,
    pub prefetch_concurrency: usize,
    /// Page-cache bytes wsfs may push ahead of reads (`--prefetch-page-cache`).
    pub prefetch_page_cache: u64,
    /// Kernel read-ahead for the mount, in KiB.
    pub read_ahead_kb: u32,
    /// Prometheus textfile to rewrite every few seconds (`--metrics-file`).
    pub metrics_file: Option<PathBuf>,
    /// Address to serve `GET /metrics` on (`--metrics-addr`).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// This mount is the read-only workspace under an attach at this directory.
    pub attach_lower: Option<PathBuf>,
    /// Only refs signed by one of these keys are mounted (`--trust-key`, `trust_keys`).
    pub trust_keys: Vec<ed25519_dalek::VerifyingKey>,
    /// `--profile NAME`: replay the stored profile, record this run's, store it at unmount.
    pub profile: Option<String>,
    /// `--passthrough`: verified local copies of cached files as FUSE backing files.
    pub passthrough: bool,
}

/// Checks a mountpoint without ever stat-ing a path that may be a hung mount: the mount table
/// is consulted first. Returns the absolute path.
pub fn check_mountpoint(p: &Path) -> Result<PathBuf, WsfsError> {
    let (abs, _) = mountinfo::absolute_lexical(p).ok_or_else(|| {
        WsfsError::Mount(format!(
            "mountpoint {}: cannot make the path absolute",
            p.display()
        ))
    })?;
    let mounts = mountinfo::read_mounts()
        .map_err(|e| WsfsError::Mount(format!("cannot read /proc/self/mountinfo: {e}")))?;
    if mounts.iter().any(|m| m.mount_point == abs) {
        return Err(WsfsError::Mount(format!(
            "{} is already a mount point; unmount it first (wsfs umount {0}) or pick another directory",
            abs.display()
        )));
    }
    match std::fs::metadata(&abs) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(WsfsError::Mount(format!(
                "mountpoint {} is not a directory",
                abs.display()
            )))
        }
        Err(e) => {
            return Err(WsfsError::Mount(format!(
                "mountpoint {}: {e}; create the directory first",
                abs.display()
            )))
        }
    }
    if !Path::new("/dev/fuse").exists() {
        return Err(WsfsError::Mount(
            "/dev/fuse is missing: this machine cannot mount FUSE filesystems (load the fuse module or use a machine executor)".into(),
        ));
    }
    Ok(abs)
}

/// The flag the command adds when it starts the keeper: report readiness on stdout.
pub const NOTIFY_FLAG: &str = "--notify-ready";
/// The flag the keeper adds when it starts a daemon.
pub const SERVE_FLAG: &str = "--serve-daemon";

/// The keeper's arguments for its daemons: the mount arguments it was started with, without
/// the readiness flag, in daemon mode.
pub fn daemon_args() -> Vec<OsString> {
    let mut args: Vec<OsString> = std::env::args_os()
        .skip(1)
        .filter(|a| a != NOTIFY_FLAG)
        .collect();
    args.push(SERVE_FLAG.into());
    args
}

/// The store URLs a `wsfs mount` hands to its keeper and daemons, newline-separated, instead of
/// putting them on their command lines: a URL may carry credentials (userinfo, a signed-URL
/// token), and a command line is readable by every user of the machine for the whole mount,
/// while a process's environment is readable only by its owner (and root).
pub const STORE_URLS_ENV: &str = "WSFS_INTERNAL_STORE_URLS";

/// The store URLs handed down by a parent `wsfs` (see [`STORE_URLS_ENV`]).
pub fn inherited_store_urls() -> Vec<String> {
    std::env::var(STORE_URLS_ENV)
        .map(|v| {
            v.lines()
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// `args` without their `--store URL` / `--store=URL` pairs.
pub fn without_store_args(args: &[OsString]) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--store" {
            it.next();
        } else if !a.as_encoded_bytes().starts_with(b"--store=") {
            out.push(a.clone());
        }
    }
    out
}

/// Options of `wsfs mount` whose values are paths.
const PATH_OPTIONS: [&str; 5] = [
    "--config",
    "--cache-dir",
    "--metrics-file",
    "--trust-key",
    "--attach-lower",
];

/// The mount command's arguments (`mount …`, global options allowed before it) with every path
/// — path options and the MOUNTPOINT — made absolute against this process's directory, so that
/// the keeper and its daemons can run in `/`. A daemon must not hold the directory it was
/// started from: that may be the checkout a job attaches over, which it would keep busy.
pub fn with_absolute_paths(args: &[OsString]) -> Vec<OsString> {
    use clap::CommandFactory;
    let top = crate::cli::Cli::command();
    let Some(mount) = top.find_subcommand("mount") else {
        return args.to_vec();
    };
    let takes_value = |long: &str| {
        top.get_arguments()
            .chain(mount.get_arguments())
            .find(|a| a.get_long() == Some(long.trim_start_matches("--")))
            .is_some_and(|a| a.get_action().takes_values())
    };
    let absolute = |v: &OsString| -> OsString {
        mountinfo::absolute_lexical(Path::new(v))
            .map(|(a, _)| a.into_os_string())
            .unwrap_or_else(|| v.clone())
    };
    let mut out = Vec::with_capacity(args.len());
    let mut seen_subcommand = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let text = a.to_string_lossy();
        if let Some(long) = text.strip_prefix("--").map(|_| text.as_ref()) {
            if let Some((name, value)) = long.split_once('=') {
                if PATH_OPTIONS.contains(&name) {
                    let mut o = OsString::from(format!("{name}="));
                    o.push(absolute(&OsString::from(value)));
                    out.push(o);
                } else {
                    out.push(a.clone());
                }
                continue;
            }
            out.push(a.clone());
            if takes_value(long) {
                if let Some(v) = it.next() {
                    out.push(if PATH_OPTIONS.contains(&long) {
                        absolute(v)
                    } else {
                        v.clone()
                    });
                }
            }
        } else if !seen_subcommand && text == "mount" {
            seen_subcommand = true;
            out.push(a.clone());
        } else if seen_subcommand && !text.starts_with('-') {
            // The one positional of `wsfs mount`: MOUNTPOINT.
            out.push(absolute(a));
        } else {
            out.push(a.clone());
        }
    }
    out
}

/// Starts the keeper (this executable with `args` — the mount command's arguments — plus
/// `--foreground --notify-ready`) and waits until it reports the mount ready or failed. The
/// store URLs travel in the environment ([`STORE_URLS_ENV`]), never on a command line.
pub fn spawn_keeper(
    args: &[OsString],
    store_urls: &[String],
    mountpoint: &Path,
    timeout: Duration,
) -> Result<(), WsfsError> {
    let abs = check_mountpoint(mountpoint)?;
    let exe = std::env::current_exe()
        .map_err(|e| WsfsError::Failed(format!("cannot find own executable: {e}")))?;
    let log = run_records::log_path(&abs);
    if let Some(d) = log.parent() {
        std::fs::create_dir_all(d)
            .map_err(|e| WsfsError::Failed(format!("cannot create {}: {e}", d.display())))?;
    }
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| WsfsError::Failed(format!("cannot open log {}: {e}", log.display())))?;
    let mut args = without_store_args(&with_absolute_paths(args));
    args.push("--foreground".into());
    args.push(NOTIFY_FLAG.into());
    let mut cmd = std::process::Command::new(exe);
    cmd.args(&args)
        // Keeper and daemons hold no directory the job may want to unmount (see
        // with_absolute_paths); their run directory is absolute too.
        .current_dir("/")
        .env("WSFS_RUN_DIR", run_records::run_dir_absolute())
        .env(STORE_URLS_ENV, store_urls.join("\n"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(logf);
    // SAFETY: setsid is async-signal-safe; the keeper leaves the caller's session so that the
    // end of a CI step (which signals its process group) does not take the mount down.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| WsfsError::Failed(format!("cannot start the keeper: {e}")))?;
    let keeper = ProcId::of(child.id() as i32);
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| WsfsError::Failed("no pipe to the keeper".into()))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let r = BufReader::new(stdout).read_line(&mut line).map(|_| line);
        let _ = tx.send(r);
    });
    let line = match rx.recv_timeout(timeout) {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => {
            return Err(WsfsError::Failed(format!(
                "cannot read from the keeper: {e}"
            )))
        }
        Err(_) => {
            abandon_start(&mut child, keeper, &abs);
            return Err(WsfsError::Timeout(format!(
                "the mount was not ready within {}s (daemon log: {})",
                timeout.as_secs(),
                log.display()
            )));
        }
    };
    let line = line.trim_end();
    if line == "READY" {
        let daemon = run_records::read_record(&abs).map(|r| r.pid);
        eprintln!(
            "wsfs: mounted at {} (daemon pid {}, keeper pid {}, log {})",
            abs.display(),
            daemon.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
            child.id(),
            log.display()
        );
        return Ok(());
    }
    let status = child.wait().ok();
    if let Some(rest) = line.strip_prefix("ERROR ") {
        return Err(WsfsError::from_code_line(rest));
    }
    let tail = std::fs::read_to_string(&log)
        .map(|s| {
            s.lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    Err(WsfsError::Mount(format!(
        "the keeper exited ({}) before the mount was ready; last log lines:\n{tail}",
        status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "unknown status".into())
    )))
}

/// A start-up that did not finish in time: the keeper is asked to stop (it then ends its
/// daemon and removes anything mounted so far); if it does not, it and its daemon are killed
/// and a mount they left at the mount point is removed. Nobody was told this mount exists.
fn abandon_start(child: &mut std::process::Child, keeper: Option<ProcId>, mp: &Path) {
    if let Some(k) = keeper {
        let _ = k.signal(libc::SIGTERM);
        if k.wait_gone(Duration::from_secs(5)) {
            let _ = child.wait();
            return;
        }
        for c in process::children(k.pid) {
            if let Some(c) = ProcId::of(c) {
                let _ = c.signal(libc::SIGKILL);
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    if let Ok(mounts) = mountinfo::read_mounts() {
        for e in mounts.iter().rev().filter(|e| {
            // check_mountpoint refused a mount point that was already mounted: any wsfs mount
            // there now is this start-up's.
            e.mount_point == mp && crate::ops::force_umount::is_wsfs_mount(e)
        }) {
            let _ = unmount::abort_connection(e);
            let _ = unmount::detach(mp);
        }
    }
}

/// Used by the daemon side of [`spawn_keeper`]: report on stdout, then point stdout at /dev/null.
pub fn notify_parent(r: Result<(), &WsfsError>) {
    let mut out = std::io::stdout();
    let line = match r {
        Ok(()) => "READY".to_string(),
        Err(e) => e.code_line(),
    };
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    // Point stdout at /dev/null so later writes cannot fail with EPIPE once the parent is gone.
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: both descriptors are valid for the duration of the call.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn paths_become_absolute_and_nothing_else_changes() {
        let cwd = std::env::current_dir().unwrap();
        let abs = |p: &str| cwd.join(p).into_os_string();
        let out = with_absolute_paths(&os(&[
            "--log",
            "info",
            "mount",
            "--config",
            "c.toml",
            "--layer",
            "l1",
            "--cache-dir=cache",
            "--allow-other",
            "mnt",
            "--trust-key",
            "/abs/k.pub",
            "--workspace",
            "ws",
        ]));
        let mut want = os(&["--log", "info", "mount", "--config"]);
        want.push(abs("c.toml"));
        want.extend(os(&["--layer", "l1"]));
        let mut cache = OsString::from("--cache-dir=");
        cache.push(abs("cache"));
        want.push(cache);
        want.push("--allow-other".into());
        want.push(abs("mnt"));
        want.extend(os(&["--trust-key", "/abs/k.pub", "--workspace", "ws"]));
        assert_eq!(out, want);
        assert_eq!(
            without_store_args(&os(&["mount", "--store", "s3://a", "--store=gs://b", "m"])),
            os(&["mount", "m"])
        );
    }
}
