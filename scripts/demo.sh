#!/usr/bin/env bash
# wsfs demo on an embedded default: two local file:// stores, persist a sample tree, verify,
# mount, read, show a failover (a chunk deleted from the primary is served by the secondary) and
# an EIO (the chunk deleted everywhere), then unmount. Run as root on Debian:
#   bash scripts/demo.sh
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
command -v fusermount3 >/dev/null || { apt-get update -qq && apt-get install -y -qq fuse3; }
command -v cargo >/dev/null || { echo "demo: cargo is needed (rustup.rs)" >&2; exit 2; }
cargo build --release --quiet
W="$repo/target/release/wsfs"
d=$(mktemp -d /tmp/wsfs-demo.XXXXXX)
export WSFS_RUN_DIR="$d/run"
cleanup() { "$W" umount --force "$d/mnt" >/dev/null 2>&1 || true; rm -rf "$d"; }
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "a sample tree"
mkdir -p "$d/src/bin" "$d/src/docs" "$d/src/empty"
printf '#!/bin/sh\necho built\n' >"$d/src/bin/build.sh"; chmod +x "$d/src/bin/build.sh"
echo "hello from the upstream job" >"$d/src/docs/readme.txt"
head -c 8000000 /dev/urandom >"$d/src/artifact.bin"
ln -s docs/readme.txt "$d/src/link"
find "$d/src" | sed "s|$d/src|.|" | sort

step "persist to two stores (double-write; the ref is committed last)"
"$W" persist --store "file://$d/primary" --store "file://$d/secondary" --workspace demo --layer build --root "$d/src"

step "verify: every store complete"
"$W" verify --store "file://$d/primary" --store "file://$d/secondary" --workspace demo --layer build

step "mount (returns when the tree is ready)"
mkdir -p "$d/mnt"
time "$W" mount --store "file://$d/primary" --store "file://$d/secondary" --workspace demo --layer build "$d/mnt"
ls -la "$d/mnt" "$d/mnt/bin"
cat "$d/mnt/docs/readme.txt"

step "failover: delete the artifact's chunks from the primary, read it again (new mount, cold caches)"
"$W" umount "$d/mnt"
rm -rf "$d/primary/chunks"
"$W" mount --store "file://$d/primary" --store "file://$d/secondary" --workspace demo --layer build "$d/mnt"
cmp "$d/mnt/artifact.bin" "$d/src/artifact.bin" && echo "artifact.bin: identical (served by the secondary)"
"$W" status "$d/mnt"

step "EIO: delete the chunks everywhere"
"$W" umount "$d/mnt"
rm -rf "$d/secondary/chunks"
"$W" mount --store "file://$d/primary" --store "file://$d/secondary" --workspace demo --layer build "$d/mnt"
if cat "$d/mnt/artifact.bin" >/dev/null; then echo "demo: BUG: read succeeded" >&2; exit 1; fi
echo "(cat failed with EIO, as it must; stat still works:)"
stat -c '%n %s bytes %A' "$d/mnt/artifact.bin"
"$W" status "$d/mnt"

step "unmount"
"$W" umount "$d/mnt"
echo "done"
