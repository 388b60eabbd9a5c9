"""The GPT/QCOW2 disk from bootloader/ booted under OVMF (UEFI) to the stage-2 marker."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pyphase.boot.server import ArtifactServer

from .conftest import ROOT, require
from .qemu import boot
from .test_qemu import HOST, publish

pytestmark = pytest.mark.boot

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


def _boot_media(boot_kit: dict, stage2: Path, tmp_path: Path, default: str, stop_on: str, marks: tuple[str, ...]):
    for tool, pkg in (
        ("mkfs.vfat", "dosfstools"),
        ("mcopy", "mtools"),
        ("sgdisk", "gdisk"),
        ("qemu-img", "qemu-utils"),
        ("objcopy", "binutils"),
    ):
        require(tool, pkg)
    if not OVMF_CODE.exists():
        pytest.skip(f"{OVMF_CODE} not found (apt-get install ovmf)")
    if not Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub").exists():
        pytest.skip("systemd's EFI stub not found (apt-get install systemd-boot-efi)")
    publish(tmp_path / "store", boot_kit["key"], boot_kit["kernel"], stage2)
    vars_copy = tmp_path / "vars.fd"
    shutil.copyfile(OVMF_VARS, vars_copy)
    with ArtifactServer(tmp_path / "store") as server:
        media = tmp_path / "media"
        proc = subprocess.run(
            [
                str(ROOT / "bootloader" / "build-media.sh"),
                "--stage1",
                str(boot_kit["stage1"]),
                "--kernel",
                str(boot_kit["kernel"]),
                "--out",
                str(media),
                "--default",
                default,
                "--append",
                f"phase.seeds=http://{HOST}:{server.port} phase.onfail=poweroff",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        gpt = subprocess.run(["sgdisk", "-p", str(media / "phase-boot.img")], capture_output=True, text=True)
        assert "EF00" in gpt.stdout
        return boot(
            [
                "-machine",
                "q35",
                "-m",
                "1024",
                "-smp",
                "1",
                "-drive",
                f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                "-drive",
                f"if=pflash,format=raw,file={vars_copy}",
                "-drive",
                f"file={media / 'phase-boot.qcow2'},format=qcow2,if=virtio",
                "-nic",
                "user,model=virtio-net-pci",
            ],
            deadline=300,
            stop_on=stop_on,
            marks=marks,
        )


def test_gpt_disk_with_uki_boots_under_ovmf_to_stage2(boot_kit: dict, stage2: Path, tmp_path: Path) -> None:
    marks = ("PHASE-BOOT: stage 1 up", "PHASE-NODE: stage 2 up")
    r = _boot_media(boot_kit, stage2, tmp_path, "uki", "PHASE-NODE: stage 2 up", marks)
    assert "PHASE-BOOT: stage 1 up (mode internet" in r, r.tail()
    assert "PHASE-BOOT: kexec loaded" in r, r.tail()
    assert "PHASE-NODE: stage 2 up" in r, r.tail()
    print(f"\n[figures] OVMF+GPT+UKI: {r.marks}")


def test_systemd_boot_private_entry_reaches_private_stage2(boot_kit: dict, stage2: Path, tmp_path: Path) -> None:
    """The loader entry path (systemd-boot -> kernel + stage 1) and Private mode carried into stage 2."""
    r = _boot_media(
        boot_kit, stage2, tmp_path, "private", "PHASE-NODE: private mode: no disk touched, ephemeral identity", ()
    )
    assert "PHASE-BOOT: stage 1 up (mode private" in r, r.tail()
    assert 'phase.mode=private"' in r, r.tail()  # appended after the signed command line
    assert "PHASE-NODE: stage 2 up (mode private" in r, r.tail()
    assert "PHASE-NODE: private mode: no disk touched, ephemeral identity" in r, r.tail()
