"""Every benchmark of Phase, from one entry point. Each prints ratios against a reference measured in the same run.

    python bench/run.py core [--quick] [--json]      pyphase.run vs cbench (the C core alone) vs wasmtime-py
    python bench/run.py sandbox [--quick] [--json]   isolated workers vs in-process runs
    python bench/run.py net [--jobs N] ...           remote jobs over loopback: latency, throughput, discovery
    python bench/run.py fs [--quick] [--json]        reading files through preopens vs cat and wasmtime-py
    python bench/run.py tree [--quick] [--json]      a 100 MB input tree: local, remote first time and cached, vs cat
    python bench/run.py cbench [--quick] ...         native gcc -O2 vs the C core (cbench/run.sh)
    python bench/run.py deep [--reps N] [--json]     a 3,000-case C switch (deep nesting): cold start vs wasmtime-py
    python bench/run.py stream [--quick] [--json]    the tiny job with and without streamed output (local, remote)
    python bench/run.py zstd [--rounds N] [--json]   zstd -3 of 5.8 MB: native vs phase run --engine auto (minutes)
    python bench/run.py startup [--rounds N] [--submit] [--json]
                                                     fresh phase run/verify (and submit) processes vs python -c pass
    python bench/run.py all --quick                  each of the above in turn, small sizes
    python bench/run.py install [--arm]              wheel sizes, install from wheel vs sdist, idle plasmd memory,
                                                     a job to an aarch64 node (needs tools/build-wheels.sh first;
                                                     not part of "all")
    python bench/run.py abuse [--seconds N]          honest latency while a node is attacked six ways
    python bench/run.py demote [--rounds N]          short jobs beside spinning ones, long jobs' workers demoted or not
    python bench/run.py dht ...                      a private DHT on loopback: findable, resolve, rendezvous
    python bench/run.py sim [--nodes 1000]           the DHT at scale with churn (minutes of both cores)
    python bench/run.py nat [--jobs N] [--paths ...] direct vs port-mapped vs relayed jobs in the NAT lab (root)
    python bench/run.py relay [--jobs N]             direct vs relayed jobs on loopback
    python bench/run.py clients                      the Python and PHP clients side by side
    python bench/run.py compile [--json]             tiny jobs while a big module compiles in the sandbox; a restart
                                                     that loads its code from the data dir
The last eight are run by name only, like install.

Further arguments go to the benchmark named. BENCHMARKS.md keeps the latest figures with their commands.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BENCHMARKS = {
    "core": [sys.executable, str(HERE / "core_bench.py")],
    "sandbox": [sys.executable, str(HERE / "sandbox_bench.py")],
    "net": [sys.executable, str(HERE / "net_bench.py")],
    "fs": [sys.executable, str(HERE / "fs_bench.py")],
    "tree": [sys.executable, str(HERE / "tree_bench.py")],
    "cbench": [str(ROOT / "cbench" / "run.sh")],
    "deep": [sys.executable, str(HERE / "deep_bench.py")],
    "stream": [sys.executable, str(HERE / "stream_bench.py")],
    "startup": [sys.executable, str(HERE / "startup_bench.py")],
}
# Run only by name: each needs something more (built wheels, root, PHP) or takes minutes.
BY_NAME_ONLY = {
    "install": [sys.executable, str(HERE / "install_bench.py")],
    "abuse": [sys.executable, str(HERE / "abuse_bench.py")],
    "demote": [sys.executable, str(HERE / "demote_bench.py")],
    "dht": [sys.executable, str(HERE / "dht_bench.py")],
    "sim": [sys.executable, str(HERE / "dht_sim.py")],
    "nat": [sys.executable, str(HERE / "nat_bench.py")],
    "relay": [sys.executable, str(HERE / "relay_bench.py")],
    "clients": [sys.executable, str(HERE / "clients_bench.py")],
    "zstd": [sys.executable, str(HERE / "zstd_bench.py")],
    "compile": [sys.executable, str(HERE / "compile_bench.py")],
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in (*BENCHMARKS, *BY_NAME_ONLY, "all") or argv[0] in ("-h", "--help"):
        print(__doc__, file=sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    env = dict(os.environ, PYTHON=sys.executable)
    if name != "all":
        return subprocess.call([*{**BENCHMARKS, **BY_NAME_ONLY}[name], *rest], env=env)
    status = 0
    for bench, cmd in BENCHMARKS.items():
        print(f"==> {bench}", flush=True)
        status |= subprocess.call([*cmd, *rest], env=env)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
