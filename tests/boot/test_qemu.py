"""Stage 1 and stage 2 in QEMU (TCG): the happy path through kexec, and every refusal.

Artifacts are served from the host on loopback; QEMU's user network reaches the host as
10.0.2.2. Assertions are on console markers only, never on times (times are printed, for
docs/BOOT.md).
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import re
import threading
import time
from pathlib import Path

import pytest

from pyphase.boot.manifest import Artifact, encode_manifest, make_boot_manifest, sign_manifest
from pyphase.boot.server import ArtifactServer
from pyphase.boot.store import ArtifactStore
from pyphase.identity import Identity

from .qemu import Qemu, boot, free_port

pytestmark = pytest.mark.boot

STAGE1_APPEND = "console=ttyS0 panic=-1 quiet phase.onfail=poweroff"
NODE_CMDLINE = "console=ttyS0 panic=-1 quiet phase.node.poweroff=1"
HOST = "10.0.2.2"


def publish(
    store_dir: Path,
    key: Identity,
    kernel: Path,
    initramfs: Path,
    *,
    cmdline: str = NODE_CMDLINE,
    created_at: int | None = None,
    expires_at: int | None = None,
    release: int = 1,
    arch: str = "x86_64",
) -> dict:
    store = ArtifactStore(store_dir)
    k, i = store.add_file(kernel), store.add_file(initramfs)
    now = int(time.time())
    doc = make_boot_manifest(
        k, i, cmdline, release=release, created_at=created_at or now, expires_at=expires_at or now + 3600, arch=arch
    )
    signed = sign_manifest(doc, key.signing_key)
    store.write_manifest(signed)
    return signed


def qemu_args(kit: dict, append: str, *, nic: bool = True, memory: str = "512") -> list[str]:
    net = ["-nic", "user,model=virtio-net-pci"] if nic else ["-nic", "none"]
    return [
        "-m",
        memory,
        "-smp",
        "1",
        "-kernel",
        str(kit["kernel"]),
        "-initrd",
        str(kit["stage1"]),
        "-append",
        f"{STAGE1_APPEND} {append}",
        *net,
    ]


def dummy_artifacts(d: Path) -> tuple[Path, Path]:
    d.mkdir(parents=True, exist_ok=True)
    (d / "k").write_bytes(b"not a kernel, never fetched far enough to matter" * 100)
    (d / "i").write_bytes(b"not an initramfs" * 1000)
    return d / "k", d / "i"


def assert_refused(result, line: str) -> None:
    assert f"PHASE-BOOT FAIL: {line}" in result, result.tail()
    assert "kexec loaded" not in result and "PHASE-NODE" not in result, result.tail()
    assert result.console.count("PHASE-BOOT FAIL:") == 1, result.tail()


ECHO_WAT = """
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 4096))
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 4) (i32.load (i32.const 8)))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""
ADDRESS_RE = re.compile(r"PHASE-NODE: plasmd running \(pid \d+\) at (\S+)@(\S+):(\d+)\n")


def test_happy_path_falls_back_to_live_source_and_reaches_stage2(
    boot_kit: dict, stage2: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Stage 1 -> dead source -> live source -> verify -> kexec -> stage 2 -> plasmd answers a job."""
    daemon = importlib.util.find_spec("pyphase.daemon") is not None
    cmdline = "console=ttyS0 panic=-1 quiet" + ("" if daemon else " phase.node.poweroff=1")
    publish(tmp_path / "store", boot_kit["key"], boot_kit["kernel"], stage2, cmdline=cmdline)
    dead, fwd = free_port(), free_port()
    up = "PHASE-NODE: plasmd running" if daemon else "PHASE-NODE: python ok"
    marks = (
        "PHASE-BOOT: stage 1 up",
        "PHASE-BOOT: signature ok",
        "PHASE-BOOT: verified",
        "PHASE-BOOT: kexec loaded",
        "PHASE-NODE: stage 2 up",
        up,
    )
    with ArtifactServer(tmp_path / "store") as server:
        seeds = f"http://{HOST}:{dead},http://{HOST}:{server.port}"
        args = qemu_args(boot_kit, f"phase.seeds={seeds}", memory="1024")
        args[-1] += f",hostfwd=tcp:127.0.0.1:{fwd}-:7000"
        q = Qemu(args, marks)
        try:
            q.wait_for(up, 420)
            server.close()
            job_output = None
            if daemon:
                m = q.wait_for_match(ADDRESS_RE, 30)
                assert m, q.text[-3000:]
                wat = request.getfixturevalue("wat")
                from pyphase import Client

                with Client([f"{m.group(1)}@127.0.0.1:{fwd}"], connect_timeout=30) as client:
                    result = client.submit(wat(ECHO_WAT), b"hello from the host", timeout=180, retries=2)
                job_output = (result.status, result.stdout)
        finally:
            r = q.close()
    assert f"http://{HOST}:{dead}: manifest fetch failed" in r, r.tail()
    for mark in marks:
        assert mark in r, r.tail()
    assert "PHASE-BOOT FAIL" not in r and "PHASE-NODE FAIL" not in r, r.tail()
    assert "phase.mode=internet" in r  # stage 1 passes its mode on, after the signed command line
    if daemon:
        assert job_output == ("ok", b"hello from the host"), (job_output, r.tail())
    verify_line = next(line for line in r.console.splitlines() if "PHASE-BOOT: verified" in line)
    print(f"\n[figures] QEMU start -> marks (s): {json.dumps({k: round(v, 1) for k, v in r.marks.items()})}")
    print(f"[figures] {verify_line.strip()}")


def test_tampered_manifest_is_refused(boot_kit: dict, tmp_path: Path) -> None:
    k, i = dummy_artifacts(tmp_path / "a")
    publish(tmp_path / "store", boot_kit["key"], k, i)
    path = tmp_path / "store" / "boot" / "manifest.json"
    doc = json.loads(path.read_text())
    doc["cmdline"] += " init=/bin/sh"
    path.write_bytes(encode_manifest(doc))
    with ArtifactServer(tmp_path / "store") as server:
        r = boot(qemu_args(boot_kit, f"phase.rounds=1 phase.seeds=http://{HOST}:{server.port}"), deadline=180)
    assert_refused(r, "manifest bad signature: does not verify against the release key")


def test_wrong_release_key_is_refused(boot_kit: dict, tmp_path: Path) -> None:
    k, i = dummy_artifacts(tmp_path / "a")
    publish(tmp_path / "store", Identity.generate(), k, i)
    with ArtifactServer(tmp_path / "store") as server:
        r = boot(qemu_args(boot_kit, f"phase.rounds=1 phase.seeds=http://{HOST}:{server.port}"), deadline=180)
    assert_refused(r, "manifest bad signature: does not verify against the release key")


def test_expired_manifest_is_refused(boot_kit: dict, tmp_path: Path) -> None:
    k, i = dummy_artifacts(tmp_path / "a")
    now = int(time.time())
    publish(tmp_path / "store", boot_kit["key"], k, i, created_at=now - 7200, expires_at=now - 3600)
    with ArtifactServer(tmp_path / "store") as server:
        r = boot(qemu_args(boot_kit, f"phase.rounds=1 phase.seeds=http://{HOST}:{server.port}"), deadline=180)
    assert_refused(r, "manifest expired")


def test_expired_manifest_is_refused_even_with_the_clock_at_2000(boot_kit: dict, tmp_path: Path) -> None:
    """A dead RTC battery must not revive expired manifests: expiry is never judged before build time."""
    k, i = dummy_artifacts(tmp_path / "a")
    now = int(time.time())
    publish(tmp_path / "store", boot_kit["key"], k, i, created_at=now - 7200, expires_at=now - 3600)
    with ArtifactServer(tmp_path / "store") as server:
        args = qemu_args(boot_kit, f"phase.rounds=1 phase.seeds=http://{HOST}:{server.port}")
        r = boot([*args, "-rtc", "base=2000-01-01T00:00:00"], deadline=180)
    assert "before this image was built" in r, r.tail()
    assert_refused(r, "manifest expired")


class _RawHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files as they are, without checking them: a source that lies about content."""

    def log_message(self, *args: object) -> None:
        pass


def test_artifact_hash_mismatch_is_refused(boot_kit: dict, tmp_path: Path) -> None:
    k, i = dummy_artifacts(tmp_path / "a")
    signed = publish(tmp_path / "store", boot_kit["key"], k, i)
    bad = tmp_path / "store" / "sha256" / Artifact(**signed["initramfs"]).hex
    data = bytearray(bad.read_bytes())
    data[100] ^= 1  # same size, one bit off
    bad.write_bytes(bytes(data))
    handler = lambda *a, **kw: _RawHandler(*a, directory=str(tmp_path / "store"), **kw)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        r = boot(
            qemu_args(boot_kit, f"phase.rounds=1 phase.seeds=http://{HOST}:{httpd.server_address[1]}"), deadline=180
        )
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert "PHASE-BOOT: signature ok" in r, r.tail()
    assert "PHASE-BOOT: kernel fetched" in r, r.tail()
    assert_refused(r, "initramfs every source failed; last: ")
    # one fresh retry, then the source is dropped; each attempt is on the console
    assert r.console.count("PHASE-BOOT: initramfs attempt failed: ") == 2, r.tail()
    assert r.console.count("hash mismatch: got sha256:") == 3, r.tail()  # two attempts and the FAIL line


def test_all_sources_down_is_refused(boot_kit: dict) -> None:
    seeds = f"http://{HOST}:{free_port()},http://{HOST}:{free_port()}"
    r = boot(qemu_args(boot_kit, f"phase.rounds=1 phase.seeds={seeds}"), deadline=180)
    assert_refused(r, "manifest fetch: every source failed")
    assert "Connection refused" in r


def test_no_network_is_refused(boot_kit: dict) -> None:
    r = boot(qemu_args(boot_kit, f"phase.mode=private phase.seeds=http://{HOST}:1", nic=False), deadline=180)
    assert "PHASE-BOOT: stage 1 up (mode private" in r, r.tail()
    assert_refused(r, "network no network interface found")
