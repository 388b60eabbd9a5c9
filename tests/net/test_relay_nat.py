"""Relays behind real NATs (the NAT lab, tests/net/natlab.py): a node behind a router without UPnP and one
behind symmetric NAT cannot be reached directly, and are reached through a relay on the WAN by a client
behind a NAT of its own; what the relay forwards carries no plaintext of the job."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from natlab import natlab_skip_reason  # noqa: E402
from net_support import NodeProc, lab_relay  # noqa: E402

from pyphase.net.addresses import RELAY_PORT_OFFSET  # noqa: E402

RELAY_DEFAULT_PORT = 7465 + RELAY_PORT_OFFSET  # a relay started with --relay alone

pytestmark = pytest.mark.skipif(natlab_skip_reason() is not None, reason=natlab_skip_reason() or "")

ROOT = Path(__file__).resolve().parents[2]

# Run by the client inside its namespace: each job through the relay, and one direct attempt per node.
CLIENT = textwrap.dedent(
    """
    import json, sys
    from pyphase import Client
    from pyphase.errors import PhaseError
    module = open(sys.argv[1], "rb").read()
    secret = bytes.fromhex(sys.argv[2])
    out = {}
    for address in sys.argv[3:]:
        kind = "relayed" if "@relay/" in address else "direct"
        try:
            with Client(peers=[address], connect_timeout=3) as client:
                r = client.submit(module, secret, retries=0, timeout=10)
            out[address] = {"ok": r.stdout == secret[::-1], "peer": r.peer, "signer": r.receipt["node"]["peer_id"]}
        except PhaseError as exc:
            out[address] = {"error": str(exc)[:300]}
    print(json.dumps(out))
    """
)


def test_nodes_behind_nat_reached_through_a_relay_by_a_client_behind_nat(natlab, tmp_path, hello_bytes) -> None:
    lab = natlab
    plain = lab.router("plain")  # no UPnP: nothing can be mapped
    sym = lab.router("sym", symmetric=True)
    home = lab.router("home")
    relay_host = lab.host("relay")  # on the WAN: reachable
    tap_host = lab.host("tap")
    behind_plain = lab.host("n1", behind=plain)
    behind_sym = lab.host("n2", behind=sym)
    client_host = lab.host("cl", behind=home)

    env = {"PYTHONPATH": str(ROOT)}
    relay = lab_relay(relay_host, tmp_path / "relay", env)
    relay.start()
    relay.wait_event("relay_listening")
    dump = tmp_path / "forwarded.bin"
    tap = Path(__file__).with_name("relay_tap.py")
    tap_host.popen([sys.executable, str(tap), f"{tap_host.ip}:7468", f"{relay_host.ip}:7468", str(dump)])
    via = f"{tap_host.ip}:7468"
    nodes = []
    for name, host in (("n1", behind_plain), ("n2", behind_sym)):
        node = NodeProc(
            tmp_path / name,
            host.ip,
            sandbox=False,
            workers=1,
            extra=("--via-relay", via, "--no-api"),
            prefix=tuple(host.exec_prefix),
            env=env,
        )
        node.port = 7465
        nodes.append(node)
    try:
        for node in nodes:
            node.start()  # should the tap not listen yet, the node tries again with back-off
            node.wait_event("relay_reserved", timeout=30)
        reserved = relay.wait_event_count("relay_reserved", 2)
        assert {e["address"] for e in reserved} == {tap_host.ip}  # the relay sees the tap in front of it
        secret = os.urandom(512)
        peer_ids = [n.address.split("@")[0] for n in nodes]
        addresses = [f"{p}@relay/{via}" for p in peer_ids]
        # the same nodes dialled directly: their routers' WAN addresses (nothing mapped) and their own
        router_ips = [plain.wan_ip, sym.wan_ip]
        direct = [f"{p}@{ip}:7465" for p, ip in zip(peer_ids, router_ips)]
        direct += [f"{p}@{n.host}:7465" for p, n in zip(peer_ids, nodes)]
        out = client_host.run(
            [sys.executable, "-c", CLIENT, str(ROOT / "examples/hello/hello.wasm"), secret.hex(), *addresses, *direct],
            timeout=120,
            env=dict(os.environ, **env),
        )
        results = json.loads(out.stdout)
        for address, peer_id in zip(addresses, peer_ids):
            assert results[address].get("ok"), results[address]
            assert results[address]["peer"] == results[address]["signer"] == peer_id
        for address in direct:
            assert "error" in results[address], (address, results[address])
        for node in nodes:
            assert node.wait_event("circuit_opened")["role"] == "node"
        forwarded = dump.read_bytes()
        assert len(forwarded) > 2 * len(secret)  # both jobs went through the relay
        for plain_bytes in (secret[:32], secret[::-1][:32], hello_bytes[len(hello_bytes) // 2 :][:48]):
            assert plain_bytes not in forwarded
    finally:
        for node in nodes:
            node.stop()
        relay.stop()


def test_an_unreachable_verdict_finds_a_relay_on_the_dht_and_clients_follow_the_record(natlab, tmp_path) -> None:
    """The whole way with no relay named anywhere: nodes behind a router without UPnP and behind symmetric NAT
    learn by dial-back that they are unreachable, find the relay's rendezvous on the DHT, reserve, republish
    their records naming it; a client behind its own NAT resolves each peer id and runs a job."""
    lab = natlab
    plain, sym, home = lab.router("plain"), lab.router("sym", symmetric=True), lab.router("home")
    bootstrap = lab.dht_bootstrap()
    env = {"PHASE_DHT_ALLOW": lab.env()["PHASE_DHT_ALLOW"], "PLASMD_DHT_REFRESH": "5s"}

    def start(name: str, host, *extra: str) -> NodeProc:
        node = NodeProc(
            tmp_path / name,
            host.ip,
            sandbox=False,
            workers=1,
            prefix=tuple(host.exec_prefix),
            extra=("--dht-bootstrap", bootstrap, "--no-api", *extra),
            env=env,
        )
        node.port = 7465
        return node.start()

    nodes: list[NodeProc] = []
    try:
        relay_host = lab.host("relay")
        relay = start("relay", relay_host, "--relay")
        nodes.append(relay)
        relay.wait_event("dht_announced", timeout=30)
        behind = [start("n1", lab.host("n1", behind=plain)), start("n2", lab.host("n2", behind=sym))]
        nodes += behind
        for node in behind:
            assert node.wait_event("relay_fallback", timeout=90)["verdict"] == "unreachable"
            assert node.wait_event("relay_found", timeout=60)["relays"] == [f"{relay_host.ip}:{RELAY_DEFAULT_PORT}"]
            node.wait_event("relay_reserved", timeout=30)
            deadline = time.monotonic() + 60
            while not any(e.get("relays") for e in node.events("dht_record_refreshed")):
                assert time.monotonic() < deadline, node.log_tail(3000)
                time.sleep(0.5)
        client = lab.host("cl", behind=home)
        phase = str(Path(sys.executable).with_name("phase"))
        client_env = lab.env(PHASE_DHT_LISTEN=f"{client.ip}:0")
        for node in behind:
            peer_id = node.address.split("@")[0]
            deadline = time.monotonic() + 60
            while True:  # the DHT is eventually consistent: wait until a lookup from here sees the new record
                out = client.run(
                    [phase, "dht", "record", peer_id, "--dht-bootstrap", bootstrap, "--json"],
                    check=False,
                    env=client_env,
                )
                doc = json.loads(out.stdout) if out.returncode == 0 else {}
                if doc.get("relays") or time.monotonic() > deadline:
                    break
                time.sleep(1)
            assert doc.get("relays") == [f"{relay_host.ip}:{RELAY_DEFAULT_PORT}"] and doc["addresses"] == [], (
                out.stdout + out.stderr
            )
            assert doc["address"] == f"{peer_id}@relay/{relay_host.ip}:{RELAY_DEFAULT_PORT}"
            out = client.run(
                [phase, "submit", str(ROOT / "examples/hello/hello.wasm"), "--input", "nat", "--peer", peer_id]
                + ["--dht-bootstrap", bootstrap, "--json"],
                check=False,
                timeout=90,
                env=client_env,
            )
            assert out.returncode == 0, out.stdout + out.stderr + node.log_tail(2000)
            assert json.loads(out.stdout)["peer"] == peer_id
            assert node.wait_event("circuit_opened")["role"] == "node"
    finally:
        for node in nodes:
            node.stop()
