"""Abusive clients of a node (issue 10's attacks), each run on a thread until stopped, and the honest load they
run beside: for the slow soak (tests/net/test_abuse_soak.py) and the benchmark (bench/abuse_bench.py).

Every attacker talks real ``phase/1`` over CURVE from its own loopback source address (127.0.0.x), so a node
can tell it from the honest clients, which connect from 127.0.0.1.
"""

from __future__ import annotations

import os
import statistics
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Callable

import msgpack
import zmq
import zmq.utils.z85

from pyphase import Client, Identity
from pyphase.net.client import parse_address
from pyphase.limits import Limits
from pyphase.manifest import make_manifest
from pyphase.net import wire

# Writes stdin's first u32 blocks of 64 KiB of zeros to stdout.
BIG_OUTPUT = """
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "_start")
    (local $count i32)
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 4))
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (local.set $count (i32.load (i32.const 64)))
    (i32.store (i32.const 16) (i32.const 65536))
    (i32.store (i32.const 20) (i32.const 65536))
    (block $done (loop $l
      (br_if $done (i32.eqz (local.get $count)))
      (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))
      (local.set $count (i32.sub (local.get $count) (i32.const 1)))
      (br $l)))))
"""


def predicted_routing_ids(count: int) -> list[bytes]:
    """The ids libzmq 4.3.5 hands anonymous peers when nothing seeded ``rand()``: ``00`` + a counter started
    from two ``rand()`` calls per socket made (src/random.cpp). Computed in a fresh process, as an attacker would."""
    code = (
        "import ctypes; libc = ctypes.CDLL(None)\n"
        f"for _ in range({count}):\n"
        "    lo = libc.rand(); hi = libc.rand(); print('00%08x' % (((hi << 31) | lo) & 0xffffffff))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return [bytes.fromhex(line) for line in out.split()]


class Conn:
    """One hand-driven CURVE DEALER with a fresh key, from ``source`` (a loopback address)."""

    def __init__(
        self, ctx: zmq.Context[Any], address: str, source: str, *, routing_id: bytes | None = None, unread: bool = False
    ) -> None:
        import nacl.bindings

        self.sock = ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        if routing_id is not None:
            self.sock.setsockopt(zmq.ROUTING_ID, routing_id)
        if unread:  # reads nothing ahead: TCP pushes back on the node
            self.sock.setsockopt(zmq.RCVHWM, 1)
            self.sock.setsockopt(zmq.RCVBUF, 4096)
        _, key, host, port = parse_address(address)
        pub, sec = Identity.generate().curve_keypair()
        self.sock.curve_publickey = zmq.utils.z85.encode(pub)
        self.sock.curve_secretkey = zmq.utils.z85.encode(sec)
        self.sock.curve_serverkey = zmq.utils.z85.encode(nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(key))
        self.sock.connect(f"tcp://{source}:0;{host}:{port}")

    def send(self, frames: list[Any]) -> bool:
        try:
            self.sock.send_multipart(frames, zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def offer(self, tag: bytes, module: bytes, data: bytes, **options: Any) -> bool:
        return self.send(wire.encode("offer", (data,), job=tag, manifest=make_manifest(module, data, **options)))

    def drain(self, timeout_ms: int = 0) -> list[wire.Message]:
        out = []
        while self.sock.poll(timeout_ms):
            try:
                out.append(wire.decode(self.sock.recv_multipart(zmq.NOBLOCK)))
            except (zmq.Again, wire.WireError):
                break
            timeout_ms = 0
        return out

    def close(self) -> None:
        self.sock.close(0)


class Attack(threading.Thread):
    """An attacker: ``step()`` repeated until :meth:`stop`; its connections closed at the end."""

    name_: str = ""

    def __init__(self, address: str, source: str, modules: dict[str, bytes], boot: str = "") -> None:
        super().__init__(daemon=True)
        self.address = address
        self.boot = boot  # HOST:PORT of the node's boot server (plasmd --boot-store), for attack 8
        self.source = source
        self.modules = modules
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.conns: list[Conn] = []
        self._stop_event = threading.Event()
        self.count = 0

    def conn(self, **options: Any) -> Conn:
        c = Conn(self.ctx, self.address, self.source, **options)
        self.conns.append(c)
        return c

    def run(self) -> None:
        try:
            self.setup()
            while not self._stop_event.is_set():
                self.step()
        finally:
            for c in self.conns:
                c.close()
            self.ctx.term()

    def setup(self) -> None:
        pass

    def step(self) -> None:
        self._stop_event.wait(1)

    def wait(self, seconds: float) -> None:
        self._stop_event.wait(seconds)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(30)


class ClaimRoutingIds(Attack):
    """1: hold the routing ids libzmq would hand the next anonymous peers."""

    name_ = "claimed routing ids"

    def setup(self) -> None:
        for rid in predicted_routing_ids(8):
            self.conn(routing_id=rid).send([msgpack.packb({"v": 1, "t": "caps?"})])


class PendingOffers(Attack):
    """2: bursts of 70 offers for modules the node lacks, never followed by the module, then a disconnect."""

    name_ = "offers never followed by their module"

    def step(self) -> None:
        c = Conn(self.ctx, self.address, self.source)
        for i in range(70):
            self.count += c.offer(b"w%d" % i, os.urandom(64), b"x" * 300)
        self.wait(0.5)
        c.close()


class GoneSpinners(Attack):
    """3: 66 jobs spinning to their 1 s timeout, then the client leaves; again every second."""

    name_ = "spinning jobs, client gone"

    def step(self) -> None:
        c = Conn(self.ctx, self.address, self.source)
        spin = self.modules["spin"]
        data = struct.pack("<I", 10_000_000)
        for i in range(66):
            self.count += c.offer(b"s%d" % i, spin, data, limits=Limits(timeout_ms=1000))
        for msg in c.drain(500):
            if msg.type == "accept" and msg["module"]:
                c.send(wire.encode("module", (spin,), job=msg["job"]))
        self.wait(0.5)
        c.close()


class UnreadResults(Attack):
    """4: asks for 16 MiB outputs and never reads an answer."""

    name_ = "16 MiB results never read"

    def setup(self) -> None:
        self.c = self.conn(unread=True)
        self.i = 0

    def step(self) -> None:
        big = self.modules["big_output"]
        for _ in range(8):
            self.count += self.c.offer(
                b"o%d" % self.i, big, struct.pack("<I", 256), limits=Limits(output_bytes=16 << 20, timeout_ms=10_000)
            )
            if self.i == 0:
                self.wait(0.2)
                self.c.send(wire.encode("module", (big,), job=b"o0"))
            self.i += 1
        self.wait(0.25)


class LogFlood(Attack):
    """5: headers with 4 x 60 KiB of zero bytes in ``v``, as fast as the node takes them."""

    name_ = "malformed 240 KiB headers"

    def setup(self) -> None:
        self.c = self.conn()
        self.big = msgpack.packb({"v": [b"\0" * (60 << 10)] * 4, "t": "caps?"}, use_bin_type=True)

    def step(self) -> None:
        for _ in range(20):
            self.count += self.c.send([self.big])
        self.c.drain(0)
        self.wait(0.02)


class IdleConnections(Attack):
    """7: hundreds of idle CURVE connections from one address."""

    name_ = "300 idle connections"

    def setup(self) -> None:
        for _ in range(300):
            self.conn().send([msgpack.packb({"v": 1, "t": "caps?"})])
            self.count += 1


class SlowBootReaders(Attack):
    """8: 34 clients, each from an address of its own, reading a big boot artifact at 4 KiB/s; reconnect when cut off."""

    name_ = "boot: 34 slow readers"
    readers = 34

    def setup(self) -> None:
        import socket

        self.socks: list[Any] = [None] * self.readers
        self.socket = socket

    def _open(self, i: int) -> Any:
        host, port = self.boot.rsplit(":", 1)
        c = self.socket.socket()
        c.setsockopt(self.socket.SOL_SOCKET, self.socket.SO_RCVBUF, 4096)
        c.bind((f"127.0.1.{1 + i}", 0))
        c.settimeout(1.0)
        try:
            c.connect((host, int(port)))
            c.sendall(f"GET {self.modules['boot_path'].decode()} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        except OSError:
            c.close()
            return None
        c.setblocking(False)
        self.count += 1
        return c

    def step(self) -> None:
        for i, c in enumerate(self.socks):
            if c is None:
                self.socks[i] = c = self._open(i)
            if c is None:
                continue
            try:
                if not c.recv(4096):  # cut off (or refused with a 503 and closed): come back
                    c.close()
                    self.socks[i] = None
            except BlockingIOError:
                pass
            except OSError:
                c.close()
                self.socks[i] = None
        self.wait(1.0)

    def run(self) -> None:
        try:
            super().run()
        finally:
            for c in self.socks:
                if c is not None:
                    c.close()


class TrickledBootHeaders(Attack):
    """8: 1,100 connections to the boot server sending their headers a byte at a time; reopened when closed."""

    name_ = "boot: 1,100 trickled headers"
    connections = 1100

    def setup(self) -> None:
        import socket

        self.socket = socket
        self.socks: list[Any] = []

    def _open(self) -> Any:
        host, port = self.boot.rsplit(":", 1)
        c = self.socket.socket()
        c.bind((self.source, 0))
        c.setblocking(False)
        try:
            c.connect_ex((host, int(port)))
        except OSError:
            c.close()
            return None
        self.count += 1
        return c

    def step(self) -> None:
        while len(self.socks) < self.connections:
            c = self._open()
            if c is None:
                break
            self.socks.append(c)
        alive = []
        for c in self.socks:
            try:
                c.send(b"G")
                alive.append(c)
            except BlockingIOError:
                alive.append(c)
            except OSError:  # closed by the server (a 503, or the header deadline): reopened next step
                c.close()
        self.socks = alive
        self.wait(0.5)

    def run(self) -> None:
        try:
            super().run()
        finally:
            for c in self.socks:
                c.close()


ATTACKS: list[type[Attack]] = [ClaimRoutingIds, PendingOffers, GoneSpinners, UnreadResults, LogFlood, IdleConnections]
BOOT_ATTACKS: list[type[Attack]] = [SlowBootReaders, TrickledBootHeaders]  # on plasmd --boot-store's HTTP server


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when the thread that started it ends (its process killed, even by
    SIGKILL, or pytest stopped by SIGTERM); exit at once if that already happened before the call."""
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent_pid:  # the parent died between the fork and the prctl
        os._exit(1)


def _attack_main(
    cls: type[Attack], address: str, source: str, modules: dict[str, bytes], boot: str, stop: Any, parent_pid: int
) -> None:
    die_with_parent(parent_pid)
    attack = cls(address, source, modules, boot)
    attack.start()
    stop.wait()
    attack.stop()


class AttackProcess:
    """An :class:`Attack` in a process of its own, so its CPU and GIL are not the honest clients'.

    It dies with the thread that called :meth:`start` (PR_SET_PDEATHSIG): a killed test run leaves no
    attacker behind. Start it from a thread that outlives it (the main thread)."""

    def __init__(self, cls: type[Attack], address: str, source: str, modules: dict[str, bytes], boot: str = "") -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.name_ = cls.name_
        self._stop = ctx.Event()
        self._proc = ctx.Process(
            target=_attack_main, args=(cls, address, source, modules, boot, self._stop, os.getpid()), daemon=True
        )

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def start(self) -> None:
        self._proc.start()

    def stop(self) -> None:
        self._stop.set()
        self._proc.join(30)
        if self._proc.is_alive():
            self._proc.kill()


class Sampler(threading.Thread):
    """Peak RSS and open descriptors of a process, sampled every 50 ms, and the CPU time it used meanwhile."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_rss = 0
        self.peak_fds = 0
        self._stop_event = threading.Event()
        self.cpu_s = 0.0
        self.wall_s = 0.0
        self._t0 = (time.monotonic(), self._cpu())

    def _cpu(self) -> float:
        try:
            fields = open(f"/proc/{self.pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def run(self) -> None:
        while not self._stop_event.wait(0.05):
            try:
                status = open(f"/proc/{self.pid}/status").read()
                rss = int(next(x.split()[1] for x in status.splitlines() if x.startswith("VmRSS:"))) << 10
                fds = len(os.listdir(f"/proc/{self.pid}/fd"))
            except (OSError, StopIteration):
                return
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_fds = max(self.peak_fds, fds)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)
        self.wall_s, self.cpu_s = time.monotonic() - self._t0[0], self._cpu() - self._t0[1]


HONEST_KEYS: set[str] = set()  # transport keys of the honest clients (a node's log names each job's client key)


def honest_load(
    address: str, module: bytes, seconds: float, clients: int = 2, should_stop: Callable[[], bool] = lambda: False
) -> tuple[list[float], int, list[str]]:
    """``clients`` threads, each its own Client, submitting ``module`` back to back for ``seconds``:
    (latencies of the jobs that succeeded, jobs tried, why the others failed)."""
    latencies: list[float] = []
    failures: list[str] = []
    tried = [0]
    lock = threading.Lock()

    def one() -> None:
        deadline = time.monotonic() + seconds
        with Client(peers=[address]) as client:
            with lock:
                HONEST_KEYS.add(zmq.utils.z85.encode(client.identity.curve_keypair()[0]).decode())
            while time.monotonic() < deadline and not should_stop():
                t = time.perf_counter()
                try:
                    result = client.submit(module, input=b"honest", timeout=10)
                    ok = result.stdout == b"tsenoh"
                    why = "" if ok else "wrong output"
                except Exception as exc:
                    ok, why = False, f"{type(exc).__name__}: {exc}"[:200]
                with lock:
                    tried[0] += 1
                    if ok:
                        latencies.append(time.perf_counter() - t)
                    else:
                        failures.append(why)

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, tried[0], failures


def make_boot_store(root: Any, artifact_bytes: int) -> str:
    """A signed boot store (``plasmd --boot-store``) holding one artifact of ``artifact_bytes`` zeros; its
    ``/sha256/...`` path (what attack 8's slow readers read)."""
    from pathlib import Path

    from pyphase.boot.manifest import make_boot_manifest, sign_manifest
    from pyphase.boot.store import ArtifactStore

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    blob = root.with_suffix(".blob")
    with open(blob, "wb") as f:
        f.truncate(artifact_bytes)
    store = ArtifactStore(root)
    big = store.add_file(blob)
    blob.write_bytes(b"kernel")
    kernel = store.add_file(blob)
    blob.unlink()
    document = make_boot_manifest(kernel, big, "console=ttyS0", release=1, expires_at=int(time.time()) + 3600)
    store.write_manifest(sign_manifest(document, Identity.generate().signing_key))
    return f"/sha256/{big.hex}"


class BootFetcher(threading.Thread):
    """An honest boot client: GET /boot/manifest.json every 0.1 s; each answer's status and latency."""

    def __init__(self, boot: str) -> None:
        super().__init__(daemon=True)
        self.boot = boot
        self.answers: list[tuple[int, float]] = []  # (status or 0 for no answer, seconds)
        self._stop_event = threading.Event()

    def run(self) -> None:
        import http.client

        host, port = self.boot.rsplit(":", 1)
        while not self._stop_event.wait(0.1):
            t = time.perf_counter()
            try:
                c = http.client.HTTPConnection(host, int(port), timeout=5)
                c.request("GET", "/boot/manifest.json")
                r = c.getresponse()
                r.read()
                c.close()
                status = r.status
            except OSError:
                status = 0
            self.answers.append((status, time.perf_counter() - t))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]
