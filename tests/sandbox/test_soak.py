"""Soak (slow): thousands of mixed jobs from several threads; every one ends as expected, nothing leaks."""

from __future__ import annotations

import os
import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from pyphase.limits import Limits
from pyphase.sandbox import Sandbox

LOOP = '(module (func (export "_start") (loop (br 0))))'
TRAP = '(module (func (export "_start") unreachable))'


@pytest.mark.slow
def test_soak_mixed_jobs(hello_bytes, wat):
    loop, trap = wat(LOOP), wat(TRAP)
    rng = random.Random(99)
    kinds = [rng.choice(["hello"] * 8 + ["loop", "trap", "segfault", "invalid"]) for _ in range(2000)]
    expected = {"hello": "ok", "loop": "timeout", "trap": "trap", "segfault": "crashed", "invalid": "invalid_module"}
    fds_before = len(os.listdir("/proc/self/fd"))
    with Sandbox(workers=3, grace_ms=200) as sb:

        def one(kind: str) -> tuple[str, str]:
            if kind == "hello":
                r = sb.run(hello_bytes, b"soak")
                assert r.stdout == b"kaos"
            elif kind == "loop":
                r = sb.run(loop, limits=Limits(timeout_ms=20))
            elif kind == "trap":
                r = sb.run(trap)
            elif kind == "segfault":
                r = sb._selftest("segfault", hello_bytes)
            else:
                r = sb.run(hello_bytes[:100])
            return kind, r.status

        with ThreadPoolExecutor(6) as pool:
            for kind, status in pool.map(one, kinds):
                assert status == expected[kind], (kind, status)
        assert sb.restarts == 0
    assert len(os.listdir("/proc/self/fd")) == fds_before
