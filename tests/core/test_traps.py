"""Each trap kind maps to status ``trap`` with a clear message; none may take the process down."""

from __future__ import annotations

import pytest

import pyphase

TRAPS = {
    "unreachable": ('(module (func (export "_start") unreachable))', "unreachable"),
    "div_zero": ('(module (func (export "_start") (drop (i32.div_s (i32.const 1) (i32.const 0)))))', "divide by zero"),
    "int_overflow": (
        '(module (func (export "_start") (drop (i32.div_s (i32.const -2147483648) (i32.const -1)))))',
        "overflow",
    ),
    "oob_load": ('(module (memory 1) (func (export "_start") (drop (i32.load (i32.const 65535)))))', "out of bounds"),
    "oob_store_high": (
        '(module (memory 1) (func (export "_start") (i64.store (i32.const -1) (i64.const 1))))',
        "out of bounds",
    ),
    "indirect_mismatch": (
        "(module (type $t (func (result i32))) (table 1 funcref) (elem (i32.const 0) $f)"
        ' (func $f) (func (export "_start") (drop (call_indirect (type $t) (i32.const 0)))))',
        "indirect call",
    ),
    "indirect_null": (
        '(module (type $t (func)) (table 2 funcref) (func (export "_start") (call_indirect (type $t) (i32.const 1))))',
        "",
    ),
    "indirect_oob": (
        '(module (type $t (func)) (table 1 funcref) (func (export "_start") (call_indirect (type $t) (i32.const 5))))',
        "",
    ),
    "stack_overflow": ('(module (func $f (call $f)) (func (export "_start") (call $f)))', "stack overflow"),
    "start_function": ('(module (func $s unreachable) (start $s) (func (export "_start")))', "unreachable"),
    "float_to_int": ('(module (func (export "_start") (drop (i32.trunc_f32_s (f32.const nan)))))', ""),
}


@pytest.mark.parametrize("name", sorted(TRAPS))
def test_trap(wat, name):
    source, needle = TRAPS[name]
    r = pyphase.run(wat(source))
    assert r.status == "trap", (r.status, r.message)
    assert r.exit_code == -1
    assert needle in r.message
    with pytest.raises(pyphase.Trap):
        r.check()


def test_deep_c_recursion_traps_not_segfaults(probe_bytes):
    r = pyphase.run(probe_bytes, args=["recurse"], limits=pyphase.Limits(stack_bytes=16 << 20))
    assert r.status == "trap" and "stack overflow" in r.message


def test_native_stack_guard_with_huge_value_stack(wat):
    # A value stack far larger than the C stack could back: the native-stack check must trap first.
    r = pyphase.run(
        wat('(module (func $f (param i64) (call $f (local.get 0))) (func (export "_start") (call $f (i64.const 1))))'),
        limits=pyphase.Limits(stack_bytes=16 << 20),
    )
    assert r.status == "trap" and "stack overflow" in r.message


def test_deeply_nested_loops_trap_or_run(wat):
    depth = 400
    body = "(loop " * depth + "(br_if 0 (i32.const 0))" + ")" * depth
    r = pyphase.run(
        wat(
            f"(module (func $f (param i32) {body} (if (local.get 0) (then"
            f" (call $f (i32.sub (local.get 0) (i32.const 1))))))"
            f' (func (export "_start") (call $f (i32.const 100000))))'
        ),
        limits=pyphase.Limits(stack_bytes=16 << 20),
    )
    assert r.status in ("ok", "trap")
    if r.status == "trap":
        assert "stack overflow" in r.message


def test_missing_entry(wat):
    r = pyphase.run(wat('(module (func (export "main")))'))
    assert r.status == "invalid_module" and "_start" in r.message


def test_custom_entry_returning_i32(wat):
    r = pyphase.run(wat('(module (func (export "main") (result i32) (i32.const 5)))'), entry="main")
    assert (r.status, r.exit_code) == ("ok", 5)


def test_entry_with_params_is_refused(wat):
    r = pyphase.run(wat('(module (func (export "f") (param i32)))'), entry="f")
    assert r.status == "invalid_module" and "no arguments" in r.message


def test_data_segment_out_of_bounds_fails_instantiation(wat, engine):
    r = pyphase.run(wat('(module (memory 1) (data (i32.const 65535) "ab") (func (export "_start")))'))
    assert r.status in ("trap", "invalid_module")
    # wasmtime names the trap only: "out of bounds memory access"
    assert "data segment" in r.message if engine.endswith("wasm3") else "out of bounds" in r.message


def test_f32_block_result_is_not_clobbered(wat):
    # single fp results: guards the semantics only. Without patch 0003 the extra copy's source and target are both
    # the f32 result's register record here, so nothing is emitted (see the multi-value tests below for the bug)
    r = pyphase.run(
        wat("""(module (func (export "_start") (result i32) (local i32)
        (local.set 0 (i32.const 41))
        (drop (block (result f32) (f32.const 1.5)))
        (i32.add (local.get 0) (i32.const 1))))""")
    )
    assert (r.status, r.exit_code) == ("ok", 42)


def test_branch_out_of_fp_block_with_extra_values(wat):
    # upstream's reproducer for #465 (a segfault there): br out of an f32 block with two values on the stack.
    # Without patch 0003 the value below the result is copied to slot 60002 (wasm3's fp0 register alias), about
    # 234 KiB past the frame: inside our default 512 KiB value stack, so this passes unpatched too, but it is a
    # write outside the frame (a segfault with a 64 KiB value stack in a scratch harness)
    r = pyphase.run(
        wat(
            '(module (func (export "_start") (result i32) (local i32) (local.set 0 (i32.const 41))'
            " (block $b (result f32) (f32.const 1) (f32.const 2) (br $b))"
            " (drop) (i32.add (local.get 0) (i32.const 1))))"
        )
    )
    assert (r.status, r.exit_code) == ("ok", 42)


# Block results whose last type is f32/f64 with integer results before it (patch 0003, wasm3 #465/#491). Each
# _start keeps the block's results in locals and returns them as decimal digits (the fp result truncated).
# Items: result types, the block, the correct exit code, and the code a build without patch 0003 returns.
FP_LAST_RESULTS = {
    "block_end_three": (
        "i32 i32 f32",
        "(block (result i32 i32 f32) (i32.const 1) (i32.const 2) (f32.const 3.5))",
        123,
        213,
    ),
    "block_end_four": (
        "i32 i32 i32 f64",
        "(block (result i32 i32 i32 f64) (i32.const 1) (i32.const 2) (i32.const 3) (f64.const 4))",
        1234,
        3124,
    ),
    "if_else_three": (
        "i32 i32 f64",
        "(if (result i32 i32 f64) (i32.eqz (local.get $c))"
        " (then (i32.const 9) (i32.const 9) (f64.const 9))"
        " (else (i32.const 4) (i32.const 5) (f64.const 6)))",
        456,
        546,
    ),
    "loop_end_three": (
        "i32 i32 f32",
        "(loop (result i32 i32 f32) (i32.const 1) (i32.const 2) (f32.const 3))",
        123,
        213,
    ),
    "locals_three": (
        "i32 i32 f32",
        "(block (result i32 i32 f32) (local.get $c) (i32.add (local.get $c) (i32.const 1)) (f32.const 3))",
        783,
        873,
    ),
    "br_over_value_below": (
        "i32 f32",
        "(block (result i32 f32) (i32.const 9) (i32.const 1) (f32.const 2) (br 0))",
        12,
        92,
    ),
}


def fp_last_results_module(types: str, body: str) -> str:
    names = [f"$r{i}" for i in range(len(types.split()))]
    decls = " ".join(f"(local {n} {t})" for n, t in zip(names, types.split()))
    sets = " ".join(f"(local.set {n})" for n in reversed(names))
    digits = "(i32.const 0)"
    for n, t in zip(names, types.split()):
        value = f"(local.get {n})" if t == "i32" else f"(i32.trunc_{t}_s (local.get {n}))"
        digits = f"(i32.add (i32.mul {digits} (i32.const 10)) {value})"
    return (
        f'(module (func (export "_start") (result i32) (local $c i32) {decls}'
        f" (local.set $c (i32.const 7)) {body} {sets} {digits}))"
    )


@pytest.mark.parametrize("case", FP_LAST_RESULTS)
def test_fp_last_block_results_land_in_their_own_slots(wat, case):
    """Fails without patch 0003: wasm3 0.5.0 copies the n values *below* the fp result into the n result slots
    (the last of which is the fp register's alias, a slot far past the frame). At a fall-through end with n >= 3
    the integer results come out rotated (1,2,3.5 -> 2,1,3.5); on a branch with a value below the results, the
    first result takes that value (and the stray write past the frame happens too). At a fall-through end with
    n = 1 source and target are the same record and with n = 2 the second copy repairs the first, which is why
    the older tests and the spec testsuite never showed it.

    Checked: this tree built with 0003 removed (scratch CMake build, its _core imported in place of the installed
    one) fails every case with exactly the `unpatched` code; the correct codes are also what wabt's wasm-interp
    and node (V8) return for the same modules. The spec testsuite gives identical results with or without 0003,
    so these are the only tests of it."""
    types, body, expected, _unpatched = FP_LAST_RESULTS[case]
    r = pyphase.run(wat(fp_last_results_module(types, body)))
    assert (r.status, r.exit_code) == ("ok", expected), r.message


def test_call_indirect_multibyte_table_index(hello_bytes):
    # zig/LLVM >= 19 default flags encode call_indirect's table index as a multi-byte LEB (patch 0001)
    assert pyphase.run(hello_bytes, b"ab").stdout == b"ba"


def test_many_arguments_near_stack_end_trap_cleanly(wat):
    # without patch 0004 the caller writes these arguments past the value stack's end: a segfault here
    params = " ".join(["i64"] * 200)
    args = " ".join(["(i64.const 1)"] * 200)
    r = pyphase.run(
        wat(
            f"(module (func $g (param {params})) (func $f (call $g {args}) (call $f))"
            f' (func (export "_start") (call $f)))'
        ),
        limits=pyphase.Limits(stack_bytes=64 << 10),
    )
    assert r.status == "trap" and "stack overflow" in r.message


def test_long_valid_function_runs(wat):
    # the interpreter needs sibling-call optimisation; an unoptimised build crashes on long bodies
    body = "(local.set 0 (i32.add (local.get 0) (i32.const 1)))\n" * 20000
    r = pyphase.run(wat(f'(module (func (export "_start") (result i32) (local i32) {body} (local.get 0)))'))
    assert (r.status, r.exit_code) == ("ok", 20000)


def test_empty_element_segment_is_fine(wat):
    # wasm3 0.5.0 failed this valid module with "memory allocation failed" (patch 0008)
    r = pyphase.run(wat('(module (table 10 funcref) (elem (i32.const 0)) (func (export "_start")))'))
    assert r.status == "ok", r.message


def test_element_segment_past_the_declared_table_fails_instantiation(wat, engine):
    r = pyphase.run(wat('(module (table 1 funcref) (func $f) (elem (i32.const 1) $f) (func (export "_start")))'))
    assert r.status == "trap" and ("does not fit" if engine.endswith("wasm3") else "undefined element") in r.message


def test_call_indirect_bounds_are_the_declared_table(wat):
    # index 3 is inside the declared table of 5 but was never initialised: a trap, not "out of bounds" of a
    # table wasm3 had sized by its segments
    r = pyphase.run(
        wat(
            "(module (type $t (func)) (table 5 funcref) (func $f) (elem (i32.const 0) $f)"
            ' (func (export "_start") (call_indirect (type $t) (i32.const 3))))'
        )
    )
    assert r.status == "trap"
    ok = pyphase.run(
        wat(
            "(module (type $t (func)) (table 5 funcref) (func $f) (elem (i32.const 4) $f)"
            ' (func (export "_start") (call_indirect (type $t) (i32.const 4))))'
        )
    )
    assert ok.status == "ok", ok.message


def test_wasm_integer_overflow_wraps(wat):
    r = pyphase.run(
        wat('(module (func (export "_start") (result i32) (i32.add (i32.const 2147483647) (i32.const 1))))')
    )
    assert (r.status, r.exit_code) == ("ok", -2147483648)
