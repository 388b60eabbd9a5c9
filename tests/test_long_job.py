"""A long compute job under ``phase run --engine auto`` (two real processes, a fresh data dir): the first run
interprets on wasm3 for its whole length and streams every line as it is written, while the module compiles in the
background; the code is kept, and the second run of the same module starts compiled and prints the same bytes.

The default run takes about 3 s of wasm3; the issue's 30 s job: ``PHASE_LONG_JOB_SECONDS=30 python -m pytest
tests/test_long_job.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import wasm_build

from pyphase import Limits, engines
from pyphase.runtime import run

SECONDS = float(os.environ.get("PHASE_LONG_JOB_SECONDS", "3"))
ROUNDS = 20
WORK_PROBE = 2_000_000


@pytest.fixture(scope="module")
def crunch() -> bytes:
    return wasm_build.build_c("crunch.c").read_bytes()


def _work_for(crunch: bytes, seconds: float) -> int:
    """xorshift steps per round for a job of about ``seconds`` on wasm3 (measured here, on this machine's load)."""
    probe = run(crunch, args=["1", str(WORK_PROBE)], limits=Limits(timeout_ms=0), engine="wasm3")
    assert probe.status == "ok"
    per_step_us = probe.wall_us / WORK_PROBE
    return max(1000, int(seconds * 1e6 / ROUNDS / per_step_us))


def test_a_long_wasm3_job_under_auto_streams_to_completion_then_starts_compiled(tmp_path, crunch):
    module = tmp_path / "crunch.wasm"
    module.write_bytes(crunch)
    work = _work_for(crunch, SECONDS)
    cmd = [sys.executable, "-m", "pyphase", "run", "--no-sandbox", "--engine", "auto", "--data-dir", str(tmp_path)]
    cmd += [str(module), "--arg", str(ROUNDS), "--arg", str(work)]

    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append((time.monotonic() - start, line))
    proc.wait(timeout=SECONDS * 20 + 120)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    lines = [line for _, line in seen]
    assert [line.split()[:2] for line in lines] == [[b"round", str(i).encode()] for i in range(ROUNDS)]
    span = seen[-1][0] - seen[0][0]
    # streamed: the rounds reached this process over the job's length (held back, they would come in one burst)
    assert span >= SECONDS * 0.25, seen
    assert span * 1e6 > engines.AUTO_WALL_US  # long enough for auto to compile the module meanwhile
    assert list((tmp_path / "compiled").glob("*.cwasm")), "the module compiled while the job ran"

    again = subprocess.run([*cmd, "--json"], capture_output=True, check=True, timeout=SECONDS * 10 + 120)
    doc = json.loads(again.stdout)
    assert doc["status"] == "ok" and doc["engine"] == "wasmtime" and doc["compile_us"] == 0
    assert doc["stdout"].encode() == b"".join(lines)
    assert doc["wall_us"] < span * 1e6  # compiled code is faster than the interpreter was
