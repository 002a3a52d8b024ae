#!/usr/bin/env bash
# wsfs against an eager download + extract when every byte crosses a modelled network (issue 17),
# as root on Debian:
#
#   scripts/bench-net.sh [--quick] [--no-install] [--no-build] [--no-doc] [--keep]
#
#   --quick       1 run per measurement instead of BENCH_NET_RUNS (best of N is reported)
#   --no-install  do not apt-get install anything (nginx, fuse3, zstd, curl)
#   --no-build    use the existing target/release/wsfs and examples/netproxy
#   --no-doc      print the table but leave docs/benchmarks.md alone
#   --keep        keep the work directory (workspace, store, logs)
#
# Env: BENCH_DIR (parent of the work dir, default /var/tmp), BENCH_NET_RUNS (default 3),
#      BENCH_NET_FILES (small files, default 20000), BENCH_NET_BIG_MIB (large random files,
#      two of half this size, default 512), BENCH_NET_PROFILES (default "cloud lan").
#
# The store is the `file://` directory `wsfs persist` wrote, served by nginx (sendfile,
# keep-alive, ranges; run as nobody, with its own config under the work dir) on a free loopback
# port. Every byte of store traffic, wsfs's and the eager baseline's, goes through
# examples/netproxy.rs, which delays and rate-limits it (profiles below). wsfs mounts
# `--store http://127.0.0.1:PROXYPORT/`; the eager job is `curl URL/ws.tar.zst | zstd -dc | tar -x`
# through the same proxy, timed until extraction ends (a second baseline downloads and extracts
# only the small files). Each row is a cold run (page cache dropped, wsfs's disk cache emptied,
# a fresh mount), best of BENCH_NET_RUNS. The table goes into
# docs/benchmarks.md between `<!-- bench-net:start -->` and `<!-- bench-net:end -->` (if the
# markers are there). Every mount it made is unmounted and every process it started is stopped,
# on success or failure; nothing else is touched.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
cmdline="scripts/bench-net.sh${*:+ $*}"

runs=${BENCH_NET_RUNS:-3}
n_files=${BENCH_NET_FILES:-20000}
big_mib=${BENCH_NET_BIG_MIB:-512}
profiles=${BENCH_NET_PROFILES:-cloud lan}
do_install=1 do_build=1 do_doc=1 keep=0
while (($#)); do
    case $1 in
    --quick) runs=1 ;;
    --no-install) do_install=0 ;;
    --no-build) do_build=0 ;;
    --no-doc) do_doc=0 ;;
    --keep) keep=1 ;;
    -h | --help)
        sed -n '2,27p' "$0"
        exit 0
        ;;
    *)
        echo "bench-net.sh: unknown argument: $1 (try --help)" >&2
        exit 2
        ;;
    esac
    shift
done

# profile NAME -> delay-ms conn-MB/s total-MB/s (MB = 10^6 bytes)
profile_args() {
    case $1 in
    cloud) echo "10 100 125" ;; # a bucket across a region's network: 10 ms each way, 1 Gbit NIC
    lan) echo "1 1000 1250" ;;  # a store in the same rack: 1 ms, 10 Gbit NIC
    *) return 1 ;;
    esac
}
for p in $profiles; do profile_args "$p" >/dev/null || { echo "bench-net.sh: unknown profile $p (cloud, lan)" >&2; exit 2; }; done

log() { printf '[bench-net %s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

[[ $(id -u) == 0 ]] || die "run as root (FUSE mounts, dropping the page cache)"

WSFS=$repo/target/release/wsfs
NETPROXY=$repo/target/release/examples/netproxy
work=
mounts=() # mountpoints this run may have mounted
pids=()   # background processes this run started (nginx, proxies)

mounted() { # true if $1 is a mount point (from the mount table: never stat a possibly hung mount)
    awk -v m="$1" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo
}

cleanup() {
    local rc=$? m p
    set +e
    trap - EXIT INT TERM HUP
    for m in "${mounts[@]}"; do
        if mounted "$m"; then
            log "cleanup: unmounting $m"
            timeout 30 "$WSFS" umount "$m" --timeout 10s >/dev/null 2>&1 ||
                timeout 30 "$WSFS" umount --force "$m" >&2
        fi
    done
    for p in "${pids[@]}"; do
        kill -TERM "$p" 2>/dev/null || continue
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    if [[ -n $work && -d $work ]]; then
        if ((keep)); then
            log "work directory kept: $work"
        else
            for m in "${mounts[@]}"; do
                mounted "$m" && { log "not removing $work: $m is still mounted"; exit "$rc"; }
            done
            rm -rf "$work"
        fi
    fi
    ((rc == 0)) || log "FAILED (exit $rc)"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# ------------------------------------------------------------------ setup ---

if ((do_install)); then
    apt=()
    command -v nginx >/dev/null 2>&1 || apt+=(nginx)
    command -v fusermount3 >/dev/null 2>&1 || apt+=(fuse3)
    command -v zstd >/dev/null 2>&1 || apt+=(zstd)
    command -v curl >/dev/null 2>&1 || apt+=(curl)
    command -v setpriv >/dev/null 2>&1 || apt+=(util-linux)
    command -v python3 >/dev/null 2>&1 || apt+=(python3)
    if ((${#apt[@]})); then
        log "apt-get installing: ${apt[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        # The Debian package may start a system nginx on port 80 (where systemd runs); this
        # script never uses or stops it: it runs its own.
        apt-get install -y -qq "${apt[@]}" >/dev/null
    fi
fi
for t in nginx fusermount3 zstd tar curl python3; do
    command -v "$t" >/dev/null 2>&1 || die "$t is missing (run without --no-install)"
done
[[ -e /dev/fuse ]] || die "/dev/fuse is missing"

if ((do_build)); then
    log "cargo build --release --bin wsfs --example netproxy"
    cargo build --release --quiet --bin wsfs --example netproxy
fi
[[ -x $WSFS && -x $NETPROXY ]] || die "$WSFS or $NETPROXY is missing (run without --no-build)"

work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/wsfs-bench-net.XXXXXX")
# nginx runs as nobody and must reach the store below.
chmod 755 "$work"
results=$work/results.tsv
: >"$results"
log "work directory: $work"
store=$work/store
mkdir -p "$store" "$work/gen" "$work/logs"
export WSFS_RUN_DIR=$work/run

# ---------------------------------------------------------------- helpers ---

record() { printf '%s\t%s\n' "$1" "$2" >>"$results"; }

drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
}

# secs CMD...: runs CMD, prints its wall time in seconds (stdout of CMD goes to /dev/null).
secs() {
    local t0 t1
    t0=$EPOCHREALTIME
    "$@" >/dev/null
    t1=$EPOCHREALTIME
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f\n", b - a }'
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# ------------------------------------------------------------- workloads ---

ws=$work/gen/ws
log "generating the workspace: $n_files small files (node_modules-like) + ${big_mib} MiB in 2 large random files"
# The small files: scripts/bench.sh's node_modules-like generator (same seed and distributions:
# lognormal sizes 0-8 KiB, median ~1.5 KiB, word-like text zstd compresses ~3x, nested packages),
# stopped at a count of files instead of entries.
python3 - "$work/gen" "$n_files" <<'PY'
import os, random, sys
out, n_files = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
root = os.path.join(out, "ws")
os.makedirs(root)
vocab = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz_$ABCDEFGHIJ", k=rng.randint(2, 12)))
         for _ in range(4000)]
vocab += ["function", "return", "const", "=>", "{", "}", "(", ")", ";", "\n", "\n  ", "require("]
corpus = " ".join(rng.choices(vocab, k=6_000_000)).encode()
licenses = [(f"MIT License\n\nCopyright (c) {y} authors\n\n" + "Permission is hereby granted " * 30).encode()
            for y in (2016, 2019, 2022)]
files, dirs = [], []

def full():
    return len(files) >= n_files

def mkdir(rel):
    os.mkdir(os.path.join(root, rel))
    dirs.append(rel)

def mkfile(rel, data, mode=0o644):
    p = os.path.join(root, rel)
    with open(p, "wb") as f:
        f.write(data)
    os.chmod(p, mode)
    files.append(rel)

def text(size):
    if size == 0:
        return b""
    at = rng.randrange(0, len(corpus) - size)
    return corpus[at:at + size]

def size():
    if rng.random() < 0.03:
        return 0
    return min(8192, int(rng.lognormvariate(7.3, 1.0)))

mkdir("node_modules")
subdirs = ["lib", "lib/internal", "lib/internal/util", "dist", "dist/esm", "dist/cjs", "src",
           "src/core", "types", "test", "test/fixtures", "locale"]
pkg = 0

def package(base, depth):
    global pkg
    pkg += 1
    name = f"pkg-{pkg:05d}"
    if rng.random() < 0.15 and depth == 0:
        scope = f"{base}/@scope{pkg % 40}"
        if not os.path.isdir(os.path.join(root, scope)):
            mkdir(scope)
        p = f"{scope}/{name}"
    else:
        p = f"{base}/{name}"
    mkdir(p)
    pdirs = [p]
    for s in rng.sample(subdirs, rng.randint(1, 6)):
        parts = s.split("/")
        for i in range(1, len(parts) + 1):
            d = f"{p}/{'/'.join(parts[:i])}"
            if d not in pdirs:
                mkdir(d)
                pdirs.append(d)
    for f in ("package.json", "README.md"):
        if not full():
            mkfile(f"{p}/{f}", text(size()))
    if not full():
        mkfile(f"{p}/LICENSE", rng.choice(licenses))
    for i in range(rng.randint(4, 40)):
        if full():
            return
        mkfile(f"{rng.choice(pdirs)}/m{i}.js", text(size()))
    if depth < 2 and rng.random() < 0.25 and not full():
        mkdir(f"{p}/node_modules")
        for _ in range(rng.randint(1, 3)):
            if not full():
                package(f"{p}/node_modules", depth + 1)

while not full():
    package("node_modules", 0)

def write_list(name, paths):
    with open(os.path.join(out, name), "wb") as f:
        f.write(b"".join(p.encode() + b"\0" for p in paths))
    return sum(os.path.getsize(os.path.join(root, p)) for p in paths)

total = write_list("files.list", files)
sample = rng.sample(files, len(files) // 10)
sample_bytes = write_list("sample.list", sample)
# The first file a job reads (for the "usable" row): a package.json near the top.
write_list("first.list", [files[0]])
with open(os.path.join(out, "ws.info"), "w") as f:
    f.write(f"{len(files)}\t{len(dirs)}\t{total}\t{len(sample)}\t{sample_bytes}\t{files[0]}\n")
print(f"{len(files)} small files ({total} bytes) in {len(dirs)} dirs; sample {len(sample)} files "
      f"({sample_bytes} bytes)", file=sys.stderr)
PY
IFS=$'\t' read -r t_files t_dirs t_bytes t_sample t_sample_bytes first_file <"$work/gen/ws.info"
mkdir -p "$ws/out"
half_mib=$((big_mib / 2))
head -c "$((half_mib << 20))" /dev/urandom >"$ws/out/big-1.bin"
head -c "$((half_mib << 20))" /dev/urandom >"$ws/out/big-2.bin"
big_bytes=$((half_mib << 20))

log "persisting the workspace to file://$store; building the eager tar.zst"
t=$(secs "$WSFS" persist --no-index --store "file://$store" --workspace bench --layer ws --root "$ws")
record persist_s "$t"
tar -C "$ws" -cf - . | zstd -q -3 -T0 -o "$store/ws.tar.zst"
tarzst_bytes=$(stat -c %s "$store/ws.tar.zst")
# A second baseline: the same workspace without its large files (what an eager job pays when
# the workspace is only the small files).
tar -C "$ws" -cf - node_modules | zstd -q -3 -T0 -o "$store/small.tar.zst"
small_tarzst_bytes=$(stat -c %s "$store/small.tar.zst")
chunk_bytes=$(du -sb "$store/chunks" | cut -f1)
n_chunks=$(find "$store/chunks" -type f | wc -l)
chmod -R a+rX "$store"

# ---------------------------------------------------------------- servers ---

ngx=$work/nginx
mkdir -p "$ngx/tmp"
ngx_port=$(free_port)
cat >"$ngx/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $ngx/nginx.pid;
error_log $ngx/error.log warn;
events { worker_connections 4096; }
http {
    log_format req '\$msec \$connection \$connection_requests "\$request" \$status \$bytes_sent "\$http_range" \$request_time';
    access_log $ngx/access.log req;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
    client_body_temp_path $ngx/tmp/body;
    proxy_temp_path $ngx/tmp/proxy;
    fastcgi_temp_path $ngx/tmp/fastcgi;
    uwsgi_temp_path $ngx/tmp/uwsgi;
    scgi_temp_path $ngx/tmp/scgi;
    default_type application/octet-stream;
    server {
        listen 127.0.0.1:$ngx_port;
        root $store;
    }
}
EOF
chown -R nobody "$ngx"
log "nginx (as nobody) on 127.0.0.1:$ngx_port serving $store"
setpriv --reuid=nobody --regid=nogroup --clear-groups \
    nginx -p "$ngx" -c "$ngx/nginx.conf" -e "$ngx/error.log" >"$work/logs/nginx.out" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$ngx_port/ws.tar.zst" -r 0-0 && break
    kill -0 "${pids[-1]}" 2>/dev/null || die "nginx exited: $(cat "$work/logs/nginx.out" "$ngx/error.log" 2>/dev/null | tail -5)"
    sleep 0.1
done
[[ $(curl -s -o /dev/null -w '%{http_code}' -r 0-9 "http://127.0.0.1:$ngx_port/ws.tar.zst") == 206 ]] ||
    die "nginx does not answer range requests"

# start_proxy NAME: starts netproxy for profile NAME; sets proxy_pid, proxy_addr, proxy_stats.
start_proxy() {
    local d c t
    read -r d c t <<<"$(profile_args "$1")"
    proxy_stats=$work/proxy-$1.stats
    rm -f "$work/proxy-$1.addr"
    "$NETPROXY" --listen 127.0.0.1:0 --upstream "127.0.0.1:$ngx_port" --delay-ms "$d" --conn-mbps "$c" \
        --total-mbps "$t" --port-file "$work/proxy-$1.addr" --stats-file "$proxy_stats" \
        >/dev/null 2>>"$work/logs/proxy-$1.log" &
    proxy_pid=$!
    pids+=("$proxy_pid")
    for _ in $(seq 100); do
        [[ -s $work/proxy-$1.addr ]] && break
        kill -0 "$proxy_pid" 2>/dev/null || die "netproxy exited: $(tail -5 "$work/logs/proxy-$1.log")"
        sleep 0.05
    done
    proxy_addr=$(cat "$work/proxy-$1.addr")
}

stop_proxy() {
    kill -TERM "$proxy_pid" 2>/dev/null
    wait "$proxy_pid" 2>/dev/null || true
}

# proxy_bytes: asks the proxy for its counters; prints "bytes_down bytes_up connections".
proxy_bytes() {
    local before after
    before=$(cat "$proxy_stats" 2>/dev/null || echo '{"seq":0}')
    kill -USR1 "$proxy_pid"
    for _ in $(seq 200); do
        after=$(cat "$proxy_stats" 2>/dev/null || echo '{"seq":0}')
        [[ $after != "$before" ]] && break
        sleep 0.01
    done
    python3 -c 'import json,sys; s=json.loads(sys.argv[1]); print(s["bytes_down"], s["bytes_up"], s["connections"])' "$after"
}

# ----------------------------------------------------------- measurements ---

mnt=$work/mnt
mounts+=("$mnt")
dest=$work/extract
cache=$work/cache

wsfs_mount() { # [extra mount flags...]: a fresh mount through the proxy, with an empty disk cache
    mkdir -p "$mnt"
    timeout 120 "$WSFS" mount --store "http://$proxy_addr/" --workspace bench --layer ws \
        --cache-dir "$cache" "$mnt" "$@" >>"$work/logs/mount.log" 2>&1
}

wsfs_umount() {
    timeout 60 "$WSFS" umount "$mnt" --timeout 20s >>"$work/logs/mount.log" 2>&1 ||
        timeout 60 "$WSFS" umount --force "$mnt" >>"$work/logs/mount.log" 2>&1
}

# wsfs_counters: "requests bytes chunks_fetched" from the mount's status (store requests of
# every outcome, bytes the store served, chunks fetched).
wsfs_counters() {
    "$WSFS" status "$mnt" --json | python3 -c '
import json, sys
m = json.load(sys.stdin)["mounts"][0]
st = m.get("stores", [])
print(sum(sum(s["requests"].values()) for s in st), sum(s["bytes"] for s in st), m.get("cache", {}).get("fetched", 0))'
}

read_list() { # LIST PARALLEL: cat every file named in LIST (NUL-separated, relative to the mount)
    (cd "$mnt" && timeout 600 xargs -0 -P "$2" -n 256 cat <"$1" >/dev/null)
}

cold() { # cold state before a run: nothing mounted, page cache dropped, disk cache empty
    rm -rf "$cache" "$dest"
    drop_caches
}

# run_wsfs KEY PREFETCH CMD...: cold; mount with --prefetch PREFETCH; run CMD; records KEY_s
# (mount + CMD), KEY_down and KEY_conns (bytes store -> wsfs and connections opened, counted by
# the proxy), KEY_req and KEY_chunks (store requests and chunks fetched, from wsfs status); then
# unmounts.
run_wsfs() {
    local key=$1 mode=$2 b0 b1 n0 n1 t0 t1 c
    shift 2
    cold
    read -r b0 _ n0 <<<"$(proxy_bytes)"
    t0=$EPOCHREALTIME
    wsfs_mount --prefetch "$mode"
    "$@" >/dev/null
    t1=$EPOCHREALTIME
    read -r b1 _ n1 <<<"$(proxy_bytes)"
    c=$(wsfs_counters)
    wsfs_umount
    record "${key}_s" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f\n", b - a }')"
    record "${key}_down" "$((b1 - b0))"
    record "${key}_conns" "$((n1 - n0))"
    record "${key}_req" "${c%% *}"
    record "${key}_chunks" "${c##* }"
}

eager() { curl -sSf "http://$proxy_addr/${1:-ws}.tar.zst" | zstd -dc | tar -x -C "$dest"; }
first_read() { cat "$mnt/$first_file"; }
dd_big() { # prints dd's own seconds for the large file
    LC_ALL=C timeout 600 dd if="$mnt/out/big-1.bin" of=/dev/null bs=1M 2>&1 >/dev/null |
        awk '/ copied, / { t = $(NF - 3) } END { if (t == "") exit 1; print t }'
}
big_read() { record "${P}_big_dd_s" "$(dd_big)"; }

for P in $profiles; do
    start_proxy "$P"
    log "profile $P ($(profile_args "$P" | awk '{ printf "%s ms each way, %s MB/s per connection, %s MB/s in total", $1, $2, $3 }')): proxy $proxy_addr"
    # A first mount through the proxy must work (the lease write is refused by the read-only
    # nginx: a warning, not a failure).
    cold
    wsfs_mount || die "mount through the proxy failed: $(tail -5 "$work/logs/mount.log")"
    cmp -s "$mnt/$first_file" "$ws/$first_file" || die "read through the proxy differs from the source"
    wsfs_umount
    for r in $(seq "$runs"); do
        log "$P run $r/$runs: eager download + extract"
        cold
        mkdir -p "$dest"
        read -r b0 _ _ <<<"$(proxy_bytes)"
        record "${P}_eager_s" "$(secs eager)"
        read -r b1 _ _ <<<"$(proxy_bytes)"
        record "${P}_eager_down" "$((b1 - b0))"
        cold
        mkdir -p "$dest"
        record "${P}_eagersmall_s" "$(secs eager small)"
        rm -rf "$dest"

        log "$P run $r/$runs: usable (mount), first file, 10%, every small file, large file"
        run_wsfs "${P}_mount" tree true
        run_wsfs "${P}_first" tree first_read
        run_wsfs "${P}_s10" tree read_list "$work/gen/sample.list" 1
        run_wsfs "${P}_all1" tree read_list "$work/gen/files.list" 1
        run_wsfs "${P}_all4" tree read_list "$work/gen/files.list" 4
        run_wsfs "${P}_all4c" chunks read_list "$work/gen/files.list" 4
        run_wsfs "${P}_all4a" all read_list "$work/gen/files.list" 4
        run_wsfs "${P}_big" tree big_read
    done
    stop_proxy
done

# ----------------------------------------------------------------- report ---

cat "$WSFS_RUN_DIR"/logs/*.log 2>/dev/null | grep -c 'lease not written' >"$work/lease-warnings" || true
BENCH_MACHINE="$(nproc) cores ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM, kernel $(uname -r)"
BENCH_REV="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$repo" diff --quiet HEAD -- src 2>/dev/null || echo ' + uncommitted src changes')"
export BENCH_MACHINE BENCH_REV BENCH_CMD=$cmdline BENCH_RUNS=$runs BENCH_PROFILES=$profiles \
    BENCH_DATE="$(date -u '+%Y-%m-%d %H:%M UTC')" BENCH_LOAD="$(cut -d' ' -f1-3 /proc/loadavg)" \
    T_FILES=$t_files T_DIRS=$t_dirs T_BYTES=$t_bytes T_SAMPLE=$t_sample T_SAMPLE_BYTES=$t_sample_bytes \
    BIG_MIB=$big_mib BIG_BYTES=$big_bytes TARZST=$tarzst_bytes SMALL_TARZST=$small_tarzst_bytes CHUNK_BYTES=$chunk_bytes N_CHUNKS=$n_chunks \
    FIRST_BYTES="$(stat -c %s "$ws/$first_file")" LEASE_WARN="$(cat "$work/lease-warnings")"
block=$(python3 - "$results" <<'PY'
import os, sys
from collections import defaultdict
v = defaultdict(list)
for line in open(sys.argv[1]):
    k, x = line.rstrip("\n").split("\t")
    v[k].append(float(x))
E = os.environ
MB = 1e6
prof = {"cloud": (10, 100, 125), "lan": (1, 1000, 1250)}

def best(key):
    """The run with the lowest time for KEY, and its other counters."""
    ts = v[f"{key}_s"]
    i = min(range(len(ts)), key=ts.__getitem__)
    pick = lambda s: v[f"{key}_{s}"][i] if v[f"{key}_{s}"] else None
    return ts[i], pick("down"), pick("req"), pick("chunks"), pick("conns")

def mb(x):
    return "-" if x is None else f"{x / MB:.1f} MB"

out = []
head = ("| row | profile | wsfs | eager (whole workspace) | wsfs / eager | wsfs / eager of the small files only | fetched through the proxy (wsfs) | store requests, chunks, connections (wsfs) | read by the job |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
rows = []
for p in E["BENCH_PROFILES"].split():
    d, c, t = prof[p]
    eager_t = min(v[f"{p}_eager_s"])
    eager_b = v[f"{p}_eager_down"][0]
    eager_txt = f"{eager_t:.2f} s"
    small_t = min(v[f"{p}_eagersmall_s"])
    def row(what, key, read, small=True):
        tt, down, req, chunks, conns = best(f"{p}_{key}")
        sr = f"{tt / small_t:.2f}x" if small else "-"
        rows.append(f"| {what} | {p} | {tt:.2f} s | {eager_txt} | {tt / eager_t:.2f}x | {sr} | {mb(down)} | "
                    f"{req:.0f}, {chunks:.0f}, {conns:.0f} | {read} |")
    row("usable: `wsfs mount` returns vs download + extract ends", "mount", "-")
    row("mount + read the first file", "first", f"{int(E['FIRST_BYTES'])} B")
    row(f"mount + read 10% of the small files ({E['T_SAMPLE']}, uniform, 1 reader)", "s10", mb(float(E['T_SAMPLE_BYTES'])))
    row(f"mount + read every small file ({E['T_FILES']}), 1 reader", "all1", mb(float(E['T_BYTES'])))
    row(f"mount + read every small file, 4 readers", "all4", mb(float(E['T_BYTES'])))
    row(f"mount `--prefetch chunks` + read every small file, 4 readers", "all4c", mb(float(E['T_BYTES'])))
    row(f"mount `--prefetch all` + read every small file, 4 readers", "all4a", mb(float(E['T_BYTES'])))
    tt, down, req, chunks, conns = best(f"{p}_big")
    dd = min(v[f"{p}_big_dd_s"])
    speed = float(E["BIG_BYTES"]) / dd / MB
    rows.append(f"| mount + cold sequential read of one {int(E['BIG_MIB']) // 2} MiB file (dd bs=1M) | {p} | {tt:.2f} s "
                f"(dd: {speed:.0f} MB/s = {speed / t:.2f}x the {t} MB/s link) | {eager_txt} | {tt / eager_t:.2f}x | - | {mb(down)} | "
                f"{req:.0f}, {chunks:.0f}, {conns:.0f} | {mb(float(E['BIG_BYTES']))} |")
out.append(head)
out += rows
out.append("")
out.append("The eager job downloaded " + ", ".join(f"{mb(v[f'{p}_eager_down'][0])} ({p})" for p in E["BENCH_PROFILES"].split())
           + " through the proxy per run (the whole tar.zst). Eager of the small files only (small.tar.zst: node_modules only, "
           + f"{mb(float(E['SMALL_TARZST']))}): "
           + ", ".join(f"{min(v[f'{p}_eagersmall_s']):.2f} s ({p})" for p in E["BENCH_PROFILES"].split()) + ".")
out.append("")
out.append("All samples (seconds; bytes; the table shows the best run of each row and that run's counters):")
out.append("")
out.append("```")
for k in v:
    out.append(f"{k:20} " + "  ".join(f"{x:g}" for x in v[k]))
out.append("```")
print("\n".join(out))
PY
)
header="Measured by \`$BENCH_CMD\` on $BENCH_DATE, wsfs $BENCH_REV, best of $runs runs.
Machine: $BENCH_MACHINE; load average at the end: $BENCH_LOAD. Proxy: examples/netproxy.rs (userspace, on the same 2 cores); backend: nginx $(nginx -v 2>&1 | sed 's|.*/||') serving the \`file://\` store.
Workspace: $t_files small files (node_modules-like, 0-8 KiB, $t_bytes bytes, $t_dirs directories) + 2 x $((big_mib / 2)) MiB random files; tar.zst $tarzst_bytes bytes; wsfs: $n_chunks chunks, $chunk_bytes bytes. Lease writes refused by the read-only nginx (WARN, mount unaffected): $(cat "$work/lease-warnings") mounts."
printf '\n%s\n\n%s\n' "$header" "$block"

if ((do_doc)); then
    doc=$repo/docs/benchmarks.md
    if grep -q '<!-- bench-net:start -->' "$doc" && grep -q '<!-- bench-net:end -->' "$doc"; then
        BLOCK="$header

$block" python3 "$repo/scripts/doc-block.py" "$doc" bench-net "Network model (scripts/bench-net.sh)"
        log "table written to docs/benchmarks.md"
    else
        log "docs/benchmarks.md has no bench-net markers: table printed only"
    fi
fi
