"""Malformed and truncated modules fail cleanly with InvalidModule; nothing reaches wasm3 unchecked."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyphase


def section_boundaries(data: bytes) -> list[int]:
    """Offsets where each section starts (after the 8-byte header) and the end."""
    offsets, pos = [8], 8
    while pos < len(data):
        pos += 1
        size, shift = 0, 0
        while True:
            byte = data[pos]
            pos += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        pos += size
        offsets.append(pos)
    return offsets


@pytest.mark.parametrize(
    "data, needle",
    [
        (b"", ""),
        (b"\0asm", ""),
        (b"\0asn\x01\0\0\0", "magic"),
        (b"\0asm\x02\0\0\0", "version"),
        (b"MZ\x90\0" + b"\0" * 60, "magic"),
    ],
)
def test_bad_headers(data, needle):
    with pytest.raises(pyphase.InvalidModule) as info:
        pyphase.Module(data)
    assert needle in str(info.value).lower()
    assert str(info.value)


def test_truncated_at_every_section_boundary(hello_bytes):
    boundaries = section_boundaries(hello_bytes)
    assert boundaries[-1] == len(hello_bytes) and len(boundaries) > 5
    for cut in boundaries[:-1]:
        for delta in (-1, 1, 2, 3):  # inside the previous section, or mid-header of the next
            n = cut + delta
            if 8 <= n < len(hello_bytes):
                with pytest.raises(pyphase.InvalidModule):
                    pyphase.Module(hello_bytes[:n])


def test_truncated_at_every_byte_of_a_small_module(wat):
    data = wat('(module (memory 1) (data (i32.const 0) "hi") (func (export "_start") (drop (i32.const 1))))')
    boundaries = set(section_boundaries(data))
    for n in range(len(data)):
        if n in boundaries:  # whole sections: valid or not by the spec's rules, never a crash
            try:
                pyphase.Module(data[:n])
            except pyphase.InvalidModule:
                pass
            continue
        with pytest.raises(pyphase.InvalidModule):
            pyphase.Module(data[:n])


def test_single_byte_flips_never_crash(hello_bytes):
    rng = random.Random(1234)
    ok = bad = 0
    for _ in range(1500):
        mutated = bytearray(hello_bytes)
        for _ in range(rng.randint(1, 3)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        try:
            module = pyphase.Module(bytes(mutated))
        except pyphase.InvalidModule:
            bad += 1
            continue
        ok += 1
        result = pyphase.run(module, b"abc", limits=pyphase.Limits(fuel=2_000_000, timeout_ms=2000))
        assert result.status in {
            "ok",
            "trap",
            "fuel_exhausted",
            "timeout",
            "invalid_module",
            "memory_limit",
            "output_limit",
        }
    assert bad > 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_arbitrary_bytes_raise_invalid_module(data):
    try:
        pyphase.Module(b"\0asm\x01\0\0\0" + data)
    except pyphase.InvalidModule as exc:
        assert str(exc)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=256))
def test_arbitrary_bytes_without_header(data):
    try:
        pyphase.Module(data)
    except pyphase.InvalidModule:
        pass


def test_invalid_body_is_refused_before_wasm3(wat):
    # i32.add on an empty stack: a type error the validator must catch (wasm3 would read garbage)
    data = bytes.fromhex("0061736d01000000010401600000030201000a070105000d6a1a0b")
    with pytest.raises(pyphase.InvalidModule):
        pyphase.Module(data)


def test_invalid_module_verdict_is_clean_for_run():
    with pytest.raises(pyphase.InvalidModule):
        pyphase.run(b"not wasm")


NOT_WASM = [
    (b"", ["empty", "wasm32-wasi"]),
    (b'(module\n  (func (export "_start")))\n', ["WebAssembly text", "wat2wasm"]),
    (b"  ;; a comment\n(module)", ["WebAssembly text", "wat2wasm"]),
    (b'#include <stdio.h>\nint main(void) { puts("hi"); }\n', ["C source", "ziglang cc -target wasm32-wasi"]),
    (b"\x7fELF\x02\x01\x01\0" + bytes(56), ["native executable", "wasm32-wasi"]),
]


@pytest.mark.parametrize("data, says", NOT_WASM, ids=["empty", "wat", "wat-comment", "c", "elf"])
def test_not_a_module_says_what_it_is_and_what_to_do(data, says):
    with pytest.raises(pyphase.InvalidModule) as info:
        pyphase.Module(data)
    assert all(s in str(info.value) for s in says), str(info.value)
    with pytest.raises(pyphase.InvalidModule, match=says[-1].replace(" ", r"\s")):
        pyphase.run(data)


@pytest.mark.parametrize("data, says", NOT_WASM[:4], ids=["empty", "wat", "wat-comment", "c"])
def test_not_a_module_in_the_sandbox_says_the_same(data, says):
    with pyphase.Sandbox(workers=1) as sandbox:
        result = sandbox.run(data)
    assert result.status == "invalid_module"
    assert all(s in result.message for s in says), result.message
