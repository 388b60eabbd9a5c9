#!/bin/bash
# Build the stage-2 node image: an initramfs with busybox, a Python interpreter with its
# standard library (trimmed), pyphase and its dependencies (pynacl, pyzmq, msgpack, libtorrent,
# fastjsonschema) taken from the Python that runs this script, the NIC modules, and an
# init that brings up the network and starts plasmd.
#
#   initramfs/build-stage2.sh [--out FILE] [--kver VERSION] [--python PYTHON] [--dry-run]
#   It packs the pyphase that PYTHON imports (said on stderr; --dry-run says only that).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"

OUT="$HERE/build/stage2.cpio.gz" KVER= PY=python3 DRY=
while [ $# -gt 0 ]; do
    case $1 in
        --out) OUT=$2; shift 2 ;;
        --kver) KVER=$2; shift 2 ;;
        --python) PY=$2; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        *) die "unknown argument $1" ;;
    esac
done
# Which pyphase: the one PYTHON imports, which need not be this checkout's (an older pip install, another worktree).
REPO=$(cd "$HERE/.." && pwd)
PYPHASE=$(cd / && "$PY" -c 'import os, pyphase; print(pyphase.__version__, os.path.dirname(os.path.realpath(pyphase.__file__)))' \
    2>"${TMPDIR:-/tmp}/stage2-import.$$") || { tail -n1 "${TMPDIR:-/tmp}/stage2-import.$$" >&2; rm -f "${TMPDIR:-/tmp}/stage2-import.$$"; die "$PY cannot import pyphase: pip install -e $REPO (or pass --python of the environment that has it)"; }
rm -f "${TMPDIR:-/tmp}/stage2-import.$$"
echo "stage 2: packing pyphase ${PYPHASE%% *} from ${PYPHASE#* } (the one $(command -v "$PY" || echo "$PY") imports)" >&2
[ "${PYPHASE#* }" = "$REPO/pyphase" ] || echo "stage 2: note: that is not this checkout's pyphase ($REPO/pyphase):" \
    "to pack this one, pip install -e $REPO or pass --python of the environment that has it" >&2
[ -z "$DRY" ] || exit 0
KVER=${KVER:-$(default_kver)}
need cpio cpio; need gzip gzip; need ldd libc-bin; need modprobe kmod
[ -x /bin/busybox ] || die "/bin/busybox missing (apt-get install busybox-static)"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/root
mkdir -p "$ROOT"/{bin,dev,proc,sys,run,tmp,etc,usr/bin,opt/phase/site,lib/x86_64-linux-gnu,lib64}

INFO=$(cd "$WORK" && "$PY" "$HERE/stage2/collect.py")
get() { echo "$INFO" | "$PY" -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
EXE=$(get 'd["executable"]'); STDLIB=$(get 'd["stdlib"]'); VER=$(get 'd["version"]')
echo "stage 2: python $EXE ($VER); missing: $(get '"; ".join(d["missing"]) or "nothing"')" >&2
get '"\n".join(d["loaded"])' > "$WORK/loaded"

install_busybox "$ROOT"
copy_nic_modules "$ROOT" "$KVER"

# Interpreter and stdlib (trimmed: no tests, GUI, installers or optimised bytecode).
cp "$EXE" "$ROOT/usr/bin/python3"
copy_stdlib "$STDLIB" "$ROOT/usr/lib/python$VER"

# Site packages the node imports, with their bundled libraries.
for spec in $(get '" ".join(p for v in d["roots"].values() for p in v)') $(get '" ".join(d["libdirs"])'); do
    case $spec in
        */pyphase) tar -C "$(dirname "$spec")" -cf - --exclude='__pycache__' --exclude='*.so' pyphase \
                     | tar -C "$ROOT/opt/phase/site" -xf - ;;
        */pyphase/*.so) rel=${spec#*/pyphase/}; mkdir -p "$(dirname "$ROOT/opt/phase/site/pyphase/$rel")"
              cp "$spec" "$ROOT/opt/phase/site/pyphase/$rel" ;;
        *) cp -a "$spec" "$ROOT/opt/phase/site/" ;;
    esac
done
# The sandbox's fork server is an executable, not a .so, so the loop above does not see it; without it plasmd
# (which refuses to run jobs unsandboxed unless told to) would not start.
sandboxd=$("$PY" -c 'import pyphase.sandbox as s; c = s._server_command(); print(c[0] if len(c) == 1 else "")')
[ -n "$sandboxd" ] || { echo "stage 2: pyphase has no phase-sandboxd executable" >&2; exit 1; }
cp "$sandboxd" "$ROOT/opt/phase/site/pyphase/"
find "$ROOT/opt/phase/site" -name '__pycache__' -prune -o -name '*.dist-info' -prune -exec rm -rf {} + 2>/dev/null || true

# Shared libraries: everything the interpreter and the copied extensions link, by ldd.
: > "$WORK/libs"
ldd "$ROOT/usr/bin/python3" >> "$WORK/libs" 2>/dev/null || true
find "$ROOT/usr/lib/python$VER/lib-dynload" "$ROOT/opt/phase/site" -name '*.so*' -type f | while read -r so; do
    ldd "$so" 2>/dev/null || true
done >> "$WORK/libs"
grep -q 'not found' "$WORK/libs" && { grep 'not found' "$WORK/libs" | sort -u >&2; die "unresolved libraries"; }
awk '/=> \//{print $3} /^\t\/lib64/{print $1}' "$WORK/libs" | sort -u | while read -r lib; do
    case $lib in */pyzmq.libs/*|*/*.libs/*) continue ;; esac
    if [ "$(basename "$lib")" = ld-linux-x86-64.so.2 ]; then
        cp -L "$lib" "$ROOT/lib64/ld-linux-x86-64.so.2"
    else
        cp -L "$lib" "$ROOT/lib/x86_64-linux-gnu/"
    fi
done
[ -e "$ROOT/lib64/ld-linux-x86-64.so.2" ] || cp -L /lib64/ld-linux-x86-64.so.2 "$ROOT/lib64/"

# Byte-compile what we copied (sources keep their mtimes in the cpio, so the caches stay valid):
# with PYTHONDONTWRITEBYTECODE a node would otherwise recompile pyphase at every start.
"$PY" -m compileall -q -j 0 "$ROOT/opt/phase/site" >/dev/null || die "compileall failed"

# Debug symbols are most of an unstripped interpreter (libpython alone can be 20+ MB).
if command -v strip >/dev/null 2>&1; then
    find "$ROOT/usr/bin" "$ROOT/usr/lib" "$ROOT/opt" "$ROOT/lib" -type f \( -name '*.so*' -o -name python3 \) \
        -exec strip --strip-unneeded {} + 2>/dev/null || true
fi

install -m 0755 "$HERE/stage2/init" "$ROOT/init"
install -m 0755 "$HERE/udhcpc.script" "$ROOT/etc/udhcpc.script"
echo "PYVER=$VER" > "$ROOT/etc/phase-node.conf"
echo "root:x:0:0:root:/root:/bin/sh" > "$ROOT/etc/passwd"
echo "root:x:0:" > "$ROOT/etc/group"
printf '127.0.0.1 localhost\n' > "$ROOT/etc/hosts"

mkdir -p "$(dirname "$OUT")"
pack_cpio "$ROOT" "$OUT"
echo "stage 2: $OUT ($(stat -c %s "$OUT") bytes compressed)" >&2
