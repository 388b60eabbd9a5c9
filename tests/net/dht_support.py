"""A private Mainline DHT on loopback for the tests: libtorrent sessions on distinct 127.x.y.1 addresses.

One /24 per node keeps every libtorrent default (its anti-Sybil rules allow one node per /24 in a
routing table and rate-limit each source address), so the network behaves as a deployment would. A
young private DHT fills its routing tables slowly (a bucket refresh every few seconds), so the harness
primes each node with a few others, as a large network's bootstrap reply would.
"""

from __future__ import annotations

import os
import random
from contextlib import contextmanager
from typing import Iterator

from pyphase.net.dht import Dht

_second = 60 + os.getpid() % 60
_third = [0]


def dht_host() -> str:
    """A loopback address in a /24 of its own."""
    _third[0] = _third[0] % 250 + 1
    return f"127.{_second}.{_third[0]}.1"


def prime(nodes: list[Dht], fanout: int = 8) -> None:
    for n in nodes:
        others = [m for m in nodes if m is not n]
        for m in random.sample(others, min(fanout, len(others))):
            n.add_node(m.listen_host, m.port)


@contextmanager
def private_dht(n: int, fanout: int = 8) -> Iterator[list[Dht]]:
    """``n`` DHT nodes on loopback, each knowing up to ``fanout`` others; closed afterwards."""
    nodes: list[Dht] = []
    try:
        for _ in range(n):
            nodes.append(Dht(f"{dht_host()}:0", []))
        prime(nodes, fanout)
        yield nodes
    finally:
        for node in nodes:
            node.close()


def endpoints(nodes: list[Dht]) -> list[tuple[str, int]]:
    return [(n.listen_host, n.port) for n in nodes]
