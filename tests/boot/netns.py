"""A private LAN for QEMU boot tests: a Linux network namespace with a bridge and a tap device.

Local mode is mDNS, i.e. multicast; under QEMU user networking the guest's multicast would
leave through the host's real interfaces. Here the guest's NIC is a tap device on a bridge
inside a namespace of its own, which holds nothing but ``lo``, ``br0`` (the "LAN", with the
host side's address) and ``tap0`` (the guest's cable): no route or link leads out of it, so
whatever the guest, the DHCP server, the artifact server or the client send stays inside.
Processes join it through ``ip netns exec``. Needs root, ``ip`` (iproute2) and /dev/net/tun.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import IO, Sequence

import pytest

BRIDGE, TAP = "br0", "tap0"


def require_netns() -> str:
    """The ``ip`` binary, or a skip saying what is missing."""
    if os.geteuid() != 0:
        pytest.skip("network namespace tests need root (ip netns, a bridge and a tap device)")
    ip = shutil.which("ip")
    if ip is None:
        pytest.skip("ip not found (apt-get install iproute2)")
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("/dev/net/tun is missing: no tap devices for QEMU")
    return ip


class Netns:
    """A uniquely named namespace ``phase-boot-PID-XXXXXX`` with ``br0`` at 10.77.N.1/24 and ``tap0`` on it.

    :meth:`popen` starts processes inside it and :meth:`close` ends exactly those (then anything
    else still in the namespace, which can only have been started through it) and deletes it.
    """

    def __init__(self, workdir: Path) -> None:
        self.ip_bin = require_netns()
        self.name = f"phase-boot-{os.getpid()}-{secrets.token_hex(3)}"
        self.net = f"10.77.{random.randint(1, 254)}"
        self.host = f"{self.net}.1"
        self.bridge, self.tap = BRIDGE, TAP
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []
        self._created = False

    # --- set-up and tear-down ---------------------------------------------------------------
    def _ip(self, *args: str) -> None:
        proc = subprocess.run([self.ip_bin, *args], capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")

    def create(self) -> Netns:
        self._ip("netns", "add", self.name)
        self._created = True
        ns = ("-n", self.name)
        self._ip(*ns, "link", "set", "lo", "up")
        self._ip(*ns, "link", "add", self.bridge, "type", "bridge")
        self._ip(*ns, "addr", "add", f"{self.host}/24", "dev", self.bridge)
        self._ip(*ns, "link", "set", self.bridge, "up")
        self._ip(*ns, "tuntap", "add", "dev", self.tap, "mode", "tap")
        self._ip(*ns, "link", "set", self.tap, "master", self.bridge)
        self._ip(*ns, "link", "set", self.tap, "up")
        links = sorted(self.links())
        assert links == sorted(["lo", self.bridge, self.tap]), f"unexpected links in {self.name}: {links}"
        return self

    def links(self) -> list[str]:
        out = subprocess.run(
            [self.ip_bin, "-n", self.name, "-o", "link", "show"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]

    def routes(self) -> str:
        return subprocess.run(
            [self.ip_bin, "-n", self.name, "route", "show", "table", "all"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout

    def close(self) -> None:
        for proc in reversed(self.procs):
            _stop(proc)
        if self._created:
            # Anything still inside was started through this namespace (children of ours): end it by pid.
            pids = subprocess.run(
                [self.ip_bin, "netns", "pids", self.name], capture_output=True, text=True, timeout=30
            ).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run([self.ip_bin, "netns", "del", self.name], capture_output=True, timeout=30)
            self._created = False
        for f in self._logs:
            f.close()

    def __enter__(self) -> Netns:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- running things inside --------------------------------------------------------------
    def prefix(self) -> list[str]:
        """Prefix a command with this to run it inside the namespace (``ip netns exec`` execs it: same pid)."""
        return [self.ip_bin, "netns", "exec", self.name]

    def popen(self, cmd: Sequence[str], log_name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``cmd`` inside, stdout and stderr to ``workdir/log_name``; stopped by :meth:`close`."""
        log = open(self.workdir / log_name, "wb")
        self._logs.append(log)
        proc = subprocess.Popen(
            [*self.prefix(), *cmd], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        self.procs.append(proc)
        return proc

    def run(
        self,
        cmd: Sequence[str],
        *,
        timeout: float,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.prefix(), *cmd], capture_output=True, text=True, timeout=timeout, env=env)

    def wait_log(self, proc: subprocess.Popen[bytes], log_name: str, needle: str, deadline: float) -> str:
        """The log's text once it contains ``needle``; fails if the process exits or the deadline passes."""
        end = time.monotonic() + deadline
        path = self.workdir / log_name
        while True:
            text = path.read_text(errors="replace")
            if needle in text:
                return text
            if proc.poll() is not None or time.monotonic() > end:
                raise AssertionError(f"{log_name}: no {needle!r} (exit {proc.poll()}):\n{text[-2000:]}")
            time.sleep(0.1)

    # --- services ---------------------------------------------------------------------------
    def start_dhcp(self, busybox: str = "/bin/busybox") -> subprocess.Popen[bytes]:
        """busybox udhcpd on the bridge: leases 10.77.N.10-50, no router, no DNS (a bare LAN)."""
        conf = self.workdir / "udhcpd.conf"
        leases = self.workdir / "udhcpd.leases"
        leases.touch()
        conf.write_text(
            f"start {self.net}.10\nend {self.net}.50\ninterface {self.bridge}\n"
            f"lease_file {leases}\npidfile {self.workdir / 'udhcpd.pid'}\nmax_leases 40\n"
            f"opt subnet 255.255.255.0\nopt lease 3600\n"
        )
        proc = self.popen([busybox, "udhcpd", "-f", str(conf)], "udhcpd.log")
        self.wait_log(proc, "udhcpd.log", "started", 30)
        return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
