"""pyphase._core.splice: the C byte copy under every relay hop (csrc/phase_splice.c)."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from pyphase._core import splice


def _pairs() -> tuple[socket.socket, socket.socket, socket.socket, socket.socket]:
    """(outer a, inner a, inner b, outer b): splice(inner a, inner b) joins outer a to outer b."""
    a_out, a_in = socket.socketpair()
    b_in, b_out = socket.socketpair()
    return a_out, a_in, b_in, b_out


def _start(*args: object) -> tuple[threading.Thread, list[tuple[str, int]]]:
    ended: list[tuple[str, int]] = []
    t = threading.Thread(target=lambda: ended.append(splice(*args)), daemon=True)  # type: ignore[arg-type]
    t.start()
    return t, ended


def _read(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, "closed early"
        buf += chunk
    return buf


def test_carries_both_ways_unchanged_and_counts_bytes_until_an_end_closes() -> None:
    a_out, a_in, b_in, b_out = _pairs()
    t, ended = _start(a_in.fileno(), b_in.fileno(), 0, 10.0)
    data = os.urandom(3 << 20)  # many times the 64 KiB buffer: the slow reader stops the copy, nothing is lost
    writer = threading.Thread(target=a_out.sendall, args=(data,))
    writer.start()
    assert _read(b_out, len(data)) == data
    writer.join()
    for i in range(50):  # small messages both ways, as a ZeroMQ exchange
        b_out.sendall(b"answer %d" % i)
        assert _read(a_out, len(b"answer %d" % i)) == b"answer %d" % i
        a_out.sendall(b"q")
        assert _read(b_out, 1) == b"q"
    a_out.close()
    t.join(10)
    assert ended == [("closed", len(data) + 50 + sum(len(b"answer %d" % i) for i in range(50)))]


def test_shutting_a_socket_down_stops_it_from_another_thread() -> None:
    a_out, a_in, b_in, b_out = _pairs()  # the outer ends stay open: nothing ends the copy but the shutdown
    t, ended = _start(a_in.fileno(), b_in.fileno())
    time.sleep(0.1)
    assert t.is_alive()
    a_in.shutdown(socket.SHUT_RDWR)
    t.join(5)
    assert ended == [("closed", 0)]


def test_byte_limit_stops_before_passing_the_excess() -> None:
    a_out, a_in, b_in, b_out = _pairs()
    a_out.sendall(b"x" * 100)
    assert splice(a_in.fileno(), b_in.fileno(), 50, 5.0) == ("bytes", 100)
    b_out.setblocking(False)
    with pytest.raises(BlockingIOError):
        b_out.recv(1)


def test_time_limit() -> None:
    a_out, a_in, b_in, b_out = _pairs()
    started = time.monotonic()
    assert splice(a_in.fileno(), b_in.fileno(), 0, 0.3) == ("time", 0)
    assert 0.25 < time.monotonic() - started < 3


def test_bad_descriptor_is_an_oserror() -> None:
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError):
        splice(r, w)
