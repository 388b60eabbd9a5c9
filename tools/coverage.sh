#!/bin/sh
# Line coverage of the Python package (coverage.py) and of our C (gcov, reported by gcovr), in one command:
#
#   tools/coverage.sh                    the default suite without the QEMU boot tests (-m "not boot")
#   tools/coverage.sh tests/core -x      any pytest arguments instead
#
# It builds an instrumented copy of pyphase (-DPHASE_COVERAGE=ON: the core, the sandbox server and the bindings,
# not wasm3) in its own virtual environment under build/coverage/, so the normal install is left alone, runs the
# tests there (subprocesses too: `phase`, `plasmd` and the fork server record their lines), and prints both
# reports. Sandbox workers run confined and exit without writing, so lines only they run (the worker's half of
# csrc/sandbox_server.c) count as missed. Reports: build/coverage/python.txt, build/coverage/c.txt.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/build/coverage
PY=${PYTHON:-python3}
cd "$ROOT"
mkdir -p "$OUT"
if [ ! -x "$OUT/venv/bin/python" ]; then
    "$PY" -m venv "$OUT/venv"
fi
. "$OUT/venv/bin/activate"
python -m pip install -q --disable-pip-version-check -e ".[test]" gcovr==8.8 \
    -C build-dir="$OUT/cmake" -C cmake.define.PHASE_COVERAGE=ON -C cmake.define.PHASE_BUILD_SPEC=ON -C cmake.build-type=Release
find "$OUT/cmake" -name '*.gcda' -delete
rm -f "$OUT"/.coverage*
[ $# -gt 0 ] || set -- -m "not boot" --ignore=tests/boot/test_plasmd_source.py
COVERAGE_FILE="$OUT/.coverage" python -m coverage run -m pytest -q -p no:cacheprovider "$@" || true
COVERAGE_FILE="$OUT/.coverage" python -m coverage combine -q "$OUT" 2>/dev/null || true
COVERAGE_FILE="$OUT/.coverage" python -m coverage report > "$OUT/python.txt"
python -m gcovr --root "$ROOT" --filter "$ROOT/csrc/" --exclude "$ROOT/csrc/boot/" --object-directory "$OUT/cmake" \
    --gcov-ignore-parse-errors=negative_hits.warn --txt "$OUT/c.txt" --print-summary >/dev/null
echo "Python: $(tail -1 "$OUT/python.txt")"
echo "C:      $(grep '^TOTAL' "$OUT/c.txt")"
