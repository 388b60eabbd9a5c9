"""Stage 1 in QEMU (TCG) reaching its sources by DNS name and, in Private mode, only through a SOCKS5 proxy.

The proxy is a real one (microsocks) and the DNS server too (dnsmasq), both on the host's loopback; the
guest reaches them at 10.0.2.2 through QEMU's user network. A source named ``localhost`` can only be
reached through the proxy (it resolves the name on the host); in the guest it would mean the guest.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from pyphase.boot.server import ArtifactServer

from .qemu import boot, free_port
from .services import DnsServer, SocksProxy
from .test_qemu import HOST, assert_refused, dummy_artifacts, publish, qemu_args

pytestmark = pytest.mark.boot


class CountingServer:
    """Accepts TCP connections and counts them, answering nothing: proof that nobody connected directly."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


def test_private_mode_fetches_only_through_the_socks_proxy(boot_kit: dict, stage2: Path, tmp_path: Path) -> None:
    """Private + phase.socks: manifest, kernel and node image come through the proxy; stage 2 gets the proxy."""
    publish(
        tmp_path / "store",
        boot_kit["key"],
        boot_kit["kernel"],
        stage2,
        cmdline="console=ttyS0 panic=-1 quiet phase.node.poweroff=1",
    )
    up = "PHASE-NODE: outgoing connections through the SOCKS proxy"
    with SocksProxy(tmp_path) as proxy, ArtifactServer(tmp_path / "store") as server:
        append = f"phase.mode=private phase.socks={HOST}:{proxy.port} phase.seeds=http://localhost:{server.port}"
        r = boot(qemu_args(boot_kit, append, memory="1024"), deadline=420, stop_on=up)
        log = proxy.log()
    assert f"every fetch goes through the SOCKS proxy {HOST}:{proxy.port}" in r, r.tail()
    assert "PHASE-BOOT: signature ok" in r and "PHASE-BOOT: verified" in r, r.tail()
    assert f'phase.mode=private phase.socks={HOST}:{proxy.port}"' in r, r.tail()  # passed on to stage 2
    assert "PHASE-NODE: private mode: no disk touched, ephemeral identity" in r, r.tail()
    assert f"{up} {HOST}:{proxy.port}" in r and "PHASE-BOOT FAIL" not in r, r.tail()
    # manifest, kernel, initramfs: each one CONNECT of the proxy to the name only it can resolve
    assert log.count(f"connected to localhost:{server.port}") >= 3, log


def test_private_mode_with_the_proxy_down_never_connects_directly(boot_kit: dict, tmp_path: Path) -> None:
    """Fail closed: the source is reachable directly, but with the proxy down nothing is fetched."""
    direct = CountingServer()
    try:
        append = (
            f"phase.mode=private phase.rounds=1 phase.socks={HOST}:{free_port()} "
            f"phase.seeds=http://{HOST}:{direct.port}"
        )
        r = boot(qemu_args(boot_kit, append), deadline=240)
    finally:
        direct.close()
    assert_refused(r, "manifest fetch: every source failed; last: ")
    assert "proxy unreachable" in r, r.tail()
    assert direct.accepted == 0


def test_sources_by_dns_name(boot_kit: dict, tmp_path: Path) -> None:
    """phase.dns + a named seed: the static fetcher resolves it (no NSS in stage 1) and fetches by hash."""
    k, i = dummy_artifacts(tmp_path / "a")
    publish(tmp_path / "store", boot_kit["key"], k, i)
    with DnsServer({"artifacts.phase.test": HOST}) as dns, ArtifactServer(tmp_path / "store") as server:
        append = (
            f"phase.rounds=1 phase.dns={HOST}:{dns.port} "
            f"phase.seeds=http://missing.phase.test:{server.port},http://artifacts.phase.test:{server.port}"
        )
        r = boot(qemu_args(boot_kit, append), deadline=240)
        queries = dns.close()
    assert "DNS: name 'missing.phase.test' not found" in r, r.tail()
    assert "PHASE-BOOT: signature ok" in r and "PHASE-BOOT: kernel fetched" in r, r.tail()
    # the dummy kernel is no kernel: verified, then refused by kexec_file_load -- one clear line
    assert "PHASE-BOOT FAIL: kexec" in r, r.tail()
    assert "artifacts.phase.test" in queries, queries
