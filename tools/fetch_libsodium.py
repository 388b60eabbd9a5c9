#!/usr/bin/env python3
"""Provide libsodium to the build: the copy bundled in PyNaCl's pinned sdist, built static and PIC.

Sources, in order: ``third_party/libsodium/`` in the source tree (an sdist of ours carries it, so it installs
offline); otherwise the ``pynacl==1.6.2`` sdist fetched by name with pip, checked against its pinned sha256, and
its ``src/libsodium/`` tree (libsodium 1.0.20) unpacked there. The tree is always checked against its digest.

``--build PREFIX`` builds it for the builds that are not CMake's own (the static boot tools, the fuzz build):
the standalone project ``cmake/libsodium/`` compiles it with ``cmake/libsodium.cmake``, the same recipe that
makes the library the Python extensions link (one source for how libsodium is built), installs
``lib/libsodium.a`` and ``include/`` into PREFIX, and checks that every libsodium function csrc/ calls is defined
in it. A PREFIX already built from the same tree and recipe with the same compiler and flags is kept as it is;
builds run in a private staging folder and are renamed into place, so two builds at once never see each other's
half-done files.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pinned_sdist import Pin, fail, provide  # noqa: E402

PIN = Pin(
    package="pynacl",
    version="1.6.2",
    sdist_sha256="018494d6d696ae03c7e656e5e74cdfd8ea1326962cc401bcf018f1ed8436811c",
    # tree digest (pinned_sdist.tree_digest) over PyNaCl's src/libsodium/
    tree_sha256="31b8ccaaeb4d276ad3cf86121eaf9409d87bc6adab6f3e28219216c036d7c8b2",
)

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "third_party" / "libsodium"
CSRC = ROOT / "csrc"
RECIPE = [ROOT / "cmake" / "libsodium.cmake", ROOT / "cmake" / "libsodium" / "CMakeLists.txt"]
WHO = "fetch_libsodium"


def select(rel: str) -> str | None:
    """PyNaCl's bundled libsodium tree, whole (its licence, version.h and sources; an sdist carries it as is)."""
    prefix = "src/libsodium/"
    return rel[len(prefix) :] if rel.startswith(prefix) else None


def functions_used() -> set[str]:
    """Every libsodium function csrc/ calls: the names the built library must define."""
    call = re.compile(r"\b((?:crypto|sodium|randombytes)_\w+)\s*\(")
    return {m.group(1) for path in CSRC.rglob("*.[ch]") for m in call.finditer(path.read_text(errors="replace"))}


def defined_symbols(archive: Path, nm: str) -> set[str]:
    out = subprocess.run([nm, "-g", "--defined-only", str(archive)], capture_output=True, text=True)
    if out.returncode != 0:
        fail(WHO, f"{nm} could not read {archive}: {out.stderr.strip()}")
    return {line.split()[-1] for line in out.stdout.splitlines() if len(line.split()) == 3}


def check(archive: Path, nm: str) -> None:
    """Fail unless the built library defines every libsodium function csrc/ calls."""
    missing = functions_used() - defined_symbols(archive, nm)
    if missing:
        fail(WHO, f"{archive} lacks functions csrc/ calls: {', '.join(sorted(missing))}")


def build(prefix: Path, cc: str, cflags: str, host: str | None, nm: str) -> None:
    recipe_digest = hashlib.sha256(b"".join(path.read_bytes() for path in RECIPE)).hexdigest()
    recipe = "\n".join([PIN.tree_sha256, recipe_digest, cc, cflags, host or ""])
    stamp = hashlib.sha256(recipe.encode()).hexdigest()
    library = prefix / "lib" / "libsodium.a"
    if (
        library.is_file()
        and (prefix / "phase-build-stamp").is_file()
        and (prefix / "phase-build-stamp").read_text().strip() == stamp
    ):
        return
    cmake = shutil.which("cmake")
    if cmake is None:
        fail(WHO, "cmake is needed to build libsodium (apt-get install cmake, or pip install cmake)")
    staging = prefix.with_name(f"{prefix.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    work = staging / "build"
    work.mkdir(parents=True)
    # CC may carry arguments ("zig cc -target aarch64-linux-gnu"): CMake takes them from the environment
    env = dict(os.environ, CC=cc, CFLAGS=cflags, ASM=cc)
    configure = [
        cmake,
        "-S",
        str(ROOT / "cmake" / "libsodium"),
        "-B",
        str(work),
        f"-DSODIUM_SOURCE_DIR={VENDOR}",
        f"-DCMAKE_INSTALL_PREFIX={staging}",
        "-DCMAKE_BUILD_TYPE=Release",
    ]
    if host:  # a GNU triple, as configure's --host took it: aarch64-linux-gnu
        configure += ["-DCMAKE_SYSTEM_NAME=Linux", f"-DCMAKE_SYSTEM_PROCESSOR={host.split('-')[0]}"]
    jobs = str(len(os.sched_getaffinity(0)))
    for step in (configure, [cmake, "--build", str(work), "-j", jobs], [cmake, "--install", str(work)]):
        print(f"{WHO}: {shlex.join(step[:3])} …", file=sys.stderr)
        result = subprocess.run(step, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if result.returncode != 0:
            log = work / "CMakeFiles" / "CMakeConfigureLog.yaml"
            hint = f" (see {log})" if log.exists() else ""
            fail(WHO, f"`{shlex.join(step)}` failed{hint}:\n{result.stderr[-4000:]}")
    check(staging / "lib" / "libsodium.a", nm)
    shutil.rmtree(work)
    (staging / "phase-build-stamp").write_text(stamp + "\n")
    shutil.rmtree(prefix, ignore_errors=True)
    try:
        staging.rename(prefix)
    except OSError:  # another build renamed the same result into place first
        shutil.rmtree(staging, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--build", type=Path, metavar="PREFIX", help="build static libsodium (cmake/libsodium/) and install it here"
    )
    parser.add_argument(
        "--check", type=Path, metavar="ARCHIVE", help="check that ARCHIVE defines every libsodium function csrc/ calls"
    )
    parser.add_argument("--cc", default=os.environ.get("CC", "cc"), help="C compiler (default: $CC or cc)")
    parser.add_argument("--cflags", default=os.environ.get("CFLAGS", "-O2"), help="C flags (default: $CFLAGS or -O2)")
    parser.add_argument("--host", help="the target's GNU triple when cross-compiling (e.g. aarch64-linux-gnu)")
    parser.add_argument("--nm", default=os.environ.get("NM", "nm"), help="nm used to check the built library")
    args = parser.parse_args()

    if args.check is not None:
        check(args.check, args.nm)
        return
    provide(PIN, VENDOR, select, WHO)
    if args.build is not None:
        build(args.build.resolve(), args.cc, args.cflags, args.host, args.nm)


if __name__ == "__main__":
    main()
