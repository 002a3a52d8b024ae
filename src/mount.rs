//! `wsfs mount`: resolve the layers, build the tree, mount it, and serve until unmounted.
//!
//! Without `--foreground` the command starts itself again as a detached daemon (its own session,
//! logs to a file) and waits until the daemon reports the mount ready — or reports why not, with
//! the exit code the contract assigns — on a pipe. The caller therefore returns only when the
//! tree can be read, or fails before the job runs.

use crate::cache::DiskCache;
use crate::error::WsfsError;
use crate::fetcher::Fetcher;
use crate::fs::fuse::FuseAdapter;
use crate::fs::{InodeTable, WsFs};
use crate::layers;
use crate::ops::runtime::{self, MountRecord};
use crate::ops::status::{self, MountStatus, StatusSource};
use crate::ops::{metrics, mountinfo};
use crate::store::{Chain, Limits, StoreSpec};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

fn has_fusermount3() -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("fusermount3").is_file()))
        .unwrap_or(false)
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Runs the mount in this process until it is unmounted or the process is signalled.
/// `ready` is called exactly once: with `Ok` when the mount serves requests, or with the error.
pub fn run_daemon(
    args: MountArgs,
    ready: &mut dyn FnMut(Result<(), &WsfsError>),
) -> Result<(), WsfsError> {
    let r = run_daemon_inner(args, ready);
    if let Err(e) = &r {
        ready(Err(e));
    }
    r
}

fn run_daemon_inner(
    args: MountArgs,
    ready: &mut dyn FnMut(Result<(), &WsfsError>),
) -> Result<(), WsfsError> {
    let started = Instant::now();
    let mountpoint = check_mountpoint(&args.mountpoint)?;
    // Metrics flags are checked (and the port bound) before anything is mounted.
    let metrics_file = args
        .metrics_file
        .as_deref()
        .map(metrics::check_file)
        .transpose()?;
    let metrics_listener = args.metrics_addr.map(metrics::bind_http).transpose()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.clamp(2, 8))
        .thread_name("wsfs-io")
        .enable_all()
        .build()
        .map_err(|e| WsfsError::Failed(format!("cannot start runtime: {e}")))?;
    let _guard = rt.enter();
    let mut chain =
        Chain::from_specs(&args.specs, args.limits).map_err(|e| WsfsError::Usage(e.to_string()))?;
    if args.repair {
        chain.enable_repair();
    }
    let chain = Arc::new(chain);
    let resolved = rt.block_on(layers::resolve_closure(
        &chain,
        &args.workspace,
        &args.layers,
    ))?;
    let manifests: Vec<_> = resolved.into_iter().map(|l| l.manifest).collect();
    let layer_names: Vec<String> = manifests.iter().map(|m| m.layer.clone()).collect();
    let merged = layers::merge(manifests)?;
    let table = InodeTable::build(&merged.entries, merged.chunks, merged.root)
        .map_err(|e| WsfsError::Integrity(e.to_string()))?;
    drop(merged.entries);
    let disk = match &args.cache_dir {
        Some(d) => Some(Arc::new(
            DiskCache::open(d, args.disk_cache_bytes)
                .map_err(|e| WsfsError::Usage(format!("cache directory {}: {e}", d.display())))?,
        )),
        None => None,
    };
    let fetcher = Fetcher::new(
        chain.clone(),
        args.memory_cache_bytes,
        disk,
        args.read_deadline,
    );
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let fs = Arc::new(WsFs::new(
        table,
        fetcher,
        args.uid.unwrap_or(uid),
        args.gid.unwrap_or(gid),
    ));
    let entries = fs.table().len();

    let auto_unmount = has_fusermount3();
    let mut options = vec![
        fuser::MountOption::FSName(format!("wsfs:{}", args.workspace)),
        // fuser drops Subtype on a direct (root) mount; the raw option survives both mount paths.
        fuser::MountOption::CUSTOM("subtype=wsfs".into()),
        fuser::MountOption::RO,
        fuser::MountOption::NoSuid,
        fuser::MountOption::NoDev,
        fuser::MountOption::NoAtime,
        fuser::MountOption::DefaultPermissions,
    ];
    // With fusermount3 present, it stays behind and unmounts if the daemon dies, so a killed
    // daemon does not leave a dead mount for the next job. It needs a non-owner ACL; fuser still
    // limits requests to root and the owner unless --allow-other is given.
    if auto_unmount {
        options.push(fuser::MountOption::AutoUnmount);
    }
    let mut config = fuser::Config::default();
    config.mount_options = options;
    config.acl = if args.allow_other {
        fuser::SessionACL::All
    } else if auto_unmount {
        fuser::SessionACL::RootAndOwner
    } else {
        fuser::SessionACL::Owner
    };
    config.n_threads = Some(args.threads.max(2));
    config.clone_fd = true;
    fs.pages.set_budget(args.prefetch_page_cache);
    let (neighbours, neighbour_queue) = crate::fs::neighbours::channel();
    let adapter = FuseAdapter::new(
        fs.clone(),
        rt.handle().clone(),
        64,
        args.warm_kernel,
        args.warm_kernel.then_some(neighbours),
    );
    let mut session = fuser::Session::new(adapter, &mountpoint, &config)
        .map_err(|e| WsfsError::Mount(format!("cannot mount at {}: {e}", mountpoint.display())))?;
    let mut unmounter = session.unmount_callable();
    let notifier = session.notifier();
    if args.warm_kernel {
        if let Err(e) =
            crate::fs::neighbours::start(neighbour_queue, fs.clone(), Box::new(notifier.clone()))
        {
            tracing::warn!(error = %e, "cannot start the neighbour push; reads work as usual");
        }
    }
    let (done_tx, done_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
    std::thread::Builder::new()
        .name("wsfs-fuse".into())
        .spawn(move || {
            let _ = done_tx.send(session.run());
        })
        .map_err(|e| WsfsError::Failed(format!("cannot start the FUSE thread: {e}")))?;

    let pid = std::process::id() as i32;
    let record = MountRecord {
        pid,
        mountpoint: mountpoint.clone(),
        workspace: args.workspace.clone(),
        layers: layer_names.clone(),
        stores: chain.providers().iter().map(|p| p.name.clone()).collect(),
        started: now_secs(),
        socket: runtime::socket_path(&mountpoint),
        log: None,
    };
    let source = Arc::new(StatusSource {
        fs: fs.clone(),
        chain: chain.clone(),
        base: MountStatus {
            mountpoint: mountpoint.display().to_string(),
            workspace: args.workspace.clone(),
            layers: layer_names,
            pid,
            started: record.started,
            ..Default::default()
        },
    });
    if let Err(e) =
        status::serve(&record.socket, source.clone()).and_then(|_| runtime::write_record(&record))
    {
        tracing::warn!(error = %e, "cannot write the runtime record; wsfs status will not see this mount");
    }
    let metrics_exporter = match metrics_file {
        Some(p) => match metrics::FileExporter::start(p, source.clone(), metrics::FILE_INTERVAL) {
            Ok(x) => Some(x),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the metrics file writer");
                None
            }
        },
        None => None,
    };
    if let Some(l) = metrics_listener {
        if let Err(e) = metrics::serve_http(l, source.clone()) {
            tracing::warn!(error = %e, "cannot start the metrics server");
        }
    }
    set_read_ahead(&mountpoint, args.read_ahead_kb);
    if args.prefetch_chunks {
        fs.fetcher()
            .prefetch_all(fs.table().chunks_in_path_order(), args.prefetch_concurrency);
    }
    if args.warm_kernel {
        start_warmup(&fs, &mountpoint, notifier, rt.handle().clone(), &args);
    }
    tracing::info!(
        mountpoint = %mountpoint.display(),
        workspace = %args.workspace,
        entries,
        ready_ms = started.elapsed().as_millis() as u64,
        auto_unmount,
        "mounted"
    );
    ready(Ok(()));

    // Serve until the kernel ends the session (wsfs umount, umount) or a signal asks us to stop.
    let signalled = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).ok();
        let mut int = signal(SignalKind::interrupt()).ok();
        let mut ended = tokio::task::spawn_blocking(move || done_rx.recv());
        let stop = async {
            match (term.as_mut(), int.as_mut()) {
                (Some(t), Some(i)) => {
                    tokio::select! { _ = t.recv() => {}, _ = i.recv() => {} }
                }
                _ => futures::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = stop => Some(ended),
            r = &mut ended => { let _ = r; None }
        }
    });
    if let Some(ended) = signalled {
        tracing::info!(mountpoint = %mountpoint.display(), "signal received: unmounting");
        // The warm-up's open directories would make the unmount busy.
        fs.warmup.stop(WARMUP_STOP_WAIT);
        // As root, unmount directly (fuser's own unmount defers to fusermount3's auto-unmount
        // helper, which only acts when the daemon is gone). Busy: detach lazily so the daemon can
        // still exit; readers with open files keep them until they close.
        if let Err(e) = unmount_path(&mountpoint) {
            tracing::warn!(error = %e, "direct unmount failed; trying fuser's unmount");
            if let Err(e) = unmounter.unmount() {
                tracing::warn!(error = %e, "unmount failed");
            }
        }
        let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), ended).await });
    }
    // The last metrics file, written after the unmount, says wsfs_up 0.
    if let Some(x) = metrics_exporter {
        x.finish();
    }
    runtime::remove_record(&mountpoint);
    tracing::info!(mountpoint = %mountpoint.display(), "unmounted; daemon exiting");
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// How long an unmount waits for the warm-up's workers to put down their directories. Each
/// finishes within one listing or one file, so this is only reached if the mount stops answering.
pub const WARMUP_STOP_WAIT: Duration = Duration::from_secs(3);

/// Threads of the kernel cache warm-up. Its requests are latency-bound (cross-CPU wake-ups), so
/// more threads than cores overlap them: on 2 cores, 50,000 entries warmed in 675/453/332/289/298
/// ms with 1/2/4/8/16 threads (docs/benchmarks.md).
const WARMUP_THREADS: usize = 8;

/// Starts the kernel cache warm-up of `--prefetch tree|all` on the mount this process serves.
/// Best effort: if the root cannot be opened, the mount serves everything on demand as usual.
fn start_warmup(
    fs: &Arc<WsFs>,
    mountpoint: &Path,
    notifier: fuser::Notifier,
    rt: tokio::runtime::Handle,
    args: &MountArgs,
) {
    // One descriptor of the mount's root, taken while it is certainly ours; the walk opens
    // everything relative to it.
    let root = std::fs::File::open(mountpoint).map(std::os::fd::OwnedFd::from);
    match root {
        Ok(root) => crate::fs::warmup::start(
            fs.clone(),
            root,
            Box::new(notifier),
            rt,
            crate::fs::warmup::WarmupConfig {
                threads: WARMUP_THREADS,
                push_files: args.warm_files,
            },
        ),
        Err(e) => tracing::warn!(error = %e, "cannot open the mount's root; no kernel warm-up"),
    }
}

/// Raises the kernel's read-ahead for this mount (its backing device info in sysfs). The default
/// of 128 KiB turns a sequential read of a large file into many small FUSE reads; chunks are
/// ~1 MiB. Best effort: a failure only costs throughput.
fn set_read_ahead(mountpoint: &Path, kb: u32) {
    let Ok(mounts) = mountinfo::read_mounts() else {
        return;
    };
    let Some(m) = mounts.iter().find(|m| m.mount_point == mountpoint) else {
        return;
    };
    let path = format!("/sys/class/bdi/{}:{}/read_ahead_kb", m.major, m.minor);
    if let Err(e) = std::fs::write(&path, kb.to_string()) {
        tracing::debug!(%path, error = %e, "cannot set read_ahead_kb");
    }
}

fn unmount_path(p: &Path) -> std::io::Result<()> {
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()))
        .map_err(std::io::Error::other)?;
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EBUSY) {
        tracing::warn!(mountpoint = %p.display(), "mount busy: detached lazily; open files stay readable until closed");
        // SAFETY: as above.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
            return Ok(());
        }
        return Err(std::io::Error::last_os_error());
    }
    Err(e)
}

/// The flag the parent adds when it starts the daemon: report readiness on stdout.
pub const NOTIFY_FLAG: &str = "--notify-ready";

/// Starts the daemon (this executable with the same arguments plus `--foreground
/// --notify-ready`) and waits until it reports the mount ready or failed.
pub fn spawn_daemon(mountpoint: &Path, timeout: Duration) -> Result<(), WsfsError> {
    let abs = check_mountpoint(mountpoint)?;
    let exe = std::env::current_exe()
        .map_err(|e| WsfsError::Failed(format!("cannot find own executable: {e}")))?;
    let log = runtime::log_path(&abs);
    if let Some(d) = log.parent() {
        std::fs::create_dir_all(d)
            .map_err(|e| WsfsError::Failed(format!("cannot create {}: {e}", d.display())))?;
    }
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| WsfsError::Failed(format!("cannot open log {}: {e}", log.display())))?;
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    args.push("--foreground".into());
    args.push(NOTIFY_FLAG.into());
    let mut cmd = std::process::Command::new(exe);
    cmd.args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(logf);
    // SAFETY: setsid is async-signal-safe; the daemon leaves the caller's session so that the
    // end of a CI step (which signals its process group) does not take the mount down.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| WsfsError::Failed(format!("cannot start the daemon: {e}")))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| WsfsError::Failed("no pipe to the daemon".into()))?;
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
                "cannot read from the daemon: {e}"
            )))
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(WsfsError::Timeout(format!(
                "the mount was not ready within {}s (daemon log: {})",
                timeout.as_secs(),
                log.display()
            )));
        }
    };
    let line = line.trim_end();
    if line == "READY" {
        eprintln!(
            "wsfs: mounted at {} (daemon pid {}, log {})",
            abs.display(),
            child.id(),
            log.display()
        );
        return Ok(());
    }
    let status = child.wait().ok();
    if let Some(rest) = line.strip_prefix("ERROR ") {
        let (code, msg) = rest.split_once(' ').unwrap_or((rest, ""));
        let msg = msg.to_string();
        return Err(WsfsError::from_code(code.parse::<i32>().unwrap_or(1), msg));
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
        "the daemon exited ({}) before the mount was ready; last log lines:\n{tail}",
        status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "unknown status".into())
    )))
}

/// Used by the daemon side of [`spawn_daemon`]: report on stdout, then detach stdout.
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
