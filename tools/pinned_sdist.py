"""Fetch a pinned sdist from the configured package index by name, check it, unpack part of it.

Shared by ``fetch_wasm3.py`` (wasm3 from ``pywasm3``) and ``fetch_libsodium.py`` (libsodium from ``pynacl``):
third-party C sources come from a registry package, pinned by version and sha256, and are never committed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pin:
    """One sdist by name and version, its archive's sha256 and the digest of the tree unpacked from it."""

    package: str
    version: str
    sdist_sha256: str
    tree_sha256: str


def tree_digest(folder: Path) -> str:
    """sha256 over "path\\0sha256(file)\\n" for every file under folder, sorted: pins an unpacked tree."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        h.update(rel.encode() + b"\0" + hashlib.sha256(path.read_bytes()).hexdigest().encode() + b"\n")
    return h.hexdigest()


def fail(who: str, message: str) -> None:
    sys.exit(f"{who}: {message}")


def provide(pin: Pin, vendor: Path, select: Callable[[str], str | None], who: str) -> None:
    """Make vendor hold the pinned tree: keep it if its digest matches, else fetch and unpack it again.

    select maps a path inside the sdist (after its top folder) to a path inside vendor, or None to skip it.
    """
    if vendor.is_dir() and tree_digest(vendor) == pin.tree_sha256:
        return
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--disable-pip-version-check",
            "-d",
            tmp,
            f"{pin.package}=={pin.version}",
        ]
        print(f"{who}: " + " ".join(cmd[1:]), file=sys.stderr)
        if subprocess.run(cmd, stdout=sys.stderr).returncode != 0:
            fail(
                who,
                f"pip could not download {pin.package}=={pin.version} (needs pip and a reachable package "
                f"index; an sdist of pyphase carries the sources and needs neither)",
            )
        archives = [p for p in Path(tmp).iterdir() if p.name.lower() == f"{pin.package}-{pin.version}.tar.gz"]
        if len(archives) != 1:
            fail(who, f"pip did not produce {pin.package}-{pin.version}.tar.gz")
        digest = hashlib.sha256(archives[0].read_bytes()).hexdigest()
        if digest != pin.sdist_sha256:
            fail(who, f"{archives[0].name} has sha256 {digest}, expected {pin.sdist_sha256}")
        staging = vendor.with_name(f"{vendor.name}.partial-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        with tarfile.open(archives[0]) as tar:
            for member in tar.getmembers():
                top, _, rel = member.name.partition("/")
                target_rel = select(rel) if member.isfile() and top.lower() == f"{pin.package}-{pin.version}" else None
                if target_rel is None:
                    continue
                target = staging / target_rel
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                target.write_bytes(source.read())
                target.chmod(0o755 if member.mode & 0o111 else 0o644)
        digest = tree_digest(staging)
        if digest != pin.tree_sha256:
            shutil.rmtree(staging, ignore_errors=True)
            fail(who, f"the tree unpacked from {archives[0].name} has digest {digest}, expected {pin.tree_sha256}")
        shutil.rmtree(vendor, ignore_errors=True)
        staging.rename(vendor)
