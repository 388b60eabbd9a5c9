"""Run jobs on other machines: :class:`Client` talks ``phase/1`` to ``plasmd`` nodes and checks every receipt.

::

    from pyphase import Client
    client = Client(peers=["PEERID@127.0.0.1:7465"])     # no peers: discover on the LAN (mDNS)
    result = client.submit(open("hello.wasm", "rb").read(), input=b"Hello, World")
    result.stdout, result.exit_code, result.receipt, result.peer

A result is returned only when its receipt verifies: the signature, the hashes of the stdout and
stderr received, the job (module, input, nonce) asked for, and the signer being the node the CURVE
handshake authenticated (a peer's address carries its public key). A timeout, a reject, a dropped
connection or a bad receipt sends the job to another peer, up to ``retries`` times.
``replicas=K`` runs the job deterministically on K distinct peers and accepts the output a majority
reports; dissenters are named in ``result.dissent``, and no majority raises :class:`QuorumError`.

One :class:`Client` does one ``submit`` at a time (a lock serialises calls); for concurrent jobs use
one client per thread. Its sockets are persistent: one CURVE DEALER per peer, kept across jobs.

``socks_proxy="HOST:PORT"`` (default: the ``PHASE_SOCKS_PROXY`` environment variable) sends every
connection through that SOCKS5 proxy, e.g. Tor (by way of a loopback relay, :mod:`pyphase.net.socks`),
and fails closed: the client never connects directly, and refuses mDNS discovery (peers must be named).
Peer hosts may then be names the proxy resolves (``PEERID@xxxx.onion:7465``); this machine makes no DNS
query for them.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import struct
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import zmq
import zmq.utils.z85

from pyphase import trees
from pyphase.digests import hash_text, sha256_text
from pyphase.errors import (
    NetworkError,
    NoPeers,
    PhaseError,
    QuorumError,
    TreeError,
    UnverifiedOutput,
    VerificationError,
)
from pyphase.identity import Identity, public_key_from_peer_id
from pyphase.limits import Limits, format_size
from pyphase.manifest import make_manifest, new_nonce
from pyphase.net import wire
from pyphase.net.addresses import RELAY_PREFIX, parse_address, resolve_socks_proxy, split_relayed
from pyphase.preopen import Preopen
from pyphase.receipt import verify_receipt
from pyphase.result import Result
from pyphase.runtime import OutputCallback, OutputSink, sink_for

if TYPE_CHECKING:
    from pyphase.net.socks import SocksRelay  # python-socks loads only for a proxy or a relayed peer

ProgressCallback = Callable[[str, str, str], object]
"""Called with ``(state, peer_id, detail)`` as a job moves: ``connecting``, ``offered``, ``accepted``, ``running``,
``verifying``, ``failed`` (detail: why; the job may go on elsewhere)."""

__all__ = ["Client", "RemoteResult", "discovery_refused"]

DEFAULT_RETRIES = 3
CONNECT_TIMEOUT_S = 2.0
PROXY_CONNECT_TIMEOUT_S = 30.0  # through a proxy (Tor builds a circuit first): the default connect_timeout
TIMEOUT_SLACK_S = 5.0
RESOLVE_TIMEOUT_S = 20.0  # the longest a bare peer id is looked up in the DHT (a submit's own timeout, if shorter)
RESOLVE_ROUND_S = 5.0  # one lookup of every id still unresolved; then again, after a pause, within that budget
# the same record found by this many lookups over this long, nothing answering where it says: its node is down (a
# node that moved publishes a newer one, which a lookup soon finds)
RESOLVE_DEAD_LOOKUPS = 3
RESOLVE_DEAD_S = 5.0
MAX_BACKOFF_S = 1.0  # longest pause before re-asking a peer that failed, when no other is left
CHUNK = 1 << 20  # file bytes in one blob message (a node asks for at most this much at once)
FETCH_WINDOW = 8  # output chunks asked for and not yet received
# Between calls nothing reads a peer's messages, and libzmq keeps all of them (no receive limit: see
# wire.RECEIVE_QUEUE_LIMIT). A thread drops them every IDLE_CHECK_S; a peer that sends more than IDLE_MESSAGES
# messages or IDLE_BYTES bytes unasked is disconnected (what libzmq held for it is freed; it is reconnected when
# next used). Late answers of an honest node (a result after the job moved on, the replicas not waited for) fit.
IDLE_CHECK_S = 0.05
IDLE_MESSAGES = 1024
IDLE_BYTES = 16 << 20
DEFAULT_DISK_BYTES = 256 << 20  # what a job with directories may write, unless told
DEFAULT_FILES = 10_000
_MONITOR_EVENTS = (
    zmq.EVENT_CONNECTED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_CONNECT_RETRIED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
)


_DROPPED = "connection dropped"
_REFUSED = "connection refused"
_HANDSHAKE_FAILED = "CURVE handshake failed (wrong key or not a phase node)"


def _refused(peer: _Peer) -> str:
    return f"{_REFUSED} at {peer.host}:{peer.port}: nothing listens there (is plasmd running? is the address right?)"


def _monitor_event(frames: list[bytes]) -> int:
    """The event id of a message from a socket monitor (zmq_socket_monitor(3): a 6-byte frame, the id as 16 bits and
    a 32-bit value, then the endpoint). zmq.utils.monitor parses it the same way, but imports zmq.asyncio with it:
    asyncio and ssl, a sixth of a ``phase submit``'s start-up (BENCHMARKS.md, "Start-up")."""
    if len(frames) != 2 or len(frames[0]) != 6:
        raise RuntimeError(f"invalid socket monitor message: {frames!r}")
    event: int = struct.unpack("=hi", frames[0])[0]
    return event


def discovery_refused(proxy: str) -> str:
    """Why a client with a SOCKS proxy will not look for peers on the LAN (the text of the error)."""
    return (
        f"no peers named, and LAN discovery (mDNS) is refused with a SOCKS proxy set ({proxy}): it "
        f"would announce this machine on the LAN and cannot go through the proxy. Name the peers "
        f"(Client(peers=[...]) or phase submit --peer PEERID@HOST:PORT), or unset the proxy"
    )


@dataclass(frozen=True)
class RemoteResult(Result):
    """A verified remote :class:`~pyphase.Result`: ``peer`` ran it; with replicas, ``receipts`` holds every
    receipt received and ``dissent`` the peers whose output differed from the accepted one."""

    peer: str = ""
    receipts: tuple[dict[str, Any], ...] = ()
    dissent: tuple[str, ...] = ()
    attempts: tuple[tuple[str, str], ...] = ()
    outputs: Mapping[str, Any] | None = None
    """``{"hash", "size"}`` of the job's output tree (jobs with ``dirs``), as its receipt names it."""
    tag: bytes = b""


class _Peer:
    def __init__(self, address: str) -> None:
        direct, self.relayed = split_relayed(address)
        self.peer_id, self.public_key, self.host, self.port = parse_address(direct)
        self.address = f"{self.peer_id}@{RELAY_PREFIX if self.relayed else ''}{self.host}:{self.port}"
        import nacl.bindings

        self.server_key = zmq.utils.z85.encode(nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(self.public_key))
        self.sock: zmq.Socket[bytes] | None = None
        self.monitor: zmq.Socket[bytes] | None = None
        self.connected = False
        self.caps: dict[str, Any] | None = None
        self.load: Mapping[str, int] | None = None
        self.modules: set[str] = set()
        self.down_until = 0.0
        self.strikes = 0
        self.reached = False  # this client has completed a handshake with it at least once
        self.tcp_connected = False  # the current connection attempt got past TCP (not refused)
        self.last_failure: str | None = None
        self.unasked = [0, 0]  # messages and bytes read by the idle reader since the client last used it

    def score(self, module_hash: str, now: float) -> tuple[Any, ...]:
        load = self.load or {}
        workers = max(1, load.get("workers", 1))
        busy = (load.get("running", 0) + load.get("queued", 0)) / workers
        return (self.down_until > now, module_hash not in self.modules, round(busy, 1), random.random())

    def fits(self, manifest: Mapping[str, Any]) -> str | None:
        """Why this peer's advertised capabilities cannot take the job (None: it can, or unknown): what the
        job asks and what the peer allows, in units."""
        caps = self.caps
        if not caps:
            return None
        try:
            ceiling = caps["max_limits"]
            asked = Limits.from_json(manifest["limits"])
            allowed = Limits(
                **{name: int(ceiling.get(name, 0)) for name in asked.to_json()}, stack_bytes=asked.stack_bytes
            )
            problems = asked.within(allowed)
            size, cap = manifest["module"]["size"], ceiling.get("module_bytes")
            if cap and size > cap:
                problems.append(f"module {format_size(size)} exceeds the ceiling {format_size(cap)}")
            size, cap = manifest["input"]["size"], ceiling.get("input_bytes")
            if cap and size > cap:
                problems.append(f"input {format_size(size)} exceeds the ceiling {format_size(cap)}")
            fs = manifest.get("fs")
            for name in ("disk_bytes", "files"):
                cap = ceiling.get(name)
                if fs is not None and cap is not None and fs[name] > cap:
                    problems.append(f"fs.{name} {fs[name]} exceeds the ceiling {cap}")
            arch = manifest["requires"].get("arch")
            if arch and arch != caps.get("arch"):
                problems.append(f"the job requires arch {arch}, the peer is {caps.get('arch')}")
        except (KeyError, TypeError, AttributeError, ValueError):
            return None
        return "; ".join(problems) or None


@dataclass
class _Attempt:
    peer: _Peer
    tag: bytes
    manifest: dict[str, Any]
    deadline: float
    connect_deadline: float
    state: str = "connecting"  # connecting -> offered -> running -> done
    streaming: bool = False  # asked the peer for chunks
    received: dict[int, bytearray] = field(default_factory=lambda: {1: bytearray(), 2: bytearray()})
    digests: dict[int, Any] = field(default_factory=lambda: {1: hashlib.sha256(), 2: hashlib.sha256()})


@dataclass
class _Job:
    module: bytes
    input: bytes
    args: Sequence[str]
    env: Mapping[str, str]
    entry: str
    limits: Limits
    deterministic: bool
    requires: Mapping[str, Any]
    module_hash: str = ""
    failures: list[tuple[str, str]] = field(default_factory=list)
    excluded: set[str] = field(default_factory=set)  # peers not to offer this job to, with a failure said
    fs: dict[str, Any] | None = None  # manifest.fs
    listings: dict[str, bytes] = field(default_factory=dict)  # tree listings by hash
    blobs: dict[str, tuple[str, int]] = field(default_factory=dict)  # file blobs: hash -> (host path, size)
    sink: OutputSink | None = None
    progress: ProgressCallback | None = None
    fatal: NetworkError | None = None  # an attempt failed after its output was shown: not retried

    def tell(self, state: str, peer: _Peer, detail: str = "") -> None:
        if self.progress is not None:
            self.progress(state, peer.peer_id, detail)


class Client:
    """A client of the Phase network. ``peers``: addresses ``PEERID@HOST:PORT``; none: mDNS discovery."""

    def __init__(
        self,
        peers: Sequence[str] | None = None,
        *,
        identity: Identity | None = None,
        discover_timeout: float = 1.0,
        connect_timeout: float | None = None,
        mdns_interfaces: str | None = None,
        socks_proxy: str | None = None,
        dht_bootstrap: str | Sequence[str] | None = None,
    ) -> None:
        """``connect_timeout``: how long a peer may take to be connected before the job goes elsewhere
        (default 2 s, 30 s through a proxy). ``socks_proxy``: ``HOST:PORT`` of a SOCKS5 proxy (e.g. Tor's
        ``127.0.0.1:9050``) for every connection; not given (None): ``PHASE_SOCKS_PROXY`` if set; ``""``:
        no proxy even if it is set. With a proxy the client fails closed: it never connects directly and
        refuses LAN discovery (name the peers). Bad proxy text or a bad peer address: ``ValueError``.
        A peer given as a bare PEERID is resolved through the Mainline DHT (its signed record), and with no
        peers at all the DHT's rendezvous is asked when mDNS finds none; ``dht_bootstrap``: ``HOST:PORT``
        nodes to join through (default ``PHASE_DHT_BOOTSTRAP``, else libtorrent's default router)."""
        self.socks_proxy: str | None = resolve_socks_proxy(socks_proxy)
        if connect_timeout is None:
            connect_timeout = PROXY_CONNECT_TIMEOUT_S if self.socks_proxy else CONNECT_TIMEOUT_S
        self.identity = identity or Identity.generate()
        self._ctx = zmq.Context()
        self._lock = threading.RLock()
        self._tags = itertools.count(1)
        self._tag_prefix = os.urandom(4)
        self.connect_timeout = connect_timeout
        self._relay: SocksRelay | None = None
        if self.socks_proxy is not None:
            from pyphase.net.socks import SocksRelay

            self._relay = SocksRelay(self.socks_proxy, connect_timeout)
        self._peers: dict[str, _Peer] = {}
        self._discover_timeout = discover_timeout
        self._mdns_interfaces = mdns_interfaces
        self._closed = False
        curve_public, curve_secret = self.identity.curve_keypair()
        self._curve = (zmq.utils.z85.encode(curve_public), zmq.utils.z85.encode(curve_secret))
        self._dht_bootstrap = dht_bootstrap
        self._dht_failure = ""
        self._unresolved: list[str] = []
        for address in peers or ():
            if "@" in address:
                self.add_peer(address)
            else:
                public_key_from_peer_id(address)  # a bare peer id: found through the DHT when first needed
                self._unresolved.append(address.strip().lower())
        if self._unresolved and self.socks_proxy is not None:
            raise ValueError(
                f"peer ids without an address are resolved through the DHT (UDP), which cannot go "
                f"through the SOCKS proxy {self.socks_proxy}: give PEERID@HOST:PORT"
            )
        self._discovered = bool(peers)
        self._idle_reader: _IdleReader | None = None

    # ---- peers -------------------------------------------------------------------------------------

    def add_peer(self, address: str) -> str:
        """Add a peer (``PEERID@HOST:PORT``) and return its peer id; raises ``ValueError`` if malformed."""
        peer = _Peer(address)
        with self._lock:
            self._peers.setdefault(peer.peer_id, peer)
        return peer.peer_id

    def peers(self) -> list[str]:
        """Addresses of the peers this client knows (discovering them first if none were given)."""
        self._ensure_peers()
        return [p.address for p in self._peers.values()]

    def _ensure_peers(self, resolve_within: float = RESOLVE_TIMEOUT_S) -> None:
        if self._unresolved:
            self._resolve_unresolved(min(resolve_within, RESOLVE_TIMEOUT_S))
        if self._peers or self._discovered:
            return
        if self.socks_proxy is not None:
            raise NoPeers(discovery_refused(self.socks_proxy))
        try:
            from pyphase.net.discovery import discover

            found_peers = discover(self._discover_timeout, interfaces=self._mdns_interfaces)
        except ImportError as exc:
            raise NoPeers(f"no peers given, and LAN discovery needs the zeroconf package ({exc})") from None
        for found in found_peers:
            self.add_peer(found.address)
        if not found_peers:
            self._discover_dht()
        self._discovered = True

    def _resolve_unresolved(self, budget: float) -> None:
        """Bare peer ids -> addresses from their signed DHT records, all ids at once, in rounds: a young DHT
        (this client's own routing table, or a node's record not yet stored on the nodes a lookup reaches) misses
        what a lookup moments later finds, and a record can name an address that is gone. While no peer is
        known, ids are looked up again until ``budget`` seconds pass; once one is, after this round. Ids not
        resolved stay pending for the next call; NoPeers names why each failed when none resolved. An id whose
        lookups found the same record RESOLVE_DEAD_LOOKUPS times over RESOLVE_DEAD_S, nothing answering where it
        says, is not looked up again in this call: its node is down, not moved, and fails in seconds."""
        from concurrent.futures import ThreadPoolExecutor

        from pyphase.net.dht import client_dht

        deadline = time.monotonic() + budget
        failures: dict[str, str] = {}
        unanswered: dict[str, tuple[int | None, float, int]] = {}  # id -> (seq answering nowhere, since, lookups)
        settled: list[str] = []  # ids given up on in this call: pending again for the next
        try:
            with (
                client_dht(self._dht_bootstrap) as dht,
                ThreadPoolExecutor(8, thread_name_prefix="phase-resolve") as pool,
            ):
                pause = 0.25
                while True:
                    ids, self._unresolved = self._unresolved, []
                    round_s = max(0.5, min(RESOLVE_ROUND_S, deadline - time.monotonic()))
                    answers = list(pool.map(lambda peer_id: self._resolve_one(dht, peer_id, round_s), ids))
                    for peer_id, (address, why, seq) in zip(ids, answers):
                        if address is not None:
                            failures.pop(peer_id, None)
                            self.add_peer(address)
                            continue
                        failures[peer_id] = why
                        if seq is not None:
                            last, since, count = unanswered.get(peer_id, (None, 0.0, 0))
                            if last != seq:
                                since, count = time.monotonic(), 0
                            count += 1
                            unanswered[peer_id] = (seq, since, count)
                            if count >= RESOLVE_DEAD_LOOKUPS and time.monotonic() - since >= RESOLVE_DEAD_S:
                                settled.append(peer_id)
                                continue
                        self._unresolved.append(peer_id)
                    if not self._unresolved or self._peers or time.monotonic() + pause >= deadline:
                        break
                    time.sleep(pause)
                    pause = min(pause * 2, 2.0)
        except (RuntimeError, OSError) as exc:
            failures["the DHT"] = f"unavailable: {exc}"
        self._unresolved.extend(settled)
        if failures and not self._peers:
            raise NoPeers(
                f"no peer id could be resolved through the DHT within {budget:g} s: "
                + "; ".join(f"{k}: {v}" for k, v in failures.items())
            )

    def _resolve_one(self, dht: Any, peer_id: str, timeout: float) -> tuple[str | None, str, int | None]:
        """Look ``peer_id`` up once: (the first way in its record names that answers, "", None), or (None, why not,
        the seq of the record found when nothing answered where it says, else None)."""
        from pyphase.net.dht import resolve_peer
        from pyphase.net.dial import DIAL_TIMEOUT_S, first_reachable

        try:
            record = resolve_peer(dht, peer_id, timeout=timeout)
        except PhaseError as exc:
            return None, str(exc), None
        try:
            return first_reachable(record, min(self.connect_timeout, DIAL_TIMEOUT_S)), "", None
        except PhaseError as exc:
            return None, str(exc), record.seq

    def _discover_dht(self) -> None:
        """Nodes from the DHT's rendezvous, each proven by its signed record (nothing when the DHT is unavailable)."""
        from pyphase.net.dht import client_dht, find_nodes

        try:
            with client_dht(self._dht_bootstrap) as dht:
                for record in find_nodes(dht, timeout=max(self._discover_timeout, 3.0)):
                    if record.candidates:  # it answered at its announced address: the record names it
                        self.add_peer(record.address)
        except (RuntimeError, OSError) as exc:  # PermissionError: the test suite's guard; no libtorrent; no UDP
            self._dht_failure = f"{type(exc).__name__}: {exc}"

    def _socket(self, peer: _Peer) -> zmq.Socket[bytes]:
        peer.unasked = [0, 0]
        if peer.sock is None:
            if peer.relayed and self._relay is None:
                from pyphase.net.socks import SocksRelay

                self._relay = SocksRelay(None, self.connect_timeout)  # circuits through Phase relays, directly
            if self._relay is not None and (peer.relayed or self.socks_proxy is not None):
                # fail closed: the socket's only endpoint is our loopback forwarder, which dials only the proxy
                # (or, for a node behind a Phase relay, opens a circuit at that relay; pyphase.net.relay)
                endpoint = self._relay.endpoint(peer.host, peer.port, peer.peer_id if peer.relayed else None)
            else:
                endpoint = f"tcp://{peer.host}:{peer.port}"
            slow = self.socks_proxy is not None  # Tor adds seconds of latency: do not call a circuit dead
            sock = self._ctx.socket(zmq.DEALER)
            sock.curve_publickey, sock.curve_secretkey = self._curve
            sock.curve_serverkey = peer.server_key
            sock.linger = 0
            sock.setsockopt(zmq.IMMEDIATE, 1)  # send only over a completed (authenticated) connection
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
            sock.setsockopt(zmq.HEARTBEAT_IVL, 5000 if slow else 1000)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 30000 if slow else 3000)
            sock.setsockopt(zmq.MAXMSGSIZE, 1 << 30)
            sock.setsockopt(zmq.RCVHWM, wire.RECEIVE_QUEUE_LIMIT)  # a full queue, then a close, aborted us
            peer.monitor = sock.get_monitor_socket(_MONITOR_EVENTS)
            sock.connect(endpoint)
            peer.sock = sock
            if self._idle_reader is None:
                self._idle_reader = _IdleReader(self)
                self._idle_reader.start()
        return peer.sock

    def _drop_idle_input(self) -> None:
        """Read and drop what peers sent while no call was using them (the idle reader's turn; skipped while
        a call holds the lock); disconnect a peer that sent more than the idle allowance."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            for peer in [] if self._closed else list(self._peers.values()):
                if peer.monitor is not None:
                    self._drain_monitor(peer)  # connection events pile up too
                while peer.sock is not None:
                    try:
                        frames = peer.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    peer.unasked[0] += 1
                    peer.unasked[1] += sum(len(f) for f in frames)
                    if peer.unasked[0] > IDLE_MESSAGES or peer.unasked[1] > IDLE_BYTES:
                        self._disconnect(peer)
                        peer.last_failure = (
                            f"sent {peer.unasked[0]} messages ({format_size(peer.unasked[1])}) unasked while the "
                            "client was idle: disconnected"
                        )
        finally:
            self._lock.release()

    def _disconnect(self, peer: _Peer) -> None:
        for s in (peer.sock, peer.monitor):
            if s is not None:
                s.close(linger=0)
        peer.sock = peer.monitor = None
        peer.connected = peer.tcp_connected = False

    def _drain_monitor(self, peer: _Peer) -> str | None:
        """Apply the peer's connection events; return why it failed, if it did."""
        failure = None
        while peer.monitor is not None:
            try:
                kind = _monitor_event(peer.monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                break
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                peer.connected = peer.reached = True
            elif kind == zmq.EVENT_DISCONNECTED:
                if peer.connected:
                    failure = failure or _DROPPED
                peer.connected = False
            elif kind == zmq.EVENT_CONNECTED:
                peer.tcp_connected = True
            elif kind == zmq.EVENT_CONNECT_RETRIED:
                if not peer.connected:
                    # TCP was accepted and then closed before the handshake completed: something listens there,
                    # but not the node this peer id names (a CURVE server drops a client with the wrong key)
                    failure = failure or (_HANDSHAKE_FAILED if peer.tcp_connected else _refused(peer))
                peer.tcp_connected = False
            else:
                failure = failure or _HANDSHAKE_FAILED
                peer.connected = False
        if self._relay is not None and not peer.connected:
            # the relay records why before it closes the loopback connection whose events brought us here
            why = self._relay.take_failure(peer.host, peer.port, peer.peer_id if peer.relayed else None)
            if why:
                failure = why  # names the proxy: down, or its reply for this peer
        return failure

    def capabilities(self, timeout: float = 1.0) -> dict[str, dict[str, Any] | None]:
        """Ask every known peer for its capabilities; None for those that did not answer in ``timeout``."""
        with self._lock:
            self._ensure_peers()
            self._probe(list(self._peers.values()), timeout)
            return {p.address: p.caps for p in self._peers.values()}

    def failures(self) -> dict[str, str]:
        """Why each peer that did not answer the last :meth:`capabilities` (or first contact) failed, by address:
        e.g. ``connection refused at HOST:PORT``; a peer that merely did not answer in time is not listed."""
        with self._lock:
            return {p.address: p.last_failure for p in self._peers.values() if p.last_failure and not p.caps}

    def _probe(self, peers: list[_Peer], timeout: float) -> None:
        for p in peers:
            p.last_failure = None
        deadline = time.monotonic() + timeout
        waiting = {p.peer_id: p for p in peers}
        sent: set[str] = set()
        while waiting and time.monotonic() < deadline:
            poller = zmq.Poller()
            for p in waiting.values():
                sock = self._socket(p)
                poller.register(sock, zmq.POLLIN | (0 if p.peer_id in sent else zmq.POLLOUT))
                poller.register(p.monitor, zmq.POLLIN)
            events = dict(poller.poll(max(1, int((deadline - time.monotonic()) * 1000))))
            for p in list(waiting.values()):
                failure = self._drain_monitor(p) if events.get(p.monitor) else None
                if failure:
                    p.last_failure = failure
                    self._mark_down(p)
                    waiting.pop(p.peer_id)
                    continue
                flags = events.get(p.sock, 0)
                if flags & zmq.POLLOUT and p.peer_id not in sent:
                    try:
                        p.sock.send_multipart(wire.encode("caps?"), zmq.NOBLOCK)  # type: ignore[union-attr]
                        sent.add(p.peer_id)
                    except zmq.Again:
                        pass
                if flags & zmq.POLLIN:
                    for frames in self._recv_all(p):
                        try:
                            msg = wire.decode(frames)
                        except wire.WireError:
                            continue
                        if msg.type == "caps":
                            p.caps = msg["caps"]
                            p.reached, p.last_failure = True, None
                            p.load = wire.check_load(p.caps.get("load"))
                            waiting.pop(p.peer_id, None)
        for p in waiting.values():  # no answer in time: not asked again on every submit while it sulks
            self._mark_down(p)

    def _recv_all(self, peer: _Peer) -> list[list[bytes]]:
        out = []
        while peer.sock is not None:
            try:
                out.append(peer.sock.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                break
        return out

    def _mark_down(self, peer: _Peer, seconds: float | None = None) -> None:
        peer.strikes += 1
        peer.down_until = time.monotonic() + (seconds if seconds is not None else min(30.0, 0.5 * 2**peer.strikes))

    # ---- jobs --------------------------------------------------------------------------------------

    def submit(
        self,
        module: bytes,
        input: bytes = b"",
        *,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        entry: str = "_start",
        limits: Limits | None = None,
        timeout: float | None = None,
        retries: int = DEFAULT_RETRIES,
        replicas: int = 1,
        deterministic: bool = False,
        requires: Mapping[str, Any] | None = None,
        dirs: Sequence[Preopen] = (),
        out: str | os.PathLike[str] | None = None,
        disk_bytes: int = DEFAULT_DISK_BYTES,
        files: int = DEFAULT_FILES,
        on_output: OutputCallback | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> RemoteResult:
        """Run ``module`` on a peer and return its verified result (any job status), or raise
        :class:`~pyphase.errors.NetworkError` (:class:`NoPeers`, :class:`QuorumError`).

        ``timeout`` is how long one peer may take before the job goes elsewhere (default: the job's
        ``timeout_ms`` plus 5 s); ``retries`` is how many further peers may be tried after failures.

        ``dirs``: host directories the job sees (:class:`~pyphase.Preopen`), sent as content-addressed trees (a
        node asks only for the files it lacks); read-write ones may be changed by the job, within ``disk_bytes``
        and ``files`` for all of them together (counted as the job writes: :class:`~pyphase.FsQuota`). ``out``: an
        empty or new directory that receives the new and changed files (the output tree the receipt names, checked
        as it arrives; ``result.outputs``), its listing kept beside it (``OUT.tree.json``).

        ``on_output(stream, data)`` gets stdout (1) and stderr (2) as the node streams them, before the receipt
        is checked: the result still comes only once everything verified, and a failure after output was shown
        raises :class:`~pyphase.errors.UnverifiedOutput` instead of moving the job to another peer.
        ``on_progress(state, peer_id, detail)`` follows the job (see :data:`ProgressCallback`).
        """
        if replicas < 1:
            raise ValueError("replicas must be at least 1")
        if on_output is not None and replicas > 1:
            raise ValueError("on_output streams one peer's output; with replicas the output is chosen at the end")
        limits = limits or Limits()
        job = _Job(
            bytes(module),
            bytes(input),
            list(args),
            dict(env or {}),
            entry,
            limits,
            deterministic or replicas > 1,
            # replicas agree byte for byte only on one engine (fuel and deterministic clocks are per engine):
            # pin the one every node has unless the caller named one
            {"runtime": "wasm3", **(requires or {})} if replicas > 1 else dict(requires or {}),
        )
        job.module_hash = sha256_text(job.module)
        if dirs:
            self._add_trees(job, dirs, disk_bytes, files)
        if out is not None and not dirs:
            raise ValueError("--out receives what the job writes in its directories: give one (--dir HOST::GUEST)")
        if out is not None:
            out = Path(out)
            if out.exists() and (not out.is_dir() or any(out.iterdir())):
                raise ValueError(f"--out {out}: give an empty or new directory (it receives the job's output tree)")
        job.sink = sink_for(on_output)
        job.progress = on_progress
        if timeout is None:
            timeout = (limits.timeout_ms / 1000 if limits.timeout_ms else 3600.0) + TIMEOUT_SLACK_S
        with self._lock:
            if self._closed:
                raise NetworkError("the client is closed")
            self._ensure_peers(timeout)
            if not self._peers:
                interfaces = self._mdns_interfaces or os.environ.get("PHASE_MDNS_INTERFACES") or "all"
                why = self._dht_failure
                raise NoPeers(
                    f"no peers given, and none answered on the LAN (mDNS on {interfaces} interfaces, "
                    f"{self._discover_timeout:g} s) or the DHT"
                    + (f" ({why})" if why else "")
                    + ": name one (phase submit --peer PEERID@HOST:PORT, Client(peers=[...])), start one "
                    "(plasmd --listen HOST:PORT --data-dir DIR), or look longer (--discover-timeout, "
                    "Client(discover_timeout=...))"
                )
            if replicas > len(self._peers):
                raise NoPeers(
                    f"{replicas} replicas need {replicas} distinct peers; {len(self._peers)} known: "
                    f"name more (--peer, Client(peers=[...])) or ask for fewer (--replicas)"
                )
            unknown = [p for p in self._peers.values() if p.caps is None and p.down_until <= time.monotonic()]
            if unknown:
                self._probe(unknown, min(self.connect_timeout, 1.0))
            # a peer never reached that refused the connection just now is a wrong address or a stopped node,
            # not one restarting: said once, not retried within this job
            for p in unknown:
                if not p.reached and p.last_failure and p.last_failure.startswith(_REFUSED):
                    job.failures.append((p.peer_id, p.last_failure))
                    job.excluded.add(p.peer_id)
            results = self._run(job, replicas, retries, timeout)
            chosen = results[0] if replicas == 1 else self._quorum(results, replicas, job)
            if job.fs is not None:
                try:
                    if out is not None:
                        self._fetch_outputs(job, chosen, Path(out), timeout)
                finally:
                    for r in results:  # the nodes may delete the job's files now
                        self._send_done(r)
        return chosen

    def _add_trees(self, job: _Job, dirs: Sequence[Preopen], disk_bytes: int, files: int) -> None:
        """Scan each directory into a tree listing (hashing every file) for ``manifest.fs``."""
        entries = []
        for d in dirs:
            d = d if isinstance(d, Preopen) else Preopen(*d)
            tree, where = trees.scan(d.host)
            job.listings[tree.hash] = tree.data
            for digest, path in where.items():
                job.blobs[digest] = (path, tree.blobs()[digest])
            entries.append({"guest": d.guest_path, "readonly": bool(d.readonly), "tree": tree.ref})
        job.fs = {"dirs": entries, "disk_bytes": int(disk_bytes), "files": int(files)}

    def _send_done(self, result: RemoteResult) -> None:
        peer = self._peers.get(result.peer)
        if peer is not None and peer.sock is not None and result.tag:
            try:
                peer.sock.send_multipart(wire.encode("done", job=result.tag), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # the node deletes them after its output_wait anyway

    def _fetch_outputs(self, job: _Job, result: RemoteResult, out: Path, timeout: float) -> None:
        """Fetch the output tree the receipt names from the node that ran the job, into ``out``."""
        peer = self._peers[result.peer]
        ref = result.outputs
        assert job.fs is not None and ref is not None
        deadline = time.monotonic() + timeout
        try:
            listing = b"".join(self._fetch_blob(peer, result.tag, ref["hash"], ref["size"], deadline))
            if sha256_text(listing) != ref["hash"]:
                raise TreeError("blob_mismatch", "the output listing does not match the receipt")
            tree = trees.parse(listing, max_files=job.fs["files"], max_bytes=job.fs["disk_bytes"])
            out.mkdir(parents=True, exist_ok=True)
            for entry in tree.entries:
                dest = out / entry.path
                if entry.type == "dir":
                    dest.mkdir()
                elif entry.type == "file":
                    chunks = self._fetch_blob(peer, result.tag, entry.hash, entry.size, deadline)
                    trees.write_file_from(str(dest), chunks, entry.hash, entry.size, entry.mode)
                else:
                    raise TreeError("bad_tree", f"an output tree holds files and directories only, not {entry.path!r}")
            trees.listing_path(out).write_bytes(listing)  # for phase verify --outputs to name what differs
        except (TreeError, OSError, zmq.ZMQError) as exc:
            raise NetworkError(f"the output tree from {peer.peer_id} could not be written to {out}: {exc}") from None

    def _fetch_blob(self, peer: _Peer, tag: bytes, blob: str, size: int, deadline: float) -> Iterator[bytes]:
        """The bytes of one output blob, in order, asking for ``FETCH_WINDOW`` chunks at a time."""
        sock = peer.sock
        if sock is None:
            raise NetworkError(f"{peer.peer_id}: the connection is closed")
        offsets = iter(range(0, size, CHUNK))
        asked: deque[int] = deque()
        got: dict[int, bytes] = {}
        done = size == 0
        while not done:
            while len(asked) < FETCH_WINDOW:
                offset = next(offsets, None)
                if offset is None:
                    break
                want = wire.encode("want", job=tag, blob=blob, offset=offset, size=min(CHUNK, size - offset))
                sock.send_multipart(want, zmq.NOBLOCK)
                asked.append(offset)
            while asked and asked[0] in got:
                yield got.pop(asked.popleft())
            if not asked:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sock.poll(int(remaining * 1000) + 1):
                raise NetworkError(f"{peer.peer_id} did not send the output files in time")
            for frames in self._recv_all(peer):
                try:
                    msg = wire.decode(frames)
                except wire.WireError:
                    continue
                if msg.get("job") != tag:
                    continue  # a late answer to another attempt
                if msg.type == "error":
                    raise NetworkError(f"{peer.peer_id} refused the output files: {msg['code']}: {msg['detail']}")
                if msg.type == "blob" and msg["blob"] == blob and msg["offset"] in asked:
                    data = wire.payload_bytes(msg.payloads[0])
                    if len(data) != min(CHUNK, size - msg["offset"]):
                        raise NetworkError(f"{peer.peer_id} sent {len(data)} bytes for a chunk of {blob}")
                    got[msg["offset"]] = data

    def _new_attempt(self, job: _Job, peer: _Peer, timeout: float, template: dict[str, Any]) -> _Attempt:
        # the template was built and schema-checked once per job; each attempt only needs its own nonce
        manifest = {**template, "nonce": new_nonce()}
        tag = self._tag_prefix + next(self._tags).to_bytes(8, "big")
        now = time.monotonic()
        return _Attempt(peer, tag, manifest, now + timeout, now + self.connect_timeout)

    def _pick(self, job: _Job, exclude: set[str], manifest_probe: dict[str, Any]) -> _Peer | None:
        now = time.monotonic()
        candidates = []
        for p in self._peers.values():
            if p.peer_id in exclude or p.peer_id in job.excluded:
                continue
            why = p.fits(manifest_probe)
            if why:
                job.failures.append((p.peer_id, f"not offered: it allows less than the job asks: {why}"))
                job.excluded.add(p.peer_id)
                continue
            candidates.append(p)
        if not candidates:
            return None
        return min(candidates, key=lambda p: p.score(job.module_hash, now))

    def _run(self, job: _Job, want: int, retries: int, timeout: float) -> list[RemoteResult]:
        probe = make_manifest(
            job.module,
            job.input,
            args=job.args,
            env=job.env,
            entry=job.entry,
            limits=job.limits,
            deterministic=job.deterministic,
            requires=job.requires,
            module_hash=job.module_hash,
            fs=job.fs,
        )
        active: dict[bytes, _Attempt] = {}
        results: list[RemoteResult] = []
        budget = want + max(0, retries)
        launched = 0
        tried: set[str] = set()  # peers used in this job (replicas: never twice)
        while len(results) < want:
            while len(active) + len(results) < want and launched < budget:
                busy = {a.peer.peer_id for a in active.values()} | {r.peer for r in results}
                peer = self._pick(job, tried | busy, probe)
                if peer is None and want == 1:
                    peer = self._pick(job, busy, probe)  # all tried once: go round again (nodes come back)
                if peer is None:
                    break
                wait = peer.down_until - time.monotonic()
                if wait > 0 and not active:
                    # every candidate failed recently (busy, unreachable): back off before asking again
                    time.sleep(min(wait, MAX_BACKOFF_S))
                tried.add(peer.peer_id)
                attempt = self._new_attempt(job, peer, timeout, probe)
                active[attempt.tag] = attempt
                launched += 1
                self._socket(peer)
                job.tell("connecting", peer)
                self._try_offer(job, attempt)
            if not active:
                break
            self._step(job, active, results)
            if job.sink is not None:
                job.sink.reraise()  # the caller's own callback failed: its exception, as it was
            if job.fatal is not None:
                raise job.fatal
        if len(results) < want:
            why = "no peer could take the job" if not launched else "every attempt failed"
            if want > 1:
                why = f"only {len(results)} of {want} replicas completed"
            raise NoPeers(why, job.failures) if not launched else NetworkError(why, job.failures)
        return results

    def _try_offer(self, job: _Job, attempt: _Attempt) -> None:
        sock = attempt.peer.sock
        assert sock is not None
        # chunks only from nodes that say they send them (an older node would refuse the field)
        stream = job.sink is not None and bool((attempt.peer.caps or {}).get("stream"))
        try:
            sock.send_multipart(
                wire.encode("offer", (job.input,), job=attempt.tag, manifest=attempt.manifest, stream=stream or None),
                zmq.NOBLOCK,
                copy=len(job.input) < wire.ZERO_COPY_MIN,
            )
        except zmq.Again:
            return  # not connected yet: POLLOUT will tell
        attempt.state = "offered"
        attempt.streaming = stream
        job.tell("offered", attempt.peer)

    def _fail(
        self, job: _Job, active: dict[bytes, _Attempt], attempt: _Attempt, why: str, down_for: float | None = None
    ) -> None:
        active.pop(attempt.tag, None)
        job.failures.append((attempt.peer.peer_id, why))
        self._mark_down(attempt.peer, down_for)
        job.tell("failed", attempt.peer, why)
        shown = len(attempt.received[1]) + len(attempt.received[2])
        if shown and job.fatal is None:
            job.fatal = UnverifiedOutput(attempt.peer.peer_id, shown, why, job.failures)

    def _step(self, job: _Job, active: dict[bytes, _Attempt], results: list[RemoteResult]) -> None:
        now = time.monotonic()
        poller = zmq.Poller()
        peers = {a.peer.peer_id: a.peer for a in active.values()}
        connecting = {a.peer.peer_id for a in active.values() if a.state == "connecting"}
        for pid, p in peers.items():
            poller.register(p.sock, zmq.POLLIN | (zmq.POLLOUT if pid in connecting else 0))
            poller.register(p.monitor, zmq.POLLIN)
        next_deadline = min(
            min(a.deadline, a.connect_deadline if a.state == "connecting" else a.deadline) for a in active.values()
        )
        events = dict(poller.poll(max(0, int((next_deadline - now) * 1000)) + 1))
        for pid, p in peers.items():
            if events.get(p.monitor):
                failure = self._drain_monitor(p)
                if failure:
                    for a in [a for a in active.values() if a.peer is p]:
                        if a.state != "connecting" or failure != _DROPPED:
                            self._fail(job, active, a, failure)
            flags = events.get(p.sock, 0)
            if flags & zmq.POLLOUT:
                for a in [a for a in active.values() if a.peer is p and a.state == "connecting"]:
                    self._try_offer(job, a)
            if flags & zmq.POLLIN:
                for frames in self._recv_all(p):
                    self._on_message(job, p, frames, active, results)
        now = time.monotonic()
        for a in list(active.values()):
            if a.state == "connecting" and now >= a.connect_deadline:
                self._fail(job, active, a, f"not reachable within {self.connect_timeout:g} s")
            elif now >= a.deadline:
                self._fail(job, active, a, "timed out")

    def _on_message(
        self, job: _Job, peer: _Peer, frames: list[bytes], active: dict[bytes, _Attempt], results: list[RemoteResult]
    ) -> None:
        try:
            msg = wire.decode(frames)
        except wire.WireError as exc:
            # garbage naming one of our jobs fails that attempt now; other garbage is ignored (the timeout covers it)
            attempt = active.get(exc.job or b"")
            if attempt is not None and attempt.peer is peer:
                self._fail(job, active, attempt, f"malformed answer ({exc.code})", down_for=60.0)
            return
        if msg.type == "caps":
            peer.caps = msg["caps"]
            peer.load = wire.check_load(peer.caps.get("load"))
            return
        attempt = active.get(msg.get("job") or b"")
        if attempt is None or attempt.peer is not peer:
            return  # a late answer to an attempt already given up
        try:
            self._on_answer(job, peer, msg, attempt, active, results)
        except Exception as exc:  # every byte from a peer is hostile: a fault here fails that attempt only
            if attempt.tag in active:
                self._fail(job, active, attempt, f"malformed answer ({type(exc).__name__})", down_for=60.0)

    def _on_answer(
        self,
        job: _Job,
        peer: _Peer,
        msg: wire.Message,
        attempt: _Attempt,
        active: dict[bytes, _Attempt],
        results: list[RemoteResult],
    ) -> None:
        load = wire.check_load(msg.get("load"))
        if load is not None:
            peer.load = load
        if msg.type == "chunk":
            self._on_chunk(job, msg, attempt, active)
        elif msg.type == "accept":
            attempt.state = "running"
            job.tell("accepted", peer, "module sent" if msg["module"] else "module cached")
            job.tell("running", peer)
            if msg["module"]:
                peer.modules.discard(job.module_hash)
                try:
                    peer.sock.send_multipart(  # type: ignore[union-attr]
                        wire.encode("module", (job.module,), job=attempt.tag),
                        zmq.NOBLOCK,
                        copy=len(job.module) < wire.ZERO_COPY_MIN,
                    )
                except zmq.Again:
                    self._fail(job, active, attempt, "connection lost while sending the module")
        elif msg.type == "want":
            self._send_blob(job, peer, msg, attempt, active)
        elif msg.type == "reject":
            reason = msg["reason"]
            self._fail(
                job,
                active,
                attempt,
                f"rejected: {reason} ({msg['detail']})",
                down_for=min(MAX_BACKOFF_S, 0.02 * 2**peer.strikes) if reason == "busy" else 5.0,
            )
        elif msg.type == "error":
            self._fail(job, active, attempt, f"error {msg['code']}: {msg['detail']}")
        elif msg.type == "result":
            job.tell("verifying", peer)
            stdout, stderr = (attempt.received[i] + bytes(f) for i, f in ((1, msg.payloads[0]), (2, msg.payloads[1])))
            receipt = msg["receipt"]
            try:
                verify_receipt(
                    receipt,
                    nonce=attempt.manifest["nonce"],
                    signer=peer.public_key,
                    manifest=attempt.manifest,
                )
                # the output's hashes were computed as the chunks came; the rest came with the receipt
                for name, index, frame in (("stdout", 1, msg.payloads[0]), ("stderr", 2, msg.payloads[1])):
                    digest = attempt.digests[index].copy()
                    digest.update(frame)
                    if hash_text(digest.digest()) != receipt.get(name):
                        raise VerificationError([f"{name} hash {receipt.get(name)} does not match the bytes received"])
                if job.sink is not None:  # the rest of the output, now that it is verified
                    for index, frame in ((1, msg.payloads[0]), (2, msg.payloads[1])):
                        if len(frame):
                            job.sink(index, bytes(frame))
            except VerificationError as exc:
                self._fail(job, active, attempt, f"bad receipt: {exc}", down_for=300.0)
                return
            active.pop(attempt.tag, None)
            peer.modules.add(job.module_hash)
            peer.strikes = 0
            peer.down_until = 0.0
            results.append(
                RemoteResult(
                    status=receipt["status"],
                    exit_code=receipt["exit_code"],
                    message=receipt["message"],
                    stdout=bytes(stdout),
                    stderr=bytes(stderr),
                    fuel_used=receipt["fuel_used"],
                    wall_us=receipt["wall_us"],
                    memory_peak_bytes=0,
                    module_hash=receipt["module"],
                    input_hash=receipt["input"],
                    stdout_hash=receipt["stdout"],
                    stderr_hash=receipt["stderr"],
                    receipt=receipt,
                    peer=peer.peer_id,
                    receipts=(receipt,),
                    attempts=tuple(job.failures),
                    outputs=receipt.get("outputs"),
                    tag=attempt.tag,
                )
            )

    def _send_blob(
        self, job: _Job, peer: _Peer, msg: wire.Message, attempt: _Attempt, active: dict[bytes, _Attempt]
    ) -> None:
        """Answer a node's ``want`` with the bytes of a listing or file of the job's trees (read from disk)."""
        blob, offset, size = msg["blob"], msg["offset"], msg["size"]
        listing = job.listings.get(blob)
        path, total = job.blobs.get(blob, ("", len(listing) if listing is not None else -1))
        if total < 0 or not (0 <= offset and 0 < size <= CHUNK and offset + size <= total):
            return self._fail(job, active, attempt, f"malformed answer (want of {size} bytes at {offset})", 60.0)
        if listing is not None:
            data = listing[offset : offset + size]
        else:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(size)
        try:
            peer.sock.send_multipart(  # type: ignore[union-attr]
                wire.encode("blob", (data,), job=attempt.tag, blob=blob, offset=offset),
                zmq.NOBLOCK,
                copy=len(data) < wire.ZERO_COPY_MIN,
            )
        except zmq.Again:
            self._fail(job, active, attempt, "connection lost while sending files")
        attempt.deadline = max(attempt.deadline, time.monotonic() + self.connect_timeout + TIMEOUT_SLACK_S)

    def _on_chunk(self, job: _Job, msg: wire.Message, attempt: _Attempt, active: dict[bytes, _Attempt]) -> None:
        """A piece of a running job's output: checked against the stream's rules (asked for, in order, bounded,
        within the job's output limit), hashed, and handed to ``on_output``."""
        stream, offset, data = msg["stream"], msg["offset"], wire.payload_bytes(msg.payloads[0])
        received = attempt.received
        total = len(received[1]) + len(received[2]) + len(data)
        why = None
        if not attempt.streaming or job.sink is None:
            why = "sent output chunks it was not asked for"
        elif stream not in (1, 2):
            why = f"sent a chunk of stream {stream!r} (1 stdout, 2 stderr)"
        elif offset != len(received[stream]):
            why = f"sent a chunk at offset {offset} of stream {stream}, expected {len(received[stream])}"
        elif not 0 < len(data) <= wire.MAX_CHUNK_BYTES:
            why = f"sent a chunk of {len(data)} bytes (1 to {wire.MAX_CHUNK_BYTES} allowed)"
        elif total > job.limits.output_bytes:
            why = (
                f"streamed {total:,} bytes, more than the job's output limit of {format_size(job.limits.output_bytes)}"
            )
        if why is not None:
            return self._fail(job, active, attempt, f"bad output stream: {why}", down_for=300.0)
        received[stream] += data
        attempt.digests[stream].update(data)
        assert job.sink is not None
        job.sink(stream, data)

    def _quorum(self, results: list[RemoteResult], replicas: int, job: _Job) -> RemoteResult:
        groups: dict[tuple[str, str, int, str, str], list[RemoteResult]] = {}
        for r in results:
            key = (r.stdout_hash, r.stderr_hash, r.exit_code, r.status, (r.outputs or {}).get("hash", ""))
            groups.setdefault(key, []).append(r)
        need = replicas // 2 + 1
        best = max(groups.values(), key=len)
        receipts = tuple(r.receipt for r in results if r.receipt is not None)
        if len(best) < need:
            named = {f"{k[0]} exit {k[2]}": [r.peer for r in v] for k, v in groups.items()}
            raise QuorumError(
                f"replicas disagree: no output reached {need} of {replicas}", list(receipts), named, job.failures
            )
        dissent = tuple(r.peer for r in results if r not in best)
        first = best[0]
        return RemoteResult(
            status=first.status,
            exit_code=first.exit_code,
            message=first.message,
            stdout=first.stdout,
            stderr=first.stderr,
            fuel_used=first.fuel_used,
            wall_us=first.wall_us,
            memory_peak_bytes=0,
            module_hash=first.module_hash,
            input_hash=first.input_hash,
            stdout_hash=first.stdout_hash,
            stderr_hash=first.stderr_hash,
            receipt=first.receipt,
            peer=first.peer,
            receipts=receipts,
            dissent=dissent,
            attempts=tuple(job.failures),
            outputs=first.outputs,
            tag=first.tag,
        )

    # ---- life cycle ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Close every socket. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._idle_reader is not None:
                self._idle_reader.stop.set()
            for p in self._peers.values():
                self._disconnect(p)
            self._ctx.term()
            if self._relay is not None:
                self._relay.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            try:
                self.close()
            except Exception:
                pass


class _IdleReader(threading.Thread):
    """Calls :meth:`Client._drop_idle_input` every ``IDLE_CHECK_S`` until the client is closed or collected."""

    def __init__(self, client: Client) -> None:
        super().__init__(name="phase-client-idle", daemon=True)
        self.client = weakref.ref(client)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(IDLE_CHECK_S):
            client = self.client()
            if client is None:
                return
            client._drop_idle_input()
            del client
