"""Relays: a reachable node carries the ``phase/1`` connections of a node that cannot be reached directly.

Three parties, one small handshake, then raw bytes (``docs/NETWORK.md``, "Relays")::

    node ──reserve (signed)──▶ relay          the node keeps this control connection open
    client ──connect PEERID──▶ relay ──circuit TOKEN──▶ node (on the control connection)
    node ──accept TOKEN──▶ relay              a new outbound connection from the node
    relay: "ok" to the client, then copies bytes client ⇄ node; the node copies them ⇄ its own ROUTER

Every connection to the relay starts with one frame: a 2-byte big-endian length and a msgpack map
(at most :data:`MAX_FRAME` bytes) with ``v`` (1) and ``t`` (``reserve``, ``connect`` or ``accept``).
After ``ok`` (client) or ``accept`` (node) the connection carries the client's ZeroMQ stream unchanged: the
CURVE handshake runs end to end between the client and the node, so the relay sees ciphertext only and
can at worst drop it, and the receipt names the node. A reservation is proved by signing the relay's
fresh nonce with the node's Ed25519 key, so nobody can take a node's place at a relay.

:class:`RelayServer` is the relay (``plasmd --relay``), :class:`RelayAgent` the node that reserves
(``plasmd --via-relay``), :func:`open_circuit` the client's side.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import msgpack  # type: ignore[import-untyped]
import nacl.exceptions
import nacl.signing

from pyphase._core import splice
from pyphase.identity import Identity, public_key_from_peer_id
from pyphase.net.addresses import RELAY_PORT_OFFSET, side_port
from pyphase.net.relayed import RelayedSources, client_name

__all__ = [
    "MAX_FRAME",
    "RelayError",
    "RelayLimits",
    "RelayServer",
    "RelayAgent",
    "RelayProbe",
    "open_circuit",
    "probe_relay",
    "rank_relays",
    "relay_listen_address",
]

VERSION = 1
MAX_FRAME = 4096
HANDSHAKE_TIMEOUT_S = 5.0
ACCEPT_TIMEOUT_S = 5.0  # how long a client waits for the node to answer its circuit
PING_S = 15.0
DEAD_S = 45.0
PROOF_CONTEXT = b"phase/1 relay reserve\n"
_packer = msgpack.Packer(use_bin_type=True)


class RelayError(Exception):
    """A relay refused or failed a reservation or a circuit; ``reason`` is the relay's word for it."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def relay_listen_address(listen: str, port: int, configured: str) -> str:
    """``relay_listen``, else the ``phase/1`` listen host at the node's port + ``RELAY_PORT_OFFSET``."""
    if configured:
        return configured
    host = listen.rpartition(":")[0] or "0.0.0.0"
    return f"{host}:{side_port(port, RELAY_PORT_OFFSET)}"


async def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until each has ended, whatever it ended with."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# ---- frames --------------------------------------------------------------------------------------------


def encode_frame(t: str, **fields: Any) -> bytes:
    body: bytes = _packer.pack({"v": VERSION, "t": t, **fields})
    if len(body) > MAX_FRAME:
        raise ValueError(f"relay frame of {len(body)} bytes")
    return struct.pack(">H", len(body)) + body


def decode_frame(body: bytes) -> dict[str, Any]:
    """A frame's body -> its map; ``RelayError('bad_request')`` for anything that is not one."""
    try:
        doc = msgpack.unpackb(body, raw=False, strict_map_key=True, max_str_len=512, max_bin_len=512, max_ext_len=0)
    except Exception:  # msgpack raises many types on hostile input
        raise RelayError("bad_request", "frame is not msgpack") from None
    if not isinstance(doc, dict) or doc.get("v") != VERSION or not isinstance(doc.get("t"), str):
        raise RelayError("bad_request", "frame is not a phase/1 relay message")
    return doc


async def read_frame(reader: asyncio.StreamReader, timeout: float) -> dict[str, Any]:
    """One frame; ``TimeoutError`` when none began within ``timeout`` (nothing consumed then)."""
    async with asyncio.timeout(timeout):
        head = await reader.readexactly(2)
    (size,) = struct.unpack(">H", head)
    if size > MAX_FRAME:
        raise RelayError("bad_request", f"frame of {size} bytes exceeds {MAX_FRAME}")
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
            body = await reader.readexactly(size)
    except TimeoutError:
        raise RelayError("bad_request", "a frame began and never ended") from None
    return decode_frame(body)


async def _sock_exactly(sock: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    buf = b""
    while len(buf) < n:
        chunk = await loop.sock_recv(sock, n - len(buf))
        if not chunk:
            raise asyncio.IncompleteReadError(buf, n)
        buf += chunk
    return buf


async def _sock_read_frame(sock: socket.socket, timeout: float) -> dict[str, Any]:
    """One frame from a non-blocking socket, reading no byte beyond it (what follows belongs to the stream)."""
    async with asyncio.timeout(timeout):
        head = await _sock_exactly(sock, 2)
    (size,) = struct.unpack(">H", head)
    if size > MAX_FRAME:
        raise RelayError("bad_request", f"frame of {size} bytes exceeds {MAX_FRAME}")
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
            body = await _sock_exactly(sock, size)
    except TimeoutError:
        raise RelayError("bad_request", "a frame began and never ended") from None
    return decode_frame(body)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise RelayError("closed", "the relay closed the connection")
        buf += chunk
    return buf


def recv_frame(sock: socket.socket) -> dict[str, Any]:
    """One frame from a blocking socket, reading no byte beyond it (what follows belongs to the stream)."""
    (size,) = struct.unpack(">H", _recv_exactly(sock, 2))
    if size > MAX_FRAME:
        raise RelayError("bad_request", f"frame of {size} bytes exceeds {MAX_FRAME}")
    return decode_frame(_recv_exactly(sock, size))


def proof_message(nonce: bytes, public_key: bytes) -> bytes:
    """What a node signs to reserve: the context, the relay's nonce, the node's own public key."""
    return PROOF_CONTEXT + nonce + public_key


# ---- the client's side ---------------------------------------------------------------------------------


def open_circuit(sock: socket.socket, peer_id: str, timeout: float) -> None:
    """Ask the relay at the other end of ``sock`` (connected, blocking) for a circuit to ``peer_id``; on
    return the socket carries that node's ``phase/1`` stream. Raises :class:`RelayError` with the reason."""
    sock.settimeout(timeout)
    try:
        sock.sendall(encode_frame("connect", peer=peer_id))
        answer = recv_frame(sock)
    except TimeoutError:
        raise RelayError("timeout", f"the relay did not open the circuit within {timeout:g} s") from None
    except OSError as exc:
        raise RelayError("closed", f"the relay connection failed ({exc.strerror or exc})") from None
    sock.settimeout(None)
    if answer.get("t") != "ok":
        raise RelayError(str(answer.get("reason", "refused"))[:64], str(answer.get("detail", ""))[:256])


# ---- the relay -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RelayLimits:
    """What a relay gives (defaults: ``plasmd --help-config``, ``relay_*`` keys)."""

    reservations: int = 64  # nodes holding a reservation, in all
    address_reservations: int = 4  # the same, from one source address
    circuits: int = 128  # circuits open at once, in all
    node_circuits: int = 8  # circuits open at once to one node
    address_circuits: int = 4  # circuits open at once from one client address (to any node)
    circuit_bytes: int = 256 << 20  # both directions together; then the circuit is closed
    circuit_time_s: float = 600.0  # then the circuit is closed (the client's ZeroMQ reconnects)
    pending: int = 64  # connections still in their handshake
    address_pending: int = 8  # the same, from one source address (one slow sender cannot hold them all)
    reservation_s: float = 3600.0  # a reservation not refreshed within this ends (the node refreshes at half)

    def to_wire(self) -> dict[str, int]:
        return {
            "circuits": self.node_circuits,
            "bytes": self.circuit_bytes,
            "seconds": int(self.circuit_time_s),
            "reservation": max(1, int(self.reservation_s)),
        }


@dataclass
class _Reservation:
    peer_id: str
    address: str
    writer: asyncio.StreamWriter
    since: float = field(default_factory=time.monotonic)  # last word from the node
    expires: float = 0.0  # monotonic; a refresh moves it on
    circuits: int = 0


class RelayServer:
    """The relay of ``plasmd --relay``: reservations, circuits, limits, events (``relay_reserved``,
    ``relay_lost``, ``circuit_opened``, ``circuit_closed`` with ``role = "relay"``)."""

    def __init__(self, identity: Identity, log: Callable[..., None], limits: RelayLimits | None = None) -> None:
        self.identity = identity
        self.log = log
        self.limits = limits or RelayLimits()
        self.host = ""
        self.port = 0
        self._listener: socket.socket | None = None
        self._reservations: dict[str, _Reservation] = {}
        self._pending_circuits: dict[bytes, tuple[_Reservation, asyncio.Future[socket.socket]]] = {}
        self._circuits = 0
        self._by_address: dict[str, int] = {}  # circuits open (or waiting) per client address
        self._handshaking = 0
        self._handshaking_from: dict[str, int] = {}  # source address -> connections in their first frame
        self._tasks: set[asyncio.Task[Any]] = set()
        self._spliced: set[socket.socket] = set()  # owned by a splice thread, which closes them
        self.forwarded = 0  # bytes carried, both directions, every circuit

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        family, kind, proto, _, address = (
            await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        )[0]
        listener = socket.socket(family, kind, proto)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(address)
            listener.listen(256)
        except OSError:
            listener.close()
            raise
        listener.setblocking(False)
        self._listener = listener
        self.host, self.port = listener.getsockname()[:2]
        self._spawn(self._accept_loop(listener))

    @property
    def reservations(self) -> int:
        return len(self._reservations)

    def load(self) -> dict[str, int]:
        """What this relay holds against its limits (told in every challenge: nodes rank relays by it)."""
        return {
            "reservations": len(self._reservations),
            "max_reservations": self.limits.reservations,
            "circuits": self._circuits,
            "max_circuits": self.limits.circuits,
        }

    @property
    def circuits(self) -> int:
        return self._circuits

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        for res in list(self._reservations.values()):
            res.writer.close()
        for sock in list(self._spliced):
            _shutdown(sock)  # its splice thread ends and closes it
        await _cancel(list(self._tasks))

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(listener)
            except OSError:
                await asyncio.sleep(0.05)  # out of descriptors, or closing: do not spin
                continue
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as asyncio's transports do
            self._spawn(self._on_connection(conn, str(peer[0])))

    async def _on_connection(self, conn: socket.socket, address: str) -> None:
        """Handshake frames are read from the socket itself, never beyond the frame: what follows is the
        ZeroMQ stream, which the splice thread copies from the kernel's buffer."""
        keep = False
        try:
            from_there = self._handshaking_from.get(address, 0)
            if self._handshaking >= self.limits.pending or from_there >= self.limits.address_pending:
                return
            self._handshaking += 1
            self._handshaking_from[address] = from_there + 1
            try:
                first = await _sock_read_frame(conn, HANDSHAKE_TIMEOUT_S)
            finally:
                self._handshaking -= 1
                left = self._handshaking_from.pop(address) - 1
                if left:
                    self._handshaking_from[address] = left
            kind = first["t"]
            if kind == "reserve":
                keep = True  # its streams own the socket from here
                reader, writer = await asyncio.open_connection(sock=conn, limit=MAX_FRAME * 2)
                try:
                    await self._reserve(first, reader, writer, address)
                except RelayError as exc:
                    writer.write(encode_frame("error", reason=exc.reason, detail=exc.detail[:256]))
                    async with asyncio.timeout(1.0):
                        await writer.drain()
                finally:
                    writer.close()
            elif kind == "connect":
                await self._connect(first, conn, address)
            elif kind == "accept":
                keep = self._accept(first, conn, address)
            else:
                raise RelayError("bad_request", f"unknown message {kind[:32]!r}")
        except RelayError as exc:
            await self._refuse(conn, exc.reason, exc.detail)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except Exception as exc:  # a fault of ours on hostile input: this connection ends, the relay goes on
            self.log("internal_error", where="relay", error=f"{type(exc).__name__}: {exc}")
        finally:
            if not keep and conn not in self._spliced:
                conn.close()

    async def _refuse(self, conn: socket.socket, reason: str, detail: str) -> None:
        if conn in self._spliced or conn.fileno() < 0:
            return
        try:
            async with asyncio.timeout(1.0):
                await asyncio.get_running_loop().sock_sendall(
                    conn, encode_frame("error", reason=reason, detail=detail[:256])
                )
        except (TimeoutError, ConnectionError, OSError):
            pass

    async def _reserve(
        self, first: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str
    ) -> None:
        peer_id = first.get("peer")
        try:
            public_key = public_key_from_peer_id(peer_id if isinstance(peer_id, str) else "")
        except ValueError:
            raise RelayError("bad_request", "reserve needs the node's peer id") from None
        assert isinstance(peer_id, str)
        peer_id = peer_id.lower()
        replacing = self._reservations.get(peer_id)
        if replacing is None:
            if len(self._reservations) >= self.limits.reservations:
                raise RelayError("relay_busy", f"this relay holds {self.limits.reservations} reservations")
            same = sum(1 for r in self._reservations.values() if r.address == address)
            if same >= self.limits.address_reservations:
                raise RelayError("relay_busy", f"{self.limits.address_reservations} reservations from {address}")
        nonce = os.urandom(32)
        if self._handshaking >= self.limits.pending:
            raise RelayError("relay_busy", "too many handshakes under way")
        self._handshaking += 1  # until the proof is in: a flood of half-made reservations is bounded too
        try:
            writer.write(encode_frame("challenge", nonce=nonce, relay=self.identity.peer_id, load=self.load()))
            await writer.drain()
            proof = await read_frame(reader, HANDSHAKE_TIMEOUT_S)
        finally:
            self._handshaking -= 1
        signature = proof.get("sig")
        try:
            nacl.signing.VerifyKey(public_key).verify(proof_message(nonce, public_key), signature)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError):
            raise RelayError("bad_proof", "the reservation is not signed by that peer id's key") from None
        replacing = self._reservations.get(peer_id)  # a restarted node proves its key again: newest wins
        if replacing is not None:
            replacing.writer.close()
        elif len(self._reservations) >= self.limits.reservations:
            raise RelayError("relay_busy", f"this relay holds {self.limits.reservations} reservations")
        ttl = self.limits.reservation_s
        res = _Reservation(peer_id, address, writer, expires=time.monotonic() + ttl)
        self._reservations[peer_id] = res
        writer.write(encode_frame("reserved", limits=self.limits.to_wire()))
        await writer.drain()
        self.log("relay_reserved", role="relay", peer=peer_id, address=address, reservations=len(self._reservations))
        why = "closed"
        ping_at = time.monotonic() + PING_S
        try:
            while True:
                now = time.monotonic()
                if now >= res.expires:  # the slot and its memory go to the next node
                    why = f"expired (not refreshed within {ttl:g} s)"
                    writer.write(encode_frame("error", reason="expired", detail=why))
                    async with asyncio.timeout(1.0):
                        await writer.drain()
                    break
                try:
                    msg = await read_frame(reader, min(ping_at, res.expires) - now)
                except TimeoutError:
                    if time.monotonic() - res.since > DEAD_S:
                        why = f"silent for {DEAD_S:g} s"
                        break
                    if time.monotonic() >= ping_at:
                        ping_at = time.monotonic() + PING_S
                        writer.write(encode_frame("ping"))
                        await writer.drain()
                    continue
                res.since = time.monotonic()
                if msg["t"] == "ping":
                    writer.write(encode_frame("pong"))
                    await writer.drain()
                elif msg["t"] == "refresh":
                    res.expires = res.since + ttl
                    writer.write(encode_frame("reserved", limits=self.limits.to_wire()))
                    await writer.drain()
        except RelayError as exc:
            why = str(exc)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            why = "connection lost"
        finally:
            if self._reservations.get(peer_id) is res:
                del self._reservations[peer_id]
                for token, (owner, fut) in list(self._pending_circuits.items()):
                    if owner is res and not fut.done():
                        fut.set_exception(RelayError("node_lost", "the node's reservation ended"))
                self.log("relay_lost", role="relay", peer=peer_id, address=address, reason=why)

    async def _connect(self, first: dict[str, Any], conn: socket.socket, address: str) -> None:
        peer_id = first.get("peer")
        res = self._reservations.get(peer_id.lower()) if isinstance(peer_id, str) else None
        if res is None:
            raise RelayError("no_reservation", f"no node {str(peer_id)[:64]} holds a reservation at this relay")
        if self._circuits >= self.limits.circuits:
            raise RelayError("relay_busy", f"{self.limits.circuits} circuits open at this relay")
        if res.circuits >= self.limits.node_circuits:
            raise RelayError("node_busy", f"{self.limits.node_circuits} circuits open to that node")
        if self._by_address.get(address, 0) >= self.limits.address_circuits:
            raise RelayError("relay_busy", f"{self.limits.address_circuits} circuits open from {address}")
        self._by_address[address] = self._by_address.get(address, 0) + 1
        token = os.urandom(16)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[socket.socket] = loop.create_future()
        self._pending_circuits[token] = (res, fut)
        self._circuits += 1
        res.circuits += 1
        node_conn: socket.socket | None = None
        opened = time.monotonic()
        why, carried = "closed", 0
        try:
            res.writer.write(encode_frame("circuit", id=token, client=address))
            try:
                async with asyncio.timeout(ACCEPT_TIMEOUT_S):
                    node_conn = await fut
            except TimeoutError:
                raise RelayError(
                    "timeout", f"the node did not take the circuit within {ACCEPT_TIMEOUT_S:g} s"
                ) from None
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                await loop.sock_sendall(conn, encode_frame("ok"))
            self.log("circuit_opened", role="relay", peer=res.peer_id, client=address, circuit=token[:4].hex())
            why, carried = await self._splice(conn, node_conn)
        finally:
            self._pending_circuits.pop(token, None)
            self._circuits -= 1
            res.circuits -= 1
            left = self._by_address.pop(address) - 1
            if left:
                self._by_address[address] = left
            if node_conn is not None:
                if node_conn not in self._spliced:
                    node_conn.close()
                self.forwarded += carried
                self.log(
                    "circuit_closed",
                    role="relay",
                    peer=res.peer_id,
                    circuit=token[:4].hex(),
                    bytes=carried,
                    seconds=round(time.monotonic() - opened, 3),
                    reason=why,
                )

    def _accept(self, first: dict[str, Any], conn: socket.socket, address: str) -> bool:
        token = first.get("circuit")
        entry = self._pending_circuits.get(token) if isinstance(token, bytes) else None
        if entry is None or entry[1].done():
            raise RelayError("unknown_circuit", "no circuit waits for that id")
        res, fut = entry
        if res.address != address:
            raise RelayError("unknown_circuit", "the circuit belongs to a node at another address")
        fut.set_result(conn)
        return True

    async def _splice(self, a: socket.socket, b: socket.socket) -> tuple[str, int]:
        """Join ``a`` and ``b`` in a thread of their own, copying in C without the GIL (an asyncio copy loop
        costs this relay ~0.1 ms per message round trip, bench/relay_bench.py ``--hops``); the thread closes
        both sockets when the circuit ends. Returns why it ended and the bytes carried."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[tuple[str, int]] = loop.create_future()
        limits = self.limits

        def run() -> None:
            end = ("closed", 0)
            try:
                end = join(a, b, limits.circuit_bytes, limits.circuit_time_s)
            finally:
                a.close()
                b.close()
                try:
                    loop.call_soon_threadsafe(_settle, done, end)
                except RuntimeError:
                    pass  # the loop is gone: plasmd is exiting

        def _settle(fut: asyncio.Future[tuple[str, int]], end: tuple[str, int]) -> None:
            self._spliced.difference_update((a, b))
            if not fut.done():
                fut.set_result(end)

        self._spliced.update((a, b))
        threading.Thread(target=run, name="phase-relay-splice", daemon=True).start()
        try:
            why, carried = await asyncio.shield(done)
        except asyncio.CancelledError:
            _shutdown(a)  # the thread ends and closes them
            _shutdown(b)
            raise
        if why == "bytes":
            return f"byte limit ({limits.circuit_bytes} bytes)", carried
        if why == "time":
            return f"time limit ({limits.circuit_time_s:g} s)", carried
        return why, carried


# ---- the node's side -----------------------------------------------------------------------------------


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def join(a: socket.socket, b: socket.socket, max_bytes: int = 0, timeout: float = -1.0) -> tuple[str, int]:
    """Copy ``a`` ⇄ ``b`` in C with the GIL released (:func:`pyphase._core.splice`) until either ends, a limit
    is reached (``max_bytes``, ``timeout`` seconds; 0 / negative: none) or another thread shuts one down;
    then cut both. Returns why it ended (``closed``, ``bytes``, ``time``) and the bytes carried."""
    try:
        return splice(a.fileno(), b.fileno(), max_bytes, timeout)
    except OSError:
        return "closed", 0
    finally:
        _shutdown(a)
        _shutdown(b)


def _refresh_after(limits: Any) -> float:
    """Seconds until a node refreshes its reservation: half the time the relay's ``limits`` give it."""
    ttl = limits.get("reservation") if isinstance(limits, dict) else None
    return max(0.5, ttl / 2) if isinstance(ttl, (int, float)) and ttl > 0 else 1800.0


LOAD_WEIGHT = 4.0  # a relay at its limits ranks as if this many times farther again (see rank_relays)
FAILOVER_AFTER = 2  # failed reservation attempts in a row before a node moves to its next-ranked relay


@dataclass(frozen=True)
class RelayProbe:
    """What a node learned of a candidate relay by starting a reservation: the time from dialling to the
    relay's challenge, and the share of its limits in use it reported; or why it could not reserve there."""

    relay: tuple[str, int]
    rtt_s: float = 0.0
    load: float = 0.0  # 0 idle ... 1 at its limits (reservations or circuits, whichever is fuller)
    error: str = ""

    @property
    def score(self) -> float:
        """Lower is better: the round trip, weighed up by the load (an idle relay 10 ms away ranks ahead of
        a half-full one 4 ms away; one at its limits counts ``1 + LOAD_WEIGHT`` times its round trip)."""
        return self.rtt_s * (1.0 + LOAD_WEIGHT * self.load)

    def to_json(self) -> dict[str, Any]:
        name = f"{self.relay[0]}:{self.relay[1]}"
        if self.error:
            return {"relay": name, "error": self.error}
        return {"relay": name, "rtt_ms": round(self.rtt_s * 1000, 2), "load": round(self.load, 3)}


def _reported_load(load: Any) -> float:
    """A relay's ``load`` map as one fraction in [0, 1] (anything malformed counts as idle: it is the relay's
    word, and the round trip is measured)."""
    if not isinstance(load, dict):
        return 0.0
    fractions = [0.0]
    for used, most in (("reservations", "max_reservations"), ("circuits", "max_circuits")):
        u, m = load.get(used), load.get(most)
        if type(u) is int and type(m) is int and m > 0:
            fractions.append(min(1.0, max(0.0, u / m)))
    return max(fractions)


async def probe_relay(relay: tuple[str, int], peer_id: str, timeout: float = HANDSHAKE_TIMEOUT_S) -> RelayProbe:
    """Start a reservation at ``relay`` and stop at its challenge (nothing is signed, nothing held): the
    round trip from dialling to the challenge, and the load the relay reports in it."""
    started = time.perf_counter()
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(relay[0], relay[1], limit=MAX_FRAME * 2)
            writer.write(encode_frame("reserve", peer=peer_id))
            answer = await read_frame(reader, timeout)
        rtt = time.perf_counter() - started
    except RelayError as exc:
        return RelayProbe(relay, error=str(exc)[:200])
    except (TimeoutError, asyncio.IncompleteReadError, OSError) as exc:
        return RelayProbe(relay, error=(str(exc) or type(exc).__name__)[:200])
    finally:
        if writer is not None:
            writer.close()
    if answer["t"] != "challenge":
        reason = str(answer.get("reason", answer["t"]))[:64]
        return RelayProbe(relay, error=f"{reason}: {str(answer.get('detail', ''))[:128]}")
    return RelayProbe(relay, rtt, _reported_load(answer.get("load")))


def rank_relays(probes: list[RelayProbe]) -> list[RelayProbe]:
    """Relays that answered, best score first, then those that did not (in the order given)."""
    answered = sorted((p for p in probes if not p.error), key=lambda p: p.score)
    return answered + [p for p in probes if p.error]


class RelayAgent:
    """A node's reservations: one control connection per relay (kept, re-made with back-off when lost), and
    for each circuit the relay announces, a new outbound connection spliced onto the node's own ROUTER at
    ``local``, from the loopback address ``sources`` gives the client the relay names (pyphase.net.relayed).

    Given more candidate relays than it holds, the node ranks them (:func:`probe_relay`: round trip of the
    reservation handshake and reported load), holds the best :attr:`MAX_RELAYS` and keeps the rest as
    spares: a relay that refuses or cannot be reached ``FAILOVER_AFTER`` times in a row is replaced by the
    best spare that answers a fresh probe. Events: ``relay_ranked``, ``relay_reserved``, ``relay_lost``,
    ``relay_failover``, ``circuit_opened``, ``circuit_closed`` (``role = "node"``); ``on_change`` is called
    when the set of relays holding a reservation changes."""

    MAX_CIRCUITS = 64

    MAX_RELAYS = 2

    def __init__(
        self,
        identity: Identity,
        local: tuple[str, int],
        log: Callable[..., None],
        on_change: Callable[[], None] = lambda: None,
        sources: RelayedSources | None = None,
    ) -> None:
        self.identity = identity
        self.local = local
        self.log = log
        self.on_change = on_change
        self.sources = sources
        self.active: dict[tuple[str, int], bool] = {}
        self.spares: list[tuple[str, int]] = []  # ranked candidates not held now, best first
        self._assigned: set[tuple[str, int]] = set()  # relays a _keep task holds or tries
        self._tasks: list[asyncio.Task[None]] = []
        self._circuits = threading.BoundedSemaphore(self.MAX_CIRCUITS)
        self._open: set[socket.socket] = set()
        self._per_relay: dict[tuple[str, int], int] = {}  # circuits open through each relay
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rediscover: Callable[[], Awaitable[list[tuple[str, int]]]] | None = None

    def reserved(self) -> list[str]:
        """``HOST:PORT`` of every relay that holds a reservation for this node now."""
        return [f"{h}:{p}" for (h, p), ok in self.active.items() if ok]

    def begin(
        self,
        relays: Awaitable[list[tuple[str, int]]],
        rediscover: Callable[[], Awaitable[list[tuple[str, int]]]] | None = None,
    ) -> None:
        """Reserve at the best (at most two) of the relays ``relays`` gives, in the background; when a relay
        fails and no spare answers, ``rediscover`` (if given: ``auto``'s DHT lookup) is asked for new ones."""
        self._rediscover = rediscover
        self._loop = asyncio.get_running_loop()
        self._tasks.append(self._loop.create_task(self._start(relays)))

    async def rank(self, candidates: list[tuple[str, int]]) -> list[RelayProbe]:
        """Probe every candidate at once; ranked (see :func:`rank_relays`)."""
        probes = await asyncio.gather(*(probe_relay(c, self.identity.peer_id) for c in dict.fromkeys(candidates)))
        return rank_relays(list(probes))

    async def _start(self, relays: Awaitable[list[tuple[str, int]]]) -> None:
        assert self._loop is not None
        candidates = list(dict.fromkeys(await relays))
        if len(candidates) > self.MAX_RELAYS:
            ranked = await self.rank(candidates)
            self.log("relay_ranked", relays=[p.to_json() for p in ranked])
            candidates = [p.relay for p in ranked]
        self.spares = candidates[self.MAX_RELAYS :]
        for relay in candidates[: self.MAX_RELAYS]:
            self._assigned.add(relay)
            self._tasks.append(self._loop.create_task(self._keep(relay)))

    async def close(self) -> None:
        await _cancel(list(self._tasks))
        with self._lock:
            for sock in list(self._open):
                _shutdown(sock)

    async def _next_relay(self, failed: tuple[str, int], why: str) -> tuple[str, int]:
        """The best spare that answers a probe now, in place of ``failed`` (which becomes the last spare);
        ``failed`` itself when no spare answers. With none left, new candidates are looked for (``rediscover``)."""

        async def free_ranked(candidates: list[tuple[str, int]]) -> list[RelayProbe]:
            taken = self._assigned | {failed}  # another task may have taken one meanwhile
            return await self.rank([c for c in candidates if c not in taken]) if candidates else []

        free = await free_ranked(self.spares)
        if (not free or free[0].error) and self._rediscover is not None:
            found = await free_ranked(list(dict.fromkeys([*await self._rediscover(), *self.spares])))
            if found and not found[0].error:
                self.log("relay_ranked", relays=[p.to_json() for p in found], after=f"{failed[0]}:{failed[1]} failed")
                free = found
        if not free or free[0].error:
            return failed
        best = free[0]
        self._assigned.discard(failed)
        self._assigned.add(best.relay)
        self.spares = [p.relay for p in free[1:] if p.relay != failed] + [failed]
        old, new = f"{failed[0]}:{failed[1]}", f"{best.relay[0]}:{best.relay[1]}"
        self.log("relay_failover", relay=old, to=new, reason=why[:200], probe=best.to_json())
        return best.relay

    async def _keep(self, relay: tuple[str, int]) -> None:
        backoff = 1.0
        failures = 0
        while True:
            try:
                await self._hold(relay)
            except asyncio.CancelledError:
                raise
            except (RelayError, TimeoutError, asyncio.IncompleteReadError, OSError) as exc:
                why = str(exc) or type(exc).__name__
                if self.active.pop(relay, False):  # it held: try again soon
                    backoff, failures = 1.0, 0
                    self.on_change()
                    self.log("relay_lost", role="node", relay=f"{relay[0]}:{relay[1]}", reason=why)
                else:
                    failures += 1
                    if backoff <= 1.0:
                        self.log("warning", message=f"relay {relay[0]}:{relay[1]}: no reservation ({why})")
                    backoff = min(backoff * 2, 30.0)
                    if failures >= FAILOVER_AFTER:
                        replacement = await self._next_relay(relay, why)
                        if replacement != relay:
                            relay, backoff, failures = replacement, 1.0, 0
                            continue
            await asyncio.sleep(backoff)

    async def _hold(self, relay: tuple[str, int]) -> None:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(relay[0], relay[1], limit=MAX_FRAME * 2)
        try:
            writer.write(encode_frame("reserve", peer=self.identity.peer_id))
            challenge = await read_frame(reader, HANDSHAKE_TIMEOUT_S)
            if challenge["t"] == "error":
                raise RelayError(str(challenge.get("reason")), str(challenge.get("detail", "")))
            nonce = challenge.get("nonce")
            if challenge["t"] != "challenge" or not isinstance(nonce, bytes) or len(nonce) != 32:
                raise RelayError("bad_answer", "the relay sent no challenge")
            sig = self.identity.signing_key.sign(proof_message(nonce, self.identity.public_key)).signature
            writer.write(encode_frame("proof", sig=sig))
            answer = await read_frame(reader, HANDSHAKE_TIMEOUT_S)
            if answer["t"] != "reserved":
                raise RelayError(str(answer.get("reason", "refused")), str(answer.get("detail", "")))
            self.active[relay] = True
            name = f"{relay[0]}:{relay[1]}"
            limits = answer.get("limits") if isinstance(answer.get("limits"), dict) else {}
            relay_id = challenge.get("relay")
            relay_peer = relay_id[:64] if isinstance(relay_id, str) else ""
            self.log("relay_reserved", role="node", relay=name, relay_peer=relay_peer, limits=limits)
            self.on_change()
            last = time.monotonic()
            ping_at = last + PING_S
            refresh_at = last + _refresh_after(limits)
            while True:
                try:
                    msg = await read_frame(reader, max(0.0, min(ping_at, refresh_at) - time.monotonic()))
                except TimeoutError:
                    now = time.monotonic()
                    if now - last > DEAD_S:
                        raise RelayError("silent", f"no word from the relay for {DEAD_S:g} s") from None
                    if now >= refresh_at:  # the relay ends a reservation that is not refreshed
                        writer.write(encode_frame("refresh"))
                        refresh_at = now + PING_S  # until the relay's answer says when next
                    if now >= ping_at:
                        writer.write(encode_frame("ping"))
                        ping_at = now + PING_S
                    await writer.drain()
                    continue
                last = time.monotonic()
                if msg["t"] == "circuit" and isinstance(msg.get("id"), bytes):
                    self._take_circuit(relay, msg["id"], client_name(msg.get("client"), f"{relay[0]}:{relay[1]}"))
                elif msg["t"] == "ping":
                    writer.write(encode_frame("pong"))
                    await writer.drain()
                elif msg["t"] == "reserved":
                    refresh_at = last + _refresh_after(msg.get("limits"))
                elif msg["t"] == "error":
                    raise RelayError(str(msg.get("reason", "refused"))[:64], str(msg.get("detail", ""))[:256])
        finally:
            writer.close()

    def _take_circuit(self, relay: tuple[str, int], token: bytes, client: str) -> None:
        with self._lock:  # one relay (a hostile one) cannot take the circuits the others' clients need
            if self._per_relay.get(relay, 0) >= self.MAX_CIRCUITS // self.MAX_RELAYS:
                return  # the relay times the client out
            if not self._circuits.acquire(blocking=False):
                return
            self._per_relay[relay] = self._per_relay.get(relay, 0) + 1
        threading.Thread(
            target=self._circuit, args=(relay, token, client), name="phase-relay-circuit", daemon=True
        ).start()

    def _threadsafe_log(self, event: str, **fields: Any) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(lambda: self.log(event, **fields))

    def _local_connection(self, client: str) -> tuple[socket.socket, bool]:
        """A connection to the node's own ROUTER, from ``client``'s loopback alias where there is one (an
        IPv4 ROUTER: all of 127/8 is this machine's; IPv6 has ``::1`` alone); and whether it came from it."""
        if self.sources is not None and ":" not in self.local[0]:
            alias = self.sources.take(client)
            try:
                return socket.create_connection(self.local, HANDSHAKE_TIMEOUT_S, (alias, 0)), True
            except OSError:
                self.sources.give_back(client)
                raise
        return socket.create_connection(self.local, timeout=HANDSHAKE_TIMEOUT_S), False

    def _circuit(self, relay: tuple[str, int], token: bytes, client: str) -> None:
        remote = local = None
        aliased = False
        opened = time.monotonic()
        carried = 0
        try:
            try:
                remote = socket.create_connection(relay, timeout=HANDSHAKE_TIMEOUT_S)
                remote.sendall(encode_frame("accept", circuit=token))
                local, aliased = self._local_connection(client)
            except OSError as exc:
                self._threadsafe_log("circuit_failed", role="node", relay=f"{relay[0]}:{relay[1]}", error=str(exc))
                return
            for s in (remote, local):
                s.settimeout(None)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._open.update((remote, local))
            self._threadsafe_log(
                "circuit_opened", role="node", relay=f"{relay[0]}:{relay[1]}", circuit=token[:4].hex(), client=client
            )
            carried = join(remote, local)[1]
            self._threadsafe_log(
                "circuit_closed",
                role="node",
                relay=f"{relay[0]}:{relay[1]}",
                circuit=token[:4].hex(),
                bytes=carried,
                seconds=round(time.monotonic() - opened, 3),
            )
        finally:
            ends = [end for end in (remote, local) if end is not None]
            with self._lock:
                self._open.difference_update(ends)
                left = self._per_relay.pop(relay, 1) - 1
                if left:
                    self._per_relay[relay] = left
            for end in ends:
                end.close()
            if aliased and self.sources is not None:
                self.sources.give_back(client)
            self._circuits.release()
