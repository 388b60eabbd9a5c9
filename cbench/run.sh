#!/bin/sh
# cbench: build (CMake in build/cbench, the C core as the extension builds it, plus natives and wasm) and run.
#
#   cbench/run.sh                      the table: native gcc -O2 vs phase_job_run, every program
#   cbench/run.sh --quick              small sizes, few repetitions (a smoke run)
#   cbench/run.sh --fuel-cost          metering on vs off (-DPHASE_NO_METERING build) on the compute set
#   cbench/run.sh --build-only         build only; prints the build directory
#   further arguments go to cbench: --reps N, --fuel N, --json, program names (fib sha256 sort matmul hello
#   hello_stack64k)
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${PHASE_CBENCH_BUILD:-$ROOT/build/cbench}
PYTHON=${PYTHON:-python3}
MODE=table
for a in "$@"; do
    case "$a" in
        --fuel-cost) MODE=fuel ;;
        --build-only) MODE=build ;;
    esac
done

GEN=""
if [ ! -f "$BUILD/CMakeCache.txt" ] && command -v ninja >/dev/null 2>&1; then
    GEN="-G Ninja"
fi
# Release like the wheel (pyproject: cmake.build-type = "Release"), so cbench measures the same core build.
# shellcheck disable=SC2086
cmake -S "$ROOT" -B "$BUILD" $GEN -DCMAKE_BUILD_TYPE=Release -DPHASE_BUILD_CBENCH=ON -DPHASE_BUILD_PYTHON=OFF \
      -DPHASE_WERROR="${PHASE_WERROR:-OFF}" \
      -DPython_EXECUTABLE="$(command -v "$PYTHON")" >"$BUILD.configure.log" 2>&1 \
    || { cat "$BUILD.configure.log" >&2; exit 1; }
cmake --build "$BUILD" --target cbench cbench-nometer cbench-wasm -j 2 >"$BUILD.build.log" 2>&1 \
    || { tail -50 "$BUILD.build.log" >&2; exit 1; }

BIN="$BUILD/cbench"
case "$MODE" in
    build) echo "$BIN"; exit 0 ;;
    fuel)
        # drop --fuel-cost / --build-only, pass the rest through
        for a in "$@"; do shift; [ "$a" = "--fuel-cost" ] || set -- "$@" "$a"; done
        exec "$BIN/cbench" --wasm-dir "$BIN/wasm" --fuel-cost "$BIN/cbench-nometer" "$@" ;;
    *)
        exec "$BIN/cbench" --wasm-dir "$BIN/wasm" "$@" ;;
esac
