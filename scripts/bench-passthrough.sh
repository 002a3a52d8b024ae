#!/usr/bin/env bash
# Focused passthrough measurement (the method of scripts/bench.sh 1/8, 2/8 and 2b/8, alone):
# a 512 MiB random file; warm re-read and first read from the disk cache, with and without
# --passthrough, against local disk (warm and cold). Best of the 3 lines per key is reported.
# Usage (root): bash scripts/bench-passthrough.sh
set -euo pipefail
W=${WSFS:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/release/wsfs}
T=/var/tmp/ptbench; rm -rf $T; mkdir -p $T/src $T/mnt
export WSFS_RUN_DIR=$T/run
# Whatever happens, leave no mount behind (only this script's own).
trap '"$W" umount --force --if-mounted "$T/mnt" >/dev/null 2>&1 || true' EXIT
head -c $((512<<20)) /dev/urandom > $T/src/big.bin
$W persist --no-index --store file://$T/store --workspace b --layer big --root $T/src >/dev/null
dd_s() { local t0=$EPOCHREALTIME; dd if="$1" of=/dev/null bs=1M status=none; awk -v a=$t0 -v b=$EPOCHREALTIME 'BEGIN{printf "%.0f", 512*1.048576/(b-a)}'; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
m() { $W mount --store file://$T/store --workspace b --layer big "$@" $T/mnt 2>/dev/null; }
u() { $W umount $T/mnt >/dev/null; }
# fill the disk cache
m --cache-dir $T/cache; dd_s $T/mnt/big.bin >/dev/null; for i in $(seq 100); do [ "$(du -sb $T/cache | cut -f1)" -ge $((512<<20)) ] && break; sleep 0.1; done; u
dd_s $T/src/big.bin >/dev/null
for r in 1 2 3; do
  m; dd_s $T/mnt/big.bin >/dev/null; echo "warm_mount $(dd_s $T/mnt/big.bin)"; u
  echo "warm_local $(dd_s $T/src/big.bin)"
  drop; m --cache-dir $T/cache; echo "diskcache $(dd_s $T/mnt/big.bin)"; u
  drop; echo "local_cold $(dd_s $T/src/big.bin)"
done
m --cache-dir $T/cache --passthrough; dd_s $T/mnt/big.bin >/dev/null; u   # make the copy
for r in 1 2 3; do
  drop; m --cache-dir $T/cache --passthrough; echo "pt_diskcache $(dd_s $T/mnt/big.bin)"; echo "pt_warm $(dd_s $T/mnt/big.bin)"; u
done
"$W" umount --if-mounted "$T/mnt" >/dev/null 2>&1 || true
rm -rf "$T"
