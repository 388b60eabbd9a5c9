"""Hand-made edge cases for the module validator (csrc/wasm_validate.c), called through ctypes.

Run: python -m pytest tests/validator -q -s
"""

from __future__ import annotations

import ctypes
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from wasm_builder import (  # noqa: E402
    F32,
    F64,
    HEADER,
    I32,
    I64,
    body,
    func_module,
    functype,
    leb,
    module,
    name,
    section,
    sections,
    sleb,
    vec,
)

REPO = HERE.parent.parent
SOURCES = sorted(str(p) for p in (REPO / "csrc").glob("wasm_validate*.c"))

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

CAP_FIELDS = [
    "max_types",
    "max_functions",
    "max_imports",
    "max_exports",
    "max_globals",
    "max_data_segments",
    "max_elem_segments",
    "max_table_size",
    "max_locals_per_function",
    "max_params",
    "max_results",
    "max_nesting_depth",
    "max_body_bytes",
    "max_operand_stack",
    "max_br_table_targets",
    "work_per_byte",
]


class Caps(ctypes.Structure):
    _fields_ = [("max_module_bytes", ctypes.c_size_t)] + [(f, ctypes.c_uint32) for f in CAP_FIELDS]


class Info(ctypes.Structure):
    _fields_ = [
        ("has_memory", ctypes.c_int),
        ("mem_initial_pages", ctypes.c_uint32),
        ("mem_has_max", ctypes.c_int),
        ("mem_max_pages", ctypes.c_uint32),
        ("num_imported_functions", ctypes.c_uint32),
        ("num_defined_functions", ctypes.c_uint32),
        ("num_types", ctypes.c_uint32),
        ("num_exports", ctypes.c_uint32),
        ("has_start", ctypes.c_int),
        ("start_function", ctypes.c_uint32),
        ("has_table", ctypes.c_int),
        ("table_initial", ctypes.c_uint32),
        ("table_has_max", ctypes.c_int),
        ("table_max", ctypes.c_uint32),
        ("num_globals", ctypes.c_uint32),
        ("num_data_segments", ctypes.c_uint32),
        ("num_elem_segments", ctypes.c_uint32),
        ("max_nesting_depth", ctypes.c_uint32),
    ]


CHECK = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_char_p,
    ctypes.c_void_p,
    ctypes.c_size_t,
)


@pytest.fixture(scope="session")
def lib(tmp_path_factory):
    so = tmp_path_factory.mktemp("validator") / "libwasmvalidate.so"
    subprocess.run(
        [
            "gcc",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-O2",
            "-shared",
            "-fPIC",
            "-I",
            str(REPO / "csrc"),
            *SOURCES,
            "-o",
            str(so),
        ],
        check=True,
    )
    lib = ctypes.CDLL(str(so))
    lib.phase_wasm_validate.restype = ctypes.c_int
    lib.phase_wasm_validate.argtypes = [
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.POINTER(Caps),
        CHECK,
        ctypes.c_void_p,
        ctypes.POINTER(Info),
        ctypes.c_char_p,
        ctypes.c_size_t,
    ]
    lib.phase_wasm_caps_default.argtypes = [ctypes.POINTER(Caps)]
    return lib


def caps(lib, **kw) -> Caps:
    c = Caps()
    lib.phase_wasm_caps_default(ctypes.byref(c))
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def validate(lib, wasm: bytes, caps_: Caps | None = None, check=None):
    """Returns (ok, message, info)."""
    err = ctypes.create_string_buffer(512)
    info = Info()
    cb = CHECK(check) if check else CHECK()
    rc = lib.phase_wasm_validate(
        wasm, len(wasm), ctypes.byref(caps_) if caps_ else None, cb, None, ctypes.byref(info), err, len(err)
    )
    return rc == 0, err.value.decode("utf-8", "replace"), info


def ok(lib, wasm, **kw):
    good, msg, info = validate(lib, wasm, **kw)
    assert good, msg
    return info


def bad(lib, wasm, *fragments, **kw) -> str:
    good, msg, _ = validate(lib, wasm, **kw)
    assert not good, "accepted, expected rejection"
    assert msg, "rejected without a message"
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"
    return msg


# ---------------------------------------------------------------------------------------------------------------
# a module with every section, used for truncation tests


def full_module() -> bytes:
    return module(
        customs=[name("hello") + b"payload"],
        types=[functype([I32, I64], [I32]), functype(), functype([], [I32, I32])],
        imports=[name("wasi_snapshot_preview1") + name("fd_write") + b"\x00" + leb(0)],
        funcs=[1, 0, 2],
        tables=[b"\x70\x01\x02\x10"],
        mems=[b"\x01\x01\x02"],
        globals_=[bytes([I32, 1]) + b"\x41" + sleb(-5) + b"\x0b", bytes([F64, 0]) + b"\x44" + bytes(8) + b"\x0b"],
        exports=[name("run") + b"\x00" + leb(1), name("mem") + b"\x02" + leb(0), name("g") + b"\x03" + leb(0)],
        start=1,
        elems=[leb(0) + b"\x41\x00\x0b" + vec([leb(0), leb(2)])],
        datacount=1,
        codes=[
            body(b"\x01\x0b"),
            body(b"\x20\x00\x20\x01\xa7\x6a\x0b", [(1, F32)]),
            body(b"\x02\x02\x41\x01\x41\x02\x0b\x0b"),  # block (type 2) -> [i32 i32]
        ],
        data=[leb(0) + b"\x41\x08\x0b" + name("data!")],
    )


def test_full_module_and_info(lib):
    info = ok(lib, full_module())
    assert (info.num_imported_functions, info.num_defined_functions, info.num_types, info.num_exports) == (1, 3, 3, 3)
    assert (info.has_memory, info.mem_initial_pages, info.mem_has_max, info.mem_max_pages) == (1, 1, 1, 2)
    assert info.has_start == 1 and info.start_function == 1
    assert (info.has_table, info.table_initial, info.table_max) == (1, 2, 16)
    assert (info.num_globals, info.num_data_segments, info.num_elem_segments) == (2, 1, 1)


def test_empty_module_and_header(lib):
    ok(lib, HEADER)
    bad(lib, b"", "magic header not detected")
    bad(lib, b"\0asm", "unexpected end")
    bad(lib, b"\0asm\2\0\0\0", "unknown binary version")
    bad(lib, b"\0ASM\1\0\0\0", "magic header")


def test_every_prefix_is_rejected_unless_at_a_section_boundary(lib):
    wasm = full_module()
    boundaries = {8} | {end for _, _, _, end in sections(wasm)}
    rejected = 0
    for n in range(len(wasm)):
        good, msg, _ = validate(lib, wasm[:n])
        if n in boundaries:
            continue  # a module cut after a whole section may be valid (or lack its code section)
        assert not good, f"prefix of {n} bytes accepted"
        assert msg
        rejected += 1
    print(f"\n{rejected} truncated prefixes rejected")


def test_every_section_truncated_at_each_byte(lib):
    """Cut each section's payload at every byte, fixing up the section size so the rest of the module follows."""
    wasm = full_module()
    count = 0
    for sid, hdr, start, end in sections(wasm):
        for k in range(end - start):
            payload = wasm[start : start + k]
            mutated = wasm[:hdr] + section(sid, payload) + wasm[end:]
            if sid == 0 and k >= 6:  # a custom section only needs its name
                ok(lib, mutated)
                continue
            bad(lib, mutated)
            count += 1
    print(f"\n{count} truncated sections rejected")


def test_messages_name_section_function_and_offset(lib):
    wasm = func_module(b"\x42\x01\x41\x02\x6a\x1a", memory=False)  # i64.const 1; i32.const 2; i32.add
    msg = bad(lib, wasm, "type mismatch: i32.add expects [i32 i32], got [i64 i32]")
    assert msg.startswith("function 0 at offset 0x"), msg
    msg = bad(lib, module(types=[functype()], funcs=[5]), "unknown type 5")
    assert msg.startswith("function section at offset 0x"), msg
    # imported functions count in the function index space
    wasm = module(
        types=[functype()],
        imports=[name("m") + name("f") + b"\x00\x00"],
        funcs=[0, 0],
        codes=[body(b"\x0b"), body(b"\x41\x00\x0b")],
    )
    bad(lib, wasm, "function 2 at offset", "extra value")


# ---------------------------------------------------------------------------------------------------------------
# LEB128


def test_leb_encodings(lib):
    # a 5-byte u32 encoding of a small number is legal
    ok(lib, HEADER + b"\x01\x84\x80\x80\x80\x00" + b"\x01\x60\x00\x00")
    # 6 bytes: too long
    bad(lib, HEADER + b"\x01\x84\x80\x80\x80\x80\x00" + b"\x01\x60\x00\x00", "integer representation too long")
    # 5th byte with unused bits set
    bad(lib, HEADER + b"\x01\x05\x81\x80\x80\x80\x10", "integer too large")
    # i32.const: overlong and unused bits
    bad(lib, func_module(b"\x41\x80\x80\x80\x80\x80\x00\x1a"), "integer representation too long")
    bad(lib, func_module(b"\x41\xff\xff\xff\xff\x4f\x1a"), "integer too large")
    ok(lib, func_module(b"\x41\xff\xff\xff\xff\x7f\x1a"))  # -1 in 5 bytes: sign bits consistent
    ok(lib, func_module(b"\x41\x80\x80\x80\x80\x78\x1a"))  # INT32_MIN
    # i64.const: 10 bytes ok, 11 too long, bad unused bits
    ok(lib, func_module(b"\x42" + b"\xff" * 9 + b"\x7f\x1a"))
    bad(lib, func_module(b"\x42" + b"\x80" * 10 + b"\x00\x1a"), "integer representation too long")
    bad(lib, func_module(b"\x42" + b"\x80" * 9 + b"\x02\x1a"), "integer too large")
    # truncated LEB at the end of a section
    bad(lib, HEADER + b"\x01\x01\x80", "unexpected end")


# ---------------------------------------------------------------------------------------------------------------
# counts and caps


def test_huge_counts_are_rejected_without_allocating(lib):
    t0 = time.perf_counter()
    bad(lib, HEADER + section(1, leb(0xFFFFFFFF)), "types")
    bad(lib, HEADER + section(3, leb(0xFFFFFFF0)), "functions")
    bad(lib, HEADER + section(6, leb(50000)), "globals")
    bad(lib, HEADER + section(7, leb(99999) + b"\x00"), "exports")
    bad(lib, HEADER + section(11, leb(99999)), "data segments")
    # a huge local count: caps, then the 2^32 overflow itself
    bad(lib, func_module(b"", locals_=[(0xFFFFFFFF, I32)]), "too many locals")
    bad(
        lib,
        func_module(b"", locals_=[(0x80000000, I32), (0x80000000, I64)]),
        "too many locals",
        caps_=caps(lib, max_locals_per_function=0xFFFFFFFF),
    )
    bad(lib, func_module(b"\x41\x00\x0e" + leb(0xFFFFFFF) + b"\x00"), "br_table targets")
    bad(lib, module(types=[functype([I32] * 1001)]), "1001 parameters")
    assert time.perf_counter() - t0 < 1.0


def test_caps_are_enforced(lib):
    f = [functype()]
    bad(lib, module(types=f * 5), "too many types", caps_=caps(lib, max_types=4))
    bad(
        lib,
        module(types=f, funcs=[0] * 5, codes=[body(b"\x0b")] * 5),
        "too many functions",
        caps_=caps(lib, max_functions=4),
    )
    bad(
        lib,
        module(types=f, imports=[name("m") + name(str(i)) + b"\x00\x00" for i in range(3)]),
        "imports",
        caps_=caps(lib, max_imports=2),
    )
    bad(lib, module(tables=[b"\x70\x00" + leb(2000)]), "table initial size 2000", caps_=caps(lib, max_table_size=1000))
    bad(lib, func_module(b"\x01" * 100), "exceeds the limit", caps_=caps(lib, max_body_bytes=50))
    bad(lib, func_module(b"\x41\x00" * 10 + b"\x1a" * 10), "operand stack", caps_=caps(lib, max_operand_stack=8))
    bad(lib, HEADER + bytes(100), "exceeds the limit", caps_=caps(lib, max_module_bytes=64))


def test_deep_nesting_validates_in_linear_time_and_reports_its_depth(lib):
    # A big C switch is one block per case: real modules nest far deeper than 1024 (wasm3 compiles them on a
    # stack sized from the depth reported here, csrc/phase_stack.c).
    for n in (1025, 10000, 100000):
        t0 = time.perf_counter()
        info = ok(lib, func_module(b"\x02\x40" * n + b"\x0b" * n, memory=False))
        assert time.perf_counter() - t0 < 0.5
        assert info.max_nesting_depth == n + 1  # the function frame counts
    info = ok(lib, func_module(b"\x03\x40" * 5000 + b"\x0b" * 5000 + b"\x02\x40\x0b", memory=False))
    assert info.max_nesting_depth == 5001
    info = ok(lib, func_module((b"\x41\x01\x04\x40") * 3000 + b"\x0b" * 3000, memory=False))
    assert info.max_nesting_depth == 3001
    assert ok(lib, func_module(b"\x01", memory=False)).max_nesting_depth == 1


def test_nesting_cap_bounds_the_hostile_extremes(lib):
    default = caps(lib)
    assert default.max_nesting_depth == 1 << 18
    # 2.8 M nested blocks in one 8 MiB body (3 bytes a level): refused at the cap, quickly
    n = (8 << 20) // 3 - 4
    t0 = time.perf_counter()
    msg = bad(
        lib,
        func_module(b"\x02\x40" * n + b"\x0b" * n, memory=False),
        f"control nesting depth exceeds the limit of {1 << 18}",
    )
    assert time.perf_counter() - t0 < 2.0
    print("\n" + msg)
    # 4 M opened blocks never closed: the body ends first or the cap does, never memory
    bad(lib, func_module(b"\x02\x40" * ((4 << 20) - 8), memory=False), "nesting depth")
    # exactly the cap is fine, one more is not
    m = (1 << 18) - 1
    assert ok(lib, func_module(b"\x02\x40" * m + b"\x0b" * m, memory=False)).max_nesting_depth == 1 << 18
    bad(lib, func_module(b"\x02\x40" * (m + 1) + b"\x0b" * (m + 1), memory=False), "nesting depth")
    # a lower cap
    bad(lib, func_module(b"\x02\x40" * 20 + b"\x0b" * 20), "limit of 16", caps_=caps(lib, max_nesting_depth=16))


def test_thousands_of_functions(lib):
    n = 20000
    code = body(b"\x20\x00\x41\x01\x6a\x10" + leb(0) + b"\x0b")  # local.get 0; i32.const 1; i32.add; call 0
    wasm = module(
        types=[functype([I32], [I32])],
        funcs=[0] * n,
        codes=[code] * n,
        exports=[name(f"f{i}") + b"\x00" + leb(i) for i in range(n)],
    )
    t0 = time.perf_counter()
    info = ok(lib, wasm)
    dt = time.perf_counter() - t0
    assert info.num_defined_functions == n and info.num_exports == n
    print(f"\n{n} functions, {len(wasm)} bytes: {dt * 1e3:.2f} ms")
    # thousands of imports
    imports = [name("env") + name(f"i{i}") + b"\x00\x00" for i in range(5000)]
    assert ok(lib, module(types=[functype()], imports=imports)).num_imported_functions == 5000
    bad(lib, module(types=[functype()], imports=imports + [name("env") + name("x") + b"\x00\x00"] * 5001), "imports")


def test_duplicate_exports(lib):
    ok(
        lib,
        module(
            types=[functype()],
            funcs=[0],
            codes=[body(b"\x0b")],
            exports=[name("a") + b"\x00\x00", name("b") + b"\x00\x00"],
        ),
    )
    bad(
        lib,
        module(
            types=[functype()],
            funcs=[0],
            codes=[body(b"\x0b")],
            exports=[name("a") + b"\x00\x00", name("b") + b"\x00\x00", name("a") + b"\x00\x00"],
        ),
        'duplicate export name "a"',
    )


def test_names_in_messages_are_printable_ascii(lib):
    nm = 'é\n"x' * 30
    msg = bad(
        lib,
        module(
            types=[functype()],
            funcs=[0],
            codes=[body(b"\x0b")],
            exports=[name(nm) + b"\x00\x00", name(nm) + b"\x00\x00"],
        ),
        "duplicate export name",
    )
    assert msg.isascii() and "\n" not in msg and "\\xc3\\xa9\\x0a\\x22x" in msg and msg.endswith('..."'), msg


def test_utf8_names(lib):
    for good_name in ["plain", "é", "日本", "\U0001f600"]:
        ok(lib, module(customs=[name(good_name)]))
    for bad_name in [b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe0\x80\x80", b"\x80", b"\xc3"]:
        bad(lib, module(customs=[name(bad_name)]), "UTF-8")
        bad(lib, module(types=[functype()], imports=[name("m") + name(bad_name) + b"\x00\x00"]), "UTF-8")


# ---------------------------------------------------------------------------------------------------------------
# imports through the callback


def test_import_callback_gets_wasm3_signatures(lib):
    seen = []

    def check(ctx, mod, modlen, nm, nmlen, sig, err, errlen):
        m = ctypes.string_at(mod, modlen).decode()
        n = ctypes.string_at(nm, nmlen).decode()
        seen.append((m, n, sig.decode()))
        if n == "forbidden":
            msg = b"no such host function"
            ctypes.memmove(err, msg + b"\0", len(msg) + 1)
            return 1
        return 0

    types = [functype([I32] * 4, [I32]), functype([I64, F32, F64], []), functype([], [I32, I64])]
    imports = [
        name("wasi_snapshot_preview1") + name("fd_write") + b"\x00\x00",
        name("env") + name("f") + b"\x00\x01",
        name("env") + name("g") + b"\x00\x02",
    ]
    ok(lib, module(types=types, imports=imports), check=check)
    assert seen == [("wasi_snapshot_preview1", "fd_write", "i(iiii)"), ("env", "f", "v(IfF)"), ("env", "g", "iI()")]
    msg = bad(
        lib,
        module(types=types, imports=imports + [name("env") + name("forbidden") + b"\x00\x00"]),
        "forbidden",
        "no such host function",
        check=check,
    )
    assert msg.startswith("import section at offset"), msg


# ---------------------------------------------------------------------------------------------------------------
# features: accepted extensions, and what wasm3 0.5.0 cannot run


def test_accepted_extensions(lib):
    # sign extension
    ok(lib, func_module(b"\x41\x00\xc0\x41\x00\xc1\x6a\x1a\x42\x00\xc2\x42\x00\xc3\x7c\x42\x00\xc4\x7c\x1a"))
    # non-trapping float-to-int
    for sub, (src, dst) in enumerate(
        [(F32, I32), (F32, I32), (F64, I32), (F64, I32), (F32, I64), (F32, I64), (F64, I64), (F64, I64)]
    ):
        const = b"\x43" + bytes(4) if src == F32 else b"\x44" + bytes(8)
        ok(lib, func_module(const + b"\xfc" + leb(sub), results=[dst]))
    # bulk memory copy / fill
    ok(lib, func_module(b"\x41\x00\x41\x00\x41\x00\xfc\x0a\x00\x00\x41\x00\x41\x00\x41\x00\xfc\x0b\x00"))
    bad(lib, func_module(b"\x41\x00\x41\x00\x41\x00\xfc\x0b\x00", memory=False), "unknown memory 0")
    # multi-value: function results, block with type index and params, br with values
    t_pair = functype([], [I32, I64])
    ok(
        lib,
        module(
            types=[t_pair, functype([I32, I64], [I64, I32])],
            funcs=[0],
            codes=[body(b"\x41\x01\x42\x02\x02\x01\x1a\x1a\x42\x03\x41\x04\x0b\x1a\x1a\x41\x05\x42\x06\x0b")],
        ),
    )
    ok(
        lib, module(types=[functype([I32], [I32])], funcs=[0], codes=[body(b"\x20\x00\x03\x00\x41\x01\x6a\x0b\x0b")])
    )  # loop (type 0) [i32]->[i32]
    # mutable global export
    ok(lib, module(globals_=[bytes([I32, 1]) + b"\x41\x00\x0b"], exports=[name("g") + b"\x03\x00"]))
    # data count section
    ok(lib, module(mems=[b"\x00\x01"], datacount=1, data=[b"\x00\x41\x00\x0b" + name("x")]))
    bad(lib, module(mems=[b"\x00\x01"], datacount=2, data=[b"\x00\x41\x00\x0b" + name("x")]), "inconsistent")
    bad(lib, module(mems=[b"\x00\x01"], datacount=1), "inconsistent")
    # call_indirect with the reference-types encoding of table 0 as a padded 5-byte LEB (LLVM >= 19)
    for enc in [b"\x00", b"\x80\x00", b"\x80\x80\x80\x80\x00"]:
        ok(lib, func_module(b"\x41\x00\x11\x00" + enc, table=True))
    bad(lib, func_module(b"\x41\x00\x11\x00\x81\x00", table=True), "table 1")
    bad(lib, func_module(b"\x41\x00\x11\x00\x00"), "unknown table 0")
    # memory limits
    ok(lib, module(mems=[b"\x01\x00" + leb(65536)]))
    bad(lib, module(mems=[b"\x00" + leb(65537)]), "65536 pages")
    bad(lib, module(mems=[b"\x01\x02\x01"]), "minimum 2 must not be greater than maximum 1")


UNSUPPORTED = {
    "SIMD opcode": func_module(b"\xfd\x0c" + bytes(16) + b"\x1a"),
    "SIMD value type": module(types=[functype([0x7B])]),
    "atomics": func_module(b"\x41\x00\xfe\x10\x02\x00\x1a"),
    "memory64": module(mems=[b"\x04\x01"]),
    "shared memory": module(mems=[b"\x03\x01\x02"]),
    "multiple memories": module(mems=[b"\x00\x01", b"\x00\x01"]),
    "multiple tables": module(tables=[b"\x70\x00\x01", b"\x70\x00\x01"]),
    "memory import": module(imports=[name("env") + name("memory") + b"\x02\x00\x01"]),
    "table import": module(imports=[name("env") + name("table") + b"\x01\x70\x00\x01"]),
    "global import": module(imports=[name("env") + name("g") + b"\x03\x7f\x00"]),
    "table.get": func_module(b"\x41\x00\x25\x00\x1a", table=True),
    "table.size": func_module(b"\xfc\x10\x00\x1a", table=True),
    "memory.init": func_module(b"\x41\x00\x41\x00\x41\x00\xfc\x08\x00\x00"),
    "data.drop": func_module(b"\xfc\x09\x00"),
    "ref.null": func_module(b"\xd0\x70\x1a"),
    "ref.func": func_module(b"\xd2\x00\x1a"),
    "typed select": func_module(b"\x41\x00\x41\x00\x41\x00\x1c\x01\x7f\x1a"),
    "try": func_module(b"\x06\x40\x0b"),
    "throw": func_module(b"\x08\x00"),
    "return_call": func_module(b"\x12\x00"),
    "externref table": module(tables=[b"\x6f\x00\x01"]),
    "passive data": module(mems=[b"\x00\x01"], data=[b"\x01" + name("x")]),
    "passive elem": module(tables=[b"\x70\x00\x01"], elems=[b"\x01\x00" + vec([])]),
    "ref.null in const expr": module(globals_=[bytes([I32, 0]) + b"\xd0\x70\x0b"]),
}


@pytest.mark.parametrize("what", sorted(UNSUPPORTED))
def test_unsupported_features_are_named(lib, what):
    msg = bad(lib, UNSUPPORTED[what], "unsupported: ")
    print(f"\n{what}: {msg}")


# ---------------------------------------------------------------------------------------------------------------
# body typing details


def test_body_typing(lib):
    # unreachable makes the stack polymorphic
    ok(lib, func_module(b"\x00\x6a", results=[I32]))
    ok(lib, func_module(b"\x00\x1b", results=[I32]))
    bad(lib, func_module(b"\x00\x42\x00\x6a", results=[I32]), "i32.add expects [i32 i32], got [... i64]")
    # br_table: same arity required; values checked against every label
    ok(lib, func_module(b"\x02\x7f\x02\x7f\x41\x00\x41\x00\x0e\x01\x00\x01\x0b\x0b", results=[I32]))
    bad(lib, func_module(b"\x02\x7f\x02\x40\x41\x00\x41\x00\x0e\x01\x00\x01\x0b\x0b", results=[I32]), "arities")
    # if without else must have matching params/results
    bad(lib, func_module(b"\x41\x00\x04\x7f\x41\x01\x0b", results=[I32]), "if without else")
    ok(lib, func_module(b"\x41\x00\x04\x7f\x41\x01\x05\x41\x02\x0b", results=[I32]))
    # else without if, end without block, missing end
    bad(lib, func_module(b"\x05"), "else without matching if")
    bad(lib, func_module(b"\x0b"), "after its final end")
    bad(lib, module(types=[functype()], funcs=[0], codes=[body(b"\x01")]), "missing end")
    # alignment and memory index
    ok(lib, func_module(b"\x41\x00\x28\x02\x00\x1a"))
    bad(lib, func_module(b"\x41\x00\x28\x03\x00\x1a"), "alignment must not be larger than natural")
    bad(lib, func_module(b"\x41\x00\x28\x02\x00\x1a", memory=False), "unknown memory 0")
    bad(lib, func_module(b"\x3f\x01\x1a"), "memory index")
    bad(lib, func_module(b"\x3f\x80\x00\x1a"), "zero flag expected")
    # locals
    ok(lib, func_module(b"\x20\x05\x21\x04", params=[I32], locals_=[(3, I64), (2, F32)]))
    bad(lib, func_module(b"\x20\x06\x1a", params=[I32], locals_=[(3, I64), (2, F32)]), "unknown local 6")
    bad(
        lib,
        func_module(b"\x20\x05\x21\x01", params=[I32], locals_=[(3, I64), (2, F32)]),
        "local.set 1 expects [i64], got [f32]",
    )
    # globals
    g = [bytes([I32, 0]) + b"\x41\x00\x0b"]
    bad(lib, module(types=[functype()], funcs=[0], globals_=g, codes=[body(b"\x41\x00\x24\x00\x0b")]), "immutable")
    bad(lib, module(globals_=[bytes([I32, 0]) + b"\x23\x00\x0b"]), "unknown global")
    bad(lib, module(globals_=[bytes([I32, 0]) + b"\x41\x00\x41\x00\x0b"]), "single constant")
    bad(lib, module(globals_=[bytes([I32, 0]) + b"\x41\x00\x41\x00\x6a\x0b"]), "constant")
    bad(lib, module(globals_=[bytes([I64, 0]) + b"\x41\x00\x0b"]), "type mismatch")
    # illegal opcodes
    for op in [0x27, 0xC5, 0xFF]:
        bad(lib, func_module(bytes([op])), "illegal opcode")


def test_pathological_work_is_bounded(lib):
    # calls to a function with 1000 params/results, back to back: bounded by the work limit
    t = functype([I32] * 1000, [I32] * 1000)
    wasm = module(types=[t], funcs=[0], codes=[body(b"\x00" + b"\x10\x00" * 100000 + b"\x0b")])
    t0 = time.perf_counter()
    validate(lib, wasm)
    assert time.perf_counter() - t0 < 2.0


def test_random_bytes_never_crash_in_process(lib):
    rng = random.Random(1234)
    base = full_module()
    for _ in range(20000):
        if rng.random() < 0.3:
            wasm = HEADER + bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        else:
            b = bytearray(base)
            for _ in range(rng.randrange(1, 6)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            wasm = bytes(b[: rng.randrange(len(b) + 1)] if rng.random() < 0.2 else b)
        good, msg, _ = validate(lib, wasm)
        assert good or msg


# ---------------------------------------------------------------------------------------------------------------
# ASan + UBSan mutation fuzzing (C driver)


def test_mutation_fuzz_under_asan_ubsan(tmp_path):
    exe = tmp_path / "fuzz_validate"
    subprocess.run(
        [
            "gcc",
            "-O1",
            "-g",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer",
            "-I",
            str(REPO / "csrc"),
            *SOURCES,
            str(HERE / "fuzz_validate.c"),
            "-o",
            str(exe),
        ],
        check=True,
    )
    seeds = [tmp_path / "full.wasm", tmp_path / "multi.wasm"]
    seeds[0].write_bytes(full_module())
    seeds[1].write_bytes(
        module(
            types=[functype([I32], [I32, I64]), functype([I32, I64], [I64, I32])],
            funcs=[0],
            tables=[b"\x70\x00\x01"],
            mems=[b"\x00\x01"],
            codes=[
                body(
                    b"\x20\x00\x42\x01\x02\x01\x1a\x20\x00\x0e\x01\x00\x00\x0b\x42\x02"
                    b"\x41\x00\x41\x00\x41\x00\xfc\x0b\x00\x0b"
                )
            ],
        )
    )
    hello = REPO / "examples" / "hello" / "hello.wasm"
    if hello.exists():
        seeds.append(hello)
    iters = int(os.environ.get("PHASE_FUZZ_ITERATIONS", "300000"))
    p = subprocess.run([str(exe), str(iters), "42", *map(str, seeds)], capture_output=True, text=True, timeout=600)
    print("\n" + p.stdout.strip())
    assert p.returncode == 0, p.stderr[-4000:]
