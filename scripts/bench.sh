#!/usr/bin/env bash
# End-to-end benchmark of wsfs against its baselines (issue 7), as root on Debian:
#
#   scripts/bench.sh [--quick] [--no-s3] [--no-install] [--no-build] [--no-doc] [--keep] [--perf]
#
#   --quick       1 run per measurement instead of 3 (best of N is reported)
#   --no-s3       skip the moto (S3) measurement
#   --no-install  do not apt-get/pip install anything
#   --no-build    use the existing target/release binaries
#   --no-doc      print the table but leave docs/benchmarks.md alone
#   --keep        keep the work directory (workloads, stores, logs)
#   --perf        also profile one cold full read with `perf record` (report in the work dir)
#
# Env: BENCH_DIR (parent of the work dir, default /var/tmp), BENCH_RUNS (default 3),
#      BENCH_ENTRIES (default 50000), BENCH_BIG_MIB (default 512), BENCH_S3_MIB (default 200),
#      BENCH_MEMORY_CACHE (--memory-cache for the memory measurement, default 256M).
#
# It installs what it needs (fuse3, zstd, tar, moto), builds the release binary, generates the
# workloads in a temporary directory, measures every target of issue 7 beside its baseline in the
# same run (each best of BENCH_RUNS), prints the table and writes it into docs/benchmarks.md
# between the `<!-- bench:start -->` and `<!-- bench:end -->` markers. Every mount it made is
# unmounted (forcibly if need be) and every process it started is stopped, on success or failure.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
cmdline="scripts/bench.sh${*:+ $*}"

runs=${BENCH_RUNS:-3}
entries=${BENCH_ENTRIES:-50000}
big_mib=${BENCH_BIG_MIB:-512}
s3_mib=${BENCH_S3_MIB:-200}
memcache=${BENCH_MEMORY_CACHE:-256M}
do_s3=1 do_install=1 do_build=1 do_doc=1 keep=0 do_perf=0
while (($#)); do
    case $1 in
    --quick) runs=1 ;;
    --no-s3) do_s3=0 ;;
    --no-install) do_install=0 ;;
    --no-build) do_build=0 ;;
    --no-doc) do_doc=0 ;;
    --keep) keep=1 ;;
    --perf) do_perf=1 ;;
    -h | --help)
        sed -n '2,22p' "$0"
        exit 0
        ;;
    *)
        echo "bench.sh: unknown argument: $1 (try --help)" >&2
        exit 2
        ;;
    esac
    shift
done

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

[[ $(id -u) == 0 ]] || die "run as root (FUSE mounts, dropping the page cache)"

WSFS=$repo/target/release/wsfs
RAW_GET=$repo/target/release/examples/raw_get
TAKEOVER=$repo/target/release/examples/takeover_load
work=
mounts=()   # mountpoints this run may have mounted
pids=()     # background processes this run started
moto_pid=

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
        kill -TERM "$p" 2>/dev/null && wait "$p" 2>/dev/null
    done
    if [[ -n $moto_pid ]]; then
        kill -TERM "$moto_pid" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$moto_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$moto_pid" 2>/dev/null
        wait "$moto_pid" 2>/dev/null
    fi
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
    command -v fusermount3 >/dev/null 2>&1 || apt+=(fuse3)
    command -v zstd >/dev/null 2>&1 || apt+=(zstd)
    command -v tar >/dev/null 2>&1 || apt+=(tar)
    command -v pgrep >/dev/null 2>&1 || apt+=(procps)
    command -v curl >/dev/null 2>&1 || apt+=(curl)
    command -v python3 >/dev/null 2>&1 || apt+=(python3)
    if ((do_perf)) && ! command -v perf >/dev/null 2>&1; then apt+=(linux-perf); fi
    if ((do_s3)) && ! python3 -m pip --version >/dev/null 2>&1; then apt+=(python3-pip); fi
    if ((${#apt[@]})); then
        log "apt-get installing: ${apt[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq "${apt[@]}" >/dev/null
    fi
    if ((do_s3)) && ! python3 -c 'import moto.server, flask, flask_cors, boto3' >/dev/null 2>&1; then
        log "pip installing moto[server]"
        PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check 'moto[server]' ||
            PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check \
                --break-system-packages 'moto[server]'
    fi
fi
for t in fusermount3 zstd tar python3; do
    command -v "$t" >/dev/null 2>&1 || die "$t is missing (run without --no-install)"
done
[[ -e /dev/fuse ]] || die "/dev/fuse is missing"
grep -qs ' /sys/fs/fuse/connections fusectl ' /proc/self/mounts ||
    mount -t fusectl fusectl /sys/fs/fuse/connections 2>/dev/null || true

if ((do_build)); then
    log "cargo build --release (binary, examples/raw_get and examples/takeover_load)"
    cargo build --release --quiet --bin wsfs --example raw_get --example takeover_load
fi
[[ -x $WSFS ]] || die "$WSFS is missing (run without --no-build)"

work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/wsfs-bench.XXXXXX")
results=$work/results.tsv
: >"$results"
log "work directory: $work"
store=$work/store
mkdir -p "$store" "$work/gen" "$work/logs"
# Records, sockets and daemon logs of this run's mounts stay in the work dir.
export WSFS_RUN_DIR=$work/run

# ---------------------------------------------------------------- helpers ---

# Records one sample: name value (seconds, MB/s or MiB).
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

mbps() { # bytes seconds
    awk -v n="$1" -v s="$2" 'BEGIN { printf "%.1f\n", n / 1e6 / s }'
}

# wsfs_mount MOUNTPOINT WORKSPACE LAYER [extra mount flags...]
wsfs_mount() {
    local mnt=$1 ws=$2 layer=$3
    shift 3
    mkdir -p "$mnt"
    timeout 120 "$WSFS" mount --store "${STORE_URL:-file://$store}" --workspace "$ws" --layer "$layer" \
        "$mnt" "$@" >>"$work/logs/mount.log" 2>&1
}

wsfs_umount() {
    timeout 60 "$WSFS" umount "$1" --timeout 20s >>"$work/logs/mount.log" 2>&1 ||
        timeout 60 "$WSFS" umount --force "$1" >>"$work/logs/mount.log" 2>&1
}

daemon_pid() {
    "$WSFS" status "$1" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["mounts"][0]["pid"])'
}

# read_list DIR LIST [PARALLEL]: cat every file named in LIST (NUL-separated, relative to DIR).
read_list() {
    (cd "$1" && timeout 600 xargs -0 -P "${3:-1}" -n 256 cat <"$2" >/dev/null)
}

# dd_secs FILE: reads FILE with 1 MiB reads to /dev/null; prints dd's own elapsed seconds (no
# process start-up in it).
dd_secs() {
    LC_ALL=C timeout 600 dd if="$1" of=/dev/null bs=1M 2>&1 >/dev/null |
        awk '/ copied, / { t = $(NF - 3) } END { if (t == "") exit 1; print t }'
}

# ------------------------------------------------------------- workloads ---

log "generating workloads: $entries-entry node_modules-like tree, ${big_mib} MiB file, 8 x 64 MiB files"
python3 - "$work/gen" "$entries" <<'PY'
import os, random, sys
out, n_entries = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
root = os.path.join(out, "tree")
os.makedirs(root)
# A vocabulary of identifiers plus JavaScript punctuation: zstd compresses the text ~3x, like
# real node_modules content (not 100x, as a repeated string would).
vocab = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz_$ABCDEFGHIJ", k=rng.randint(2, 12)))
         for _ in range(4000)]
vocab += ["function", "return", "const", "=>", "{", "}", "(", ")", ";", "\n", "\n  ", "require("]
corpus = " ".join(rng.choices(vocab, k=6_000_000)).encode()
licenses = [(f"MIT License\n\nCopyright (c) {y} authors\n\n" + "Permission is hereby granted " * 30).encode()
            for y in (2016, 2019, 2022)]
count = 0
files, dirs = [], []

def full():
    return count >= n_entries

def mkdir(rel):
    global count
    os.mkdir(os.path.join(root, rel))
    dirs.append(rel)
    count += 1

def mkfile(rel, data, mode=0o644):
    global count
    p = os.path.join(root, rel)
    with open(p, "wb") as f:
        f.write(data)
    os.chmod(p, mode)
    files.append(rel)
    count += 1

def text(size):
    if size == 0:
        return b""
    at = rng.randrange(0, len(corpus) - size)
    return corpus[at:at + size]

def size():
    r = rng.random()
    if r < 0.03:
        return 0
    return min(8192, int(rng.lognormvariate(7.3, 1.0)))

mkdir("node_modules")
mkdir("node_modules/.bin")
subdirs = ["lib", "lib/internal", "lib/internal/util", "dist", "dist/esm", "dist/cjs", "src",
           "src/core", "types", "test", "test/fixtures", "locale"]
pkg = 0

def package(base, depth):
    global pkg, count
    pkg += 1
    name = f"pkg-{pkg:05d}"
    if rng.random() < 0.15 and depth == 0:
        scope = f"{base}/@scope{pkg % 40}"
        if not os.path.isdir(os.path.join(root, scope)) and not full():
            mkdir(scope)
        p = f"{scope}/{name}"
    else:
        p = f"{base}/{name}"
    if full():
        return
    mkdir(p)
    pdirs = [p]
    for s in rng.sample(subdirs, rng.randint(1, 6)):
        parts = s.split("/")
        for i in range(1, len(parts) + 1):
            d = f"{p}/{'/'.join(parts[:i])}"
            if d not in pdirs and not full():
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
    if rng.random() < 0.3 and not full():
        mkdir(f"{p}/bin")
        if not full():
            mkfile(f"{p}/bin/cli.js", b"#!/usr/bin/env node\n" + text(600), 0o755)
        if not full() and depth == 0:
            os.symlink(f"../{p.split('/', 1)[1]}/bin/cli.js",
                       os.path.join(root, f"node_modules/.bin/{name}"))
            count += 1
    if depth < 2 and rng.random() < 0.25 and not full():
        mkdir(f"{p}/node_modules")
        for _ in range(rng.randint(1, 3)):
            package(f"{p}/node_modules", depth + 1)

while not full():
    package("node_modules", 0)

with open(os.path.join(out, "files.list"), "wb") as f:
    f.write(b"".join(p.encode() + b"\0" for p in files))
sample = rng.sample(files, len(files) // 10)
with open(os.path.join(out, "sample.list"), "wb") as f:
    f.write(b"".join(p.encode() + b"\0" for p in sample))
# Clustered sample: every file of a random 10% of the top-level packages (how a job that uses some
# of its dependencies reads node_modules), in path order.
def top(p):
    parts = p.split("/")
    return "/".join(parts[:3] if parts[1].startswith("@") else parts[:2])
pkgs = sorted({top(p) for p in files if p.count("/") >= 2})
chosen = set(rng.sample(pkgs, len(pkgs) // 10))
pkg_sample = sorted(p for p in files if p.count("/") >= 2 and top(p) in chosen)
with open(os.path.join(out, "sample_pkg.list"), "wb") as f:
    f.write(b"".join(p.encode() + b"\0" for p in pkg_sample))
links = count - len(files) - len(dirs)
total = sum(os.path.getsize(os.path.join(root, p)) for p in files)
print(f"{count} entries: {len(files)} files ({total} bytes), {len(dirs)} dirs, {links} symlinks; "
      f"sample {len(sample)} files", file=sys.stderr)
with open(os.path.join(out, "tree.info"), "w") as f:
    f.write(f"{count}\t{len(files)}\t{len(dirs)}\t{links}\t{total}\t{len(sample)}\t{len(pkg_sample)}\n")
PY
IFS=$'\t' read -r t_entries t_files t_dirs t_links t_bytes t_sample t_pkg_sample <"$work/gen/tree.info"
mkdir -p "$work/gen/big"
head -c "$((big_mib << 20))" /dev/urandom >"$work/gen/big/big.bin"
for i in 1 2 3 4 5 6 7 8; do head -c $((64 << 20)) /dev/urandom >"$work/gen/big/r$i.bin"; done

log "persisting the tree and the large files to file://$store; building the tar.zst baseline"
drop_caches
t=$(secs "$WSFS" persist --no-index --store "file://$store" --workspace bench --layer tree --root "$work/gen/tree")
record persist_tree_s "$t"
drop_caches
t=$(secs "$WSFS" persist --no-index --store "file://$store" --workspace bench --layer big --root "$work/gen/big")
record persist_big_s "$t"
tar -C "$work/gen/tree" -cf - . | zstd -q -3 -T0 -o "$store/tree.tar.zst"
tarzst_bytes=$(stat -c %s "$store/tree.tar.zst")
chunk_bytes=$(du -sb "$store/chunks" | cut -f1)

# ----------------------------------------------------------- measurements ---

# Every mount uses this one mountpoint (registered here: the helpers run in subshells).
mnt=$work/mnt
mounts+=("$mnt")
dest=$work/extract

# The large-file measurements run first, while the page cache is not yet fragmented by tens of
# thousands of small files: warm-read speed depends on the folio sizes the page cache gets.
big_bytes=$((big_mib << 20))
log "1/8 ${big_mib} MiB file: warm re-read through the mount vs local disk"
wsfs_mount "$mnt" bench big
dd_secs "$mnt/big.bin" >/dev/null # cold: fetch, verify, fill the page cache
dd_secs "$work/gen/big/big.bin" >/dev/null
for _ in $(seq "$runs"); do
    record warm_mount_MBps "$(mbps "$big_bytes" "$(dd_secs "$mnt/big.bin")")"
    record warm_local_MBps "$(mbps "$big_bytes" "$(dd_secs "$work/gen/big/big.bin")")"
done
wsfs_umount "$mnt"

log "2/8 first read from the disk cache (new mount, page cache dropped) vs local disk, cold"
cache=$work/cache
wsfs_mount "$mnt" bench big --cache-dir "$cache"
dd_secs "$mnt/big.bin" >/dev/null
# Disk-cache writes run off the read path: wait until they have all landed.
for _ in $(seq 300); do
    have=$(du -sb "$cache" 2>/dev/null | cut -f1)
    ((have >= big_bytes)) && break
    sleep 0.1
done
wsfs_umount "$mnt"
for _ in $(seq "$runs"); do
    drop_caches
    wsfs_mount "$mnt" bench big --cache-dir "$cache"
    record diskcache_MBps "$(mbps "$big_bytes" "$(dd_secs "$mnt/big.bin")")"
    wsfs_umount "$mnt"
    drop_caches
    record local_cold_MBps "$(mbps "$big_bytes" "$(dd_secs "$work/gen/big/big.bin")")"
done

log "2b/8 the same two with --passthrough (the disk cache's verified copy as FUSE backing file)"
# The copy is made at the first open once every chunk is in the disk cache (it is, from 2/8).
wsfs_mount "$mnt" bench big --cache-dir "$cache" --passthrough
dd_secs "$mnt/big.bin" >/dev/null
wsfs_umount "$mnt"
for _ in $(seq "$runs"); do
    drop_caches
    wsfs_mount "$mnt" bench big --cache-dir "$cache" --passthrough
    record pt_diskcache_MBps "$(mbps "$big_bytes" "$(dd_secs "$mnt/big.bin")")"
    # Warm: the backing file is in the page cache now.
    record pt_warm_MBps "$(mbps "$big_bytes" "$(dd_secs "$mnt/big.bin")")"
    wsfs_umount "$mnt"
done

log "3/8 resident memory of the daemon: 8 concurrent readers of 64 MiB files, --memory-cache $memcache"
memcache_mib=$(python3 -c "import sys; s=sys.argv[1].upper().rstrip('B').rstrip('I'); m={'K':1/1024,'M':1,'G':1024}; print(int(float(s[:-1])*m[s[-1]]) if s[-1] in m else int(s)>>20)" "$memcache")
for _ in $(seq "$runs"); do
    drop_caches
    wsfs_mount "$mnt" bench big --memory-cache "$memcache"
    pid=$(daemon_pid "$mnt")
    rss_max=0
    t0=$EPOCHREALTIME
    (
        for i in 1 2 3 4 5 6 7 8; do
            timeout 600 dd if="$mnt/r$i.bin" of=/dev/null bs=1M status=none &
        done
        wait
    ) &
    readers=$!
    while kill -0 "$readers" 2>/dev/null; do
        rss=$(awk '/^VmRSS:/ { print int($2 / 1024) }' "/proc/$pid/status")
        ((rss > rss_max)) && rss_max=$rss
        sleep 0.05
    done
    wait "$readers"
    t1=$EPOCHREALTIME
    record mem8_hwm_MiB "$(awk '/^VmHWM:/ { print int($2 / 1024) }' "/proc/$pid/status")"
    record mem8_rss_peak_MiB "$rss_max"
    record mem8_MBps "$(mbps $((8 * 64 << 20)) "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')")"
    wsfs_umount "$mnt"
done

log "4/8 mount-ready time ($t_entries entries), page cache dropped before each mount"
for _ in $(seq "$runs"); do
    drop_caches
    record mount_ready_s "$(secs wsfs_mount "$mnt" bench tree)"
    wsfs_umount "$mnt"
done

log "5/8 eager baseline: zstd -dc tree.tar.zst | tar -x, cold"
extract() { zstd -dc "$store/tree.tar.zst" | tar -x -C "$dest"; }
for _ in $(seq "$runs"); do
    rm -rf "$dest"
    mkdir -p "$dest"
    drop_caches
    record eager_extract_s "$(secs extract)"
done
rm -rf "$dest"

log "6/8 mount + read a random 10% of the files ($t_sample), and every file of 10% of the packages ($t_pkg_sample), cold"
mount_read() { # LIST PARALLEL; PREFETCH=MODE mounts with --prefetch MODE (default: wsfs's default, tree)
    wsfs_mount "$mnt" bench tree ${PREFETCH:+--prefetch "$PREFETCH"}
    read_list "$mnt" "$1" "$2"
}
# cold_read KEY LIST PARALLEL [MODE]: page cache dropped, mount (with --prefetch MODE if given) +
# read LIST with PARALLEL readers, recorded as KEY; then unmount.
cold_read() {
    drop_caches
    record "$1" "$(PREFETCH=${4:-} secs mount_read "$2" "$3")"
    wsfs_umount "$mnt"
}
for _ in $(seq "$runs"); do
    cold_read lazy_10pct_s "$work/gen/sample.list" 1
    cold_read lazy_10pct_pkg_s "$work/gen/sample_pkg.list" 1
    cold_read lazy_10pct_none_s "$work/gen/sample.list" 1 none
    cold_read lazy_10pct_all_s "$work/gen/sample.list" 1 all
done

log "7/8 mount + read every file ($t_files), cold: 1 and 4 readers; default, --prefetch none, --prefetch all"
for _ in $(seq "$runs"); do
    cold_read lazy_all_none_s "$work/gen/files.list" 1 none
    cold_read lazy_all_p4_none_s "$work/gen/files.list" 4 none
    cold_read lazy_all_s "$work/gen/files.list" 1
    cold_read lazy_all_p4_s "$work/gen/files.list" 4
    cold_read lazy_all_prefetch_s "$work/gen/files.list" 1 all
    cold_read lazy_all_p4_prefetch_s "$work/gen/files.list" 4 all
done
# The warm-up on its own (nobody reading), from the daemon's status.
warmup_ms() {
    local i state
    for i in $(seq 600); do
        state=$("$WSFS" status "$mnt" --json | python3 -c 'import json,sys; w=json.load(sys.stdin)["mounts"][0]["warmup"]; print(w["state"], w["elapsed_ms"])')
        [[ $state == running* ]] || { echo "${state#* }"; return; }
        sleep 0.05
    done
    die "the warm-up did not end within 30 s"
}
for _ in $(seq "$runs"); do
    for mode in tree all; do
        drop_caches
        wsfs_mount "$mnt" bench tree --prefetch "$mode"
        record "warmup_${mode}_ms" "$(warmup_ms)"
        wsfs_umount "$mnt"
    done
done
# Context for the eager rows: what the eager job then pays to read the files it extracted.
for _ in $(seq "$runs"); do
    rm -rf "$dest"
    mkdir -p "$dest"
    drop_caches
    extract
    record eager_read_p4_s "$(secs read_list "$dest" "$work/gen/files.list" 4)"
done
rm -rf "$dest"

log "8/8 walk + stat of $t_entries entries: first and second walk vs local"
walk() { find "$1" -printf '%s\n'; }
for _ in $(seq "$runs"); do
    drop_caches
    wsfs_mount "$mnt" bench tree
    record walk_first_s "$(secs walk "$mnt")"
    record walk_second_s "$(secs walk "$mnt")"
    wsfs_umount "$mnt"
    drop_caches
    record walk_local_cold_s "$(secs walk "$work/gen/tree")"
    record walk_local_warm_s "$(secs walk "$work/gen/tree")"
    drop_caches
    wsfs_mount "$mnt" bench tree --prefetch none
    record walk_first_none_s "$(secs walk "$mnt")"
    wsfs_umount "$mnt"
done

# Issue 11: 4 readers read every file of the tree in a loop (each read checked against the
# source), first without kills (the baseline: the longest single read of the same loop), then
# while the daemon is SIGKILLed 5 times, a second apart. Every run is counted, not the best.
log "takeover: 4 readers in a loop, the daemon SIGKILLed 5 times"
for _ in $(seq "$runs"); do
    drop_caches
    wsfs_mount "$mnt" bench tree
    "$TAKEOVER" --mount "$mnt" --source "$work/gen/tree" --list "$work/gen/files.list" \
        --run-dir "$WSFS_RUN_DIR" --readers 4 --kills 0 --duration-ms 5000 \
        >>"$work/logs/takeover_base.json" 2>>"$work/logs/takeover.err" || true
    "$TAKEOVER" --mount "$mnt" --source "$work/gen/tree" --list "$work/gen/files.list" \
        --run-dir "$WSFS_RUN_DIR" --readers 4 --kills 5 --interval-ms 1000 \
        >>"$work/logs/takeover.json" 2>>"$work/logs/takeover.err" || true
    wsfs_umount "$mnt"
done
eval "$(python3 - "$work/logs/takeover_base.json" "$work/logs/takeover.json" <<'PY'
import json, sys
base = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
kill = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
for b in base:
    print(f"record takeover_base_max_ms {b['max_stall_ms']}")
for k in kill:
    print(f"record takeover_failed {k['failed'] + k['wrong'] + len(k['errors'])}")
    print(f"record takeover_reads {k['reads']}")
    print(f"record takeover_max_stall_ms {k['max_stall_ms']}")
    for t in k["takeover_ms"]:
        print(f"record takeover_ms {t:.1f}")
PY
)"

if ((do_perf)); then
    command -v perf >/dev/null 2>&1 || die "perf is missing"
    log "profile: perf record of the daemon during one cold full read"
    drop_caches
    wsfs_mount "$mnt" bench tree
    pid=$(daemon_pid "$mnt")
    perf record -F 999 -g -o "$work/perf.data" -p "$pid" 2>"$work/logs/perf.log" &
    perf_pid=$!
    pids+=("$perf_pid")
    sleep 0.5
    read_list "$mnt" "$work/gen/files.list" 1
    kill -INT "$perf_pid"
    wait "$perf_pid" || true
    wsfs_umount "$mnt"
    perf report -i "$work/perf.data" --no-children --sort comm,dso,symbol -g none --stdio 2>/dev/null |
        grep -v '^#' | grep -v '^$' | head -40 >"$work/perf-top.txt" || true
    log "perf report (top symbols, self time): $work/perf-top.txt"
    keep=1
fi

if ((do_s3)); then
    log "S3: cold read through the mount from moto vs raw object_store GETs (${s3_mib} MiB)"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
    python3 -m moto.server -H 127.0.0.1 -p "$port" >"$work/logs/moto.log" 2>&1 &
    moto_pid=$!
    for _ in $(seq 150); do
        curl -s -o /dev/null -m 2 "http://127.0.0.1:$port/" && break
        kill -0 "$moto_pid" 2>/dev/null || die "moto exited: $(tail -5 "$work/logs/moto.log")"
        sleep 0.2
    done
    export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1 \
        AWS_REGION=us-east-1 AWS_ENDPOINT=http://127.0.0.1:$port AWS_ENDPOINT_URL=http://127.0.0.1:$port \
        AWS_ALLOW_HTTP=true
    python3 - "$AWS_ENDPOINT" <<'PY'
import sys, boto3
boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1").create_bucket(Bucket="wsfs-bench")
PY
    mkdir -p "$work/gen/s3"
    head -c "$((s3_mib << 20))" /dev/urandom >"$work/gen/s3/data.bin"
    s3=s3://wsfs-bench/ws
    t=$(secs "$WSFS" persist --no-index --store "$s3" --workspace bench --layer s3 --root "$work/gen/s3")
    record persist_s3_s "$t"
    for _ in $(seq "$runs"); do
        STORE_URL=$s3 wsfs_mount "$mnt" bench s3
        record s3_mount_MBps "$(mbps $((s3_mib << 20)) "$(dd_secs "$mnt/data.bin")")"
        wsfs_umount "$mnt"
        out=$(timeout 600 "$RAW_GET" "$s3" --concurrency 8)
        record s3_raw_MBps "$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["mb_per_s"])' "$out")"
    done

    log "S3: eager download (curl) + extract of tree.tar.zst from moto vs mount + read, cold"
    s3tree=s3://wsfs-bench/tree
    "$WSFS" persist --no-index --store "$s3tree" --workspace bench --layer tree --root "$work/gen/tree" >/dev/null
    url=$(python3 - "$AWS_ENDPOINT" "$store/tree.tar.zst" <<'PY'
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1")
s3.upload_file(sys.argv[2], "wsfs-bench", "tree/tree.tar.zst")
print(s3.generate_presigned_url("get_object", ExpiresIn=3600,
                                Params={"Bucket": "wsfs-bench", "Key": "tree/tree.tar.zst"}))
PY
    )
    extract_s3() { curl -sSf "$url" | zstd -dc | tar -x -C "$dest"; }
    for _ in $(seq "$runs"); do
        rm -rf "$dest"
        mkdir -p "$dest"
        drop_caches
        record s3_eager_extract_s "$(secs extract_s3)"
        STORE_URL=$s3tree cold_read s3_lazy_10pct_s "$work/gen/sample.list" 1
        STORE_URL=$s3tree cold_read s3_lazy_all_p4_s "$work/gen/files.list" 4
        STORE_URL=$s3tree cold_read s3_lazy_all_p4_prefetch_s "$work/gen/files.list" 4 all
    done
    rm -rf "$dest"
    kill -TERM "$moto_pid" 2>/dev/null
    wait "$moto_pid" 2>/dev/null || true
    moto_pid=
fi

# ----------------------------------------------------------------- report ---

disk_dev=$(df --output=source "$work" | tail -1)
disk_fs=$(df --output=fstype "$work" | tail -1)
disk_info=$(lsblk -dno SIZE,MODEL "$disk_dev" 2>/dev/null | xargs || true)
BENCH_MACHINE="$(nproc) cores ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM, kernel $(uname -r), work dir on ${disk_fs} on ${disk_dev} (${disk_info:-?})"
BENCH_DATE="$(date -u '+%Y-%m-%d %H:%M UTC')"
export BENCH_CMD="$cmdline"
BENCH_REV="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$repo" diff --quiet HEAD -- src 2>/dev/null || echo ' + uncommitted src changes')"
BENCH_LOAD="$(cut -d' ' -f1-3 /proc/loadavg)"
export BENCH_MACHINE BENCH_DATE BENCH_REV BENCH_LOAD BENCH_RUNS=$runs
export BENCH_TREE="$t_entries entries ($t_files files of 0-8 KiB, $t_dirs directories, $t_links symlinks; $t_bytes bytes of file content)"
export BENCH_SIZES="tar.zst $tarzst_bytes bytes; wsfs chunks $chunk_bytes bytes (tree + large files)"
export BENCH_BIG_MIB=$big_mib BENCH_S3_MIB=$s3_mib BENCH_MEMCACHE_MIB=$memcache_mib BENCH_SAMPLE=$t_sample BENCH_PKG_SAMPLE=$t_pkg_sample
table=$(python3 - "$results" <<'PY'
import os, sys
from collections import defaultdict
v = defaultdict(list)
for line in open(sys.argv[1]):
    k, x = line.rstrip("\n").split("\t")
    v[k].append(float(x))
E = os.environ
best_t = lambda k: min(v[k]) if v[k] else None   # times: lower is better
best_s = lambda k: max(v[k]) if v[k] else None   # speeds: higher is better
rows = []

def verdict(ratio, target, lower_is_better):
    if ratio is None:
        return "not measured"
    if lower_is_better:
        return "met" if ratio <= target else f"missed by {ratio / target:.2f}x ({ratio:.2f} vs <= {target:g})"
    return "met" if ratio >= target else f"missed by {target / ratio:.2f}x ({ratio:.2f} vs >= {target:g})"

def add(what, ours, base, ratio, target, result):
    rows.append((what, ours, base, ratio, target, result))

fmt_s = lambda x: f"{x:.3f} s"
fmt_mb = lambda x: f"{x:.0f} MB/s"

m = best_t("mount_ready_s")
add(f"mount ready, {E['BENCH_TREE'].split(' ')[0]} entries (cold page cache)", fmt_s(m), "-", "-", "< 0.5 s",
    "met" if m < 0.5 else f"missed by {m / 0.5:.2f}x")
eager = best_t("eager_extract_s")
for key, what, target in (("lazy_10pct_s", f"mount + read 10% of the files ({E['BENCH_SAMPLE']}, uniform sample, 1 reader), cold", 0.2),
                          ("lazy_10pct_none_s", "the same, `--prefetch none`", 0.2),
                          ("lazy_10pct_all_s", "the same, `--prefetch all`", 0.2),
                          ("lazy_10pct_pkg_s", f"mount + read every file of 10% of the packages ({E['BENCH_PKG_SAMPLE']} files, 1 reader), cold", 0.2),
                          ("lazy_all_s", "mount + read every file, cold, 1 reader", 1.2),
                          ("lazy_all_none_s", "mount `--prefetch none` + read every file, cold, 1 reader", 1.2),
                          ("lazy_all_p4_s", "mount + read every file, cold, 4 readers", 1.2),
                          ("lazy_all_p4_none_s", "mount `--prefetch none` + read every file, cold, 4 readers", 1.2),
                          ("lazy_all_prefetch_s", "mount `--prefetch all` + read every file, cold, 1 reader", 1.2),
                          ("lazy_all_p4_prefetch_s", "mount `--prefetch all` + read every file, cold, 4 readers", 1.2)):
    t = best_t(key)
    r = t / eager if t and eager else None
    add(what, fmt_s(t), f"{fmt_s(eager)} (zstd -dc tree.tar.zst \\| tar -x, cold)", f"{r:.2f}x time", f"<= {target}x", verdict(r, target, True))
w, l = best_s("warm_mount_MBps"), best_s("warm_local_MBps")
add(f"re-read {E['BENCH_BIG_MIB']} MiB file, warm", fmt_mb(w), f"{fmt_mb(l)} (local disk, warm)", f"{w / l:.2f}x speed", ">= 0.9x", verdict(w / l, 0.9, False))
d, l = best_s("diskcache_MBps"), best_s("local_cold_MBps")
add(f"first read of {E['BENCH_BIG_MIB']} MiB from the disk cache (new mount, page cache dropped)", fmt_mb(d), f"{fmt_mb(l)} (local disk, cold)", f"{d / l:.2f}x speed", ">= 0.6x", verdict(d / l, 0.6, False))
if v["pt_warm_MBps"]:
    w, l = best_s("pt_warm_MBps"), best_s("warm_local_MBps")
    add(f"re-read {E['BENCH_BIG_MIB']} MiB file, warm, `--passthrough`", fmt_mb(w), f"{fmt_mb(l)} (local disk, warm)", f"{w / l:.2f}x speed", ">= 0.95x", verdict(w / l, 0.95, False))
    d, l = best_s("pt_diskcache_MBps"), best_s("local_cold_MBps")
    add(f"first read of {E['BENCH_BIG_MIB']} MiB from the disk cache, `--passthrough`", fmt_mb(d), f"{fmt_mb(l)} (local disk, cold)", f"{d / l:.2f}x speed", ">= 0.9x", verdict(d / l, 0.9, False))
lw, lc = best_t("walk_local_warm_s"), best_t("walk_local_cold_s")
for key, what, target in (("walk_first_s", "walk + stat, first walk (fresh mount)", 5.0),
                          ("walk_first_none_s", "walk + stat, first walk (fresh mount, `--prefetch none`)", 5.0),
                          ("walk_second_s", "walk + stat, second walk", 1.5)):
    t = best_t(key)
    add(what, fmt_s(t), f"{fmt_s(lw)} (local, warm; cold: {lc:.3f} s)", f"{t / lw:.2f}x time", f"<= {target:g}x", verdict(t / lw, target, True))
if v["s3_mount_MBps"]:
    s, rw = best_s("s3_mount_MBps"), best_s("s3_raw_MBps")
    add(f"cold read of a {E['BENCH_S3_MIB']} MiB file from moto (S3)", fmt_mb(s), f"{fmt_mb(rw)} (raw object_store GETs, 8 concurrent)", f"{s / rw:.2f}x speed", ">= 0.8x", verdict(s / rw, 0.8, False))
if v["s3_eager_extract_s"]:
    se = best_t("s3_eager_extract_s")
    for key, what, target in (("s3_lazy_10pct_s", "from moto: mount + read 10% of the files, cold, 1 reader", 0.2),
                              ("s3_lazy_all_p4_s", "from moto: mount + read every file, cold, 4 readers", 1.2),
                              ("s3_lazy_all_p4_prefetch_s", "from moto: mount `--prefetch all` + read every file, cold, 4 readers", 1.2)):
        t = best_t(key)
        add(what, fmt_s(t), f"{fmt_s(se)} (curl tree.tar.zst from moto \\| zstd -dc \\| tar -x, cold)", f"{t / se:.2f}x time", f"<= {target}x", verdict(t / se, target, True))
if v["takeover_reads"]:
    failed, reads = sum(v["takeover_failed"]), sum(v["takeover_reads"])
    stall, base = max(v["takeover_max_stall_ms"]), max(v["takeover_base_max_ms"])
    tk = sorted(v["takeover_ms"])
    ok = failed == 0 and stall <= 2000
    add(f"4 readers read every file in a loop while the daemon is SIGKILLed 5 times ({len(v['takeover_reads'])} runs)",
        f"{failed} failed or wrong of {reads:.0f} reads; longest read {stall:.0f} ms",
        f"longest read without kills {base:.0f} ms (same loop, same run)", "-",
        "0 failed, longest stall <= 2 s", "met" if ok else f"missed ({failed:.0f} failed, {stall:.0f} ms)")
    add(f"takeover: SIGKILL to the replacement recorded as serving ({len(tk)} takeovers)",
        f"median {tk[len(tk) // 2]:.0f} ms, max {tk[-1]:.0f} ms", "-", "-", "about 1 s", "met" if tk[-1] <= 1000 else "missed")
hwm = best_t("mem8_hwm_MiB")
cfg = float(E["BENCH_MEMCACHE_MIB"])
over = hwm - cfg
add("daemon resident memory (VmHWM), 8 concurrent readers", f"{hwm:.0f} MiB", f"--memory-cache {cfg:.0f} MiB", f"+{over:.0f} MiB", "<= +256 MiB",
    "met" if over <= 256 else f"missed by {over - 256:.0f} MiB")

out = ["| what | wsfs | baseline | ratio | target | result |", "| --- | --- | --- | --- | --- | --- |"]
out += ["| " + " | ".join(r) + " |" for r in rows]
info = []
info.append(f"Other numbers from the same run: persist of the tree {best_t('persist_tree_s'):.2f} s, "
            f"of the large files ({E['BENCH_BIG_MIB']} MiB + 8 x 64 MiB) {best_t('persist_big_s'):.2f} s"
            + (f", of the {E['BENCH_S3_MIB']} MiB file to moto {best_t('persist_s3_s'):.2f} s" if v['persist_s3_s'] else "")
            + f"; 8 concurrent cold readers {best_s('mem8_MBps'):.0f} MB/s in total (peak sampled VmRSS "
            f"{best_t('mem8_rss_peak_MiB'):.0f} MiB).")
if v["warmup_all_ms"]:
    info.append("")
    info.append(f"The kernel cache warm-up alone (fresh mount, nobody reading, from `wsfs status`): `--prefetch tree` "
                f"{best_t('warmup_tree_ms'):.0f} ms, `--prefetch all` {best_t('warmup_all_ms'):.0f} ms. For the eager rows' context: "
                f"after extracting, reading every file with 4 readers took the eager job another {best_t('eager_read_p4_s'):.3f} s "
                f"(page cache warm), i.e. extract + read = {eager + best_t('eager_read_p4_s'):.3f} s; the targets compare with the extraction alone.")
info.append("")
info.append("All samples (best of them is in the table):")
info.append("")
info.append("```")
for k in v:
    info.append(f"{k:22} " + "  ".join(f"{x:g}" for x in v[k]))
info.append("```")
print("\n".join(out + [""] + info))
PY
)

header="Measured by \`$BENCH_CMD\` on $BENCH_DATE, wsfs $BENCH_REV, best of $BENCH_RUNS runs.
Machine: $BENCH_MACHINE. Load average at the end: $BENCH_LOAD.
Workload: a node_modules-like tree of $BENCH_TREE; one ${big_mib} MiB and eight 64 MiB random
files; ${s3_mib} MiB of random data on moto. $BENCH_SIZES."
printf '\n%s\n\n%s\n' "$header" "$table"

if ((do_doc)); then
    doc=$repo/docs/benchmarks.md
    BLOCK="$header

$table" python3 "$repo/scripts/doc-block.py" "$doc" bench "Results (scripts/bench.sh)"
    log "table written to docs/benchmarks.md"
fi
