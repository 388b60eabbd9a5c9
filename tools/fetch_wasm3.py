#!/usr/bin/env python3
"""Provide wasm3's pinned C sources to the build, patched, without committing them.

Order of sources:
1. ``third_party/wasm3/`` in the source tree (an sdist of ours carries it, so it installs offline);
2. otherwise the ``pywasm3==0.5.0`` sdist fetched by name with pip from the configured index,
   checked against its pinned sha256, and only its ``wasm3/`` folder and licence unpacked into
   ``third_party/wasm3/``.

Either way every file is checked against the pinned tree digest, then copied to ``--dest`` and
Phase's patches (``csrc/wasm3-patches/*.patch``) are applied there with ``patch -p1``.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "pywasm3"
VERSION = "0.5.0"
SDIST_SHA256 = "5a47c8a39f7f6ae71b3316b2e5d86c9d0db6e771a65f09a86e4d4aa3a19aefcc"
# sha256 over "name\0sha256(file)\n" for every file of wasm3/ (sorted) plus LICENSE: pins the unpacked tree.
TREE_SHA256 = "a04abc8b2d9bd6065d6c21d24df64c57778dae8860158277a6e500fdccecc7ef"

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "third_party" / "wasm3"
PATCHES = ROOT / "csrc" / "wasm3-patches"


def tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        h.update(rel.encode() + b"\0" + hashlib.sha256(path.read_bytes()).hexdigest().encode() + b"\n")
    return h.hexdigest()


def fetch_into(vendor: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "-d", tmp, f"{PACKAGE}=={VERSION}"]
        print("fetch_wasm3: " + " ".join(cmd[1:]), file=sys.stderr)
        if subprocess.run(cmd, stdout=sys.stderr).returncode != 0:
            sys.exit(f"fetch_wasm3: pip could not download {PACKAGE}=={VERSION} (needs pip and a reachable package "
                     f"index; an sdist of pyphase carries the sources and needs neither)")
        archives = list(Path(tmp).glob(f"{PACKAGE}-{VERSION}.tar.gz"))
        if len(archives) != 1:
            sys.exit(f"fetch_wasm3: pip did not produce {PACKAGE}-{VERSION}.tar.gz")
        digest = hashlib.sha256(archives[0].read_bytes()).hexdigest()
        if digest != SDIST_SHA256:
            sys.exit(f"fetch_wasm3: {archives[0].name} has sha256 {digest}, expected {SDIST_SHA256}")
        prefix = f"{PACKAGE}-{VERSION}/"
        staging = vendor.with_name(vendor.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        with tarfile.open(archives[0]) as tar:
            for member in tar.getmembers():
                if not member.isfile() or not member.name.startswith(prefix):
                    continue
                rel = member.name[len(prefix):]
                if rel == "LICENSE" or (rel.startswith("wasm3/") and rel.count("/") == 1):
                    target = staging / Path(rel).name
                    source = tar.extractfile(member)
                    assert source is not None
                    target.write_bytes(source.read())
        shutil.rmtree(vendor, ignore_errors=True)
        staging.rename(vendor)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, help="folder to receive the patched sources")
    parser.add_argument("--print-tree-digest", action="store_true", help="print the digest of third_party/wasm3")
    args = parser.parse_args()

    if not VENDOR.is_dir() or tree_digest(VENDOR) != TREE_SHA256:
        fetch_into(VENDOR)
    digest = tree_digest(VENDOR)
    if args.print_tree_digest:
        print(digest)
        return
    if digest != TREE_SHA256:
        sys.exit(f"fetch_wasm3: {VENDOR} has tree digest {digest}, expected {TREE_SHA256}")
    if args.dest is None:
        parser.error("--dest is required")

    staging = args.dest.with_name(args.dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(VENDOR, staging / "wasm3")
    for patch in sorted(PATCHES.glob("*.patch")):
        result = subprocess.run(["patch", "-p1", "--forward", "--batch", "--silent", "-i", str(patch)],
                                cwd=staging, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"fetch_wasm3: {patch.name} does not apply:\n{result.stdout}{result.stderr}")
    shutil.rmtree(args.dest, ignore_errors=True)
    staging.rename(args.dest)


if __name__ == "__main__":
    main()
