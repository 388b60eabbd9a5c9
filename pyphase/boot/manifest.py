"""Signed boot manifests: what stage 1 may kexec, named by hash, signed by a release key.

A boot manifest is a signed JSON document (see :mod:`pyphase.signing`)::

    {
      "type": "phase-boot-manifest",
      "version": 1,                      # format of this document
      "release": 7,                      # monotonic release number (anti-rollback floor in stage 1)
      "arch": "x86_64",
      "created_at": 1763900000,          # Unix seconds
      "expires_at": 1766492000,          # Unix seconds; stage 1 refuses it afterwards
      "kernel":    {"hash": "sha256:<hex>", "size": 8247232},
      "initramfs": {"hash": "sha256:<hex>", "size": 21000000},
      "cmdline": "console=ttyS0 panic=-1",
      "signature": "<base64 Ed25519>"
    }

The schema is closed (no other keys), every number is an integer that fits in 63 bits
and ``cmdline`` is printable ASCII, so the canonical bytes the C verifier rebuilds in
stage 1 cannot differ from Python's. The same rules are enforced in
``csrc/boot/bootmanifest.c``; keep the two in step.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import nacl.signing

from pyphase.boot.errors import ArtifactError, BootManifestError, ManifestExpired
from pyphase.digests import PREFIX, hash_text, is_hash_text
from pyphase.errors import SignatureError
from pyphase.signing import sign_document, verify_document

MANIFEST_TYPE = "phase-boot-manifest"
FORMAT_VERSION = 1
MAX_MANIFEST_BYTES = 16 * 1024
MAX_CMDLINE_BYTES = 1024  # stage 1 appends a few bytes; x86 COMMAND_LINE_SIZE is 2048
MAX_ARTIFACT_BYTES = 1 << 31  # 2 GiB: far above any kernel or node image
MAX_INT = (1 << 63) - 1
ARCHES = ("x86_64", "aarch64")
ARTIFACT_ROLES = ("kernel", "initramfs")
KEYS = frozenset(
    {"type", "version", "release", "arch", "created_at", "expires_at", "cmdline", "signature", *ARTIFACT_ROLES}
)


@dataclass(frozen=True)
class Artifact:
    """A content-addressed artifact: ``sha256:<hex>`` of its bytes and their count."""

    hash: str
    size: int

    @property
    def hex(self) -> str:
        return self.hash[len(PREFIX) :]

    def to_json(self) -> dict[str, Any]:
        return {"hash": self.hash, "size": self.size}

    @classmethod
    def of_file(cls, path: str | os.PathLike[str]) -> Artifact:
        h = hashlib.sha256()
        size = 0
        try:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                    size += len(chunk)
        except OSError as exc:
            raise ArtifactError(f"cannot read {path}: {exc.strerror}") from None
        return cls(hash_text(h.digest()), size)

    def check_file(self, path: str | os.PathLike[str]) -> None:
        """Raise :class:`ArtifactError` unless the file at ``path`` is exactly this artifact."""
        actual = Artifact.of_file(path)
        if actual.size != self.size:
            raise ArtifactError(f"{path}: size {actual.size}, manifest says {self.size}")
        if actual.hash != self.hash:
            raise ArtifactError(f"{path}: hash {actual.hash}, manifest says {self.hash}")


@dataclass(frozen=True)
class BootManifest:
    """A boot manifest whose schema has been checked (and, from :func:`verify_manifest`, its signature)."""

    release: int
    arch: str
    created_at: int
    expires_at: int
    kernel: Artifact
    initramfs: Artifact
    cmdline: str
    document: Mapping[str, Any]

    def artifacts(self) -> dict[str, Artifact]:
        return {"kernel": self.kernel, "initramfs": self.initramfs}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_hash(text: Any, where: str) -> str:
    if not isinstance(text, str) or not text.startswith(PREFIX) or len(text) != len(PREFIX) + 64:
        raise BootManifestError(f"{where}: expected 'sha256:' and 64 hex digits")
    if not is_hash_text(text):
        raise BootManifestError(f"{where}: hash must be lower-case hex")
    return text


def check_cmdline(cmdline: Any) -> str:
    if not isinstance(cmdline, str):
        raise BootManifestError("cmdline: must be a string")
    if len(cmdline) > MAX_CMDLINE_BYTES:
        raise BootManifestError(f"cmdline: longer than {MAX_CMDLINE_BYTES} bytes")
    if any(not (0x20 <= ord(c) <= 0x7E) for c in cmdline):
        raise BootManifestError("cmdline: only printable ASCII is allowed")
    return cmdline


def parse_manifest(document: Mapping[str, Any]) -> BootManifest:
    """Check the schema of ``document`` (not its signature) and return it as a :class:`BootManifest`."""
    if not isinstance(document, Mapping):
        raise BootManifestError("manifest must be a JSON object")
    unknown = set(document) - KEYS
    if unknown:
        raise BootManifestError(f"unknown field(s): {', '.join(sorted(unknown))}")
    missing = (KEYS - {"signature"}) - set(document)
    if missing:
        raise BootManifestError(f"missing field(s): {', '.join(sorted(missing))}")
    if document["type"] != MANIFEST_TYPE:
        raise BootManifestError(f"type: expected {MANIFEST_TYPE!r}")
    if document["version"] != FORMAT_VERSION or not _is_int(document["version"]):
        raise BootManifestError(f"version: only format {FORMAT_VERSION} is understood")
    for key in ("release", "created_at", "expires_at"):
        if not _is_int(document[key]) or not 0 <= document[key] <= MAX_INT:
            raise BootManifestError(f"{key}: must be a non-negative integer")
    if document["arch"] not in ARCHES:
        raise BootManifestError(f"arch: must be one of {', '.join(ARCHES)}")
    if document["expires_at"] <= document["created_at"]:
        raise BootManifestError("expires_at: must be after created_at")
    artifacts = {}
    for role in ARTIFACT_ROLES:
        entry = document[role]
        if not isinstance(entry, Mapping) or set(entry) != {"hash", "size"}:
            raise BootManifestError(f"{role}: must be an object with exactly 'hash' and 'size'")
        size = entry["size"]
        if not _is_int(size) or not 0 < size <= MAX_ARTIFACT_BYTES:
            raise BootManifestError(f"{role}.size: must be an integer in 1..{MAX_ARTIFACT_BYTES}")
        artifacts[role] = Artifact(_check_hash(entry["hash"], f"{role}.hash"), size)
    return BootManifest(
        release=document["release"],
        arch=document["arch"],
        created_at=document["created_at"],
        expires_at=document["expires_at"],
        kernel=artifacts["kernel"],
        initramfs=artifacts["initramfs"],
        cmdline=check_cmdline(document["cmdline"]),
        document=document,
    )


def make_boot_manifest(
    kernel: Artifact,
    initramfs: Artifact,
    cmdline: str,
    *,
    release: int,
    expires_at: int,
    created_at: int | None = None,
    arch: str = "x86_64",
) -> dict[str, Any]:
    """Build an unsigned manifest document; the schema is checked before it is returned."""
    created = int(time.time()) if created_at is None else created_at
    document = {
        "type": MANIFEST_TYPE,
        "version": FORMAT_VERSION,
        "release": release,
        "arch": arch,
        "created_at": created,
        "expires_at": expires_at,
        "kernel": kernel.to_json(),
        "initramfs": initramfs.to_json(),
        "cmdline": cmdline,
    }
    parse_manifest(document)
    return document


def sign_manifest(document: Mapping[str, Any], key: nacl.signing.SigningKey) -> dict[str, Any]:
    parse_manifest(document)
    return sign_document(document, key)


def encode_manifest(document: Mapping[str, Any]) -> bytes:
    """The bytes served and stored: the signed document as indented JSON (whitespace is not signed)."""
    return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def decode_manifest(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_MANIFEST_BYTES:
        raise BootManifestError(f"manifest is larger than {MAX_MANIFEST_BYTES} bytes")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for k, v in pairs:
            if k in result:
                raise BootManifestError(f"duplicate key {k!r}")
            result[k] = v
        return result

    def no_float(text: str) -> Any:
        raise BootManifestError(f"floats are not allowed ({text})")

    try:
        document = json.loads(
            data.decode("utf-8"), object_pairs_hook=no_duplicates, parse_float=no_float, parse_constant=no_float
        )
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BootManifestError(f"manifest is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise BootManifestError("manifest must be a JSON object")
    return document


def verify_manifest(
    document: Mapping[str, Any], public_key: bytes, *, now: int | None = None, min_release: int = 0
) -> BootManifest:
    """Check the signature, schema, expiry and release floor of a manifest, as stage 1 does."""
    try:
        verify_document(document, public_key)
    except SignatureError as exc:
        raise BootManifestError(f"signature: {exc}") from None
    manifest = parse_manifest(document)
    current = int(time.time()) if now is None else now
    if current >= manifest.expires_at:
        raise ManifestExpired(f"manifest expired at {manifest.expires_at} (now {current})")
    if manifest.release < min_release:
        raise BootManifestError(f"release {manifest.release} is older than the floor {min_release}")
    return manifest


def load_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        return decode_manifest(Path(path).read_bytes())
    except OSError as exc:
        raise BootManifestError(f"cannot read {path}: {exc.strerror}") from None
