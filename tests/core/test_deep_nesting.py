"""Modules nesting far deeper than 1024 run, in process and in a sandbox worker, with the right result.

A big C ``switch`` is one nested block per case, so real interpreters, parsers and compilers nest thousands deep.
wasm3 compiles such a module whole, on a stack sized from the depth the validator measured (csrc/phase_stack.c);
the validator caps the depth at 2^18, which bounds that stack.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import pyphase
from pyphase import Limits, Sandbox
from pyphase.errors import InvalidModule

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS / "validator"))
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS.parent / "bench"))
import deep_bench  # noqa: E402  (the interpreter's generator, shared with the benchmark)
from wasm_build import build_c  # noqa: E402
from wasm_builder import I32, body, functype, leb, module, name, sleb  # noqa: E402

RESULT = Limits(timeout_ms=60000)


def case_value(i: int) -> int:
    return (i * 37 + 11) % 113


def switch_module(depth: int, selectors: tuple[int, ...]) -> bytes:
    """_start returns the sum of sw(s) for s in selectors; sw is a switch over ``depth`` cases lowered the way
    LLVM lowers one: ``depth`` nested empty blocks, a br_table inside them, each case's code after its block's end."""
    sw = bytearray(b"\x02\x40" * depth)
    sw += b"\x20\x00\x0e" + leb(depth) + b"".join(leb(i) for i in range(depth)) + leb(depth - 1)
    for i in range(depth):
        sw += b"\x0b\x41" + sleb(case_value(i)) + b"\x0f"  # end; i32.const; return
    sw += b"\x41\x00\x0b"  # unreachable fall-through keeps the body typed
    start = bytearray()
    for k, s in enumerate(selectors):
        start += b"\x41" + sleb(s) + b"\x10\x01" + (b"\x6a" if k else b"")
    start += b"\x0b"
    return module(
        types=[functype([], [I32]), functype([I32], [I32])],
        funcs=[0, 1],
        exports=[name("_start") + b"\x00\x00"],
        codes=[body(bytes(start)), body(bytes(sw))],
    )


def nested_control_module(levels: int) -> bytes:
    """_start returns 7 from under ``levels`` nested if/loop/block triples, each entered once."""
    code = b"\x41\x01\x04\x40\x03\x40\x02\x40" * levels + b"\x41\x07\x0f" + b"\x0b" * (3 * levels) + b"\x41\x00\x0b"
    return module(types=[functype([], [I32])], funcs=[0], exports=[name("_start") + b"\x00\x00"], codes=[body(code)])


def selectors_for(depth: int) -> tuple[int, ...]:
    return (0, 1, depth // 2, depth - 1, depth + 5)  # the last one takes the default


def expected(depth: int) -> int:
    return sum(case_value(min(s, depth - 1)) for s in selectors_for(depth))


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(workers=1) as s:
        yield s


@pytest.mark.parametrize("depth", [1025, 10000, 100000])
def test_deep_switch_runs_in_process_and_in_a_worker(sandbox, depth):
    wasm = switch_module(depth, selectors_for(depth))
    here = pyphase.run(wasm, limits=RESULT)
    assert (here.status, here.exit_code) == ("ok", expected(depth)), here.message
    there = sandbox.run(wasm, limits=RESULT)
    assert (there.status, there.exit_code) == ("ok", expected(depth)), there.message
    again = pyphase.run(wasm, limits=RESULT)  # a pooled instance keeps its compiled code
    assert (again.status, again.exit_code) == ("ok", expected(depth))


def test_deep_if_loop_block_nesting_runs(sandbox):
    wasm = nested_control_module(3400)  # 10,200 levels, every loop entered
    for r in (pyphase.run(wasm, limits=RESULT), sandbox.run(wasm, limits=RESULT)):
        assert (r.status, r.exit_code) == ("ok", 7), r.message


def test_many_deep_functions_in_one_module(sandbox):
    depth, count = 2000, 200
    sw = body(b"\x02\x40" * depth + b"\x20\x00\x0d\x00" + b"\x0b" * depth + b"\x41\x05\x0b")
    start = b"".join(b"\x41\x00\x10" + leb(1 + i) + (b"\x6a" if i else b"") for i in range(count)) + b"\x0b"
    wasm = module(
        types=[functype([], [I32]), functype([I32], [I32])],
        funcs=[0] + [1] * count,
        exports=[name("_start") + b"\x00\x00"],
        codes=[body(start)] + [sw] * count,
    )
    for r in (pyphase.run(wasm, limits=RESULT), sandbox.run(wasm, limits=RESULT)):
        assert (r.status, r.exit_code) == ("ok", 5 * count), r.message


def test_nesting_beyond_the_cap_is_refused_clearly(sandbox):
    n = 1 << 18  # one more than the cap with the function frame
    wasm = module(
        types=[functype([], [])],
        funcs=[0],
        exports=[name("_start") + b"\x00\x00"],
        codes=[body(b"\x02\x40" * n + b"\x0b" * n + b"\x0b")],
    )
    with pytest.raises(InvalidModule, match="control nesting depth exceeds the limit of 262144"):
        pyphase.run(wasm)
    r = sandbox.run(wasm)
    assert r.status == "invalid_module" and "nesting depth exceeds the limit of 262144" in r.message


def test_deepest_allowed_nesting_ends_cleanly_on_both_paths(sandbox):
    n = (1 << 18) - 1  # exactly the cap: ~80 MiB of compile stack
    wasm = module(
        types=[functype([], [I32])],
        funcs=[0],
        exports=[name("_start") + b"\x00\x00"],
        codes=[body(b"\x02\x40" * n + b"\x0b" * n + b"\x41\x09\x0b")],
    )
    for r in (pyphase.run(wasm, limits=RESULT), sandbox.run(wasm, limits=RESULT)):
        assert (r.status, r.exit_code) == ("ok", 9), r.message


def test_deep_blocks_with_results_end_in_a_clear_error(sandbox):
    n = 10000  # wasm3 keeps at most 2000 values while compiling
    wasm = module(
        types=[functype([], [I32])],
        funcs=[0],
        exports=[name("_start") + b"\x00\x00"],
        codes=[body(b"\x02\x7f" * n + b"\x41\x07" + b"\x0b" * n + b"\x0b")],
    )
    # wasm3's own compile limit (the module is valid: the compiling engine runs it, in a worker too)
    for r in (pyphase.run(wasm, limits=RESULT, engine="wasm3"), sandbox.run(wasm, limits=RESULT, engine="wasm3")):
        assert r.status == "invalid_module" and "stack height limit" in r.message, (r.status, r.message)
    r = sandbox.run(wasm, limits=RESULT, engine="wasmtime")
    assert (r.status, r.exit_code) == ("ok", 7), r.message


# ---- from C: an interpreter loop with 3,000 cases, as real modules get deep --------------------------------------


@pytest.fixture(scope="module")
def interpreter_wasm(tmp_path_factory) -> bytes:
    src = tmp_path_factory.mktemp("deep") / "interp3000.c"
    src.write_text(deep_bench.interpreter_source())
    return build_c(src).read_bytes()


def test_c_interpreter_with_3000_cases_nests_deep_and_runs(sandbox, interpreter_wasm):
    assert pyphase.Module(interpreter_wasm).info["max_nesting_depth"] > 1024  # what the old cap refused
    want = deep_bench.interpreter_output()
    for r in (pyphase.run(interpreter_wasm, limits=RESULT), sandbox.run(interpreter_wasm, limits=RESULT)):
        assert (r.status, r.stdout) == ("ok", want), r.message


def test_phase_run_runs_a_deep_module_sandboxed_and_in_process(monkeypatch, tmp_path, no_data_dir):
    from pyphase.cli import main as phase_main

    monkeypatch.setenv("PHASE_HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))  # phase run's default data dir: not this machine's own
    path = tmp_path / "deep.wasm"
    path.write_bytes(switch_module(10000, selectors_for(10000)))
    assert phase_main(["run", str(path)]) == expected(10000)
    assert phase_main(["run", str(path), "--no-sandbox"]) == expected(10000)
