"""Reachability by dial-back: is this node reachable from the Internet, and how?

A node asks a few peers (found through the DHT) to dial it back (``phase/1`` ``dial?`` with a nonce and a
port). The peer dials **only the source address the request came from**, at that port, with CURVE to the
requester's own key (so the connection completes only at the node that asked), sends ``dialback`` with the
nonce, and answers ``dial`` (``ok``, the address it saw). The asking node believes only what it hears: the
verdict is from the nonces that arrived at its own listener, never from a peer's word.

* :class:`DialBackService` is the answering side: bounded (one dial in flight per source address, 10 a
  minute per address, 8 in flight and 60 a minute in all, 3 s per dial) so a stranger cannot make a node
  connect anywhere but back to the stranger, nor often.
* :func:`ask_dial_back` is the asking side (blocking; a node runs it in a worker thread) and
  :func:`verdict` turns the answers into ``public`` / ``mapped`` / ``unreachable``.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.utils.monitor
import zmq.utils.z85

from pyphase.identity import Identity, public_key_from_peer_id
from pyphase.net import wire

DIAL_TIMEOUT_S = 3.0
ANSWER_TIMEOUT_S = DIAL_TIMEOUT_S + 3.0
PER_ADDRESS_PER_MINUTE = 10
IN_FLIGHT = 8
PER_MINUTE = 60
NONCE_BYTES = 16


@dataclass(frozen=True)
class DialAnswer:
    """One peer's part in a check: did its dial-back arrive (``heard``, the only thing trusted), what it
    said (``ok``), the address it saw the request come from (``seen``), and why not (``detail``)."""

    peer: str
    heard: bool
    ok: bool
    seen: str
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"peer": self.peer, "heard": self.heard, "ok": self.ok, "seen": self.seen, "detail": self.detail}


class DialBackService:
    """The node's side: admits ``dial?`` requests within the bounds and dials back (blocking, one thread each)."""

    def __init__(self, ctx: zmq.Context[Any]) -> None:
        self.ctx = ctx
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()
        self._recent: dict[str, deque[float]] = {}
        self._all: deque[float] = deque()
        self.dialed = 0

    def admit(self, address: str) -> str | None:
        """None when a dial back to ``address`` may start now (and counts it), else why not."""
        now = time.monotonic()
        with self._lock:
            while self._all and now - self._all[0] > 60:
                self._all.popleft()
            recent = self._recent.setdefault(address, deque())
            while recent and now - recent[0] > 60:
                recent.popleft()
            if address in self._in_flight:
                return "a dial back to this address is already in progress"
            if len(recent) >= PER_ADDRESS_PER_MINUTE:
                return f"at most {PER_ADDRESS_PER_MINUTE} dial backs a minute to one address"
            if len(self._in_flight) >= IN_FLIGHT or len(self._all) >= PER_MINUTE:
                return "too many dial backs at the moment"
            if len(self._recent) > 10_000:
                self._recent = {a: q for a, q in self._recent.items() if q}
                self._recent.setdefault(address, recent)
            self._in_flight.add(address)
            recent.append(now)
            self._all.append(now)
            return None

    def dial(self, host: str, port: int, server_key: str, nonce: bytes) -> tuple[bool, str]:
        """Connect to ``host:port`` with CURVE to ``server_key`` (z85) and deliver ``dialback``; ->
        (the handshake completed, why not). Call only after :meth:`admit` for ``host``."""
        try:
            return _deliver(self.ctx, host, port, server_key, nonce)
        finally:
            with self._lock:
                self._in_flight.discard(host)
                self.dialed += 1


def _deliver(ctx: zmq.Context[Any], host: str, port: int, server_key: str, nonce: bytes) -> tuple[bool, str]:
    public, secret = zmq.curve_keypair()  # a throwaway key: the dial back proves reachability, not identity
    sock = ctx.socket(zmq.DEALER)
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
    try:
        sock.curve_serverkey = server_key.encode("ascii")
        sock.curve_publickey = public
        sock.curve_secretkey = secret
        sock.linger = int(DIAL_TIMEOUT_S * 1000)
        sock.setsockopt(zmq.CONNECT_TIMEOUT, int(DIAL_TIMEOUT_S * 1000))
        sock.setsockopt(zmq.HANDSHAKE_IVL, int(DIAL_TIMEOUT_S * 1000))
        sock.connect(f"tcp://{host}:{port}")
        sock.send_multipart(wire.encode("dialback", nonce=nonce), flags=zmq.NOBLOCK)
        deadline = time.monotonic() + DIAL_TIMEOUT_S
        while (remaining := deadline - time.monotonic()) > 0:
            if not monitor.poll(int(remaining * 1000)):
                break
            event = zmq.utils.monitor.recv_monitor_message(monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                return True, ""
            return False, "the CURVE handshake failed (another key answers there)"
        return False, f"no connection to {host}:{port} within {DIAL_TIMEOUT_S:g} s"
    except zmq.ZMQError as exc:
        return False, f"cannot dial {host}:{port}: {exc}"
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close()


def ask_dial_back(
    ctx: zmq.Context[Any],
    identity: Identity,
    peers: list[tuple[str, str, int]],
    port: int,
    heard: dict[bytes, threading.Event],
) -> list[DialAnswer]:
    """Ask each ``(peer_id, host, port)`` at once to dial this node back at ``port``; ``heard`` is the
    node's registry of nonces its listener received (``dialback``), filled here and emptied after."""
    public, secret = identity.curve_keypair()
    asks = []
    for peer_id, host, peer_port in peers:
        nonce = os.urandom(NONCE_BYTES)
        heard[nonce] = threading.Event()
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.curve_serverkey = zmq.utils.z85.encode(_curve_public(peer_id))
        sock.curve_publickey = zmq.utils.z85.encode(public)
        sock.curve_secretkey = zmq.utils.z85.encode(secret)
        sock.connect(f"tcp://{host}:{peer_port}")
        sock.send_multipart(wire.encode("dial?", nonce=nonce, port=port), flags=zmq.NOBLOCK)
        asks.append((peer_id, nonce, sock))
    answers = []
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    try:
        for peer_id, nonce, sock in asks:
            ok, seen, detail = False, "", "no answer"
            if sock.poll(max(0, int((deadline - time.monotonic()) * 1000))):
                try:
                    msg = wire.decode(sock.recv_multipart())
                    if msg.type == "dial" and msg["nonce"] == nonce:
                        ok, seen, detail = msg["ok"], msg["seen"], msg["detail"]
                    else:
                        detail = f"answered {msg.type!r}"
                except wire.WireError as exc:
                    detail = f"malformed answer: {exc}"
            # the peer answers once its handshake completed; its dialback message may be a moment behind
            got = heard[nonce].wait(1.0 if ok else 0.2)
            answers.append(DialAnswer(peer_id, got, bool(ok), str(seen), str(detail)))
    finally:
        for _, nonce, sock in asks:
            sock.close(linger=0)
            heard.pop(nonce, None)
    return answers


def _curve_public(peer_id: str) -> bytes:
    from nacl.bindings import crypto_sign_ed25519_pk_to_curve25519

    return bytes(crypto_sign_ed25519_pk_to_curve25519(public_key_from_peer_id(peer_id)))


def verdict(answers: list[DialAnswer], local_hosts: set[str], mapped: str | None, port: int) -> dict[str, Any]:
    """``public`` (a dial back to this host's own address arrived), ``mapped`` (it arrived through the
    router's forwarding: UPnP/NAT-PMP, or a forward set by hand), ``unreachable`` (none arrived)."""
    heard = [a for a in answers if a.heard]
    if not heard:
        why = "; ".join(f"{a.peer[:12]}: {a.detail or 'its dial back did not arrive'}" for a in answers)
        return {"verdict": "unreachable", "address": None, "why": why or "no peer to ask"}
    seen = heard[0].seen
    if seen in local_hosts:
        return {"verdict": "public", "address": f"{seen}:{port}", "why": "reachable at its own address"}
    if mapped:
        return {"verdict": "mapped", "address": mapped, "why": "reachable through the router's port mapping"}
    return {"verdict": "mapped", "address": f"{seen}:{port}", "why": "the router forwards the port (not by UPnP)"}
