"""A client resolving bare peer ids on a private loopback DHT: a record that is not there yet at the first lookup
is found by a later one within the submit's deadline, so is a newer record after an older one naming an address
that is gone, and an id nobody published fails within it, with why."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dht_support import dht_host, endpoints, private_dht  # noqa: E402
from net_support import NodeProc, closed_address, fixed_port_relay  # noqa: E402

from pyphase import Client, Limits
from pyphase.errors import NoPeers
from pyphase.identity import Identity
from pyphase.net import client as client_module
from pyphase.net import records
from pyphase.receipt import machine_arch


def _submit_in_background(peer_id: str, boot: list[str], module: bytes, text: bytes) -> tuple[threading.Thread, list]:
    """A client resolving ``peer_id`` through ``boot`` submits in a thread; its result (or exception) lands in the list."""
    outcome: list[object] = []

    def submit() -> None:
        with Client(peers=[peer_id], dht_bootstrap=boot) as client:
            try:
                outcome.append(client.submit(module, text, limits=Limits(timeout_ms=10_000), timeout=25))
            except Exception as exc:  # the caller's assertion shows it
                outcome.append(exc)

    thread = threading.Thread(target=submit)
    thread.start()
    return thread, outcome


def _joined(thread: threading.Thread, outcome: list) -> Any:
    thread.join(40)
    assert outcome, "submit did not return"
    assert not isinstance(outcome[0], Exception), outcome[0]
    return outcome[0]


def test_a_record_published_after_the_first_lookup_is_found_within_the_deadline(tmp_path: Path, hello_bytes) -> None:
    identity = Identity.generate()
    identity.save(tmp_path / "node" / "identity.key")
    with private_dht(6) as routers:
        boot = [f"{h}:{p}" for h, p in endpoints(routers)]
        started = time.monotonic()
        thread, outcome = _submit_in_background(identity.peer_id, boot[:2], hello_bytes, b"late")
        time.sleep(3.0)  # the client's first lookups run while the node does not exist yet
        node = NodeProc(tmp_path / "node", dht_host(), sandbox=False, workers=1, extra=("--dht-bootstrap", *boot[2:4]))
        try:
            node.start()
            result = _joined(thread, outcome)
            assert result.stdout == b"etal" and result.peer == identity.peer_id
            assert time.monotonic() - started > 3.0
        finally:
            node.stop()


def test_an_unpublished_peer_id_fails_within_the_submit_deadline_saying_why(hello_bytes) -> None:
    unknown = Identity.generate().peer_id
    with private_dht(4) as routers:
        boot = [f"{h}:{p}" for h, p in endpoints(routers)]
        with Client(peers=[unknown], dht_bootstrap=boot[:1]) as client:
            started = time.monotonic()
            with pytest.raises(NoPeers, match=f"within 4 s: {unknown}: no record found"):
                client.submit(hello_bytes, limits=Limits(timeout_ms=1000), timeout=4)
            took = time.monotonic() - started
            # looked up again until the deadline (one lookup on a loopback DHT answers "nothing" within a second)
            assert 3.5 <= took < 12, took
            # still pending: the next submit looks again
            with pytest.raises(NoPeers, match=unknown):
                client.submit(hello_bytes, limits=Limits(timeout_ms=1000), timeout=1)


def test_an_older_record_naming_a_gone_address_is_looked_up_again(tmp_path: Path, hello_bytes, monkeypatch) -> None:
    """A node that moved leaves its older record on DHT nodes for a while. A client that reads it finds nothing
    answering at its single address, looks the id up again and reaches the node where its newer record says."""
    # the node starts only after the client's first lookups, and a loaded machine can take longer than the few
    # seconds after which the same record answering nowhere means a dead node (the next test): not here
    monkeypatch.setattr(client_module, "RESOLVE_DEAD_S", 60.0)
    identity = Identity.generate()
    identity.save(tmp_path / "node" / "identity.key")
    gone = closed_address()
    with private_dht(6) as routers:
        boot = [f"{h}:{p}" for h, p in endpoints(routers)]
        seq, stored = routers[0].put_record(identity, records.encode_value([gone], ["wasm3"], {"arch": machine_arch()}))
        assert stored >= 1
        thread, outcome = _submit_in_background(identity.peer_id, boot[:2], hello_bytes, b"moved")
        time.sleep(2.0)  # the client's first lookups read the older record only
        node = NodeProc(tmp_path / "node", dht_host(), sandbox=False, workers=1, extra=("--dht-bootstrap", *boot[2:4]))
        try:
            node.start()
            assert node.wait_event("dht_record_published", timeout=30)["seq"] > seq
            result = _joined(thread, outcome)
            assert result.stdout == b"devom" and result.peer == identity.peer_id
        finally:
            node.stop()


def test_an_older_record_naming_a_relay_that_lost_the_node_is_looked_up_again(
    tmp_path: Path, hello_bytes, monkeypatch
) -> None:
    """The same for a node behind one relay that now holds it at another: the older record's relay says
    no_reservation, and the client looks again and goes through the relay the newer record names."""
    monkeypatch.setattr(client_module, "RESOLVE_DEAD_S", 60.0)  # as above
    identity = Identity.generate()
    identity.save(tmp_path / "node" / "identity.key")
    host = dht_host()
    old_relay, old_port = fixed_port_relay(tmp_path / "old-relay", host)
    new_relay, new_port = fixed_port_relay(tmp_path / "new-relay", host)
    with private_dht(6) as routers:
        boot = [f"{h}:{p}" for h, p in endpoints(routers)]
        value = records.encode_value([], ["wasm3"], {"arch": machine_arch()}, relays=[f"{host}:{old_port}"])
        seq, stored = routers[0].put_record(identity, value)
        assert stored >= 1
        node = NodeProc(
            tmp_path / "node",
            host,
            sandbox=False,
            workers=1,
            extra=("--via-relay", f"{host}:{new_port}", "--dht-bootstrap", *boot[2:4]),
        )
        try:
            old_relay.start()  # up, and holding no reservation for the node
            new_relay.start()
            thread, outcome = _submit_in_background(identity.peer_id, boot[:2], hello_bytes, b"relayed")
            time.sleep(2.0)  # the client's first lookups read the older record only
            node.start()
            node.wait_event("relay_reserved")
            published = node.wait_event("dht_record_published", timeout=30)
            assert published["seq"] > seq and published["relays"] == [f"{host}:{new_port}"], published
            result = _joined(thread, outcome)
            assert result.stdout == b"deyaler" and result.peer == identity.peer_id
            assert new_relay.wait_event("circuit_opened")["peer"] == identity.peer_id
        finally:
            for proc in (node, new_relay, old_relay):
                proc.stop()


def test_a_record_naming_only_a_dead_address_fails_before_the_deadline_saying_why(hello_bytes) -> None:
    """The same record found again and again, nothing answering where it says: the node is down, not moved. The
    client stops looking after a few lookups over a few seconds (not the whole deadline), naming the address and
    why."""
    identity = Identity.generate()
    dead = closed_address()
    with private_dht(4) as routers:
        boot = [f"{h}:{p}" for h, p in endpoints(routers)]
        assert routers[0].put_record(identity, records.encode_value([dead], ["wasm3"], {"arch": machine_arch()}))[1]
        with Client(peers=[identity.peer_id], dht_bootstrap=boot[1:2]) as client:
            started = time.monotonic()
            with pytest.raises(NoPeers) as failed:
                client.submit(hello_bytes, limits=Limits(timeout_ms=1000), timeout=20)
            took = time.monotonic() - started
            assert identity.peer_id in str(failed.value) and f"{dead}: Connection refused" in str(failed.value)
            # at least RESOLVE_DEAD_S of lookups of the same record, not the 20 s a record not found gets
            assert client_module.RESOLVE_DEAD_S <= took < 15, took
            # still pending: the next submit looks again
            with pytest.raises(NoPeers, match="Connection refused"):
                client.submit(hello_bytes, limits=Limits(timeout_ms=1000), timeout=5)
