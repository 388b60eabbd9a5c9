"""A worker running a job is confined: seccomp filter on, no_new_privs, rlimits, only its channel and
/dev/null open. Forbidden system calls kill it (SIGSYS); RLIMIT_AS stops a runaway allocation. Every WASI
call the core implements still works under the filter."""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import pytest

import pyphase
from pyphase.limits import Limits
from pyphase.sandbox import Sandbox
from sandbox_helpers import assert_hello_works, cpu_ticks, proc_status, wait_until

LOOP = '(module (func (export "_start") (loop (br 0))))'


def _limits(pid: int) -> dict[str, tuple[str, str]]:
    out = {}
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]:
        parts = line.split()
        # "Max open files  4  4  files": the name is everything before the two values
        for i in range(len(parts)):
            if parts[i][0].isdigit() or parts[i] == "unlimited":
                out[" ".join(parts[:i])] = (parts[i], parts[i + 1])
                break
    return out


def test_a_running_worker_is_confined(hello_bytes, wat):
    with Sandbox(workers=1) as sb:
        future = sb.submit(wat(LOOP), limits=Limits(timeout_ms=20_000, memory_bytes=1 << 20))
        pid = sb.worker_pids()[0]
        wait_until(lambda: cpu_ticks(pid) > 0, what="the looping job to run")
        status = proc_status(pid)
        assert status["Seccomp"].strip() == "2"  # filter mode
        assert status["NoNewPrivs"].strip() == "1"
        limits = _limits(pid)
        assert limits["Max open files"] == ("4", "4")
        assert limits["Max core file size"] == ("0", "0")
        assert limits["Max file size"] == ("0", "0")
        assert limits["Max address space"][0] != "unlimited"
        assert int(limits["Max address space"][0]) < 1 << 30
        assert limits["Max cpu time"][0] == "21"  # timeout seconds + 1: a backstop to the hard timeout
        fds = {int(fd): os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        assert sorted(fds) == [0, 1, 2, 3]
        assert {fds[0], fds[1], fds[2]} == {"/dev/null"}
        assert fds[3].startswith("socket:")
        os.kill(pid, signal.SIGKILL)
        assert future.result(timeout=10).status == "crashed"
        assert_hello_works(sb, hello_bytes)


@pytest.mark.parametrize("action", ["forbidden_syscall", "exec_mmap"])
def test_forbidden_system_calls_kill_the_worker(sandbox, hello_bytes, action):
    r = sandbox._selftest(action, hello_bytes)
    assert r.status == "crashed"
    assert "SIGSYS" in r.message and "seccomp" in r.message
    assert_hello_works(sandbox, hello_bytes)


def test_address_space_limit_stops_host_allocation(sandbox, hello_bytes):
    r = sandbox._selftest("allocate", hello_bytes, Limits(memory_bytes=1 << 20))
    assert r.status == "memory_limit", r
    assert "address-space limit" in r.message
    assert_hello_works(sandbox, hello_bytes)


@pytest.mark.parametrize(
    "mode,stdin",
    [
        ("clock", b""),
        ("sleep", b""),
        ("yield", b""),
        ("poll", b"abc"),
        ("files", b""),
        ("fdstat", b""),
        ("cat", b"x" * 200_000),
        ("stderr", b""),
        ("exit", b""),
        ("badptr", b""),
    ],
)
def test_wasi_calls_work_under_the_filter(sandbox, probe_bytes, mode, stdin):
    expected = pyphase.run(probe_bytes, stdin, args=[mode])
    got = sandbox.run(probe_bytes, stdin, args=[mode])
    assert (got.status, got.exit_code) == (expected.status, expected.exit_code), got.message
    if mode != "clock":  # clock prints the time
        assert (got.stdout, got.stderr) == (expected.stdout, expected.stderr)
    else:
        assert got.stdout.count(b"\n") == expected.stdout.count(b"\n")


@pytest.mark.parametrize("spin_us", [0, 5000])
def test_a_hostile_worker_cannot_forge_beyond_its_own_job(hello_bytes, spin_us):
    # It rewrites the output window in the shared request, claims 1 GiB of output, then writes a complete
    # "ok" answer for the next job. The parent trusts only its own copies, and clears the response area
    # once the fork server reports the worker reaped.
    with Sandbox(workers=1, spin_us=spin_us) as sb:
        r = sb._selftest("forge", hello_bytes)
        assert r.status == "crashed" and "malformed" in r.message, r
        nxt = sb.run(hello_bytes, b"Hello, World")
        assert (nxt.status, nxt.stdout, nxt.message) == ("ok", b"dlroW ,olleH", "")


def test_a_worker_cannot_stream_past_the_limit_or_other_bytes_than_it_reports(sandbox, hello_bytes):
    # it streams twice the output limit, then reports success with no output: the parent hands on no more than
    # the limit, and the job ends crashed rather than with a result that disowns what was shown
    seen: list[bytes] = []
    r = sandbox._selftest("stream_forge", hello_bytes, Limits(output_bytes=4096), on_output=lambda s, d: seen.append(d))
    assert r.status == "crashed" and "streamed output does not match" in r.message, r
    assert 0 < sum(map(len, seen)) <= 4096 and b"".join(seen).startswith(b"forged by the worker\n")
    assert sandbox.run(hello_bytes, b"ab").stdout == b"ba"


def test_hashes_are_computed_by_the_parent(sandbox, probe_bytes):
    import hashlib

    r = sandbox.run(probe_bytes, b"some input", args=["stderr"])
    assert r.stdout_hash == "sha256:" + hashlib.sha256(r.stdout).hexdigest()
    assert r.stderr_hash == "sha256:" + hashlib.sha256(r.stderr).hexdigest()
    assert r.input_hash == "sha256:" + hashlib.sha256(b"some input").hexdigest()
    assert r.module_hash == "sha256:" + hashlib.sha256(probe_bytes).hexdigest()
    forged = sandbox._selftest("forge", probe_bytes)
    assert forged.module_hash == r.module_hash and forged.stdout_hash == "sha256:" + hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize("spares", [0, 2])
def test_a_worker_finds_nothing_of_the_jobs_before_it(hello_bytes, spares):
    """Buffers are reused by the next worker: the last job's input and output are gone before it runs.

    The 'snoop' worker acts as one that broke out of wasm3 and reads its whole shared buffer."""
    secret = b"S3cret-input-of-another-client" * 7000  # about 200 KB, echoed (reversed) into stdout too
    with Sandbox(workers=1, spares=spares) as sb:
        for _ in range(2 * (1 + spares)):  # every buffer holds someone's input and output
            r = sb.run(hello_bytes, secret)
            assert r.status == "ok" and r.stdout == secret[::-1]
        for _ in range(1 + spares):  # and every buffer's next worker snoops
            r = sb._selftest("snoop", hello_bytes)
            assert r.message == "snooped: 0 bytes not of this job", r.message


@pytest.mark.skipif(not pyphase._sandbox.landlock_abi(), reason="this kernel has no Landlock (see test_wasi_fs)")
def test_landlock_bounds_a_worker_that_escaped_its_engine(hello_bytes, tmp_path):
    """A worker that broke out of wasm3 or wasmtime and calls openat2 itself, without RESOLVE_BENEATH: Landlock
    refuses an absolute path and the parent of the job's directory (EACCES), and still allows a file inside it.
    Without directories, not even a descriptor can be made."""
    from pyphase import Preopen, engines

    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "inside.txt").write_text("in")
    dirs = [Preopen(str(tmp_path / "root"), "/", readonly=True)]
    with Sandbox(workers=1) as sb:
        for engine in engines.available():
            r = sb._selftest("open_outside", hello_bytes, dirs=dirs, engine=engine)
            assert r.message == f"absolute {errno.EACCES} parent {errno.EACCES} inside 0", engine
            r = sb._selftest("open_outside", hello_bytes, engine=engine)  # no descriptor to spare (RLIMIT_NOFILE 4)
            assert r.message == f"absolute {errno.EMFILE} parent {errno.EMFILE} inside {errno.EMFILE}", engine
