"""The node: one asyncio task owns one CURVE ROUTER socket and answers ``phase/1`` (see :mod:`pyphase.net.wire`).

A ZAP handler in the same ZeroMQ context accepts every CURVE client (the network is open) and stamps
each connection with the client's public transport key, so every message the node handles carries
the key of the peer that sent it (``User-Id``). A client without CURVE never gets past the handshake.

Nothing a peer sends can stop the node: a message that cannot be decoded is answered ``error`` (when
its header could be read) or dropped, and any fault while handling one is logged and the loop goes on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, TextIO

import zmq
import zmq.utils.z85

from pyphase import schemas
from pyphase.digests import digest_from_text, sha256_text
from pyphase.identity import Identity
from pyphase.limits import Limits
from pyphase.manifest import job_id
from pyphase.net import wire
from pyphase.net.cache import ModuleCache
from pyphase.net.addresses import split_hostport
from pyphase.net.config import NodeConfig
from pyphase.sandbox.executor import Executor, failed_result, job_kwargs, make_executor
from pyphase.receipt import machine_arch, make_receipt, timestamp
from pyphase.result import Result
from pyphase.runtime import RUNTIME_NAME, RUNTIME_VERSION

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
PENDING_MODULE_TIMEOUT_S = 30.0
MAX_MESSAGE_SLACK = 64 << 10


class ListenError(OSError):
    """The node cannot bind its address; the message says which address, why, and what to change."""

    def __init__(self, host: str, port: int, errno: int) -> None:
        import errno as errnos

        hint = {errnos.EADDRINUSE: "another process holds that port: stop it, or pick another port "
                                   "(--listen HOST:PORT; port 0 takes any free port)",
                errnos.EADDRNOTAVAIL: "no interface of this machine has that address (127.0.0.1: this machine "
                                      "only; 0.0.0.0: every interface)",
                errnos.EACCES: "ports below 1024 need root: pick a port above 1024",
                errnos.ENODEV: "the host is neither an address of this machine nor a name it resolves"}.get(errno, "")
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
    """Structured events, one per line: JSON objects (``{"ts", "event", ...}``) or ``key=value`` text."""

    def __init__(self, fmt: str = "json", stream: TextIO | None = None) -> None:
        self.fmt = fmt
        self.stream = stream if stream is not None else sys.stderr

    def __call__(self, event: str, **fields: Any) -> None:
        record = {"ts": timestamp(), "event": event, **fields}
        if self.fmt == "json":
            line = json.dumps(record, separators=(",", ":"), default=str)
        else:
            line = " ".join(f"{k}={v}" for k, v in record.items())
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass


@dataclass
class _Pending:
    """A job accepted but waiting for its module's bytes."""

    manifest: dict[str, Any]
    input: bytes
    limits: Limits
    client: str
    since: float


def curve_key_text(key: bytes) -> str:
    return zmq.utils.z85.encode(key).decode("ascii")


class Node:
    """A ``phase/1`` node. ``await start()`` binds and returns the address; ``await serve()`` runs until
    :meth:`request_stop`; ``await close()`` finishes in-flight jobs (up to the grace) and releases everything."""

    def __init__(self, config: NodeConfig, identity: Identity, *, log: Callable[..., None] | None = None,
                 executor: Executor | None = None) -> None:
        self.config = config
        self.identity: Identity = _CachedIdentity(identity.signing_key)
        self.log = log or EventLog("json")
        self.executor = executor
        self.cache = ModuleCache(config.data_dir / "modules", config.cache_bytes)
        # Plain (not zmq.asyncio) sockets driven by the loop's reader callbacks: handling a message is a
        # synchronous function call, and a send never waits (a ROUTER drops rather than blocks).
        self.ctx = zmq.Context()
        self.sock: zmq.Socket[bytes] | None = None
        self.zap: zmq.Socket[bytes] | None = None
        self.address = ""
        self.host = ""
        self.port = 0
        self._pending: dict[tuple[bytes, bytes], _Pending] = {}
        self._running: dict[tuple[bytes, bytes], concurrent.futures.Future[Result]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._clients: set[str] = set()
        self.jobs_done = 0
        self.bytes_in = 0                # phase/1 bytes received and sent (frames, routing ids excluded)
        self.bytes_out = 0
        self.on_result: Callable[[dict[str, Any], str], None] | None = None
        """Called with (receipt, client key) after each result is sent (history, metrics: pyphase.api)."""
        self._max_msg = config.max_module + config.max_input + wire.MAX_HEADER_BYTES + MAX_MESSAGE_SLACK

    # ---- life cycle ------------------------------------------------------------------------------

    async def start(self) -> str:
        self.zap = self.ctx.socket(zmq.REP)
        self.zap.linger = 0
        self.zap.bind(ZAP_ENDPOINT)
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
        sock.setsockopt(zmq.SNDHWM, 10_000)
        sock.setsockopt(zmq.RCVHWM, 10_000)
        sock.linger = 1000
        host, port = split_hostport(self.config.listen)
        bind_host = "*" if host in ("0.0.0.0", "*", "") else host
        try:
            sock.bind(f"tcp://{bind_host}:{port}")
        except zmq.ZMQError as exc:
            sock.close(linger=0)        # an unclosed socket would hold ctx.term() (and plasmd) forever
            raise ListenError(host, port, exc.errno or 0) from None
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.port = int(endpoint.rsplit(":", 1)[1])
        self.host = host if bind_host != "*" else (self.config.advertise or "127.0.0.1")
        self.sock = sock
        self.address = f"{self.identity.peer_id}@{self.host}:{self.port}"
        if self.executor is None:       # after the bind: a port in use fails before the sandbox starts
            self.executor = make_executor(self.config.worker_count, self.config.sandbox,
                                          warn=lambda msg: self.log("warning", message=msg))
        loop = asyncio.get_running_loop()
        loop.add_reader(self.zap.fileno(), self._on_zap)
        loop.add_reader(sock.fileno(), self._on_readable)
        loop.call_soon(self._on_zap)
        loop.call_soon(self._on_readable)
        self._spawn(self._sweep_loop())
        self.log("listening", address=self.address, executor=self.executor.kind, workers=self.executor.workers,
                 cached_modules=len(self.cache))
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
            self.log("stopping", running=len(self._running), pending=len(self._pending))
        self._stopped.set()

    async def serve(self) -> None:
        """Answer messages until :meth:`request_stop`."""
        assert self.sock is not None
        await self._stopped.wait()
        # keep receiving during the grace so late offers get "shutting_down" rather than silence
        for key, pending in list(self._pending.items()):
            self._pending.pop(key, None)
            self._reject(key[0], key[1], "shutting_down", "the node is stopping")
        deadline = time.monotonic() + self.config.shutdown_grace_ms / 1000
        while self._running and time.monotonic() < deadline:
            waiting = [asyncio.wrap_future(f) for f in self._running.values()]
            await asyncio.wait(waiting, timeout=max(0.0, deadline - time.monotonic()))
            await asyncio.sleep(0)      # let the _finish callbacks queued by those futures run
        for (rid, tag), future in list(self._running.items()):
            self._running.pop((rid, tag), None)
            future.cancel()
            self._reject(rid, tag, "shutting_down", "the node stopped before the job finished")

    async def close(self) -> None:
        if not self._stopping:          # closed without a stop request (a failed start): same events, same order
            self._stopping = True
            self.log("stopping", running=len(self._running), pending=len(self._pending))
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
        if self.executor is not None:
            executor, self.executor = self.executor, None
            await asyncio.get_running_loop().run_in_executor(None, executor.close)
        loop = asyncio.get_running_loop()
        for sock in (self.sock, self.zap):
            if sock is not None:
                loop.remove_reader(sock.fileno())
                sock.close()
        self.ctx.term()
        self.log("stopped", jobs=self.jobs_done)

    # ---- ZAP: who is talking -----------------------------------------------------------------------

    def _on_zap(self) -> None:
        zap = self.zap
        while zap is not None:
            try:
                frames = zap.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                _version, request_id, _domain, address, _identity, mechanism = frames[:6]
                ok = mechanism == b"CURVE" and len(frames) == 7 and len(frames[6]) == 32
                user = curve_key_text(frames[6]) if ok else ""
            except ValueError:
                request_id, ok, user, address = b"", False, "", b""
            if ok and user not in self._clients:
                if len(self._clients) > 100_000:
                    self._clients.clear()
                self._clients.add(user)
                self.log("peer_connected", key=user, address=address.decode("utf-8", "replace"))
            zap.send_multipart([b"1.0", request_id, b"200" if ok else b"400", b"OK" if ok else b"CURVE only",
                                user.encode(), b""])

    # ---- messages ----------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        """Handle every message waiting (the ZeroMQ descriptor is edge-triggered: drain it all)."""
        sock = self.sock
        for _ in range(1000):          # then yield to the loop; the next call_soon picks up the rest
            if sock is None or sock.closed:
                return
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                self._handle(frames)
            except Exception as exc:   # a bug of ours must not take the node down with it
                self.log("internal_error", error=f"{type(exc).__name__}: {exc}")
        asyncio.get_running_loop().call_soon(self._on_readable)

    def _send(self, rid: bytes, frames: list[Any]) -> None:
        assert self.sock is not None
        try:
            # zero-copy only pays for big frames: a small one costs more to track than to copy
            big = any(len(f) > wire.ZERO_COPY_MIN for f in frames)
            self.sock.send_multipart([rid, *frames], zmq.NOBLOCK, copy=not big)
        except zmq.ZMQError as exc:
            self.log("send_failed", error=str(exc))
            return
        self.bytes_out += sum(len(f) for f in frames)
        # a send can consume the descriptor's edge for messages that arrived meanwhile
        if int(self.sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            asyncio.get_running_loop().call_soon(self._on_readable)

    def load(self) -> dict[str, int]:
        workers = self.executor.workers if self.executor else 0
        active = len(self._running)
        return {"running": min(active, workers), "queued": max(0, active - workers), "workers": workers}

    def capabilities(self) -> dict[str, Any]:
        try:
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            memory = 0
        c = self.config
        return {
            "peer_id": self.identity.peer_id, "protocol": wire.PROTOCOL, "arch": machine_arch(),
            "cores": os.cpu_count() or 1, "memory_bytes": memory, "runtime": RUNTIME_NAME,
            "runtime_version": RUNTIME_VERSION, "executor": self.executor.kind if self.executor else "none",
            "max_limits": {**c.ceiling.to_json(), "module_bytes": c.max_module, "input_bytes": c.max_input},
            "load": self.load(), "cached_modules": len(self.cache), "accepting": not self._stopping,
        }

    def _error(self, rid: bytes, code: str, detail: str, job: bytes | None = None) -> None:
        self.log("bad_message", code=code, detail=detail)
        self._send(rid, wire.encode("error", code=code, detail=detail[:wire.MAX_DETAIL_CHARS], job=job))

    def _reject(self, rid: bytes, tag: bytes, reason: str, detail: str) -> None:
        self.log("reject", job=tag.hex(), reason=reason, detail=detail)
        self._send(rid, wire.encode("reject", job=tag, reason=reason, detail=detail[:wire.MAX_DETAIL_CHARS],
                                    load=self.load()))

    def _handle(self, frames: list[Any]) -> None:
        if len(frames) < 2:
            return
        rid = frames[0].bytes
        self.bytes_in += sum(len(f) for f in frames[1:])
        try:
            client = frames[1].get("User-Id")
        except zmq.ZMQError:
            client = ""
        try:
            msg = wire.decode(frames[1:])
        except wire.WireError as exc:
            self._error(rid, exc.code, exc.detail, exc.job)
            return
        if msg.type == "caps?":
            self._send(rid, wire.encode("caps", caps=self.capabilities()))
        elif msg.type == "offer":
            self._offer(rid, msg, client)
        elif msg.type == "module":
            self._module(rid, msg)
        else:
            self._error(rid, "unexpected", f"a node does not take {msg.type!r} messages", msg.get("job"))

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
        if requires.get("runtime", RUNTIME_NAME) != RUNTIME_NAME:
            return "runtime", f"this node runs {RUNTIME_NAME}, the job requires {requires['runtime']}"
        try:
            limits = Limits.from_json(manifest["limits"])
        except Exception as exc:
            return "bad_manifest", f"limits: {exc}"
        too_high = limits.within(c.ceiling)
        if requires.get("min_memory_bytes", 0) > c.max_memory:
            too_high.append(f"min_memory_bytes {requires['min_memory_bytes']} exceeds {c.max_memory}")
        if too_high:
            return "limits", "; ".join(too_high)
        return limits

    def _offer(self, rid: bytes, msg: wire.Message, client: str) -> None:
        t0 = time.perf_counter()
        tag: bytes = msg["job"]
        key = (rid, tag)
        manifest = msg["manifest"]
        if self._stopping:
            return self._reject(rid, tag, "shutting_down", "the node is stopping")
        if key in self._pending or key in self._running:
            return self._reject(rid, tag, "duplicate", "this job tag is in use on this connection")
        data = wire.payload_bytes(msg.payloads[0])
        try:
            checked = self._check_offer(manifest, data)
        except Exception as exc:   # e.g. non-string map keys the schema code trips over
            checked = ("bad_manifest", f"{type(exc).__name__}")
        if isinstance(checked, tuple):
            return self._reject(rid, tag, *checked)
        capacity = self.executor.workers + self.config.queue if self.executor else 0
        if len(self._running) + len(self._pending) >= capacity:
            return self._reject(rid, tag, "busy", f"{len(self._running)} jobs in hand")
        module = self.cache.get(manifest["module"]["hash"])
        self.log("offer", job=tag.hex(), client=client, module=manifest["module"]["hash"], cached=module is not None)
        self._send(rid, wire.encode("accept", job=tag, module=module is None, load=self.load()))
        if module is None:
            self._pending[key] = _Pending(manifest, data, checked, client, time.monotonic())
        else:
            self._start(key, manifest, module, data, checked, client, t0)

    def _module(self, rid: bytes, msg: wire.Message) -> None:
        tag: bytes = msg["job"]
        pending = self._pending.pop((rid, tag), None)
        if pending is None:
            return self._error(rid, "unknown_job", "no job on this connection is waiting for a module", tag)
        data = wire.payload_bytes(msg.payloads[0])
        ref = pending.manifest["module"]
        if len(data) != ref["size"] or not self.cache.put(ref["hash"], data):
            return self._reject(rid, tag, "module_mismatch", "the module bytes do not match manifest.module")
        self.log("module_cached", module=ref["hash"], size=len(data))
        self._start((rid, tag), pending.manifest, data, pending.input, pending.limits, pending.client,
                    time.perf_counter())

    def _start(self, key: tuple[bytes, bytes], manifest: dict[str, Any], module: bytes, data: bytes,
               limits: Limits, client: str, t0: float) -> None:
        # Submitted right away (not from a task on the next loop turn); the worker thread's completion
        # comes back through call_soon_threadsafe straight to _finish: the fewest wake-ups per job.
        assert self.executor is not None
        loop = asyncio.get_running_loop()
        t1 = time.perf_counter()
        started = timestamp()
        try:
            future = self.executor.submit(module, data, digest=digest_from_text(manifest["module"]["hash"]),
                                          **job_kwargs(manifest, limits))
        except Exception as exc:   # e.g. arguments the runtime refuses (NUL bytes), a closed sandbox
            future = concurrent.futures.Future()
            future.set_exception(exc)
        self._running[key] = future
        done = functools.partial(self._finish, key, manifest, module, data, limits, client, started, (t0, t1))
        future.add_done_callback(lambda f: loop.call_soon_threadsafe(done, f))

    def _finish(self, key: tuple[bytes, bytes], manifest: dict[str, Any], module: bytes, data: bytes,
                limits: Limits, client: str, started: str, times: tuple[float, float],
                future: concurrent.futures.Future[Result]) -> None:
        if self._running.pop(key, None) is None or self.sock is None or self.sock.closed:
            return                      # already answered (the node stopped before the job finished)
        rid, tag = key
        t0, t1 = times
        t2 = time.perf_counter()
        try:
            result = future.result()
        except Exception as exc:        # the executor failed, not the job: report it as a crash, signed
            result = failed_result("crashed", f"{type(exc).__name__}: {exc}", module, data)
        # a job that never ran comes back without hashes: the node checked module and input against the manifest
        result = result.with_hashes(manifest["module"]["hash"], manifest["input"]["hash"])
        answer = self.answer(result, manifest, limits, started)
        if answer is None:
            return
        stdout, receipt = answer
        self.jobs_done += 1
        self.log("result", job=tag.hex(), client=client, status=result.status, exit_code=result.exit_code,
                 wall_us=result.wall_us, receipt=receipt["signature"][:16],
                 # where the node's time went: offer to start, in the executor, signing and replying
                 start_us=int((t1 - t0) * 1e6), exec_us=int((t2 - t1) * 1e6),
                 reply_us=int((time.perf_counter() - t2) * 1e6))
        self._send(rid, wire.encode("result", (stdout, result.stderr), job=tag, receipt=receipt, load=self.load()))
        if self.on_result is not None:
            self.on_result(receipt, client)

    def answer(self, result: Result, manifest: dict[str, Any], limits: Limits,
               started: str) -> tuple[bytes, dict[str, Any]] | None:
        """The stdout to send for a finished job and its signed receipt (None: send nothing). The tests' launcher
        (tests/net/misbehaving_plasmd.py) overrides this to cheat, to show that clients catch it."""
        receipt = make_receipt(result, job_id=job_id(manifest), nonce=manifest["nonce"], limits=limits,
                               identity=self.identity, started_at=started)
        return result.stdout, receipt

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(PENDING_MODULE_TIMEOUT_S / 3)
            cutoff = time.monotonic() - PENDING_MODULE_TIMEOUT_S
            for key, pending in list(self._pending.items()):
                if pending.since < cutoff:
                    self._pending.pop(key, None)
                    self.log("module_timeout", job=key[1].hex())

