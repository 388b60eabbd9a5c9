"""Sandbox figures: what process isolation costs, against in-process runs measured in the same run.

    python bench/sandbox_bench.py            # about 20 s
    python bench/sandbox_bench.py --quick    # about 5 s, for a smoke test
    python bench/sandbox_bench.py --json     # machine-readable

Method
  * tiny job: examples/hello/hello.wasm reversing 12 bytes, module cached (the fork server holds it, so
    workers inherit it validated), default limits. Sequential calls of Sandbox.run from one thread;
    p50/p99 over N calls after a warm-up, against pyphase.run (in-process, instance reused) in the same run.
    Back-to-back calls overlap each job with the replacement of the previous worker (fork, filter install,
    exit) on the same 2 CPUs; "2 ms apart" models jobs arriving at an idle pool.
    The breakdown (medians, µs after "go") comes from the worker's own clock: when it was set up (usually
    before "go": a spare waits set up), woke, confined (rlimits), job ran, parent saw "done". Sandbox() defaults: one spare
    worker per slot.
  * engines: the same tiny job, back to back, in three sandboxes used in turn (blocks of 200, the order rotating):
    wasm3 only; both engines, nothing compiled yet (the fork server has not loaded the compiling engine's library);
    both, after one compile (library loaded, so every worker is forked with its mappings). Reported: the median of
    each block's ratio to the wasm3-only block beside it. Skipped when the compiling engine is not installed.
  * throughput: N jobs submitted at once to Sandbox(workers=2), against two threads calling pyphase.run.
  * crash: a worker segfaults mid-job (test-only action); "detect" is submit -> crashed result, "replace" is
    result -> a fresh worker ready. Also a worker SIGKILLed from outside mid-job: kill -> crashed result.

Caveats: wall-clock timings on a shared machine (the load average is printed); single-use workers mean a
fork + exit per job, which the pool overlaps with other jobs only when there are several workers. CI never
fails on these numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyphase
from pyphase.limits import Limits
from pyphase.sandbox import Sandbox

ROOT = Path(__file__).resolve().parent.parent
HELLO = (ROOT / "examples" / "hello" / "hello.wasm").read_bytes()
INPUT = b"Hello, World"
# (module (func (export "_start") (loop (br 0)))), assembled by wat2wasm
LOOP = bytes.fromhex("0061736d0100000001040160000003020100070a01065f737461727400000a0901070003400c000b0b")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def latency(fn, n: int, warmup: int = 50, gap_s: float = 0.0) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        if gap_s:
            time.sleep(gap_s)  # spaced arrivals: the pool has replaced the last worker before the next job
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e6)
    return out


def tiny_job(n: int) -> dict[str, float]:
    module = pyphase.Module.cached(HELLO)
    inproc = latency(lambda: pyphase.run(module, INPUT), n)
    with Sandbox(workers=2) as sb:
        timelines: list[tuple[int, ...]] = []

        def one() -> None:
            r = sb.run(module, INPUT)
            assert r.stdout == INPUT[::-1], r
            timelines.append(max((s.last_timeline for s in sb._slots), key=lambda t: t[3]))

        boxed = latency(one, n)
        timelines = timelines[-n:]
        spaced = latency(one, max(100, n // 4), warmup=5, gap_s=0.002)
        spaced_timelines = timelines[-max(100, n // 4) :]
    out = {
        "inprocess_p50_us": statistics.median(inproc),
        "inprocess_p99_us": pct(inproc, 99),
        "sandbox_p50_us": statistics.median(boxed),
        "sandbox_p99_us": pct(boxed, 99),
        "sandbox_spaced_p50_us": statistics.median(spaced),
        "sandbox_spaced_p99_us": pct(spaced, 99),
        "added_spaced_p50_us": statistics.median(spaced) - statistics.median(inproc),
    }
    for i, name in enumerate(("woke", "confined", "ran", "done", "ready")):
        out[f"spaced_timeline_{name}_us"] = statistics.median(t[i] for t in spaced_timelines) / 1000
    out["added_p50_us"] = out["sandbox_p50_us"] - out["inprocess_p50_us"]
    for i, name in enumerate(("woke", "confined", "ran", "done", "ready")):
        out[f"timeline_{name}_us"] = statistics.median(t[i] for t in timelines) / 1000
    return out


def engines_cost(blocks: int) -> dict[str, float]:
    """Per-block ratios of a wasm3 tiny job's latency in a sandbox with the compiling engine (before and after a
    compiled job, which starts its second fork server) to a wasm3-only sandbox's, in rotating blocks."""
    from pyphase import engines

    if "wasmtime" not in engines.available():
        return {}
    module = pyphase.Module.cached(HELLO)
    sandboxes = {
        "wasm3_only": Sandbox(workers=1, engines=["wasm3"]),
        "both_unloaded": Sandbox(workers=1),
        "both_loaded": Sandbox(workers=1),
    }
    try:
        assert sandboxes["both_loaded"].run(module, INPUT, engine="wasmtime").engine == "wasmtime"
        medians: dict[str, list[float]] = {name: [] for name in sandboxes}
        names = list(sandboxes)
        for b in range(blocks):
            for name in names[b % 3 :] + names[: b % 3]:
                sb = sandboxes[name]
                medians[name].append(statistics.median(latency(lambda: sb.run(module, INPUT), 200, warmup=20)))
        unloaded = sandboxes["both_unloaded"]
        assert (unloaded.compiles, unloaded.code_loads) == (0, 0)  # so its fork server never loaded the library
    finally:
        for sb in sandboxes.values():
            sb.close()
    out = {f"engines_{name}_p50_us": statistics.median(v) for name, v in medians.items()}
    for name in ("both_unloaded", "both_loaded"):
        ratios = [a / b for a, b in zip(medians[name], medians["wasm3_only"])]
        out[f"engines_{name}_ratio"] = statistics.median(ratios)
    return out


def ready_text(ready_us: float) -> str:
    """When the worker finished setting up, relative to "go": usually before (a spare waits set up)."""
    if ready_us < 0:
        return f"worker set up {-ready_us:.0f} us before 'go' (a spare, waiting)"
    return f"worker set up {ready_us:.0f} us after 'go' (the job waited for it)"


def throughput(n: int) -> dict[str, float]:
    module = pyphase.Module.cached(HELLO)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda _: pyphase.run(module, INPUT), range(100)))
        t = time.perf_counter()
        list(pool.map(lambda _: pyphase.run(module, INPUT), range(n)))
        inproc = n / (time.perf_counter() - t)
    with Sandbox(workers=2) as sb:
        [f.result() for f in [sb.submit(module, INPUT) for _ in range(100)]]
        t = time.perf_counter()
        results = [f.result() for f in [sb.submit(module, INPUT) for _ in range(n)]]
        boxed = n / (time.perf_counter() - t)
    assert all(r.ok for r in results)
    return {"inprocess_2threads_jobs_per_s": inproc, "sandbox_2workers_jobs_per_s": boxed}


def crash(n: int) -> dict[str, float]:
    detect, replace, killed = [], [], []
    with Sandbox(workers=1) as sb:
        sb.run(HELLO, INPUT)
        slot = sb._slots[0]
        for _ in range(n):
            t0 = time.perf_counter()
            r = sb._selftest("segfault", HELLO)
            t1 = time.perf_counter()
            slot.ready(10_000)
            t2 = time.perf_counter()
            assert r.status == "crashed", r
            detect.append((t1 - t0) * 1e6)
            replace.append((t2 - t1) * 1e6)
        for _ in range(max(3, n // 10)):
            future = sb.submit(LOOP, limits=Limits(timeout_ms=30_000))
            deadline = time.monotonic() + 10
            while _cpu_ticks(pid := slot.worker_pid) <= 0 and time.monotonic() < deadline:
                time.sleep(0.001)  # until the looping job runs in the slot's current worker
            t0 = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            r = future.result(timeout=10)
            killed.append((time.perf_counter() - t0) * 1e6)
            assert r.status == "crashed", r
    return {
        "segfault_detect_p50_us": statistics.median(detect),
        "segfault_detect_p99_us": pct(detect, 99),
        "replace_p50_us": statistics.median(replace),
        "replace_p99_us": pct(replace, 99),
        "sigkill_to_result_p50_us": statistics.median(killed),
    }


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return -1
    return int(fields[11]) + int(fields[12])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n_lat, n_tp, n_crash = (300, 1000, 30) if args.quick else (2000, 5000, 200)
    figures = {"cpus": os.cpu_count(), "loadavg_1m": os.getloadavg()[0]}
    figures.update(tiny_job(n_lat))
    figures.update(engines_cost(4 if args.quick else 12))
    figures.update(throughput(n_tp))
    figures.update(crash(n_crash))
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    f = figures
    print(f"sandbox figures ({f['cpus']} CPUs, load average {f['loadavg_1m']:.2f} at start)")
    print(
        f"  tiny job (hello, cached)   in-process p50 {f['inprocess_p50_us']:7.0f} us  p99 {f['inprocess_p99_us']:7.0f} us"
    )
    print(
        f"                             sandboxed  p50 {f['sandbox_p50_us']:7.0f} us  p99 {f['sandbox_p99_us']:7.0f} us"
        f"   (x{f['sandbox_p50_us'] / f['inprocess_p50_us']:.1f} at p50, +{f['added_p50_us']:.0f} us; target +200)"
    )
    print(
        f"    breakdown after 'go' (medians): {ready_text(f['timeline_ready_us'])}, woke {f['timeline_woke_us']:.0f} us, limits set "
        f"{f['timeline_confined_us']:.0f}, job done {f['timeline_ran_us']:.0f}, parent saw it {f['timeline_done_us']:.0f}"
    )
    print(
        f"    jobs 2 ms apart (idle pool) p50 {f['sandbox_spaced_p50_us']:7.0f} us  p99 {f['sandbox_spaced_p99_us']:7.0f} us"
        f"   (+{f['added_spaced_p50_us']:.0f} us at p50; breakdown: woke {f['spaced_timeline_woke_us']:.0f},"
        f" limits {f['spaced_timeline_confined_us']:.0f}, job {f['spaced_timeline_ran_us']:.0f},"
        f" parent {f['spaced_timeline_done_us']:.0f})"
    )
    if "engines_both_loaded_ratio" in f:
        print(
            f"  engines (wasm3 job, p50)   wasm3-only sandbox {f['engines_wasm3_only_p50_us']:5.0f} us; both engines,"
            f" nothing compiled {f['engines_both_unloaded_p50_us']:5.0f} us (x{f['engines_both_unloaded_ratio']:.3f} per block);"
            f" after a compile {f['engines_both_loaded_p50_us']:5.0f} us (x{f['engines_both_loaded_ratio']:.3f})"
        )
    print(
        f"  throughput                 in-process 2 threads {f['inprocess_2threads_jobs_per_s']:7.0f} jobs/s;"
        f" sandbox 2 workers {f['sandbox_2workers_jobs_per_s']:7.0f} jobs/s"
        f"   (x{f['sandbox_2workers_jobs_per_s'] / f['inprocess_2threads_jobs_per_s']:.2f})"
    )
    print(
        f"  crashed worker             detect p50 {f['segfault_detect_p50_us']:7.0f} us  p99 {f['segfault_detect_p99_us']:7.0f} us;"
        f" replaced p50 {f['replace_p50_us']:.0f} us  p99 {f['replace_p99_us']:.0f} us;"
        f" SIGKILL -> result p50 {f['sigkill_to_result_p50_us']:.0f} us"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
