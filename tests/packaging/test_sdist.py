"""Our sdist on a machine with nothing but a C compiler and Python: a fresh Debian 12 chroot (debootstrap minbase
plus gcc, libc6-dev, python3-dev and python3-venv; no make, patch, git, cmake or libsodium) installs it with pip
into a venv, as a user would, from a local wheelhouse (build requirements, cmake and ninja from PyPI, and the
dependencies; pip in the chroot reaches no index), then runs the demo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import debian_chroot  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "examples" / "hello" / "hello.wasm"
COMPILER_ONLY = ["gcc", "libc6-dev", "python3-dev", "python3-venv"]
# scikit-build-core asks for these when the machine has no cmake/ninja (or no make): the wheelhouse has them
BUILD_TOOLS = ["cmake", "ninja"]

pytestmark = [pytest.mark.slow, pytest.mark.package]


@pytest.fixture(scope="module")
def chroot_with_sdist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    for tool in ("debootstrap", "chroot"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} missing (bash .ci/setup --test)")
    if os.geteuid() != 0:
        pytest.skip("chroot and mount need root")
    from scikit_build_core.build import build_sdist

    out = tmp_path_factory.mktemp("sdist")
    sdist = out / build_sdist(str(out))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needs = project["build-system"]["requires"] + project["project"]["dependencies"] + BUILD_TOOLS
    wheelhouse = out / "wheelhouse"
    fetched = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--only-binary=:all:"]
        + ["-d", str(wheelhouse), *needs],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert fetched.returncode == 0, fetched.stderr[-3000:]
    with debian_chroot.fresh_copy(include=COMPILER_ONLY) as root:
        shutil.copy(sdist, root / "tmp" / sdist.name)
        shutil.copytree(wheelhouse, root / "tmp" / "wheelhouse")
        shutil.copy(HELLO, root / "tmp" / "hello.wasm")
        (root / "tmp" / "sdist-name").write_text(sdist.name)
        yield root


def test_the_chroot_has_a_compiler_and_no_other_build_tool(chroot_with_sdist: Path) -> None:
    found = debian_chroot.run(chroot_with_sdist, "sh", "-c", "command -v gcc make patch git cmake ninja; true")
    assert found.stdout.split() == ["/usr/bin/gcc"], found.stdout
    assert not list((chroot_with_sdist / "usr").rglob("libsodium*"))


def test_sdist_installs_and_runs_the_demo(chroot_with_sdist: Path) -> None:
    name = (chroot_with_sdist / "tmp" / "sdist-name").read_text()
    venv = debian_chroot.run(chroot_with_sdist, "python3", "-m", "venv", "/opt/v")
    assert venv.returncode == 0, venv.stderr
    install = debian_chroot.run(
        chroot_with_sdist,
        "/opt/v/bin/pip",
        "install",
        "--disable-pip-version-check",
        "--no-index",
        "--find-links",
        "/tmp/wheelhouse",
        f"/tmp/{name}",
        timeout=3000,
    )
    assert install.returncode == 0, install.stdout[-4000:] + install.stderr[-4000:]
    demo = debian_chroot.run(
        chroot_with_sdist, "/opt/v/bin/phase", "run", "/tmp/hello.wasm", "--input", "Hello, World", timeout=300
    )
    assert demo.returncode == 0 and demo.stdout.strip() == "dlroW ,olleH", demo.stdout + demo.stderr
    ldd = debian_chroot.run(
        chroot_with_sdist, "sh", "-c", "ldd /opt/v/lib/python3*/site-packages/pyphase/*.so | grep -c sodium; true"
    )
    assert ldd.stdout.strip() == "0", ldd.stdout
