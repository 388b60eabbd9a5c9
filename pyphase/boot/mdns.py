"""Announce an artifact source on the LAN: DNS-SD service ``_phase-boot._tcp.local.``.

Stage 1 in ``phase.mode=local`` finds sources with ``phase-discover``, a one-shot mDNS query
for this service (SRV gives the port, A the address). Uses the ``zeroconf`` package, as the
node's own discovery does (:mod:`pyphase.net.discovery`).
"""

from __future__ import annotations

import socket
from typing import Any

SERVICE = "_phase-boot._tcp.local."


class BootAnnouncer:
    """Registers one ``_phase-boot._tcp`` instance for ``port`` on ``addresses`` until :meth:`close`."""

    def __init__(
        self, port: int, addresses: list[str], interfaces: list[str] | None = None, name: str | None = None
    ) -> None:
        self.port = port
        self.addresses = addresses
        self.interfaces = interfaces
        self.name = name or f"phase-boot-{socket.gethostname().split('.')[0]}-{port}"
        self._zc: Any = None
        self._info: Any = None

    def start(self) -> BootAnnouncer:
        from zeroconf import InterfaceChoice, IPVersion, ServiceInfo, Zeroconf

        self._zc = Zeroconf(interfaces=self.interfaces or InterfaceChoice.All, ip_version=IPVersion.V4Only)
        self._info = ServiceInfo(
            SERVICE,
            f"{self.name}.{SERVICE}",
            addresses=[socket.inet_aton(a) for a in self.addresses],
            port=self.port,
            properties={"path": "/", "v": "1"},
            server=f"{self.name}.local.",
        )
        self._zc.register_service(self._info)
        return self

    def close(self) -> None:
        if self._zc is not None:
            try:
                self._zc.unregister_service(self._info)
            finally:
                self._zc.close()
                self._zc = None

    def __enter__(self) -> BootAnnouncer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def addresses_for(host: str, interfaces: list[str] | None) -> list[str]:
    """IPv4 addresses to announce for a server listening on ``host``."""
    if host not in ("0.0.0.0", "", "*"):
        return [host]
    if interfaces:
        return interfaces
    import ifaddr

    found = [
        ip.ip
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
        if isinstance(ip.ip, str) and not ip.ip.startswith("127.")
    ]
    return found or ["127.0.0.1"]


def announce_source(port: int, listen_host: str, interfaces: str | None) -> BootAnnouncer:
    """Announce an artifact server listening on ``listen_host:port`` (started); ``interfaces``: "all" or None
    for every interface, else comma-separated IPv4 addresses. Used by ``phase boot serve`` and plasmd."""
    chosen = [i.strip() for i in interfaces.split(",") if i.strip()] if interfaces and interfaces != "all" else None
    return BootAnnouncer(port, addresses_for(listen_host, chosen), chosen).start()
