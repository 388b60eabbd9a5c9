#!/bin/bash
# Build the stage-2 node image for aarch64 on this x86_64 machine: busybox (busybox-static:arm64), Debian's
# arm64 Python 3.11 with its standard library (trimmed) and the shared libraries it and the wheels link, the
# aarch64 pyphase wheel with its dependencies' aarch64 wheels (pip install --target, nothing runs), the NIC
# modules of Debian's arm64 kernel and the same init as the x86_64 image. Debian packages are unpacked by
# tools/arm64-sysroot.sh (apt-get download + dpkg-deb -x: never installed).
#
#   initramfs/build-stage2-aarch64.sh --wheel PYPHASE-AARCH64.whl [--out FILE] [--kernel-out FILE]
#   --kernel-out: also copy the arm64 kernel (vmlinuz) whose modules the image carries there.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
. "$HERE/lib.sh"

OUT="$HERE/build/stage2-aarch64.cpio.gz" WHEEL= KOUT= PY=${PYTHON:-python3}
while [ $# -gt 0 ]; do
    case $1 in
        --wheel) WHEEL=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --kernel-out) KOUT=$2; shift 2 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) die "unknown argument $1" ;;
    esac
done
[ -f "$WHEEL" ] || die "--wheel: the aarch64 pyphase wheel is required (tools/build-wheels.sh aarch64)"
case $(basename "$WHEEL") in *cp311*aarch64.whl) ;; *) die "$WHEEL is not a cp311 aarch64 wheel" ;; esac
need cpio cpio; need gzip gzip; need depmod kmod; need readelf binutils

# Debian arm64 packages: the kernel (the one linux-image-arm64 points at), busybox, Python and the libraries
# the interpreter and the wheels may link (only those readelf finds needed are packed).
KPKG=$(apt-cache depends linux-image-arm64:arm64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
[ -n "$KPKG" ] || { apt-get update -qq; KPKG=$(apt-cache depends linux-image-arm64:arm64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}'); }
[ -n "$KPKG" ] || die "no linux-image-arm64 in apt's lists (dpkg --add-architecture arm64 && apt-get update)"
SYS=$REPO/build/arm64-node
"$REPO/tools/arm64-sysroot.sh" "$SYS" "${KPKG%:arm64}:arm64" busybox-static:arm64 python3.11-minimal:arm64 \
    libpython3.11-minimal:arm64 libpython3.11-stdlib:arm64 libc6:arm64 libssl3:arm64 libffi8:arm64 zlib1g:arm64 \
    libexpat1:arm64 libsqlite3-0:arm64 libbz2-1.0:arm64 liblzma5:arm64 libuuid1:arm64 \
    libcrypt1:arm64 libstdc++6:arm64 libgcc-s1:arm64
KVER=$(ls "$SYS/lib/modules" | head -n 1)
[ -f "$SYS/boot/vmlinuz-$KVER" ] || die "no arm64 kernel unpacked in $SYS"
[ -f "$SYS/lib/modules/$KVER/modules.dep" ] || depmod -b "$SYS" "$KVER"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/root
LIBDIR=/lib/aarch64-linux-gnu
mkdir -p "$ROOT"/{bin,dev,proc,sys,run,tmp,etc,usr/bin,opt/phase/site,lib} "$ROOT$LIBDIR"

install_busybox "$ROOT" "$SYS/bin/busybox"
copy_nic_modules "$ROOT" "$KVER" "$SYS" virtio_mmio virtio_pci virtio_net
[ -z "$KOUT" ] || { mkdir -p "$(dirname "$KOUT")"; cp "$SYS/boot/vmlinuz-$KVER" "$KOUT"; }

# Interpreter and stdlib, trimmed as in the x86_64 image.
VER=3.11
cp "$SYS/usr/bin/python$VER" "$ROOT/usr/bin/python3"
# No __pycache__ (compiled below) and no modules that would pull in curses, readline, NIS or dbm libraries.
copy_stdlib "$SYS/usr/lib/python$VER" "$ROOT/usr/lib/python$VER" --exclude='__pycache__' \
    --exclude='./lib-dynload/_curses*' --exclude='./lib-dynload/readline*' --exclude='./lib-dynload/nis*' \
    --exclude='./lib-dynload/_dbm*' --exclude='./lib-dynload/_gdbm*'
# Debian's sysconfig module is split by multiarch tuple.
ls "$ROOT/usr/lib/python$VER"/_sysconfigdata__linux_aarch64-linux-gnu.py >/dev/null || die "arm64 stdlib incomplete"

# pyphase and its dependencies, aarch64 wheels for CPython 3.11 (fetched by pip from PyPI, nothing built or run).
"$PY" -m pip install -q --disable-pip-version-check --no-compile --only-binary :all: --implementation cp \
    --python-version "$VER" --platform manylinux_2_28_aarch64 --platform manylinux_2_26_aarch64 \
    --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 --target "$ROOT/opt/phase/site" "$WHEEL" \
    || die "pip could not install $WHEEL with its dependencies for aarch64"
rm -rf "$ROOT/opt/phase/site/bin"
find "$ROOT/opt/phase/site" -name '*.dist-info' -prune -exec rm -rf {} +
[ -x "$ROOT/opt/phase/site/pyphase/phase-sandboxd" ] || die "the wheel has no phase-sandboxd"

# Shared libraries: what the interpreter and every ELF in the image needs, from the unpacked packages; libraries
# a wheel bundles (*.libs/) are found beside it by their RPATH.
copy_needed_libs "$ROOT" "$LIBDIR" "$SYS" "$ROOT/opt/phase/site" \
    $(find "$ROOT/usr/bin" "$ROOT/usr/lib" "$ROOT/opt" -type f \( -name '*.so*' -o -name python3 -o -name phase-sandboxd \))

# Bytecode (pyc is the same on every architecture; the host's Python must be the same version).
[ "$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "$VER" ] || die "$PY is not Python $VER"
"$PY" -m compileall -q -j 0 "$ROOT/opt/phase/site" "$ROOT/usr/lib/python$VER" >/dev/null || die "compileall failed"
if command -v aarch64-linux-gnu-strip >/dev/null 2>&1; then
    find "$ROOT/usr/bin" "$ROOT/usr/lib" "$ROOT/opt" "$ROOT/lib" -type f \( -name '*.so*' -o -name python3 \) \
        -exec aarch64-linux-gnu-strip --strip-unneeded {} + 2>/dev/null || true
fi

install -m 0755 "$HERE/stage2/init" "$ROOT/init"
install -m 0755 "$HERE/udhcpc.script" "$ROOT/etc/udhcpc.script"
printf 'PYVER=%s\nLIBDIR=%s\n' "$VER" "$LIBDIR" > "$ROOT/etc/phase-node.conf"
echo "root:x:0:0:root:/root:/bin/sh" > "$ROOT/etc/passwd"
echo "root:x:0:" > "$ROOT/etc/group"
printf '127.0.0.1 localhost\n' > "$ROOT/etc/hosts"

mkdir -p "$(dirname "$OUT")"
pack_cpio "$ROOT" "$OUT"
echo "stage 2 (aarch64): $OUT ($(stat -c %s "$OUT") bytes compressed, kernel $KVER)" >&2
