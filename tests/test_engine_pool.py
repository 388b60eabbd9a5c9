"""The compiling engine's instance pool in process: jobs instantiate from slots reserved once (no mmap of a 4 GiB
reservation per job), a process with an address-space limit never pools, and jobs beyond the pool's slots run on
on-demand allocation with the same code and the same results."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pyphase import Limits, Result, _core
from pyphase.runtime import Module, run

pytestmark = pytest.mark.usefixtures("no_data_dir")

HELLO = Path(__file__).resolve().parent.parent / "examples" / "hello" / "hello.wasm"
GIB = 1 << 30
# a child process: one job on the compiling engine, then its address-space size (VmSize, kB)
CHILD = """
import resource, sys
limit = int(sys.argv[2])
if limit:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from pyphase import Limits, run
r = run(open(sys.argv[1], "rb").read(), b"Hello, World", engine="wasmtime", limits=Limits(timeout_ms=0))
vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize"))
print(r.status, vm * 1024)
print(r.stdout.decode())
"""


def _child(hello_path: str, as_limit: int) -> tuple[str, str, int]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, hello_path, str(as_limit)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    head, stdout = out.stdout.splitlines()[:2]
    status, vm = head.split()
    return status, stdout, int(vm)


def test_jobs_in_process_instantiate_from_a_pool_reserved_once():
    status, stdout, vm = _child(str(HELLO), 0)
    assert (status, stdout) == ("ok", "dlroW ,olleH")
    assert vm >= _core.WASMTIME_POOL_SLOTS * 4 * GIB  # every slot's 4 GiB reservation, made up front


def test_a_process_with_an_address_space_limit_runs_without_a_pool():
    status, stdout, vm = _child(str(HELLO), 16 * GIB)  # wasmtime would abort if it tried to reserve a pool here
    assert (status, stdout) == ("ok", "dlroW ,olleH")
    assert vm < 16 * GIB


def test_jobs_beyond_the_pool_spill_to_on_demand_allocation_with_the_same_results(hello_bytes):
    module = Module(hello_bytes)
    limits = Limits(timeout_ms=0)
    assert run(module, b"warm", engine="wasmtime", limits=limits).stdout == b"mraw"
    jobs = _core.WASMTIME_POOL_SLOTS + 3
    # every job blocks inside its own write until all of them are running: more live instances than slots
    together = threading.Barrier(jobs)
    results: list[object] = [None] * jobs

    def job(i: int) -> None:
        results[i] = run(
            module,
            f"job {i}".encode(),
            engine="wasmtime",
            limits=limits,
            on_output=lambda stream, data: together.wait(timeout=120),
        )

    threads = [threading.Thread(target=job, args=(i,)) for i in range(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not together.broken
    for i, r in enumerate(results):
        assert r is not None and r.status == "ok" and r.stdout == f"job {i}".encode()[::-1], (i, r)


def test_a_spinning_job_beyond_the_pool_still_ends_in_timeout(hello_bytes, probe_bytes):
    # every slot of the engine for jobs with a wall-clock limit held by a job blocked in its own write; the spinning
    # job then runs on the on-demand twin, whose epoch the ticker must advance too
    slots = _core.WASMTIME_POOL_SLOTS
    hello, probe = Module(hello_bytes), Module(probe_bytes)
    held = Limits(timeout_ms=20_000)
    run(probe, args=["echo"], limits=Limits(timeout_ms=300), engine="wasmtime")  # compile outside the measured run
    inside = threading.Barrier(slots + 1)
    release = threading.Event()
    results: list[object] = [None] * slots

    def hold(i: int) -> None:
        def wait(stream: int, data: bytes) -> None:
            inside.wait(timeout=120)
            release.wait(timeout=120)

        results[i] = run(hello, b"held", engine="wasmtime", limits=held, on_output=wait)

    threads = [threading.Thread(target=hold, args=(i,)) for i in range(slots)]
    for t in threads:
        t.start()
    spun: list[object] = []
    # on a daemon thread: a spinner nothing interrupts must fail this test, not hang the suite
    spinner = threading.Thread(
        target=lambda: spun.append(run(probe, args=["spin"], limits=Limits(timeout_ms=300), engine="wasmtime")),
        daemon=True,
    )
    try:
        inside.wait(timeout=120)
        spinner.start()
        spinner.join(timeout=30)
    finally:
        release.set()
        for t in threads:
            t.join(timeout=180)
    assert spun, "the spinning job beyond the pool never ended"
    r = spun[0]
    assert isinstance(r, Result) and r.status == "timeout" and "300 ms" in r.message
    assert r.wall_us < 1_000_000
    assert all(getattr(x, "stdout", None) == b"dleh" for x in results)
