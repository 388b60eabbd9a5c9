"""Network benchmark: remote tiny-job latency, throughput with concurrent clients, first job with module
transfer, LAN discovery time. Real ``plasmd`` processes on loopback.

    python bench/net_bench.py [--jobs 2000] [--clients 4] [--executor sandbox|thread|both]

Method: nodes are started as subprocesses (2 job workers each) on 127.0.0.x and warmed up. Latency is
``Client.submit`` of examples/hello/hello.wasm with the module already cached on the node, timed end to
end *including* receipt verification, sequentially from one client (first 100 jobs dropped). The
reference is the same job run locally in the same run (``pyphase.run`` in-process, and one isolated
``Sandbox`` worker), so the ratio shows what the network adds. Over the same jobs, the CPU each costs (from
/proc): the node's event-loop thread, the whole node (threads, fork server, workers) and the client; CPU time moves
less with the neighbours' load than wall time, and the loop's against the client's (whose code a change to the node
leaves alone) compares two builds run one after the other. Throughput: C client processes (C = 2, 4, 6 by
default), each with its own Client, submitting back to back to one node, counted over the wall time of all;
more clients than cores only adds context switches, so the best C is reported too. First job:
a module the node has never seen (hello with a unique custom section), over an established connection,
and again including the client's connection set-up. Discovery: time for ``discover()`` to find N nodes
announced on 127.0.0.1 (mDNS is bound to loopback: nothing is sent on real interfaces).

Caveats: client and nodes share this machine's 2 cores, so throughput is bounded by everyone's CPU;
timings on a shared machine vary from run to run; nothing here is a test and nothing fails on a number.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello" / "hello.wasm"
INPUT = b"Hello, World"


def start_node(data_dir: Path, host: str, *, sandbox: bool, mdns: bool = False, workers: int = 2):
    cmd = [
        sys.executable,
        "-m",
        "pyphase.daemon",
        "--listen",
        f"{host}:0",
        "--data-dir",
        str(data_dir),
        "--workers",
        str(workers),
        "--log-format",
        "json",
    ]
    cmd += ["--mdns-interfaces", "127.0.0.1"] if mdns else ["--no-mdns"]
    cmd.append("--no-dht")  # the DHT's default routers are public: a benchmark stays on this machine
    if not sandbox:
        cmd.append("--no-sandbox")
    env = dict(os.environ, PHASE_MDNS_INTERFACES="127.0.0.1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    line = proc.stdout.readline().decode().strip()
    if not line:
        raise RuntimeError("plasmd did not start")
    return proc, line


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def _cpu_s(pid: int, task: int | None = None) -> float:
    """CPU seconds (user + system) of a process with its reaped children, or of one of its threads alone."""
    path = f"/proc/{pid}/task/{task}/stat" if task is not None else f"/proc/{pid}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12]) + (0 if task is not None else int(fields[13]) + int(fields[14]))
    return ticks / os.sysconf("SC_CLK_TCK")


def _node_cpu_s(pid: int) -> float:
    """The node's CPU seconds: its own threads and its children (the fork servers, with the workers they reaped),
    whichever of its threads started them."""
    children = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            children += [int(c) for c in f.read().split()]
    return _cpu_s(pid) + sum(_cpu_s(c) for c in children)


def latency(address: str, module: bytes, n: int, node_pid: int) -> tuple[list[float], dict[str, float]]:
    """End-to-end times of ``n`` sequential jobs (after 100 unmeasured), and the CPU µs per job they cost: the
    node's event-loop thread (the per-job path in Python, which bounds its throughput), the whole node with its
    fork server and workers, and this client."""
    from pyphase import Client

    def cpu() -> tuple[float, float, float]:
        return _cpu_s(node_pid, node_pid), _node_cpu_s(node_pid), time.process_time()

    with Client(peers=[address]) as client:
        for _ in range(100):
            client.submit(module, input=INPUT)
        out = []
        before = cpu()
        for _ in range(n):
            t = time.perf_counter()
            r = client.submit(module, input=INPUT)
            out.append(time.perf_counter() - t)
            assert r.stdout == b"dlroW ,olleH"
        after = cpu()
    per_job = {k: (b - a) / max(n, 1) * 1e6 for k, a, b in zip(("loop", "node", "client"), before, after)}
    return sorted(out), per_job


def local_reference(module: bytes, n: int) -> tuple[float, float]:
    import pyphase

    m = pyphase.Module.cached(module)
    runs = []
    for _ in range(n):
        t = time.perf_counter()
        pyphase.run(m, INPUT)
        runs.append(time.perf_counter() - t)
    sandboxed = []
    with pyphase.Sandbox(workers=1) as sb:
        for _ in range(min(n, 500)):
            t = time.perf_counter()
            sb.run(module, INPUT)
            sandboxed.append(time.perf_counter() - t)
    return statistics.median(runs), statistics.median(sandboxed)


def _throughput_worker(address: str, module: bytes, jobs: int, start: mp.Event, q: mp.Queue) -> None:
    from pyphase import Client

    with Client(peers=[address]) as client:
        client.submit(module, input=INPUT)
        start.wait()
        t = time.perf_counter()
        for _ in range(jobs):
            client.submit(module, input=INPUT)
        q.put((t, time.perf_counter()))


def throughput(address: str, module: bytes, clients: int, jobs: int) -> float:
    ctx = mp.get_context("spawn")
    start, q = ctx.Event(), ctx.Queue()
    per = jobs // clients
    procs = [ctx.Process(target=_throughput_worker, args=(address, module, per, start, q)) for _ in range(clients)]
    for p in procs:
        p.start()
    time.sleep(2.0)  # let every client connect and warm up (not a synchronisation: the Event starts them)
    start.set()
    spans = [q.get(timeout=300) for _ in procs]
    for p in procs:
        p.join()
    return per * clients / (max(e for _, e in spans) - min(s for s, _ in spans))


def unique_module(base: bytes, i: int) -> bytes:
    name = b"bench"
    payload = bytes([len(name)]) + name + i.to_bytes(8, "little")
    return base + b"\x00" + bytes([len(payload)]) + payload  # a custom section: same code, new hash


def first_job(address: str, module: bytes, n: int = 30) -> tuple[float, float]:
    from pyphase import Client

    with Client(peers=[address]) as client:
        client.submit(module, input=INPUT)
        warm = []
        for i in range(n):
            m = unique_module(module, time.time_ns() + i)
            t = time.perf_counter()
            client.submit(m, input=INPUT)
            warm.append(time.perf_counter() - t)
    cold = []
    for i in range(10):
        m = unique_module(module, time.time_ns() + i)
        t = time.perf_counter()
        with Client(peers=[address]) as c:
            c.submit(m, input=INPUT)
        cold.append(time.perf_counter() - t)
    return statistics.median(warm), statistics.median(cold)


def discovery_time(tmp: Path, nodes: int = 3, rounds: int = 5) -> tuple[float, float]:
    from pyphase.net.discovery import discover

    procs = [start_node(tmp / f"mdns{i}", f"127.0.0.{20 + i}", sandbox=False, mdns=True) for i in range(nodes)]
    try:
        time.sleep(2.5)  # the nodes probe their names (about 1 s) before they answer
        first, all_ = [], []
        for _ in range(rounds):
            t = time.monotonic()
            found = discover(3.0, interfaces="127.0.0.1", want=nodes)
            all_.append(time.monotonic() - t)
            first.append(found[0].found_after_s if found else float("nan"))
            assert len(found) == nodes, found
        return statistics.median(first), statistics.median(all_)
    finally:
        for p, _ in procs:
            p.terminate()
            p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2000, help="latency samples and throughput jobs")
    ap.add_argument("--clients", default="2,4,6", help="numbers of concurrent client processes to try (comma list)")
    ap.add_argument("--executor", choices=("sandbox", "thread", "both"), default="both")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 200 jobs, 2 clients, threads only")
    args = ap.parse_args()
    if args.quick:
        args.jobs, args.clients, args.executor = 200, "2", "thread"
    module = HELLO.read_bytes()
    local_run, local_sandbox = local_reference(module, 2000)
    print(
        f"reference, same job locally: pyphase.run p50 {local_run * 1e3:.3f} ms; "
        f"one Sandbox worker p50 {local_sandbox * 1e3:.3f} ms"
    )
    kinds = ["sandbox", "thread"] if args.executor == "both" else [args.executor]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for k, kind in enumerate(kinds):
            proc, address = start_node(tmp / kind, f"127.0.0.{10 + k}", sandbox=kind == "sandbox")
            try:
                lat, cpu = latency(address, module, args.jobs, proc.pid)
                p50, p99 = statistics.median(lat), percentile(lat, 0.99)
                ref = local_sandbox if kind == "sandbox" else local_run
                print(
                    f"[{kind} node] remote tiny job, cached, receipt verified: p50 {p50 * 1e3:.2f} ms, "
                    f"p99 {p99 * 1e3:.2f} ms (goals 2 / 10 ms; {p50 / ref:.1f}x the local {kind} run)"
                )
                print(
                    f"[{kind} node] CPU per job in those: node's event loop {cpu['loop']:.0f} us, whole node "
                    f"{cpu['node']:.0f} us (its threads, fork server, workers), client {cpu['client']:.0f} us; "
                    f"loop / client {cpu['loop'] / cpu['client']:.2f}"
                )
                rates = {c: throughput(address, module, c, args.jobs) for c in map(int, args.clients.split(","))}
                best = max(rates, key=rates.__getitem__)
                each = ", ".join(f"{c} clients {r:,.0f}" for c, r in rates.items())
                print(
                    f"[{kind} node] throughput, client processes -> 1 node (2 workers), 2 cores shared: "
                    f"{each} jobs/s; best {rates[best]:,.0f} jobs/s = {rates[best] / 1000:.2f}x the 1,000 goal"
                )
                warm, cold = first_job(address, module)
                print(
                    f"[{kind} node] first job of a new module (transfer + validation + run): {warm * 1e3:.2f} ms "
                    f"over an open connection, {cold * 1e3:.2f} ms with a new client "
                    f"({warm / p50:.1f}x / {cold / p50:.1f}x a cached job)"
                )
            finally:
                proc.terminate()
                proc.wait()
        first, all_ = discovery_time(tmp)
        print(
            f"LAN discovery (mDNS on 127.0.0.1, 3 nodes): first node after {first * 1e3:.0f} ms, "
            f"all 3 after {all_ * 1e3:.0f} ms (goal 1 s)"
        )


if __name__ == "__main__":
    main()
