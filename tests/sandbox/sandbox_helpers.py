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
