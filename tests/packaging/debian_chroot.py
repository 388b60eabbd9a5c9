"""Debian 12 chroots for the install tests: made once with debootstrap, cached outside the repo, copied per test.

The mirror is the one apt uses on this machine (read from /etc/apt at run time, never written down here).
A cached chroot is reused only when its stamp says it was completed; concurrent makers take a lock.
Foreign architectures (arm64) need qemu-user-static and binfmt-support: debootstrap --foreign, then the
second stage under emulation (about 11 minutes here).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# PHASE_TEST_CACHE: another folder (an empty one measures a first run, as on a fresh CI machine)
CACHE = Path(os.environ.get("PHASE_TEST_CACHE", "/var/cache/phase-test"))
SUITE = "bookworm"
# What every chroot holds besides minbase: the Python the .deb's venv runs on.
INCLUDE = ["python3.11", "ca-certificates"]


def apt_mirror() -> str:
    """The first Debian archive (not security) that apt is configured with here."""
    texts = [
        p.read_text()
        for p in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]
        if p.is_file() and p.suffix in ("", ".list", ".sources")
    ]
    for text in texts:
        for uri in re.findall(r"^(?:URIs:\s*|deb\s+(?:\[[^]]*\]\s+)?)(\S+)", text, re.MULTILINE):
            if uri.rstrip("/").endswith("/debian"):
                return uri
    raise RuntimeError("no Debian archive in /etc/apt/sources.list*")


def mounted_below(root: Path) -> list[str]:
    points = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    return sorted(p for p in points if p == str(root) or p.startswith(f"{root}/"))


def unmount_below(root: Path) -> None:
    """Unmount whatever is still mounted inside root (debootstrap's second stage mounts /proc and /sys)."""
    for point in reversed(mounted_below(root)):
        subprocess.run(["umount", "-l", point], check=False)


def cached(arch: str = "amd64", include: list[str] | None = None) -> Path:
    """The completed cached chroot for arch (plus the packages in include, cached apart), made now if missing."""
    packages = INCLUDE + (include or [])
    name = f"{SUITE}-{arch}-minbase"
    if include:
        name += "-" + hashlib.sha256(",".join(include).encode()).hexdigest()[:8]
    target = CACHE / name
    stamp = CACHE / f"{name}.done"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.is_file() and stamp.read_text() == ",".join(packages) and target.is_dir():
            return target
        shutil.rmtree(target, ignore_errors=True)
        stamp.unlink(missing_ok=True)
        foreign = (
            arch
            != subprocess.run(
                ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
            ).stdout.strip()
        )
        cmd = ["debootstrap", "--variant=minbase", f"--arch={arch}", f"--include={','.join(packages)}"]
        if foreign:
            cmd.append("--foreign")
        subprocess.run([*cmd, SUITE, str(target), apt_mirror()], check=True, capture_output=True, timeout=3600)
        if foreign:
            subprocess.run(
                ["chroot", str(target), "/debootstrap/debootstrap", "--second-stage"],
                check=True,
                capture_output=True,
                timeout=3600,
            )
        subprocess.run(["chroot", str(target), "apt-get", "clean"], check=True, capture_output=True)
        unmount_below(target)
        stamp.write_text(",".join(packages))
        return target


@contextmanager
def fresh_copy(arch: str = "amd64", include: list[str] | None = None) -> Iterator[Path]:
    """A throw-away copy of the cached chroot with /proc and /dev mounted, removed afterwards."""
    source = cached(arch, include)
    with tempfile.TemporaryDirectory(prefix=f"phase-chroot-{arch}-", dir=CACHE) as tmp:
        root = Path(tmp) / "root"
        subprocess.run(["cp", "-a", str(source), str(root)], check=True)
        mounts = []
        try:
            for fs, point, opts in (("proc", "proc", ["-t", "proc"]), ("/dev", "dev", ["--rbind"])):
                subprocess.run(["mount", *opts, fs, str(root / point)], check=True)
                mounts.append(root / point)
            shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
            yield root
        finally:
            for point in reversed(mounts):
                subprocess.run(["umount", "-R", "-l", str(point)], check=False)
            if mounted_below(root):
                # Never let the clean-up below delete through a bind mount of the host's /dev.
                raise RuntimeError(f"{root}: still mounted after umount; remove it by hand")


def run(root: Path, *cmd: str, timeout: float = 600, **kw: object) -> subprocess.CompletedProcess[str]:
    """Run cmd inside the chroot with a plain environment."""
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
    return subprocess.run(["chroot", str(root), *cmd], capture_output=True, text=True, timeout=timeout, env=env, **kw)  # type: ignore[call-overload]
