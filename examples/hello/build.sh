#!/bin/sh
# Rebuild hello.wasm with the zig toolchain from PyPI (pip install ziglang), default flags as users would.
set -eu
cd "$(dirname "$0")"
python3 -m ziglang cc -target wasm32-wasi -O2 -s -o hello.wasm hello.c
