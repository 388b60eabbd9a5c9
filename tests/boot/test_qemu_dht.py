"""Phase Boot, Internet mode, in QEMU: no seeds anywhere; stage 1 finds its source on a private Mainline DHT.

The host runs 8 libtorrent DHT nodes on 127.0.0.1 (tests/boot/dht_net.py) and a ``plasmd --boot-store`` that
announces its store under the release key's info-hash through them. The guest gets only ``phase.dht=`` with
two of those nodes as 10.0.2.2:PORT (QEMU's user network), runs stage 1's own KRPC lookup (phase-dht), fetches,
verifies, kexecs, and stage 2's plasmd joins the same DHT (stage 1 hands it ``phase.dht=``): a client on
the host that knows only two other DHT nodes resolves the booted node's peer id to its signed record and
runs a job through the address the record names (the host's port forward, ``phase.advertise=127.0.0.1``
in the signed command line).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pyphase.boot import keys
from pyphase.boot.dht import boot_info_hash

from .dht_net import loopback_dht, loopback_sessions
from .qemu import Qemu, boot, free_port
from .services import DnsServer
from .test_qemu import ADDRESS_RE, ECHO_WAT, HOST, dummy_artifacts, publish, qemu_args

pytestmark = pytest.mark.boot


def _wait_event(log: Path, proc: subprocess.Popen, match, timeout: float = 60) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for line in log.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if match(event):
                return event
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        time.sleep(0.2)
    raise AssertionError(log.read_text(errors="replace")[-3000:])


def test_internet_mode_finds_its_source_on_the_dht_and_boots_to_a_node(
    boot_kit: dict, stage2: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    fwd = _publish_node_image(boot_kit, stage2, tmp_path / "store")
    info_hash = boot_info_hash(boot_kit["key"].public_key).hex()
    log = tmp_path / "plasmd.log"
    with loopback_dht(8) as nodes:
        bootstrap = ",".join(f"{h}:{p}" for h, p in nodes[:2])
        with log.open("wb") as err:
            source = subprocess.Popen(
                [sys.executable, "-m", "pyphase.daemon", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "src"),
                 "--no-sandbox", "--no-mdns", "--ephemeral", "--boot-store", str(tmp_path / "store"),
                 "--boot-listen", "127.0.0.1:0", "--dht-bootstrap", bootstrap, "--dht-listen", "127.0.0.1:0"],
                stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        try:
            serving = _wait_event(log, source, lambda e: e.get("event") == "boot_serving")
            boot_port = int(serving["url"].rsplit(":", 1)[1])
            _wait_event(log, source, lambda e: e.get("hashes", {}).get("phase-boot") == info_hash)
            guest_dht = ",".join(f"{HOST}:{p}" for _, p in nodes[2:4])  # not the nodes the source joined through
            marks = (
                "PHASE-BOOT: stage 1 up",
                "PHASE-BOOT: DHT: 1 source after",
                f"PHASE-BOOT: sources: http://{HOST}:{boot_port}\n",
                "PHASE-BOOT: signature ok",
                "PHASE-BOOT: kexec loaded",
                "PHASE-NODE: stage 2 up",
                "PHASE-NODE: plasmd running",
                f"phase.dht={guest_dht}",  # the kexec line: stage 2 joins through the nodes stage 1 used
                "PHASE-NODE: on the DHT",
            )
            client_dht = guest_dht.replace(HOST, "127.0.0.1")  # see _submit_by_peer_id
            r = _boot_node_and_submit(boot_kit, request, guest_dht, fwd, client_dht, marks, b"booted from the DHT")
        finally:
            source.terminate()
            source.wait(30)
    print("\n[figures] " + next(line for line in r.console.splitlines() if "PHASE-NODE: on the DHT" in line))


def _serve_on_ipv6(tmp_path: Path, port: int, dht_ports: list[int]) -> subprocess.Popen[bytes]:
    """``phase boot serve`` of ``tmp_path/store`` on [::1]:port, announced through the DHT nodes on [::1] at
    ``dht_ports``; returns once it announced."""
    out = tmp_path / "serve.out"
    with out.open("wb") as sink:
        serve = subprocess.Popen(
            [sys.executable, "-m", "pyphase.boot", "serve", str(tmp_path / "store"), "--listen", f"[::1]:{port}",
             "--dht-bootstrap", ",".join(f"[::1]:{p}" for p in dht_ports), "--quiet"],
            stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        _wait_event(out, serve, lambda e: e.get("event") == "boot_dht_announced")
    except BaseException:
        serve.terminate()
        serve.wait(30)
        raise
    return serve


def _publish_node_image(boot_kit: dict, stage2: Path, store: Path) -> int:
    """Publish the node image to ``store`` with its release key; -> the port its plasmd listens on (the guest's
    plasmd listens on the same port number as the host forwards, so its record names 127.0.0.1:port)."""
    fwd = free_port()
    cmdline = f"console=ttyS0 panic=-1 quiet phase.port={fwd} phase.advertise=127.0.0.1"
    publish(store, boot_kit["key"], boot_kit["kernel"], stage2, cmdline=cmdline)
    (store / "boot" / "release.pub").write_text(keys.public_key_text(boot_kit["key"].public_key))
    return fwd


def _boot_node_and_submit(
    boot_kit: dict,
    request: pytest.FixtureRequest,
    guest_dht: str,
    fwd: int,
    client_dht: str,
    marks: tuple[str, ...],
    stdin: bytes,
) -> Any:
    """Boot in Internet mode through ``guest_dht`` to a node on the DHT, then run a job on it by peer id from a
    client that joins through ``client_dht``; checks the console ``marks``, the record and the receipt."""
    args = qemu_args(boot_kit, f"phase.mode=internet phase.dht={guest_dht}", memory="1024")
    args[-1] += f",hostfwd=tcp:127.0.0.1:{fwd}-:{fwd}"
    q = Qemu(args, marks)
    try:
        q.wait_for("PHASE-NODE: plasmd running", 420)
        m = q.wait_for_match(ADDRESS_RE, 30)
        assert m, q.text[-3000:]
        q.wait_for("PHASE-NODE: on the DHT", 150)
        wat = request.getfixturevalue("wat")
        try:
            record, result = _submit_by_peer_id(m.group(1), client_dht, wat(ECHO_WAT), stdin)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the guest said: {re.findall(r'PHASE-NODE: on the DHT.*', q.text)}") from None
    finally:
        r = q.close()
    for mark in marks:
        assert mark in r, r.tail()
    assert "PHASE-BOOT FAIL" not in r, r.tail()
    assert re.search(r"PHASE-NODE: on the DHT \(through [^)]*\): record stored on [1-9]\d* nodes", r.console), r.tail()
    assert record.peer_id == m.group(1) and record.address == f"{m.group(1)}@127.0.0.1:{fwd}", record
    assert (result.status, result.stdout) == ("ok", stdin), result
    assert result.receipt is not None and result.receipt["node"]["peer_id"] == m.group(1)
    return r


def test_internet_mode_over_ipv6_boots_to_a_node_on_the_dht(
    boot_kit: dict, stage2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """Over QEMU's IPv6 user network with IPv6-only DHT nodes (libtorrent on the host's [::1], the guest's
    [fec0::2]): stage 1 finds ``phase boot serve`` on [::1], boots stage 2, whose plasmd (on 0.0.0.0) runs its
    DHT on IPv6 too and stores its record there; a host client joining through the guest's IPv6 nodes resolves the
    booted node's peer id and runs a job on it."""
    monkeypatch.setenv("PHASE_DHT_ALLOW", os.environ["PHASE_DHT_ALLOW"] + ",::1/128")  # IPv6 loopback: still local
    fwd = _publish_node_image(boot_kit, stage2, tmp_path / "store")
    port = free_port()
    with loopback_sessions(8, host="::1") as sessions:
        ports = [s.listen_port() for s in sessions]
        serve = _serve_on_ipv6(tmp_path, port, ports[:2])
        try:
            guest_dht = ",".join(f"[fec0::2]:{p}" for p in ports[2:4])
            marks = (
                "PHASE-BOOT: DHT: 1 source after",
                f"PHASE-BOOT: sources: http://[fec0::2]:{port}\n",
                "PHASE-NODE: plasmd running",
                "PHASE-NODE: on the DHT",
            )
            client_dht = guest_dht.replace("fec0::2", "::1")  # see _submit_by_peer_id
            _boot_node_and_submit(boot_kit, request, guest_dht, fwd, client_dht, marks, b"booted over IPv6")
        finally:
            serve.terminate()
            serve.wait(30)


def _submit_by_peer_id(peer_id: str, bootstrap: str, module: bytes, stdin: bytes) -> tuple:
    """The booted node's record from the DHT, then a job on the node it names, by peer id alone as
    ``phase submit --peer PEERID`` does.

    ``bootstrap`` is the guest's own DHT nodes, on purpose. Behind QEMU's NAT the guest joins through the nodes
    it was given (as 10.0.2.2 or fec0::2); every other node it hears of is named 127.0.0.1/::1, its own
    loopback, so where its record lands depends on those two. A client with the product's anti-Sybil rules
    keeps one node per /24 (/64) in a routing-table bucket and adds one per lookup: on this one-address network
    it asks about two nodes, and joining through two other nodes it missed the record in three of the last four
    runs. Records spreading across a DHT of distinct addresses are tested in tests/net/. Each try opens a
    fresh session, which may reach the other of the two nodes."""
    from pyphase import Client
    from pyphase.errors import NoPeers, PhaseError
    from pyphase.net.dht import client_dht, resolve_peer

    end, why, record = time.monotonic() + 180, "", None
    while time.monotonic() < end:
        try:
            if record is None:
                with client_dht(bootstrap) as dht:
                    record = resolve_peer(dht, peer_id, timeout=10)
            with Client([peer_id], dht_bootstrap=bootstrap, connect_timeout=30) as client:
                return record, client.submit(module, stdin, timeout=180, retries=2)
        except NoPeers as exc:
            why = f"the client's own lookup: {exc}"
        except PhaseError as exc:
            if record is not None:
                raise
            why = f"the test's lookup: {exc}"
    raise AssertionError(f"the booted node was not found on the DHT: {why}")


def test_internet_mode_over_ipv6_with_a_named_dht_node(
    boot_kit: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stage 1 alone, over QEMU's IPv6 user network (the guest's SLAAC address; the host's ::1 is fec0::2):
    ``phase.dht=`` names a DHT node by a DNS name that has only an IPv6 address (dnsmasq on the host, reached as
    ``phase.dns=10.0.2.2:PORT``); the lookup runs over IPv6 (BEP 32) to libtorrent nodes on [::1], finds
    ``phase boot serve`` listening on [::1], and the manifest fetched from http://[fec0::2]:PORT verifies.
    Stops there: the rest of the boot is the IPv4 test's."""
    monkeypatch.setenv("PHASE_DHT_ALLOW", os.environ["PHASE_DHT_ALLOW"] + ",::1/128")  # IPv6 loopback: still local
    kernel, initramfs = dummy_artifacts(tmp_path / "artifacts")
    publish(tmp_path / "store", boot_kit["key"], kernel, initramfs)
    (tmp_path / "store" / "boot" / "release.pub").write_text(keys.public_key_text(boot_kit["key"].public_key))
    port = free_port()
    with loopback_sessions(8, host="::1") as sessions, DnsServer({"dht.phase.test": "fec0::2"}) as dns:
        ports = [s.listen_port() for s in sessions]
        serve = _serve_on_ipv6(tmp_path, port, ports[:2])
        try:
            append = f"phase.mode=internet phase.dht=dht.phase.test:{ports[3]} phase.dns={HOST}:{dns.port}"
            r = boot(qemu_args(boot_kit, append), deadline=300, stop_on="PHASE-BOOT: signature ok")
        finally:
            serve.terminate()
            serve.wait(30)
    assert "PHASE-BOOT: DHT: 1 source after" in r, r.tail()
    assert f"PHASE-BOOT: sources: http://[fec0::2]:{port}\n" in r, r.tail()
    assert "PHASE-BOOT: signature ok" in r and "PHASE-BOOT FAIL" not in r, r.tail()
