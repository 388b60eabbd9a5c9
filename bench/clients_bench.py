"""Clients benchmark: the PHP SDK against the Python client, the HTTP API against phase/1, /metrics scrapes.

    python bench/clients_bench.py [--jobs 1000] [--rounds 5] [--history 10000]

Method: one ``plasmd`` (sandboxed, 2 workers) on loopback, warmed up; examples/hello/hello.wasm, cached
on the node, input "Hello, World". Every latency is one job end to end from one client, sequential,
including receipt verification. PHP and Python alternate in ``--rounds`` rounds of jobs/rounds each
against the same node in the same run, so drift on this shared machine hits both alike; the ratio is
PHP / Python. HTTP: ``POST /v1/jobs`` with ``wait: true`` over one keep-alive connection (the node
runs it through its own phase/1 client, then ``GET /v1/jobs/{id}/receipt`` is *not* fetched: the
figure is the API's submit-to-answer time), against the Python client over phase/1, alternating too.
Metrics: ``GET /metrics`` is timed 200 times with the few thousand jobs of the runs above in the
history, then again once jobs have been run until it holds ``--history``. Nothing here is a test; nothing fails on a number.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello" / "hello.wasm"
sys.path.insert(0, str(ROOT))


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def summary(name: str, us: list[float]) -> dict[str, Any]:
    return {
        "name": name,
        "n": len(us),
        "p50_us": pct(us, 0.5),
        "p99_us": pct(us, 0.99),
        "mean_us": statistics.fmean(us),
    }


def start_node(data_dir: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pyphase.daemon",
            "--listen",
            "127.0.0.90:0",
            "--data-dir",
            str(data_dir),
            "--workers",
            "2",
            "--no-mdns",
            "--no-dht",  # loopback only: never the public DHT's routers
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    address = proc.stdout.readline().decode().strip()
    return proc, address, (data_dir / "api").read_text().strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000, help="jobs per client kind (default 1000)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--history", type=int, default=10_000, help="jobs in history before timing /metrics")
    args = parser.parse_args()
    from pyphase import Client

    module = HELLO.read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        proc, address, api = start_node(Path(tmp) / "node")
        try:
            client = Client(peers=[address])
            for _ in range(100):
                client.submit(module, b"Hello, World")
            subprocess.run(
                ["php", str(ROOT / "bench" / "php_latency.php"), address, "50"], check=True, capture_output=True
            )
            per_round = max(1, args.jobs // args.rounds)
            py: list[float] = []
            php: list[float] = []
            for _ in range(args.rounds):
                for _ in range(per_round):
                    t0 = time.perf_counter_ns()
                    client.submit(module, b"Hello, World")
                    py.append((time.perf_counter_ns() - t0) / 1000)
                out = subprocess.run(
                    ["php", str(ROOT / "bench" / "php_latency.php"), address, str(per_round)],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                php.extend(float(x) for x in out.split())
            host, port = api.removeprefix("http://").rsplit(":", 1)
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            body = json.dumps({"module": base64.b64encode(module).decode(), "input_text": "Hello, World", "wait": True})
            http_us: list[float] = []
            py2: list[float] = []
            for _ in range(args.rounds):
                for _ in range(per_round):
                    t0 = time.perf_counter_ns()
                    conn.request("POST", "/v1/jobs", body, {"Content-Type": "application/json"})
                    answer = json.loads(conn.getresponse().read())
                    http_us.append((time.perf_counter_ns() - t0) / 1000)
                    assert answer["state"] == "done" and answer["stdout_text"] == "dlroW ,olleH", answer
                for _ in range(per_round):
                    t0 = time.perf_counter_ns()
                    client.submit(module, b"Hello, World")
                    py2.append((time.perf_counter_ns() - t0) / 1000)

            def history() -> int:
                conn.request("GET", "/metrics")
                text = conn.getresponse().read().decode()
                return int(
                    float(next(line.split()[1] for line in text.splitlines() if line.startswith("phase_history_jobs")))
                )

            def scrapes() -> tuple[list[float], int]:
                times, size = [], 0
                for _ in range(200):
                    t0 = time.perf_counter_ns()
                    conn.request("GET", "/metrics")
                    size = len(conn.getresponse().read())
                    times.append((time.perf_counter_ns() - t0) / 1000)
                return times, size

            early = history()
            scrape_early, _ = scrapes()
            while (have := history()) < args.history:
                for _ in range(min(500, args.history - have)):
                    client.submit(module, b"Hello, World")
            scrape, size = scrapes()
            client.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    rows = [
        summary("phase/1, Python client", py),
        summary("phase/1, PHP client", php),
        summary("HTTP API (POST /v1/jobs wait)", http_us),
        summary("phase/1, Python (alternating with HTTP)", py2),
        summary(f"GET /metrics, {early} jobs in history", scrape_early),
        summary(f"GET /metrics, {args.history} jobs in history ({size} bytes)", scrape),
    ]
    for r in rows:
        print(f"{r['name']:58} n={r['n']:5}  p50 {r['p50_us'] / 1000:7.3f} ms  p99 {r['p99_us'] / 1000:7.3f} ms")
    print(
        f"PHP / Python p50: {rows[1]['p50_us'] / rows[0]['p50_us']:.2f}   p99: {rows[1]['p99_us'] / rows[0]['p99_us']:.2f}"
    )
    print(
        f"HTTP / phase/1 p50: {rows[2]['p50_us'] / rows[3]['p50_us']:.2f}   p99: {rows[2]['p99_us'] / rows[3]['p99_us']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
