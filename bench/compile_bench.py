"""Compiling off the sandbox's path: tiny jobs while a big module compiles in a compile helper, and a restart that
loads the code from the data dir instead of compiling again (docs/SANDBOX.md, "Engines"); and what a big module in
the fork server's cache costs every later tiny job (docs/SANDBOX.md, "Memory").

    python bench/compile_bench.py [--functions N] [--ops N] [--json] [--server PATH]

Prints the tiny job's latency through ``Sandbox(workers=1)`` idle, during the compile (ratio in the same run) and after
it (the fork server then holds the big module and its code), how many jobs ran meanwhile, the compile time, and the first compiled job of the module in a fresh sandbox on the same
data dir (code loaded from disk) against the compile it saved. Before all that, in a sandbox of its own: the tiny job
without and then with the big module cached for wasm3 alone (ratio in the same run), and the fork server's and a
waiting worker's private anonymous memory (what fork() copies page-table entries for).

``--server PATH`` runs another build of ``phase-sandboxd`` (e.g. main's, for a before/after in one session: the
protocol must be the same).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "sandbox"))

import pyphase.sandbox as sandbox_module  # noqa: E402
from pyphase import Limits, engines  # noqa: E402
from pyphase.sandbox import Sandbox  # noqa: E402
from sandbox_helpers import big_module  # noqa: E402

HELLO = HERE.parent / "examples" / "hello" / "hello.wasm"
LONG = Limits(timeout_ms=60_000)


def _tiny_jobs(sb: Sandbox, hello: bytes, until: object, seconds: float = 0.0) -> list[float]:
    """Back-to-back tiny jobs until ``until()`` is true (or for ``seconds``); their latencies in seconds."""
    lat = []
    start = time.monotonic()
    while not (until() if callable(until) else time.monotonic() - start >= seconds):
        t = time.perf_counter()
        r = sb.run(hello, b"ab", engine="wasm3")
        lat.append(time.perf_counter() - t)
        assert r.status == "ok", r.message
    return lat


def _rss_anon_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return 0


def _worker_rss_anon_kib(sb: Sandbox) -> int:
    """The largest private anonymous memory of the server's live children (its waiting workers; a second at most
    for one that is not on its way out or still being forked)."""
    deadline = time.monotonic() + 1.0
    while True:
        sizes = []
        for pid in Path(f"/proc/{sb.server_pid}/task/{sb.server_pid}/children").read_text().split():
            try:
                sizes.append(_rss_anon_kib(int(pid)))
            except OSError:
                pass  # a worker on its way out
        if max(sizes, default=0) or time.monotonic() > deadline:
            return max(sizes, default=0)
        time.sleep(0.01)


def cached_module_cost(hello: bytes, big: bytes) -> dict[str, float]:
    """The tiny job without, then with, the big module in the server's cache (wasm3 only), in one sandbox."""
    with Sandbox(workers=1) as sb:
        _tiny_jobs(sb, hello, None, 1.0)  # warm
        without = _tiny_jobs(sb, hello, None, 3.0)
        server_before, worker_before = _rss_anon_kib(sb.server_pid), _worker_rss_anon_kib(sb)
        for _ in range(2):  # the first runs it inline and has the server cache it
            assert sb.run(big, b"", limits=LONG, engine="wasm3").status == "ok"
        adds = sb._adds
        deadline = time.monotonic() + 120
        while not all(slot.cache_seq >= adds for slot in sb._slots):  # every worker forked with it cached
            _tiny_jobs(sb, hello, None, 0.05)
            assert time.monotonic() < deadline, "the fork server did not cache the module"
        _tiny_jobs(sb, hello, None, 0.2)
        cached = _tiny_jobs(sb, hello, None, 3.0)
        server_after, worker_after = _rss_anon_kib(sb.server_pid), _worker_rss_anon_kib(sb)
    return {
        "without_p50_us": round(statistics.median(without) * 1e6),
        "cached_p50_us": round(statistics.median(cached) * 1e6),
        "cached_ratio": round(statistics.median(cached) / statistics.median(without), 2),
        "server_rss_anon_mb": round(server_before / 1024, 1),
        "server_rss_anon_cached_mb": round(server_after / 1024, 1),
        "worker_rss_anon_mb": round(worker_before / 1024, 1),
        "worker_rss_anon_cached_mb": round(worker_after / 1024, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--functions", type=int, default=400)
    ap.add_argument("--ops", type=int, default=4000)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--server", type=Path, help="another build of phase-sandboxd to measure (before/after)")
    args = ap.parse_args()
    if args.server:
        sandbox_module._server_command = lambda: [str(args.server.resolve())]
    hello = HELLO.read_bytes()
    big = big_module(args.functions, args.ops)
    out: dict[str, float] = {"module_mb": round(len(big) / 1e6, 1), "load": round(os.getloadavg()[0], 1)}
    out.update(cached_module_cost(hello, big))
    with tempfile.TemporaryDirectory() as data_dir:
        engines.use_data_dir(data_dir)
        with Sandbox(workers=1) as sb:
            _tiny_jobs(sb, hello, None, 1.0)  # warm
            idle = _tiny_jobs(sb, hello, None, 3.0)
            started = time.monotonic()
            job = sb.submit(big, b"", limits=LONG, engine="wasmtime")
            during = _tiny_jobs(sb, hello, job.done)
            result = job.result()
            waited = time.monotonic() - started
            after = _tiny_jobs(sb, hello, None, 3.0)  # the server now holds the big module and its code
        with Sandbox(workers=1) as sb:  # a restart: a new fork server on the same data dir
            started = time.monotonic()
            again = sb.run(big, b"", limits=LONG, engine="wasmtime")
            restart = time.monotonic() - started
            assert sb.compiles == 0 and sb.code_loads == 1 and again.compile_us == 0
        engines.use_data_dir(None)
    out.update(
        idle_jobs_per_s=round(len(idle) / 3.0),
        idle_p50_us=round(statistics.median(idle) * 1e6),
        idle_max_ms=round(max(idle) * 1e3, 1),
        compile_s=round(result.compile_us / 1e6, 2),
        compiled_job_waited_s=round(waited, 2),
        jobs_during_compile=len(during),
        during_p50_us=round(statistics.median(during) * 1e6),
        during_max_ms=round(max(during) * 1e3, 1),
        p50_ratio=round(statistics.median(during) / statistics.median(idle), 2),
        after_p50_us=round(statistics.median(after) * 1e6),
        after_ratio=round(statistics.median(after) / statistics.median(idle), 2),
        after_max_ms=round(max(after) * 1e3, 1),
        restart_first_compiled_job_ms=round(restart * 1e3, 1),
    )
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"module: {out['module_mb']} MB; load average {out['load']}")
    print(
        f"tiny job, big module cached for wasm3: p50 {out['without_p50_us']} us without, {out['cached_p50_us']} us "
        f"with ({out['cached_ratio']}x); private anonymous memory: server {out['server_rss_anon_mb']} -> "
        f"{out['server_rss_anon_cached_mb']} MB, waiting worker {out['worker_rss_anon_mb']} -> "
        f"{out['worker_rss_anon_cached_mb']} MB"
    )
    print(f"Cranelift in a compile helper: {out['compile_s']} s")
    print(f"tiny job idle:          p50 {out['idle_p50_us']} us, max {out['idle_max_ms']} ms")
    print(
        f"tiny job during it:     p50 {out['during_p50_us']} us ({out['p50_ratio']}x idle), "
        f"max {out['during_max_ms']} ms, {out['jobs_during_compile']} jobs while the compiled job waited "
        f"{out['compiled_job_waited_s']} s"
    )
    print(
        f"tiny job after it:      p50 {out['after_p50_us']} us ({out['after_ratio']}x idle), max {out['after_max_ms']} ms "
        "(the server holds the module and its code)"
    )
    print(
        f"after a restart: first compiled job {out['restart_first_compiled_job_ms']} ms (code from the data dir) "
        f"vs {out['compile_s']} s to compile"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
