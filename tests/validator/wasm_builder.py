"""Tiny helpers to hand-assemble WebAssembly binaries for the validator's unit tests."""

from __future__ import annotations

I32, I64, F32, F64 = 0x7F, 0x7E, 0x7D, 0x7C
HEADER = b"\0asm\1\0\0\0"


def leb(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def sleb(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if (n == 0 and not b & 0x40) or (n == -1 and b & 0x40):
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)


def vec(items) -> bytes:
    items = list(items)
    return leb(len(items)) + b"".join(items)


def name(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return leb(len(b)) + b


def section(sid: int, payload: bytes) -> bytes:
    return bytes([sid]) + leb(len(payload)) + payload


def functype(params=(), results=()) -> bytes:
    return b"\x60" + vec(bytes([t]) for t in params) + vec(bytes([t]) for t in results)


def body(code: bytes, locals_=()) -> bytes:
    """locals_: [(count, type)]; code must include the final 0x0b."""
    b = vec(leb(n) + bytes([t]) for n, t in locals_) + code
    return leb(len(b)) + b


def module(
    types=(),
    imports=(),
    funcs=(),
    tables=(),
    mems=(),
    globals_=(),
    exports=(),
    start=None,
    elems=(),
    datacount=None,
    codes=(),
    data=(),
    customs=(),
) -> bytes:
    """Each argument is a list of already-encoded entries (bytes); sections are emitted only when non-empty."""
    out = bytearray(HEADER)
    for c in customs:
        out += section(0, c)
    if types:
        out += section(1, vec(types))
    if imports:
        out += section(2, vec(imports))
    if funcs:
        out += section(3, vec(leb(f) for f in funcs))
    if tables:
        out += section(4, vec(tables))
    if mems:
        out += section(5, vec(mems))
    if globals_:
        out += section(6, vec(globals_))
    if exports:
        out += section(7, vec(exports))
    if start is not None:
        out += section(8, leb(start))
    if elems:
        out += section(9, vec(elems))
    if datacount is not None:
        out += section(12, leb(datacount))
    if codes:
        out += section(10, vec(codes))
    if data:
        out += section(11, vec(data))
    return bytes(out)


def func_module(code: bytes, params=(), results=(), locals_=(), memory=True, table=False, extra_types=()) -> bytes:
    """One function of type params->results with the given body code (without the final end)."""
    return module(
        types=[functype(params, results), *extra_types],
        funcs=[0],
        tables=[b"\x70\x00\x01"] if table else [],
        mems=[b"\x00\x01"] if memory else [],
        codes=[body(code + b"\x0b", locals_)],
    )


def sections(wasm: bytes):
    """Yields (id, start_of_header, payload_start, payload_end) for each section of a well-formed module."""
    i = 8
    while i < len(wasm):
        sid = wasm[i]
        j = i + 1
        size = shift = 0
        while True:
            b = wasm[j]
            j += 1
            size |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        yield sid, i, j, j + size
        i = j + size
