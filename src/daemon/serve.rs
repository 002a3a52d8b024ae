//! The daemon: builds a workspace's filesystem and serves one FUSE connection until the
//! connection ends. Started by a keeper (`keeper.rs`), either as the first daemon (resolve the
//! layers, mount, hand the connection to the keeper) or as a replacement (rebuild the same tree
//! from the pinned manifests and take over the connection).
//!
//! In steps: [`build`] the filesystem → [`connect`] (mount, or take over) → [`start_serving`]
//! (session, status socket, metrics, background work) → tell the keeper `Ready` → wait until
//! the session ends (exit 0; `stop.rs`: SIGTERM/SIGINT unmount if nothing is open, and
//! otherwise leave the mount serving and say who holds it).

use super::fuse_dev::{self, MountOptions, Role};
use super::handover::{Channel, ConnState, Msg, PinnedLayer};
use super::stop::Serving;
use crate::cache::DiskCache;
use crate::error::WsfsError;
use crate::fetcher::Fetcher;
use crate::fs::fuse::FuseAdapter;
use crate::fs::WsFs;
use crate::layers;
use crate::mount::{check_mountpoint, MountArgs};
use crate::ops::linux::mountinfo;
use crate::ops::linux::process::{unix_now, ProcId};
use crate::ops::run_records::{self, MountRecord};
use crate::ops::service::control::{self, MountStatus, StatusSource};
use crate::ops::service::metrics_file;
use crate::store::Chain;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a daemon waits for the keeper's first message.
const FIRST_MESSAGE_WAIT: Duration = Duration::from_secs(10);

/// Threads of the kernel cache warm-up. Its requests are latency-bound (cross-CPU wake-ups), so
/// more threads than cores overlap them: on 2 cores, 50,000 entries warmed in 675/453/332/289/298
/// ms with 1/2/4/8/16 threads (docs/benchmarks.md).
const WARMUP_THREADS: usize = 8;

/// How this daemon came to be.
enum Start {
    First,
    Takeover {
        conn: ConnState,
        fd: OwnedFd,
        takeovers: u32,
    },
}

/// Runs the daemon started by a keeper (its socket at descriptor 3). Returns when the mount's
/// session has ended; an error is also reported to the keeper.
pub fn run(args: MountArgs) -> Result<(), WsfsError> {
    // SAFETY: `mount --serve-daemon` is only started by the keeper, with its socket at fd 3.
    let chan = unsafe { Channel::inherited() }.map_err(|e| WsfsError::Usage(e.to_string()))?;
    let start = first_message(&chan)?;
    let r = serve(args, &chan, start);
    if let Err(e) = &r {
        let _ = chan.send(
            &Msg::Failed {
                code: e.exit_code(),
                message: e.to_string(),
            },
            None,
        );
    }
    r
}

fn first_message(chan: &Channel) -> Result<Start, WsfsError> {
    let lost = |why: String| WsfsError::Failed(format!("daemon: no word from the keeper: {why}"));
    if !chan
        .readable(FIRST_MESSAGE_WAIT)
        .map_err(|e| lost(e.to_string()))?
    {
        return Err(lost("timed out".into()));
    }
    match chan.recv().map_err(|e| lost(e.to_string()))? {
        Some((Msg::Start, _)) => Ok(Start::First),
        Some((Msg::Takeover { conn, takeovers }, Some(fd))) => Ok(Start::Takeover {
            conn,
            fd,
            takeovers,
        }),
        Some((other, _)) => Err(lost(format!("unexpected {other:?}"))),
        None => Err(lost("the keeper closed its socket".into())),
    }
}

/// Chunks a profile replay fetches at once (at least): a profile lists what the job will ask
/// for first, so it is fetched wide, while the job starts.
const PROFILE_CONCURRENCY: usize = 16;

/// The filesystem, built and ready to mount.
struct Built {
    /// The mount's lease, taken before any ref was read (first daemon only).
    lease: Option<crate::retention::lease::Held>,
    rt: tokio::runtime::Runtime,
    chain: Arc<Chain>,
    fs: Arc<WsFs>,
    pinned: Vec<PinnedLayer>,
    layer_names: Vec<String>,
    /// The tree is the manifest's own index, served in place (one v2 layer).
    tree_in_place: bool,
    /// Time to resolve the layers and open (or build) the tree: most of mount-ready time.
    resolve_ms: u64,
    metrics_file: Option<PathBuf>,
    metrics_listener: Option<std::net::TcpListener>,
}

fn serve(args: MountArgs, chan: &Channel, start: Start) -> Result<(), WsfsError> {
    let t0 = Instant::now();
    let mut built = build(&args, &start)?;
    let (conn, fd, takeovers) = connect(&args, chan, start, &built)?;
    let serving = start_serving(&args, &mut built, &conn, fd, takeovers)?;
    // Before anyone is told the mount is ready: a SIGTERM that follows the readiness at once
    // must be a stop request, not the default action (death, and a takeover).
    let stops = super::stop::StopSignals::install(&built.rt);
    let _ = chan.send(&Msg::Ready, None);
    tracing::info!(
        mountpoint = %args.mountpoint.display(),
        workspace = %args.workspace,
        entries = built.fs.table().len(),
        takeovers,
        resolve_ms = built.resolve_ms,
        ready_ms = t0.elapsed().as_millis() as u64,
        "serving"
    );
    watch_keeper(chan);
    built
        .rt
        .block_on(crate::test_hooks::pause("daemon-after-ready"));
    super::stop::wait(
        &args,
        &built.rt,
        &built.fs,
        &built.chain,
        conn.mount_id,
        serving,
        stops,
    )
}

/// Step 1: stores, manifests (resolved from refs, or the pinned ones of a takeover), merged
/// tree, inode table, caches. Nothing is mounted yet; every failure here is an exit code.
fn build(args: &MountArgs, start: &Start) -> Result<Built, WsfsError> {
    let first = matches!(start, Start::First);
    if first {
        check_mountpoint(&args.mountpoint)?;
    }
    // Metrics flags are checked (and the port bound) before anything is mounted. A replacement
    // must not fail over them: the old daemon's port may take a moment to be free again.
    let metrics_file = match args.metrics_file.as_deref().map(metrics_file::check_file) {
        Some(Err(e)) if first => return Err(e),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "metrics file unusable after takeover");
            None
        }
        Some(Ok(p)) => Some(p),
        None => None,
    };
    let metrics_listener = match args
        .metrics_addr
        .map(crate::ops::service::metrics_http::bind)
    {
        Some(Err(e)) if first => return Err(e),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "metrics port unusable after takeover");
            None
        }
        Some(Ok(l)) => Some(l),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.clamp(2, 8))
        .thread_name("wsfs-io")
        .enable_all()
        .build()
        .map_err(|e| WsfsError::Failed(format!("cannot start runtime: {e}")))?;
    let _guard = rt.enter();
    let mut chain =
        Chain::from_specs(&args.specs, args.limits).map_err(|e| WsfsError::Usage(e.to_string()))?;
    chain.set_trust(args.trust_keys.clone());
    if args.repair {
        chain.enable_repair();
    }
    let chain = Arc::new(chain);
    // The lease comes before the first ref is read: a gc deleting a ref this mount reads then
    // sees the lease before it deletes what the ref named (retention/gc.rs).
    let lease = match start {
        Start::First => Some(rt.block_on(crate::retention::lease::hold_for_mount(
            chain.providers(),
            &args.workspace,
            &args.mountpoint,
            Vec::new(),
        ))),
        Start::Takeover { .. } => None,
    };
    let t_resolve = Instant::now();
    let resolved = match start {
        Start::First => rt
            .block_on(layers::resolve_closure(
                &chain,
                &args.workspace,
                &args.layers,
            ))
            .map(|resolved| {
                let pinned = super::pins::pin(&args.mountpoint, &resolved);
                (resolved.into_iter().map(|l| l.manifest).collect(), pinned)
            }),
        Start::Takeover { conn, .. } => rt
            .block_on(super::pins::load_pinned(
                &chain,
                &args.mountpoint,
                &conn.layers,
            ))
            .map(|ms| (ms, conn.layers.clone())),
    };
    let tree = resolved.and_then(|(manifests, pinned)| {
        let names: Vec<String> = manifests
            .iter()
            .map(|m: &crate::manifest::Opened| m.head.layer.clone())
            .collect();
        Ok((layers::tree_of(manifests)?, pinned, names))
    });
    let resolve_ms = t_resolve.elapsed().as_millis() as u64;
    let ((table, tree_in_place), pinned, layer_names) = match tree {
        Ok(m) => m,
        Err(e) => {
            // Nothing will be mounted: the lease goes now, not when it expires.
            if let Some(l) = lease {
                let _ = rt.block_on(async {
                    tokio::time::timeout(Duration::from_secs(2), l.release()).await
                });
            }
            return Err(e);
        }
    };
    release_freed_heap();
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
    fs.pages.set_budget(args.prefetch_page_cache);
    if args.profile.is_some() && first {
        // Only a daemon that serves from the start records: a replacement saw only part of
        // the run, and its profile would replace a whole one.
        fs.record_profile(args.warm_kernel);
    }
    drop(_guard);
    Ok(Built {
        lease,
        rt,
        chain,
        fs,
        pinned,
        layer_names,
        tree_in_place,
        resolve_ms,
        metrics_file,
        metrics_listener,
    })
}

/// Step 2: the connection. The first daemon mounts and hands the keeper a duplicate of the
/// connection; a replacement was handed one.
fn connect(
    args: &MountArgs,
    chan: &Channel,
    start: Start,
    built: &Built,
) -> Result<(ConnState, OwnedFd, u32), WsfsError> {
    match start {
        Start::Takeover {
            conn,
            fd,
            takeovers,
        } => Ok((conn, fd, takeovers)),
        Start::First => {
            let mp = &args.mountpoint;
            let before: Vec<u64> = mountinfo::ids_at(mp);
            let opts = MountOptions {
                fsname: format!("wsfs:{}", args.workspace),
                allow_other: args.allow_other,
            };
            let fd = fuse_dev::mount(mp, &opts)
                .map_err(|e| WsfsError::Mount(format!("cannot mount at {}: {e}", mp.display())))?;
            let init = fuse_dev::read_init(fd.as_fd()).map_err(|e| {
                WsfsError::Mount(format!(
                    "the kernel's INIT request at {}: {e}",
                    mp.display()
                ))
            })?;
            let mount_id = mountinfo::ids_at(mp)
                .into_iter()
                .rev()
                .find(|id| !before.contains(id))
                .unwrap_or(0);
            let conn = ConnState {
                init: hex::encode(&init),
                mount_id,
                layers: built.pinned.clone(),
            };
            // The keeper holds the connection from here on: a death of this daemon no longer
            // takes the mount with it.
            if let Err(e) = chan.send(&Msg::Mounted { conn: conn.clone() }, Some(fd.as_fd())) {
                tracing::warn!(error = %e, "cannot hand the connection to the keeper; no takeover if this daemon dies");
            }
            Ok((conn, fd, 0))
        }
    }
}

/// Step 3: the FUSE session on the connection, the status socket and runtime record, metrics,
/// and background work (chunk prefetch; the kernel warm-up, only after a fresh mount: the
/// kernel's caches survive a takeover).
fn start_serving(
    args: &MountArgs,
    built: &mut Built,
    conn: &ConnState,
    fd: OwnedFd,
    takeovers: u32,
) -> Result<Serving, WsfsError> {
    let first = takeovers == 0;
    let fs = &built.fs;
    let _guard = built.rt.enter();
    let (neighbours, neighbour_queue) = crate::fs::neighbours::channel();
    let mut adapter = FuseAdapter::new(
        fs.clone(),
        built.rt.handle().clone(),
        64,
        args.warm_kernel,
        args.warm_kernel.then_some(neighbours),
    );
    if args.passthrough {
        adapter = adapter.with_passthrough();
    }
    let mut config = fuser::Config::default();
    config.n_threads = Some(args.threads.max(2));
    // One descriptor shared by all FUSE threads: requests a daemon has read live on that
    // descriptor's queue, which the keeper's duplicate keeps alive for a resend. A cloned
    // descriptor would die with the daemon, and the kernel would fail its requests.
    config.clone_fd = false;
    let acl = if args.allow_other {
        fuser::SessionACL::All
    } else {
        fuser::SessionACL::Owner
    };
    let init = hex::decode(&conn.init)
        .map_err(|e| WsfsError::Failed(format!("bad INIT in the handover: {e}")))?;
    let role = if first {
        Role::First
    } else {
        Role::Replacement
    };
    let session = fuse_dev::start_session(adapter, fd.as_fd(), &init, role, acl, config)
        .map_err(|e| WsfsError::Mount(format!("cannot start the FUSE session: {e}")))?;
    if !first {
        // The requests the dead daemon had read but not answered go back to the queue, for us.
        if let Err(e) = fuse_dev::notify_resend(fd.as_fd()) {
            tracing::error!(error = %e, "FUSE_NOTIFY_RESEND failed: requests in flight when the last daemon died may wait until wsfs umount --force");
        }
    }
    drop(fd);
    let notifier = session.notifier();
    if args.warm_kernel {
        if let Err(e) =
            crate::fs::neighbours::start(neighbour_queue, fs.clone(), Box::new(notifier.clone()))
        {
            tracing::warn!(error = %e, "cannot start the neighbour push; reads work as usual");
        }
    }
    let (done_tx, done) = std::sync::mpsc::channel::<std::io::Result<()>>();
    std::thread::Builder::new()
        .name("wsfs-fuse".into())
        .spawn(move || {
            let _ = done_tx.send(session.run());
        })
        .map_err(|e| WsfsError::Failed(format!("cannot start the FUSE thread: {e}")))?;

    let me = ProcId::me();
    // SAFETY: getppid has no preconditions.
    let keeper = ProcId::of(unsafe { libc::getppid() });
    let mp = args.mountpoint.clone();
    let record = MountRecord {
        pid: me.pid,
        pid_start: me.start,
        keeper,
        takeovers,
        mountpoint: mp.clone(),
        workspace: args.workspace.clone(),
        layers: built.layer_names.clone(),
        stores: built
            .chain
            .providers()
            .iter()
            .map(|p| p.name.clone())
            .collect(),
        started: unix_now(),
        socket: run_records::socket_path(&mp),
        log: None,
        attached_at: args.attach_lower.clone(),
    };
    let source = Arc::new(StatusSource {
        fs: fs.clone(),
        chain: built.chain.clone(),
        base: MountStatus {
            mountpoint: mp.display().to_string(),
            workspace: args.workspace.clone(),
            layers: built.layer_names.clone(),
            pid: me.pid,
            keeper_pid: keeper.map(|k| k.pid),
            takeovers,
            signers: conn
                .layers
                .iter()
                .map(|l| (l.name.clone(), l.signer.clone()))
                .collect(),
            started: record.started,
            tree: crate::ops::service::control::TreeStatus {
                in_place: built.tree_in_place,
                bytes: fs.table().heap_bytes(),
            },
            profile: args.profile.as_ref().map(|name| {
                crate::ops::service::control::ProfileStatus {
                    name: name.clone(),
                    ..Default::default()
                }
            }),
            ..Default::default()
        },
    });
    if let Err(e) = control::serve(&record.socket, source.clone())
        .and_then(|_| run_records::write_record(&record))
    {
        tracing::warn!(error = %e, "cannot write the runtime record; wsfs status will not see this mount's counters");
    }
    let metrics = match &built.metrics_file {
        Some(p) => {
            match metrics_file::FileExporter::start(
                p.clone(),
                source.clone(),
                metrics_file::FILE_INTERVAL,
            ) {
                Ok(x) => Some(x),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the metrics file writer");
                    None
                }
            }
        }
        None => None,
    };
    if let Some(l) = built.metrics_listener.take() {
        if let Err(e) =
            crate::ops::service::metrics_http::serve(l, source.clone(), built.rt.handle())
        {
            tracing::warn!(error = %e, "cannot start the metrics server");
        }
    }
    if first {
        set_read_ahead(&mp, args.read_ahead_kb);
    }
    if let Some(name) = &args.profile {
        // Before the whole-workspace prefetch: the profile's chunks are what the job wants first.
        let (chain, fs, name) = (built.chain.clone(), fs.clone(), name.clone());
        let concurrency = args.prefetch_concurrency.max(PROFILE_CONCURRENCY);
        built.rt.spawn(async move {
            crate::profile::replay(&chain, &fs, &name, concurrency).await;
        });
    }
    if args.prefetch_chunks {
        fs.fetcher()
            .prefetch_all(fs.table().chunks_in_path_order(), args.prefetch_concurrency);
    }
    if args.warm_kernel && first {
        start_warmup(fs, &mp, notifier, built.rt.handle().clone(), args);
    }
    // The same lease key for every daemon of this mount: a replacement renews it, naming the
    // pinned manifests at once; the first daemon's (taken before resolving) now names them.
    let manifests: Vec<String> = conn.layers.iter().map(|l| l.manifest.clone()).collect();
    let lease = match built.lease.take() {
        Some(held) => {
            let _g = built.rt.enter();
            held.set_manifests(manifests);
            built.rt.spawn(async move { held })
        }
        None => {
            let (providers, workspace, lease_mp) = (
                built.chain.providers().to_vec(),
                args.workspace.clone(),
                mp.clone(),
            );
            built.rt.spawn(async move {
                crate::retention::lease::hold_for_mount(
                    &providers, &workspace, &lease_mp, manifests,
                )
                .await
            })
        }
    };
    Ok(Serving {
        done,
        metrics,
        lease,
    })
}

/// Logs once if the keeper goes away: from then on this daemon's death ends the mount (ENOTCONN).
fn watch_keeper(chan: &Channel) {
    let Ok(fd) = chan.fd().try_clone_to_owned() else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("wsfs-keeper-watch".into())
        .spawn(move || {
            let chan = Channel::new(fd);
            while let Ok(Some(m)) = chan.recv() {
                tracing::warn!(?m, "unexpected message from the keeper");
            }
            tracing::warn!("the keeper is gone: if this daemon dies now, the mount fails with ENOTCONN until wsfs umount");
        });
}

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
    let root = std::fs::File::open(mountpoint).map(OwnedFd::from);
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

/// Hands the heap memory freed after the build (the decoded manifests: a small allocation per
/// entry) back to the kernel. Without it the daemon's resident memory keeps the peak of the
/// mount's start for its whole life: glibc returns only the top of its heap by itself.
fn release_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
