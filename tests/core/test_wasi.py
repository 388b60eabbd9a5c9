"""Each WASI call the host implements, exercised from a real C program (tests/programs/wasi_probe.c)."""

from __future__ import annotations

import pytest

import pyphase
from pyphase import _core


def probe(data: bytes, *args: str, input: bytes = b"", **kw) -> pyphase.Result:
    return pyphase.run(data, input, args=list(args), **kw)


def test_hello_reverses(hello_bytes):
    r = pyphase.run(hello_bytes, b"Hello, World")
    assert (r.status, r.exit_code, r.stdout, r.stderr) == ("ok", 0, b"dlroW ,olleH", b"")


@pytest.mark.parametrize("flavour", ["default", "mvp"])
def test_args_reach_argv(flavour, probe_bytes, probe_mvp_bytes):
    data = probe_bytes if flavour == "default" else probe_mvp_bytes
    r = probe(data, "args", "two words", "ünï", program_name="prog.wasm")
    assert r.stdout == "0:prog.wasm\n1:args\n2:two words\n3:ünï\n".encode()


def test_environ(probe_bytes):
    r = probe(probe_bytes, "env", env={"A": "1", "EMPTY": "", "UTF": "é"})
    assert sorted(r.stdout.decode().splitlines()) == ["A=1", "EMPTY=", "UTF=é"]


def test_no_environment_by_default(probe_bytes):
    assert probe(probe_bytes, "env").stdout == b""


@pytest.mark.parametrize("size", [0, 1, 65536, 5 * 1024 * 1024 + 7])
def test_stdin_round_trips(probe_bytes, size):
    data = (
        bytes((i * 7 + 3) % 251 for i in range(size))
        if size < 70000
        else (b"0123456789abcdef" * (size // 16 + 1))[:size]
    )
    r = probe(probe_bytes, "cat", input=data, limits=pyphase.Limits(output_bytes=16 << 20))
    assert r.status == "ok"
    assert r.stdout == data
    assert r.stderr == f"{size}\n".encode()


def test_stdout_and_stderr_are_separate(probe_bytes):
    r = probe(probe_bytes, "stderr")
    assert (r.stdout, r.stderr) == (b"to stdout", b"to stderr")


def test_proc_exit_code_and_output_kept(probe_bytes):
    r = probe(probe_bytes, "exit", "42")
    assert (r.status, r.exit_code, r.stdout) == ("ok", 42, b"before exit")


def test_main_return_value(probe_bytes):
    assert probe(probe_bytes, "return", "7").exit_code == 7


def test_clocks_and_random(probe_bytes):
    lines = dict(line.split(" ", 1) for line in probe(probe_bytes, "clock").stdout.decode().splitlines())
    assert float(lines["realtime"]) > 1.7e9  # a real wall clock, not zero
    assert int(lines["res"]) > 0
    assert len(lines["random"]) == 32


def test_poll_oneoff_sleep_waits(probe_bytes):
    assert probe(probe_bytes, "sleep").stdout == b"slept enough\n"


def test_poll_oneoff_fd_events(probe_bytes):
    assert probe(probe_bytes, "poll", input=b"abc").stdout == b"poll 0 n=2 ud=7,9 nbytes=3\n"


def test_sched_yield(probe_bytes):
    assert probe(probe_bytes, "yield").stdout == b"sched_yield 0\n"


def test_no_files_are_reachable(probe_bytes):
    # no preopens: fd_prestat_get(3) is EBADF (8) and fopen fails
    assert probe(probe_bytes, "files").stdout == b"prestat 8 fopen failed\n"


def test_fdstat_seek_close(probe_bytes):
    r = probe(probe_bytes, "fdstat")
    assert (r.stdout, r.stderr) == (b"fdstat0 0 fdstat9 8 lseek -1 close9 8", b"close1 0 write1 8 close1 8")


def test_bad_guest_pointer_is_efault_not_a_crash(probe_bytes):
    assert probe(probe_bytes, "badptr").stdout == b"fd_write with a bad pointer: 21"


def test_wasi_table_is_consistent():
    table = _core.wasi_functions()
    names = [name for name, _, _ in table]
    assert len(names) == len(set(names)) == 46  # all of preview1
    implemented = {name for name, _, impl in table if impl}
    assert {"fd_read", "fd_write", "proc_exit", "random_get", "clock_time_get", "poll_oneoff"} <= implemented
    assert {"path_open", "fd_readdir", "path_rename", "fd_renumber"} <= implemented
    assert {name for name, _, impl in table if not impl} == {
        "proc_raise",
        "sock_accept",
        "sock_recv",
        "sock_send",
        "sock_shutdown",
    }


def test_import_outside_wasi_is_refused_naming_it(wat):
    data = wat('(module (import "env" "launch_missiles" (func)) (func (export "_start") call 0))')
    with pytest.raises(pyphase.InvalidModule, match="env.launch_missiles"):
        pyphase.Module(data)


def test_unknown_wasi_function_is_refused(wat):
    data = wat(
        '(module (import "wasi_snapshot_preview1" "thread_spawn" (func (param i32) (result i32)))'
        ' (memory 1) (func (export "_start")))'
    )
    with pytest.raises(pyphase.InvalidModule, match="thread_spawn"):
        pyphase.Module(data)


def test_wrong_signature_is_refused(wat):
    data = wat(
        '(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32) (result i32)))'
        ' (memory 1) (func (export "_start")))'
    )
    with pytest.raises(pyphase.InvalidModule, match="signature"):
        pyphase.Module(data)


def test_gil_is_released_while_a_job_runs(probe_bytes):
    import threading
    import time

    module = pyphase.Module(probe_bytes)
    done = threading.Event()
    ticks = 0

    def job() -> None:
        pyphase.run(module, args=["spin"], limits=pyphase.Limits(timeout_ms=400))
        done.set()

    thread = threading.Thread(target=job)
    thread.start()
    deadline = time.monotonic() + 30
    while not done.is_set() and time.monotonic() < deadline:
        ticks += 1
    thread.join()
    assert done.is_set()
    assert ticks > 10_000  # Python kept running beside the job


def test_core_crypto_matches_pynacl_and_hashlib():
    import hashlib

    from pyphase import Identity

    assert _core.sha256(b"abc") == hashlib.sha256(b"abc").digest()
    ident = Identity.generate()
    sig = ident.signing_key.sign(b"msg").signature
    assert _core.ed25519_verify(sig, b"msg", ident.public_key)
    assert not _core.ed25519_verify(sig, b"msg!", ident.public_key)
    assert not _core.ed25519_verify(sig[:10], b"msg", ident.public_key)
