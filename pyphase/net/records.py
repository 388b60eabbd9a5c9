"""Node records: what a node publishes about itself under its own Ed25519 key (a BEP 44 mutable item).

A record is a bencoded dictionary, at most :data:`MAX_VALUE_BYTES` once wrapped as the item's value::

    {"v": 1, "a": ["HOST:PORT", ...], "e": ["wasm3/0.5.0"], "c": {"arch": "x86_64", "cores": 4, "workers": 4},
     "t": issued (unix seconds), "x": expires (unix seconds), "r": ["HOST:PORT", ...]}

``r`` (optional) lists the relays that hold a reservation for the node (:mod:`pyphase.net.relay`): a node
that cannot be reached directly publishes no ``a`` and is dialled ``PEERID@relay/HOST:PORT``. A relay
itself says so in ``c`` (``relay``: the port of its relay service, on the host of its first address).
A node reached only through relays that has lost every reservation publishes neither ``a`` nor ``r``
(nobody can reach it now), rather than leave a record naming a relay that would refuse its clients.

It is signed the BEP 44 way (``salt`` :data:`SALT`, sequence number ``seq``, value), so the same bytes
a DHT node stores are what a client verifies, here with PyNaCl and never by trusting libtorrent's check.
A record is refused when its signature does not verify for the peer id asked for, when it cannot be
decoded, when it is expired, issued in the future, or valid for longer than :data:`MAX_LIFETIME_S`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, Sequence

import nacl.exceptions
import nacl.signing

from pyphase.errors import RecordError
from pyphase.identity import Identity, peer_id_from_public_key
from pyphase.net.addresses import RELAY_PREFIX

SALT = b"phase/1"
VERSION = 1
MAX_VALUE_BYTES = 1000  # BEP 44's bound on a bencoded value
LIFETIME_S = 2 * 3600  # how long a record says it is good for; republished well before
MAX_LIFETIME_S = 24 * 3600
CLOCK_SKEW_S = 300
MAX_ADDRESSES = 8
MAX_RELAYS = 2


def expanded_secret(identity: Identity) -> bytes:
    """The 64-byte Ed25519 secret libtorrent signs with: SHA-512 of the seed, clamped (not libsodium's seed||pk)."""
    h = bytearray(hashlib.sha512(bytes(identity.signing_key)).digest())
    h[0] &= 248
    h[31] &= 127
    h[31] |= 64
    return bytes(h)


def _bstr(data: bytes) -> bytes:
    return str(len(data)).encode() + b":" + data


def signed_buffer(value: bytes, seq: int, salt: bytes = SALT) -> bytes:
    """What BEP 44 signs for a mutable item whose value is the byte string ``value``."""
    return (b"4:salt" + _bstr(salt) if salt else b"") + b"3:seqi" + str(seq).encode() + b"e1:v" + _bstr(value)


def bencode(obj: Any) -> bytes:
    """Bencode ints, bytes/str, lists and dicts (keys sorted), as BEP 3 says."""
    if isinstance(obj, bool):
        raise TypeError("booleans have no bencoding")
    if isinstance(obj, int):
        return b"i" + str(obj).encode() + b"e"
    if isinstance(obj, str):
        obj = obj.encode("utf-8")
    if isinstance(obj, bytes):
        return _bstr(obj)
    if isinstance(obj, (list, tuple)):
        return b"l" + b"".join(bencode(x) for x in obj) + b"e"
    if isinstance(obj, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, v) for k, v in obj.items())
        return b"d" + b"".join(_bstr(k) + bencode(v) for k, v in items) + b"e"
    raise TypeError(f"cannot bencode {type(obj).__name__}")


def bdecode(data: bytes, max_depth: int = 8) -> Any:
    """Decode exactly one bencoded value filling ``data``; raises ``ValueError`` on anything else."""
    value, end = _decode(data, 0, max_depth)
    if end != len(data):
        raise ValueError("trailing bytes after the bencoded value")
    return value


def _decode(data: bytes, i: int, depth: int) -> tuple[Any, int]:
    if depth < 0:
        raise ValueError("nested too deeply")
    if i >= len(data):
        raise ValueError("truncated")
    c = data[i : i + 1]
    if c == b"i":
        end = data.index(b"e", i)
        text = data[i + 1 : end]
        if not text or text == b"-0" or (text.lstrip(b"-").startswith(b"0") and text not in (b"0",)):
            raise ValueError("malformed integer")
        return int(text), end + 1
    if c == b"l":
        out, i = [], i + 1
        while data[i : i + 1] != b"e":
            item, i = _decode(data, i, depth - 1)
            out.append(item)
        return out, i + 1
    if c == b"d":
        d: dict[bytes, Any] = {}
        i += 1
        last = None
        while data[i : i + 1] != b"e":
            key, i = _decode(data, i, depth - 1)
            if not isinstance(key, bytes) or (last is not None and key <= last):
                raise ValueError("dictionary keys must be strings in sorted order")
            d[key], i = _decode(data, i, depth - 1)
            last = key
        return d, i + 1
    if c.isdigit():
        colon = data.index(b":", i)
        length = int(data[i:colon])
        if data[i : i + 1] == b"0" and colon != i + 1:
            raise ValueError("malformed string length")
        start = colon + 1
        if start + length > len(data):
            raise ValueError("truncated string")
        return data[start : start + length], start + length
    raise ValueError(f"unexpected byte {c!r}")


@dataclass(frozen=True)
class NodeRecord:
    """A verified record: who (``peer_id``), where (``addresses``, ``HOST:PORT``), what it runs, until when."""

    peer_id: str
    addresses: tuple[str, ...]
    engines: tuple[str, ...]
    caps: dict[str, Any]
    issued: int
    expires: int
    seq: int
    relays: tuple[str, ...] = ()

    @property
    def candidates(self) -> tuple[str, ...]:
        """Every way to dial the node, in the record's order: ``PEERID@HOST:PORT`` of each address, then
        ``PEERID@relay/HOST:PORT`` of each relay."""
        return tuple(f"{self.peer_id}@{a}" for a in self.addresses) + tuple(
            f"{self.peer_id}@{RELAY_PREFIX}{r}" for r in self.relays
        )

    @property
    def address(self) -> str:
        """The first of :attr:`candidates`; ``RecordError`` when the record names no way to reach the node."""
        if not self.candidates:
            raise RecordError(
                f"the record of {self.peer_id} names no address and no relay: the node holds no relay "
                "reservation now (it is republished when one does)"
            )
        return self.candidates[0]

    def to_json(self) -> dict[str, Any]:
        return {
            "peer_id": self.peer_id,
            "addresses": list(self.addresses),
            "engines": list(self.engines),
            "caps": self.caps,
            "issued": self.issued,
            "expires": self.expires,
            "seq": self.seq,
            "relays": list(self.relays),
        }


def encode_value(
    addresses: Sequence[str],
    engines: Sequence[str],
    caps: dict[str, Any],
    *,
    issued: int | None = None,
    lifetime_s: int = LIFETIME_S,
    relays: Sequence[str] = (),
) -> bytes:
    """The record's value bytes; raises ``ValueError`` when it would not fit in a BEP 44 item."""
    now = int(time.time()) if issued is None else issued
    doc: dict[str, Any] = {
        "v": VERSION,
        "a": list(addresses)[:MAX_ADDRESSES],
        "e": list(engines),
        "c": caps,
        "t": now,
        "x": now + lifetime_s,
    }
    if relays:
        doc["r"] = list(relays)[:MAX_RELAYS]
    value = bencode(doc)
    if len(_bstr(value)) > MAX_VALUE_BYTES:
        raise ValueError(f"a node record must bencode to at most {MAX_VALUE_BYTES} bytes, this one has {len(value)}")
    return value


def sign_value(identity: Identity, value: bytes, seq: int) -> bytes:
    """The BEP 44 signature libtorrent would make for this value and sequence number (Ed25519 is deterministic)."""
    return identity.signing_key.sign(signed_buffer(value, seq)).signature


def _text(value: Any, what: str) -> str:
    if not isinstance(value, bytes):
        raise RecordError(f"record field {what} is not a string")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise RecordError(f"record field {what} is not UTF-8") from None


def verify_record(
    public_key: bytes, value: bytes, seq: int, signature: bytes, *, now: float | None = None
) -> NodeRecord:
    """Check a record's signature by ``public_key`` and its contents; return it, or raise :class:`RecordError`."""
    if len(_bstr(value)) > MAX_VALUE_BYTES:
        raise RecordError(f"record of {len(value)} bytes is above the BEP 44 bound")
    if not isinstance(seq, int) or seq < 0:
        raise RecordError("record has a bad sequence number")
    try:
        nacl.signing.VerifyKey(public_key).verify(signed_buffer(value, seq), signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError):
        raise RecordError("record signature does not verify for this peer id") from None
    try:
        doc = bdecode(value)
    except (ValueError, IndexError):
        raise RecordError("record is not valid bencoding") from None
    if not isinstance(doc, dict) or doc.get(b"v") != VERSION:
        raise RecordError("record is not a phase/1 node record")
    issued, expires = doc.get(b"t"), doc.get(b"x")
    if not isinstance(issued, int) or not isinstance(expires, int):
        raise RecordError("record has no validity period")
    clock = time.time() if now is None else now
    if expires <= clock:
        raise RecordError(f"record expired {int(clock - expires)} s ago")
    if issued > clock + CLOCK_SKEW_S:
        raise RecordError("record is issued in the future")
    if expires - issued > MAX_LIFETIME_S:
        raise RecordError("record claims a validity longer than a day")
    addresses = doc.get(b"a")
    engines = doc.get(b"e", [])
    caps = doc.get(b"c", {})
    relays = doc.get(b"r", [])
    if not isinstance(addresses, list) or not isinstance(engines, list) or not isinstance(caps, dict):
        raise RecordError("record has no addresses")
    if not isinstance(relays, list):
        raise RecordError("record has no addresses")
    texts = tuple(_text(a, "a") for a in addresses[:MAX_ADDRESSES])
    via = tuple(_text(r, "r") for r in relays[:MAX_RELAYS])
    for a in texts + via:
        host, sep, port = a.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise RecordError(f"record address {a!r} is not HOST:PORT")
    caps_out: dict[str, Any] = {}
    for k, v in caps.items():
        caps_out[_text(k, "c")] = v if isinstance(v, int) else _text(v, "c") if isinstance(v, bytes) else None
    return NodeRecord(
        peer_id_from_public_key(public_key),
        texts,
        tuple(_text(e, "e") for e in engines),
        caps_out,
        issued,
        expires,
        seq,
        via,
    )
