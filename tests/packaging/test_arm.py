"""An arm64 node serving this x86_64 host, and the other way round, under qemu-user emulation.

A Debian 12 arm64 chroot (debootstrap --foreign and its second stage under qemu-user-static; cached in
/var/cache/phase-test) gets the aarch64 wheel from tools/build-wheels.sh in a venv. Under qemu-user,
seccomp(2) is not emulated, so the node must refuse its sandbox clearly rather than run half-confined; with
--no-sandbox it serves hello to `phase submit` from this host, and the receipt says arch aarch64 and verifies.
Then an x86_64 node on this host serves the arm64 client in the chroot.

    python3 -m pytest -q -m arm tests/packaging          (first run: 11-40 min for the chroot, ~10 for the wheel)
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import debian_chroot  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "examples" / "hello" / "hello.wasm"
VENV = "/opt/phase-venv"
# What pip on Debian 12 arm64 (glibc 2.36) accepts, for fetching the dependencies' wheels from this host.
PLATFORMS = [
    arg
    for tag in ("manylinux_2_28_aarch64", "manylinux_2_26_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")
    for arg in ("--platform", tag)
]

pytestmark = [pytest.mark.arm, pytest.mark.slow]


def _wheel(arch: str) -> Path:
    found = sorted((ROOT / "dist").glob(f"pyphase-*-manylinux*_{arch}.whl"))
    if found:
        return found[-1]
    out = subprocess.run([str(ROOT / "tools" / "build-wheels.sh"), arch], capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stderr[-5000:]
    return Path(out.stdout.strip().splitlines()[-1])


def missing_tools() -> str:
    """Why the arm64 chroot cannot run here, or "" when it can."""
    for tool in ("debootstrap", "qemu-aarch64-static"):
        if shutil.which(tool) is None:
            return f"{tool} missing (bash .ci/setup --test)"
    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        return "qemu-aarch64 is not registered with binfmt_misc (update-binfmts --enable qemu-aarch64)"
    return ""


@contextmanager
def arm64_with_pyphase() -> Iterator[Path]:
    """A fresh copy of the cached arm64 chroot with the aarch64 wheel installed in VENV."""
    wheel = _wheel("aarch64")
    with debian_chroot.fresh_copy("arm64") as root:
        # The wheel and its dependencies' aarch64 wheels are fetched here, then installed offline in the chroot.
        wheels = root / "tmp" / "wheels"
        wheels.mkdir()
        shutil.copy(wheel, wheels / wheel.name)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--disable-pip-version-check",
                "--only-binary",
                ":all:",
                *PLATFORMS,
                "--python-version",
                "3.11",
                "-d",
                str(wheels),
                str(wheels / wheel.name),
                "pip==25.3",
            ],
            check=True,
            capture_output=True,
            timeout=600,
        )
        pip = next(wheels.glob("pip-*.whl")).name
        for cmd in (
            ["python3.11", "-m", "venv", "--without-pip", VENV],
            [
                f"{VENV}/bin/python3",
                f"/tmp/wheels/{pip}/pip",
                "install",
                "-q",
                "--no-index",
                "--find-links",
                "/tmp/wheels",
                f"/tmp/wheels/{wheel.name}",
            ],
        ):
            out = debian_chroot.run(root, *cmd, timeout=1800)
            assert out.returncode == 0, out.stdout + out.stderr
        shutil.copy(HELLO, root / "tmp" / "hello.wasm")
        yield root


@pytest.fixture(scope="module")
def arm_root() -> Iterator[Path]:
    if why := missing_tools():
        pytest.skip(why)
    with arm64_with_pyphase() as root:
        yield root


def test_demo_runs_on_arm64_without_the_sandbox(arm_root: Path) -> None:
    out = debian_chroot.run(
        arm_root,
        f"{VENV}/bin/phase",
        "run",
        "--no-sandbox",
        "/tmp/hello.wasm",
        "--input",
        "Hello, World",
        "--json",
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["receipt"]["node"]["arch"] == "aarch64"


def test_node_refuses_a_sandbox_it_cannot_build(arm_root: Path) -> None:
    out = debian_chroot.run(
        arm_root,
        f"{VENV}/bin/plasmd",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        "/tmp/n0",
        "--no-mdns",
        "--workers",
        "1",
        timeout=600,
    )
    assert out.returncode != 0
    assert "sandbox" in out.stderr and "seccomp" in out.stderr and "--no-sandbox" in out.stderr, out.stderr


def test_x86_64_client_submits_to_an_arm64_node(arm_root: Path, tmp_path: Path) -> None:
    node = subprocess.Popen(
        [
            "chroot",
            str(arm_root),
            f"{VENV}/bin/plasmd",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            "/tmp/n1",
            "--no-mdns",
            "--no-sandbox",
            "--workers",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert node.stdout is not None
        address = node.stdout.readline().strip()
        assert "@127.0.0.1:" in address, node.stderr.read() if node.stderr else ""
        bindir = Path(sys.executable).parent
        receipt = tmp_path / "r.json"
        job = subprocess.run(
            [
                str(bindir / "phase"),
                "submit",
                str(HELLO),
                "--input",
                "Hello, World",
                "--peer",
                address,
                "--timeout",
                "60s",
                "--receipt",
                str(receipt),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert job.returncode == 0 and job.stdout == "dlroW ,olleH", job.stdout + job.stderr
        assert json.loads(receipt.read_text())["node"]["arch"] == "aarch64"
        check = subprocess.run([str(bindir / "phase"), "verify", str(receipt)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        node.send_signal(signal.SIGTERM)
        node.communicate(timeout=120)


def test_arm64_client_submits_to_an_x86_64_node(arm_root: Path, tmp_path: Path) -> None:
    bindir = Path(sys.executable).parent
    node = subprocess.Popen(
        [
            str(bindir / "plasmd"),
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path / "n"),
            "--no-mdns",
            "--workers",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert node.stdout is not None
        address = node.stdout.readline().strip()
        assert "@127.0.0.1:" in address, node.stderr.read() if node.stderr else ""
        job = debian_chroot.run(
            arm_root,
            f"{VENV}/bin/phase",
            "submit",
            "/tmp/hello.wasm",
            "--input",
            "Hello, World",
            "--peer",
            address,
            "--timeout",
            "60s",
            "--receipt",
            "/tmp/r.json",
            timeout=600,
        )
        assert job.returncode == 0 and job.stdout == "dlroW ,olleH", job.stdout + job.stderr
        assert json.loads((arm_root / "tmp" / "r.json").read_text())["node"]["arch"] == "x86_64"
    finally:
        node.send_signal(signal.SIGTERM)
        node.communicate(timeout=60)
