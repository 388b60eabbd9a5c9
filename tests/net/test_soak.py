"""Soak: 1,000 jobs across 5 nodes while two nodes are killed (SIGKILL) and restarted -> none lost, none twice."""

from __future__ import annotations

import random
import threading
import time

import pytest

from net_support import spin_input
from pyphase import Client

JOBS = 1000
CLIENTS = 4


@pytest.mark.slow
def test_soak_kills_and_restarts(start_nodes, spin_bytes):
    nodes = start_nodes(5)
    addresses = [n.address for n in nodes]
    returned: list[bytes] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    done = threading.Event()
    rng = random.Random(1234)

    def worker(index: int) -> None:
        with Client(peers=addresses) as client:
            for j in range(index, JOBS, CLIENTS):
                tag = b"job-%05d" % j
                try:
                    result = client.submit(spin_bytes, spin_input(20, tag), timeout=5, retries=8)
                except BaseException as exc:
                    with lock:
                        errors.append(exc)
                    continue
                assert result.stdout == spin_input(20, tag)
                with lock:
                    returned.append(tag)

    def chaos() -> None:
        for threshold in (JOBS // 3, 2 * JOBS // 3):
            while not done.is_set():
                with lock:
                    if len(returned) >= threshold:
                        break
                done.wait(0.01)
            victim = rng.choice(nodes)
            victim.restart()

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(CLIENTS)]
    killer = threading.Thread(target=chaos)
    for t in (*threads, killer):
        t.start()
    for t in threads:
        t.join(timeout=150)
    done.set()
    killer.join(timeout=30)
    elapsed = time.monotonic() - started
    assert not errors, errors[:3]
    assert len(returned) == JOBS, f"{JOBS - len(returned)} lost"
    assert len(set(returned)) == JOBS, "duplicated results"
    assert sum(1 for n in nodes if n.alive) == 5
    print(f"soak: {JOBS} jobs, 2 kills/restarts, {elapsed:.1f} s")
