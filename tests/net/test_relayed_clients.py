"""A client reached through a relay counts under its own address (as the relay reported it), not under the
loopback address of the node's relay splice: the node's per-address shares (docs/NETWORK.md, "What a
stranger may take of a node") hold each relayed client apart. Real plasmd processes; on loopback (any user)
and in the NAT lab (root), where two relayed clients at different addresses, one behind its own NAT, each
get their own share while a third that shares an address with the first does not."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import zmq
import zmq.utils.z85

sys.path.insert(0, str(Path(__file__).resolve().parent))

from natlab import natlab_skip_reason  # noqa: E402
from net_support import NodeProc, fixed_port_relay, loopback_host, spin_input  # noqa: E402

from pyphase import Client  # noqa: E402
from pyphase.errors import PhaseError  # noqa: E402
from pyphase.identity import Identity  # noqa: E402
from pyphase.net import wire  # noqa: E402
from pyphase.net.reachability import _curve_public  # noqa: E402
from pyphase.net.socks import SocksRelay  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SPIN_S = 300_000  # thousands of loop turns: 1.5 s in a node thread idle, a few s loaded (limit 10 s)


def _hold_a_job(address: str, module: bytes, out: dict) -> threading.Thread:
    def run() -> None:
        try:
            with Client(peers=[address], connect_timeout=5) as client:
                out["result"] = client.submit(module, spin_input(SPIN_S), retries=0, timeout=60)
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
    node = NodeProc(
        tmp_path / "node",
        loopback_host(),
        sandbox=False,
        workers=2,
        extra=("--via-relay", via),
        env={"PLASMD_ADDRESS_JOBS": "1"},
    )
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
    module = open(sys.argv[1], "rb").read()
    data = struct.pack("<I", int(sys.argv[3])) if int(sys.argv[3]) else b"lab"
    print("started", flush=True)
    try:
        with Client(peers=[sys.argv[2]], connect_timeout=5) as client:
            r = client.submit(module, data, retries=0, timeout=60)
        print(json.dumps({"ok": r.status == "ok", "stdout": r.stdout.hex()}))
    except PhaseError as exc:
        print(json.dumps({"error": str(exc)[:300]}))
    """
)


@pytest.mark.skipif(natlab_skip_reason() is not None, reason=natlab_skip_reason() or "")
def test_relayed_clients_at_different_addresses_each_have_a_share(natlab, tmp_path, spin_bytes) -> None:
    """A node behind a router without UPnP, reached only through a relay on the WAN, takes one job per
    address: a client on the WAN holds its share; a second key at that address is refused; a client behind
    its own NAT (another address) still gets its job run. Before, all three were one loopback address."""
    lab = natlab
    plain, home = lab.router("plain"), lab.router("home")
    relay_host, c1, node_host, c2 = (
        lab.host("relay"),
        lab.host("c1"),
        lab.host("n1", behind=plain),
        lab.host("c2", behind=home),
    )
    env = {"PYTHONPATH": str(ROOT)}
    relay = NodeProc(
        tmp_path / "relay",
        relay_host.ip,
        sandbox=False,
        workers=1,
        extra=("--relay", "--relay-listen", f"{relay_host.ip}:7468", "--no-api"),
        prefix=tuple(relay_host.exec_prefix),
        env=env,
    )
    relay.port = 7465
    node = NodeProc(
        tmp_path / "n1",
        node_host.ip,
        sandbox=False,
        workers=2,
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
            [sys.executable, "-c", LAB_CLIENT, str(spin), target, str(SPIN_S)],
            stdout=-1,
            text=True,
            env=client_env,
        )
        node.wait_event("offer", timeout=30)
        second = c1.run([sys.executable, "-c", LAB_CLIENT, str(spin), target, "0"], env=client_env, timeout=60)
        behind_nat = c2.run([sys.executable, "-c", LAB_CLIENT, str(spin), target, "0"], env=client_env, timeout=60)
        hog_out, _ = hog.communicate(timeout=90)
        refused = json.loads(second.stdout.splitlines()[-1])
        assert "this address already has 1 jobs here" in refused.get("error", ""), refused
        ran = json.loads(behind_nat.stdout.splitlines()[-1])
        assert ran.get("ok") and bytes.fromhex(ran["stdout"]) == b"lab", ran
        assert json.loads(hog_out.splitlines()[-1]).get("ok"), hog_out
        via = f"{relay_host.ip}:7468"
        names = {e["client"] for e in node.events("circuit_opened")}
        assert names == {f"{c1.ip} via {via}", f"{home.wan_ip} via {via}"}, names  # c2 as its NAT shows it
    finally:
        node.stop()
        relay.stop()
