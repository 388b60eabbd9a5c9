"""Bounds against hostile peers of relays, with real plasmd on loopback. A relay bounds the connections still
in their handshake per source address too: one address that opens connections and sends nothing (each may
take 5 s) cannot hold every slot and keep everyone else out (the other address is another 127.x source).
A node bounds the circuits one relay may make it open: a hostile relay that asks for circuit after circuit
cannot take the ones the node's other relay needs."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from net_support import fixed_port_relay, job_through_relay, loopback_host, relayed_node  # noqa: E402

from pyphase.identity import Identity  # noqa: E402
from pyphase.net.relay import RelayAgent, RelayError, RelayLimits, encode_frame, recv_frame  # noqa: E402

PER_ADDRESS = RelayLimits().address_pending


def _closed_at_once(sock: socket.socket) -> bool:
    sock.settimeout(2.0)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_one_address_cannot_hold_every_handshake_slot(tmp_path) -> None:
    relay, port = fixed_port_relay(tmp_path / "relay", loopback_host())
    relay.start()
    relay.wait_event("relay_listening")
    silent: list[socket.socket] = []
    try:
        for _ in range(PER_ADDRESS):
            silent.append(socket.create_connection((relay.host, port), 5, ("127.0.0.1", 0)))
        time.sleep(0.3)  # the relay has accepted them all: each waits for its first frame
        one_more = socket.create_connection((relay.host, port), 5, ("127.0.0.1", 0))
        silent.append(one_more)
        assert _closed_at_once(one_more)  # beyond this address's share: closed, no frame read
        # another address is still served: its request gets the relay's answer
        with socket.create_connection((relay.host, port), 5, ("127.0.0.2", 0)) as other:
            other.sendall(encode_frame("connect", peer=Identity.generate().peer_id))
            assert recv_frame(other)["reason"] == "no_reservation"
        # once its silent connections are gone, the address has its share back
        for sock in silent:
            sock.close()
        deadline = time.monotonic() + 5
        while True:
            with socket.create_connection((relay.host, port), 5, ("127.0.0.1", 0)) as again:
                again.sendall(encode_frame("connect", peer=Identity.generate().peer_id))
                again.settimeout(2.0)
                try:
                    if recv_frame(again)["reason"] == "no_reservation":
                        break
                except (OSError, RelayError):
                    pass
            assert time.monotonic() < deadline, "the address never got its handshake share back"
            time.sleep(0.1)
    finally:
        for sock in silent:
            sock.close()
        relay.stop()


class HostileRelay:
    """Takes a node's reservation (without checking it), then asks for ``asks`` circuits at once and holds
    every connection the node opens for them."""

    def __init__(self, asks: int) -> None:
        self.asks = asks
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        try:
            control, _ = self.listener.accept()
            self.held.append(control)
            recv_frame(control)  # reserve
            control.sendall(encode_frame("challenge", nonce=os.urandom(32), relay=Identity.generate().peer_id))
            recv_frame(control)  # the proof: not even looked at
            control.sendall(encode_frame("reserved", limits={"reservation": 3600}))
            for _ in range(self.asks):
                control.sendall(encode_frame("circuit", id=os.urandom(16), client="203.0.113.9"))
            while True:
                conn, _ = self.listener.accept()
                self.held.append(conn)
        except (OSError, RelayError):
            pass

    @property
    def circuits(self) -> int:
        return len(self.held) - 1

    def close(self) -> None:
        self.listener.close()
        for sock in self.held:
            sock.close()


def test_a_hostile_relay_cannot_take_every_circuit_of_the_node(tmp_path, hello_bytes) -> None:
    hostile = HostileRelay(asks=RelayAgent.MAX_CIRCUITS)
    honest, honest_port = fixed_port_relay(tmp_path / "relay", loopback_host())
    honest.start()
    honest_at = f"{honest.host}:{honest_port}"
    node = relayed_node(tmp_path / "node", f"127.0.0.1:{hostile.port},{honest_at}")
    try:
        node.start()
        node.wait_event_count("relay_reserved", 2)
        share = RelayAgent.MAX_CIRCUITS // RelayAgent.MAX_RELAYS
        deadline = time.monotonic() + 20
        while hostile.circuits < share:
            assert time.monotonic() < deadline, (hostile.circuits, node.log_tail())
            time.sleep(0.1)
        time.sleep(1.0)  # any circuit beyond the share would have been opened by now
        assert hostile.circuits == share
        job_through_relay(node, honest_at, hello_bytes, b"honest")
    finally:
        node.stop()
        honest.stop()
        hostile.close()
