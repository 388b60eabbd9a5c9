"""A one-minute libFuzzer run over module loading and running on both engines, the compiling one also confined as
in a sandbox worker (CI's share; see build.sh for long runs)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pyphase import engines

ROOT = Path(__file__).resolve().parents[2]
SECONDS = int(os.environ.get("PHASE_FUZZ_SECONDS", "60"))

SEEDS_WAT = [
    '(module (memory 1) (func (export "_start") (loop (br_if 0 (i32.const 0)))))',
    "(module (type $t (func)) (table 1 funcref) (elem (i32.const 0) $f) (func $f)"
    ' (func (export "_start") (call_indirect (type $t) (i32.const 0))))',
    '(module (memory 1 2) (func (export "_start") (drop (memory.grow (i32.const 1)))'
    " (i64.store (i32.const 8) (i64.const 1))))",
    '(module (func (export "_start") (result f32) (block (result f32) (f32.const 1))))',
]


@pytest.fixture(scope="module")
def fuzzer() -> Path:
    if shutil.which("clang-14") is None:
        pytest.fail("clang-14 missing: .ci/setup --test installs clang-14 and libclang-rt-14-dev")
    proc = subprocess.run(
        ["bash", str(ROOT / "tests" / "fuzz" / "build.sh")], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return Path(proc.stdout.strip().splitlines()[-1])


def test_fuzz_one_minute(fuzzer, tmp_path, wat):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(ROOT / "examples" / "hello" / "hello.wasm", corpus / "hello.wasm")
    for i, text in enumerate(SEEDS_WAT):
        (corpus / f"seed{i}.wasm").write_bytes(wat(text))
    proc = subprocess.run(
        [
            str(fuzzer),
            f"-max_total_time={SECONDS}",
            "-max_len=65536",
            "-rss_limit_mb=4096",
            "-timeout=20",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
        ],
        capture_output=True,
        text=True,
        timeout=SECONDS + 300,
        cwd=tmp_path,
        env={**os.environ, "PHASE_WASMTIME_LIBRARY": engines.library()},
    )
    tail = proc.stderr[-3000:]
    crashes = list(tmp_path.glob("crash-*")) + list(tmp_path.glob("leak-*")) + list(tmp_path.glob("timeout-*"))
    assert proc.returncode == 0 and not crashes, tail
    runs = [line for line in proc.stderr.splitlines() if line.startswith("Done ")]
    assert runs, tail
    assert "fuzz: a compiled job ran confined like a sandbox worker" in proc.stderr, tail
    print(f"\nfuzz: {runs[-1]}")
