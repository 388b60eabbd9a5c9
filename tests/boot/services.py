"""Real network services for boot tests, on loopback: a SOCKS5 proxy (microsocks) and a DNS server (dnsmasq)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from .qemu import free_port


def _wait_listening(port: int, proc: subprocess.Popen, what: str, *, udp: bool = False) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        if udp:
            out = subprocess.run(["ss", "-Hlun", f"sport = :{port}"], capture_output=True, text=True).stdout
            if out.strip():
                return
        else:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
        time.sleep(0.05)
    raise RuntimeError(f"{what} is not listening on {port}")


class SocksProxy:
    """microsocks on 127.0.0.1; ``log()`` is what it printed, one ``client[..] IP: connected to HOST:PORT`` per CONNECT."""

    def __init__(self, directory: Path, bind: str = "127.0.0.1") -> None:
        binary = shutil.which("microsocks")
        if binary is None:
            pytest.skip("microsocks not found (apt-get install microsocks)")
        self.port = free_port()
        self.logfile = directory / f"microsocks-{self.port}.log"
        self._log = self.logfile.open("wb")
        self.proc = subprocess.Popen(
            [binary, "-i", bind, "-p", str(self.port)], stdout=self._log, stderr=subprocess.STDOUT
        )
        _wait_listening(self.port, self.proc, "microsocks")

    def log(self) -> str:
        return self.logfile.read_text(errors="replace")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self._log.close()

    def __enter__(self) -> "SocksProxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DnsServer:
    """dnsmasq on 127.0.0.1:PORT, authoritative for ``phase.test`` only (no upstream: nothing leaves the host).

    ``records`` maps names under phase.test to IPv4 addresses; other names there get NXDOMAIN.
    """

    def __init__(self, records: dict[str, str]) -> None:
        binary = shutil.which("dnsmasq") or ("/usr/sbin/dnsmasq" if Path("/usr/sbin/dnsmasq").exists() else None)
        if binary is None:
            pytest.skip("dnsmasq not found (apt-get install dnsmasq-base)")
        self.port = free_port()
        args = [
            binary,
            "--keep-in-foreground",
            f"--port={self.port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--local=/phase.test/",
            "--user=root",
            "--group=root",
            "--pid-file=",
            "--log-queries",
            "--log-facility=-",
        ]
        args += [f"--address=/{name}/{ip}" for name, ip in records.items()]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _wait_listening(self.port, self.proc, "dnsmasq", udp=True)

    def close(self) -> str:
        """Stop; returns dnsmasq's query log."""
        self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err.decode(errors="replace")

    def __enter__(self) -> "DnsServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
