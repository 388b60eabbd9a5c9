"""Hostile Mainline DHT nodes for the phase-dht tests (tests/boot/test_dht_c.py): UDP sockets on 127.0.0.1 that
answer get_peers with whatever a test gives them. Run as a script it is one fuzz round (a seed): 20 nodes answer
every query with a randomly damaged good answer; it prints phase-dht's exit status and output as JSON. The
test runs the script inside a network namespace with only loopback, since a damaged answer can name any address.
"""

from __future__ import annotations

import json
import random
import select
import socket
import subprocess
import sys
import threading
from typing import Callable

Answer = Callable[[int, bytes, bytes], list[bytes]]


def benc(x: object) -> bytes:
    if isinstance(x, int):
        return b"i%de" % x
    if isinstance(x, bytes):
        return b"%d:%s" % (len(x), x)
    if isinstance(x, list):
        return b"l" + b"".join(map(benc, x)) + b"e"
    assert isinstance(x, dict)
    return b"d" + b"".join(benc(k) + benc(v) for k, v in sorted(x.items())) + b"e"


def query_tid(query: bytes) -> bytes:
    at = query.find(b"1:t2:")
    return query[at + 5 : at + 7] if at >= 0 else b"xx"


def compact(host: str, port: int) -> bytes:
    """BEP 5's compact form (4 bytes of IPv4, or BEP 32's 16 of IPv6, then the port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.inet_pton(family, host) + port.to_bytes(2, "big")


class HostileNodes:
    """``count`` UDP sockets on 127.0.0.1 (or ``host``) answering get_peers with ``answer(index, tid, query)`` bytes."""

    def __init__(self, count: int, answer, host: str = "127.0.0.1") -> None:
        self.socks = []
        for _ in range(count):
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((host, 0))
            self.socks.append(s)
        self.ports = [s.getsockname()[1] for s in self.socks]
        self.answer = answer
        self.received = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select(self.socks, [], [], 0.1)
            for s in ready:
                query, addr = s.recvfrom(4096)
                self.received += 1
                for reply in self.answer(self.socks.index(s), query_tid(query), query):
                    s.sendto(reply, addr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for s in self.socks:
            s.close()


def nodes_of(ports: list[int], rng: random.Random) -> bytes:
    return b"".join(rng.randbytes(20) + compact("127.0.0.1", p) for p in ports)


def ok_answer(tid: bytes, **r: object) -> bytes:
    return benc({b"t": tid, b"y": b"r", b"r": {b"id": b"\x07" * 20, **{k.encode(): v for k, v in r.items()}}})


def mutant_answers(seed: int, ports: Callable[[], list[int]]) -> Answer:
    rng = random.Random(seed)

    def answer(i: int, tid: bytes, query: bytes) -> list[bytes]:
        good = bytearray(
            ok_answer(tid, nodes=nodes_of(rng.sample(ports(), 8), rng), values=[compact("127.0.0.1", 18000 + i)])
        )
        for _ in range(rng.choice([0, 0, 1, 2, 3, 6])):  # a third intact, so the walk goes on
            op, at = rng.randrange(4), rng.randrange(len(good))
            if op == 0:
                good[at] = rng.randrange(256)
            elif op == 1:
                del good[at : at + rng.randint(1, 30)]
            elif op == 2:
                good[at:at] = rng.choice([b"d", b"l", b"e", b"i", b"99:", b"0:", b"-", b"4294967296:"])
            else:
                good = good[:at]
        return [bytes(good)] if good else []

    return answer


def main(tool: str, pub: str, seed: int) -> None:
    holder: list[HostileNodes] = []
    hostile = HostileNodes(20, mutant_answers(seed, lambda: holder[0].ports))
    holder.append(hostile)
    try:
        proc = subprocess.run(
            [tool, "--key", pub, "--bootstrap", ",".join(f"127.0.0.1:{p}" for p in hostile.ports[:3]), "--timeout", "4"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    finally:
        hostile.close()
    print(json.dumps({"returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
