"""The static stage-1 tools cross-built for aarch64 (tools/cross-boot-tools.sh), run under qemu-user: the first
part of Phase Boot for arm64. Marker ``arm`` (left out of the default run): pytest -m arm tests/boot/test_arm64_tools.py
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from pyphase.boot.manifest import Artifact
from pyphase.identity import Identity
from pyphase.signing import canonical_bytes

from .conftest import ROOT
from .test_verify_c import _signed

pytestmark = pytest.mark.arm

EM_AARCH64 = 183
PT_INTERP = 3


@pytest.fixture(scope="module")
def arm64_tools() -> Path:
    for tool, package in (
        ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
        ("qemu-aarch64-static", "qemu-user-static"),
    ):
        assert shutil.which(tool), f"{tool} not found (apt-get install {package}; .ci/setup --test installs it)"
    out = ROOT / "build" / "boot-aarch64"
    proc = subprocess.run(
        [str(ROOT / "tools" / "cross-boot-tools.sh"), str(out)],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def run(tools: Path, *args: object) -> subprocess.CompletedProcess[bytes]:
    """phase-verify under qemu-aarch64-static named explicitly (binfmt_misc is not needed, nor trusted)."""
    return subprocess.run(
        ["qemu-aarch64-static", "-0", "phase-verify", str(tools / "phase-boot"), *map(str, args)],
        capture_output=True,
        timeout=120,
    )


def test_the_tools_are_static_aarch64_binaries(arm64_tools: Path) -> None:
    elf = (arm64_tools / "phase-boot").read_bytes()
    assert elf[:4] == b"\x7fELF" and elf[4] == 2  # 64-bit
    (machine,) = struct.unpack_from("<H", elf, 18)
    assert machine == EM_AARCH64
    phoff, phentsize, phnum = struct.unpack_from("<Q", elf, 32)[0], *struct.unpack_from("<HH", elf, 54)
    types = [struct.unpack_from("<I", elf, phoff + i * phentsize)[0] for i in range(phnum)]
    assert PT_INTERP not in types  # no dynamic loader: nothing loaded at run time
    for name in ("phase-verify", "phase-fetch", "phase-discover", "phase-dht"):
        assert (arm64_tools / name).resolve() == (arm64_tools / "phase-boot").resolve()


def test_a_python_signed_manifest_verifies_on_aarch64(arm64_tools: Path, release_key, tmp_path: Path) -> None:
    key, pub = release_key
    manifest = _signed(key, tmp_path)
    out = tmp_path / "fields"
    r = run(arm64_tools, "manifest", "--key", pub, "--out", out, manifest)
    assert r.returncode == 0, r.stderr
    assert b"manifest ok: release 5" in r.stdout
    assert (out / "kernel.hash").read_text().strip() == Artifact.of_file(tmp_path / "kernel").hash
    assert (out / "cmdline").read_text() == 'console=ttyS0 quiet x="a b\\c"\n'


def test_tampered_and_foreign_manifests_are_refused_on_aarch64(arm64_tools: Path, release_key, tmp_path: Path) -> None:
    key, pub = release_key
    doc = json.loads(_signed(key, tmp_path).read_text())
    doc["release"] += 1
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(doc))
    r = run(arm64_tools, "manifest", "--key", pub, tampered)
    assert r.returncode == 1 and b"manifest refused: bad signature" in r.stderr
    r = run(arm64_tools, "manifest", "--key", pub, _signed(Identity.generate(), tmp_path))
    assert r.returncode == 1 and b"does not verify against the release key" in r.stderr


def test_file_hashes_and_canonical_bytes_match_python_on_aarch64(arm64_tools: Path, tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(bytes(range(256)) * 300)
    a = Artifact.of_file(blob)
    assert run(arm64_tools, "file", "--hash", a.hash, "--size", a.size, blob).returncode == 0
    blob.write_bytes(bytes(range(256)) * 299 + bytes(256))
    bad = run(arm64_tools, "file", "--hash", a.hash, "--size", a.size, blob)
    assert bad.returncode == 1 and b"hash mismatch" in bad.stderr
    doc = {"s": "é\u2028\U0001f600\x01", "n": [-(2**63), 2**63 - 1, None, True], "signature": "dropped"}
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(doc))
    r = run(arm64_tools, "canon", path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == canonical_bytes(doc)
