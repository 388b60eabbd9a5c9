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

from pyphase.identity import Identity, public_key_from_peer_id
from pyphase.net.addresses import RELAY_PORT_OFFSET, side_port

__all__ = [
    "MAX_FRAME",
    "RelayError",
    "RelayLimits",
    "RelayServer",
    "RelayAgent",
    "open_circuit",
    "relay_listen_address",
]

VERSION = 1
MAX_FRAME = 4096
HANDSHAKE_TIMEOUT_S = 5.0
ACCEPT_TIMEOUT_S = 5.0  # how long a client waits for the node to answer its circuit
PING_S = 15.0
DEAD_S = 45.0
CHUNK = 64 << 10
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

    def to_wire(self) -> dict[str, int]:
        return {
            "circuits": self.node_circuits,
            "bytes": self.circuit_bytes,
            "seconds": int(self.circuit_time_s),
        }


@dataclass
class _Reservation:
    peer_id: str
    address: str
    writer: asyncio.StreamWriter
    since: float = field(default_factory=time.monotonic)
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
        self._server: asyncio.Server | None = None
        self._reservations: dict[str, _Reservation] = {}
        self._pending_circuits: dict[bytes, tuple[_Reservation, asyncio.Future[Any]]] = {}
        self._circuits = 0
        self._by_address: dict[str, int] = {}  # circuits open (or waiting) per client address
        self._handshaking = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self.forwarded = 0  # bytes carried, both directions, every circuit

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._on_connection, host, port, limit=CHUNK, backlog=256)
        sockname = self._server.sockets[0].getsockname()
        self.host, self.port = sockname[0], sockname[1]

    @property
    def reservations(self) -> int:
        return len(self._reservations)

    @property
    def circuits(self) -> int:
        return self._circuits

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for res in list(self._reservations.values()):
            res.writer.close()
        await _cancel(list(self._tasks))

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        keep = False
        peer = writer.get_extra_info("peername") or ("?", 0)
        address = str(peer[0])
        try:
            if self._handshaking >= self.limits.pending:
                return
            self._handshaking += 1
            try:
                first = await read_frame(reader, HANDSHAKE_TIMEOUT_S)
            finally:
                self._handshaking -= 1
            kind = first["t"]
            if kind == "reserve":
                await self._reserve(first, reader, writer, address)
            elif kind == "connect":
                await self._connect(first, reader, writer, address)
            elif kind == "accept":
                keep = self._accept(first, reader, writer, address)
            else:
                raise RelayError("bad_request", f"unknown message {kind[:32]!r}")
        except RelayError as exc:
            await self._refuse(writer, exc.reason, exc.detail)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except Exception as exc:  # a fault of ours on hostile input: this connection ends, the relay goes on
            self.log("internal_error", where="relay", error=f"{type(exc).__name__}: {exc}")
        finally:
            self._tasks.discard(task)
            if not keep:
                writer.close()

    async def _refuse(self, writer: asyncio.StreamWriter, reason: str, detail: str) -> None:
        try:
            writer.write(encode_frame("error", reason=reason, detail=detail[:256]))
            async with asyncio.timeout(1.0):
                await writer.drain()
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
            writer.write(encode_frame("challenge", nonce=nonce, relay=self.identity.peer_id))
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
        res = _Reservation(peer_id, address, writer)
        self._reservations[peer_id] = res
        writer.write(encode_frame("reserved", limits=self.limits.to_wire()))
        await writer.drain()
        self.log("relay_reserved", role="relay", peer=peer_id, address=address, reservations=len(self._reservations))
        why = "closed"
        try:
            while True:
                try:
                    msg = await read_frame(reader, PING_S)
                except TimeoutError:
                    if time.monotonic() - res.since > DEAD_S:
                        why = f"silent for {DEAD_S:g} s"
                        break
                    writer.write(encode_frame("ping"))
                    await writer.drain()
                    continue
                res.since = time.monotonic()
                if msg["t"] == "ping":
                    writer.write(encode_frame("pong"))
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

    async def _connect(
        self, first: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str
    ) -> None:
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
        fut: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending_circuits[token] = (res, fut)
        self._circuits += 1
        res.circuits += 1
        node_writer: asyncio.StreamWriter | None = None
        opened = time.monotonic()
        carried = [0]
        why = "closed"
        try:
            res.writer.write(encode_frame("circuit", id=token))
            try:
                async with asyncio.timeout(ACCEPT_TIMEOUT_S):
                    node_reader, node_writer = await fut
            except TimeoutError:
                raise RelayError(
                    "timeout", f"the node did not take the circuit within {ACCEPT_TIMEOUT_S:g} s"
                ) from None
            writer.write(encode_frame("ok"))
            self.log("circuit_opened", role="relay", peer=res.peer_id, client=address, circuit=token[:4].hex())
            why = await self._splice(reader, writer, node_reader, node_writer, carried)
        finally:
            self._pending_circuits.pop(token, None)
            self._circuits -= 1
            res.circuits -= 1
            left = self._by_address.pop(address) - 1
            if left:
                self._by_address[address] = left
            if node_writer is not None:
                node_writer.close()
                self.forwarded += carried[0]
                self.log(
                    "circuit_closed",
                    role="relay",
                    peer=res.peer_id,
                    circuit=token[:4].hex(),
                    bytes=carried[0],
                    seconds=round(time.monotonic() - opened, 3),
                    reason=why,
                )

    def _accept(
        self, first: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str
    ) -> bool:
        token = first.get("circuit")
        entry = self._pending_circuits.get(token) if isinstance(token, bytes) else None
        if entry is None or entry[1].done():
            raise RelayError("unknown_circuit", "no circuit waits for that id")
        res, fut = entry
        if res.address != address:
            raise RelayError("unknown_circuit", "the circuit belongs to a node at another address")
        fut.set_result((reader, writer))
        return True

    async def _splice(
        self,
        a_reader: asyncio.StreamReader,
        a_writer: asyncio.StreamWriter,
        b_reader: asyncio.StreamReader,
        b_writer: asyncio.StreamWriter,
        carried: list[int],
    ) -> str:
        """Copy both ways until either side closes or a limit is reached; return why it ended."""
        limit = self.limits.circuit_bytes

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> str:
            while True:
                data = await src.read(CHUNK)
                if not data:
                    return "closed"
                carried[0] += len(data)
                if carried[0] > limit:
                    return f"byte limit ({limit} bytes)"
                dst.write(data)
                await dst.drain()

        tasks = [asyncio.ensure_future(pump(a_reader, b_writer)), asyncio.ensure_future(pump(b_reader, a_writer))]
        try:
            done, _ = await asyncio.wait(tasks, timeout=self.limits.circuit_time_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if not done:
            return f"time limit ({self.limits.circuit_time_s:g} s)"
        task = done.pop()
        exc = task.exception()
        return "closed" if exc is not None else str(task.result())


# ---- the node's side -----------------------------------------------------------------------------------


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def pump(src: socket.socket, dst: socket.socket, counter: list[int] | None = None) -> None:
    """Copy ``src`` to ``dst`` until either ends; then cut both, so the other direction stops too."""
    try:
        while True:
            data = src.recv(CHUNK)
            if not data:
                break
            if counter is not None:
                counter[0] += len(data)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        _shutdown(src)
        _shutdown(dst)


class RelayAgent:
    """A node's reservations: one control connection per relay (kept, re-made with back-off when lost), and
    for each circuit the relay announces, a new outbound connection spliced onto the node's own ROUTER at
    ``local``. Events: ``relay_reserved``, ``relay_lost``, ``circuit_opened``, ``circuit_closed`` (``role =
    "node"``); ``on_change`` is called when the set of relays holding a reservation changes."""

    MAX_CIRCUITS = 64

    MAX_RELAYS = 2

    def __init__(
        self,
        identity: Identity,
        local: tuple[str, int],
        log: Callable[..., None],
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.identity = identity
        self.local = local
        self.log = log
        self.on_change = on_change
        self.active: dict[tuple[str, int], bool] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._circuits = threading.BoundedSemaphore(self.MAX_CIRCUITS)
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def reserved(self) -> list[str]:
        """``HOST:PORT`` of every relay that holds a reservation for this node now."""
        return [f"{h}:{p}" for (h, p), ok in self.active.items() if ok]

    def begin(self, relays: Awaitable[list[tuple[str, int]]]) -> None:
        """Reserve at (at most two of) the relays ``relays`` gives, in the background."""
        self._loop = asyncio.get_running_loop()
        self._tasks.append(self._loop.create_task(self._start(relays)))

    async def _start(self, relays: Awaitable[list[tuple[str, int]]]) -> None:
        assert self._loop is not None
        for relay in (await relays)[: self.MAX_RELAYS]:
            self._tasks.append(self._loop.create_task(self._keep(relay)))

    async def close(self) -> None:
        await _cancel(list(self._tasks))
        with self._lock:
            for sock in list(self._open):
                _shutdown(sock)

    async def _keep(self, relay: tuple[str, int]) -> None:
        backoff = 1.0
        while True:
            try:
                await self._hold(relay)
            except asyncio.CancelledError:
                raise
            except (RelayError, TimeoutError, asyncio.IncompleteReadError, OSError) as exc:
                why = str(exc) or type(exc).__name__
                if self.active.pop(relay, False):  # it held: try again soon
                    backoff = 1.0
                    self.on_change()
                    self.log("relay_lost", role="node", relay=f"{relay[0]}:{relay[1]}", reason=why)
                else:
                    if backoff <= 1.0:
                        self.log("warning", message=f"relay {relay[0]}:{relay[1]}: no reservation ({why})")
                    backoff = min(backoff * 2, 30.0)
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
            while True:
                try:
                    msg = await read_frame(reader, PING_S)
                except TimeoutError:
                    if time.monotonic() - last > DEAD_S:
                        raise RelayError("silent", f"no word from the relay for {DEAD_S:g} s") from None
                    writer.write(encode_frame("ping"))
                    await writer.drain()
                    continue
                last = time.monotonic()
                if msg["t"] == "circuit" and isinstance(msg.get("id"), bytes):
                    self._take_circuit(relay, msg["id"])
                elif msg["t"] == "ping":
                    writer.write(encode_frame("pong"))
                    await writer.drain()
        finally:
            writer.close()

    def _take_circuit(self, relay: tuple[str, int], token: bytes) -> None:
        if not self._circuits.acquire(blocking=False):
            return  # the relay times the client out
        threading.Thread(target=self._circuit, args=(relay, token), name="phase-relay-circuit", daemon=True).start()

    def _threadsafe_log(self, event: str, **fields: Any) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(lambda: self.log(event, **fields))

    def _circuit(self, relay: tuple[str, int], token: bytes) -> None:
        remote = local = None
        opened = time.monotonic()
        carried = [0]
        try:
            try:
                remote = socket.create_connection(relay, timeout=HANDSHAKE_TIMEOUT_S)
                remote.sendall(encode_frame("accept", circuit=token))
                local = socket.create_connection(self.local, timeout=HANDSHAKE_TIMEOUT_S)
            except OSError as exc:
                self._threadsafe_log("warning", message=f"relay circuit not taken: {exc}")
                return
            for s in (remote, local):
                s.settimeout(None)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._open.update((remote, local))
            self._threadsafe_log("circuit_opened", role="node", relay=f"{relay[0]}:{relay[1]}", circuit=token[:4].hex())
            back = threading.Thread(target=pump, args=(local, remote, carried), daemon=True)
            back.start()
            pump(remote, local, carried)
            back.join()
            self._threadsafe_log(
                "circuit_closed",
                role="node",
                relay=f"{relay[0]}:{relay[1]}",
                circuit=token[:4].hex(),
                bytes=carried[0],
                seconds=round(time.monotonic() - opened, 3),
            )
        finally:
            ends = [end for end in (remote, local) if end is not None]
            with self._lock:
                self._open.difference_update(ends)
            for end in ends:
                end.close()
            self._circuits.release()
