"""Who a relayed client is, as far as the node can tell: the client's address as its relay reported it.

A node's relay splice (:class:`pyphase.net.relay.RelayAgent`) feeds each circuit into the node's own ROUTER
over a local connection, so every relayed client would look like one loopback address and share one
per-address share of the node (``docs/NETWORK.md``, "What a stranger may take of a node"). Instead the
splice connects from a loopback address of its own for each client the relay names (``127.93.X.Y``; all of
127/8 is this machine's), and the node reads that source address back as ``"CLIENT via RELAY"``: the name its
per-address caps, queue turns and events use.

The relay is trusted with this only as far as it can be: its word names addresses *under its own name*, so
it can split or lump its own clients, never take the share of a direct client or of another relay's.
"""

from __future__ import annotations

import ipaddress
import threading

__all__ = ["ALIAS_PREFIX", "RelayedSources", "client_name"]

ALIAS_PREFIX = "127.93."
_ALIASES = 65534  # 127.93.0.1 ... 127.93.255.254
MAX_CLIENT_CHARS = 64


def client_name(client: object, relay: str) -> str:
    """The name a relayed client's connections count under: the address the relay reported (checked to be
    an IP address; IPv4-mapped IPv6 as IPv4), ``?`` when it sent none or junk, then `` via RELAY``."""
    who = "?"
    if isinstance(client, str) and len(client) <= MAX_CLIENT_CHARS:
        try:
            ip = ipaddress.ip_address(client)
        except ValueError:
            pass
        else:
            mapped = getattr(ip, "ipv4_mapped", None)
            who = str(mapped or ip)
    return f"{who} via {relay}"


class RelayedSources:
    """Loopback source addresses handed to relayed clients' names (thread-safe: the splice threads take and
    give them back, the node's loop reads them)."""

    def __init__(self) -> None:
        self._names: dict[str, str] = {}  # alias -> name
        self._aliases: dict[str, str] = {}  # name -> alias
        self._uses: dict[str, int] = {}  # name -> connections open from its alias
        self._next = 0
        self._lock = threading.Lock()

    def take(self, name: str) -> str:
        """The loopback address a connection of ``name`` is to come from (the same for all of its open
        connections, a fresh one otherwise: an address given back is reused last)."""
        with self._lock:
            alias = self._aliases.get(name)
            if alias is None:
                for _ in range(_ALIASES):
                    self._next = self._next % _ALIASES + 1
                    alias = f"{ALIAS_PREFIX}{self._next >> 8}.{self._next & 255}"
                    if alias not in self._names:
                        break
                else:  # cannot happen: a node holds far fewer circuits than aliases
                    raise RuntimeError("no loopback address left for relayed clients")
                self._names[alias] = name
                self._aliases[name] = alias
            self._uses[name] = self._uses.get(name, 0) + 1
            return alias

    def give_back(self, name: str) -> None:
        """One connection of ``name`` ended."""
        with self._lock:
            left = self._uses.get(name, 0) - 1
            if left > 0:
                self._uses[name] = left
                return
            self._uses.pop(name, None)
            alias = self._aliases.pop(name, None)
            if alias is not None:
                self._names.pop(alias, None)

    def name(self, address: str) -> str:
        """``address`` as the node counts it: the relayed client's name for one of the aliases, else itself."""
        return self._names.get(address, address)

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` is a relayed client's (with a circuit open now)."""
        return name in self._aliases
