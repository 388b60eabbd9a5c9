#!/bin/bash
# Build the stage-1 initramfs: busybox, the static phase-boot tools, the NIC modules of the
# target kernel, the release public key and /init. Everything comes from packages already
# installed on the build machine; nothing is downloaded for x86_64 (aarch64: Debian arm64 packages, unpacked).
#
#   initramfs/build-stage1.sh --pub RELEASE.pub [--out FILE] [--kver VERSION]
#                             [--seeds "http://IP:PORT ..."] [--min-release N]
#                             [--dht-bootstrap "HOST:PORT ..."] (Mainline DHT nodes for internet mode, both
#                                                                stages; HOST: IPv4, [IPv6] or a DNS name)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"

PUB= OUT="$HERE/build/stage1.cpio.gz" KVER= SEEDS= MIN_RELEASE=0 DHT_NODES= ARCH=$(uname -m)
while [ $# -gt 0 ]; do
    case $1 in
        --pub) PUB=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --kver) KVER=$2; shift 2 ;;
        --seeds) SEEDS=$2; shift 2 ;;
        --min-release) MIN_RELEASE=$2; shift 2 ;;
        --dht-bootstrap) DHT_NODES=$2; shift 2 ;;
        --arch) ARCH=$2; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) die "unknown argument $1" ;;
    esac
done
[ -n "$PUB" ] || die "--pub RELEASE.pub is required (make one with: python -m pyphase.boot keygen)"
grep -q '^phase-ed25519-public-v1:' "$PUB" || die "$PUB is not a Phase release public key"
case $ARCH in
    "$(uname -m)") SYS=/ BUSYBOX=/bin/busybox ;;
    aarch64) SYS=$HERE/../build/arm64-node BUSYBOX=$SYS/bin/busybox
             [ -x "$BUSYBOX" ] || die "no arm64 packages in $SYS: run initramfs/build-stage2-aarch64.sh first"
             KVER=${KVER:-$(ls "$SYS/lib/modules" | head -n 1)} ;;
    *) die "--arch $ARCH: only $(uname -m) and aarch64" ;;
esac
KVER=${KVER:-$(default_kver)}
[ -n "$KVER" ] || die "no kernel in /boot (apt-get install linux-image-amd64)"
need cpio cpio; need gzip gzip; need modprobe kmod; need make make; need gcc gcc
[ -x "$BUSYBOX" ] || die "$BUSYBOX missing (apt-get install busybox-static)"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/root
mkdir -p "$ROOT"/{bin,dev,proc,sys,run,tmp,etc/phase}

# libsodium (bundled in PyNaCl's pinned sdist, static) is built once and cached in the repo's build/.
if [ "$ARCH" = aarch64 ]; then
    "$HERE/../tools/cross-boot-tools.sh" "$WORK/tools" >&2
else
    make -s -C "$HERE/../csrc/boot" O="$WORK/tools" SODIUM_PREFIX="$HERE/../build/libsodium-boot" >&2
fi
cp "$WORK/tools/phase-boot" "$ROOT/bin/phase-boot"
for n in phase-verify phase-fetch phase-discover phase-dht; do ln -s phase-boot "$ROOT/bin/$n"; done

install_busybox "$ROOT" "$BUSYBOX"
if [ "$ARCH" = aarch64 ]; then
    copy_nic_modules "$ROOT" "$KVER" "$SYS" virtio_mmio virtio_pci virtio_net
    # Debian's arm64 kernels have no kexec_file_load (CONFIG_KEXEC_FILE), only kexec_load: phase-verify hands
    # the sealed, verified copies to kexec-tools (kexec --kexec-syscall), which adds the purgatory and device tree.
    # Debian's kexec-tools:arm64 and the libraries it links (Xen's among them), unpacked, never installed.
    KX=$HERE/../build/arm64-kexec
    "$HERE/../tools/arm64-sysroot.sh" "$KX" kexec-tools:arm64 libxenmisc4.17:arm64 libxencall1:arm64 libxendevicemodel1:arm64 \
        libxenevtchn1:arm64 libxenforeignmemory1:arm64 libxengnttab1:arm64 libxentoolcore1:arm64 \
        libxentoollog1:arm64 zlib1g:arm64 libc6:arm64 >&2
    mkdir -p "$ROOT/sbin" "$ROOT/lib"
    cp "$KX/sbin/kexec" "$ROOT/sbin/kexec"
    copy_needed_libs "$ROOT" /lib/aarch64-linux-gnu "$KX" "" "$ROOT/sbin/kexec"
    command -v aarch64-linux-gnu-strip >/dev/null 2>&1 &&
        aarch64-linux-gnu-strip --strip-unneeded "$ROOT/sbin/kexec" "$ROOT"/lib/aarch64-linux-gnu/*.so* 2>/dev/null || true
else
    copy_nic_modules "$ROOT" "$KVER"
fi
cp "$PUB" "$ROOT/etc/phase/release.pub"
echo "$MIN_RELEASE" > "$ROOT/etc/phase/min-release"
# A floor for the clock: a machine whose RTC is unset (1970) must not accept manifests that
# expired before this image was even built.
date +%s > "$ROOT/etc/phase/built-at"
: > "$ROOT/etc/phase/seeds"
for s in $SEEDS; do echo "$s" >> "$ROOT/etc/phase/seeds"; done
: > "$ROOT/etc/phase/dht-bootstrap"
for n in $DHT_NODES; do echo "$n" >> "$ROOT/etc/phase/dht-bootstrap"; done
install -m 0755 "$HERE/stage1/init" "$ROOT/init"
install -m 0755 "$HERE/udhcpc.script" "$ROOT/etc/udhcpc.script"

mkdir -p "$(dirname "$OUT")"
pack_cpio "$ROOT" "$OUT"
(cd "$ROOT" && find . -mindepth 1 ! -type d | LC_ALL=C sort) > "$OUT.contents"
echo "stage 1: $OUT ($(stat -c %s "$OUT") bytes compressed, $ARCH, kernel $KVER)" >&2
