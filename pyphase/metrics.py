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
from typing import TYPE_CHECKING, Any, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
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
    """The node's metrics in a registry of their own (nothing global), fed by :meth:`on_event`."""

    def __init__(
        self, node: Node, api_connections: Callable[[], int] = lambda: 0, history_jobs: Callable[[], int] = lambda: 0
    ) -> None:
        self.node = node
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.recent = Recent()
        self.jobs = Counter("phase_jobs", "Jobs run, by receipt status and engine", ["status", "engine"], registry=r)
        self.duration = Histogram(
            "phase_job_duration_seconds",
            "Job wall time in the engine (receipt wall_us)",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.node_time = Histogram(
            "phase_job_node_seconds",
            "Offer (or module) received to result sent, on the node",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.cache_hits = Counter("phase_cache_hits", "Offers whose module was cached", registry=r)
        self.cache_misses = Counter("phase_cache_misses", "Offers that needed the module's bytes", registry=r)
        self.cache_stored = Counter("phase_cache_stored_bytes", "Module bytes received and cached", registry=r)
        self.rejects = Counter("phase_rejects", "Offers rejected, by reason", ["reason"], registry=r)
        self.bad_messages = Counter("phase_bad_messages", "Messages answered error, by code", ["code"], registry=r)
        self.peers = Counter("phase_peers_connected", "CURVE clients seen (new client keys)", registry=r)
        self.relay_reservations = Counter("phase_relay_reservations", "Relay reservations made", ["role"], registry=r)
        self.relay_circuits = Counter("phase_relay_circuits", "Relay circuits opened", ["role"], registry=r)
        self.relay_bytes = Counter("phase_relay_bytes", "Bytes carried by closed relay circuits", ["role"], registry=r)

        r.register(_NodeCollector(node, api_connections, history_jobs))

    def on_receipt(self, receipt: dict[str, Any]) -> None:
        """One job finished and signed: count it by status and engine, time it."""
        self.jobs.labels(receipt["status"], receipt["node"]["runtime"]).inc()
        self.duration.observe(receipt["wall_us"] / 1e6)
        self.recent.add(receipt["wall_us"])

    def on_event(self, event: str, fields: dict[str, Any]) -> None:
        """One node event (as logged): count what it tells."""
        if event == "result":
            self.node_time.observe(
                (fields.get("start_us", 0) + fields.get("exec_us", 0) + fields.get("reply_us", 0)) / 1e6
            )
        elif event == "offer":
            (self.cache_hits if fields.get("cached") else self.cache_misses).inc()
        elif event == "module_cached":
            self.cache_stored.inc(int(fields.get("size") or 0))
        elif event == "reject":
            self.rejects.labels(str(fields.get("reason", "?"))).inc()
        elif event == "bad_message":
            self.bad_messages.labels(str(fields.get("code", "?"))).inc()
        elif event == "peer_connected":
            self.peers.inc()
        elif event == "relay_reserved":
            self.relay_reservations.labels(str(fields.get("role", "?"))).inc()
        elif event == "circuit_opened":
            self.relay_circuits.labels(str(fields.get("role", "?"))).inc()
        elif event == "circuit_closed":
            self.relay_bytes.labels(str(fields.get("role", "?"))).inc(int(fields.get("bytes") or 0))

    def exposition(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return generate_latest(self.registry)


class _NodeCollector(Collector):
    """Values that live in the node, read when scraped."""

    def __init__(self, node: Node, api_connections: Callable[[], int], history_jobs: Callable[[], int]) -> None:
        self.node = node
        self.api_connections = api_connections
        self.history_jobs = history_jobs

    def collect(self) -> Iterator[Metric]:
        node = self.node
        load = node.load()
        yield GaugeMetricFamily(
            "phase_queue_depth",
            "Jobs waiting for a worker or for their module",
            value=load["queued"] + node.shares.waiting,
        )
        yield GaugeMetricFamily(
            "phase_jobs_abandoned", "Results dropped: their client was gone or did not read", value=node.abandoned
        )
        yield GaugeMetricFamily("phase_workers_busy", "Workers running a job", value=load["running"])
        yield GaugeMetricFamily("phase_workers", "Workers in all", value=load["workers"])
        yield GaugeMetricFamily("phase_cache_bytes", "Module cache size on disk", value=node.cache.disk_bytes)
        yield GaugeMetricFamily("phase_cache_modules", "Modules in the cache", value=len(node.cache))
        yield GaugeMetricFamily(
            "phase_api_connections", "Open HTTP connections to the API", value=self.api_connections()
        )
        yield GaugeMetricFamily("phase_history_jobs", "Jobs in the history", value=self.history_jobs())
        yield CounterMetricFamily("phase_received_bytes", "phase/1 bytes received", value=node.bytes_in)
        yield CounterMetricFamily("phase_sent_bytes", "phase/1 bytes sent", value=node.bytes_out)
