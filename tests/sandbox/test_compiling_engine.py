"""The compiling engine inside the sandbox: code compiled by the fork server (never by a worker), the same limits and
statuses as wasm3, the epoch timer, and a seccomp policy that adds only that timer (docs/SANDBOX.md, "Engines")."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import pyphase
from pyphase import Limits, engines
from pyphase.digests import hash_text
from pyphase.sandbox import Sandbox

from sandbox_helpers import CORPUS, cpu_ticks, proc_status, wait_until

SPIN = (CORPUS / "infinite_loop.wat").read_text()
# grows a page at a time until refused, then stores just past the end
GROW_UNTIL_REFUSED = """(module (memory (export "memory") 1)
  (func (export "_start")
    (block $refused (loop $more
      (br_if $refused (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
      (br $more)))
    (i32.store (i32.mul (memory.size) (i32.const 65536)) (i32.const 1))))"""


@pytest.fixture(scope="module")
def jit_sandbox():
    with Sandbox(workers=2, grace_ms=1000) as sb:
        assert sb.engines == ("wasm3", "wasmtime")
        yield sb


def test_a_job_runs_on_compiled_code_inherited_from_the_fork_server(jit_sandbox, hello_bytes):
    first = jit_sandbox.run(hello_bytes, b"abc", engine="wasmtime")
    assert (first.status, first.stdout, first.engine) == ("ok", b"cba", "wasmtime"), first.message
    in_process = pyphase.run(hello_bytes, b"abc", engine="wasmtime")
    assert (first.stdout, first.fuel_used, first.stdout_hash) == (
        in_process.stdout,
        in_process.fuel_used,
        in_process.stdout_hash,
    )
    for _ in range(3):  # later jobs: fresh workers, the code already there
        r = jit_sandbox.run(hello_bytes, b"xy", engine="wasmtime")
        assert (r.status, r.stdout, r.engine) == ("ok", b"yx", "wasmtime"), r.message
    # the fork server compiled, single-threaded (no compile threads, no epoch ticker): forking stays safe
    assert proc_status(jit_sandbox.server_pid)["Threads"] == "1"


def test_each_engine_configuration_is_compiled_for_the_job_that_needs_it(hello_bytes):
    # epoch checks are compiled in only for a job with a wall-clock limit (phase run's local default has none);
    # fuel metering and canonical NaNs make the other variants: each job must find the code of its own one
    variants = [Limits(timeout_ms=0), Limits(timeout_ms=0, fuel=10**9), Limits(timeout_ms=5000)]
    with Sandbox(workers=1, grace_ms=1000) as sb:  # its own: the module-wide one counts on what is not compiled
        for limits in variants:
            for deterministic in (False, True):
                r = sb.run(hello_bytes, b"ab", limits=limits, engine="wasmtime", deterministic=deterministic)
                assert (r.status, r.stdout, r.engine) == ("ok", b"ba", "wasmtime"), (limits, deterministic, r.message)


def test_a_spinning_module_ends_in_timeout_within_the_limit_plus_a_little(jit_sandbox, wat):
    spin = wat(SPIN)
    jit_sandbox.run(spin, limits=Limits(timeout_ms=50), engine="wasmtime")  # compiled once
    started = time.monotonic()
    r = jit_sandbox.run(spin, limits=Limits(timeout_ms=300), engine="wasmtime")
    took = time.monotonic() - started
    assert r.status == "timeout" and r.engine == "wasmtime", r.message
    assert "300 ms" in r.message and "killed" not in r.message  # the epoch ended it, not the parent's hard kill
    assert 0.3 <= r.wall_us / 1e6 < 0.3 + 0.1, r.wall_us
    assert took < 0.3 + 0.5, took


def test_fuel_memory_stack_and_output_limits_hold_in_a_worker(jit_sandbox, wat, hello_bytes):
    spin = wat(SPIN)
    r = jit_sandbox.run(spin, limits=Limits(fuel=1_000_000), engine="wasmtime")
    assert r.status == "fuel_exhausted" and r.fuel_used >= 1_000_000, r.message
    r = jit_sandbox.run(wat(GROW_UNTIL_REFUSED), limits=Limits(memory_bytes=4 << 20), engine="wasmtime")
    assert r.status == "memory_limit" and r.memory_peak_bytes == 4 << 20, r.message
    deep = wat((CORPUS / "deep_recursion.wat").read_text())
    r = jit_sandbox.run(deep, engine="wasmtime")
    assert r.status == "trap" and "stack overflow" in r.message
    r = jit_sandbox.run(hello_bytes, b"x" * 5000, limits=Limits(output_bytes=1000), engine="wasmtime")
    assert r.status == "output_limit" and len(r.stdout) <= 1000


def test_an_invalid_module_is_refused_by_a_worker_and_never_compiled(jit_sandbox, hello_bytes):
    bad = hello_bytes[:-3]
    r = jit_sandbox.run(bad, engine="wasmtime")
    assert r.status == "invalid_module" and r.message
    assert not [key for key in jit_sandbox._compiled if hash_text(key[0]) == r.module_hash]
    assert jit_sandbox.run(hello_bytes, b"ok", engine="wasmtime").stdout == b"ko"


def test_auto_sends_long_jobs_to_the_compiler_and_keeps_short_ones_on_wasm3(jit_sandbox, hello_bytes, probe_bytes):
    assert len(hello_bytes) <= engines.AUTO_INLINE_COMPILE_BYTES < len(probe_bytes)
    long = Limits(timeout_ms=60_000)
    # deterministic: a configuration of the compiling engine no test here compiled hello for
    assert jit_sandbox.run(hello_bytes, b"ab", deterministic=True).engine == "wasm3"
    r = jit_sandbox.run(hello_bytes, b"ab", limits=long, deterministic=True)
    assert (r.status, r.stdout, r.engine) == ("ok", b"ba", "wasmtime"), r.message
    # a long job of a big module runs on wasm3 while a compile helper compiles it; once compiled, jobs use the code
    r = jit_sandbox.run(probe_bytes, b"in", args=["cat"], limits=long)
    assert (r.status, r.stdout, r.engine) == ("ok", b"in", "wasm3"), r.message
    wait_until(lambda: jit_sandbox.compiled(probe_bytes, long), 60, "the compile helper")
    r = jit_sandbox.run(probe_bytes, b"in", args=["cat"], limits=long)
    assert (r.status, r.stdout, r.engine) == ("ok", b"in", "wasmtime"), r.message
    # compiled code alone moves no job: a short one of the module still starts on wasm3 (faster to start)
    assert jit_sandbox.run(probe_bytes, b"z", args=["cat"]).engine == "wasm3"


def test_only_compiled_jobs_of_workers_forked_after_the_first_compile_may_set_their_epoch_timer(hello_bytes):
    with Sandbox(workers=1, spares=0) as sb:
        assert sb.engines == ("wasm3", "wasmtime")
        # nothing compiled yet: the exact wasm3 policy (the compiling engine is set up on the first compile)
        r = sb._selftest("timer", hello_bytes)
        assert r.status == "crashed" and "SIGSYS" in r.message, r.message
        for _ in range(2):
            assert sb.run(hello_bytes, b"ab", engine="wasmtime").stdout == b"ba"
        assert sb._selftest("timer", hello_bytes, engine="wasmtime").status == "ok"
        # wasm3's jobs run on their own fork server's workers, which never had the compiling engine
        r = sb._selftest("timer", hello_bytes)
        assert r.status == "crashed" and "SIGSYS" in r.message, r.message
        # a wasm3 job on the compiled jobs' server (auto's fallback there) gives the two calls back before the job
        # (a second filter): the exact wasm3 policy, and a crash still reads as its own signal (wasmtime's inherited
        # fault handlers are reset first)
        jit = sb._compiling_side()
        r = jit._selftest("timer", hello_bytes)
        assert r.status == "crashed" and "SIGSYS" in r.message, r.message
        r = jit._selftest("segfault", hello_bytes)
        assert r.status == "crashed" and "SIGSEGV" in r.message, r.message
        assert jit.run(hello_bytes, b"ab", engine="wasm3").stdout == b"ba"
        # and nobody maps executable memory in a worker, compiling engine or not
        for side in (sb, jit):
            r = side._selftest("exec_mmap", hello_bytes)
            assert r.status == "crashed" and "SIGSYS" in r.message
    with Sandbox(workers=1, engines=["wasm3"]) as sb:
        r = sb._selftest("timer", hello_bytes)
        assert r.status == "crashed" and "SIGSYS" in r.message


def test_a_worker_on_the_compiling_engine_is_confined(wat):
    spin = wat(SPIN)
    with Sandbox(workers=1) as sb:
        future = sb.submit(spin, limits=Limits(timeout_ms=20_000, memory_bytes=1 << 20), engine="wasmtime")
        running: list[int] = []

        def spinning() -> bool:
            server = sb.compiling_server_pid
            if server is None:
                return False
            children = Path(f"/proc/{server}/task/{server}/children")
            running[:] = [pid for pid in map(int, children.read_text().split()) if cpu_ticks(pid) > 0]
            return bool(running)

        wait_until(spinning, what="the spinning job to run")
        status = proc_status(running[0])
        assert (status["Seccomp"].strip(), status["NoNewPrivs"].strip(), status["Threads"].strip()) == ("2", "1", "1")
        assert status["CapEff"].strip() == "0000000000000000"
        # the address space holds the linear memory's reservation and guards, and not much beyond
        limit = int(Path(f"/proc/{running[0]}/limits").read_text().split("Max address space")[1].split()[0])
        assert 4 << 30 < limit < 5 << 30
        assert sb.stop(future)
        assert future.result(timeout=10).status == "crashed"


def test_a_fork_server_that_cannot_load_the_compiling_engine_falls_back_to_wasm3(monkeypatch, hello_bytes, tmp_path):
    # the library loads in the parent (engines.available) but not in the fork server, which finds out when it first
    # needs it: as under systemd's MemoryDenyWriteExecute, where the engine cannot be set up (test below)
    bogus = tmp_path / "libnot.so"
    bogus.write_bytes(b"not a library")
    monkeypatch.setattr(engines, "library", lambda: str(bogus))
    with Sandbox(workers=1) as sb:
        assert sb.run(hello_bytes, b"ab").engine == "wasm3"  # a short job: nothing to load
        with pytest.warns(RuntimeWarning, match="compiling engine"):
            r = sb.run(hello_bytes, b"ab", limits=Limits(timeout_ms=60_000))  # auto, on its way to the compiler
        assert (r.status, r.stdout, r.engine) == ("ok", b"ba", "wasm3") and sb.engines == ("wasm3",)
        # the compiled jobs' fork server, of no use from now on, is closed with its workers
        jit = sb._jit
        assert jit is not None
        wait_until(lambda: jit.closed and jit._server.poll() is not None, 10, "the compiled jobs' sandbox to close")
        assert sb.compiling_server_pid is None
        assert sb.run(hello_bytes, b"cd", limits=Limits(timeout_ms=60_000)).engine == "wasm3"
    with Sandbox(workers=1, engines=["wasmtime"]) as sb:  # asked for by name: refused with the reason, no fallback
        with pytest.warns(RuntimeWarning, match="compiling engine"):
            r = sb.run(hello_bytes, b"ab", engine="wasmtime")
        assert r.status == "rejected" and "cannot load" in r.message and str(bogus) in r.message, r.message


def mapped(server_pid: int) -> bool:
    return "_libwasmtime" in Path(f"/proc/{server_pid}/maps").read_text()


def test_wasm3_workers_never_come_from_a_fork_server_that_loaded_the_compiling_engine(hello_bytes):
    """A worker forked from a process that holds the library and its code runs a tiny wasm3 job a fifth slower (more
    to fork and to end): compiled jobs get a fork server of their own, started by the first of them."""
    with Sandbox(workers=1) as sb:
        assert sb.engines == ("wasm3", "wasmtime")
        assert sb.run(hello_bytes, b"ab").stdout == b"ba" and sb.compiling_server_pid is None
        r = sb.run(hello_bytes, b"cd", engine="wasmtime")
        assert (r.status, r.stdout, r.engine) == ("ok", b"dc", "wasmtime")
        jit_server = sb.compiling_server_pid
        assert jit_server is not None and jit_server != sb.server_pid and mapped(jit_server)
        assert not mapped(sb.server_pid)
        assert sb.run(hello_bytes, b"ef").stdout == b"fe"
        worker = sb._slots[0].worker_pid  # the next wasm3 job's worker: the first server's child
        assert str(worker) in Path(f"/proc/{sb.server_pid}/task/{sb.server_pid}/children").read_text().split()
    assert sb.compiling_server_pid is None and not Path(f"/proc/{jit_server}").exists()  # closed with it


def test_the_compiled_jobs_fork_server_loads_the_compiling_engine_on_its_first_compile(hello_bytes):
    """Until then its workers are forked without the library's mappings (cheaper to fork and to end)."""
    with Sandbox(workers=1, one_server=True) as sb:
        assert sb.engines == ("wasm3", "wasmtime") and sb.compiling_server_pid == sb.server_pid
        assert sb.run(hello_bytes, b"ab").stdout == b"ba" and not mapped(sb.server_pid)
        r = sb.run(hello_bytes, b"cd", engine="wasmtime")
        assert (r.status, r.stdout, r.engine) == ("ok", b"dc", "wasmtime") and mapped(sb.server_pid)
        assert sb.run(hello_bytes, b"ef").stdout == b"fe"  # wasm3 in a worker that has the library


MDWE_SCRIPT = """
import ctypes, sys, warnings
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    print(f"prctl(PR_SET_MDWE) failed: errno {ctypes.get_errno()}")
    sys.exit(3)
from pyphase import Limits
from pyphase.engines import EngineUnavailable
from pyphase.sandbox import Sandbox
hello = open(sys.argv[1], "rb").read()
warnings.simplefilter("error")
with Sandbox(workers=1) as sb:
    assert sb.engines == ("wasm3", "wasmtime"), sb.engines
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        r = sb.run(hello, b"ab", limits=Limits(timeout_ms=60_000))  # auto: on its way to the compiler
    assert (r.status, r.engine, r.stdout) == ("ok", "wasm3", b"ba"), r
    assert sb.engines == ("wasm3",) and "make memory executable" in str(seen[0].message), seen
    try:
        sb.run(hello, b"ab", engine="wasmtime")
    except EngineUnavailable as exc:
        print("refused:", exc)
"""


def test_under_memory_deny_write_execute_the_sandbox_runs_wasm3_only(tmp_path):
    # the kernel's own W^X for a process tree (PR_SET_MDWE, as systemd's MemoryDenyWriteExecute): no compiled code
    hello = Path(__file__).resolve().parents[2] / "examples" / "hello" / "hello.wasm"
    out = subprocess.run(
        [sys.executable, "-c", MDWE_SCRIPT, str(hello)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    if out.returncode == 3:  # kernels before 6.3 have no PR_SET_MDWE; the unit's filter cannot be applied here
        pytest.skip(out.stdout.strip())
    assert out.returncode == 0, out.stderr[-2000:]
    assert "refused: this sandbox runs wasm3 only" in out.stdout
