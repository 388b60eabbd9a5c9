"""A private Mainline DHT of libtorrent sessions all on 127.0.0.1, for Phase Boot's Internet-mode tests.

QEMU's user network reaches the host only as 10.0.2.2 -> 127.0.0.1, so a booted stage 1 can talk to DHT
nodes only if they all listen on 127.0.0.1 (tests/net/dht_support.py gives each node a /24 of its own
instead, which keeps libtorrent's defaults). Many nodes on one address need libtorrent's anti-Sybil rules
relaxed: these settings are for this test network only; the product keeps the defaults.
"""

from __future__ import annotations

import random
import time
from contextlib import contextmanager
from typing import Any, Iterator

import libtorrent as lt

from pyphase.net.dht import DHT_ONLY_SETTINGS

ONE_ADDRESS_SETTINGS: dict[str, Any] = {
    **DHT_ONLY_SETTINGS,
    "dht_restrict_routing_ips": False,
    "dht_restrict_search_ips": False,
    "dht_enforce_node_id": False,
    "dht_prefer_verified_node_ids": False,
    "dht_ignore_dark_internet": False,
    "dht_block_ratelimit": 100000,
    "alert_mask": 0,
}


def _session(bootstrap: str, host: str) -> Any:
    listen = f"[{host}]:0" if ":" in host else f"{host}:0"
    settings = dict(ONE_ADDRESS_SETTINGS, listen_interfaces=listen, dht_bootstrap_nodes=bootstrap)
    params = lt.session_params(settings)
    params.disk_io_constructor = "posix_disk_io_constructor"
    return lt.session(params)


@contextmanager
def loopback_sessions(n: int = 8, host: str = "127.0.0.1") -> Iterator[list[Any]]:
    """``n`` libtorrent DHT sessions on ``host`` (127.0.0.1 or ::1) that know each other."""
    sessions: list[Any] = []
    at = f"[{host}]" if ":" in host else host
    try:
        first = _session(f"{at}:9", host)  # a session never routes through its own bootstrap: primed below
        sessions.append(first)
        for _ in range(n - 1):
            sessions.append(_session(f"{at}:{first.listen_port()}", host))
        ports = [s.listen_port() for s in sessions]
        for s in sessions:
            for p in random.sample(ports, min(n, len(ports))):
                if p != s.listen_port():
                    s.add_dht_node((host, p))
        time.sleep(1.0)
        yield sessions
    finally:
        for s in sessions:
            s.pause()
        del sessions[:]


@contextmanager
def loopback_dht(n: int = 8) -> Iterator[list[tuple[str, int]]]:
    """``n`` DHT nodes on 127.0.0.1 that know each other; yields their (host, port)."""
    with loopback_sessions(n) as sessions:
        yield [("127.0.0.1", s.listen_port()) for s in sessions]
