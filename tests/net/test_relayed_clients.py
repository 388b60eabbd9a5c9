"""A client reached through a relay counts under its own address (as the relay reported it), not under the
loopback address of the node's relay splice: the node's per-address shares (docs/NETWORK.md, "What a
stranger may take of a node") hold each relayed client apart. Real plasmd processes; on loopback (any user)
and in the NAT lab (root), where two relayed clients at different addresses, one behind its own NAT, each
get their own share while a third that shares an address with the first does not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import zmq
import zmq.utils.z85

sys.path.insert(0, str(Path(__file__).resolve().parent))

from natlab import natlab_skip_reason  # noqa: E402
from net_support import NodeProc, fixed_port_relay, lab_relay, loopback_host, relayed_node, spin_input  # noqa: E402

from pyphase import Client  # noqa: E402
from pyphase.errors import PhaseError  # noqa: E402
from pyphase.identity import Identity  # noqa: E402
from pyphase.limits import Limits  # noqa: E402
from pyphase.net import wire  # noqa: E402
from pyphase.net.reachability import _curve_public  # noqa: E402
from pyphase.net.socks import SocksRelay  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SPIN_S = 300_000  # thousands of loop turns: 1.5 s in a node thread idle, more when the machine is loaded
LONG = Limits(timeout_ms=60_000)


def _hold_a_job(address: str, module: bytes, out: dict) -> threading.Thread:
    def run() -> None:
        try:
            with Client(peers=[address], connect_timeout=5) as client:
                out["result"] = client.submit(module, spin_input(SPIN_S), limits=LONG, retries=0, timeout=90)
        except PhaseError as exc:
            out["error"] = str(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _ask_dial_back(endpoint: str, peer_id: str) -> wire.Message:
    """A ``dial?`` over ``endpoint`` (a ZeroMQ endpoint that reaches the node), with a throwaway key."""
    me = Identity.generate()
    public, secret = me.curve_keypair()
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.curve_serverkey = zmq.utils.z85.encode(_curve_public(peer_id))
    sock.curve_publickey = zmq.utils.z85.encode(public)
    sock.curve_secretkey = zmq.utils.z85.encode(secret)
    try:
        sock.connect(endpoint)
        sock.send_multipart(wire.encode("dial?", nonce=os.urandom(16), port=9))
        assert sock.poll(10_000), "no answer to dial?"
        return wire.decode(sock.recv_multipart())
    finally:
        sock.close()


def test_a_relayed_client_has_its_own_share_and_no_dial_back(tmp_path, spin_bytes, hello_bytes) -> None:
    relay, relay_port = fixed_port_relay(tmp_path / "relay", loopback_host())
    relay.start()
    via = f"{relay.host}:{relay_port}"
    node = relayed_node(tmp_path / "node", via, workers=2, env={"PLASMD_ADDRESS_JOBS": "1"})
    try:
        node.start()
        node.wait_event("relay_reserved")
        peer_id = node.address.split("@")[0]
        relayed = f"{peer_id}@relay/{via}"
        held: dict = {}
        thread = _hold_a_job(relayed, spin_bytes, held)  # the relayed client takes its address's one job
        node.wait_event("offer")
        # another key at the same relayed address: that address's share is taken
        with Client(peers=[relayed], connect_timeout=5) as second, pytest.raises(PhaseError) as refused:
            second.submit(hello_bytes, b"second", retries=0, timeout=20)
        assert "this address already has 1 jobs here" in str(refused.value)
        # a direct client from 127.0.0.1, the address the node's relay splice used to bring every relayed
        # client from: its share is its own
        with Client(peers=[node.address], connect_timeout=5) as direct:
            result = direct.submit(hello_bytes, b"direct", retries=0, timeout=20)
        assert result.stdout == b"tcerid"
        thread.join(60)
        assert held.get("result") is not None and held["result"].status == "ok", held
        names = {e["address"] for e in node.events("peer_connected")}
        assert f"127.0.0.1 via {via}" in names and "127.0.0.1" in names, names
        assert node.wait_event("circuit_opened")["client"] == f"127.0.0.1 via {via}"
        # the relay's word is no address to dial: a dial back asked through it is refused, not dialled
        forwarder = SocksRelay(None, 5.0)
        try:
            answer = _ask_dial_back(forwarder.endpoint(relay.host, relay_port, via_peer=peer_id), peer_id)
        finally:
            forwarder.close()
        assert answer.type == "dial" and answer["ok"] is False
        assert "no dial back through a relay" in answer["detail"]
        assert not node.events("dial_back")
    finally:
        node.stop()
        relay.stop()


# Run in a client's namespace: one job (a spin of the given length, or hello), the outcome as JSON.
LAB_CLIENT = textwrap.dedent(
    """
    import json, struct, sys
    from pyphase import Client
    from pyphase.errors import PhaseError
    from pyphase.limits import Limits
    module = open(sys.argv[1], "rb").read()
    data = struct.pack("<I", int(sys.argv[3])) if int(sys.argv[3]) else b"lab"
    try:
        with Client(peers=[sys.argv[2]], connect_timeout=5) as client:
            r = client.submit(module, data, limits=Limits(timeout_ms=60_000), retries=0, timeout=90)
        print(json.dumps({"ok": r.status == "ok", "stdout": r.stdout.hex()}))
    except PhaseError as exc:
        print(json.dumps({"error": str(exc)[:300]}))
    """
)


# Run in a client's namespace: open circuits to the node and hold them; each outcome as JSON.
LAB_CIRCUITS = textwrap.dedent(
    """
    import json, socket, sys
    from pyphase.net.relay import RelayError, open_circuit
    host, port = sys.argv[1].rsplit(":", 1)
    held, out = [], []
    for _ in range(int(sys.argv[3])):
        sock = socket.create_connection((host, int(port)), timeout=5)
        held.append(sock)
        try:
            open_circuit(sock, sys.argv[2], 5)
            out.append("ok")
        except RelayError as exc:
            out.append(str(exc))
    print(json.dumps(out))
    """
)


@pytest.mark.skipif(natlab_skip_reason() is not None, reason=natlab_skip_reason() or "")
def test_relayed_clients_at_different_addresses_each_have_a_share(natlab, tmp_path, spin_bytes) -> None:
    """A node behind a router without UPnP, reached only through a relay on the WAN, takes one job per
    address: a client on the WAN holds its share (a job that runs until that client goes); a second key at
    that address is refused; a client behind its own NAT (another address) still gets its job run. Before, all three were one loopback address. And the
    relay's own per-address circuit limit holds for the client behind the NAT, by its NAT's address."""
    lab = natlab
    plain, home = lab.router("plain"), lab.router("home")
    relay_host, c1, node_host, c2 = (
        lab.host("relay"),
        lab.host("c1"),
        lab.host("n1", behind=plain),
        lab.host("c2", behind=home),
    )
    env = {"PYTHONPATH": str(ROOT)}
    relay = lab_relay(relay_host, tmp_path / "relay", {**env, "PLASMD_RELAY_ADDRESS_CIRCUITS": "2"})
    node = NodeProc(
        tmp_path / "n1",
        node_host.ip,
        workers=2,  # sandboxed: the held job is stopped when its client goes
        extra=("--via-relay", f"{relay_host.ip}:7468", "--no-api"),
        prefix=tuple(node_host.exec_prefix),
        env={**env, "PLASMD_ADDRESS_JOBS": "1"},
    )
    node.port = 7465
    spin = tmp_path / "spin.wasm"
    spin.write_bytes(spin_bytes)
    try:
        relay.start()
        relay.wait_event("relay_listening")
        node.start()
        node.wait_event("relay_reserved", timeout=30)
        target = f"{node.address.split('@')[0]}@relay/{relay_host.ip}:7468"
        client_env = dict(os.environ, **env)
        hog = c1.popen(
            [sys.executable, "-c", LAB_CLIENT, str(spin), target, str(0xFFFFFFFF)],  # runs until killed
            stdout=subprocess.DEVNULL,
            env=client_env,
        )
        node.wait_event("offer", timeout=30)
        second = c1.run([sys.executable, "-c", LAB_CLIENT, str(spin), target, "0"], env=client_env, timeout=60)
        behind_nat = c2.run([sys.executable, "-c", LAB_CLIENT, str(spin), target, "0"], env=client_env, timeout=60)
        hog.kill()
        hog.wait()
        refused = json.loads(second.stdout.splitlines()[-1])
        assert "this address already has 1 jobs here" in refused.get("error", ""), refused
        ran = json.loads(behind_nat.stdout.splitlines()[-1])
        assert ran.get("ok") and bytes.fromhex(ran["stdout"]) == b"lab", ran
        assert node.wait_event("cancelled", timeout=30)["job"] == node.events("offer")[0]["job"]  # the hog's
        via = f"{relay_host.ip}:7468"
        names = {e["client"] for e in node.events("circuit_opened")}
        assert names == {f"{c1.ip} via {via}", f"{home.wan_ip} via {via}"}, names  # c2 as its NAT shows it
        peer_id = node.address.split("@")[0]
        out = c2.run([sys.executable, "-c", LAB_CIRCUITS, via, peer_id, "3"], env=client_env, timeout=60)
        opened = json.loads(out.stdout.splitlines()[-1])
        assert opened[:2] == ["ok", "ok"], opened
        assert opened[2].startswith("relay_busy") and f"2 circuits open from {home.wan_ip}" in opened[2], opened
    finally:
        node.stop()
        relay.stop()
