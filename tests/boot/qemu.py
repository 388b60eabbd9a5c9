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
from typing import Sequence

import pytest

ANSI_RE = re.compile(r"\x1b(\[[0-9;?=<>]*[ -/]*[@-~]|c|[()][0-9A-Za-z])")
BOOT_DIR = Path("/boot")


def kernel_image() -> Path:
    kernels = sorted(
        BOOT_DIR.glob("vmlinuz-*"), key=lambda p: [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", p.name)]
    )
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


# The DHT guard for guests: the suite's PHASE_DHT_ALLOW cannot see inside a booted machine, whose stage 1 and
# stage 2 take their DHT nodes from phase.dht=. Allowed: the host as QEMU's user network shows it (10.0.2.2,
# fec0::2) and names under phase.test (only the tests' dnsmasq answers those).
GUEST_DHT_HOSTS = ("10.0.2.2", "fec0::2")


def check_guest_dht(append: str) -> None:
    """Fail (AssertionError) if a guest's command line names a DHT node outside this machine."""
    for arg in append.split():
        if not arg.startswith("phase.dht=") or arg == "phase.dht=off":
            continue
        for item in filter(None, arg.split("=", 1)[1].split(",")):
            host = item.rpartition(":")[0].strip("[]")
            if host not in GUEST_DHT_HOSTS and not host.endswith(".phase.test"):
                raise AssertionError(f"a guest's DHT node {item} could be outside this machine ({arg})")


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


class Qemu:
    """A running QEMU whose console is read as it comes; ``wait_for`` returns on a marker or deadline."""

    def __init__(
        self, args: list[str], marks: tuple[str, ...] = (), prefix: Sequence[str] = (), binary: str | None = None
    ) -> None:
        """``prefix``: runs QEMU through it, e.g. ``ip netns exec NS`` (which execs QEMU: same pid).
        ``binary``: another QEMU than qemu-system-x86_64 (qemu-system-aarch64)."""
        if "-append" in args:
            check_guest_dht(args[args.index("-append") + 1])
        cmd = [*prefix, binary or qemu_binary(), "-nographic", "-no-reboot", *args]
        self.start = time.monotonic()
        self.marks_wanted = marks
        self.marks: dict[str, float] = {}
        self.raw = b""
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.proc.stdout, selectors.EVENT_READ)

    @property
    def text(self) -> str:
        return ANSI_RE.sub("", self.raw.decode("utf-8", "replace")).replace("\r", "")

    def _pump(self, timeout: float) -> bool:
        """Read what is there; False once QEMU has exited and its output is drained."""
        assert self.proc.stdout is not None
        if self.sel.select(timeout=timeout):
            chunk = self.proc.stdout.read()
            if chunk:
                self.raw += chunk
                text = self.text
                for m in self.marks_wanted:
                    if m not in self.marks and m in text:
                        self.marks[m] = time.monotonic() - self.start
                return True
        return self.proc.poll() is None

    def wait_for(self, needle: str | None, deadline: float) -> bool:
        """Until ``needle`` is on the console (True), QEMU exits or ``deadline`` s pass (False)."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if needle is not None and needle in self.text:
                return True
            if not self._pump(min(1.0, max(0.0, end - time.monotonic()))):
                break
        return needle is not None and needle in self.text

    def wait_for_match(self, pattern: re.Pattern[str], deadline: float) -> re.Match[str] | None:
        """Like :meth:`wait_for`, for a regular expression (end it with ``\\n`` to wait for whole lines)."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            m = pattern.search(self.text)
            if m:
                return m
            if not self._pump(min(1.0, max(0.0, end - time.monotonic()))):
                break
        return pattern.search(self.text)

    def close(self) -> BootResult:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        assert self.proc.stdout is not None
        self.sel.close()
        os.set_blocking(self.proc.stdout.fileno(), True)
        self.raw += self.proc.stdout.read() or b""
        self.proc.stdout.close()
        return BootResult(self.text, self.proc.returncode, time.monotonic() - self.start, dict(self.marks))


def boot(
    args: list[str], *, deadline: float = 240.0, stop_on: str | None = None, marks: tuple[str, ...] = ()
) -> BootResult:
    """Run QEMU with ``args`` until it exits, ``stop_on`` appears (then it is killed) or ``deadline``.

    ``marks``: console substrings whose first appearance time (seconds since start) is recorded.
    """
    q = Qemu(args, marks)
    try:
        q.wait_for(stop_on, deadline)
    finally:
        result = q.close()
    return result
