"""Records and relays with real processes on loopback and a private DHT: a client tries every way in that a
node's record names (an unreachable address first, a good one second; a relay that refuses, then one that
holds the node), and a node that loses its last relay stops naming it."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dht_support import dht_host, endpoints, private_dht  # noqa: E402
from net_support import NodeProc, closed_address, fixed_port_relay, loopback_host  # noqa: E402

from pyphase import Client
from pyphase.errors import NoPeers
from pyphase.identity import Identity
from pyphase.net import dht, records


def _relay_port(node: NodeProc) -> int:
    return int(node.wait_event("relay_listening")["address"].rsplit(":", 1)[1])


@pytest.fixture
def blackhole() -> Iterator[str]:
    """HOST:PORT whose connections never complete: a listener that accepts nothing, its backlog full."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    held = []
    for _ in range(3):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(listener.getsockname())
        except BlockingIOError:
            pass
        held.append(s)
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    for s in held:
        s.close()
    listener.close()


def _publish(routers: list[dht.Dht], who: Identity, addresses: list[str], relays: list[str] = ()) -> None:
    value = records.encode_value(addresses, ["wasm3"], {"arch": "x86_64"}, relays=list(relays))
    assert routers[0].put_record(who, value)[1] >= 1


def test_client_tries_every_way_a_record_names(tmp_path, blackhole, hello_bytes) -> None:
    procs: list[NodeProc] = []
    with private_dht(4) as routers:
        boot = [f"{h}:{p}" for h, p in endpoints(routers)]
        try:
            relay = NodeProc(tmp_path / "relay", loopback_host(), sandbox=False, workers=1, extra=("--relay",))
            empty_relay = NodeProc(tmp_path / "empty", loopback_host(), sandbox=False, workers=1, extra=("--relay",))
            procs += [relay.start(), empty_relay.start()]
            good = f"{relay.host}:{_relay_port(relay)}"
            refusing = f"{empty_relay.host}:{_relay_port(empty_relay)}"  # holds no reservation for anyone
            direct = NodeProc(tmp_path / "direct", loopback_host(), sandbox=False, workers=1).start()
            relayed = NodeProc(
                tmp_path / "relayed", loopback_host(), sandbox=False, workers=1, extra=("--via-relay", good)
            ).start()
            procs += [direct, relayed]
            relayed.wait_event("relay_reserved")
            # the records, signed with each node's own key: a dead address before the good one; a relay
            # that refuses before the one holding the node; and a stranger no way reaches
            direct_id = Identity.load(tmp_path / "direct" / "identity.key")
            relayed_id = Identity.load(tmp_path / "relayed" / "identity.key")
            stranger = Identity.generate()
            refused = closed_address()
            _publish(routers, direct_id, [blackhole, direct.address.split("@")[1]])
            _publish(routers, relayed_id, [refused], relays=[refusing, good])
            _publish(routers, stranger, [blackhole, refused], relays=[refusing])

            with Client(peers=[direct_id.peer_id], dht_bootstrap=boot[1:2], connect_timeout=2) as client:
                assert client.peers() == [direct.address]
                assert client.submit(hello_bytes, b"second").peer == direct_id.peer_id
            with Client(peers=[relayed_id.peer_id], dht_bootstrap=boot[2:3], connect_timeout=2) as client:
                assert client.peers() == [f"{relayed_id.peer_id}@relay/{good}"]
                assert client.submit(hello_bytes, b"via").peer == relayed_id.peer_id
            with Client(peers=[stranger.peer_id], dht_bootstrap=boot[3:4], connect_timeout=2) as client:
                with pytest.raises(NoPeers) as failed:
                    client.submit(hello_bytes, b"x", retries=0)
            why = str(failed.value)
            # each way named with its own reason
            assert f"{blackhole}: no answer within 2 s" in why, why
            assert f"{refused}: Connection refused" in why, why
            assert f"relay/{refusing}: the relay opened no circuit: no_reservation" in why, why
        finally:
            for p in procs:
                p.stop()


def test_node_that_loses_its_last_relay_stops_naming_it(tmp_path, hello_bytes) -> None:
    with private_dht(4) as routers:
        boot = [f"{h}:{p}" for h, p in endpoints(routers)]
        host = dht_host()
        relay, port = fixed_port_relay(tmp_path / "relay", host)
        node = NodeProc(
            tmp_path / "node",
            dht_host(),
            sandbox=False,
            workers=1,
            extra=("--via-relay", f"{host}:{port}", "--dht-bootstrap", *boot[:2]),
        )
        try:
            relay.start()
            node.start()
            peer_id = node.address.split("@")[0]
            assert node.wait_event("dht_record_published", timeout=30)["relays"] == [f"{host}:{port}"]
            relay.kill()
            node.wait_event("relay_lost")
            emptied = [e for e in node.wait_event_count("dht_record_refreshed", 1, timeout=30) if not e["relays"]]
            assert emptied and emptied[0]["addresses"] == [], node.events("dht_record_refreshed")

            def record() -> records.NodeRecord:
                with dht.client_dht(boot[3:4]) as client_dht:
                    return dht.resolve_peer(client_dht, peer_id)

            deadline = time.monotonic() + 30
            while record().relays and time.monotonic() < deadline:  # the DHT takes the new record in a while
                time.sleep(0.5)
            assert record().candidates == ()
            with Client(peers=[peer_id], dht_bootstrap=boot[3:4], connect_timeout=2) as client:
                with pytest.raises(NoPeers) as failed:
                    client.submit(hello_bytes, b"x", retries=0)
            assert "names no address and no relay" in str(failed.value), failed.value
            # the relay comes back: the node reserves again and its record names it again
            relay.close_pipes()
            relay.start()
            node.wait_event_count("relay_reserved", 2, timeout=30)
            deadline = time.monotonic() + 30
            while not record().relays and time.monotonic() < deadline:
                time.sleep(0.5)
            with Client(peers=[peer_id], dht_bootstrap=boot[3:4]) as client:
                assert client.submit(hello_bytes, b"back").peer == peer_id
        finally:
            node.stop()
            relay.stop()
