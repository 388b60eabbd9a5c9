"""A node given more relays than it holds ranks them (round trip of the reservation handshake, the load each
reports) and holds the best; when one fails it moves to the best spare, and with ``auto`` and no spare left
it looks on the DHT again. Real plasmd processes on loopback; one relay is made far away by a forwarder that
holds each new connection 0.4 s; a private DHT of libtorrent sessions on loopback."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dht_support import dht_host, endpoints, private_dht  # noqa: E402
from net_support import NodeProc, fixed_port_relay, job_through_relay, loopback_host, relayed_node  # noqa: E402
from relay_tap import Tap  # noqa: E402

from pyphase.net.relay import RelayProbe, _reported_load, rank_relays  # noqa: E402
from pyphase.net.relayed import RelayedSources, client_name  # noqa: E402

FAR_S = 0.4


def _kill_and_see_failover(node: NodeProc, dead: NodeProc, dead_at: str, to_at: str, module: bytes) -> None:
    """Kill the relay ``dead``; the node moves from it to ``to_at``, reserves there, and serves a job through it."""
    dead.kill()
    failover = node.wait_event("relay_failover", timeout=60)
    assert (failover["relay"], failover["to"]) == (dead_at, to_at), failover
    deadline = time.monotonic() + 20
    while to_at not in {e["relay"] for e in node.events("relay_reserved")}:
        assert time.monotonic() < deadline, node.log_tail()
        time.sleep(0.1)
    job_through_relay(node, to_at, module, b"failed over")


def test_ranking_weighs_round_trip_by_load_and_puts_failures_last() -> None:
    near_busy = RelayProbe(("a", 1), rtt_s=0.004, load=0.5)  # 0.004 * 3 = 0.012
    far_idle = RelayProbe(("b", 1), rtt_s=0.010, load=0.0)
    nearest = RelayProbe(("c", 1), rtt_s=0.002, load=0.0)
    down = RelayProbe(("d", 1), error="Connection refused")
    busy = RelayProbe(("e", 1), error="relay_busy: this relay holds 64 reservations")
    ranked = rank_relays([down, near_busy, far_idle, busy, nearest])
    assert [p.relay[0] for p in ranked] == ["c", "b", "a", "d", "e"]
    assert _reported_load({"reservations": 3, "max_reservations": 4, "circuits": 1, "max_circuits": 100}) == 0.75
    assert _reported_load({"circuits": 500, "max_circuits": 100}) == 1.0  # clamped
    for junk in (None, [], {"reservations": "x", "max_reservations": 4}, {"circuits": 1, "max_circuits": 0}):
        assert _reported_load(junk) == 0.0


def test_relayed_client_names_and_their_loopback_sources() -> None:
    assert client_name("198.18.0.5", "r:1") == "198.18.0.5 via r:1"
    assert client_name("::ffff:198.18.0.5", "r:1") == "198.18.0.5 via r:1"
    for junk in (None, 5, "", "not an address", "1.2.3.4; rm", "9" * 500):
        assert client_name(junk, "r:1") == "? via r:1"
    sources = RelayedSources()
    a = sources.take("x via r:1")
    assert sources.take("x via r:1") == a and a.startswith("127.93.")  # one source per client
    b = sources.take("y via r:1")
    assert b != a and sources.name(a) == "x via r:1" and sources.name(b) == "y via r:1"
    assert sources.name("127.0.0.1") == "127.0.0.1" and "x via r:1" in sources
    sources.give_back("x via r:1")
    assert sources.name(a) == "x via r:1"  # one connection of x is still open
    sources.give_back("x via r:1")
    assert sources.name(a) == a and "x via r:1" not in sources
    assert sources.take("z via r:1") not in (a, b)  # an address given back is reused last


def test_node_holds_the_nearest_relays_and_fails_over_to_the_spare(tmp_path, hello_bytes) -> None:
    relays = []
    for name in ("near1", "near2", "far"):
        relay, port = fixed_port_relay(tmp_path / name, loopback_host())
        relays.append((relay.start(), port))
    (near1, p1), (near2, p2), (far, p3) = relays
    tap = Tap((far.host, p3), delay=FAR_S)
    far_at, near1_at, near2_at = f"127.0.0.1:{tap.port}", f"{near1.host}:{p1}", f"{near2.host}:{p2}"
    node = relayed_node(tmp_path / "node", f"{far_at},{near1_at},{near2_at}")
    try:
        node.start()
        ranked = node.wait_event("relay_ranked")["relays"]
        assert [r["relay"] for r in ranked][-1] == far_at, ranked
        assert ranked[-1]["rtt_ms"] >= FAR_S * 1000 > max(r["rtt_ms"] for r in ranked[:2]), ranked
        held = {e["relay"] for e in node.wait_event_count("relay_reserved", 2)}
        assert held == {near1_at, near2_at}
        assert not far.events("relay_reserved")  # probed, never reserved
        _kill_and_see_failover(node, near1, near1_at, far_at, hello_bytes)
    finally:
        tap.close()
        node.stop()
        for relay, _ in relays:
            relay.stop()


def test_auto_looks_on_the_dht_again_when_its_relay_fails_and_no_spare_is_left(tmp_path, hello_bytes) -> None:
    with private_dht(4) as routers:
        boot = [f"{h}:{p}" for h, p in endpoints(routers)]
        started: list[NodeProc] = []

        def relay(name: str) -> tuple[NodeProc, str]:
            host = dht_host()
            proc = NodeProc(
                tmp_path / name,
                host,
                sandbox=False,
                workers=1,
                extra=("--relay", "--relay-listen", f"{host}:0", "--dht-bootstrap", *boot[:2]),
            ).start()
            started.append(proc)
            proc.wait_event("dht_announced", timeout=30)
            return proc, f"{host}:{proc.wait_event('relay_listening')['address'].rsplit(':', 1)[1]}"

        try:
            first, first_at = relay("first")
            node = NodeProc(
                tmp_path / "node",
                dht_host(),
                sandbox=False,
                workers=1,
                extra=("--via-relay", "auto", "--dht-bootstrap", *boot[2:]),
            ).start()
            started.append(node)
            assert node.wait_event("relay_reserved", timeout=60)["relay"] == first_at
            second, second_at = relay("second")  # comes later: the node knows nothing of it
            _kill_and_see_failover(node, first, first_at, second_at, hello_bytes)
        finally:
            for proc in started:
                proc.stop()
