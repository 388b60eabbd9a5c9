# Shared helpers of the stage-1 and stage-2 builders (sourced, not run).

die() { echo "initramfs: error: $*" >&2; exit 1; }

need() {  # need TOOL PACKAGE
    command -v "$1" >/dev/null 2>&1 || die "$1 not found (apt-get install $2)"
}

# The newest kernel installed under /boot, unless KVER is set.
default_kver() {
    ls /boot/vmlinuz-* 2>/dev/null | sed 's|/boot/vmlinuz-||' | sort -V | tail -n 1
}

# Copy the NIC modules and what they depend on into $root, and write the insmod order.
# Debian builds virtio-net and e1000 as modules; modprobe --show-depends gives the order.
# BASE: where lib/modules/KVER is (default /; an unpacked foreign kernel after depmod -b); then the modules wanted.
copy_nic_modules() {  # root kver [base [module...]]
    local root=$1 kver=$2 base=${3:-/} m line ko mods
    shift 2; [ $# -gt 0 ] && shift
    mods=${*:-virtio_pci virtio_net e1000 e1000e}
    mkdir -p "$root/lib/modules"
    : > "$root/lib/modules/load-order"
    for m in $mods; do
        modprobe -d "$base" -S "$kver" --show-depends "$m" 2>/dev/null | while read -r line; do
            case $line in insmod\ *) ;; *) continue ;; esac
            ko=$(echo "$line" | awk '{print $2}')
            base=$(basename "$ko")
            case $base in *.ko) ;; *) die "compressed module $ko: only plain .ko is supported" ;; esac
            if ! grep -qx "$base" "$root/lib/modules/load-order"; then
                cp "$ko" "$root/lib/modules/$base"
                echo "$base" >> "$root/lib/modules/load-order"
            fi
        done
    done
    [ -s "$root/lib/modules/load-order" ] || die "no NIC modules found for kernel $kver (apt-get install linux-image-amd64)"
}

# BUSYBOX: another build (busybox-static:arm64, unpacked); its applets are listed by the host's, the same Debian version.
install_busybox() {  # root [busybox]
    local root=$1 bb=${2:-/bin/busybox} a
    mkdir -p "$root/bin"
    cp "$bb" "$root/bin/busybox"
    readelf -l "$bb" 2>/dev/null | grep -q INTERP && die "$bb is not static (apt-get install busybox-static)"
    for a in $(/bin/busybox --list); do
        [ "$a" = busybox ] || ln -sf busybox "$root/bin/$a"
    done
}

# newc cpio of $root, owned by root, reproducible order, gzip -9.
pack_cpio() {  # root out
    (cd "$1" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -9n > "$2.tmp"
    mv "$2.tmp" "$2"
}

# The interpreter's standard library, trimmed: no tests, GUI, installers or optimised bytecode; more tar
# --exclude patterns may follow.
copy_stdlib() {  # src dest [tar option...]
    local src=$1 dest=$2
    shift 2
    mkdir -p "$dest"
    tar -C "$src" -cf - \
        --exclude='./site-packages' --exclude='./dist-packages' --exclude='./test' --exclude='./idlelib' \
        --exclude='./tkinter' --exclude='./turtledemo' --exclude='./ensurepip' --exclude='./lib2to3' \
        --exclude='./pydoc_data' --exclude='./distutils' --exclude='./unittest' --exclude='./config-*' \
        --exclude='*/tests' --exclude='*.opt-1.pyc' --exclude='*.opt-2.pyc' --exclude='./lib-dynload/_tkinter*' \
        --exclude='./lib-dynload/*test*' --exclude='./lib-dynload/xx*' "$@" . \
      | tar -C "$dest" -xf -
}

# The shared libraries ELF files need (readelf NEEDED, transitively), copied from an unpacked arm64 sysroot into
# $root$libdir, and its dynamic loader into $root/lib. A library found under BUNDLED (a wheel's *.libs/, found by
# RPATH) is left where it is; "" for none.
copy_needed_libs() {  # root libdir sys bundled elf...
    local root=$1 libdir=$2 sys=$3 bundled=$4 have=" " queue next elf lib path d
    shift 4
    queue="$*"
    mkdir -p "$root$libdir"
    while [ -n "$queue" ]; do
        next=
        for elf in $queue; do
            for lib in $(readelf -d "$elf" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
                case $have in *" $lib "*) continue ;; esac
                have="$have$lib "
                [ -n "$bundled" ] && [ -n "$(find "$bundled" -name "$lib" -path '*.libs/*' | head -n 1)" ] && continue
                path=
                for d in "$sys/lib/aarch64-linux-gnu" "$sys/usr/lib/aarch64-linux-gnu"; do
                    [ -e "$d/$lib" ] && { path=$d/$lib; break; }
                done
                [ -n "$path" ] || die "$elf needs $lib, which none of the unpacked arm64 packages has"
                cp -L "$path" "$root$libdir/$lib"
                next="$next $root$libdir/$lib"
            done
        done
        queue=$next
    done
    cp -L "$sys/lib/ld-linux-aarch64.so.1" "$root/lib/ld-linux-aarch64.so.1"
}
