#!/bin/bash
# Build Phase Boot media without root: a FAT EFI system partition holding systemd-boot with
# one loader entry per mode (internet, local, private) and a unified kernel image (kernel +
# stage 1 + command line, made with objcopy and systemd's EFI stub), inside a GPT disk
# image (raw, for USB sticks) and the same disk as QCOW2.
#
#   bootloader/build-media.sh --stage1 STAGE1.cpio.gz [--kernel VMLINUZ] [--out DIR]
#                             [--append "extra kernel options"] [--default internet|local|private|uki]
#
# Outputs in DIR (default bootloader/build): phase-uki.efi, esp.img, phase-boot.img (GPT, raw),
# phase-boot.qcow2.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)

die() { echo "bootloader: error: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found (apt-get install $2)"; }

STAGE1= KERNEL= OUT="$HERE/build" APPEND= DEFAULT=internet
while [ $# -gt 0 ]; do
    case $1 in
        --stage1) STAGE1=$2; shift 2 ;;
        --kernel) KERNEL=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --append) APPEND=$2; shift 2 ;;
        --default) DEFAULT=$2; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) die "unknown argument $1" ;;
    esac
done
[ -f "$STAGE1" ] || die "--stage1 FILE is required (build it with initramfs/build-stage1.sh)"
KERNEL=${KERNEL:-$(ls /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1)}
[ -f "$KERNEL" ] || die "no kernel (apt-get install linux-image-amd64 or pass --kernel)"
case $DEFAULT in internet|local|private|uki) ;; *) die "--default must be internet, local, private or uki" ;; esac
need objcopy binutils; need objdump binutils; need mkfs.vfat dosfstools; need mcopy mtools; need mmd mtools
need sgdisk gdisk; need qemu-img qemu-utils; need python3 python3
EFIDIR=/usr/lib/systemd/boot/efi
STUB=$EFIDIR/linuxx64.efi.stub
SDBOOT=$EFIDIR/systemd-bootx64.efi
[ -f "$STUB" ] && [ -f "$SDBOOT" ] || die "$EFIDIR missing (apt-get install systemd-boot-efi)"

mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
BASE="console=ttyS0 panic=-1 quiet"

# --- unified kernel image: the stub with .osrel, .cmdline, .linux and .initrd added -------
printf 'NAME="Phase Boot"\nID=phase\nPRETTY_NAME="Phase Boot stage 1"\n' > "$WORK/os-release"
printf '%s' "$BASE phase.mode=internet $APPEND" > "$WORK/cmdline"
# Each new section must start past the stub's last section, aligned to SectionAlignment.
read -r OSREL CMDL LINUX INITRD < <(python3 - "$STUB" "$WORK/os-release" "$WORK/cmdline" "$KERNEL" "$STAGE1" <<'PY'
import os, re, subprocess, sys
stub, *files = sys.argv[1:]
head = subprocess.run(["objdump", "-h", stub], capture_output=True, text=True, check=True).stdout
priv = subprocess.run(["objdump", "-p", stub], capture_output=True, text=True, check=True).stdout
align = int(re.search(r"SectionAlignment\s+([0-9a-fA-F]+)", priv).group(1), 16)
end = max(int(m.group(2), 16) + int(m.group(1), 16)
          for m in re.finditer(r"^\s*\d+\s+\S+\s+([0-9a-f]+)\s+([0-9a-f]+)", head, re.M))
offs = []
for f in files:
    end = (end + align - 1) // align * align
    offs.append(end)
    end += os.path.getsize(f)
print(" ".join(hex(o) for o in offs))
PY
)
objcopy \
    --add-section .osrel="$WORK/os-release" --change-section-vma .osrel="$OSREL" \
    --add-section .cmdline="$WORK/cmdline" --change-section-vma .cmdline="$CMDL" \
    --add-section .linux="$KERNEL" --change-section-vma .linux="$LINUX" \
    --add-section .initrd="$STAGE1" --change-section-vma .initrd="$INITRD" \
    "$STUB" "$OUT/phase-uki.efi"

# --- EFI system partition ------------------------------------------------------------------
need_kb=$(( ( $(stat -c %s "$KERNEL") * 2 + $(stat -c %s "$STAGE1") * 2 + $(stat -c %s "$SDBOOT") ) / 1024 ))
ESP_MB=$(( need_kb / 1024 + 16 ))
[ $ESP_MB -lt 40 ] && ESP_MB=40
rm -f "$OUT/esp.img"
mkfs.vfat -C -n PHASEBOOT -F 32 "$OUT/esp.img" $((ESP_MB * 1024)) >/dev/null
export MTOOLS_SKIP_CHECK=1
M="-i $OUT/esp.img"
mmd $M ::/EFI ::/EFI/BOOT ::/EFI/systemd ::/EFI/Linux ::/loader ::/loader/entries ::/phase
mcopy $M "$SDBOOT" ::/EFI/BOOT/BOOTX64.EFI
mcopy $M "$SDBOOT" ::/EFI/systemd/systemd-bootx64.efi
mcopy $M "$KERNEL" ::/phase/vmlinuz
mcopy $M "$STAGE1" ::/phase/stage1.img
mcopy $M "$OUT/phase-uki.efi" ::/EFI/Linux/phase-uki.efi
for mode in internet local private; do
    extra=
    [ $mode = private ] && extra=" (no disk writes, ephemeral identity)"
    cat > "$WORK/phase-$mode.conf" <<ENTRY
title   Phase node, $mode mode$extra
linux   /phase/vmlinuz
initrd  /phase/stage1.img
options $BASE phase.mode=$mode $APPEND
ENTRY
    mcopy $M "$WORK/phase-$mode.conf" ::/loader/entries/
done
if [ "$DEFAULT" = uki ]; then default=phase-uki.efi; else default=phase-$DEFAULT.conf; fi
printf 'default %s\ntimeout 0\nconsole-mode keep\neditor no\n' "$default" > "$WORK/loader.conf"
mcopy $M "$WORK/loader.conf" ::/loader/loader.conf

# --- GPT disk: 1 MiB gap, the ESP, 1 MiB for the backup GPT ---------------------------------
DISK="$OUT/phase-boot.img"
rm -f "$DISK"
truncate -s $(( (ESP_MB + 2) * 1024 * 1024 )) "$DISK"
# (not -q: with it this sgdisk silently writes nothing)
sgdisk -n 1:2048:+${ESP_MB}M -t 1:ef00 -c 1:"Phase EFI system" "$DISK" >/dev/null
dd if="$OUT/esp.img" of="$DISK" bs=1M seek=1 conv=notrunc status=none
sgdisk -v "$DISK" | grep -q 'No problems found' || die "GPT check failed on $DISK"
sgdisk -p "$DISK" | grep -Eq '^ +1 +2048 .* EF00 ' || die "no EFI system partition in $DISK"
qemu-img convert -f raw -O qcow2 "$DISK" "$OUT/phase-boot.qcow2"
echo "media: $OUT/phase-boot.img ($(stat -c %s "$DISK") bytes raw), $OUT/phase-boot.qcow2, $OUT/phase-uki.efi" >&2
