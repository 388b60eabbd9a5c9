"""Compiling off the sandbox's path: tiny jobs while a big module compiles in a compile helper, and a restart that
loads the code from the data dir instead of compiling again (docs/SANDBOX.md, "Engines").

    python bench/compile_bench.py [--functions N] [--ops N] [--json]

Prints the tiny job's latency through ``Sandbox(workers=1)`` idle, during the compile (ratio in the same run) and after
it (the fork server then holds the big module and its code), how many jobs ran meanwhile, the compile time, and the first compiled job of the module in a fresh sandbox on the same
data dir (code loaded from disk) against the compile it saved.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "sandbox"))

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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--functions", type=int, default=400)
    ap.add_argument("--ops", type=int, default=4000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    hello = HELLO.read_bytes()
    big = big_module(args.functions, args.ops)
    out: dict[str, float] = {"module_mb": round(len(big) / 1e6, 1)}
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
        after_max_ms=round(max(after) * 1e3, 1),
        restart_first_compiled_job_ms=round(restart * 1e3, 1),
    )
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"module: {out['module_mb']} MB; Cranelift in a compile helper: {out['compile_s']} s")
    print(f"tiny job idle:          p50 {out['idle_p50_us']} us, max {out['idle_max_ms']} ms")
    print(
        f"tiny job during it:     p50 {out['during_p50_us']} us ({out['p50_ratio']}x idle), "
        f"max {out['during_max_ms']} ms, {out['jobs_during_compile']} jobs while the compiled job waited "
        f"{out['compiled_job_waited_s']} s"
    )
    print(
        f"tiny job after it:      p50 {out['after_p50_us']} us, max {out['after_max_ms']} ms (a bigger server to fork)"
    )
    print(
        f"after a restart: first compiled job {out['restart_first_compiled_job_ms']} ms (code from the data dir) "
        f"vs {out['compile_s']} s to compile"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
