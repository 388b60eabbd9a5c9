"""Signed JSON documents: canonical bytes, Ed25519 signatures in base64.

The bytes signed are the document without its ``signature`` field, encoded as
UTF-8 JSON with sorted keys and no insignificant white space. Floats are refused
so that every implementation produces the same bytes.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Mapping

import nacl.bindings
import nacl.exceptions
import nacl.signing

from pyphase.errors import SignatureError

SIGNATURE_FIELD = "signature"


def _check_value(value: Any, path: str) -> None:
    if isinstance(value, float):
        raise ValueError(f"{path}: floats are not allowed in signed documents")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{path}: object keys must be strings")
            _check_value(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_value(item, f"{path}[{index}]")
    elif value is not None and not isinstance(value, (str, int, bool)):
        raise ValueError(f"{path}: {type(value).__name__} cannot appear in a signed document")


def _plain(value: Any) -> bool:
    """Whether ``value`` holds only what a signed document may: the common case, checked without building the paths
    :func:`_check_value` names in its error (a remote tiny job's client CPU 1.17 -> 0.88 ms with the schema's
    same change; BENCHMARKS.md, "Network"). Past a million values (or a
    value that contains itself) it says no, and :func:`_check_value` decides."""
    stack = [value]
    budget = 1 << 20
    while stack:
        budget -= 1
        if budget < 0:
            return False
        item = stack.pop()
        if isinstance(item, dict):
            if not all(isinstance(key, str) for key in item):
                return False
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, float) or (item is not None and not isinstance(item, (str, int, bool))):
            return False
    return True


def canonical_bytes(document: Mapping[str, Any]) -> bytes:
    """Return the bytes that are signed: ``document`` minus ``signature``, canonical JSON."""
    body = {key: value for key, value in document.items() if key != SIGNATURE_FIELD}
    if not _plain(body):
        _check_value(body, "$")  # raises, naming where
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign_document(document: Mapping[str, Any], key: nacl.signing.SigningKey) -> dict[str, Any]:
    """Return a copy of ``document`` with a fresh ``signature`` over its canonical bytes."""
    signed = {k: v for k, v in document.items() if k != SIGNATURE_FIELD}
    signature = key.sign(canonical_bytes(signed)).signature
    signed[SIGNATURE_FIELD] = base64.b64encode(signature).decode("ascii")
    return signed


def verify_document(document: Mapping[str, Any], public_key: bytes) -> None:
    """Raise :class:`SignatureError` unless ``document`` carries a valid signature by ``public_key``."""
    encoded = document.get(SIGNATURE_FIELD)
    if not isinstance(encoded, str):
        raise SignatureError("document has no signature")
    try:
        signature = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"signature is not valid base64: {exc}") from None
    if len(signature) != nacl.bindings.crypto_sign_BYTES:
        raise SignatureError(f"signature has {len(signature)} bytes, expected {nacl.bindings.crypto_sign_BYTES}")
    if base64.b64encode(signature).decode("ascii") != encoded:
        # the unused low bits of the last character set: the same bytes under another spelling (C refuses it too)
        raise SignatureError("signature is not canonical base64")
    try:
        message = canonical_bytes(document)
    except ValueError as exc:
        raise SignatureError(f"document cannot be canonicalised: {exc}") from None
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError):
        raise SignatureError("signature does not match the document and key") from None
