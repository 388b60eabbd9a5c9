"""``/metrics`` scraped from a real node after real traffic, parsed with prometheus-client's own parser."""

from __future__ import annotations

from typing import Any, Callable

from prometheus_client.parser import text_string_to_metric_families

import nacl.bindings
import zmq

from pyphase import Client, Identity, Limits, make_manifest
from pyphase.net.addresses import parse_address
from pyphase.net import wire


def offer_raw(address: str, module: bytes, limits: Limits) -> tuple[str, str]:
    """One offer straight over phase/1 (pyphase.Client would not offer what the node's caps exclude)."""
    _, key, host, port = parse_address(address)
    public, secret = Identity.generate().curve_keypair()
    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as sock:
        sock.curve_serverkey = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(key)
        sock.curve_publickey, sock.curve_secretkey = public, secret
        sock.linger = 0
        sock.connect(f"tcp://{host}:{port}")
        sock.send_multipart(wire.encode("offer", (b"",), job=b"t", manifest=make_manifest(module, limits=limits)))
        assert sock.poll(10_000)
        msg = wire.decode(sock.recv_multipart())
        return msg.type, msg.get("reason", "")


def scrape(api: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body, headers = api.call("GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def test_metrics_count_what_happened(api_nodes: Callable[..., list[Any]], hello_bytes: bytes) -> None:
    (api,) = api_nodes()
    before = scrape(api)
    assert before[("phase_workers", ())] == 2 and before[("phase_workers_busy", ())] == 0
    assert before[("phase_received_bytes_total", ())] == 0
    with Client(peers=[api.node.address]) as client:
        for text in (b"one", b"two", b"three"):
            assert client.submit(hello_bytes, text).stdout == text[::-1]
    assert offer_raw(api.node.address, hello_bytes, Limits(memory_bytes=4 << 30)) == ("reject", "limits")
    m = scrape(api)
    assert m[("phase_jobs_total", (("engine", "wasm3"), ("status", "ok")))] == 3
    assert m[("phase_job_duration_seconds_count", ())] == 3
    assert 0 < m[("phase_job_duration_seconds_sum", ())] < 3
    assert m[("phase_job_node_seconds_count", ())] == 3
    assert m[("phase_cache_misses_total", ())] == 1 and m[("phase_cache_hits_total", ())] == 2
    assert m[("phase_cache_stored_bytes_total", ())] == len(hello_bytes)
    assert m[("phase_cache_bytes", ())] == len(hello_bytes) and m[("phase_cache_modules", ())] == 1
    assert m[("phase_rejects_total", (("reason", "limits"),))] == 1
    assert m[("phase_peers_connected_total", ())] == 2  # the client and offer_raw: two keys
    assert m[("phase_received_bytes_total", ())] > len(hello_bytes)
    assert m[("phase_sent_bytes_total", ())] > 0
    assert m[("phase_history_jobs", ())] == 3
    assert m[("phase_queue_depth", ())] == 0
    assert m[("phase_jobs_demoted_total", ())] == 0  # short jobs keep their priority
    assert m[("phase_api_connections", ())] >= 1  # this scrape's own connection
