"""What streamed output costs: the tiny job (hello) with and without an output callback, in process, in a sandbox
worker and through a node over loopback (tests/net/test_streaming.py shows that the output of a slow job arrives
while it runs).

    python bench/run.py stream            alternating blocks, a few thousand jobs (a minute or two)
    python bench/run.py stream --quick    smoke run
    python bench/run.py stream --json     one JSON document

Every figure is a ratio against the same job without streaming, measured in the same run in alternating blocks
(so load from other processes falls on both alike). Timings never fail the run; wrong outputs do.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import pyphase
from pyphase import Client, Sandbox

ROOT = Path(__file__).resolve().parent.parent
HELLO = (ROOT / "examples" / "hello" / "hello.wasm").read_bytes()
INPUT, OUTPUT = b"Hello, World", b"dlroW ,olleH"


def _p50_us(fn: Callable[[], Any], n: int) -> float:
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1e6)
    return statistics.median(samples)


def _pair(plain: Callable[[], Any], streamed: Callable[[], Any], blocks: int, per_block: int) -> dict[str, float]:
    """p50 of each, the medians of alternating blocks, and streamed / plain."""
    a, b = [], []
    for _ in range(blocks):
        a.append(_p50_us(plain, per_block))
        b.append(_p50_us(streamed, per_block))
    pa, pb = statistics.median(a), statistics.median(b)
    return {"plain_p50_us": pa, "streamed_p50_us": pb, "ratio": pb / pa}


def _check(result: Any) -> None:
    if result.stdout != OUTPUT:
        raise SystemExit(f"hello printed {result.stdout!r}")


def bench(quick: bool) -> dict[str, Any]:
    blocks, per = (3, 200) if quick else (5, 2000)
    module = pyphase.Module(HELLO)
    seen: list[bytes] = []

    def sink(stream: int, data: bytes) -> None:
        seen.append(data)

    out: dict[str, Any] = {"blocks": blocks, "jobs_per_block": per}
    _check(pyphase.run(module, INPUT, on_output=sink))
    out["in_process"] = _pair(
        lambda: pyphase.run(module, INPUT), lambda: pyphase.run(module, INPUT, on_output=sink), blocks, per
    )
    with Sandbox(workers=1) as box:
        _check(box.run(module, INPUT, on_output=sink))
        n = max(50, per // 10)
        out["sandbox"] = _pair(
            lambda: box.run(module, INPUT), lambda: box.run(module, INPUT, on_output=sink), blocks, n
        )
    with tempfile.TemporaryDirectory() as tmp:
        node = subprocess.Popen(
            [sys.executable, "-m", "pyphase.daemon", "--listen", "127.0.0.1:0", "--data-dir", tmp, "--no-mdns"]
            + ["--no-dht", "--workers", "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert node.stdout is not None
            address = node.stdout.readline().decode().strip()
            with Client(peers=[address]) as client:
                _check(client.submit(HELLO, INPUT, on_output=sink))
                n = max(30, per // 20)
                out["remote"] = _pair(
                    lambda: client.submit(HELLO, INPUT), lambda: client.submit(HELLO, INPUT, on_output=sink), blocks, n
                )
        finally:
            node.terminate()
            node.wait(timeout=30)
    out["environment"] = {"loadavg": os.getloadavg()[0], "cpus": os.cpu_count()}
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    doc = bench(args.quick)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"hello, p50 of {doc['blocks']} alternating blocks (load average {doc['environment']['loadavg']:.1f})")
    for where in ("in_process", "sandbox", "remote"):
        r = doc[where]
        print(
            f"  {where:<11} no callback {r['plain_p50_us']:9.1f} us   on_output {r['streamed_p50_us']:9.1f} us"
            f"   ratio {r['ratio']:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
