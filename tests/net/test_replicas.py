"""Replicas: the job runs deterministically on K distinct peers; the majority output wins and liars are named."""

from __future__ import annotations

import pytest

from pyphase import Client
from pyphase.errors import NoPeers, QuorumError


def test_replicas_agree(start_nodes, hello_bytes):
    nodes = start_nodes(3, sandbox=False)
    with Client(peers=[n.address for n in nodes]) as client:
        result = client.submit(hello_bytes, input=b"abc", replicas=3)
    assert result.stdout == b"cba" and result.dissent == ()
    assert len({r["node"]["peer_id"] for r in result.receipts}) == 3
    assert all(r["stdout"] == result.stdout_hash for r in result.receipts)


def test_one_liar_is_outvoted_and_named(start_nodes, hello_bytes):
    honest = start_nodes(2, sandbox=False)
    (liar,) = start_nodes(1, sandbox=False, misbehave="lie-stdout")
    liar_id = liar.address.split("@")[0]
    with Client(peers=[n.address for n in (*honest, liar)]) as client:
        result = client.submit(hello_bytes, input=b"Hello, World", replicas=3)
    assert result.stdout == b"dlroW ,olleH"
    assert result.dissent == (liar_id,)
    # the liar's receipt is among those reported: validly signed, but for other bytes
    lie = [r for r in result.receipts if r["node"]["peer_id"] == liar_id]
    assert len(lie) == 1 and lie[0]["stdout"] != result.stdout_hash


def test_no_majority_raises_with_every_receipt(start_nodes, hello_bytes):
    (honest,) = start_nodes(1, sandbox=False)
    (liar,) = start_nodes(1, sandbox=False, misbehave="lie-stdout")
    with Client(peers=[honest.address, liar.address]) as client:
        with pytest.raises(QuorumError) as info:
            client.submit(hello_bytes, input=b"abc", replicas=2)
    err = info.value
    assert len(err.receipts) == 2
    assert sorted(p for peers in err.groups.values() for p in peers) == sorted(
        n.address.split("@")[0] for n in (honest, liar)
    )


def test_replicas_need_distinct_peers(start_nodes, hello_bytes):
    (node,) = start_nodes(1, sandbox=False)
    with Client(peers=[node.address]) as client:
        with pytest.raises(NoPeers):
            client.submit(hello_bytes, replicas=2)


def test_replica_on_dead_node_is_replaced(start_nodes, hello_bytes):
    nodes = start_nodes(4, sandbox=False)
    nodes[0].kill()
    with Client(peers=[n.address for n in nodes]) as client:
        result = client.submit(hello_bytes, input=b"xyz", replicas=3)
    assert result.stdout == b"zyx" and len(result.receipts) == 3
    assert nodes[0].address.split("@")[0] not in {r["node"]["peer_id"] for r in result.receipts}


def test_cli_replicas_names_the_liar(start_nodes, hello_bytes, tmp_path):
    import json
    import subprocess
    import sys

    honest = start_nodes(2, sandbox=False)
    (liar,) = start_nodes(1, sandbox=False, misbehave="lie-stdout")
    hello = tmp_path / "hello.wasm"
    hello.write_bytes(hello_bytes)
    peers = [a for n in (*honest, liar) for a in ("--peer", n.address)]
    out = subprocess.run(
        [sys.executable, "-m", "pyphase", "submit", str(hello), "--input", "abc", "--replicas", "3", *peers],
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout == b"cba", out.stderr
    assert liar.address.split("@")[0].encode() in out.stderr
    js = subprocess.run(
        [sys.executable, "-m", "pyphase", "submit", str(hello), "--input", "abc", "--replicas", "3", "--json", *peers],
        capture_output=True,
        timeout=60,
    )
    doc = json.loads(js.stdout)
    assert doc["dissent"] == [liar.address.split("@")[0]] and len(doc["receipts"]) == 3
