"""Relay benchmark: job latency to one node directly and through a relay, on loopback, in the same run.

    python bench/relay_bench.py [--jobs 300] [--rounds 5]

Method: two plasmd processes on 127.0.0.x, no DHT: a relay (``--relay``) and a node (``--via-relay`` that
relay; it also listens directly, which is the reference). examples/hello is cached on the node first. A direct
client (``PEERID@HOST:PORT``) and a relayed one (``PEERID@relay/HOST:PORT``) then take turns job by job
(so both see the same machine load), each job end to end with its receipt verified, over each client's
persistent connection. Per round: p50/p90 of each, and the median of the per-pair differences (relayed job
minus the direct job just before it); the figure is the median of that over the rounds (goal: at most 1 ms).
The relayed path is client → loopback forwarder in the client → relay → node's splice → node's ROUTER;
each hop copies in C without the GIL (pyphase._core.splice).

``--load N`` runs the same rounds while N other client processes keep the node busy with the same job
(directly, back to back): the node's own thread then competes with its relay splice, as under real use.

``--hops`` also measures one hop alone: a 100-byte ping-pong with an echo process, directly and through one
forwarding process of each kind (two Python threads; pyphase._core.splice; an asyncio stream copy loop),
p50 round trip of 3000 exchanges, three times.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "net"))

from net_support import NodeProc, loopback_host  # noqa: E402

from pyphase import Client  # noqa: E402
from pyphase._core import splice  # noqa: E402


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


def _nodelay(*socks: socket.socket) -> None:
    for s in socks:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _echo(listener: socket.socket) -> None:
    conn = listener.accept()[0]
    _nodelay(conn)
    while data := conn.recv(65536):
        conn.sendall(data)


def _copy(a: socket.socket, b: socket.socket) -> None:
    while data := a.recv(65536):
        b.sendall(data)


def _hop(kind: str, listener: socket.socket, port: int) -> None:
    if kind == "asyncio streams":

        async def serve() -> None:
            done = asyncio.Event()

            async def on(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
                rr, rw = await asyncio.open_connection("127.0.0.1", port)

                async def copy(a: asyncio.StreamReader, b: asyncio.StreamWriter) -> None:
                    while data := await a.read(65536):
                        b.write(data)
                        await b.drain()

                await asyncio.gather(copy(cr, rw), copy(rr, cw))
                done.set()

            listener.setblocking(False)
            async with await asyncio.start_server(on, sock=listener):
                await done.wait()

        asyncio.run(serve())
        return
    conn = listener.accept()[0]
    remote = socket.create_connection(("127.0.0.1", port))
    _nodelay(conn, remote)
    if kind == "C splice":
        splice(conn.fileno(), remote.fileno())
    else:
        threading.Thread(target=_copy, args=(remote, conn), daemon=True).start()
        _copy(conn, remote)


def hop_rtt_us(kind: str, exchanges: int = 3000) -> float:
    """p50 round trip (µs) of a 100-byte ping-pong with an echo process, through one hop of ``kind``."""
    echo = socket.create_server(("127.0.0.1", 0))
    procs = [multiprocessing.Process(target=_echo, args=(echo,))]
    port = echo.getsockname()[1]
    if kind != "direct":
        hop = socket.create_server(("127.0.0.1", 0))
        procs.append(multiprocessing.Process(target=_hop, args=(kind, hop, port)))
        port = hop.getsockname()[1]
    for p in procs:
        p.start()
    rtts = []
    with socket.create_connection(("127.0.0.1", port)) as s:
        _nodelay(s)
        for _ in range(exchanges):
            started = time.perf_counter()
            s.sendall(b"p" * 100)
            got = 0
            while got < 100:
                got += len(s.recv(100 - got))
            rtts.append((time.perf_counter() - started) * 1e6)
    for p in procs:
        p.join(5)
        p.kill()
    return statistics.median(rtts[100:])


def hops() -> None:
    multiprocessing.set_start_method("fork")
    kinds = ("direct", "Python threads", "C splice", "asyncio streams")
    for r in range(3):
        rtt = {k: hop_rtt_us(k) for k in kinds}
        print(f"hop round {r + 1}: " + ", ".join(f"{k} {v:.0f} µs" for k, v in rtt.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--load", type=int, default=0, metavar="N", help="N clients keep the node busy meanwhile")
    ap.add_argument("--load-worker", metavar="ADDRESS", help=argparse.SUPPRESS)
    ap.add_argument("--hops", action="store_true", help="also time one hop of each kind alone (see the docstring)")
    ap.add_argument("--no-sandbox", action="store_true", help="jobs in node threads: less noise from the job itself")
    args = ap.parse_args()
    if args.load_worker:
        with Client(peers=[args.load_worker]) as busy:
            while True:
                busy.submit(hello(), b"load")
    if args.hops:
        hops()
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
                load = [
                    subprocess.Popen([sys.executable, __file__, "--load-worker", node.address])
                    for _ in range(args.load)
                ]
                if load:
                    time.sleep(2)  # the load clients connected and running
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
                for p in load:
                    p.kill()
                    p.wait()
                if load:
                    print(
                        f"meanwhile {args.load} other clients kept the node busy (offers taken: {len(node.events('offer'))})"
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
