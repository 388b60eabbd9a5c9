"""Streamed output over ``phase/1``: chunks as the job writes, verified at the end, bounded, and refused when forged.
Real plasmd processes and a real ``phase submit``, as a user runs them; the local ``phase run`` beside them."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

import wasm_build
from pyphase import Client, Limits
from pyphase.errors import NetworkError, UnverifiedOutput

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def drip_path() -> Path:
    return wasm_build.build_c("drip.c")


@pytest.fixture(scope="module")
def bulk_path() -> Path:
    return wasm_build.build_c("bulk.c")


def _first_line_and_end(cmd: list[str], timeout: float = 60.0) -> tuple[float, float, bytes, int]:
    """Start ``cmd``; when its first stdout line came, when it ended, all of stdout, and its exit status."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    first_at = time.monotonic() - start
    rest = proc.stdout.read()
    code = proc.wait(timeout=timeout)
    return first_at, time.monotonic() - start, first + rest, code


@pytest.mark.parametrize("isolation", [[], ["--no-sandbox"]], ids=["sandbox", "in-process"])
def test_phase_run_prints_output_as_the_module_writes(drip_path, isolation):
    first_at, ended, out, code = _first_line_and_end(
        [sys.executable, "-m", "pyphase", "run", str(drip_path), "--arg", "5", "--arg", "500", *isolation]
    )
    assert code == 0 and out == b"".join(b"tick %d\n" % i for i in range(5))
    assert first_at < ended - 1.5  # 4 pauses of 0.5 s came after it


def test_phase_run_prints_a_large_output_by_default(bulk_path, tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "pyphase", "run", str(bulk_path), "--arg", "1500000"],
        capture_output=True,
        timeout=120,
        env=dict(os.environ, HOME=str(tmp_path)),
    )
    assert p.returncode == 0, p.stderr
    assert len(p.stdout) == 1_500_000
    limited = subprocess.run(
        [sys.executable, "-m", "pyphase", "run", str(bulk_path), "--arg", "1500000", "--output-limit", "1MiB"],
        capture_output=True,
        timeout=120,
    )
    assert limited.returncode == 141 and b"output_limit" in limited.stderr  # an explicit limit still holds


def test_phase_submit_prints_chunks_before_the_job_ends(start_nodes, drip_path):
    (node,) = start_nodes(1)
    first_at, ended, out, code = _first_line_and_end(
        [
            sys.executable,
            "-m",
            "pyphase",
            "submit",
            str(drip_path),
            "--arg",
            "5",
            "--arg",
            "500",
            "--peer",
            node.address,
        ]
    )
    assert code == 0 and out == b"".join(b"tick %d\n" % i for i in range(5))
    assert first_at < ended - 1.5


def test_client_streams_and_the_result_covers_every_byte(start_nodes, drip_path):
    (node,) = start_nodes(1)
    seen: list[tuple[float, int, bytes]] = []
    states: list[str] = []
    start = time.monotonic()
    with Client(peers=[node.address]) as client:
        result = client.submit(
            drip_path.read_bytes(),
            args=["4", "300"],
            on_output=lambda s, d: seen.append((time.monotonic() - start, s, d)),
            on_progress=lambda state, peer, detail: states.append(state),
        )
    ended = time.monotonic() - start
    assert result.status == "ok"
    assert b"".join(d for _, s, d in seen if s == 1) == result.stdout == b"tick 0\ntick 1\ntick 2\ntick 3\n"
    assert b"".join(d for _, s, d in seen if s == 2) == result.stderr == b"tock 1\ntock 3\n"
    assert seen[0][0] < ended - 0.5
    assert states[:2] == ["connecting", "offered"] and "running" in states and states[-1] == "verifying"


def test_node_still_enforces_its_caps_on_streamed_jobs(start_nodes, bulk_path):
    (node,) = start_nodes(1)
    seen: list[bytes] = []
    with Client(peers=[node.address]) as client:
        result = client.submit(bulk_path.read_bytes(), args=["1500000"], on_output=lambda s, d: seen.append(d))
        assert result.status == "output_limit"  # a node's default: 1 MiB of output
        assert b"".join(seen) == result.stdout and len(result.stdout) == Limits().output_bytes
        with pytest.raises(NetworkError, match="exceeds the ceiling"):
            client.submit(bulk_path.read_bytes(), limits=Limits(timeout_ms=0), retries=0)


def test_a_tampered_chunk_is_caught_after_the_output_and_said_loudly(start_nodes, drip_path):
    (node,) = start_nodes(1, misbehave="tamper-chunk")
    seen: list[bytes] = []
    with Client(peers=[node.address]) as client:
        with pytest.raises(UnverifiedOutput, match="UNVERIFIED OUTPUT") as caught:
            client.submit(drip_path.read_bytes(), args=["3", "100"], on_output=lambda s, d: seen.append(d))
    assert seen and caught.value.shown == sum(map(len, seen))
    assert "hash" in str(caught.value)
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyphase",
            "submit",
            str(drip_path),
            "--arg",
            "3",
            "--arg",
            "100",
            "--peer",
            node.address,
        ],
        capture_output=True,
        timeout=60,
    )
    assert p.returncode == 1 and b"UNVERIFIED OUTPUT" in p.stderr


def test_an_overlong_chunk_is_refused_before_anything_is_shown(start_nodes, drip_path):
    (node,) = start_nodes(1, misbehave="overlong-chunk")
    seen: list[bytes] = []
    with Client(peers=[node.address]) as client:
        with pytest.raises(NetworkError, match="bad output stream: sent a chunk of") as caught:
            client.submit(drip_path.read_bytes(), args=["3", "100"], retries=0, on_output=lambda s, d: seen.append(d))
    assert not seen and not isinstance(caught.value, UnverifiedOutput)


def test_chunks_count_against_the_jobs_output_limit(start_nodes, drip_path):
    # an honest node never streams past the limit; one that pads each chunk to 64 KiB does, and is refused
    (node,) = start_nodes(1, misbehave="flood-chunks")
    seen: list[bytes] = []
    with Client(peers=[node.address]) as client:
        with pytest.raises(NetworkError, match="more than the job's output limit of 4 KiB"):
            client.submit(
                drip_path.read_bytes(),
                args=["3", "100"],
                limits=Limits(output_bytes=4096),
                retries=0,
                on_output=lambda s, d: seen.append(d),
            )
    assert not seen


def _submit_on_a_pty(args: list[str]) -> tuple[bytes, int]:
    """``phase submit`` with stderr on a pseudo-terminal: what it drew there, and its exit status."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyphase", "submit", *args], stdout=subprocess.PIPE, stderr=follower, cwd=ROOT
    )
    os.close(follower)
    seen = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        if not ready:
            break
        try:
            data = os.read(leader, 4096)
        except OSError:  # EIO: the other side is closed
            break
        if not data:
            break
        seen += data
    os.close(leader)
    return seen, proc.wait(timeout=60)


def test_submit_shows_progress_on_a_terminal_and_not_in_a_pipe(start_nodes, drip_path):
    (node,) = start_nodes(1)
    args = [str(drip_path), "--arg", "4", "--arg", "400", "--peer", node.address]
    drawn, code = _submit_on_a_pty(args)
    assert code == 0
    assert b"offered to" in drawn and b"running on" in drawn and b"verifying" in drawn
    assert b" s" in drawn.split(b"running on", 1)[1][:40]  # the time so far
    piped = subprocess.run([sys.executable, "-m", "pyphase", "submit", *args], capture_output=True, timeout=60)
    assert piped.returncode == 0 and b"running on" not in piped.stderr and b"\r" not in piped.stderr
    drawn, code = _submit_on_a_pty([*args, "--json"])
    assert code == 0 and b"running on" not in drawn
