"""The ``phase/1`` wire codec: every message type, defined once, with its schema beside it.

A message is a ZeroMQ multipart message: one *header* frame (a msgpack map) followed by a fixed
number of raw *payload* frames (module bytes, stdin, stdout, stderr), which are never copied into
the header. Every header carries ``v`` (the protocol version) and ``t`` (the type).

=========  ==================  =====================================================  =========================
type       direction           header fields (besides ``v``, ``t``)                   payload frames
=========  ==================  =====================================================  =========================
caps?      client -> node      --                                                     --
caps       node -> client      ``caps`` (map, see :func:`pyphase.net.node`)             --
offer      client -> node      ``job`` (tag, 1-32 bytes), ``manifest`` (map),         input (stdin)
                               optional ``stream`` (bool: send output as it comes)
accept     node -> client      ``job``, ``module`` (bool: send me the module),        --
                               ``load`` (map)
reject     node -> client      ``job``, ``reason`` (see ``REJECT_REASONS``),          --
                               ``detail`` (str), ``load``
module     client -> node      ``job``                                                module bytes
chunk      node -> client      ``job``, ``stream`` (1 stdout, 2 stderr), ``offset``   at most ``MAX_CHUNK_BYTES``
                               (bytes of that stream sent before)                     of output
result     node -> client      ``job``, ``receipt`` (map), ``load``                   stdout, stderr (after a
                                                                                      stream: what is left)
want       either way          ``job``, ``blob`` (``sha256:``), ``offset``, ``size``  --
blob       either way          ``job``, ``blob``, ``offset``                          bytes of the blob
done       client -> node      ``job`` (its outputs may be deleted)                   --
error      node -> client      ``code`` (see ``ERROR_CODES``), ``detail``,            --
                               optional ``job``
dial?      node -> node        ``nonce`` (16-32 bytes), ``port``: dial me back        --
                               (:mod:`pyphase.net.reachability`)
dial       node -> node        ``nonce``, ``ok`` (bool), ``seen`` (the requester's    --
                               address as seen), ``detail``
dialback   node -> node        ``nonce``: the dial back itself, on a new connection   --
=========  ==================  =====================================================  =========================

The job tag is chosen by the client and names the exchange on its connection; the node keys jobs by
(connection, tag). A bad message gets an ``error`` reply when its header could be read, and is
dropped otherwise; nothing a peer sends can raise out of :func:`decode`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import msgpack  # type: ignore[import-untyped]

PROTOCOL = "phase/1"
VERSION = 1

MAX_HEADER_BYTES = 256 << 10  # a manifest with many args/env entries still fits
MAX_TAG_BYTES = 32
MAX_DETAIL_CHARS = 1024
MAX_STR = 64 << 10  # longest string anywhere in a header (manifest args/env values)
MAX_ITEMS = 4096  # longest array / map anywhere in a header
MAX_CHUNK_BYTES = 64 << 10  # output in one chunk message at most
ZERO_COPY_MIN = 256 << 10  # payload frames this big are sent zero-copy; smaller ones are cheaper to copy

# Messages libzmq may queue from one connection before it stops reading it, on the node and in the client: no
# limit (0). In libzmq 4.3.5 (and master) a connection whose reading stopped on a full queue and whose peer then
# closes is marked _io_error and taken out of the poller, but its heartbeat timer still fires and writes a PING,
# which asserts !_io_error and aborts the process (stream_engine_base.cpp:310; libzmq #4841, fix PR #4852
# declined). Any peer could do it: flood more messages than the limit faster than the other side reads (a client
# reads nothing while idle), then close. With no limit reading never stops, so that state cannot be reached
# (tests/net/test_receive_queue.py, test_abuse.py). What one connection may make the node hold is bounded instead
# by MAXMSGSIZE, the node reading every connection as it comes, and the bad-message budget that shuts a flooding
# connection down; in a client, by nothing yet while it is idle (docs/NETWORK.md).
RECEIVE_QUEUE_LIMIT = 0

REJECT_REASONS = (
    "busy",
    "limits",
    "arch",
    "runtime",
    "module_too_big",
    "input_too_big",
    "bad_manifest",
    "duplicate",
    "shutting_down",
    "module_mismatch",
    "bad_tree",
    "tree_too_big",
    "bad_blob",
    "blob_mismatch",
    "blob_timeout",
)
ERROR_CODES = ("malformed", "version", "type", "too_big", "unexpected", "unknown_job", "unknown_blob")


class WireError(Exception):
    """A message that does not follow ``phase/1``; ``code`` is one of ``ERROR_CODES``."""

    def __init__(self, code: str, detail: str, job: bytes | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.job = job


@dataclass(frozen=True)
class Field:
    kind: type | tuple[type, ...]
    required: bool = True
    max_len: int | None = None
    min_len: int = 0


_TAG = Field(bytes, min_len=1, max_len=MAX_TAG_BYTES)
_LOAD = Field(dict, required=False)
_NONCE = Field(bytes, min_len=16, max_len=32)
_BLOB = Field(str, min_len=71, max_len=71)  # sha256:<64 hex>, checked further where it is used

# One table: message type -> (header fields, number of payload frames). Nothing else defines a message.
MESSAGES: dict[str, tuple[dict[str, Field], int]] = {
    "caps?": ({}, 0),
    "caps": ({"caps": Field(dict)}, 0),
    "offer": ({"job": _TAG, "manifest": Field(dict), "stream": Field(bool, required=False)}, 1),
    "accept": ({"job": _TAG, "module": Field(bool), "load": _LOAD}, 0),
    "reject": (
        {"job": _TAG, "reason": Field(str, max_len=64), "detail": Field(str, max_len=MAX_DETAIL_CHARS), "load": _LOAD},
        0,
    ),
    "module": ({"job": _TAG}, 1),
    "chunk": ({"job": _TAG, "stream": Field(int), "offset": Field(int)}, 1),
    "result": ({"job": _TAG, "receipt": Field(dict), "load": _LOAD}, 2),
    # files (docs/NETWORK.md, "Files"): the node wants input blobs, the client wants output blobs
    "want": ({"job": _TAG, "blob": _BLOB, "offset": Field(int), "size": Field(int)}, 0),
    "blob": ({"job": _TAG, "blob": _BLOB, "offset": Field(int)}, 1),
    "done": ({"job": _TAG}, 0),
    "error": (
        {
            "code": Field(str, max_len=64),
            "detail": Field(str, max_len=MAX_DETAIL_CHARS),
            "job": Field(bytes, required=False, min_len=1, max_len=MAX_TAG_BYTES),
        },
        0,
    ),
    "dial?": ({"nonce": _NONCE, "port": Field(int)}, 0),
    "dial": (
        {
            "nonce": _NONCE,
            "ok": Field(bool),
            "seen": Field(str, max_len=64),
            "detail": Field(str, max_len=MAX_DETAIL_CHARS),
        },
        0,
    ),
    "dialback": ({"nonce": _NONCE}, 0),
}


@dataclass(frozen=True)
class Message:
    """A decoded message: its type, header fields and payload frames (``bytes`` or zero-copy buffers)."""

    type: str
    fields: dict[str, Any]
    payloads: tuple[Any, ...] = ()

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)


_packer = msgpack.Packer(use_bin_type=True)


def encode(type_: str, payloads: Sequence[Any] = (), **fields: Any) -> list[Any]:
    """Frames of a message. Fields are checked as strictly as :func:`decode` checks them (a bug here is ours)."""
    spec, n_payloads = MESSAGES[type_]
    if len(payloads) != n_payloads:
        raise ValueError(f"{type_} takes {n_payloads} payload frames, got {len(payloads)}")
    header = {"v": VERSION, "t": type_}
    for name, value in fields.items():
        if name not in spec:
            raise ValueError(f"{type_} has no field {name!r}")
        if value is not None:
            header[name] = value
    return [_packer.pack(header), *payloads]


def _unpack(raw: Any) -> Any:
    return msgpack.unpackb(
        raw,
        raw=False,
        use_list=True,
        strict_map_key=True,
        max_str_len=MAX_STR,
        max_bin_len=MAX_STR,
        max_array_len=MAX_ITEMS,
        max_map_len=MAX_ITEMS,
        max_ext_len=0,
    )


def decode(frames: Sequence[Any]) -> Message:
    """Parse and check one message's frames (routing id already removed); raise :class:`WireError`."""
    if not frames:
        raise WireError("malformed", "empty message")
    head = frames[0]
    size = len(head.buffer) if hasattr(head, "buffer") else len(head)
    if size > MAX_HEADER_BYTES:
        raise WireError("too_big", f"header of {size} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = _unpack(head.buffer if hasattr(head, "buffer") else head)
    except Exception as exc:  # msgpack raises a zoo of types on hostile input; all mean the same here
        raise WireError("malformed", f"header is not msgpack: {type(exc).__name__}") from None
    if not isinstance(header, dict):
        raise WireError("malformed", "header is not a map")
    job = (
        header.get("job") if isinstance(header.get("job"), bytes) and 0 < len(header["job"]) <= MAX_TAG_BYTES else None
    )
    if header.get("v") != VERSION:
        raise WireError("version", f"this node speaks {PROTOCOL} (v={VERSION}), got v={_brief(header.get('v'))}", job)
    type_ = header.get("t")
    entry = MESSAGES.get(type_) if isinstance(type_, str) else None
    if entry is None or not isinstance(type_, str):
        raise WireError("type", f"unknown message type {_brief(type_)}", job)
    spec, n_payloads = entry
    if len(frames) - 1 != n_payloads:
        raise WireError("malformed", f"{type_} takes {n_payloads} payload frames, got {len(frames) - 1}", job)
    fields: dict[str, Any] = {}
    for name, rule in spec.items():
        value = header.get(name)
        if value is None:
            if rule.required:
                raise WireError("malformed", f"{type_}: missing {name}", job)
            continue
        if not isinstance(value, rule.kind) or (rule.kind is not bool and isinstance(value, bool)):
            raise WireError("malformed", f"{type_}.{name}: wrong type {type(value).__name__}", job)
        if isinstance(value, (bytes, str)):
            if len(value) < rule.min_len or (rule.max_len is not None and len(value) > rule.max_len):
                raise WireError("malformed", f"{type_}.{name}: length {len(value)} out of bounds", job)
        fields[name] = value
    unknown = set(header) - set(spec) - {"v", "t"}
    if unknown:
        # keys may mix str and bytes, which do not sort together: sort their reprs
        raise WireError(
            "malformed",
            f"{type_}: unknown fields {', '.join(_brief(k, 32) for k in sorted(map(repr, unknown))[:5])}",
            job,
        )
    return Message(type_, fields, tuple(frames[1:]))


def _brief(value: Any, limit: int = 64) -> str:
    """A peer's value quoted in a detail, at most about ``limit`` characters, costing as little to make:
    a long string is cut before it is quoted, a container is named by its type and length."""
    if isinstance(value, (str, bytes)):
        text = repr(value[:limit])
        return text if len(value) <= limit else f"{text}... ({len(value)} long)"
    if isinstance(value, (list, dict)):
        return f"<{type(value).__name__} of {len(value)}>"
    return repr(value)[:limit]


def payload_bytes(frame: Any) -> bytes:
    """The bytes of a payload frame (``zmq.Frame`` or bytes), copied once."""
    return frame if isinstance(frame, bytes) else bytes(payload_view(frame))


def payload_view(frame: Any) -> memoryview:
    """A payload frame's bytes without a copy (the view keeps the frame alive)."""
    buffer = getattr(frame, "buffer", None)  # zmq.Frame: a view of libzmq's message
    return buffer if isinstance(buffer, memoryview) else memoryview(frame)


def check_load(load: Any) -> Mapping[str, int] | None:
    """A node's advertised load (``running``, ``queued``, ``workers``) if well-formed, else None."""
    if not isinstance(load, dict):
        return None
    out = {}
    for key in ("running", "queued", "workers"):
        value = load.get(key)
        if type(value) is not int or not 0 <= value < 1 << 20:
            return None
        out[key] = value
    return out
