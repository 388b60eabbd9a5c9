"""File-system figures: reading a tree through a preopened directory, against native tools measured in the same run.

    python bench/fs_bench.py            # about a minute (writes a 100 MB tree and 10,000 small files in a temp dir)
    python bench/fs_bench.py --quick    # 8 MB and 1,000 files, for a smoke test
    python bench/fs_bench.py --json

Method
  * tree read: 100 files of 1 MiB (random bytes) read by tests/programs/fs_bench.c ("read DIR": readdir, then
    open + 64 KiB reads + close per file) through `--ro-dir`, in-process (pyphase.run) and sandboxed
    (Sandbox.run, a warm pool), against `cat` of the same files to /dev/null, all with the page cache warm.
    Median of 5 runs each.
  * per-file overhead: 10,000 files of 100 bytes; the guest opens, reads and closes each (names made in the
    guest: no readdir). Per file = (time for N files - time for 0 files) / N, so module start-up and the job's
    fixed costs cancel. Against wasmtime-py (pinned in the `bench` extra: pip install -e '.[bench]') running
    the same module with the same preopen (`WasiConfig.preopen_dir`), and native `cat` of the files by one
    process for scale. Median of 5 runs each.

Caveats: wall clock on a shared 2-CPU machine (the load average is printed); CI never fails on these numbers.
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

import pyphase
from pyphase import Preopen
from pyphase.limits import Limits
from pyphase.sandbox import Sandbox

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import wasm_build  # noqa: E402

LIMITS = Limits(timeout_ms=600_000)


def median_s(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm: page cache, module cache, worker
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def make_tree(root: Path, files: int, size: int) -> None:
    root.mkdir()
    for i in range(files):
        (root / f"part{i:04d}.bin").write_bytes(os.urandom(size))


def make_small(root: Path, files: int) -> None:
    root.mkdir()
    for i in range(files):
        (root / f"f{i:05d}").write_bytes(b"x" * 100)


def checked(result: pyphase.Result) -> pyphase.Result:
    if result.status != "ok" or result.exit_code != 0:
        raise SystemExit(f"the job failed: {result.status} {result.message} {result.stderr!r}")
    return result


def wasmtime_runner(wasm: bytes) -> Callable[[list[str], str], None] | None:
    try:
        import wasmtime
    except ImportError:
        return None
    engine = wasmtime.Engine()
    module = wasmtime.Module(engine, wasm)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    out = tempfile.NamedTemporaryFile(prefix="fs-bench-wasmtime-", delete=False)
    out.close()

    def run(args: list[str], host_dir: str) -> None:
        wasi = wasmtime.WasiConfig()
        wasi.argv = ["fs_bench.wasm", *args]
        wasi.preopen_dir(host_dir, "/data")
        wasi.stdout_file = out.name
        store = wasmtime.Store(engine)
        store.set_wasi(wasi)
        instance = linker.instantiate(store, module)
        try:
            instance.exports(store)["_start"](store)
        except wasmtime.ExitTrap as exc:
            if exc.code != 0:
                raise SystemExit(f"wasmtime run failed: exit {exc.code}") from None

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tree_files, tree_size, small_n, runs = (8, 1 << 20, 1000, 3) if args.quick else (100, 1 << 20, 10_000, 5)
    wasm = wasm_build.build_c("fs_bench.c").read_bytes()
    module = pyphase.Module(wasm)
    figures: dict[str, Any] = {
        "load_average": os.getloadavg(),
        "tree_bytes": tree_files * tree_size,
        "small_files": small_n,
    }

    with tempfile.TemporaryDirectory(prefix="fs-bench-") as tmp, Sandbox(workers=1) as sandbox:
        tree, small = Path(tmp) / "tree", Path(tmp) / "small"
        make_tree(tree, tree_files, tree_size)
        make_small(small, small_n)
        tree_dirs = [Preopen(str(tree), "/data", readonly=True)]
        small_dirs = [Preopen(str(small), "/data", readonly=True)]
        names = sorted(str(p) for p in tree.iterdir())

        def cat_tree() -> None:
            subprocess.run(["cat", *names], stdout=subprocess.DEVNULL, check=True)

        def phase_tree(run: Callable[..., pyphase.Result]) -> Callable[[], object]:
            return lambda: checked(run(module, args=["read", "/data"], dirs=tree_dirs, limits=LIMITS))

        t_cat = median_s(cat_tree, runs)
        t_in = median_s(phase_tree(pyphase.run), runs)
        t_sb = median_s(phase_tree(sandbox.run), runs)
        mb = tree_files * tree_size / 1e6
        figures["tree"] = {
            "cat_s": t_cat,
            "in_process_s": t_in,
            "sandbox_s": t_sb,
            "cat_MBps": mb / t_cat,
            "in_process_MBps": mb / t_in,
            "sandbox_MBps": mb / t_sb,
            "in_process_vs_cat": t_in / t_cat,
            "sandbox_vs_cat": t_sb / t_cat,
        }

        def per_file(run_n: Callable[[int], object]) -> float:
            return (median_s(lambda: run_n(small_n), runs) - median_s(lambda: run_n(0), runs)) / small_n

        def phase_small(run: Callable[..., pyphase.Result]) -> Callable[[int], object]:
            return lambda n: checked(run(module, args=["small", "/data", str(n)], dirs=small_dirs, limits=LIMITS))

        small_names = sorted(str(p) for p in small.iterdir())
        per = {
            "in_process_us": per_file(phase_small(pyphase.run)) * 1e6,
            "sandbox_us": per_file(phase_small(sandbox.run)) * 1e6,
            "cat_us": per_file(
                lambda n: subprocess.run(
                    ["cat", *small_names[:n]], stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, check=True
                )
            )
            * 1e6,
        }
        wt = wasmtime_runner(wasm)
        if wt is not None:
            import wasmtime

            per["wasmtime_us"] = per_file(lambda n: wt(["small", "/data", str(n)], str(small))) * 1e6
            per["wasmtime_version"] = wasmtime.__version__ if hasattr(wasmtime, "__version__") else "?"
            per["in_process_vs_wasmtime"] = per["in_process_us"] / per["wasmtime_us"]
            per["sandbox_vs_wasmtime"] = per["sandbox_us"] / per["wasmtime_us"]
        figures["per_file"] = per

    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    t, p = figures["tree"], figures["per_file"]
    print(f"load average {figures['load_average'][0]:.2f}")
    print(
        f"tree of {tree_files} x {tree_size >> 20} MiB: cat {t['cat_MBps']:.0f} MB/s; phase in-process "
        f"{t['in_process_MBps']:.0f} MB/s ({t['in_process_vs_cat']:.2f}x cat's time), sandboxed "
        f"{t['sandbox_MBps']:.0f} MB/s ({t['sandbox_vs_cat']:.2f}x)"
    )
    line = (
        f"per file (open+read+close of {small_n} x 100 B): phase in-process {p['in_process_us']:.1f} us, "
        f"sandboxed {p['sandbox_us']:.1f} us, native cat {p['cat_us']:.1f} us"
    )
    if "wasmtime_us" in p:
        line += (
            f", wasmtime-py {p['wasmtime_us']:.1f} us (phase/wasmtime {p['in_process_vs_wasmtime']:.2f}x "
            f"in-process, {p['sandbox_vs_wasmtime']:.2f}x sandboxed)"
        )
    else:
        line += "; wasmtime-py not installed (pip install -e '.[bench]')"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
