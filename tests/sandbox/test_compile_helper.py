"""Compiling off the fork server's loop: a single-use, confined compile helper makes a module's code while workers
keep being forked; the node's disk cache serves a restarted sandbox; sandboxed jobs feed ``auto``'s history
(docs/SANDBOX.md, "Engines")."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyphase import Limits, engines
from pyphase.compiled import configuration
from pyphase.errors import SandboxError
from pyphase.history import HISTORY_FILE, ModuleRuns
from pyphase.sandbox import Sandbox

from sandbox_helpers import big_module, proc_status, wait_until

LONG = Limits(timeout_ms=60_000)  # a budget that says "long" to auto


@pytest.fixture(scope="module")
def big_bytes() -> bytes:
    """About 8 MB: Cranelift needs seconds (2-3 s on an idle 2-core VM), far more than the jobs run meanwhile."""
    return big_module(functions=400, ops=3000)


def _helpers(server_pid: int | None) -> list[int]:
    """The fork server's compile helpers: its children whose fd 3 is the memfd they write their code into (none
    while the sandbox has no fork server for compiled jobs yet: ``server_pid`` None)."""
    found = []
    try:
        children = Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()
    except OSError:
        return []
    for child in children:
        try:
            if os.readlink(f"/proc/{child}/fd/3").startswith("/memfd:phase-compiled"):
                found.append(int(child))
        except OSError:
            pass
    return found


def _arena_files(pid: int) -> set[str]:
    """The module arenas a process maps (their memfds' inodes)."""
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {line.split()[4] for line in lines if "/memfd:phase-module" in line}


def test_a_big_modules_compile_does_not_block_other_jobs(big_bytes, hello_bytes):
    with Sandbox(workers=1, spares=1) as sb:
        for _ in range(2):  # hello cached (and compiled) in the server of compiled jobs too (its ADD comes first)
            assert sb.run(hello_bytes, b"x", engine="wasmtime").ok
        # explicit wasmtime: this job waits for its code, off any slot
        compiled_job = sb.submit(big_bytes, b"", limits=LONG, engine="wasmtime")
        wait_until(lambda: bool(_helpers(sb.compiling_server_pid)), 60, "a compile helper")
        helper = _helpers(sb.compiling_server_pid)[0]
        wait_until(lambda: proc_status(helper).get("Seccomp") == "2", 10, "the helper to confine itself")
        status = proc_status(helper)
        # confined like a worker, single-threaded (parallel compilation is off where we fork)
        assert (status["Seccomp"], status["NoNewPrivs"], status["CapEff"], status["Threads"]) == (
            "2",
            "1",
            "0000000000000000",
            "1",
        )
        assert sorted(os.listdir(f"/proc/{helper}/fd")) == ["0", "1", "2", "3"]
        # of the modules the server holds (their arenas, csrc/phase_arena.c), the helper keeps only the one it compiles
        held, kept = _arena_files(sb.compiling_server_pid), _arena_files(helper)
        assert len(held) == 2 and len(kept) == 1 and kept < held, (held, kept)
        # meanwhile: jobs of another module, each on a freshly forked worker, and the big module's own auto jobs on
        # wasm3 (a job never waits for Cranelift)
        for i in range(6):
            r = sb.run(hello_bytes, b"ab%d" % i)
            assert (r.status, r.stdout) == ("ok", b"%dba" % i), r.message
        r = sb.run(big_bytes, b"", limits=LONG)
        assert (r.status, r.engine) == ("ok", "wasm3"), r.message
        assert not compiled_job.done() and not sb.compiled(big_bytes, LONG), "the compile ended too soon to tell"
        assert helper in _helpers(sb.compiling_server_pid)
        result = compiled_job.result(timeout=300)
        assert (result.status, result.engine) == ("ok", "wasmtime"), result.message
        assert result.compile_us > 0 and sb.compiles == 2  # hello's and the big module's
        assert sb.run(big_bytes, b"", limits=LONG).engine == "wasmtime"  # auto, now that it is compiled
        assert proc_status(sb.compiling_server_pid)["Threads"] == "1"
        assert not _helpers(sb.compiling_server_pid)


def test_a_compile_that_fails_in_the_helper_is_reported_and_not_retried(hello_bytes, monkeypatch):
    # a helper killed mid-compile (here from outside; in real life a crash, RLIMIT_CPU or RLIMIT_AS): the job that
    # waited gets invalid_module with the reason, auto keeps the module on wasm3, the server serves on
    with Sandbox(workers=1) as sb:
        big = big_module(functions=301)
        job = sb.submit(big, b"", limits=LONG, engine="wasmtime")
        wait_until(lambda: bool(_helpers(sb.compiling_server_pid)), 60, "a compile helper")
        os.kill(_helpers(sb.compiling_server_pid)[0], 9)
        r = job.result(timeout=60)
        assert (r.status, r.engine) == ("invalid_module", "wasmtime")
        assert "compile helper was killed by" in r.message, r.message
        assert sb.run(big, b"", limits=LONG).engine == "wasm3"
        assert sb.run(big, b"", limits=LONG, engine="wasmtime").status == "invalid_module"
        assert sb.run(hello_bytes, b"ab", engine="wasmtime").stdout == b"ba"
        assert sb.compiles == 1


def _stale_workers(sb: Sandbox, module: bytes) -> tuple[int, list[int]]:
    """Have the fork server of compiled jobs get ``module``'s code while its slot holds three idle workers forked
    before: the server's compile_seq once it has it, and those workers' pids."""
    jit = sb._compiling_side()
    assert jit.run(module, b"ab").engine == "wasm3"  # that server holds the module (no code yet)
    slot = jit._slots[0]
    wait_until(lambda: (slot.poll(), slot.spares)[1] == 3, 30, "three idle workers")
    digest, config = hashlib.sha256(module).digest(), configuration(Limits(), False)
    waiting = jit._request_compile(digest, module, config)
    assert waiting is not None and waiting.done.wait(60)
    slot.poll()
    return jit._compiled[(digest, config)], slot.spare_pids


def test_workers_forked_before_a_compile_are_replaced_on_request(hello_bytes):
    # a worker forked before the server had a module's code would take the compiled job's bytes, validate them and
    # decline; Slot.renew has such idle workers killed and waits for one forked since
    with Sandbox(workers=1, spares=2) as sb:
        compiled_at, stale = _stale_workers(sb, hello_bytes)
        slot = sb._compiling_side()._slots[0]
        assert len(stale) == 3 and slot.compile_seq < compiled_at
        slot.renew(0, 1000)  # none is older than "no compile": nothing happens
        assert slot.spare_pids == stale
        slot.renew(compiled_at, 30_000)
        assert slot.compile_seq >= compiled_at and slot.spare_pids[0] not in stale
        wait_until(lambda: not any(proc_status(pid) for pid in stale), 30, "the stale workers to be gone")
        wait_until(lambda: (slot.poll(), slot.spares)[1] == 3, 30, "three fresh workers")
        assert not set(slot.spare_pids) & set(stale)
        r = sb.run(hello_bytes, b"ab", engine="wasmtime")
        assert (r.status, r.stdout, r.engine, sb.compiles) == ("ok", b"ba", "wasmtime", 1), r.message


def test_a_compiled_job_skips_the_workers_forked_before_its_code(hello_bytes):
    with Sandbox(workers=1, spares=2) as sb:
        compiled_at, stale = _stale_workers(sb, hello_bytes)
        r = sb.run(hello_bytes, b"ab", engine="wasmtime")
        assert (r.status, r.stdout, r.engine, sb.compiles) == ("ok", b"ba", "wasmtime", 1), r.message
        assert sb._compiling_side()._slots[0].compile_seq >= compiled_at
        wait_until(lambda: not any(proc_status(pid) for pid in stale), 30, "the stale workers to be gone")


@pytest.fixture(scope="module")
def slow_to_compile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 25 MB module that Cranelift compiles for seconds and whose job spins half of one on wasm3."""
    module = tmp_path_factory.mktemp("slow") / "big.wasm"
    module.write_bytes(big_module(functions=1200, ops=3000, spin=100_000_000))
    return module


def test_phase_run_keeps_the_compile_its_long_job_started_for_the_next_run(tmp_path, slow_to_compile):
    # the module compiles for seconds, its job runs for half of one: a `phase run` that gave up on the compile
    # when it had waited as long as the job ran left every later run on wasm3, starting the same compile again
    module = slow_to_compile
    cmd = [sys.executable, "-m", "pyphase", "run", "--json", "--data-dir", str(tmp_path / "data"), str(module)]
    docs = [json.loads(subprocess.run(cmd, capture_output=True, check=True, timeout=600).stdout) for _ in range(2)]
    assert [d["status"] for d in docs] == ["ok"] * 2, docs
    # auto learns that the job is long, and the big module is compiled after it (its run waits for that)
    assert docs[0]["engine"] == "wasm3" and docs[0]["wall_us"] >= engines.AUTO_WALL_US
    assert docs[1]["engine"] == "wasmtime" and docs[1]["compile_us"] == 0  # the code the first run left


def _read_until(fd: int, marker: bytes, timeout: float) -> bytes:
    """What a terminal's master side shows until ``marker`` appears (the test holds the child side open, so that
    the master never reports EIO while the last writer's output is in flight)."""
    seen, deadline = b"", time.monotonic() + timeout
    while marker not in seen:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"timed out waiting for {marker!r}; seen {seen!r}"
        seen += os.read(fd, 4096)
    return seen


def test_phase_run_says_on_a_terminal_that_it_compiles_and_ctrl_c_skips_it(tmp_path, slow_to_compile):
    """The note is printed inside the wait, so the signal lands in it. The child gets SIGINT's default action, as
    a command typed at a terminal does: run as a shell's background job (as CI runs the suite) this process
    inherits SIGINT ignored, and so would phase, which then rightly keeps waiting (what failed an earlier version
    of this test in CI)."""
    master, child_side = pty.openpty()
    cmd = [sys.executable, "-m", "pyphase", "run", "--data-dir", str(tmp_path / "data"), str(slow_to_compile)]
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # caught here: the default after exec
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=child_side)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        shown = _read_until(master, b"Ctrl-C skips this", 300)
        assert b"phase: compiling " + str(slow_to_compile).encode() + b" for its next runs" in shown, shown
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0  # the job's exit code: it completed
        shown += _read_until(master, b"starts on wasm3 again", 10)
    finally:
        proc.kill()
        os.close(master)
        os.close(child_side)
    assert b"phase: note: compile skipped" in shown, shown
    assert not list((tmp_path / "data" / "compiled").glob("*.cwasm"))


RESTART_SCRIPT = """
import json, sys
from pyphase import Limits, engines
from pyphase.sandbox import Sandbox
data_dir, hello, probe, counter = sys.argv[1:5]
engines.use_data_dir(data_dir)
hello, probe, counter = (open(p, "rb").read() for p in (hello, probe, counter))
out = {}
with Sandbox(workers=1) as sb:
    r = sb.run(hello, b"ab", engine="wasmtime")
    out["hello"] = [r.status, r.stdout.decode(), r.engine, r.compile_us]
    r = sb.run(probe, b"in", args=["cat"], limits=Limits(timeout_ms=60_000))
    out["probe"] = [r.status, r.stdout.decode(), r.engine]
    r = sb.run(counter, b"")
    out["counter"] = [r.status, r.engine, r.wall_us]
    assert sb.wait_for_compiles(120)  # the counter's, started after its long wasm3 job
    out["compiles"], out["code_loads"] = sb.compiles, sb.code_loads
print(json.dumps(out))
"""

# about half a second of wasm3 or more (0.13 s per 20 million rounds on this VM, unloaded): auto's history then calls the module long
COUNTER = """(module (memory (export "memory") 1)
  (func (export "_start") (local i32)
    (loop $more
      (local.set 0 (i32.add (local.get 0) (i32.const 1)))
      (br_if $more (i32.lt_u (local.get 0) (i32.const 100000000))))))"""


def _node_start(tmp_path: Path, modules: list[Path]) -> dict:
    """One start of a node-like process on ``tmp_path``'s data dir: a fresh interpreter and fork server."""
    out = subprocess.run(
        [sys.executable, "-c", RESTART_SCRIPT, str(tmp_path / "data"), *map(str, modules)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1])


def test_a_restarted_sandbox_loads_code_and_history_from_the_data_dir(tmp_path, hello_bytes, probe_bytes, wat):
    modules = []
    for name, data in (("hello", hello_bytes), ("probe", probe_bytes), ("counter", wat(COUNTER))):
        modules.append(tmp_path / f"{name}.wasm")
        modules[-1].write_bytes(data)
    first = _node_start(tmp_path, modules)
    assert first["hello"][:3] == ["ok", "ba", "wasmtime"] and first["hello"][3] > 0
    assert first["probe"] == ["ok", "in", "wasm3"]  # big and long: wasm3 while it compiles, and compiled for later
    assert first["counter"][:2] == ["ok", "wasm3"] and first["counter"][2] >= 200_000  # short budget: wasm3
    assert (first["compiles"], first["code_loads"]) == (3, 0)
    compiled = sorted((tmp_path / "data" / "compiled").glob("*.cwasm"))
    assert len(compiled) == 3
    # auto's history from the sandboxed job, in the data dir
    counter_digest = hashlib.sha256(modules[2].read_bytes()).digest()
    runs = ModuleRuns(tmp_path / "data" / HISTORY_FILE)
    try:
        assert (runs.get(counter_digest) or 0) >= 200_000
    finally:
        runs.close()

    # restart: nothing is compiled again. The big module's first auto job starts compiled; the counter is long by
    # its history (a short budget, so only the history says so), so auto runs it compiled too
    second = _node_start(tmp_path, modules)
    assert second["hello"] == ["ok", "ba", "wasmtime", 0]
    assert second["probe"] == ["ok", "in", "wasmtime"]
    assert second["counter"][:2] == ["ok", "wasmtime"]
    assert (second["compiles"], second["code_loads"]) == (0, 3)

    # a damaged file is refused by its MAC, removed, and the module compiled again
    for path in compiled:
        path.write_bytes(path.read_bytes()[:-1] + b"\0")
    third = _node_start(tmp_path, modules)
    assert third["hello"][:3] == ["ok", "ba", "wasmtime"] and third["hello"][3] > 0
    assert third["compiles"] == 3 and third["code_loads"] == 0


def test_phase_run_in_the_sandbox_keeps_compiled_code_in_its_data_dir(tmp_path, hello_bytes):
    module = tmp_path / "hello.wasm"
    module.write_bytes(hello_bytes)
    cmd = [sys.executable, "-m", "pyphase", "run", "--json", "--engine", "wasmtime", "--data-dir", str(tmp_path / "d")]
    runs = []
    for _ in range(2):
        out = subprocess.run([*cmd, str(module)], input=b"ab", capture_output=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        runs.append(json.loads(out.stdout.splitlines()[-1]))
        assert len(list((tmp_path / "d" / "compiled").glob("*.cwasm"))) == 1
    assert [(r["status"], r["engine"]) for r in runs] == [("ok", "wasmtime")] * 2
    assert runs[0]["compile_us"] > 0 and runs[1]["compile_us"] == 0  # the second run loaded the first one's code


def test_a_fork_server_killed_during_a_compile_fails_only_the_job_that_waited(hello_bytes):
    with Sandbox(workers=1) as sb:
        big = big_module(functions=302)
        job = sb.submit(big, b"", limits=LONG, engine="wasmtime")
        wait_until(lambda: bool(_helpers(sb.compiling_server_pid)), 60, "a compile helper")
        helper, server = _helpers(sb.compiling_server_pid)[0], sb.compiling_server_pid
        os.kill(server, 9)
        with pytest.raises(SandboxError):
            job.result(timeout=60)
        wait_until(lambda: not os.path.exists(f"/proc/{helper}"), 10, "the helper to die with its server")
        for _ in range(2):  # the first may still meet the dead server, which the sandbox then restarts
            try:
                r = sb.run(hello_bytes, b"ab", engine="wasmtime")
                break
            except SandboxError:
                continue
        assert (r.status, r.stdout, r.engine) == ("ok", b"ba", "wasmtime"), r.message
        assert sb.restarts == 1


def test_a_validation_record_spares_the_first_worker_and_the_fork_server_still_validates(tmp_path, hello_bytes):
    """A module a worker and the fork server validated is recorded in the data dir (pyphase.compiled); the next
    sandbox sends it straight to its fork server with the code, and the server's own validator still decides: a
    record of this node's own key for bytes the validator refuses gives invalid_module, never a run."""
    from pyphase import engines

    engines.use_data_dir(tmp_path)
    try:
        digest = hashlib.sha256(hello_bytes).digest()
        with Sandbox(workers=1, spares=0) as sb:
            r = sb.run(hello_bytes, b"ab", engine="wasmtime")
        assert (r.status, r.stdout, r.engine) == ("ok", b"ba", "wasmtime")
        records = engines.validation_records()
        assert records is not None and records.read(digest) is None  # validated, facts unknown to this process
        engines.use_data_dir(tmp_path)  # a restarted node
        with Sandbox(workers=1, spares=0) as sb:
            assert sb._validated_before(digest)
            r = sb.run(hello_bytes, b"cd", engine="wasmtime")
            assert (r.status, r.stdout, r.engine) == ("ok", b"dc", "wasmtime") and sb.code_loads == 1
            invalid = b"\0asm\1\0\0\0" + b"\x01\xff\xff\xff\xff\x0f"  # a type section longer than the module
            records = engines.validation_records()
            assert records is not None
            records.write(hashlib.sha256(invalid).digest(), None)
            assert sb._validated_before(hashlib.sha256(invalid).digest())
            r = sb.run(invalid, b"", engine="wasmtime")
            assert r.status == "invalid_module", r
            assert sb.run(hello_bytes, b"ef", engine="wasmtime").stdout == b"fe"
    finally:
        engines.use_data_dir(None)


def test_a_module_that_came_with_its_code_still_runs_on_wasm3(tmp_path, hello_bytes):
    """A module sent to the compiled jobs' fork server to be compiled (by a helper, or with its code from the data
    dir) is not prepared for wasm3 there (its jobs run compiled): a wasm3 job of it on that server (auto's fallback
    there) still runs, in a worker that compiles what it calls."""

    def wasm3_on_the_compiling_side(sb: Sandbox) -> None:
        jit = sb._compiling_side()
        for text in (b"ef", b"ghi"):
            r = jit.run(hello_bytes, text, engine="wasm3")
            assert (r.status, r.stdout, r.engine) == ("ok", text[::-1], "wasm3"), r.message

    engines.use_data_dir(tmp_path)
    try:
        with Sandbox(workers=1, spares=0) as sb:
            assert sb.run(hello_bytes, b"ab", engine="wasmtime").engine == "wasmtime"
            assert sb.compiles == 1
            wasm3_on_the_compiling_side(sb)
        engines.use_data_dir(tmp_path)  # a restarted node: the module reaches its fork server with the code
        with Sandbox(workers=1, spares=0) as sb:
            r = sb.run(hello_bytes, b"cd", engine="wasmtime")
            assert (r.status, r.stdout, r.engine, sb.code_loads) == ("ok", b"dc", "wasmtime", 1)
            wasm3_on_the_compiling_side(sb)
            assert sb.run(hello_bytes, b"jk", engine="wasmtime").stdout == b"kj"
    finally:
        engines.use_data_dir(None)
