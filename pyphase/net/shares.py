"""What one stranger may take of a node: the jobs a node holds, counted per client key and per source address,
and the fair queue that interleaves them.

A job is *waiting* (accepted, its module not yet received), *queued* (ready, no worker free) or *running*.
Keys are free to make, so every cap applies both per CURVE key and per source address; the queue takes turns
between addresses, and within an address between keys, so one client's backlog never starves another's. When
a worker frees, the address that has used the least worker time lately goes first (decayed over ``USAGE_HALF_LIFE_S``):
a client of short jobs is not kept waiting behind the turns of clients of long ones. Worker time is what the job
itself ran (measured in its worker), not how long the node held the worker: the hand-offs around a short job
stretch with the machine's load, and counting them made a busy node take its lightest clients for heavy ones.
Running jobs cannot be taken back, so while another address is *active* (had a job ready to run in the last
``RECENT_S``; an offer still waiting for its module does not count) one address runs at most ``workers - 1``
jobs, and for up to ``KEEP_S`` after a job of the lightest active address ended, the last free worker is kept
for that address's next one: two heavy addresses cannot hold every worker while a light client that runs its jobs
back to back waits out their longest job.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from pyphase.limits import Limits
from pyphase.result import Result

RECENT_S = 2.0  # an address that had a job ready to run this recently is waiting for its share (Shares.next)
USAGE_HALF_LIFE_S = 5.0  # worker time an address used counts half after this long (Shares.next)
KEEP_S = 0.25  # how long the last free worker waits for a light address whose job just ended (Shares.next)


@dataclass(frozen=True)
class ShareCaps:
    """The caps of :class:`Shares` (``plasmd`` configuration: ``client_jobs``, ``address_jobs`` ...)."""

    total_jobs: int
    client_jobs: int
    address_jobs: int
    client_waiting: int
    held_bytes: int


@dataclass(eq=False)
class HeldJob:
    """A job in the node's hands. ``abandoned``: its connection died while it ran (the result is not sent);
    ``stopped``: and its worker was told to stop it."""

    rid: bytes
    tag: bytes
    manifest: dict[str, Any]
    input: bytes
    limits: Limits
    client: str
    address: str
    since: float
    t0: float
    module: bytes | None = None
    state: str = "waiting"
    future: concurrent.futures.Future[Result] | None = None
    abandoned: bool = False
    stopped: bool = False
    started: str = field(default="")
    ran_from: float = 0.0  # monotonic time it started running
    fs: Any = None  # pyphase.net.jobfs.JobFS of a job with directories: its files, fetched and laid out
    #: the client asked for output as it comes (``offer.stream``); bytes of stdout (1) and stderr (2) sent in chunks
    stream: bool = False
    streamed: dict[int, int] = field(default_factory=lambda: {1: 0, 2: 0})
    output_relay: Any = None  # pyphase.net.node.OutputRelay of a streaming job

    @property
    def key(self) -> tuple[bytes, bytes]:
        return (self.rid, self.tag)

    @property
    def held(self) -> int:
        """Bytes this job holds while it is not running (its input, and its module once received)."""
        return len(self.input) + (len(self.module) if self.module is not None else 0)


class Shares:
    """Every job the node holds, with per-client and per-address counts and a two-level round-robin queue."""

    def __init__(self, caps: ShareCaps) -> None:
        self.caps = caps
        self.jobs: dict[tuple[bytes, bytes], HeldJob] = {}
        self._counts: Counter[tuple[str, str]] = Counter()
        self._queues: dict[str, dict[str, deque[HeldJob]]] = {}  # address -> client key -> queued jobs
        self.held_bytes = 0
        self._running_by: Counter[str] = Counter()  # source address -> running jobs
        self._last_ready: dict[str, float] = {}  # source address -> when a job of it last became ready, oldest first
        self._usage: dict[str, tuple[float, float]] = {}  # source address -> (worker seconds, as of when)
        self._ended: dict[str, float] = {}  # source address -> when its last running job ended, oldest first
        self.kept_until = 0.0
        """When the last free worker stops being kept for a light address (monotonic; see :meth:`next`)."""
        self.running = 0
        self.queued = 0
        self.waiting = 0

    def refuse(self, client: str, address: str, size: int, waiting: bool) -> str | None:
        """Why a new job of ``size`` bytes from this client cannot be taken now (None: it can)."""
        c = self.caps
        count = self._counts
        if len(self.jobs) >= c.total_jobs:
            return f"{len(self.jobs)} jobs in hand"
        if count["client", client] >= c.client_jobs:
            return f"this client already has {c.client_jobs} jobs here"
        if count["address", address] >= c.address_jobs:
            return f"this address already has {c.address_jobs} jobs here"
        if waiting and (
            count["client-waiting", client] >= c.client_waiting
            or count["address-waiting", address] >= 2 * c.client_waiting
        ):
            return "too many offers of this client wait for their module"
        if self.held_bytes + size > c.held_bytes:
            return f"{self.held_bytes} bytes of jobs already wait here"
        return None

    def add(self, job: HeldJob) -> None:
        self.jobs[job.key] = job
        self._counts["client", job.client] += 1
        self._counts["address", job.address] += 1
        self.held_bytes += job.held
        if job.state == "waiting":
            self.waiting += 1
            self._counts["client-waiting", job.client] += 1
            self._counts["address-waiting", job.address] += 1
        else:
            self._push(job)

    def ready(self, job: HeldJob, module: bytes) -> None:
        """A waiting job got its module: it joins the queue."""
        self._unwait(job)
        job.module = module
        self.held_bytes += len(module)
        self._push(job)

    def _unwait(self, job: HeldJob) -> None:
        self.waiting -= 1
        for kind, who in (("client-waiting", job.client), ("address-waiting", job.address)):
            self._counts[kind, who] -= 1
            if self._counts[kind, who] <= 0:
                del self._counts[kind, who]

    def _push(self, job: HeldJob) -> None:
        self._last_ready.pop(job.address, None)
        self._last_ready[job.address] = time.monotonic()
        job.state = "queued"
        self.queued += 1
        self._queues.setdefault(job.address, {}).setdefault(job.client, deque()).append(job)

    def _active(self, now: float) -> dict[str, float]:
        """Addresses that had a job ready to run in the last ``RECENT_S`` (the stale ones are forgotten)."""
        for other, when in list(self._last_ready.items()):  # oldest first
            if now - when < RECENT_S:
                break
            del self._last_ready[other]
        for other, when in list(self._ended.items()):
            if now - when < KEEP_S:
                break
            del self._ended[other]
        return self._last_ready

    def usage(self, address: str, now: float) -> float:
        """Worker seconds the jobs of ``address`` that finished lately used (halved every ``USAGE_HALF_LIFE_S``)."""
        used, when = self._usage.get(address, (0.0, now))
        return float(used * 0.5 ** ((now - when) / USAGE_HALF_LIFE_S))

    def _charge(self, job: HeldJob, now: float, worker_s: float | None) -> None:
        used = max(0.0, now - job.ran_from if worker_s is None else worker_s)
        self._usage[job.address] = (self.usage(job.address, now) + used, now)
        if len(self._usage) > 4096:  # forget the smallest: bounded whatever the number of addresses
            for address, _ in sorted(self._usage.items(), key=lambda kv: kv[1][0])[:2048]:
                del self._usage[address]

    def next(self, workers: int) -> HeldJob | None:
        """The next queued job to run: of the addresses allowed to start one, the one that used the least worker
        time lately (ties: the first in turn), its first client's oldest job; both then go last. While other
        addresses are active, an address already running ``workers - 1`` jobs waits its turn, and the last free
        worker goes to no heavier address while the lightest active one's job has just ended (until ``kept_until``:
        the caller asks again then; see the module's docstring)."""
        now = time.monotonic()
        active = self._active(now)
        keep_for = None  # the lightest active address with nothing running whose job just ended
        if workers > 1 and workers - self.running == 1 and len(active) > 1:  # one worker: nothing to keep
            light = [(self.usage(a, now), a) for a in self._ended if a in active and not self._running_by[a]]
            keep_for = min(light) if light else None
        while self._queues:
            best, best_usage = None, 0.0
            for address in self._queues:
                others_active = len(active) > (address in active)
                if others_active and self._running_by[address] >= max(1, workers - 1):
                    continue
                used = self.usage(address, now)
                if keep_for is not None and address != keep_for[1] and used > keep_for[0]:
                    self.kept_until = self._ended[keep_for[1]] + KEEP_S
                    continue
                if best is None or used < best_usage:
                    best, best_usage = address, used
            if best is None:
                return None  # a worker stays free for the active addresses that have nothing queued yet
            address, clients = best, self._queues[best]
            client, jobs = next(iter(clients.items()))
            job = jobs.popleft()
            del clients[client]
            if jobs:
                clients[client] = jobs
            del self._queues[address]
            if clients:
                self._queues[address] = clients
            if job.state != "queued":  # removed while queued (its connection died): skip it
                continue
            self.queued -= 1
            self.held_bytes -= job.held
            job.state = "running"
            job.ran_from = now
            self.running += 1
            self._running_by[address] += 1
            return job
        return None

    def remove(self, key: tuple[bytes, bytes], worker_s: float | None = None) -> HeldJob | None:
        """Forget a job (done, expired, cancelled); a queued one is skipped when its turn comes. ``worker_s``: what
        a finished job ran in its worker, charged to its address (None: the time it held the worker)."""
        job = self.jobs.pop(key, None)
        if job is None:
            return None
        if job.state == "waiting":
            self._unwait(job)
            self.held_bytes -= job.held
        elif job.state == "queued":
            self.queued -= 1
            self.held_bytes -= job.held
        elif job.state == "running":
            self._charge(job, time.monotonic(), worker_s)
            self.running -= 1
            self._ended.pop(job.address, None)
            self._ended[job.address] = time.monotonic()
            self._running_by[job.address] -= 1
            if self._running_by[job.address] <= 0:
                del self._running_by[job.address]
        job.state = "gone"
        for kind, who in (("client", job.client), ("address", job.address)):
            self._counts[kind, who] -= 1
            if self._counts[kind, who] <= 0:
                del self._counts[kind, who]
        job.input = b""  # give the memory back now, not when the queue reaches it
        job.module = None
        return job

    def of_connection(self, rid: bytes) -> list[HeldJob]:
        return [job for job in self.jobs.values() if job.rid == rid]
