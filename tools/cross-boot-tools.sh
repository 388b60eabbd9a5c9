#!/usr/bin/env bash
# The static stage-1 tools (csrc/boot: phase-boot, alias phase-verify, phase-fetch, phase-discover, phase-dht)
# built for aarch64 on this x86_64 Debian machine: Debian's cross gcc (gcc-aarch64-linux-gnu), the bundled
# libsodium built for aarch64 by cmake/libsodium.cmake, jansson and c-ares from Debian's arm64 -dev packages
# (unpacked by tools/arm64-sysroot.sh, never installed). Runs here under qemu-user (qemu-user-static + binfmt).
#
#   tools/cross-boot-tools.sh [OUT]          (default build/boot-aarch64)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(realpath -m "${1:-$ROOT/build/boot-aarch64}")
TRIPLE=aarch64-linux-gnu
SYSROOT=$ROOT/build/arm64-sysroot
command -v $TRIPLE-gcc >/dev/null || { echo "cross-boot-tools: $TRIPLE-gcc not found (apt-get install gcc-$TRIPLE)" >&2; exit 1; }
"$ROOT/tools/arm64-sysroot.sh" "$SYSROOT" libjansson-dev:arm64 libc-ares-dev:arm64
make -s -C "$ROOT/csrc/boot" O="$OUT" CC=$TRIPLE-gcc STRIP=$TRIPLE-strip NM=$TRIPLE-nm HOST=$TRIPLE \
    PYTHON="${PYTHON:-python3}" SODIUM_PREFIX="$ROOT/build/libsodium-boot-aarch64" \
    CPPFLAGS="-isystem $SYSROOT/usr/include -isystem $SYSROOT/usr/include/$TRIPLE" \
    LDFLAGS="-L$SYSROOT/usr/lib/$TRIPLE"
echo "$OUT/phase-boot"
