"""``plasmd`` configuration: one TOML file (all keys optional), environment overrides, command-line flags.

Precedence: flag > environment (``PLASMD_<KEY>``, upper case) > file > default. Every key, its default
and its meaning (this table is the documentation ``plasmd --help-config`` prints)::

    listen          = "0.0.0.0:7465"    # HOST:PORT of the node's one ROUTER socket (port 0: any free port)
    advertise       = ""                # host to print (and write to the address file) when listening on
                                        # 0.0.0.0 (default 127.0.0.1); mDNS announces every interface's address
    data_dir        = "~/.local/share/phase/node"   # identity, module cache, the address file
    identity        = ""                # key file (default DATA_DIR/identity.key, created mode 0600)
    ephemeral       = false             # fresh identity in memory only (Private mode: nothing on disk)
    workers         = 0                 # job workers (0: one per core)
    sandbox         = true              # isolated worker processes; unavailable: plasmd refuses to start; false: threads in the node
    job_nice        = 0                 # added to the sandbox workers' nice value (0-19): above 0, the node's own
                                        # threads and the host's other processes come before the CPU its jobs take
    job_demote_after = "100ms"          # CPU a job's worker may use at normal priority; past it the worker runs
                                        # at nice + 10 for the rest of its job, so the node's threads and short
                                        # jobs come first ("0": never)
    queue           = 64                # jobs accepted beyond the running ones before offers get "busy"
    cache_bytes     = "256MiB"          # on-disk module cache bound (LRU)
    blob_cache_bytes = "1GiB"           # on-disk store of input-tree files (LRU), so a tree is sent once
    output_wait     = "60s"             # how long a finished job's output tree waits for its client to fetch it
    blob_thread     = true              # write and hash arriving tree files on a thread of their own (false: on
                                        # the event loop, the benchmark's reference)
    mdns            = true              # announce on the LAN as _phase._tcp.local. and log peers found/lost
    mdns_interfaces = "all"             # "all" or comma-separated IPv4 addresses (tests use "127.0.0.1")
    log_format      = "json"            # "json" (one object per line) or "text"
    log_file        = ""                # default: standard error
    shutdown_grace  = "10s"             # on SIGTERM: how long running jobs may finish before being rejected
    boot_store      = ""                # a Phase Boot artifact store to serve over HTTP, so machines can boot
                                        # from this node (see docs/BOOT.md); "" serves nothing
    boot_listen     = "0.0.0.0:8080"    # where that store is served; announced as _phase-boot._tcp when mdns is on,
                                        # and on the DHT under the key in STORE/boot/release.pub when dht is on
    # the HTTP side (docs/API.md): JSON API, /metrics, dashboard; job history
    api             = true              # serve them
    api_listen      = ""                # HOST:PORT; "" = 127.0.0.1 at the phase/1 port + 1000. Beyond loopback,
                                        # requests need the token plasmd writes to DATA_DIR/api_token (0600)
    api_max_connections = 64            # open HTTP connections; beyond, requests are answered 503
    api_body_timeout = "30s"            # how long a request body may take to arrive (then 408)
    history_jobs    = 10000             # jobs kept in DATA_DIR/history.sqlite (in memory when ephemeral); 0: none
    history_age     = "168h"            # and for at most this long

    # What one stranger may take of this node (docs/NETWORK.md, "What a stranger may take"). Keys are
    # free to make, so each cap holds per CURVE key and per source address.
    client_jobs     = 8                 # jobs one client key may have waiting for a module, queued or running
    address_jobs    = 32                # the same for every client of one source address together
    client_waiting  = 2                 # offers of one key (twice that: one address) waiting for their module
    module_wait     = "5s"              # how long an accepted offer waits for its module before it is dropped
    held_bytes      = "96MiB"           # inputs and modules of jobs not yet running, all clients together
    send_queue      = "32MiB"           # result bytes queued for one connection; more are dropped (abandoned)
    address_connections = 64            # CURVE connections from one source address
    connections     = 0                 # connections in all (0: the open-file limit less what jobs reserve)

    # The Internet: the BitTorrent Mainline DHT (docs/NETWORK.md). Private mode runs with dht = false.
    dht             = true              # publish a signed record under the node's key, announce for rendezvous,
                                        # answer the record query on UDP at the phase/1 port number
    dht_listen      = ""                # IP:PORT of the DHT's UDP socket (default: listen address, phase/1's port)
    dht_bootstrap   = ""                # HOST:PORT,... to join through; "": libtorrent's default Mainline router
                                        # (plus the good nodes remembered in DATA_DIR/dht-nodes.json either way)
    dht_refresh     = "20m"             # republish the record (good for 2 h) and re-announce this often
    upnp            = true              # map the phase/1 port and the DHT port on the home router (UPnP-IGD and
                                        # NAT-PMP, through the DHT's libtorrent session; nothing with dht = false or
                                        # a loopback listen address) and publish the mapped address in the record;
                                        # with boot_store, its HTTP port too (the external port is announced)
    reachability    = true              # ask peers found through the DHT to dial back (docs/NETWORK.md,
                                        # "Reachability"); the verdict is the "reachability" event

    # Relays (docs/NETWORK.md, "Relays"): a reachable node carries circuits to nodes that cannot be reached;
    # the relay sees only CURVE ciphertext. A node behind a relay publishes "via relay" in its DHT record.
    relay           = false             # offer relaying (announced on the DHT under sha1("phase/1/relay"))
    relay_listen    = ""                # HOST:PORT of the relay service (default: listen host, phase/1 port + 3000)
    relay_reservations = 64             # nodes holding a reservation at once (4 from one source address)
    relay_circuits  = 128               # circuits open at once, in all
    relay_node_circuits = 8             # circuits open at once to one node
    relay_address_circuits = 4          # circuits open at once from one client address
    relay_circuit_bytes = "256MiB"      # bytes one circuit carries (both ways) before it is closed
    relay_circuit_time = "10m"          # how long one circuit lives (the client's ZeroMQ then reconnects)
    relay_reservation_time = "1h"       # a reservation not refreshed within this ends (nodes refresh at half)
    via_relay       = ""                # reach this node through relays: "HOST:PORT,..." of relays (the best 2
                                        # held, ranked by round trip and load, the rest spares), a relay's PEERID,
                                        # or "auto" (relays found on the DHT); the record then names the relays
                                        # instead of the node's own address.
                                        # "": "auto" once the dial-back verdict is "unreachable"; "off": never

    [limits]                            # the most a job may ask for; bigger offers are rejected "limits"
    memory          = "256MiB"
    fuel            = 0                 # 0: any
    timeout         = "60s"
    output          = "16MiB"
    module          = "16MiB"           # largest module accepted ("module_too_big")
    input           = "16MiB"           # largest input accepted ("input_too_big")
    tree            = "1GiB"            # the most file bytes of a job's input trees ("tree_too_big")
    tree_files      = 10000             # the most files in a job's input trees ("tree_too_big")
    disk            = "1GiB"            # the most fs.disk_bytes a job may ask to write
    files           = 10000             # the most fs.files (files written) a job may ask for

Sizes and durations are text with a unit: B; KB, MB, GB (powers of 1000); KiB, MiB, GiB (powers of 1024);
ms, s, m (minutes), h. A bare number in text is refused (is "64" bytes or MiB?), except 0 (for timeout: no
limit); a TOML integer size is a byte count.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from pyphase.identity import default_data_dir
from pyphase.limits import Limits, parse_duration_ms, parse_size
from pyphase.net.addresses import DEFAULT_PORT, split_hostport


def help_text() -> str:
    """This module's documentation as ``plasmd --help-config`` prints it: plain text, not reST."""
    return (__doc__ or "").replace("``", "").replace("::\n", ":\n").strip() + "\n"


def check_listen(text: str, key: str, default_port: int = DEFAULT_PORT) -> None:
    """Refuse a listen address that would not mean what it seems: a bare port (``7071`` would be read as a host
    named 7071) or a malformed ``HOST:PORT``; the message says what to write instead."""
    value = text.strip()
    if value.isdigit():
        raise ValueError(
            f"{key} {text!r} is a port without a host: write 127.0.0.1:{value} (this machine only) "
            f"or 0.0.0.0:{value} (every interface)"
        )
    try:
        split_hostport(value, default_port)
    except ValueError:
        raise ValueError(
            f"{key} {text!r} is not HOST:PORT (e.g. 127.0.0.1:{default_port}; port 0-65535, 0 for any free port)"
        ) from None


def check_via_relay(text: str) -> None:
    """``via_relay`` is "", "off", "auto", one relay's PEERID, or HOST:PORT,... (ports required); else ``ValueError``."""
    value = text.strip()
    if value in ("", "auto", "off"):
        return
    if ":" not in value and "," not in value:
        from pyphase.identity import public_key_from_peer_id

        try:
            public_key_from_peer_id(value)
        except ValueError:
            raise ValueError(f"via_relay {text!r} is not auto, off, a relay's PEERID or HOST:PORT,...") from None
        return
    for part in value.split(","):
        try:
            split_hostport(part.strip(), None)
        except ValueError:
            raise ValueError(f"via_relay {text!r}: {part.strip()!r} is not HOST:PORT") from None


@dataclass(frozen=True)
class NodeConfig:
    listen: str = f"0.0.0.0:{DEFAULT_PORT}"
    advertise: str = ""
    data_dir: Path = field(default_factory=default_data_dir)
    identity: str = ""
    ephemeral: bool = False
    workers: int = 0
    sandbox: bool = True
    job_nice: int = 0
    job_demote_after_ms: int = 100
    queue: int = 64
    cache_bytes: int = 256 << 20
    blob_cache_bytes: int = 1 << 30
    output_wait_ms: int = 60_000
    blob_thread: bool = True
    mdns: bool = True
    mdns_interfaces: str = "all"
    log_format: str = "json"
    log_file: str = ""
    shutdown_grace_ms: int = 10_000
    boot_store: str = ""
    boot_listen: str = "0.0.0.0:8080"
    dht: bool = True
    dht_listen: str = ""
    dht_bootstrap: str = ""
    dht_refresh_ms: int = 20 * 60_000
    relay: bool = False
    relay_listen: str = ""
    relay_reservations: int = 64
    relay_circuits: int = 128
    relay_node_circuits: int = 8
    relay_address_circuits: int = 4
    relay_circuit_bytes: int = 256 << 20
    relay_circuit_time_ms: int = 600_000
    relay_reservation_time_ms: int = 3_600_000
    via_relay: str = ""
    upnp: bool = True
    reachability: bool = True
    api: bool = True
    api_listen: str = ""
    api_max_connections: int = 64
    api_body_timeout_ms: int = 30_000
    history_jobs: int = 10_000
    history_age_ms: int = 168 * 3_600_000
    client_jobs: int = 8
    address_jobs: int = 32
    client_waiting: int = 2
    module_wait_ms: int = 5_000
    held_bytes: int = 96 << 20
    send_queue: int = 32 << 20
    address_connections: int = 64
    connections: int = 0
    max_memory: int = 256 << 20
    max_fuel: int = 0
    max_timeout_ms: int = 60_000
    max_output: int = 16 << 20
    max_module: int = 16 << 20
    max_input: int = 16 << 20
    max_tree_bytes: int = 1 << 30
    max_tree_files: int = 10_000
    max_disk: int = 1 << 30
    max_files: int = 10_000

    @property
    def ceiling(self) -> Limits:
        """The largest limits this node accepts, as a :class:`Limits` (``within()`` compares against it)."""
        return Limits(
            memory_bytes=self.max_memory,
            fuel=self.max_fuel,
            timeout_ms=self.max_timeout_ms,
            output_bytes=self.max_output,
        )

    @property
    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1

    def replace(self, **changes: Any) -> NodeConfig:
        return replace(self, **changes)


# key in file / env -> (attribute, parser)
_TOP: dict[str, tuple[str, Any]] = {
    "listen": ("listen", str),
    "advertise": ("advertise", str),
    "data_dir": ("data_dir", lambda v: Path(v).expanduser()),
    "identity": ("identity", str),
    "ephemeral": ("ephemeral", "bool"),
    "workers": ("workers", int),
    "sandbox": ("sandbox", "bool"),
    "job_nice": ("job_nice", int),
    "job_demote_after": ("job_demote_after_ms", parse_duration_ms),
    "queue": ("queue", int),
    "cache_bytes": ("cache_bytes", parse_size),
    "blob_cache_bytes": ("blob_cache_bytes", parse_size),
    "output_wait": ("output_wait_ms", parse_duration_ms),
    "blob_thread": ("blob_thread", "bool"),
    "mdns": ("mdns", "bool"),
    "mdns_interfaces": ("mdns_interfaces", str),
    "log_format": ("log_format", str),
    "log_file": ("log_file", str),
    "shutdown_grace": ("shutdown_grace_ms", parse_duration_ms),
    "boot_store": ("boot_store", lambda v: str(Path(v).expanduser()) if v else ""),
    "boot_listen": ("boot_listen", str),
    "dht": ("dht", "bool"),
    "dht_listen": ("dht_listen", str),
    "dht_bootstrap": ("dht_bootstrap", str),
    "dht_refresh": ("dht_refresh_ms", parse_duration_ms),
    "relay": ("relay", "bool"),
    "relay_listen": ("relay_listen", str),
    "relay_reservations": ("relay_reservations", int),
    "relay_circuits": ("relay_circuits", int),
    "relay_node_circuits": ("relay_node_circuits", int),
    "relay_address_circuits": ("relay_address_circuits", int),
    "relay_circuit_bytes": ("relay_circuit_bytes", parse_size),
    "relay_circuit_time": ("relay_circuit_time_ms", parse_duration_ms),
    "relay_reservation_time": ("relay_reservation_time_ms", parse_duration_ms),
    "via_relay": ("via_relay", str),
    "upnp": ("upnp", "bool"),
    "reachability": ("reachability", "bool"),
    "api": ("api", "bool"),
    "api_listen": ("api_listen", str),
    "api_max_connections": ("api_max_connections", int),
    "api_body_timeout": ("api_body_timeout_ms", parse_duration_ms),
    "history_jobs": ("history_jobs", int),
    "history_age": ("history_age_ms", parse_duration_ms),
    "client_jobs": ("client_jobs", int),
    "address_jobs": ("address_jobs", int),
    "client_waiting": ("client_waiting", int),
    "module_wait": ("module_wait_ms", parse_duration_ms),
    "held_bytes": ("held_bytes", parse_size),
    "send_queue": ("send_queue", parse_size),
    "address_connections": ("address_connections", int),
    "connections": ("connections", int),
}
_LIMITS: dict[str, tuple[str, Any]] = {
    "memory": ("max_memory", parse_size),
    "fuel": ("max_fuel", int),
    "timeout": ("max_timeout_ms", parse_duration_ms),
    "output": ("max_output", parse_size),
    "module": ("max_module", parse_size),
    "input": ("max_input", parse_size),
    "tree": ("max_tree_bytes", parse_size),
    "tree_files": ("max_tree_files", int),
    "disk": ("max_disk", parse_size),
    "files": ("max_files", int),
}


def _parse(parser: Any, value: Any, key: str) -> Any:
    if parser == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key}: not a boolean: {value!r}")
    try:
        return parser(value)
    except Exception as exc:
        raise ValueError(f"{key}: {exc}") from None


def load_config(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None, **overrides: Any
) -> NodeConfig:
    """Defaults, then the TOML file, then ``PLASMD_*`` variables, then ``overrides`` (non-None values)."""
    changes: dict[str, Any] = {}
    if path is not None:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
        for key, value in doc.items():
            if key == "limits" and isinstance(value, dict):
                for lkey, lvalue in value.items():
                    if lkey not in _LIMITS:
                        raise ValueError(f"{path}: unknown key limits.{lkey} (plasmd --help-config lists every key)")
                    attr, parser = _LIMITS[lkey]
                    changes[attr] = _parse(parser, lvalue, f"limits.{lkey}")
            elif key in _TOP:
                attr, parser = _TOP[key]
                changes[attr] = _parse(parser, value, key)
            else:
                raise ValueError(f"{path}: unknown key {key} (plasmd --help-config lists every key)")
    environ = os.environ if env is None else env
    for key, (attr, parser) in _TOP.items():
        value = environ.get(f"PLASMD_{key.upper()}")
        if value is not None:
            changes[attr] = _parse(parser, value, f"PLASMD_{key.upper()}")
    for key, (attr, parser) in _LIMITS.items():
        value = environ.get(f"PLASMD_LIMITS_{key.upper()}")
        if value is not None:
            changes[attr] = _parse(parser, value, f"PLASMD_LIMITS_{key.upper()}")
    changes.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(NodeConfig)}
    unknown = set(changes) - known
    if unknown:
        raise ValueError(f"unknown settings: {sorted(unknown)}")
    config = NodeConfig(**changes)
    check_listen(config.listen, "listen")
    check_listen(config.boot_listen, "boot_listen", 8080)
    if config.dht_listen:
        check_listen(config.dht_listen, "dht_listen")
    if config.dht_bootstrap.strip():
        from pyphase.net.dht import parse_endpoints

        parse_endpoints(config.dht_bootstrap)
    if config.api_listen:
        check_listen(config.api_listen, "api_listen")
    if config.relay_listen:
        check_listen(config.relay_listen, "relay_listen")
    check_via_relay(config.via_relay)
    for name in ("relay_reservations", "relay_circuits", "relay_node_circuits", "relay_address_circuits"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be at least 1")
    if config.api_max_connections < 1 or config.history_jobs < 0:
        raise ValueError("api_max_connections must be at least 1 and history_jobs at least 0")
    for name in ("client_jobs", "address_jobs", "client_waiting", "address_connections"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be at least 1")
    if config.relay_circuit_bytes < 1:
        raise ValueError("relay_circuit_bytes must be at least 1 byte")
    if config.relay_reservation_time_ms < 1000:
        raise ValueError("relay_reservation_time must be at least 1s")
    if not 0 <= config.job_nice <= 19:
        raise ValueError(f"job_nice must be between 0 and 19, got {config.job_nice}")
    if config.job_demote_after_ms < 0:
        raise ValueError("job_demote_after must be 0 (never) or more")
    if config.connections < 0:
        raise ValueError("connections must be 0 (from the open-file limit) or more")
    if config.log_format not in ("json", "text"):
        raise ValueError(f"log_format must be json or text, got {config.log_format!r}")
    return config
