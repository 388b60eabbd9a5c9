"""Phase Boot, Internet mode: boot sources announce themselves on the Mainline DHT (BEP 5).

A source announces its HTTP port under :func:`boot_info_hash` of the release public key; stage 1
(``phase-dht``, ``csrc/boot/dht.c``) runs the ``get_peers`` lookup for the same hash and fetches from
whoever answers, verifying everything against that key exactly as with seeds. The announce is
unauthenticated: a liar can only name a source that then has to serve a manifest signed by the key.

The release public key of a store is ``STORE/boot/release.pub`` (``phase boot sign`` writes it);
announcing refuses a key under which the store's manifest does not verify.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyphase.boot import keys
from pyphase.boot.errors import BootError
from pyphase.boot.manifest import load_manifest, verify_manifest
from pyphase.boot.store import MANIFEST_PATH

INFO_HASH_PREFIX = b"phase-boot/1"
RELEASE_PUB_PATH = "boot/release.pub"
REANNOUNCE_S = (5.0, 30.0, 15 * 60.0)  # soon after start (a young routing table), then every 15 min


def boot_info_hash(public_key: bytes) -> bytes:
    """The 20-byte info-hash boot sources of this release key announce under (``phase-dht`` computes the same)."""
    return hashlib.sha256(INFO_HASH_PREFIX + public_key).digest()[:20]


def store_release_key(store: str | Path, pub: str | Path | None = None) -> bytes:
    """The release public key a store is announced under: ``pub`` or ``STORE/boot/release.pub``, checked
    against the store's manifest (raises :class:`BootError` if it is missing or does not sign the manifest)."""
    path = Path(pub) if pub else Path(store) / RELEASE_PUB_PATH
    public_key = keys.load_public_key(path)
    manifest = Path(store) / MANIFEST_PATH
    try:
        verify_manifest(load_manifest(manifest), public_key)
    except BootError as exc:
        raise BootError(f"not announcing {store} under the key in {path}: {exc}") from None
    return public_key


class BootAnnouncer:
    """Announce ``port`` under ``info_hash`` on ``dht`` (a :class:`pyphase.net.dht.Dht`), now and again on a
    schedule, from a daemon thread, until :meth:`close`. When the router forwards a port to ``port`` (the
    DHT's port mapping, ``what="phase-boot"``), the external port is announced instead; :meth:`wake`
    re-announces at once (a mapping was obtained or lost)."""

    MAPPING_NAME = "phase-boot"

    def __init__(self, dht: Any, info_hash: bytes, port: int, on_event: Callable[..., None]) -> None:
        self.dht = dht
        self.info_hash = info_hash
        self.port = port
        self.on_event = on_event
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="boot-announce", daemon=True)

    def start(self) -> BootAnnouncer:
        if getattr(self.dht, "port_mapping", False):
            self.dht.map_port("tcp", self.port, self.MAPPING_NAME)
        self._thread.start()
        return self

    def announced_port(self) -> int:
        """The router's external port for the HTTP port once mapped, else the HTTP port itself."""
        mapped = self.dht.mapping.external(self.MAPPING_NAME) if hasattr(self.dht, "mapping") else None
        return int(mapped.rpartition(":")[2]) if mapped else self.port

    def _run(self) -> None:
        self.dht.wait_bootstrapped(10.0)
        delays = list(REANNOUNCE_S)
        while not self._stop.is_set():
            port = self.announced_port()
            self.dht.announce(self.info_hash, port)
            self.on_event(
                "boot_dht_announced",
                info_hash=self.info_hash.hex(),
                port=port,
                routing_nodes=self.dht.routing_nodes(),
            )
            self._wake.wait(delays.pop(0) if len(delays) > 1 else delays[0])
            self._wake.clear()

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
