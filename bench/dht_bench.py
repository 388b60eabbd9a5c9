"""DHT benchmark: a private Mainline DHT of N libtorrent sessions on loopback (one 127.x.y.1 per node, every
libtorrent default kept), and what Phase does on it.

    python bench/dht_bench.py [--nodes 100] [--announced 20] [--lookups 20]

Method: N sessions are made in this process (127.<b>.<i>.1, DHT only) and primed with 8 random others each
(what a big network's bootstrap reply gives). Then:
* findable: a fresh session bootstraps from two of them, puts a node record (BEP 44) and another session
  reads it back; timed from creating the session to the verified read.
* resolve: a read-only client session resolves a peer id (get + PyNaCl verification), p50/p90 over
  --lookups ids. Reference (same run): one record query round trip over loopback UDP to a responder,
  the cheapest way a client can learn a record at all.
* rendezvous: --announced nodes announce and answer the record query; a client gets them all with
  find_nodes (get_peers + record queries), timed until all are found.
* memory: resident memory of an idle plasmd with the DHT vs --no-dht, 5 s after start (ratio printed).
Nothing here reaches beyond 127/8 (PHASE_DHT_ALLOW is set as in the test suite).
"""

from __future__ import annotations

import argparse
import os
import random
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ["PHASE_DHT_ALLOW"] = "127.0.0.0/8"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "net"))

from dht_support import dht_host, endpoints, prime  # noqa: E402

from pyphase.identity import Identity  # noqa: E402
from pyphase.net import dht, records  # noqa: E402


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def plasmd_rss(extra: list[str], boot: str) -> int:
    with tempfile.TemporaryDirectory() as d:
        host = dht_host()
        cmd = [
            sys.executable,
            "-m",
            "pyphase.daemon",
            "--listen",
            f"{host}:0",
            "--data-dir",
            d,
            "--no-mdns",
            "--workers",
            "1",
            "--no-sandbox",
            *extra,
        ]
        if "--no-dht" not in extra:
            cmd += ["--dht-bootstrap", boot]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdout is not None
        proc.stdout.readline()
        time.sleep(5)
        rss = rss_kib(proc.pid)
        proc.terminate()
        proc.wait()
        return rss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--announced", type=int, default=20)
    ap.add_argument("--lookups", type=int, default=20)
    args = ap.parse_args()
    t = time.monotonic()
    nodes = [dht.Dht(f"{dht_host()}:0", []) for _ in range(args.nodes)]
    prime(nodes)
    print(f"{args.nodes} DHT sessions made and primed in {time.monotonic() - t:.1f} s")
    boot = endpoints(nodes)
    try:
        # findable
        ident = Identity.generate()
        t = time.monotonic()
        fresh = dht.Dht(f"{dht_host()}:0", boot[:2])
        fresh.wait_bootstrapped(10)
        value = records.encode_value(["127.0.0.1:7465"], ["wasm3"], {"arch": "x86_64"})
        seq, stored = fresh.put_record(ident, value)
        nodes[-1].get_record(ident.public_key, settle=0)
        findable = time.monotonic() - t
        print(f"fresh node findable (bootstrap -> record stored on {stored} nodes -> read by another): {ms(findable)}")
        fresh.close()

        # resolve, and the reference
        ids = [Identity.generate() for _ in range(args.lookups)]
        for i, ident in enumerate(ids):
            nodes[i % len(nodes)].put_record(ident, records.encode_value([f"127.0.0.1:{7000 + i}"], ["wasm3"], {}))
        client = dht.Dht(f"{dht_host()}:0", boot[10:12], read_only=True)
        client.wait_bootstrapped(10)
        times = []
        for ident in ids:
            t = time.monotonic()
            client.get_record(ident.public_key, settle=0)
            times.append(time.monotonic() - t)
        responder = dht.RecordResponder(dht_host(), 0)
        v = records.encode_value(["127.0.0.1:1"], ["wasm3"], {})
        responder.set_record(dht.record_answer(ids[0].public_key, v, 0, records.sign_value(ids[0], v, 0)))
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                if select.select([responder.sock], [], [], 0.05)[0]:
                    responder.on_readable()

        threading.Thread(target=serve, daemon=True).start()
        endpoint = responder.sock.getsockname()
        ref = []
        for _ in range(args.lookups):
            t = time.monotonic()
            dht.query_records([endpoint])
            ref.append(time.monotonic() - t)
        p50, ref50 = statistics.median(times), statistics.median(ref)
        print(
            f"resolve a peer id (get + verify): p50 {ms(p50)}, p90 {ms(sorted(times)[int(len(times) * 0.9) - 1])}"
            f"; reference UDP record query p50 {ms(ref50)}; ratio {p50 / ref50:.1f}x"
        )

        # rendezvous
        responders = []
        for i in range(args.announced):
            r = dht.RecordResponder(nodes[i].listen_host, 0)
            ident = Identity.generate()
            port = r.sock.getsockname()[1]
            v = records.encode_value([f"{nodes[i].listen_host}:{port}"], ["wasm3"], {})
            r.set_record(dht.record_answer(ident.public_key, v, 0, records.sign_value(ident, v, 0)))
            responders.append(r)
            nodes[i].announce(dht.rendezvous_hash(), port)

        def serve_all() -> None:
            while not stop.is_set():
                ready = select.select([r.sock for r in responders], [], [], 0.05)[0]
                for r in responders:
                    if r.sock in ready:
                        r.on_readable()

        threading.Thread(target=serve_all, daemon=True).start()
        time.sleep(3)  # announces post no completion: give their traversals time
        t = time.monotonic()
        found = dht.find_nodes(client, timeout=15, want=args.announced)
        print(
            f"rendezvous: {len(found)} of {args.announced} announced nodes found and proven in "
            f"{ms(time.monotonic() - t)}"
        )
        stop.set()
        client.close()

        # memory
        with_dht = plasmd_rss([], f"{boot[0][0]}:{boot[0][1]}")
        without = plasmd_rss(["--no-dht"], "")
        print(
            f"idle plasmd RSS: {without} KiB without the DHT, {with_dht} KiB with it "
            f"(+{with_dht - without} KiB, ratio {with_dht / without:.2f})"
        )
    finally:
        for n in nodes:
            n.close()


if __name__ == "__main__":
    random.seed(1)
    main()
