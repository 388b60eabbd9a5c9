"""pyphase._spec (csrc/phase_spec.c): the test-support API the spec runner drives, checked on small modules."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from spec_exec import require_spec  # noqa: E402

_spec = require_spec()

pytestmark = pytest.mark.skipif(shutil.which("wat2wasm") is None, reason="needs wabt's wat2wasm")


def wat(tmp_path, text: str) -> bytes:
    src, out = tmp_path / "m.wat", tmp_path / "m.wasm"
    src.write_text(text)
    subprocess.run(["wat2wasm", str(src), "-o", str(out)], check=True)
    return out.read_bytes()


def f32(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def test_invoke_results_globals_and_traps(tmp_path):
    inst = _spec.Instance(
        wat(
            tmp_path,
            """(module
      (import "spectest" "print_i32" (func $p (param i32)))
      (global (export "g") f32 (f32.const 1.5))
      (func (export "add") (param i32 i32) (result i32) (call $p (local.get 0)) (i32.add (local.get 0) (local.get 1)))
      (func (export "div") (param i64 i64) (result i64) (i64.div_s (local.get 0) (local.get 1)))
      (func (export "multi") (result i32 i64 f64) (i32.const -1) (i64.const -2) (f64.const -0))
      (func $r (export "rec") (call $r)))""",
        )
    )
    assert inst.invoke("add", [0xFFFFFFFF, 2], "ii") == [("i", 1)]
    assert inst.get_global("g") == ("f", f32(1.5))
    assert inst.signature("multi") == "iIF()"
    assert inst.invoke("multi") == [("i", 0xFFFFFFFF), ("I", 2**64 - 2), ("F", 1 << 63)]
    with pytest.raises(_spec.Trap, match="integer divide by zero"):
        inst.invoke("div", [1, 0])
    with pytest.raises(_spec.Trap, match="stack overflow"):
        inst.invoke("rec")
    assert inst.invoke("add", [1, 2]) == [("i", 3)]  # usable after traps
    with pytest.raises(_spec.InvokeError, match="expects 'i'"):
        inst.invoke("add", [1, 2], "iI")
    with pytest.raises(_spec.InvokeError, match="no exported function"):
        inst.invoke("nope")


def test_registered_imports_call_across_runtimes(tmp_path):
    a = _spec.Instance(
        wat(
            tmp_path,
            """(module
      (memory 1) (data (i32.const 0) "\\2a")
      (func (export "load") (param i32) (result i32) (i32.load8_u (local.get 0)))
      (func (export "boom") (unreachable)))""",
        )
    )
    b = _spec.Instance(
        wat(
            tmp_path,
            """(module
      (import "A" "load" (func $load (param i32) (result i32)))
      (import "A" "boom" (func $boom))
      (export "A.load" (func $load))
      (func (export "twice") (param i32) (result i32) (i32.add (call $load (local.get 0)) (call $load (local.get 0))))
      (func (export "boom") (call $boom)))""",
        ),
        {"A": a},
    )
    assert b.invoke("twice", [0]) == [("i", 84)]
    assert b.invoke("A.load", [0]) == [("i", 42)]  # an exported import is found
    with pytest.raises(_spec.Trap, match="unreachable"):
        b.invoke("boom")
    with pytest.raises(_spec.InstantiateError) as e:
        _spec.Instance(wat(tmp_path, '(module (import "A" "load" (func (param i64))))'), {"A": a})
    assert e.value.status == "unlinkable"


def test_statuses(tmp_path):
    for text, status in [
        ('(module (import "spectest" "memory" (memory 1)))', "unsupported"),
        ('(module (import "spectest" "nothing" (func)))', "unlinkable"),
        ('(module (memory 1) (data (i32.const 65536) "x"))', "trap"),
        ("(module (func $s unreachable) (start $s))", "trap"),
    ]:
        with pytest.raises(_spec.InstantiateError) as e:
            _spec.Instance(wat(tmp_path, text))
        assert e.value.status == status, (text, e.value)
    with pytest.raises(_spec.InstantiateError) as e:
        _spec.Instance(b"\0asm\1\0\0\0\x01")
    assert e.value.status == "invalid"


def test_runaway_loop_ends_at_the_call_deadline(tmp_path):
    inst = _spec.Instance(wat(tmp_path, '(module (func (export "spin") (loop (br 0))))'))
    inst.set_call_timeout_ms(50)
    with pytest.raises(_spec.Trap, match="timeout"):
        inst.invoke("spin")


def test_memory_is_reserved_lazily_up_to_4_gib(tmp_path):
    inst = _spec.Instance(
        wat(
            tmp_path,
            """(module (memory 1)
      (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
      (func (export "poke") (param i32) (i32.store8 (local.get 0) (i32.const 7)))
      (func (export "peek") (param i32) (result i32) (i32.load8_u (local.get 0))))""",
        )
    )
    assert inst.invoke("grow", [1000]) == [("i", 1)]
    inst.invoke("poke", [1001 * 65536 - 1])
    assert inst.invoke("peek", [1001 * 65536 - 1]) == [("i", 7)]
    # wasm3 0.5.0 stops at 32768 pages (d_m3MaxLinearMemoryPages): growth past it fails cleanly
    assert inst.invoke("grow", [40000]) == [("i", 0xFFFFFFFF)]
