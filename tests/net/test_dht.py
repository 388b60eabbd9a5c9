"""The DHT layer in one process: records put and got through a private Mainline DHT, verified with PyNaCl;
tampered and expired records refused; rendezvous and the record query; the test guard itself."""

from __future__ import annotations

import os
import select
import socket
import sys
import threading
import time
from pathlib import Path

import libtorrent
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dht_support import dht_host, endpoints, private_dht  # noqa: E402

from pyphase.errors import RecordError
from pyphase.identity import Identity
from pyphase.net import dht, records


def _value(host: str, port: int, **kw: int) -> bytes:
    return records.encode_value([f"{host}:{port}"], ["wasm3/test"], {"arch": "x86_64", "cores": 2}, **kw)


def test_record_signature_matches_what_libtorrent_stores() -> None:
    """A record signed locally (PyNaCl) and the one libtorrent stores for the same seq are the same bytes."""
    ident = Identity.generate()
    value = _value("127.0.0.1", 7465)
    with private_dht(6) as nodes:
        seq, stored = nodes[0].put_record(ident, value)
        assert seq == 1 and stored >= 3
        got = nodes[5].get_record(ident.public_key)
        assert got.peer_id == ident.peer_id and got.addresses == ("127.0.0.1:7465",) and got.seq == 1
        assert got.caps == {"arch": "x86_64", "cores": 2} and got.engines == ("wasm3/test",)
        record = records.verify_record(ident.public_key, value, 1, records.sign_value(ident, value, 1))
        assert record == got


def test_refresh_raises_seq_and_readers_see_the_new_address() -> None:
    ident = Identity.generate()
    with private_dht(8) as nodes:
        assert nodes[1].put_record(ident, _value("127.0.0.1", 1000))[0] == 1
        assert nodes[2].get_record(ident.public_key).addresses == ("127.0.0.1:1000",)
        # republished from another session (the node restarted elsewhere): libtorrent reads seq 1, stores 2
        assert nodes[6].put_record(ident, _value("127.0.0.1", 2000))[0] == 2
        got = nodes[3].get_record(ident.public_key)
        assert (got.seq, got.addresses) == (2, ("127.0.0.1:2000",))


def test_tampered_expired_and_foreign_records_are_refused() -> None:
    ident, other = Identity.generate(), Identity.generate()
    value = _value("127.0.0.1", 7465)
    sig = records.sign_value(ident, value, 3)
    records.verify_record(ident.public_key, value, 3, sig)
    with pytest.raises(RecordError, match="signature"):
        records.verify_record(ident.public_key, value.replace(b"7465", b"7466"), 3, sig)
    with pytest.raises(RecordError, match="signature"):
        records.verify_record(ident.public_key, value, 4, sig)  # replayed under another seq
    with pytest.raises(RecordError, match="signature"):
        records.verify_record(other.public_key, value, 3, sig)  # not this peer id's
    old = _value("127.0.0.1", 7465, issued=int(time.time()) - 3 * 3600)
    with pytest.raises(RecordError, match="expired"):
        records.verify_record(ident.public_key, old, 1, records.sign_value(ident, old, 1))
    future = _value("127.0.0.1", 7465, issued=int(time.time()) + 3600)
    with pytest.raises(RecordError, match="future"):
        records.verify_record(ident.public_key, future, 1, records.sign_value(ident, future, 1))
    for junk in (b"", b"d1:vi1e", b"i1e", b"d1:vi1e1:vi2ee", b"d" * 50 + b"e" * 50):
        with pytest.raises(RecordError):
            records.verify_record(ident.public_key, junk, 1, records.sign_value(ident, junk, 1))
    with pytest.raises(ValueError, match="1000"):
        records.encode_value(["127.0.0.1:1"], ["x" * 990], {})


def test_an_expired_record_in_the_dht_is_refused_by_readers() -> None:
    ident = Identity.generate()
    old = _value("127.0.0.1", 7465, issued=int(time.time()) - 3 * 3600)
    with private_dht(6) as nodes:
        nodes[0].put_record(ident, old)
        with pytest.raises(RecordError, match="expired"):
            nodes[4].get_record(ident.public_key, timeout=5)
        with pytest.raises(RecordError, match="no record"):
            nodes[4].get_record(Identity.generate().public_key, timeout=3)


def test_bencode_round_trip_and_strictness() -> None:
    doc = {"a": [b"x", 1, -5], "b": {"c": b""}}
    assert records.bdecode(records.bencode(doc)) == {b"a": [b"x", 1, -5], b"b": {b"c": b""}}
    for bad in (b"i01e", b"i-0e", b"d1:bi1e1:ai1ee", b"5:abc", b"l", b"i1ei2e", b"x"):
        with pytest.raises((ValueError, IndexError)):
            records.bdecode(bad)


class _Serving:
    """RecordResponders answered by one thread, as a node's event loop would."""

    def __init__(self) -> None:
        self.responders: list[dht.RecordResponder] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def add(self, ident: Identity, host: str) -> dht.RecordResponder:
        r = dht.RecordResponder(host, 0)
        port = r.sock.getsockname()[1]
        value = _value(host, port)
        r.set_record(dht.record_answer(ident.public_key, value, 0, records.sign_value(ident, value, 0)))
        self.responders.append(r)
        return r

    def _run(self) -> None:
        while not self._stop:
            ready, _, _ = select.select([r.sock for r in self.responders], [], [], 0.05)
            for r in self.responders:
                if r.sock in ready:
                    r.on_readable()

    def __enter__(self) -> _Serving:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join()
        for r in self.responders:
            r.close()


def test_record_query_never_amplifies_and_ignores_junk() -> None:
    ident = Identity.generate()
    host = dht_host()
    with _Serving() as serving:
        responder = serving.add(ident, host)
        port = responder.sock.getsockname()[1]
        assert len(responder.answer) < dht.QUERY_BYTES
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.5)
            for junk in (b"", dht.QUERY_MAGIC, dht.QUERY_MAGIC + b"x" * 100, b"y" * dht.QUERY_BYTES):
                s.sendto(junk, (host, port))
            with pytest.raises(socket.timeout):
                s.recvfrom(4096)  # short or foreign queries: no answer at all
            s.sendto(dht.QUERY_MAGIC + b"\0" * (dht.QUERY_BYTES - len(dht.QUERY_MAGIC)), (host, port))
            answer, _ = s.recvfrom(4096)
        assert len(answer) <= dht.QUERY_BYTES
        assert dht.parse_answer(answer).peer_id == ident.peer_id
        tampered = answer.replace(b"wasm3", b"wasm4")
        with pytest.raises(RecordError):
            dht.parse_answer(tampered)


def test_rendezvous_finds_every_node_and_proves_their_keys() -> None:
    idents = [Identity.generate() for _ in range(4)]
    with private_dht(10) as nodes, _Serving() as serving:
        for ident, node in zip(idents, nodes):
            responder = serving.add(ident, node.listen_host)
            node.announce(dht.rendezvous_hash(), responder.sock.getsockname()[1])
        # a liar's announce: an address that answers nothing is dropped, never trusted
        nodes[8].announce(dht.rendezvous_hash(), 9)
        time.sleep(0.5)
        client = dht.Dht(f"{dht_host()}:0", endpoints(nodes[:1]) + endpoints(nodes[5:6]), read_only=True)
        try:
            assert client.wait_bootstrapped(5)
            found = dht.find_nodes(client, timeout=8, want=5)
        finally:
            client.close()
    assert sorted(r.peer_id for r in found) == sorted(i.peer_id for i in idents)


def test_the_guard_refuses_public_bootstrap_and_default_routers() -> None:
    assert os.environ["PHASE_DHT_ALLOW"].startswith("127.0.0.0/8")
    with pytest.raises(PermissionError, match="bootstrap"):
        dht.Dht(f"{dht_host()}:0", None)  # libtorrent's default routers
    with pytest.raises(PermissionError, match="outside"):
        dht.Dht(f"{dht_host()}:0", [("192.0.2.1", 6881)])
    with pytest.raises(PermissionError, match="listen"):
        dht.Dht("0.0.0.0:0", [("127.0.0.1", 6881)])
    with pytest.raises(PermissionError):  # libtorrent used directly: same rule
        libtorrent.session({"listen_interfaces": "127.0.0.1:0", "enable_dht": True})
    with pytest.raises(PermissionError):
        libtorrent.session({"listen_interfaces": "127.0.0.1:0", "dht_bootstrap_nodes": "198.51.100.1:6881"})
