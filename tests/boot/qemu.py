"""Boot QEMU (TCG) and read its serial console until a marker, an exit or a deadline."""

from __future__ import annotations

import os
import re
import selectors
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ANSI_RE = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|c|[()][0-9A-Za-z])")
BOOT_DIR = Path("/boot")


def kernel_image() -> Path:
    kernels = sorted(BOOT_DIR.glob("vmlinuz-*"), key=lambda p: [int(x) if x.isdigit() else x for x in
                                                                 re.split(r"(\d+)", p.name)])
    if not kernels:
        pytest.skip("no kernel in /boot (apt-get install linux-image-amd64)")
    if not os.access(kernels[-1], os.R_OK):
        pytest.skip(f"{kernels[-1]} is not readable")
    return kernels[-1]


def qemu_binary() -> str:
    path = shutil.which("qemu-system-x86_64")
    if path is None:
        pytest.skip("qemu-system-x86_64 not found (apt-get install qemu-system-x86)")
    return path


def free_port() -> int:
    """A loopback port nobody listens on (a 'source that is down')."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class BootResult:
    console: str
    returncode: int | None
    elapsed: float
    marks: dict[str, float] = field(default_factory=dict)

    def __contains__(self, text: str) -> bool:
        return text in self.console

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.console.splitlines()[-n:])


def boot(args: list[str], *, deadline: float = 240.0, stop_on: str | None = None,
         marks: tuple[str, ...] = ()) -> BootResult:
    """Run QEMU with ``args`` until it exits, ``stop_on`` appears (then it is killed) or ``deadline``.

    ``marks``: console substrings whose first appearance time (seconds since start) is recorded.
    """
    cmd = [qemu_binary(), "-nographic", "-no-reboot", *args]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    raw = b""
    seen: dict[str, float] = {}
    try:
        while True:
            left = start + deadline - time.monotonic()
            if left <= 0:
                break
            if sel.select(timeout=min(left, 1.0)):
                chunk = proc.stdout.read()
                if chunk:
                    raw += chunk
                    text = ANSI_RE.sub("", raw.decode("utf-8", "replace"))
                    for m in marks:
                        if m not in seen and m in text:
                            seen[m] = time.monotonic() - start
                    if stop_on and stop_on in text:
                        break
                elif proc.poll() is not None:
                    break
            elif proc.poll() is not None:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        sel.close()
        rest = proc.stdout.read() or b""
        proc.stdout.close()
    text = ANSI_RE.sub("", (raw + rest).decode("utf-8", "replace")).replace("\r", "")
    return BootResult(text, proc.returncode, time.monotonic() - start, seen)
