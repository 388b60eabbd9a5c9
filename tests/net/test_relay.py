"""Relays on loopback, with real processes: a node reached only through a relay (its DHT record names the
relay, not itself), found by peer id through a private DHT; what the relay forwards is ciphertext; the
relay's limits hold and hostile peers cannot take it down."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dht_support import dht_host, endpoints, private_dht  # noqa: E402
from net_support import NodeProc, fixed_port_relay, loopback_host  # noqa: E402
from relay_tap import Tap  # noqa: E402

from pyphase import Client
from pyphase.errors import PhaseError, RecordError
from pyphase.identity import Identity
from pyphase.net import dht, records
from pyphase.net.relay import RelayError, encode_frame, open_circuit, proof_message, recv_frame


def _relay_port(node: NodeProc) -> int:
    return int(node.wait_event("relay_listening")["address"].rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def relayed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Four DHT routers; a relay (plasmd --relay); a tap in front of it; a node reached only via the tap."""
    tmp = tmp_path_factory.mktemp("relay")
    procs: list[NodeProc] = []
    with private_dht(4) as routers:
        boot = [f"{h}:{p}" for h, p in endpoints(routers)]
        try:
            relay_host = dht_host()
            relay = NodeProc(
                tmp / "relay",
                relay_host,
                sandbox=False,
                workers=1,
                extra=("--relay", "--relay-listen", f"{relay_host}:0", "--dht-bootstrap", *boot[:2]),
                env={"PLASMD_RELAY_CIRCUIT_BYTES": "1MiB", "PLASMD_RELAY_ADDRESS_CIRCUITS": "6"},
            ).start()
            procs.append(relay)
            tap = Tap((relay_host, _relay_port(relay)))
            node = NodeProc(
                tmp / "node",
                dht_host(),
                sandbox=False,
                workers=1,
                extra=("--via-relay", f"127.0.0.1:{tap.port}", "--dht-bootstrap", *boot[2:]),
            ).start()
            procs.append(node)
            node.wait_event("relay_reserved")
            published = node.wait_event("dht_record_published", timeout=30)
            assert published["stored"] >= 1, published
            yield {"boot": boot, "relay": relay, "node": node, "tap": tap}
            tap.close()
        finally:
            for p in procs:
                p.stop()


def test_node_reached_only_through_the_relay_and_the_relay_sees_ciphertext(relayed, hello_bytes) -> None:
    node, relay, tap = relayed["node"], relayed["relay"], relayed["tap"]
    peer_id = node.address.split("@")[0]
    with dht.client_dht([relayed["boot"][3]]) as client_dht:
        record = dht.resolve_peer(client_dht, peer_id)
    assert record.addresses == () and record.relays == (f"127.0.0.1:{tap.port}",)
    assert record.address == f"{peer_id}@relay/127.0.0.1:{tap.port}"
    secret = os.urandom(16).hex().encode() * 64  # 2 KiB no one could mistake
    with Client(peers=[peer_id], dht_bootstrap=[relayed["boot"][3]]) as client:
        result = client.submit(hello_bytes, secret)
    assert result.status == "ok" and result.stdout == secret[::-1]
    assert result.peer == peer_id and result.receipt["node"]["peer_id"] == peer_id
    assert node.wait_event("circuit_opened")["role"] == "node"
    assert relay.wait_event("circuit_opened")["peer"] == peer_id
    # the client closed the circuit its resolution opened to look, and then the job's: the relay counts what each carried
    relay.wait_event_count("circuit_closed", 2)
    with tap.lock:
        seen = bytes(tap.seen)
    assert len(seen) > len(secret) + len(hello_bytes)  # the job did pass through the relay...
    for plain in (secret[:64], secret[::-1][:64], hello_bytes[len(hello_bytes) // 2 :][:48]):
        assert plain not in seen  # ...as ciphertext only
    assert max(e["bytes"] for e in relay.events("circuit_closed")) >= len(secret)
    # and the relay's /metrics (its HTTP API on loopback) counts the same
    api = relay.wait_event("api_listening")["url"].rstrip("/")
    with urllib.request.urlopen(f"{api}/metrics", timeout=10) as answer:
        metrics = answer.read().decode()
    assert 'phase_relay_reservations_total{role="relay"} 1.0' in metrics
    carried = [line for line in metrics.splitlines() if line.startswith('phase_relay_bytes_total{role="relay"}')]
    assert carried and float(carried[0].split()[-1]) >= len(secret)


def test_relay_limits_and_hostile_peers(relayed, hello_bytes) -> None:
    node, relay, tap = relayed["node"], relayed["relay"], relayed["tap"]
    peer_id = node.address.split("@")[0]
    relay_addr = ("127.0.0.1", tap.port)

    def send_raw(data: bytes) -> bytes:
        with socket.create_connection(relay_addr, timeout=5) as s:
            s.sendall(data)
            try:
                return s.recv(4096)
            except OSError:
                return b""

    def answer(data: bytes) -> dict:
        with socket.create_connection(relay_addr, timeout=5) as s:
            s.sendall(data)
            return recv_frame(s)

    # hostile bytes: each gets a clear refusal (or a close), never a crash
    assert b"bad_request" in send_raw(struct.pack(">H", 16) + os.urandom(16))
    assert b"bad_request" in send_raw(struct.pack(">H", 60000) + b"x" * 100)
    assert answer(struct.pack(">H", 3) + b"\xc1\xc1\xc1")["reason"] == "bad_request"
    assert answer(encode_frame("connect", peer=Identity.generate().peer_id))["reason"] == "no_reservation"
    assert answer(encode_frame("accept", circuit=os.urandom(16)))["reason"] == "unknown_circuit"
    # a reservation for someone else's peer id fails the proof and does not displace the real node
    with socket.create_connection(relay_addr, timeout=5) as s:
        s.sendall(encode_frame("reserve", peer=peer_id))
        assert recv_frame(s)["t"] == "challenge"
        s.sendall(encode_frame("proof", sig=os.urandom(64)))
        assert recv_frame(s)["reason"] == "bad_proof"
    # circuits from one client address (6 here): the seventh is refused while they stay open; circuits to one
    # node (8 by default): from other addresses two more fit, and the ninth is refused
    held = []

    def circuit(source: str, to: tuple[str, int]) -> socket.socket:
        s = socket.create_connection(to, timeout=5, source_address=(source, 0))
        held.append(s)
        open_circuit(s, peer_id, 5.0)
        return s

    direct = (relay.host, _relay_port(relay))
    try:
        for _ in range(6):
            circuit("127.0.0.1", relay_addr)
        with pytest.raises(RelayError) as refused:
            circuit("127.0.0.1", relay_addr)
        assert refused.value.reason == "relay_busy" and "127.0.0.1" in refused.value.detail
        circuit("127.0.0.77", direct)
        circuit("127.0.0.78", direct)
        with pytest.raises(RelayError) as refused:
            circuit("127.0.0.79", direct)
        assert refused.value.reason == "node_busy"
    finally:
        for s in held:
            s.close()
    # bytes per circuit (1 MiB here): a job carrying more is cut, and the relay says why
    with Client(peers=[f"{peer_id}@relay/127.0.0.1:{tap.port}"], connect_timeout=5) as client:
        with pytest.raises(PhaseError):
            client.submit(hello_bytes, os.urandom(1536 << 10), retries=0, timeout=5)
    closed = relay.wait_event_count("circuit_closed", 1)
    assert any(str(e["reason"]).startswith("byte limit") for e in relay.events("circuit_closed")), closed
    # and the relay (and the node's reservation) still serve
    assert relay.alive and node.alive
    with Client(peers=[f"{peer_id}@relay/127.0.0.1:{tap.port}"]) as client:
        assert client.submit(hello_bytes, b"still").stdout == b"llits"


def test_client_reports_a_relay_without_that_node(relayed, hello_bytes) -> None:
    tap = relayed["tap"]
    stranger = Identity.generate().peer_id
    with Client(peers=[f"{stranger}@relay/127.0.0.1:{tap.port}"], connect_timeout=3) as client:
        with pytest.raises(PhaseError) as failed:
            client.submit(hello_bytes, b"x", retries=0)
    assert "no_reservation" in str(failed.value) or "no_reservation" in str(getattr(failed.value, "attempts", ""))


def test_relay_found_on_the_dht_with_via_relay_auto(relayed, tmp_path, hello_bytes) -> None:
    boot = relayed["boot"]
    node = NodeProc(
        tmp_path / "auto",
        dht_host(),
        sandbox=False,
        workers=1,
        extra=("--via-relay", "auto", "--dht-bootstrap", *boot[1:3]),
    ).start()
    try:
        found = node.wait_event("relay_found", timeout=60)
        relay_port = _relay_port(relayed["relay"])
        assert found["relays"] == [f"{relayed['relay'].host}:{relay_port}"]
        node.wait_event("relay_reserved")
        peer_id = node.address.split("@")[0]
        with Client(peers=[f"{peer_id}@relay/{relayed['relay'].host}:{relay_port}"]) as client:
            assert client.submit(hello_bytes, b"auto").peer == peer_id
    finally:
        node.stop()


def test_record_names_relays_within_the_bound_and_a_record_naming_neither_says_so() -> None:
    ident = Identity.generate()
    relays = ["[2001:db8:ffff:ffff:ffff:ffff:ffff:1]:65535", "[2001:db8:ffff:ffff:ffff:ffff:ffff:2]:65535"]
    caps = {"arch": "x86_64", "cores": 1024, "workers": 1024, "memory": 1 << 40, "relay": 65535}
    value = records.encode_value([], ["wasm3/0.5.0+phase1"] * 4, caps, relays=[*relays, "extra:1"])
    assert len(value) <= records.MAX_VALUE_BYTES
    record = records.verify_record(ident.public_key, value, 1, records.sign_value(ident, value, 1))
    assert record.addresses == () and record.relays == tuple(relays)  # at most two
    assert record.address == f"{ident.peer_id}@relay/{relays[0]}" and record.caps["relay"] == 65535
    assert record.candidates == (record.address, f"{ident.peer_id}@relay/{relays[1]}")
    # a node that lost every relay publishes neither: the record is valid and says nobody can reach it now
    bare = records.encode_value([], [], caps)
    record = records.verify_record(ident.public_key, bare, 1, records.sign_value(ident, bare, 1))
    assert record.candidates == ()
    with pytest.raises(RecordError, match="names no address and no relay"):
        record.address
    bad = records.bencode(
        {"v": 1, "a": [], "r": ["nowhere"], "e": [], "c": {}, "t": int(time.time()), "x": int(time.time()) + 60}
    )
    with pytest.raises(RecordError):
        records.verify_record(ident.public_key, bad, 1, records.sign_value(ident, bad, 1))


def test_cli_resolves_a_relayed_node_and_runs_a_job_through_the_relay(relayed) -> None:
    node, tap = relayed["node"], relayed["tap"]
    peer_id = node.address.split("@")[0]
    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "pyphase"]
    out = subprocess.run(
        [*cmd, "dht", "record", peer_id, "--dht-bootstrap", relayed["boot"][0], "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["address"] == f"{peer_id}@relay/127.0.0.1:{tap.port}" and doc["addresses"] == []
    out = subprocess.run(
        [*cmd, "submit", "examples/hello/hello.wasm", "--input", "via", "--peer", peer_id]
        + ["--dht-bootstrap", relayed["boot"][1]],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("aiv")


def test_node_re_reserves_when_its_relay_comes_back(tmp_path, hello_bytes) -> None:
    host = loopback_host()
    relay, port = fixed_port_relay(tmp_path / "relay", host)
    node = NodeProc(
        tmp_path / "node", loopback_host(), sandbox=False, workers=1, extra=("--via-relay", f"{host}:{port}")
    )
    try:
        relay.start()
        node.start()
        node.wait_event("relay_reserved")
        relay.kill()
        lost = node.wait_event("relay_lost")
        assert lost["relay"] == f"{host}:{port}" and node.alive
        relay.close_pipes()
        relay.start()
        node.wait_event_count("relay_reserved", 2, timeout=30)
        peer_id = node.address.split("@")[0]
        with Client(peers=[f"{peer_id}@relay/{host}:{port}"]) as client:
            assert client.submit(hello_bytes, b"back").peer == peer_id
    finally:
        node.stop()
        relay.stop()


def test_a_node_that_reserves_and_never_answers_costs_the_client_a_timeout_only(relayed, hello_bytes) -> None:
    relay, tap, node = relayed["relay"], relayed["tap"], relayed["node"]
    liar = Identity.generate()
    with socket.create_connection(("127.0.0.1", tap.port), timeout=10) as control:
        control.sendall(encode_frame("reserve", peer=liar.peer_id))
        challenge = recv_frame(control)
        proof = liar.signing_key.sign(proof_message(challenge["nonce"], liar.public_key)).signature
        control.sendall(encode_frame("proof", sig=proof))
        assert recv_frame(control)["t"] == "reserved"
        with socket.create_connection(("127.0.0.1", tap.port), timeout=10) as client:
            with pytest.raises(RelayError) as failed:
                open_circuit(client, liar.peer_id, 10.0)
        assert failed.value.reason == "timeout"
        assert recv_frame(control)["t"] == "circuit"  # it was asked, and said nothing
    relay.wait_event_count("relay_lost", 1)
    peer_id = node.address.split("@")[0]
    with Client(peers=[f"{peer_id}@relay/127.0.0.1:{tap.port}"]) as client:  # the honest node is still served
        assert client.submit(hello_bytes, b"honest").peer == peer_id


def _reserve_raw(address: tuple[str, int], who: Identity) -> tuple[socket.socket, dict]:
    """A reservation made by hand (a node that then never refreshes it); returns the control socket and answer."""
    control = socket.create_connection(address, timeout=10)
    control.sendall(encode_frame("reserve", peer=who.peer_id))
    challenge = recv_frame(control)
    if challenge["t"] == "error":
        return control, challenge
    control.sendall(
        encode_frame("proof", sig=who.signing_key.sign(proof_message(challenge["nonce"], who.public_key)).signature)
    )
    return control, recv_frame(control)


def test_reservations_expire_unless_refreshed_and_free_their_slot(tmp_path, hello_bytes) -> None:
    host = loopback_host()
    relay = NodeProc(
        tmp_path / "relay",
        host,
        sandbox=False,
        workers=1,
        extra=("--relay", "--relay-listen", f"{host}:0"),
        env={"PLASMD_RELAY_RESERVATION_TIME": "2s", "PLASMD_RELAY_RESERVATIONS": "2"},
    ).start()
    node = None
    try:
        address = (host, _relay_port(relay))
        node = NodeProc(
            tmp_path / "node",
            loopback_host(),
            sandbox=False,
            workers=1,
            extra=("--via-relay", f"{host}:{address[1]}"),
        ).start()
        assert node.wait_event("relay_reserved")["limits"]["reservation"] == 2
        silent, third = Identity.generate(), Identity.generate()
        control, answer = _reserve_raw(address, silent)
        assert answer["t"] == "reserved" and answer["limits"]["reservation"] == 2
        refused, answer = _reserve_raw(address, third)  # two slots, both taken
        refused.close()
        assert answer["reason"] == "relay_busy"
        # the silent one answers nothing and never refreshes: after 2 s the relay says why and closes
        with control:
            control.settimeout(6)
            ended = recv_frame(control)
            assert ended["t"] == "error" and ended["reason"] == "expired", ended
            assert control.recv(1) == b""
        lost = [e for e in relay.wait_event_count("relay_lost", 1) if e["peer"] == silent.peer_id]
        assert lost and lost[0]["reason"].startswith("expired"), lost
        with socket.create_connection(address, timeout=5) as client:
            with pytest.raises(RelayError) as failed:
                open_circuit(client, silent.peer_id, 5.0)
        assert failed.value.reason == "no_reservation"
        # its slot is free again (memory bounded by relay_reservations, and turned over)
        taken, answer = _reserve_raw(address, third)
        taken.close()
        assert answer["t"] == "reserved"
        # the real node refreshed every second all along: never lost, and still carries jobs
        time.sleep(1.5)
        assert not [e for e in relay.events("relay_lost") if e["peer"] == node.address.split("@")[0]]
        assert not node.events("relay_lost")
        peer_id = node.address.split("@")[0]
        with Client(peers=[f"{peer_id}@relay/{host}:{address[1]}"]) as client:
            assert client.submit(hello_bytes, b"fresh").peer == peer_id
    finally:
        if node is not None:
            node.stop()
        relay.stop()
