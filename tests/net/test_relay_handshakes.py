"""A relay bounds the connections still in their handshake per source address too: one address that opens
connections and sends nothing (each may take 5 s) cannot hold every slot and keep everyone else out.
Real plasmd on loopback; the other address is another 127.x source."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from net_support import fixed_port_relay, loopback_host  # noqa: E402

from pyphase.identity import Identity  # noqa: E402
from pyphase.net.relay import RelayError, RelayLimits, encode_frame, recv_frame  # noqa: E402

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
