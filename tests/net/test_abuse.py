"""Attacks a stranger can make on a node or a client over loopback, each against real processes
(issue 10, "A node that survives the open Internet"). Each test is bounded in time and in connections,
and checks the node still serves an honest client at once afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import msgpack
import pytest
import zmq
import zmq.utils.z85
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyphase import Client, Identity
from pyphase.errors import NetworkError
from pyphase.manifest import make_manifest
from pyphase.net import wire

from test_robustness import Raw, header


def _predicted_routing_ids(count: int) -> list[bytes]:
    """The ids libzmq 4.3.5 gives anonymous peers of the n-th socket a process makes, when nothing seeded
    ``rand()``: ``00`` + a 32-bit counter started from two ``rand()`` calls (src/random.cpp). Computed in a
    fresh process, so it is the same sequence an attacker computes on his own machine."""
    code = ("import ctypes; libc = ctypes.CDLL(None)\n"
            f"for _ in range({count}):\n"
            "    lo = libc.rand(); hi = libc.rand(); print('00%08x' % (((hi << 31) | lo) & 0xffffffff))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return [bytes.fromhex(line) for line in out.split()]


def test_claimed_routing_id_cannot_crash_the_node(start_nodes, hello_bytes):
    """Attack 1: peers claim the routing ids libzmq would hand the next anonymous connections; then an
    honest (anonymous) client connects. libzmq asserts on the duplicate unless the node's counter is secret."""
    node = start_nodes(1, sandbox=False)[0]
    claims = []
    try:
        for rid in _predicted_routing_ids(6):
            raw = Raw(node.address, routing_id=rid)
            raw.send([header(t="caps?")])
            assert raw.recv() is not None and node.alive
            claims.append(raw)
        for _ in range(3):      # several anonymous connections walk the counter over the claimed ids
            with Client(peers=[node.address]) as client:
                assert client.submit(hello_bytes, input=b"abc").stdout == b"cba"
        assert node.alive, node.log_tail()
    finally:
        for raw in claims:
            raw.close()


# ---- a hostile peer beside an honest one: the client moves on ---------------------------------------

class HostilePeer:
    """A real CURVE ROUTER with its own identity that answers every message with ``answer(tag)`` frames."""

    def __init__(self) -> None:
        self.identity = Identity.generate()
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        pub, sec = self.identity.curve_keypair()
        self.sock.curve_server = True
        self.sock.curve_publickey = zmq.utils.z85.encode(pub)
        self.sock.curve_secretkey = zmq.utils.z85.encode(sec)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"{self.identity.peer_id}@127.0.0.1:{port}"
        self.answer: object = None
        self.offers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(50):
                continue
            frames = self.sock.recv_multipart()
            rid, head = frames[0], frames[1]
            try:
                msg = msgpack.unpackb(head)
            except Exception:
                continue
            tag = msg.get("job", b"") if isinstance(msg, dict) else b""
            if isinstance(msg, dict) and msg.get("t") == "caps?":      # looks like any node until it is used
                caps = {"peer_id": self.identity.peer_id, "load": {"running": 0, "queued": 0, "workers": 4}}
                self.sock.send_multipart([rid, *wire.encode("caps", caps=caps)])
                continue
            if isinstance(msg, dict) and msg.get("t") == "offer":
                self.offers += 1
            answer = self.answer
            frames_out = answer(tag) if callable(answer) else None
            if frames_out is not None:
                self.sock.send_multipart([rid, *frames_out])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        self.ctx.term()


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    from net_support import NodeProc, loopback_host

    n = NodeProc(tmp_path_factory.mktemp("abuse") / "node", loopback_host(), sandbox=False).start()
    yield n
    n.stop()


@pytest.fixture(scope="module")
def hostile():
    peer = HostilePeer()
    yield peer
    peer.close()


def _hostile_first(client: Client, honest) -> None:
    """Make the client try the hostile peer first: the honest one looks as if it failed a moment ago."""
    client.peers()
    for peer_id, peer in client._peers.items():
        peer.down_until = time.monotonic() + 0.05 if honest.address.startswith(peer_id) else 0.0


def test_mixed_key_header_moves_the_job_on(honest, hostile, hello_bytes):
    """Attack 6: a header mixing a text key and a bytes key it does not know raised TypeError out of submit."""
    hostile.answer = lambda tag: [msgpack.packb({"v": 1, "t": "accept", "job": tag, "module": False,
                                                 "x": 1, b"y": 2}, use_bin_type=True)]
    with Client(peers=[hostile.address, honest.address]) as client:
        for _ in range(3):
            offers = hostile.offers
            _hostile_first(client, honest)
            result = client.submit(hello_bytes, input=b"abc", timeout=5, retries=2)
            assert result.stdout == b"cba" and hostile.offers == offers + 1
            assert "malformed answer" in result.attempts[0][1]


_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(allow_nan=True),
              st.text(max_size=8), st.binary(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.one_of(st.text(max_size=6), st.binary(max_size=6)), inner, max_size=3)),
    max_leaves=8)
_answers = st.tuples(
    st.sampled_from(["accept", "reject", "result", "error", "caps", "offer", "bogus"]),
    st.dictionaries(st.sampled_from(["module", "reason", "detail", "load", "receipt", "code", "caps", "x", "v"]),
                    _values, max_size=4),
    st.dictionaries(st.binary(min_size=1, max_size=4), _values, max_size=2),
    st.lists(st.binary(max_size=16), max_size=3),
    st.booleans())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_answers)
def test_any_hostile_answer_is_a_failed_attempt(honest, hostile, hello_bytes, answer):
    """Whatever a peer answers (types, fields, field types, byte keys, payload frames), submit either
    returns the honest node's verified result or raises NetworkError: never another exception."""
    type_, fields, byte_keys, payloads, echo_tag = answer

    def reply(tag: bytes) -> list[bytes]:
        head = {"v": 1, "t": type_, **fields, **byte_keys}
        if echo_tag:
            head["job"] = tag
        return [msgpack.packb(head, use_bin_type=True), *payloads]

    hostile.answer = reply
    with Client(peers=[hostile.address, honest.address]) as client:
        _hostile_first(client, honest)
        try:
            result = client.submit(hello_bytes, input=b"abc", timeout=3, retries=2)
        except NetworkError:
            return
        assert result.stdout == b"cba" and result.peer == honest.address.split("@")[0]


# ---- logs ------------------------------------------------------------------------------------------

def test_malformed_headers_do_not_amplify_the_log(honest, hello_bytes):
    """Attack 5: headers with 4 x 60 KiB of zeros in ``v`` were each logged in full (49 MB became 246 MB)."""
    before = honest.log_path.stat().st_size
    raw = Raw(honest.address)
    sent = 0
    try:
        big = msgpack.packb({"v": [b"\0" * (60 << 10)] * 4, "t": "caps?"}, use_bin_type=True)
        for _ in range(200):
            raw.send([big])
            sent += len(big)
        replies = 0
        while replies < 200 and raw.recv(timeout_ms=5000) is not None:
            replies += 1
    finally:
        raw.close()
    with Client(peers=[honest.address]) as client:      # the node still answers
        assert client.submit(hello_bytes, input=b"ok").stdout == b"ko"
    grown = honest.log_path.stat().st_size - before
    assert grown < sent / 100, f"{sent} bytes sent grew the log by {grown}"
