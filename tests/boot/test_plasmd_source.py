"""plasmd as a Phase Boot source (``--boot-store``): any node can serve the artifacts machines boot from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pyphase.boot.manifest import make_boot_manifest, sign_manifest
from pyphase.boot.store import ArtifactStore
from pyphase.identity import Identity

from .conftest import run_tool

DATA = os.urandom(200_000)


def _events(log: Path) -> list[dict]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def _wait_event(log: Path, name: str, proc: subprocess.Popen, timeout: float = 30) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for e in _events(log):
            if e.get("event") == name:
                return e
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"no {name} event; log:\n{log.read_text(errors='replace')[-2000:]}")


def test_plasmd_serves_its_boot_store_and_announces_it(phase_boot_bin: Path, tmp_path: Path) -> None:
    (tmp_path / "blob").write_bytes(DATA)
    store = ArtifactStore(tmp_path / "store")
    art = store.add_file(tmp_path / "blob")
    store.write_manifest(
        sign_manifest(
            make_boot_manifest(art, art, "console=ttyS0", release=1, expires_at=2**40), Identity.generate().signing_key
        )
    )
    log = tmp_path / "plasmd.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pyphase.daemon",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                str(tmp_path / "node"),
                "--no-sandbox",
                "--mdns-interfaces",
                "127.0.0.1",
                "--boot-store",
                str(tmp_path / "store"),
                "--boot-listen",
                "127.0.0.1:0",
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        serving = _wait_event(log, "boot_serving", proc)
        url = serving["url"]
        assert serving["artifacts"] == 1
        with urllib.request.urlopen(f"{url}/boot/manifest.json", timeout=10) as r:
            assert r.read() == store.manifest_path.read_bytes()
        req = urllib.request.Request(f"{url}/sha256/{art.hex}", headers={"Range": "bytes=1000-"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 206 and r.read() == DATA[1000:]
        fetched = run_tool(
            phase_boot_bin / "phase-fetch", "--hash", art.hash, "--size", str(art.size), "--out", tmp_path / "got", url
        )
        assert fetched.returncode == 0, fetched.stderr
        assert (tmp_path / "got").read_bytes() == DATA
        _wait_event(log, "boot_announced", proc)
        found = run_tool(phase_boot_bin / "phase-discover", "--timeout", "3", "--interface", "127.0.0.1")
        port = url.rsplit(":", 1)[1]
        assert found.returncode == 0 and f":{port}" in found.stdout, found.stdout + found.stderr
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


def test_plasmd_refuses_a_boot_store_that_is_not_a_directory(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyphase.daemon",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path / "node"),
            "--no-sandbox",
            "--no-mdns",
            "--boot-store",
            str(tmp_path / "nope"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1, out.stderr
    assert "boot_store" in out.stderr and "is not a directory" in out.stderr


@pytest.mark.parametrize(
    "listen, code, message",
    [
        ("127.0.0.1:99999", 2, "not HOST:PORT"),
        ("192.0.2.1:8080", 1, "cannot serve the boot store on 192.0.2.1:8080: Cannot assign"),
    ],
)
def test_plasmd_refuses_a_bad_boot_listen(tmp_path: Path, listen: str, code: int, message: str) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyphase.daemon",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path / "node"),
            "--no-sandbox",
            "--no-mdns",
            "--boot-store",
            str(tmp_path),
            "--boot-listen",
            listen,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == code and "plasmd: " in out.stderr and message in out.stderr, out.stderr
