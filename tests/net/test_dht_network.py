"""plasmd nodes on a private Mainline DHT (libtorrent sessions on loopback, one /24 each): records published
and refreshed, a client that knows one bootstrap address finds every node and runs a job on each, a peer id
resolves to the node's new address after a restart on another port, and the operator commands."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dht_support import dht_host, endpoints, private_dht  # noqa: E402
from net_support import NodeProc  # noqa: E402

from pyphase import Client
from pyphase.net import dht


@pytest.fixture(scope="module")
def dht_network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[tuple[str, int]], list[NodeProc]]]:
    """Six bare DHT sessions as the network's routers, three plasmd nodes joined through two of them."""
    nodes: list[NodeProc] = []
    tmp_path = tmp_path_factory.mktemp("dht")
    with private_dht(6) as routers:
        boot = endpoints(routers)
        try:
            for i in range(3):
                extra = ("--dht-bootstrap", f"{boot[i][0]}:{boot[i][1]}", f"{boot[i + 1][0]}:{boot[i + 1][1]}")
                node = NodeProc(
                    tmp_path / f"node{i}",
                    dht_host(),
                    sandbox=False,
                    workers=1,
                    extra=extra,
                    env={"PLASMD_DHT_REFRESH": "3s"} if i == 0 else None,
                )
                nodes.append(node.start())
            for node in nodes:
                published = node.wait_event("dht_record_published")
                assert published["seq"] >= 1 and published["stored"] >= 1, published
            yield boot, nodes
        finally:
            for node in nodes:
                node.stop()


def test_nodes_publish_refresh_and_are_found_and_used(dht_network, hello_bytes) -> None:
    boot, nodes = dht_network
    refreshed = nodes[0].wait_event("dht_record_refreshed", timeout=30)
    assert refreshed["seq"] > nodes[0].events("dht_record_published")[0]["seq"]
    assert nodes[0].events("dht_listening")[0]["record_query_port"] == nodes[0].port
    with dht.client_dht([f"{boot[5][0]}:{boot[5][1]}"]) as client_dht:  # knows one address only
        found = dht.find_nodes(client_dht, timeout=10, want=len(nodes))
        by_id = {r.peer_id: r for r in found}
        for node in nodes:
            peer_id = node.address.split("@")[0]
            assert by_id[peer_id].address == node.address
            assert dht.resolve_peer(client_dht, peer_id).addresses[0] == node.address.split("@")[1]
    for record in found:
        with Client(peers=[record.address]) as client:
            result = client.submit(hello_bytes, b"dht")
        assert result.status == "ok" and result.stdout == b"thd" and result.peer == record.peer_id


def test_cli_peers_dht_and_rendezvous(dht_network) -> None:
    boot, nodes = dht_network
    bootstrap = f"{boot[2][0]}:{boot[2][1]}"
    out = subprocess.run(
        [sys.executable, "-m", "pyphase", "peers", "--dht", "--json", "--dht-bootstrap", bootstrap],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert sorted(r["address"] for r in rows) == sorted(n.address for n in nodes)
    assert all(r["reachable"] for r in rows)
    out = subprocess.run(
        [sys.executable, "-m", "pyphase", "dht", "rendezvous", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**_env(), "PHASE_DHT_BOOTSTRAP": bootstrap},
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert sorted(p["peer_id"] for p in doc["peers"]) == sorted(n.address.split("@")[0] for n in nodes)
    # one rendezvous per engine: every node runs wasm3; nobody runs an engine that does not exist
    announced = nodes[0].events("dht_announced")[0]["hashes"]
    assert announced["phase/1/engine/wasm3"] == dht.rendezvous_hash("engine/wasm3").hex()
    for engine, expected in (("wasm3", len(nodes)), ("nosuch", 0)):
        out = subprocess.run(
            [sys.executable, "-m", "pyphase", "dht", "rendezvous", "--engine", engine, "--json", "--timeout", "5"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**_env(), "PHASE_DHT_BOOTSTRAP": bootstrap},
        )
        doc = json.loads(out.stdout)
        assert doc["info_hash"] == dht.rendezvous_hash(f"engine/{engine}").hex()
        assert len({p["peer_id"] for p in doc["peers"]}) == expected, (engine, doc)
    unknown = "a" * 52
    out = subprocess.run(
        [sys.executable, "-m", "pyphase", "dht", "record", unknown, "--dht-bootstrap", bootstrap, "--timeout", "3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and "no record" in out.stderr


def test_peer_id_resolves_after_a_restart_on_another_port(dht_network, hello_bytes) -> None:
    """Last in the module: it leaves the node's old endpoint announced in the rendezvous until it expires."""
    boot, nodes = dht_network
    node = nodes[1]
    peer_id, old_address = node.address.split("@")[0], node.address
    node.stop()
    node.port = 0  # comes back on another port, same identity
    node.start()
    assert node.address != old_address and node.address.startswith(peer_id)
    deadline = time.monotonic() + 20
    while len(node.events("dht_listening")) < 2:  # logged just after the address line
        assert time.monotonic() < deadline, node.log_tail()
        time.sleep(0.1)
    assert node.events("dht_listening")[-1]["remembered"] >= 1  # good DHT nodes kept across the restart
    deadline = time.monotonic() + 30
    while not [e for e in node.events("dht_record_published") if e["seq"] >= 2 and e["stored"] > 0]:
        assert time.monotonic() < deadline, node.log_tail()
        time.sleep(0.1)
    bootstrap = f"{boot[4][0]}:{boot[4][1]}"
    with Client(peers=[peer_id], dht_bootstrap=[bootstrap]) as client:  # a bare peer id: no host given
        assert client.peers() == [node.address]
        result = client.submit(hello_bytes, b"again")
    assert result.stdout == b"niaga" and result.peer == peer_id
    # the same through the CLI, and the operator's view
    env_cmd = [sys.executable, "-m", "pyphase"]
    out = subprocess.run(
        [
            *env_cmd,
            "submit",
            "examples/hello/hello.wasm",
            "--input",
            "cli",
            "--peer",
            peer_id,
            "--dht-bootstrap",
            bootstrap,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ilc")
    out = subprocess.run(
        [*env_cmd, "dht", "record", peer_id, "--dht-bootstrap", bootstrap, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert record["address"] == node.address and record["seq"] >= 2


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_the_api_lists_the_peers_the_dht_rendezvous_found(dht_network) -> None:
    _, nodes = dht_network
    deadline = time.monotonic() + 30
    url = (nodes[0].data_dir / "api").read_text().strip()
    others = {node.address.split("@")[1] for node in nodes[1:]}
    listed: set[str] = set()
    while not others <= listed and time.monotonic() < deadline:
        with urllib.request.urlopen(url + "/v1/peers", timeout=30) as resp:
            listed = {p["name"] for p in json.load(resp)["peers"] if p["source"] == "dht"}
        time.sleep(0.5)
    assert others <= listed, (others, listed)


def test_nodes_on_consecutive_ports_keep_their_own_ports(tmp_path: Path) -> None:
    """One port number per node: phase/1 (TCP), the DHT and the record query (UDP) all on P; the HTTP API far
    from it. So nodes on P, P + 1, P + 2 (as acceptance's remote.sh starts them) all start, each on its
    defaults, and each answers the record query on its own P."""
    import socket

    host = dht_host()
    for _ in range(50):
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port + 1002 <= 65535:
            break
    nodes: list[NodeProc] = []
    with private_dht(2) as routers:
        boot = endpoints(routers)
        try:
            for i in range(3):
                node = NodeProc(
                    tmp_path / f"n{i}",
                    host,
                    sandbox=False,
                    workers=1,
                    extra=("--dht-bootstrap", f"{boot[0][0]}:{boot[0][1]}"),
                )
                node.port = port + i
                nodes.append(node.start())
            for i, node in enumerate(nodes):
                listening = node.wait_event("dht_listening")
                assert listening["address"] == f"{host}:{port + i}" and listening["shared_port"], listening
                assert (node.data_dir / "api").read_text().strip() == f"http://127.0.0.1:{port + i + 1000}"
            for i, node in enumerate(nodes):
                node.wait_event("dht_record_published", timeout=30)
                answers = dht.query_records([(host, port + i)], timeout=2.0)
                assert answers[(host, port + i)].peer_id == node.address.split("@")[0]
        finally:
            for node in nodes:
                node.stop()
