"""The read-only artifact server: paths, ranges, limits, and never serving mismatched bytes."""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import subprocess
import sys
import threading
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
    s.write_manifest(
        sign_manifest(
            make_boot_manifest(other, art, "console=ttyS0", release=1, expires_at=int(time.time()) + 60),
            Identity.generate().signing_key,
        )
    )
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


@pytest.mark.parametrize(
    "rng,start,end",
    [
        ("bytes=0-99", 0, 100),
        ("bytes=100-", 100, len(DATA)),
        ("bytes=-10", len(DATA) - 10, len(DATA)),
        ("bytes=50-999999", 50, len(DATA)),
    ],
)
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


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/sha256/",
        "/sha256/" + "0" * 64,
        "/sha256/../boot/manifest.json",
        "/sha256/" + "A" * 64,
        "/store/boot/manifest.json",
        "/" + "x" * 300,
    ],
)
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
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as held:
            held.sendall(b"GET /boot/manifest.json HTTP/1.1\r\n")  # holds the one slot
            time.sleep(0.2)
            status, h, _ = _get(s.port, f"/sha256/{art.hex}")
            assert status == 503 and h["retry-after"] == "1"
        time.sleep(0.2)
        assert _get(s.port, f"/sha256/{art.hex}")[0] == 200


def test_connections_are_capped_per_source_address(store) -> None:
    """Issue 10, attack 8: beyond ``max_per_address`` connections from one address, that address gets 503 at once;
    another address is still served (its slots are not the first one's to take)."""
    root, art = store
    with ArtifactServer(root, max_per_address=2) as s:
        held = [socket.create_connection(("127.0.0.1", s.port), timeout=10) for _ in range(2)]
        try:
            for sock in held:
                sock.sendall(b"GET /boot/manifest.json HTTP/1.1\r\n")  # each holds a slot, headers unfinished
            time.sleep(0.2)
            assert _get(s.port, f"/sha256/{art.hex}")[0] == 503
            other = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10, source_address=("127.0.0.2", 0))
            other.request("GET", f"/sha256/{art.hex}")
            response = other.getresponse()
            assert response.status == 200 and response.read() == DATA
            other.close()
        finally:
            for sock in held:
                sock.close()


def test_idle_connections_time_out(store) -> None:
    root, _ = store
    with ArtifactServer(root, timeout=0.5) as s:
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
            c.sendall(b"GET /boot/manifest.json HTTP/1.1\r\n")  # never finishes its headers
            assert c.recv(100) == b""  # the server hangs up instead of waiting forever


def test_cli_serve_help_and_errors(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pyphase.boot", "serve", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert r.returncode == 0 and "range requests" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "pyphase.boot", "serve", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 1 and "is not a directory" in r.stderr


def test_cli_keygen_sign_verify(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pyphase.boot", *args], capture_output=True, text=True, cwd=ROOT)

    assert run("keygen", "--out", str(tmp_path / "rk")).returncode == 0
    assert run("keygen", "--out", str(tmp_path / "rk")).returncode == 1  # never overwrites silently
    k = _write(tmp_path / "k", b"K" * 10)
    i = _write(tmp_path / "i", b"I" * 10)
    r = run(
        "sign",
        "--key",
        str(tmp_path / "rk"),
        "--kernel",
        str(k),
        "--initramfs",
        str(i),
        "--release",
        "2",
        "--expires-in",
        "2h",
        "--store",
        str(tmp_path / "s"),
    )
    assert r.returncode == 0, r.stderr
    r = run(
        "verify",
        str(tmp_path / "s" / "boot" / "manifest.json"),
        "--pub",
        str(tmp_path / "rk.pub"),
        "--store",
        str(tmp_path / "s"),
    )
    assert r.returncode == 0 and "initramfs ok" in r.stdout, r.stderr
    r = run(
        "verify",
        str(tmp_path / "s" / "boot" / "manifest.json"),
        "--pub",
        str(tmp_path / "rk.pub"),
        "--min-release",
        "3",
    )
    assert r.returncode == 1 and "floor" in r.stderr
    r = run(
        "sign",
        "--key",
        str(tmp_path / "rk"),
        "--kernel",
        str(k),
        "--initramfs",
        str(i),
        "--release",
        "2",
        "--cmdline",
        "bad\tcmd",
        "--store",
        str(tmp_path / "s"),
    )
    assert r.returncode == 1 and "printable ASCII" in r.stderr


# ---- abuse (issue 10): slots, descriptors and threads a stranger could take ---------------------------


def _slow_reader(port: int, path: str, source: str) -> socket.socket:
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    c.bind((source, 0))
    c.connect(("127.0.0.1", port))
    c.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return c


def _trickling(port: int, source: str, start: bytes) -> socket.socket:
    """A connection from ``source`` that sent the first bytes of its request headers, and no more."""
    c = socket.socket()
    c.bind((source, 0))
    c.connect(("127.0.0.1", port))
    c.sendall(start)
    return c


def test_slow_readers_are_cut_off(tmp_path: Path) -> None:
    """34 clients reading a big artifact at a trickle held all 32 slots: every GET got 503 for as long as
    they liked. Below the minimum rate (after its grace) they are cut off and the slots come back."""
    blob = _write(tmp_path / "big", bytes(8 << 20))
    art = ArtifactStore(tmp_path / "store").add_file(blob)
    with ArtifactServer(tmp_path / "store", min_rate=256 << 10, min_rate_grace=1.0) as s:
        slow = [_slow_reader(s.port, f"/sha256/{art.hex}", f"127.0.0.{10 + i}") for i in range(34)]
        try:
            for c in slow:
                c.recv(4096)
            deadline = time.monotonic() + 8
            while True:
                for c in slow:  # a trickle: 4 KiB now and then
                    c.setblocking(False)
                    try:
                        c.recv(4096)
                    except OSError:
                        pass
                status = _get(s.port, f"/sha256/{art.hex}", "HEAD")[0]
                if status == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert status == 200
        finally:
            for c in slow:
                c.close()


def test_a_reader_slower_than_the_buffers_gets_the_whole_response(tmp_path: Path) -> None:
    """The last chunk of a response could still wait in the server's buffer when the response ended, and the
    server then reset the connection as if the reader had stalled: an honest reader well above the minimum rate
    got all but its last bytes (a fetch test saw 262,144 of 300,000)."""
    data = os.urandom(1 << 20)
    art = ArtifactStore(tmp_path / "store").add_file(_write(tmp_path / "blob", data))
    with ArtifactServer(tmp_path / "store") as s:
        for _ in range(3):
            got = b""
            with socket.socket() as c:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # before connect: a small window
                c.settimeout(10)
                c.connect(("127.0.0.1", s.port))
                c.sendall(f"GET /sha256/{art.hex} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                while chunk := c.recv(16384):  # until the server closes
                    got += chunk
                    time.sleep(0.001)
            head, _, body = got.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and body == data, (head, len(body))


def test_trickled_headers_cost_no_thread_and_hit_a_deadline(store) -> None:
    """1,100 connections sending headers a byte at a time each cost a thread; now they cost nothing but a
    descriptor within the caps, and are closed at the header deadline."""
    root, art = store
    threads = threading.active_count()
    with ArtifactServer(root, header_timeout=1.0) as s:
        conns = [_trickling(s.port, f"127.0.0.{20 + i % 10}", b"G") for i in range(100)]
        try:
            assert threading.active_count() <= threads + 3
            assert _get(s.port, "/boot/manifest.json")[0] in (200, 503)
            time.sleep(1.5)  # past the header deadline: all of them are closed
            closed = 0
            for c in conns:
                c.settimeout(2)
                try:
                    closed += c.recv(100) in (b"",) or True
                except OSError:
                    closed += 1
            assert closed == len(conns)
            assert _get(s.port, "/boot/manifest.json")[0] == 200
        finally:
            for c in conns:
                c.close()


def test_huge_range_start_is_416(store) -> None:
    """A 5,000-digit Range start raised ValueError: no response and a traceback in the log."""
    root, art = store
    with ArtifactServer(root) as s:
        status, h, _ = _get(s.port, f"/sha256/{art.hex}", headers={"Range": "bytes=" + "9" * 5000 + "-"})
        assert status == 416 and h["content-range"] == f"bytes */{len(DATA)}"
        assert _get(s.port, f"/sha256/{art.hex}")[0] == 200


def test_quiet_server_logs_no_traceback_for_dropped_connections(store) -> None:
    root, art = store
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyphase.boot", "serve", str(root), "--listen", "127.0.0.1:0", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        port = int(line.split("http://127.0.0.1:")[1].split()[0])
        for _ in range(5):
            c = socket.create_connection(("127.0.0.1", port))  # gone in the middle of a download
            c.sendall(f"GET /sha256/{art.hex} HTTP/1.1\r\n\r\n".encode())
            c.recv(10)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            c.close()
            c = socket.create_connection(("127.0.0.1", port))  # gone before its headers ended
            c.sendall(b"GET / HT")
            c.close()
        assert _get(port, "/boot/manifest.json")[0] == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "Traceback" not in err and err.strip() == "", err


@pytest.mark.parametrize("slow", ["headers", "reader"])
def test_slow_slots_from_many_addresses_go_to_new_connections(store, slow: str) -> None:
    """Slow connections from as many addresses as there are slots kept every other client at 503 (each is cut
    off at its deadline and comes back). Now, with every slot taken, a new connection takes the slot of the
    slowest one held a second below the minimum rate: headers never finished, or a response read at a trickle
    (what counts is what the reader took, not what waits for it in buffers)."""
    root, art = store
    with ArtifactServer(root, max_connections=4) as s:
        if slow == "headers":
            trickling = [
                _trickling(s.port, f"127.0.0.{40 + i}", b"GET /boot/manifest.json HTTP/1.1\r\n") for i in range(4)
            ]
        else:
            trickling = [_slow_reader(s.port, f"/sha256/{art.hex}", f"127.0.0.{40 + i}") for i in range(4)]
        try:
            time.sleep(0.3)
            assert _get(s.port, "/boot/manifest.json")[0] == 503  # all taken, none slow for long enough yet
            time.sleep(1.0)
            assert [_get(s.port, f"/sha256/{art.hex}")[0] for _ in range(3)] == [200] * 3
            closed = 0
            for c in trickling if slow == "headers" else ():  # a slow reader still has its bytes to read first
                c.settimeout(2)
                try:
                    closed += c.recv(100) == b""
                except OSError:
                    closed += 1
            assert closed >= 1 or slow == "reader"  # the slowest gave up their slots
        finally:
            for c in trickling:
                c.close()
