"""Fixtures of the Phase Boot suite.

Nothing is installed here: a test whose tool is missing is skipped with the package to add.
QEMU tests carry the ``boot`` marker.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyphase.boot import keys
from pyphase.identity import Identity

ROOT = Path(__file__).resolve().parents[2]
CSRC_BOOT = ROOT / "csrc" / "boot"
LIBDIR = Path("/usr/lib/x86_64-linux-gnu")
SODIUM_BOOT = ROOT / "build" / "libsodium-boot"


def require(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} not found (apt-get install {package})")
    return path


@pytest.fixture(scope="session")
def phase_boot_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the static stage-1 tools once per session; the directory holds phase-verify etc."""
    require("gcc", "gcc")
    require("make", "make")
    require("cmake", "cmake")  # builds the bundled libsodium (cmake/libsodium/)
    for lib, pkg in (("libjansson.a", "libjansson-dev"), ("libcares.a", "libc-ares-dev")):
        if not (LIBDIR / lib).exists():
            pytest.skip(f"{LIBDIR / lib} not found (apt-get install {pkg})")
    out = tmp_path_factory.mktemp("phase-boot-bin")
    # libsodium (bundled, static) is built once into the repo's build/ and reused by later sessions.
    proc = subprocess.run(
        ["make", "-s", "-C", str(CSRC_BOOT), f"O={out}", f"SODIUM_PREFIX={SODIUM_BOOT}", f"PYTHON={sys.executable}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


@pytest.fixture()
def release_key(tmp_path: Path) -> tuple[Identity, Path]:
    """A fresh release key and the path of its public-key file."""
    identity, pub = keys.generate(tmp_path / "release.key")
    return identity, pub


def run_tool(binary: Path, *args: str | os.PathLike[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, timeout=timeout)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "boot: QEMU boot tests")


@pytest.fixture(scope="session")
def boot_kit(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Release key and stage-1 image baked with it (built once)."""
    require("cpio", "cpio")
    require("modprobe", "kmod")
    if not Path("/bin/busybox").exists():
        pytest.skip("/bin/busybox not found (apt-get install busybox-static)")
    from .qemu import kernel_image

    kernel = kernel_image()
    d = tmp_path_factory.mktemp("boot-kit")
    identity, pub = keys.generate(d / "release.key")
    stage1 = d / "stage1.cpio.gz"
    proc = subprocess.run(
        [str(ROOT / "initramfs" / "build-stage1.sh"), "--pub", str(pub), "--out", str(stage1)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    print(f"\n[figures] stage 1: {stage1.stat().st_size} bytes compressed")
    return {"dir": d, "key": identity, "pub": pub, "stage1": stage1, "kernel": kernel}


@pytest.fixture(scope="session")
def stage2(boot_kit: dict) -> Path:
    out = boot_kit["dir"] / "stage2.cpio.gz"
    proc = subprocess.run(
        [str(ROOT / "initramfs" / "build-stage2.sh"), "--out", str(out)], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr
    print(f"\n[figures] stage 2: {out.stat().st_size} bytes compressed")
    return out
