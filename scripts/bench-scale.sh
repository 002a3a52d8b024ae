#!/usr/bin/env bash
# Monorepo-sized workspaces (issue 16): persist, incremental re-persist, mount and walk at 50k,
# 500k and 1M entries, beside eager tar.zst create/extract of the same tree in the same run:
#
#   scripts/bench-scale.sh [--no-build] [--no-doc] [--sizes "50000 500000"]
#
# Env: BENCH_DIR (default /var/tmp) for the trees (1M entries ≈ 1.1 GB), BENCH_SCALE_SIZES.
#
# Per size, a generated tree (directories of 100 files, 0-2 KiB each, deterministic), then, each
# with a cold page cache (drop_caches; run as root):
#   - eager upstream: tar | zstd -3 -T0                            [baseline]
#   - wsfs persist, first (no index yet)
#   - wsfs persist again, nothing changed (the persist index)
#   - wsfs persist again after 1% of the files were rewritten
#   - wsfs mount: until ready, daemon RSS after it, a full walk (find), RSS after the walk;
#     then three more cold mounts until ready (their median)
#   - eager downstream: zstd -d | tar -x                            [baseline]
# Results go to docs/benchmarks.md between `<!-- bench-scale:start -->` and
# `<!-- bench-scale:end -->`. Everything it started is stopped and its files removed.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
sizes=${BENCH_SCALE_SIZES:-"50000 500000 1000000"}
do_build=1 do_doc=1
while (($#)); do
    case $1 in
    --no-build) do_build=0 ;;
    --no-doc) do_doc=0 ;;
    --sizes)
        sizes=$2
        shift
        ;;
    -h | --help)
        sed -n '2,18p' "$0"
        exit 0
        ;;
    *)
        echo "bench-scale.sh: unknown argument: $1 (try --help)" >&2
        exit 2
        ;;
    esac
    shift
done
[[ $(id -u) == 0 ]] || {
    echo "bench-scale.sh: run as root (it drops the page cache and mounts)" >&2
    exit 2
}
command -v zstd >/dev/null || apt-get install -y -q zstd >/dev/null
log() { printf '[bench-scale %s] %s\n' "$(date +%T)" "$*" >&2; }
WSFS=$repo/target/release/wsfs
work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/wsfs-bench-scale.XXXXXX")
export WSFS_RUN_DIR=$work/run
mnt=$work/mnt
cleanup() {
    set +e
    if grep -q " $mnt " /proc/self/mountinfo; then
        timeout 30 "$WSFS" umount "$mnt" || "$WSFS" umount --force "$mnt"
    fi
    rm -rf "$work"
}
trap cleanup EXIT
if ((do_build)); then
    log "cargo build --release"
    cargo build --release --quiet --bin wsfs
fi
cold() { sync; echo 3 >/proc/sys/vm/drop_caches; }
now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'; }
rss_mib() { awk '/^VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }
results=$work/results.tsv
: >"$results"

for n in $sizes; do
    tree=$work/tree-$n
    log "$n files: generating the tree"
    python3 - "$tree" "$n" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rnd = random.Random(n)
blob = rnd.randbytes(4 << 20)
for i in range(n):
    d = f"{root}/d{i // 10000:03d}/s{(i // 100) % 100:02d}"
    if i % 100 == 0:
        os.makedirs(d, exist_ok=True)
    size = rnd.randint(0, 2048)
    off = rnd.randint(0, len(blob) - size)
    with open(f"{d}/f{i}.txt", "wb") as f:
        f.write(blob[off:off + size])
PY
    entries=$(find "$tree" | wc -l)
    bytes=$(du -sb --apparent-size "$tree" | cut -f1)
    # Files written within a second of a persist are read again by the next one (racy rule).
    sleep 2
    store=file://$work/store-$n
    idx=$work/index-$n

    cold
    t0=$(now)
    tar -C "$tree" -cf - . | zstd -q -3 -T0 -o "$work/tree-$n.tar.zst"
    t_tar=$(since "$t0")
    tar_bytes=$(stat -c %s "$work/tree-$n.tar.zst")

    cold
    t0=$(now)
    "$WSFS" persist --store "$store" --workspace scale --layer l --root "$tree" --index-dir "$idx" >"$work/p1.txt"
    t_p1=$(since "$t0")
    sleep 2

    cold
    t0=$(now)
    "$WSFS" persist --store "$store" --workspace scale --layer l --root "$tree" --index-dir "$idx" >"$work/p2.txt"
    t_p2=$(since "$t0")
    grep -q " 0 read;" "$work/p2.txt" || { cat "$work/p2.txt" >&2; log "an unchanged re-persist read files"; exit 1; }

    # 1% of the files rewritten (new content, same directories).
    python3 - "$tree" "$n" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rnd = random.Random(n + 1)
for i in rnd.sample(range(n), n // 100):
    p = f"{root}/d{i // 10000:03d}/s{(i // 100) % 100:02d}/f{i}.txt"
    with open(p, "wb") as f:
        f.write(rnd.randbytes(rnd.randint(1, 2048)))
PY
    sleep 2
    cold
    t0=$(now)
    "$WSFS" persist --store "$store" --workspace scale --layer l --root "$tree" --index-dir "$idx" >"$work/p3.txt"
    t_p3=$(since "$t0")
    p3_read=$(sed -n 's/.* \([0-9]*\) read;.*/\1/p' "$work/p3.txt")
    idx_bytes=$(du -sb "$idx" | cut -f1)

    mkdir -p "$mnt"
    cold
    t0=$(now)
    "$WSFS" mount --store "$store" --workspace scale --layer l --prefetch none "$mnt"
    t_mount=$(since "$t0")
    pid=$(python3 -c 'import json,sys,glob; print([json.load(open(f))["pid"] for f in glob.glob(sys.argv[1] + "/mounts/*.json")][0])' "$WSFS_RUN_DIR")
    rss_mount=$(rss_mib "$pid")
    t0=$(now)
    find "$mnt" >/dev/null
    t_walk=$(since "$t0")
    rss_walk=$(rss_mib "$pid")
    "$WSFS" umount "$mnt"
    # Cold mounts again: the first one above follows a persist of the whole tree on this machine
    # and pays for the kernel's background work after it; a downstream machine does not.
    again=()
    for _ in 1 2 3; do
        cold
        t0=$(now)
        "$WSFS" mount --store "$store" --workspace scale --layer l --prefetch none "$mnt" >/dev/null
        again+=("$(since "$t0")")
        "$WSFS" umount "$mnt"
    done
    t_again=$(printf '%s\n' "${again[@]}" | sort -n | sed -n 2p)

    rm -rf "$work/extract"
    mkdir -p "$work/extract"
    cold
    t0=$(now)
    zstd -q -d -c "$work/tree-$n.tar.zst" | tar -C "$work/extract" -xf -
    t_untar=$(since "$t0")
    rm -rf "$work/extract" "$tree" "$work/tree-$n.tar.zst" "$work/store-$n" "$idx"

    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$entries" "$bytes" \
        "$t_tar" "$tar_bytes" "$t_p1" "$t_p2" "$t_p3" "$p3_read" "$idx_bytes" "$t_mount" \
        "$rss_mount" "$t_walk" "$rss_walk" "$t_untar" "$t_again" >>"$results"
    log "$n: tar.zst ${t_tar}s; persist ${t_p1}s, unchanged ${t_p2}s, 1% ${t_p3}s ($p3_read read); mount ${t_mount}s (again, median of 3: ${t_again}s), RSS ${rss_mount} MiB, walk ${t_walk}s, RSS ${rss_walk} MiB; untar ${t_untar}s"
done

table=$(python3 - "$results" "$(git rev-parse --short HEAD)" "$(nproc)" <<'PY'
import sys, datetime
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
out = [f"Measured by `scripts/bench-scale.sh` on {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, "
       f"wsfs {sys.argv[2]}, {sys.argv[3]} cores, file:// store on the local disk, cold page cache "
       "(drop_caches) before every step. Trees: directories of 100 files of 0-2 KiB.", "",
       "| entries | eager: tar + zstd | persist, first | re-persist, unchanged | re-persist, 1% changed | index file | mount ready (first after the persists; again, median of 3) | RSS after mount | walk (find) | RSS after walk | eager: zstd -d + tar -x |",
       "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
for (n, entries, nbytes, t_tar, tar_bytes, p1, p2, p3, p3_read, idx, mnt, rss_m, walk, rss_w, untar, again) in rows:
    p1, p2, p3 = float(p1), float(p2), float(p3)
    e = int(entries)
    out.append(
        f"| {e:,} ({int(nbytes) / 1e6:.0f} MB) | {float(t_tar):.2f} s ({int(tar_bytes) / 1e6:.0f} MB) | {p1:.2f} s "
        f"| {p2:.2f} s (**{p2 / p1:.2f}×**) | {p3:.2f} s (**{p3 / p1:.2f}×**, {int(p3_read):,} files read) "
        f"| {int(idx) / 1e6:.1f} MB | {float(mnt):.2f} s; {float(again):.2f} s | {rss_m} MiB ({int(rss_m) * 1048576 / e:.0f} B/entry) "
        f"| {float(walk):.2f} s | {rss_w} MiB | {float(untar):.2f} s |")
print("\n".join(out))
PY
)
printf '\n%s\n' "$table"
if ((do_doc)); then
    BLOCK="$table" python3 "$repo/scripts/doc-block.py" "$repo/docs/benchmarks.md" bench-scale \
        "Scale: monorepo-sized trees (scripts/bench-scale.sh)"
    log "table written to docs/benchmarks.md"
fi
