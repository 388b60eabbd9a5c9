"""Reachability by dial-back (pyphase/net/reachability.py).

On loopback (any user): a real plasmd answers ``dial?`` by dialing only the address the request came from,
with CURVE to the requester's key, within its bounds, and cannot be pointed at anyone else. In the NAT lab
(root): a public node, a node behind a UPnP router and one behind a router without UPnP reach the verdicts
``public``, ``mapped`` and ``unreachable``, and the verdict is in each record (``phase dht record``).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq
import zmq.utils.monitor
import zmq.utils.z85

from natlab import NatLab, natlab_skip_reason
from net_support import NodeProc
from pyphase.identity import Identity
from pyphase.net.addresses import API_PORT_OFFSET
from pyphase.net import wire
from pyphase.net.reachability import PER_ADDRESS_PER_MINUTE, DialAnswer, ask_dial_back, verdict
from test_portmap import lab_env

PORT = 7465


def _requester(node: NodeProc, identity: Identity) -> zmq.Socket:
    from pyphase.net.reachability import _curve_public

    public, secret = identity.curve_keypair()
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.curve_serverkey = zmq.utils.z85.encode(_curve_public(node.address.split("@")[0]))
    sock.curve_publickey = zmq.utils.z85.encode(public)
    sock.curve_secretkey = zmq.utils.z85.encode(secret)
    sock.connect(f"tcp://{node.host}:{node.port}")
    return sock


def _ask(sock: zmq.Socket, **fields) -> wire.Message:
    sock.send_multipart(wire.encode("dial?", **fields))
    assert sock.poll(10_000), "no answer to dial?"
    return wire.decode(sock.recv_multipart())


def test_dial_back_reaches_the_requester_only_and_is_bounded(start_nodes) -> None:
    (node,) = start_nodes(1, sandbox=False)
    me = Identity.generate()
    # the requester's own listener: a CURVE ROUTER with its key, on 127.0.0.1 (the address it asks from)
    ctx = zmq.Context.instance()
    listener = ctx.socket(zmq.ROUTER)
    listener.linger = 0
    public, secret = me.curve_keypair()
    listener.curve_server = True
    listener.curve_publickey = zmq.utils.z85.encode(public)
    listener.curve_secretkey = zmq.utils.z85.encode(secret)
    port = listener.bind_to_random_port("tcp://127.0.0.1")
    heard: dict[bytes, threading.Event] = {}

    stop = threading.Event()

    def pump() -> None:  # what plasmd's listener does with a dialback: mark its nonce heard
        while not stop.is_set():
            if listener.poll(100):
                msg = wire.decode(listener.recv_multipart()[1:])
                if msg.type == "dialback" and msg["nonce"] in heard:
                    heard[msg["nonce"]].set()

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    try:
        answers = ask_dial_back(ctx, me, [(node.address.split("@")[0], node.host, node.port)], port, heard)
        assert len(answers) == 1 and answers[0].heard and answers[0].ok, answers
        assert answers[0].seen == "127.0.0.1"
        sock = _requester(node, me)
        # a plain TCP server on the requester's address: the node connects there (and only there)
        plain = socket.create_server(("127.0.0.1", 0))
        plain.settimeout(5)
        got = _ask(sock, nonce=os.urandom(16), port=plain.getsockname()[1])
        conn, source = plain.accept()
        conn.close()
        assert source[0] == "127.0.0.1"
        assert got["ok"] is False and ("handshake" in got["detail"] or "no connection" in got["detail"])
        # there is no way to name another host: an extra field is malformed, port 0 is refused
        sock.send_multipart(
            [wire._packer.pack({"v": 1, "t": "dial?", "nonce": os.urandom(16), "port": 80, "host": "192.0.2.1"})]
        )
        assert sock.poll(5000)
        err = wire.decode(sock.recv_multipart())
        assert err.type == "error" and err["code"] == "malformed"
        assert _ask(sock, nonce=os.urandom(16), port=0)["ok"] is False
        # bounded: at most PER_ADDRESS_PER_MINUTE dials a minute to one address (3 used above), in flight one
        outcomes = [_ask(sock, nonce=os.urandom(16), port=port)["detail"] for _ in range(PER_ADDRESS_PER_MINUTE)]
        assert any("a minute" in d for d in outcomes), outcomes
        # and the node still serves
        assert node.alive
        dials = node.events("dial_back")
        assert all(e["address"].startswith("127.0.0.1:") for e in dials)
        assert len(dials) <= PER_ADDRESS_PER_MINUTE
        plain.close()
    finally:
        stop.set()
        t.join(2)
        listener.close()


@pytest.mark.skipif(natlab_skip_reason() is not None, reason=natlab_skip_reason() or "")
def test_verdicts_public_mapped_unreachable_in_the_nat_lab(natlab: NatLab, tmp_path: Path) -> None:
    lab = natlab
    upnp = lab.router("r1", upnp=True)
    plain = lab.router("r2")
    symmetric = lab.router("r3", symmetric=True)
    bootstrap = lab.dht_bootstrap()
    hosts = {
        "w1": lab.host("w1"),
        "w2": lab.host("w2"),
        "h1": lab.host("h1", behind=upnp),
        "h2": lab.host("h2", behind=plain),
        "h3": lab.host("h3", behind=symmetric),
    }
    nodes: dict[str, NodeProc] = {}
    try:
        for name in ("w1", "w2", "h1", "h2", "h3"):
            host = hosts[name]
            node = NodeProc(
                tmp_path / name,
                host.ip,
                sandbox=False,
                prefix=tuple(host.exec_prefix),
                extra=("--dht-bootstrap", bootstrap, *(() if name == "h1" else ("--no-api",))),
                env={**lab_env(lab), "PLASMD_DHT_REFRESH": "5s"},
            )
            node.port = PORT
            nodes[name] = node.start()
            if name == "w2":  # the public nodes are on the rendezvous before the others ask
                for n in nodes.values():
                    n.wait_event("dht_announced", timeout=30)
        want = {
            "w1": ("public", f"{hosts['w1'].ip}:{PORT}"),
            "h1": ("mapped", f"{upnp.wan_ip}:{PORT}"),
            "h2": ("unreachable", None),
            "h3": ("unreachable", None),
        }
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            last = {n: (nodes[n].events("reachability") or [{}])[-1] for n in want}
            if all((last[n].get("verdict"), last[n].get("address")) == want[n] for n in want):
                break
            time.sleep(0.5)
        for name, (verdict, address) in want.items():
            event = (nodes[name].events("reachability") or [{}])[-1]
            assert (event.get("verdict"), event.get("address")) == (verdict, address), (
                name,
                nodes[name].log_tail(3000),
            )
            assert event["asked"] >= 1
        assert "did not arrive" in last["h2"]["why"] or "no connection" in last["h2"]["why"]
        # the node's own HTTP API says the same (GET /v1/node, on loopback inside its namespace)
        api = hosts["h1"].run(
            [
                sys.executable,
                "-c",
                f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{PORT + API_PORT_OFFSET}/v1/node').read().decode())",
            ]
        )
        shown = json.loads(api.stdout)["reachability"]
        assert shown["verdict"] == "mapped" and shown["address"] == f"{upnp.wan_ip}:{PORT}"
        assert any(a["heard"] for a in shown["asked"])
        # an operator anywhere sees it in the record
        peer_id = nodes["h1"].address.split("@")[0]
        client = lab.host("c")
        deadline = time.monotonic() + 30
        while True:
            out = client.run(
                [
                    str(Path(sys.executable).with_name("phase")),
                    "dht",
                    "record",
                    peer_id,
                    "--dht-bootstrap",
                    bootstrap,
                    "--json",
                ],
                check=False,
                env=lab.env(PHASE_DHT_LISTEN=f"{client.ip}:0"),
            )
            doc = json.loads(out.stdout) if out.returncode == 0 else {}
            if doc.get("caps", {}).get("reach") == "mapped" or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert doc.get("caps", {}).get("reach") == "mapped", out.stdout + out.stderr
        assert doc["addresses"][0] == f"{upnp.wan_ip}:{PORT}"
    finally:
        for node in nodes.values():
            node.stop()


def test_verdict_trusts_only_dial_backs_heard() -> None:
    said_ok = DialAnswer("peer-a", heard=False, ok=True, seen="198.18.0.11", detail="")
    lost = DialAnswer("peer-b", heard=False, ok=False, seen="198.18.0.11", detail="no connection")
    heard = DialAnswer("peer-c", heard=True, ok=True, seen="198.18.0.11", detail="")
    # a peer's word is not enough: a dial back that never arrived is no reachability
    got = verdict([said_ok, lost], {"10.1.0.10"}, "198.18.0.11:7465", 7465)
    assert got["verdict"] == "unreachable" and "no connection" in got["why"]
    assert verdict([], set(), None, 7465)["why"] == "no peer to ask"
    assert verdict([heard], {"198.18.0.11"}, None, 7465) == {
        "verdict": "public",
        "address": "198.18.0.11:7465",
        "why": "reachable at its own address",
    }
    assert verdict([heard], {"10.1.0.10"}, "198.18.0.11:40000", 40000)["address"] == "198.18.0.11:40000"
    forwarded = verdict([heard], {"10.1.0.10"}, None, 7465)
    assert forwarded["verdict"] == "mapped" and "not by UPnP" in forwarded["why"]
