#!/usr/bin/env bash
# Installs wsfs on a machine executor (as root):
#   PREFIX/bin/wsfs                 the binary
#   SBINDIR/mount.fuse.wsfs         mount(8)'s helper: `mount -t fuse.wsfs`, fstab lines
#   UNITDIR/wsfs@.service           systemd template: wsfs@NAME mounts /etc/wsfs/NAME.toml
#   CONFDIR/                        config files (an example is put there)
#   DOCDIR/                         the operations docs the unit points to
#
# usage: scripts/install.sh [--bin PATH] [--prefix DIR] [--sbindir DIR] [--unitdir DIR]
#                           [--confdir DIR] [--uninstall]
# Without --bin it builds target/release/wsfs (cargo build --release) first.
# --uninstall removes what this script installs; it never touches config files you wrote.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bin="" prefix=/usr/local sbindir=/sbin unitdir=/etc/systemd/system confdir=/etc/wsfs uninstall=0
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --prefix) prefix="$2"; shift 2 ;;
    --sbindir) sbindir="$2"; shift 2 ;;
    --unitdir) unitdir="$2"; shift 2 ;;
    --confdir) confdir="$2"; shift 2 ;;
    --uninstall) uninstall=1; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
docdir="$prefix/share/doc/wsfs"
systemd_running() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

if [ "$uninstall" = 1 ]; then
  rm -f "$sbindir/mount.fuse.wsfs" "$unitdir/wsfs@.service" "$prefix/bin/wsfs" \
        "$confdir/example.toml.sample"
  rm -rf "$docdir"
  rmdir "$confdir" 2>/dev/null || true
  if systemd_running; then systemctl daemon-reload; fi
  echo "wsfs uninstalled (config files in $confdir, if any, were kept)"
  exit 0
fi

if [ -z "$bin" ]; then
  cargo build --release --locked
  bin=target/release/wsfs
fi
[ -x "$bin" ] || { echo "install.sh: $bin is not an executable (build it or pass --bin)" >&2; exit 2; }

install -D -m 0755 "$bin" "$prefix/bin/wsfs"
mkdir -p "$sbindir"
ln -sfn "$prefix/bin/wsfs" "$sbindir/mount.fuse.wsfs"
install -d -m 0755 "$unitdir"
sed "s#/usr/local/bin/wsfs#$prefix/bin/wsfs#g; s#https://github.com/wsfs/wsfs/blob/main/docs/operations.md#file://$docdir/operations.md#" \
  dist/systemd/wsfs@.service > "$unitdir/wsfs@.service"
chmod 0644 "$unitdir/wsfs@.service"
install -d -m 0755 "$confdir"
install -m 0644 dist/wsfs.example.toml "$confdir/example.toml.sample"
install -d -m 0755 "$docdir"
install -m 0644 docs/operations.md docs/failure-model.md docs/security.md dist/fstab.example "$docdir/"
if systemd_running; then systemctl daemon-reload; fi
cat <<MSG
wsfs installed:
  $prefix/bin/wsfs
  $sbindir/mount.fuse.wsfs   (mount -t fuse.wsfs WORKSPACE DIR -o store=URL,layer=NAME)
  $unitdir/wsfs@.service     (write $confdir/NAME.toml, then: systemctl start wsfs@NAME)
  $confdir/example.toml.sample
MSG
