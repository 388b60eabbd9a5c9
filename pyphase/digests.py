"""Content addresses: ``sha256:<64 lower-case hex>``, the one text form of a digest.

Modules, inputs, outputs, jobs (manifests, receipts), the node's module cache and Phase Boot's artifacts are
all named this way; docs/DESIGN.md, "Content addressing".
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["PREFIX", "UNHASHED", "digest_from_text", "hash_text", "is_hash_text", "sha256_text"]

PREFIX = "sha256:"
UNHASHED = PREFIX + "0" * 64
"""The hash a job that never ran reports for what it did not hash (the sandbox's crashed/invalid results)."""
_TEXT = re.compile(r"sha256:[0-9a-f]{64}\Z")


def hash_text(digest: bytes) -> str:
    """``sha256:<hex>`` name of a 32-byte digest."""
    return PREFIX + digest.hex()


def sha256_text(data: bytes | bytearray | memoryview) -> str:
    """``sha256:<hex>`` of ``data``."""
    return hash_text(hashlib.sha256(data).digest())


def is_hash_text(text: object) -> bool:
    """True for ``sha256:`` followed by exactly 64 lower-case hex digits."""
    return isinstance(text, str) and _TEXT.match(text) is not None


def digest_from_text(text: str) -> bytes:
    """The 32-byte digest named by ``sha256:<hex>``; ``ValueError`` for anything else."""
    if not is_hash_text(text):
        raise ValueError(f"not a sha256 content address: {text!r}")
    return bytes.fromhex(text[len(PREFIX) :])
