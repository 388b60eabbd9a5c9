#!/usr/bin/env bash
# Build the libFuzzer target (clang-14 + libclang-rt-14-dev from Debian) into build/fuzz/.
# Our C (core, WASI layer, validator) gets ASan+UBSan; wasm3 gets coverage only and stays -O2, because
# its interpreter needs sibling-call optimisation that ASan's stack instrumentation can defeat.
#
# Long run:  tests/fuzz/build.sh && build/fuzz/fuzz_module -max_total_time=3600 -jobs=2 build/fuzz/corpus
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out="$root/build/fuzz"
mkdir -p "$out/obj"
cc=${CC:-clang-14}
python3 "$root/tools/fetch_wasm3.py" --dest "$out/wasm3-src"
python3 "$root/tools/fetch_libsodium.py" --build "$out/libsodium" --cc "$cc"
w3="$out/wasm3-src/wasm3"
common=(-g -O2 -fno-omit-frame-pointer -I "$root/csrc" -I "$w3" -I "$out/libsodium/include" -Dd_m3HasWASI=0 -Dd_m3LogOutput=0)
objs=()
for f in "$w3"/*.c; do
    o="$out/obj/w3_$(basename "$f" .c).o"
    "$cc" "${common[@]}" -fwrapv -fsanitize=fuzzer-no-link -w -c "$f" -o "$o"
    objs+=("$o")
done
for f in "$root"/csrc/phase_arena.c "$root"/csrc/phase_job.c "$root"/csrc/phase_stack.c "$root"/csrc/phase_wasi.c "$root"/csrc/phase_wasi_fs.c "$root"/csrc/phase_wasmtime.c \
         "$root"/csrc/sandbox_seccomp.c "$root"/csrc/phase_crypto.c "$root"/csrc/wasm_validate*.c; do
    o="$out/obj/$(basename "$f" .c).o"
    "$cc" "${common[@]}" -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined ${EXTRA_SAN:-} -c "$f" -o "$o"
    objs+=("$o")
done
"$cc" "${common[@]}" -fsanitize=fuzzer,address,undefined "$root/tests/fuzz/fuzz_module.c" "${objs[@]}" \
    "$out/libsodium/lib/libsodium.a" -lpthread -ldl -lm -o "$out/fuzz_module"
echo "$out/fuzz_module"
