"""The spec runner's engine switch: the execution assertions on the compiling engine (spec_exec.py --engine wasmtime,
tests/conformance/spec_wasmtime.py), on the files where wasm3 0.5.0 has known failures (NaN payloads, an empty
memory section, a NUL in an export name) and those that exercise traps, linking between instances and stack
exhaustion. Every command must pass on wasmtime, and the same commands run and are skipped as on wasm3 (the
skips are our validator's: the same on both engines).

The whole suite on this engine (about 2-3 minutes on 2 loaded cores; the table in CONFORMANCE.md):
    python tests/conformance/spec_exec.py --engine wasmtime --markdown
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import spec_exec  # noqa: E402

spec_exec.require_spec()

pytestmark = pytest.mark.skipif(
    shutil.which("wast2json") is None or not spec_exec.SPEC_DIR.is_dir(),
    reason="needs wabt's wast2json and the spec testsuite",
)

FILES = [
    "binary",
    "conversions",
    "custom",
    "f64",
    "float_exprs",
    "float_memory",
    "float_misc",
    "local_tee",
    "names",
    "select",
    "traps",
    "linking",
    "call_indirect",
    "skip-stack-guard-page",
    "memory_trap",
]
BASELINE = json.loads(spec_exec.BASELINE.read_text())


@pytest.fixture(scope="module")
def results() -> dict[str, spec_exec.FileResult]:
    before = os.environ.get("PHASE_SPEC_ENGINE")
    os.environ["PHASE_SPEC_ENGINE"] = "wasmtime"
    try:
        files = [spec_exec.SPEC_DIR / f"{name}.wast" for name in FILES]
        return {r.name: r for r in spec_exec.run_all(files, jobs=2)}
    finally:
        if before is None:
            os.environ.pop("PHASE_SPEC_ENGINE")
        else:
            os.environ["PHASE_SPEC_ENGINE"] = before


@pytest.mark.parametrize("name", FILES)
def test_spec_exec_file_on_the_compiling_engine(results, name):
    r = results[f"{name}.wast"]
    base = BASELINE["files"][f"{name}.wast"]
    assert r.crashed is None, r.crashed
    assert r.failures == {}, r.failures
    assert (r.run, r.skipped) == (base["run"], base["skipped"])
    assert r.passed == base["passed"] + base["failed"]  # what fails on wasm3 passes here
