#!/usr/bin/env python3
"""Provide wasm3's pinned C sources to the build, patched, without committing them.

Order of sources:
1. ``third_party/wasm3/`` in the source tree (an sdist of ours carries it, so it installs offline);
2. otherwise the ``pywasm3==0.5.0`` sdist fetched by name with pip from the configured index,
   checked against its pinned sha256, and only its ``wasm3/`` folder and licence unpacked into
   ``third_party/wasm3/``.

Either way every file is checked against the pinned tree digest, then copied to ``--dest`` and
Phase's patches (``csrc/wasm3-patches/*.patch``) are applied there, exactly, by ``apply_patch.py`` (no ``patch``
or ``git`` needed).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from apply_patch import PatchError, apply  # noqa: E402
from pinned_sdist import Pin, provide, tree_digest  # noqa: E402

PIN = Pin(
    package="pywasm3",
    version="0.5.0",
    sdist_sha256="5a47c8a39f7f6ae71b3316b2e5d86c9d0db6e771a65f09a86e4d4aa3a19aefcc",
    # tree digest (pinned_sdist.tree_digest) over wasm3/*.c|h plus LICENSE
    tree_sha256="a04abc8b2d9bd6065d6c21d24df64c57778dae8860158277a6e500fdccecc7ef",
)
TREE_SHA256 = PIN.tree_sha256

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "third_party" / "wasm3"
PATCHES = ROOT / "csrc" / "wasm3-patches"


def select(rel: str) -> str | None:
    """wasm3's C sources (the sdist's wasm3/ folder, flat) and its licence."""
    if rel == "LICENSE" or (rel.startswith("wasm3/") and rel.count("/") == 1):
        return Path(rel).name
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, help="folder to receive the patched sources")
    parser.add_argument("--print-tree-digest", action="store_true", help="print the digest of third_party/wasm3")
    args = parser.parse_args()

    provide(PIN, VENDOR, select, "fetch_wasm3")
    if args.print_tree_digest:
        print(tree_digest(VENDOR))
        return
    if args.dest is None:
        parser.error("--dest is required")

    staging = args.dest.with_name(args.dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(VENDOR, staging / "wasm3")
    for patch in sorted(PATCHES.glob("*.patch")):
        try:
            apply(patch, staging)
        except (PatchError, OSError) as error:
            sys.exit(f"fetch_wasm3: {patch.name} does not apply: {error}")
    shutil.rmtree(args.dest, ignore_errors=True)
    staging.rename(args.dest)


if __name__ == "__main__":
    main()
