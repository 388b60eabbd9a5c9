"""Boot manifests in Python: make, sign, verify, refuse."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from pyphase.boot import keys
from pyphase.boot.errors import ArtifactError, BootManifestError, ManifestExpired, ReleaseKeyError
from pyphase.boot.manifest import (
    Artifact,
    decode_manifest,
    encode_manifest,
    make_boot_manifest,
    parse_manifest,
    sign_manifest,
    verify_manifest,
)
from pyphase.errors import PhaseError
from pyphase.identity import Identity

KERNEL = Artifact("sha256:" + "ab" * 32, 1234)
INITRD = Artifact("sha256:" + "cd" * 32, 5678)


def _doc(**over: object) -> dict:
    doc = make_boot_manifest(
        KERNEL,
        INITRD,
        "console=ttyS0 panic=-1",
        release=3,
        expires_at=int(time.time()) + 3600,
        created_at=int(time.time()),
    )
    doc.update(over)
    return doc


def test_sign_and_verify_roundtrip() -> None:
    key = Identity.generate()
    signed = sign_manifest(_doc(), key.signing_key)
    m = verify_manifest(decode_manifest(encode_manifest(signed)), key.public_key)
    assert m.kernel == KERNEL and m.initramfs == INITRD and m.release == 3
    assert m.cmdline == "console=ttyS0 panic=-1"


@pytest.mark.parametrize(
    "field,value",
    [
        ("release", 4),
        ("cmdline", "console=ttyS0 init=/bin/sh"),
        ("expires_at", 2**40),
        ("kernel", {"hash": "sha256:" + "00" * 32, "size": 1234}),
        ("initramfs", {"hash": INITRD.hash, "size": 5679}),
        ("arch", "aarch64"),
    ],
)
def test_any_tampered_field_is_refused(field: str, value: object) -> None:
    key = Identity.generate()
    signed = sign_manifest(_doc(), key.signing_key)
    signed[field] = value
    with pytest.raises(BootManifestError, match="signature"):
        verify_manifest(signed, key.public_key)


def test_wrong_key_is_refused() -> None:
    signed = sign_manifest(_doc(), Identity.generate().signing_key)
    with pytest.raises(BootManifestError, match="signature"):
        verify_manifest(signed, Identity.generate().public_key)


def test_expired_and_rollback() -> None:
    key = Identity.generate()
    now = int(time.time())
    signed = sign_manifest(_doc(created_at=now - 100, expires_at=now - 1), key.signing_key)
    with pytest.raises(ManifestExpired):
        verify_manifest(signed, key.public_key)
    fresh = sign_manifest(_doc(), key.signing_key)
    with pytest.raises(BootManifestError, match="floor"):
        verify_manifest(fresh, key.public_key, min_release=4)
    assert verify_manifest(fresh, key.public_key, min_release=3).release == 3


@pytest.mark.parametrize(
    "over,match",
    [
        ({"extra": 1}, "unknown field"),
        ({"cmdline": "a\nb"}, "printable ASCII"),
        ({"cmdline": "x" * 2000}, "longer"),
        ({"kernel": {"hash": "sha256:" + "AB" * 32, "size": 1}}, "lower-case"),
        ({"kernel": {"hash": KERNEL.hash, "size": 0}}, "size"),
        ({"kernel": {"hash": KERNEL.hash, "size": True}}, "size"),
        ({"version": 2}, "version"),
        ({"type": "other"}, "type"),
        ({"release": -1}, "release"),
        ({"expires_at": 0}, "after"),
    ],
)
def test_schema_is_closed(over: dict, match: str) -> None:
    with pytest.raises(BootManifestError, match=match):
        parse_manifest(_doc(**over))


def test_decode_refuses_floats_duplicates_and_size() -> None:
    with pytest.raises(BootManifestError, match="float"):
        decode_manifest(b'{"release": 1.5}')
    with pytest.raises(BootManifestError, match="duplicate"):
        decode_manifest(b'{"release": 1, "release": 2}')
    with pytest.raises(BootManifestError, match="larger"):
        decode_manifest(b" " * 20000)
    with pytest.raises(BootManifestError, match="JSON"):
        decode_manifest(b"\xff")


def test_errors_are_phase_errors() -> None:
    assert issubclass(ManifestExpired, PhaseError) and issubclass(BootManifestError, ValueError)


def test_artifact_check_file(tmp_path: Path) -> None:
    f = tmp_path / "a"
    f.write_bytes(b"hello")
    a = Artifact.of_file(f)
    a.check_file(f)
    f.write_bytes(b"hellO")
    with pytest.raises(ArtifactError, match="hash"):
        a.check_file(f)
    f.write_bytes(b"hello!")
    with pytest.raises(ArtifactError, match="size"):
        a.check_file(f)


def test_release_key_files(tmp_path: Path) -> None:
    identity, pub = keys.generate(tmp_path / "k")
    assert stat.S_IMODE(os.stat(tmp_path / "k").st_mode) == 0o600
    assert keys.load_public_key(pub) == identity.public_key
    assert keys.load_secret_key(tmp_path / "k").public_key == identity.public_key
    with pytest.raises(ReleaseKeyError, match="exists"):
        keys.generate(tmp_path / "k")
    (tmp_path / "bad.pub").write_text("phase-ed25519-public-v1:AAAA\n")
    with pytest.raises(ReleaseKeyError, match="bytes"):
        keys.load_public_key(tmp_path / "bad.pub")
    with pytest.raises(ReleaseKeyError):
        keys.load_public_key(tmp_path / "missing.pub")


def test_encoded_manifest_is_json(tmp_path: Path) -> None:
    key = Identity.generate()
    signed = sign_manifest(_doc(), key.signing_key)
    assert json.loads(encode_manifest(signed)) == signed
