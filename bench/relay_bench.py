"""Relay benchmark: job latency to one node directly and through a relay, on loopback, in the same run.

    python bench/relay_bench.py [--jobs 300] [--rounds 5]

Method: two plasmd processes on 127.0.0.x, no DHT: a relay (``--relay``) and a node (``--via-relay`` that
relay; it also listens directly, which is the reference). examples/hello is cached on the node first. A direct
client (``PEERID@HOST:PORT``) and a relayed one (``PEERID@relay/HOST:PORT``) then take turns job by job
(so both see the same machine load), each job end to end with its receipt verified, over each client's
persistent connection. Per round: p50/p90 of each, and the median of the per-pair differences (relayed job
minus the direct job just before it); the figure is the median of that over the rounds (goal: at most 1 ms).
The relayed path is client → loopback forwarder in the client → relay → node's splice → node's ROUTER.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "net"))

from net_support import NodeProc, loopback_host  # noqa: E402

from pyphase import Client  # noqa: E402


def hello() -> bytes:
    wasm = ROOT / "examples" / "hello" / "hello.wasm"
    if not wasm.exists():
        subprocess.run(["make", "-C", str(wasm.parent)], check=True, capture_output=True)
    return wasm.read_bytes()


def round_ms(client: Client, module: bytes, jobs: int) -> list[float]:
    out = []
    for _ in range(jobs):
        started = time.perf_counter()
        result = client.submit(module, b"Hello, relay")
        out.append((time.perf_counter() - started) * 1000)
        assert result.status == "ok"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-sandbox", action="store_true", help="jobs in node threads: less noise from the job itself")
    args = ap.parse_args()
    module = hello()
    with tempfile.TemporaryDirectory() as d:
        relay_host = loopback_host()
        relay = NodeProc(
            Path(d) / "relay", relay_host, workers=1, extra=("--relay", "--relay-listen", f"{relay_host}:0")
        )
        relay.start()
        relay_port = int(relay.wait_event("relay_listening")["address"].rsplit(":", 1)[1])
        node = NodeProc(
            Path(d) / "node",
            loopback_host(),
            workers=2,
            sandbox=not args.no_sandbox,
            extra=("--via-relay", f"{relay_host}:{relay_port}"),
        )
        node.start()
        node.wait_event("relay_reserved")
        peer_id = node.address.split("@")[0]
        try:
            with (
                Client(peers=[node.address]) as direct,
                Client(peers=[f"{peer_id}@relay/{relay_host}:{relay_port}"]) as relayed,
            ):
                for c in (direct, relayed):
                    round_ms(c, module, 20)  # warm: module cached, connections up
                overheads = []
                for r in range(args.rounds):
                    a, b = [], []
                    for _ in range(args.jobs):
                        a += round_ms(direct, module, 1)
                        b += round_ms(relayed, module, 1)
                    diff = statistics.median(y - x for x, y in zip(a, b))
                    overheads.append(diff)
                    a, b = sorted(a), sorted(b)
                    p = [statistics.median(a), a[int(len(a) * 0.9)], statistics.median(b), b[int(len(b) * 0.9)]]
                    print(
                        f"round {r + 1}: direct p50 {p[0]:.3f} ms p90 {p[1]:.3f} ms | "
                        f"relayed p50 {p[2]:.3f} ms p90 {p[3]:.3f} ms | paired difference p50 {diff:+.3f} ms"
                    )
            circuits = relay.events("circuit_opened")
            print(
                f"relay overhead, median over {args.rounds} rounds of the paired p50 difference: {statistics.median(overheads):+.3f} ms"
            )
            print(f"circuits opened at the relay: {len(circuits)} (the relayed client keeps one)")
        finally:
            node.stop()
            relay.stop()


if __name__ == "__main__":
    main()
