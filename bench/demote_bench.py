"""Short jobs beside spinning ones: what demoting long jobs' workers (``job_demote_after``) gives the short ones.

    python bench/demote_bench.py [--spinners 2] [--seconds 5] [--rounds 3] [--after-ms 100]

Method: a :class:`pyphase.Sandbox` with ``--spinners`` + 1 workers. The reference: examples/hello run back to
back on it for ``--seconds`` (module cached), nothing else running. Then the same while ``--spinners`` jobs spin
in the other workers until their timeout (a stranger's job that burns CPU), once with ``demote_after_ms=0``
("off": every worker at normal priority) and once with ``--after-ms`` ("on": a worker that has used that much CPU
runs at nice + 10), alternating for ``--rounds`` rounds, each with its own reference just before. Printed: the
hello jobs' count, p50 and p99 (ms, submit to result), and the p99 as a ratio to the round's reference. With
spinners at least the cores, "off" makes every short job wait for a time slice beside them; the machine's other
load is in both.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from pyphase import Limits
from pyphase.sandbox import Sandbox

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello" / "hello.wasm"
# (module (func (export "_start") (loop (br 0)))): spins until its timeout
LOOP = bytes.fromhex("0061736d0100000001040160000003020100070a01065f737461727400000a0901070003400c000b0b")


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def hello_latencies(sb: Sandbox, hello: bytes, seconds: float) -> list[float]:
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.perf_counter()
        result = sb.run(hello, b"abc")
        out.append(time.perf_counter() - t)
        assert result.stdout == b"cba", result
    return out


def measure(spinners: int, seconds: float, after_ms: int, hello: bytes) -> tuple[list[float], list[float], int]:
    """(reference latencies, latencies beside the spinners, workers demoted)."""
    with Sandbox(workers=spinners + 1, demote_after_ms=after_ms) as sb:
        hello_latencies(sb, hello, 0.5)  # warm: module cached in the fork server
        reference = hello_latencies(sb, hello, seconds)
        spinning = [sb.submit(LOOP, limits=Limits(timeout_ms=int((seconds + 3) * 1000))) for _ in range(spinners)]
        time.sleep(0.5)  # the spinners have their workers, and have run past the threshold
        beside = hello_latencies(sb, hello, seconds)
        demoted = sb.demoted
        for future in spinning:
            sb.stop(future)
            future.exception()
    return reference, beside, demoted


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spinners", type=int, default=2)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--after-ms", type=int, default=100)
    args = p.parse_args()
    hello = HELLO.read_bytes()
    print(f"{args.spinners} spinners, {os.cpu_count()} cores, {args.seconds:g} s per measure")
    print(
        f"{'round':>5} {'demote':>6} {'load':>5} {'jobs':>6} {'p50 ms':>7} {'p99 ms':>7} {'ref p99':>7} "
        f"{'p99/ref':>7} {'demoted':>7}"
    )
    for r in range(1, args.rounds + 1):
        for mode, after in (("off", 0), ("on", args.after_ms)):
            reference, beside, demoted = measure(args.spinners, args.seconds, after, hello)
            ref99, p50, p99 = (percentile(x, q) * 1e3 for x, q in ((reference, 99), (beside, 50), (beside, 99)))
            print(
                f"{r:5d} {mode:>6} {os.getloadavg()[0]:5.1f} {len(beside):6d} {p50:7.2f} {p99:7.2f} {ref99:7.2f} "
                f"{p99 / ref99:7.2f} {demoted:7d}"
            )


if __name__ == "__main__":
    main()
