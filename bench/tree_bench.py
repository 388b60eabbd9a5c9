"""Remote input trees: reading a 100 MB directory through a local preopen and through a node over loopback, the
first time (every byte sent) and cached (nothing sent), against ``cat`` of the same files in the same run.

    python bench/tree_bench.py            # about a minute: 100 files of 1 MiB, 3 runs of each
    python bench/tree_bench.py --quick    # 8 MiB, 1 run (the smoke test)
    python bench/tree_bench.py --json

Method
  * The tree: 100 files of 1 MiB of random bytes in a temp dir, page cache warm; the job is
    tests/programs/fs_bench.c ("read DIR": readdir, then open + 64 KiB reads + close per file) given the tree
    read-only at /data.
  * cat: ``cat`` of the files to /dev/null. local: ``Sandbox.run`` with ``--ro-dir`` (warm worker).
  * remote, first: ``Client.submit(dirs=...)`` to a fresh sandboxed ``plasmd`` on 127.0.0.1 (a new data dir each
    run, started untimed): the client hashes the tree (its remembered hashes forgotten first), the node asks for
    every blob (1 MiB chunks, 8 in
    flight), lays the tree out as hard links and runs the job; the whole submit is timed.
  * remote, first, on the loop: the same with the node writing and hashing arriving files on its event loop
    (``blob_thread = false``, the path before they moved to a thread of their own), in the same run.
  * CurveZMQ stream: the same bytes as 1 MiB messages from a DEALER to a ROUTER over an encrypted loopback
    connection (as a client's and a node's sockets are), sent back to back: what the connection alone allows.
  * remote, cached: the same submit again to the same node: the client names the tree from the hashes it
    remembers (same inode, size, mtime and ctime: not read again), the node links it from its blob store and
    fetches nothing (checked from its ``files_ready`` event).
  * Median of the runs. Wall clock on a shared 2-CPU machine (the load average is printed).
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

from pyphase import Client, Preopen, trees
from pyphase.limits import Limits
from pyphase.sandbox import Sandbox

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "net"))
import wasm_build  # noqa: E402
from net_support import NodeProc  # noqa: E402

LIMITS = Limits(timeout_ms=60_000)  # a node's default ceiling


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def curve_stream(total: int) -> float:
    """Seconds to send ``total`` bytes as 1 MiB messages over a CurveZMQ loopback connection, one direction."""
    import threading

    import zmq

    ctx = zmq.Context()
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    try:
        router.curve_server = True
        router.curve_secretkey, router.curve_publickey = server_secret, server_public
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealer.curve_serverkey = server_public
        dealer.curve_publickey, dealer.curve_secretkey = client_public, client_secret
        dealer.connect(f"tcp://127.0.0.1:{port}")
        dealer.send(b"hello")
        router.recv_multipart()
        chunk, count = os.urandom(1 << 20), total >> 20
        t = time.perf_counter()
        sender = threading.Thread(target=lambda: [dealer.send(chunk, copy=False) for _ in range(count)])
        sender.start()
        for _ in range(count):
            router.recv_multipart(copy=False)
        sender.join()
        return time.perf_counter() - t
    finally:
        dealer.close(0)
        router.close(0)
        ctx.term()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    files, runs = (8, 1) if args.quick else (100, 3)
    wasm = wasm_build.build_c("fs_bench.c").read_bytes()
    figures: dict[str, Any] = {"load_average": os.getloadavg(), "tree_bytes": files << 20}
    with tempfile.TemporaryDirectory(prefix="tree-bench-") as tmp:
        tree = Path(tmp) / "tree"
        tree.mkdir()
        for i in range(files):
            (tree / f"part{i:04d}.bin").write_bytes(os.urandom(1 << 20))
        names = sorted(str(p) for p in tree.iterdir())
        listing_size = trees.scan(tree)[0].size  # fetched the first time with the files
        dirs = [Preopen(str(tree), "/data", readonly=True)]
        expected = f"files {files} bytes {files << 20}".encode()

        def check(stdout: bytes) -> None:
            if not stdout.startswith(expected):
                raise SystemExit(f"the job read something else: {stdout[:200]!r}")

        cat = [
            timed(lambda: subprocess.run(["cat", *names], stdout=subprocess.DEVNULL, check=True))
            for _ in range(runs + 1)
        ]
        with Sandbox(workers=1) as sandbox:
            sandbox.run(wasm, args=["read", "/data"], dirs=dirs, limits=LIMITS)  # warm
            local = [
                timed(lambda: check(sandbox.run(wasm, args=["read", "/data"], dirs=dirs, limits=LIMITS).stdout))
                for _ in range(runs)
            ]
        curve = [curve_stream(files << 20) for _ in range(runs)]
        first, first_loop, cached, fetched = [], [], [], []
        for run in range(runs):
            for blob_thread in ("false", "true"):  # interleaved: both see the same load
                env = {"PLASMD_BLOB_THREAD": blob_thread}
                node = NodeProc(Path(tmp) / f"node{run}{blob_thread}", "127.0.0.1", workers=1, env=env).start()
                try:
                    with Client(peers=[node.address]) as client:
                        client.submit(wasm, args=["read", "/tmp"], limits=LIMITS)  # connected, module cached
                        trees.forget_hashes()  # the client hashes the whole tree, as a new process would
                        t = timed(
                            lambda: check(client.submit(wasm, args=["read", "/data"], dirs=dirs, limits=LIMITS).stdout)
                        )
                        (first if blob_thread == "true" else first_loop).append(t)
                        cached.append(
                            timed(
                                lambda: check(
                                    client.submit(wasm, args=["read", "/data"], dirs=dirs, limits=LIMITS).stdout
                                )
                            )
                        )
                    fetched.append([e["fetched_bytes"] for e in node.wait_event_count("files_ready", 2)])
                finally:
                    node.stop()
    t_cat, t_local, t_curve, t_first, t_first_loop, t_cached = (
        statistics.median(x) for x in (cat[1:], local, curve, first, first_loop, cached)
    )
    mb = (files << 20) / 1e6
    figures.update(
        cat_s=t_cat,
        local_s=t_local,
        remote_first_s=t_first,
        remote_first_on_loop_s=t_first_loop,
        curve_stream_s=t_curve,
        remote_first_vs_curve_stream=t_first / t_curve,
        thread_vs_loop=t_first / t_first_loop,
        remote_cached_s=t_cached,
        local_vs_cat=t_local / t_cat,
        remote_first_vs_cat=t_first / t_cat,
        remote_cached_vs_cat=t_cached / t_cat,
        fetched_bytes=fetched,
    )
    if any(f[1] != 0 or f[0] != (files << 20) + listing_size for f in fetched):
        raise SystemExit(f"the node fetched {fetched}: expected everything once, then nothing")
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(f"load average {figures['load_average'][0]:.2f}; tree of {files} x 1 MiB, median of {runs}")
    for label, t in (
        ("cat", t_cat),
        ("local (sandboxed, --ro-dir)", t_local),
        ("CurveZMQ stream alone", t_curve),
        ("remote, first, on the loop", t_first_loop),
        ("remote, first", t_first),
        ("remote, cached", t_cached),
    ):
        print(f"  {label:28s} {t * 1000:8.0f} ms  {mb / t:7.0f} MB/s  {t / t_cat:6.2f}x cat's time")
    print(
        f"  first time, thread vs loop: {t_first / t_first_loop:.2f}x the time; vs the CurveZMQ stream alone: "
        f"{t_first / t_curve:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
