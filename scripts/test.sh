#!/usr/bin/env bash
# The one command that runs the whole wsfs test suite (as root, on Debian):
#
#   scripts/test.sh [--quick] [-- ARGS...]
#
#   --quick   skip `cargo fmt --check` and `cargo clippy`
#   ARGS      passed to the test binaries (e.g. a name filter)
#
# Env: WSFS_TEST_THREADS (default 4) sets RUST_TEST_THREADS.
#
# Installs what is missing (fuse3, moto, fake-gcs-server, rustfmt/clippy),
# starts private moto + fake-gcs-server instances on free loopback ports (own
# state dir, so servers started by hand are left alone), exports their env (see
# scripts/servers.sh), and on exit stops them and kills a still-running step.
#
# Safe on a CI machine with live workspaces mounted: every test works under this
# run's own directory (TMPDIR=<state>/tmp), and the cleanup detaches only mounts
# under it and kills only wsfs processes whose command line names it. To prove
# that, a sentinel workspace is mounted outside that directory before the tests
# and must still serve its files, byte for byte, after them.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

quick=0
extra=()
while (($#)); do
    case $1 in
    --quick) quick=1 ;;
    --)
        shift
        extra=("$@")
        break
        ;;
    -h | --help)
        sed -n '2,16p' "$0"
        exit 0
        ;;
    *)
        echo "test.sh: unknown argument: $1 (try --help)" >&2
        exit 2
        ;;
    esac
    shift
done

banner() {
    printf '\n==================== %s ====================\n' "$*"
}

# shellcheck source=scripts/servers.sh
source "$repo/scripts/servers.sh"

WSFS_TEST_STATE=
WSFS_TEST_TMP=
sentinel=
# Each step runs in the background and is waited for, so that a signal to this
# script is acted on at once instead of after the step finishes.
step_pid=
run_step() {
    local rc=0
    "$@" &
    step_pid=$!
    wait "$step_pid" || rc=$?
    step_pid=
    return "$rc"
}

# All descendants of pid $1 (children first listed after their parent).
descendants() {
    local c
    local -a kids=()
    # /proc/PID/task/TID/children: space-separated child pids of each thread.
    read -r -a kids < <(cat /proc/"$1"/task/*/children 2>/dev/null | tr '\n' ' ') || true
    for c in "${kids[@]}"; do
        echo "$c"
        descendants "$c"
    done
}

# True if any of the given pids is alive and not a zombie.
any_alive() {
    local p
    for p in "$@"; do
        _wsfs_starttime "$p" >/dev/null && return 0
    done
    return 1
}

kill_step() {
    local pids i
    [[ -n $step_pid ]] || return 0
    mapfile -t pids < <(
        echo "$step_pid"
        descendants "$step_pid"
    )
    echo "test.sh: stopping the running step (pids: ${pids[*]})" >&2
    kill -TERM "${pids[@]}" 2>/dev/null
    for ((i = 0; i < 50; i++)); do
        any_alive "${pids[@]}" || break
        sleep 0.1
    done
    kill -KILL "${pids[@]}" 2>/dev/null
    wait "$step_pid" 2>/dev/null
    step_pid=
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM HUP
    banner "cleanup"
    # Abort this run's FUSE mounts first so nothing stays blocked on them,
    # then stop a still-running step and the wsfs processes the tests started,
    # then catch mounts made meanwhile. Only under this run's directory.
    if [[ -n $WSFS_TEST_TMP ]]; then
        wsfs_detach_mounts_under "$WSFS_TEST_TMP"
        kill_step
        wsfs_kill_under "$WSFS_TEST_TMP"
        wsfs_detach_mounts_under "$WSFS_TEST_TMP"
        if [[ -z $(wsfs_list_mounts_under "$WSFS_TEST_TMP") ]]; then
            rm -rf "$WSFS_TEST_TMP"
        else
            echo "test.sh: warning: mounts left under $WSFS_TEST_TMP; not removing it" >&2
        fi
    else
        kill_step
    fi
    declare -F sentinel_stop >/dev/null && sentinel_stop
    if [[ -n $WSFS_TEST_STATE ]] && ! wsfs_servers_stop; then
        echo "test.sh: warning: could not stop all test servers (state: $WSFS_TEST_STATE)" >&2
    fi
    if ((rc == 0)); then
        banner "ALL STEPS PASSED"
    else
        banner "FAILED (exit $rc)"
    fi
    # One closing line with the totals over every test binary (libtest's own last line is that of
    # the last binary run, which may be a target with no tests).
    if [[ -n ${test_log:-} && -f $test_log ]]; then
        awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
             END { printf "tests: %d passed, %d failed\n", p, f }' "$test_log"
        rm -f "$test_log"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

WSFS_TEST_STATE=$(mktemp -d /tmp/wsfs-test-run.XXXXXX)
export WSFS_TEST_STATE
WSFS_TEST_TMP=$WSFS_TEST_STATE/tmp
mkdir -p "$WSFS_TEST_TMP"
# Tests that read a mount as another user (nobody) need to traverse to it; each test's own
# directory is private (0700) until such a test opens it.
chmod 755 "$WSFS_TEST_STATE" "$WSFS_TEST_TMP"

# ------------------------------------------------------------------ sentinel ---
# An unrelated workspace, mounted before the tests outside their directory, as a
# live job's would be. The run fails if the suite disturbed it.
wsfs_bin=$repo/target/debug/wsfs

sentinel_start() {
    local i
    sentinel=$(mktemp -d /tmp/wsfs-sentinel.XXXXXX)
    mkdir -p "$sentinel/src/sub" "$sentinel/mnt"
    for i in $(seq 1 40); do
        head -c $((i * 997)) /dev/urandom >"$sentinel/src/sub/f$i"
    done
    head -c 3000000 /dev/urandom >"$sentinel/src/big.bin"
    WSFS_RUN_DIR=$sentinel/run "$wsfs_bin" persist --no-index --store "file://$sentinel/store" \
        --workspace sentinel --layer l1 --root "$sentinel/src" >/dev/null
    WSFS_RUN_DIR=$sentinel/run "$wsfs_bin" mount --store "file://$sentinel/store" \
        --workspace sentinel --layer l1 "$sentinel/mnt"
}

# Compares the sentinel mount with its source, bounded: on a hang, the sentinel's own
# connection is aborted (which wakes the comparison) and the check fails.
sentinel_check() {
    local pid i
    diff -r "$sentinel/src" "$sentinel/mnt" &
    pid=$!
    for ((i = 0; i < 600; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid"
            return $?
        fi
        sleep 0.1
    done
    echo "test.sh: the sentinel mount does not answer" >&2
    sentinel_abort
    wait "$pid"
    return 1
}

sentinel_abort() {
    local line id devmm major minor
    while read -r line; do
        read -r id devmm _ <<<"$line"
        major=${devmm%%:*}
        minor=${devmm#*:}
        echo 1 >"/sys/fs/fuse/connections/$(((major << 20) | minor))/abort" 2>/dev/null
    done < <(wsfs_list_mounts_under "$sentinel")
}

sentinel_stop() {
    [[ -n $sentinel && -d $sentinel ]] || return 0
    if [[ -n $(wsfs_list_mounts_under "$sentinel") ]]; then
        WSFS_RUN_DIR=$sentinel/run timeout 30 "$wsfs_bin" umount "$sentinel/mnt" \
            || WSFS_RUN_DIR=$sentinel/run timeout 30 "$wsfs_bin" umount --force "$sentinel/mnt"
    fi
    wsfs_kill_under "$sentinel"
    wsfs_detach_mounts_under "$sentinel"
    if [[ -z $(wsfs_list_mounts_under "$sentinel") ]]; then
        rm -rf "$sentinel"
    fi
    sentinel=
}

banner "setup: toolchain"
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add rustfmt clippy || echo "test.sh: warning: rustup component add failed" >&2
fi
cargo --version
rustc --version

banner "setup: test servers"
wsfs_servers_start
# shellcheck source=/dev/null
source "$(wsfs_servers_env_file)"
echo "S3 (moto):              $WSFS_TEST_S3_ENDPOINT"
echo "GCS (fake-gcs-server):  $WSFS_TEST_GCS_ENDPOINT"
[[ -e /dev/fuse ]] || echo "test.sh: warning: /dev/fuse is missing; FUSE tests will fail" >&2

export RUST_BACKTRACE=${RUST_BACKTRACE:-1}
# Persists the tests make keep their index under the tests' own directory, never the machine's
# /var/cache/wsfs (each test's helpers also point it into the test's scratch directory).
export WSFS_PERSIST_INDEX_DIR=$WSFS_TEST_TMP/persist-index

if ((quick == 0)); then
    banner "cargo fmt --all -- --check"
    run_step cargo fmt --all -- --check

    banner "cargo clippy --all-targets -- -D warnings"
    run_step cargo clippy --all-targets -- -D warnings
fi

banner "cargo build (and a sentinel workspace mounted outside the tests' directory)"
run_step cargo build --bins
sentinel_start
echo "sentinel mounted at $sentinel/mnt"

threads=${WSFS_TEST_THREADS:-4}
# Thread count through the environment, not `--test-threads`: the criterion bench target (run once
# in test mode by --all-targets) rejects libtest's flags.
export RUST_TEST_THREADS=$threads
banner "RUST_TEST_THREADS=$threads cargo test --no-fail-fast --all-targets ${extra[*]:+-- ${extra[*]}}"
test_log=$(mktemp /tmp/wsfs-test-log.XXXXXX)
run_tests() {
    TMPDIR=$WSFS_TEST_TMP cargo test --no-fail-fast --all-targets ${extra[@]:+-- "${extra[@]}"} 2>&1 | tee "$test_log"
    return "${PIPESTATUS[0]}"
}
tests_rc=0
run_step run_tests || tests_rc=$?

banner "the sentinel workspace still serves after the suite"
if sentinel_check; then
    echo "sentinel intact: $sentinel/mnt serves every file of its source, byte for byte"
else
    echo "test.sh: FAILED: the suite disturbed a wsfs mount it did not create ($sentinel/mnt)" >&2
    exit 1
fi
exit "$tests_rc"
