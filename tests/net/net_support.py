"""Helpers of the network tests: real ``plasmd`` processes on loopback addresses (127.0.0.x), test jobs.

Nodes are waited for by reading the address line each prints once listening (a blocking read with a
deadline), never by sleeping. mDNS, when a test turns it on, is bound to 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

START_TIMEOUT_S = 20.0
_next_host = [2]


def loopback_host() -> str:
    """A fresh 127.0.0.x for each node, so tests also cover distinct hosts."""
    _next_host[0] = _next_host[0] % 250 + 1
    return f"127.0.0.{_next_host[0] + 1}"


def closed_address() -> str:
    """127.0.0.1:PORT with a port bound, never listened on, and closed again: nothing answers there."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


class NodeProc:
    """One ``plasmd`` process; ``restart()`` brings it back on the same address with the same identity."""

    def __init__(
        self,
        data_dir: Path,
        host: str,
        *,
        workers: int = 2,
        sandbox: bool = True,
        mdns: bool = False,
        misbehave: str | None = None,
        extra: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        prefix: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = data_dir
        self.host = host
        self.port = 0
        self.workers = workers
        self.sandbox = sandbox
        self.mdns = mdns
        self.misbehave = misbehave
        self.extra = extra
        self.prefix = prefix  # a command the node runs under, e.g. ("prlimit", "--nofile=256:4096")
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.log_path = data_dir.with_suffix(".log")

    def start(self) -> NodeProc:
        # a node that cheats on purpose runs from the tests' launcher: the shipped daemon has no such switch
        launcher = (
            [str(Path(__file__).with_name("misbehaving_plasmd.py")), self.misbehave]
            if self.misbehave
            else ["-m", "pyphase.daemon"]
        )
        cmd = [
            *self.prefix,
            sys.executable,
            *launcher,
            "--listen",
            f"{self.host}:{self.port}",
            "--data-dir",
            str(self.data_dir),
            "--workers",
            str(self.workers),
        ]
        cmd += ["--mdns-interfaces", "127.0.0.1"] if self.mdns else ["--no-mdns"]
        if not any(arg.startswith("--dht") for arg in self.extra):
            cmd.append("--no-dht")  # DHT tests name their loopback bootstrap nodes (tests/net/test_dht*.py)
        if not self.sandbox:
            cmd.append("--no-sandbox")
        cmd += list(self.extra)
        env = dict(os.environ, PHASE_MDNS_INTERFACES="127.0.0.1", **self.env)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=env)
        log.close()
        self.address = self._read_address()
        self.port = int(self.address.rsplit(":", 1)[1])
        return self

    def _read_address(self) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + START_TIMEOUT_S
        buf = b""
        try:
            while b"\n" not in buf:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not sel.select(remaining):
                    raise RuntimeError(f"plasmd printed no address in {START_TIMEOUT_S}s: {self.log_tail()}")
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    raise RuntimeError(f"plasmd exited ({self.proc.wait()}): {self.log_tail()}")
                buf += chunk
        finally:
            sel.close()
        return buf.split(b"\n", 1)[0].decode().strip()

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def events(self, name: str | None = None) -> list[dict]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if name is None or record.get("event") == name:
                out.append(record)
        return out

    def wait_event(self, name: str, timeout: float = 20.0) -> dict:
        """The first logged event ``name``, polling the log until ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.events(name)
            if found:
                return found[0]
            if time.monotonic() > deadline or not self.alive:
                raise AssertionError(f"no {name} event: {self.log_tail()}")
            time.sleep(0.01)

    def wait_event_count(self, name: str, count: int, timeout: float = 20.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.events(name)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline or not self.alive:
                raise AssertionError(f"fewer than {count} {name} events: {self.log_tail()}")
            time.sleep(0.01)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def restart(self) -> NodeProc:
        self.kill()
        self.close_pipes()
        return self.start()

    def close_pipes(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    self.terminate(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            self.close_pipes()


# Reads stdin; the first 4 bytes (little-endian u32) times 1000 is a busy-loop count; then echoes stdin.
# So a test can choose how long a job runs and every job's output names its input.
SPIN_ECHO = """
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (local $n i32) (local $i i64) (local $count i64)
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 4096))
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (local.set $n (i32.load (i32.const 8)))
    (if (i32.ge_u (local.get $n) (i32.const 4))
      (then (local.set $count (i64.mul (i64.extend_i32_u (i32.load (i32.const 64))) (i64.const 1000)))))
    (block $done (loop $l
      (br_if $done (i64.ge_u (local.get $i) (local.get $count)))
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br $l)))
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (local.get $n))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""


def spin_input(thousands: int, tag: bytes = b"") -> bytes:
    """Input making SPIN_ECHO loop ``thousands`` * 1000 times (about 128k per second here), then echo."""
    return struct.pack("<I", thousands) + tag


def relayed_node(data_dir: Path, via: str, *, workers: int = 1, env: dict[str, str] | None = None) -> NodeProc:
    """A node (not started; jobs in node threads) on a fresh 127.0.0.x, reserving at the relays ``via``."""
    return NodeProc(data_dir, loopback_host(), sandbox=False, workers=workers, extra=("--via-relay", via), env=env)


def job_through_relay(node: NodeProc, relay_at: str, module: bytes, data: bytes) -> Any:
    """Run one job on ``node`` through the relay at ``relay_at`` (``HOST:PORT``) and return its result,
    checked to name that node."""
    from pyphase import Client

    peer_id = node.address.split("@")[0]
    with Client(peers=[f"{peer_id}@relay/{relay_at}"], connect_timeout=5) as client:
        result = client.submit(module, data, retries=0, timeout=20)
    assert result.peer == peer_id and result.stdout == data[::-1], result
    return result


LAB_PORT, LAB_RELAY_PORT = 7465, 7468  # in the NAT lab every host has its own address: fixed ports


def lab_relay(lab_host: Any, data_dir: Path, env: dict[str, str]) -> NodeProc:
    """A relay (``plasmd --relay``, not started) on a NAT lab host (tests/net/natlab.py), relay service at
    ``LAB_RELAY_PORT``."""
    relay = NodeProc(
        data_dir,
        lab_host.ip,
        sandbox=False,
        workers=1,
        extra=("--relay", "--relay-listen", f"{lab_host.ip}:{LAB_RELAY_PORT}", "--no-api"),
        prefix=tuple(lab_host.exec_prefix),
        env=env,
    )
    relay.port = LAB_PORT
    return relay


def fixed_port_relay(data_dir: Path, host: str) -> tuple[NodeProc, int]:
    """A relay (``plasmd --relay``, not started) on a port fixed now, so a restarted relay is where nodes look."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    relay = NodeProc(data_dir, host, sandbox=False, workers=1, extra=("--relay", "--relay-listen", f"{host}:{port}"))
    return relay, port
