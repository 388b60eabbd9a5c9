"""The BitTorrent Mainline DHT through libtorrent: node records (BEP 44), rendezvous (BEP 5), the record query.

:class:`Dht` is one libtorrent session with everything but the DHT off (no peer connections, LSD or IP
notifier; the posix disk back end, one thread); UPnP-IGD and NAT-PMP only when a node asks for port
mapping (:class:`PortMapping`, :meth:`Dht.map_port`). Its calls block until libtorrent's
alerts answer them, so a node calls them from a worker thread and a client calls them directly.

* Records: :meth:`Dht.put_record` publishes the node's signed record under its own key (salt
  ``phase/1``); :meth:`Dht.get_record` returns the newest record that verifies with PyNaCl
  (:mod:`pyphase.net.records`).
* Rendezvous: nodes :meth:`Dht.announce` their ``phase/1`` port under :func:`rendezvous_hash` (and one
  hash per arch); :meth:`Dht.get_peers` returns the IP:port pairs announced, which are unauthenticated.
* Record query: a node answers a padded UDP datagram on its announced port with its signed record
  (:class:`RecordResponder`; :func:`query_record` asks), so a client learns the key CURVE then proves.

By default the DHT's UDP socket, the record query and ``phase/1``'s TCP listener share one port number P,
the one announced (:meth:`Dht.share_port`, :mod:`pyphase.net.portshare`); ``dht_listen`` puts the DHT elsewhere.

Tests must never reach the public DHT: when ``PHASE_DHT_ALLOW`` names networks (``127.0.0.0/8``),
every bootstrap node, remembered node and listen address must lie inside them, and leaving the
bootstrap nodes to libtorrent's default routers is refused (:func:`check_allowed`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyphase.errors import RecordError
from pyphase.identity import Identity, public_key_from_peer_id
from pyphase.net import records
from pyphase.net.addresses import split_hostport, valid_host
from pyphase.net.records import NodeRecord

BOOTSTRAP_ENV = "PHASE_DHT_BOOTSTRAP"
ALLOW_ENV = "PHASE_DHT_ALLOW"
RENDEZVOUS = b"phase/1"
QUERY_MAGIC = b"phase/1 record?\n"
ANSWER_MAGIC = b"phase/1 record\n"
QUERY_BYTES = 1280  # a query is padded to this, more than any answer: the node never amplifies
MAX_ANSWER_BYTES = 1200
ANSWERS_PER_SECOND = 200  # the responder's global bound; beyond it queries are dropped


# A libtorrent session that is a DHT node and nothing else: no peer connections, no UPnP, NAT-PMP, LSD or
# IP notifier, one listen attempt (also used by the simulation and the boot tests' sessions).
DHT_ONLY_SETTINGS: dict[str, Any] = {
    "enable_dht": True,
    "enable_lsd": False,
    "enable_upnp": False,
    "enable_natpmp": False,
    "enable_ip_notifier": False,
    "enable_incoming_tcp": False,
    "enable_outgoing_tcp": False,
    "enable_incoming_utp": False,
    "enable_outgoing_utp": False,
    "max_retry_port_bind": 0,
}


class DhtUnavailable(RuntimeError):
    """libtorrent cannot be imported, or its session cannot listen where asked."""


def rendezvous_hash(klass: str = "") -> bytes:
    """The 20-byte info-hash nodes announce under: ``sha1("phase/1")``, or ``sha1("phase/1/" + klass)``
    for a capability class such as ``arch/x86_64``."""
    return hashlib.sha1(RENDEZVOUS + (b"/" + klass.encode() if klass else b"")).digest()


def parse_endpoints(text: str | Iterable[str]) -> list[tuple[str, int]]:
    """``"HOST:PORT,HOST:PORT"`` (or a list of such) -> [(host, port)]; raises ``ValueError``."""
    parts = text.replace(" ", ",").split(",") if isinstance(text, str) else list(text)
    out = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        try:
            host, port = split_hostport(part, None, "")
        except ValueError:
            host, port = "", 0
        if not host or not port or not valid_host(host):
            raise ValueError(f"a DHT node is HOST:PORT, got {part!r}")
        out.append((host, port))
    return out


def bootstrap_from_env(given: str | Iterable[str] | None = None) -> list[tuple[str, int]] | None:
    """The bootstrap nodes a client uses: ``given``, else ``PHASE_DHT_BOOTSTRAP``, else None (libtorrent's default)."""
    if given is not None:
        nodes = parse_endpoints(given)
        return nodes or None
    text = os.environ.get(BOOTSTRAP_ENV, "")
    if not text.strip():
        return None
    try:
        return parse_endpoints(text)
    except ValueError as exc:
        raise ValueError(f"{BOOTSTRAP_ENV}: {exc}") from None


def check_allowed(
    listen_host: str, bootstrap: list[tuple[str, int]] | None, environ: dict[str, str] | None = None
) -> None:
    """Refuse (``PermissionError``) a DHT configuration that could leave the networks ``PHASE_DHT_ALLOW`` names."""
    text = (os.environ if environ is None else environ).get(ALLOW_ENV, "")
    if not text.strip():
        return
    nets = [ipaddress.ip_network(n.strip()) for n in text.split(",") if n.strip()]

    def inside(host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False  # a name could resolve anywhere
        return any(ip in n for n in nets)

    if bootstrap is None:
        raise PermissionError(f"{ALLOW_ENV} is set: a DHT must name its bootstrap nodes (no default routers)")
    if not inside(listen_host):
        raise PermissionError(f"{ALLOW_ENV}={text}: the DHT may not listen on {listen_host}")
    for host, port in bootstrap:
        if not inside(host):
            raise PermissionError(f"{ALLOW_ENV}={text}: bootstrap node {host}:{port} is outside")


def _lt() -> Any:
    try:
        import libtorrent
    except ImportError as exc:
        raise DhtUnavailable(f"the DHT needs the libtorrent package ({exc})") from None
    return libtorrent


@dataclass(frozen=True)
class _Item:
    """A copy of a ``dht_mutable_item_alert``."""

    value: bytes
    seq: int
    signature: bytes
    salt: bytes
    authoritative: bool


@dataclass
class _Waiter:
    kind: str
    key: bytes
    items: list[Any] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    changed: threading.Condition = field(default_factory=threading.Condition)


class PortMapping:
    """What the router gave: mappings by (what, protocol) -> (external port, transport), the external IP.
    Fed from the alert thread; ``on_event`` gets ``port_mapping_obtained`` / ``port_mapping_lost`` /
    ``port_mapping_failed``."""

    def __init__(self, on_event: Callable[..., None]) -> None:
        self.on_event = on_event
        self.external_ip = ""
        self.requested: dict[int, tuple[str, str, int]] = {}
        # what libtorrent's own mappings of its listen sockets serve, by protocol (Dht.share_port: phase/1's TCP)
        self.own = {"udp": "dht", "tcp": "dht-tcp"}
        self.active: dict[tuple[str, str, str], int] = {}  # (what, protocol, transport) -> external port
        self._failed: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def _what(self, mapping: int, protocol: str) -> tuple[str, int]:
        what, _, port = self.requested.get(mapping, (self.own[protocol], protocol, 0))
        return what, port

    def obtained(self, transport: str, mapping: int, protocol: str, external_port: int) -> None:
        what, port = self._what(mapping, protocol)
        with self._lock:
            if self.active.get((what, protocol, transport)) == external_port:
                return  # a refresh
            self.active[(what, protocol, transport)] = external_port
        self.on_event(
            "port_mapping_obtained",
            what=what,
            protocol=protocol,
            local_port=port or None,
            external=f"{self.external_ip}:{external_port}" if self.external_ip else f"?:{external_port}",
            transport=transport,
        )

    def failed(self, transport: str, mapping: int, error: str) -> None:
        known = self.requested.get(mapping)
        with self._lock:
            keys = [
                k
                for k in self.active
                if k[2] == transport and (k[:2] == known[:2] if known else k[0] in self.own.values())
            ]
            lost = [(k, self.active.pop(k)) for k in keys]
        for (what, protocol, _), ext in lost:
            self.on_event(
                "port_mapping_lost", what=what, protocol=protocol, external_port=ext, transport=transport, error=error
            )
        if not lost and (transport, error) not in self._failed:
            self._failed.add((transport, error))
            self.on_event("port_mapping_failed", transport=transport, error=error)

    def external(self, what: str = "phase/1", protocol: str = "tcp") -> str | None:
        """``IP:PORT`` the router forwards to ``what`` (by either transport), or None."""
        with self._lock:
            ports = [p for (w, pr, _), p in self.active.items() if w == what and pr == protocol]
        if not ports or not self.external_ip:
            return None
        return f"{self.external_ip}:{ports[0]}"


class Dht:
    """One libtorrent DHT session. ``listen``: ``IP:PORT`` (an address, never a device name; port 0: any), or
    several, comma-separated (``0.0.0.0:P,[::]:P``: both families, BEP 32);
    ``bootstrap``: [(host, port)] or None for libtorrent's default routers; ``read_only`` (BEP 43) for
    clients, which take no part in storing; ``on_event(name, **fields)`` receives DHT events;
    ``port_mapping``: UPnP-IGD and NAT-PMP on (the DHT port is mapped, :meth:`map_port` maps others);
    ``shares_port``: the port is to be ``phase/1``'s too (:meth:`share_port`), so libtorrent's TCP mapping serves it."""

    def __init__(
        self,
        listen: str = "0.0.0.0:0",
        bootstrap: list[tuple[str, int]] | None = None,
        *,
        read_only: bool = False,
        known_nodes: Iterable[tuple[str, int]] = (),
        on_event: Callable[..., None] | None = None,
        port_mapping: bool = False,
        shares_port: bool = False,
    ) -> None:
        lt = _lt()
        entries = [e.strip() for e in listen.split(",") if e.strip()]
        hosts = [e.rpartition(":")[0].strip("[]") or "0.0.0.0" for e in entries]
        self.listen_host = hosts[0]
        known = list(known_nodes)
        for host in hosts:
            check_allowed(host, None if bootstrap is None else bootstrap + known)
        self.on_event = on_event or (lambda *a, **k: None)
        self._interfaces = ",".join(entries)
        self.listened: list[tuple[str, int]] = []  # (address, port) of each UDP socket libtorrent opened
        settings: dict[str, Any] = {
            **DHT_ONLY_SETTINGS,
            "listen_interfaces": self._interfaces,
            "enable_upnp": port_mapping,
            "enable_natpmp": port_mapping,
            "dht_read_only": read_only,
            "alert_mask": int(
                lt.alert_category.dht
                | lt.alert_category.dht_operation
                | lt.alert_category.error
                | lt.alert_category.status
                | (lt.alert_category.port_mapping if port_mapping else 0)
            ),
        }
        if bootstrap is not None:
            settings["dht_bootstrap_nodes"] = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in bootstrap)
        params = lt.session_params(settings)
        params.disk_io_constructor = "posix_disk_io_constructor"
        self._lt = lt
        self._session = lt.session(params)
        self._waiters: list[_Waiter] = []
        self._lock = threading.Lock()
        self._bootstrapped = threading.Event()
        self._closed = False
        self._listen_error: str | None = None
        self._listening = threading.Event()
        self.mapping = PortMapping(self.on_event)
        if shares_port:  # named before the router can answer (NAT-PMP may within tens of ms)
            self.mapping.own["tcp"] = "phase/1"
        self.port_mapping = port_mapping  # UPnP-IGD and NAT-PMP on: map_port() asks the router
        self._pump = threading.Thread(target=self._pump_alerts, name="dht-alerts", daemon=True)
        self._pump.start()
        for h, p in known:
            self._session.add_dht_node((h, p))
        if not self._listening.wait(5.0) or self._listen_error:
            self.close()
            raise DhtUnavailable(
                f"the DHT cannot listen on {listen}: {self._listen_error or 'no answer from libtorrent'}"
            )

    @property
    def port(self) -> int:
        return int(self._session.listen_port())

    # ---- alerts --------------------------------------------------------------------------------------

    def _pump_alerts(self) -> None:
        lt = self._lt
        while not self._closed:
            self._session.wait_for_alert(200)
            try:
                alerts = self._session.pop_alerts()
            except RuntimeError:
                return
            for a in alerts:
                if isinstance(a, lt.listen_succeeded_alert):
                    if a.socket_type == lt.socket_type_t.utp:
                        self.listened.append((str(a.address), int(a.port)))
                    self._listening.set()
                elif isinstance(a, lt.listen_failed_alert):
                    self._listen_error = a.message()
                    self._listening.set()
                elif isinstance(a, lt.dht_bootstrap_alert):
                    if not self._bootstrapped.is_set():
                        self._bootstrapped.set()
                        self.on_event("dht_bootstrapped", nodes=self.routing_nodes())
                # an alert is only valid until the next pop_alerts(): copy what is needed now
                elif isinstance(a, lt.dht_put_alert):
                    self._deliver("put", bytes(a.public_key), (int(a.seq), int(a.num_success)))
                elif isinstance(a, lt.dht_mutable_item_alert):
                    self._deliver(
                        "get",
                        bytes(a.key),
                        _Item(bytes(a.item), int(a.seq), bytes(a.signature), bytes(a.salt), bool(a.authoritative)),
                    )
                elif isinstance(a, lt.dht_get_peers_reply_alert):
                    self._deliver("peers", bytes.fromhex(str(a.info_hash)), [(str(h), int(p)) for h, p in a.peers()])
                elif isinstance(a, lt.external_ip_alert):
                    self.mapping.external_ip = str(a.external_address)
                elif isinstance(a, lt.portmap_alert):
                    self.mapping.obtained(self._transport(a), int(a.mapping), self._proto(a), int(a.external_port))
                elif isinstance(a, lt.portmap_error_alert):
                    self.mapping.failed(self._transport(a), int(a.mapping), a.error.message())

    def _transport(self, alert: Any) -> str:
        return "upnp" if alert.map_transport == self._lt.portmap_transport.upnp else "natpmp"

    def _proto(self, alert: Any) -> str:
        return "udp" if alert.map_protocol == self._lt.portmap_protocol.udp else "tcp"

    def share_port(self) -> list[socket.socket]:
        """Make the DHT's port number P the node's one port: shut down the TCP listener libtorrent opened beside
        its UDP socket (so ``phase/1`` binds TCP P) and return the record query's UDP sockets on P
        (:mod:`pyphase.net.portshare`); libtorrent's own mapping of TCP P then serves ``phase/1``.
        Raises ``OSError`` when the kernel refuses."""
        from pyphase.net import portshare

        sockets = portshare.record_query_sockets(self.port)
        portshare.release_tcp(self.port)
        self.mapping.own["tcp"] = "phase/1"
        return sockets

    def map_port(self, protocol: str, port: int, what: str) -> None:
        """Ask the router (UPnP-IGD and NAT-PMP at once) to forward ``protocol`` ``port`` to this host, same
        port outside if free; the outcome arrives as ``port_mapping_obtained`` / ``port_mapping_lost`` events.
        (The DHT's own UDP port is mapped by libtorrent itself when port mapping is on.)"""
        lt = self._lt
        proto = lt.portmap_protocol.udp if protocol == "udp" else lt.portmap_protocol.tcp
        for mapping in self._session.add_port_mapping(proto, port, port):
            self.mapping.requested[int(mapping)] = (what, protocol, port)

    def _deliver(self, kind: str, key: bytes, alert: Any) -> None:
        with self._lock:
            waiters = [w for w in self._waiters if w.kind == kind and w.key == key]
        for w in waiters:
            with w.changed:
                w.items.append(alert)
                w.changed.notify_all()

    def _wait(
        self,
        kind: str,
        key: bytes,
        start: Callable[[], None],
        until: Callable[[list[Any]], bool],
        timeout: float,
        poll: float = 0.1,
    ) -> list[Any]:
        """Start a request and collect its alerts until ``until(alerts)`` (checked on each alert and every
        ``poll`` seconds) or ``timeout``."""
        w = _Waiter(kind, key)
        with self._lock:
            self._waiters.append(w)
        try:
            start()
            deadline = time.monotonic() + timeout
            with w.changed:
                while not until(w.items):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    w.changed.wait(min(remaining, poll))
                return list(w.items)
        finally:
            with self._lock:
                self._waiters.remove(w)

    # ---- the routing table ---------------------------------------------------------------------------

    def wait_bootstrapped(self, timeout: float) -> bool:
        """True once libtorrent reports the bootstrap done (its table may still be filling)."""
        return self._bootstrapped.wait(timeout)

    def routing_nodes(self) -> int:
        return len(self.known_nodes())

    def known_nodes(self) -> list[tuple[str, int]]:
        """IPv4 and IPv6 nodes of the routing table now (what libtorrent would save), to remember across restarts."""
        lt = self._lt
        state = lt.bdecode(lt.write_session_params_buf(self._session.session_state()))
        out = []
        dht_state = state.get(b"dht state") or {}
        for compact in dht_state.get(b"nodes") or []:
            if isinstance(compact, bytes) and len(compact) == 6:
                out.append((socket.inet_ntoa(compact[:4]), int.from_bytes(compact[4:], "big")))
        for compact in dht_state.get(b"nodes6") or []:
            if isinstance(compact, bytes) and len(compact) == 18:
                out.append((socket.inet_ntop(socket.AF_INET6, compact[:16]), int.from_bytes(compact[16:], "big")))
        return out[:200]

    def add_node(self, host: str, port: int) -> None:
        self._session.add_dht_node((host, port))

    # ---- records (BEP 44) ----------------------------------------------------------------------------

    def put_record(self, identity: Identity, value: bytes, timeout: float = 30.0) -> tuple[int, int]:
        """Publish ``value`` under ``identity``'s key (salt ``phase/1``); -> (seq, nodes that stored it).
        libtorrent reads the current item first and stores it with the next sequence number."""
        pk = identity.public_key
        sk = records.expanded_secret(identity)
        got = self._wait(
            "put",
            pk,
            lambda: self._session.dht_put_mutable_item(sk, pk, value, records.SALT),
            lambda items: bool(items),
            timeout,
        )
        if not got:
            return -1, 0
        seq, stored = got[0]
        return int(seq), int(stored)

    def get_record(self, public_key: bytes, timeout: float = 10.0, settle: float = 1.0) -> NodeRecord:
        """The newest record for ``public_key`` that verifies; raises :class:`RecordError` (none found, or
        every copy found refused, with why). Waits for libtorrent's authoritative answer or, once one copy
        verified, ``settle`` seconds more for a newer one."""
        first_good: list[float] = []

        def until(items: list[Any]) -> bool:
            if any(a.authoritative for a in items):
                return True
            if first_good:
                return time.monotonic() >= first_good[0] + settle
            for a in items:
                try:
                    self._verify(public_key, a)
                except RecordError:
                    continue
                first_good.append(time.monotonic())
                return settle <= 0
            return False

        items = self._wait(
            "get", public_key, lambda: self._session.dht_get_mutable_item(public_key, records.SALT), until, timeout
        )
        best: NodeRecord | None = None
        errors = []
        for a in items:
            try:
                record = self._verify(public_key, a)
            except RecordError as exc:
                errors.append(str(exc))
                continue
            if best is None or record.seq > best.seq:
                best = record
        if best is None:
            raise RecordError(errors[0] if errors else "no record found in the DHT for this peer id")
        return best

    @staticmethod
    def _verify(public_key: bytes, item: _Item) -> NodeRecord:
        if not item.value or not any(item.signature) or item.salt != records.SALT:  # libtorrent's "found nothing"
            raise RecordError("no record found in the DHT for this peer id")
        return records.verify_record(public_key, item.value, item.seq, item.signature)

    # ---- rendezvous (BEP 5) --------------------------------------------------------------------------

    def announce(self, info_hash: bytes, port: int) -> None:
        """Announce this host's ``port`` under ``info_hash`` (libtorrent posts no completion)."""
        self._session.dht_announce(self._lt.sha1_hash(info_hash), port, 0)

    def get_peers(
        self, info_hash: bytes, timeout: float = 5.0, settle: float = 1.0, want: int | None = None, rounds: int = 1
    ) -> list[tuple[str, int]]:
        """IP:port pairs announced under ``info_hash``: answers gathered until ``settle`` seconds pass with
        nothing new, ``want`` peers are found, or ``timeout`` (libtorrent posts no end of lookup). With
        ``rounds`` > 1 the lookup is started again while the last round found something new: a fresh
        client's first traversal starts from a thin routing table and can miss announces."""
        seen: dict[tuple[str, int], None] = {}
        last_new = [time.monotonic()]

        def until(items: list[Any]) -> bool:
            before = len(seen)
            for peers in items:
                for peer in peers:
                    seen.setdefault(peer, None)
            if len(seen) > before:
                last_new[0] = time.monotonic()
            if want is not None and len(seen) >= want:
                return True
            return bool(seen) and time.monotonic() - last_new[0] >= settle

        ih = self._lt.sha1_hash(info_hash)
        deadline = time.monotonic() + timeout
        for _ in range(max(1, rounds)):
            before = len(seen)
            last_new[0] = time.monotonic()
            self._wait(
                "peers",
                info_hash,
                lambda: self._session.dht_get_peers(ih),
                until,
                max(0.0, deadline - time.monotonic()),
            )
            if (
                (want is not None and len(seen) >= want)
                or time.monotonic() >= deadline
                or (before and len(seen) == before)
            ):
                break
        return list(seen)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pump.join(timeout=2)
        try:
            self._session.pause()
        except RuntimeError:
            pass
        del self._session

    def __enter__(self) -> Dht:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- the record query (UDP, on the announced port) ------------------------------------------------------


def record_answer(public_key: bytes, value: bytes, seq: int, signature: bytes) -> bytes:
    return ANSWER_MAGIC + records.bencode({"k": public_key, "seq": seq, "sig": signature, "v": value})


def parse_answer(datagram: bytes, *, now: float | None = None) -> NodeRecord:
    """Verify a record query's answer; the record is the key's, whoever sent the datagram."""
    if not datagram.startswith(ANSWER_MAGIC):
        raise RecordError("not a phase/1 record answer")
    try:
        doc = records.bdecode(datagram[len(ANSWER_MAGIC) :])
    except (ValueError, IndexError):
        raise RecordError("the record answer is not valid bencoding") from None
    if not isinstance(doc, dict):
        raise RecordError("the record answer is not a dictionary")
    pk, seq, sig, value = doc.get(b"k"), doc.get(b"seq"), doc.get(b"sig"), doc.get(b"v")
    if not (
        isinstance(pk, bytes)
        and len(pk) == 32
        and isinstance(seq, int)
        and isinstance(sig, bytes)
        and isinstance(value, bytes)
    ):
        raise RecordError("the record answer lacks a key, sequence number, signature or value")
    return records.verify_record(pk, value, seq, sig, now=now)


def query_records(endpoints: Iterable[tuple[str, int]], timeout: float = 1.0) -> dict[tuple[str, int], NodeRecord]:
    """Ask every endpoint for its signed record at once (one UDP socket); -> the answers that verify."""
    targets = list(dict.fromkeys(endpoints))
    out: dict[tuple[str, int], NodeRecord] = {}
    if not targets:
        return out
    query = QUERY_MAGIC + os.urandom(QUERY_BYTES - len(QUERY_MAGIC))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for attempt in range(2):  # one resend for a lost datagram
            for t in targets:
                if t not in out:
                    try:
                        sock.sendto(query, t)
                    except OSError:
                        pass
            deadline = time.monotonic() + timeout / 2
            import select

            while len(out) < len(targets):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([sock], [], [], remaining)[0]:
                    break
                try:
                    data, source = sock.recvfrom(MAX_ANSWER_BYTES + 64)
                except OSError:
                    continue
                if source in targets and source not in out:
                    try:
                        out[source] = parse_answer(data)
                    except RecordError:
                        continue
            if len(out) == len(targets):
                break
    return out


class RecordResponder:
    """The node's side of the record query: UDP on the announced port answering padded queries with the
    current signed record. Short or unknown datagrams are dropped; answers are rate-bounded. ``sockets``:
    ones already bound (beside the DHT's on the same port, :func:`pyphase.net.portshare.record_query_sockets`),
    else one of its own on ``host``:``port``."""

    def __init__(self, host: str, port: int, sockets: list[socket.socket] | None = None) -> None:
        if not sockets:
            own = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            own.bind((host if host not in ("*", "") else "0.0.0.0", port))
            own.setblocking(False)
            sockets = [own]
        self.sockets = sockets
        self.sock = sockets[0]
        self.answer = b""
        self._window = (0, 0)  # (second, answers sent in it)
        self.answered = 0

    def set_record(self, answer: bytes) -> None:
        if len(answer) > MAX_ANSWER_BYTES:
            raise ValueError("record answer too big")
        self.answer = answer

    def on_readable(self, sock: socket.socket | None = None) -> None:
        sock = sock or self.sock
        for _ in range(64):
            try:
                data, source = sock.recvfrom(QUERY_BYTES + 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(data) < QUERY_BYTES or not data.startswith(QUERY_MAGIC) or not self.answer:
                continue
            second = int(time.monotonic())
            count = self._window[1] + 1 if self._window[0] == second else 1
            self._window = (second, count)
            if count > ANSWERS_PER_SECOND:
                continue
            try:
                sock.sendto(self.answer, source)
                self.answered += 1
            except OSError:
                pass

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


# ---- what a client does -----------------------------------------------------------------------------------


def find_nodes(
    dht: Dht, timeout: float = 5.0, want: int | None = None, klass: str = "", settle: float = 1.0, rounds: int = 2
) -> list[NodeRecord]:
    """Nodes announced under the rendezvous hash, each proven by the signed record its port answers with
    (gathered until ``want`` are proven, ``settle`` seconds bring nothing new, or ``timeout``). With ``want``
    the lookup and the record queries are repeated for what is still missing until ``timeout``: on a busy
    machine an announce or an answer can come late."""
    deadline = time.monotonic() + timeout
    by_peer: dict[str, NodeRecord] = {}
    answered: set[tuple[str, int]] = set()
    while True:
        remaining = max(0.1, deadline - time.monotonic())
        found = dht.get_peers(rendezvous_hash(klass), timeout=remaining, settle=settle, want=want, rounds=rounds)
        fresh = [e for e in found if e not in answered]
        answers = query_records(fresh, timeout=min(2.0, max(0.5, deadline - time.monotonic())))
        for (host, port), record in answers.items():
            answered.add((host, port))
            # dial the address the rendezvous gave (what the node is reachable at from here), keyed by the proven key
            direct = NodeRecord(
                record.peer_id,
                (f"{host}:{port}", *record.addresses),
                record.engines,
                record.caps,
                record.issued,
                record.expires,
                record.seq,
                record.relays,
            )
            by_peer.setdefault(record.peer_id, direct)
        if want is None or len(by_peer) >= want or time.monotonic() >= deadline:
            return list(by_peer.values())


def resolve_peer(dht: Dht, peer_id: str, timeout: float = 10.0) -> NodeRecord:
    """The verified record of ``peer_id`` from the DHT; raises :class:`RecordError` or ``ValueError`` (bad id)."""
    return dht.get_record(public_key_from_peer_id(peer_id), timeout=timeout)


def client_dht(bootstrap: str | Iterable[str] | None = None, listen: str | None = None) -> Dht:
    """A read-only DHT session for a client: bootstrap from ``bootstrap``/``PHASE_DHT_BOOTSTRAP`` (else
    libtorrent's default routers), listening on ``listen``/``PHASE_DHT_LISTEN`` (default any address)."""
    nodes = bootstrap_from_env(bootstrap)
    where = listen or os.environ.get("PHASE_DHT_LISTEN") or _listen_for(nodes)
    dht = Dht(where, nodes, read_only=True)
    dht.wait_bootstrapped(5.0)
    return dht


def _listen_for(nodes: list[tuple[str, int]] | None) -> str:
    """Loopback bootstrap nodes (a private test DHT) are reached from a loopback address, anything else from any;
    IPv6-only bootstrap nodes from IPv6 (BEP 32), all others from IPv4."""
    v6 = bool(nodes) and all(":" in h for h, _ in nodes or ())
    if nodes and all(_is_loopback(h) for h, _ in nodes):
        return "[::1]:0" if v6 else "127.0.0.1:0"
    return "[::]:0" if v6 else "0.0.0.0:0"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def maps_ports(listen: str, upnp: bool) -> bool:
    """Whether a DHT session listening on ``listen`` (``IP:PORT``) asks the router to map ports: ``upnp`` is on
    and the address is not loopback (a loopback DHT, tests or one machine, has no router)."""
    return upnp and not _is_loopback(listen.rpartition(":")[0].strip("[]"))


def load_known_nodes(path: Path) -> list[tuple[str, int]]:
    try:
        return parse_endpoints(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return []


def save_known_nodes(path: Path, nodes: list[tuple[str, int]]) -> None:
    if not nodes:
        return
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps([f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in nodes]) + "\n")
    os.replace(tmp, path)
