"""A node's presence on the Mainline DHT: its signed record kept published, rendezvous announces, the
record query answered on the ``phase/1`` port number, good DHT nodes remembered across restarts.

Runs beside :class:`pyphase.net.node.Node` in ``plasmd``'s event loop; libtorrent's blocking calls go
to worker threads. Every step is logged as an event (``dht_listening``, ``dht_bootstrapped``,
``dht_record_published``, ``dht_announced``, ``dht_rendezvous``, ``dht_stopped``); a DHT that cannot
start is a ``warning`` and the node goes on serving its direct address.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

from pyphase.identity import Identity
from pyphase.net import records
from pyphase.net.addresses import split_hostport
from pyphase.net.config import NodeConfig
from pyphase.net.dht import (
    Dht,
    DhtUnavailable,
    RecordResponder,
    load_known_nodes,
    parse_endpoints,
    record_answer,
    rendezvous_hash,
    save_known_nodes,
)
from pyphase.receipt import machine_arch
from pyphase.runtime import RUNTIME_NAME, RUNTIME_VERSION

KNOWN_NODES_FILE = "dht-nodes.json"


def dht_listen_address(config: NodeConfig, host: str, port: int) -> str:
    """``dht_listen``, else the ``phase/1`` listen host at the node's port + 2 (+ 1 is the HTTP API's)."""
    if config.dht_listen:
        return config.dht_listen
    bind = split_hostport(config.listen)[0]
    return f"{bind}:{port + 2 if port < 65534 else 0}"


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
    ) -> None:
        self.config = config
        self.identity = identity
        self.host = host
        self.port = port
        self.caps = caps
        self.log = log
        self.dht: Dht | None = None
        self.responder: RecordResponder | None = None
        self.seq = 0
        self._task: asyncio.Task[None] | None = None
        self.relay_port = 0  # this node offers relaying there (plasmd --relay): said in the record, announced
        self.via_relay = bool(config.via_relay.strip())  # reached only through relays: the record names them
        self.relays: list[str] = []
        self._wake = asyncio.Event()
        self._known_path = config.data_dir / KNOWN_NODES_FILE if not config.ephemeral else None

    def record_value(self) -> bytes:
        caps = {
            "arch": machine_arch(),
            "cores": int(self.caps.get("cores", 0)),
            "workers": int(self.caps.get("load", {}).get("workers", 0)),
            "memory": int(self.caps.get("memory_bytes", 0)),
        }
        if self.relay_port:
            caps["relay"] = self.relay_port
        engines = [f"{RUNTIME_NAME}/{RUNTIME_VERSION}"]
        if self.via_relay:
            return records.encode_value([], engines, caps, relays=self.relays)
        return records.encode_value([f"{self.host}:{self.port}"], engines, caps)

    def set_relays(self, relays: list[str]) -> None:
        """The relays holding a reservation for this node changed: republish the record now."""
        if relays != self.relays:
            self.relays = list(relays)
            self._wake.set()

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

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        bind_host = split_hostport(self.config.listen)[0]
        self.responder = RecordResponder(bind_host, self.port)
        if not self.via_relay:
            self._set_answer(self.record_value(), self.seq)
        loop.add_reader(self.responder.sock.fileno(), self.responder.on_readable)
        bootstrap = parse_endpoints(self.config.dht_bootstrap) if self.config.dht_bootstrap.strip() else None
        known = load_known_nodes(self._known_path) if self._known_path else []
        where = dht_listen_address(self.config, self.host, self.port)
        log = self._threadsafe_log()
        try:
            self.dht = await asyncio.to_thread(Dht, where, bootstrap, known_nodes=known, on_event=log)
        except DhtUnavailable as exc:
            if self.config.dht_listen:
                raise
            self.log("warning", message=f"{exc}; the DHT takes any free port instead")
            self.dht = await asyncio.to_thread(
                Dht, f"{where.rpartition(':')[0]}:0", bootstrap, known_nodes=known, on_event=log
            )
        self.log(
            "dht_listening",
            address=f"{self.dht.listen_host}:{self.dht.port}",
            record_query_port=self.port,
            bootstrap=[f"{h}:{p}" for h, p in bootstrap] if bootstrap else "default",
            remembered=len(known),
        )
        self._task = loop.create_task(self._refresh_loop())

    def _threadsafe_log(self) -> Callable[..., None]:
        loop = asyncio.get_running_loop()

        def log(event: str, **fields: Any) -> None:
            loop.call_soon_threadsafe(lambda: self.log(event, **fields))

        return log

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
            while self.via_relay and not self.relays:  # nothing to say until a relay holds a reservation
                self._wake.clear()
                await self._wake.wait()
            self._wake.clear()
            await asyncio.to_thread(dht.wait_bootstrapped, 10.0)
            value = self.record_value()
            started = time.monotonic()
            seq, stored = await asyncio.to_thread(dht.put_record, self.identity, value)
            if seq >= 0:
                self.seq = seq
                self._set_answer(value, seq)
            self.log(
                "dht_record_published" if first else "dht_record_refreshed",
                seq=seq,
                stored=stored,
                ms=int((time.monotonic() - started) * 1000),
                routing_nodes=dht.routing_nodes(),
            )
            hashes = {
                "phase/1": rendezvous_hash(),
                f"phase/1/arch/{machine_arch()}": rendezvous_hash(f"arch/{machine_arch()}"),
            }
            if self.relay_port:
                hashes["phase/1/relay"] = rendezvous_hash("relay")
            if not self.via_relay:  # a node behind a relay cannot answer the record query at its own port
                for info_hash in hashes.values():
                    dht.announce(info_hash, self.port)
                self.log("dht_announced", port=self.port, hashes={k: v.hex() for k, v in hashes.items()})
            peers = await asyncio.to_thread(dht.get_peers, hashes["phase/1"], 5.0)
            self.log("dht_rendezvous", peers=len(peers))
            if self._known_path is not None:
                await asyncio.to_thread(save_known_nodes, self._known_path, dht.known_nodes())
            # right after start the routing table is thin and the first put/announce reach few of the nodes
            # closest to their targets: repeat them soon (and while nobody stored the record), then every refresh
            refresh = self.config.dht_refresh_ms / 1000
            delay = min(warmup.pop(0) if warmup else refresh, refresh) if stored > 0 else min(10.0, refresh)
            first = False
            try:
                await asyncio.wait_for(self._wake.wait(), delay)  # or sooner, when the relays change
            except TimeoutError:
                pass

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self.responder is not None:
            asyncio.get_running_loop().remove_reader(self.responder.sock.fileno())
            self.responder.close()
        if self.dht is not None:
            dht, self.dht = self.dht, None
            if self._known_path is not None:
                save_known_nodes(self._known_path, dht.known_nodes())
            await asyncio.to_thread(dht.close)
            self.log("dht_stopped", answered=self.responder.answered if self.responder else 0)
