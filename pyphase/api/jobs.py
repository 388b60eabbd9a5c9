"""Jobs submitted through the HTTP API: run by this node or sent to the network, each through a
:class:`pyphase.Client`, so they go through ``phase/1`` (the node's own admission, limits and queue)
and come back with receipts checked like any other client's.

The clients are blocking, so each runs in a thread of a small pool (one client per thread, kept).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import concurrent.futures
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from pyphase.digests import sha256_text
from pyphase.errors import PhaseError
from pyphase.limits import Limits
from pyphase.receipt import timestamp

MAX_KEPT = 1000  # finished API jobs kept for status queries (the history keeps more)
TEXT_PREVIEW = 64 << 10


class BadRequest(ValueError):
    """A job request that cannot be run as given."""


class TooBig(BadRequest):
    """A module or input beyond what this node takes."""


@dataclass
class ApiJob:
    id: str
    where: str
    module: bytes
    input: bytes
    args: list[str]
    env: dict[str, str]
    entry: str
    limits: Limits
    deterministic: bool
    peers: list[str]
    stream: bool = True
    state: str = "queued"
    submitted_at: str = field(default_factory=timestamp)
    finished_at: str | None = None
    result: Any = None
    error: str | None = None
    attempts: list[tuple[str, str]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    # output as the node streams it (1 stdout, 2 stderr): unverified until the job is done; replaced by the
    # result's bytes then (dropped when the job fails), so a job's output is held once
    streamed: dict[int, bytearray] | None = field(default_factory=lambda: {1: bytearray(), 2: bytearray()})
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def output(self, stream: int) -> bytes | bytearray:
        """The bytes of ``stream`` (1 stdout, 2 stderr) known so far: streamed while running, the result's when done."""
        if self.result is not None:
            return bytes(self.result.stdout if stream == 1 else self.result.stderr)
        return self.streamed[stream] if self.streamed is not None else b""

    def wake(self) -> None:
        """Tell whoever follows the job's output that something changed (new bytes, or the end)."""
        event, self.changed = self.changed, asyncio.Event()
        event.set()

    def append(self, stream: int, data: bytes) -> None:
        if self.streamed is not None and self.result is None:
            self.streamed[stream] += data
            self.wake()

    def to_json(self) -> dict[str, Any]:
        r = self.result
        out: dict[str, Any] = {
            "id": self.id,
            "state": self.state,
            "where": self.where,
            "submitted_at": self.submitted_at,
            "finished_at": self.finished_at,
            "module": sha256_text(self.module),
            "peer": r.peer if r else None,
            "status": r.status if r else None,
            "exit_code": r.exit_code if r else None,
            "message": r.message if r else None,
            "wall_us": r.wall_us if r else None,
            "fuel_used": r.fuel_used if r else None,
            "stdout_bytes": len(r.stdout) if r else None,
            "stderr_bytes": len(r.stderr) if r else None,
            "stdout_text": None,
            "error": self.error,
            "attempts": [list(a) for a in self.attempts],
            "job_id": r.receipt["job_id"] if r else None,
            "engine": r.receipt["node"]["runtime"] if r else None,
            "stream": self.stream,
        }
        if r is not None:
            try:
                out["stdout_text"] = r.stdout[:TEXT_PREVIEW].decode("utf-8")
            except UnicodeDecodeError:
                pass
        return out


def _b64(value: Any, name: str, limit: int) -> bytes:
    if len(value) > (limit + 2) // 3 * 4:
        raise TooBig(f"{name} exceeds {limit} bytes, the most this node takes")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{name} is not base64") from None


class ApiJobs:
    """The API's jobs: at most ``capacity`` unfinished at once, the last :data:`MAX_KEPT` finished kept."""

    def __init__(
        self,
        own_address: Callable[[], str],
        known_peers: Callable[[], list[str]],
        *,
        capacity: int,
        max_module: int,
        max_input: int,
        threads: int = 4,
    ) -> None:
        self.own_address = own_address
        self.known_peers = known_peers
        self.capacity = capacity
        self.max_module = max_module
        self.max_input = max_input
        self.jobs: collections.OrderedDict[str, ApiJob] = collections.OrderedDict()
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="phase-api")
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()
        self.used_peers: dict[str, float] = {}

    def unfinished(self) -> int:
        return sum(1 for j in self.jobs.values() if j.state in ("queued", "running"))

    def parse(self, body: dict[str, Any]) -> ApiJob:
        """An :class:`ApiJob` from a request body already checked against the OpenAPI schema (which also
        says: input or input_text, not both; peers only with where=network; env names without '=')."""
        module = _b64(body["module"], "module", self.max_module)
        data = (
            _b64(body["input"], "input", self.max_input)
            if "input" in body
            else str(body.get("input_text", "")).encode("utf-8")
        )
        if len(data) > self.max_input:
            raise TooBig(f"input exceeds {self.max_input} bytes, the most this node takes")
        try:
            # JSON Schema integers include 1876.0: the schema checked each is integral
            limits = Limits().replace(**{k: int(v) for k, v in body.get("limits", {}).items()})
        except (PhaseError, ValueError, TypeError) as exc:
            raise BadRequest(f"limits: {exc}") from None
        where = body.get("where", "here")
        peers = list(body.get("peers", []))
        return ApiJob(
            os.urandom(16).hex(),
            where,
            module,
            data,
            list(body.get("args", [])),
            dict(body.get("env", {})),
            body.get("entry", "_start"),
            limits,
            bool(body.get("deterministic", False)),
            peers,
            bool(body.get("stream", where == "here")),
        )

    def start(self, job: ApiJob) -> None:
        self.jobs[job.id] = job
        while len(self.jobs) > MAX_KEPT + self.capacity:
            oldest = next(iter(self.jobs.values()))
            if oldest.state in ("queued", "running"):
                break
            self.jobs.popitem(last=False)
        asyncio.get_running_loop().create_task(self._run(job))

    async def _run(self, job: ApiJob) -> None:
        loop = asyncio.get_running_loop()

        def on_output(stream: int, data: bytes) -> None:  # in the client's thread
            loop.call_soon_threadsafe(job.append, stream, bytes(data))

        try:
            job.result = await loop.run_in_executor(self.pool, self._blocking, job, on_output)
            job.attempts = list(job.result.attempts)
            job.state = "done"
        except (PhaseError, ValueError) as exc:  # ValueError: a peer address that is not one
            job.state = "failed"
            job.error = f"{type(exc).__name__}: {exc}"
            job.attempts = list(getattr(exc, "attempts", []))
        except Exception as exc:  # a bug of ours: the job fails, the node goes on
            job.state = "failed"
            job.error = f"internal error: {type(exc).__name__}: {exc}"
        job.finished_at = timestamp()
        job.streamed = None
        job.done.set()
        job.wake()

    def _client(self, peers: tuple[str, ...], here: bool) -> Any:
        from pyphase import Client

        cache: dict[tuple[bool, tuple[str, ...]], Any] = self._local.__dict__.setdefault("clients", {})
        client = cache.get((here, peers))
        if client is None:
            if len(cache) > 16:  # bounded: clients for ad-hoc peer lists come and go
                for old in cache.values():
                    old.close()
                cache.clear()
            # this node over loopback: never through a proxy; the network: PHASE_SOCKS_PROXY when set
            # (Private mode), so a job sent out through the API is as anonymous as one from `phase submit`
            client = cache[(here, peers)] = Client(peers=list(peers), socks_proxy="" if here else None)
            with self._lock:
                self._clients.append(client)
        return client

    def _blocking(self, job: ApiJob, on_output: Callable[[int, bytes], None]) -> Any:
        job.state = "running"
        if job.where == "here":
            peers: tuple[str, ...] = (self.own_address(),)
            retries = 0
        else:
            peers = tuple(job.peers or self.known_peers())
            if not peers:
                from pyphase.errors import NoPeers

                raise NoPeers("no peers given and none known to this node")
            retries = 3
        result = self._client(peers, job.where == "here").submit(
            job.module,
            job.input,
            args=job.args,
            env=job.env,
            entry=job.entry,
            limits=job.limits,
            deterministic=job.deterministic,
            retries=retries,
            on_output=on_output if job.stream else None,
        )
        if job.where == "network":
            for address in peers:
                if address.startswith(result.peer):
                    self.used_peers[address] = time.time()
        return result

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            for client in self._clients:
                try:
                    client.close()
                except Exception:
                    pass
            self._clients.clear()
