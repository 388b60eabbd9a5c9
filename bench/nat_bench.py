"""NAT benchmark: job latency to a node reached directly vs through its router's port mapping, in the NAT
lab (tests/net/natlab.py: network namespaces, nftables masquerade, Debian's miniupnpd). Needs root.

    python bench/nat_bench.py [--jobs 200] [--rounds 5]

Method: two identical plasmd (2 sandboxed workers, DHT on, bootstrapped from a DHT node on the lab's WAN):
one on a WAN host (direct: its own address), one behind a router running miniupnpd, reached at the address
its UPnP/NAT-PMP mapping gave (router's WAN address, DNAT to the LAN host: one more hop, conntrack and NAT).
A client on another WAN host (one pyphase.Client per node, connected and the module cached before timing)
runs examples/hello end to end, receipt verified, sequentially; the two targets alternate in --rounds rounds
of --jobs/--rounds jobs each so both see the same machine load. Reference: the direct node, same run.
Nothing leaves the lab's namespaces.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "net"))
os.environ.setdefault("PHASE_DHT_ALLOW", "127.0.0.0/8")

from natlab import NatLab, natlab_skip_reason  # noqa: E402
from net_support import NodeProc  # noqa: E402

PORT = 7465

CLIENT = """
import json, sys, time
from pyphase import Client
module = open(sys.argv[1], "rb").read()
targets = json.loads(sys.argv[2])
jobs, rounds = int(sys.argv[3]), int(sys.argv[4])
clients = {name: Client(peers=[address]) for name, address in targets.items()}
for c in clients.values():
    for _ in range(5):
        c.submit(module, input=b"warm")
times = {name: [] for name in targets}
for _ in range(rounds):
    for name, c in clients.items():
        for _ in range(jobs // rounds):
            t = time.perf_counter()
            r = c.submit(module, input=b"Hello, NAT")
            times[name].append(time.perf_counter() - t)
            assert r.stdout == b"TAN ,olleH"
for c in clients.values():
    c.close()
print(json.dumps(times))
"""


def _when(event: dict) -> float:
    from datetime import datetime

    return datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    reason = natlab_skip_reason()
    if reason:
        print(f"nat_bench: {reason}", file=sys.stderr)
        return 2
    with NatLab() as lab:
        env = {"PHASE_DHT_ALLOW": f"{os.environ['PHASE_DHT_ALLOW']},{lab.allow}"}
        router = lab.router("r1", upnp=True)
        home, public, client = lab.host("h1", behind=router), lab.host("w1"), lab.host("c")
        where = lab.dht_bootstrap()
        tmp = lab.dir
        nodes = {}
        for name, host in (("direct", public), ("mapped", home)):
            node = NodeProc(
                tmp / name,
                host.ip,
                prefix=tuple(host.exec_prefix),
                extra=("--dht-bootstrap", where, "--no-api"),
                env=env,
            )
            node.port = PORT
            nodes[name] = node.start()
        try:
            deadline = time.monotonic() + 30
            while not any(e["what"] == "phase/1" for e in nodes["mapped"].events("port_mapping_obtained")):
                if time.monotonic() > deadline:
                    raise SystemExit(f"no port mapping: {nodes['mapped'].log_tail()}")
                time.sleep(0.2)
            external = next(e for e in nodes["mapped"].events("port_mapping_obtained") if e["what"] == "phase/1")
            time.sleep(3)  # UPnP's mapping comes after NAT-PMP's (SSDP discovery first)
            started = _when(nodes["mapped"].events("dht_listening")[0])
            mapping_s = {
                e["transport"]: _when(e) - started
                for e in reversed(nodes["mapped"].events("port_mapping_obtained"))
                if e["what"] == "phase/1"
            }
            targets = {
                "direct": nodes["direct"].address,
                "mapped": f"{nodes['mapped'].address.split('@')[0]}@{external['external']}",
            }
            out = client.run(
                [
                    sys.executable,
                    "-c",
                    CLIENT,
                    str(ROOT / "examples/hello/hello.wasm"),
                    json.dumps(targets),
                    str(args.jobs),
                    str(args.rounds),
                ],
                timeout=1800,
                check=False,
            )
            if out.returncode != 0:
                raise SystemExit(f"client failed: {out.stderr[-3000:]}")
        finally:
            for node in nodes.values():
                node.stop()
    times = json.loads(out.stdout)
    ref = pct(times["direct"], 0.5)
    print(f"{'path':<8} {'jobs':>5} {'p50 ms':>8} {'p99 ms':>8} {'ratio p50':>10}")
    for name, values in times.items():
        print(
            f"{name:<8} {len(values):>5} {pct(values, 0.5):>8.2f} {pct(values, 0.99):>8.2f} {pct(values, 0.5) / ref:>10.2f}"
        )
    print(
        "phase/1 mapped after the DHT session started: "
        + ", ".join(f"{t} {s * 1000:.0f} ms" for t, s in sorted(mapping_s.items()))
    )
    print(
        f"mapped via {targets['mapped'].split('@')[1]} ({external['transport']} first); direct {targets['direct'].split('@')[1]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
