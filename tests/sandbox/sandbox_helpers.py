"""Helpers of the sandbox tests: wait on worker processes by polling with deadlines, never by sleeping."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

from pyphase.sandbox import Sandbox

CORPUS = Path(__file__).resolve().parent / "corpus"


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` until true, failing after ``timeout`` seconds (monotonic clock)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def proc_status(pid: int) -> dict[str, str]:
    """Fields of /proc/<pid>/status ({} once the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return -1
    return int(fields[11]) + int(fields[12])


def assert_hello_works(sb: Sandbox, hello: bytes) -> None:
    r = sb.run(hello, b"Hello, World")
    assert (r.status, r.stdout) == ("ok", b"dlroW ,olleH"), r


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not proc_status(pid).get("State", "").startswith("Z")


def leb(n: int) -> bytes:
    """Unsigned LEB128, as the wasm binary format writes sizes and indices."""
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def vec(items: list[bytes]) -> bytes:
    return leb(len(items)) + b"".join(items)


def section(kind: int, payload: bytes) -> bytes:
    return bytes([kind]) + leb(len(payload)) + payload


def sleb(n: int) -> bytes:
    """Signed LEB128 of a non-negative ``n`` (i32.const's immediate)."""
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if not n and not low & 0x40:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def big_module(functions: int = 300, ops: int = 2500, spin: int = 0) -> bytes:
    """A valid WASI command of several MB (``functions`` bodies of ``ops`` arithmetic steps on 8 locals, never
    called): wasm3 runs it at once, Cranelift takes seconds to compile it. With ``spin``, ``_start`` counts to it
    first (wasm3: 0.55 s for 100 million with the 8 MB module, here at load 1)."""
    body = bytearray()
    for i in range(ops):
        body += b"\x20" + leb(1 + i % 8) + b"\x20" + leb(1 + (i * 5 + 3) % 8)
        body += (b"\x6a", b"\x73", b"\x6c")[i % 3] + b"\x21" + leb(1 + (i * 3 + 1) % 8)
    func = leb(1) + leb(8) + b"\x7f" + bytes(body) + b"\x20\x01\x0b"
    start = leb(0) + b"\x0b"
    if spin:  # (local i32) loop: local0 += 1; br_if local0 < spin
        start = leb(1) + leb(1) + b"\x7f" + b"\x03\x40\x20\x00\x41\x01\x6a\x22\x00\x41" + sleb(spin)
        start += b"\x49\x0d\x00\x0b\x0b"
    return b"".join(
        [
            b"\0asm\1\0\0\0",
            section(1, vec([b"\x60\x00\x00", b"\x60\x01\x7f\x01\x7f"])),  # () -> (), (i32) -> i32
            section(3, vec([leb(0)] + [leb(1)] * functions)),
            section(5, vec([b"\x00\x01"])),
            section(7, vec([b"\x06_start\x00" + leb(0), b"\x06memory\x02" + leb(0)])),
            section(10, vec([leb(len(start)) + start] + [leb(len(func)) + func] * functions)),
        ]
    )
