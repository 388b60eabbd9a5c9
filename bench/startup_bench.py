"""Whole ``phase`` processes as a user starts them from a shell, against bare Python started the same way.

    python bench/run.py startup                  # 15 rounds
    python bench/run.py startup --rounds 31 --json
    python bench/run.py startup --submit         # also phase submit to a plasmd on loopback

Every command is a fresh process (nothing warm but the OS's page cache), started with the installed ``phase``
executable beside this Python (else ``python -m pyphase``) and an environment like a user's: bytecode caches
used (``PYTHONDONTWRITEBYTECODE`` removed; one warm-up round writes them, as pip does at install), a fresh
``PHASE_HOME`` (identity) and ``XDG_DATA_HOME`` (the data dir where ``--engine auto`` keeps module history). The
references run in the same rounds: ``python -c pass`` (the interpreter alone, with this machine's site hooks) and
``python -c "import pyphase"``. Each round runs every command once, in an order that rotates from round to round
(so load drifts land on all of them); medians and the 10th-90th percentile range are reported, with each command's
ratio to both references and what it adds to bare Python. Outputs are checked: a command that prints the wrong
bytes, or exits non-zero, is an error, not a number.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello" / "hello.wasm"
TEXT = "Hello, World"
REVERSED = TEXT[::-1].encode()


def phase_command() -> list[str]:
    """The ``phase`` a user runs: the console script installed beside this Python, else ``python -m pyphase``."""
    exe = Path(sys.executable).parent / "phase"
    if exe.is_file() and os.access(exe, os.X_OK):
        return [str(exe)]
    found = shutil.which("phase")
    return [found] if found else [sys.executable, "-m", "pyphase"]


def start_node(data_dir: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """A plasmd on loopback (no mDNS, no DHT: nothing leaves this machine); returns it and its PEERID@HOST:PORT."""
    cmd = [sys.executable, "-m", "pyphase.daemon", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)]
    cmd += ["--workers", "1", "--no-mdns", "--no-dht", "--log-format", "json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    if not line:
        proc.kill()
        raise RuntimeError("plasmd did not start")
    return proc, line


def commands(tmp: Path, node: str | None) -> dict[str, tuple[list[str], bytes | None]]:
    """Name -> (argv, the stdout it must print; None: only its exit status 0 is checked)."""
    phase = phase_command()
    receipt = tmp / "receipt.json"
    hello = [str(HELLO), "--input", TEXT]
    table: dict[str, tuple[list[str], bytes | None]] = {
        "python -c pass": ([sys.executable, "-c", "pass"], b""),
        "python -c 'import pyphase'": ([sys.executable, "-c", "import pyphase"], b""),
        "phase run --help": ([*phase, "run", "--help"], None),
        "phase run hello": ([*phase, "run", *hello], REVERSED),
        "phase run hello --engine wasm3": ([*phase, "run", *hello, "--engine", "wasm3"], REVERSED),
        "phase run hello --receipt F": ([*phase, "run", *hello, "--receipt", str(receipt)], REVERSED),
        "phase verify F": (
            [*phase, "verify", str(receipt), "--module", str(HELLO), "--input-text", TEXT],
            None,
        ),
    }
    if node is not None:
        table["phase submit hello"] = ([*phase, "submit", *hello, "--peer", node, "--retries", "0"], REVERSED)
    return table


def run_once(argv: list[str], expected: bytes | None, env: dict[str, str]) -> float:
    start = time.perf_counter()
    out = subprocess.run(argv, env=env, capture_output=True, cwd=ROOT, timeout=120)
    elapsed = time.perf_counter() - start
    if out.returncode != 0 or (expected is not None and out.stdout != expected):
        raise SystemExit(
            f"{' '.join(argv)}: exit {out.returncode}, stdout {out.stdout[:200]!r}, stderr {out.stderr[-500:]!r}"
        )
    return elapsed


def measure(rounds: int, submit: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="phase-startup-") as name:
        tmp = Path(name)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env.update(PHASE_HOME=str(tmp / "home"), XDG_DATA_HOME=str(tmp / "data"))
        node = None
        if submit:
            node = start_node(tmp / "node", env)
        try:
            table = commands(tmp, node[1] if node else None)
            for argv, expected in table.values():  # warm-up: bytecode caches, identity, data dir, receipt file
                run_once(argv, expected, env)
            times: dict[str, list[float]] = {name: [] for name in table}
            names = list(table)
            for r in range(rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    times[name].append(run_once(*table[name], env))
        finally:
            if node is not None:
                node[0].terminate()
                node[0].wait(timeout=30)
    return {"rounds": rounds, "phase": " ".join(phase_command()), "load": os.getloadavg(), "times": times}


def summarise(data: dict[str, Any]) -> list[dict[str, Any]]:
    times = data["times"]
    bare = statistics.median(times["python -c pass"])
    imported = statistics.median(times["python -c 'import pyphase'"])
    rows = []
    for name, xs in times.items():
        xs = sorted(xs)
        med = statistics.median(xs)
        rows.append(
            {
                "command": name,
                "median_ms": med * 1e3,
                "p10_ms": xs[int(0.1 * (len(xs) - 1))] * 1e3,
                "p90_ms": xs[int(0.9 * (len(xs) - 1))] * 1e3,
                "x_python": med / bare,
                "x_import_pyphase": med / imported,
                "over_python_ms": (med - bare) * 1e3,
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="rounds of every command (default 15)")
    parser.add_argument("--quick", action="store_true", help="3 rounds (a smoke run)")
    parser.add_argument("--submit", action="store_true", help="also phase submit to a plasmd started on loopback")
    parser.add_argument("--json", action="store_true", help="one JSON document")
    args = parser.parse_args()
    data = measure(3 if args.quick else args.rounds, args.submit)
    rows = summarise(data)
    if args.json:
        print(json.dumps({"rounds": data["rounds"], "phase": data["phase"], "rows": rows}, indent=2))
        return 0
    load = ", ".join(f"{x:.2f}" for x in data["load"])
    print(f"fresh processes, {data['rounds']} rounds, medians (10th-90th percentile); phase = {data['phase']}")
    print(f"load average after the run: {load}")
    print(f"{'command':34} {'median':>9} {'p10-p90':>15} {'x python':>9} {'x import':>9} {'+ python':>9}")
    for row in rows:
        spread = f"{row['p10_ms']:.0f}-{row['p90_ms']:.0f} ms"
        print(
            f"{row['command']:34} {row['median_ms']:6.1f} ms {spread:>15} {row['x_python']:8.2f}x "
            f"{row['x_import_pyphase']:8.2f}x {row['over_python_ms']:6.1f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
