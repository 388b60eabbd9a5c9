"""Streamed output from the C core and the sandbox: pieces as the module writes them, adding up to the result."""

from __future__ import annotations

import time

import pytest

import pyphase
import wasm_build
from pyphase import Limits, Sandbox
from pyphase.limits import DEFAULT_LIMITS, LOCAL_LIMITS, MAX_MEMORY_BYTES, MAX_OUTPUT_BYTES


@pytest.fixture(scope="module")
def drip() -> bytes:
    return wasm_build.build_c("drip.c").read_bytes()


@pytest.fixture(scope="module")
def bulk() -> bytes:
    return wasm_build.build_c("bulk.c").read_bytes()


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(workers=1) as box:
        yield box


def _runners(sandbox: Sandbox):
    return {"in-process": pyphase.run, "sandbox": sandbox.run}


@pytest.mark.parametrize("where", ["in-process", "sandbox"])
def test_output_arrives_while_the_job_runs(where, sandbox, drip):
    start = time.monotonic()
    seen: list[tuple[float, int, bytes]] = []
    result = _runners(sandbox)[where](
        drip, args=["4", "300"], on_output=lambda s, d: seen.append((time.monotonic() - start, s, d))
    )
    ended = time.monotonic() - start
    assert result.status == "ok", result.message
    assert seen[0][1:] == (1, b"tick 0") or seen[0][1:] == (1, b"tick 0\n")  # libc may write the newline apart
    assert seen[0][0] < ended - 0.6  # the first line came ~0.9 s before the end of a job of 3 pauses of 0.3 s
    assert b"".join(d for _, s, d in seen if s == 1) == result.stdout == b"tick 0\ntick 1\ntick 2\ntick 3\n"
    assert b"".join(d for _, s, d in seen if s == 2) == result.stderr == b"tock 1\ntock 3\n"


@pytest.mark.parametrize("where", ["in-process", "sandbox"])
def test_streamed_pieces_stop_at_the_output_limit(where, sandbox, bulk):
    seen: list[bytes] = []
    result = _runners(sandbox)[where](
        bulk, args=["100000"], limits=Limits(output_bytes=10_000), on_output=lambda s, d: seen.append(d)
    )
    assert result.status == "output_limit"
    assert b"".join(seen) == result.stdout and len(result.stdout) == 10_000


@pytest.mark.parametrize("where", ["in-process", "sandbox"])
def test_a_callback_that_raises_stops_the_output_and_its_error_comes_back(where, sandbox, bulk):
    calls = []

    def reader_gone(stream: int, data: bytes) -> None:
        calls.append(len(data))
        raise BrokenPipeError("reader gone")

    with pytest.raises(BrokenPipeError, match="reader gone"):
        _runners(sandbox)[where](bulk, args=["100000"], on_output=reader_gone)
    assert len(calls) == 1  # nothing more after the failure


def test_a_sink_that_refuses_makes_the_write_fail_as_on_a_closed_pipe(bulk):
    # the C hook itself: a sink answering False refuses the piece; bulk.c exits 3 when fwrite fails (EPIPE)
    from pyphase import _core
    from pyphase.result import Result

    pieces = []
    job = pyphase.runtime.prepare_job(bulk, args=["100000"])
    raw = _core.run(pyphase.Module(bulk)._core, job, None, lambda stream, data: pieces.append(data) and False)
    result = Result.from_core(raw)
    assert (result.status, result.exit_code) == ("ok", 3)
    assert len(pieces) == 1 and result.stdout == b""  # refused bytes are not kept either


def test_local_defaults_are_a_users_and_nodes_keep_strict_ones():
    assert LOCAL_LIMITS.timeout_ms == 0
    assert LOCAL_LIMITS.memory_bytes == MAX_MEMORY_BYTES
    assert LOCAL_LIMITS.output_bytes == MAX_OUTPUT_BYTES
    assert DEFAULT_LIMITS.timeout_ms > 0 and DEFAULT_LIMITS.output_bytes <= 1 << 20


def test_a_large_output_limit_fits_a_sandbox_sized_for_it(bulk):
    job = pyphase.runtime.prepare_job(bulk, args=["1500000"], limits=LOCAL_LIMITS)
    with Sandbox(workers=1, shm_bytes=Sandbox.shm_bytes_for(job)) as box:
        result = box.run_prepared(job)
    assert result.status == "ok" and len(result.stdout) == 1_500_000
