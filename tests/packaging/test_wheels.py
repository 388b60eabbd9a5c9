"""The x86_64 manylinux wheel (tools/build-wheels.sh, zig cc for glibc 2.28; auditwheel finds 2.26): auditwheel-clean, the third-party
licences inside, installs into a fresh venv, runs the demo sandboxed, and its clang-built sandbox still stops a
host allocation at the address-space limit (clang removed an allocation whose memory was never read)."""

from __future__ import annotations

import os
import re
import subprocess
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "examples" / "hello" / "hello.wasm"
ARCH = os.uname().machine

# In the default run (about 5 minutes from an empty cache here); the chroot tests are under the `package` marker.
pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def wheel() -> Path:
    out = subprocess.run([str(ROOT / "tools" / "build-wheels.sh"), ARCH], capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stderr[-5000:]
    return Path(out.stdout.strip().splitlines()[-1])


def test_wheel_is_manylinux_2_28_and_carries_the_licences(wheel: Path) -> None:
    assert re.search(rf"-manylinux_2_\d+_{ARCH}\.whl$", wheel.name), wheel.name
    auditwheel = ROOT / "build" / "wheels" / "tools" / "bin" / "auditwheel"
    # auditwheel wraps its text to the terminal's width: compare it as one line
    shown = " ".join(
        subprocess.run([str(auditwheel), "show", str(wheel)], capture_output=True, text=True, check=True).stdout.split()
    )
    floor = re.search(rf'consistent with the following platform tag:\s+"manylinux_2_(\d+)_{ARCH}"', shown)
    assert floor and int(floor.group(1)) <= 28, shown
    names = zipfile.ZipFile(wheel).namelist()
    licences = {n.split("/")[-2] for n in names if "/licenses/third_party/" in n and n.endswith("/LICENSE")}
    assert licences == {"wasm3", "libsodium"}
    assert any(n.endswith("pyphase/phase-sandboxd") for n in names)
    assert not [n for n in names if "/_spec" in n or n.startswith("pyphase/_spec")], "the test-only _spec shipped"


def test_wheel_installs_and_its_sandbox_holds(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
        check=True,
        capture_output=True,
        timeout=900,
    )
    demo = subprocess.run(
        [str(env_dir / "bin" / "phase"), "run", str(HELLO), "--input", "Hello, World"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert demo.returncode == 0 and demo.stdout.strip() == "dlroW ,olleH", demo.stdout + demo.stderr
    probe = (
        "import pyphase, sys\n"
        "from pyphase.limits import Limits\n"
        "with pyphase.Sandbox(workers=1) as s:\n"
        "    r = s._selftest('allocate', open(sys.argv[1], 'rb').read(), Limits(memory_bytes=1 << 20))\n"
        "    print(r.status, r.message)\n"
    )
    out = subprocess.run([str(py), "-c", probe, str(HELLO)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.startswith("memory_limit"), out.stdout + out.stderr
