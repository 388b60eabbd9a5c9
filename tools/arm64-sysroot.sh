#!/usr/bin/env bash
# Unpack Debian arm64 development packages into a folder for cross builds (apt-get download + dpkg-deb -x: never
# installed, nothing runs). The first run adds the arm64 architecture to dpkg, as root. Kept while the same
# packages are asked for.
#
#   tools/arm64-sysroot.sh DEST PACKAGE...      e.g. tools/arm64-sysroot.sh build/sysroot libjansson-dev:arm64
set -euo pipefail
die() { echo "arm64-sysroot: $*" >&2; exit 1; }
[ $# -ge 2 ] || die "usage: tools/arm64-sysroot.sh DEST PACKAGE..."
dest=$1; shift
[ "$(cat "$dest/.packages" 2>/dev/null)" = "$*" ] && exit 0
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    [ "$(id -u)" -eq 0 ] || die "run once as root: dpkg --add-architecture arm64 && apt-get update"
    dpkg --add-architecture arm64
fi
apt-cache show "$@" >/dev/null 2>&1 || apt-get update -qq
rm -rf "$dest" && mkdir -p "$dest/.debs"
(cd "$dest/.debs" && apt-get download -qq "$@") || die "apt-get download $* failed"
for deb in "$dest/.debs"/*.deb; do dpkg-deb -x "$deb" "$dest"; done
rm -rf "$dest/.debs"
echo "$*" > "$dest/.packages"
