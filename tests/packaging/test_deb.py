"""The .deb: built by tools/build-deb.sh (lintian clean with its overrides), installed into a fresh Debian 12
chroot (debootstrap minbase, cached in /var/cache/phase-test), `phase run` of hello inside it, and plasmd started
from the unit's ExecStart line inside it serving a job submitted from this host."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import debian_chroot  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "examples" / "hello" / "hello.wasm"

pytestmark = [pytest.mark.slow, pytest.mark.package]


def _need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} missing (bash .ci/setup --test)")
    if os.geteuid() != 0:
        pytest.skip("chroot and mount need root")


@pytest.fixture(scope="module")
def deb() -> Path:
    _need("dpkg-deb", "lintian", "debootstrap")
    if not Path("/usr/bin/python3").exists():
        pytest.skip("Debian's /usr/bin/python3 missing")
    out = subprocess.run([str(ROOT / "tools" / "build-deb.sh")], capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stderr[-5000:]
    path = Path(out.stdout.strip().splitlines()[-1])
    assert path.name.startswith("phase_") and path.name.endswith(".deb")
    return path


@pytest.fixture(scope="module")
def installed(deb: Path) -> Iterator[Path]:
    with debian_chroot.fresh_copy() as root:
        shutil.copy(deb, root / "tmp" / deb.name)
        shutil.copy(HELLO, root / "tmp" / "hello.wasm")
        out = debian_chroot.run(root, "dpkg", "-i", f"/tmp/{deb.name}")
        assert out.returncode == 0, out.stdout + out.stderr
        yield root


def test_package_layout(installed: Path) -> None:
    conffiles = debian_chroot.run(installed, "dpkg-query", "-W", "-f=${Conffiles}", "phase").stdout
    assert "/etc/phase/plasmd.toml" in conffiles
    for name in ("phase", "plasmd"):
        assert os.readlink(installed / "usr/bin" / name) == f"/opt/phase/venv/bin/{name}"
        assert (installed / "opt/phase/venv/bin" / name).is_file()
    interpreter = debian_chroot.run(
        installed, "/opt/phase/venv/bin/python", "-c", "import os, sys; print(os.path.realpath(sys.executable))"
    ).stdout.strip()
    assert interpreter.startswith("/usr/bin/python3."), interpreter
    assert (installed / "lib/systemd/system/plasmd.service").is_file()
    licences = list(
        (installed / "opt/phase/venv/lib").glob("python3*/site-packages/pyphase-*.dist-info/licenses/*/*/LICENSE")
    )
    assert {p.parent.name for p in licences} == {"wasm3", "libsodium"}


def test_phase_run_hello_inside_the_chroot(installed: Path) -> None:
    out = debian_chroot.run(
        installed, "phase", "run", "/tmp/hello.wasm", "--input", "Hello, World", "--receipt", "/tmp/hello.receipt.json"
    )
    assert out.returncode == 0 and out.stdout.strip() == "dlroW ,olleH", out.stdout + out.stderr
    verify = debian_chroot.run(installed, "phase", "verify", "/tmp/hello.receipt.json")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_plasmd_from_the_units_execstart_serves_a_job(installed: Path, tmp_path: Path) -> None:
    unit = (installed / "lib/systemd/system/plasmd.service").read_text()
    exec_start = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert len(exec_start) == 1
    # What the unit's StateDirectory= would provide; loopback and no mDNS for the test (environment overrides).
    (installed / "var/lib/phase").mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PLASMD_LISTEN": "127.0.0.1:0",
        "PLASMD_MDNS": "false",
        "PLASMD_WORKERS": "1",
    }
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    node = subprocess.Popen(
        [chroot, str(installed), *shlex.split(exec_start[0])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert node.stdout is not None
        address = node.stdout.readline().strip()
        assert "@127.0.0.1:" in address, node.stderr.read() if node.stderr else ""
        bindir = Path(sys.executable).parent
        job = subprocess.run(
            [str(bindir / "phase"), "submit", str(HELLO), "--input", "Hello, World", "--peer", address, "--json"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert job.returncode == 0 and "dlroW ,olleH" in job.stdout, job.stdout + job.stderr
        assert (installed / "var/lib/phase/identity.key").exists()
    finally:
        node.send_signal(signal.SIGTERM)
        node.communicate(timeout=60)
