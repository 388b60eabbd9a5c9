"""The read-only artifact server: paths, ranges, limits, and never serving mismatched bytes."""

from __future__ import annotations

import hashlib
import http.client
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyphase.boot.manifest import Artifact, make_boot_manifest, sign_manifest
from pyphase.boot.server import ArtifactServer
from pyphase.boot.store import ArtifactStore
from pyphase.identity import Identity

from .conftest import ROOT

DATA = bytes(range(256)) * 400  # 102400 bytes


@pytest.fixture()
def store(tmp_path: Path) -> tuple[Path, Artifact]:
    blob = tmp_path / "blob"
    blob.write_bytes(DATA)
    s = ArtifactStore(tmp_path / "store")
    art = s.add_file(blob)
    other = s.add_file(_write(tmp_path / "k", b"kernel"))
    s.write_manifest(sign_manifest(make_boot_manifest(other, art, "console=ttyS0", release=1,
                                                 expires_at=int(time.time()) + 60), Identity.generate().signing_key))
    return tmp_path / "store", art


def _write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def _get(port: int, path: str, method: str = "GET", headers: dict | None = None) -> tuple[int, dict, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request(method, path, headers=headers or {})
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body


def test_get_head_and_manifest(store) -> None:
    root, art = store
    with ArtifactServer(root) as s:
        status, h, body = _get(s.port, f"/sha256/{art.hex}")
        assert status == 200 and body == DATA and h["etag"] == f'"{art.hash}"'
        assert h["accept-ranges"] == "bytes"
        status, h, body = _get(s.port, f"/sha256/{art.hex}", "HEAD")
        assert status == 200 and body == b"" and h["content-length"] == str(len(DATA))
        status, h, body = _get(s.port, "/boot/manifest.json")
        assert status == 200 and b"phase-boot-manifest" in body and h["cache-control"] == "no-cache"


@pytest.mark.parametrize("rng,start,end", [("bytes=0-99", 0, 100), ("bytes=100-", 100, len(DATA)),
                                           ("bytes=-10", len(DATA) - 10, len(DATA)),
                                           ("bytes=50-999999", 50, len(DATA))])
def test_ranges(store, rng: str, start: int, end: int) -> None:
    root, art = store
    with ArtifactServer(root) as s:
        status, h, body = _get(s.port, f"/sha256/{art.hex}", headers={"Range": rng})
    assert status == 206 and body == DATA[start:end]
    assert h["content-range"] == f"bytes {start}-{end - 1}/{len(DATA)}"


def test_unsatisfiable_and_odd_ranges(store) -> None:
    root, art = store
    with ArtifactServer(root) as s:
        status, h, _ = _get(s.port, f"/sha256/{art.hex}", headers={"Range": f"bytes={len(DATA)}-"})
        assert status == 416 and h["content-range"] == f"bytes */{len(DATA)}"
        status, _, body = _get(s.port, f"/sha256/{art.hex}", headers={"Range": "bytes=0-1,5-6"})
        assert status == 200 and body == DATA  # multiple ranges: the whole body is a valid answer


@pytest.mark.parametrize("path", ["/", "/sha256/", "/sha256/" + "0" * 64, "/sha256/../boot/manifest.json",
                                  "/sha256/" + "A" * 64, "/store/boot/manifest.json", "/" + "x" * 300])
def test_unknown_paths_are_404(store, path: str) -> None:
    root, _ = store
    with ArtifactServer(root) as s:
        status, _, _ = _get(s.port, path)
    assert status in (404, 414)


def test_writes_are_refused(store) -> None:
    root, art = store
    with ArtifactServer(root) as s:
        for method in ("PUT", "POST", "DELETE"):
            status, h, _ = _get(s.port, f"/sha256/{art.hex}", method)
            assert status == 405 and h["allow"] == "GET, HEAD"
    assert hashlib.sha256((root / "sha256" / art.hex).read_bytes()).hexdigest() == art.hex


def test_corrupted_artifact_is_not_served(store) -> None:
    root, art = store
    path = root / "sha256" / art.hex
    with ArtifactServer(root) as s:
        assert _get(s.port, f"/sha256/{art.hex}")[0] == 200
        path.write_bytes(DATA[:-1] + b"\x00")  # changed after it was first verified
        assert _get(s.port, f"/sha256/{art.hex}")[0] == 404


def test_connection_limit(store) -> None:
    root, art = store
    with ArtifactServer(root, max_connections=1) as s:
        s.httpd.slots.acquire()  # one transfer in flight
        try:
            status, h, _ = _get(s.port, f"/sha256/{art.hex}")
            assert status == 503 and h["retry-after"] == "1"
        finally:
            s.httpd.slots.release()
        assert _get(s.port, f"/sha256/{art.hex}")[0] == 200


def test_idle_connections_time_out(store) -> None:
    root, _ = store
    with ArtifactServer(root, timeout=0.5) as s:
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
            c.sendall(b"GET /boot/manifest.json HTTP/1.1\r\n")  # never finishes its headers
            assert c.recv(100) == b""  # the server hangs up instead of waiting forever


def test_cli_serve_help_and_errors(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "pyphase.boot", "serve", "--help"], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 0 and "range requests" in r.stdout
    r = subprocess.run([sys.executable, "-m", "pyphase.boot", "serve", str(tmp_path / "nope")], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 1 and "is not a directory" in r.stderr


def test_cli_keygen_sign_verify(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pyphase.boot", *args], capture_output=True, text=True, cwd=ROOT)

    assert run("keygen", "--out", str(tmp_path / "rk")).returncode == 0
    assert run("keygen", "--out", str(tmp_path / "rk")).returncode == 1  # never overwrites silently
    k = _write(tmp_path / "k", b"K" * 10)
    i = _write(tmp_path / "i", b"I" * 10)
    r = run("sign", "--key", str(tmp_path / "rk"), "--kernel", str(k), "--initramfs", str(i), "--release", "2",
            "--expires-in", "2h", "--store", str(tmp_path / "s"))
    assert r.returncode == 0, r.stderr
    r = run("verify", str(tmp_path / "s" / "boot" / "manifest.json"), "--pub", str(tmp_path / "rk.pub"),
            "--store", str(tmp_path / "s"))
    assert r.returncode == 0 and "initramfs ok" in r.stdout, r.stderr
    r = run("verify", str(tmp_path / "s" / "boot" / "manifest.json"), "--pub", str(tmp_path / "rk.pub"),
            "--min-release", "3")
    assert r.returncode == 1 and "floor" in r.stderr
    r = run("sign", "--key", str(tmp_path / "rk"), "--kernel", str(k), "--initramfs", str(i), "--release", "2",
            "--cmdline", "bad\tcmd", "--store", str(tmp_path / "s"))
    assert r.returncode == 1 and "printable ASCII" in r.stderr
