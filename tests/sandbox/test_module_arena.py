"""A big module in the fork server's cache is not copied into every worker (csrc/phase_arena.c).

fork() copies the page-table entries of every private anonymous page of the server, and exit() tears them down: a
module cached on the heap (its parsed and compiled code is ~6x its bytes) made every later job of every module pay for
it. The server now builds a cached module in a sealed memfd mapped copy-on-write, which fork() does not copy page by
page. Structural checks, not timings (those are in bench/compile_bench.py). The compile helper's view of the arenas
is checked in test_compile_helper.py.
"""

from __future__ import annotations

from pathlib import Path

from sandbox_helpers import big_module, proc_status, wait_until

from pyphase import Limits
from pyphase.sandbox import Sandbox

ARENA = "/memfd:phase-module"


def _kib(pid: int, field: str) -> int:
    return int(proc_status(pid).get(field, "0 kB").split()[0])


def _workers(sb: Sandbox) -> list[int]:
    """The server's live children: its workers."""
    children = Path(f"/proc/{sb.server_pid}/task/{sb.server_pid}/children").read_text().split()
    return [int(p) for p in children if _kib(int(p), "RssAnon")]


def _waiting_worker(sb: Sandbox) -> int:
    """A worker forked and confined, waiting for its job (not the last job's, on its way out)."""

    def waiting() -> list[int]:
        found = [p for p in _workers(sb) if proc_status(p).get("State", "").startswith("S")]
        return found if len(found) == 2 and all(proc_status(p).get("Seccomp") == "2" for p in found) else []

    wait_until(lambda: bool(waiting()), 10, "the slot's two workers waiting")
    return waiting()[0]


def _arenas(pid: int) -> list[str]:
    """The arena mappings of a process: one line of /proc/<pid>/maps each."""
    return [line for line in Path(f"/proc/{pid}/maps").read_text().splitlines() if ARENA in line]


def _cache(sb: Sandbox, module: bytes, hello: bytes) -> None:
    """Have the server cache ``module`` and every slot's workers be forked after that."""
    assert sb.run(module, b"", limits=Limits(timeout_ms=60_000), engine="wasm3").status == "ok"
    adds = sb._adds
    wait_until(lambda: sb.run(hello, b"x").ok and all(s.cache_seq >= adds for s in sb._slots), 60, "the module cached")
    for _ in range(4):  # every buffer's worker forked after it
        assert sb.run(hello, b"x").ok


def test_a_cached_big_module_is_not_copied_into_every_worker(hello_bytes: bytes) -> None:
    big = big_module(60, 2500)  # 1.2 MB: ~7 MB of wasm3 code and structures once prepared
    with Sandbox(workers=1) as sb:
        for _ in range(4):
            assert sb.run(hello_bytes, b"x").ok
        worker = _waiting_worker(sb)
        before = _kib(worker, "RssAnon"), _kib(sb.server_pid, "RssAnon")
        _cache(sb, big, hello_bytes)
        worker = _waiting_worker(sb)
        after = _kib(worker, "RssAnon"), _kib(sb.server_pid, "RssAnon")
        # Before: both grew by ~7 MB (the module's memory on the server's heap, mapped into every fork).
        assert after[0] - before[0] < len(big) // 1024 // 4, (before, after)
        assert after[1] - before[1] < len(big) // 1024 // 4, (before, after)
        # It is in a copy-on-write file mapping the server never wrote after sealing it.
        server_arenas = _arenas(sb.server_pid)
        assert server_arenas and all(" rw-p " in line for line in server_arenas), server_arenas
        assert _arenas(worker), "a waiting worker does not know its job yet: it has every cached module"
        assert sb.run(big, b"", engine="wasm3").status == "ok"  # and runs from it
