"""Prometheus metrics of a node (``GET /metrics`` on the node's API), through the official prometheus-client.

==========================================  =========  ==========================================================
metric                                      type       meaning
==========================================  =========  ==========================================================
``phase_jobs_total{status,engine}``         counter    jobs run, by receipt status and engine (runtime)
``phase_job_duration_seconds``              histogram  a job's wall time in the engine (the receipt's ``wall_us``)
``phase_job_node_seconds``                  histogram  offer (or module) received to result sent, on the node
``phase_queue_depth``                       gauge      jobs accepted and waiting for a worker (and for modules)
``phase_workers_busy`` / ``phase_workers``  gauge      workers running a job / workers in all
``phase_cache_hits_total``                  counter    offers whose module was cached (no module transfer)
``phase_cache_misses_total``                counter    offers that needed the module's bytes
``phase_cache_stored_bytes_total``          counter    module bytes received and cached
``phase_cache_bytes`` / ``phase_cache_modules``  gauge  the module cache on disk
``phase_rejects_total{reason}``             counter    offers rejected, by reason (docs/NETWORK.md)
``phase_bad_messages_total{code}``          counter    messages answered ``error``, by code
``phase_peers_connected_total``             counter    CURVE clients seen (a new client key)
``phase_api_connections``                   gauge      open HTTP connections to the API
``phase_received_bytes_total``              counter    phase/1 bytes received (all frames)
``phase_sent_bytes_total``                  counter    phase/1 bytes sent
``phase_history_jobs``                      gauge      jobs in the history (``phase jobs``)
``phase_relay_reservations_total{role}``    counter    relay reservations made (``relay``: held here for a node;
                                                       ``node``: this node's at a relay)
``phase_relay_circuits_total{role}``        counter    relay circuits opened (at this relay, or to this node)
``phase_relay_bytes_total{role}``           counter    bytes carried by relay circuits, counted when they close
==========================================  =========  ==========================================================

Counters are fed by the node's event log (the same events it writes as JSON lines), gauges are read
from the node when scraped. :class:`Recent` keeps the last minutes of job times for the dashboard's plot.
"""

from __future__ import annotations

import collections
import time
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from pyphase.metrics_registry import Registry
    from pyphase.net.node import Node

DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Recent:
    """Job finish times and wall times of the last ``window_s`` seconds (bounded), in buckets for a plot."""

    def __init__(self, window_s: int = 600, bucket_s: int = 10, max_items: int = 200_000) -> None:
        self.window_s = window_s
        self.bucket_s = bucket_s
        self.items: collections.deque[tuple[float, int]] = collections.deque(maxlen=max_items)

    def add(self, wall_us: int, now: float | None = None) -> None:
        self.items.append((now or time.time(), wall_us))

    def buckets(self, now: float | None = None) -> list[dict[str, Any]]:
        now = now or time.time()
        start = int(now - self.window_s) // self.bucket_s * self.bucket_s
        while self.items and self.items[0][0] < start:
            self.items.popleft()
        slots: dict[int, list[int]] = {t: [] for t in range(start, int(now) + 1, self.bucket_s)}
        for t, wall in self.items:
            slots.setdefault(int(t) // self.bucket_s * self.bucket_s, []).append(wall)
        out = []
        for t in sorted(slots):
            walls = sorted(slots[t])
            p50 = walls[len(walls) // 2] / 1000 if walls else None
            p99 = walls[min(len(walls) - 1, int(len(walls) * 0.99))] / 1000 if walls else None
            out.append({"t": t, "jobs": len(walls), "p50_ms": p50, "p99_ms": p99})
        return out


class NodeMetrics:
    """The node's metrics in a registry of their own (nothing global), fed by :meth:`on_event`.

    prometheus-client (and the registry) is loaded only when something is counted or scraped: an idle node that
    nobody asks never pays its memory. Counters start at zero either way."""

    def __init__(
        self, node: Node, api_connections: Callable[[], int] = lambda: 0, history_jobs: Callable[[], int] = lambda: 0
    ) -> None:
        self.node = node
        self.api_connections = api_connections
        self.history_jobs = history_jobs
        self.recent = Recent()
        self._registry: Registry | None = None

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            from pyphase.metrics_registry import Registry

            self._registry = Registry(self.node, self.api_connections, self.history_jobs, DURATION_BUCKETS)
        return self._registry

    def on_receipt(self, receipt: dict[str, Any]) -> None:
        """One job finished and signed: count it by status and engine, time it."""
        r = self.registry
        r.jobs.labels(receipt["status"], receipt["node"]["runtime"]).inc()
        r.duration.observe(receipt["wall_us"] / 1e6)
        self.recent.add(receipt["wall_us"])

    def on_event(self, event: str, fields: dict[str, Any]) -> None:
        """One node event (as logged): count what it tells."""
        if event not in _COUNTED:
            return
        r = self.registry
        if event == "result":
            r.node_time.observe(
                (fields.get("start_us", 0) + fields.get("exec_us", 0) + fields.get("reply_us", 0)) / 1e6
            )
        elif event == "offer":
            (r.cache_hits if fields.get("cached") else r.cache_misses).inc()
        elif event == "module_cached":
            r.cache_stored.inc(int(fields.get("size") or 0))
        elif event == "reject":
            r.rejects.labels(str(fields.get("reason", "?"))).inc()
        elif event == "bad_message":
            r.bad_messages.labels(str(fields.get("code", "?"))).inc()
        elif event == "peer_connected":
            r.peers.inc()
        elif event == "relay_reserved":
            r.relay_reservations.labels(str(fields.get("role", "?"))).inc()
        elif event == "circuit_opened":
            r.relay_circuits.labels(str(fields.get("role", "?"))).inc()
        elif event == "circuit_closed":
            r.relay_bytes.labels(str(fields.get("role", "?"))).inc(int(fields.get("bytes") or 0))

    def exposition(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return self.registry.exposition()


_COUNTED = frozenset(
    {
        "result",
        "offer",
        "module_cached",
        "reject",
        "bad_message",
        "peer_connected",
        "relay_reserved",
        "circuit_opened",
        "circuit_closed",
    }
)
