"""Receipts: a node's signed statement of what a job was and what it produced (docs/DESIGN.md, "Receipt").

A client accepts a result only if the signature verifies, every hash matches the bytes it holds,
the nonce is its own, and the signer is the peer it meant to talk to; :func:`verify_receipt`
checks all of these and reports every failure, not only the first.
"""

from __future__ import annotations

import base64
import binascii
import functools
import time
from typing import TYPE_CHECKING, Any, Mapping

from pyphase import schemas
from pyphase.errors import SignatureError, VerificationError
from pyphase.identity import Identity, peer_id_from_public_key, public_key_from_peer_id
from pyphase.limits import Limits
from pyphase.digests import sha256_text
from pyphase.result import Result
from pyphase.engines import VERSIONS, fuel_unit
from pyphase.runtime import RUNTIME_NAME, RUNTIME_VERSION
from pyphase.signing import sign_document, verify_document

if TYPE_CHECKING:
    from datetime import datetime

RECEIPT_VERSION = 1
MESSAGE_MAX = 1024


@functools.cache
def machine_arch() -> str:
    """Normalised CPU architecture: ``x86_64``, ``aarch64``, ... (asked once: every receipt names it)"""
    import platform  # here: verifying a receipt needs none of it

    arch = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(arch, arch)


def node_info(identity: Identity, engine: str = RUNTIME_NAME, fuel_limit: int = 0) -> dict[str, str]:
    """The signer and what ran the job: the engine (``runtime``, its version) and the unit its ``fuel_used`` counts
    (``none`` when the engine did not count: the compiling engine without a fuel limit)."""
    return {
        "peer_id": identity.peer_id,
        "public_key": base64.b64encode(identity.public_key).decode("ascii"),
        "runtime": engine,
        "runtime_version": VERSIONS.get(engine, RUNTIME_VERSION),
        "fuel_unit": fuel_unit(engine, fuel_limit),
        "arch": machine_arch(),
    }


_second_text: tuple[int, str] = (-1, "")


def timestamp(moment: datetime | None = None) -> str:
    """RFC 3339 UTC time with milliseconds, the form receipts (and the node's event log) carry: the one place
    that formats it. Now (the default) costs a strftime only once a second."""
    global _second_text
    if moment is not None:
        from datetime import timezone  # only a given moment needs it (phase verify never does)

        moment = moment.astimezone(timezone.utc)
        return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{moment.microsecond // 1000:03d}Z"
    now = time.time()
    second = int(now)
    if _second_text[0] != second:
        _second_text = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{_second_text[1]}.{int((now - second) * 1000):03d}Z"


def make_receipt(
    result: Result,
    *,
    job_id: str,
    nonce: str,
    limits: Limits,
    identity: Identity,
    started_at: str | None = None,
    outputs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Sign a receipt for ``result`` with ``identity``; ``outputs`` (``{"hash", "size"}`` of the output tree's
    listing) for a job that had directories."""
    receipt = {
        "version": RECEIPT_VERSION,
        "job_id": job_id,
        "nonce": nonce,
        "module": result.module_hash,
        "input": result.input_hash,
        "stdout": result.stdout_hash,
        "stderr": result.stderr_hash,
        "exit_code": result.exit_code,
        "status": result.status,
        "message": result.message[:MESSAGE_MAX],
        "fuel_used": result.fuel_used,
        "wall_us": result.wall_us,
        "started_at": started_at or timestamp(),
        "limits": limits.to_json(),
        "node": node_info(identity, result.engine, limits.fuel),
    }
    if outputs is not None:
        receipt["outputs"] = {"hash": outputs["hash"], "size": outputs["size"]}
    return sign_document(receipt, identity.signing_key)


def signer_public_key(receipt: Mapping[str, Any]) -> bytes:
    """The public key a receipt claims to be signed by (raises ``ValueError`` when malformed)."""
    node = receipt.get("node")
    if not isinstance(node, Mapping) or not isinstance(node.get("public_key"), str):
        raise ValueError("receipt has no node.public_key")
    try:
        key = base64.b64decode(node["public_key"], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("node.public_key is not base64") from None
    if len(key) != 32:
        raise ValueError(f"node.public_key has {len(key)} bytes, expected 32")
    return key


def verify_receipt(
    receipt: Any,
    *,
    module: bytes | None = None,
    input: bytes | None = None,
    stdout: bytes | None = None,
    stderr: bytes | None = None,
    nonce: str | None = None,
    signer: str | bytes | None = None,
    manifest: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Check everything that can be checked; return the receipt or raise :class:`VerificationError`.

    ``signer`` is the expected node, as a peer id or raw public key. Bytes given (module, input,
    stdout, stderr) are hashed and compared; ``manifest`` ties the receipt to the job asked for.
    """
    problems = schemas.errors("receipt", receipt)
    if not isinstance(receipt, Mapping):
        raise VerificationError(problems or ["receipt is not a JSON object"])
    try:
        public_key = signer_public_key(receipt)
    except ValueError as exc:
        problems.append(str(exc))
        raise VerificationError(problems) from None
    try:
        verify_document(receipt, public_key)
    except SignatureError as exc:
        problems.append(f"signature: {exc}")
    node = receipt.get("node") or {}
    if node.get("peer_id") != peer_id_from_public_key(public_key):
        problems.append("node.peer_id does not match node.public_key")
    if signer is not None:
        try:
            expected = signer if isinstance(signer, bytes) else public_key_from_peer_id(signer)
        except ValueError as exc:
            problems.append(f"expected signer: {exc}")
        else:
            if expected != public_key:
                problems.append(
                    f"signed by {peer_id_from_public_key(public_key)}, expected {peer_id_from_public_key(expected)}"
                )
    if nonce is not None and receipt.get("nonce") != nonce:
        problems.append(f"nonce {receipt.get('nonce')!r} is not ours ({nonce!r})")
    for field, data in (("module", module), ("input", input), ("stdout", stdout), ("stderr", stderr)):
        if data is not None and receipt.get(field) != sha256_text(data):
            problems.append(f"{field} hash {receipt.get(field)} does not match the bytes given ({sha256_text(data)})")
    if manifest is not None:
        from pyphase.manifest import job_id

        if receipt.get("job_id") != job_id(manifest):
            problems.append("job_id does not match the manifest")
        if receipt.get("module") != manifest["module"]["hash"]:
            problems.append("module hash differs from the manifest's")
        if receipt.get("input") != manifest["input"]["hash"]:
            problems.append("input hash differs from the manifest's")
        if receipt.get("nonce") != manifest["nonce"]:
            problems.append("nonce differs from the manifest's")
        if ("fs" in manifest) != ("outputs" in receipt):
            problems.append("outputs: a receipt names an output tree exactly when the job had directories")
    if problems:
        raise VerificationError(problems)
    return dict(receipt)
