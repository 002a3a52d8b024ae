#!/usr/bin/env bash
# gc over a store of many chunks on moto (S3), beside raw boto3 baselines of the same run:
#
#   scripts/bench-gc.sh [--no-build] [--no-doc]
#
# Env: BENCH_GC_OBJECTS (default 100000): unreached chunk objects seeded on moto.
#
# Seeds a real workspace (persisted by wsfs, kept) and BENCH_GC_OBJECTS unreached chunk objects,
# then times, on the same moto:
#   - raw listing of every object with boto3 (list_objects_v2, 1,000 per page)  [baseline]
#   - `wsfs gc --older-than 1h --grace 0s --dry-run` (inventory, mark, listing; deletes nothing)
#   - `wsfs gc --older-than 1h --grace 0s` (the same, deleting every unreached object)
#   - seeding again, then raw deletion with boto3 delete_objects (1,000 per request) [baseline]
# and checks that the kept workspace still verifies complete. Results go to docs/benchmarks.md
# between `<!-- bench-gc:start -->` and `<!-- bench-gc:end -->`. Everything it started is stopped.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
n=${BENCH_GC_OBJECTS:-100000}
do_build=1 do_doc=1
while (($#)); do
    case $1 in
    --no-build) do_build=0 ;;
    --no-doc) do_doc=0 ;;
    -h | --help)
        sed -n '2,15p' "$0"
        exit 0
        ;;
    *)
        echo "bench-gc.sh: unknown argument: $1" >&2
        exit 2
        ;;
    esac
    shift
done
log() { printf '[bench-gc %s] %s\n' "$(date +%T)" "$*" >&2; }
WSFS=$repo/target/release/wsfs
work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/wsfs-bench-gc.XXXXXX")
moto_pid=
cleanup() {
    set +e
    [[ -n $moto_pid ]] && kill -TERM "$moto_pid" 2>/dev/null && wait "$moto_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
if ((do_build)); then
    log "cargo build --release"
    cargo build --release --quiet --bin wsfs
fi
python3 -c 'import moto.server, boto3' 2>/dev/null ||
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q 'moto[server]'
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m moto.server -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto_pid=$!
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1 \
    AWS_REGION=us-east-1 AWS_ENDPOINT=http://127.0.0.1:$port AWS_ALLOW_HTTP=true WSFS_RUN_DIR=$work/run
py() { python3 - "$AWS_ENDPOINT" "$@"; }
py <<'PY'
import sys, boto3
boto3.client("s3", endpoint_url=sys.argv[1]).create_bucket(Bucket="gcbench")
PY
# The kept workspace: 300 files of 100-300 KB (one chunk each) and 2,000 small files (packs).
mkdir -p "$work/tree/big" "$work/tree/small"
python3 - "$work/tree" <<'PY'
import os, random, sys
random.seed(7)
root = sys.argv[1]
for i in range(300):
    open(f"{root}/big/f{i}", "wb").write(os.urandom(random.randint(100_000, 300_000)))
for i in range(2000):
    open(f"{root}/small/s{i}", "wb").write(os.urandom(random.randint(100, 4000)))
PY
store=s3://gcbench/ws
"$WSFS" persist --no-index --store "$store" --workspace kept --layer l --root "$work/tree" >/dev/null
seed() { # seeds $n unreached chunk objects (16 threads)
    py "$n" <<'PY'
import sys, os, boto3, hashlib
from concurrent.futures import ThreadPoolExecutor
s3 = boto3.client("s3", endpoint_url=sys.argv[1])
n = int(sys.argv[2])
def put(i):
    h = hashlib.blake2b(str(i).encode() + os.urandom(8), digest_size=32).hexdigest()
    s3.put_object(Bucket="gcbench", Key=f"ws/chunks/{h[:2]}/{h}", Body=b"x" * 64)
with ThreadPoolExecutor(32) as ex:
    list(ex.map(put, range(n)))
PY
}
secs() { local t0=$EPOCHREALTIME; "$@" >/dev/null; awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'; }
raw_list() {
    py <<'PY'
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1])
n = 0
for page in s3.get_paginator("list_objects_v2").paginate(Bucket="gcbench", Prefix="ws/"):
    n += len(page.get("Contents", []))
print(n)
PY
}
raw_delete() {
    py <<'PY'
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1])
keep = set()
for page in s3.get_paginator("list_objects_v2").paginate(Bucket="gcbench", Prefix="ws/chunks/"):
    batch = [{"Key": o["Key"]} for o in page.get("Contents", []) if o["Size"] == 64]
    for i in range(0, len(batch), 1000):
        s3.delete_objects(Bucket="gcbench", Delete={"Objects": batch[i:i + 1000], "Quiet": True})
PY
}
log "seeding $n unreached chunk objects on moto"
t_seed=$(secs seed)
total=$(raw_list)
log "store holds $total objects under ws/"
t_list=$(secs raw_list)
t_dry=$(secs "$WSFS" gc --store "$store" --older-than 1h --grace 0s --dry-run)
t0=$EPOCHREALTIME
"$WSFS" gc --store "$store" --older-than 1h --grace 0s --json >"$work/gc.json"
t_gc=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')
deleted=$(python3 - "$work/gc.json" <<'PY'
import json, sys
print(json.load(open(sys.argv[1]))["stores"][0]["chunks"]["deleted"])
PY
)
"$WSFS" verify --store "$store" --workspace kept --layer l --all >/dev/null
log "gc deleted $deleted chunks in $t_gc s; seeding again for the raw deletion baseline"
seed >/dev/null
t_raw_del=$(secs raw_delete)
kept_chunks=$(python3 - "$work/gc.json" <<'PY'
import json, sys
print(json.load(open(sys.argv[1]))["stores"][0]["chunks"]["kept"])
PY
)
table="Measured by \`scripts/bench-gc.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'), wsfs $(git rev-parse --short HEAD), moto on loopback, $(nproc) cores.
Store: a kept workspace of $kept_chunks chunks (300 large files, 2,000 small ones) and $n unreached chunk objects ($total objects in all; seeding them took ${t_seed} s at moto's pace).

| what | wsfs | baseline (same run) |
| --- | --- | --- |
| list + mark, nothing deleted (\`gc --dry-run\`) | ${t_dry} s | boto3 list_objects_v2 of every object: ${t_list} s |
| gc deleting $deleted unreached chunks | ${t_gc} s | boto3 delete_objects, 1,000 per request, after a list: ${t_raw_del} s |

The kept workspace verified complete after the gc (\`wsfs verify --all\`)."
printf '\n%s\n' "$table"
if ((do_doc)); then
    BLOCK="$table" python3 "$repo/scripts/doc-block.py" "$repo/docs/benchmarks.md" bench-gc \
        "gc over many chunks (scripts/bench-gc.sh)"
    log "table written to docs/benchmarks.md"
fi
