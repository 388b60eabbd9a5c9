"""The prometheus-client side of :mod:`pyphase.metrics`: the registry, its counters and histograms, and the
collector that reads the node's gauges when scraped. Imported on first use only (it costs an idle node ~5 MB)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from pyphase.net.node import Node


class Registry:
    """One node's metrics (nothing global): what :class:`pyphase.metrics.NodeMetrics` counts into."""

    def __init__(
        self,
        node: Node,
        api_connections: Callable[[], int],
        history_jobs: Callable[[], int],
        buckets: tuple[float, ...],
    ) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.jobs = Counter("phase_jobs", "Jobs run, by receipt status and engine", ["status", "engine"], registry=r)
        self.duration = Histogram(
            "phase_job_duration_seconds", "Job wall time in the engine (receipt wall_us)", buckets=buckets, registry=r
        )
        self.node_time = Histogram(
            "phase_job_node_seconds",
            "Offer (or module) received to result sent, on the node",
            buckets=buckets,
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

    def exposition(self) -> bytes:
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
        yield CounterMetricFamily(
            "phase_jobs_demoted",
            "Job workers moved to a lower CPU priority for the CPU their job used (job_demote_after)",
            value=getattr(node.executor, "demoted", 0),
        )
        yield GaugeMetricFamily("phase_workers", "Workers in all", value=load["workers"])
        yield GaugeMetricFamily("phase_cache_bytes", "Module cache size on disk", value=node.cache.disk_bytes)
        yield GaugeMetricFamily("phase_cache_modules", "Modules in the cache", value=len(node.cache))
        yield GaugeMetricFamily(
            "phase_api_connections", "Open HTTP connections to the API", value=self.api_connections()
        )
        yield GaugeMetricFamily("phase_history_jobs", "Jobs in the history", value=self.history_jobs())
        yield CounterMetricFamily("phase_received_bytes", "phase/1 bytes received", value=node.bytes_in)
        yield CounterMetricFamily("phase_sent_bytes", "phase/1 bytes sent", value=node.bytes_out)
