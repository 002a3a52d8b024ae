//! The `wsfs` binary: parse the command line, run the command, exit with the documented code.

use clap::Parser;
use std::sync::Arc;
use wsfs::cli::{Cli, Command, StoreArgs};
use wsfs::error::{exit, WsfsError};
use wsfs::store::{chain_specs, Chain, Limits, Provider};

fn init_logging(cli: &Cli, default: &str) {
    let filter = cli
        .log
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| default.to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour codes only for a terminal: daemon logs go to files.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if cli.log_format == wsfs::cli::LogFormat::Json {
        b.json().init();
    } else {
        b.init();
    }
}

fn limits(s: &StoreArgs) -> Limits {
    Limits {
        request_timeout: s.request_timeout,
        connect_timeout: s.connect_timeout,
        retries: s.retries,
        concurrency: s.provider_concurrency,
    }
}

fn specs(s: &StoreArgs) -> Result<Vec<wsfs::store::StoreSpec>, WsfsError> {
    let specs =
        chain_specs(s.config.as_deref(), &s.stores).map_err(|e| WsfsError::Usage(e.to_string()))?;
    // Said once, by the command the user typed (not again by its keeper and daemons).
    if std::env::var_os(wsfs::mount::STORE_URLS_ENV).is_none() {
        for u in &s.stores {
            if wsfs::store::url_has_credentials(u) {
                eprintln!(
                    "wsfs: warning: a --store URL carries credentials (user:password@ or a signature/token query); \
                     any user can read a command line while it runs. wsfs keeps them off its daemons' command lines, \
                     but pass credentials in the environment (AWS_*, GOOGLE_*, AZURE_*) or a --config file (mode 0600) instead"
                );
                break;
            }
        }
    }
    Ok(specs)
}

/// The trusted public keys: `--trust-key` files, then the config file's `trust_keys`.
fn trust_keys(s: &StoreArgs) -> Result<Vec<ed25519_dalek::VerifyingKey>, WsfsError> {
    let mut paths = s.trust_keys.clone();
    paths.extend(
        wsfs::store::config_trust_keys(s.config.as_deref())
            .map_err(|e| WsfsError::Usage(e.to_string()))?,
    );
    wsfs::keys::load_trusted(&paths)
}

fn providers(s: &StoreArgs) -> Result<Vec<Arc<Provider>>, WsfsError> {
    let chain =
        Chain::from_specs(&specs(s)?, limits(s)).map_err(|e| WsfsError::Usage(e.to_string()))?;
    Ok(chain.providers().to_vec())
}

/// Everything about a mount's input that can be judged without a store, judged before anything
/// starts: bad names, zero timeouts, unusable store URLs and metrics files are usage errors
/// (exit 2) with the reason, not "missed on every provider" later.
fn check_mount_input(
    store: &StoreArgs,
    specs: &[wsfs::store::StoreSpec],
    workspace: &str,
    layers: &[String],
    read_deadline: std::time::Duration,
    metrics_file: Option<&std::path::Path>,
) -> Result<(), WsfsError> {
    use wsfs::manifest::names::validate_name;
    validate_name("workspace", workspace).map_err(WsfsError::Usage)?;
    for l in layers {
        validate_name("layer", l).map_err(WsfsError::Usage)?;
    }
    for (what, d) in [
        ("--request-timeout", store.request_timeout),
        ("--connect-timeout", store.connect_timeout),
        ("--read-deadline", read_deadline),
    ] {
        if d.is_zero() {
            return Err(WsfsError::Usage(format!(
                "{what} must be longer than 0 (every request would time out)"
            )));
        }
    }
    if specs.is_empty() {
        return Err(WsfsError::Usage(
            "no store given: pass --store URL (repeatable) or --config FILE".into(),
        ));
    }
    for spec in specs {
        Provider::from_spec(spec, limits(store)).map_err(|e| WsfsError::Usage(e.to_string()))?;
    }
    if let Some(p) = metrics_file {
        wsfs::ops::service::metrics_file::check_file(p)?;
    }
    trust_keys(store)?;
    Ok(())
}

/// A mount returns when the tree can be read; fetching every chunk (`--prefetch chunks|all`)
/// goes on in the background, and the user is told where to watch it.
fn say_prefetching(prefetch: wsfs::cli::Prefetch, at: &std::path::Path) {
    if prefetch.chunks() {
        eprintln!(
            "wsfs: fetching every chunk in the background (--prefetch {}); `wsfs status {}` shows how far it is",
            prefetch.name(),
            at.display()
        );
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, WsfsError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| WsfsError::Failed(format!("cannot start runtime: {e}")))
}

/// Runs a parsed command; `argv` is its command line without the program name (a mount hands
/// it to its keeper).
fn run(cli: Cli, argv: &[std::ffi::OsString]) -> Result<(), WsfsError> {
    match cli.command {
        Command::Persist {
            store,
            workspace,
            layer,
            parents,
            root,
            require,
            concurrency,
            allow_empty,
            sign_key,
            gc_wait,
            index_dir,
            no_index,
            paths,
        } => {
            let sign_key = sign_key
                .as_deref()
                .map(wsfs::keys::load_signing_key)
                .transpose()?;
            let require = require.parse().map_err(WsfsError::Usage)?;
            let rt = runtime()?;
            let _g = rt.enter();
            let provs = providers(&store)?;
            let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let report = rt.block_on(wsfs::persist::persist(
                &provs,
                wsfs::persist::PersistOptions {
                    workspace,
                    layer,
                    parents,
                    root,
                    paths,
                    require,
                    concurrency,
                    progress,
                    gc_wait,
                    allow_empty,
                    sign_key,
                    index_dir: if no_index {
                        None
                    } else {
                        index_dir.or_else(wsfs::persist::index::default_dir)
                    },
                },
            ))?;
            for s in &report.skipped_special {
                eprintln!("wsfs: warning: skipped special file {s}");
            }
            println!("{}", report.summary());
            Ok(())
        }
        Command::Keygen { out } => {
            let (public, id) = wsfs::keys::keygen(&out)?;
            println!(
                "secret key {} (keep it secret: CI secret store), public key {} (key id {id})",
                out.display(),
                public.display()
            );
            Ok(())
        }
        Command::Ls {
            store,
            workspace,
            json,
        } => {
            let rt = runtime()?;
            let _g = rt.enter();
            let provs = providers(&store)?;
            let l = rt.block_on(wsfs::retention::ls::list(&provs, workspace.as_deref()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&l).unwrap_or_default());
            } else {
                print!("{}", wsfs::retention::ls::render(&l));
            }
            Ok(())
        }
        Command::Rm {
            store,
            workspace,
            layers,
        } => {
            let rt = runtime()?;
            let _g = rt.enter();
            let provs = providers(&store)?;
            let r = rt.block_on(wsfs::retention::rm::rm(&provs, &workspace, &layers))?;
            print!("{}", r.render());
            Ok(())
        }
        Command::Gc {
            store,
            older_than,
            grace,
            dry_run,
            json,
            wait,
        } => {
            let rt = runtime()?;
            let _g = rt.enter();
            let provs = providers(&store)?;
            let opts = wsfs::retention::gc::GcOptions {
                older_than,
                grace,
                dry_run,
                wait,
                progress: !json && std::io::IsTerminal::is_terminal(&std::io::stderr()),
            };
            let (stores, verdict) = rt.block_on(wsfs::retention::gc::gc(&provs, &opts));
            if json {
                let doc = serde_json::json!({ "dry_run": dry_run, "stores": stores });
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            } else {
                print!("{}", wsfs::retention::gc_text::render(&stores));
            }
            verdict
        }
        Command::Verify {
            store,
            what: wsfs::cli::LayersArgs { workspace, layers },
            deep,
            all,
            repair,
        } => {
            let rt = runtime()?;
            let _g = rt.enter();
            let provs = providers(&store)?;
            let trust = trust_keys(&store)?;
            let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let mut reports = rt.block_on(wsfs::verify::verify(
                &provs, &workspace, &layers, deep, &trust, progress,
            ));
            if repair && reports.iter().any(|r| !r.complete()) {
                let (text, _) = wsfs::verify::judge(&reports, all);
                print!("{text}");
                for line in rt.block_on(wsfs::verify::repair(&provs, &workspace, &reports)) {
                    println!("repair: {line}");
                }
                println!("after repair:");
                reports = rt.block_on(wsfs::verify::verify(
                    &provs, &workspace, &layers, deep, &trust, progress,
                ));
            }
            let (text, verdict) = wsfs::verify::judge(&reports, all);
            print!("{text}");
            verdict
        }
        Command::Mount {
            mut store,
            workspace,
            layers,
            mountpoint,
            foreground,
            serve,
            allow_other,
            ready_timeout,
            check_only,
            notify_ready,
            serve_daemon,
            attach_lower,
        } => {
            let wsfs::cli::ServeArgs {
                cache_dir,
                cache_size,
                memory_cache,
                uid,
                gid,
                read_deadline,
                repair,
                metrics_file,
                metrics_addr,
                threads,
                prefetch,
                prefetch_concurrency,
                passthrough,
                profile,
                prefetch_page_cache,
                read_ahead_kb,
            } = serve;
            // Store URLs a parent wsfs handed down outside the command line.
            store.stores.extend(wsfs::mount::inherited_store_urls());
            let cfg = wsfs::store::config_mount(store.config.as_deref())
                .map_err(|e| WsfsError::Usage(e.to_string()))?;
            let from_config = |what: &str| {
                WsfsError::Usage(format!(
                    "no {what}: pass it on the command line or set it in the [mount] table of a --config file (docs/operations.md)"
                ))
            };
            let workspace = workspace
                .or(cfg.workspace)
                .ok_or_else(|| from_config("workspace (--workspace WS)"))?;
            let layers = if layers.is_empty() {
                cfg.layers
            } else {
                layers
            };
            if layers.is_empty() {
                return Err(from_config("layer (--layer NAME, repeatable)"));
            }
            let mountpoint = mountpoint
                .or(cfg.mountpoint)
                .ok_or_else(|| from_config("mount point (the MOUNTPOINT argument)"))?;
            let cache_dir = cache_dir.or(cfg.cache_dir);
            let cache_size = match (cache_size, cfg.cache_size) {
                (Some(n), _) => n,
                (None, Some(s)) => wsfs::cli::parse_size(&s)
                    .map_err(|e| WsfsError::Usage(format!("[mount] cache_size: {e}")))?,
                (None, None) => 10 << 30,
            };
            let read_deadline = match (read_deadline, cfg.read_deadline) {
                (Some(d), _) => d,
                (None, Some(s)) => wsfs::cli::parse_dur(&s)
                    .map_err(|e| WsfsError::Usage(format!("[mount] read_deadline: {e}")))?,
                (None, None) => std::time::Duration::from_secs(30),
            };
            let prefetch = match (prefetch, cfg.prefetch) {
                (Some(p), _) => p,
                (None, Some(text)) => <wsfs::cli::Prefetch as clap::ValueEnum>::from_str(
                    &text, false,
                )
                .map_err(|_| {
                    WsfsError::Usage(format!(
                        "[mount] prefetch = {text:?}: expected none, tree, chunks or all"
                    ))
                })?,
                (None, None) => wsfs::cli::Prefetch::default(),
            };
            let allow_other = allow_other || cfg.allow_other.unwrap_or(false);
            let uid = uid.or(cfg.uid);
            let gid = gid.or(cfg.gid);
            let metrics_file = metrics_file.or(cfg.metrics_file);
            let metrics_addr = metrics_addr.or(cfg.metrics_addr);
            let profile = profile.or(cfg.profile);
            let passthrough = passthrough || cfg.passthrough.unwrap_or(false);
            if passthrough && cache_dir.is_none() {
                return Err(WsfsError::Usage(
                    "--passthrough needs --cache-dir: the backing files are verified copies kept in the disk cache".into(),
                ));
            }
            if let Some(p) = &profile {
                wsfs::manifest::names::validate_name("profile", p).map_err(WsfsError::Usage)?;
            }
            let specs = specs(&store)?;
            check_mount_input(
                &store,
                &specs,
                &workspace,
                &layers,
                read_deadline,
                metrics_file.as_deref(),
            )?;
            if (uid.is_some() || gid.is_some()) && !allow_other && attach_lower.is_none() {
                return Err(WsfsError::Usage(
                    "--uid/--gid make the files another user's, but without --allow-other the kernel lets only the mounting user into the mount: add --allow-other (file modes then decide who may read what)".into(),
                ));
            }
            if check_only {
                let abs = wsfs::mount::check_mountpoint(&mountpoint)?;
                eprintln!(
                    "wsfs: {} can be mounted there (input checked, nothing mounted; the stores were not asked)",
                    abs.display()
                );
                return Ok(());
            }
            if !foreground {
                // The keeper gets this command's arguments (it reads the same config file) and
                // the store URLs, in its environment.
                wsfs::mount::spawn_keeper(argv, &store.stores, &mountpoint, ready_timeout)?;
                say_prefetching(prefetch, &mountpoint);
                return Ok(());
            }
            // Keeper and daemons refer to the mount point by its absolute path (records, the
            // mount table); relative paths resolve against the caller's directory, as given.
            let mountpoint = wsfs::ops::linux::mountinfo::absolute_lexical(&mountpoint)
                .map(|(a, _)| a)
                .ok_or_else(|| {
                    WsfsError::Usage(format!(
                        "{}: cannot make the path absolute",
                        mountpoint.display()
                    ))
                })?;
            let cpus = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2);
            let args = wsfs::mount::MountArgs {
                specs,
                limits: limits(&store),
                workspace,
                layers,
                mountpoint,
                cache_dir,
                disk_cache_bytes: cache_size,
                memory_cache_bytes: memory_cache as usize,
                allow_other,
                uid,
                gid,
                read_deadline,
                repair,
                threads: threads.unwrap_or((cpus * 2).max(4)),
                metrics_file,
                metrics_addr,
                prefetch_chunks: prefetch.chunks(),
                warm_kernel: prefetch.kernel(),
                warm_files: prefetch.files(),
                prefetch_concurrency,
                prefetch_page_cache,
                read_ahead_kb,
                attach_lower,
                trust_keys: trust_keys(&store)?,
                profile,
                passthrough,
            };
            if serve_daemon {
                return wsfs::daemon::serve::run(args);
            }
            // Foreground: this process is the keeper. The mount point is checked here so that
            // a busy or missing one fails before any daemon starts.
            let mountpoint = wsfs::mount::check_mountpoint(&args.mountpoint)?;
            let shown = format!("{} at {}", args.workspace, mountpoint.display());
            let mut notified = false;
            let mut ready = |r: Result<(), &WsfsError>| {
                if notified {
                    return;
                }
                notified = true;
                if notify_ready {
                    wsfs::mount::notify_parent(r);
                    return;
                }
                // systemd (Type=notify): `systemctl start` returns when the tree can be read.
                match r {
                    Ok(()) => {
                        wsfs::daemon::sd_notify::notify(&format!(
                            "READY=1\nSTATUS=serving {shown}"
                        ));
                        eprintln!(
                            "wsfs: mounted; serving in the foreground (Ctrl-C or wsfs umount to stop)"
                        );
                    }
                    Err(e) => wsfs::daemon::sd_notify::notify(&format!(
                        "STATUS=mount failed: {}",
                        e.to_string().lines().next().unwrap_or_default()
                    )),
                }
            };
            let r = wsfs::daemon::keeper::run(
                wsfs::daemon::keeper::KeeperArgs {
                    mountpoint,
                    daemon_args: wsfs::mount::daemon_args(),
                },
                &mut ready,
            );
            if !notify_ready {
                wsfs::daemon::sd_notify::notify("STOPPING=1");
            }
            r
        }
        Command::Attach {
            store,
            what: wsfs::cli::LayersArgs { workspace, layers },
            at,
            scratch,
            keep_scratch,
            serve,
        } => {
            specs(&store)?;
            // The `wsfs mount` attach runs: the same store and serving options; the store URLs
            // go down outside the command line.
            let mut a = store.to_args_without_urls();
            a.extend(["--workspace".into(), workspace.clone().into()]);
            for l in &layers {
                a.extend(["--layer".into(), l.into()]);
            }
            a.extend(serve.to_args());
            let prefetch = serve.prefetch.unwrap_or_default();
            let shown_at = at.clone();
            wsfs::attach::attach(wsfs::attach::AttachArgs {
                mount_args: a,
                store_urls: store.stores.clone(),
                uid: serve.uid,
                gid: serve.gid,
                at,
                scratch,
                keep_scratch,
            })?;
            say_prefetching(prefetch, &shown_at);
            Ok(())
        }
        Command::Umount {
            mountpoint,
            force,
            timeout,
            all_stale,
            if_mounted,
        } => wsfs::ops::umount::run(mountpoint.as_deref(), force, timeout, all_stale, if_mounted),
        Command::Status { mountpoint, json } => {
            wsfs::ops::status::print(mountpoint.as_deref(), json)
        }
    }
}

fn main() {
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Started as mount(8)'s helper (`mount -t fuse.wsfs`, fstab): the same as `wsfs mount`.
    if argv
        .first()
        .is_some_and(|a| wsfs::mount_helper::invoked_as_helper(a))
    {
        match wsfs::mount_helper::translate(&argv) {
            Ok(a) => argv = a,
            Err(e) => {
                eprintln!("wsfs: error: {e}");
                std::process::exit(e.exit_code());
            }
        }
    }
    let cli = Cli::parse_from(&argv);
    // Listing commands behave as Unix tools in a pipe (`wsfs ls | head`): a closed stdout ends
    // them quietly. Daemons keep SIGPIPE ignored (a status client hanging up must not kill one).
    if matches!(
        cli.command,
        Command::Ls { .. }
            | Command::Gc { .. }
            | Command::Rm { .. }
            | Command::Status { .. }
            | Command::Verify { .. }
    ) {
        // SAFETY: setting a signal disposition at start-up, before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let default_log = match &cli.command {
        Command::Mount { .. } => "info",
        _ => "warn",
    };
    init_logging(&cli, default_log);
    let code = match run(cli, argv.get(1..).unwrap_or_default()) {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("wsfs: error: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}
