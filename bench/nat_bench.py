"""NAT benchmark: job latency to a node reached directly, through its router's port mapping and through a
relay, in the NAT lab (tests/net/natlab.py: network namespaces, nftables masquerade, Debian's miniupnpd),
with the ratio to the direct path measured in the same run. Needs root.

    python bench/nat_bench.py [--jobs 300] [--rounds 5] [--paths direct,mapped,relayed]

Method: identical plasmd (2 sandboxed workers): ``direct`` on a WAN host, reached at its own address (the
reference); ``mapped`` behind a router running miniupnpd (DHT on, bootstrapped from a DHT node on the lab's
WAN), reached at the address its UPnP/NAT-PMP mapping gave (router's WAN address, DNAT to the LAN host);
``relayed`` behind a router without UPnP, reached only through a relay (``plasmd --relay``) on another WAN
host: client → relay → the node's own outbound connection through its NAT (``PEERID@relay/HOST:PORT``).
A client on a third WAN host (one pyphase.Client per path, connected and the module cached before timing)
runs examples/hello end to end, receipt verified; the paths take turns job by job, so each sees the same
machine load. Per round, the median of the per-pair difference (a path's job minus the direct job just
before it); the figure is the median of that over the rounds. Nothing leaves the lab's namespaces.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "net"))
os.environ.setdefault("PHASE_DHT_ALLOW", "127.0.0.0/8")

from natlab import NatLab, natlab_skip_reason  # noqa: E402
from net_support import NodeProc  # noqa: E402

PORT = 7465
RELAY_PORT = 7468

CLIENT = """
import json, sys, time
from pyphase import Client
module = open(sys.argv[1], "rb").read()
targets = json.loads(sys.argv[2])
jobs = int(sys.argv[3])
clients = {name: Client(peers=[address]) for name, address in targets.items()}
for c in clients.values():
    for _ in range(5):
        c.submit(module, input=b"warm")
times = {name: [] for name in targets}
for _ in range(jobs):
    for name, c in clients.items():
        t = time.perf_counter()
        r = c.submit(module, input=b"Hello, NAT")
        times[name].append(time.perf_counter() - t)
        assert r.stdout == b"TAN ,olleH" and r.peer == targets[name].split("@")[0]
for c in clients.values():
    c.close()
print(json.dumps(times))
"""
PATHS = ("direct", "mapped", "relayed")


def _when(event: dict) -> float:
    from datetime import datetime

    return datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=300, help="jobs per path (default 300)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--paths", default=",".join(PATHS), help="which of direct,mapped,relayed (direct always)")
    args = ap.parse_args()
    paths = ["direct", *(p for p in PATHS[1:] if p in args.paths.split(","))]
    reason = natlab_skip_reason()
    if reason:
        print(f"nat_bench: {reason}", file=sys.stderr)
        return 2
    with NatLab() as lab:
        env = {"PHASE_DHT_ALLOW": f"{os.environ['PHASE_DHT_ALLOW']},{lab.allow}"}
        public, client = lab.host("w1"), lab.host("c")
        tmp = lab.dir
        nodes: dict[str, NodeProc] = {}
        mapping_s: dict[str, float] = {}
        external: dict = {}

        def start(name: str, host, *extra: str) -> NodeProc:
            node = NodeProc(tmp / name, host.ip, prefix=tuple(host.exec_prefix), extra=(*extra, "--no-api"), env=env)
            node.port = PORT
            nodes[name] = node
            return node.start()

        try:
            if "mapped" in paths:
                where = lab.dht_bootstrap()
                start("direct", public, "--dht-bootstrap", where)
                home = lab.host("h1", behind=lab.router("r1", upnp=True))
                mapped = start("mapped", home, "--dht-bootstrap", where)
                deadline = time.monotonic() + 30
                while not any(e["what"] == "phase/1" for e in mapped.events("port_mapping_obtained")):
                    if time.monotonic() > deadline:
                        raise SystemExit(f"no port mapping: {mapped.log_tail()}")
                    time.sleep(0.2)
                external = next(e for e in mapped.events("port_mapping_obtained") if e["what"] == "phase/1")
                time.sleep(3)  # UPnP's mapping comes after NAT-PMP's (SSDP discovery first)
                started = _when(mapped.events("dht_listening")[0])
                mapping_s = {
                    e["transport"]: _when(e) - started
                    for e in reversed(mapped.events("port_mapping_obtained"))
                    if e["what"] == "phase/1"
                }
            else:
                start("direct", public)
            targets = {"direct": nodes["direct"].address}
            if "mapped" in paths:
                targets["mapped"] = f"{nodes['mapped'].address.split('@')[0]}@{external['external']}"
            if "relayed" in paths:
                relay_host = lab.host("relay")
                relay = start("relay", relay_host, "--relay", "--relay-listen", f"{relay_host.ip}:{RELAY_PORT}")
                relay.wait_event("relay_listening")
                behind = lab.host("h2", behind=lab.router("r2"))  # no UPnP: unreachable but through the relay
                relayed = start("relayed", behind, "--via-relay", f"{relay_host.ip}:{RELAY_PORT}")
                relayed.wait_event("relay_reserved", timeout=30)
                targets["relayed"] = f"{relayed.address.split('@')[0]}@relay/{relay_host.ip}:{RELAY_PORT}"
            out = client.run(
                [sys.executable, "-c", CLIENT, str(ROOT / "examples/hello/hello.wasm"), json.dumps(targets)]
                + [str(args.jobs)],
                timeout=3600,
                check=False,
            )
            if out.returncode != 0:
                raise SystemExit(f"client failed: {out.stderr[-3000:]}")
        finally:
            for node in nodes.values():
                node.stop()
    times = json.loads(out.stdout)
    ref = pct(times["direct"], 0.5)
    per_round = max(1, args.jobs // args.rounds)
    print(f"{'path':<8} {'jobs':>5} {'p50 ms':>8} {'p99 ms':>8} {'ratio p50':>10} {'paired diff p50 (rounds)':>26}")
    for name, values in times.items():
        diffs = [
            statistics.median(
                (y - x) * 1000 for x, y in zip(times["direct"][i : i + per_round], values[i : i + per_round])
            )
            for i in range(0, len(values), per_round)
        ]
        spread = (
            f"{statistics.median(diffs):+.3f} ms ({min(diffs):+.2f} … {max(diffs):+.2f})" if name != "direct" else ""
        )
        print(
            f"{name:<8} {len(values):>5} {pct(values, 0.5):>8.2f} {pct(values, 0.99):>8.2f} "
            f"{pct(values, 0.5) / ref:>10.2f} {spread:>26}"
        )
    if mapping_s:
        print(
            "phase/1 mapped after the DHT session started: "
            + ", ".join(f"{t} {s * 1000:.0f} ms" for t, s in sorted(mapping_s.items()))
        )
    for name, address in targets.items():
        print(f"{name}: {address.split('@', 1)[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
