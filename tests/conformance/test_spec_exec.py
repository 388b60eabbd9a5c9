"""The WebAssembly core spec testsuite's execution assertions, run through Phase's C core (pyphase._spec).

Every .wast file runs in its own subprocess (two at a time; about 20 s for the whole suite on 2 cores), and its
results are held against tests/conformance/baseline.json:
  * a failure not listed there fails the test (a regression, or a new wasm3 limit to explain and list);
  * a listed failure that now passes fails the test too, so the list of wasm3 limits stays honest;
  * the numbers of commands run and skipped must match (a module that starts being skipped is a regression too).
A crash of the runner (segfault in wasm3, hang) is reported as that file's failure, never takes pytest down.

Run: python -m pytest tests/conformance -q -s        (needs Debian's wabt for wast2json)
Table for CONFORMANCE.md: python tests/conformance/spec_exec.py --markdown
After a deliberate change: python tests/conformance/spec_exec.py --write-baseline (and explain new classes)
"""

from __future__ import annotations

import json
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

WASTS = spec_exec.wast_files()
BASELINE = json.loads(spec_exec.BASELINE.read_text())


@pytest.fixture(scope="session")
def results() -> dict[str, spec_exec.FileResult]:
    return {r.name: r for r in spec_exec.run_all(WASTS, jobs=2)}


@pytest.mark.parametrize("wast", WASTS, ids=[w.stem for w in WASTS])
def test_spec_exec_file(results, wast):
    r = results[wast.name]
    base = BASELINE["files"].get(wast.name)
    print(
        f"\n{r.name}: {r.passed}/{r.passed + r.failed} passed ({r.rate:.1f}%), {r.skipped} skipped, "
        f"{r.run} commands, {r.seconds:.1f} s"
    )
    assert r.crashed is None, r.crashed
    assert base is not None, f"{wast.name} is not in baseline.json: run spec_exec.py --write-baseline"
    known = base["known_failures"]
    new = {k: v for k, v in r.failures.items() if k not in known}
    fixed = sorted(set(known) - set(r.failures))
    assert not new, "new failures (regression, or a limit to explain in baseline.json):\n" + "\n".join(
        f"  line {k}: {v}" for k, v in new.items()
    )
    assert not fixed, "listed as known failures but now passing (remove them from baseline.json): " + ", ".join(fixed)
    assert (r.run, r.passed, r.failed, r.skipped) == (base["run"], base["passed"], base["failed"], base["skipped"])


def test_baseline_failures_are_explained():
    classes = BASELINE["classes"]
    for name, f in BASELINE["files"].items():
        for key, v in f["known_failures"].items():
            assert v["class"] in classes and v["class"] not in ("unclassified", "crash"), (name, key, v)
            assert v["class"] == spec_exec.classify(name, v["detail"]), (name, key)


def test_suite_is_complete():
    assert len(WASTS) >= 70
    assert set(BASELINE["files"]) == {w.name for w in WASTS}
    total = sum(f["passed"] + f["failed"] for f in BASELINE["files"].values())
    assert total > 17000


def test_crash_is_reported_not_fatal(monkeypatch):
    """A child dying mid-file (as a wasm3 segfault would) is that file's failure, naming the command."""
    wast = spec_exec.SPEC_DIR / "fac.wast"
    jpath = spec_exec._spec_runner().convert(wast)
    line = next(c["line"] for c in json.loads(jpath.read_text())["commands"] if c["type"] == "assert_return")
    monkeypatch.setenv("PHASE_SPEC_CRASH_AT_LINE", str(line))
    r = spec_exec.run_file(wast)
    assert r.crashed and f"line {line}" in r.crashed and "signal 11" in r.crashed
    assert f"{line}:crash" in r.failures and r.passed > 0


@pytest.mark.parametrize(
    "exp,got,ok",
    [
        ({"type": "f32", "value": "nan:canonical"}, ("f", 0x7FC00000), True),
        ({"type": "f32", "value": "nan:canonical"}, ("f", 0xFFC00000), True),
        ({"type": "f32", "value": "nan:canonical"}, ("f", 0x7FC00001), False),
        ({"type": "f32", "value": "nan:arithmetic"}, ("f", 0x7FC00001), True),
        ({"type": "f32", "value": "nan:arithmetic"}, ("f", 0x7FA00000), False),
        ({"type": "f64", "value": "nan:canonical"}, ("F", 0xFFF8000000000000), True),
        ({"type": "f64", "value": "nan:arithmetic"}, ("F", 0x7FF8000000000001), True),
        ({"type": "f64", "value": "nan:arithmetic"}, ("F", 0x7FF4000000000000), False),
        ({"type": "f32", "value": str(0x7FA00000)}, ("f", 0x7FA00000), True),
        ({"type": "f32", "value": str(0x80000000)}, ("f", 0), False),  # -0.0 is not +0.0
        ({"type": "i32", "value": "1"}, ("I", 1), False),  # type counts
    ],
)
def test_value_matching(exp, got, ok):
    assert spec_exec._value_matches(exp, got) is ok


def test_trap_messages():
    assert spec_exec._trap_matches("integer divide by zero", "[trap] integer divide by zero")
    assert spec_exec._trap_matches("unreachable", "[trap] unreachable executed")
    assert spec_exec._trap_matches("uninitialized", "[trap] null table element")
    assert not spec_exec._trap_matches("integer overflow", "[trap] integer divide by zero")
