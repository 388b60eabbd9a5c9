"""The node knows which key is talking (ZAP); without a working sandbox it stops unless threads were asked for."""

from __future__ import annotations

import pytest

import zmq.utils.z85

from pyphase import Client, Identity
from pyphase.sandbox import executor as executor_mod
from pyphase.errors import SandboxUnavailable
from pyphase.sandbox.executor import EMPTY_MODULE, ThreadExecutor, make_executor


def test_node_records_the_authenticated_client_key(start_nodes, hello_bytes):
    (node,) = start_nodes(1, sandbox=False)
    me = Identity.generate()
    with Client(peers=[node.address], identity=me) as client:
        client.submit(hello_bytes, input=b"who")
    # the CURVE key the node authenticated is the X25519 form of the client's Ed25519 identity
    expected = zmq.utils.z85.encode(me.curve_keypair()[0]).decode()
    assert expected in {e["key"] for e in node.events("peer_connected")}
    assert node.events("offer")[-1]["client"] == expected


def test_broken_sandbox_stops_the_node_instead_of_falling_back(monkeypatch):
    class Broken:
        def __init__(self, *args: object, **kwargs: object) -> None:  # whatever the executor's options are
            raise OSError("no fork server here")

    monkeypatch.setattr(executor_mod, "SandboxExecutor", Broken)
    with pytest.raises(SandboxUnavailable, match="no fork server here.*--no-sandbox"):
        make_executor(1, sandbox=True)


def test_threads_only_when_asked_for():
    warnings: list[str] = []
    ex = make_executor(1, sandbox=False, warn=warnings.append)
    try:
        assert isinstance(ex, ThreadExecutor) and "disabled" in warnings[0]
        result = ex.submit(EMPTY_MODULE, b"").result(timeout=30)
        assert result.status == "ok"
        bad = ex.submit(b"\0asm\1\0\0\0junk", b"").result(timeout=30)
        assert bad.status == "invalid_module"
    finally:
        ex.close()


def test_sandbox_executor_when_it_works():
    warnings: list[str] = []
    ex = make_executor(1, sandbox=True, warn=warnings.append)
    try:
        assert ex.kind == "sandbox" and not warnings
        assert ex.submit(EMPTY_MODULE, b"").result(timeout=30).status == "ok"
    finally:
        ex.close()
