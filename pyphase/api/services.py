"""Everything plasmd runs beside its ``phase/1`` socket for people and programs to look at it: the job
history, the metrics and the HTTP server (API, ``/metrics``, dashboard).

``NodeServices(node, config)`` hooks into the node before it starts (its event log is teed into the
metrics and the peer list, its ``on_result`` records each signed receipt); ``await start()`` once the
node listens; ``await close()`` at the end. The node itself knows nothing of HTTP.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pyphase.history import HISTORY_FILE, History
from pyphase.metrics import NodeMetrics
from pyphase.receipt import timestamp

if TYPE_CHECKING:
    from pyphase.api.server import ApiServer
    from pyphase.net.config import NodeConfig
    from pyphase.net.node import Node

API_PORT_OFFSET = 1
MAX_PEERS_LISTED = 1024


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
    """Where the API listens: ``api_listen`` when set, else 127.0.0.1 at the phase/1 port + 1
    (a node on a random port, ``--listen HOST:0``, puts its API on a random port too)."""
    from pyphase.net.addresses import split_hostport

    if config.api_listen:
        return split_hostport(config.api_listen, node_port + API_PORT_OFFSET)
    listen_port = split_hostport(config.listen)[1]
    return "127.0.0.1", (node_port + API_PORT_OFFSET) if listen_port else 0


class NodeServices:
    def __init__(self, node: Node, config: NodeConfig) -> None:
        self.node = node
        self.config = config
        path = None if config.ephemeral or not config.history_jobs else config.data_dir / HISTORY_FILE
        self.history = History(path, max(1, config.history_jobs), config.history_age_ms / 1000)
        self.server: ApiServer | None = None
        self.metrics = NodeMetrics(
            node,
            api_connections=lambda: self.server.connections() if self.server else 0,
            history_jobs=lambda: len(self.history),
        )
        self.started = time.time()
        self.mdns_peers: dict[str, float] = {}
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
                self.history.add(receipt, client)
        except Exception as exc:
            self.log("internal_error", error=f"history: {type(exc).__name__}: {exc}")

    def peers(self) -> list[dict[str, Any]]:
        """Peers this node knows: found on the LAN (mDNS instance names), and those API jobs were sent to."""
        out: list[dict[str, Any]] = []
        for name, seen in sorted(self.mdns_peers.items()):
            out.append({"name": name, "source": "mdns", "address": None, "last_seen": _stamp(seen)})
        if self.server is not None:
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
        """Serve the API (when ``api`` is on), writing ``DATA_DIR/api`` (its URL) and, beyond loopback, the token."""
        if not self.config.api:
            return
        from pyphase.api.server import API_FILE, ApiServer, is_loopback, write_token

        host, port = api_listen(self.config, self.node.port)
        token = None if is_loopback(host) else write_token(self.config.data_dir)
        self.server = ApiServer(
            self.node,
            self.history,
            self.metrics,
            token=token,
            max_connections=self.config.api_max_connections,
            peers=self.peers,
            started=self.started,
        )
        try:
            url = await self.server.start(host, port)
        except OSError as exc:
            raise OSError(f"cannot serve the API on {host}:{port}: {exc.strerror or exc}") from None
        _write(self.config.data_dir / API_FILE, url + "\n")
        self.log("api_listening", url=url, token_file=str(self.config.data_dir / "api_token") if token else None)

    async def close(self) -> None:
        if self.server is not None:
            from pyphase.api.server import API_FILE

            await self.server.close()
            (self.config.data_dir / API_FILE).unlink(missing_ok=True)
        self.history.close()


def _stamp(t: float) -> str:
    return timestamp(datetime.fromtimestamp(t, timezone.utc))


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
