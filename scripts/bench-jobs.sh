#!/usr/bin/env bash
# Real CI jobs on a workspace attached with wsfs vs the eager way, under a network model (issue
# 17, "Real jobs in the bench"), as root on Debian:
#
#   scripts/bench-jobs.sh [--quick] [--no-install] [--no-build] [--no-doc] [--prepare-only] [--keep]
#
#   --quick         1 run per measurement instead of BENCH_JOBS_RUNS
#   --no-install    do not apt-get install anything (nginx, zstd, curl, git, nodejs, npm)
#   --no-build      use the existing target/release/wsfs and target/release/examples/netproxy
#   --no-doc        print the tables but leave docs/benchmarks.md alone
#   --prepare-only  prepare the job workspaces (downloads, builds) and stop
#   --keep          keep this run's directory ($BENCH_JOBS_DIR/run: logs, statuses) on success too
#
# Env: BENCH_JOBS_DIR (work dir, default /var/tmp/wsfs-bench-jobs; kept between runs: it caches
#      the downloads and the prepared workspaces), BENCH_JOBS_RUNS (best of N, default 3),
#      BENCH_JOBS (default "npm rust git"), BENCH_JOBS_NETS (default "cloud lan"),
#      BENCH_JOBS_GIT_URL (clone this repository for the git job instead of generating the
#      synthetic one).
#
# Jobs (the upstream workspaces are prepared once, under $BENCH_JOBS_DIR/src):
#   npm   express, typescript, jest + ts-jest, eslint, webpack and @types installed into
#         node_modules, a small TS module and its jest test; `npx jest --ci src/app.test.ts`
#         (fresh jest cache directory each run), then `npx tsc -p .`
#   rust  a crate using serde (derive), serde_json and regex, deps vendored (`cargo vendor`,
#         .cargo/config.toml), built (`cargo build`, `cargo test --no-run`) at the job path
#         $BENCH_JOBS_DIR/job/rust, where every run happens; `cargo test --offline`
#   git   a checkout with history (synthetic, deterministic: 4,000 files, 500 commits, one pack);
#         `git status --porcelain`, then `git log --oneline | wc -l`
#
# Each workspace is persisted with `wsfs persist` into a file:// store and packed as a tar.zst
# (`tar --format=posix` keeps nanosecond mtimes: cargo's freshness checks need them), both
# under $BENCH_JOBS_DIR/www, which nginx (own config, free loopback port, WebDAV PUT/DELETE so
# the store accepts lease and profile writes like a bucket) serves. examples/netproxy.rs sits
# between the machine and nginx: cloud = 10 ms each way, 100 MB/s per connection, 125 MB/s in
# total; lan = 1 ms, 1000 MB/s, 1250 MB/s. Per job and network profile, each best of N (by total)
# with a fresh job directory and `echo 3 > /proc/sys/vm/drop_caches` before each run:
#   eager         usable = `curl http://PROXY/tars/JOB.tar.zst | zstd -d | tar -x`; then the command
#   wsfs          usable = `wsfs attach --store http://PROXY/JOB/ --at JOBDIR` with a fresh
#                 --cache-dir and --scratch; then the command; `wsfs status --json`; `wsfs umount`
#   wsfs+profile  the same with `--profile JOB`; a first (recording) run with no stored profile is
#                 reported on its own row, the timed runs then each replay the profile the
#                 previous run stored at its unmount (through the HTTP store)
#   wsfs-all      `--prefetch all`, usable once every chunk is fetched and the kernel warm-up is
#                 done (the command with no fetch to wait for: what a perfect prefetch could give)
#   local         the command alone on a freshly extracted local tree, page cache warm
# Bytes: `downloaded` is what crossed the proxy towards the machine (HTTP bodies and headers);
# `served` is what wsfs answered READ requests with (bytes_served), `pushed` what it pushed into
# the page cache itself (the other files of a read file's pack chunk; with --prefetch all, the
# warm-up's files), both from `wsfs status --json` before the unmount.
#
# Results go to docs/benchmarks.md between `<!-- bench-jobs:start -->` and
# `<!-- bench-jobs:end -->`. On exit, success or failure, it unmounts what it attached
# (`wsfs umount`, then `wsfs umount --force`) and stops the nginx and netproxy it started; on
# success it removes its per-run directory ($BENCH_JOBS_DIR/run: logs, statuses, daemon logs;
# kept after a failure), keeping the prepared workspaces.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
cmdline="scripts/bench-jobs.sh${*:+ $*}"

runs=${BENCH_JOBS_RUNS:-3}
work=${BENCH_JOBS_DIR:-/var/tmp/wsfs-bench-jobs}
read -r -a jobs <<<"${BENCH_JOBS:-npm rust git}"
read -r -a nets <<<"${BENCH_JOBS_NETS:-cloud lan}"
git_url=${BENCH_JOBS_GIT_URL:-}
do_install=1 do_build=1 do_doc=1 prepare_only=0 keep=0
while (($#)); do
    case $1 in
    --quick) runs=1 ;;
    --no-install) do_install=0 ;;
    --no-build) do_build=0 ;;
    --no-doc) do_doc=0 ;;
    --prepare-only) prepare_only=1 ;;
    --keep) keep=1 ;;
    -h | --help)
        sed -n '2,56p' "$0"
        exit 0
        ;;
    *)
        echo "bench-jobs.sh: unknown argument: $1 (try --help)" >&2
        exit 2
        ;;
    esac
    shift
done

log() { printf '[bench-jobs %s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

[[ $(id -u) == 0 ]] || die "run as root (attach needs overlayfs and FUSE; dropping the page cache)"
for j in "${jobs[@]}"; do
    case $j in npm | rust | git) ;; *) die "unknown job '$j' in BENCH_JOBS (npm, rust, git)" ;; esac
done
for n in "${nets[@]}"; do
    case $n in cloud | lan) ;; *) die "unknown network profile '$n' in BENCH_JOBS_NETS (cloud, lan)" ;; esac
done
[[ $work == /* ]] || die "BENCH_JOBS_DIR must be an absolute path"

WSFS=$repo/target/release/wsfs
NETPROXY=$repo/target/release/examples/netproxy
run=$work/run         # this run's state (removed at exit)
www=$work/www         # what nginx serves: one store per job, and tars/
jobroot=$work/job     # the job directories (attach points)
src=$work/src         # the prepared upstream workspaces
attached=()           # job directories this run may have attached
nginx_pid=
proxy_pid=

mounted() { # true if $1 is a mount point (from the mount table: never stat a possibly hung mount)
    awk -v m="$1" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo
}

stop_pid() { # PID: TERM, wait up to 5 s, then KILL
    local p=$1
    kill -TERM "$p" 2>/dev/null || return 0
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
}

cleanup() {
    local rc=$? d
    set +e
    trap - EXIT INT TERM HUP
    for d in "${attached[@]}"; do
        if mounted "$d"; then
            log "cleanup: unmounting $d"
            timeout 30 "$WSFS" umount "$d" --timeout 10s >/dev/null 2>&1 ||
                timeout 30 "$WSFS" umount --force "$d" >&2
        fi
    done
    [[ -n $proxy_pid ]] && stop_pid "$proxy_pid"
    [[ -n $nginx_pid ]] && stop_pid "$nginx_pid"
    for d in "${attached[@]}"; do
        mounted "$d" && { log "not removing $run: $d is still mounted"; exit "$rc"; }
    done
    if ((rc == 0 && !keep)) && [[ -d $run ]] &&
        ! awk -v r="$run/" 'index($5, r) == 1 { f = 1 } END { exit !f }' /proc/self/mountinfo; then
        rm -rf "$run"
    fi
    ((rc == 0)) || log "FAILED (exit $rc); logs are in $run"
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
    command -v zstd >/dev/null 2>&1 || apt+=(zstd)
    command -v curl >/dev/null 2>&1 || apt+=(curl)
    command -v git >/dev/null 2>&1 || apt+=(git)
    command -v python3 >/dev/null 2>&1 || apt+=(python3)
    command -v fusermount3 >/dev/null 2>&1 || apt+=(fuse3)
    if [[ " ${jobs[*]} " == *" npm "* ]]; then
        command -v node >/dev/null 2>&1 || apt+=(nodejs)
        command -v npm >/dev/null 2>&1 || apt+=(npm)
    fi
    if ((${#apt[@]})); then
        log "apt-get installing: ${apt[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq "${apt[@]}" >/dev/null
    fi
fi
for t in nginx zstd curl git python3 tar cargo; do
    command -v "$t" >/dev/null 2>&1 || die "$t is missing (run without --no-install)"
done
[[ -e /dev/fuse ]] || die "/dev/fuse is missing"

if ((do_build)); then
    log "cargo build --release --bin wsfs --example netproxy"
    cargo build --release --quiet --bin wsfs --example netproxy
fi
[[ -x $WSFS ]] || die "$WSFS is missing (run without --no-build)"
# What the binary was built from (others may commit while this runs).
version="$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src 2>/dev/null || echo '+changes')"
((do_build)) || version="$version (binary of $(date -u -r "$WSFS" '+%F %H:%M') UTC, --no-build)"
[[ -x $NETPROXY ]] || die "$NETPROXY is missing (run without --no-build)"

mkdir -p "$work/cache" "$src" "$jobroot"
rm -rf "$run"
mkdir -p "$run/logs"
# Records, sockets and daemon logs of this run's mounts stay in the run directory.
export WSFS_RUN_DIR=$run/wsfs
export CARGO_HOME_JOBS=$work/cache/cargo-home
results=$run/results.tsv
: >"$results"

# Job commands run with a fixed environment: no user git config, npm offline, no colours.
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null GIT_TERMINAL_PROMPT=0
export npm_config_cache=$work/cache/npm npm_config_update_notifier=false npm_config_fund=false \
    npm_config_audit=false
export CARGO_TERM_COLOR=never CI=true

# ---------------------------------------------------------- preparation ---
# Each prepared tree is $src/JOB, complete when $src/JOB.ready exists (a marker outside the tree).

prep_npm() {
    local d=$src/npm
    [[ -e $src/npm.ready ]] && return
    command -v npm >/dev/null 2>&1 || die "npm is missing (run without --no-install)"
    log "preparing npm: npm install (cache: $work/cache/npm)"
    rm -rf "$d"
    mkdir -p "$d/src"
    cat >"$d/package.json" <<'EOF'
{
  "name": "bench-npm-job",
  "version": "1.0.0",
  "private": true,
  "scripts": { "test": "jest", "build": "tsc -p ." }
}
EOF
    cat >"$d/tsconfig.json" <<'EOF'
{
  "compilerOptions": {
    "target": "ES2020",
    "module": "commonjs",
    "strict": true,
    "esModuleInterop": true,
    "skipLibCheck": true,
    "outDir": "dist",
    "rootDir": "src",
    "types": ["node", "jest"]
  },
  "include": ["src"]
}
EOF
    cat >"$d/jest.config.js" <<'EOF'
/** @type {import('jest').Config} */
module.exports = { preset: "ts-jest", testEnvironment: "node", roots: ["<rootDir>/src"] };
EOF
    cat >"$d/src/app.ts" <<'EOF'
import express, { Request, Response } from "express";

export interface Totals {
  count: number;
  sum: number;
  mean: number;
}

export function totals(values: number[]): Totals {
  const sum = values.reduce((a, b) => a + b, 0);
  return { count: values.length, sum, mean: values.length ? sum / values.length : 0 };
}

export function parseList(query: string): number[] {
  return query
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s.length > 0)
    .map((s) => Number(s))
    .filter((n) => Number.isFinite(n));
}

export function createApp() {
  const app = express();
  app.get("/totals", (req: Request, res: Response) => {
    const q = typeof req.query.values === "string" ? req.query.values : "";
    res.json(totals(parseList(q)));
  });
  return app;
}
EOF
    cat >"$d/src/app.test.ts" <<'EOF'
import { createApp, parseList, totals } from "./app";

describe("totals", () => {
  test("sums and averages", () => {
    expect(totals([1, 2, 3, 4])).toEqual({ count: 4, sum: 10, mean: 2.5 });
  });
  test("empty input", () => {
    expect(totals([])).toEqual({ count: 0, sum: 0, mean: 0 });
  });
});

describe("parseList", () => {
  test("skips blanks and junk", () => {
    expect(parseList("1, 2,,x,3.5")).toEqual([1, 2, 3.5]);
  });
});

describe("app", () => {
  test("has a router", () => {
    const app = createApp();
    expect(typeof app.listen).toBe("function");
  });
});
EOF
    (cd "$d" && npm install --no-audit --no-fund --save-exact --loglevel=error \
        express@4.21.2 typescript@5.6.3 jest@29.7.0 ts-jest@29.2.5 eslint@9.17.0 webpack@5.97.1 \
        @types/express@4.17.21 @types/jest@29.5.14 @types/node@20.17.10) >"$work/npm-install.log" 2>&1 ||
        { tail -20 "$work/npm-install.log" >&2; die "npm install failed"; }
    # The upstream job ran the tests once (as CI would before persisting); its jest cache lived
    # elsewhere, dist/ is part of the workspace.
    (cd "$d" && npx --offline tsc -p . && npx --offline jest --ci --cacheDirectory "$work/cache/jest-prep" src/app.test.ts) \
        >>"$work/npm-install.log" 2>&1 || { tail -20 "$work/npm-install.log" >&2; die "npm job failed on the prepared tree"; }
    rm -rf "$work/cache/jest-prep"
    touch "$src/npm.ready"
}

prep_rust() {
    local d=$jobroot/rust
    [[ -e $src/rust.ready ]] && return
    mounted "$d" && die "$d is mounted"
    log "preparing rust: cargo vendor, cargo build, cargo test --no-run at $d (CARGO_HOME: $CARGO_HOME_JOBS)"
    rm -rf "$d" "$src/rust"
    mkdir -p "$d/src" "$d/tests" "$d/.cargo"
    cat >"$d/Cargo.toml" <<'EOF'
[package]
name = "bench-rust-job"
version = "0.1.0"
edition = "2021"

[dependencies]
serde = { version = "1", features = ["derive"] }
serde_json = "1"
regex = "1"
EOF
    cat >"$d/src/lib.rs" <<'EOF'
//! Parses CI log lines into records.
use regex::Regex;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub level: String,
    pub target: String,
    pub message: String,
    pub millis: Option<u64>,
}

/// Parses `LEVEL target: message (N ms)` lines; other lines are skipped.
///
/// ```
/// let r = bench_rust_job::parse("INFO fetch: chunk 3 (12 ms)");
/// assert_eq!(r.len(), 1);
/// assert_eq!(r[0].millis, Some(12));
/// ```
pub fn parse(text: &str) -> Vec<Record> {
    let re = Regex::new(r"^(TRACE|DEBUG|INFO|WARN|ERROR) ([a-z_:]+): (.*?)(?: \((\d+) ms\))?$").unwrap();
    text.lines()
        .filter_map(|l| re.captures(l))
        .map(|c| Record {
            level: c[1].to_string(),
            target: c[2].to_string(),
            message: c[3].to_string(),
            millis: c.get(4).and_then(|m| m.as_str().parse().ok()),
        })
        .collect()
}

pub fn to_json(records: &[Record]) -> String {
    serde_json::to_string_pretty(records).unwrap()
}

pub fn from_json(s: &str) -> serde_json::Result<Vec<Record>> {
    serde_json::from_str(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_levels_and_millis() {
        let r = parse("WARN store: slow (250 ms)\nnoise\nERROR fuse: eio");
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].millis, Some(250));
        assert_eq!(r[1].level, "ERROR");
    }

    #[test]
    fn json_round_trip() {
        let r = parse("INFO a: b (1 ms)");
        assert_eq!(from_json(&to_json(&r)).unwrap(), r);
    }
}
EOF
    cat >"$d/tests/lines.rs" <<'EOF'
#[test]
fn many_lines() {
    let text: String = (0..1000).map(|i| format!("DEBUG job::step: step {i} ({i} ms)\n")).collect();
    let r = bench_rust_job::parse(&text);
    assert_eq!(r.len(), 1000);
    assert_eq!(r[999].millis, Some(999));
    let v: serde_json::Value = serde_json::from_str(&bench_rust_job::to_json(&r)).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1000);
}
EOF
    (
        cd "$d"
        export CARGO_HOME=$CARGO_HOME_JOBS
        cargo generate-lockfile
        cargo vendor --locked vendor >.cargo/config.toml
        cargo build --offline
        cargo test --offline --no-run
    ) >"$work/rust-build.log" 2>&1 || { tail -20 "$work/rust-build.log" >&2; die "preparing the rust job failed"; }
    mv "$d" "$src/rust"
    mkdir -p "$d"
    touch "$src/rust.ready"
}

prep_git() {
    local d=$src/git
    [[ -e $src/git.ready ]] && return
    rm -rf "$d"
    if [[ -n $git_url ]]; then
        log "preparing git: cloning $git_url"
        git clone -q "$git_url" "$d" || die "git clone $git_url failed"
    else
        log "preparing git: a synthetic repository (4,000 files, 500 commits)"
        git init -q -b main "$d"
        python3 - <<'PY' | git -C "$d" fast-import --quiet
import random, sys
rng = random.Random(17)
out = sys.stdout.buffer
syll = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "qu", "an", "el", "or", "ix", "um"]
vocab = ["".join(rng.choices(syll, k=rng.randint(1, 4))) for _ in range(3000)]
kw = ["fn", "let", "return", "if", "else", "for", "match", "struct", "impl", "pub", "use", "mod"]
tops = ["core", "net", "fs", "ui", "cli", "db", "auth", "cache", "sched", "proto", "util", "docs"]
exts = ["rs", "c", "h", "py", "js", "md"]

def line():
    ind = "    " * rng.randint(0, 3)
    n = rng.randint(2, 12)
    words = [rng.choice(kw) if rng.random() < 0.25 else rng.choice(vocab) for _ in range(n)]
    return ind + " ".join(words) + rng.choice([";", " {", "", " }", ","])

def content():
    n = max(3, int(rng.lognormvariate(4.2, 0.9)))  # median ~67 lines (~2.5 KB)
    return [line() for _ in range(n)]

files = {}
order = []

# ~300 directories: 12 top-level ones, 20 below each, a third of those with 1-2 more below.
dirs = []
for t in tops:
    for s in rng.sample(vocab, 20):
        dirs.append("%s/%s" % (t, s))
        if rng.random() < 0.33:
            dirs += ["%s/%s/%s" % (t, s, x) for x in rng.sample(vocab, rng.randint(1, 2))]

def new_path():
    while True:
        p = "%s/%s.%s" % (rng.choice(dirs), rng.choice(vocab) + str(rng.randint(0, 99)), rng.choice(exts))
        if p not in files:
            return p

def data(b):
    out.write(b"data %d\n" % len(b))
    out.write(b)
    out.write(b"\n")

t0 = 1_600_000_000
for c in range(500):
    changes = []
    if c == 0:
        for _ in range(2500):
            p = new_path()
            files[p] = content()
            order.append(p)
            changes.append(p)
        msg = "initial import"
    else:
        for _ in range(rng.randint(3, 25)):
            p = rng.choice(order)
            ls = files[p]
            for _ in range(rng.randint(1, 6)):
                at = rng.randrange(len(ls) + 1)
                if rng.random() < 0.5 and at < len(ls):
                    ls[at] = line()
                else:
                    ls.insert(at, line())
            changes.append(p)
        for _ in range(3):
            p = new_path()
            files[p] = content()
            order.append(p)
            changes.append(p)
        msg = "%s: %s %s" % (rng.choice(tops), rng.choice(["fix", "add", "rework", "speed up", "document"]),
                             " ".join(rng.choices(vocab, k=rng.randint(2, 6))))
    ts = t0 + c * 3600 + rng.randint(0, 3000)
    out.write(b"commit refs/heads/main\n")
    out.write(b"mark :%d\n" % (c + 1))
    out.write(b"author Bench Dev <dev@example.com> %d +0000\n" % ts)
    out.write(b"committer Bench Dev <dev@example.com> %d +0000\n" % ts)
    data(msg.encode())
    if c > 0:
        out.write(b"from :%d\n" % c)
    for p in dict.fromkeys(changes):
        out.write(b"M 100644 inline %s\n" % p.encode())
        data(("\n".join(files[p]) + "\n").encode())
    out.write(b"\n")
PY
        git -C "$d" -c pack.threads=1 repack -q -a -d -f --window=50 --depth=50
        git -C "$d" prune-packed
        git -C "$d" reset -q --hard main
    fi
    git -C "$d" status --porcelain >/dev/null
    touch "$src/git.ready"
}

for j in "${jobs[@]}"; do "prep_$j"; done
if ((prepare_only)); then
    log "prepared: ${jobs[*]} under $src"
    exit 0
fi

# ---------------------------------------------------------------- helpers ---

drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
}

since() { # T0: seconds since T0 (an EPOCHREALTIME)
    awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f\n", b - a }'
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_http() { # URL: wait up to 10 s for an HTTP answer
    for _ in $(seq 100); do
        curl -s -o /dev/null "$1" && return 0
        sleep 0.1
    done
    return 1
}

# The job directory is emptied, never while something is mounted on it.
reset_dir() {
    local d=$1
    mounted "$d" && die "$d is still mounted"
    rm -rf "$d"
    mkdir -p "$d"
}

# job_cmd JOB: the job's command, in the current directory (its output goes to the run's log).
jest_cache=$run/jest-cache
job_cmd() {
    case $1 in
    npm)
        npx --offline jest --ci --cacheDirectory "$jest_cache" src/app.test.ts && npx --offline tsc -p .
        ;;
    rust)
        CARGO_HOME=$CARGO_HOME_JOBS cargo test --offline
        ;;
    git)
        echo "status: $(git status --porcelain | wc -l) changed"
        echo "log: $(git log --oneline | wc -l) commits"
        ;;
    esac
}

# run_job JOB DIR TAG: runs the command in DIR; sets job_secs (its wall time) and job_note;
# checks the result.
run_job() {
    local job=$1 dir=$2 tag=$3 out=$run/logs/$1-$3.out t0 rc=0 n
    rm -rf "$jest_cache"
    job_note=""
    t0=$EPOCHREALTIME
    (cd "$dir" && job_cmd "$job") >"$out" 2>&1 || rc=$?
    job_secs=$(since "$t0")
    if ((rc != 0)); then
        tail -30 "$out" >&2
        die "$job command failed in $dir ($tag, exit $rc)"
    fi
    case $job in
    rust)
        n=$(grep -c '^ *Compiling ' "$out" || true)
        if ((n > 0)); then
            log "WARNING: $tag: cargo recompiled $n crates (target/ not reused)"
            job_note="recompiled=$n"
        fi
        ;;
    git)
        grep -q '^status: 0 changed' "$out" || die "git status reports changes in $dir ($tag): $(head -3 "$out")"
        job_note=$(grep '^log:' "$out" | tr -d ' ')
        ;;
    esac
}

# Proxy counters: SIGUSR1 makes netproxy write its stats line; prints "bytes_down connections".
proxy_stats() {
    local f=$run/proxy-stats.json before after
    before=$(cat "$f" 2>/dev/null || true)
    kill -USR1 "$proxy_pid"
    for _ in $(seq 200); do
        after=$(cat "$f" 2>/dev/null || true)
        [[ -n $after && $after != "$before" ]] && break
        sleep 0.01
    done
    python3 -c 'import json, sys; d = json.loads(sys.argv[1]); print(d["bytes_down"], d["connections"])' "$after"
}

# nginx request counts by method since line N of the access log: prints "GET:n PUT:n ..."
access_since() {
    tail -n +"$(($1 + 1))" "$run/nginx/access.log" | awk '{ c[$1]++ } END { for (m in c) printf "%s:%d ", m, c[m] }'
}
access_lines() { wc -l <"$run/nginx/access.log"; }

# record JOB NET VARIANT RUN USABLE COMMAND TOTAL DOWN CONNS STATUS_JSON NOTE
record() {
    python3 - "$@" >>"$results" <<'PY'
import json, sys
job, net, variant, run, usable, command, total, down, conns, status, note = sys.argv[1:12]
f = dict(store_bytes="", chunks="", gets="", served="", pushed="", profile="")
if status:
    m = json.load(open(status))["mounts"][0]
    f["store_bytes"] = sum(s.get("bytes", 0) for s in m.get("stores", []))
    f["gets"] = sum(s.get("requests", {}).get("hit", 0) for s in m.get("stores", []))
    f["chunks"] = m["cache"]["fetched"]
    f["served"] = m["bytes_served"]
    w = m.get("warmup", {})
    # Pushed into the page cache: neighbours of read files, and the --prefetch all warm-up.
    f["pushed"] = w.get("neighbour_bytes_stored", 0) + w.get("bytes_stored", 0)
    p = m.get("profile")
    if p:
        f["profile"] = "listed=%d matched=%d replayed=%d recorded=%d" % (
            p["listed"], p["matched"], p["replayed"], p["recorded"])
print("\t".join(str(x) for x in [job, net, variant, run, usable, command, total, down, conns,
      f["store_bytes"], f["chunks"], f["gets"], f["served"], f["pushed"], f["profile"], note]))
PY
}

# ------------------------------------------------------------- measures ---

# eager_once JOB NET RUN
eager_once() {
    local job=$1 net=$2 i=$3 dir=$jobroot/$1 t0 usable cmd b0 b1 c0 c1
    reset_dir "$dir"
    drop_caches
    read -r b0 c0 < <(proxy_stats)
    t0=$EPOCHREALTIME
    curl -sSf "http://$proxy/tars/$job.tar.zst" | zstd -dq | tar -x -C "$dir" ||
        die "eager download/extract of $job failed"
    usable=$(since "$t0")
    run_job "$job" "$dir" "$net-eager-$i"
    cmd=$job_secs note=$job_note
    read -r b1 c1 < <(proxy_stats)
    record "$job" "$net" eager "$i" "$usable" "$cmd" "$(awk -v a="$usable" -v b="$cmd" 'BEGIN { print a + b }')" \
        $((b1 - b0)) $((c1 - c0)) "" "$note"
    log "  $net $job eager #$i: usable ${usable}s, command ${cmd}s, $((b1 - b0)) bytes down"
}

# wait_prefetched DIR: waits until the mount at DIR has dealt with every chunk and its kernel
# warm-up is over (`--prefetch all`).
wait_prefetched() {
    for _ in $(seq 15000); do
        "$WSFS" status "$1" --json | python3 -c '
import json, sys
m = json.load(sys.stdin)["mounts"][0]
c, w = m["cache"], m.get("warmup", {})
sys.exit(0 if c["prefetched"] >= c["chunks"] and w.get("state") in ("done", "stopped", "off") else 1)' && return 0
        sleep 0.02
    done
    return 1
}

# wsfs_once JOB NET VARIANT RUN STORE_URL [attach flags...]; with wait_all=1 in its
# environment, "usable" also waits for the prefetch (for --prefetch all).
wsfs_once() {
    local job=$1 net=$2 variant=$3 i=$4 url=$5 dir=$jobroot/$1 t0 usable cmd b0 b1 c0 c1 a0 status
    shift 5
    local scratch=$run/scratch/$job-$variant-$i cache=$run/cache/$job-$variant-$i
    reset_dir "$dir"
    rm -rf "$scratch" "$cache"
    mkdir -p "$cache"
    drop_caches
    read -r b0 c0 < <(proxy_stats)
    a0=$(access_lines)
    t0=$EPOCHREALTIME
    attached+=("$dir")
    timeout 120 "$WSFS" attach --store "$url" --workspace "$job" --layer build --at "$dir" \
        --scratch "$scratch" --cache-dir "$cache" "$@" >>"$run/logs/attach.log" 2>&1 ||
        { tail -20 "$run/logs/attach.log" >&2; die "wsfs attach of $job failed"; }
    if [[ ${wait_all:-0} == 1 ]]; then
        wait_prefetched "$dir" || die "the prefetch of $job did not finish in 300 s"
    fi
    usable=$(since "$t0")
    run_job "$job" "$dir" "$net-$variant-$i"
    cmd=$job_secs note=$job_note
    status=$run/logs/status-$job-$net-$variant-$i.json
    "$WSFS" status "$dir" --json >"$status"
    read -r b1 c1 < <(proxy_stats)
    local t1=$EPOCHREALTIME
    timeout 120 "$WSFS" umount "$dir" >>"$run/logs/attach.log" 2>&1 ||
        { tail -20 "$run/logs/attach.log" >&2; die "wsfs umount $dir failed"; }
    note="${note:+$note }umount=$(since "$t1")s requests=[$(access_since "$a0")]"
    rm -rf "$scratch" "$cache"
    record "$job" "$net" "$variant" "$i" "$usable" "$cmd" "$(awk -v a="$usable" -v b="$cmd" 'BEGIN { print a + b }')" \
        $((b1 - b0)) $((c1 - c0)) "$status" "$note"
    log "  $net $job $variant #$i: usable ${usable}s, command ${cmd}s, $((b1 - b0)) bytes down"
}

# local_once JOB RUN: the command on a freshly extracted local tree, page cache warm.
local_once() {
    local job=$1 i=$2 dir=$jobroot/$1 cmd
    reset_dir "$dir"
    zstd -dcq "$www/tars/$job.tar.zst" | tar -x -C "$dir"
    run_job "$job" "$dir" "local-$i"
    cmd=$job_secs note=$job_note
    record "$job" - local "$i" 0 "$cmd" "$cmd" 0 0 "" "$note"
    log "  $job local #$i: command ${cmd}s"
}

# -------------------------------------------------------------- persist ---

mkdir -p "$www/tars"
meta=$run/meta.tsv
: >"$meta"
for job in "${jobs[@]}"; do
    root=$src/$job
    rm -rf "${www:?}/$job" "$www/tars/$job.tar.zst"
    log "$job: wsfs persist and tar.zst of $root"
    sync
    t0=$EPOCHREALTIME
    "$WSFS" persist --no-index --store "file://$www/$job" --workspace "$job" --layer build --root "$root" \
        >>"$run/logs/persist.log" 2>&1 || { tail -20 "$run/logs/persist.log" >&2; die "persist of $job failed"; }
    persist_s=$(since "$t0")
    t0=$EPOCHREALTIME
    tar --format=posix -C "$root" -cf - . | zstd -3 -T0 -q -o "$www/tars/$job.tar.zst"
    tar_s=$(since "$t0")
    read -r files dirs links bytes < <(find "$root" -mindepth 1 -printf '%y %s\n' |
        awk '$1 == "f" { f++; b += $2 } $1 == "d" { d++ } $1 == "l" { l++ } END { print f + 0, d + 0, l + 0, b + 0 }')
    store_bytes=$(du -sb --apparent-size "$www/$job" | cut -f1)
    store_objs=$(find "$www/$job" -type f | wc -l)
    tar_bytes=$(stat -c %s "$www/tars/$job.tar.zst")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$job" "$files" "$dirs" "$links" "$bytes" \
        "$store_bytes" "$store_objs" "$tar_bytes" "$persist_s" "$tar_s" >>"$meta"
    log "  $files files, $dirs dirs, $links symlinks, $bytes bytes; store $store_bytes bytes in $store_objs objects (persist ${persist_s}s); tar.zst $tar_bytes bytes (${tar_s}s)"
done

# ---------------------------------------------------------------- nginx ---

mkdir -p "$run/nginx/tmp"
nginx_port=$(free_port)
cat >"$run/nginx/nginx.conf" <<EOF
# bench-jobs.sh: serves $www (stores and tars) on 127.0.0.1:$nginx_port.
user root;
worker_processes 2;
pid $run/nginx/nginx.pid;
error_log $run/nginx/error.log warn;
events { worker_connections 1024; }
http {
    default_type application/octet-stream;
    log_format bench '\$request_method \$status \$body_bytes_sent \$uri \$msec \$request_time \$connection';
    access_log $run/nginx/access.log bench;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    keepalive_timeout 300s;
    client_body_temp_path $run/nginx/tmp/body;
    proxy_temp_path $run/nginx/tmp/proxy;
    fastcgi_temp_path $run/nginx/tmp/fastcgi;
    uwsgi_temp_path $run/nginx/tmp/uwsgi;
    scgi_temp_path $run/nginx/tmp/scgi;
    server {
        listen 127.0.0.1:$nginx_port;
        root $www;
        location / {
            dav_methods PUT DELETE MKCOL;
            create_full_put_path on;
            client_max_body_size 0;
        }
    }
}
EOF
nginx -p "$run/nginx" -c "$run/nginx/nginx.conf" -g 'daemon off;' >"$run/logs/nginx.log" 2>&1 &
nginx_pid=$!
wait_http "http://127.0.0.1:$nginx_port/tars/" || die "nginx did not start: $(tail -5 "$run/nginx/error.log" "$run/logs/nginx.log")"
touch "$run/nginx/access.log"
log "nginx (pid $nginx_pid) serves $www on 127.0.0.1:$nginx_port"

net_flags() {
    case $1 in
    cloud) echo "--delay-ms 10 --conn-mbps 100 --total-mbps 125" ;;
    lan) echo "--delay-ms 1 --conn-mbps 1000 --total-mbps 1250" ;;
    esac
}

start_proxy() {
    local pf=$run/proxy-port
    rm -f "$pf" "$run/proxy-stats.json"
    # shellcheck disable=SC2046
    "$NETPROXY" --listen 127.0.0.1:0 --upstream "127.0.0.1:$nginx_port" $(net_flags "$1") \
        --port-file "$pf" --stats-file "$run/proxy-stats.json" >"$run/logs/proxy-$1.log" 2>&1 &
    proxy_pid=$!
    for _ in $(seq 100); do [[ -s $pf ]] && break; sleep 0.1; done
    proxy=$(head -1 "$pf" 2>/dev/null) || true
    [[ -n $proxy ]] || die "netproxy did not start: $(tail -5 "$run/logs/proxy-$1.log")"
    wait_http "http://$proxy/tars/" || die "no answer through netproxy at $proxy"
    log "netproxy ($1: $(net_flags "$1")) at $proxy (pid $proxy_pid)"
}

# ---------------------------------------------------------------- runs ---

profile_how=()
for net in "${nets[@]}"; do
    start_proxy "$net"
    for job in "${jobs[@]}"; do
        url=http://$proxy/$job/
        log "$net / $job: eager, wsfs, wsfs --profile (best of $runs)"
        for i in $(seq "$runs"); do eager_once "$job" "$net" "$i"; done
        for i in $(seq "$runs"); do wsfs_once "$job" "$net" wsfs "$i" "$url"; done
        # The profile: a first run with no stored profile records it; it is stored at unmount.
        rm -rf "${www:?}/$job/profiles"
        wsfs_once "$job" "$net" wsfs-record 1 "$url" --profile "$job"
        if [[ -s $www/$job/profiles/$job ]]; then
            how="stored by the recording run through the HTTP store (nginx WebDAV PUT)"
        else
            log "the profile was not stored through the HTTP store; recording again against file://$www/$job"
            wsfs_once "$job" "$net" wsfs-record-file 1 "file://$www/$job" --profile "$job"
            [[ -s $www/$job/profiles/$job ]] || die "no profile stored at $www/$job/profiles/$job"
            how="recorded by a run against file://$www/$job (the HTTP store refused the PUT)"
        fi
        profile_how+=("$net/$job: $how")
        for i in $(seq "$runs"); do wsfs_once "$job" "$net" wsfs-profile "$i" "$url" --profile "$job"; done
        # For the reading: the command with every chunk already fetched (no fetch waits).
        for i in $(seq "$runs"); do wait_all=1 wsfs_once "$job" "$net" wsfs-all "$i" "$url" --prefetch all; done
    done
    stop_pid "$proxy_pid"
    proxy_pid=
done
for job in "${jobs[@]}"; do
    log "$job: command on a local extracted tree (page cache warm)"
    for i in $(seq "$runs"); do local_once "$job" "$i"; done
done
reset_dir "$jobroot/rust" 2>/dev/null || true
for job in npm git; do rm -rf "${jobroot:?}/$job"; done

# --------------------------------------------------------------- report ---

machine="$(nproc) cores ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM, kernel $(uname -r)"
table=$(RUNS=$runs CMDLINE="$cmdline" MACHINE="$machine" VERSION="$version" \
    LOAD="$(cut -d' ' -f1-3 /proc/loadavg)" PROFILE_HOW="$(printf '%s\n' "${profile_how[@]}")" \
    NETS="${nets[*]}" python3 - "$results" "$meta" <<'PY'
import os, sys, time
results, meta = sys.argv[1], sys.argv[2]
cols = ["job", "net", "variant", "run", "usable", "command", "total", "down", "conns",
        "store_bytes", "chunks", "gets", "served", "pushed", "profile", "note"]
rows = [dict(zip(cols, l.rstrip("\n").split("\t"))) for l in open(results) if l.strip()]
for r in rows:
    for k in ("usable", "command", "total"):
        r[k] = float(r[k])
info = {}
for l in open(meta):
    job, files, dirs, links, nbytes, sbytes, sobjs, tbytes, ps, ts = l.rstrip("\n").split("\t")
    info[job] = dict(files=int(files), dirs=int(dirs), links=int(links), bytes=int(nbytes),
                     store=int(sbytes), objs=int(sobjs), tar=int(tbytes), persist=float(ps), tar_s=float(ts))

def mb(n):
    return "%.1f MB" % (int(n) / 1e6) if n not in ("", None) else "-"

def best(job, net, variant):
    c = [r for r in rows if r["job"] == job and r["net"] == net and r["variant"] == variant]
    return min(c, key=lambda r: r["total"]) if c else None

nets_desc = {"cloud": "cloud: 10 ms each way, 100 MB/s per connection, 125 MB/s in total",
             "lan": "lan: 1 ms each way, 1000 MB/s per connection, 1250 MB/s in total"}
what = {"npm": "`npx jest --ci src/app.test.ts && npx tsc -p .`",
        "rust": "`cargo test --offline` (vendored deps, target/ from upstream)",
        "git": "`git status --porcelain; git log --oneline | wc -l`"}
out = []
out.append("Measured by `%s` on %s UTC, wsfs %s, best of %s runs (by total)." % (
    os.environ["CMDLINE"], time.strftime("%Y-%m-%d %H:%M", time.gmtime()), os.environ["VERSION"], os.environ["RUNS"]))
out.append("Machine: %s. Load average at the end: %s." % (os.environ["MACHINE"], os.environ["LOAD"]))
how = [l for l in os.environ["PROFILE_HOW"].splitlines() if l]
kinds = {l.split(": ", 1)[1] for l in how}
if len(kinds) == 1:
    out.append("Profiles: every one was %s." % kinds.pop())
else:
    out.append("Profiles: " + "; ".join(how) + ".")
out.append("")
for net in os.environ["NETS"].split():
    for job in info:
        m = info[job]
        e = best(job, net, "eager")
        if not e:
            continue
        out.append("**%s, %s** — %s. Workspace: %d files, %d dirs, %d symlinks, %s; tar.zst %s; "
                   "wsfs store %s in %d objects (persist %.1f s)." % (
                       job, nets_desc[net], what[job], m["files"], m["dirs"], m["links"], mb(m["bytes"]),
                       mb(m["tar"]), mb(m["store"]), m["objs"], m["persist"]))
        out.append("")
        out.append("| variant | usable | command | total | total vs eager | downloaded | served (+ pushed) | downloaded / read | GETs (chunks) | connections |")
        out.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        loc = best(job, "-", "local")
        labels = [("eager", "eager: curl \\| zstd -d \\| tar -x, then the command"),
                  ("wsfs", "wsfs attach (cold: empty caches), then the command"),
                  ("wsfs-record", "wsfs attach --profile, first run (records the profile)"),
                  ("wsfs-record-file", "the same against file:// (records the profile)"),
                  ("wsfs-profile", "wsfs attach --profile (replays the stored profile)"),
                  ("wsfs-all", "wsfs attach --prefetch all, waited for (usable = attach + every chunk fetched)")]
        for variant, label in labels:
            r = best(job, net, variant)
            if not r:
                continue
            served = int(r["served"]) if r["served"] else None
            # What the job read lies between served (READ replies) and served + pushed (the
            # pushed neighbours may or may not have been read from the page cache).
            amp = "-"
            if served:
                pushed, down = int(r["pushed"]), int(r["down"])
                amp = "%.2fx" % (down / served)
                if pushed:
                    amp = "%.2f-%s" % (down / (served + pushed), amp)
            gets = "%s (%s)" % (r["gets"], r["chunks"]) if r["gets"] else "1"
            read = "%s (+ %s)" % (mb(served), mb(r["pushed"])) if served is not None else "-"
            out.append("| %s | %.2f s | %.2f s | %.2f s | %.2fx | %s | %s | %s | %s | %s |" % (
                label, r["usable"], r["command"], r["total"], r["total"] / e["total"], mb(r["down"]),
                read, amp, gets, r["conns"]))
        if loc:
            out.append("| the command on a local extracted tree, page cache warm | - | %.2f s | %.2f s | %.2fx | - | - | - | - | - |" % (
                loc["command"], loc["total"], loc["total"] / e["total"]))
        out.append("")
out.append("All samples (seconds; bytes: `down` through the proxy, `fetched` = stores[].bytes, `served` ="
           " bytes_served, `pushed` = warmup.neighbour_bytes_stored + warmup.bytes_stored, from `wsfs status --json`):")
out.append("")
out.append("```")
out.append("job  net   variant          run usable  command total   down      conns fetched   gets chunks served    pushed    profile / notes")
for r in rows:
    out.append("%-4s %-5s %-16s %-3s %-7.3f %-7.3f %-7.3f %-9s %-5s %-9s %-4s %-6s %-9s %-9s %s" % (
        r["job"], r["net"], r["variant"], r["run"], r["usable"], r["command"], r["total"], r["down"],
        r["conns"], r["store_bytes"], r["gets"], r["chunks"], r["served"], r["pushed"],
        (r["profile"] + " " + r["note"]).strip()))
out.append("```")
print("\n".join(out))
PY
)
printf '\n%s\n\n' "$table"

if ((do_doc)); then
    BLOCK="$table" python3 "$repo/scripts/doc-block.py" "$repo/docs/benchmarks.md" bench-jobs \
        "Real jobs (scripts/bench-jobs.sh)"
    log "tables written to docs/benchmarks.md"
fi
log "done"
