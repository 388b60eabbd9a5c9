"""plasmd.service: `systemd-analyze verify` says nothing, and the unit's confinement lets a real sandboxed job run.

systemd is not PID 1 here, so the unit cannot be started under its own properties; instead plasmd serves a
real job under strace (the node, phase-sandboxd and the job's worker), and every system call, socket family,
memory protection and clone flag seen is checked against what the unit's SystemCallFilter,
RestrictAddressFamilies, MemoryDenyWriteExecute and RestrictNamespaces allow. The exposure score of
`systemd-analyze security --offline=yes` is printed (run with -s to see it).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging" / "deb" / "plasmd.service"
HELLO = ROOT / "examples" / "hello" / "hello.wasm"


def unit_settings(key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in UNIT.read_text().splitlines() if line.startswith(key + "=")]


@pytest.fixture(scope="module")
def unit_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root for systemd-analyze: the system's units, the unit under test, an executable /usr/bin/plasmd."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze missing (apt-get install systemd)")
    root = tmp_path_factory.mktemp("unit-root")
    shutil.copytree("/lib/systemd/system", root / "lib" / "systemd" / "system", symlinks=True)
    shutil.copy(UNIT, root / "lib" / "systemd" / "system" / "plasmd.service")
    (root / "usr" / "bin").mkdir(parents=True)
    plasmd = root / "usr" / "bin" / "plasmd"
    plasmd.write_text("#!/bin/sh\n")
    plasmd.chmod(0o755)
    return root


def test_unit_verifies_without_a_word(unit_root: Path) -> None:
    out = subprocess.run(
        ["systemd-analyze", "verify", f"--root={unit_root}", "plasmd.service"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout == "" and out.stderr == "", out.stdout + out.stderr


def test_a_bad_value_is_caught(unit_root: Path, tmp_path: Path) -> None:
    """The check above would see a mistake: systemd only warns about invalid values."""
    unit = unit_root / "lib" / "systemd" / "system" / "plasmd.service"
    good = unit.read_text()
    try:
        unit.write_text(good.replace("MemoryMax=2G", "MemoryMax=2 gigs"))
        out = subprocess.run(
            ["systemd-analyze", "verify", f"--root={unit_root}", "plasmd.service"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "Invalid memory limit" in out.stdout + out.stderr
    finally:
        unit.write_text(good)


def test_security_exposure_score(unit_root: Path) -> None:
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", f"--root={unit_root}", "plasmd.service"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for plasmd.service: ([0-9.]+) (\w+)", out.stdout + out.stderr)
    assert match, out.stdout + out.stderr
    print(f"\nsystemd-analyze security --offline=yes plasmd.service: {match.group(1)} {match.group(2)}")
    assert float(match.group(1)) <= 2.0, "the unit lost hardening"


def expand_filter(items: list[str], seen: set[str] | None = None) -> set[str]:
    """System call names a SystemCallFilter= allow-list admits, its @groups expanded by systemd-analyze."""
    seen = set() if seen is None else seen
    names: set[str] = set()
    for item in items:
        if not item.startswith("@"):
            names.add(item)
            continue
        if item in seen:
            continue
        seen.add(item)
        listing = subprocess.run(
            ["systemd-analyze", "syscall-filter", item], capture_output=True, text=True, check=True
        ).stdout
        members = [w.strip() for w in listing.splitlines()[1:] if w.strip() and not w.strip().startswith("#")]
        names |= expand_filter(members, seen)
    return names


SYSCALL = re.compile(r"^(\d+)\s+(?:<\.\.\. )?([a-z0-9_]+)[( ]")


@pytest.fixture(scope="module")
def traced_job(tmp_path_factory: pytest.TempPathFactory) -> str:
    """strace -f of plasmd (sandbox on) starting, serving hello to `phase submit`, and stopping on SIGTERM."""
    if shutil.which("strace") is None:
        pytest.skip("strace missing (apt-get install strace)")
    tmp = tmp_path_factory.mktemp("traced")
    trace = tmp / "trace"
    bindir = Path(sys.executable).parent
    # Under the unit's MemoryDenyWriteExecute no process may make code executable, so the sandbox cannot set up the
    # compiling engine and runs wasm3 only (the fallback: tests/sandbox/test_compiling_engine.py); the node traced
    # here is given no compiling engine, so that its trace is what runs under the unit.
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PHASE_WASMTIME_LIBRARY=str(tmp / "no-compiling-engine.so"))
    proc = subprocess.Popen(
        [
            "strace",
            "-f",
            "-qq",
            "-s",
            "0",
            "-o",
            str(trace),
            str(bindir / "plasmd"),
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp / "data"),
            "--no-mdns",
            "--workers",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().strip()
        assert "@127.0.0.1:" in address, proc.stderr.read() if proc.stderr else ""
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
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert job.returncode == 0 and "dlroW ,olleH" in job.stdout, job.stdout + job.stderr
    finally:
        # SIGTERM to plasmd itself (strace's child): strace would only detach.
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        for child in children:
            os.kill(int(child), signal.SIGTERM)
        proc.communicate(timeout=60)
    return trace.read_text()


def test_every_system_call_of_a_sandboxed_job_passes_the_filter(traced_job: str) -> None:
    allowed = expand_filter(" ".join(unit_settings("SystemCallFilter")).split())
    used = {m.group(2) for line in traced_job.splitlines() if (m := SYSCALL.match(line))}
    assert {"seccomp", "capset", "prlimit64"} <= used, "the trace saw no sandbox being set up"
    assert used - allowed == set(), f"SystemCallFilter would refuse {sorted(used - allowed)}"


def test_sockets_memory_and_namespaces_stay_inside_the_unit(traced_job: str) -> None:
    families = set(re.findall(r"\bsocket\((AF_[A-Z0-9]+)", traced_job))
    allowed = set(" ".join(unit_settings("RestrictAddressFamilies")).split())
    assert families and families <= allowed, f"RestrictAddressFamilies would refuse {families - allowed}"
    # MemoryDenyWriteExecute: no writable+executable mapping, no mprotect() making memory executable.
    wx = [
        line
        for line in traced_job.splitlines()
        if re.search(r"\b(mmap|mprotect|pkey_mprotect)\(.*PROT_EXEC", line)
        and (" mprotect(" in line or "PROT_WRITE" in line)
        and "= -1" not in line
    ]
    assert unit_settings("MemoryDenyWriteExecute") == ["yes"] and wx == [], wx[:5]
    # RestrictNamespaces: no new namespaces.
    assert not re.search(r"\b(unshare|setns)\(|CLONE_NEW", traced_job)
