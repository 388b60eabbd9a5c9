"""Fixtures of the Phase Boot suite.

Nothing is installed here: a test whose tool is missing is skipped with the package to add.
QEMU tests carry the ``boot`` marker.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pyphase.boot import keys
from pyphase.identity import Identity

ROOT = Path(__file__).resolve().parents[2]
CSRC_BOOT = ROOT / "csrc" / "boot"
LIBDIR = Path("/usr/lib/x86_64-linux-gnu")


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
    for lib, pkg in (("libsodium.a", "libsodium-dev"), ("libjansson.a", "libjansson-dev")):
        if not (LIBDIR / lib).exists():
            pytest.skip(f"{LIBDIR / lib} not found (apt-get install {pkg})")
    out = tmp_path_factory.mktemp("phase-boot-bin")
    proc = subprocess.run(["make", "-s", "-C", str(CSRC_BOOT), f"O={out}"], capture_output=True, text=True,
                          timeout=300)
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
