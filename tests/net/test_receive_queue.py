"""The libzmq abort the unbounded receive queue of node and client rules out (pyphase.net.wire.RECEIVE_QUEUE_LIMIT).

libzmq 4.3.5 stops reading a connection whose receive queue is full; if the peer is then gone, the connection
is marked _io_error, and its next heartbeat asserts ``!_io_error`` (stream_engine_base.cpp:310, libzmq #4841):
the whole process aborts. The victim here is a ROUTER with the node's heartbeats that reads nothing (a node
whose event loop is stalled, at its worst); the attacker floods it from a few connections, each closed at once.
"""

from __future__ import annotations

import subprocess
import sys
import time

import zmq

from pyphase.net.wire import RECEIVE_QUEUE_LIMIT

VICTIM = """
import sys, time, zmq
ctx = zmq.Context(io_threads=1)
sock = ctx.socket(zmq.ROUTER)
sock.setsockopt(zmq.RCVHWM, int(sys.argv[1]))
sock.setsockopt(zmq.HEARTBEAT_IVL, 200)
sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
port = sock.bind_to_random_port("tcp://127.0.0.1")
print(port, flush=True)
time.sleep(float(sys.argv[2]))  # reads nothing
print("survived", flush=True)
"""


def _attack(limit: int) -> subprocess.CompletedProcess[str]:
    victim = subprocess.Popen(
        [sys.executable, "-c", VICTIM, str(limit), "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert victim.stdout is not None
        port = int(victim.stdout.readline())
        ctx = zmq.Context()
        try:
            for _ in range(5):
                sock = ctx.socket(zmq.DEALER)
                sock.linger = 2000
                sock.connect(f"tcp://127.0.0.1:{port}")
                for _ in range(3000):
                    sock.send(b"x" * 100)
                time.sleep(0.05)
                sock.close()
        finally:
            ctx.term()
        out, err = victim.communicate(timeout=30)
        return subprocess.CompletedProcess(victim.args, victim.returncode, out, err)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()


def test_with_the_nodes_receive_queue_the_flood_then_close_is_harmless():
    assert RECEIVE_QUEUE_LIMIT == 0
    done = _attack(RECEIVE_QUEUE_LIMIT)
    assert done.returncode == 0 and "survived" in done.stdout, done.stderr


def test_with_a_bounded_receive_queue_the_flood_then_close_aborts_the_process():
    """The attack is real: the same traffic against a queue of 10 messages aborts the process in libzmq. If a
    libzmq release stops asserting there, this fails and says so (the limit could then come back)."""
    done = _attack(10)
    assert done.returncode != 0 and "!_io_error" in done.stderr, (done.returncode, done.stderr)
