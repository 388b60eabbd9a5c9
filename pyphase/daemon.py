"""``plasmd``: the Phase node daemon.

    plasmd --listen 127.0.0.1:7465 --data-dir /tmp/n1 --no-mdns

Once listening it prints its address ``PEERID@HOST:PORT`` on standard output and writes it to
``DATA_DIR/address``. Events go to standard error as JSON lines. SIGTERM (or SIGINT) stops taking
offers, lets running jobs finish for ``shutdown_grace``, answers the rest ``rejected`` and exits 0.
Settings: ``--config FILE`` (TOML), ``PLASMD_*`` environment variables, flags; ``--help-config``
lists every key with its default.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

from pyphase.api.services import NodeServices
from pyphase.errors import IdentityError, SandboxUnavailable
from pyphase.identity import Identity
from pyphase.net import config as config_mod
from pyphase.net.addresses import split_hostport
from pyphase.net.config import NodeConfig, load_config
from pyphase.net.node import EventLog, ListenError, Node, raise_descriptor_limit, release_free_memory


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="plasmd",
        description="The Phase node: runs WebAssembly jobs for peers "
        "over phase/1 (CURVE-encrypted ZeroMQ) and signs a receipt for each.",
        epilog="Settings come from flags, then PLASMD_<KEY> variables, then the "
        "--config file, then defaults (see --help-config).",
    )
    p.add_argument("--config", metavar="FILE", help="TOML configuration file")
    p.add_argument("--help-config", action="store_true", help="print every configuration key and its default")
    p.add_argument("--listen", metavar="HOST:PORT", help="address to bind (port 0: any free port)")
    p.add_argument("--advertise", metavar="HOST", help="host to announce when listening on 0.0.0.0")
    p.add_argument("--data-dir", metavar="DIR", help="identity, module cache and address file")
    p.add_argument("--identity", metavar="FILE", help="identity key (default DATA_DIR/identity.key)")
    p.add_argument("--ephemeral", action="store_true", default=None, help="fresh in-memory identity (Private mode)")
    p.add_argument("--workers", type=int, metavar="N", help="job workers (default: one per core)")
    p.add_argument(
        "--no-sandbox",
        dest="sandbox",
        action="store_false",
        default=None,
        help="run jobs in threads of this process instead of isolated workers",
    )
    p.add_argument("--no-mdns", dest="mdns", action="store_false", default=None, help="do not use LAN discovery")
    p.add_argument("--mdns-interfaces", metavar="LIST", help='"all" or comma-separated IPv4 addresses')
    p.add_argument("--log-format", choices=("json", "text"), help="event log format (default json)")
    p.add_argument(
        "--boot-store",
        metavar="DIR",
        help="also serve this Phase Boot artifact store over HTTP (machines boot from this node; see docs/BOOT.md)",
    )
    p.add_argument(
        "--api",
        metavar="HOST:PORT",
        dest="api_listen",
        help="HTTP API, /metrics and dashboard "
        "(default 127.0.0.1 at the phase/1 port + 1000, or a free port when that is taken; "
        "beyond loopback a token is required, docs/API.md)",
    )
    p.add_argument("--no-api", dest="api", action="store_false", default=None, help="serve no HTTP API")
    p.add_argument("--boot-listen", metavar="HOST:PORT", help="address of that HTTP server (default 0.0.0.0:8080)")
    p.add_argument(
        "--no-dht",
        dest="dht",
        action="store_false",
        default=None,
        help="stay off the Mainline DHT (no record, no rendezvous; Private mode)",
    )
    p.add_argument(
        "--dht-bootstrap",
        nargs="+",
        action="extend",
        metavar="HOST:PORT",
        help="DHT nodes to join through (default: libtorrent's Mainline router)",
    )
    p.add_argument(
        "--dht-listen", metavar="IP:PORT", help="the DHT's UDP socket (default: the listen address, phase/1's own port)"
    )
    p.add_argument(
        "--relay",
        action="store_true",
        default=None,
        help="offer relaying to nodes that cannot be reached (the relay sees only ciphertext; limits: --help-config)",
    )
    p.add_argument("--relay-listen", metavar="HOST:PORT", help="the relay service (default: listen host, port + 3000)")
    p.add_argument(
        "--via-relay",
        metavar="auto|HOST:PORT|PEERID",
        help="be reached through relays (this node is not reachable directly): relays' HOST:PORT,..., "
        "a relay's PEERID, or auto (found on the DHT); of more than two, the two with the best round trip "
        "and load are held and the rest kept as spares",
    )
    p.add_argument(
        "--no-upnp",
        dest="upnp",
        action="store_false",
        default=None,
        help="map no port on the router (UPnP-IGD, NAT-PMP); the record then names only the listen address",
    )
    p.add_argument(
        "--no-reachability",
        dest="reachability",
        action="store_false",
        default=None,
        help="ask no peer to dial back (no reachability verdict)",
    )
    return p


def _identity(config: NodeConfig) -> Identity:
    if config.ephemeral:
        return Identity.generate()
    path = Path(config.identity) if config.identity else config.data_dir / "identity.key"
    return Identity.load_or_create(path)


def _write_address(data_dir: Path, address: str) -> None:
    target = data_dir / "address"
    tmp = data_dir / f".address.{os.getpid()}.tmp"
    tmp.write_text(address + "\n")
    os.replace(tmp, target)


async def run_node(config: NodeConfig, log: EventLog, node_class: type[Node] = Node) -> int:
    raise_descriptor_limit()  # connections are capped below it, with descriptors kept for jobs
    identity = _identity(config)
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    address_file = config.data_dir / "address"
    address_file.unlink(missing_ok=True)
    node = node_class(config, identity, log=log)
    services = NodeServices(node, config)  # history, metrics, HTTP API: hooks into the node
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, node.request_stop)
    holder: list[Any] = []  # the Announcer, once it exists
    announcing: asyncio.Task[None] | None = None
    boot_source = _BootSource(config, log) if config.boot_store else None
    presence: Any = None
    relay_server: Any = None
    relay_agent: Any = None
    fallback: _RelayFallback | None = None
    shared: Any = None  # the DHT on phase/1's port number, opened before phase/1 listens
    try:
        if boot_source is not None:
            await boot_source.start()
        if config.dht:
            from pyphase.net.dhtnode import open_shared_dht

            shared = await open_shared_dht(config, node.log)
        address = await node.start(shared[0].port if shared is not None else None)
        await services.start()
        _write_address(config.data_dir, address)  # first, so whoever reads the printed line finds the file
        print(address, flush=True)
        if config.mdns:
            listen_host = config.listen.rpartition(":")[0] or "0.0.0.0"
            host = node.host if listen_host not in ("0.0.0.0", "*") else "0.0.0.0"
            announcing = asyncio.get_running_loop().create_task(
                _announce(identity, host, node.port, node.capabilities(), config.mdns_interfaces, node.log, holder)
            )
        if config.relay:
            relay_server = await _start_relay(config, identity, node)
        if config.dht:
            presence = await _join_dht(config, identity, node, node.log, relay_server, shared)
            shared = None  # the presence owns it now
            if presence is not None:
                presence.on_peers = services.saw_dht_peers
            if presence is not None and boot_source is not None:
                boot_source.announce_on(presence)
        if config.via_relay.strip() not in ("", "off"):
            relay_agent = _start_relay_agent(config, identity, node, presence, config.via_relay.strip())
        elif not config.via_relay.strip() and presence is not None and not config.relay:
            fallback = _RelayFallback(config, identity, node, presence)
            presence.on_reachability = fallback.on_verdict
        release_free_memory()  # what start-up freed, before the node settles in to wait
        await node.serve()
    finally:
        if relay_agent is not None:
            await relay_agent.close()
        if fallback is not None:
            await fallback.close()
        if relay_server is not None:
            await relay_server.close()
        if presence is not None:
            await presence.close()
        if shared is not None:
            await asyncio.to_thread(shared[0].close)
            for sock in shared[1]:
                sock.close()
        if announcing is not None:
            if not announcing.done():
                announcing.cancel()
            for announcer in holder:
                try:
                    await announcer.close()
                except Exception as exc:
                    log("warning", message=f"mDNS close: {type(exc).__name__}: {exc}")
        address_file.unlink(missing_ok=True)
        if boot_source is not None:
            await asyncio.to_thread(boot_source.close)
        await services.close()
        await node.close()
    return 0


class _BootSource:
    """The node as a Phase Boot source: the artifact store over HTTP, announced on the LAN when mDNS is on and
    on the DHT when the DHT is on."""

    def __init__(self, config: NodeConfig, log: EventLog) -> None:
        self.config = config
        self.log = log
        self.server: Any = None
        self.announcer: Any = None

    async def start(self) -> None:
        from pyphase.boot.server import ArtifactServer
        from pyphase.boot.store import ArtifactStore

        root = Path(self.config.boot_store)
        if not root.is_dir():
            raise OSError(f"boot_store {root} is not a directory (make one with 'phase boot sign --store {root}')")
        good = ArtifactStore(root).scan()
        host, port = split_hostport(self.config.boot_listen, 8080)
        try:
            self.server = ArtifactServer(root, host, port).start()
        except OSError as exc:
            raise OSError(f"cannot serve the boot store on {host}:{port}: {exc.strerror or exc}") from None
        self.log("boot_serving", url=self.server.url, store=str(root), artifacts=len(good))
        if self.config.mdns:
            # zeroconf's blocking API must not run on this event loop's thread
            await asyncio.to_thread(self._announce, host)

    def _announce(self, host: str) -> None:
        try:
            from pyphase.boot.mdns import announce_source

            self.announcer = announce_source(self.server.port, host, self.config.mdns_interfaces)
            self.log("boot_announced", name=self.announcer.name, addresses=self.announcer.addresses)
        except Exception as exc:  # the store is still served at its address
            self.log("warning", message=f"boot source mDNS unavailable: {type(exc).__name__}: {exc}")

    def announce_on(self, presence: Any) -> None:
        """Keep the store announced on the DHT under its release key's info-hash (Phase Boot, Internet mode)."""
        from pyphase.boot.dht import boot_info_hash, store_release_key
        from pyphase.errors import PhaseError

        try:
            info_hash = boot_info_hash(store_release_key(self.config.boot_store))
        except PhaseError as exc:  # the store is still served at its address and on the LAN
            self.log("warning", message=f"boot source not announced on the DHT: {exc}")
            return
        presence.also_announce.append(("phase-boot", info_hash, self.server.port))
        presence.map_also("phase-boot", self.server.port)  # a machine outside the router can then fetch from it

    def close(self) -> None:
        if self.announcer is not None:
            self.announcer.close()
        if self.server is not None:
            self.server.close()


async def _announce(
    identity: Identity,
    host: str,
    port: int,
    caps: dict[str, Any],
    interfaces: str,
    log: Callable[..., None],
    holder: list[Any],
) -> None:
    """Announce on the LAN; probing the name takes about a second, so this runs beside the serving node."""
    try:
        from pyphase.net.discovery import Announcer

        announcer = Announcer(identity, host, port, caps, interfaces, on_event=log)
        holder.append(announcer)
        await announcer.start()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # no zeroconf, no multicast here: the node still serves direct addresses
        log("warning", message=f"mDNS unavailable: {type(exc).__name__}: {exc}")


async def _start_relay(config: NodeConfig, identity: Identity, node: Node) -> Any:
    """The relay service of ``--relay`` (pyphase.net.relay), listening; an address it cannot bind stops plasmd."""
    from pyphase.net.relay import RelayLimits, RelayServer, relay_listen_address

    limits = RelayLimits(
        reservations=config.relay_reservations,
        circuits=config.relay_circuits,
        node_circuits=config.relay_node_circuits,
        address_circuits=config.relay_address_circuits,
        circuit_bytes=config.relay_circuit_bytes,
        circuit_time_s=config.relay_circuit_time_ms / 1000,
        reservation_s=config.relay_reservation_time_ms / 1000,
    )
    server = RelayServer(identity, node.log, limits)
    host, port = split_hostport(relay_listen_address(config.listen, node.port, config.relay_listen))
    try:
        await server.start(host, port)
    except OSError as exc:
        raise OSError(f"cannot offer relaying on {host}:{port}: {exc.strerror or exc} (set relay_listen)") from None
    node.log("relay_listening", address=f"{server.host}:{server.port}", limits=limits.to_wire())
    return server


def _start_relay_agent(config: NodeConfig, identity: Identity, node: Node, presence: Any, via: str) -> Any:
    """Reservations at the relays ``via`` names (found in the background when they come from the DHT); the
    DHT record names the relays that hold one (pyphase.net.relay)."""
    from pyphase.net.relay import RelayAgent

    listen_host = split_hostport(config.listen)[0]
    local = ("127.0.0.1" if listen_host in ("0.0.0.0", "*", "") else listen_host, node.port)
    agent = RelayAgent(identity, local, node.log, sources=node.relayed)
    if presence is not None:
        agent.on_change = lambda: presence.set_relays(agent.reserved())
    rediscover: Callable[[], Awaitable[list[tuple[str, int]]]] | None = None
    if presence is not None and ":" not in via and "," not in via:  # auto or a relay's PEERID: the DHT again

        async def find_again() -> list[tuple[str, int]]:
            found: list[tuple[str, int]] = await presence.find_relays(None if via == "auto" else via)
            return found

        rediscover = find_again

    agent.begin(_relays_for(via, presence, node.log), rediscover)
    return agent


class _RelayFallback:
    """``via_relay = ""``: relays found on the DHT once the dial-back verdict is ``unreachable``, given up
    once it is ``public`` or ``mapped`` (the record then names the node's own addresses again)."""

    def __init__(self, config: NodeConfig, identity: Identity, node: Node, presence: Any) -> None:
        self.config, self.identity, self.node, self.presence = config, identity, node, presence
        self.agent: Any = None
        self._closing: set[asyncio.Task[None]] = set()

    def on_verdict(self, verdict: str) -> None:
        if verdict == "unreachable" and self.agent is None:
            self.node.log("relay_fallback", verdict=verdict, action="looking for relays on the DHT")
            self.agent = _start_relay_agent(self.config, self.identity, self.node, self.presence, "auto")
        elif verdict in ("public", "mapped") and self.agent is not None:
            self.node.log("relay_fallback", verdict=verdict, action="reachable: relays given up")
            agent, self.agent = self.agent, None
            task = asyncio.get_running_loop().create_task(agent.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            self.presence.set_relays([])

    async def close(self) -> None:
        if self.agent is not None:
            await self.agent.close()
        await asyncio.gather(*self._closing, return_exceptions=True)


async def _relays_for(value: str, presence: Any, log: Callable[..., None]) -> list[tuple[str, int]]:
    """``via_relay`` as relay endpoints: given, or the relay service of a relay's record, or found on the DHT."""
    if ":" in value or "," in value:
        return [split_hostport(part.strip(), None) for part in value.split(",")]
    if presence is None or presence.dht is None:
        log("warning", message=f"via_relay {value} needs the DHT to find relays (it is off or unavailable)")
        return []
    attempt = 0
    while True:
        found: list[tuple[str, int]] = await presence.find_relays(None if value == "auto" else value)
        if found:
            log("relay_found", relays=[f"{h}:{p}" for h, p in found])
            return found
        attempt += 1
        await asyncio.sleep(min(2.0 * attempt, 30.0))


async def _join_dht(
    config: NodeConfig,
    identity: Identity,
    node: Node,
    log: Callable[..., None],
    relay_server: Any = None,
    shared: Any = None,
) -> Any:
    """The node's DHT presence (pyphase.net.dhtnode), or None with a warning: the direct address still serves."""
    presence: Any = None
    try:
        from pyphase.net.dhtnode import DhtPresence

        presence = DhtPresence(config, identity, node.host, node.port, node.capabilities(), log, node=node)
        if relay_server is not None:
            presence.relay_port = relay_server.port
        await presence.start(shared)
        return presence
    except (ImportError, OSError, RuntimeError) as exc:  # PermissionError: the test suite's DHT guard
        log("warning", message=f"DHT unavailable: {type(exc).__name__}: {exc}")
        if presence is not None:
            await presence.close()
        return None


def main(argv: Sequence[str] | None = None, *, node_class: type[Node] = Node) -> int:
    """Run ``plasmd`` with ``argv``; ``node_class`` is for test launchers that need a node that cheats."""
    args = build_parser().parse_args(argv)
    if args.help_config:
        print(config_mod.help_text(), end="")
        return 0
    try:
        config = load_config(
            args.config,
            listen=args.listen,
            advertise=args.advertise,
            data_dir=Path(args.data_dir) if args.data_dir else None,
            identity=args.identity,
            ephemeral=args.ephemeral,
            workers=args.workers,
            sandbox=args.sandbox,
            mdns=args.mdns,
            mdns_interfaces=args.mdns_interfaces,
            log_format=args.log_format,
            boot_store=args.boot_store,
            boot_listen=args.boot_listen,
            api=args.api,
            api_listen=args.api_listen,
            dht=args.dht,
            dht_listen=args.dht_listen,
            dht_bootstrap=",".join(args.dht_bootstrap) if args.dht_bootstrap else None,
            relay=args.relay,
            relay_listen=args.relay_listen,
            via_relay=args.via_relay,
            upnp=args.upnp,
            reachability=args.reachability,
        )
    except (OSError, ValueError) as exc:
        print(f"plasmd: {exc}", file=sys.stderr)
        return 2
    stream = open(config.log_file, "a", buffering=1) if config.log_file else sys.stderr
    log = EventLog(config.log_format, stream)
    try:
        return asyncio.run(run_node(config, log, node_class))
    except (IdentityError, SandboxUnavailable) as exc:
        print(f"plasmd: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"plasmd: {exc.strerror if isinstance(exc, ListenError) else exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
