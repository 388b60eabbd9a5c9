"""The arm64 node image booted under qemu-system-aarch64 (TCG, ``-M virt -cpu max``, UEFI from
qemu-efi-aarch64, Debian's arm64 kernel) to plasmd, which answers a job from this x86_64 host: booted directly,
and reached through stage 1 for aarch64, which verifies the signed release and kexec_load()s exactly the
verified bytes.

Unlike qemu-user (tests/packaging/test_arm.py, where the node refuses a sandbox it cannot build), this is a
whole emulated machine: its kernel runs the seccomp filters, so plasmd starts with the sandbox on. Markers
``arm`` and ``slow`` (left out of the default run; about 10 minutes here, 4 of them building the image):

    python3 -m pytest -q -m arm tests/boot/test_arm64_node.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyphase import Client
from pyphase.boot import keys
from pyphase.boot.server import ArtifactServer
from pyphase.identity import Identity

from .conftest import ROOT
from .qemu import BootResult, Qemu, free_port
from .test_qemu import dummy_artifacts, publish

pytestmark = [pytest.mark.arm, pytest.mark.slow, pytest.mark.boot]

HELLO = ROOT / "examples" / "hello" / "hello.wasm"
FIRMWARE = Path("/usr/share/qemu-efi-aarch64/QEMU_EFI.fd")
ADDRESS_RE = re.compile(r"PHASE-NODE: plasmd running \(pid \d+\) at (\S+)@(\S+):(\d+)\n")


def aarch64_wheel() -> Path:
    """The aarch64 wheel in dist/, built by tools/build-wheels.sh (about 10 minutes) when there is none."""
    found = sorted((ROOT / "dist").glob("pyphase-*-manylinux*_aarch64.whl"))
    if found:
        return found[-1]
    out = subprocess.run(
        [str(ROOT / "tools" / "build-wheels.sh"), "aarch64"], capture_output=True, text=True, timeout=3600
    )
    assert out.returncode == 0, out.stderr[-5000:]
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def arm64_node(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(kernel, stage-2 initramfs) for aarch64, built by initramfs/build-stage2-aarch64.sh."""
    for tool, package in (
        ("qemu-system-aarch64", "qemu-system-arm"),
        ("readelf", "binutils"),
        ("depmod", "kmod"),
        ("cpio", "cpio"),
    ):
        assert shutil.which(tool), f"{tool} not found (apt-get install {package}; .ci/setup --test installs it)"
    assert FIRMWARE.is_file(), f"{FIRMWARE} not found (apt-get install qemu-efi-aarch64)"
    d = tmp_path_factory.mktemp("arm64-node")
    kernel, image = d / "vmlinuz", d / "stage2-aarch64.cpio.gz"
    build("build-stage2-aarch64.sh", "--wheel", str(aarch64_wheel()), "--out", str(image), "--kernel-out", str(kernel))
    return kernel, image


def build(script: str, *args: str) -> None:
    """Run one of initramfs/'s image builders with this Python; its last error lines if it fails."""
    proc = subprocess.run(
        [str(ROOT / "initramfs" / script), *args],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


def machine(kernel: Path, initrd: Path, append: str, nic: str = "user,model=virtio-net-pci") -> list[str]:
    """qemu-system-aarch64 arguments: the virt board, UEFI, Debian's kernel handed over by the firmware."""
    return [
        *("-M", "virt", "-cpu", "max", "-smp", "2", "-m", "1024"),
        *("-bios", str(FIRMWARE), "-kernel", str(kernel), "-initrd", str(initrd)),
        *("-append", f"console=ttyAMA0 panic=-1 quiet {append}", "-nic", nic),
    ]


@pytest.fixture(scope="module")
def arm64_stage1(arm64_node: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Identity, Path]:
    """(release key, stage-1 image for aarch64 baked with it), by initramfs/build-stage1.sh --arch aarch64."""
    assert shutil.which("aarch64-linux-gnu-gcc"), (
        "aarch64-linux-gnu-gcc not found (apt-get install gcc-aarch64-linux-gnu)"
    )
    d = tmp_path_factory.mktemp("arm64-stage1")
    identity, pub = keys.generate(d / "release.key")
    out = d / "stage1.cpio.gz"
    build("build-stage1.sh", "--arch", "aarch64", "--pub", str(pub), "--out", str(out))
    return identity, out


def boot_stage1(kernel: Path, stage1: Path, store: Path) -> BootResult:
    with ArtifactServer(store) as server:
        append = f"phase.onfail=poweroff phase.dht=off phase.seeds=http://10.0.2.2:{server.port}"
        q = Qemu(machine(kernel, stage1, append), binary=shutil.which("qemu-system-aarch64"))
        try:
            q.wait_for("PHASE-BOOT FAIL", 900)
            q.wait_for("reboot: Power down", 30)
        finally:
            r = q.close()
    return r


def answers_hello(q: Qemu, fwd: int, tmp_path: Path) -> None:
    """The node in q (its port 7000 forwarded to 127.0.0.1:fwd) runs hello.wasm from this host, sandboxed, and
    signs an aarch64 receipt that verifies."""
    m = q.wait_for_match(ADDRESS_RE, 900)
    assert m, q.text[-3000:]
    peer = f"{m.group(1)}@127.0.0.1:{fwd}"
    with Client([peer], connect_timeout=60) as client:
        (caps,) = client.capabilities(timeout=60).values()
    assert caps is not None, q.text[-3000:]
    # The node runs jobs in sandboxed workers (seccomp, namespaces): plasmd refuses to start without them.
    assert (caps["arch"], caps["executor"]) == ("aarch64", "sandbox"), caps
    phase = Path(sys.executable).parent / "phase"
    receipt = tmp_path / "receipt.json"
    job = subprocess.run(
        [str(phase), "submit", str(HELLO), "--input", "Hello, World", "--peer", peer, "--timeout", "60s"]
        + ["--receipt", str(receipt)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert job.returncode == 0 and job.stdout == "dlroW ,olleH", job.stdout + job.stderr + q.text[-3000:]
    assert json.loads(receipt.read_text())["node"]["arch"] == "aarch64"
    check = subprocess.run([str(phase), "verify", str(receipt)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_arm64_stage1_kexecs_the_verified_arm64_release_into_a_node_that_answers_a_job(
    arm64_node: tuple[Path, Path], arm64_stage1: tuple[Identity, Path], tmp_path: Path
) -> None:
    """The whole arm64 Phase Boot: stage 1 fetches the signed arm64 release, verifies the signature and both
    artifacts by hash in sealed memory and, Debian's arm64 kernels having no kexec_file_load (CONFIG_KEXEC_FILE),
    hands exactly those sealed copies to kexec-tools' kexec_load (docs/BOOT.md). The verified kernel boots the
    node image, whose plasmd answers a job from this host."""
    kernel, image = arm64_node
    key, stage1 = arm64_stage1
    cmdline = "console=ttyAMA0 panic=-1 quiet"
    publish(tmp_path / "store", key, kernel, image, cmdline=cmdline, arch="aarch64")
    fwd = free_port()
    marks = (
        "PHASE-BOOT: stage 1 up",
        "PHASE-BOOT: kexec loaded",
        "PHASE-NODE: stage 2 up",
        "PHASE-NODE: plasmd running",
    )
    with ArtifactServer(tmp_path / "store") as server:
        append = f"phase.onfail=poweroff phase.dht=off phase.seeds=http://10.0.2.2:{server.port}"
        nic = f"user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{fwd}-:7000"
        q = Qemu(machine(kernel, stage1, append, nic), marks, binary=shutil.which("qemu-system-aarch64"))
        try:
            answers_hello(q, fwd, tmp_path)
        finally:
            r = q.close()
    for mark in ("signature ok: manifest ok: release 1 aarch64", "kernel fetched", "verified: release 1"):
        assert f"PHASE-BOOT: {mark}" in r, r.tail()
    assert "PHASE-BOOT: no kexec_file_load in this kernel (CONFIG_KEXEC_FILE): loading the sealed copies" in r
    # The signed command line, plus only what stage 1 may add.
    assert f'PHASE-BOOT: kexec loaded: cmdline "{cmdline} phase.mode=internet"' in r, r.tail()
    assert "PHASE-BOOT FAIL" not in r and "PHASE-NODE FAIL" not in r, r.tail()
    # Stage 2 really came up after the handoff, not beside it.
    assert r.console.index("PHASE-BOOT: kexec loaded") < r.console.index("PHASE-NODE: stage 2 up"), r.tail()
    print(
        f"\n[figures] arm64 stage 1 -> kexec_load -> node, from QEMU start (s): "
        f"{json.dumps({k: round(v, 1) for k, v in r.marks.items()})}"
    )


def test_arm64_stage1_says_why_kexec_load_refuses_a_verified_release_that_is_no_kernel(
    arm64_node: tuple[Path, Path], arm64_stage1: tuple[Identity, Path], tmp_path: Path
) -> None:
    """A validly signed release whose kernel is not a kernel: verified, then refused by kexec-tools, whose own
    reason ends up in stage 1's one failure line; nothing boots."""
    kernel, _ = arm64_node
    key, stage1 = arm64_stage1
    k, i = dummy_artifacts(tmp_path / "a")
    publish(tmp_path / "store", key, k, i, cmdline="console=ttyAMA0", arch="aarch64")
    r = boot_stage1(kernel, stage1, tmp_path / "store")
    assert "PHASE-BOOT: verified: release 1" in r, r.tail()
    line = "PHASE-BOOT FAIL: kexec kexec_load: /sbin/kexec failed (status 255): Cannot determine the file type of"
    assert f"{line} /proc/self/fd/3" in r, r.tail()  # fd 3: the sealed kernel copy
    assert "kexec loaded" not in r and r.console.count("PHASE-BOOT FAIL") == 1, r.tail()


def test_arm64_stage1_refuses_an_x86_64_release_before_fetching_it(
    arm64_node: tuple[Path, Path], arm64_stage1: tuple[Identity, Path], tmp_path: Path
) -> None:
    kernel, image = arm64_node
    key, stage1 = arm64_stage1
    publish(tmp_path / "store", key, kernel, image, cmdline="console=ttyAMA0 panic=-1 quiet")  # arch x86_64
    r = boot_stage1(kernel, stage1, tmp_path / "store")
    assert "PHASE-BOOT: signature ok" in r, r.tail()
    assert "PHASE-BOOT FAIL: arch the manifest is for x86_64, this machine is aarch64" in r, r.tail()
    assert "kernel fetched" not in r and r.console.count("PHASE-BOOT FAIL") == 1, r.tail()


def test_arm64_node_boots_to_plasmd_and_answers_a_job_with_the_sandbox_on(
    arm64_node: tuple[Path, Path], tmp_path: Path
) -> None:
    kernel, image = arm64_node
    fwd = free_port()
    args = machine(kernel, image, "phase.dht=off", f"user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{fwd}-:7000")
    marks = ("PHASE-NODE: stage 2 up", "PHASE-NODE: network up", "PHASE-NODE: plasmd running")
    q = Qemu(args, marks, binary=shutil.which("qemu-system-aarch64"))
    try:
        answers_hello(q, fwd, tmp_path)
    finally:
        r = q.close()
    assert "PHASE-NODE FAIL" not in r, r.tail()
    assert "6.1.0" in r and "-arm64" in r, r.tail()  # Debian's arm64 kernel
    print(
        f"\n[figures] qemu-system-aarch64 TCG start -> marks (s): {json.dumps({k: round(v, 1) for k, v in r.marks.items()})}"
    )
