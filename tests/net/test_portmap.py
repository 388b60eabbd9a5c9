"""Port mapping in the NAT lab (tests/net/natlab.py): a real plasmd behind a router with miniupnpd maps its
phase/1 and DHT ports (UPnP-IGD and NAT-PMP through libtorrent), publishes the mapped address in its DHT
record, and a client on the WAN runs a job on it — by that address and by peer id alone — as does a client
behind a NAT of its own; behind a router without UPnP the same node stays unreachable from the WAN."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from natlab import NatLab, natlab_skip_reason
from net_support import NodeProc

pytestmark = pytest.mark.skipif(natlab_skip_reason() is not None, reason=natlab_skip_reason() or "")

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "examples" / "hello" / "hello.wasm"
PORT = 7465


def lab_env(lab: NatLab) -> dict[str, str]:
    return {"PHASE_DHT_ALLOW": lab.env()["PHASE_DHT_ALLOW"]}


def start_node(lab: NatLab, host, tmp_path: Path, bootstrap: str, *extra: str) -> NodeProc:
    node = NodeProc(
        tmp_path / host.name,
        host.ip,
        sandbox=False,
        prefix=tuple(host.exec_prefix),
        extra=("--dht-bootstrap", bootstrap, "--no-api", *extra),
        env=lab_env(lab),
    )
    node.port = PORT
    return node.start()


def submit(lab: NatLab, client, peer: str, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return client.run(
        [
            str(Path(sys.executable).with_name("phase")),
            "submit",
            str(HELLO),
            "--input",
            "Hello, NAT",
            "--peer",
            peer,
            "--json",
            "--retries",
            "0",
            *extra,
        ],
        check=False,
        timeout=timeout,
        env=lab.env(PHASE_DHT_LISTEN=f"{client.ip}:0"),
    )


def test_node_behind_upnp_router_is_mapped_published_and_reachable(natlab: NatLab, tmp_path: Path) -> None:
    lab = natlab
    router = lab.router("r1", upnp=True)
    home = lab.host("h1", behind=router)
    client = lab.host("c")
    bootstrap = lab.dht_bootstrap()
    node = start_node(lab, home, tmp_path, bootstrap)
    # its neighbour behind the same router opts out: maps nothing, asks nobody to dial back
    quiet_host = lab.host("h1b", behind=router)
    quiet = start_node(lab, quiet_host, tmp_path, bootstrap, "--no-upnp", "--no-reachability")
    try:
        mapped = f"{router.wan_ip}:{PORT}"
        # one port number: phase/1 (TCP P) and the DHT with the record query (UDP P), each by UPnP and NAT-PMP
        _wait(lambda: {("phase/1", "tcp"), ("dht", "udp")} <= _mapped(node), 30, node)
        assert {e["external"] for e in node.events("port_mapping_obtained") if e["what"] in ("phase/1", "dht")} == {
            mapped
        }
        assert any(e["external"] == mapped for e in node.events("port_mapping_obtained") if e["what"] == "phase/1")
        _wait(lambda: {e["transport"] for e in node.events("port_mapping_obtained")} == {"upnp", "natpmp"}, 30, node)
        # the router forwards the port: miniupnpd's redirect names the node
        assert f"{home.ip}" in router.mappings() and f"dport {PORT}" in router.mappings()
        # the record names the mapped address first, the LAN address after it
        _wait(lambda: any(e["addresses"] == [mapped, f"{home.ip}:{PORT}"] for e in _records(node)), 30, node)
        peer_id = node.address.split("@")[0]
        # a client on the WAN: by the mapped address ...
        out = submit(lab, client, f"{peer_id}@{mapped}")
        assert out.returncode == 0, out.stdout + out.stderr
        assert json.loads(out.stdout)["stdout"] == "TAN ,olleH"
        # ... and by peer id alone, resolved through the DHT to the record's mapped address
        out = submit(lab, client, peer_id, "--dht-bootstrap", bootstrap)
        assert out.returncode == 0, out.stdout + out.stderr
        # a client behind a NAT of its own reaches it too (as it reaches relayed nodes: test_relay_nat.py)
        behind = lab.host("cl", behind=lab.router("home"))
        out = submit(lab, behind, f"{peer_id}@{mapped}")
        assert out.returncode == 0 and json.loads(out.stdout)["peer"] == peer_id, out.stdout + out.stderr
        quiet.wait_event("dht_record_published", timeout=30)
        assert not quiet.events("port_mapping_obtained") and not quiet.events("reachability")
        assert quiet_host.ip not in router.mappings()
        assert all(e["addresses"] == [f"{quiet_host.ip}:{PORT}"] for e in _records(quiet))
    finally:
        node.stop()
        quiet.stop()


def test_node_behind_router_without_upnp_is_not_reachable(natlab: NatLab, tmp_path: Path) -> None:
    lab = natlab
    router = lab.router("r2")
    home = lab.host("h2", behind=router)
    client = lab.host("c")
    bootstrap = lab.dht_bootstrap()
    node = start_node(lab, home, tmp_path, bootstrap)
    try:
        node.wait_event("dht_record_published", timeout=30)
        assert not node.events("port_mapping_obtained")
        assert all(e["addresses"] == [f"{home.ip}:{PORT}"] for e in _records(node))
        peer_id = node.address.split("@")[0]
        out = submit(lab, client, f"{peer_id}@{router.wan_ip}:{PORT}", timeout=30)
        assert out.returncode != 0
    finally:
        node.stop()


def _mapped(node: NodeProc) -> set[tuple[str, str]]:
    return {(e["what"], e["protocol"]) for e in node.events("port_mapping_obtained")}


def _records(node: NodeProc) -> list[dict]:
    return [e for e in node.events() if e.get("event", "").startswith("dht_record_") and "addresses" in e]


def _wait(ok, timeout: float, node: NodeProc) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline or not node.alive:
            raise AssertionError(node.log_tail(4000))
        time.sleep(0.1)
