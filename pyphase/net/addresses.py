"""Addresses on the Phase network, parsed and checked in one place: peers, listen addresses, SOCKS proxies.

``PEERID@HOST:PORT`` names a peer (its Ed25519 key and where it listens), ``HOST:PORT`` a listening socket
or a proxy. Used by the client, the node, the daemon's settings and the CLI (``phase boot serve --listen``).
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Mapping

from pyphase.identity import public_key_from_peer_id

__all__ = [
    "API_PORT_OFFSET",
    "DEFAULT_PORT",
    "RELAY_PORT_OFFSET",
    "RELAY_PREFIX",
    "SOCKS_PROXY_ENV",
    "parse_address",
    "parse_socks_proxy",
    "resolve_socks_proxy",
    "side_port",
    "split_hostport",
    "split_relayed",
    "valid_host",
]

DEFAULT_PORT = 7465
# A node's phase/1 TCP listener, its DHT's UDP socket and the record query share one port number P
# (pyphase.net.portshare). Its other services listen by default at P plus these: far from P, so nodes started on
# consecutive ports (7465, 7466, ...) never take each other's (at P + 1, P + 3 they did)
API_PORT_OFFSET = 1000  # the HTTP API (TCP)
RELAY_PORT_OFFSET = 3000  # the relay service (TCP)


def side_port(port: int, offset: int) -> int:
    """The default port of a node's service at ``offset`` from its phase/1 ``port``; 0 (any free port) past 65535."""
    return port + offset if 0 < port and port + offset <= 65535 else 0


RELAY_PREFIX = "relay/"  # PEERID@relay/HOST:PORT: the node PEERID, reached through the Phase relay at HOST:PORT
SOCKS_PROXY_ENV = "PHASE_SOCKS_PROXY"


def split_hostport(
    text: str, default_port: int | None = DEFAULT_PORT, default_host: str = "0.0.0.0"
) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 in brackets) -> (host, port); no port: ``default_port`` (None: required),
    no host: ``default_host``. Raises ``ValueError``."""
    host, sep, port = text.rpartition(":")
    if not sep:
        if default_port is None:
            raise ValueError(f"not HOST:PORT: {text!r}")
        return text, default_port
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"not HOST:PORT: {text!r}")
    return host.strip("[]") or default_host, int(port)


_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")


def valid_host(host: str) -> bool:
    """An IPv4 or IPv6 literal (brackets already removed) or a DNS name (``localhost``, ``xxxx.onion``)."""
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    return 0 < len(host) <= 253 and all(_LABEL.match(label) for label in host.split("."))


def split_relayed(text: str) -> tuple[str, bool]:
    """``PEERID@relay/HOST:PORT`` -> (``PEERID@HOST:PORT``, True): a node reached through the relay at
    HOST:PORT (:mod:`pyphase.net.relay`); any other text -> (text, False)."""
    peer_id, sep, hostport = text.strip().partition("@")
    if sep and hostport.startswith(RELAY_PREFIX):
        return f"{peer_id}@{hostport[len(RELAY_PREFIX) :]}", True
    return text, False


def parse_address(text: str) -> tuple[str, bytes, str, int]:
    """``PEERID@HOST:PORT`` -> (peer id, Ed25519 public key, host, port); raises ``ValueError``.

    HOST is an IP address or a DNS name. Names are resolved where the connection is made: by this
    machine, or, through a SOCKS proxy, by the proxy (so ``PEERID@xxxx.onion:7465`` works through Tor).
    A missing port means :data:`DEFAULT_PORT`.
    """
    peer_id, sep, hostport = text.strip().partition("@")
    if not sep:
        raise ValueError(
            f"a peer address is PEERID@HOST:PORT, got {text!r} (a node prints its own when it starts "
            f'and writes it to DATA_DIR/address: --peer "$(cat DATA_DIR/address)")'
        )
    key = public_key_from_peer_id(peer_id)
    raw_host = hostport.rpartition(":")[0] if ":" in hostport else hostport
    host, port = split_hostport(hostport)
    bracketed = raw_host.startswith("[") or raw_host.endswith("]")
    if bracketed and not (raw_host.startswith("[") and raw_host.endswith("]") and ":" in host):
        host = ""  # "[::1:7000", "[name]:7000": not an address
    if not raw_host.strip("[]") or not port or not valid_host(host):
        raise ValueError(f"a peer address needs a host (an IP address or a DNS name) and a port: {text!r}")
    return peer_id.lower(), key, host, port


def parse_socks_proxy(text: str) -> str:
    """Check the ``HOST:PORT`` of a SOCKS5 proxy and return it normalised (no spaces, no leading zeros).

    HOST is an IPv4 address, an IPv6 address in brackets (``[::1]:9050``) or a DNS name (resolved by this
    machine: it names the proxy, not a peer); PORT is 1-65535 and required. Raises ``ValueError``.
    """
    value = text.strip()
    if "://" in value:
        raise ValueError(f"a SOCKS proxy is HOST:PORT, without a scheme (e.g. 127.0.0.1:9050), got {text!r}")
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        bare, bracketed = host[1:-1], True
    else:
        bare, bracketed = host, False
    ok = (
        sep
        and port.isascii()
        and port.isdigit()
        and 0 < int(port) <= 65535
        and bare
        and valid_host(bare)
        and (":" in bare) == bracketed
    )
    if not ok:
        raise ValueError(
            f"a SOCKS proxy is HOST:PORT (e.g. 127.0.0.1:9050, [::1]:9050 or tor:9050; port 1-65535), got {text!r}"
        )
    return f"{host}:{int(port)}"


def resolve_socks_proxy(socks_proxy: str | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """The proxy a :class:`Client` uses: ``socks_proxy`` when given (``""``: none, even if the variable is
    set), else ``PHASE_SOCKS_PROXY`` from ``environ`` (default ``os.environ``; unset or empty: none).
    The text is checked by :func:`parse_socks_proxy`; a bad value raises ``ValueError`` naming its source."""
    if socks_proxy is not None:
        return parse_socks_proxy(socks_proxy) if socks_proxy.strip() else None
    value = (os.environ if environ is None else environ).get(SOCKS_PROXY_ENV, "")
    if not value.strip():
        return None
    try:
        return parse_socks_proxy(value)
    except ValueError as exc:
        raise ValueError(f"{SOCKS_PROXY_ENV}: {exc}") from None
