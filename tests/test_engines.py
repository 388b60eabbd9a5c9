"""Choosing the engine (pyphase.engines): wasm3 and the compiling engine (wasmtime's C API, dlopen'd) side by side,
``auto``, compiled code kept as bytes, receipts naming the engine and its fuel unit, and clear refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

import pyphase
from pyphase import Identity, Limits, Sandbox, engines, make_receipt, verify_receipt
from pyphase.cli import main
from pyphase.errors import PhaseError
from pyphase.runtime import Module, prepare_job, run

pytestmark = pytest.mark.usefixtures("no_data_dir")


def test_both_engines_are_available_and_give_the_same_bytes(hello_bytes):
    assert engines.available() == ["wasm3", "wasmtime"]
    a = run(hello_bytes, b"Hello, World", engine="wasm3")
    b = run(hello_bytes, b"Hello, World", engine="wasmtime")
    assert (a.status, a.stdout, a.stdout_hash, a.exit_code) == (b.status, b.stdout, b.stdout_hash, b.exit_code)
    assert (a.engine, b.engine) == ("wasm3", "wasmtime")


def test_compile_time_is_reported_once_then_code_is_reused(probe_bytes):
    module = Module(probe_bytes)  # a fresh object: nothing compiled yet
    limits = Limits(fuel=10**9)
    first = run(module, args=["echo", "x"], limits=limits, engine="wasmtime")
    again = run(module, args=["echo", "x"], limits=limits, engine="wasmtime")
    assert first.status == again.status == "ok"
    assert first.compile_us > 0 and again.compile_us == 0
    assert first.wall_us < first.compile_us  # wall_us is the run alone: the compile is reported apart
    assert module._core.is_compiled(limits) and not module._core.is_compiled(Limits())


def test_auto_keeps_short_jobs_on_wasm3_and_sends_long_budgets_to_the_compiler(hello_bytes):
    module = Module(hello_bytes)
    assert module.size <= engines.AUTO_INLINE_COMPILE_BYTES
    assert engines.choose("auto", module, Limits(), False) == "wasm3"
    assert engines.choose("auto", module, Limits(timeout_ms=0), False) == "wasm3"
    assert engines.choose("auto", module, Limits(fuel=engines.AUTO_FUEL), False) == "wasmtime"
    assert engines.choose("auto", module, Limits(timeout_ms=engines.AUTO_TIMEOUT_MS), False) == "wasmtime"
    assert run(module, b"ab").engine == "wasm3"


def test_compiled_code_alone_does_not_move_a_short_job_off_wasm3(hello_bytes):
    """A module compiled once (asked for, or for a long budget) still starts its short jobs on wasm3: an instance of
    compiled code takes several times longer to start than wasm3's."""
    module = Module(hello_bytes)
    assert run(module, b"ab", engine="wasmtime").engine == "wasmtime"
    assert module._core.is_compiled(Limits())
    assert engines.choose("auto", module, Limits(), False) == "wasm3"
    assert run(module, b"ab").engine == "wasm3"
    assert engines.choose("auto", module, Limits(fuel=engines.AUTO_FUEL), False) == "wasmtime"
    with Sandbox(workers=1) as sandbox:
        assert sandbox.run(module, b"ab", engine="wasmtime").engine == "wasmtime"
        assert sandbox.run(module, b"ab").engine == "wasm3"


def test_a_long_job_of_a_big_module_runs_on_wasm3_while_its_code_compiles_in_the_background(probe_bytes):
    module = Module(probe_bytes)
    long = Limits(timeout_ms=engines.AUTO_TIMEOUT_MS)
    assert module.size > engines.AUTO_INLINE_COMPILE_BYTES
    first = run(module, b"x", args=["cat"], limits=long)
    assert first.engine == "wasm3" and first.stdout == b"x"
    deadline = time.monotonic() + 120
    while not module._core.is_compiled(long) and time.monotonic() < deadline:
        time.sleep(0.05)
    later = run(module, b"y", args=["cat"], limits=long)
    assert later.engine == "wasmtime" and later.stdout == b"y" and later.compile_us == 0


def test_auto_learns_from_a_long_job_of_the_module(hello_bytes):
    module = Module(hello_bytes)
    engines.record(module.digest, "wasm3", engines.AUTO_WALL_US + 1)
    try:
        assert engines.choose("auto", module, Limits(), False) == "wasmtime"
    finally:
        engines.forget(module.digest)
    assert engines.choose("auto", module, Limits(), False) == "wasm3"


def test_jobs_without_a_wall_clock_limit_use_code_without_epoch_checks(probe_bytes):
    module = Module(probe_bytes)  # epoch checks cost up to 1.7x on call-heavy code; only a timeout needs them
    assert run(module, b"x", args=["cat"], limits=Limits(timeout_ms=0), engine="wasmtime").stdout == b"x"
    assert module._core.is_compiled(Limits(timeout_ms=0)) and not module._core.is_compiled(Limits())


def test_spinning_module_on_the_compiling_engine_ends_in_timeout_soon_after_the_limit(probe_bytes):
    run(probe_bytes, args=["echo"], engine="wasmtime")  # compile outside the measured run
    start = time.monotonic()
    r = run(probe_bytes, args=["spin"], limits=Limits(timeout_ms=300), engine="wasmtime")
    elapsed = time.monotonic() - start
    assert r.status == "timeout" and "300 ms" in r.message
    assert 0.3 <= elapsed < 0.3 + 0.5, elapsed


def test_fuel_is_counted_in_the_engines_own_unit_and_the_receipt_says_which(probe_bytes):
    identity = Identity.generate()
    for engine, unit in (("wasm3", "wasm3-ticks"), ("wasmtime", "wasmtime-fuel")):
        result = run(probe_bytes, args=["count", "1000"], limits=Limits(fuel=10**9), engine=engine)
        assert result.status == "ok" and result.fuel_used > 0
        receipt = make_receipt(
            result, job_id="sha256:" + "0" * 64, nonce="a" * 32, limits=Limits(fuel=10**9), identity=identity
        )
        assert receipt["node"]["runtime"] == engine and receipt["node"]["fuel_unit"] == unit
        assert receipt["node"]["runtime_version"] == engines.VERSIONS[engine]
        verify_receipt(receipt, stdout=result.stdout, signer=identity.peer_id)
    # without a fuel limit the compiling engine does not meter (it would cost up to 1.6x): the receipt says so
    result = run(probe_bytes, args=["count", "1000"], engine="wasmtime")
    receipt = make_receipt(result, job_id="sha256:" + "0" * 64, nonce="a" * 32, limits=Limits(), identity=identity)
    assert result.fuel_used == 0 and receipt["node"]["fuel_unit"] == engines.UNMETERED == "none"
    assert run(probe_bytes, args=["count", "1000"], engine="wasm3").fuel_used > 0  # wasm3 always counts


def test_compiled_code_round_trips_as_bytes_and_garbage_is_refused(probe_bytes):
    limits = Limits()
    blob = Module(probe_bytes)._core.serialize(limits)
    fresh = Module(probe_bytes)
    fresh._core.deserialize(limits, False, blob)
    assert fresh._core.is_compiled(limits)
    r = run(fresh, b"back", args=["cat"], engine="wasmtime")
    assert r.status == "ok" and r.stdout == b"back" and r.compile_us == 0
    with pytest.raises(PhaseError):
        Module(probe_bytes)._core.deserialize(limits, False, b"\x7fELF not a wasmtime artifact")
    with pytest.raises(PhaseError):
        Module(probe_bytes)._core.deserialize(limits, False, blob[: len(blob) // 2])


def test_an_unknown_engine_is_a_value_error(hello_bytes):
    with pytest.raises(ValueError, match="unknown engine 'v8'"):
        run(hello_bytes, engine="v8")


def test_a_sandbox_made_without_the_compiling_engine_refuses_it_clearly(hello_bytes):
    with pyphase.Sandbox(workers=1, engines=["wasm3"]) as sandbox:
        assert sandbox.engines == ("wasm3",)
        with pytest.raises(engines.EngineUnavailable, match="wasm3 only"):
            sandbox.run_prepared(prepare_job(hello_bytes, engine="wasmtime"))
        assert sandbox.run(hello_bytes, b"ab").stdout == b"ba"


def test_a_missing_or_foreign_library_is_refused_with_the_reason(tmp_path, hello_bytes):
    bogus = tmp_path / "libnot.so"
    bogus.write_bytes(b"not a library")
    code = (
        "import pyphase\nfrom pyphase import engines\n"
        "print(engines.available())\n"
        "try:\n    pyphase.run(open(%r,'rb').read(), engine='wasmtime')\n"
        "except engines.EngineUnavailable as e:\n    print('refused:', e)\n"
        "print(pyphase.run(open(%r,'rb').read(), b'ab').stdout)\n"
    )
    path = tmp_path / "hello.wasm"
    path.write_bytes(hello_bytes)
    out = subprocess.run(
        [sys.executable, "-c", code % (str(path), str(path))],
        env={**os.environ, "PHASE_WASMTIME_LIBRARY": str(bogus)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.splitlines()[0] == "['wasm3']"
    assert "refused: cannot load" in out and str(bogus) in out
    assert out.splitlines()[-1] == "b'ba'"


def test_phase_run_engine_flag(tmp_path, hello_bytes, capsys):
    path = tmp_path / "hello.wasm"
    path.write_bytes(hello_bytes)
    assert main(["run", str(path), "--input", "abc", "--no-sandbox", "--engine", "wasmtime", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["receipt"]["node"]["runtime"] == "wasmtime"
    # in the sandbox too: the fork server compiles, a worker runs the code
    assert main(["run", str(path), "--input", "abc", "--engine", "wasmtime", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["receipt"]["node"]["runtime"] == "wasmtime" and doc["receipt"]["node"]["fuel_unit"] == engines.UNMETERED


def test_the_wheel_version_is_read_from_its_one_dist_info_else_from_package_metadata(tmp_path):
    import wasmtime

    from pathlib import Path

    package = Path(wasmtime.__file__).parent
    assert engines._installed_version(package) == engines.WASMTIME_VERSION
    (tmp_path / "wasmtime").mkdir()
    (tmp_path / "wasmtime-49.0.0.dist-info").mkdir()
    assert engines._installed_version(tmp_path / "wasmtime") == "49.0.0"  # refused by _library_path: not ours
    (tmp_path / "wasmtime-50.0.1.dist-info").mkdir()  # two: ask importlib.metadata, which knows the installed one
    assert engines._installed_version(tmp_path / "wasmtime") == engines.WASMTIME_VERSION
