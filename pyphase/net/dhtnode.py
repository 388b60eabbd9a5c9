"""A node's presence on the Mainline DHT: its signed record kept published, rendezvous announces, the
record query answered on the ``phase/1`` port number, good DHT nodes remembered across restarts.

One port number: :func:`open_shared_dht` starts the DHT on the node's listen address and port P *before*
``phase/1`` listens, and makes P shareable (:mod:`pyphase.net.portshare`); ``phase/1`` then binds TCP P and
:meth:`DhtPresence.start` answers the record query on UDP P beside the DHT.

Runs beside :class:`pyphase.net.node.Node` in ``plasmd``'s event loop; libtorrent's blocking calls go
to worker threads. Every step is logged as an event (``dht_listening``, ``dht_bootstrapped``,
``dht_record_published``, ``dht_announced``, ``dht_rendezvous``, ``dht_stopped``); a DHT that cannot
start is a ``warning`` and the node goes on serving its direct address.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from typing import TYPE_CHECKING, Any, Callable

from pyphase.identity import Identity
from pyphase.net import records
from pyphase.net.addresses import split_hostport
from pyphase.net.config import NodeConfig
from pyphase.net.discovery import announce_addresses
from pyphase.net.dht import (
    Dht,
    DhtUnavailable,
    RecordResponder,
    load_known_nodes,
    maps_ports,
    parse_endpoints,
    query_records,
    record_answer,
    rendezvous_hash,
    save_known_nodes,
)
from pyphase.net.reachability import ask_dial_back, verdict
from pyphase.receipt import machine_arch
from pyphase.runtime import RUNTIME_NAME, RUNTIME_VERSION

if TYPE_CHECKING:
    from pyphase.net.node import Node

KNOWN_NODES_FILE = "dht-nodes.json"


SharedDht = tuple[Dht, list[socket.socket]]  # a DHT session on P and the record query's sockets beside it


def dht_listen_address(config: NodeConfig, host: str, port: int) -> str:
    """``dht_listen``, else the ``phase/1`` listen host and port (one port number)."""
    if config.dht_listen:
        return config.dht_listen
    bind = split_hostport(config.listen)[0]
    return f"{bind}:{port}"


def _dht_args(config: NodeConfig) -> tuple[list[tuple[str, int]] | None, list[tuple[str, int]]]:
    """(bootstrap nodes or None for libtorrent's default routers, remembered good nodes)."""
    bootstrap = parse_endpoints(config.dht_bootstrap) if config.dht_bootstrap.strip() else None
    path = config.data_dir / KNOWN_NODES_FILE
    return bootstrap, (load_known_nodes(path) if not config.ephemeral else [])


async def open_shared_dht(config: NodeConfig, log: Callable[..., None]) -> SharedDht | None:
    """Before ``phase/1`` listens: the DHT on its listen address and port (0: any free one, which ``phase/1``
    then takes), with that port made shareable. None, with a warning, when ``dht_listen`` names another
    socket or this cannot be done (a taken UDP port, a kernel without ``SO_REUSEPORT`` steering): the DHT
    then gets a port of its own in :meth:`DhtPresence.start`."""
    if config.dht_listen:
        return None
    host, port = split_hostport(config.listen)
    wildcard = host in ("0.0.0.0", "*", "")
    if wildcard and port == 0:
        port = _free_port()  # one number on every address (libtorrent would give each address a port of its own)
    where = f"{'0.0.0.0' if wildcard else host}:{port}"
    if wildcard and _has_ipv6():
        where += f",[::]:{port}"  # BEP 32: the DHT on IPv6 too (a stage 2 booted with IPv6-only DHT nodes needs it)
    bootstrap, known = _dht_args(config)
    loop = asyncio.get_running_loop()

    def threadsafe(event: str, **fields: Any) -> None:  # until DhtPresence.start takes the session over
        loop.call_soon_threadsafe(lambda: log(event, **fields))

    dht: Dht | None = None
    try:
        dht = await asyncio.to_thread(
            Dht,
            where,
            bootstrap,
            known_nodes=known,
            on_event=threadsafe,
            port_mapping=maps_ports(where.split(",")[0], config.upnp),
            shares_port=True,
        )
        return dht, dht.share_port()
    except (OSError, RuntimeError) as exc:  # DhtUnavailable; PermissionError: the test suite's DHT guard
        if dht is not None:
            await asyncio.to_thread(dht.close)
        log("warning", message=f"the DHT cannot share port {port} with phase/1 ({exc}); it takes a port of its own")
        return None


def rendezvous_classes(arch: str, engines: list[str]) -> dict[str, bytes]:
    """The info-hashes a node announces under, by name: all nodes, its arch, each engine it runs (so a client
    that needs ``--engine wasmtime`` on ``aarch64`` asks for those nodes only)."""
    names = ["", f"arch/{arch}", *(f"engine/{e}" for e in engines)]
    return {f"phase/1/{n}" if n else "phase/1": rendezvous_hash(n) for n in names}


def _free_port() -> int:
    """A port number free for TCP and UDP on every IPv4 address now."""
    for _ in range(20):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("0.0.0.0", 0))
            port = int(tcp.getsockname()[1])
            try:
                udp.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise OSError("no port number free for both TCP and UDP")


def _has_ipv6() -> bool:
    """Whether this host has an IPv6 address a DHT can use (not loopback, not link-local)."""
    import ipaddress

    try:
        import ifaddr
    except ImportError:
        return False
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, tuple):
                address = ipaddress.IPv6Address(ip.ip[0].split("%")[0])
                if not (address.is_loopback or address.is_link_local):
                    return True
    return False


class DhtPresence:
    """Start with :meth:`start` (after the node listens), stop with :meth:`close`."""

    def __init__(
        self,
        config: NodeConfig,
        identity: Identity,
        host: str,
        port: int,
        caps: dict[str, Any],
        log: Callable[..., None],
        node: Node | None = None,
    ) -> None:
        self.config = config
        self.node = node  # for dial-back checks: its ZeroMQ context, and the nonces its listener heard
        self.reachability: dict[str, Any] = {}
        self._checked: tuple[float, str | None] | None = None  # (when, the mapped address then)
        self.identity = identity
        self.host = host
        self.port = port
        self.caps = caps
        self.log = log
        self.dht: Dht | None = None
        # more (name, info-hash, port) announces kept up beside the rendezvous, e.g. the node's boot source
        self.also_announce: list[tuple[str, bytes, int]] = []
        self.on_peers: Callable[[list[tuple[str, int]]], None] | None = (
            None  # each rendezvous's peers (the API lists them)
        )
        self.responder: RecordResponder | None = None
        self.seq = 0
        self._task: asyncio.Task[None] | None = None
        self.relay_port = 0  # this node offers relaying there (plasmd --relay): said in the record, announced
        # reached only through relays (configured): the record names them, nothing is published until one holds
        self.via_relay = config.via_relay.strip() not in ("", "off")
        self.relays: list[str] = []  # relays holding a reservation now; when any, the record names only them
        self.on_reachability: Callable[[str], None] | None = None  # called with each verdict
        self._known_path = config.data_dir / KNOWN_NODES_FILE if not config.ephemeral else None
        self._changed = asyncio.Event()  # the record's contents changed: republish before the next refresh

    def mapped_address(self) -> str | None:
        """``IP:PORT`` the router forwards to the ``phase/1`` port, once a mapping was obtained."""
        return self.dht.mapping.external() if self.dht is not None else None

    def addresses(self) -> list[str]:
        """The record's addresses: the port-mapped one first (reachable from anywhere), then the listen one."""
        direct = f"{self.host}:{self.port}"
        mapped = self.mapped_address()
        return [mapped, direct] if mapped and mapped != direct else [direct]

    def map_also(self, name: str, port: int) -> None:
        """Ask the router to forward TCP ``port`` (an ``also_announce`` service, e.g. the boot store's HTTP port)
        when port mapping is on; its announce then names the external port."""
        if self.dht is not None and self.dht.port_mapping:
            self.dht.map_port("tcp", port, name)

    def external_port(self, name: str, port: int) -> int:
        """The port the router forwards to ``name``'s TCP ``port``, or ``port`` itself while none is mapped."""
        mapped = self.dht.mapping.external(name) if self.dht is not None else None
        return int(mapped.rpartition(":")[2]) if mapped else port

    def announce_port(self) -> int:
        mapped = self.mapped_address()
        return int(mapped.rpartition(":")[2]) if mapped else self.port

    def record_value(self) -> bytes:
        caps = {
            "arch": machine_arch(),
            "cores": int(self.caps.get("cores", 0)),
            "workers": int(self.caps.get("load", {}).get("workers", 0)),
            "memory": int(self.caps.get("memory_bytes", 0)),
        }
        if self.reachability:
            caps["reach"] = self.reachability["verdict"]
        if self.relay_port:
            caps["relay"] = self.relay_port
        engines = [f"{RUNTIME_NAME}/{RUNTIME_VERSION}"]
        if self.via_relay or self.relays:
            return records.encode_value([], engines, caps, relays=self.relays)
        return records.encode_value(self.addresses(), engines, caps)

    def set_relays(self, relays: list[str]) -> None:
        """The relays holding a reservation for this node changed: republish the record now."""
        if relays != self.relays:
            self.relays = list(relays)
            self._changed.set()

    async def find_relays(self, peer_id: str | None) -> list[tuple[str, int]]:
        """Relay services (host, port) from the DHT: the relay ``peer_id``'s record, or the relays' rendezvous."""
        from pyphase.errors import PhaseError
        from pyphase.net.dht import find_nodes, resolve_peer

        dht = self.dht
        if dht is None:
            return []
        await asyncio.to_thread(dht.wait_bootstrapped, 10.0)
        try:
            if peer_id is not None:
                found = [await asyncio.to_thread(resolve_peer, dht, peer_id)]
            else:
                found = await asyncio.to_thread(find_nodes, dht, 5.0, None, "relay")
        except (PhaseError, ValueError, OSError):
            return []
        out = []
        for record in found:
            port = record.caps.get("relay")
            if record.peer_id != self.identity.peer_id and isinstance(port, int) and record.addresses:
                out.append((split_hostport(record.addresses[0])[0], port))
        return out

    async def start(self, shared: SharedDht | None = None) -> None:
        """Join the DHT: with ``shared`` (:func:`open_shared_dht`, its port now ``phase/1``'s) use that session
        and answer the record query beside it, else open a session of its own and a record query socket."""
        loop = asyncio.get_running_loop()
        bind_host = split_hostport(self.config.listen)[0]
        bootstrap, known = _dht_args(self.config)
        log = self._threadsafe_log()
        if shared is not None:
            self.dht, sockets = shared
            self.dht.on_event = self.dht.mapping.on_event = log
            self.responder = RecordResponder(bind_host, self.port, sockets)
        else:
            self.responder = RecordResponder(bind_host, self.port)
        if not self.via_relay:
            self._set_answer(self.record_value(), self.seq)
        for sock in self.responder.sockets:
            loop.add_reader(sock.fileno(), self.responder.on_readable, sock)
        if shared is None:
            await self._open_own(bootstrap, known, log)
        assert self.dht is not None
        self.log(
            "dht_listening",
            address=f"{self.dht.listen_host}:{self.dht.port}",
            record_query_port=self.port,
            shared_port=shared is not None,
            sockets=sorted({f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.dht.listened}),
            bootstrap=[f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in bootstrap] if bootstrap else "default",
            remembered=len(known),
        )
        self._task = loop.create_task(self._refresh_loop())

    async def _open_own(
        self, bootstrap: list[tuple[str, int]] | None, known: list[tuple[str, int]], log: Callable[..., None]
    ) -> None:
        where = dht_listen_address(self.config, self.host, self.port)
        mapping = maps_ports(where, self.config.upnp)
        try:
            self.dht = await asyncio.to_thread(
                Dht, where, bootstrap, known_nodes=known, on_event=log, port_mapping=mapping
            )
        except DhtUnavailable as exc:
            if self.config.dht_listen:
                raise
            self.log("warning", message=f"{exc}; the DHT takes any free port instead")
            self.dht = await asyncio.to_thread(
                Dht, f"{where.rpartition(':')[0]}:0", bootstrap, known_nodes=known, on_event=log, port_mapping=mapping
            )
        if mapping:
            self.dht.map_port("tcp", self.port, "phase/1")
            self.dht.map_port("udp", self.port, "record-query")

    def _threadsafe_log(self) -> Callable[..., None]:
        loop = asyncio.get_running_loop()

        def log(event: str, **fields: Any) -> None:
            loop.call_soon_threadsafe(lambda: self._on_event(event, fields))

        return log

    def _on_event(self, event: str, fields: dict[str, Any]) -> None:
        self.log(event, **fields)
        what = fields.get("what")
        if event.startswith("port_mapping_") and (what == "phase/1" or any(a[0] == what for a in self.also_announce)):
            self._changed.set()  # the record's addresses or an announced port changed: republish now

    def _set_answer(self, value: bytes, seq: int) -> None:
        assert self.responder is not None
        signature = records.sign_value(self.identity, value, seq)
        self.responder.set_record(record_answer(self.identity.public_key, value, seq, signature))

    async def _refresh_loop(self) -> None:
        assert self.dht is not None
        dht = self.dht
        first = True
        warmup = [5.0, 30.0]
        while True:
            # nothing to say until a relay holds a reservation; once one did, losing them all is said (an empty
            # record), so the DHT never keeps naming a relay that no longer holds this node
            while self.via_relay and not self.relays and first:
                self._changed.clear()
                await self._changed.wait()
            await asyncio.to_thread(dht.wait_bootstrapped, 10.0)
            value = self.record_value()
            started = time.monotonic()
            seq, stored = await asyncio.to_thread(dht.put_record, self.identity, value)
            if seq >= 0:
                self.seq = seq
                self._set_answer(value, seq)
            self.log(
                "dht_record_published" if first else "dht_record_refreshed",
                addresses=[] if self.via_relay or self.relays else self.addresses(),
                relays=self.relays,
                seq=seq,
                stored=stored,
                ms=int((time.monotonic() - started) * 1000),
                routing_nodes=dht.routing_nodes(),
            )
            hashes = rendezvous_classes(machine_arch(), self.caps.get("engines") or [RUNTIME_NAME])
            if self.relay_port:
                hashes["phase/1/relay"] = rendezvous_hash("relay")
            if not (self.via_relay or self.relays):  # a node behind a relay cannot answer the record query
                port = self.announce_port()
                for info_hash in hashes.values():
                    dht.announce(info_hash, port)
                self.log("dht_announced", port=port, hashes={k: v.hex() for k, v in hashes.items()})
                for name, extra_hash, extra_port in self.also_announce:
                    extra_port = self.external_port(name, extra_port)
                    dht.announce(extra_hash, extra_port)
                    self.log("dht_announced", port=extra_port, hashes={name: extra_hash.hex()})
            peers = await asyncio.to_thread(dht.get_peers, hashes["phase/1"], 5.0)
            self.log("dht_rendezvous", peers=len(peers))
            if self.on_peers is not None:
                self.on_peers(peers)
            if self._check_due():
                before = self.reachability.get("verdict")
                await self.check_reachability(peers)
                if self.reachability.get("verdict") != before:
                    self._changed.set()  # the record says how the node is reachable: republish
            if self._known_path is not None:
                await asyncio.to_thread(save_known_nodes, self._known_path, dht.known_nodes())
            # right after start the routing table is thin and the first put/announce reach few of the nodes
            # closest to their targets: repeat them soon (and while nobody stored the record), then every refresh
            refresh = self.config.dht_refresh_ms / 1000
            delay = min(warmup.pop(0) if warmup else refresh, refresh) if stored > 0 else min(10.0, refresh)
            first = False
            try:
                await asyncio.wait_for(self._changed.wait(), delay)  # or sooner: a mapping, a verdict, relays
            except asyncio.TimeoutError:
                pass
            self._changed.clear()

    def _check_due(self) -> bool:
        if not self.config.reachability or self.node is None:
            return False
        if self._checked is None:
            return True
        when, mapped = self._checked
        unknown = self.reachability.get("verdict") in (None, "unknown")
        return (
            mapped != self.mapped_address()
            or (unknown and time.monotonic() - when > 10)
            or time.monotonic() - when > self.config.dht_refresh_ms / 1000
        )

    async def check_reachability(self, endpoints: list[tuple[str, int]]) -> dict[str, Any]:
        """Ask up to three peers of the rendezvous (each proven by its record) to dial back; log the verdict
        (``reachability``) and keep it for the record and for ``phase dht``."""
        assert self.node is not None
        mapped = self.mapped_address()
        self._checked = (time.monotonic(), mapped)
        found = await asyncio.to_thread(query_records, endpoints, 1.0)
        me = self.identity.peer_id
        peers = [(r.peer_id, h, p) for (h, p), r in found.items() if r.peer_id != me]
        peers = list({p[0]: p for p in random.sample(peers, len(peers))}.values())[:3]
        if not peers:
            result: dict[str, Any] = {"verdict": "unknown", "address": None, "why": "no peer to ask yet"}
            answers = []
        else:
            port = self.announce_port()
            answers = await asyncio.to_thread(
                ask_dial_back, self.node.ctx, self.identity, peers, port, self.node.dial_nonces
            )
            bind = split_hostport(self.config.listen)[0]
            # a node listening on every interface is "public" when a peer saw any of their addresses
            local = {self.host, bind, *announce_addresses(bind, None)}
            result = verdict(answers, local, mapped, port)
        self.reachability = {**result, "asked": [a.to_json() for a in answers]}
        self.node.reachability = self.reachability
        self.log("reachability", **result, asked=len(answers), heard=sum(a.heard for a in answers))
        if self.on_reachability is not None:
            self.on_reachability(str(result["verdict"]))
        return self.reachability

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self.responder is not None:
            for sock in self.responder.sockets:
                asyncio.get_running_loop().remove_reader(sock.fileno())
            self.responder.close()
        if self.dht is not None:
            dht, self.dht = self.dht, None
            if self._known_path is not None:
                save_known_nodes(self._known_path, dht.known_nodes())
            await asyncio.to_thread(dht.close)
            self.log("dht_stopped", answered=self.responder.answered if self.responder else 0)
