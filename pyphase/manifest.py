"""Job manifests: what a client asks a node to run (docs/DESIGN.md, "Job manifest")."""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from pyphase import schemas
from pyphase.errors import ManifestError
from pyphase.limits import Limits
from pyphase.digests import sha256_text
from pyphase.runtime import Module
from pyphase.signing import canonical_bytes

MANIFEST_VERSION = 1


def new_nonce() -> str:
    """A fresh client nonce: 16 random bytes in hex."""
    return os.urandom(16).hex()


def make_manifest(
    module: Module | bytes,
    input: bytes = b"",
    *,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    entry: str = "_start",
    limits: Limits | None = None,
    deterministic: bool = False,
    nonce: str | None = None,
    requires: Mapping[str, Any] | None = None,
    module_hash: str | None = None,
    fs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build a manifest for running ``module`` on ``input``; checked against the schema before it is returned.
    ``module_hash``: the module's ``sha256:`` text when the caller computed it already from the same bytes.
    ``fs``: the job's directories (``dirs`` of guest path, readonly, tree listing ``{hash, size}``) and the bounds
    ``disk_bytes`` and ``files`` on what it writes (docs/NETWORK.md, "Files")."""
    if isinstance(module, Module):
        module_ref = {"hash": module.hash, "size": module.size}
    else:
        module_ref = {"hash": module_hash or sha256_text(module), "size": len(module)}
    manifest = {
        "version": MANIFEST_VERSION,
        "module": module_ref,
        "entry": entry,
        "args": list(args),
        "env": dict(env or {}),
        "input": {"hash": sha256_text(input), "size": len(input)},
        "limits": (limits or Limits()).to_json(),
        "requires": dict(requires or {}),
        "deterministic": bool(deterministic),
        "nonce": nonce or new_nonce(),
    }
    if fs is not None:
        manifest["fs"] = dict(fs)
    return validate_manifest(manifest)


def validate_manifest(document: Any) -> dict[str, Any]:
    """Return ``document`` if it is a well-formed manifest, else raise :class:`ManifestError` listing every problem."""
    problems = schemas.errors("manifest", document)
    if problems:
        raise ManifestError("; ".join(problems))
    result: dict[str, Any] = document
    return result


def job_id(manifest: Mapping[str, Any]) -> str:
    """The job's name: sha256 of the manifest's canonical bytes (nonce included, so every submission differs)."""
    return sha256_text(canonical_bytes(manifest))


def manifest_limits(manifest: Mapping[str, Any]) -> Limits:
    """The :class:`Limits` a manifest asks for."""
    return Limits.from_json(manifest["limits"])
