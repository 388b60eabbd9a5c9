"""The node: one asyncio task owns one CURVE ROUTER socket and answers ``phase/1`` (see :mod:`pyphase.net.wire`).

A ZAP handler in the same ZeroMQ context accepts every CURVE client (the network is open) and stamps
each connection with the client's public transport key, so every message the node handles carries
the key of the peer that sent it (``User-Id``), and with a routing id the node chooses (see
:meth:`Node._routing_metadata`: no peer picks its own). A client without CURVE never gets past the handshake.

Nothing a peer sends can stop the node: a message that cannot be decoded is answered ``error`` (when
its header could be read) or dropped, and any fault while handling one is logged and the loop goes on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import dataclasses
import errno
import functools
import gc
import json
import os
import resource
import shutil
import socket
import struct
import sys
import threading
import time
from collections import Counter
from typing import Any, Callable, TextIO

import zmq
import zmq.utils.z85

from pyphase import schemas
from pyphase.digests import digest_from_text, sha256_text
from pyphase.identity import Identity
from pyphase.limits import Limits
from pyphase.manifest import job_id
from pyphase.net import wire
from pyphase import trees
from pyphase.errors import TreeError
from pyphase.net.blobs import BlobIO, BlobStore
from pyphase.net.cache import ModuleCache
from pyphase.net.jobfs import CHUNK, JobFS
from pyphase.net.addresses import split_hostport
from pyphase.net.config import NodeConfig
from pyphase.net.reachability import DialBackService
from pyphase.net.relayed import RelayedSources
from pyphase.net.shares import HeldJob, ShareCaps, Shares
from pyphase.sandbox.executor import Executor, SandboxExecutor, failed_result, job_kwargs, make_executor
from pyphase import engines
from pyphase.receipt import machine_arch, make_receipt, timestamp
from pyphase.result import Result
from pyphase.runtime import RUNTIME_NAME, RUNTIME_VERSION, OutputSink

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ROUTING_ID_PREFIX = b"\x01"  # the node's routing ids; libzmq's own (anonymous peers) start with 0x00
JOB_DESCRIPTORS = 64  # descriptors kept back from connections: module cache, sandbox, logs
JOB_DESCRIPTORS_PER_WORKER = 16
STREAM_GATHER_S = 0.01  # a streaming job's output is gathered this long before it is sent
TRACK_MIN = 64 << 10  # results at least this big are tracked until libzmq has sent them
SEND_QUEUE_TOTAL_FACTOR = 4  # all connections together: this many times one connection's send_queue
_MONITOR_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
# plain ints: pyzmq's enum flags cost a few µs per call on the per-message path, as does a zmq.Again raised for
# every empty socket polled (the ZAP and monitor sockets are polled on every readable event)
_NOBLOCK = int(zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
MAX_MESSAGE_SLACK = 64 << 10
BAD_MESSAGE_BUDGET = 64  # bad messages one connection may send before the node drops it
BARRIER_RESEND_S = 1.0  # a ZAP barrier token not back by then is sent anew
PENALTY_S = 10.0  # then its key is refused this long (its libzmq would reconnect at once)
MAX_LOG_TEXT = 256
LOG_RATE = 20.0
LOG_BURST = 100
RATE_LIMITED = frozenset(
    {
        "bad_message",
        "reject",
        "internal_error",
        "send_failed",
        "peer_connected",
        "module_timeout",
        "abandoned",
        "refused",
        "cancelled",
        "blob_timeout",
        # a relay's and a relayed node's: any client opens circuits, any key reserves
        "circuit_opened",
        "circuit_closed",
        "circuit_failed",
        "relay_reserved",
        "relay_lost",
    }
)


class ListenError(OSError):
    """The node cannot bind its address; the message says which address, why, and what to change."""

    def __init__(self, host: str, port: int, errno: int) -> None:
        import errno as errnos

        hint = {
            errnos.EADDRINUSE: "another process holds that port: stop it, or pick another port "
            "(--listen HOST:PORT; port 0 takes any free port)",
            errnos.EADDRNOTAVAIL: "no interface of this machine has that address (127.0.0.1: this machine "
            "only; 0.0.0.0: every interface)",
            errnos.EACCES: "ports below 1024 need root: pick a port above 1024",
            errnos.ENODEV: "the host is neither an address of this machine nor a name it resolves",
        }.get(errno, "")
        super().__init__(errno, f"cannot listen on {host}:{port}: {os.strerror(errno)}" + (f"; {hint}" if hint else ""))


class _CachedIdentity(Identity):
    """The node's identity with its public key and peer id computed once (every receipt names them)."""

    @property
    def public_key(self) -> bytes:
        cached: bytes | None = self.__dict__.get("_pk")
        if cached is None:
            cached = bytes(self.signing_key.verify_key)
            object.__setattr__(self, "_pk", cached)
        return cached

    @property
    def peer_id(self) -> str:
        cached: str | None = self.__dict__.get("_pid")
        if cached is None:
            cached = super().peer_id
            object.__setattr__(self, "_pid", cached)
        return cached


class EventLog:
    """Structured events, one per line: JSON objects (``{"ts", "event", ...}``) or ``key=value`` text.

    What a peer can make the node log is bounded: every text field is cut to ``MAX_LOG_TEXT`` characters,
    and the events a stranger triggers at will (``RATE_LIMITED``) pass at ``LOG_RATE`` per second each after
    a burst of ``LOG_BURST``; how many were dropped is logged (``log_suppressed``) once they pass again.
    """

    def __init__(self, fmt: str = "json", stream: TextIO | None = None) -> None:
        self.fmt = fmt
        self.stream = stream if stream is not None else sys.stderr
        self._buckets: dict[str, list[float]] = {}  # event -> [tokens, last refill, suppressed]

    def _admit(self, event: str) -> bool:
        now = time.monotonic()
        bucket = self._buckets.setdefault(event, [float(LOG_BURST), now, 0.0])
        bucket[0] = min(float(LOG_BURST), bucket[0] + (now - bucket[1]) * LOG_RATE)
        bucket[1] = now
        if bucket[0] < 1.0:
            bucket[2] += 1
            return False
        bucket[0] -= 1.0
        if bucket[2]:
            suppressed, bucket[2] = int(bucket[2]), 0.0
            self._write({"ts": timestamp(), "event": "log_suppressed", "of": event, "count": suppressed})
        return True

    def __call__(self, event: str, **fields: Any) -> None:
        if event in RATE_LIMITED and not self._admit(event):
            return
        for key, value in fields.items():
            if isinstance(value, (bytes, bytearray, memoryview)):
                fields[key] = value = bytes(value[:MAX_LOG_TEXT]).hex()
            if isinstance(value, str) and len(value) > MAX_LOG_TEXT:
                fields[key] = f"{value[:MAX_LOG_TEXT]}... ({len(value)} chars)"
        self._write({"ts": timestamp(), "event": event, **fields})

    def _write(self, record: dict[str, Any]) -> None:
        if self.fmt == "json":
            line = json.dumps(record, separators=(",", ":"), default=str)
        else:
            line = " ".join(f"{k}={v}" for k, v in record.items())
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass


def _waiting(sock: zmq.Socket[Any]) -> bool:
    """Whether a whole message waits on ``sock`` (reading ``EVENTS`` also re-arms its edge-triggered descriptor)."""
    events: int = sock.getsockopt(_EVENTS)  # type: ignore[assignment]
    return bool(events & _POLLIN)


def _seed_routing_ids() -> None:
    """Seed ``rand()`` from the OS's CSPRNG before the node makes its sockets.

    libzmq 4.3.5 names an anonymous peer of a ROUTER ``00`` + a 32-bit counter started from two ``rand()``
    calls, which nothing seeds: every process hands out the same ids, and a peer that claims the next one as
    its own routing id makes libzmq abort (a duplicate in ``add_out_pipe``) when the next anonymous peer
    connects. With a secret start an attacker can only guess (one in 2**32 per claimed id), and per-address
    connection caps bound how many claims he can hold. Python itself never calls ``rand()``.
    """
    try:
        libc = ctypes.CDLL(None)
        libc.srand(ctypes.c_uint(int.from_bytes(os.urandom(4), "little")))
    except (OSError, AttributeError):  # no dlopen(NULL) or no srand: a platform this node does not run on
        pass


def _return_big_buffers() -> None:
    """Have glibc's malloc map every buffer of 1 MiB or more on its own, so freeing one gives it back to the
    system. By default the threshold grows with the largest buffer freed (up to 32 MiB), and the memory of
    expired 16 MiB inputs then stays in the heap."""
    try:
        ctypes.CDLL(None).mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        pass


def release_free_memory() -> None:
    """Hand the free pages inside malloc's heap back to the system (glibc's ``malloc_trim``). Start-up frees
    megabytes it no longer needs (import-time temporaries, the first event loop's set-up), which would otherwise
    stay counted against an idle node: about 1.5 MB of its RSS."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _peer_address(fd: int) -> str:
    """The remote address of a connection libzmq accepted on ``fd`` ("" if it is already gone)."""
    try:
        dup = os.dup(fd)
    except OSError:
        return ""
    try:
        sock = socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        return ""
    with sock:
        try:
            return str(sock.getpeername()[0])
        except OSError:
            return ""


def _shut_down(fd: int) -> None:
    """End the connection libzmq holds on ``fd`` without touching its descriptor: shut down a duplicate (a
    shutdown acts on the connection), so libzmq sees the peer go and closes it the usual way. libzmq 4.3.5
    has no call to drop one peer of a ROUTER."""
    try:
        dup = os.dup(fd)
    except OSError:
        return
    try:
        sock = socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        return
    with sock:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _out_of_descriptors(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) is the process running out of file descriptors."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
            return True
        if "Too many open files" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def raise_descriptor_limit() -> int:
    """Raise this process's soft open-file limit to its hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def _worker_seconds(future: concurrent.futures.Future[Result]) -> float | None:
    """What a finished job ran in its worker (None: it did not finish there: stopped, crashed, refused)."""
    if future.cancelled() or future.exception() is not None:
        return None
    return future.result().wall_us / 1e6


def curve_key_text(key: bytes) -> str:
    return zmq.utils.z85.encode(key).decode("ascii")


class OutputRelay:
    """A running job's output on its way from the executor's thread to the node's loop: pieces are gathered for
    ``STREAM_GATHER_S`` and handed over in one loop wake-up (a burst of small writes costs one message, and a job
    that ends within it sends its output with the result alone, as without streaming)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, flush: Callable[[], None]) -> None:
        self._loop = loop
        self._flush = flush
        self._lock = threading.Lock()
        self._pieces: list[tuple[int, bytes]] = []
        self._scheduled = False
        self.stopped = False  # set on the loop: nothing more is sent

    def __call__(self, stream: int, data: bytes) -> bool:
        with self._lock:
            if self.stopped:
                return True
            self._pieces.append((stream, data))
            if self._scheduled:
                return True
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._loop.call_later, STREAM_GATHER_S, self._flush)
        except RuntimeError:  # the loop is closed: the node is stopping
            pass
        return True

    def take(self) -> list[tuple[int, bytes]]:
        with self._lock:
            pieces, self._pieces, self._scheduled = self._pieces, [], False
        return pieces


def coalesce(pieces: list[tuple[int, bytes]], most: int) -> list[tuple[int, bytes]]:
    """Consecutive pieces of one stream joined, then cut into pieces of at most ``most`` bytes."""
    runs: list[tuple[int, list[bytes]]] = []
    for stream, data in pieces:
        if runs and runs[-1][0] == stream:
            runs[-1][1].append(data)
        else:
            runs.append((stream, [data]))
    joined = [(stream, b"".join(parts)) for stream, parts in runs]
    return [(stream, data[i : i + most]) for stream, data in joined for i in range(0, len(data), most)]


class Node:
    """A ``phase/1`` node. ``await start()`` binds and returns the address; ``await serve()`` runs until
    :meth:`request_stop`; ``await close()`` finishes in-flight jobs (up to the grace) and releases everything."""

    def __init__(
        self,
        config: NodeConfig,
        identity: Identity,
        *,
        log: Callable[..., None] | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.config = config
        self.identity: Identity = _CachedIdentity(identity.signing_key)
        self.log = log or EventLog("json")
        self.executor = executor
        self.cache = ModuleCache(config.data_dir / "modules", config.cache_bytes)
        self.blobs = BlobStore(config.data_dir / "blobs", config.blob_cache_bytes)
        self.blob_io = BlobIO(threaded=config.blob_thread)
        self.jobs_dir = config.data_dir / "jobs"
        shutil.rmtree(self.jobs_dir, ignore_errors=True)  # directories of jobs a stopped node left behind
        self.jobs_dir.mkdir(mode=0o700)
        self._outputs: dict[tuple[bytes, bytes], tuple[JobFS, float]] = {}  # finished jobs' outputs, last asked
        self.blob_bytes_in = 0  # file bytes of input trees received, and reused from the blob store
        self.blob_bytes_reused = 0
        # Plain (not zmq.asyncio) sockets driven by the loop's reader callbacks: handling a message is a
        # synchronous function call, and a send never waits (a ROUTER drops rather than blocks).
        _seed_routing_ids()
        _return_big_buffers()
        self.ctx = zmq.Context(io_threads=1)  # one I/O thread: the ZAP barrier relies on it (_routing_metadata)
        self.sock: zmq.Socket[bytes] | None = None
        self.zap: zmq.Socket[bytes] | None = None
        # ZAP replies wait for a round trip through libzmq's I/O thread (see _routing_metadata)
        self._barrier_in: zmq.Socket[bytes] | None = None
        self._barrier_out: zmq.Socket[bytes] | None = None
        self._zap_held: list[list[bytes]] = []  # replies made since the last barrier was sent
        self._zap_covered: list[list[bytes]] = []  # replies the barrier in flight covers
        self._barrier_token = b""
        self._barrier_sent = 0.0
        self.address = ""
        self.host = ""
        self.port = 0
        self.monitor: zmq.Socket[bytes] | None = None
        c = config
        self.shares = Shares(
            ShareCaps(
                total_jobs=0,
                client_jobs=c.client_jobs,
                address_jobs=c.address_jobs,
                client_waiting=c.client_waiting,
                held_bytes=c.held_bytes,
            )
        )
        self.max_connections = c.connections
        self._connections: dict[int, str] = {}  # descriptor -> source address
        self._address_connections: Counter[str] = Counter()
        self._fd_rid: dict[int, bytes] = {}  # descriptor -> routing id, from messages' SRCFD
        self._rid_fd: dict[bytes, int] = {}
        self._bad: Counter[bytes] = Counter()  # routing id -> bad messages sent
        self._rid_client: dict[bytes, str] = {}
        self._penalty: dict[str, float] = {}  # client key -> refused until (monotonic)
        self._unsent: dict[bytes, list[tuple[zmq.MessageTracker, int]]] = {}
        self._routing_ids = 0  # routing ids handed out by the ZAP handler
        self.abandoned = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._clients: set[str] = set()
        self.jobs_done = 0
        self.bytes_in = 0  # phase/1 bytes received and sent (frames, routing ids excluded)
        self.bytes_out = 0
        self.on_result: Callable[[dict[str, Any], str], None] | None = None
        """Called with (receipt, client key) after each result is sent (history, metrics: pyphase.api)."""
        self.dial_back = DialBackService(self.ctx)
        self.relayed = RelayedSources()
        """Relayed clients' names for the loopback addresses the relay splice feeds them from (pyphase.net.relayed)."""
        self.dial_nonces: dict[bytes, threading.Event] = {}
        """Nonces of this node's own reachability checks; set when their dial back arrives."""
        self.reachability: dict[str, Any] | None = None
        """The last dial-back verdict (pyphase.net.dhtnode sets it; the HTTP API shows it)."""
        self._max_msg = config.max_module + config.max_input + wire.MAX_HEADER_BYTES + MAX_MESSAGE_SLACK

    # ---- life cycle ------------------------------------------------------------------------------

    async def start(self, port: int | None = None) -> str:
        """Listen (on ``port`` when given, else the configured one: the DHT may have picked it) and serve."""
        self.zap = self.ctx.socket(zmq.ROUTER)
        self.zap.linger = 0
        self.zap.bind(ZAP_ENDPOINT)
        self._barrier_in = self.ctx.socket(zmq.PULL)
        self._barrier_in.linger = 0
        self._barrier_in.setsockopt(zmq.MAXMSGSIZE, 64)
        barrier_port = self._barrier_in.bind_to_random_port("tcp://127.0.0.1")
        self._barrier_out = self.ctx.socket(zmq.PUSH)
        self._barrier_out.linger = 0
        self._barrier_out.connect(f"tcp://127.0.0.1:{barrier_port}")
        public, secret = self.identity.curve_keypair()
        sock = self.ctx.socket(zmq.ROUTER)
        sock.curve_server = True
        sock.curve_publickey = zmq.utils.z85.encode(public)
        sock.curve_secretkey = zmq.utils.z85.encode(secret)
        sock.zap_domain = b"phase"
        sock.setsockopt(zmq.MAXMSGSIZE, self._max_msg)
        sock.setsockopt(zmq.HANDSHAKE_IVL, 5000)
        sock.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
        # Per connection, answers queued (results big enough to matter are also counted in bytes, _send_result);
        # a full queue or a gone peer fails the send (ROUTER_MANDATORY). Received: see wire.RECEIVE_QUEUE_LIMIT.
        sock.setsockopt(zmq.SNDHWM, 256)
        sock.setsockopt(zmq.RCVHWM, wire.RECEIVE_QUEUE_LIMIT)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.linger = 1000
        host, configured = split_hostport(self.config.listen)
        port = configured if port is None else port
        bind_host = "*" if host in ("0.0.0.0", "*", "") else host
        try:
            sock.bind(f"tcp://{bind_host}:{port}")
        except zmq.ZMQError as exc:
            sock.close(linger=0)  # an unclosed socket would hold ctx.term() (and plasmd) forever
            raise ListenError(host, port, exc.errno or 0) from None
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.port = int(endpoint.rsplit(":", 1)[1])
        self.host = host if bind_host != "*" else (self.config.advertise or "127.0.0.1")
        self.sock = sock
        self.monitor = sock.get_monitor_socket(_MONITOR_EVENTS)
        self.address = f"{self.identity.peer_id}@{self.host}:{self.port}"
        if self.executor is None:  # after the bind: a port in use fails before the sandbox starts
            self.executor = make_executor(
                self.config.worker_count,
                self.config.sandbox,
                warn=lambda msg: self.log("warning", message=msg),
                nice=self.config.job_nice,
                demote_after_ms=self.config.job_demote_after_ms,
            )
        workers = self.executor.workers
        self.shares.caps = dataclasses.replace(self.shares.caps, total_jobs=workers + self.config.queue)
        if not self.max_connections:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            soft = soft if soft != resource.RLIM_INFINITY else 1 << 16
            reserved = JOB_DESCRIPTORS + JOB_DESCRIPTORS_PER_WORKER * workers
            if self.config.boot_store:  # the boot server's connections have their own budget
                from pyphase.boot.server import DEFAULT_MAX_CONNECTIONS

                reserved += 2 * DEFAULT_MAX_CONNECTIONS
            if self.config.relay:  # the relay's: handshakes, reservations, both ends of each circuit
                from pyphase.net.relay import RelayLimits

                c = self.config
                reserved += RelayLimits().pending + c.relay_reservations + 2 * c.relay_circuits
            self.max_connections = max(16, soft - reserved)
        loop = asyncio.get_running_loop()
        loop.add_reader(self.monitor.fileno(), self._on_monitor)
        loop.add_reader(self.zap.fileno(), self._on_zap)
        loop.add_reader(self._barrier_in.fileno(), self._on_barrier)
        loop.add_reader(sock.fileno(), self._on_readable)
        loop.call_soon(self._on_zap)
        loop.call_soon(self._on_readable)
        self._spawn(self._sweep_loop())
        self.log(
            "listening",
            address=self.address,
            executor=self.executor.kind,
            workers=self.executor.workers,
            cached_modules=len(self.cache),
            max_connections=self.max_connections,
        )
        return self.address

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def request_stop(self) -> None:
        """Stop taking offers (they are rejected ``shutting_down``); :meth:`serve` returns once jobs are done."""
        if not self._stopping:
            self._stopping = True
            self.log("stopping", running=self.shares.running + self.shares.queued, pending=self.shares.waiting)
        self._stopped.set()

    async def serve(self) -> None:
        """Answer messages until :meth:`request_stop`."""
        assert self.sock is not None
        await self._stopped.wait()
        # keep receiving during the grace so late offers get "shutting_down" rather than silence
        for job in [j for j in self.shares.jobs.values() if j.state == "waiting"]:
            self.shares.remove(job.key)
            self._drop_fs(job)
            self._reject(job.rid, job.tag, "shutting_down", "the node is stopping")
        deadline = time.monotonic() + self.config.shutdown_grace_ms / 1000
        while self.shares.jobs and time.monotonic() < deadline:
            waiting = [asyncio.wrap_future(j.future) for j in self.shares.jobs.values() if j.future is not None]
            if not waiting:
                break
            await asyncio.wait(waiting, timeout=max(0.0, deadline - time.monotonic()))
            await asyncio.sleep(0)  # let the _finish callbacks queued by those futures run
        for job in list(self.shares.jobs.values()):
            self.shares.remove(job.key)
            if job.future is not None:
                job.future.cancel()
            self._reject(job.rid, job.tag, "shutting_down", "the node stopped before the job finished")

    async def close(self) -> None:
        if not self._stopping:  # closed without a stop request (a failed start): same events, same order
            self.request_stop()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
        if self.executor is not None:
            executor, self.executor = self.executor, None
            await asyncio.get_running_loop().run_in_executor(None, executor.close)
        loop = asyncio.get_running_loop()
        if self.sock is not None and self.monitor is not None:
            loop.remove_reader(self.monitor.fileno())
            self.sock.disable_monitor()
            self.monitor.close()
        for sock in (self.sock, self.zap, self._barrier_in, self._barrier_out):
            if sock is not None:
                loop.remove_reader(sock.fileno())
                sock.close()
        self.ctx.term()
        for key in list(self._outputs):
            self._release_outputs(key)
        await loop.run_in_executor(None, self.blob_io.close)  # what it was given is done before the rmtree
        shutil.rmtree(self.jobs_dir, ignore_errors=True)
        self.log("stopped", jobs=self.jobs_done)

    # ---- connections: who is talking, from where, and when they are gone ------------------------------

    def _on_monitor(self) -> None:
        """Connection events: count connections per source address; a connection that closed takes its
        waiting and queued jobs with it, and its running ones' results are not sent."""
        monitor = self.monitor
        while monitor is not None and not monitor.closed and _waiting(monitor):
            frames = monitor.recv_multipart(_NOBLOCK)
            if len(frames) != 2 or len(frames[0]) != 6:
                continue
            event, fd = struct.unpack("=HI", frames[0])
            if event == zmq.EVENT_ACCEPTED:
                address = self.relayed.name(_peer_address(fd))
                self._connections[fd] = address
                self._address_connections[address] += 1
                if (
                    self._address_connections[address] > self.config.address_connections
                    or len(self._connections) > self.max_connections
                ):
                    _shut_down(fd)  # before the CURVE handshake: a refusal costs no crypto
                    self.log("refused", address=address, reason="too many connections")
            elif event == zmq.EVENT_DISCONNECTED:
                address = self._connections.pop(fd, "")
                if address:
                    self._address_connections[address] -= 1
                    if self._address_connections[address] <= 0:
                        del self._address_connections[address]
                rid = self._fd_rid.pop(fd, None)
                if rid is not None:
                    self._rid_fd.pop(rid, None)
                    self._rid_client.pop(rid, None)
                    self._bad.pop(rid, None)
                    self._connection_lost(rid)

    def _on_zap(self) -> None:
        self._on_monitor()  # count the connection being authenticated before deciding on it
        zap = self.zap
        while zap is not None and _waiting(zap):
            frames = zap.recv_multipart(_NOBLOCK)
            try:
                peer, _empty, _version, request_id, _domain, address, _identity, mechanism = frames[:8]
                ok = mechanism == b"CURVE" and len(frames) == 9 and len(frames[8]) == 32
                user = curve_key_text(frames[8]) if ok else ""
            except ValueError:
                continue  # not a ZAP request: libzmq sends nothing else here
            source = self.relayed.name(address.decode("utf-8", "replace"))
            status, text = (b"200", b"OK") if ok else (b"400", b"CURVE only")
            if ok and user in self._penalty and self._penalty_active(user):
                status, text = b"400", b"dropped for bad messages; try later"
            elif ok and self._address_connections[source] > self.config.address_connections:
                status, text = b"400", b"too many connections from this address"
            elif ok and len(self._connections) > self.max_connections:
                status, text = b"400", b"too many connections"
            if status != b"200" and ok:
                self.log("refused", address=source, key=user, reason=text.decode())
                ok = False
            if ok and user not in self._clients:
                if len(self._clients) > 100_000:
                    self._clients.clear()
                self._clients.add(user)
                self.log("peer_connected", key=user, address=source)
            metadata = self._routing_metadata() if ok else b""
            reply = [peer, b"", b"1.0", request_id, status, text, user.encode() if ok else b"", metadata]
            self._zap_held.append(reply)
        self._send_barrier()

    def _send_barrier(self) -> None:
        """Send a fresh token through libzmq's I/O thread (PUSH to PULL over loopback TCP) for the replies held,
        unless one is already in flight (its return sends the next)."""
        if self._barrier_out is None:
            return
        if self._barrier_token and time.monotonic() - self._barrier_sent > BARRIER_RESEND_S:
            self._barrier_token = b""  # lost or late: a new token proves as much (sent after the same requests)
            self._zap_held = self._zap_covered + self._zap_held
            self._zap_covered = []
        if not self._zap_held or self._barrier_token:
            return
        token = os.urandom(16)
        try:
            self._barrier_out.send(token, zmq.NOBLOCK)
        except zmq.ZMQError:
            return  # tried again by the sweep
        self._zap_covered, self._zap_held = self._zap_held, []
        self._barrier_token, self._barrier_sent = token, time.monotonic()

    def _on_barrier(self) -> None:
        """The token came back: libzmq's I/O thread has finished every handshake step that asked for the
        replies it covers, so they can be sent (see :meth:`_routing_metadata`)."""
        sock = self._barrier_in
        while sock is not None:
            try:
                token = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if token != self._barrier_token:
                continue  # an old token, or anything else that reached the port: proves nothing
            self._barrier_token = b""
            for reply in self._zap_covered:
                if self.zap is not None:
                    self.zap.send_multipart(reply)
            self._zap_covered = []
        # sending on the ZAP socket can consume its descriptor's edge for requests that arrived meanwhile
        self._on_zap()

    def _routing_metadata(self) -> bytes:
        """ZAP reply metadata that gives the connection being accepted its routing id: ``01`` + a counter.

        libzmq 4.3.5 (and its master) names a ROUTER's peer by the id the peer claims, or, when it claims
        none, by ``00`` + an internal counter, and aborts the process (``add_out_pipe``, socket_base.cpp) when
        that generated id is already held: a peer that claims the next one crashed the node as soon as an
        anonymous peer connected. A ZAP reply's ``Identity`` property replaces the id the peer claimed if
        libzmq reads the reply after the peer's metadata. It tries to read it once at once, right after it
        sends the request and before it parses that metadata (curve_server.cpp, process_initiate); a reply
        already there then loses to the peer's claim, and that happened to about 4 connections in 10 here
        (waking the ZAP handler preempts libzmq's thread). So every reply waits until a token sent after the
        request has gone through libzmq's I/O thread and back (:meth:`_on_barrier`): that thread runs one step
        at a time, so it has finished the handshake step that sent the request. The context has one I/O
        thread (the default), so that is the thread that runs every connection. Then every id is the node's
        own: never empty (the counter is never used), never a ``00`` id, never the same twice.
        """
        self._routing_ids += 1
        rid = ROUTING_ID_PREFIX + self._routing_ids.to_bytes(8, "big")
        return b"\x08Identity" + struct.pack(">I", len(rid)) + rid

    def _penalty_active(self, key: str) -> bool:
        if self._penalty[key] > time.monotonic():
            return True
        del self._penalty[key]
        return False

    # ---- messages ----------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        """Handle every message waiting (the ZeroMQ descriptor is edge-triggered: drain it all)."""
        self._on_zap()  # handshakes first: a flood of messages must not starve new connections
        sock = self.sock
        for _ in range(1000):  # then yield to the loop; the next call_soon picks up the rest
            if sock is None or sock.closed:
                return
            try:
                frames = sock.recv_multipart(_NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                self._handle(frames)
            except Exception as exc:  # a bug of ours must not take the node down with it
                self.log("internal_error", error=f"{type(exc).__name__}: {exc}")
        asyncio.get_running_loop().call_soon(self._on_readable)

    def _send(self, rid: bytes, frames: list[Any], size: int = 0) -> bool:
        """Send without waiting; False when the peer is gone or its queue is full (the message is dropped).
        ``size`` of at least ``TRACK_MIN``: the bytes are counted against the connection until libzmq sent them."""
        assert self.sock is not None
        tracker = None
        if size >= TRACK_MIN:
            # the biggest frame, zero-copy, with its own tracker (send_multipart's tracks only the last frame,
            # and not at all when that one is small enough to be copied)
            big_index = max(range(len(frames)), key=lambda i: len(frames[i]))
            frame = zmq.Frame(frames[big_index], track=True, copy=False)
            tracker = frame.tracker
            frames = [*frames[:big_index], frame, *frames[big_index + 1 :]]
        try:
            # zero-copy only pays for big frames: a small one costs more to track than to copy
            big = any(len(f) > wire.ZERO_COPY_MIN for f in frames)
            self.sock.send_multipart([rid, *frames], _NOBLOCK, copy=not big)
            sent = True
        except zmq.ZMQError as exc:
            if exc.errno not in (zmq.EHOSTUNREACH, zmq.EAGAIN):  # gone, or not reading: the caller counts it
                self.log("send_failed", error=str(exc))
            sent = False
        if sent:
            self.bytes_out += sum(len(f) for f in frames)
        if sent and tracker is not None:
            self._unsent.setdefault(rid, []).append((tracker, size))
        # a send can consume the descriptor's edge for messages that arrived meanwhile
        if _waiting(self.sock):
            asyncio.get_running_loop().call_soon(self._on_readable)
        return sent

    def _queued_bytes(self, rid: bytes | None = None) -> int:
        """Result bytes libzmq still holds for ``rid`` (None: for every connection); sent ones are forgotten."""
        total = 0
        for who in [rid] if rid is not None else list(self._unsent):
            queue = [(t, n) for t, n in self._unsent.get(who, ()) if not t.done]
            if queue:
                self._unsent[who] = queue
            else:
                self._unsent.pop(who, None)
            total += sum(n for _, n in queue)
        return total

    def load(self) -> dict[str, int]:
        workers = self.executor.workers if self.executor else 0
        return {"running": self.shares.running, "queued": self.shares.queued, "workers": workers}

    def capabilities(self) -> dict[str, Any]:
        try:
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            memory = 0
        c = self.config
        return {
            "peer_id": self.identity.peer_id,
            "protocol": wire.PROTOCOL,
            "arch": machine_arch(),
            "cores": os.cpu_count() or 1,
            "memory_bytes": memory,
            "runtime": RUNTIME_NAME,
            "runtime_version": RUNTIME_VERSION,
            "engines": self._engines(),
            "executor": self.executor.kind if self.executor else "none",
            "max_limits": {
                **c.ceiling.to_json(),
                "module_bytes": c.max_module,
                "input_bytes": c.max_input,
                "tree_bytes": c.max_tree_bytes,
                "tree_files": c.max_tree_files,
                "disk_bytes": c.max_disk,
                "files": c.max_files,
            },
            "cached_blobs": len(self.blobs),
            "load": self.load(),
            "cached_modules": len(self.cache),
            "accepting": not self._stopping,
            "stream": True,
        }

    def _error(self, rid: bytes, code: str, detail: str, job: bytes | None = None) -> None:
        self.log("bad_message", code=code, detail=detail)
        self._bad[rid] += 1
        if self._bad[rid] > BAD_MESSAGE_BUDGET and rid in self._rid_fd:
            del self._bad[rid]
            key = self._rid_client.get(rid, "")
            if len(self._penalty) > 100_000:
                self._penalty.clear()
            self._penalty[key] = time.monotonic() + PENALTY_S
            self.log("refused", key=key, reason=f"more than {BAD_MESSAGE_BUDGET} bad messages")
            _shut_down(self._rid_fd[rid])
            return
        self._send(rid, wire.encode("error", code=code, detail=detail[: wire.MAX_DETAIL_CHARS], job=job))

    def _reject(self, rid: bytes, tag: bytes, reason: str, detail: str) -> None:
        self.log("reject", job=tag.hex(), reason=reason, detail=detail)
        self._send(
            rid, wire.encode("reject", job=tag, reason=reason, detail=detail[: wire.MAX_DETAIL_CHARS], load=self.load())
        )

    def _handle(self, frames: list[Any]) -> None:
        if len(frames) < 2:
            return
        rid = frames[0].bytes
        self.bytes_in += sum(len(f) for f in frames[1:])
        try:
            client = frames[1].get("User-Id")
            address = self.relayed.name(frames[1].get("Peer-Address"))
            fd = frames[1].get(zmq.SRCFD)
        except zmq.ZMQError:
            client, address, fd = "", "", -1
        if fd >= 0 and self._fd_rid.get(fd) != rid:
            self._fd_rid[fd] = rid
            self._rid_fd[rid] = fd
            self._rid_client[rid] = client
        try:
            msg = wire.decode(frames[1:])
        except wire.WireError as exc:
            self._error(rid, exc.code, exc.detail, exc.job)
            return
        if msg.type == "caps?":
            self._send(rid, wire.encode("caps", caps=self.capabilities()))
        elif msg.type == "offer":
            self._offer(rid, msg, client, address)
        elif msg.type == "module":
            self._module(rid, msg)
        elif msg.type == "dial?":
            self._dial_back(rid, msg, client, address)
        elif msg.type == "dialback":
            heard = self.dial_nonces.get(msg["nonce"])
            if heard is not None:
                heard.set()
        elif msg.type == "blob":
            self._blob(rid, msg)
        elif msg.type == "want":
            self._want(rid, msg)
        elif msg.type == "done":
            self._release_outputs((rid, msg["job"]))
        else:
            self._error(rid, "unexpected", f"a node does not take {msg.type!r} messages", msg.get("job"))

    def _dial_back(self, rid: bytes, msg: wire.Message, client: str, address: str) -> None:
        """Dial the requester back at its own source address (pyphase.net.reachability), within the bounds."""
        nonce, port = msg["nonce"], msg["port"]

        def answer(ok: bool, detail: str) -> None:
            self._send(rid, wire.encode("dial", nonce=nonce, ok=ok, seen=address, detail=detail))

        if not 0 < port < 65536 or not client or not address:
            return answer(False, "a dial back needs a port (1-65535) and a CURVE key")
        if address in self.relayed:  # its address is the relay's word, and dialling it would not test a way in
            return answer(False, "no dial back through a relay: ask over a direct connection")
        refused = self.dial_back.admit(address)
        if refused is not None:
            return answer(False, refused)

        async def dial() -> None:
            ok, detail = await asyncio.to_thread(self.dial_back.dial, address, port, client, nonce)
            self.log("dial_back", address=f"{address}:{port}", ok=ok, detail=detail)
            answer(ok, detail)

        self._spawn(dial())

    def _engines(self) -> list[str]:
        """The engines this node's executor runs jobs on (sandbox workers run both when the compiling engine is
        installed: docs/SANDBOX.md, "Engines")."""
        if self.executor is None:
            return ["wasm3"]
        if isinstance(self.executor, SandboxExecutor):
            return self.executor.engines
        return engines.available()

    def _check_offer(self, manifest: dict[str, Any], data: bytes) -> tuple[str, str] | Limits:
        problems = schemas.errors("manifest", manifest)
        if problems:
            return "bad_manifest", "; ".join(problems)
        c = self.config
        if manifest["input"]["size"] > c.max_input or len(data) > c.max_input:
            return "input_too_big", f"input of {manifest['input']['size']} bytes exceeds {c.max_input}"
        if len(data) != manifest["input"]["size"] or sha256_text(data) != manifest["input"]["hash"]:
            return "bad_manifest", "the input bytes do not match manifest.input"
        if manifest["module"]["size"] > c.max_module:
            return "module_too_big", f"module of {manifest['module']['size']} bytes exceeds {c.max_module}"
        requires = manifest["requires"]
        if requires.get("arch", machine_arch()) != machine_arch():
            return "arch", f"this node is {machine_arch()}, the job requires {requires['arch']}"
        here = self._engines()
        if requires.get("runtime", here[0]) not in here:
            return "runtime", f"this node runs {', '.join(here)}, the job requires {requires['runtime']}"
        try:
            limits = Limits.from_json(manifest["limits"])
        except Exception as exc:
            return "bad_manifest", f"limits: {exc}"
        too_high = limits.within(c.ceiling)
        if requires.get("min_memory_bytes", 0) > c.max_memory:
            too_high.append(f"min_memory_bytes {requires['min_memory_bytes']} exceeds {c.max_memory}")
        if too_high:
            return "limits", "; ".join(too_high)
        fs = manifest.get("fs")
        if fs is not None:
            listing_cap = c.max_tree_files * 512 + 1024
            if any(d["tree"]["size"] > listing_cap for d in fs["dirs"]):
                return "tree_too_big", f"a tree listing of more than {listing_cap} bytes ({c.max_tree_files} files)"
            if fs["disk_bytes"] > c.max_disk or fs["files"] > c.max_files:
                return "limits", (
                    f"fs.disk_bytes {fs['disk_bytes']} / fs.files {fs['files']} exceed {c.max_disk} / {c.max_files}"
                )
        return limits

    def _offer(self, rid: bytes, msg: wire.Message, client: str, address: str) -> None:
        t0 = time.perf_counter()
        tag: bytes = msg["job"]
        key = (rid, tag)
        manifest = msg["manifest"]
        if self._stopping:
            return self._reject(rid, tag, "shutting_down", "the node is stopping")
        if key in self.shares.jobs:
            return self._reject(rid, tag, "duplicate", "this job tag is in use on this connection")
        # capacity first: a job that cannot be taken costs no copy and no hash of its input
        module_ref = manifest.get("module")
        module_hash = module_ref.get("hash") if isinstance(module_ref, dict) else None
        module = self.cache.get(module_hash) if isinstance(module_hash, str) else None
        declared = module_ref.get("size") if module is None and isinstance(module_ref, dict) else 0
        size = len(msg.payloads[0]) + (
            declared if type(declared) is int and 0 <= declared <= self.config.max_module else 0
        )
        has_fs = isinstance(manifest.get("fs"), dict)
        busy = self.shares.refuse(client, address, size, waiting=module is None or has_fs)
        if busy is not None:
            return self._reject(rid, tag, "busy", busy)
        data = wire.payload_bytes(msg.payloads[0])
        try:
            checked = self._check_offer(manifest, data)
        except Exception as exc:  # e.g. non-string map keys the schema code trips over
            checked = ("bad_manifest", f"{type(exc).__name__}")
        if isinstance(checked, tuple):
            return self._reject(rid, tag, *checked)
        self.log("offer", job=tag.hex(), client=client, module=manifest["module"]["hash"], cached=module is not None)
        self._send(rid, wire.encode("accept", job=tag, module=module is None, load=self.load()))
        job = HeldJob(
            rid,
            tag,
            manifest,
            data,
            checked,
            client,
            address,
            time.monotonic(),
            t0,
            None if has_fs else module,
            "waiting" if module is None or has_fs else "queued",
        )
        job.stream = msg.get("stream") is True
        self.shares.add(job)
        if module is not None and has_fs:
            self._begin_fs(job, module)
        elif module is not None:
            self._dispatch()

    def _module(self, rid: bytes, msg: wire.Message) -> None:
        tag: bytes = msg["job"]
        job = self.shares.jobs.get((rid, tag))
        if job is None or job.state != "waiting":
            return self._error(rid, "unknown_job", "no job on this connection is waiting for a module", tag)
        data = wire.payload_bytes(msg.payloads[0])
        ref = job.manifest["module"]
        try:
            stored = len(data) == ref["size"] and self.cache.put(ref["hash"], data)
        except OSError as exc:  # no disk space or no descriptor: this job cannot run now
            self.shares.remove(job.key)
            return self._reject(rid, tag, "busy", f"the node cannot store the module now ({exc.strerror or exc})")
        if not stored:
            self.shares.remove(job.key)
            return self._reject(rid, tag, "module_mismatch", "the module bytes do not match manifest.module")
        self.log("module_cached", module=ref["hash"], size=len(data))
        job.t0 = time.perf_counter()
        if job.manifest.get("fs") is not None:
            return self._begin_fs(job, data)
        self.shares.ready(job, data)
        self._dispatch()

    # ---- files: input trees in, output trees out (docs/NETWORK.md, "Files") -------------------------------

    def _begin_fs(self, job: HeldJob, module: bytes) -> None:
        """Lay out the job's input trees from the blob store and ask the client for what is missing."""
        c = self.config
        try:
            job.fs = JobFS.create(
                self.jobs_dir,
                self.blobs,
                job.manifest["fs"],
                c.max_tree_files,
                c.max_tree_bytes,
                io=self.blob_io,
                notify=asyncio.get_running_loop().call_soon_threadsafe,
                on_change=functools.partial(self._fs_changed, job),
            )
        except TreeError as exc:
            return self._drop_job(job, exc.reason, str(exc))
        except OSError as exc:
            return self._drop_job(job, "busy", f"the node cannot lay out the job's files now ({exc.strerror or exc})")
        job.fs.module = module
        job.since = time.monotonic()
        self._pump(job)

    def _pump(self, job: HeldJob) -> None:
        """Ask for the next chunks, or queue the job once every file is in place."""
        fs = job.fs
        assert fs is not None
        if fs.complete:
            try:
                fs.finish_layout()
            except OSError as exc:
                return self._drop_job(job, "busy", f"the node cannot lay out the job's files now ({exc})")
            self.blob_bytes_in += fs.fetched_bytes
            self.blob_bytes_reused += fs.reused_bytes
            self.log(
                "files_ready",
                job=job.tag.hex(),
                client=job.client,
                trees=[d["tree"]["hash"] for d in job.manifest["fs"]["dirs"]],
                fetched_bytes=fs.fetched_bytes,
                reused_bytes=fs.reused_bytes,
            )
            module, fs.module = fs.module, None
            assert module is not None
            self.shares.ready(job, module)
            return self._dispatch()
        self._ask(job)

    def _ask(self, job: HeldJob) -> None:
        """Ask for a job's next chunks within the node's budget: at most ``held_bytes`` of file bytes asked for and
        not yet received, all jobs together (they wait in the socket's receive queue: no high-water mark)."""
        assert job.fs is not None
        budget = self.config.held_bytes // CHUNK - sum(j.fs.outstanding for j in self._fetching())
        try:
            chunks = job.fs.requests(max(0, budget))
        except OSError as exc:  # no descriptor or no disk for a part file
            return self._drop_job(job, "busy", f"the node cannot store the job's files now ({exc.strerror or exc})")
        for blob, offset, size in chunks:
            self._send(job.rid, wire.encode("want", job=job.tag, blob=blob, offset=offset, size=size))

    def _fs_changed(self, job: HeldJob) -> None:
        """A blob of a job waiting for its files was placed, or failed (written, hashed and placed off the loop)."""
        fs = job.fs
        if fs is None or job.state != "waiting" or self.shares.jobs.get(job.key) is not job:
            return
        if isinstance(fs.failure, TreeError):
            return self._drop_job(job, fs.failure.reason, str(fs.failure))
        if fs.failure is not None:
            why = fs.failure.strerror or fs.failure
            return self._drop_job(job, "busy", f"the node cannot store the job's files now ({why})")
        self._pump(job)
        for other in self._fetching():  # a chunk written frees budget for jobs that had to wait for it
            if other is not job and other.fs is not None and other.fs.outstanding == 0:
                self._ask(other)

    def _fetching(self) -> list[HeldJob]:
        return [j for j in self.shares.jobs.values() if j.state == "waiting" and j.fs is not None]

    def _blob(self, rid: bytes, msg: wire.Message) -> None:
        tag: bytes = msg["job"]
        job = self.shares.jobs.get((rid, tag))
        if job is None or job.state != "waiting" or job.fs is None:
            return self._error(rid, "unknown_job", "no job on this connection is waiting for files", tag)
        try:
            job.fs.receive(msg["blob"], msg["offset"], wire.payload_view(msg.payloads[0]))
        except TreeError as exc:
            return self._drop_job(job, exc.reason, str(exc))
        except OSError as exc:
            return self._drop_job(job, "busy", f"the node cannot store the job's files now ({exc.strerror or exc})")
        job.since = time.monotonic()  # the rest follows once io wrote the chunk (_fs_changed)

    def _drop_job(self, job: HeldJob, reason: str, detail: str) -> None:
        """Refuse a job still in hand and delete its files."""
        self.shares.remove(job.key)
        self._drop_fs(job)
        self._reject(job.rid, job.tag, reason, detail)

    def _drop_fs(self, job: HeldJob) -> None:
        if job.fs is not None:
            job.fs.remove()
            job.fs = None

    def _want(self, rid: bytes, msg: wire.Message) -> None:
        """A client asks for bytes of a finished job's output tree (its listing or a file)."""
        key = (rid, msg["job"])
        held = self._outputs.get(key)
        offset, size = msg["offset"], msg["size"]
        if held is None:
            return self._error(rid, "unknown_job", "no finished job on this connection holds outputs", msg["job"])
        if not (0 <= offset < 1 << 62 and 0 < size <= CHUNK):
            return self._error(rid, "malformed", f"want: offset >= 0 and 0 < size <= {CHUNK}", msg["job"])
        fs = held[0]
        try:
            data = fs.read_output(msg["blob"], offset, size)
        except OSError as exc:
            data = None
            self.log("warning", message=f"cannot read an output file: {exc}")
        if data is None:
            return self._error(rid, "unknown_blob", "that blob is not among the job's outputs", msg["job"])
        self._outputs[key] = (fs, time.monotonic())
        self._send(rid, wire.encode("blob", (data,), job=msg["job"], blob=msg["blob"], offset=offset), len(data))

    def _release_outputs(self, key: tuple[bytes, bytes]) -> None:
        held = self._outputs.pop(key, None)
        if held is not None:
            held[0].remove()

    def _dispatch(self) -> None:
        """Start queued jobs while workers are free, taking turns between addresses and between clients."""
        if self.executor is None:
            return
        while self.shares.running < self.executor.workers:
            kept_until = self.shares.kept_until
            job = self.shares.next(self.executor.workers)
            if job is None:
                if self.shares.kept_until != kept_until:  # a worker kept for a light client: ask again after
                    delay = max(0.0, self.shares.kept_until - time.monotonic())
                    asyncio.get_running_loop().call_later(delay + 0.001, self._dispatch)
                return
            self._start(job)

    def _start(self, job: HeldJob) -> None:
        # Submitted right away (not from a task on the next loop turn); the worker thread's completion
        # comes back through call_soon_threadsafe straight to _finish: the fewest wake-ups per job.
        assert self.executor is not None and job.module is not None
        loop = asyncio.get_running_loop()
        t1 = time.perf_counter()
        job.started = timestamp()
        sink = None
        if job.stream:
            job.output_relay = OutputRelay(loop, functools.partial(self._send_chunks, job))
            sink = OutputSink(job.output_relay, keep=True)
        try:
            future = self.executor.submit(
                job.module,
                job.input,
                digest=digest_from_text(job.manifest["module"]["hash"]),
                on_output=sink,
                **job_kwargs(job.manifest, job.limits),
                **({"dirs": job.fs.preopens, "quota": job.fs.quota} if job.fs is not None else {}),
            )
        except Exception as exc:  # e.g. arguments the runtime refuses (NUL bytes), a closed sandbox
            future = concurrent.futures.Future()
            future.set_exception(exc)
        job.future = future
        done = functools.partial(self._finish, job, (job.t0, t1))
        future.add_done_callback(lambda f: loop.call_soon_threadsafe(done, f))

    def _finish(self, job: HeldJob, times: tuple[float, float], future: concurrent.futures.Future[Result]) -> None:
        manifest, module, data, limits, client, started = (
            job.manifest,
            job.module,
            job.input,
            job.limits,
            job.client,
            job.started,
        )
        job.future = None  # the future's callback holds the job: no cycle keeps the result alive
        fs, job.fs = job.fs, None
        if self.shares.remove(job.key, _worker_seconds(future)) is None or self.sock is None or self.sock.closed:
            if fs is not None:
                fs.remove()
            return  # already answered (the node stopped before the job finished)
        self._dispatch()
        assert module is not None
        rid, tag = job.key
        t0, t1 = times
        t2 = time.perf_counter()
        if job.stopped:
            return  # stopped when its client left (the "cancelled" event): nothing to send, nothing abandoned
        if job.abandoned:
            if fs is not None:
                fs.remove()
            return self._abandon(job, "its connection closed while it ran")
        try:
            result = future.result()
        except Exception as exc:  # the executor failed, not the job: report it as a crash, signed
            if _out_of_descriptors(exc):  # the node's trouble, not the job's: say busy, sign nothing
                if fs is not None:
                    fs.remove()
                return self._reject(rid, tag, "busy", "the node is short of file descriptors")
            result = failed_result("crashed", f"{type(exc).__name__}: {exc}", module, data)
        # a job that never ran comes back without hashes: the node checked module and input against the manifest
        result = result.with_hashes(manifest["module"]["hash"], manifest["input"]["hash"])
        outputs = None
        if fs is not None:
            result, outputs = self._collect_outputs(fs, result)
        answer = self.answer(result, manifest, limits, started, outputs)
        if answer is None:
            if fs is not None:
                fs.remove()
            return
        stdout, receipt = answer
        stderr = result.stderr
        if job.output_relay is not None:  # streamed: what was not sent in chunks yet goes with the receipt
            job.output_relay.stopped = True
            job.output_relay.take()
            stdout, stderr = stdout[job.streamed[1] :], stderr[job.streamed[2] :]
        self.jobs_done += 1
        self.log(
            "result",
            job=tag.hex(),
            client=client,
            status=result.status,
            exit_code=result.exit_code,
            wall_us=result.wall_us,
            receipt=receipt["signature"][:16],
            # where the node's time went: offer to start, in the executor, signing and replying
            start_us=int((t1 - t0) * 1e6),
            exec_us=int((t2 - t1) * 1e6),
            reply_us=int((time.perf_counter() - t2) * 1e6),
        )
        if fs is not None:  # held for the client to fetch until it says done, goes, or waits too long
            self._outputs[job.key] = (fs, time.monotonic())
        self._send_result(
            job,
            wire.encode("result", (stdout, stderr), job=tag, receipt=receipt, load=self.load()),
            len(stdout) + len(stderr),
        )
        if self.on_result is not None:
            self.on_result(receipt, client)

    def _collect_outputs(self, fs: JobFS, result: Result) -> tuple[Result, dict[str, Any]]:
        """The tree of what the job wrote (its ``{"hash", "size"}`` for the receipt); beyond the manifest's
        ``fs.disk_bytes``/``fs.files`` the job ends ``output_limit`` with an empty output tree (also when the WASI
        layer refused a call of the job at a bound: ``result.fs_limit``)."""
        try:
            if result.fs_limit:
                raise TreeError("output_limit", result.message)
            tree = fs.collect_outputs()
        except (TreeError, OSError) as exc:
            fs.output_paths.clear()
            fs.outputs = tree = trees.build(())
            if result.status == "ok":
                result = dataclasses.replace(result, status="output_limit", message=str(exc)[:1024])
        for d in fs.dirs:  # the read-only inputs are not needed any more; the outputs stay until fetched
            if d.readonly:
                shutil.rmtree(d.host, ignore_errors=True)
        return result, tree.ref

    def answer(
        self,
        result: Result,
        manifest: dict[str, Any],
        limits: Limits,
        started: str,
        outputs: dict[str, Any] | None = None,
    ) -> tuple[bytes, dict[str, Any]] | None:
        """The stdout to send for a finished job and its signed receipt (None: send nothing); ``outputs`` names
        the job's output tree. The tests' launcher (tests/net/misbehaving_plasmd.py) overrides this to cheat,
        to show that clients catch it."""
        receipt = make_receipt(
            result,
            job_id=job_id(manifest),
            nonce=manifest["nonce"],
            limits=limits,
            identity=self.identity,
            started_at=started,
            outputs=outputs,
        )
        return result.stdout, receipt

    def _send_chunks(self, job: HeldJob) -> None:
        """Send a running job's output gathered so far as ``chunk`` messages. Streaming stops for good (the rest
        goes with the result) when the connection is gone, does not read, or holds too many unsent bytes."""
        relay = job.output_relay
        pieces = relay.take()
        if relay.stopped or job.abandoned or self.sock is None or self.sock.closed:
            return
        for stream, data in coalesce(pieces, wire.MAX_CHUNK_BYTES):
            if self._queued_bytes(job.rid) + len(data) > self.config.send_queue:
                relay.stopped = True
                return
            frames = wire.encode("chunk", (data,), job=job.tag, stream=stream, offset=job.streamed[stream])
            if not self._send(job.rid, frames, len(data)):
                relay.stopped = True
                return
            job.streamed[stream] += len(data)

    def _send_result(self, job: HeldJob, frames: list[Any], size: int) -> None:
        """Send a result unless the client is gone or does not read: then it is dropped and counted abandoned."""
        rid = job.rid
        limit, total = self.config.send_queue, self.config.send_queue * SEND_QUEUE_TOTAL_FACTOR
        if size >= TRACK_MIN and (self._queued_bytes(rid) + size > limit or self._queued_bytes() + size > total):
            return self._abandon(job, "its connection has too many unread results queued")
        if not self._send(rid, frames, size):
            self._abandon(job, "its connection is gone or not reading")

    def _abandon(self, job: HeldJob, why: str) -> None:
        self.abandoned += 1
        self.log("abandoned", job=job.tag.hex(), client=job.client, reason=why, abandoned=self.abandoned)

    def _connection_lost(self, rid: bytes) -> None:
        """A client's connection closed (or its heartbeats stopped): its waiting and queued jobs are dropped and
        its running ones stopped (their workers killed: sandbox only; in threads they run to their own limit),
        so its workers are free for others at once. Nothing is sent for any of them."""
        self._unsent.pop(rid, None)
        for job in self.shares.of_connection(rid):
            if job.state == "running":
                job.abandoned = True
                if job.future is not None and self.executor is not None:
                    job.stopped = self.executor.stop(job.future)
                state = "running" if job.stopped else "running, not stoppable"
            else:
                state = job.state
                self.shares.remove(job.key)
                self._drop_fs(job)
            self.log("cancelled", job=job.tag.hex(), client=job.client, reason="its connection closed", state=state)
        for key in [k for k in self._outputs if k[0] == rid]:
            self._release_outputs(key)

    async def _sweep_loop(self) -> None:
        wait_s = self.config.module_wait_ms / 1000
        while True:
            await asyncio.sleep(max(0.05, wait_s / 4))
            self._on_barrier()  # a ZAP or barrier descriptor's edge taken by a send is not waited on for ever
            cutoff = time.monotonic() - wait_s
            for job in [j for j in self.shares.jobs.values() if j.state == "waiting" and j.since < cutoff]:
                if job.fs is not None and job.fs.outstanding == 0:  # waiting for the node's budget, not the client
                    job.since = time.monotonic()
                    self._ask(job)
                    continue
                if job.fs is not None:  # the client stopped sending the files asked for
                    self.log("blob_timeout", job=job.tag.hex(), client=job.client)
                    self._drop_job(job, "blob_timeout", f"no file bytes arrived for {wait_s:g} s")
                    continue
                self.shares.remove(job.key)
                self.log("module_timeout", job=job.tag.hex(), client=job.client)
            idle = time.monotonic() - self.config.output_wait_ms / 1000
            for key in [k for k, (_, last) in self._outputs.items() if last < idle]:
                self._release_outputs(key)
            self._dispatch()  # a job held back for an address gone quiet may start now
