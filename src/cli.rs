//! Command-line interface (clap). Thin: parse, build the pieces, call the module that does the
//! work, print, and map errors to the documented exit codes.

use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "wsfs", version, about = "Lazy, verified FUSE mounts of CI workspaces", long_about = None)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax), e.g. info, wsfs=debug. Also RUST_LOG.
    #[arg(long, global = true)]
    pub log: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// What a mount brings close before it is asked for (`--prefetch`; see `wsfs mount --help`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Prefetch {
    None,
    #[default]
    Tree,
    Chunks,
    All,
}

impl Prefetch {
    /// Fetch every chunk in the background.
    pub fn chunks(self) -> bool {
        matches!(self, Prefetch::Chunks | Prefetch::All)
    }
    /// Warm the kernel's caches (names, attributes; neighbours of read files).
    pub fn kernel(self) -> bool {
        matches!(self, Prefetch::Tree | Prefetch::All)
    }
    /// Push every small file's pages too.
    pub fn files(self) -> bool {
        self == Prefetch::All
    }
    pub fn name(self) -> &'static str {
        match self {
            Prefetch::None => "none",
            Prefetch::Tree => "tree",
            Prefetch::Chunks => "chunks",
            Prefetch::All => "all",
        }
    }
}

#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct StoreArgs {
    /// A store URL, repeatable; the order is the failover order (file:///abs, s3://b/p, gs://b/p, az://…, http(s)://…).
    #[arg(long = "store", value_name = "URL")]
    pub stores: Vec<String>,
    /// TOML file with [[store]] url = "…" options = { … } entries (they come before --store flags).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Per-request timeout for each provider (e.g. 5s, 500ms).
    #[arg(long, default_value = "5s", value_parser = parse_dur)]
    pub request_timeout: std::time::Duration,
    /// Connect timeout for each provider.
    #[arg(long, default_value = "2s", value_parser = parse_dur)]
    pub connect_timeout: std::time::Duration,
    /// Retries of transient errors within the request timeout (never on 404/403).
    #[arg(long, default_value_t = 2)]
    pub retries: usize,
    /// Requests in flight to each provider at once.
    #[arg(long, default_value_t = 32, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub provider_concurrency: usize,
    /// Accept only layer refs signed by this public key (from `wsfs keygen`; repeatable, for
    /// rotation; also `trust_keys = [...]` in --config). Mount, attach and verify.
    #[arg(long = "trust-key", value_name = "FILE.pub")]
    pub trust_keys: Vec<PathBuf>,
}

/// The workspace and the layers a command works on (attach, verify; `mount` takes them
/// optionally, from its config file).
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct LayersArgs {
    #[arg(long)]
    pub workspace: String,
    /// A layer, repeatable: the job's direct upstream layers (their ancestors come along).
    #[arg(long = "layer", required = true)]
    pub layers: Vec<String>,
}

/// How a workspace is served: the options `wsfs mount` and `wsfs attach` share. Attach hands
/// them to the `wsfs mount` it runs with [`ServeArgs::to_args`].
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct ServeArgs {
    /// Disk cache directory, shared by mounts.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Disk cache bound [default: 10G].
    #[arg(long, value_parser = parse_size)]
    pub cache_size: Option<u64>,
    /// Memory cache bound.
    #[arg(long, default_value = "512M", value_parser = parse_size)]
    pub memory_cache: u64,
    /// Owner of every file (default: the user who mounts). `mount`: needs --allow-other
    /// (otherwise that user could not reach the mount at all). `attach`: the job's user, so
    /// it can modify the workspace's files.
    #[arg(long)]
    pub uid: Option<u32>,
    #[arg(long)]
    pub gid: Option<u32>,
    /// A read fails with EIO after this long [default: 30s].
    #[arg(long, value_parser = parse_dur)]
    pub read_deadline: Option<std::time::Duration>,
    /// Write chunks found on a later store back to earlier stores that missed them.
    #[arg(long)]
    pub repair: bool,
    /// Prometheus metrics file, rewritten atomically every 2 s and at exit (for node_exporter's
    /// textfile collector, name it *.prom).
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9477 (loopback advised).
    #[arg(long, value_name = "IP:PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// FUSE worker threads (default: 2 x cores, at least 4).
    #[arg(long)]
    pub threads: Option<usize>,
    /// What to bring close before it is asked for, in the background after mounting:
    /// `tree` (default): list every directory through the kernel, so walks, stats and path
    /// lookups send no FUSE request; nothing is fetched from the stores. `none`: nothing
    /// (every name is looked up on demand). `chunks`: fetch every chunk into wsfs's caches, in
    /// path order (no kernel warm-up). `all`: `tree` and `chunks`, and push small files
    /// (<= 1 MiB) into the kernel's page cache, so reading them sends no FUSE request (for
    /// jobs that read most of the workspace). [default: tree]
    #[arg(long, value_enum)]
    pub prefetch: Option<Prefetch>,
    /// Chunks the background prefetch fetches at once: enough to fill a link whose round
    /// trips are tens of milliseconds (4 left a 125 MB/s link at 39 MB/s), while leaving
    /// each store's other request slots (--provider-concurrency) to on-demand reads.
    #[arg(long, default_value_t = 16)]
    pub prefetch_concurrency: usize,
    /// FUSE passthrough (Linux >= 6.9, root): a file of 1 MiB or more whose chunks are all in
    /// the disk cache is materialized there once (checked against the manifest's whole-file
    /// BLAKE3) and opened with that copy as backing file, so the kernel reads it at native
    /// speed. Needs --cache-dir. Costs one round trip per open (no no-open mode).
    #[arg(long)]
    pub passthrough: bool,
    /// Profile-guided prefetch: fetch first, in parallel, the chunks the last mount with this
    /// profile name read (stored at `profiles/NAME` on the stores), record the order of this
    /// run's first reads, and store it at unmount. Name it after the job (e.g. `test-linux`).
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// At most this much page-cache memory is filled ahead of reads: with `tree` or `all`,
    /// the other small files of a pack chunk a file was just read from; with `all`, every
    /// small file. 0: none. Clean page-cache pages are
    /// reclaimable; an evicted file is simply read again through wsfs.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub prefetch_page_cache: u64,
    /// The mount's kernel read-ahead (sysfs bdi read_ahead_kb).
    #[arg(long, default_value_t = 4096)]
    pub read_ahead_kb: u32,
}

impl ServeArgs {
    /// These options as `wsfs mount` flags (what parses back to an equal value).
    pub fn to_args(&self) -> Vec<OsString> {
        let mut a = Args::default();
        a.opt("--cache-dir", self.cache_dir.as_ref().map(|p| p.into()));
        a.opt(
            "--cache-size",
            self.cache_size.map(|n| n.to_string().into()),
        );
        a.one("--memory-cache", self.memory_cache.to_string());
        a.opt("--uid", self.uid.map(|n| n.to_string().into()));
        a.opt("--gid", self.gid.map(|n| n.to_string().into()));
        a.opt(
            "--read-deadline",
            self.read_deadline.map(|d| millis(d).into()),
        );
        a.flag("--repair", self.repair);
        a.opt(
            "--metrics-file",
            self.metrics_file.as_ref().map(|p| p.into()),
        );
        a.opt(
            "--metrics-addr",
            self.metrics_addr.map(|x| x.to_string().into()),
        );
        a.opt("--threads", self.threads.map(|n| n.to_string().into()));
        a.opt("--prefetch", self.prefetch.map(|p| p.name().into()));
        a.one(
            "--prefetch-concurrency",
            self.prefetch_concurrency.to_string(),
        );
        a.flag("--passthrough", self.passthrough);
        a.opt("--profile", self.profile.as_ref().map(|p| p.into()));
        a.one(
            "--prefetch-page-cache",
            self.prefetch_page_cache.to_string(),
        );
        a.one("--read-ahead-kb", self.read_ahead_kb.to_string());
        a.0
    }
}

impl StoreArgs {
    /// These options as flags, without the store URLs (a parent wsfs hands those down outside
    /// the command line: they may hold credentials).
    pub fn to_args_without_urls(&self) -> Vec<OsString> {
        let mut a = Args::default();
        a.opt("--config", self.config.as_ref().map(|p| p.into()));
        a.one("--request-timeout", millis(self.request_timeout));
        a.one("--connect-timeout", millis(self.connect_timeout));
        a.one("--retries", self.retries.to_string());
        a.one(
            "--provider-concurrency",
            self.provider_concurrency.to_string(),
        );
        for k in &self.trust_keys {
            a.one("--trust-key", k);
        }
        a.0
    }
}

fn millis(d: std::time::Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// A command line being built.
#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn one(&mut self, flag: &str, v: impl Into<OsString>) {
        self.0.push(flag.into());
        self.0.push(v.into());
    }
    fn opt(&mut self, flag: &str, v: Option<OsString>) {
        if let Some(v) = v {
            self.one(flag, v);
        }
    }
    fn flag(&mut self, flag: &str, on: bool) {
        if on {
            self.0.push(flag.into());
        }
    }
}

pub fn parse_dur(s: &str) -> Result<std::time::Duration, String> {
    crate::store::config::parse_duration(s)
        .ok_or_else(|| format!("{s:?} is not a duration (try 500ms, 5s, 10m, 2h or 15d)"))
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let m = match s[i..].to_ascii_lowercase().as_str() {
                "b" => 1,
                "k" | "kib" | "kb" => 1 << 10,
                "m" | "mib" | "mb" => 1 << 20,
                "g" | "gib" | "gb" => 1 << 30,
                _ => return Err(format!("{s:?}: unknown size unit (use K, M or G)")),
            };
            (&s[..i], m)
        }
        None => (s, 1),
    };
    num.trim()
        .parse::<u64>()
        .map(|n| n * mult)
        .map_err(|_| format!("{s:?} is not a size (try 512M or 2G)"))
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Persist a directory tree as a workspace layer on every store.
    Persist {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        workspace: String,
        #[arg(long)]
        layer: String,
        /// Layers this job had attached (repeatable).
        #[arg(long = "parent")]
        parents: Vec<String>,
        /// Directory to persist from.
        #[arg(long)]
        root: PathBuf,
        /// How many stores must commit the layer: all, any, or a number.
        #[arg(long, default_value = "all")]
        require: String,
        /// Chunks uploaded concurrently.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Commit the layer even if it holds nothing (patterns that match nothing, an empty root).
        #[arg(long)]
        allow_empty: bool,
        /// Sign the layer's ref with this secret key (from `wsfs keygen`).
        #[arg(long, value_name = "KEY")]
        sign_key: Option<PathBuf>,
        /// How long to wait for a `wsfs gc` running on a store before failing there.
        #[arg(long, default_value = "10m", value_parser = parse_dur)]
        gc_wait: std::time::Duration,
        /// Where the persist index lives: what the last persist of this root and layer read, so
        /// unchanged files are not read again [default: /var/cache/wsfs/persist-index for root,
        /// else ~/.cache/wsfs/persist-index].
        #[arg(long, value_name = "DIR", env = "WSFS_PERSIST_INDEX_DIR")]
        index_dir: Option<PathBuf>,
        /// Read every file, and neither use nor write a persist index (wins over --index-dir).
        #[arg(long)]
        no_index: bool,
        /// Paths or globs relative to --root (default: everything).
        paths: Vec<String>,
    },
    /// Write a new Ed25519 key pair for signing layers: KEY (secret, mode 0600) and KEY.pub.
    Keygen {
        #[arg(long, value_name = "KEY")]
        out: PathBuf,
    },
    /// List workspaces and their layers (parents, pins, age, sizes, which stores have them).
    Ls {
        #[command(flatten)]
        store: StoreArgs,
        /// Only this workspace.
        #[arg(long)]
        workspace: Option<String>,
        /// Stable JSON (docs/operations.md) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove layer refs (the named layers, or every layer of the workspace) from every store.
    /// Chunks and manifests go with the next `wsfs gc`.
    Rm {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        workspace: String,
        #[arg(long = "layer")]
        layers: Vec<String>,
    },
    /// Expire refs older than a retention, then delete what nothing reaches any more (per store).
    Gc {
        #[command(flatten)]
        store: StoreArgs,
        /// Expire layers committed longer ago than this (e.g. 15d). Workspaces a live mount holds
        /// a lease on are kept whatever their age.
        #[arg(long, value_parser = parse_dur)]
        older_than: std::time::Duration,
        /// Never delete an unreached object younger than this (longer than any persist).
        #[arg(long, default_value = "1h", value_parser = parse_dur)]
        grace: std::time::Duration,
        /// Report what would go; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// JSON summary per store (docs/operations.md).
        #[arg(long)]
        json: bool,
        /// How long to wait for persists in flight on a store before skipping it.
        #[arg(long, default_value = "15m", value_parser = parse_dur)]
        wait: std::time::Duration,
    },
    /// Mount a workspace read-only. WORKSPACE, layers and MOUNTPOINT may come from the
    /// `[mount]` table of --config instead (systemd's wsfs@NAME reads /etc/wsfs/NAME.toml).
    Mount {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        workspace: Option<String>,
        /// The job's direct upstream layers (repeatable); ancestors come along.
        #[arg(long = "layer")]
        layers: Vec<String>,
        mountpoint: Option<PathBuf>,
        /// Stay in the foreground (systemd, debugging).
        #[arg(long)]
        foreground: bool,
        #[command(flatten)]
        serve: ServeArgs,
        /// Let other users read the mount (the kernel then enforces file modes). Without it only
        /// the user who mounts (and nobody else, not even for cached files) can reach the tree.
        #[arg(long)]
        allow_other: bool,
        /// How long to wait for the mount to become ready.
        #[arg(long, default_value = "120s", value_parser = parse_dur)]
        ready_timeout: std::time::Duration,
        /// Check the input, the stores' configuration and the mount point, then exit without
        /// mounting (`mount -f`).
        #[arg(long)]
        check_only: bool,
        #[arg(long = "notify-ready", hide = true)]
        notify_ready: bool,
        /// Internal: run as the daemon of a keeper (its socket at descriptor 3).
        #[arg(long = "serve-daemon", hide = true)]
        serve_daemon: bool,
        /// Internal: this mount is the read-only workspace under `wsfs attach --at DIR`.
        #[arg(long, hide = true, value_name = "DIR")]
        attach_lower: Option<PathBuf>,
    },
    /// Mount a workspace as a writable overlay over DIR.
    Attach {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        what: LayersArgs,
        /// The directory to attach over (its own files stay visible under the workspace's).
        #[arg(long)]
        at: PathBuf,
        /// Where writes go (upperdir/workdir); default /var/tmp/wsfs/<id>.
        #[arg(long)]
        scratch: Option<PathBuf>,
        /// Keep the scratch folder at umount.
        #[arg(long)]
        keep_scratch: bool,
        /// How the workspace is served, as for `wsfs mount` (the warm-up works through the
        /// overlay).
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// Unmount a wsfs mount.
    Umount {
        mountpoint: Option<PathBuf>,
        /// Abort the FUSE connection if the daemon is hung or dead, and detach.
        #[arg(long)]
        force: bool,
        #[arg(long, default_value = "10s", value_parser = parse_dur)]
        timeout: std::time::Duration,
        /// Remove every wsfs mount whose daemon is gone.
        #[arg(long)]
        all_stale: bool,
        /// Succeed (exit 0) when nothing is mounted at MOUNTPOINT: for cleanup steps that
        /// always run, also after a job that never mounted.
        #[arg(long)]
        if_mounted: bool,
    },
    /// Show mounts, counters and recent failures.
    Status {
        mountpoint: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Check, per store, that the layers and every chunk are present.
    Verify {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        what: LayersArgs,
        /// Download and hash every chunk instead of HEAD.
        #[arg(long)]
        deep: bool,
        /// Require every store to be complete.
        #[arg(long)]
        all: bool,
        /// Rewrite missing or damaged chunks of an incomplete store from a good copy on
        /// another store (then verify again).
        #[arg(long)]
        repair: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Parser, Debug)]
    struct Both {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn round_trip(store: &StoreArgs, serve: &ServeArgs) -> Both {
        let mut argv: Vec<OsString> = vec!["x".into()];
        argv.extend(store.to_args_without_urls());
        argv.extend(serve.to_args());
        Both::try_parse_from(argv).unwrap()
    }

    /// Every field set to something other than its default: a field added to either struct
    /// must be listed here (the literals name every field) and must survive `to_args`.
    #[test]
    fn what_attach_hands_to_mount_parses_back_to_the_same_options() {
        let store = StoreArgs {
            stores: vec![],
            config: Some("/etc/wsfs/c.toml".into()),
            request_timeout: std::time::Duration::from_millis(1500),
            connect_timeout: std::time::Duration::from_millis(700),
            retries: 5,
            provider_concurrency: 9,
            trust_keys: vec!["/k1.pub".into(), "/k 2.pub".into()],
        };
        let serve = ServeArgs {
            cache_dir: Some("/var/cache/wsfs".into()),
            cache_size: Some(3 << 30),
            memory_cache: 64 << 20,
            uid: Some(1001),
            gid: Some(1002),
            read_deadline: Some(std::time::Duration::from_secs(7)),
            repair: true,
            metrics_file: Some("/m/x.prom".into()),
            metrics_addr: Some("127.0.0.1:9477".parse().unwrap()),
            threads: Some(6),
            prefetch: Some(Prefetch::All),
            prefetch_concurrency: 3,
            passthrough: true,
            profile: Some("test-linux".into()),
            prefetch_page_cache: 5 << 20,
            read_ahead_kb: 1024,
        };
        let back = round_trip(&store, &serve);
        assert_eq!(back.store, store);
        assert_eq!(back.serve, serve);
        // And the defaults stay defaults.
        let defaults = Both::try_parse_from(["x"]).unwrap();
        let back = round_trip(&defaults.store, &defaults.serve);
        assert_eq!(back.store, defaults.store);
        assert_eq!(back.serve, defaults.serve);
    }
}
