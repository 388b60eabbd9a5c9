"""LAN discovery: mDNS / DNS-SD service ``_phase._tcp.local.`` (the ``zeroconf`` package).

A node announces one service whose TXT record carries its peer id (which is its public key), its
CURVE transport key, the protocol and a few capabilities. Interfaces are ``"all"`` (every IPv4
interface that ``ifaddr`` enumerates) or an explicit list; tests use ``127.0.0.1`` only, and the
``PHASE_MDNS_INTERFACES`` environment variable sets the default for clients and nodes alike.
"""

from __future__ import annotations

import os
import queue
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable

from pyphase.identity import Identity, public_key_from_peer_id
from pyphase.net import wire

SERVICE = "_phase._tcp.local."
INTERFACES_ENV = "PHASE_MDNS_INTERFACES"


def interface_choice(text: str | None) -> Any:
    """``"all"`` -> zeroconf's ``InterfaceChoice.All``; ``"a,b"`` -> ``["a", "b"]``. None: the environment's."""
    from zeroconf import InterfaceChoice

    text = text if text is not None else os.environ.get(INTERFACES_ENV, "all")
    if text.strip().lower() in ("", "all"):
        return InterfaceChoice.All
    return [part.strip() for part in text.split(",") if part.strip()]


def announce_addresses(host: str, interfaces: Any) -> list[str]:
    """IPv4 addresses to put in the announcement for a node listening on ``host``."""
    if host not in ("0.0.0.0", "*", ""):
        return [host]
    if isinstance(interfaces, list):
        return interfaces
    import ifaddr

    out = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                out.append(ip.ip)
    return out or ["127.0.0.1"]


@dataclass(frozen=True)
class DiscoveredPeer:
    address: str  # PEERID@HOST:PORT
    peer_id: str
    host: str
    port: int
    properties: dict[str, str]
    found_after_s: float


def _txt(identity: Identity, caps: dict[str, Any]) -> dict[str, str]:
    import zmq.utils.z85

    return {
        "id": identity.peer_id,
        "ck": zmq.utils.z85.encode(identity.curve_keypair()[0]).decode("ascii"),
        "proto": wire.PROTOCOL,
        "arch": str(caps.get("arch", "")),
        "rt": f"{caps.get('runtime', '')}/{caps.get('runtime_version', '')}",
        "cores": str(caps.get("cores", "")),
        "workers": str(caps.get("load", {}).get("workers", "")),
    }


def _service_info(identity: Identity, addresses: list[str], port: int, caps: dict[str, Any]) -> Any:
    from zeroconf import ServiceInfo

    short = identity.peer_id[:16]
    return ServiceInfo(
        SERVICE,
        f"{short}.{SERVICE}",
        addresses=[socket.inet_aton(a) for a in addresses],
        port=port,
        properties=_txt(identity, caps),
        server=f"phase-{short}.local.",
    )


def _peer_from_info(info: Any, started: float) -> DiscoveredPeer | None:
    props = {}
    for k, v in (info.properties or {}).items():
        if isinstance(k, bytes) and isinstance(v, bytes):
            props[k.decode("utf-8", "replace")] = v.decode("utf-8", "replace")
    peer_id = props.get("id", "")
    try:
        public_key_from_peer_id(peer_id)
    except ValueError:
        return None
    if props.get("proto") != wire.PROTOCOL:
        return None
    addresses = info.parsed_addresses()
    v4 = [a for a in addresses if ":" not in a]
    if not v4 or not info.port:
        return None
    host = v4[0]
    return DiscoveredPeer(
        f"{peer_id}@{host}:{info.port}", peer_id, host, int(info.port), props, time.monotonic() - started
    )


class Announcer:
    """A node's presence on the LAN (asyncio); also reports other nodes appearing and disappearing."""

    def __init__(
        self,
        identity: Identity,
        host: str,
        port: int,
        caps: dict[str, Any],
        interfaces: str | None = None,
        on_event: Callable[..., None] | None = None,
    ) -> None:
        self.identity = identity
        self.interfaces = interface_choice(interfaces)
        self.addresses = announce_addresses(host, self.interfaces)
        self.info = _service_info(identity, self.addresses, port, caps)
        self.on_event = on_event or (lambda *a, **k: None)
        self._azc: Any = None
        self._browser: Any = None

    async def start(self) -> None:
        from zeroconf import ServiceStateChange
        from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf

        self._azc = AsyncZeroconf(interfaces=self.interfaces)
        await (await self._azc.async_register_service(self.info))  # probe the name, then announce
        own = self.info.name

        def changed(zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
            if name == own:
                return
            if state_change is ServiceStateChange.Added:
                self.on_event("peer_found", name=name)
            elif state_change is ServiceStateChange.Removed:
                self.on_event("peer_lost", name=name)

        self._browser = AsyncServiceBrowser(self._azc.zeroconf, SERVICE, handlers=[changed])
        self.on_event("mdns_announced", name=own, addresses=self.addresses)

    async def close(self) -> None:
        if self._azc is None:
            return
        azc, self._azc = self._azc, None
        try:
            if self._browser is not None:
                await self._browser.async_cancel()
            await (await azc.async_unregister_service(self.info))  # goodbye packets sent
        finally:
            await azc.async_close()


MDNS_GROUP = ("224.0.0.251", 5353)


def _interface_addresses(interfaces: str | None) -> list[str]:
    choice = interface_choice(interfaces)
    if isinstance(choice, list):
        return choice
    import ifaddr

    return [
        ip.ip
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
        if isinstance(ip.ip, str) and not ip.ip.startswith("127.")
    ] or ["127.0.0.1"]


def _peers_from_response(data: bytes, started: float) -> list[DiscoveredPeer]:
    """Peers described by one mDNS response (PTR + SRV + TXT + A records, as zeroconf responders send)."""
    from zeroconf import DNSAddress, DNSIncoming, DNSPointer, DNSService, DNSText, ServiceInfo  # type: ignore[attr-defined]  # exported, not in __all__

    msg = DNSIncoming(data)
    if not msg.valid or msg.is_query():
        return []
    records = msg.answers()
    services = {r.name.lower(): r for r in records if isinstance(r, DNSService)}
    texts = {r.name.lower(): r.text for r in records if isinstance(r, DNSText)}
    addresses: dict[str, list[bytes]] = {}
    for r in records:
        if isinstance(r, DNSAddress) and len(r.address) == 4:
            addresses.setdefault(r.name.lower(), []).append(r.address)
    out = []
    for r in records:
        if not isinstance(r, DNSPointer) or r.name.lower() != SERVICE.lower():
            continue
        srv = services.get(r.alias.lower())
        if srv is None or r.alias.lower() not in texts or srv.server.lower() not in addresses:
            continue
        info = ServiceInfo(
            SERVICE,
            r.alias,
            port=srv.port,
            addresses=addresses[srv.server.lower()],
            properties=texts[r.alias.lower()],
            server=srv.server,
        )
        peer = _peer_from_info(info, started)
        if peer is not None:
            out.append(peer)
    return out


def _one_shot_query(interfaces: str | None, found: queue.SimpleQueue[Any], timeout: float, started: float) -> None:
    """An RFC 6762 one-shot (legacy unicast) query from an ephemeral port: responders answer it at once and
    directly, where a multicast answer given in the last second is held back a second (RFC 6762 §14).
    Its DNS id is random: zeroconf responders drop a byte-identical packet seen in the last 0.8 s, so a
    second process asking as soon after (a user running `phase peers` twice) heard nothing."""
    import secrets
    import select

    from zeroconf import DNSOutgoing, DNSQuestion  # type: ignore[attr-defined]
    from zeroconf.const import _CLASS_IN, _FLAGS_QR_QUERY, _TYPE_PTR

    out = DNSOutgoing(_FLAGS_QR_QUERY, multicast=False, id_=1 + secrets.randbelow(0xFFFF))
    out.add_question(DNSQuestion(SERVICE, _TYPE_PTR, _CLASS_IN))
    packets = out.packets()
    socks = []
    try:
        for address in _interface_addresses(interfaces):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(sock)
            try:
                sock.bind((address, 0))
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(address))
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
                for packet in packets:
                    sock.sendto(packet, MDNS_GROUP)
            except OSError:
                continue
        deadline = time.monotonic() + timeout
        while socks:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            ready, _, _ = select.select(socks, [], [], remaining)
            for sock in ready:
                try:
                    data = sock.recv(9000)
                    for peer in _peers_from_response(data, started):
                        found.put(peer)
                except Exception:  # a malformed answer from someone on the LAN: ignore it
                    continue
    finally:
        for sock in socks:
            sock.close()


def discover(
    timeout: float = 1.0, *, interfaces: str | None = None, settle: float | None = 0.25, want: int | None = None
) -> list[DiscoveredPeer]:
    """Browse for nodes for at most ``timeout`` seconds. With ``settle``, stop once that long passed with
    nothing new found (after at least one find); with ``want``, as soon as that many are found.

    Two queries go out at once: a one-shot query from an ephemeral port (answered directly and at once) and
    the browser's, as a multicast (QM) question: zeroconf's default first question asks for unicast answers
    (QU), which on a host where several mDNS stacks share port 5353 reach whichever socket the kernel picks,
    and a multicast answer already given in the last second is held back a second; so a fresh process
    often heard nothing within its 1 s window."""
    from zeroconf import DNSQuestionType, ServiceBrowser, ServiceStateChange, Zeroconf

    import threading

    started = time.monotonic()
    names: queue.SimpleQueue[Any] = queue.SimpleQueue()  # names from the browser, peers from the one-shot
    threading.Thread(target=_one_shot_query, args=(interfaces, names, timeout, started), daemon=True).start()

    def changed(zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        if state_change is ServiceStateChange.Added:
            names.put(name)

    zc = Zeroconf(interfaces=interface_choice(interfaces))
    found: dict[str, DiscoveredPeer] = {}
    try:
        browser = ServiceBrowser(zc, SERVICE, handlers=[changed], question_type=DNSQuestionType.QM)
        deadline = started + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                item = names.get(timeout=remaining)
            except queue.Empty:
                break
            if isinstance(item, DiscoveredPeer):
                peer: DiscoveredPeer | None = item
            else:
                info = zc.get_service_info(
                    SERVICE, item, timeout=int(max(0.05, min(remaining, 1.0)) * 1000), question_type=DNSQuestionType.QM
                )
                peer = _peer_from_info(info, started) if info is not None else None
            if peer is not None and peer.peer_id not in found:
                found[peer.peer_id] = peer
                if want is not None and len(found) >= want:
                    break
                if settle is not None:
                    deadline = min(started + timeout, time.monotonic() + settle)
        browser.cancel()
        while not names.empty():  # answers already heard when the window closed (a slow start-up ate it)
            item = names.get_nowait()
            if isinstance(item, DiscoveredPeer) and item.peer_id not in found and (want is None or len(found) < want):
                found[item.peer_id] = item
    finally:
        zc.close()
    return sorted(found.values(), key=lambda p: p.found_after_s)
