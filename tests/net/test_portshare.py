"""One port number: a DHT session's port P shared with phase/1's ZeroMQ listener (TCP P) and the record query
(UDP P) in one process, on a private loopback DHT. The DHT keeps working through the shared UDP socket, and
neither side sees the other's datagrams."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dht_support import dht_host, prime, private_dht  # noqa: E402

from pyphase.identity import Identity
from pyphase.net import dht, portshare, records


def _value(host: str, port: int) -> bytes:
    return records.encode_value([f"{host}:{port}"], ["wasm3/test"], {"arch": "x86_64"})


def _nothing_queued(sockets: list[socket.socket]) -> bool:
    for sock in sockets:
        try:
            sock.recv(2048, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            continue
        return False
    return True


def test_dht_phase1_and_record_query_share_one_port() -> None:
    ident = Identity.generate()
    with private_dht(6) as others:
        host = dht_host()
        node = dht.Dht(f"{host}:0", [(others[0].listen_host, others[0].port)])
        ctx = zmq.Context()
        router = ctx.socket(zmq.ROUTER)
        sockets: list[socket.socket] = []
        try:
            port = node.port
            with socket.socket() as s:  # libtorrent's TCP listener holds P until it is released
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                with pytest.raises(OSError):
                    s.bind((host, port))
                    s.listen()
            sockets = node.share_port()
            assert sockets and all(s.getsockname() == (host, port) for s in sockets)
            listening = []
            for s in portshare.process_sockets(port, socket.SOCK_STREAM):
                with s:
                    listening.append(s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
            assert listening == [0]  # libtorrent's acceptor is still there, no longer listening
            # phase/1 binds TCP P and serves on it
            router.bind(f"tcp://{host}:{port}")
            dealer = ctx.socket(zmq.DEALER)
            dealer.connect(f"tcp://{host}:{port}")
            dealer.send(b"hello")
            assert router.poll(5000) and router.recv_multipart()[1] == b"hello"
            dealer.close(linger=0)
            # the DHT still works through the shared UDP socket, both ways
            prime([node, *others])
            seq, stored = node.put_record(ident, _value(host, port))
            assert seq == 1 and stored >= 1
            assert others[4].get_record(ident.public_key).addresses == (f"{host}:{port}",)
            other = Identity.generate()
            others[3].put_record(other, _value("127.0.0.1", 1))
            assert node.get_record(other.public_key).peer_id == other.peer_id
            # ... and none of its KRPC datagrams reached the record query's socket
            assert _nothing_queued(sockets)
            # junk at P: too short for the steering program to read (libtorrent's, which drops it), "phas" but no
            # query (ours, which drops it); the DHT goes on
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as junk:
                for datagram in (b"", b"p", b"ph", b"pha", b"phas", b"phase/1 record?\n", b"d1:xe" * 300):
                    junk.sendto(datagram, (host, port))
            time.sleep(0.2)
            probe = dht.RecordResponder(host, port, sockets)
            junk_value = _value(host, port)
            probe.set_record(
                dht.record_answer(ident.public_key, junk_value, 1, records.sign_value(ident, junk_value, 1))
            )
            for sock in sockets:
                probe.on_readable(sock)  # none of it is a padded query: nothing answered
            assert probe.answered == 0 and _nothing_queued(sockets)
            third = Identity.generate()
            others[1].put_record(third, _value("127.0.0.1", 2))
            assert node.get_record(third.public_key).peer_id == third.peer_id
            # the record query, on UDP P, is answered by ours; libtorrent never sees it
            responder = dht.RecordResponder(host, port, sockets)
            value = _value(host, port)
            responder.set_record(dht.record_answer(ident.public_key, value, 1, records.sign_value(ident, value, 1)))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.settimeout(2.0)
                client.sendto(dht.QUERY_MAGIC + bytes(dht.QUERY_BYTES - len(dht.QUERY_MAGIC)), (host, port))
                deadline = time.monotonic() + 2
                while _nothing_queued(sockets) and time.monotonic() < deadline:
                    time.sleep(0.01)
                responder.on_readable()
                answer, source = client.recvfrom(2048)
            assert source == (host, port)  # from P: a client's NAT lets it in
            assert dht.parse_answer(answer).peer_id == ident.peer_id
            assert responder.answered == 1
        finally:
            router.close(linger=0)
            ctx.term()
            for sock in sockets:
                sock.close()
            node.close()


def test_release_tcp_touches_only_listening_sockets() -> None:
    """A connected socket on the port (a phase/1 connection, say) is left alone; a listener is shut down."""
    host = dht_host()
    with socket.socket() as listener:
        listener.bind((host, 0))
        listener.listen()
        port = listener.getsockname()[1]
        with socket.create_connection((host, port)) as client:
            accepted, _ = listener.accept()
            with accepted:
                assert portshare.release_tcp(port) == 1
                accepted.sendall(b"x")
                assert client.recv(1) == b"x"
                with pytest.raises(OSError):
                    listener.accept()


def test_sharing_without_a_dht_socket_is_refused() -> None:
    with socket.socket() as s:
        s.bind((dht_host(), 0))
        with pytest.raises(OSError, match="no UDP socket"):
            portshare.record_query_sockets(s.getsockname()[1])
