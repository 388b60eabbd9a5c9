"""The benchmarks still run and still compute the right thing (correctness only: no timing is asserted),
and the optimised interpreter build runs a very long valid function soundly."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pyphase

ROOT = Path(__file__).resolve().parents[2]
RUN_SH = ROOT / "cbench" / "run.sh"


def _need_toolchain() -> None:
    for tool in ("cmake", "gcc"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    if importlib.util.find_spec("ziglang") is None:
        pytest.skip("ziglang is not installed (pip install ziglang)")


@pytest.fixture(scope="module")
def cbench_dir() -> Path:
    """cbench and its wasm programs, built once (incrementally) in build/cbench."""
    _need_toolchain()
    out = subprocess.run(
        [str(RUN_SH), "--build-only"],
        capture_output=True,
        text=True,
        timeout=1800,
        env=dict(os.environ, PYTHON=sys.executable),
    )
    assert out.returncode == 0, out.stderr
    return Path(out.stdout.strip().splitlines()[-1])


def test_cbench_checksums_match_native(cbench_dir: Path) -> None:
    out = subprocess.run(
        [
            str(cbench_dir / "cbench"),
            "--wasm-dir",
            str(cbench_dir / "wasm"),
            "--quick",
            "--json",
            "--reps",
            "1",
            "sha256",
            "hello",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["mismatches"] == 0
    rows = {row["name"]: row for row in doc["programs"]}
    assert rows["sha256"]["match"] and rows["hello"]["match"]
    # the plain-C SHA-256 agrees with hashlib over the same generated megabyte
    data = bytearray()
    x = 2463534242
    for _ in range((1 << 20) // 4):
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        data += x.to_bytes(4, "little")
    import hashlib

    assert rows["sha256"]["output"].strip() == f"sha256(1 MiB) = {hashlib.sha256(data).hexdigest()}"
    assert rows["hello"]["output"] == "dlroW ,olleH"
    assert rows["sha256"]["fuel"] > 0


def test_cbench_metering_off_build_agrees(cbench_dir: Path) -> None:
    """The -DPHASE_NO_METERING build computes the same outputs (and reports no fuel)."""
    out = subprocess.run(
        [
            str(cbench_dir / "cbench-nometer"),
            "--wasm-dir",
            str(cbench_dir / "wasm"),
            "--quick",
            "--phase-only",
            "--raw",
            "--reps",
            "1",
            "fib",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    name, _digest, fuel, count, *_samples = out.stdout.split()
    assert name == "fib" and int(count) == 1 and int(fuel) == 0


def test_pyphase_bench_quick(cbench_dir: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "core", "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads(out.stdout)
    assert doc["errors"] == [] and doc["checksums_match"]
    assert {e["name"] for e in doc["compute"]} == {"fib", "sha256", "sort", "matmul"}
    for entry in doc["compute"]:
        assert entry["checksum_match"], entry
        assert entry["fuel"] == entry["cbench_fuel"] > 0
    for key in ("hello", "hello_stack64k"):
        assert doc["hello"][key]["n"] > 0


# ---- a very long valid function ---------------------------------------------------------------------------

CHUNKS = 10_000  # 12 instructions each: 120k instructions in one function body
MASK = 0xFFFFFFFF


def _long_function_wat() -> tuple[str, int]:
    """A straight-line body of ~120k instructions mixing locals, arithmetic, rotates and memory, with the
    value it must return computed here the same way."""
    body = []
    a, b = 0, 0  # locals start at zero
    mem = {}
    for i in range(CHUNKS):
        k = (i * 2654435761) & 0x7FFFFFFF
        addr = (i % 1024) * 4
        body.append(
            f"local.get 0 i32.const {k} i32.add local.set 0 "
            f"local.get 1 local.get 0 i32.xor i32.const 5 i32.rotl local.set 1 "
            f"i32.const {addr} local.get 1 i32.store"
        )
        a = (a + k) & MASK
        x = b ^ a
        b = ((x << 5) | (x >> 27)) & MASK
        mem[addr] = b
    # fold memory back in with a loop, so the function also branches after its long straight line
    body.append(
        "i32.const 0 local.set 2 "
        "(block (loop "
        "local.get 1 local.get 2 i32.load i32.add local.set 1 "
        "local.get 2 i32.const 4 i32.add local.tee 2 i32.const 4096 i32.lt_u br_if 0))"
    )
    for addr in range(0, 4096, 4):
        b = (b + mem.get(addr, 0)) & MASK
    body.append("local.get 1 local.get 0 i32.xor")
    result = (b ^ a) & MASK
    text = '(module (memory 1) (func (export "run") (result i32) (local i32 i32 i32) ' + "\n".join(body) + "))"
    return text, result - (1 << 32) if result >= 1 << 31 else result


def test_very_long_function_runs(wat) -> None:
    if shutil.which("wat2wasm") is None:
        pytest.skip("wat2wasm is not installed (apt-get install wabt)")
    text, expected = _long_function_wat()
    wasm = wat(text)
    module = pyphase.Module(wasm)
    for _ in range(2):  # a fresh instance, then the reused one
        result = pyphase.run(module, entry="run")
        assert result.status == "ok", result.message
        assert result.exit_code == expected
        assert result.fuel_used >= 1024  # the loop's iterations are metered


def test_sandbox_bench_says_when_the_worker_was_set_up_without_a_negative_time() -> None:
    spec = importlib.util.spec_from_file_location("sandbox_bench", ROOT / "bench" / "sandbox_bench.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.ready_text(-875.4) == "worker set up 875 us before 'go' (a spare, waiting)"
    assert bench.ready_text(12) == "worker set up 12 us after 'go' (the job waited for it)"


def _quick_json(script: str) -> dict:
    """Run ``bench/SCRIPT --quick --json``; it exits non-zero when a job it times failed."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--quick", "--json"], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr
    doc: dict = json.loads(out.stdout)
    return doc


def test_fs_bench_runs() -> None:
    """bench/fs_bench.py --quick: every job it times ended ok."""
    doc = _quick_json("fs_bench.py")
    assert doc["tree"]["in_process_s"] > 0 and doc["per_file"]["sandbox_us"] > 0


def test_tree_bench_runs() -> None:
    """bench/tree_bench.py --quick: every job read the whole tree, the node fetched it once and then nothing."""
    doc = _quick_json("tree_bench.py")
    assert doc["remote_first_s"] > 0 and doc["remote_cached_s"] > 0 and doc["fetched_bytes"][0][1] == 0


def test_stream_bench_runs() -> None:
    """bench/stream_bench.py --quick: hello printed its output with and without a callback, everywhere it times."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "stream_bench.py"), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert all(doc[where]["ratio"] > 0 for where in ("in_process", "sandbox", "remote"))


def test_startup_bench_runs() -> None:
    """bench/startup_bench.py --quick: every fresh phase process it times printed the right bytes and exited 0 (it
    stops at the first that did not), with both references measured."""
    doc = _quick_json("startup_bench.py")
    rows = {row["command"]: row for row in doc["rows"]}
    assert {"python -c pass", "phase run hello", "phase verify F"} <= set(rows)
    assert rows["python -c pass"]["x_python"] == 1.0 and rows["phase run hello"]["median_ms"] > 0
