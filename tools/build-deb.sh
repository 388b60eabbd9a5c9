#!/usr/bin/env bash
# Build dist/phase_<version>_<arch>.deb: a venv under /opt/phase on Debian's own /usr/bin/python3 with pyphase
# (the manylinux wheel from tools/build-wheels.sh, built first if missing) and its pinned dependencies from PyPI;
# `phase` and `plasmd` on PATH; /etc/phase/plasmd.toml (a conffile); the hardened plasmd.service
# (DynamicUser, data in /var/lib/phase, log to the journal). Then lintian, which must report nothing beyond
# the overrides in packaging/deb/lintian-overrides.
#
#   tools/build-deb.sh [--no-lintian]
#
# Needs: Debian 12's python3 and python3-venv, dpkg-deb, lintian; what tools/build-wheels.sh needs.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HERE=$ROOT/packaging/deb
OUT=$ROOT/dist
# The venv links the versioned interpreter (/usr/bin/python3.X, from the python3.X package the .deb depends on),
# not /usr/bin/python3, which belongs to another package.
SYSPY=$(readlink -f /usr/bin/python3)
LINTIAN=1
[ "${1:-}" = "--no-lintian" ] && LINTIAN=0

die() { echo "build-deb: $*" >&2; exit 1; }
[ -x "$SYSPY" ] || die "/usr/bin/python3 missing (apt-get install python3 python3-venv)"

version=$("$SYSPY" -c 'import tomllib; print(tomllib.load(open("'"$ROOT"'/pyproject.toml", "rb"))["project"]["version"])')
debarch=$(dpkg --print-architecture)
arch=$(uname -m)
pyver=$("$SYSPY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
pytag=cp${pyver/./}
wheel=$(ls "$OUT"/pyphase-"$version"-"$pytag"-"$pytag"-manylinux*_"$arch".whl 2>/dev/null | head -1 || true)
if [ -z "$wheel" ]; then
    PYTHON=$SYSPY "$ROOT/tools/build-wheels.sh" "$arch" >/dev/null
    wheel=$(ls "$OUT"/pyphase-"$version"-"$pytag"-"$pytag"-manylinux*_"$arch".whl | head -1)
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PKG=$WORK/phase
VENV=/opt/phase/venv
mkdir -p "$PKG/DEBIAN" "$PKG/opt/phase" "$PKG/usr/bin" "$PKG/etc/phase" "$PKG/lib/systemd/system" \
         "$PKG/usr/share/doc/phase" "$PKG/usr/share/lintian/overrides"

# The venv is made where it is packaged and its paths rewritten to /opt/phase/venv (what dh-virtualenv does).
"$SYSPY" -m venv "$PKG$VENV"
"$PKG$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-compile "$wheel"
"$PKG$VENV/bin/python" -m pip uninstall -q -y pip setuptools 2>/dev/null || true
grep -rlI --null "$PKG$VENV" "$PKG$VENV/bin" "$PKG$VENV/pyvenv.cfg" | xargs -0 -r sed -i "s|$PKG$VENV|$VENV|g"
# Only the interpreter and our two commands stay in bin/ (the dependencies' helper scripts are not needed).
find "$PKG$VENV/bin" -mindepth 1 ! -name 'python*' ! -name phase ! -name plasmd ! -name activate -delete
# Debian policy for the binaries: shared objects not executable, everything stripped.
find "$PKG$VENV" -name '*.so*' -type f -exec chmod 0644 {} + -exec strip --strip-unneeded {} +
find "$PKG$VENV" -name __pycache__ -prune -exec rm -rf {} +
grep -rqI "$WORK" "$PKG$VENV" && die "the venv still names the build folder"
ln -s "$VENV/bin/phase" "$PKG/usr/bin/phase"
ln -s "$VENV/bin/plasmd" "$PKG/usr/bin/plasmd"

install -m 0644 "$HERE/plasmd.toml" "$PKG/etc/phase/plasmd.toml"
install -m 0644 "$HERE/plasmd.service" "$PKG/lib/systemd/system/plasmd.service"
install -m 0644 "$HERE/copyright" "$PKG/usr/share/doc/phase/copyright"
install -m 0644 "$HERE/lintian-overrides" "$PKG/usr/share/lintian/overrides/phase"
for lic in "$PKG$VENV"/lib/python*/site-packages/pyphase-*.dist-info/licenses/third_party/*/LICENSE; do
    [ -f "$lic" ] || die "the wheel carries no third-party licences"
done
printf 'phase (%s) stable; urgency=medium\n\n  * Packaged by tools/build-deb.sh.\n\n -- Phase developers <phase@localhost>  %s\n' \
    "$version" "$(date -R -d @"${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || date +%s)}")" \
    | gzip -9n > "$PKG/usr/share/doc/phase/changelog.gz"

for script in postinst prerm postrm; do
    install -m 0755 "$HERE/$script" "$PKG/DEBIAN/$script"
done
echo /etc/phase/plasmd.toml > "$PKG/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$PKG" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$debarch/" -e "s/@SIZE@/$size/" -e "s/@PYVER@/$pyver/g" \
    "$HERE/control.in" > "$PKG/DEBIAN/control"

mkdir -p "$OUT"
deb=$OUT/phase_${version}_${debarch}.deb
dpkg-deb --root-owner-group -Zxz --build "$PKG" "$deb" >/dev/null
if [ "$LINTIAN" = 1 ]; then
    command -v lintian >/dev/null || die "lintian missing (apt-get install lintian)"
    # Tags come on stdout; stderr has lintian's own notes (e.g. that it runs as root).
    report=$(lintian --fail-on none --tag-display-limit 0 "$deb" 2>"$WORK/lintian.err") \
        || { cat "$WORK/lintian.err" >&2; die "lintian failed"; }
    if [ -n "$report" ]; then
        echo "$report" >&2
        die "lintian reports tags not covered by packaging/deb/lintian-overrides"
    fi
fi
echo "$deb"
