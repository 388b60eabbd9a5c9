"""Hostile input never harms a node: garbage frames, oversized messages, wrong versions, out-of-order
messages, clients without CURVE, raw TCP noise. After each, the node still serves a real client."""

from __future__ import annotations

import os
import socket

import msgpack
import pytest
import zmq
import zmq.utils.z85
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyphase import Client, Identity
from pyphase.net.addresses import parse_address
from pyphase.manifest import make_manifest
from pyphase.net import wire

SMALL = {"PLASMD_LIMITS_MODULE": "256KiB", "PLASMD_LIMITS_INPUT": "64KiB"}


@pytest.fixture(scope="module")
def node(tmp_path_factory, hello_bytes):
    from net_support import NodeProc, loopback_host

    n = NodeProc(tmp_path_factory.mktemp("robust") / "node", loopback_host(), sandbox=False, env=SMALL).start()
    yield n
    n.stop()


class Raw:
    """A hand-driven CURVE DEALER: sends whatever frames a test gives it."""

    def __init__(self, address: str, curve: bool = True, routing_id: bytes | None = None, source: str = "") -> None:
        import nacl.bindings

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        if routing_id is not None:
            self.sock.setsockopt(zmq.ROUTING_ID, routing_id)
        _, key, host, port = parse_address(address)
        if curve:
            pub, sec = Identity.generate().curve_keypair()
            self.sock.curve_publickey = zmq.utils.z85.encode(pub)
            self.sock.curve_secretkey = zmq.utils.z85.encode(sec)
            self.sock.curve_serverkey = zmq.utils.z85.encode(nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(key))
        self.sock.connect(f"tcp://{source}:0;{host}:{port}" if source else f"tcp://{host}:{port}")

    def send(self, frames) -> None:
        self.sock.send_multipart(frames)

    def recv(self, timeout_ms: int = 5000):
        if not self.sock.poll(timeout_ms):
            return None
        return wire.decode(self.sock.recv_multipart())

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


def still_serves(node, hello_bytes) -> None:
    with Client(peers=[node.address]) as client:
        assert client.submit(hello_bytes, input=b"still here").stdout == b"ereh llits"
    assert node.alive


def header(**fields) -> bytes:
    return msgpack.packb({"v": 1, **fields}, use_bin_type=True)


@pytest.mark.parametrize(
    "frames, code",
    [
        ([b"\xc1garbage"], "malformed"),
        ([b""], "malformed"),
        ([msgpack.packb([1, 2, 3])], "malformed"),
        ([msgpack.packb({"v": 2, "t": "caps?"})], "version"),
        ([msgpack.packb({"t": "caps?"})], "version"),
        ([header(t="gossip")], "type"),
        ([header(t="caps?"), b"extra frame"], "malformed"),
        ([header(t="offer", job=b"j1")], "malformed"),
        ([header(t="offer", job=b"j1", manifest={}, extra=1), b""], "malformed"),
        ([header(t="offer", job=b"x" * 33, manifest={}), b""], "malformed"),
        ([header(t="offer", job="text-tag", manifest={}), b""], "malformed"),
        ([msgpack.packb({1: 1, "v": 1, "t": "caps?"})], "malformed"),
        ([header(t="module", job=b"nobody"), b"\0asm"], "unknown_job"),
        ([header(t="blob", job=b"nobody", blob="sha256:" + "0" * 64, offset=0), b"x"], "unknown_job"),
        ([header(t="want", job=b"nobody", blob="sha256:" + "0" * 64, offset=0, size=1)], "unknown_job"),
        ([header(t="blob", job=b"j1", blob="sha256:0", offset=0), b"x"], "malformed"),
        ([header(t="want", job=b"j1", blob="sha256:" + "0" * 64, offset="0", size=1)], "malformed"),
        ([header(t="accept", job=b"j1", module=True)], "unexpected"),
        ([header(t="result", job=b"j1", receipt={}), b"", b""], "unexpected"),
        ([header(t="caps?", pad="x" * (wire.MAX_HEADER_BYTES + 10))], "too_big"),
    ],
)
def test_bad_messages_get_an_error(node, hello_bytes, frames, code):
    raw = Raw(node.address)
    try:
        raw.send(frames)
        reply = raw.recv()
        assert reply is not None and reply.type == "error" and reply["code"] == code, reply
    finally:
        raw.close()
    still_serves(node, hello_bytes)


def test_bad_offers_are_rejected_with_reason(node, hello_bytes):
    raw = Raw(node.address)
    try:
        good = make_manifest(hello_bytes, b"in")
        cases = [
            ({"version": 1}, b"", "bad_manifest"),
            (good, b"not the input", "bad_manifest"),
            ({**good, "limits": {**good["limits"], "memory_bytes": 1 << 32}}, b"in", "limits"),
            ({**good, "requires": {"arch": "sparc"}}, b"in", "arch"),
            (make_manifest(b"\0" * (512 << 10), b"in"), b"in", "module_too_big"),
            (make_manifest(hello_bytes, b"x" * (128 << 10)), b"x" * (128 << 10), "input_too_big"),
        ]
        for i, (manifest, data, reason) in enumerate(cases):
            raw.send(wire.encode("offer", (data,), job=b"t%d" % i, manifest=manifest))
            reply = raw.recv()
            assert reply is not None and reply.type == "reject" and reply["reason"] == reason, (reason, reply)
        # out of order: a module whose bytes do not match what was offered
        raw.send(wire.encode("offer", (b"in",), job=b"m1", manifest=make_manifest(b"\0asm\1\0\0\0xx", b"in")))
        accept = raw.recv()
        assert accept.type == "accept" and accept["module"] is True
        raw.send(wire.encode("module", (b"other bytes",), job=b"m1"))
        reply = raw.recv()
        assert reply.type == "reject" and reply["reason"] == "module_mismatch"
        # the same tag twice while the first is waiting for its module
        manifest = make_manifest(os.urandom(64), b"in")
        raw.send(wire.encode("offer", (b"in",), job=b"dup", manifest=manifest))
        assert raw.recv().type == "accept"
        raw.send(wire.encode("offer", (b"in",), job=b"dup", manifest=manifest))
        reply = raw.recv()
        assert reply.type == "reject" and reply["reason"] == "duplicate"
    finally:
        raw.close()
    still_serves(node, hello_bytes)


def test_oversized_message_drops_only_that_connection(node, hello_bytes):
    raw = Raw(node.address)
    try:
        raw.send([header(t="caps?")])
        assert raw.recv().type == "caps"
        raw.send([header(t="module", job=b"big"), b"\0" * (2 << 20)])  # above the node's ZMQ_MAXMSGSIZE
        assert raw.recv(timeout_ms=1000) is None
    finally:
        raw.close()
    still_serves(node, hello_bytes)


def test_client_without_curve_gets_nothing(node, hello_bytes):
    raw = Raw(node.address, curve=False)
    try:
        raw.send([header(t="caps?")])
        assert raw.recv(timeout_ms=1000) is None
    finally:
        raw.close()
    still_serves(node, hello_bytes)


def test_client_with_wrong_server_key_gets_nothing(node, hello_bytes):
    impostor = Identity.generate().peer_id
    address = impostor + "@" + node.address.split("@", 1)[1]
    with Client(peers=[address], connect_timeout=1.0) as client:
        with pytest.raises(Exception, match="CURVE|reachable|timed out"):
            client.submit(hello_bytes, retries=0, timeout=2)
    still_serves(node, hello_bytes)


def test_raw_tcp_noise(node, hello_bytes):
    _, _, host, port = parse_address(node.address)
    for payload in (b"GET / HTTP/1.0\r\n\r\n", os.urandom(4096), b"\xff" + b"\0" * 8 + b"\x7f", b""):
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(payload)
    still_serves(node, hello_bytes)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=64), min_size=1, max_size=4))
def test_arbitrary_frames_decode_or_raise_wire_error(frames):
    try:
        wire.decode(frames)
    except wire.WireError as exc:
        assert exc.code in wire.ERROR_CODES


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=32),
            st.dictionaries(
                st.sampled_from(["v", "t", "job", "manifest", "module", "caps"]),
                st.one_of(
                    st.integers(-(2**63), 2**64 - 1),
                    st.text(max_size=8),
                    st.binary(max_size=8),
                    st.booleans(),
                    st.none(),
                ),
                max_size=4,
            ).map(lambda d: msgpack.packb(d, use_bin_type=True)),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_fuzzed_messages_never_harm_the_node(node, frames):
    raw = Raw(node.address)
    try:
        raw.send(frames)
        raw.send([header(t="caps?")])
        # whatever the first message got (an error or nothing), the node answers the next one
        for _ in range(2):
            reply = raw.recv()
            assert reply is not None
            if reply.type == "caps":
                break
        else:
            raise AssertionError("no caps reply")
    finally:
        raw.close()
