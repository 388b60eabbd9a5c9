"""``phase.mode=local`` end to end in QEMU, on a private LAN in a network namespace.

No ``phase.seeds`` and no seeds baked into stage 1: stage 1 must find the artifact source by
its mDNS query (``phase boot serve --mdns``), verify, kexec; then the booted node, announcing
itself as ``_phase._tcp.local.``, must be found by mDNS from the host side of the LAN and run
a job. The LAN is a bridge inside a namespace of its own (tests/boot/netns.py), with a busybox
udhcpd that names no router: nothing multicast, or anything else, reaches a real interface.
Assertions are on console markers and command output, never on times.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

from pyphase.identity import Identity

from .netns import Netns
from .qemu import Qemu
from .test_qemu import ADDRESS_RE, ECHO_WAT, dummy_artifacts, publish

PORT = 18080  # the artifact server's port inside the namespace (announced by SRV, never a default)
NODE_PORT = 7000
TEXT = "hello over mDNS"


@pytest.fixture()
def netns(tmp_path: Path):
    """A fresh namespace with br0 (10.77.N.1/24) and tap0; everything started in it ends with the test."""
    ns = Netns(tmp_path)
    try:
        yield ns.create()
    finally:
        ns.close()


def _phase(ns: Netns, env: dict[str, str], *args: str, timeout: float) -> tuple[int, str, str]:
    r = ns.run([sys.executable, "-m", "pyphase", *args], timeout=timeout, env=env)
    return r.returncode, r.stdout, r.stderr


def _serve(ns: Netns, store: Path, env: dict[str, str]) -> None:
    """`phase boot serve --mdns` on the bridge's address, announced there only; returns once announced."""
    proc = ns.popen(
        [
            sys.executable,
            "-m",
            "pyphase.boot",
            "serve",
            str(store),
            "--listen",
            f"{ns.host}:{PORT}",
            "--mdns",
            "--mdns-interfaces",
            ns.host,
        ],
        "serve.log",
        env=env,
    )
    ns.wait_log(proc, "serve.log", "announced as", 60)


def test_local_discover_without_a_default_route(phase_boot_bin: Path, netns: Netns, tmp_path: Path) -> None:
    """A LAN whose DHCP names no router: phase-discover (no --interface, as stage 1 runs it) still asks on the
    LAN's interface -- a plain multicast send there fails with "Network is unreachable"."""
    pytest.importorskip("zeroconf")
    assert "default" not in netns.routes(), netns.routes()
    publish(tmp_path / "store", Identity.generate(), *dummy_artifacts(tmp_path / "a"))
    _serve(netns, tmp_path / "store", dict(os.environ))
    t0 = time.monotonic()
    r = netns.run([str(phase_boot_bin / "phase-discover"), "--timeout", "60"], timeout=120)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [f"http://{netns.host}:{PORT}"], (r.stdout, r.stderr)
    assert "unreachable" not in r.stderr, r.stderr
    assert took < 30, took  # not a speed test: it ended soon after the answer, not at its --timeout 60
    print(f"\n[figures] phase-discover on a LAN without a default route: {took:.2f} s (--timeout 60)")


@pytest.mark.boot
def test_local_mode_finds_source_and_node_over_mdns(
    boot_kit: dict, stage2: Path, netns: Netns, tmp_path: Path, wat
) -> None:
    pytest.importorskip("zeroconf")
    if importlib.util.find_spec("pyphase.daemon") is None:
        pytest.skip("this pyphase has no plasmd (pyphase.daemon)")
    assert "default" not in netns.routes(), netns.routes()  # a LAN with no way out
    publish(tmp_path / "store", boot_kit["key"], boot_kit["kernel"], stage2, cmdline="console=ttyS0 panic=-1 quiet")
    (tmp_path / "echo.wasm").write_bytes(wat(ECHO_WAT))
    env = {**os.environ, "PHASE_MDNS_INTERFACES": netns.host, "PHASE_HOME": str(tmp_path / "home")}

    netns.start_dhcp()
    _serve(netns, tmp_path / "store", env)

    source = f"http://{netns.host}:{PORT}"
    up = "PHASE-NODE: announced on the LAN"
    marks = (
        "PHASE-BOOT: stage 1 up",
        "PHASE-BOOT: network up",
        f"PHASE-BOOT: sources: {source}",
        "PHASE-BOOT: signature ok",
        "PHASE-BOOT: verified",
        "PHASE-BOOT: kexec loaded",
        "PHASE-NODE: stage 2 up",
        "PHASE-NODE: network up",
        "PHASE-NODE: plasmd running",
        up,
    )
    args = [
        "-m",
        "1024",
        "-smp",
        "1",
        "-kernel",
        str(boot_kit["kernel"]),
        "-initrd",
        str(boot_kit["stage1"]),
        "-append",
        "console=ttyS0 panic=-1 quiet phase.onfail=poweroff phase.mode=local",
        "-netdev",
        f"tap,id=n0,ifname={netns.tap},script=no,downscript=no",
        "-device",
        "virtio-net-pci,netdev=n0",
    ]
    q = Qemu(args, marks, prefix=netns.prefix())
    peers: list[dict] = []
    peers_err = ""
    submitted: dict = {}
    host_marks: dict[str, float] = {}
    try:
        end = q.wait_for_match(
            re.compile(
                rf"{up}.*\n|PHASE-NODE: not announced.*\n|PHASE-BOOT FAIL.*\n"
                r"|PHASE-NODE FAIL.*\n"
            ),
            480,
        )
        assert end and end.group(0).startswith(up), q.text[-3000:]
        node = ADDRESS_RE.search(q.text)
        assert node, q.text[-3000:]
        peer_id = node.group(1)
        lease = re.search(r"PHASE-NODE: network up: \S+ (\S+)\n", q.text)
        assert lease, q.text[-3000:]
        guest_ip = lease.group(1)

        # The node, found by mDNS from the host side of the LAN (`phase peers` browses for the whole
        # --discover-timeout; a few rounds in case a loaded host drops the first answers).
        t0 = time.monotonic()
        for _ in range(12):
            code, out, err = _phase(
                netns, env, "peers", "--discover-timeout", "5", "--wait", "60", "--json", timeout=180
            )
            peers = json.loads(out) if code == 0 and out.strip() else []
            peers_err = err
            if any(p["address"].startswith(peer_id) for p in peers):
                break
        host_marks["phase peers listed the node (each round browses 5 s)"] = time.monotonic() - t0

        # A job for "any node on the LAN": no --peer, the client finds it by mDNS itself.
        t0 = time.monotonic()
        code, out, err = _phase(
            netns,
            env,
            "submit",
            str(tmp_path / "echo.wasm"),
            "--input",
            TEXT,
            "--discover-timeout",
            "15",
            "--timeout",
            "60s",
            "--json",
            timeout=600,
        )
        assert code == 0, (code, out, err, q.text[-2000:])
        submitted = json.loads(out)
        host_marks["phase submit done"] = time.monotonic() - t0
    finally:
        r = q.close()
    console = r.console
    serve_log = (tmp_path / "serve.log").read_text(errors="replace")

    # Stage 1: the only source is the one mDNS answered with; no seeds anywhere.
    assert "phase.seeds" not in console, r.tail()
    assert re.search(rf"^PHASE-BOOT: sources: {re.escape(source)}$", console, re.M), r.tail()
    assert "PHASE-BOOT: stage 1 up (mode local" in console, r.tail()
    assert f"PHASE-BOOT: network up: eth0 {guest_ip}" in console, r.tail()
    assert 'kexec loaded: cmdline "console=ttyS0 panic=-1 quiet phase.mode=local"' in console, r.tail()
    assert "PHASE-NODE: stage 2 up (mode local" in console, r.tail()
    for mark in marks:
        assert mark in console, r.tail()
    assert "PHASE-BOOT FAIL" not in console and "PHASE-NODE FAIL" not in console, r.tail()
    assert "GET /boot/manifest.json" in serve_log and "GET /sha256/" in serve_log, serve_log[-2000:]

    # Stage 2: found over mDNS at its DHCP address, and it ran the job.
    assert node.group(2) == guest_ip and int(node.group(3)) == NODE_PORT, node.group(0)  # its LAN address
    assert [p["address"] for p in peers] == [f"{peer_id}@{guest_ip}:{NODE_PORT}"], (peers, peers_err)
    assert peers[0]["reachable"] and peers[0]["arch"] == "x86_64", peers
    assert submitted["status"] == "ok" and submitted["stdout"] == TEXT, submitted
    assert submitted["peer"] == peer_id and submitted["receipt"]["node"]["peer_id"] == peer_id, submitted

    print(
        f"\n[figures] local mode, QEMU start -> marks (s): {json.dumps({k: round(v, 1) for k, v in r.marks.items()})}"
    )
    print(
        f"[figures] local mode, host side after plasmd is up (s): "
        f"{json.dumps({k: round(v, 1) for k, v in host_marks.items()})}"
    )
