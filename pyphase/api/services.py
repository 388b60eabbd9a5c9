"""Everything plasmd runs beside its ``phase/1`` socket for people and programs to look at it: the job
history, the metrics and the HTTP server (API, ``/metrics``, dashboard).

``NodeServices(node, config)`` hooks into the node before it starts (its event log is teed into the
metrics and the peer list, its ``on_result`` records each signed receipt); ``await start()`` once the
node listens; ``await close()`` at the end. The node itself knows nothing of HTTP.

The API's port is bound at start (so ``DATA_DIR/api`` is right at once), but aiohttp and the server behind it
are loaded only when the first connection arrives, which waits in the listen backlog meanwhile: an idle node
that nobody asks keeps about 8 MB less.
"""

from __future__ import annotations

import asyncio
import importlib
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pyphase import engines
from pyphase.api.listen import API_FILE, is_loopback, listen_sockets, write_token
from pyphase.history import HISTORY_FILE, History
from pyphase.metrics import NodeMetrics
from pyphase.receipt import timestamp

if TYPE_CHECKING:
    from pyphase.api.server import ApiServer
    from pyphase.net.config import NodeConfig
    from pyphase.net.node import Node

MAX_PEERS_LISTED = 1024
DHT_PEER_KEPT_S = 3600.0
#: the jobs a node finished are written to its history file at most this late, in one commit for all of them
HISTORY_COMMIT_S = 0.05


class _Tee:
    """The node's event log, also handed to an observer (who must not raise: it is wrapped)."""

    def __init__(self, log: Callable[..., None], observe: Callable[[str, dict[str, Any]], None]) -> None:
        self.log = log
        self.observe = observe

    def __call__(self, event: str, **fields: Any) -> None:
        self.log(event, **fields)
        try:
            self.observe(event, fields)
        except Exception as exc:  # an observer's bug must not take the node's logging down
            self.log("internal_error", error=f"observer: {type(exc).__name__}: {exc}")


def api_listen(config: NodeConfig, node_port: int) -> tuple[str, int]:
    """Where the API listens: ``api_listen`` when set, else 127.0.0.1 at the phase/1 port + 1000
    (a node on a random port, ``--listen HOST:0``, or one above 64535, puts its API on a random port)."""
    from pyphase.net.addresses import API_PORT_OFFSET, side_port, split_hostport

    if config.api_listen:
        return split_hostport(config.api_listen, node_port + API_PORT_OFFSET)
    listen_port = split_hostport(config.listen)[1]
    return "127.0.0.1", side_port(node_port, API_PORT_OFFSET) if listen_port else 0


class NodeServices:
    def __init__(self, node: Node, config: NodeConfig) -> None:
        self.node = node
        self.config = config
        path = None if config.ephemeral or not config.history_jobs else config.data_dir / HISTORY_FILE
        self.history = History(path, max(1, config.history_jobs), config.history_age_ms / 1000)
        engines.use_data_dir(None if config.ephemeral else config.data_dir)  # auto's history, compiled code
        self.server: ApiServer | None = None
        self.sockets: list[socket.socket] = []
        self.url = ""
        self.token: str | None = None
        self._serving: asyncio.Task[None] | None = None
        self.metrics = NodeMetrics(
            node,
            api_connections=lambda: self.server.connections() if self.server else 0,
            history_jobs=lambda: len(self.history),
        )
        self.started = time.time()
        self.mdns_peers: dict[str, float] = {}
        self.dht_peers: dict[str, float] = {}
        self._history_commit: asyncio.TimerHandle | None = None
        self.log = node.log
        node.log = _Tee(node.log, self._on_event)
        node.on_result = self._on_result

    def _on_event(self, event: str, fields: dict[str, Any]) -> None:
        self.metrics.on_event(event, fields)
        if event == "peer_found" and len(self.mdns_peers) < MAX_PEERS_LISTED:
            self.mdns_peers[str(fields.get("name"))] = time.time()
        elif event == "peer_lost":
            self.mdns_peers.pop(str(fields.get("name")), None)

    def _on_result(self, receipt: dict[str, Any], client: str) -> None:
        try:
            self.metrics.on_receipt(receipt)
            if self.config.history_jobs:
                self.history.add(receipt, client, commit=False)
                if self._history_commit is None:
                    loop = asyncio.get_running_loop()
                    self._history_commit = loop.call_later(HISTORY_COMMIT_S, self._commit_history)
        except Exception as exc:
            self.log("internal_error", error=f"history: {type(exc).__name__}: {exc}")

    def _commit_history(self) -> None:
        self._history_commit = None
        try:
            self.history.commit()
        except Exception as exc:
            self.log("internal_error", error=f"history: {type(exc).__name__}: {exc}")

    def saw_dht_peers(self, peers: list[tuple[str, int]]) -> None:
        """The endpoints the DHT's rendezvous gave (announced under ``phase/1``), kept for an hour."""
        now = time.time()
        for host, port in peers[:MAX_PEERS_LISTED]:
            self.dht_peers[f"{'[' + host + ']' if ':' in host else host}:{port}"] = now
        for endpoint, seen in list(self.dht_peers.items()):
            if seen < now - DHT_PEER_KEPT_S:
                del self.dht_peers[endpoint]
        while len(self.dht_peers) > MAX_PEERS_LISTED:
            del self.dht_peers[min(self.dht_peers, key=self.dht_peers.__getitem__)]

    def peers(self) -> list[dict[str, Any]]:
        """Peers this node knows: found on the LAN (mDNS instance names), on the DHT's rendezvous (endpoints, as
        announced), and those API jobs were sent to."""
        out: list[dict[str, Any]] = []
        for name, seen in sorted(self.mdns_peers.items()):
            out.append({"name": name, "source": "mdns", "address": None, "last_seen": _stamp(seen)})
        for endpoint, seen in sorted(self.dht_peers.items()):
            out.append({"name": endpoint, "source": "dht", "address": None, "last_seen": _stamp(seen)})
        if self.server is not None:  # before the API's first connection there is no API job either
            for address, seen in sorted(self.server.jobs.used_peers.items()):
                out.append(
                    {
                        "name": address.split("@")[0][:16],
                        "source": "jobs",
                        "address": address,
                        "last_seen": _stamp(seen),
                    }
                )
        return out

    async def start(self) -> None:
        """Listen for the API (when ``api`` is on), writing ``DATA_DIR/api`` (its URL) and, beyond loopback, the token."""
        if not self.config.api:
            return
        host, port = api_listen(self.config, self.node.port)
        self.token = None if is_loopback(host) else write_token(self.config.data_dir)
        note = None
        try:
            self.sockets, self.url = listen_sockets(host, port, self.config.api_max_connections)
        except OSError as exc:
            if self.config.api_listen or not port:  # a place the user chose: refuse rather than serve elsewhere
                raise OSError(f"cannot serve the API on {host}:{port}: {exc.strerror or exc}") from None
            # the default place is taken (another program, another node's API): any free port, said in the log
            self.sockets, self.url = listen_sockets(host, 0, self.config.api_max_connections)
            note = f"{host}:{port} (the default) is taken ({exc.strerror or exc}): serving on a free port"
        loop = asyncio.get_running_loop()
        for sock in self.sockets:
            loop.add_reader(sock.fileno(), self._first_connection)
        _write(self.config.data_dir / API_FILE, self.url + "\n")
        token_file = str(self.config.data_dir / "api_token") if self.token else None
        self.log("api_listening", url=self.url, token_file=token_file, **({"note": note} if note else {}))

    def _first_connection(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self.sockets:
            loop.remove_reader(sock.fileno())
        self._serving = loop.create_task(self._serve())

    async def _serve(self) -> None:
        """Load the HTTP server (in a thread: importing aiohttp takes a moment) and hand it the sockets."""
        try:
            server_module = await asyncio.to_thread(importlib.import_module, "pyphase.api.server")
            server: ApiServer = server_module.ApiServer(
                self.node,
                self.history,
                self.metrics,
                token=self.token,
                max_connections=self.config.api_max_connections,
                peers=self.peers,
                started=self.started,
            )
            self.server = server
            await server.start(self.sockets, self.url)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the node serves phase/1 still; the API says why it is gone
            self.log("internal_error", error=f"API: {type(exc).__name__}: {exc}")
            for sock in self.sockets:
                sock.close()

    async def close(self) -> None:
        if self._serving is not None and not self._serving.done():
            self._serving.cancel()
            try:
                await self._serving
            except asyncio.CancelledError:
                pass
        if self.server is not None:
            await self.server.close()
        elif self.sockets:
            loop = asyncio.get_running_loop()
            for sock in self.sockets:
                loop.remove_reader(sock.fileno())
                sock.close()
        if self.config.api:
            (self.config.data_dir / API_FILE).unlink(missing_ok=True)
        if self._history_commit is not None:
            self._history_commit.cancel()
            self._history_commit = None
        self.history.close()  # commits what the timer did not


def _stamp(t: float) -> str:
    return timestamp(datetime.fromtimestamp(t, timezone.utc))


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
